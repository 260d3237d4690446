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
``migrations/consumers/``, on the ``user_version`` ladder of ``db.py``; ``docs/schema.md`` documents it.

Each ack also stores which record was at that position (``acked_stream_id``, ``acked_offset``), so
a later subscription can tell that positions were renumbered since (a full catalog rebuild) and
refuse to guess instead of skipping or repeating records (``ConsumerPositionLost``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import apsw

from hybridlog.batch import check_non_negative
from hybridlog.db import connect, consumer_migrations, migrate, sqlite_errors, write_transaction
from hybridlog.errors import ConsumerError, ConsumerMismatch, InvalidArgument, StoreClosed, UnknownConsumer
from hybridlog.layout import consumers_path
from hybridlog.types import GlobalPosition, Offset, StreamId, check_stream_id

MAX_CONSUMER_NAME = 200
BUSY_TIMEOUT_MS = 5000
"""Other processes acknowledge too: wait for their short transactions rather than fail."""


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
        self.path = consumers_path(data_dir)
        self._lock = threading.Lock()
        self.conn = connect(
            self.path,
            read_only=False,
            busy_timeout_ms=BUSY_TIMEOUT_MS,
            durable_commits=True,  # positions exist nowhere else (unlike the catalog)
            what="consumers",
            prepare=self._migrate,
            error=lambda e, _conn: ConsumerError(f"cannot open {self.path}: {e}"),
        )

    def close(self) -> None:
        """Close the connection to ``consumers.db`` (again: nothing)."""
        with self._lock:
            self.conn.close()

    def _migrate(self, conn: apsw.Connection) -> None:
        migrate(
            conn,
            consumer_migrations(),
            lambda found: ConsumerError(
                f"{self.path} has schema version {found}; this hybridlog knows up to {len(consumer_migrations())}",
                hint="upgrade hybridlog",
            ),
        )

    def _get(self, name: str) -> ConsumerState | None:
        row = self.conn.execute(f"SELECT {_COLUMNS} FROM consumers WHERE name = ?", (name,)).fetchone()  # noqa: S608
        return None if row is None else _state(row)

    def get(self, name: str) -> ConsumerState | None:
        """The consumer called ``name`` (None if there is none)."""
        with self._lock, sqlite_errors(f"cannot read {self.path}", error=ConsumerError):
            return self._get(name)

    def all(self) -> list[ConsumerState]:
        """Every consumer, by name."""
        with self._lock, sqlite_errors(f"cannot read {self.path}", error=ConsumerError):
            rows = self.conn.execute(f"SELECT {_COLUMNS} FROM consumers ORDER BY name")  # noqa: S608
            return [_state(row) for row in rows]

    def register(self, name: str, stream_id: StreamId | None, now_ns: int) -> ConsumerState:
        """The consumer, created at position 0 if it is new; ConsumerMismatch if it follows other streams."""
        with (
            self._lock,
            sqlite_errors(f"cannot register consumer {name!r} in {self.path}", error=ConsumerError),
            write_transaction(self.conn),
        ):
            self.conn.execute(
                "INSERT INTO consumers (name, stream_id, position, created_at_ns, updated_at_ns)"
                " VALUES (?1, ?2, 0, ?3, ?3) ON CONFLICT (name) DO NOTHING",
                (name, stream_id, now_ns),
            )
            state = self._get(name)
            assert state is not None
            if state.stream_id != stream_id:
                raise ConsumerMismatch(name, state.stream_id, stream_id)  # rolls the insert back
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
        with (
            self._lock,
            sqlite_errors(f"cannot acknowledge for consumer {name!r} in {self.path}", error=ConsumerError),
            write_transaction(self.conn),
        ):
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
        return state


class Consumers:
    """A store's named consumers, for ``Storage.register_consumer``, ``ack`` and ``consumers``:
    their arguments checked, and ``consumers.db`` opened when first needed.

    ``created`` makes sure the store exists (a writer creates its store on first use);
    ``last_position`` and ``record_at`` read the catalog's global order (``Storage``'s).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        closed: Callable[[], bool],
        created: Callable[[], None],
        now: Callable[[], int],
        last_position: Callable[[], GlobalPosition],
        record_at: Callable[[int], tuple[StreamId, Offset] | None],
    ) -> None:
        self._data_dir = data_dir
        self._closed = closed
        self._created = created
        self._now = now
        self._last_position = last_position
        self._record_at = record_at
        self._store: ConsumerStore | None = None
        self._lock = threading.Lock()

    def register(self, name: str, stream_id: int | None) -> ConsumerState:
        """The named consumer, registered at position 0 for ``stream_id`` (None: every stream) if new.

        ConsumerMismatch if it exists for other streams. Works on read-only stores too: consumer
        positions live in ``consumers.db``, which any process may write (see the module docstring).
        """
        checked = check_consumer_name(name)
        sid = None if stream_id is None else check_stream_id(stream_id)
        store = self._open(create=True)
        assert store is not None
        return store.register(checked, sid, self._now())

    def ack(self, consumer: str, position: int, *, force: bool) -> ConsumerState:
        """Record that ``consumer`` is done with every record it follows up to global ``position``.

        One transaction: the position is checked and stored together. InvalidArgument if it is
        past the last committed position, or behind the consumer's position (unless ``force``,
        which moves it back, or to 0 to start over); UnknownConsumer if it was never registered.
        Works on read-only stores too (see ``register``). Returns the consumer's new state.
        """
        name = check_consumer_name(consumer)
        at = GlobalPosition(check_non_negative("position", position))
        last = self._last_position()
        if at > last:
            raise InvalidArgument(f"cannot acknowledge position {at}: the last committed position is {last}")
        acked = self._record_at(at) if at else None
        store = self._open(create=True)
        assert store is not None
        return store.ack(name, at, acked, force=bool(force), now_ns=self._now())

    def all(self) -> list[ConsumerState]:
        """Every registered consumer, by name (none before ``consumers.db`` exists)."""
        store = self._open(create=False)
        return store.all() if store is not None else []

    def _open(self, *, create: bool) -> ConsumerStore | None:
        """``consumers.db``, opened on first use (created only when ``create``; None if it does not exist)."""
        if create:
            self._created()
        with self._lock:
            if self._closed():
                raise StoreClosed(f"store {self._data_dir} is closed")
            if self._store is None and (create or consumers_path(self._data_dir).exists()):
                if not self._data_dir.is_dir():
                    raise InvalidArgument(
                        f"no store at {self._data_dir}", hint="a writer creates it: open it without read_only"
                    )
                self._store = ConsumerStore(self._data_dir)
            return self._store

    def close(self) -> None:
        """Close ``consumers.db`` if it was opened (again: nothing)."""
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None
