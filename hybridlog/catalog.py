"""The SQLite catalog: ``Catalog``, the one connection to ``catalog.db``, and every SQL statement
hybridlog runs on it.

The catalog indexes the segment files (streams, segments, the offset index, checkpoints). It is
updated in the same write path as the segments, one transaction per batch, and can always be
rebuilt from them. Its schema is the SQL in ``migrations/``, applied on the ``user_version``
ladder of ``db.py``; ``docs/schema.md`` documents it for SQL users. ``Catalog`` is read top-down
here (opening and creating, the schema, per-stream reads, the writes of the append path and of
recovery); two concerns live in modules of their own and are mixed into it: the store-wide order
(``catalog_global.py``), the catalog's checks of itself (``catalog_check.py``) and the store's
Merkle tree (``catalog_tree.py``). Its row types
and row checks are in ``catalog_rows.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import astuple
from pathlib import Path

import apsw

from hybridlog.catalog_batches import BatchIndex, batches_over_records
from hybridlog.catalog_check import CatalogChecks
from hybridlog.catalog_global import GlobalOrderReads
from hybridlog.catalog_rows import (
    APPLICATION_ID,
    APPLICATION_ID_VERSION,
    BATCHES_VERSION,
    GAPS_VERSION,
    GLOBAL_ORDER_VERSION,
    SCHEMA_VERSION,
    CheckpointRow,
    GapRow,
    RecoveryEntry,
    SegmentRow,
    StreamRow,
    StreamSnapshot,
    StreamStats,
    damaged_hint,
    require_hash,
    require_ints,
)
from hybridlog.catalog_tree import MerkleTiles
from hybridlog.db import (
    DEFAULT_BUSY_TIMEOUT_MS,
    catalog_migrations,
    catalog_open_error,
    connect,
    migrate,
    sqlite_errors,
)
from hybridlog.errors import CatalogError, CatalogMismatch, CatalogTooNew, CatalogUnusable, RecordFormatTooNew
from hybridlog.layout import building_path, sqlite_companions
from hybridlog.record import FORMAT_VERSION, LEGACY_FORMAT_VERSION
from hybridlog.types import ChainHash, MarkerAction, Offset, RecoveryAction, StreamId, known

CATALOG_PAGE_SIZE = 1024
"""The page size of a catalog this version creates (an older catalog keeps the one it has)."""


class Catalog(BatchIndex, GlobalOrderReads, CatalogChecks, MerkleTiles):
    """One apsw connection to ``catalog.db`` and the queries hybridlog runs on it.

    Not thread-safe on its own: ``Storage`` serialises every call with its lock.
    """

    def __init__(self, path: Path, *, read_only: bool, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS) -> None:
        self.path = path
        self.read_only = read_only
        self.busy_timeout_ms = busy_timeout_ms
        self.conn = connect(
            path,
            read_only=read_only,
            busy_timeout_ms=busy_timeout_ms,
            durable_commits=False,
            what="catalog",
            # Small pages: an append commits a batch row and its stream's and segment's rows, each a
            # few dozen bytes, and every page it touches is written to the WAL whole (measured:
            # 1 KiB pages made a single append ~15 us faster than SQLite's default 4 KiB).
            page_size=CATALOG_PAGE_SIZE,
            prepare=self._check_version if read_only else self._migrate,
            error=lambda e, conn: catalog_open_error(
                e, conn, path, read_only=read_only, busy_timeout_ms=busy_timeout_ms
            ),
        )

    @classmethod
    def create(cls, path: Path) -> Catalog:
        """A new catalog at ``path``, which appears there with its whole schema at once.

        It is built as ``<path>.new`` and renamed into place, so a reader that opens ``path``
        never meets a catalog half-way up the migration ladder. The caller fsyncs the directory.
        """
        building = cls.build(path)
        building.close()  # the last connection's close folds the WAL into the file
        building.path.replace(path)
        return cls(path, read_only=False)

    @classmethod
    def build(cls, path: Path) -> Catalog:
        """A new, empty catalog at ``<path>.new`` (the one way a catalog is created: ``create``, and
        a rebuild that fills it first), for the caller to close and rename over ``path``."""
        building = building_path(path)
        for leftover in (building, *sqlite_companions(building)):  # remains of a build a crash interrupted
            leftover.unlink(missing_ok=True)
        return cls(building, read_only=False)

    def close(self) -> None:
        """Close the connection (the last one to close folds the WAL into the file)."""
        self.conn.close()

    # --- schema ----------------------------------------------------------------------------------

    def data_version(self) -> int:
        """Changes whenever another connection commits to the catalog (SQLite's ``data_version``)."""
        # execute, not pragma(): apsw keeps the prepared statement, where pragma() formats and
        # prepares the text on every call (a warm point read asks once per read)
        row = self.conn.execute("PRAGMA data_version").fetchone()
        assert row is not None
        return int(row[0])

    def recovery_generation(self) -> int:
        """The recovery log's last entry id (0: none): it moves whenever recovery or repair acts."""
        return self._count("SELECT coalesce(max(entry_id), 0) FROM recovery_log", ())

    def schema_version(self) -> int:
        """The migration the catalog is at (SQLite's ``user_version``)."""
        return int(self.conn.pragma("user_version"))

    def _check_version(self, conn: apsw.Connection) -> None:
        found = int(conn.pragma("user_version"))
        if found > SCHEMA_VERSION:
            raise CatalogTooNew(self.path, found, SCHEMA_VERSION)
        owner = int(conn.pragma("application_id"))
        if owner not in (0, APPLICATION_ID) or (owner == 0 and found >= APPLICATION_ID_VERSION):
            raise CatalogUnusable(
                f"{self.path} is not a hybridlog catalog (its application_id is {owner:#010x},"
                f" a hybridlog catalog's is {APPLICATION_ID:#010x})",
                hint=f"a writer rebuilds it from the segments: run `hybridlog repair {self.path.parent}`",
            )
        if found >= 1:  # migration 0001 wrote the record format; a newer one is refused like a newer schema
            self._check_record_format(conn)
        if self.read_only and 1 <= found < BATCHES_VERSION:
            batches_over_records(conn, with_positions=found >= GLOBAL_ORDER_VERSION)

    def _check_record_format(self, conn: apsw.Connection) -> None:
        row = conn.execute("SELECT value FROM store_info WHERE key = 'record_format_version'").fetchone()
        value = None if row is None else row[0]
        if isinstance(value, str) and value.isdecimal() and int(value) > FORMAT_VERSION:
            raise RecordFormatTooNew(self.path, int(value), FORMAT_VERSION)
        if value not in (str(FORMAT_VERSION), str(LEGACY_FORMAT_VERSION)):
            raise CatalogUnusable(
                f"{self.path} names no record format hybridlog knows (store_info.record_format_version is {value!r})",
                hint=f"a writer rebuilds it from the segments: run `hybridlog repair {self.path.parent}`",
            )

    def _migrate(self, conn: apsw.Connection) -> None:
        self._check_version(conn)
        migrate(conn, catalog_migrations(), lambda found: CatalogTooNew(self.path, found, SCHEMA_VERSION))

    # --- reads -----------------------------------------------------------------------------------

    def stream_ids(self) -> list[StreamId]:
        """Every stream the catalog has a row for, ascending."""
        return [StreamId(r[0]) for r in self.conn.execute("SELECT stream_id FROM streams ORDER BY stream_id")]

    def stream(self, stream_id: StreamId) -> StreamRow | None:
        """A stream's ``streams`` row, its values checked (CatalogMismatch if damaged); None if unknown."""
        row = self.conn.execute(
            "SELECT next_offset, chain_head, event_count, last_timestamp_ns FROM streams WHERE stream_id = ?",
            (stream_id,),
        ).fetchone()
        if row is None:
            return None
        next_offset, head, events, last_ts = row
        require_ints((next_offset, events), "streams row", self.path, stream_id)
        if last_ts is not None:
            require_ints((last_ts,), "streams row", self.path, stream_id)
        chain_head = None if head is None else require_hash(head, "chain head", self.path, stream_id)
        if (chain_head is None) != (next_offset == 0):
            raise CatalogMismatch(
                f"the catalog's streams row says {next_offset} records with chain head {head!r}",
                stream_id=stream_id,
                hint=damaged_hint(self.path.parent),
            )
        return StreamRow(stream_id, Offset(next_offset), chain_head, events, last_ts)

    def segments(self, stream_id: StreamId) -> list[SegmentRow]:
        """A stream's ``segments`` rows by segment number: offsets, committed size, seal and digest."""
        rows = self.conn.execute(
            "SELECT segment_no, first_offset, next_offset, size_bytes, sealed, digest"
            " FROM segments WHERE stream_id = ? ORDER BY segment_no",
            (stream_id,),
        )
        found = []
        for no, first, nxt, size, sealed, digest in rows:
            require_ints((no, first, nxt, size, sealed), "segments row", self.path, stream_id)
            found.append(SegmentRow(stream_id, no, Offset(first), Offset(nxt), size, bool(sealed), digest))
        return found

    def checkpoint_at_or_before(self, stream_id: StreamId, offset: int) -> CheckpointRow | None:
        """The stream's last checkpoint at or before ``offset``, where a read of it is anchored."""
        row = self.conn.execute(
            "SELECT offset, hash, timestamp_ns FROM checkpoints WHERE stream_id = ? AND offset <= ?"
            " ORDER BY offset DESC LIMIT 1",
            (stream_id, offset),
        ).fetchone()
        return None if row is None else self._checkpoint_row(stream_id, row)

    def _checkpoint_row(self, stream_id: StreamId, row: tuple[object, ...]) -> CheckpointRow:
        offset, digest, ts = row
        require_ints((offset, ts), "checkpoints row", self.path, stream_id)
        assert isinstance(offset, int)
        assert isinstance(ts, int)
        return CheckpointRow(
            stream_id, Offset(offset), require_hash(digest, "checkpoint hash", self.path, stream_id, offset), ts
        )

    def checkpoints(self, stream_id: StreamId) -> list[CheckpointRow]:
        """A stream's checkpoints, by offset."""
        rows = self.conn.execute(
            "SELECT offset, hash, timestamp_ns FROM checkpoints WHERE stream_id = ? ORDER BY offset", (stream_id,)
        )
        return [self._checkpoint_row(stream_id, row) for row in rows]

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
                passed = [g for g in gaps if g.action == MarkerAction.ISOLATED and g.next_offset <= from_offset]
                resume = passed[-1] if passed and (anchor is None or passed[-1].next_offset > anchor.offset) else None
                if resume is not None:
                    anchor = None
                start_offset = resume.next_offset if resume else anchor.offset if anchor else 0
                if start_offset == 0 and gaps and gaps[0].first_offset == 0 and gaps[0].action == MarkerAction.CUT:
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
                known(MarkerAction, action),
                no,
                start,
                rno,
                rbyte,
                None if link is None else ChainHash(link),
            )
            for first, nxt, action, no, start, rno, rbyte, link in rows
        ]

    def insert_gaps(self, rows: Iterable[GapRow]) -> None:
        """Add ``gaps`` rows for ranges a repair isolated or cut (in the repair's transaction)."""
        self.conn.executemany(
            "INSERT INTO gaps (stream_id, first_offset, next_offset, action, segment_no, start_byte,"
            " resume_segment_no, resume_byte, link_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (astuple(g) for g in rows),  # a GapRow's fields are the table's columns, in this order
        )

    def segment_sizes(self) -> dict[StreamId, dict[int, int]]:
        """Every segment's committed size, by stream and segment number, in one query."""
        sizes: dict[StreamId, dict[int, int]] = {}
        for sid, no, size in self.conn.execute("SELECT stream_id, segment_no, size_bytes FROM segments"):
            sizes.setdefault(StreamId(sid), {})[no] = size
        return sizes

    def stream_stats(self) -> list[StreamStats]:
        """Every stream's counts, sizes and time span (what ``hybridlog stats`` shows), by stream id."""
        rows = self.conn.execute(
            "SELECT s.stream_id, s.record_count, s.event_count, s.checkpoint_count,"
            " (SELECT count(*) FROM segments g WHERE g.stream_id = s.stream_id),"
            " (SELECT count(*) FROM segments g WHERE g.stream_id = s.stream_id AND g.sealed),"
            " s.stored_bytes, s.payload_bytes, s.first_timestamp_ns, s.last_timestamp_ns"
            " FROM streams s ORDER BY s.stream_id"
        )
        stats = []
        for row in rows:
            require_ints(row[:8], "streams row", self.path, None)
            require_ints(tuple(ts for ts in row[8:] if ts is not None), "streams row", self.path, None)
            stats.append(StreamStats(*row))
        return stats

    def recovery_log(self, stream_id: StreamId | None = None) -> list[RecoveryEntry]:
        """The recovery log's entries in the order they were written: all, or one stream's."""
        rows = self.conn.execute(
            "SELECT stream_id, found, action, segment_no, start_byte, end_byte, first_offset, next_offset,"
            " kept_as, detail, at_ns FROM recovery_log WHERE ?1 IS NULL OR stream_id = ?1 ORDER BY entry_id",
            (stream_id,),
        )
        return [RecoveryEntry(sid, found, known(RecoveryAction, action), *rest) for sid, found, action, *rest in rows]

    # --- writes ----------------------------------------------------------------------------------

    @contextmanager
    def read_snapshot(self) -> Iterator[None]:
        """One read transaction: every query inside sees the catalog as it was when it began."""
        with self.conn:
            self._count("SELECT count(*) FROM sqlite_schema", ())  # the snapshot starts at the first read
            yield

    def transaction(self) -> apsw.Connection:
        """One write transaction (``with catalog.transaction():``); everything in it commits together
        or not at all. (The connection is its own context manager: no generator per append.)"""
        return self.conn

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
        """Create a stream's row or move it past a batch: new head and next offset, counts added to."""
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
        """Create a segment's row or move its committed end (next offset and size) after a batch."""
        self.conn.execute(
            "INSERT INTO segments (stream_id, segment_no, first_offset, next_offset, size_bytes, created_at_ns)"
            " VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
            " ON CONFLICT (stream_id, segment_no) DO UPDATE SET next_offset = ?4, size_bytes = ?5",
            (stream_id, segment_no, first_offset, next_offset, size_bytes, now_ns),
        )

    def seal_segment(self, stream_id: StreamId, segment_no: int, *, digest: bytes, now_ns: int) -> None:
        """Mark a segment sealed (no more appends go to it), with the digest of its whole file."""
        self.conn.execute(
            "UPDATE segments SET sealed = 1, digest = ?, sealed_at_ns = ? WHERE stream_id = ? AND segment_no = ?",
            (digest, now_ns, stream_id, segment_no),
        )

    def insert_checkpoints(self, rows: list[CheckpointRow]) -> None:
        """Add ``checkpoints`` rows: the offset, hash and time of each checkpoint record."""
        if not rows:
            return
        self.conn.executemany(
            "INSERT INTO checkpoints (stream_id, offset, hash, timestamp_ns) VALUES (?, ?, ?, ?)",
            ((r.stream_id, r.offset, r.hash, r.timestamp_ns) for r in rows),
        )

    def forget_stream(self, stream_id: StreamId) -> None:
        """Delete every row about a stream (the start of a rebuild, inside its transaction)."""
        for table in ("batches", "checkpoints", "segments", "streams", "gaps"):
            self.conn.execute(f"DELETE FROM {table} WHERE stream_id = ?", (stream_id,))  # noqa: S608

    def forget_checkpoints(self, stream_id: StreamId) -> None:
        """Delete a stream's checkpoint rows, for a re-index to write them again from the segments."""
        self.conn.execute("DELETE FROM checkpoints WHERE stream_id = ?", (stream_id,))

    def log_recovery(self, entry: RecoveryEntry) -> None:
        """Append an entry to ``recovery_log``, in the transaction of the action it records."""
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
        with sqlite_errors(f"cannot fold the WAL of {self.path} into it"):
            in_log, copied = self.conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_FULL)
        if in_log != copied:
            raise CatalogError(f"cannot fold the WAL of {self.path} into it: a reader holds an older snapshot")

    def checkpoint_wal(self) -> None:
        """Copy the WAL into the database file and fsync it: every commit so far is durable."""
        self.conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
