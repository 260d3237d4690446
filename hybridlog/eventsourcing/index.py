"""The index of eventsourcing recorders' streams: ``<store>/eventsourcing.db`` (``docs/eventsourcing.md``
section 3). It is derived data, like a projection: every row is computed from the records, and the
index says how far into each stream it has read (``recorders.next_offset`` and the hash of the record
before it). Deleting the file, or a catalog rebuild, loses nothing: the index is read again from the
segments. An index that is ahead of its stream or disagrees with it (a catalog rolled back, a repair
that cut records) is dropped for that stream and read again.

One row per run, not per event: ``runs`` holds an originator's consecutive versions at consecutive
offsets, ``notifications`` consecutive notification ids at consecutive offsets, so an insert of 100
events of one aggregate adds one row to each.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import apsw

from hybridlog.db import catalog_open_error, connect, sqlite_errors
from hybridlog.errors import CatalogUnusable, StorageError
from hybridlog.layout import EVENTSOURCING_INDEX_FILE

INDEX_FILE = EVENTSOURCING_INDEX_FILE
SCHEMA_VERSION = 1
APPLICATION_ID = 0x484C4553  # "HLES"
FLUSH_EVERY = 1000
"""Changes (inserts) after which the index commits."""
FLUSH_INTERVAL = 1.0
"""Seconds after which the index commits what changed."""

SCHEMA = """
CREATE TABLE recorders (
    stream_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    next_offset INTEGER NOT NULL,
    head BLOB,
    next_notification_id INTEGER NOT NULL
);
CREATE TABLE runs (
    stream_id INTEGER NOT NULL,
    originator_key BLOB NOT NULL,
    first_version INTEGER NOT NULL,
    last_version INTEGER NOT NULL,
    first_offset INTEGER NOT NULL,
    PRIMARY KEY (stream_id, originator_key, first_version)
) WITHOUT ROWID;
CREATE TABLE notifications (
    stream_id INTEGER NOT NULL,
    first_id INTEGER NOT NULL,
    last_id INTEGER NOT NULL,
    first_offset INTEGER NOT NULL,
    PRIMARY KEY (stream_id, first_id)
) WITHOUT ROWID;
CREATE TABLE tracking (
    stream_id INTEGER NOT NULL,
    application_name TEXT NOT NULL,
    notification_id INTEGER NOT NULL,
    PRIMARY KEY (stream_id, application_name)
) WITHOUT ROWID;
"""


@dataclass
class RecorderRow:
    """How far the index has read one recorder's stream."""

    stream_id: int
    name: str
    next_offset: int
    head: bytes | None
    next_notification_id: int


@dataclass(frozen=True, slots=True)
class Run:
    """Consecutive values (versions or notification ids) ``first .. last`` at offsets from ``first_offset``."""

    first: int
    last: int
    first_offset: int


def _prepare(conn: apsw.Connection) -> None:
    version = conn.pragma("user_version")
    app_id = conn.pragma("application_id")
    if version == SCHEMA_VERSION and app_id == APPLICATION_ID:
        return
    if version != 0 or app_id != 0:  # another version, or not ours: derived data, so start again
        raise apsw.CorruptError(f"index schema {version} / application id {app_id:#x} is not this module's")
    with conn:
        conn.execute(SCHEMA)
        conn.pragma("application_id", APPLICATION_ID)
        conn.pragma("user_version", SCHEMA_VERSION)


def _open(path: Path, busy_timeout_ms: int) -> apsw.Connection:
    return connect(
        path,
        read_only=False,
        busy_timeout_ms=busy_timeout_ms,
        durable_commits=False,  # derived: a commit a power loss takes is read again from the stream
        what="eventsourcing index",
        prepare=_prepare,
        error=lambda e, conn: catalog_open_error(e, conn, path, read_only=False, busy_timeout_ms=busy_timeout_ms),
    )


def open_index_connection(data_dir: Path, busy_timeout_ms: int) -> apsw.Connection:
    """The index file of the store at ``data_dir``, created if missing; a file that is not a usable
    index of this version is removed (with its WAL) and created again, since it holds nothing the
    segments do not."""
    path = data_dir / INDEX_FILE
    try:
        return _open(path, busy_timeout_ms)
    except CatalogUnusable:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return _open(path, busy_timeout_ms)


class EventIndex:
    """The index's one connection and its statements, used under the shared store's lock.

    Changes go into one long write transaction (``begin``), committed by ``flush`` every
    ``FLUSH_EVERY`` changes or ``FLUSH_INTERVAL`` seconds and on close: the segments are the durable
    copy, so an index commit needs no fsync and need not follow every insert, and a crash loses only
    index rows that are read again from the stream. A change that fails half-way is not undone on
    its own: the caller ``abandon``s the whole open transaction and reads its streams again from
    what was committed. Reads go through the same connection, so they see every change made so far.
    """

    def __init__(self, data_dir: Path, busy_timeout_ms: int) -> None:
        self.conn = open_index_connection(data_dir, busy_timeout_ms)
        self._in_transaction = False
        self._changes = 0
        self._since = time.monotonic()

    def close(self) -> None:
        """Close the connection (``flush`` first to keep what is not committed)."""
        if self._in_transaction:
            self.conn.execute("ROLLBACK")
            self._in_transaction = False
        self.conn.close()

    def begin(self) -> apsw.Connection:
        """The connection, inside the open write transaction (begun if none is)."""
        if not self._in_transaction:
            with sqlite_errors("eventsourcing index write failed", error=StorageError):
                self.conn.execute("BEGIN IMMEDIATE")
            self._in_transaction = True
            self._since = time.monotonic()
        self._changes += 1
        return self.conn

    def abandon(self) -> None:
        """Roll back everything not committed (the caller forgets what it knew of it)."""
        if self._in_transaction:
            self._in_transaction = False
            self.conn.execute("ROLLBACK")

    def due(self) -> bool:
        """Whether enough changed, or long enough ago, to commit."""
        return self._changes >= FLUSH_EVERY or time.monotonic() - self._since >= FLUSH_INTERVAL

    def flush(self, rows: Iterable[RecorderRow]) -> None:
        """Save ``rows`` (how far each stream is indexed) and commit everything changed."""
        conn = self.begin()
        with sqlite_errors("eventsourcing index commit failed", error=StorageError):
            for row in rows:
                self.save_recorder(conn, row)
            self.conn.execute("COMMIT")
        self._in_transaction = False
        self._changes = 0

    # --- recorders -------------------------------------------------------------------------------

    @staticmethod
    def recorder(conn: apsw.Connection, stream_id: int) -> RecorderRow | None:
        """The row of the recorder writing ``stream_id``."""
        row = conn.execute(
            "SELECT name, next_offset, head, next_notification_id FROM recorders WHERE stream_id = ?", (stream_id,)
        ).fetchone()
        if row is None:
            return None
        name, next_offset, head, next_id = row
        return RecorderRow(stream_id, name, next_offset, head, next_id)

    @staticmethod
    def save_recorder(conn: apsw.Connection, row: RecorderRow) -> None:
        """Insert or update a recorder's row."""
        conn.execute(
            "INSERT INTO recorders VALUES (?, ?, ?, ?, ?) ON CONFLICT (stream_id) DO UPDATE SET "
            "next_offset = excluded.next_offset, head = excluded.head, "
            "next_notification_id = excluded.next_notification_id",
            (row.stream_id, row.name, row.next_offset, row.head, row.next_notification_id),
        )

    @staticmethod
    def forget(conn: apsw.Connection, stream_id: int) -> None:
        """Drop every row of one stream (before it is read again from offset 0)."""
        for table in ("recorders", "runs", "notifications", "tracking"):
            conn.execute(f"DELETE FROM {table} WHERE stream_id = ?", (stream_id,))  # noqa: S608  # fixed names

    # --- aggregates ------------------------------------------------------------------------------

    @staticmethod
    def run_at_or_before(conn: apsw.Connection, stream_id: int, key: bytes, version: int) -> Run | None:
        """The originator's run with the highest first version at or below ``version`` (runs never overlap)."""
        row = conn.execute(
            "SELECT first_version, last_version, first_offset FROM runs "
            "WHERE stream_id = ? AND originator_key = ? AND first_version <= ? ORDER BY first_version DESC LIMIT 1",
            (stream_id, key, version),
        ).fetchone()
        return None if row is None else Run(*cast(tuple[int, int, int], row))

    @staticmethod
    def add_runs(conn: apsw.Connection, stream_id: int, runs: list[tuple[bytes, Run]]) -> None:
        """Index runs of versions."""
        conn.executemany(
            "INSERT INTO runs VALUES (?, ?, ?, ?, ?)",
            [(stream_id, key, run.first, run.last, run.first_offset) for key, run in runs],
        )

    @staticmethod
    def runs(conn: apsw.Connection, stream_id: int, key: bytes, gt: int | None, lte: int | None) -> list[Run]:
        """The originator's runs that hold a version in (gt, lte], in version order."""
        low = -(2**63) if gt is None else gt
        high = 2**63 - 1 if lte is None else lte
        rows = conn.execute(
            "SELECT first_version, last_version, first_offset FROM runs WHERE stream_id = ? AND originator_key = ? "
            "AND first_version <= ? AND last_version > ? ORDER BY first_version",
            (stream_id, key, high, low),
        ).fetchall()
        return [Run(*cast(tuple[int, int, int], row)) for row in rows]

    # --- notifications ---------------------------------------------------------------------------

    @staticmethod
    def add_notifications(conn: apsw.Connection, stream_id: int, run: Run) -> None:
        """Index notification ids ``run.first .. run.last``."""
        conn.execute(
            "INSERT INTO notifications VALUES (?, ?, ?, ?)", (stream_id, run.first, run.last, run.first_offset)
        )

    @staticmethod
    def offset_of_notification(conn: apsw.Connection, stream_id: int, lowest: int) -> int | None:
        """The offset of the first event whose notification id is ``lowest`` or more (None: no such event)."""
        row = conn.execute(
            "SELECT first_id, last_id, first_offset FROM notifications "
            "WHERE stream_id = ? AND first_id <= ? ORDER BY first_id DESC LIMIT 1",
            (stream_id, lowest),
        ).fetchone()
        if row is not None and row[1] >= lowest:
            return int(row[2] + (lowest - row[0]))
        row = conn.execute(
            "SELECT first_offset FROM notifications WHERE stream_id = ? AND first_id > ? ORDER BY first_id LIMIT 1",
            (stream_id, lowest),
        ).fetchone()
        return None if row is None else int(row[0])

    # --- tracking --------------------------------------------------------------------------------

    @staticmethod
    def max_tracking_id(conn: apsw.Connection, stream_id: int, application_name: str) -> int | None:
        """The highest notification id of ``application_name`` tracked in the stream."""
        row = conn.execute(
            "SELECT notification_id FROM tracking WHERE stream_id = ? AND application_name = ?",
            (stream_id, application_name),
        ).fetchone()
        return None if row is None else int(row[0])

    @staticmethod
    def set_tracking_id(conn: apsw.Connection, stream_id: int, application_name: str, notification_id: int) -> None:
        """Record ``notification_id`` as the application's highest tracked id."""
        conn.execute(
            "INSERT INTO tracking VALUES (?, ?, ?) ON CONFLICT (stream_id, application_name) "
            "DO UPDATE SET notification_id = excluded.notification_id",
            (stream_id, application_name, notification_id),
        )


def runs_of(values: list[tuple[bytes, int, int]]) -> list[tuple[bytes, Run]]:
    """(key, value, offset) triples, in offset order, folded into runs: a run goes on while the key
    is the same and both the value and the offset go up by one."""
    runs: list[tuple[bytes, Run]] = []
    for key, value, offset in values:
        if runs:
            last_key, last = runs[-1]
            if (
                last_key == key
                and value == last.last + 1
                and offset == last.first_offset + (last.last - last.first) + 1
            ):
                runs[-1] = (key, Run(last.first, value, last.first_offset))
                continue
        runs.append((key, Run(value, value, offset)))
    return runs
