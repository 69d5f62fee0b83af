"""The on-disk protocol of scratch directories: names, locks, creation and claims.

Everything here works on descriptors (``dir_fd``, ``O_NOFOLLOW``) and runs on
the cleaner's executor threads or at exit, never on the loop; ``_scratch``
is the cleaner's side of it.

Names under ``base`` (nothing else there is ever touched):

* ``fc-<pid>-<token>``: a directory in use; its ``.fastcleanup.lock`` is
  locked by its owner for as long as the owner lives. ``<pid>`` is the
  owner's pid in base 36 and ``<token>`` four base-36 characters: two from
  the owner's start time (so that a later process with the same pid is told
  apart) and two random ones. Short, so that a browser's unix socket fits
  below it (see ``SOCKET_BUDGET``). Version 0.1 named it
  ``fastcleanup-<pid>-<16 hex>``; such names are swept too.
* ``.fc-new-<pid>-<token>`` (or ``.fastcleanup-new-<pid>-<16 hex>``): being
  created. The owner takes its lock under this name and only then renames it
  into place, so a directory never carries the in-use name without a held
  lock. The sweep leaves these alone until they are older than ``GRACE``
  seconds, and while their creator holds a shared ``flock`` on the
  directory itself.
* ``.fastcleanup-dead-<token>``: claimed by a sweeper, which renamed it so
  (one rename wins against the owner's rename and other sweepers) while
  holding an ``flock`` on the directory itself, and now removes it. One
  whose sweeper died too is swept again.

A dead owner's directory (its lock free) is left alone while another
process still uses it: has a descriptor open in it, or its working
directory there (``/proc/*/fd``, ``/proc/*/cwd``), such as the owner's
browser, still running. An in-use name WITHOUT a lock file is what such an
orphan leaves when it recreates a directory removed under it; it is swept
once its owner is dead (no process with its pid, or one that started at
another time), nothing changed in it for ``GRACE`` seconds, and no process
uses it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import time
from collections.abc import Callable
from typing import Final

from ._paths import Roots
from ._tree import remove_tree

__all__ = [
    "GRACE",
    "LOCK",
    "NAME_MAX",
    "SOCKET_BUDGET",
    "Counter",
    "close_fds",
    "create",
    "key_of",
    "sweep_sync",
]

LOCK: Final = ".fastcleanup.lock"
# Seconds an in-creation directory, or a lock-less one an orphan recreated,
# is left alone after its last change (creating one takes microseconds).
GRACE = 60.0

# In-use and in-creation names; group 1 is the key of a short name
# ("<pid>-<token>"), group 2 that of a long one (version 0.1).
_IN_USE = re.compile(r"fc-([0-9a-z]{1,6}-[0-9a-z]{4})|fastcleanup-([0-9]+-[0-9a-f]{16})")
_NEW = re.compile(r"\.fc-new-([0-9a-z]{1,6}-[0-9a-z]{4})|\.fastcleanup-new-([0-9]+-[0-9a-f]{16})")
_DEAD = re.compile(r"\.fastcleanup-dead-([0-9a-f]{16})")

_DIGITS: Final = "0123456789abcdefghijklmnopqrstuvwxyz"
# The longest in-use name: "fc-" and a pid up to 2**22 (Linux's pid_max
# ceiling, 5 base-36 digits), "-", a 4-character token.
NAME_MAX: Final = len("fc-") + 5 + 1 + 4
# What a unix socket's path may hold (sun_path is 108 bytes with its NUL).
SOCKET_BUDGET: Final = 107

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW
_LOCK_FLAGS = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW
# Creations a sweeper may take from us (one per GRACE at the most), or names
# already taken, before we give up.
_ATTEMPTS = 16

Counter = Callable[[str, int], None]  # (directory name, files in it), once per directory swept


# -- the file-system side: runs on the cleaner's executor threads, or at exit ------


def _token() -> str:
    return os.urandom(8).hex()


def _base36(n: int) -> str:
    out = ""
    while True:
        n, digit = divmod(n, 36)
        out = _DIGITS[digit] + out
        if not n:
            return out


def _stamp(pid: int) -> str | None:
    """Two base-36 characters of ``pid``'s start time; None if no such process lives.

    The start time (``/proc/<pid>/stat``, field 22, clock ticks since boot)
    tells a process from a later one that got the same pid. A zombie (dead,
    not yet reaped by its parent) counts as no process.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    fields = stat[stat.rindex(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return _base36(int(fields[19]) % 36**2).rjust(2, "0")


def key_of(name: str) -> str | None:
    """The ``<pid>-<token>`` of an in-use or in-creation name, else None."""
    match = _IN_USE.fullmatch(name) or _NEW.fullmatch(name)
    return None if match is None else match[1] or match[2]


def _try_lock(fd: int, shared: bool = False) -> bool:
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def close_fds(*fds: int | None) -> None:
    for fd in fds:
        if fd is not None:
            os.close(fd)


def create(base_fd: int, pid: int) -> tuple[str, int]:
    """Make ``fc-<pid>-<token>`` under ``base_fd``, locked; return its name and lock fd.

    The lock is taken under the in-creation name, then the directory is
    renamed into place: there is no moment at which the in-use name exists
    unlocked. Meanwhile a shared ``flock`` on the directory itself keeps
    sweepers out, whose claim is that same lock taken exclusively. A sweeper
    that claimed the directory first (it is older than ``GRACE``: this thread
    was stopped in between) makes that lock or the rename fail, and we start
    again under a new name without writing into the claimed directory.
    """
    stamp = _stamp(pid) or "00"  # no /proc: such names are never taken for an orphan's
    for _ in range(_ATTEMPTS):
        key = f"{_base36(pid)}-{stamp}{_base36(int.from_bytes(os.urandom(2)) % 36**2):0>2}"
        new, final = f".fc-new-{key}", f"fc-{key}"
        if _exists(base_fd, final):
            continue  # ours already, or our browser's: two random characters are few
        try:
            os.mkdir(new, 0o700, dir_fd=base_fd)
        except FileExistsError:
            continue
        dir_fd = lock_fd = None
        try:
            dir_fd = os.open(new, _DIR_FLAGS, dir_fd=base_fd)
            if not _try_lock(dir_fd, shared=True):
                continue  # claimed by a sweeper meanwhile; it removes that one
            lock_fd = os.open(LOCK, _LOCK_FLAGS | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=dir_fd)
            if _try_lock(lock_fd):
                os.rename(new, final, src_dir_fd=base_fd, dst_dir_fd=base_fd)
                fd, lock_fd = lock_fd, None
                return final, fd
        except FileNotFoundError:
            pass  # claimed by a sweeper meanwhile; it removes that one
        finally:
            close_fds(dir_fd, lock_fd)
    raise OSError(errno.EAGAIN, f"could not create a scratch directory in {_ATTEMPTS} attempts")


def _exists(base_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=base_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def sweep_sync(base: str, count: Counter, own: frozenset[str] = frozenset()) -> list[OSError]:
    """Remove every scratch directory under ``base`` whose owner is dead; return the errors.

    ``count`` is called once per directory removed, as soon as it is gone.
    ``own`` are keys (``key_of``) of this process's own directories, never
    even opened (on a file system that emulates flock with POSIX locks,
    closing any descriptor of a locked file drops the lock).
    """
    try:
        base_fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return []  # removed since it was registered: nothing left to sweep
    errors: list[OSError] = []
    try:
        roots = Roots([base])  # the removal is confined to base, whatever the cleaner's roots
        users = Users(base)
        for name in os.listdir(base_fd):
            try:
                claimed = _claim(base_fd, name, own, users)
            except OSError as exc:
                errors.append(exc)
                continue
            if claimed is None:
                continue
            dead, fds = claimed
            try:
                files = _count_files(base_fd, dead)
                remove_tree(os.path.join(base, dead), roots)
            except OSError as exc:
                errors.append(exc)
            else:
                count(name, files)
            finally:
                close_fds(*fds)  # only now: the claim holds until the tree is gone
    finally:
        os.close(base_fd)
    return errors


def _claim(
    base_fd: int, name: str, own: frozenset[str], users: Users
) -> tuple[str, tuple[int, ...]] | None:
    """Take ``name`` for removal if it is a dead owner's; None if it is not ours to take.

    Returns the name it now has and the descriptors that hold the claim.
    """
    match = _IN_USE.fullmatch(name) or _NEW.fullmatch(name) or _DEAD.fullmatch(name)
    if match is None or (match.re is not _DEAD and (match[1] or match[2]) in own):
        return None
    try:
        # O_NOFOLLOW: a symlink (or a file) under a scratch name is left alone.
        dir_fd = os.open(name, _DIR_FLAGS, dir_fd=base_fd)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return None
        raise
    held = [dir_fd]  # closed on every way out but a claim, which hands them over
    try:
        # The directory's own flock is the sweepers' claim: two sweepers never
        # both take one, and one whose sweeper died is free again.
        if not _try_lock(dir_fd) or not _still_named(base_fd, name, dir_fd):
            return None
        if match.re is _DEAD:
            return name, _hand_over(held)
        if match.re is _NEW and time.time() - os.fstat(dir_fd).st_mtime < GRACE:
            return None  # maybe being created right now
        try:
            lock_fd = os.open(LOCK, _LOCK_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            # Every directory of ours has its lock file: without one, an in-use
            # name is an orphan's recreation of a dead owner's, or not ours.
            if match.re is _IN_USE and not _orphaned(match[1], dir_fd, name, users):
                return None
        else:
            held.append(lock_fd)
            if not _try_lock(lock_fd):
                return None  # its owner is alive
            if match.re is _IN_USE and users.use(name):
                return None  # its owner is dead, but its browser (say) still works in it
        dead = f".fastcleanup-dead-{_token()}"
        try:
            # Wins or loses whole against the owner's rename into place.
            os.rename(name, dead, src_dir_fd=base_fd, dst_dir_fd=base_fd)
        except FileNotFoundError:
            return None
        return dead, _hand_over(held)
    finally:
        close_fds(*held)


def _orphaned(key: str | None, dir_fd: int, name: str, users: Users) -> bool:
    """True if the lock-less in-use directory ``name`` is a dead owner's, left by an orphan.

    Only short names carry their owner's start time; a long one without a
    lock stays unproven, and is left alone.
    """
    if key is None or not os.path.isdir("/proc/self"):
        return False
    pid36, token = key.split("-")
    pid = int(pid36, 36)
    if _stamp(pid) == token[:2]:
        return False  # its owner lives (or a process we cannot tell from it)
    st = os.fstat(dir_fd)
    if time.time() - max(st.st_mtime, st.st_ctime) < GRACE:
        return False  # changed lately: maybe still being written
    return not users.use(name)


class Users:
    """Which entries of ``base`` other processes use: a descriptor open in one, or a cwd.

    Read from ``/proc`` once per sweep, on first need. Processes whose
    ``/proc/<pid>/fd`` cannot be read (another user's, without privilege)
    are not seen. This process is left out: its own sweeps hold the
    directories they claim open.
    """

    __slots__ = ("_names", "_prefix")

    def __init__(self, base: str) -> None:
        self._prefix = os.path.join(os.path.realpath(base), "")
        self._names: set[str] | None = None

    def use(self, name: str) -> bool:
        if self._names is None:
            self._names = self._read()
        return name in self._names

    def _read(self) -> set[str]:
        names: set[str] = set()
        me, prefix = str(os.getpid()), self._prefix
        try:
            pids = [p for p in os.listdir("/proc") if p.isdigit() and p != me]
        except OSError:
            return names
        for pid in pids:
            links = [f"/proc/{pid}/cwd"]
            try:
                links += [f"/proc/{pid}/fd/{fd}" for fd in os.listdir(f"/proc/{pid}/fd")]
            except OSError:
                pass  # gone meanwhile, or not ours to read
            for link in links:
                try:
                    target = os.readlink(link)
                except OSError:
                    continue
                if target.startswith(prefix):
                    names.add(target[len(prefix) :].split("/", 1)[0])
        return names


def _hand_over(held: list[int]) -> tuple[int, ...]:
    fds = tuple(held)
    held.clear()
    return fds


def _still_named(base_fd: int, name: str, fd: int) -> bool:
    """True if ``name`` still names the directory open as ``fd`` (not renamed or replaced)."""
    try:
        now = os.stat(name, dir_fd=base_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)


def _count_files(base_fd: int, name: str) -> int:
    """Entries other than directories in the tree ``name``, its lock file left out.

    Walked by descriptor with ``O_NOFOLLOW``: a symlink counts as one entry
    and is never followed. One descriptor per level is open at a time.
    """
    files = 0
    top = os.open(name, _DIR_FLAGS, dir_fd=base_fd)
    stack = [(top, os.scandir(top))]
    try:
        while stack:
            fd, entries = stack[-1]
            entry = next(entries, None)
            if entry is None:
                entries.close()
                os.close(fd)
                stack.pop()
            elif entry.is_dir(follow_symlinks=False):
                try:
                    sub = os.open(entry.name, _DIR_FLAGS, dir_fd=fd)
                except OSError:
                    continue  # swapped for something else: the removal sees to it
                stack.append((sub, os.scandir(sub)))
            elif not (len(stack) == 1 and entry.name == LOCK):
                files += 1
    finally:
        for fd, entries in stack:
            entries.close()
            os.close(fd)
    return files
