"""Reads in the store-wide order (global positions), each checked against what a damaged catalog
could get wrong before a read relies on it: the one home of global-position queries.

``GlobalOrderReads`` is a part of ``Catalog`` (``catalog.py``), which supplies the connection and
the per-stream reads it uses.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import apsw

from hybridlog.catalog_rows import (
    BATCH_COLUMNS,
    GLOBAL_ORDER_VERSION,
    GapRow,
    GlobalRow,
    IndexRow,
    StreamRow,
    damaged_hint,
    expand_batch,
    require_ints,
)
from hybridlog.errors import CatalogError, CatalogMismatch
from hybridlog.record import FRAME_OVERHEAD
from hybridlog.types import GlobalPosition, Offset, RecoveryAction, StreamId


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


class GlobalOrderReads:
    """The global-order queries of ``Catalog``."""

    conn: apsw.Connection
    path: Path
    read_only: bool

    if TYPE_CHECKING:

        def stream(self, stream_id: StreamId) -> StreamRow | None:
            """``Catalog.stream``: a stream's row, None for an unknown stream."""

        def gaps(self, stream_id: StreamId) -> list[GapRow]:
            """``Catalog.gaps``: the stream's isolated and cut offset ranges."""

        def schema_version(self) -> int:
            """``Catalog.schema_version``: the migration the catalog is at."""

    if TYPE_CHECKING:

        def batch_rows(self, stream_id: StreamId, from_offset: int = 0) -> Iterator[IndexRow]:
            """``Catalog.batch_rows``: a stream's records from the batch holding ``from_offset`` on."""

        def batch_at(self, stream_id: StreamId, offset: int) -> list[IndexRow] | None:
            """``Catalog.batch_at``: the records of the batch row holding ``offset``."""

    def global_positions(
        self, stream_id: StreamId, first: int = 0, last: int = 2**63 - 1
    ) -> dict[Offset, GlobalPosition]:
        """The global positions of one stream's records from offset ``first`` to ``last``, by offset."""
        found: dict[Offset, GlobalPosition] = {}
        for position, _, offset, *_ in self.batch_rows(stream_id, first):
            if offset > last:
                break
            if offset >= first:
                found[Offset(offset)] = GlobalPosition(position)
        return found

    def _rows_from_position(self, position: int) -> Iterator[IndexRow]:
        """Every record from the batch holding global ``position`` (or the first after it) on, in global order."""
        cursor = self.conn.execute(
            f"SELECT {BATCH_COLUMNS} FROM batches WHERE global_position >= coalesce("  # noqa: S608
            " (SELECT max(global_position) FROM batches WHERE global_position <= ?1), 0) ORDER BY global_position",
            (position,),
        )
        try:
            for row in cursor:
                yield from expand_batch(row, self.path, None)
        finally:
            cursor.close()

    def index_rows_from_position(self, position: int) -> Iterator[IndexRow]:
        """Every record from the batch holding global ``position`` on, in global order, one
        ``IndexRow`` each (position, stream, offset, segment, byte, length, kind, timestamp)."""
        self._require_global_order()
        return self._rows_from_position(position)

    def global_ranges(self, low: int, high: int, stream_id: StreamId | None) -> list[tuple[StreamId, int, int]]:
        """(stream, first offset, last offset) of the records with global positions ``low`` to
        ``high``, by stream (within a stream, positions grow with offsets: one range each)."""
        ranges: dict[StreamId, tuple[int, int]] = {}
        for position, sid, offset, *_ in self._rows_from_position(low):
            if position > high:
                break
            if position < low or (stream_id is not None and sid != stream_id):
                continue
            first, _ = ranges.get(StreamId(sid), (offset, offset))
            ranges[StreamId(sid)] = (first, offset)
        return [(sid, first, last) for sid, (first, last) in sorted(ranges.items())]

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
        """The high-water mark: the last global position ever given out (0: none yet).

        The last batch row's last position, or the ``global_order`` mark if higher (it keeps the
        positions of rows a repair deleted).
        """
        self._require_global_order()
        row = self.conn.execute("SELECT last_position FROM global_order WHERE singleton = 1").fetchone()
        if row is None:
            raise CatalogMismatch("the catalog has no global-position mark", hint=damaged_hint(self.path.parent))
        require_ints(row, "global-position mark", self.path, None)
        last = self.conn.execute(
            "SELECT global_position + record_count - 1 FROM batches ORDER BY global_position DESC LIMIT 1"
        ).fetchone()
        if last is not None:
            require_ints(last, "batches row", self.path, None)
        return GlobalPosition(max(row[0], last[0] if last else 0))

    def global_position_of(self, stream_id: StreamId, offset: int) -> GlobalPosition | None:
        """The global position of one record (None: the stream has no record at that offset)."""
        self._require_global_order()
        rows = self.batch_at(stream_id, offset)
        if rows is None:
            return None
        position = rows[offset - rows[0][2]][0]
        if position < 1:
            raise self._position_mismatch(stream_id, offset, f"global position {position} is below 1")
        return GlobalPosition(position)

    def record_at_position(self, position: int) -> tuple[StreamId, Offset] | None:
        """(stream, offset) of the record at a global position (None: no record has it)."""
        self._require_global_order()
        for found, sid, offset, *_ in self._rows_from_position(position):
            if found == position:
                return StreamId(sid), Offset(offset)
            if found > position:
                break
        return None

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
                found = (row for row in self._rows_from_position(from_position) if row[0] >= from_position)
                rows, cut = self._rows_within(found, max_payload_bytes)
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
        found = (row for row in self.batch_rows(stream_id, low) if row[2] >= low)
        rows, cut = self._rows_within(found, max_payload_bytes)
        if not cut and rows and _next_offset(gaps, rows[-1].offset) < (stream.next_offset if stream else 0):
            raise self._position_mismatch(
                stream_id, rows[-1].offset + 1, "the offset index scan ends before the stream's next offset"
            )
        return rows

    def _rows_within(
        self, found: Generator[IndexRow, None, None], max_payload_bytes: int
    ) -> tuple[list[GlobalRow], bool]:
        """The rows that may fit, and whether the size cut them short (False: the rows ran out)."""
        rows: list[GlobalRow] = []
        at_least = 0
        cut = False
        try:
            for position, sid, offset, _, _, length, _, _ in found:
                at_least += length - FRAME_OVERHEAD
                if rows and at_least > max_payload_bytes:
                    cut = True
                    break  # this one cannot fit after those before it
                rows.append(GlobalRow(GlobalPosition(position), StreamId(sid), Offset(offset), length))
        finally:
            found.close()  # ends the read an unfinished statement would otherwise hold open
        return rows, cut

    def positions_may_be_unused(self) -> bool:
        """Whether the recovery log records an action that can leave global positions unused.

        Positions are given out in the commits of their records, so on a store no recovery or
        repair has touched they are 1, 2, 3, ... without a gap. Records recovery adopts keep the
        positions their frames carry, and a group commit's batches are adopted or cut one by one,
        so an adoption can leave the positions of a torn batch of the same group unused; so can any
        other action (a re-index, a truncation, a rebuild, or one this code does not know).
        """
        row = self.conn.execute(
            "SELECT 1 FROM recovery_log WHERE action NOT IN (?, ?) LIMIT 1",
            (RecoveryAction.QUARANTINED, RecoveryAction.REMOVED_EMPTY),
        ).fetchone()
        return row is not None
