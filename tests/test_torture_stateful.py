"""A hypothesis state machine over one Cleaner's whole life.

Rules: submit good and bad tasks (from the loop thread, from the main thread
while the loop is stopped, from other threads), start a loop (asyncio or
uvloop), init_worker(), let the loop run a little, drain(), shutdown(), let
the loop die without shutdown() and re-init on a new one; injected failures
(cleanups that raise, paths outside the allowed root, directories given to
RemoveFile, files given to RemoveTree, objects that are no task) and hangs
(cleanups that outlive task_timeout).

Between two steps no loop runs and every producer has been joined, so the
cleaner is quiet and the checks are exact. After every step:

* conservation holds exactly and no counter (``stats()`` or scraped) went down;
* ``submitted`` and ``dropped_before_init`` match the model to the task;
* no file removal ran twice, no Call completed twice, no cleanup raised twice;
* a task counted completed has had its effect at that moment (its file or
  tree is gone when the count moves), and no task is counted twice;
* every file unlinked was one that was submitted and accepted; every file
  that must survive (decoys, refused and failed targets, dropped tasks) does;
* once nothing is queued or in flight: every outcome matches the model by
  kind and reason, every accepted removal is done, every accepted task was
  counted exactly once, and the exported ``submitted_total`` equals what
  finished.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from prometheus_client import CollectorRegistry

import fastcleanup as fc
from fastcleanup import _worker
from fastcleanup._accounts import Accounts
from fastcleanup._batch import DONE, Batch, InProgress
from fastcleanup._paths import FileJob
from tests.conftest import LOOP_KINDS, loop_factory
from tests.torture_helpers import (
    LoopErrors,
    UnlinkSpy,
    assert_monotone,
    assert_scrape_monotone,
    conserved,
    failures_by_reason,
    forget,
    hypothesis_settings,
    quiet,
    report,
    scrape,
    total,
)

_machines = itertools.count()
TASK_TIMEOUT = 0.25
# A batch deadline may fire this much before task_timeout has passed on
# time.monotonic(): uvloop's clock has millisecond steps and is read once
# per loop turn.
CLOCK_SLACK = 0.005
_real_expire = _worker.expire
_real_account, _real_finish = Accounts._account, Accounts._finish
_real_run_one = _worker.BatchWorker._run_one
COMPLETED = "completed"

# What each kind of submission must end as: (task kind label, outcome).
SPECS: dict[str, tuple[str, str]] = {
    "file": ("remove_file", COMPLETED),
    "sub_file": ("remove_file", COMPLETED),  # a subclass: in the batch's file job too
    "missing": ("remove_file", COMPLETED),  # already gone: the goal is met
    "dir_as_file": ("remove_file", "error"),
    "outside": ("remove_file", "refused"),
    "dotdot_out": ("remove_file", "refused"),  # root/../outside/x
    "through_link": ("remove_file", "refused"),  # root/link-to-outside/x
    "dotdot_after_link": ("remove_file", "refused"),  # root/link-to-outside/../x
    "tree": ("remove_tree", COMPLETED),
    "file_as_tree": ("remove_tree", "error"),
    "link_as_tree": ("remove_tree", COMPLETED),  # the link goes, its target stays
    "invalid": ("invalid", "invalid"),
    "call_ok": ("call", COMPLETED),
    "call_raise": ("call", "error"),
    "call_hang": ("call", "timeout"),
}

stats_counters = ("submitted", "dropped_before_init", "completed", "failed", "dropped_at_exit")


class SubFile(fc.RemoveFile):
    """A RemoveFile subclass that keeps its run: removed by the batch's file job."""


class Item:
    """One submission: the task, its expected outcome, what it must remove and keep."""

    __slots__ = ("keep", "kind", "outcome", "removes", "spec", "task", "unlinks")

    def __init__(self, spec: str, task: object) -> None:
        self.spec = spec
        self.task = task
        self.kind, self.outcome = SPECS[spec]
        self.removes: list[str] = []  # paths gone once it ran
        self.keep: list[str] = []  # paths that must survive it, whatever happens
        self.unlinks: list[str] = []  # base names it may unlink (and a RemoveFile only once)


class CleanerLife(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.base = Path(tempfile.mkdtemp(prefix="fc-life-"))
        self.root = self.base / "root"
        self.outside = self.base / "outside"
        self.root.mkdir()
        self.outside.mkdir()
        self.registry = CollectorRegistry()
        self.cleaner = fc.Cleaner(
            batch_size=3,
            task_timeout=TASK_TIMEOUT,
            max_batches=2,
            io_threads=2,
            allowed_roots=[self.root],
            registry=self.registry,
            name="life",
        )
        # Every name this machine creates starts with its own mark: the unlink
        # spy keys on it, and a thread a previous example left behind cannot
        # be mistaken for this one.
        self.mark = f"tz{next(_machines)}n"
        self.spy = UnlinkSpy(self.mark)
        self._spy_cm = self.spy.installed()
        self._spy_cm.__enter__()
        self.errors = LoopErrors()
        # id()s of the tasks a batch deadline ended: they count as timeouts,
        # whatever they would have done (see _expire).
        self.expired: set[int] = set()
        self.early_deadlines: list[float] = []
        self._expire_cm = mock.patch.object(_worker, "expire", self._expire)
        self._expire_cm.__enter__()
        # Every count of a finished task, by the task's id: one each, and a
        # completed one had its effect by then (see _counted).
        self.counted: Counter[int] = Counter()
        self.effect_missing: list[str] = []
        machine = self

        def account(cleaner: Accounts, batch: Batch, job: FileJob, n: int) -> None:
            failed = {k for k, _ in job.errors if k < n}
            slots = batch.files[batch.files_done : batch.files_done + n]
            for k, slot in enumerate(slots):
                machine._counted(batch.tasks[slot], k not in failed)
            _real_account(cleaner, batch, job, n)

        def finish(cleaner: Accounts, batch: Batch, i: int, *args: Any) -> None:
            if not batch.abandoned:
                machine._counted(batch.tasks[i], completed=args[1] is None)
            _real_finish(cleaner, batch, i, *args)

        async def run_one(cleaner: Any, batch: Batch, i: int, task: Any, kind: str) -> None:
            before = (batch.abandoned, batch.tasks[i] is DONE)
            counted = machine.counted[id(_unwrapped(task))]
            await _real_run_one(cleaner, batch, i, task, kind)
            # Counted inline (the success path does not go through _finish):
            inline = before == (False, False) and batch.tasks[i] is DONE
            if inline and machine.counted[id(_unwrapped(task))] == counted:
                machine._counted(task, completed=True)

        self._count_cms: list[Any] = [
            mock.patch.object(Accounts, "_account", account),
            mock.patch.object(Accounts, "_finish", finish),
            mock.patch.object(_worker.BatchWorker, "_run_one", run_one),
        ]
        for cm in self._count_cms:
            cm.__enter__()
        self.runner: asyncio.Runner | None = None
        self.bound = False  # the dispatcher was started on the current runner's loop
        self.accepting = False  # between init_worker() and shutdown()
        self.serial = itertools.count()
        self.accepted: list[Item] = []
        self.dropped: list[Item] = []
        self.decoys: list[str] = []
        self.completions: list[int] = []  # Call ids, appended when a call finishes
        self.raises: list[int] = []
        self.prev_stats = self.cleaner.stats()
        self.prev_scrape = scrape(self.registry)
        self.steps = 0
        self.saw_quiet_with_work = False

    # -- building submissions ------------------------------------------------------

    def _name(self) -> str:
        return f"{self.mark}{next(self.serial)}"

    def _file(self, path: Path) -> str:
        path.write_bytes(b"x")
        return str(path)

    def _make(self, spec: str) -> Item:
        n = self._name()
        root, out = self.root, self.outside
        item: Item
        if spec == "file":
            p = self._file(root / n)
            item = Item(spec, fc.RemoveFile(p))
            item.removes.append(p)
            item.unlinks.append(n)
        elif spec == "sub_file":
            p = self._file(root / n)
            item = Item(spec, SubFile(p))
            item.removes.append(p)
            item.unlinks.append(n)
        elif spec == "missing":
            item = Item(spec, fc.RemoveFile(str(root / n)))
            item.unlinks.append(n)
        elif spec == "dir_as_file":
            (root / n).mkdir()
            inner = self._file(root / n / f"{n}c")
            item = Item(spec, fc.RemoveFile(str(root / n)))
            item.keep += [str(root / n), inner]
        elif spec == "outside":
            p = self._file(out / n)
            item = Item(spec, fc.RemoveFile(p))
            item.keep.append(p)
        elif spec == "dotdot_out":
            p = self._file(out / n)
            item = Item(spec, fc.RemoveFile(os.path.join(root, "..", "outside", n)))
            item.keep.append(p)
        elif spec == "through_link":
            (out / n).mkdir()
            target = self._file(out / n / f"{n}x")
            os.symlink(out / n, root / f"{n}l")
            item = Item(spec, fc.RemoveFile(os.path.join(root, f"{n}l", f"{n}x")))
            item.keep += [target, str(root / f"{n}l")]
        elif spec == "dotdot_after_link":
            # root/L -> outside/N/inner, so root/L/../V is outside/N/V for the
            # kernel; read as text it would be root/V. Neither may be removed.
            (out / n / "inner").mkdir(parents=True)
            physical = self._file(out / n / f"{n}v")
            lexical = self._file(root / f"{n}v")
            os.symlink(out / n / "inner", root / f"{n}l")
            item = Item(spec, fc.RemoveFile(os.path.join(root, f"{n}l", "..", f"{n}v")))
            item.keep += [physical, lexical]
        elif spec == "tree":
            top = root / n
            (top / f"{n}d").mkdir(parents=True)
            names = [f"{n}a", f"{n}b"]
            files = [self._file(top / names[0]), self._file(top / f"{n}d" / names[1])]
            item = Item(spec, fc.RemoveTree(str(top)))
            item.removes += [str(top), *files]
            item.unlinks += names
        elif spec == "file_as_tree":
            p = self._file(root / n)
            item = Item(spec, fc.RemoveTree(p))
            item.keep.append(p)
        elif spec == "link_as_tree":
            (out / n).mkdir()
            target = self._file(out / n / f"{n}x")
            link = root / f"{n}l"
            os.symlink(out / n, link)
            item = Item(spec, fc.RemoveTree(str(link)))
            item.removes.append(str(link))
            item.keep += [str(out / n), target]
            item.unlinks.append(f"{n}l")
        elif spec == "invalid":
            item = Item(spec, object())
        else:
            ident = next(self.serial)
            fn = {"call_ok": self._ok, "call_raise": self._raise, "call_hang": self._hang}[spec]
            item = Item(spec, fc.Call(fn, ident))
        # An untouched decoy next to every submission: it must never go.
        self.decoys.append(self._file(root / f"{n}decoy"))
        return item

    async def _ok(self, ident: int) -> None:
        await asyncio.sleep(0)
        self.completions.append(ident)

    async def _raise(self, ident: int) -> None:
        self.raises.append(ident)
        raise RuntimeError(f"injected failure {ident}")

    async def _hang(self, ident: int) -> None:
        await asyncio.sleep(3600)

    def _account(self, items: list[Item]) -> None:
        # Decided before the submits: no rule submits while the model's state changes.
        (self.accepted if self.accepting else self.dropped).extend(items)

    # -- rules -----------------------------------------------------------------------

    # Plain file removals are the bulk of real traffic: weigh them up.
    specs = st.lists(st.sampled_from(["file"] * 4 + sorted(SPECS)), min_size=1, max_size=10)

    @precondition(lambda self: self.runner is None)
    @rule(kind=st.sampled_from(LOOP_KINDS))
    def new_loop(self, kind: str) -> None:
        self.runner = asyncio.Runner(loop_factory=loop_factory(kind))
        self.runner.get_loop().set_exception_handler(self.errors._handle)

    @precondition(lambda self: self.runner is not None)
    @rule()
    def init(self) -> None:
        async def init() -> None:
            assert self.cleaner.init_worker() is self.cleaner

        self._run(init())
        self.bound = self.accepting = True
        assert self.cleaner.worker_inited()

    @precondition(lambda self: self.runner is not None)
    @rule(specs=specs, yields=st.integers(0, 3))
    def submit_on_loop(self, specs: list[str], yields: int) -> None:
        items = [self._make(s) for s in specs]
        self._account(items)

        async def submit() -> None:
            for k, item in enumerate(items):
                self.cleaner.submit(item.task)  # type: ignore[arg-type]
                if yields and k % (4 - yields) == 0:
                    await self._tick()

        self._run(submit())

    @rule(specs=specs)
    def submit_from_main(self, specs: list[str]) -> None:
        items = [self._make(s) for s in specs]
        self._account(items)
        for item in items:
            self.cleaner.submit(item.task)  # type: ignore[arg-type]

    @rule(specs=specs, threads=st.integers(1, 4))
    def submit_from_threads(self, specs: list[str], threads: int) -> None:
        items = [self._make(s) for s in specs]
        self._account(items)
        workers = [
            threading.Thread(target=self._submit_all, args=(items[k::threads],))
            for k in range(threads)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join(30)
            assert not w.is_alive(), "a submitting thread is stuck"

    @precondition(lambda self: self.runner is not None)
    @rule(ticks=st.integers(0, 8), nap=st.sampled_from([0.0, 0.001, 0.01]))
    def run_loop(self, ticks: int, nap: float) -> None:
        """Let the loop run a little: work progresses part way."""

        async def run() -> None:
            for _ in range(ticks):
                await self._tick()
            if nap:
                await asyncio.sleep(nap)

        self._run(run())

    @precondition(lambda self: self.runner is not None and self.bound)
    @rule()
    def drain(self) -> None:
        assert self._run(self.cleaner.drain(timeout=30)), "drain() timed out"
        s = self.cleaner.stats()
        assert quiet(s), f"drain() returned True with work pending: {s}"

    @precondition(lambda self: self.runner is not None and not self.bound)
    @rule()
    def drain_without_dispatcher(self) -> None:
        s = self.cleaner.stats()
        if quiet(s):
            assert self._run(self.cleaner.drain(timeout=1))
        else:
            with pytest.raises(RuntimeError, match="init_worker"):
                self._run(self.cleaner.drain(timeout=1))

    @precondition(lambda self: self.runner is not None)
    @rule(timeout=st.sampled_from([0.001, 0.05, 30.0]))
    def shutdown(self, timeout: float) -> None:
        was_bound = self.bound
        finished = self._run(self.cleaner.shutdown(timeout=timeout))
        self.bound = self.accepting = False
        assert not self.cleaner.worker_inited()
        s = self.cleaner.stats()
        if finished:
            assert quiet(s), f"shutdown() returned True with work pending: {s}"
        if was_bound and timeout == 30.0:
            assert finished, f"shutdown(30) did not drain: {s}"

    @precondition(lambda self: self.runner is not None)
    @rule(ticks=st.integers(0, 3))
    def kill_loop(self, ticks: int) -> None:
        """asyncio.run returning without shutdown(): the loop dies under the worker,
        ``ticks`` loop turns after this step began (work part way through)."""
        assert self.runner is not None

        async def run() -> None:
            for _ in range(ticks):
                await self._tick()

        self._run(run())
        self.runner.close()
        self.runner = None
        self.bound = False
        self._settle()

    def _submit_all(self, items: list[Item]) -> None:
        for item in items:
            self.cleaner.submit(item.task)  # type: ignore[arg-type]

    def _run(self, coro: Any) -> Any:
        assert self.runner is not None
        try:
            return self.runner.run(coro)
        finally:
            self._settle()

    def _expire(self, batch: Any, children: list[asyncio.Task[None]]) -> None:
        """The worker's batch deadline: note which cleanups it ends.

        The model has no clock, and a deadline may come due on any cleanup
        of its batch: between two steps no loop runs, and uvloop runs due
        timers before the callbacks already queued, so a loop restarted
        after a pause (a slow host) ends even a cleanup one step from done.
        Whatever a deadline ends must count as a timeout; a deadline that
        fires before ``task_timeout`` has passed is a bug.
        """
        age = time.monotonic() - batch.seen_at
        if age < TASK_TIMEOUT - CLOCK_SLACK:
            self.early_deadlines.append(age)
        files = set(batch.files)
        for i, task in enumerate(batch.tasks):
            if task is DONE or i in files:  # finished, or a file: the job's watchdog decides
                continue
            self.expired.add(id(task.task if type(task) is InProgress else task))
        _real_expire(batch, children)

    def _counted(self, task: Any, completed: bool) -> None:
        """One task's count moves: note it, and check a completed removal's effect now."""
        task = _unwrapped(task)
        self.counted[id(task)] += 1
        path = (
            getattr(task, "path", None) if isinstance(task, fc.RemoveFile | fc.RemoveTree) else None
        )
        if completed and isinstance(path, str) and os.path.lexists(path):
            self.effect_missing.append(path)

    def _outcome(self, item: Item) -> str:
        return "timeout" if id(item.task) in self.expired else item.outcome

    async def _tick(self) -> None:
        """One turn of the loop, then the unlink threads finish what it gave them."""
        await asyncio.sleep(0)
        self._settle()

    def _settle(self) -> None:
        # Let the unlink threads finish what the loop gave them before the
        # next step: each step then sees the same state on every replay, so
        # hypothesis can shrink a failure instead of calling it flaky. (A loop
        # dying with a job half done is test_torture_lifecycle's business.)
        assert self.spy.settle(), "an unlink never returned"

    # -- checks after every step ---------------------------------------------------------

    @invariant()
    def counters_are_exact(self) -> None:
        self.steps += 1
        s = self.cleaner.stats()
        assert conserved(s), s
        assert_monotone(self.prev_stats, s)
        self.prev_stats = s
        samples = scrape(self.registry)
        assert_scrape_monotone(self.prev_scrape, samples)
        self.prev_scrape = samples
        assert s.submitted == len(self.accepted), (s, len(self.accepted))
        assert s.dropped_before_init == len(self.dropped), (s, len(self.dropped))
        assert s.dropped_at_exit == 0
        assert total(samples, "fastcleanup_dropped_before_init_total") == len(self.dropped)
        assert self.errors.messages() == []
        assert self.early_deadlines == [], "a batch deadline fired before task_timeout"

    @invariant()
    def counted_once_and_completed_means_done(self) -> None:
        assert self.effect_missing == [], "counted completed while still on disk"
        twice = [n for n in self.counted.values() if n > 1]
        assert twice == [], "a task was counted more than once"

    @invariant()
    def nothing_ran_twice(self) -> None:
        assert self.spy.twice() == [], "a file removal ran twice"
        assert [i for i, k in Counter(self.completions).items() if k > 1] == []
        assert [i for i, k in Counter(self.raises).items() if k > 1] == []

    @invariant()
    def only_submitted_files_go(self) -> None:
        allowed = {n for item in self.accepted for n in item.unlinks}
        strays = sorted(set(self.spy.removed) - allowed)
        assert strays == [], f"unlinked without an accepted task asking for it: {strays}"
        for item in self.accepted + self.dropped:
            for p in item.keep:
                assert os.path.lexists(p), f"{p} was removed ({item.spec})"
        for item in self.dropped:  # dropped before init: never run, now or later
            for p in item.removes:
                assert os.path.lexists(p), f"{p} of a dropped task was removed"
        for p in self.decoys:
            assert os.path.lexists(p), f"decoy {p} was removed"

    @invariant()
    def quiet_means_done(self) -> None:
        s = self.cleaner.stats()
        if not quiet(s):
            return
        expected = Counter((i.kind, self._outcome(i)) for i in self.accepted)
        completed = sum(n for (_, outcome), n in expected.items() if outcome == COMPLETED)
        assert s.completed == completed, (s, expected)
        samples = self.prev_scrape
        want_failed = Counter({k: n for k, n in expected.items() if k[1] != COMPLETED})
        assert failures_by_reason(samples) == want_failed
        for item in self.accepted:
            if self._outcome(item) != item.outcome:
                continue  # ended by its deadline, part way or before it began
            for p in item.removes:
                assert not os.path.lexists(p), f"{p} still there ({item.spec})"
        uncounted = [i.spec for i in self.accepted if self.counted[id(i.task)] != 1]
        assert uncounted == [], f"accepted but not counted once: {uncounted}"
        # Each accepted task is counted once under submitted_total, however
        # many loops it went through.
        assert total(samples, "fastcleanup_submitted_total") == s.completed + s.failed
        self.saw_quiet_with_work = self.saw_quiet_with_work or bool(self.accepted)

    def teardown(self) -> None:
        try:
            if self.runner is not None:
                self.runner.close()
        finally:
            forget(self.cleaner)
            self._spy_cm.__exit__(None, None, None)
            self._expire_cm.__exit__(None, None, None)
            for cm in reversed(self._count_cms):
                cm.__exit__(None, None, None)
            shutil.rmtree(self.base, ignore_errors=True)
            _totals["examples"] += 1
            _totals["steps"] += self.steps
            _totals["tasks"] += len(self.accepted) + len(self.dropped)
            _totals["faults"] += sum(
                1 for i in self.accepted + self.dropped if i.outcome != COMPLETED
            )


_totals: Counter[str] = Counter()


def _unwrapped(task: Any) -> Any:
    """The submitted task behind a dead loop's ``InProgress`` wrapper."""
    return task.task if type(task) is InProgress else task


@pytest.mark.timeout(900)
def test_cleaner_life_state_machine() -> None:
    _totals.clear()
    run_state_machine_as_test(
        CleanerLife,
        # One bug at a time: some failures depend on thread timing, and
        # hypothesis reports those as flaky when it hunts for several at once.
        settings=hypothesis_settings(80, 400, stateful_step_count=40, report_multiple_bugs=False),
    )
    report(
        "stateful",
        examples=_totals["examples"],
        steps=_totals["steps"],
        tasks=_totals["tasks"],
        faults=_totals["faults"],
        files_lost=0,
        deadlocks=0,
    )
