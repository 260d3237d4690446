"""The ``events`` SQL table: every record of a store, read from the segments and verified.

An eponymous, read-only apsw virtual table (no ``CREATE VIRTUAL TABLE`` needed)::

    events(stream_id, offset, global_position, kind, timestamp, payload, hash, prev_hash)

``kind`` is ``'event'``, ``'checkpoint'`` or ``'repair'`` (a repair marker, ``markers.py``);
``timestamp`` is the append time in nanoseconds since the epoch; ``payload`` is an event's bytes
(SQLite's JSON functions read JSON text held in a blob, so ``payload ->> '$.type'`` works) and
NULL for a checkpoint or repair record, whose content is internal and would only break JSON
functions over a whole stream. Records a repair isolated are not rows (the ``gaps`` table lists
them).

Constraints on ``stream_id`` (=), ``offset``, ``timestamp`` and ``global_position`` (=, <, <=, >,
>=) are pushed down: they are turned into one offset range per stream, using the catalog (the
offset index; a binary search for timestamps, which never decrease within a stream; the
global_position key), and only those ranges are read. Each range is read like any verified read,
from the nearest checkpoint at or before it, so a narrow query reads its rows plus at most one
checkpoint interval. A record that fails verification raises its IntegrityError out of the
query; it is never returned as a row. SQLite still checks every constraint on the rows it gets
(nothing is omitted), so values the push-down does not understand (text, blobs) only make it
read more, never return wrong rows. Rows come in (stream_id, offset) order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import apsw

from hybridlog.batch import records_between
from hybridlog.types import GlobalPosition, Offset, Record, RecordKind, StreamId

COLUMNS = ("stream_id", "offset", "global_position", "kind", "timestamp", "payload", "hash", "prev_hash")
SCHEMA = (
    "CREATE TABLE events (stream_id INTEGER, offset INTEGER, global_position INTEGER, kind TEXT,"
    " timestamp INTEGER, payload BLOB, hash BLOB, prev_hash BLOB)"
)
_STREAM, _OFFSET, _GLOBAL, _KIND, _TIMESTAMP, _PAYLOAD, _HASH, _PREV = range(len(COLUMNS))
_KIND_NAMES = {RecordKind.EVENT: "event", RecordKind.CHECKPOINT: "checkpoint", RecordKind.REPAIR: "repair"}

_EQ = apsw.SQLITE_INDEX_CONSTRAINT_EQ
_GT = apsw.SQLITE_INDEX_CONSTRAINT_GT
_GE = apsw.SQLITE_INDEX_CONSTRAINT_GE
_LT = apsw.SQLITE_INDEX_CONSTRAINT_LT
_LE = apsw.SQLITE_INDEX_CONSTRAINT_LE
_RANGE_OPS = {_EQ, _GT, _GE, _LT, _LE}
_PUSHED = {_STREAM: {_EQ}, _OFFSET: _RANGE_OPS, _TIMESTAMP: _RANGE_OPS, _GLOBAL: _RANGE_OPS}

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
"""SQLite's integer range: bounds a pushed-down constraint can be clamped to."""
_POSITION_CHUNK = 4096  # global positions fetched per catalog query while reading a range


class EventSource(Protocol):
    """What the table reads through (``Storage`` provides it)."""

    def stream_ids(self) -> list[StreamId]:
        """Every stream in the store, ascending."""

    def next_offset(self, stream_id: int) -> int:
        """The offset the stream's next record gets (0 for an unknown stream)."""

    def offset_at(self, stream_id: int, timestamp_ns: int) -> int:
        """The first offset appended at or after ``timestamp_ns`` (the next offset if none)."""

    def iter_records(self, stream_id: int, from_offset: int = 0, *, anchored: bool = True) -> Iterator[Record]:
        """The stream's records from ``from_offset`` on, each verified before it is yielded."""

    def global_ranges(self, low: int, high: int, stream_id: int | None) -> list[tuple[StreamId, int, int]]:
        """(stream, first offset, last offset) of the records whose global positions are in [low, high]."""

    def global_positions(self, stream_id: int, first: int, last: int) -> dict[Offset, GlobalPosition]:
        """The global positions of a stream's records from offset ``first`` to ``last``, by offset."""


@dataclass
class Bounds:
    """Inclusive bounds on one integer column, narrowed by each pushed-down constraint."""

    low: int = INT64_MIN
    high: int = INT64_MAX
    empty: bool = False

    def narrow(self, op: int, value: object) -> None:
        """Tighten the bounds by ``column <op> value``; NULL leaves no row, text or blob nothing to push."""
        if value is None:
            self.empty = True  # nothing compares true with NULL
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            return  # text or blob: SQLite's own check decides, we only read more
        if op in (_EQ, _GE):
            self.low = max(self.low, _ceil(value))
        if op in (_EQ, _LE):
            self.high = min(self.high, _floor(value))
        if op == _GT:
            self.low = max(self.low, _floor(value) + 1)
        if op == _LT:
            self.high = min(self.high, _ceil(value) - 1)

    @property
    def bounded(self) -> bool:
        """Whether any constraint narrowed the bounds (else the column does not limit the read)."""
        return self.low > INT64_MIN or self.high < INT64_MAX


def _ceil(value: int | float) -> int:
    return value if isinstance(value, int) else (math.ceil(value) if math.isfinite(value) else _clamp(value))


def _floor(value: int | float) -> int:
    return value if isinstance(value, int) else (math.floor(value) if math.isfinite(value) else _clamp(value))


def _clamp(value: float) -> int:
    return INT64_MAX if value > 0 else INT64_MIN


@dataclass
class Plan:
    """What one Filter call asks for: a stream (or all) and bounds on offset, timestamp, position."""

    stream_id: int | None = None
    no_rows: bool = False
    offset: Bounds = field(default_factory=Bounds)
    timestamp: Bounds = field(default_factory=Bounds)
    global_position: Bounds = field(default_factory=Bounds)

    @classmethod
    def from_constraints(cls, pushed: Sequence[tuple[int, int]], values: Sequence[object]) -> Plan:
        """The plan for the pushed-down (column, op) pairs and the values SQLite gives them in Filter."""
        plan = cls()
        for (column, op), value in zip(pushed, values, strict=True):
            if column == _STREAM:
                if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
                    plan.no_rows = plan.no_rows or value is None
                    continue
                if isinstance(value, float) and not value.is_integer():
                    plan.no_rows = True
                    continue
                if plan.stream_id is not None and plan.stream_id != int(value):
                    plan.no_rows = True
                plan.stream_id = int(value)
            else:
                {_OFFSET: plan.offset, _TIMESTAMP: plan.timestamp, _GLOBAL: plan.global_position}[column].narrow(
                    op, value
                )
        return plan

    def ranges(self, source: EventSource) -> Iterator[tuple[StreamId, int, int]]:
        """(stream, first offset, last offset) to read, in stream order."""
        if self.no_rows or any(b.empty for b in (self.offset, self.timestamp, self.global_position)):
            return
        if self.global_position.bounded:
            candidates = source.global_ranges(self.global_position.low, self.global_position.high, self.stream_id)
        elif self.stream_id is not None:
            candidates = [(StreamId(self.stream_id), 0, INT64_MAX)]
        else:
            candidates = [(sid, 0, INT64_MAX) for sid in source.stream_ids()]
        for sid, first, last in candidates:
            if not 0 <= sid < 2**63:
                continue
            first = max(first, self.offset.low, 0)
            last = min(last, self.offset.high, source.next_offset(sid) - 1)
            if self.timestamp.low > INT64_MIN:
                first = max(first, source.offset_at(sid, self.timestamp.low))
            if self.timestamp.high < INT64_MAX:
                last = min(last, source.offset_at(sid, self.timestamp.high + 1) - 1)
            if first <= last:
                yield sid, first, last


def _encode(pushed: list[tuple[int, int]]) -> str:
    """The pushed-down (column, op) pairs as the index string SQLite hands back to Filter."""
    return ",".join(f"{column}:{op}" for column, op in pushed)


def _decode(index_string: str) -> list[tuple[int, int]]:
    return [(int(column), int(op)) for column, op in (p.split(":") for p in index_string.split(",") if p)]


class EventsModule:
    """The apsw module: one table object per connection, reading through ``source``.

    ``records_read`` counts the records the table has taken from verified reads (rows before
    SQLite's own filtering), which shows how much a query's push-down saved.
    """

    def __init__(self, source: EventSource) -> None:
        self.source = source
        self.records_read = 0

    def Connect(
        self,
        connection: apsw.Connection,
        modulename: str,
        databasename: str,
        tablename: str,
        *args: tuple[apsw.SQLiteValue, ...],
    ) -> tuple[str, apsw.VTTable]:
        """The table's schema and a table object for this connection (``Create`` is the same)."""
        return SCHEMA, cast("apsw.VTTable", EventsTable(self))  # apsw's stub protocol lists optional methods too

    Create = Connect


class EventsTable:
    """The ``events`` table of one connection: plans each query and opens its cursors."""

    def __init__(self, module: EventsModule) -> None:
        self.module = module

    def BestIndexObject(self, info: apsw.IndexInfo) -> bool:
        """Push down every usable constraint we understand (SQLite still checks them all)."""
        pushed: list[tuple[int, int]] = []
        for i in range(info.nConstraint):
            column, op = info.get_aConstraint_iColumn(i), info.get_aConstraint_op(i)
            if info.get_aConstraint_usable(i) and op in _PUSHED.get(column, ()):
                pushed.append((column, op))
                info.set_aConstraintUsage_argvIndex(i, len(pushed))
        info.idxStr = _encode(pushed)
        columns = {column for column, _ in pushed}
        by_stream = _STREAM in columns
        ranged = bool(columns & {_OFFSET, _TIMESTAMP, _GLOBAL})
        rows = 1_000_000 // (1000 if by_stream else 1) // (100 if ranged else 1)
        info.estimatedRows = max(rows, 1)
        info.estimatedCost = float(max(rows, 1))
        wanted = [(info.get_aOrderBy_iColumn(i), info.get_aOrderBy_desc(i)) for i in range(info.nOrderBy)]
        info.orderByConsumed = wanted == [(_STREAM, False), (_OFFSET, False)][: len(wanted)]
        return True

    def Open(self) -> EventsCursor:
        """A new cursor over the table, positioned nowhere until SQLite calls its ``Filter``."""
        return EventsCursor(self.module)

    def Disconnect(self) -> None:
        """Nothing to release: the table holds no resources of its own (``Destroy`` is the same)."""
        pass

    Destroy = Disconnect


AT_END = True.__bool__
"""A cursor's ``Eof`` at the end: a C method (see ``EventsCursor``), shared with records_table.py."""
NOT_AT_END = False.__bool__


class EventsCursor:
    """One scan of the table: the verified rows of a plan, read one at a time."""

    def __init__(self, module: EventsModule) -> None:
        self.module = module
        self.rows: Iterator[tuple[object, ...]] = iter(())
        self.row: tuple[object, ...] | None = None
        self.rowid = 0
        # Eof is a C method returning the answer, not Python code: SQLite's xEof cannot report an
        # error, so a KeyboardInterrupt (Ctrl-C) raised on entering a Python Eof would stay
        # pending inside apsw (a SystemError later) instead of stopping the query. Next sets it.
        self.Eof: Callable[[], bool] = AT_END

    def Filter(self, indexnum: int, indexname: str, constraintargs: tuple[Any, ...] | None) -> None:
        """Start a scan of the ranges the pushed-down constraints allow, closing the previous one."""
        self.Close()
        self.rows = self._read(Plan.from_constraints(_decode(indexname), constraintargs or ()))
        self.rowid = 0
        self.Next()

    def _read(self, plan: Plan) -> Iterator[tuple[object, ...]]:
        source = self.module.source
        for sid, first, last in plan.ranges(source):
            positions: dict[Offset, GlobalPosition] = {}
            # never asks for the record after the range (which may be damaged); steps over
            # records a repair isolated (they are no rows: the ``gaps`` table lists them)
            for record in records_between(source, sid, first, last):
                offset = record.offset
                if offset not in positions:  # the next chunk of the range's global positions
                    positions = source.global_positions(sid, offset, min(last, offset + _POSITION_CHUNK - 1))
                self.module.records_read += 1
                yield (
                    sid,
                    offset,
                    positions.get(offset),
                    _KIND_NAMES[record.kind],
                    record.timestamp_ns,
                    record.payload if record.kind is RecordKind.EVENT else None,
                    record.hash,
                    record.prev_hash,
                )

    def Next(self) -> None:
        """Move to the next row (reading and verifying it) and set ``Eof`` accordingly."""
        self.row = next(self.rows, None)
        self.rowid += 1
        self.Eof = AT_END if self.row is None else NOT_AT_END

    def Rowid(self) -> int:
        """The current row's number within this scan (1 for the first row)."""
        return self.rowid

    def Column(self, number: int) -> object:
        """The current row's value of column ``number`` (-1: the rowid)."""
        assert self.row is not None
        return self.rowid if number == -1 else self.row[number]

    def Close(self) -> None:
        """End the scan: an unfinished read closes the segment file it has open."""
        close = getattr(self.rows, "close", None)
        if close is not None:
            close()  # closes the segment file of an unfinished read


def register(connection: apsw.Connection, source: EventSource) -> EventsModule:
    """Make ``events`` available on ``connection`` (read-only, no CREATE needed)."""
    module = EventsModule(source)
    connection.create_module(
        "events", cast("apsw.VTModule", module), use_bestindex_object=True, eponymous_only=True, read_only=True
    )
    return module
