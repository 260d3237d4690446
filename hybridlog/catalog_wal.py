"""The writer's catalog WAL, copied into the database file by a thread of its own.

The catalog runs in WAL mode with ``synchronous = NORMAL`` (``db.py``): a commit writes its pages
to the WAL and is not fsynced (the segment fsync is the durability point; the catalog is rebuilt
from the segments if a power loss takes its last commits). What NORMAL does sync is the
*checkpoint* that copies the WAL into the database file: the WAL before the copy, the file after
it. SQLite runs that checkpoint inside the commit that takes the WAL past its threshold, so one
append in a few hundred waited for those fsyncs and the copy (measured: about half the cost of a
small batch's commit, averaged over the appends).

``BackgroundCheckpoints`` takes the checkpoint off the append path, changing nothing about what
is durable when: the writer's connection stops checkpointing on commit (a WAL hook replaces
SQLite's automatic checkpoint), and when a commit leaves ``WAL_PAGES`` or more pages in the WAL,
a thread wakes and runs a PASSIVE checkpoint on its own connection (with NORMAL's syncs). PASSIVE
never waits for the writer or for readers, and copies what it can; the WAL starts over once a
checkpoint has copied all of it. Closing stops the thread first, then the writer's connection
folds what is left, as before.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import apsw

log = logging.getLogger(__name__)

WAL_PAGES = 1000
"""Pages in the WAL after a commit that wake the checkpoint (SQLite's own default threshold)."""


class BackgroundCheckpoints:
    """Checkpoints of the catalog at ``path`` for the writer connection ``conn``, from a thread."""

    def __init__(self, path: Path, conn: apsw.Connection, busy_timeout_ms: int) -> None:
        self._path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        conn.set_wal_hook(self._after_commit)  # replaces the automatic checkpoint on commit

    def _after_commit(self, _conn: apsw.Connection, _name: str, pages: int) -> int:
        if pages >= WAL_PAGES:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="hybridlog-wal", daemon=True)
                self._thread.start()
            self._wake.set()
        return apsw.SQLITE_OK

    def _run(self) -> None:
        conn: apsw.Connection | None = None
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._stopping:
                    return
                try:
                    if conn is None:
                        conn = apsw.Connection(str(self._path), flags=apsw.SQLITE_OPEN_READWRITE)
                        conn.set_busy_timeout(self._busy_timeout_ms)
                        conn.pragma("synchronous", "normal")  # the checkpoint's syncs, as before
                    conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
                except apsw.Error as e:  # the next commit asks again; closing folds the WAL anyway
                    log.warning("catalog %s: background WAL checkpoint failed: %s", self._path, e)
        finally:
            if conn is not None:
                conn.close()

    def close(self) -> None:
        """Stop the thread (after the checkpoint it may be running) and close its connection."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
