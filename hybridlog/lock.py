"""The writer lock: one writer process per store, enforced with two ``flock`` locks.

1. The **store directory itself**, locked through an ``O_RDONLY | O_DIRECTORY`` descriptor. This is
   the lock that makes a writer the only one: a directory holding the store's files cannot be
   unlinked, so the name a second writer opens is this same directory, whatever happens to the
   files in it.
2. ``<store>/LOCK``, which holds the writer's pid so that a refused writer can say who holds the
   store (the pid is informative only).

Both go away with the process (the kernel drops them on exit or SIGKILL), so there is no stale
lock to clean up.

Deleting or replacing ``LOCK`` while a writer runs does not let a second writer in (it still meets
the directory lock and gets ``StorageLocked``). The writer notices before its next write
(``check``: one ``stat`` of ``LOCK``, compared with the file it locked) and stops writing: that
write and every later one raise ``LockLost`` and write nothing, because someone is tampering with
the store and the writer should not guess why. It keeps the directory lock until it is closed;
reads keep working. Closing it and opening the store again creates a new ``LOCK``.

Every failure to take the lock is a ``StorageError``: ``StorageLocked`` when another writer holds
it, ``StorageIOError`` naming the file and the errno (``ENOSPC``, ``EISDIR``, ``ENOTDIR``...) when
the operating system refuses, and in every case nothing stays open or locked.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from hybridlog.errors import LockLost, StorageIOError, StorageLocked, os_error_detail
from hybridlog.layout import LOCK_FILE


class StoreLock:
    """An exclusive, non-blocking lock on a store directory, held until ``release``."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        fds: list[int] = []
        try:
            fds.append(_open(data_dir, os.O_RDONLY | os.O_DIRECTORY, "the store directory"))
            _flock(fds[0], self.path)  # first: a refused writer creates nothing, not even LOCK
            fds.append(_open(self.path, os.O_RDWR | os.O_CREAT, "the lock file"))
            _flock(fds[1], self.path)
            try:
                os.ftruncate(fds[1], 0)
                os.pwrite(fds[1], f"{os.getpid()}\n".encode(), 0)
            except OSError as e:
                raise _io_error(f"cannot write this process's pid into {self.path}", self.path, e) from e
        except BaseException:
            for fd in fds:
                os.close(fd)  # closing drops the flocks taken so far
            raise
        self._dir_fd: int | None = fds[0]
        self._fd: int | None = fds[1]
        stat = os.fstat(fds[1])
        self._identity = (stat.st_dev, stat.st_ino)
        self._path_str = str(self.path)
        self._lost: str | None = None

    def check(self) -> None:
        """Raise ``LockLost`` if ``LOCK`` is no longer the file this lock holds (then and ever after)."""
        if self._lost is None:
            try:
                stat = os.lstat(self._path_str)  # per write: os.lstat costs a third of Path.lstat
            except FileNotFoundError:
                self._lost = "was deleted"
            except OSError as e:
                self._lost = f"cannot be checked ({e.strerror})"
            else:
                if (stat.st_dev, stat.st_ino) != self._identity:
                    self._lost = "was replaced by another file"
        if self._lost is not None:
            raise LockLost(self.path, self._lost)

    def is_held(self) -> bool:
        """Whether ``check`` passes (the lock file is still the one this lock holds)."""
        try:
            self.check()
        except LockLost:
            return False
        return True

    def release(self) -> None:
        """Let go of the lock (idempotent): empty ``LOCK`` if it is still ours, then close its descriptors."""
        if self._fd is None or self._dir_fd is None:
            return
        fd, self._fd = self._fd, None
        dir_fd, self._dir_fd = self._dir_fd, None
        try:
            if self._lost is None:
                os.ftruncate(fd, 0)  # a lock file that is not ours any more keeps what it holds
        except OSError:
            pass  # the pid is informative only; the lock itself goes with the descriptors
        finally:
            os.close(fd)
            os.close(dir_fd)


def _open(path: Path, flags: int, what: str) -> int:
    try:
        return os.open(path, flags | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise _io_error(f"cannot open {what} to lock the store", path, e) from e


def _flock(fd: int, lock_path: Path) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise StorageLocked(lock_path, _read_pid(lock_path)) from None
    except OSError as e:
        raise _io_error(f"cannot lock {lock_path.parent}", lock_path, e) from e


def _io_error(message: str, path: Path, error: OSError) -> StorageIOError:
    """``StorageIOError`` naming the errno, e.g. "...: No space left on device [ENOSPC]"."""
    return StorageIOError(f"{message}: {os_error_detail(error)}", path=path)


def _read_pid(path: Path) -> int | None:
    try:
        with path.open("rb") as f:
            return int(f.read(32).decode().strip())
    except (ValueError, OSError):
        return None


def writer_holds_lock(data_dir: Path) -> bool:
    """Whether some process holds the writer lock of the store at ``data_dir`` now.

    Asked without taking the lock (a writer opening at that moment must not be refused): Linux
    lists every ``flock`` in ``/proc/locks`` by device and inode. Elsewhere, a shared lock is
    tried and given back at once.
    """
    path = data_dir / LOCK_FILE
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with Path("/proc/locks").open(encoding="ascii") as f:
            return any(line.split()[1:2] == ["FLOCK"] and key in line.split() for line in f)
    except OSError:
        pass
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the shared lock if it was taken
    return False
