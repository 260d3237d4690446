"""The SQLite catalog: ``Catalog``, the one connection to ``catalog.db``, and every SQL statement
hybridlog runs on it.

The catalog indexes the segment files (streams, segments, the offset index, checkpoints). It is
updated in the same write path as the segments, one transaction per batch, and can always be
rebuilt from them. Its schema is the SQL in ``migrations/``, applied on the ``user_version``
ladder of ``db.py``; ``docs/schema.md`` documents it for SQL users. ``Catalog`` is read top-down
here (opening and creating, the schema, per-stream reads, the writes of the append path and of
recovery); two concerns live in modules of their own and are mixed into it: the store-wide order
(``catalog_global.py``) and the catalog's checks of itself (``catalog_check.py``). Its row types
and row checks are in ``catalog_rows.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import astuple
from pathlib import Path

import apsw

from hybridlog.catalog_check import CatalogChecks
from hybridlog.catalog_global import GlobalOrderReads
from hybridlog.catalog_rows import (
    APPLICATION_ID,
    APPLICATION_ID_VERSION,
    BATCH_COLUMNS,
    BATCHES_VERSION,
    GAPS_VERSION,
    GLOBAL_ORDER_VERSION,
    SCHEMA_VERSION,
    BatchRow,
    CheckpointRow,
    GapRow,
    IndexEntry,
    IndexRow,
    RecoveryEntry,
    SegmentRow,
    StreamRow,
    StreamSnapshot,
    StreamStats,
    damaged_hint,
    expand_batch,
    pack_frame_ends,
    pack_kinds,
    require_hash,
    require_ints,
    require_kind,
)
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
from hybridlog.types import ChainHash, MarkerAction, Offset, RecordKind, RecoveryAction, StreamId, known


def _batches_over_records(conn: apsw.Connection, *, with_positions: bool) -> None:
    """Let a reader read a catalog no writer has upgraded to one row per batch yet (a reader never
    migrates): a temporary ``batches`` view (in this connection's memory, not the file) that shows
    each ``records`` row as a batch of one, as migration 0006 would."""
    position = "global_position" if with_positions else "0"
    conn.execute(
        f"CREATE TEMP VIEW IF NOT EXISTS batches AS SELECT {position} AS global_position,"  # noqa: S608
        " stream_id, offset AS first_offset, 1 AS record_count, segment_no, position,"
        " unhex(printf('%02X%02X%02X%02X', length & 255, (length >> 8) & 255, (length >> 16) & 255,"
        " (length >> 24) & 255)) AS frame_ends,"
        " CASE WHEN kind = 0 THEN NULL ELSE unhex(printf('%02X', kind)) END AS kinds, timestamp_ns FROM main.records"
    )


LEGACY_BASE = 2**62
"""Where a rebuild numbers format-1 records until it knows their order (``number_legacy_records``)."""


class Catalog(GlobalOrderReads, CatalogChecks):
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
        version = self.conn.pragma("data_version")
        assert isinstance(version, int)
        return version

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
            _batches_over_records(conn, with_positions=found >= GLOBAL_ORDER_VERSION)

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

    def batch_rows(self, stream_id: StreamId, from_offset: int = 0) -> Iterator[IndexRow]:
        """A stream's records from the batch holding ``from_offset`` on, one ``IndexRow`` each, by
        offset (records before ``from_offset`` in that first batch included), each batch checked as read."""
        cursor = self.conn.execute(
            f"SELECT {BATCH_COLUMNS} FROM batches WHERE stream_id = ?1 AND first_offset >= coalesce("  # noqa: S608
            " (SELECT max(first_offset) FROM batches WHERE stream_id = ?1 AND first_offset <= ?2), 0)"
            " ORDER BY first_offset",
            (stream_id, from_offset),
        )
        try:
            for row in cursor:
                yield from expand_batch(row, self.path, stream_id)
        finally:
            cursor.close()  # a caller that stops early ends the read the statement holds open

    def batch_at(self, stream_id: StreamId, offset: int) -> list[IndexRow] | None:
        """The records of the batch row holding ``offset`` (None: no row holds it)."""
        row = self.conn.execute(
            f"SELECT {BATCH_COLUMNS} FROM batches WHERE stream_id = ? AND first_offset <= ?"  # noqa: S608
            " ORDER BY first_offset DESC LIMIT 1",
            (stream_id, offset),
        ).fetchone()
        if row is None:
            return None
        rows = expand_batch(row, self.path, stream_id)
        return rows if offset - rows[0][2] < len(rows) else None

    def index_entry(self, stream_id: StreamId, offset: int) -> IndexEntry | None:
        """Where the record at ``offset`` is (segment, byte, length, kind, time); None if not indexed."""
        rows = self.batch_at(stream_id, offset)
        if rows is None:
            return None
        _, _, _, no, position, length, kind, ts = rows[offset - rows[0][2]]
        return IndexEntry(Offset(offset), no, position, length, require_kind(kind, self.path, stream_id, offset), ts)

    def first_entry_ending_after(self, stream_id: StreamId, segment_no: int, byte: int) -> IndexEntry | None:
        """The first record of a segment whose frame does not end by ``byte`` (the first one a cut there hurts)."""
        cursor = self.conn.execute(
            f"SELECT {BATCH_COLUMNS} FROM batches WHERE stream_id = ? AND segment_no = ?"  # noqa: S608
            " ORDER BY first_offset",
            (stream_id, segment_no),
        )
        try:
            for batch in cursor:
                for _, _, offset, no, position, length, kind, ts in expand_batch(batch, self.path, stream_id):
                    if position + length > byte:
                        return IndexEntry(
                            Offset(offset),
                            no,
                            position,
                            length,
                            require_kind(kind, self.path, stream_id, offset),
                            ts,
                        )
        finally:
            cursor.close()
        return None

    def index_entries(self, stream_id: StreamId, from_offset: int = 0) -> Iterator[IndexEntry]:
        """A stream's offset-index rows from ``from_offset`` on, in offset order, each checked as read."""
        for _, _, offset, no, position, length, kind, ts in self.batch_rows(stream_id, from_offset):
            if offset >= from_offset:
                yield IndexEntry(
                    Offset(offset), no, position, length, require_kind(kind, self.path, stream_id, offset), ts
                )

    def index_size(self, stream_id: StreamId) -> int:
        """How many records (checkpoints and markers included) the offset index holds for a stream."""
        return self._count("SELECT coalesce(sum(record_count), 0) FROM batches WHERE stream_id = ?", (stream_id,))

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
                rows = self.batch_at(stream_id, middle)
                if rows is None:
                    raise CatalogMismatch(
                        "the offset index has no row for this offset",
                        stream_id=stream_id,
                        offset=middle,
                        hint=damaged_hint(self.path.parent),
                    )
                # every record of a batch has its timestamp: the search moves a whole batch at a time
                if rows[0][7] < timestamp_ns:
                    low = rows[-1][2] + 1
                else:
                    high = rows[0][2]
        return Offset(low)

    def events_after(self, stream_id: StreamId, offset: int) -> int:
        """How many event records come after ``offset`` (-1: all of them)."""
        return sum(
            1 for row in self.batch_rows(stream_id, offset + 1) if row[2] > offset and row[6] == RecordKind.EVENT
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

    def insert_records(self, stream_id: StreamId, entries: Iterable[tuple[int, IndexEntry]]) -> None:
        """Index rows for ``(global_position, entry)`` pairs (a stream's records in offset order):
        one ``batches`` row per run of records that are back to back in one segment, with
        consecutive offsets and global positions and one timestamp."""
        rows: list[BatchRow] = []
        run: list[tuple[int, IndexEntry]] = []

        def close_run() -> None:
            first_position, first = run[0]
            ends = [e.position + e.length - first.position for _, e in run]
            kinds = pack_kinds([int(e.kind) for _, e in run])
            rows.append(
                (
                    first_position,
                    stream_id,
                    first.offset,
                    len(run),
                    first.segment_no,
                    first.position,
                    pack_frame_ends(ends),
                    kinds,
                    first.timestamp_ns,
                )
            )
            run.clear()

        for position, entry in entries:
            if run:
                last_position, last = run[-1]
                if (
                    position != last_position + 1
                    or entry.offset != last.offset + 1
                    or entry.segment_no != last.segment_no
                    or entry.position != last.position + last.length
                    or entry.timestamp_ns != last.timestamp_ns
                ):
                    close_run()
            run.append((position, entry))
        if run:
            close_run()
        self.insert_batches(rows)

    def insert_batches(self, rows: Iterable[BatchRow]) -> None:
        """``batches`` rows as plain tuples (the append path builds them without objects)."""
        self.conn.executemany(
            f"INSERT INTO batches ({BATCH_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
            rows,
        )

    def raise_global_mark(self, position: int) -> None:
        """Keep ``position`` as given out even when no batch row holds it any more (before a repair or
        re-index deletes rows): the mark never goes back."""
        self.conn.execute(
            "UPDATE global_order SET last_position = max(last_position, ?) WHERE singleton = 1", (position,)
        )

    def set_aside_legacy_positions(self) -> None:
        """Start a rebuild's numbering: format-1 records indexed from now on get positions above
        ``LEGACY_BASE`` (format-2 records keep the ones their frames carry), for
        ``number_legacy_records`` to replace."""
        self.conn.execute("UPDATE global_order SET last_position = ? WHERE singleton = 1", (LEGACY_BASE,))

    def number_legacy_records(self) -> int:
        """Number the format-1 records a rebuild indexed (frames of format 1 carry no global position)
        1, 2, ... in (timestamp_ns, stream_id, offset) order, as migration 0003 did; returns how many.

        Every format-1 record was written before any format-2 one, whose position (in its frame) is
        above every position given out before it, so the two never meet.
        """
        legacy: list[IndexRow] = []
        for row in self.conn.execute(
            f"SELECT {BATCH_COLUMNS} FROM batches WHERE global_position > ?",  # noqa: S608
            (LEGACY_BASE,),
        ):
            legacy.extend(expand_batch(row, self.path, None))
        self.conn.execute("DELETE FROM batches WHERE global_position > ?", (LEGACY_BASE,))
        legacy.sort(key=lambda r: (r[7], r[1], r[2]))
        by_stream: dict[StreamId, list[tuple[int, IndexEntry]]] = {}
        for position, (_, sid, offset, no, byte, length, kind, ts) in enumerate(legacy, start=1):
            entry = IndexEntry(Offset(offset), no, byte, length, RecordKind(kind), ts)
            by_stream.setdefault(StreamId(sid), []).append((position, entry))
        for sid, numbered in by_stream.items():
            numbered.sort(key=lambda item: item[1].offset)
            self.insert_records(sid, numbered)
        self.conn.execute("UPDATE global_order SET last_position = ? WHERE singleton = 1", (len(legacy),))
        return len(legacy)

    def insert_checkpoints(self, rows: Iterable[CheckpointRow]) -> None:
        """Add ``checkpoints`` rows: the offset, hash and time of each checkpoint record."""
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
