"""Stopping SQL: time and row limits, Ctrl-C, rows streamed as they come; bad SQL arguments.

A runaway statement (a recursive CTE without an end) must stop at its ``timeout`` with
QueryTimeout, at ``max_rows`` with QueryRowLimit, and on Ctrl-C: a real ``hybridlog sql`` child
exits 130 with one line on stderr. Rows reach the output before the query ends. Bad queries,
parameters and consumer names are InvalidArgument, and nothing in the store changes.

Run as a script, this file is a ``hybridlog sql`` child that says ``query running`` on stderr the
first time SQLite calls the query's progress handler (so the test knows SQLite is inside the
statement before it sends SIGINT).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest
from click.testing import CliRunner

from hybridlog import InvalidArgument, QueryLimitExceeded, QueryRowLimit, QueryTimeout, Storage, StorageError
from hybridlog.cli import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_USAGE, cli
from hybridlog.cli.render import TABLE_WIDTH_ROWS
from hybridlog.segment import SegmentReader
from hybridlog.sql import QueryGuard, query_catalog

THIS_FILE = Path(__file__)
RUNAWAY = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT count(*) FROM c WHERE x<0"
ENDLESS_ROWS = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT x FROM c"
# every record of the store against every other, twice over: far longer than any test runs
EVENTS_RUNAWAY = "SELECT count(*) FROM events AS a, events AS b, events AS c"
RUNNING = "query running"
GUARD = 60.0  # seconds; only a guard against a hung child or query, never an assertion


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    with Storage(path) as writer:
        writer.append(1, [json.dumps({"n": i}).encode() for i in range(300)])
    return path


def snapshot(path: Path) -> dict[str, object]:
    """What a store holds: the bytes of its files, and the rows of its SQLite databases (read
    through SQLite, so a change still in a WAL counts; a reader's -wal and -shm files do not)."""
    state: dict[str, object] = {}
    for p in sorted(path.rglob("*")):
        name = str(p.relative_to(path))
        if not p.is_file() or name.endswith(("-wal", "-shm")):
            continue
        if name.endswith(".db"):
            conn = apsw.Connection(str(p), flags=apsw.SQLITE_OPEN_READONLY)
            tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")]
            state[name] = {t: conn.execute(f'SELECT * FROM "{t}"').fetchall() for t in tables}  # noqa: S608
            conn.close()
        else:
            state[name] = hashlib.sha256(p.read_bytes()).hexdigest()
    return state


# --- time and row limits -------------------------------------------------------------------------


@pytest.mark.parametrize("query", [RUNAWAY, EVENTS_RUNAWAY])
def test_a_runaway_query_stops_at_its_timeout(store: Path, query: str) -> None:
    with Storage(store, read_only=True) as reader:
        with pytest.raises(QueryTimeout) as caught:
            reader.sql(query, timeout=0.2)
        assert isinstance(caught.value, QueryLimitExceeded)
        assert isinstance(caught.value, StorageError)
        assert (caught.value.limit, caught.value.value) == ("timeout", 0.2)
        with pytest.raises(QueryTimeout), reader.iter_sql(query, timeout=0.2) as rows:
            list(rows)
        assert reader.sql("SELECT count(*) FROM events", timeout=GUARD).rows == [(301,)]  # the store still answers


def test_the_cli_stops_a_runaway_query_at_its_timeout(store: Path) -> None:
    code, out, err = run("sql", str(store), RUNAWAY, "--timeout", "0.2")
    assert code == EXIT_ERROR
    assert out == ""
    assert len(err.splitlines()) == 1
    assert "timeout of 0.2 seconds" in err


def test_max_rows_stops_a_big_query(store: Path) -> None:
    with Storage(store, read_only=True) as reader:
        with pytest.raises(QueryRowLimit) as caught:
            reader.sql(ENDLESS_ROWS, max_rows=1000)
        assert (caught.value.limit, caught.value.value) == ("max_rows", 1000)
        got: list[tuple[Any, ...]] = []
        with pytest.raises(QueryRowLimit), reader.iter_sql(ENDLESS_ROWS, max_rows=1000) as rows:
            got.extend(rows)
        assert got == [(x,) for x in range(1, 1001)]  # the rows up to the limit came, then the error
        exactly = "SELECT offset FROM events WHERE stream_id = 1"
        assert len(reader.sql(exactly, max_rows=301).rows) == 301  # at the limit is not past it
        with pytest.raises(QueryRowLimit):
            reader.sql(exactly, max_rows=300)


def test_the_cli_stops_a_big_query_at_max_rows(store: Path) -> None:
    code, out, err = run("sql", str(store), ENDLESS_ROWS, "--max-rows", "5", "--output", "csv")
    assert code == EXIT_ERROR
    assert out.splitlines() == ["x", "1", "2", "3", "4", "5"]
    assert len(err.splitlines()) == 1
    assert "more than 5 rows" in err


@pytest.mark.parametrize(
    ("timeout", "max_rows"),
    [
        *[(0, None), (-1, None), (float("nan"), None), (float("inf"), None), ("1", None), (True, None)],
        *[(None, -1), (None, 1.5), (None, "10"), (None, True)],
    ],
)
def test_bad_limits_are_invalid_argument(store: Path, timeout: Any, max_rows: Any) -> None:
    with Storage(store, read_only=True) as reader, pytest.raises(InvalidArgument):
        reader.sql("SELECT 1", timeout=timeout, max_rows=max_rows)


@pytest.mark.parametrize("option", [("--timeout", "0"), ("--timeout", "-1"), ("--max-rows", "-1")])
def test_the_cli_refuses_bad_limits(store: Path, option: tuple[str, str]) -> None:
    code, _, err = run("sql", str(store), "SELECT 1", *option)
    assert code == EXIT_USAGE
    assert "Traceback" not in err


# --- streaming -----------------------------------------------------------------------------------


def test_iter_sql_streams_an_endless_result(store: Path) -> None:
    """Rows come one at a time: an endless result can be read in part (it could never be collected)."""
    with Storage(store, read_only=True) as reader, reader.iter_sql(ENDLESS_ROWS) as rows:
        assert rows.columns == ["x"]
        first = list(itertools.islice(rows, 200_000))
    assert first[-1] == (200_000,)
    assert list(rows) == []  # closed: nothing more


def test_storage_sql_keeps_columns_and_rows(store: Path) -> None:
    with Storage(store, read_only=True) as reader:
        result = reader.sql("SELECT offset FROM events WHERE stream_id = ? AND offset < 2", [1])
        empty = reader.sql("SELECT offset, kind FROM events WHERE stream_id = 99")
    assert (result.columns, result.rows) == (["offset"], [(0,), (1,)])
    assert (empty.columns, empty.rows) == (["offset", "kind"], [])


@contextlib.contextmanager
def sql_child(store: Path, *args: str, marker: bool = False) -> Iterator[subprocess.Popen[str]]:
    """A ``hybridlog sql`` child with SIGINT at its default (as from a terminal: a test runner may
    have started us with SIGINT ignored, which a child would inherit); killed if still running
    when the test is done."""
    command = [str(THIS_FILE)] if marker else ["-m", "hybridlog"]
    child = subprocess.Popen(
        [sys.executable, *command, "sql", str(store), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        yield child
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        for pipe in (child.stdout, child.stderr):
            if pipe is not None:
                pipe.close()


class Lines:
    """A child's pipe read line by line in a thread, so that a wait for a line can fail after GUARD
    seconds (a query that prints nothing until it ends would otherwise hang the test)."""

    def __init__(self, pipe: Any) -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            # The test may close the pipe (its cleanup) while this thread still reads: that ends it too.
            with contextlib.suppress(ValueError, OSError):
                for line in iter(pipe.readline, ""):
                    self._lines.put(line.rstrip("\n"))
            self._lines.put(None)  # end of file

        threading.Thread(target=pump, daemon=True).start()

    def next(self) -> str | None:
        try:
            return self._lines.get(timeout=GUARD)
        except queue.Empty:
            pytest.fail(f"no line within {GUARD} seconds")

    def rest(self) -> list[str]:
        """Every line up to the end of the pipe."""
        rest = []
        while (line := self.next()) is not None:
            rest.append(line)
        return rest


def interrupt(child: subprocess.Popen[str], stderr: Lines | None = None) -> list[str]:
    """Ctrl-C the child; its exit code is then in ``child.returncode``. Returns its stderr lines
    (those ``stderr`` has not given yet, when the test reads stderr itself)."""
    assert child.poll() is None, "the query ended on its own"
    child.send_signal(signal.SIGINT)
    err = (stderr or Lines(child.stderr)).rest()
    try:
        child.wait(timeout=GUARD)
    except subprocess.TimeoutExpired:
        pytest.fail("the child ignored SIGINT")
    return err


@pytest.mark.parametrize(
    ("output", "until"),
    [
        ("csv", ["x", "1", "2", "3"]),
        ("json", ["[", "  {", '    "x": 1', "  },"]),
        ("nl", ['{"x": 1}', '{"x": 2}', '{"x": 3}']),
        ("table", ["x", "-" * len(str(TABLE_WIDTH_ROWS)), *map(str, range(1, TABLE_WIDTH_ROWS + 1))]),
    ],
)
def test_the_cli_prints_rows_before_the_query_ends(store: Path, output: str, until: list[str]) -> None:
    """Rows found so far are printed while the statement is still looking for more (forever: only
    Ctrl-C ends it), and Ctrl-C then exits 130 with one line. Every format streams; a table holds
    back its first TABLE_WIDTH_ROWS rows, to size its columns."""
    query = f"{ENDLESS_ROWS} WHERE x <= {TABLE_WIDTH_ROWS if output == 'table' else 3} OR x < 0"
    with sql_child(store, query, f"--{output}") as child:
        stdout = Lines(child.stdout)
        assert [stdout.next() for _ in until] == until
        err = interrupt(child)
    assert child.returncode == EXIT_INTERRUPTED
    assert err == ["Error: interrupted: the query was stopped"]


@pytest.mark.parametrize("query", [RUNAWAY, EVENTS_RUNAWAY])
def test_ctrl_c_stops_a_runaway_query_in_the_cli(store: Path, query: str) -> None:
    """The issue's query (SQLite only, no Python of ours runs) and a join of ``events`` (Python
    reads records for SQLite): SIGINT once SQLite is inside the statement -> exit 130, one line."""
    for _ in range(3):
        with sql_child(store, query, marker=True) as child:
            stderr = Lines(child.stderr)
            assert stderr.next() == RUNNING
            err = interrupt(child, stderr)
        assert child.returncode == EXIT_INTERRUPTED, err
        assert err == ["Error: interrupted: the query was stopped"]


def test_ctrl_c_in_the_library_raises_keyboard_interrupt(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process: SIGINT while SQLite reads ``events`` is a KeyboardInterrupt out of ``sql``,
    wherever in the table's code it lands (never a SystemError from a callback SQLite cannot fail)."""
    running = threading.Event()
    guard_call = QueryGuard.__call__

    def marked(self: QueryGuard) -> bool:
        running.set()
        return guard_call(self)

    monkeypatch.setattr(QueryGuard, "__call__", marked)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with Storage(store, read_only=True) as reader:
            for _ in range(10):
                running.clear()

                def ctrl_c() -> None:
                    running.wait(GUARD)
                    os.kill(os.getpid(), signal.SIGINT)

                threading.Thread(target=ctrl_c).start()
                with pytest.raises(KeyboardInterrupt):
                    reader.sql(EVENTS_RUNAWAY, timeout=GUARD)
            assert reader.sql("SELECT count(*) FROM events").rows == [(301,)]
    finally:
        signal.signal(signal.SIGINT, previous)


def test_ctrl_c_while_a_finalizer_runs_still_stops_the_query(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lost-interrupt race, made deterministic: SIGINT arrives while a segment reader closes
    inside a generator that is being finalized (SQLite rescanning ``events`` drops the previous
    scan's generators). Raised there, the KeyboardInterrupt would be "ignored" and the query run
    on to its timeout; deferred by the query's guard, it stops the query."""
    close = SegmentReader.close
    sent: list[int] = []

    def close_then_ctrl_c(self: SegmentReader) -> None:
        close(self)
        if not sent and sys.exc_info()[0] is GeneratorExit:  # in a generator that is being closed
            sent.append(1)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(SegmentReader, "close", close_then_ctrl_c)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with Storage(store, read_only=True) as reader:
            with pytest.raises(KeyboardInterrupt):
                reader.sql(EVENTS_RUNAWAY, timeout=10.0)
            assert sent == [1]
            assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the guard's is gone
            assert reader.sql("SELECT count(*) FROM events").rows == [(301,)]
    finally:
        signal.signal(signal.SIGINT, previous)


# --- bad arguments -------------------------------------------------------------------------------

BAD_SQL = [
    pytest.param("SELECT 1", None, id="params-None"),
    pytest.param("SELECT ?", "x", id="params-str"),
    pytest.param("SELECT ?", b"x", id="params-bytes"),
    pytest.param("SELECT :a", {"a": 1}, id="params-dict"),
    pytest.param("SELECT ?", [object()], id="param-object"),
    pytest.param("SELECT ?", [[1]], id="param-list"),
    pytest.param("SELECT ?", [{"a": 1}], id="param-dict"),
    pytest.param("SELECT ?", [2**63], id="param-int-too-big"),
    pytest.param("SELECT ?", [-(2**63) - 1], id="param-int-too-small"),
    pytest.param("SELECT ?", ["a\ud800"], id="param-lone-surrogate"),
    pytest.param("SELECT 1\0", (), id="query-NUL"),
    pytest.param("SELECT '\udcff'", (), id="query-lone-surrogate"),
    pytest.param(b"SELECT 1", (), id="query-bytes"),
    pytest.param(None, (), id="query-None"),
]


@pytest.mark.parametrize(("query", "params"), BAD_SQL)
def test_bad_sql_arguments_are_invalid_argument(store: Path, query: Any, params: Any) -> None:
    before = snapshot(store)
    with Storage(store, read_only=True) as reader:
        for call in (
            lambda: reader.sql(query, params),
            lambda: reader.iter_sql(query, params),
            lambda: query_catalog(store, query, params),
        ):
            with pytest.raises(InvalidArgument) as caught:
                call()
            assert "\n" not in str(caught.value)
    with Storage(store) as writer:  # a writer's sql too
        with pytest.raises(InvalidArgument):
            writer.sql(query, params)
        assert writer.next_offset(1) == 301
    assert snapshot(store) == before


@pytest.mark.parametrize("query", ["SELECT '\udcff'", "SELECT 1 -- \ud800"])
def test_the_cli_refuses_a_query_that_is_not_text(store: Path, query: str) -> None:
    """Bytes that are not UTF-8 in argv reach Python as lone surrogates (a NUL cannot be in argv)."""
    before = snapshot(store)
    code, out, err = run("sql", str(store), query)
    assert code == EXIT_ERROR
    assert out == ""
    assert len(err.splitlines()) == 1
    assert "lone surrogate" in err
    assert snapshot(store) == before


BAD_NAMES = ["\ud800", "billing-\udcff", "\udfffx"]
CONSUMER_CALLS: list[Callable[[Storage, str], object]] = [
    lambda s, name: s.register_consumer(name),
    lambda s, name: s.register_consumer(name, 1),
    lambda s, name: s.ack(name, 0),
    lambda s, name: s.ack(name, 1, force=True),
    lambda s, name: s.subscribe(consumer=name),
    lambda s, name: s.subscribe(1, consumer=name),
]


@pytest.mark.parametrize("name", BAD_NAMES)
@pytest.mark.parametrize("read_only", [True, False])
def test_a_lone_surrogate_in_a_consumer_name_is_invalid_argument(store: Path, name: str, read_only: bool) -> None:
    with Storage(store) as writer:
        writer.register_consumer("ok")
    before = snapshot(store)
    with Storage(store, read_only=read_only) as handle:
        for call in CONSUMER_CALLS:
            with pytest.raises(InvalidArgument) as caught:
                call(handle, name)
            assert "lone surrogate" in str(caught.value)
        assert [c.name for c in handle.consumers()] == ["ok"]
    assert snapshot(store) == before


@pytest.mark.parametrize("name", BAD_NAMES)
def test_the_cli_refuses_a_consumer_name_that_is_not_text(store: Path, name: str) -> None:
    code, out, err = run("tail", str(store), "--consumer", name, "--count", "1")
    assert code == EXIT_ERROR
    assert out == ""
    assert len(err.splitlines()) == 1
    assert "lone surrogate" in err
    with Storage(store, read_only=True) as reader:
        assert reader.consumers() == []


# --- the child -----------------------------------------------------------------------------------


def child_main(argv: list[str]) -> None:
    """``hybridlog`` with ``argv``, saying RUNNING on stderr at the first progress-handler call."""
    guard_call = QueryGuard.__call__
    said = False

    def marked(self: QueryGuard) -> bool:
        nonlocal said
        if not said:
            said = True
            print(RUNNING, file=sys.stderr, flush=True)
        return guard_call(self)

    QueryGuard.__call__ = marked  # type: ignore[method-assign]
    sys.argv = ["hybridlog", *argv]
    from hybridlog.cli import main

    main()


if __name__ == "__main__":
    child_main(sys.argv[1:])
