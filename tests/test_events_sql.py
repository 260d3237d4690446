"""The ``events`` SQL table (hybridlog/events_table.py) against a plain Python model.

* random stores and random constraint combinations give exactly the rows a filter over every
  verified record gives (Hypothesis);
* push-down: a narrow query reads its rows (plus at most a checkpoint interval), not the stream;
* a tampered record makes the query raise its integrity error instead of returning a row;
* every ``sql`` block of docs/sql.md runs against the demo store and returns rows.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridlog import CheckpointPolicy, GlobalRecord, IntegrityError, RecordKind, Storage
from hybridlog.catalog import Catalog
from hybridlog.cli import cli
from hybridlog.events_table import register
from hybridlog.layout import CATALOG_FILE
from hybridlog.record import HEADER_SIZE, record_hash
from hybridlog.records_table import register as register_records_table
from hybridlog.sql import SqlRefused, attach_consumers
from hybridlog.testing.damage import flip_byte, genesis_records, segment_files

REPO = Path(__file__).resolve().parent.parent
Row = tuple[int, int, int, str, int, bytes | None]
COLUMNS = "stream_id, offset, global_position, kind, timestamp, payload"


def model_rows(store: Storage) -> list[Row]:
    """Every record as an events row, from full verified reads and read_global's positions."""
    positions = {(g.record.stream_id, g.record.offset): g.global_position for g in all_global(store)}
    rows: list[Row] = []
    for sid in sorted(store.stream_ids()):
        for r in genesis_records(store, sid):
            kind = "event" if r.kind is RecordKind.EVENT else "checkpoint"
            payload = r.payload if r.kind is RecordKind.EVENT else None
            rows.append((sid, r.offset, positions[sid, r.offset], kind, r.timestamp_ns, payload))
    return rows


def all_global(store: Storage) -> Iterator[GlobalRecord]:
    position = 1
    while batch := store.read_global(position, 1 << 20):
        yield from batch
        position = batch[-1].global_position + 1


OPS: dict[str, Callable[[int, int], bool]] = {
    "=": lambda a, b: a == b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}
FIELDS = {"stream_id": 0, "offset": 1, "global_position": 2, "timestamp": 4}


def number(row: Row, column: str) -> int:
    value = row[FIELDS[column]]
    assert isinstance(value, int)
    return value


@st.composite
def constraints(draw: st.DrawFn, rows: list[Row]) -> list[tuple[str, str, int]]:
    """Up to four (column, op, value) terms, values drawn near the data's own values."""
    terms = []
    for _ in range(draw(st.integers(0, 4))):
        column = draw(st.sampled_from(sorted(FIELDS)))
        op = "=" if column == "stream_id" and draw(st.booleans()) else draw(st.sampled_from(sorted(OPS)))
        seen = [number(row, column) for row in rows] or [0]
        value = draw(st.sampled_from(seen)) + draw(st.integers(-2, 2))
        terms.append((column, op, value))
    return terms


def clock_with_repeats() -> Callable[[], int]:
    """A clock that sometimes stands still and sometimes steps back (the writer clamps it)."""
    steps = itertools.cycle([1000, 0, 1000, -5000, 2000, 0])
    now = [1_700_000_000_000_000_000]

    def tick() -> int:
        now[0] += next(steps)
        return now[0]

    return tick


@settings(max_examples=20, deadline=None)
@given(
    data=st.data(),
    every=st.sampled_from([None, 3, 10]),
    batches=st.lists(st.tuples(st.integers(0, 2), st.integers(1, 6)), min_size=1, max_size=12),
)
def test_rows_match_the_model_for_random_constraints(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject, every: int | None, batches: list[tuple[int, int]]
) -> None:
    store_dir = tmp_path_factory.mktemp("store")
    policy = CheckpointPolicy(every_records=every, on_close=False)
    with Storage(store_dir, checkpoint_policy=policy, clock=clock_with_repeats(), max_segment_size=4096) as store:
        for n, (sid, size) in enumerate(batches):
            store.append(sid, [b'{"n": %d, "i": %d}' % (n, i) for i in range(size)])
        rows = model_rows(store)
        for _ in range(5):
            terms = data.draw(constraints(rows))
            where = " AND ".join(f"{column} {op} ?" for column, op, _ in terms) or "1"
            query = f"SELECT {COLUMNS} FROM events WHERE {where}"  # noqa: S608 (column names are ours)
            got = store.sql(query, [v for _, _, v in terms]).rows
            expected = [row for row in rows if all(OPS[op](number(row, c), v) for c, op, v in terms)]
            assert got == expected, (where, terms)


def test_json_payloads_work_with_sqlite_json_functions(tmp_path: Path) -> None:
    with Storage(tmp_path / "s") as store:
        store.append(1, [b'{"type": "deposit", "amount": 5}', b'{"type": "withdrawal", "amount": 2}'])
        store.append(1, [b'{"type": "deposit", "amount": 7}'])
        result = store.sql(
            "SELECT payload ->> '$.type' AS type, count(*), sum(payload ->> '$.amount') FROM events"
            " WHERE kind = 'event' GROUP BY type ORDER BY type"
        )
    assert result.columns == ["type", "count(*)", "sum(payload ->> '$.amount')"]
    assert result.rows == [("deposit", 2, 12), ("withdrawal", 1, 2)]


def counting_hashes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count every record hash the verified read paths compute (the work a query does)."""
    counter = [0]

    def counted(*args: Any, **kwargs: Any) -> bytes:
        counter[0] += 1
        return record_hash(*args, **kwargs)

    monkeypatch.setattr("hybridlog.walk.record_hash", counted)
    return counter


def scalar(conn: apsw.Connection, query: str, params: tuple[int, ...] = ()) -> int:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    assert isinstance(row[0], int)
    return row[0]


def test_a_narrow_query_reads_its_range_not_the_stream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Storage(tmp_path / "s", checkpoint_policy=CheckpointPolicy(every_records=50, on_close=False)) as store:
        for _ in range(20):
            store.append(1, [b"e%d" % i for i in range(500)])  # ~10,200 records
        store.append(2, [b"other"] * 100)
        conn = apsw.Connection(str(tmp_path / "s" / CATALOG_FILE), flags=apsw.SQLITE_OPEN_READONLY)
        module = register(conn, store)
        register_records_table(conn, tmp_path / "s" / CATALOG_FILE)
        hashes = counting_hashes(monkeypatch)
        assert scalar(conn, "SELECT count(*) FROM events WHERE stream_id = 1 AND offset BETWEEN 5000 AND 5100") == 101
        assert module.records_read == 101
        assert hashes[0] <= 101 + 51  # the rows, plus at most one checkpoint interval before them
        module.records_read = 0
        records = genesis_records(store, 1)
        first, last = records[7000].timestamp_ns, records[7010].timestamp_ns
        in_window = sum(1 for r in records if first <= r.timestamp_ns <= last)  # whole batches share a time
        query = "SELECT count(*) FROM events WHERE stream_id = 1 AND timestamp BETWEEN ? AND ?"
        assert scalar(conn, query, (first, last)) == in_window
        assert module.records_read == in_window < len(records) // 10
        module.records_read = 0
        low = scalar(conn, "SELECT global_position FROM records WHERE stream_id = 2 AND offset = 10")
        rows = conn.execute(
            "SELECT stream_id, offset FROM events WHERE global_position BETWEEN ? AND ?", (low, low + 4)
        ).fetchall()
        assert rows == [(2, o) for o in range(10, 15)]
        assert module.records_read == 5
        conn.close()


def test_a_tampered_record_fails_the_query_instead_of_returning_a_row(tmp_path: Path) -> None:
    store_dir = tmp_path / "s"
    with Storage(store_dir) as store:
        store.append(1, [b'{"type": "deposit", "amount": 1}'] * 5)
        entry = store.offset_index(1).lookup(3)
        assert entry is not None
    flip_byte(segment_files(store_dir, 1)[0], entry.position + HEADER_SIZE + 3)
    with Storage(store_dir, read_only=True) as reader:
        assert reader.sql("SELECT count(*) FROM events WHERE stream_id = 1 AND offset < 3").rows == [(3,)]
        with pytest.raises(IntegrityError) as caught:
            reader.sql("SELECT offset, payload ->> '$.amount' FROM events WHERE stream_id = 1")
    assert caught.value.offset == 3
    result = CliRunner().invoke(cli, ["sql", str(store_dir), "SELECT payload FROM events"])
    assert result.exit_code == 3  # damage, as docs/sql.md says
    assert "offset 3" in result.output


def doc_queries() -> list[str]:
    text = (REPO / "docs" / "sql.md").read_text()
    return re.findall(r"```sql\n(.*?)```", text, re.S)


def test_docs_sql_examples_run_against_the_demo_store(tmp_path: Path) -> None:
    queries = doc_queries()
    assert len(queries) >= 6
    store_dir = tmp_path / "demo"
    assert CliRunner().invoke(cli, ["demo", str(store_dir)]).exit_code == 0
    with Storage(store_dir, read_only=True) as store:
        for query in queries:
            result = store.sql(query)
            assert result.rows, query


def test_consumers_are_readable_beside_events_and_never_writable(tmp_path: Path) -> None:
    store_dir = tmp_path / "s"
    with Storage(store_dir) as store:
        store.append(1, [b"a", b"b", b"c"])
        store.register_consumer("billing", stream_id=1)
        store.ack("billing", 2)
    with Storage(store_dir, read_only=True) as reader:
        joined = reader.sql(
            "SELECT c.name, e.stream_id, e.offset, e.payload FROM consumers AS c"
            " JOIN events AS e ON e.global_position = c.position"
        )
        assert joined.rows == [("billing", 1, 1, b"b")]
        for statement in ("DELETE FROM consumers", "UPDATE consumer_state.consumers SET position = 0"):
            with pytest.raises(SqlRefused):
                reader.sql(statement)
        assert reader.sql("SELECT position FROM consumers").rows == [(2,)]


def test_the_attached_consumers_file_is_read_only_below_the_authorizer(tmp_path: Path) -> None:
    """The authorizer refuses writes; underneath it, the attached file is read-only by itself too."""
    store_dir = tmp_path / "s"
    with Storage(store_dir) as store:
        store.append(1, [b"a"])
        store.register_consumer("billing")
    catalog = Catalog(store_dir / CATALOG_FILE, read_only=True)
    try:
        attach_consumers(catalog.conn, store_dir)
        with pytest.raises(apsw.ReadOnlyError):
            catalog.conn.execute("UPDATE consumer_state.consumers SET position = 1")
    finally:
        catalog.close()
