"""Read-only SQL over a store's catalog and its events, for ``Storage.sql`` and ``hybridlog sql``.

The catalog is opened with SQLITE_OPEN_READONLY, and an authorizer refuses anything but reading
(no ATTACH, no PRAGMA assignments), so no statement run through here can change the store. Given
an event source, the connection also has the ``events`` table (events_table.py), which reads
and verifies records from the segments.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import apsw

from hybridlog.catalog import CATALOG_FILE, Catalog
from hybridlog.consumers import CONSUMERS_FILE
from hybridlog.errors import CatalogError, InvalidArgument
from hybridlog.events_table import EventSource
from hybridlog.events_table import register as register_events_table

SqlValue = int | float | str | bytes | None

_ALLOWED = {
    apsw.SQLITE_SELECT,
    apsw.SQLITE_READ,
    apsw.SQLITE_FUNCTION,
    apsw.SQLITE_RECURSIVE,
}


# pragmas whose argument names a table or index to describe, never a value to set
_SCHEMA_PRAGMAS = {"table_info", "table_xinfo", "index_list", "index_info", "index_xinfo", "foreign_key_list"}


class SqlRefused(InvalidArgument):
    """Raised when a statement given to ``query_catalog`` would change something or fails to run."""


@dataclass(frozen=True, slots=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple[SqlValue, ...]]


def _authorizer(action: int, arg1: str | None, arg2: str | None, db: str | None, trigger: str | None) -> int:
    if action in _ALLOWED:
        return apsw.SQLITE_OK
    if action == apsw.SQLITE_PRAGMA:
        name = (arg1 or "").lower()
        if (arg2 is None and name != "writable_schema") or name in _SCHEMA_PRAGMAS:
            return apsw.SQLITE_OK  # reading a pragma (table_info, user_version, ...) changes nothing
    return apsw.SQLITE_DENY


def attach_consumers(conn: apsw.Connection, data_dir: Path) -> None:
    """Make ``consumers`` (from ``consumers.db``, which lives beside the catalog) readable too."""
    path = data_dir / CONSUMERS_FILE
    if not path.exists():
        return
    try:
        # Attached databases share the connection's SQLITE_OPEN_READONLY: this one is read-only too.
        conn.execute("ATTACH DATABASE ? AS consumer_state", (str(path),))
        conn.execute("CREATE TEMP VIEW consumers AS SELECT * FROM consumer_state.consumers")
    except apsw.Error as e:
        raise CatalogError(f"cannot read {path}: {e}") from e


def query_catalog(
    data_dir: Path, sql: str, params: Sequence[SqlValue] = (), *, events: EventSource | None = None
) -> QueryResult:
    """Run one read-only statement against the catalog (and ``events``, when given a source);
    returns its column names and rows. An integrity error met while reading events is raised
    as itself."""
    path = data_dir / CATALOG_FILE
    if not path.exists():
        raise CatalogError(f"no catalog at {path}", hint="is this a hybridlog store? create one with `hybridlog init`")
    catalog = Catalog(path, read_only=True)
    try:
        if events is not None:
            register_events_table(catalog.conn, events)
        attach_consumers(catalog.conn, data_dir)
        catalog.conn.authorizer = _authorizer
        cursor = catalog.conn.cursor()
        columns: list[str] = []

        def remember_columns(cur: apsw.Cursor, _sql: str, _bindings: object) -> bool:
            # Prepared but not yet stepped: the only moment an empty result still has column names.
            columns[:] = [d[0] for d in cur.get_description()]
            return True

        cursor.exec_trace = remember_columns
        try:
            rows = [tuple(row) for row in cursor.execute(sql, tuple(params))]
        except apsw.AuthError as e:
            raise SqlRefused(f"refused: the catalog is read-only here ({e})") from e
        except apsw.ReadOnlyError as e:
            raise SqlRefused(f"refused: the catalog is read-only here ({e})") from e
        except apsw.Error as e:
            raise SqlRefused(f"SQL error: {e}") from e
        return QueryResult(columns, rows)
    finally:
        catalog.close()
