"""The ``records`` SQL table: the catalog's offset index, one row per record, computed from ``batches``.

Until schema version 6 the catalog had a real ``records`` table with one row per record; migration
0006 replaced it with ``batches`` (one row per run of records written together, docs/schema.md).
SQL users keep the per-record view through this eponymous, read-only apsw virtual table, with the
old table's columns unchanged::

    records(global_position, stream_id, offset, segment_no, position, length, kind, timestamp_ns)

It reads only ``batches`` rows (never a segment), through the connection the query runs on, so it
sees the same snapshot as the rest of the statement. A catalog not yet migrated still has its real
``records`` table, which SQLite finds before this one.

Constraints on ``stream_id`` (=), ``offset`` and ``global_position`` (=, <, <=, >, >=) are pushed
down into one ``batches`` query per scan: the (stream_id, first_offset) index finds a stream's
offsets, the global_position key a range of positions; in both the first batch read is the one
holding the bound, which starts at or before it. Rows come in global_position order (descending
when the query asks for that: the last records committed), or in (stream_id, offset) order when
the query asks for that order or names a stream. SQLite still
checks every constraint on the rows it gets (nothing is omitted), so values the push-down does not
understand (text, blobs) only make it read more. Each batch is checked as it is expanded
(``catalog_rows.expand_batch``), and rows must come out in strictly increasing order: a damaged or
overlapping ``batches`` row raises CatalogMismatch out of the query, never a wrong row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import apsw

from hybridlog.catalog_rows import BATCH_COLUMNS, damaged_hint, expand_batch
from hybridlog.errors import CatalogMismatch
from hybridlog.events_table import AT_END, INT64_MAX, INT64_MIN, NOT_AT_END, Bounds

COLUMNS = ("global_position", "stream_id", "offset", "segment_no", "position", "length", "kind", "timestamp_ns")
SCHEMA = (
    "CREATE TABLE records (global_position INTEGER, stream_id INTEGER, offset INTEGER, segment_no INTEGER,"
    " position INTEGER, length INTEGER, kind INTEGER, timestamp_ns INTEGER)"
)
_GLOBAL, _STREAM, _OFFSET, _LENGTH = 0, 1, 2, 5

_EQ = apsw.SQLITE_INDEX_CONSTRAINT_EQ
_RANGE_OPS = {
    _EQ,
    apsw.SQLITE_INDEX_CONSTRAINT_GT,
    apsw.SQLITE_INDEX_CONSTRAINT_GE,
    apsw.SQLITE_INDEX_CONSTRAINT_LT,
    apsw.SQLITE_INDEX_CONSTRAINT_LE,
}
_PUSHED = {_STREAM: {_EQ}, _OFFSET: _RANGE_OPS, _GLOBAL: _RANGE_OPS}

BY_POSITION, BY_STREAM, BY_POSITION_DESC = 0, 1, 2
"""The scan orders (the index number BestIndex hands to Filter): global_position, (stream_id, offset),
global_position descending (the last records committed)."""
_ORDERS = {
    BY_POSITION: [[(_GLOBAL, False)]],
    BY_STREAM: [[(_STREAM, False)], [(_STREAM, False), (_OFFSET, False)]],
    BY_POSITION_DESC: [[(_GLOBAL, True)]],
}
_SQL_ORDER = {
    BY_POSITION: "global_position",
    BY_STREAM: "stream_id, first_offset",
    BY_POSITION_DESC: "global_position DESC",
}


@dataclass
class Plan:
    """What one Filter call asks for: a stream (or all), bounds on offset and position, a scan order."""

    order: int = BY_POSITION
    stream_id: int | None = None
    no_rows: bool = False
    offset: Bounds = field(default_factory=Bounds)
    global_position: Bounds = field(default_factory=Bounds)

    @classmethod
    def from_constraints(cls, order: int, pushed: Sequence[tuple[int, int]], values: Sequence[object]) -> Plan:
        """The plan for the pushed-down (column, op) pairs and the values SQLite gives them in Filter."""
        plan = cls(order)
        for (column, op), value in zip(pushed, values, strict=True):
            if column != _STREAM:
                (plan.offset if column == _OFFSET else plan.global_position).narrow(op, value)
            elif value is None or (isinstance(value, float) and not value.is_integer()):
                plan.no_rows = True  # no integer stream id equals it
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                sid = int(value)
                plan.no_rows = plan.no_rows or not INT64_MIN <= sid <= INT64_MAX or plan.stream_id not in (None, sid)
                plan.stream_id = sid
            # text or a blob: SQLite's own check decides, we only read more
        for bounds in (plan.offset, plan.global_position):  # SQLite's integers are 64-bit: so are the bounds
            plan.no_rows = plan.no_rows or bounds.empty or bounds.low > INT64_MAX or bounds.high < INT64_MIN
            bounds.low, bounds.high = max(bounds.low, INT64_MIN), min(bounds.high, INT64_MAX)
        return plan

    def query(self) -> tuple[str, dict[str, int]]:
        """The one ``batches`` query (and its bindings) whose rows hold every record the plan allows."""
        where, bindings = [], {}
        if self.stream_id is not None:
            where.append("stream_id = :sid")
            bindings["sid"] = self.stream_id
        if self.offset.bounded and self.stream_id is not None:
            where.append(
                "first_offset >= coalesce((SELECT max(first_offset) FROM batches"
                " WHERE stream_id = :sid AND first_offset <= :olow), :olow)"
            )
            bindings["olow"] = self.offset.low
        if self.offset.high < INT64_MAX:  # a batch starting after the bound holds nothing at or below it
            where.append("first_offset <= :ohigh")
            bindings["ohigh"] = self.offset.high
        if self.global_position.bounded:
            # the batch holding :glow (of any stream) has the greatest key at or below it
            where.append(
                "global_position >= coalesce((SELECT max(global_position) FROM batches"
                " WHERE global_position <= :glow), :glow) AND global_position <= :ghigh"
            )
            bindings["glow"], bindings["ghigh"] = self.global_position.low, self.global_position.high
        sql = (
            f"SELECT {BATCH_COLUMNS} FROM batches WHERE {' AND '.join(where) or '1'} ORDER BY {_SQL_ORDER[self.order]}"  # noqa: S608
        )
        return sql, bindings

    def wants(self, row: tuple[int, ...]) -> bool:
        """Whether an expanded row is within the plan's bounds (SQLite checks again; this saves work)."""
        offset, position = row[_OFFSET], row[_GLOBAL]
        return (
            self.offset.low <= offset <= self.offset.high
            and self.global_position.low <= position <= self.global_position.high
        )


def _encode(pushed: list[tuple[int, int]]) -> str:
    """The pushed-down (column, op) pairs as the index string SQLite hands back to Filter."""
    return ",".join(f"{column}:{op}" for column, op in pushed)


def _decode(index_string: str) -> list[tuple[int, int]]:
    return [(int(column), int(op)) for column, op in (p.split(":") for p in index_string.split(",") if p)]


class RecordsModule:
    """The apsw module: one table object per connection, reading that connection's ``batches``."""

    def __init__(self, catalog_path: Path) -> None:
        self.catalog_path = catalog_path

    def Connect(
        self,
        connection: apsw.Connection,
        modulename: str,
        databasename: str,
        tablename: str,
        *args: tuple[apsw.SQLiteValue, ...],
    ) -> tuple[str, apsw.VTTable]:
        """The table's schema and a table object for this connection (``Create`` is the same)."""
        return SCHEMA, cast("apsw.VTTable", RecordsTable(connection, self.catalog_path))

    Create = Connect


class RecordsTable:
    """The ``records`` table of one connection: plans each query and opens its cursors."""

    def __init__(self, connection: apsw.Connection, catalog_path: Path) -> None:
        self.connection = connection
        self.catalog_path = catalog_path

    def BestIndexObject(self, info: apsw.IndexInfo) -> bool:
        """Push down every usable constraint we understand (SQLite still checks them all), and scan in
        the order the query asks for when we can."""
        pushed: list[tuple[int, int]] = []
        for i in range(info.nConstraint):
            column, op = info.get_aConstraint_iColumn(i), info.get_aConstraint_op(i)
            if info.get_aConstraint_usable(i) and op in _PUSHED.get(column, ()):
                pushed.append((column, op))
                info.set_aConstraintUsage_argvIndex(i, len(pushed))
        wanted = [(info.get_aOrderBy_iColumn(i), info.get_aOrderBy_desc(i)) for i in range(info.nOrderBy)]
        by_stream = (_STREAM, _EQ) in pushed
        asked = [order for order, forms in _ORDERS.items() if wanted in forms]
        order = asked[0] if asked else (BY_STREAM if by_stream else BY_POSITION)
        info.idxNum = order
        info.idxStr = _encode(pushed)
        # with ``stream_id = ?`` the rows SQLite keeps all have one stream: in offset order, whatever the value
        info.orderByConsumed = wanted in _ORDERS[order] or (
            order == BY_STREAM and by_stream and wanted == [(_OFFSET, False)]
        )
        ops = {(column, op == _EQ) for column, op in pushed}
        rows = 1_000_000 // (1000 if by_stream else 1)
        if (_GLOBAL, True) in ops or {(_STREAM, True), (_OFFSET, True)} <= ops:
            rows = 1
        elif any(column in (_OFFSET, _GLOBAL) for column, _ in ops):
            rows //= 100
        info.estimatedRows = max(rows, 1)
        info.estimatedCost = float(max(rows, 1))
        return True

    def Open(self) -> RecordsCursor:
        """A new cursor over the table, positioned nowhere until SQLite calls its ``Filter``."""
        return RecordsCursor(self)

    def Disconnect(self) -> None:
        """Nothing to release: the table holds no resources of its own (``Destroy`` is the same)."""
        pass

    Destroy = Disconnect


class RecordsCursor:
    """One scan of the table: the rows of a plan's ``batches`` rows, expanded one batch at a time."""

    def __init__(self, table: RecordsTable) -> None:
        self.table = table
        self.rows: Iterator[tuple[int, ...]] = iter(())
        self.row: tuple[int, ...] | None = None
        # A C method, not Python code, for the reason events_table.EventsCursor gives (Ctrl-C).
        self.Eof: Callable[[], bool] = AT_END

    def Filter(self, indexnum: int, indexname: str, constraintargs: tuple[Any, ...] | None) -> None:
        """Start a scan of the batches the pushed-down constraints allow, closing the previous one."""
        self.Close()
        self.rows = self._read(Plan.from_constraints(indexnum, _decode(indexname), constraintargs or ()))
        self.Next()

    def _read(self, plan: Plan) -> Iterator[tuple[int, ...]]:
        if plan.no_rows:
            return
        sql, bindings = plan.query()
        path = self.table.catalog_path
        cursor = self.table.connection.execute(sql, bindings)
        previous: tuple[int, ...] | None = None
        try:
            for batch in cursor:
                rows = expand_batch(batch, path, plan.stream_id)
                for row in reversed(rows) if plan.order == BY_POSITION_DESC else rows:
                    key = row[_STREAM : _OFFSET + 1] if plan.order == BY_STREAM else row[_GLOBAL : _GLOBAL + 1]
                    if plan.order == BY_POSITION_DESC:
                        key = (-key[0],)  # strictly increasing like the others
                    if (previous is not None and key <= previous) or row[_LENGTH] <= 0 or max(row) > INT64_MAX:
                        raise _damaged(row, previous, path)
                    previous = key
                    if plan.wants(row):
                        yield row
        finally:
            cursor.close()  # a scan stopped early ends the read its statement holds open

    def Next(self) -> None:
        """Move to the next row and set ``Eof`` accordingly."""
        self.row = next(self.rows, None)
        self.Eof = AT_END if self.row is None else NOT_AT_END

    def Rowid(self) -> int:
        """The current row's global position (unique in the table)."""
        assert self.row is not None
        return self.row[_GLOBAL]

    def Column(self, number: int) -> int:
        """The current row's value of column ``number`` (-1: the rowid, its global position)."""
        assert self.row is not None
        return self.row[_GLOBAL if number == -1 else number]

    def Close(self) -> None:
        """End the scan, closing the ``batches`` statement of an unfinished one."""
        close = getattr(self.rows, "close", None)
        if close is not None:
            close()


def _damaged(row: tuple[int, ...], previous: tuple[int, ...] | None, path: Path) -> CatalogMismatch:
    """The error for a record a ``batches`` row gives that no sound catalog holds: one that comes
    again or out of order (rows overlap), has no bytes (frame ends that do not increase), or a value
    past SQLite's integers."""
    return CatalogMismatch(
        f"the catalog's batches rows are damaged: they give record {row[_OFFSET]} of stream {row[_STREAM]}"
        f" at global position {row[_GLOBAL]} with frame length {row[_LENGTH]}"
        + ("" if previous is None else f", after {previous}"),
        stream_id=row[_STREAM],
        offset=row[_OFFSET],
        hint=damaged_hint(path.parent),
    )


def register(connection: apsw.Connection, catalog_path: Path) -> RecordsModule:
    """Make ``records`` available on ``connection``, the catalog at ``catalog_path`` (read-only, no CREATE)."""
    module = RecordsModule(catalog_path)
    connection.create_module(
        "records", cast("apsw.VTModule", module), use_bestindex_object=True, eponymous_only=True, read_only=True
    )
    return module
