"""What a batch holds: the tasks the dispatcher handed to one worker, and their marks.

A batch's slots are the tasks in the order they were taken; a finished slot
becomes ``DONE``. Tasks a dead loop handed back travel as ``Requeued`` (so
they are not counted twice) or, for a file whose unlink was under way, as
``InProgress`` (so it is not removed twice).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Iterable
from itertools import islice
from operator import attrgetter
from typing import Any, Final

from ._paths import FileJob, Roots, UnlinkJob
from ._tasks import KINDS, RemoveFile, RemoveTree, current_executor
from ._unlink import COMPILED

__all__ = [
    "DONE",
    "EXIT_RUNNERS",
    "Batch",
    "InProgress",
    "Requeued",
    "classify",
    "path_of",
    "paths_of",
    "plain_removal",
    "split",
    "sync_at_exit",
    "window",
]

DONE: Final = object()  # marks a finished slot in a batch (a task itself may be None)
path_of = attrgetter("path")


def pure_paths_of(tasks: list[Any], start: int) -> list[Any]:
    """``[t.path for t in tasks[start:]]``; ``_cbulk.paths_of`` does it in C."""
    return list(map(path_of, tasks[start:]))


def pure_window(items: Iterable[object], cls: type, limit: int, others: int) -> tuple[int, int]:
    """``(taken, not_cls)``: how many of the first ``limit`` items to take so
    that at most ``others`` of them are not exactly of type ``cls``, and how
    many of those are not.

    ``_cbulk.window`` does it in C. Types are compared by identity, so no
    ``__eq__`` of a hostile metaclass runs.
    """
    taken = found = 0
    for t in map(type, islice(items, limit)):
        if t is not cls:
            if found == others:
                break
            found += 1
        taken += 1
    return taken, found


def pure_split(tasks: list[Any], cls: type) -> tuple[list[int], list[int]]:
    """The slots of ``tasks`` exactly of type ``cls``, and the others'; in C: ``_cbulk.split``."""
    same: list[int] = []
    rest: list[int] = []
    for i, t in enumerate(map(type, tasks)):
        (same if t is cls else rest).append(i)
    return same, rest


paths_of, split, window = pure_paths_of, pure_split, pure_window
if COMPILED:
    # The same loops without a Python call per task: a burst's batches go
    # through them on the loop thread while the unlinking threads wait for
    # a core.
    from ._cbulk import paths_of, split, window  # type: ignore[assignment]

# Private task kinds that can also run without a loop, at interpreter exit:
# their synchronous run (given the seconds left), by exact type. InProgress
# registers below, a ScratchDir's release in _scratch.
EXIT_RUNNERS: Final[dict[type, Callable[[Any, float], None]]] = {}


class Batch:
    """Up to ``batch_size`` tasks handed to one worker; finished slots become ``DONE``."""

    __slots__ = (
        "abandoned", "counted", "expired", "files", "files_done", "first_seq", "job", "kind",
        "loop", "seen_at", "tasks", "worker",
    )  # fmt: skip

    def __init__(
        self,
        tasks: list[Any],
        first_seq: int,
        seen_at: float,
        loop: asyncio.AbstractEventLoop,
        kind: str | None = None,
    ) -> None:
        self.tasks = tasks
        # The kind of every task, when the dispatcher already checked that
        # all are exactly one built-in type; None means the worker classifies.
        self.kind = kind
        self.first_seq = first_seq
        self.seen_at = seen_at
        self.loop = loop
        self.expired = False  # the batch deadline passed: cancelled children count as timeouts
        self.abandoned = False  # its tasks were taken back; the worker must not count them
        self.counted = False  # its tasks are in submitted_total{task}
        self.job: FileJob | None = None
        self.worker: asyncio.Task[None] | None = None
        self.files: list[int] = []  # slots of the RemoveFile tasks, removed in this order
        self.files_done = 0  # files[:files_done] are finished (their slots are not marked)

    def unfinished(self) -> list[Any]:
        done = set(self.files[: self.files_done])
        return [t for i, t in enumerate(self.tasks) if t is not DONE and i not in done]


class Requeued:
    """A task a dead loop handed back: already counted in submitted_total{task}."""

    __slots__ = ("task",)

    def __init__(self, task: object) -> None:
        self.task = task


class InProgress:
    """A file removal a dead loop's job was inside: that job's thread decides it.

    Requeued like any unfinished task; when it runs, it waits for the old
    job to end, takes the outcome the job reached, and removes the file
    itself only if the job never did.
    """

    __slots__ = ("index", "job", "roots", "task", "timeout")
    kind = "remove_file"

    def __init__(
        self, task: Any, job: FileJob, index: int, roots: Roots | None, timeout: float
    ) -> None:
        self.task, self.job, self.index, self.roots = task, job, index, roots
        self.timeout = timeout  # never hold one of the cleaner's threads longer

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(current_executor.get(), self.settle, self.timeout)

    def settle(self, timeout: float | None) -> None:
        """Wait for the old job (up to ``timeout``); raise the file's error, if any."""
        self.job.wait(timeout)
        if self.job.done > self.index:
            for k, err in self.job.errors:
                if k == self.index:
                    raise err
            return
        job = UnlinkJob([self.task.path], self.roots)
        job()
        if job.errors:
            raise job.errors[0][1]

    def __repr__(self) -> str:
        return f"{self.task!r} (in progress when its loop died)"


EXIT_RUNNERS[InProgress] = InProgress.settle


def plain_removal(cls: type) -> type | None:
    """``RemoveFile`` or ``RemoveTree`` when ``cls`` is one, or a subclass that keeps its ``run``.

    Such tasks are run by the built-in removal (one job for a batch's files,
    confined like the rest); any other ``run()`` is the task's own. Takes the
    real type: isinstance would ask a hostile object's own ``__class__``.
    """
    for base in (RemoveFile, RemoveTree):
        if cls is base or (issubclass(cls, base) and cls.run is base.run):
            return base
    return None


def sync_at_exit(task: object) -> type | None:
    """What runs ``task`` synchronously at exit: an ``EXIT_RUNNERS`` kind, a plain removal, or None.

    None for anything whose ``run()`` needs a loop. Never raises: it runs
    in the exit handler.
    """
    cls = type(task)
    if cls in EXIT_RUNNERS:
        return cls
    try:
        return plain_removal(cls)
    except Exception:  # a hostile metaclass
        return None


def classify(tasks: list[Any]) -> tuple[Collection[int], str | None]:
    """Unwrap requeued tasks; return their slots, and the kind if all are one built-in kind.

    Done in C (map, count) for the burst case. Only types are compared, and
    a hostile metaclass that raises from comparing or hashing falls back to
    the per-task path.
    """
    try:
        types = list(map(type, tasks))
        retaken: Collection[int] = _unwrap(tasks) if Requeued in types else ()
        if retaken:
            types = list(map(type, tasks))
        kind = KINDS.get(types[0])
        if kind is not None and types.count(types[0]) == len(tasks):
            return retaken, kind
        return retaken, None
    except Exception:
        return _unwrap(tasks), None


def _unwrap(tasks: list[Any]) -> set[int]:
    """Unwrap requeued tasks in place; return their slots."""
    slots = set()
    for i, task in enumerate(tasks):
        if type(task) is Requeued:
            tasks[i] = task.task
            slots.add(i)
    return slots
