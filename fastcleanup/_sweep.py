"""The on-disk protocol of scratch directories: names, locks, creation and claims.

Everything here works on descriptors (``dir_fd``, ``O_NOFOLLOW``) and runs on
the cleaner's executor threads or at exit, never on the loop; ``_scratch``
is the cleaner's side of it.

Names under ``base`` (nothing else there is ever touched):

* ``fastcleanup-<pid>-<token>``: a directory in use; its ``.fastcleanup.lock``
  is locked by its owner for as long as the owner lives.
* ``.fastcleanup-new-<pid>-<token>``: being created. The owner takes its
  lock under this name and only then renames it into place, so a directory
  never carries the in-use name without a held lock. The sweep leaves these
  alone until they are older than ``GRACE`` seconds, and while their creator
  holds a shared ``flock`` on the directory itself.
* ``.fastcleanup-dead-<token>``: claimed by a sweeper, which renamed it so
  (one rename wins against the owner's rename and other sweepers) while
  holding an ``flock`` on the directory itself, and now removes it. One
  whose sweeper died too is swept again.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import time
from collections.abc import Callable
from typing import Final

from ._paths import Roots, remove_tree_confined

__all__ = ["GRACE", "LOCK", "Counter", "close_fds", "create", "sweep_sync"]

LOCK: Final = ".fastcleanup.lock"
GRACE = 60.0  # seconds an in-creation directory is left alone (creating one takes microseconds)

_IN_USE = re.compile(r"fastcleanup-[0-9]+-([0-9a-f]{16})")
_NEW = re.compile(r"\.fastcleanup-new-[0-9]+-([0-9a-f]{16})")
_DEAD = re.compile(r"\.fastcleanup-dead-([0-9a-f]{16})")

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW
_LOCK_FLAGS = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW
_ATTEMPTS = 8  # creations a sweeper may take from us (one per GRACE at the most) before we give up

Counter = Callable[[str, int], None]  # (directory name, files in it), once per directory swept


# -- the file-system side: runs on the cleaner's executor threads, or at exit ------


def _token() -> str:
    return os.urandom(8).hex()


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
    """Make ``fastcleanup-<pid>-<token>`` under ``base_fd``, locked; return its name and lock fd.

    The lock is taken under the in-creation name, then the directory is
    renamed into place: there is no moment at which the in-use name exists
    unlocked. Meanwhile a shared ``flock`` on the directory itself keeps
    sweepers out, whose claim is that same lock taken exclusively. A sweeper
    that claimed the directory first (it is older than ``GRACE``: this thread
    was stopped in between) makes that lock or the rename fail, and we start
    again under a new name without writing into the claimed directory.
    """
    for _ in range(_ATTEMPTS):
        token = _token()
        new, final = f".fastcleanup-new-{pid}-{token}", f"fastcleanup-{pid}-{token}"
        os.mkdir(new, 0o700, dir_fd=base_fd)
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


def sweep_sync(base: str, count: Counter, own: frozenset[str] = frozenset()) -> list[OSError]:
    """Remove every scratch directory under ``base`` whose owner is dead; return the errors.

    ``count`` is called once per directory removed, as soon as it is gone.
    ``own`` are tokens of this process's own directories, never even opened
    (on a file system that emulates flock with POSIX locks, closing any
    descriptor of a locked file drops the lock).
    """
    try:
        base_fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return []  # removed since it was registered: nothing left to sweep
    errors: list[OSError] = []
    try:
        roots = Roots([base])  # the removal is confined to base, whatever the cleaner's roots
        for name in os.listdir(base_fd):
            try:
                claimed = _claim(base_fd, name, own)
            except OSError as exc:
                errors.append(exc)
                continue
            if claimed is None:
                continue
            dead, fds = claimed
            try:
                files = _count_files(base_fd, dead)
                remove_tree_confined(os.path.join(base, dead), roots)
            except OSError as exc:
                errors.append(exc)
            else:
                count(name, files)
            finally:
                close_fds(*fds)  # only now: the claim holds until the tree is gone
    finally:
        os.close(base_fd)
    return errors


def _claim(base_fd: int, name: str, own: frozenset[str]) -> tuple[str, tuple[int, ...]] | None:
    """Take ``name`` for removal if it is a dead owner's; None if it is not ours to take.

    Returns the name it now has and the descriptors that hold the claim.
    """
    match = _IN_USE.fullmatch(name) or _NEW.fullmatch(name) or _DEAD.fullmatch(name)
    if match is None or match[1] in own:
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
            if match.re is _IN_USE:
                return None  # every directory of ours has its lock file: this one is not ours
        else:
            held.append(lock_fd)
            if not _try_lock(lock_fd):
                return None  # its owner is alive
        dead = f".fastcleanup-dead-{_token()}"
        try:
            # Wins or loses whole against the owner's rename into place.
            os.rename(name, dead, src_dir_fd=base_fd, dst_dir_fd=base_fd)
        except FileNotFoundError:
            return None
        return dead, _hand_over(held)
    finally:
        close_fds(*held)


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
