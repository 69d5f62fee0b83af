"""Bulk unlink for the executor threads: the C module when built, else its pure-Python twin.

``unlinkat_many(dir_fds, names, state, start=0, stop=None)`` unlinks
``names[start:stop]`` in order and returns ``(index, errno)`` for each entry
that failed; a name already gone is a success, an item that is no path
(wrong type, embedded NUL) fails with ``EINVAL``. ``dir_fds`` is None (the
working directory), one fd, or one fd per name where ``SKIP`` (-1) marks an
entry counted as finished but never touched. ``state`` is
``array.array("q", [0, 0])``: ``state[0]`` is the number of entries finished
(index + 1 of the last one), and a nonzero ``state[1]`` stops the job before
its next entry; an optional ``state[2]`` is set to k + 1 before entry k
begins. Bad arguments raise TypeError or ValueError before any file is
touched.

The compiled version releases the GIL once per 256 entries instead of once
per file. A cleaner's burst does not come here when the C module is built:
it goes to the lane (``_lane``), whose jobs need no GIL at all; these jobs
serve the rest (the files the lane hands over, exit, a dead loop's file in
progress). Set ``FASTCLEANUP_PURE_PYTHON=1`` to use the twin everywhere.
Replacing ``os.unlink`` (fault injection, instrumentation) only reaches the
twin: callers pick ``unlinkat_many if use_compiled() else pure_unlinkat_many``.
"""

from __future__ import annotations

import errno
import operator
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = [
    "COMPILED",
    "SKIP",
    "pure_unlinkat_many",
    "unlinkat_many",
    "use_compiled",
]

SKIP = -1
_T = TypeVar("_T")
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1


def _fd(value: object, index: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"dir_fds[{index}] must be an int, not {type(value).__name__}")
    if not _INT_MIN <= value <= _INT_MAX:
        raise ValueError(f"dir_fds: {value!r} is out of range for a file descriptor")
    return value


def _state_view(state: WriteableBuffer) -> memoryview:
    """The checked buffer; the caller releases it (and so lets an array resize again)."""
    try:
        view = memoryview(state)
    except TypeError:
        raise TypeError(
            "state must be a writable buffer such as array.array('q', [0, 0]), "
            f"not {type(state).__name__}"
        ) from None
    why = None
    if view.readonly:
        why = "is read-only"
    elif not view.c_contiguous:
        why = "is not contiguous"
    elif view.itemsize != 8 or view.format.lstrip("@=") not in ("q", "l"):
        why = "does not hold signed 64-bit ints (use typecode 'q')"
    elif view.nbytes < 16:
        why = "holds fewer than two items"
    if why is not None:
        view.release()
        raise ValueError(f"state {why}: pass array.array('q', [0, 0])")
    return view


def _snapshot(seq: Sequence[_T]) -> list[_T]:
    """A list or tuple's items, copied by the built-in types' own code, never a subclass's."""
    return list.copy(seq) if isinstance(seq, list) else list(tuple.__iter__(seq))  # type: ignore[arg-type]


def pure_unlinkat_many(
    dir_fds: int | Sequence[int] | None,
    names: Sequence[str | bytes | os.PathLike[str] | os.PathLike[bytes]],
    state: WriteableBuffer,
    start: int = 0,
    stop: int | None = None,
) -> list[tuple[int, int]]:
    """The pure-Python twin of ``_cbulk.unlinkat_many``: same arguments, same effects.

    It calls ``os.unlink(name, dir_fd=fd)``, looked up at each call, so a
    replaced ``os.unlink`` is honoured. An OSError without an errno (only a
    replacement raises one) is recorded as ``EIO``.
    """
    if not isinstance(names, list | tuple):
        raise TypeError(f"names must be a list or tuple, not {type(names).__name__}")
    # Copies before any code of the caller's runs (a subclass's methods,
    # stop.__index__), as the C version takes: no length is read twice.
    names = _snapshot(names)
    size = len(names)
    fds: Sequence[int] | None = None
    one_fd: int | None = None
    if isinstance(dir_fds, list | tuple):
        fds = _snapshot(dir_fds)
        if len(fds) != size:
            raise ValueError(f"dir_fds has {len(fds)} items but names has {size}")
    elif dir_fds is not None:
        if not isinstance(dir_fds, int) or isinstance(dir_fds, bool):
            raise TypeError(
                f"dir_fds must be None, an int or a list of ints, not {type(dir_fds).__name__}"
            )
        one_fd = _fd(dir_fds, -1)
    start = operator.index(start)
    stop = size if stop is None else operator.index(stop)
    if start < 0 or stop < start or stop > size:
        raise ValueError(f"need 0 <= start <= stop <= len(names) ({size}), got {start} and {stop}")
    view = _state_view(state)
    todo = names[start:stop]
    try:
        entry_fds = None if fds is None else [_fd(fds[k], k) for k in range(start, stop)]
    except BaseException:
        view.release()
        raise

    failures: list[tuple[int, int]] = []
    unlink, fspath = os.unlink, os.fspath
    with view, view.cast("B") as octets, octets.cast("q") as flags:
        begun = len(flags) > 2  # the optional third item: entries begun
        for i, name in enumerate(todo):
            if flags[1]:
                break
            if begun:
                flags[2] = start + i + 1
            fd = one_fd if entry_fds is None else entry_fds[i]
            if entry_fds is None or fd != SKIP:
                try:
                    path = fspath(name)
                except Exception:  # wrong type or a failing __fspath__: this entry only
                    failures.append((start + i, errno.EINVAL))
                else:
                    try:
                        unlink(path, dir_fd=fd)
                    except OSError as exc:
                        if exc.errno != errno.ENOENT:
                            failures.append((start + i, exc.errno or errno.EIO))
                    except ValueError:  # embedded NUL, or a str the file system cannot encode
                        failures.append((start + i, errno.EINVAL))
            flags[0] = start + i + 1
    return failures


def _pure_requested() -> bool:
    return os.environ.get("FASTCLEANUP_PURE_PYTHON", "") not in ("", "0")


COMPILED = False
unlinkat_many = pure_unlinkat_many
if not _pure_requested():
    try:
        from . import _cbulk
    except ImportError:
        pass  # not built (no C compiler at install): the twin does the same work
    else:
        COMPILED = True
        unlinkat_many = _cbulk.unlinkat_many

# What os.unlink is when nobody has replaced it; os.unlink *is* this function.
_REAL_UNLINK = getattr(__import__(os.name), "unlink", None)


def use_compiled() -> bool:
    """True when the compiled path runs and ``os.unlink`` is still the real one.

    A replaced ``os.unlink`` (instrumentation, fault injection in tests)
    must see every unlink, which only the pure-Python twin does.
    """
    return COMPILED and os.unlink is _REAL_UNLINK
