"""The SQLite catalog: every SQL statement hybridlog runs on it lives in this module.

The catalog indexes the segment files (streams, segments, the offset index, checkpoints). It is
updated in the same write path as the segments, one transaction per batch, and can always be
rebuilt from them. Its schema is the SQL in ``migrations/``, applied in order on a
``PRAGMA user_version`` ladder; ``docs/schema.md`` documents it for SQL users.
"""

from __future__ import annotations

import errno
import importlib.resources
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import apsw

from hybridlog.errors import (
    CatalogBusy,
    CatalogError,
    CatalogIOError,
    CatalogMismatch,
    CatalogPermissionDenied,
    CatalogTooNew,
    CatalogUnusable,
    RecordFormatTooNew,
)
from hybridlog.record import CHECKPOINT_PAYLOAD, FORMAT_VERSION, FRAME_OVERHEAD
from hybridlog.types import ChainHash, GlobalPosition, Offset, RecordKind, StreamId

CATALOG_FILE = "catalog.db"
DEFAULT_BUSY_TIMEOUT_MS = 5000
"""How long opening the catalog waits for another process's lock before raising CatalogBusy."""

_BUSY = (apsw.BusyError, apsw.LockedError)
"""SQLite errors that mean another connection holds a lock: no verdict on the catalog."""
_OS_LEVEL = (apsw.CantOpenError, apsw.PermissionsError, apsw.ReadOnlyError, apsw.FullError, apsw.IOError)
"""SQLite errors that mean the operating system refused: no verdict on the catalog either."""
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def migrations_dir() -> Path:
    """Where the schema SQL lives: inside the installed package, or at the top of a checkout."""
    packaged = importlib.resources.files("hybridlog").joinpath("migrations")
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "migrations"


def load_migrations(directory: Path | None = None) -> list[tuple[int, str, str]]:
    """(version, file name, SQL) for every migration, in order; versions must be 1, 2, 3, ...

    ``directory``: the catalog's migrations by default; ``consumers.py`` keeps the schema of
    ``consumers.db`` in the ``consumers`` directory below them.
    """
    where = migrations_dir() if directory is None else directory
    found = []
    for path in sorted(where.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if match is None:
            raise CatalogError(f"migration file {path} is not named NNNN_name.sql")
        found.append((int(match.group(1)), path.name, path.read_text(encoding="utf-8")))
    if [v for v, _, _ in found] != list(range(1, len(found) + 1)):
        raise CatalogError(f"migrations in {where} are not numbered 0001, 0002, ...")
    return found


def _denied(path: Path, *, read_only: bool) -> Path | None:
    """The catalog file, companion or directory this process may not use as it needs, if any."""
    mode = os.R_OK if read_only else os.R_OK | os.W_OK
    for candidate in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if os.path.lexists(candidate) and not os.access(candidate, mode, effective_ids=True):
            return candidate
    if not read_only and not os.access(path.parent, os.W_OK | os.X_OK, effective_ids=True):
        return path.parent  # where SQLite creates the -wal and -shm files
    return None


def _schema_rows(conn: apsw.Connection) -> dict[str, tuple[object, ...]]:
    rows = conn.execute("SELECT name, type, tbl_name, sql FROM sqlite_master ORDER BY name")
    return {str(name): (kind, table, sql) for name, kind, table, sql in rows}


def _next_offset(gaps: list[GapRow], offset: int) -> int:
    """The offset of the record after ``offset``, stepping over the gaps a repair left."""
    following = offset + 1
    while (gap := next((g for g in gaps if g.holds(following)), None)) is not None:
        following = gap.next_offset
    return following


def _previous_offset(gaps: list[GapRow], offset: int) -> int:
    """The offset of the record before ``offset`` (-1: none), stepping over the gaps a repair left."""
    preceding = offset - 1
    while (gap := next((g for g in gaps if g.holds(preceding)), None)) is not None:
        preceding = gap.first_offset - 1
    return preceding


def damaged_hint(data_dir: Path) -> str:
    """What to run when the catalog holds something its segments contradict (or its schema forbids)."""
    return f"see it with `hybridlog check {data_dir}`, fix it with `hybridlog repair {data_dir}`"


def _ints(values: tuple[object, ...], what: str, path: Path, stream_id: int | None, offset: int | None = None) -> None:
    """Refuse a row whose integer columns hold something else.

    STRICT tables check types when a row is written, not when it is read: a damaged page can hand
    back text, a blob or NULL where an integer was stored, which must not reach arithmetic.
    """
    for value in values:
        if type(value) is not int:
            raise CatalogMismatch(
                f"the catalog's {what} holds {value!r} where an integer belongs",
                stream_id=stream_id,
                offset=offset,
                hint=damaged_hint(path.parent),
            )


def _hash(value: object, what: str, path: Path, stream_id: int, offset: int | None = None) -> ChainHash:
    if not isinstance(value, bytes) or len(value) != 32:
        raise CatalogMismatch(
            f"the catalog's {what} holds {value!r} where a 32-byte hash belongs",
            stream_id=stream_id,
            offset=offset,
            hint=damaged_hint(path.parent),
        )
    return ChainHash(value)


def _kind(value: int, path: Path, stream_id: int, offset: int) -> RecordKind:
    try:
        return RecordKind(value)
    except ValueError:
        raise CatalogMismatch(
            f"the catalog's offset index holds record kind {value!r}, which is no kind",
            stream_id=stream_id,
            offset=offset,
            hint=damaged_hint(path.parent),
        ) from None


SCHEMA_VERSION = len(load_migrations())
GLOBAL_ORDER_VERSION = 3
"""The schema version that added global positions (``migrations/0003_global_order.sql``)."""
GAPS_VERSION = 4
"""The schema version that added repair gaps (``migrations/0004_gaps.sql``)."""
APPLICATION_ID_VERSION = 5
"""The schema version that sets the file's ``application_id`` (``migrations/0005_application_id.sql``)."""
APPLICATION_ID = 0x484C4F47
"""SQLite's ``application_id`` of a hybridlog catalog: "HLOG"."""


@dataclass(frozen=True, slots=True)
class StreamRow:
    stream_id: StreamId
    next_offset: Offset
    chain_head: ChainHash | None
    event_count: int
    last_timestamp_ns: int | None


@dataclass(frozen=True, slots=True)
class SegmentRow:
    stream_id: StreamId
    segment_no: int
    first_offset: Offset
    next_offset: Offset
    size_bytes: int
    sealed: bool
    digest: bytes | None


IndexRow = tuple[int, int, int, int, int, int, int, int]
"""A ``records`` row: global_position, stream_id, offset, segment_no, position, length, kind, timestamp_ns."""


@dataclass(frozen=True, slots=True)
class GlobalRow:
    """Where one record is in the store-wide order: its position, stream, offset and frame length."""

    global_position: GlobalPosition
    stream_id: StreamId
    offset: Offset
    length: int


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """Where one record is: its segment, byte position and frame length."""

    offset: Offset
    segment_no: int
    position: int
    length: int
    kind: RecordKind
    timestamp_ns: int


@dataclass(frozen=True, slots=True)
class CheckpointRow:
    stream_id: StreamId
    offset: Offset
    hash: ChainHash
    timestamp_ns: int


@dataclass(frozen=True, slots=True)
class RecoveryEntry:
    """One row of ``recovery_log``: something recovery or repair found and what it did about it."""

    stream_id: StreamId | None
    found: str
    action: str
    segment_no: int | None = None
    start_byte: int | None = None
    end_byte: int | None = None
    first_offset: int | None = None
    next_offset: int | None = None
    kept_as: str | None = None
    detail: str | None = None
    at_ns: int = 0


@dataclass(frozen=True, slots=True)
class StreamStats:
    """One stream's size and shape, as ``hybridlog stats`` shows it."""

    stream_id: StreamId
    records: int
    events: int
    checkpoints: int
    segments: int
    sealed_segments: int
    stored_bytes: int
    payload_bytes: int
    first_timestamp_ns: int | None
    last_timestamp_ns: int | None

    @property
    def stored_payload_bytes(self) -> int:
        """Bytes the event payloads take on disk: frames less their headers and checkpoint bodies."""
        return self.stored_bytes - self.records * FRAME_OVERHEAD - self.checkpoints * CHECKPOINT_PAYLOAD.size

    @property
    def compression_ratio(self) -> float | None:
        """Payload bytes before compression over payload bytes stored (1.0: uncompressed)."""
        stored = self.stored_payload_bytes
        return self.payload_bytes / stored if stored > 0 else None


@dataclass(frozen=True, slots=True)
class GapRow:
    """A ``gaps`` row: offsets ``first_offset .. next_offset - 1`` of a stream that repair isolated
    (damaged, left in place; reading resumes at ``resume_segment_no``/``resume_byte`` with the
    stored link ``link_hash``) or cut (moved to quarantine; the stream's cut marker links past them)."""

    stream_id: StreamId
    first_offset: Offset
    next_offset: Offset
    action: str
    segment_no: int
    start_byte: int
    resume_segment_no: int | None = None
    resume_byte: int | None = None
    link_hash: ChainHash | None = None

    def holds(self, offset: int) -> bool:
        return self.first_offset <= offset < self.next_offset


@dataclass(frozen=True, slots=True)
class StreamSnapshot:
    """What a reader needs, read in one transaction so the parts agree with each other.

    ``resume``: set when the read starts after an isolated gap later than the checkpoint anchor:
    the walk then starts at the record after the gap and trusts its stored link to it, as it
    would trust a checkpoint's hash. ``gaps``: the stream's gaps, by offset.
    """

    stream: StreamRow
    segments: list[SegmentRow]
    anchor: CheckpointRow | None
    start: IndexEntry | None
    gaps: list[GapRow] = field(default_factory=list)
    resume: GapRow | None = None


class Catalog:
    """One apsw connection to ``catalog.db`` and the queries hybridlog runs on it.

    Not thread-safe on its own: ``Storage`` serialises every call with its lock.
    """

    def __init__(self, path: Path, *, read_only: bool, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS) -> None:
        self.path = path
        self.read_only = read_only
        self.busy_timeout_ms = busy_timeout_ms
        flags = apsw.SQLITE_OPEN_READONLY if read_only else apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
        conn: apsw.Connection | None = None
        try:
            self.conn = conn = apsw.Connection(str(path), flags=flags)
            # Wait for a writer's WAL checkpoint (or another process's lock) instead of failing
            # with SQLITE_BUSY at once; after the wait it is CatalogBusy, never a rebuild.
            self.conn.set_busy_timeout(busy_timeout_ms)
            if not read_only:
                if self.conn.readonly("main"):  # SQLite falls back to read-only when it may not write
                    raise apsw.ReadOnlyError("the catalog file is not writable")
                # Readers in other processes keep reading while the writer commits.
                self.conn.pragma("journal_mode", "wal")
                # The segment fsync is the durability point; the catalog is rebuilt from the
                # segments if a power loss takes its last commits, so commits skip the fsync.
                self.conn.pragma("synchronous", "normal")
                self._migrate()
            else:
                self._check_version()
        except apsw.Error as e:
            error = self._open_error(e, conn)
            if conn is not None:
                conn.close()
            raise error from e
        except BaseException:
            if conn is not None:
                conn.close()
            raise

    def _open_error(self, error: apsw.Error, conn: apsw.Connection | None) -> CatalogError:
        """What an SQLite error while opening says about the catalog. Only proof that the file is
        not a usable catalog gives CatalogUnusable (which a writer answers with a rebuild): a busy
        file, a permission denied, a full disk or an I/O error says nothing about its contents."""
        path = self.path
        if isinstance(error, _BUSY):
            return CatalogBusy(path, waited_s=self.busy_timeout_ms / 1000, detail=str(error))
        if isinstance(error, _OS_LEVEL):
            denied = _denied(path, read_only=self.read_only)
            if denied is not None:
                return CatalogPermissionDenied(
                    denied, needs="read" if self.read_only else "read and write", detail=str(error)
                )
            code = conn.system_errno if conn is not None else 0
            if isinstance(error, apsw.FullError) and not code:
                code = errno.ENOSPC
            why = f" [{errno.errorcode.get(code, code)}: {os.strerror(code)}]" if code else ""
            return CatalogIOError(f"cannot open catalog {path}: {error}{why}", path=path)
        return CatalogUnusable(
            f"cannot open catalog {path}: {error}",
            hint=f"a writer rebuilds it from the segments: run `hybridlog repair {path.parent}`",
        )

    @classmethod
    def create(cls, path: Path) -> Catalog:
        """A new catalog at ``path``, which appears there with its whole schema at once.

        It is built as ``<path>.new`` and renamed into place, so a reader that opens ``path``
        never meets a catalog half-way up the migration ladder. The caller fsyncs the directory.
        """
        building = path.with_name(path.name + ".new")
        for suffix in ("", "-wal", "-shm"):  # remains of a creation a crash interrupted
            building.with_name(building.name + suffix).unlink(missing_ok=True)
        cls(building, read_only=False).close()  # the last connection's close folds the WAL into the file
        building.replace(path)
        return cls(path, read_only=False)

    def health_problem(self) -> str | None:
        """None if SQLite's ``quick_check`` passes, else what it reports (the first few lines).

        CatalogBusy / CatalogIOError if it cannot be run: that is no verdict on the catalog.
        """
        try:
            lines = [row[0] for row in self.conn.execute("PRAGMA quick_check(5)")]
        except (*_BUSY, *_OS_LEVEL) as e:
            raise self._open_error(e, self.conn) from e  # not a problem of the catalog's contents
        except apsw.Error as e:
            return str(e)
        return None if lines == ["ok"] else "; ".join(lines)

    def close(self) -> None:
        self.conn.close()

    # --- schema ----------------------------------------------------------------------------------

    def data_version(self) -> int:
        """Changes whenever another connection commits to the catalog (SQLite's ``data_version``)."""
        version = self.conn.pragma("data_version")
        assert isinstance(version, int)
        return version

    def recovery_generation(self) -> int:
        """The recovery log's last entry id (0: none): it moves whenever recovery or repair acts."""
        return self._count("SELECT coalesce(max(entry_id), 0) FROM recovery_log", ())

    def schema_version(self) -> int:
        return int(self.conn.pragma("user_version"))

    def _check_version(self) -> None:
        found = self.schema_version()
        if found > SCHEMA_VERSION:
            raise CatalogTooNew(self.path, found, SCHEMA_VERSION)
        owner = int(self.conn.pragma("application_id"))
        if owner not in (0, APPLICATION_ID) or (owner == 0 and found >= APPLICATION_ID_VERSION):
            raise CatalogUnusable(
                f"{self.path} is not a hybridlog catalog (its application_id is {owner:#010x},"
                f" a hybridlog catalog's is {APPLICATION_ID:#010x})",
                hint=f"a writer rebuilds it from the segments: run `hybridlog repair {self.path.parent}`",
            )
        if found >= 1:  # migration 0001 wrote the record format; a newer one is refused like a newer schema
            self._check_record_format()

    def _check_record_format(self) -> None:
        row = self.conn.execute("SELECT value FROM store_info WHERE key = 'record_format_version'").fetchone()
        value = None if row is None else row[0]
        if isinstance(value, str) and value.isdecimal() and int(value) > FORMAT_VERSION:
            raise RecordFormatTooNew(self.path, int(value), FORMAT_VERSION)
        if value != str(FORMAT_VERSION):
            raise CatalogUnusable(
                f"{self.path} names no record format hybridlog knows (store_info.record_format_version is {value!r})",
                hint=f"a writer rebuilds it from the segments: run `hybridlog repair {self.path.parent}`",
            )

    def _migrate(self) -> None:
        self._check_version()
        for version, _name, sql in load_migrations():
            if version <= self.schema_version():
                continue
            with self.conn:
                self.conn.execute(sql)
                self.conn.pragma("user_version", version)

    # --- reads -----------------------------------------------------------------------------------

    def stream_ids(self) -> list[StreamId]:
        return [StreamId(r[0]) for r in self.conn.execute("SELECT stream_id FROM streams ORDER BY stream_id")]

    def stream(self, stream_id: StreamId) -> StreamRow | None:
        row = self.conn.execute(
            "SELECT next_offset, chain_head, event_count, last_timestamp_ns FROM streams WHERE stream_id = ?",
            (stream_id,),
        ).fetchone()
        if row is None:
            return None
        next_offset, head, events, last_ts = row
        _ints((next_offset, events), "streams row", self.path, stream_id)
        if last_ts is not None:
            _ints((last_ts,), "streams row", self.path, stream_id)
        chain_head = None if head is None else _hash(head, "chain head", self.path, stream_id)
        if (chain_head is None) != (next_offset == 0):
            raise CatalogMismatch(
                f"the catalog's streams row says {next_offset} records with chain head {head!r}",
                stream_id=stream_id,
                hint=damaged_hint(self.path.parent),
            )
        return StreamRow(stream_id, Offset(next_offset), chain_head, events, last_ts)

    def segments(self, stream_id: StreamId) -> list[SegmentRow]:
        rows = self.conn.execute(
            "SELECT segment_no, first_offset, next_offset, size_bytes, sealed, digest"
            " FROM segments WHERE stream_id = ? ORDER BY segment_no",
            (stream_id,),
        )
        found = []
        for no, first, nxt, size, sealed, digest in rows:
            _ints((no, first, nxt, size, sealed), "segments row", self.path, stream_id)
            found.append(SegmentRow(stream_id, no, Offset(first), Offset(nxt), size, bool(sealed), digest))
        return found

    def index_entry(self, stream_id: StreamId, offset: int) -> IndexEntry | None:
        row = self.conn.execute(
            "SELECT segment_no, position, length, kind, timestamp_ns FROM records WHERE stream_id = ? AND offset = ?",
            (stream_id, offset),
        ).fetchone()
        if row is None:
            return None
        no, position, length, kind, ts = row
        _ints(row, "offset index row", self.path, stream_id, offset)
        return IndexEntry(Offset(offset), no, position, length, _kind(kind, self.path, stream_id, offset), ts)

    def first_entry_ending_after(self, stream_id: StreamId, segment_no: int, byte: int) -> IndexEntry | None:
        """The first record of a segment whose frame does not end by ``byte`` (the first one a cut there hurts)."""
        row = self.conn.execute(
            "SELECT offset, position, length, kind, timestamp_ns FROM records"
            " WHERE stream_id = ? AND segment_no = ? AND position + length > ? ORDER BY offset LIMIT 1",
            (stream_id, segment_no, byte),
        ).fetchone()
        if row is None:
            return None
        offset, position, length, kind, ts = row
        _ints(row, "offset index row", self.path, stream_id)
        return IndexEntry(Offset(offset), segment_no, position, length, _kind(kind, self.path, stream_id, offset), ts)

    def index_entries(self, stream_id: StreamId, from_offset: int = 0) -> Iterator[IndexEntry]:
        rows = self.conn.execute(
            "SELECT offset, segment_no, position, length, kind, timestamp_ns FROM records"
            " WHERE stream_id = ? AND offset >= ? ORDER BY offset",
            (stream_id, from_offset),
        )
        for row in rows:
            _ints(row, "offset index row", self.path, stream_id)
            offset, no, position, length, kind, ts = row
            yield IndexEntry(Offset(offset), no, position, length, _kind(kind, self.path, stream_id, offset), ts)

    def stream_index_rows(self, stream_id: StreamId, from_offset: int = 0) -> Iterator[tuple[object, ...]]:
        """The stream's ``records`` rows from ``from_offset`` on, by offset, exactly as stored and
        unchecked: (offset, segment_no, position, length, kind, timestamp_ns, global_position).

        For ``verify``, which compares every value with the records and reports what differs.
        """
        yield from self.conn.execute(
            "SELECT offset, segment_no, position, length, kind, timestamp_ns, global_position FROM records"
            " WHERE stream_id = ? AND offset >= ? ORDER BY offset",
            (stream_id, from_offset),
        )

    def stream_checkpoint_rows(self, stream_id: StreamId, from_offset: int = 0) -> Iterator[tuple[object, ...]]:
        """The stream's ``checkpoints`` rows from ``from_offset`` on, as stored: (offset, hash, timestamp_ns)."""
        yield from self.conn.execute(
            "SELECT offset, hash, timestamp_ns FROM checkpoints WHERE stream_id = ? AND offset >= ? ORDER BY offset",
            (stream_id, from_offset),
        )

    def structure_problems(self, limit: int) -> list[str]:
        """What SQLite's ``integrity_check`` finds (at most ``limit`` lines; none: the file is sound).

        Besides the b-trees themselves it checks that every index agrees with its table: a damaged
        index can make a lookup by (stream, offset) see a row that a scan by position does not.
        """
        lines = [str(row[0]) for row in self.conn.execute(f"PRAGMA integrity_check({int(limit)})")]
        return [] if lines == ["ok"] else lines

    def schema_problems(self) -> list[str]:
        """How the catalog's schema (``sqlite_master``) differs from what its migrations create (none:
        the same). A damaged page there can rename a column that only some queries use."""
        version = self.schema_version()
        expected = apsw.Connection(":memory:")
        try:
            for number, _name, sql in load_migrations():
                if number <= version:
                    expected.execute(sql)
            want = _schema_rows(expected)
        finally:
            expected.close()
        have = _schema_rows(self.conn)
        problems = [f"{name}: missing" for name in want if name not in have]
        problems += [f"{name}: not made by any migration" for name in have if name not in want]
        problems += [
            f"{name}: differs from its migration" for name in want if name in have and have[name] != want[name]
        ]
        return problems

    def global_order_summary(self) -> tuple[object, object, object]:
        """(the high-water mark as stored, how many records rows, the largest global position)."""
        mark = self.conn.execute("SELECT last_position FROM global_order WHERE singleton = 1").fetchone()
        totals = self.conn.execute("SELECT count(*), max(global_position) FROM records").fetchone()
        assert totals is not None  # an aggregate always gives a row
        count, largest = totals
        return (None if mark is None else mark[0]), count, largest

    def all_global_positions(self) -> Iterator[object]:
        """Every record's global position, in order (a b-tree walk: damage can show duplicates)."""
        for (position,) in self.conn.execute("SELECT global_position FROM records ORDER BY global_position"):
            yield position

    def streams_with_rows(self) -> dict[str, set[object]]:
        """The stream ids that have rows, by table (``records``, ``checkpoints``, ``segments``, ``streams``)."""
        found: dict[str, set[object]] = {}
        for table in ("records", "checkpoints", "segments", "streams"):
            rows = self.conn.execute(f"SELECT DISTINCT stream_id FROM {table}")  # noqa: S608 (a constant)
            found[table] = {sid for (sid,) in rows}
        return found

    def positions_may_be_unused(self) -> bool:
        """Whether the recovery log records an action that can leave global positions unused.

        Positions are given out in the transaction that commits their records, so on a store no
        repair has touched they are 1, 2, 3, ... without a gap. Adopting records numbers them
        after the mark, and what recovery quarantines was never committed; any other action (a
        re-index, a truncation, a rebuild, or one this code does not know) may have dropped
        records that had positions.
        """
        row = self.conn.execute(
            "SELECT 1 FROM recovery_log WHERE action NOT IN ('adopted', 'quarantined', 'removed_empty') LIMIT 1"
        ).fetchone()
        return row is not None

    def index_size(self, stream_id: StreamId) -> int:
        return self._count("SELECT count(*) FROM records WHERE stream_id = ?", (stream_id,))

    def checkpoint_at_or_before(self, stream_id: StreamId, offset: int) -> CheckpointRow | None:
        row = self.conn.execute(
            "SELECT offset, hash, timestamp_ns FROM checkpoints WHERE stream_id = ? AND offset <= ?"
            " ORDER BY offset DESC LIMIT 1",
            (stream_id, offset),
        ).fetchone()
        return None if row is None else self._checkpoint_row(stream_id, row)

    def _checkpoint_row(self, stream_id: StreamId, row: tuple[object, ...]) -> CheckpointRow:
        offset, digest, ts = row
        _ints((offset, ts), "checkpoints row", self.path, stream_id)
        assert isinstance(offset, int)
        assert isinstance(ts, int)
        return CheckpointRow(
            stream_id, Offset(offset), _hash(digest, "checkpoint hash", self.path, stream_id, offset), ts
        )

    def checkpoints(self, stream_id: StreamId) -> list[CheckpointRow]:
        rows = self.conn.execute(
            "SELECT offset, hash, timestamp_ns FROM checkpoints WHERE stream_id = ? ORDER BY offset", (stream_id,)
        )
        return [self._checkpoint_row(stream_id, row) for row in rows]

    def global_positions(
        self, stream_id: StreamId, first: int = 0, last: int = 2**63 - 1
    ) -> dict[Offset, GlobalPosition]:
        """The global positions of one stream's records from offset ``first`` to ``last``, by offset."""
        rows = self.conn.execute(
            "SELECT offset, global_position FROM records WHERE stream_id = ? AND offset BETWEEN ? AND ?",
            (stream_id, first, last),
        )
        return {Offset(offset): GlobalPosition(position) for offset, position in rows}

    def global_ranges(self, low: int, high: int, stream_id: StreamId | None) -> list[tuple[StreamId, int, int]]:
        """(stream, first offset, last offset) of the records with global positions ``low`` to
        ``high``, by stream (within a stream, positions grow with offsets: one range each)."""
        rows = self.conn.execute(
            "SELECT stream_id, min(offset), max(offset) FROM records WHERE global_position BETWEEN ?1 AND ?2"
            " AND (?3 IS NULL OR stream_id = ?3) GROUP BY stream_id ORDER BY stream_id",
            (low, high, stream_id),
        )
        found = []
        for row in rows:
            _ints(row, "offset index row", self.path, None)
            sid, first, last = row
            found.append((StreamId(sid), first, last))
        return found

    def _require_global_order(self) -> None:
        """A reader may meet a catalog no writer has upgraded yet: say so, rather than fail on SQL.

        (A writer's catalog is always migrated when it opens, so only readers ask.)
        """
        if not self.read_only:
            return
        found = self.schema_version()
        if found < GLOBAL_ORDER_VERSION:
            raise CatalogError(
                f"catalog {self.path} has schema version {found}, from before global positions",
                hint=f"upgrade it: run `hybridlog migrate {self.path.parent}` (or open the store for writing)",
            )

    def last_global_position(self) -> GlobalPosition:
        """The high-water mark: the last global position ever given out (0: none yet)."""
        self._require_global_order()
        row = self.conn.execute("SELECT last_position FROM global_order WHERE singleton = 1").fetchone()
        if row is None:
            raise CatalogMismatch("the catalog has no global-position mark", hint=damaged_hint(self.path.parent))
        _ints(row, "global-position mark", self.path, None)
        return GlobalPosition(row[0])

    def global_position_of(self, stream_id: StreamId, offset: int) -> GlobalPosition | None:
        """The global position of one record (None: the stream has no record at that offset)."""
        self._require_global_order()
        row = self.conn.execute(
            "SELECT global_position FROM records WHERE stream_id = ? AND offset = ?", (stream_id, offset)
        ).fetchone()
        if row is None:
            return None
        _ints(row, "global position", self.path, stream_id, offset)
        if row[0] < 1:
            raise self._position_mismatch(stream_id, offset, f"global position {row[0]} is below 1")
        return GlobalPosition(row[0])

    def record_at_position(self, position: int) -> tuple[StreamId, Offset] | None:
        """(stream, offset) of the record at a global position (None: no record has it)."""
        self._require_global_order()
        row = self.conn.execute(
            "SELECT stream_id, offset FROM records WHERE global_position = ?", (position,)
        ).fetchone()
        if row is None:
            return None
        _ints(row, f"offset index row at global position {position}", self.path, None)
        return StreamId(row[0]), Offset(row[1])

    def global_rows(
        self, from_position: int, max_payload_bytes: int, stream_id: StreamId | None = None
    ) -> list[GlobalRow]:
        """Records from ``from_position`` on, in global order: the first, then every one whose
        payload could still fit in ``max_payload_bytes`` after those before it.

        A payload is never smaller than its stored part (frame length less ``FRAME_OVERHEAD``;
        compression is kept only when it makes a payload smaller), so once those parts add up to
        more than ``max_payload_bytes`` that record and every later one cannot fit: the rows stop
        before it. The caller cuts the rest by the real payload sizes.

        ``stream_id``: that stream's records only. Its positions increase with its offsets, so they
        are read by offset, from the first offset whose position is ``from_position`` or more.
        """
        self._require_global_order()
        with self.conn:  # one read: the rows and what they are checked against agree
            if stream_id is not None:
                rows = self._stream_global_rows(stream_id, from_position, max_payload_bytes)
            else:
                cursor = self.conn.execute(
                    "SELECT global_position, stream_id, offset, length FROM records"
                    " WHERE global_position >= ? ORDER BY global_position",
                    (from_position,),
                )
                rows, cut = self._rows_within(cursor, max_payload_bytes)
                self._check_positions_used(rows, from_position, cut)
            self._check_global_rows(rows, from_position)
        return rows

    def _check_positions_used(self, rows: list[GlobalRow], from_position: int, cut: bool) -> None:
        """Rows of every stream must use each position from ``from_position`` to the last row's (to
        the mark, if the size did not ``cut`` them), unless a repair may have left positions unused:
        a position missing in between is a row a damaged page hides from this scan."""
        mark = self.last_global_position()
        expected = max(from_position, 1)
        for row in rows:
            if row.global_position != expected:
                break
            expected += 1
        else:
            if cut or expected > mark:
                return
        if not self.positions_may_be_unused():
            raise self._position_mismatch(
                rows[0].stream_id if rows else StreamId(0),
                rows[0].offset if rows else 0,
                f"no record has global position {expected}, and no repair can have dropped one"
                f" (read from {from_position}, high-water mark {mark})",
            )

    def _check_global_rows(self, rows: list[GlobalRow], from_position: int) -> None:
        """Refuse rows a damaged catalog got wrong, rather than let a read skip or misplace records.

        Within a stream, global positions increase with offsets, so the rows of one stream in a
        range of positions are consecutive offsets, and the record before the first of them has a
        position before ``from_position`` (else it belongs in the range), and the record after the
        last of them a later position than it. Every row is the record of a stream the catalog
        lists, below its next offset, at a position no later than the high-water mark. Costs a
        streams row and two point lookups per stream in the rows.
        """
        mark = self.last_global_position()
        previous: int | None = None
        runs: dict[StreamId, tuple[GlobalRow, GlobalRow]] = {}
        gaps = {sid: self.gaps(sid) for sid in {row.stream_id for row in rows}}
        for row in rows:
            problem = None
            run = runs.get(row.stream_id)
            if row.global_position < from_position or (previous is not None and row.global_position <= previous):
                problem = (
                    f"global position {row.global_position} is out of order"
                    f" (read from {from_position}, after {previous})"
                )
            elif row.global_position > mark:
                problem = f"global position {row.global_position} is past the high-water mark {mark}"
            elif run is not None and (
                row.offset != _next_offset(gaps[row.stream_id], run[1].offset)
                or row.global_position <= run[1].global_position
            ):
                problem = (
                    f"offset {row.offset} at global position {row.global_position} follows offset"
                    f" {run[1].offset} at global position {run[1].global_position}"
                )
            if problem is not None:
                raise self._position_mismatch(row.stream_id, row.offset, problem)
            previous = row.global_position
            runs[row.stream_id] = (run[0] if run else row, row)
        for sid, (first, last) in runs.items():
            stream = self.stream(sid)
            if stream is None or last.offset >= stream.next_offset:
                listed = "no row" if stream is None else f"next offset {stream.next_offset}"
                raise self._position_mismatch(sid, last.offset, f"the streams table has {listed}")
            # The records next to the run (offsets a repair took out have none: step over them).
            one_back = _previous_offset(gaps[sid], first.offset)
            two_back = _previous_offset(gaps[sid], one_back)
            one_on = _next_offset(gaps[sid], last.offset)
            before = self.global_position_of(sid, one_back) if one_back >= 0 else None
            if one_back >= 0 and (before is None or before >= from_position):
                raise self._position_mismatch(sid, one_back, f"global position {before} is not before {from_position}")
            # and the one before that, so that one damaged position cannot pose as the boundary
            earlier = self.global_position_of(sid, two_back) if two_back >= 0 else None
            if two_back >= 0 and (earlier is None or before is None or earlier >= before):
                raise self._position_mismatch(sid, two_back, f"global position {earlier} is not before {before}")
            after = self.global_position_of(sid, one_on) if one_on < stream.next_offset else None
            if one_on < stream.next_offset and (after is None or after <= last.global_position):
                raise self._position_mismatch(
                    sid, one_on, f"global position {after} is not after {last.global_position}"
                )

    def _position_mismatch(self, stream_id: StreamId, offset: int, problem: str) -> CatalogMismatch:
        return CatalogMismatch(
            f"the catalog's global positions are inconsistent: {problem}",
            stream_id=stream_id,
            offset=offset,
            hint=damaged_hint(self.path.parent),
        )

    def _stream_global_rows(self, stream_id: StreamId, from_position: int, max_payload_bytes: int) -> list[GlobalRow]:
        """``global_rows`` of one stream: a binary search for the first offset, then an index range."""
        stream = self.stream(stream_id)
        gaps = self.gaps(stream_id)
        low, high = 0, stream.next_offset if stream else 0
        while low < high:
            middle = (low + high) // 2
            if any(g.holds(middle) for g in gaps):  # no record there: ask the one after the gap
                after = _next_offset(gaps, middle - 1)
                if after >= high:
                    high = middle
                    continue
                middle = after
            position = self.global_position_of(stream_id, middle)
            if position is None:
                raise CatalogMismatch(
                    "the offset index has no row for this offset",
                    stream_id=stream_id,
                    offset=middle,
                    hint=damaged_hint(self.path.parent),
                )
            if position < from_position:
                low = middle + 1
            else:
                high = middle
        cursor = self.conn.execute(
            "SELECT global_position, stream_id, offset, length FROM records"
            " WHERE stream_id = ? AND offset >= ? ORDER BY offset",
            (stream_id, low),
        )
        rows, cut = self._rows_within(cursor, max_payload_bytes)
        if not cut and rows and _next_offset(gaps, rows[-1].offset) < (stream.next_offset if stream else 0):
            raise self._position_mismatch(
                stream_id, rows[-1].offset + 1, "the offset index scan ends before the stream's next offset"
            )
        return rows

    def _rows_within(self, cursor: apsw.Cursor, max_payload_bytes: int) -> tuple[list[GlobalRow], bool]:
        """The rows that may fit, and whether the size cut them short (False: the cursor ran out)."""
        rows: list[GlobalRow] = []
        at_least = 0
        cut = False
        try:
            for row in cursor:
                _ints(row, "offset index row", self.path, None)
                position, sid, offset, length = row
                at_least += length - FRAME_OVERHEAD
                if rows and at_least > max_payload_bytes:
                    cut = True
                    break  # this one cannot fit after those before it
                rows.append(GlobalRow(GlobalPosition(position), StreamId(sid), Offset(offset), length))
        finally:
            cursor.close()  # ends the read the unfinished statement would otherwise hold open
        return rows, cut

    def first_offset_at_or_after(self, stream_id: StreamId, timestamp_ns: int) -> Offset:
        """The first offset whose timestamp is ``timestamp_ns`` or later (the stream's next offset if none).

        A binary search over the offset index, in one read transaction: a stream's timestamps
        never decrease (the writer clamps them), so its offset order is also its time order, and
        log2(records) point lookups on the (stream_id, offset) index find the boundary without an
        index on time that every append would have to maintain.
        """
        with self.conn:
            stream = self.stream(stream_id)
            low, high = 0, stream.next_offset if stream else 0
            while low < high:
                middle = (low + high) // 2
                row = self.conn.execute(
                    "SELECT timestamp_ns FROM records WHERE stream_id = ? AND offset = ?", (stream_id, middle)
                ).fetchone()
                if row is None:
                    raise CatalogMismatch(
                        "the offset index has no row for this offset",
                        stream_id=stream_id,
                        offset=middle,
                        hint=damaged_hint(self.path.parent),
                    )
                _ints(row, "offset index timestamp", self.path, stream_id, middle)
                if row[0] < timestamp_ns:
                    low = middle + 1
                else:
                    high = middle
        return Offset(low)

    def events_after(self, stream_id: StreamId, offset: int) -> int:
        """How many event records come after ``offset`` (-1: all of them)."""
        return self._count(
            "SELECT count(*) FROM records WHERE stream_id = ? AND offset > ? AND kind = ?",
            (stream_id, offset, int(RecordKind.EVENT)),
        )

    def _count(self, sql: str, bindings: tuple[int, ...]) -> int:
        row = self.conn.execute(sql, bindings).fetchone()
        assert row is not None  # count(*) always gives a row
        return int(row[0])

    def snapshot(self, stream_id: StreamId, from_offset: int, *, anchored: bool) -> StreamSnapshot | None:
        """Everything a verified read from ``from_offset`` needs, from one read transaction.

        ``anchored``: start from the nearest checkpoint at or before ``from_offset``; otherwise
        from offset 0.
        """
        snapshot = None
        with self.conn:
            stream = self.stream(stream_id)
            if stream is not None:
                anchor = self.checkpoint_at_or_before(stream_id, from_offset) if anchored else None
                gaps = self.gaps(stream_id)
                passed = [g for g in gaps if g.action == "isolated" and g.next_offset <= from_offset]
                resume = passed[-1] if passed and (anchor is None or passed[-1].next_offset > anchor.offset) else None
                if resume is not None:
                    anchor = None
                start_offset = resume.next_offset if resume else anchor.offset if anchor else 0
                if start_offset == 0 and gaps and gaps[0].first_offset == 0 and gaps[0].action == "cut":
                    start_offset = gaps[0].next_offset  # the stream starts with a cut marker
                start = self.index_entry(stream_id, start_offset)
                snapshot = StreamSnapshot(stream, self.segments(stream_id), anchor, start, gaps, resume)
        return snapshot

    def gaps(self, stream_id: StreamId) -> list[GapRow]:
        """The stream's isolated and cut offset ranges, by offset (none before schema 4)."""
        if self.schema_version() < GAPS_VERSION:
            return []
        rows = self.conn.execute(
            "SELECT first_offset, next_offset, action, segment_no, start_byte, resume_segment_no, resume_byte,"
            " link_hash FROM gaps WHERE stream_id = ? ORDER BY first_offset",
            (stream_id,),
        )
        return [
            GapRow(
                stream_id,
                Offset(first),
                Offset(nxt),
                action,
                no,
                start,
                rno,
                rbyte,
                None if link is None else ChainHash(link),
            )
            for first, nxt, action, no, start, rno, rbyte, link in rows
        ]

    def insert_gaps(self, rows: Iterable[GapRow]) -> None:
        self.conn.executemany(
            "INSERT INTO gaps (stream_id, first_offset, next_offset, action, segment_no, start_byte,"
            " resume_segment_no, resume_byte, link_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                (
                    g.stream_id,
                    g.first_offset,
                    g.next_offset,
                    g.action,
                    g.segment_no,
                    g.start_byte,
                    g.resume_segment_no,
                    g.resume_byte,
                    g.link_hash,
                )
                for g in rows
            ),
        )

    def segment_sizes(self) -> dict[StreamId, dict[int, int]]:
        """Every segment's committed size, by stream and segment number, in one query."""
        sizes: dict[StreamId, dict[int, int]] = {}
        for sid, no, size in self.conn.execute("SELECT stream_id, segment_no, size_bytes FROM segments"):
            sizes.setdefault(StreamId(sid), {})[no] = size
        return sizes

    def stream_stats(self) -> list[StreamStats]:
        rows = self.conn.execute(
            "SELECT s.stream_id, s.record_count, s.event_count, s.checkpoint_count,"
            " (SELECT count(*) FROM segments g WHERE g.stream_id = s.stream_id),"
            " (SELECT count(*) FROM segments g WHERE g.stream_id = s.stream_id AND g.sealed),"
            " s.stored_bytes, s.payload_bytes, s.first_timestamp_ns, s.last_timestamp_ns"
            " FROM streams s ORDER BY s.stream_id"
        )
        stats = []
        for row in rows:
            _ints(row[:8], "streams row", self.path, None)
            _ints(tuple(ts for ts in row[8:] if ts is not None), "streams row", self.path, None)
            stats.append(StreamStats(*row))
        return stats

    def recovery_log(self, stream_id: StreamId | None = None) -> list[RecoveryEntry]:
        rows = self.conn.execute(
            "SELECT stream_id, found, action, segment_no, start_byte, end_byte, first_offset, next_offset,"
            " kept_as, detail, at_ns FROM recovery_log WHERE ?1 IS NULL OR stream_id = ?1 ORDER BY entry_id",
            (stream_id,),
        )
        return [RecoveryEntry(*row) for row in rows]

    # --- writes ----------------------------------------------------------------------------------

    @contextmanager
    def read_snapshot(self) -> Iterator[None]:
        """One read transaction: every query inside sees the catalog as it was when it began."""
        with self.conn:
            self._count("SELECT count(*) FROM sqlite_schema", ())  # the snapshot starts at the first read
            yield

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction; everything in it commits together or not at all."""
        with self.conn:
            yield

    def upsert_stream(
        self,
        stream_id: StreamId,
        *,
        next_offset: int,
        chain_head: bytes | None,
        add_events: int,
        add_checkpoints: int,
        add_stored_bytes: int,
        add_payload_bytes: int,
        first_timestamp_ns: int | None,
        last_timestamp_ns: int | None,
        now_ns: int,
    ) -> None:
        self.conn.execute(
            "INSERT INTO streams (stream_id, next_offset, chain_head, event_count, checkpoint_count,"
            " stored_bytes, payload_bytes, first_timestamp_ns, last_timestamp_ns, created_at_ns, updated_at_ns)"
            " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10)"
            " ON CONFLICT (stream_id) DO UPDATE SET next_offset = ?2, chain_head = ?3,"
            " event_count = event_count + ?4, checkpoint_count = checkpoint_count + ?5,"
            " stored_bytes = stored_bytes + ?6, payload_bytes = payload_bytes + ?7,"
            " first_timestamp_ns = coalesce(first_timestamp_ns, ?8), last_timestamp_ns = ?9, updated_at_ns = ?10",
            (
                stream_id,
                next_offset,
                chain_head,
                add_events,
                add_checkpoints,
                add_stored_bytes,
                add_payload_bytes,
                first_timestamp_ns,
                last_timestamp_ns,
                now_ns,
            ),
        )

    def upsert_segment(
        self, stream_id: StreamId, segment_no: int, *, first_offset: int, next_offset: int, size_bytes: int, now_ns: int
    ) -> None:
        self.conn.execute(
            "INSERT INTO segments (stream_id, segment_no, first_offset, next_offset, size_bytes, created_at_ns)"
            " VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
            " ON CONFLICT (stream_id, segment_no) DO UPDATE SET next_offset = ?4, size_bytes = ?5",
            (stream_id, segment_no, first_offset, next_offset, size_bytes, now_ns),
        )

    def seal_segment(self, stream_id: StreamId, segment_no: int, *, digest: bytes, now_ns: int) -> None:
        self.conn.execute(
            "UPDATE segments SET sealed = 1, digest = ?, sealed_at_ns = ? WHERE stream_id = ? AND segment_no = ?",
            (digest, now_ns, stream_id, segment_no),
        )

    def insert_records(self, stream_id: StreamId, entries: Iterable[tuple[int, IndexEntry]]) -> None:
        """Offset-index rows for ``(global_position, entry)`` pairs."""
        self.insert_index_rows(
            (position, stream_id, e.offset, e.segment_no, e.position, e.length, int(e.kind), e.timestamp_ns)
            for position, e in entries
        )

    def insert_index_rows(self, rows: Iterable[IndexRow]) -> None:
        """Offset-index rows as plain tuples (the append path builds them without objects)."""
        self.conn.executemany(
            "INSERT INTO records (global_position, stream_id, offset, segment_no, position, length, kind,"
            " timestamp_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )

    def advance_global_position(self, last: int, new_last: int) -> None:
        """Move the high-water mark from ``last`` to ``new_last`` (inside the transaction that used them).

        Raises CatalogError if the mark is not ``last`` any more: the positions were read from a
        mark something else has moved since, and committing them could give one out twice.
        """
        self.conn.execute(
            "UPDATE global_order SET last_position = ? WHERE singleton = 1 AND last_position = ?", (new_last, last)
        )
        if self.conn.changes() != 1:
            raise CatalogError(f"the global-position mark moved while positions {last + 1}..{new_last} were assigned")

    def renumber_global_positions(self) -> int:
        """Number every record 1, 2, ... in (timestamp_ns, stream_id, offset) order; returns how many.

        Only a full rebuild does this (positions live in the catalog alone), inside its transaction.
        Records of one stream keep their order: its timestamps never decrease.
        """
        count = self._count("SELECT count(*) FROM records", ())
        # Copy the rows out numbered, empty the table, and put them back in position order: one
        # sorted pass of appends to the table's b-tree instead of moving every row's key twice.
        self.conn.execute(
            "CREATE TEMP TABLE renumbered AS SELECT"
            " row_number() OVER (ORDER BY timestamp_ns, stream_id, offset) AS global_position,"
            " stream_id, offset, segment_no, position, length, kind, timestamp_ns FROM records"
        )
        self.conn.execute("DELETE FROM records")
        self.conn.execute(
            "INSERT INTO records (global_position, stream_id, offset, segment_no, position, length, kind,"
            " timestamp_ns) SELECT * FROM temp.renumbered ORDER BY global_position"
        )
        self.conn.execute("DROP TABLE temp.renumbered")
        self.conn.execute("UPDATE global_order SET last_position = ? WHERE singleton = 1", (count,))
        return count

    def insert_checkpoints(self, rows: Iterable[CheckpointRow]) -> None:
        self.conn.executemany(
            "INSERT INTO checkpoints (stream_id, offset, hash, timestamp_ns) VALUES (?, ?, ?, ?)",
            ((r.stream_id, r.offset, r.hash, r.timestamp_ns) for r in rows),
        )

    def forget_stream(self, stream_id: StreamId) -> None:
        """Delete every row about a stream (the start of a rebuild, inside its transaction)."""
        for table in ("records", "checkpoints", "segments", "streams", "gaps"):
            self.conn.execute(f"DELETE FROM {table} WHERE stream_id = ?", (stream_id,))  # noqa: S608

    def forget_checkpoints(self, stream_id: StreamId) -> None:
        self.conn.execute("DELETE FROM checkpoints WHERE stream_id = ?", (stream_id,))

    def log_recovery(self, entry: RecoveryEntry) -> None:
        self.conn.execute(
            "INSERT INTO recovery_log (at_ns, stream_id, found, action, segment_no, start_byte, end_byte,"
            " first_offset, next_offset, kept_as, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                entry.at_ns,
                entry.stream_id,
                entry.found,
                entry.action,
                entry.segment_no,
                entry.start_byte,
                entry.end_byte,
                entry.first_offset,
                entry.next_offset,
                entry.kept_as,
                entry.detail,
            ),
        )

    def fold_wal(self) -> None:
        """Copy every commit in the WAL into the main file (waiting for readers of older snapshots).

        CatalogError if a reader keeps an older snapshot past the busy timeout.
        """
        try:
            in_log, copied = self.conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_FULL)
        except apsw.Error as e:
            raise CatalogError(f"cannot fold the WAL of {self.path} into it: {e}") from e
        if in_log != copied:
            raise CatalogError(f"cannot fold the WAL of {self.path} into it: a reader holds an older snapshot")

    def checkpoint_wal(self) -> None:
        """Copy the WAL into the database file and fsync it: every commit so far is durable."""
        self.conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
