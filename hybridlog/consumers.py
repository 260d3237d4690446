"""Named consumers: the last global position each one acknowledged, in ``<store>/consumers.db``.

A consumer is a name for a subscription that resumes where it left off: ``subscribe(consumer=
NAME)`` registers it (with the streams it follows: one, or every stream) and starts after its
position; ``ack(NAME, position)`` moves the position forward. The position means "every record
the consumer follows, up to this global position, is done".

Why a file of its own, not a table in the catalog: consumers run in reader processes, and the
catalog has one writer (the process holding ``LOCK``); the catalog is an index that a rebuild
moves aside and builds afresh from the segments, while consumer positions exist nowhere else.
So ``consumers.db`` is written by whichever process acknowledges (SQLite serialises them, each
write one short ``BEGIN IMMEDIATE`` transaction), commits with ``synchronous = FULL`` (an ack
survives a power loss), and is never moved by recovery or repair. Its schema is the SQL in
``migrations/consumers/`` on its own ``user_version`` ladder; ``docs/schema.md`` documents it.

Each ack also stores which record was at that position (``acked_stream_id``, ``acked_offset``), so
a later subscription can tell that positions were renumbered since (a full catalog rebuild) and
refuse to guess instead of skipping or repeating records (``ConsumerPositionLost``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import apsw

from hybridlog.catalog import load_migrations, migrations_dir
from hybridlog.errors import ConsumerError, ConsumerMismatch, InvalidArgument, UnknownConsumer
from hybridlog.types import GlobalPosition, Offset, StreamId

CONSUMERS_FILE = "consumers.db"
MAX_CONSUMER_NAME = 200
BUSY_TIMEOUT_MS = 5000


def consumer_migrations() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of ``consumers.db``'s schema, in order."""
    return load_migrations(migrations_dir() / "consumers")


CONSUMERS_SCHEMA_VERSION = len(consumer_migrations())


@dataclass(frozen=True, slots=True)
class ConsumerState:
    """One named consumer: what it follows and how far it has acknowledged.

    ``stream_id``: the stream it follows (None: every stream). ``position``: the last global
    position acknowledged (0: nothing yet). ``acked``: (stream, offset) of the record that was at
    ``position`` when it was acknowledged (None for 0, or a position no record had).
    """

    name: str
    stream_id: StreamId | None
    position: GlobalPosition
    acked: tuple[StreamId, Offset] | None
    created_at_ns: int
    updated_at_ns: int


def check_consumer_name(name: object) -> str:
    """``name`` if it is a usable consumer name (1 to 200 characters, no NUL, no lone surrogate:
    it is stored as UTF-8), else InvalidArgument."""
    if not isinstance(name, str):
        raise InvalidArgument(f"consumer name must be a str, not {type(name).__name__}")
    if not 1 <= len(name) <= MAX_CONSUMER_NAME or "\0" in name:
        raise InvalidArgument(f"consumer name must be 1 to {MAX_CONSUMER_NAME} characters without NUL: {name!r}")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidArgument(
            f"consumer name must be valid Unicode text: lone surrogate {name[e.start]!r} at index {e.start} in {name!r}"
        ) from e
    return name


_COLUMNS = "name, stream_id, position, acked_stream_id, acked_offset, created_at_ns, updated_at_ns"


def _state(row: tuple[str, int | None, int, int | None, int | None, int, int]) -> ConsumerState:
    name, stream_id, position, acked_stream, acked_offset, created, updated = row
    acked = None if acked_stream is None or acked_offset is None else (StreamId(acked_stream), Offset(acked_offset))
    return ConsumerState(
        name, None if stream_id is None else StreamId(stream_id), GlobalPosition(position), acked, created, updated
    )


class ConsumerStore:
    """One apsw connection to ``consumers.db``; safe to share between threads (calls are serialised)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / CONSUMERS_FILE
        self._lock = threading.Lock()
        try:
            self.conn = apsw.Connection(str(self.path), flags=apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE)
            # Other processes acknowledge too: wait for their short transactions rather than fail.
            self.conn.set_busy_timeout(BUSY_TIMEOUT_MS)
            # Readers of positions never wait for a process that is acknowledging.
            self.conn.pragma("journal_mode", "wal")
            # Positions exist nowhere else (unlike the catalog): every ack is durable when it returns.
            self.conn.pragma("synchronous", "full")
            self._migrate()
        except BaseException as e:
            if hasattr(self, "conn"):
                self.conn.close()
            if isinstance(e, apsw.Error):
                raise ConsumerError(f"cannot open {self.path}: {e}") from e
            raise

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    @contextmanager
    def _write(self) -> Iterator[None]:
        """One write transaction that holds SQLite's write lock from its start, so what it reads
        cannot change before it writes (two processes acknowledging one consumer take turns)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def _migrate(self) -> None:
        for version, _name, sql in consumer_migrations():
            with self._write():  # the version is read under the write lock: one process applies each step
                found = int(self.conn.pragma("user_version"))
                if found > CONSUMERS_SCHEMA_VERSION:
                    raise ConsumerError(
                        f"{self.path} has schema version {found}; this hybridlog knows up to "
                        f"{CONSUMERS_SCHEMA_VERSION}",
                        hint="upgrade hybridlog",
                    )
                if found < version:
                    self.conn.execute(sql)
                    self.conn.pragma("user_version", version)

    def _get(self, name: str) -> ConsumerState | None:
        row = self.conn.execute(f"SELECT {_COLUMNS} FROM consumers WHERE name = ?", (name,)).fetchone()  # noqa: S608
        return None if row is None else _state(row)

    def get(self, name: str) -> ConsumerState | None:
        with self._lock:
            try:
                return self._get(name)
            except apsw.Error as e:
                raise ConsumerError(f"cannot read {self.path}: {e}") from e

    def all(self) -> list[ConsumerState]:
        with self._lock:
            try:
                rows = self.conn.execute(f"SELECT {_COLUMNS} FROM consumers ORDER BY name")  # noqa: S608
                return [_state(row) for row in rows]
            except apsw.Error as e:
                raise ConsumerError(f"cannot read {self.path}: {e}") from e

    def register(self, name: str, stream_id: StreamId | None, now_ns: int) -> ConsumerState:
        """The consumer, created at position 0 if it is new; ConsumerMismatch if it follows other streams."""
        with self._lock:
            try:
                with self._write():
                    self.conn.execute(
                        "INSERT INTO consumers (name, stream_id, position, created_at_ns, updated_at_ns)"
                        " VALUES (?1, ?2, 0, ?3, ?3) ON CONFLICT (name) DO NOTHING",
                        (name, stream_id, now_ns),
                    )
                    state = self._get(name)
                    assert state is not None
                    if state.stream_id != stream_id:
                        raise ConsumerMismatch(name, state.stream_id, stream_id)  # rolls the insert back
            except apsw.Error as e:
                raise ConsumerError(f"cannot register consumer {name!r} in {self.path}: {e}") from e
        return state

    def ack(
        self,
        name: str,
        position: GlobalPosition,
        acked: tuple[StreamId, Offset] | None,
        *,
        force: bool,
        now_ns: int,
    ) -> ConsumerState:
        """Set the consumer's position, in one transaction with the checks that allow it.

        A position behind the stored one is refused (InvalidArgument) unless ``force``: moving a
        consumer back makes it receive records again, which only its owner may decide.
        """
        with self._lock:
            try:
                with self._write():
                    state = self._get(name)
                    if state is None:
                        raise UnknownConsumer(name)
                    if position < state.position and not force:
                        raise InvalidArgument(
                            f"consumer {name!r} has acknowledged up to position {state.position};"
                            f" {position} would move it back",
                            hint="pass force=True to move a consumer back on purpose",
                        )
                    self.conn.execute(
                        "UPDATE consumers SET position = ?, acked_stream_id = ?, acked_offset = ?, updated_at_ns = ?"
                        " WHERE name = ?",
                        (
                            position,
                            None if acked is None else acked[0],
                            None if acked is None else acked[1],
                            now_ns,
                            name,
                        ),
                    )
                    state = self._get(name)
                    assert state is not None
            except apsw.Error as e:
                raise ConsumerError(f"cannot acknowledge for consumer {name!r} in {self.path}: {e}") from e
        return state
