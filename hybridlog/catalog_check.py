"""The catalog's checks of itself, for ``verify``, ``check`` and open-time recovery: SQLite's own
checks, its schema against its migrations, and its rows exactly as stored (unchecked), for the
callers that compare every value with the segments and report what differs.

``CatalogChecks`` is a part of ``Catalog`` (``catalog.py``), which supplies the connection.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import apsw

from hybridlog.catalog_batches import STREAM_BATCHES_FROM
from hybridlog.catalog_rows import expand_batch
from hybridlog.db import NO_VERDICT, catalog_migrations, catalog_open_error
from hybridlog.errors import CatalogMismatch
from hybridlog.types import StreamId


def _schema_rows(conn: apsw.Connection) -> dict[str, tuple[object, ...]]:
    rows = conn.execute("SELECT name, type, tbl_name, sql FROM sqlite_master ORDER BY name")
    return {str(name): (kind, table, sql) for name, kind, table, sql in rows}


class CatalogChecks:
    """The self-checks of ``Catalog``."""

    conn: apsw.Connection
    path: Path
    read_only: bool
    busy_timeout_ms: int

    if TYPE_CHECKING:

        def schema_version(self) -> int:
            """``Catalog.schema_version``: the migration the catalog is at."""

    def health_problem(self) -> str | None:
        """None if SQLite's ``quick_check`` passes, else what it reports (the first few lines).

        CatalogBusy / CatalogIOError if it cannot be run: that is no verdict on the catalog.
        """
        try:
            lines = [row[0] for row in self.conn.execute("PRAGMA quick_check(5)")]
        except NO_VERDICT as e:
            raise catalog_open_error(
                e, self.conn, self.path, read_only=self.read_only, busy_timeout_ms=self.busy_timeout_ms
            ) from e  # not a problem of the catalog's contents
        except apsw.Error as e:
            return str(e)
        return None if lines == ["ok"] else "; ".join(lines)

    def stream_index_rows(self, stream_id: StreamId, from_offset: int = 0) -> Iterator[tuple[object, ...]]:
        """The stream's records from ``from_offset`` on, by offset, as its ``batches`` rows store them,
        unchecked: (offset, segment_no, position, length, kind, timestamp_ns, global_position); a
        batch row that cannot be read as one gives its first record with length and kind None.

        For ``verify``, which compares every value with the records and reports what differs.
        """
        for row in self.conn.execute(STREAM_BATCHES_FROM, (stream_id, from_offset)):
            try:
                expanded = expand_batch(row, self.path, stream_id)
            except CatalogMismatch:  # a damaged batch row: its first record, as stored, for verify to report
                position, _, first, _, no, byte, _, _, ts = row
                yield (first, no, byte, None, None, ts, position)
                continue
            for position, _, offset, no, byte, length, kind, ts in expanded:
                if offset >= from_offset:
                    yield (offset, no, byte, length, kind, ts, position)

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
            for number, _name, sql in catalog_migrations():
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
        """(the high-water mark, how many records the batch rows hold, the largest global position)."""
        mark = self.conn.execute("SELECT last_position FROM global_order WHERE singleton = 1").fetchone()
        totals = self.conn.execute(
            "SELECT sum(record_count), max(global_position + record_count - 1) FROM batches"
        ).fetchone()
        assert totals is not None  # an aggregate always gives a row
        count, largest = totals
        if mark is None or type(mark[0]) is not int:
            return (None if mark is None else mark[0]), count or 0, largest
        # the mark is the higher of the stored one (positions rows no longer hold) and the last row's
        return (max(mark[0], largest) if type(largest) is int else mark[0]), count or 0, largest

    def all_global_positions(self) -> Iterator[object]:
        """Every record's global position, in order (a b-tree walk: damage can show duplicates)."""
        rows = self.conn.execute("SELECT global_position, record_count FROM batches ORDER BY global_position")
        for position, count in rows:
            if type(position) is not int or type(count) is not int:
                yield position
                continue
            yield from range(position, position + count)

    def streams_with_rows(self) -> dict[str, set[object]]:
        """The stream ids that have rows, by table (``batches``, ``checkpoints``, ``segments``, ``streams``)."""
        found: dict[str, set[object]] = {}
        for table in ("batches", "checkpoints", "segments", "streams"):
            rows = self.conn.execute(f"SELECT DISTINCT stream_id FROM {table}")  # noqa: S608 (a constant)
            found[table] = {sid for (sid,) in rows}
        return found
