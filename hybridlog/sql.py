"""Read-only SQL over a store's catalog and its events, for ``Storage.sql`` and ``hybridlog sql``.

The catalog is opened with SQLITE_OPEN_READONLY, and an authorizer refuses anything but reading
(no ATTACH, no PRAGMA assignments), so no statement run through here can change the store. Given
an event source, the connection also has the ``events`` table (events_table.py), which reads
and verifies records from the segments; it always has the ``records`` table (records_table.py), the
per-record view of the catalog's ``batches``.

Every query has a progress handler (``QueryGuard``): it enforces the caller's ``timeout`` and
stops the statement on Ctrl-C, which then reaches the caller as KeyboardInterrupt. Rows are produced one at a
time as the caller asks (``QueryRows``); ``max_rows`` stops a query that returns more.
"""

from __future__ import annotations

import functools
import math
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import apsw

from hybridlog.catalog import Catalog
from hybridlog.db import consumer_migrations, sqlite_errors
from hybridlog.errors import CatalogError, InvalidArgument, MultipleStatements, QueryRowLimit, QueryTimeout
from hybridlog.es_records import register_sql_functions
from hybridlog.events_table import EventSource
from hybridlog.events_table import register as register_events_table
from hybridlog.layout import CATALOG_FILE, consumers_path
from hybridlog.records_table import register as register_records_table

SqlValue = int | float | str | bytes | None

PROGRESS_STEPS = 10_000  # SQLite instructions between two calls of a query's progress handler (~50 us)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

_ALLOWED = {
    apsw.SQLITE_SELECT,
    apsw.SQLITE_READ,
    apsw.SQLITE_FUNCTION,
    apsw.SQLITE_RECURSIVE,
}


# pragmas whose argument names a table or index to describe, never a value to set
_SCHEMA_PRAGMAS = {"table_info", "table_xinfo", "index_list", "index_info", "index_xinfo", "foreign_key_list"}


class SqlRefused(InvalidArgument):
    """Raised when a statement given to ``query_rows`` / ``query_catalog`` would change something or
    fails to run."""


@dataclass(frozen=True, slots=True)
class QueryResult:
    """A whole result: its ``columns`` and its ``rows``; iterating it gives the rows."""

    columns: list[str]
    rows: list[tuple[SqlValue, ...]]

    def __iter__(self) -> Iterator[tuple[SqlValue, ...]]:
        return iter(self.rows)


def _authorizer(action: int, arg1: str | None, arg2: str | None, db: str | None, trigger: str | None) -> int:
    if action in _ALLOWED:
        return apsw.SQLITE_OK
    if action == apsw.SQLITE_PRAGMA:
        name = (arg1 or "").lower()
        if (arg2 is None and name != "writable_schema") or name in _SCHEMA_PRAGMAS:
            return apsw.SQLITE_OK  # reading a pragma (table_info, user_version, ...) changes nothing
    return apsw.SQLITE_DENY


@functools.cache
def _empty_consumers_db() -> bytes:
    """An empty ``consumers.db`` (its migrations applied, no rows), as the bytes of a database."""
    scratch = apsw.Connection(":memory:")
    try:
        for _version, _name, migration in consumer_migrations():
            scratch.execute(migration)
        return scratch.serialize("main")
    finally:
        scratch.close()


def attach_consumers(conn: apsw.Connection, data_dir: Path) -> None:
    """Make ``consumers`` (from ``consumers.db``, which lives beside the catalog) readable too.

    The relation always exists: until a consumer is registered (no file yet, or a file whose schema
    is not written yet), it is an empty table of the same columns, held in memory; nothing is
    created on disk by a query.
    """
    path = consumers_path(data_dir)
    with sqlite_errors(f"cannot read {path}"):
        attached = False
        if path.exists():
            # Attached databases share the connection's SQLITE_OPEN_READONLY: this one is read-only too.
            conn.execute("ATTACH DATABASE ? AS consumer_state", (str(path),))
            attached = bool(
                conn.execute(
                    "SELECT 1 FROM consumer_state.sqlite_schema WHERE type = 'table' AND name = 'consumers'"
                ).fetchall()
            )
            if not attached:  # created, but not migrated yet by the process that registers a consumer
                conn.execute("DETACH DATABASE consumer_state")
        if not attached:
            conn.execute("ATTACH DATABASE ':memory:' AS consumer_state")
            conn.deserialize("consumer_state", _empty_consumers_db())
        conn.execute("CREATE TEMP VIEW consumers AS SELECT * FROM consumer_state.consumers")


def check_query(sql: object, params: object) -> tuple[SqlValue, ...]:
    """The bindings for ``sql`` if the statement and its parameters can be run, else InvalidArgument.

    ``sql`` is a str without NUL or lone surrogates (SQLite takes UTF-8). ``params`` is a sequence
    (list, tuple) of None, int (64-bit), float, str (no lone surrogates) or bytes-like values;
    bytes-like values are copied to ``bytes``.
    """
    if not isinstance(sql, str):
        raise InvalidArgument(f"query must be a str, not {type(sql).__name__}")
    if "\0" in sql:
        raise InvalidArgument(f"query contains a NUL character at index {sql.index(chr(0))}")
    _check_text("query", sql)
    if params is None or isinstance(params, (str, bytes, bytearray, memoryview)) or not isinstance(params, Sequence):
        raise InvalidArgument(
            f"params must be a sequence (a list or tuple) of values, not {type(params).__name__}",
            hint="pass () for a query without parameters",
        )
    return tuple(_check_param(i, value) for i, value in enumerate(params, start=1))


def _check_text(what: str, text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidArgument(
            f"{what} is not valid Unicode text: lone surrogate {text[e.start]!r} at index {e.start}"
        ) from e


def _check_param(number: int, value: object) -> SqlValue:
    if value is None or isinstance(value, float):
        return value
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise InvalidArgument(f"parameter {number}: {value} does not fit SQLite's 64-bit integers")
        return int(value)
    if isinstance(value, str):
        _check_text(f"parameter {number}", value)
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise InvalidArgument(
        f"parameter {number}: unsupported type {type(value).__name__} (use None, int, float, str or bytes)"
    )


def check_limits(timeout: object, max_rows: object) -> tuple[float | None, int | None]:
    """``timeout`` (seconds > 0, or None) and ``max_rows`` (an int >= 0, or None), else InvalidArgument."""
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf
    ):
        raise InvalidArgument(f"timeout must be a number of seconds above 0, or None: {timeout!r}")
    if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 0):
        raise InvalidArgument(f"max_rows must be an int >= 0, or None: {max_rows!r}")
    return (None if timeout is None else float(timeout)), max_rows


class QueryGuard:
    """The progress handler of one query (SQLite calls it every ``PROGRESS_STEPS`` instructions).

    It stops the query once it has run longer than ``timeout`` seconds, counting only the time
    spent producing rows (inside ``running``), not the caller's time between rows.

    And it stops the query on Ctrl-C. Python raises KeyboardInterrupt in whatever Python code runs
    when SIGINT arrives, and while SQLite steps that may be code whose exceptions nobody can
    receive: a generator of the ``events`` table finalized when SQLite rescans it, where the
    KeyboardInterrupt is printed as "Exception ignored" and lost, and the query runs on. So while
    a step runs in the main thread with Python's default SIGINT handler, SIGINT only sets
    ``interrupted``; the next call here stops the statement (SQLITE_INTERRUPT), and ``running``
    raises KeyboardInterrupt once SQLite has returned. A handler the application installed is
    left alone.
    """

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self.spent = 0.0  # seconds of running before the current step
        self.started: float | None = None  # time.monotonic() at the start of the current step
        self.timed_out = False
        self.interrupted = False

    def __call__(self) -> bool:
        """SQLite's progress callback: True stops the statement (after Ctrl-C, or once past ``timeout``)."""
        if self.interrupted:
            return True  # SQLite stops the statement with SQLITE_INTERRUPT
        if self.timeout is None or self.started is None:
            return False
        if self.spent + (time.monotonic() - self.started) > self.timeout:
            self.timed_out = True
            return True
        return False

    @contextmanager
    def running(self) -> Iterator[None]:
        """One step of the query (preparing it, or producing a row): timed, and Ctrl-C deferred."""
        self.started = time.monotonic()
        try:
            with self._ctrl_c_deferred():
                yield
        finally:
            self.spent += time.monotonic() - self.started
            self.started = None

    @contextmanager
    def _ctrl_c_deferred(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread() or (
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        ):
            yield
            return

        def note_ctrl_c(_signum: int, _frame: object) -> None:
            self.interrupted = True

        previous = signal.signal(signal.SIGINT, note_ctrl_c)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)
        if self.interrupted:  # the step ended before the handler saw it (a row came first)
            raise KeyboardInterrupt


class QueryRows:
    """A running read-only query: ``columns``, then its rows, produced one at a time as the caller
    iterates (memory stays bounded however many rows there are).

    It holds its own catalog connection until the rows run out or an error ends it; close it (or
    use ``with``) to stop early. Past ``max_rows`` rows the next one raises QueryRowLimit; past
    ``timeout`` seconds of running, QueryTimeout. Either closes it.
    """

    def __init__(
        self, catalog: Catalog, cursor: apsw.Cursor, columns: list[str], guard: QueryGuard, max_rows: int | None
    ) -> None:
        self.columns = columns
        self.rows_returned = 0
        self._catalog: Catalog | None = catalog
        self._cursor = cursor
        self._guard = guard
        self._max_rows = max_rows

    def __iter__(self) -> QueryRows:
        return self

    def __next__(self) -> tuple[SqlValue, ...]:
        if self._catalog is None:
            raise StopIteration
        try:
            with self._guard.running(), _translated(self._guard):
                row = next(self._cursor, None)
            if row is not None and self._max_rows is not None and self.rows_returned >= self._max_rows:
                raise QueryRowLimit(self._max_rows)
        except BaseException:  # an error, or a KeyboardInterrupt: the query is over
            self.close()
            raise
        if row is None:
            self.close()
            raise StopIteration
        self.rows_returned += 1
        return tuple(row)

    def close(self) -> None:
        """Stop the query and close its connection (again: nothing)."""
        if self._catalog is not None:
            catalog, self._catalog = self._catalog, None
            catalog.close()

    def __enter__(self) -> QueryRows:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def _translated(guard: QueryGuard) -> Iterator[None]:
    """SQLite's errors while a query runs, as StorageErrors (an IntegrityError from ``events`` is
    raised as itself)."""
    try:
        yield
    except apsw.InterruptError as e:
        if guard.interrupted:
            raise KeyboardInterrupt from None
        if guard.timed_out:
            assert guard.timeout is not None
            raise QueryTimeout(guard.timeout) from e
        raise SqlRefused(f"SQL error: {e}") from e
    except apsw.Error as e:
        if _refused_as_writing(e):
            raise SqlRefused(f"refused: the catalog is read-only here ({e})") from e
        raise SqlRefused(f"SQL error: {e}") from e


def _refused_as_writing(error: apsw.Error) -> bool:
    """Whether ``error`` refused a change: the authorizer's, a read-only file's, or SQLite's own for a
    read-only virtual table (``events``, ``records``), which it gives before asking the authorizer."""
    return isinstance(error, (apsw.AuthError, apsw.ReadOnlyError)) or (
        isinstance(error, apsw.SQLError) and str(error).endswith("may not be modified")
    )


def _first_statement(conn: apsw.Connection, sql: str, bindings: Sequence[SqlValue] | None) -> tuple[str, bool]:
    """The text of ``sql``'s first statement (with the spaces and semicolons after it), and whether
    it does anything (False for only a comment), found by preparing it, never running it."""
    found: list[tuple[str, bool]] = []

    def stop(cursor: apsw.Cursor, statement: str, _bindings: object) -> bool:
        found.append((statement, cursor.has_vdbe))
        return False  # prepared and bound: enough; SQLite never steps it

    cursor = conn.cursor()
    cursor.exec_trace = stop
    with suppress(apsw.ExecTraceAbort):
        cursor.execute(sql, bindings, can_cache=False)
    return found[0] if found else (sql, False)


def refuse_more_than_one_statement(conn: apsw.Connection, sql: str, bindings: Sequence[SqlValue]) -> None:
    """MultipleStatements if ``sql`` holds a statement after its first one, before any runs.

    apsw's cursor runs every statement of a string, one after another: their rows would come out
    mixed under the first one's column names, and a later statement could fail once the earlier
    ones had printed their rows. Text after the first statement that is only spaces, semicolons
    and comments is allowed.
    """
    first, _ = _first_statement(conn, sql, bindings)
    rest = sql[len(first) :]
    while rest.strip():
        try:
            statement, does_something = _first_statement(conn, rest, None)
        except apsw.Error as e:
            if not (isinstance(e, apsw.BindingsError) or _refused_as_writing(e)):
                raise
            does_something = True  # it has parameters, or would be refused: a statement either way
        if does_something:
            start = len(sql) - len(rest.lstrip())
            raise MultipleStatements(
                f"refused: the query holds more than one statement (the second begins at character {start}:"
                f" {rest.strip()[:40]!r}); nothing was run",
                hint="run one statement at a time",
            )
        if not statement:
            return
        rest = rest[len(statement) :]


def query_rows(
    data_dir: Path,
    sql: str,
    params: Sequence[SqlValue] = (),
    *,
    events: EventSource | None = None,
    timeout: float | None = None,
    max_rows: int | None = None,
) -> QueryRows:
    """Start one read-only statement against the catalog (and ``events``, when given a source);
    returns its column names and its rows as they come (``QueryRows``), in bounded memory. Use it
    in a ``with`` block (or close it) when stopping early: it holds a catalog connection until its
    rows run out (``Storage.sql`` collects them all).

    Rows of ``events`` are verified records: a damaged one raises its IntegrityError.
    ``timeout``: seconds the query may run producing rows (None: no limit; the caller's time
    between rows does not count), else QueryTimeout. ``max_rows``: rows it may return (None: no
    limit), else QueryRowLimit. Both are QueryLimitExceeded. Bad arguments raise InvalidArgument
    before anything is opened: a query that is not a str (or holds a NUL or a lone surrogate),
    params that are not a sequence of None, int (64-bit), float, str or bytes, and bad limits.
    """
    bindings = check_query(sql, params)
    limit_seconds, limit_rows = check_limits(timeout, max_rows)
    path = data_dir / CATALOG_FILE
    if not path.exists():
        raise CatalogError(f"no catalog at {path}", hint="is this a hybridlog store? create one with `hybridlog init`")
    catalog = Catalog(path, read_only=True)
    try:
        register_records_table(catalog.conn, catalog.path)
        register_sql_functions(catalog.conn)  # es_topic(payload), ...: eventsourcing events taken apart
        if events is not None:
            register_events_table(catalog.conn, events)
        attach_consumers(catalog.conn, data_dir)
        catalog.conn.authorizer = _authorizer
        guard = QueryGuard(limit_seconds)
        catalog.conn.set_progress_handler(guard, PROGRESS_STEPS)
        cursor = catalog.conn.cursor()
        columns: list[str] = []

        def remember_columns(cur: apsw.Cursor, _sql: str, _bindings: object) -> bool:
            # Prepared but not yet stepped: the only moment an empty result still has column names.
            # Only the statement's: a trailing comment comes here too, as a statement without columns.
            if cur.has_vdbe:
                columns[:] = [d[0] for d in cur.get_description()]
            return True

        cursor.exec_trace = remember_columns
        with guard.running(), _translated(guard):
            refuse_more_than_one_statement(catalog.conn, sql, bindings)
            cursor.execute(sql, bindings)  # runs the statement up to its first row
    except BaseException:
        catalog.close()
        raise
    return QueryRows(catalog, cursor, columns, guard, limit_rows)


def query_catalog(
    data_dir: Path,
    sql: str,
    params: Sequence[SqlValue] = (),
    *,
    events: EventSource | None = None,
    timeout: float | None = None,
    max_rows: int | None = None,
) -> QueryResult:
    """Run one read-only statement to its end (``query_rows``) and return its columns and all its rows."""
    with query_rows(data_dir, sql, params, events=events, timeout=timeout, max_rows=max_rows) as rows:
        return QueryResult(rows.columns, list(rows))
