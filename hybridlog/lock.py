"""The writer lock: one writer process per store, enforced with ``flock`` on ``<store>/LOCK``.

The lock file holds the writer's pid so that a refused writer can say who holds the store. The
lock goes away with the process (the kernel drops it on exit or SIGKILL), so there is no stale
lock to clean up; the pid left in the file is only informative.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from hybridlog.errors import StorageLocked

LOCK_FILE = "LOCK"


class StoreLock:
    """An exclusive, non-blocking lock on a store directory, held until ``release``."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise StorageLocked(self.path, holder) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
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
        st = os.stat(path)
    except FileNotFoundError:
        return False
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii") as f:
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
