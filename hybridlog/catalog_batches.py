"""The offset index, one row per batch: the one home of reading and writing ``batches`` rows.

A ``batches`` row stands for a run of records of one stream written together (``docs/schema.md``):
in one segment, back to back, with consecutive offsets and global positions and one timestamp.
Reads expand the row holding an offset into its records (``catalog_rows.expand_batch``), so a
point lookup is one index probe whatever the batch size; writes group records into runs. Also
here: the view a reader puts over an older catalog's per-record ``records`` table, and the
numbering of format-1 records (whose frames carry no global position) in a full rebuild.

``BatchIndex`` is a part of ``Catalog`` (``catalog.py``), which supplies the connection.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import apsw

from hybridlog.catalog_rows import (
    BATCH_COLUMNS,
    BatchRow,
    IndexEntry,
    IndexRow,
    damaged_hint,
    expand_batch,
    pack_frame_ends,
    pack_kinds,
    require_kind,
)
from hybridlog.errors import CatalogMismatch
from hybridlog.types import Offset, RecordKind, StreamId

if TYPE_CHECKING:
    from hybridlog.catalog_rows import StreamRow


STREAM_BATCHES_FROM = (
    f"SELECT {BATCH_COLUMNS} FROM batches WHERE stream_id = ?1 AND first_offset >= coalesce("  # noqa: S608
    " (SELECT max(first_offset) FROM batches WHERE stream_id = ?1 AND first_offset <= ?2), 0)"
    " ORDER BY first_offset"
)
"""A stream's (?1) ``batches`` rows from the one holding offset ?2 on, by offset."""


def batches_over_records(conn: apsw.Connection, *, with_positions: bool) -> None:
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


class BatchIndex:
    """The ``batches`` queries of ``Catalog``."""

    conn: apsw.Connection
    path: Path

    if TYPE_CHECKING:

        def stream(self, stream_id: StreamId) -> StreamRow | None:
            """``Catalog.stream``: a stream's row, None for an unknown stream."""

        def _count(self, sql: str, bindings: tuple[int, ...]) -> int:
            """``Catalog._count``: the one integer a count query gives."""

    def batch_rows(self, stream_id: StreamId, from_offset: int = 0) -> Iterator[IndexRow]:
        """A stream's records from the batch holding ``from_offset`` on, one ``IndexRow`` each, by
        offset (records before ``from_offset`` in that first batch included), each batch checked as read."""
        cursor = self.conn.execute(STREAM_BATCHES_FROM, (stream_id, from_offset))
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
        for entry, _ in self.placed_entries(stream_id, from_offset):
            yield entry

    def placed_entries(self, stream_id: StreamId, from_offset: int = 0) -> Iterator[tuple[IndexEntry, int]]:
        """``index_entries`` with each record's global position."""
        for position, _, offset, no, byte, length, kind, ts in self.batch_rows(stream_id, from_offset):
            if offset >= from_offset:
                entry = IndexEntry(
                    Offset(offset), no, byte, length, require_kind(kind, self.path, stream_id, offset), ts
                )
                yield entry, position

    def index_size(self, stream_id: StreamId) -> int:
        """How many records (checkpoints and markers included) the offset index holds for a stream."""
        return self._count("SELECT coalesce(sum(record_count), 0) FROM batches WHERE stream_id = ?", (stream_id,))

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

    def insert_records(self, stream_id: StreamId, entries: Iterable[tuple[int, IndexEntry]]) -> None:
        """Index rows for ``(global_position, entry)`` pairs (a stream's records in offset order):
        one ``batches`` row per run of records that are back to back in one segment, with
        consecutive offsets and global positions and one timestamp. (A rebuild runs the loop once
        per record: each entry's fields are read once, and the run is kept in locals.)"""
        rows: list[BatchRow] = []
        ends: list[int] = []
        kinds: list[int] = []
        start: tuple[int, int, int, int] | None = None  # the run's first position, offset, segment, byte
        next_position = next_offset = next_byte = segment_no = timestamp_ns = 0

        def close_run() -> None:
            assert start is not None
            position, offset, no, byte = start
            rows.append(
                (
                    position,
                    stream_id,
                    offset,
                    len(ends),
                    no,
                    byte,
                    pack_frame_ends(ends),
                    pack_kinds(kinds),
                    timestamp_ns,
                )
            )

        for position, entry in entries:
            offset, no, byte, length, ts = (
                entry.offset,
                entry.segment_no,
                entry.position,
                entry.length,
                entry.timestamp_ns,
            )
            if not (
                position == next_position
                and offset == next_offset
                and byte == next_byte
                and no == segment_no
                and ts == timestamp_ns
                and start is not None
            ):
                if start is not None:
                    close_run()
                start, segment_no, timestamp_ns = (position, offset, no, byte), no, ts
                ends, kinds = [], []
            next_byte = byte + length
            ends.append(next_byte - start[3])
            kinds.append(int(entry.kind))
            next_position, next_offset = position + 1, offset + 1
        if start is not None:
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
