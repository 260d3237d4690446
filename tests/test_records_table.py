"""The ``records`` SQL table (hybridlog/records_table.py): the catalog's ``batches``, one row per record.

* a full scan gives exactly what the catalog's batches rows expand to, and those rows agree with
  the segments (frames back to back, each segment's committed size) and with ``read_global``;
* every pushed-down constraint form, and random combinations of them, give the rows a full scan
  filtered in Python gives, in the order asked for; odd values (NULL, floats, text) give what a
  plain SQLite table of the same rows gives; a point query reads one batch;
* ``hybridlog sql`` and queries without an events source have the table;
* a damaged ``batches`` row raises CatalogMismatch out of the query, never a wrong row.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import cast

import apsw
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridlog import CatalogMismatch, CheckpointPolicy, CompressionKind, GlobalRecord, Storage
from hybridlog.catalog_rows import BATCH_COLUMNS, IndexRow, expand_batch
from hybridlog.cli import cli
from hybridlog.layout import CATALOG_FILE
from hybridlog.records_table import COLUMNS
from hybridlog.sql import SqlValue, query_catalog
from hybridlog.testing.damage import edit_catalog

STREAMS = (7, 1, 2**40)
BATCH_SIZES = (1, 5, 2, 17, 3, 40, 1, 8, 1, 1, 12)
OPS: dict[str, Callable[[int, int], bool]] = {
    "=": lambda a, b: a == b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}
ORDERS: dict[str, Callable[[IndexRow], tuple[int, ...]]] = {
    "": lambda row: row,
    "ORDER BY global_position": lambda row: (row[0],),
    "ORDER BY stream_id, offset": lambda row: (row[1], row[2]),
    "ORDER BY offset": lambda row: (row[2],),
    "ORDER BY stream_id DESC, global_position": lambda row: (-row[1], row[0]),
    "ORDER BY global_position DESC": lambda row: (-row[0],),
}


def build_store(path: Path) -> None:
    """Three streams, batches of many sizes, checkpoints, zstd, 4 KiB segments (several per stream)."""
    policy = CheckpointPolicy(every_records=9, on_close=False)
    with Storage(path, checkpoint_policy=policy, compression=CompressionKind.ZSTD, max_segment_size=4096) as store:
        for n, size in enumerate(BATCH_SIZES * 3):
            payloads = [json.dumps({"n": n, "i": i, "pad": "abc" * 200}).encode() for i in range(size)]
            store.append(STREAMS[n % len(STREAMS)], payloads)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("records") / "store"
    build_store(path)
    return path


def expanded_batches(store: Path) -> list[IndexRow]:
    """What the catalog's batches rows stand for, read straight from the file."""
    path = store / CATALOG_FILE
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        batches = conn.execute(f"SELECT {BATCH_COLUMNS} FROM batches ORDER BY global_position").fetchall()  # noqa: S608
    finally:
        conn.close()
    return [row for batch in batches for row in expand_batch(batch, path, None)]


def ints(rows: list[tuple[SqlValue, ...]]) -> list[IndexRow]:
    """Rows of ``records`` (every value an integer), typed as such."""
    assert all(len(row) == len(COLUMNS) and all(type(v) is int for v in row) for row in rows)
    return cast(list[IndexRow], rows)


def select(store: Path, query: str, params: Sequence[SqlValue] = ()) -> list[IndexRow]:
    """The rows of a ``SELECT * FROM records ...`` run the way ``Storage.sql`` runs it, without a store."""
    return ints(query_catalog(store, query, params).rows)


def test_a_full_scan_is_the_expanded_batches_and_agrees_with_the_segments(store: Path) -> None:
    result = query_catalog(store, "SELECT * FROM records")
    assert result.columns == list(COLUMNS)
    rows = expanded_batches(store)
    assert result.rows == rows  # in global_position order
    assert len(rows) == sum(BATCH_SIZES) * 3 + len([r for r in rows if r[6] == 1])
    counts = query_catalog(store, "SELECT count(*), count(DISTINCT stream_id), max(record_count) FROM batches").rows
    batches, streams, largest = counts[0]
    assert streams == len(STREAMS)
    assert isinstance(batches, int)
    assert batches < len(rows) / 2  # one row per batch, not per record
    assert isinstance(largest, int)
    assert largest > max(BATCH_SIZES)  # a batch's checkpoints are in its row
    assert {row[6] for row in rows} == {0, 1}  # events and checkpoints
    ratio = query_catalog(store, "SELECT min(payload_bytes * 1.0 / stored_bytes) FROM streams").rows[0][0]
    assert isinstance(ratio, float)
    assert ratio > 2  # compressed

    segments = query_catalog(store, "SELECT stream_id, segment_no, size_bytes FROM segments").rows
    sizes = {(sid, no): size for sid, no, size in segments}
    assert len(sizes) > 2 * len(STREAMS)
    by_segment: dict[tuple[int, int], list[IndexRow]] = {}
    for row in sorted(rows, key=lambda r: (r[1], r[2])):
        by_segment.setdefault((row[1], row[3]), []).append(row)
    assert by_segment.keys() == sizes.keys()
    for key, frames in by_segment.items():
        for frame, after in itertools.pairwise(frames):
            assert frame[4] + frame[5] == after[4]  # back to back, in offset order
        assert frames[-1][4] + frames[-1][5] == sizes[key]

    with Storage(store, read_only=True) as reader:
        got: list[GlobalRecord] = []
        while batch := reader.read_global(len(got) + 1, 10_000):
            got += batch
        assert [
            (g.global_position, g.record.stream_id, g.record.offset, g.record.kind, g.record.timestamp_ns) for g in got
        ] == [(r[0], r[1], r[2], r[6], r[7]) for r in rows]
        assert reader.sql("SELECT * FROM records").rows == rows  # through Storage.sql too


def matches(row: IndexRow, terms: list[tuple[str, str, int]]) -> bool:
    return all(OPS[op](row[COLUMNS.index(column)], value) for column, op, value in terms)


def check_query(store: Path, rows: list[IndexRow], terms: list[tuple[str, str, int]], order: str) -> None:
    where = " AND ".join(f"{column} {op} ?" for column, op, _ in terms) or "1"
    got = select(store, f"SELECT * FROM records WHERE {where} {order}", [v for *_, v in terms])  # noqa: S608
    expected = [row for row in rows if matches(row, terms)]
    assert sorted(got) == sorted(expected), (where, terms)
    keys = [ORDERS[order](row) for row in got]
    assert keys == sorted(keys), (where, order)


@pytest.mark.parametrize("column", ["global_position", "stream_id", "offset"])
@pytest.mark.parametrize("op", sorted(OPS))
def test_each_pushed_down_constraint_form_gives_the_rows_a_filter_gives(store: Path, column: str, op: str) -> None:
    rows = expanded_batches(store)
    values = sorted({row[COLUMNS.index(column)] for row in rows})
    picks = {
        values[0] - 1,
        values[0],
        values[len(values) // 3],
        values[len(values) // 2] + 1,
        values[-1],
        values[-1] + 1,
    }
    for value in sorted(picks):
        for order in ORDERS:
            check_query(store, rows, [(column, op, value)], order)
            check_query(store, rows, [("stream_id", "=", STREAMS[0]), (column, op, value)], order)
            check_query(store, rows, [("stream_id", "=", STREAMS[2]), (column, op, value)], order)


COLUMN_CHOICES = ["global_position", "stream_id", "offset", "global_position", "offset", "segment_no", "kind"]


@st.composite
def constraints(draw: st.DrawFn, rows: list[IndexRow]) -> list[tuple[str, str, int]]:
    """Up to four (column, op, value) terms, values drawn near the data's own values."""
    terms = []
    for _ in range(draw(st.integers(0, 4))):
        column = draw(st.sampled_from(COLUMN_CHOICES))
        op = "=" if column == "stream_id" and draw(st.booleans()) else draw(st.sampled_from(sorted(OPS)))
        value = draw(st.sampled_from([row[COLUMNS.index(column)] for row in rows])) + draw(st.integers(-2, 2))
        terms.append((column, op, value))
    return terms


@settings(max_examples=120, derandomize=True, deadline=None)
@given(data=st.data(), order=st.sampled_from(sorted(ORDERS)))
def test_random_constraints_give_the_rows_a_filter_gives(store: Path, data: st.DataObject, order: str) -> None:
    rows = expanded_batches(store)
    check_query(store, rows, data.draw(constraints(rows)), order)


@pytest.mark.parametrize(
    "where",
    [
        "stream_id = ?",
        "offset >= ?",
        "offset < ?",
        "global_position = ?",
        "global_position > ?",
        "stream_id = 7 AND offset <= ?",
        "stream_id = 1 AND global_position >= ? AND offset < 30",
    ],
)
@pytest.mark.parametrize("value", [None, 3.5, 3.0, -1e300, 1e300, float("nan"), "3", "x", b"\x03"])
def test_odd_values_give_what_a_plain_table_gives(store: Path, where: str, value: SqlValue) -> None:
    rows = expanded_batches(store)
    plain = apsw.Connection(":memory:")
    plain.execute("CREATE TABLE records (" + ", ".join(f"{c} INTEGER" for c in COLUMNS) + ")")
    plain.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    query = f"SELECT * FROM records WHERE {where}"  # noqa: S608
    expected = sorted(plain.execute(query, (value,)).fetchall())
    assert sorted(select(store, query, [value])) == expected


def test_a_point_query_reads_one_batch(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expanded: list[tuple[object, ...]] = []

    def counting(row: tuple[object, ...], path: Path, stream_id: int | None) -> list[IndexRow]:
        expanded.append(row)
        return expand_batch(row, path, stream_id)

    monkeypatch.setattr("hybridlog.records_table.expand_batch", counting)
    rows = expanded_batches(store)
    middle = [r for r in rows if r[1] == 7][30]
    assert select(store, "SELECT * FROM records WHERE stream_id = 7 AND offset = ?", [middle[2]]) == [middle]
    assert len(expanded) == 1
    expanded.clear()
    assert select(store, "SELECT * FROM records WHERE global_position = ?", [middle[0]]) == [middle]
    assert len(expanded) == 1
    expanded.clear()
    assert select(store, "SELECT * FROM records ORDER BY global_position DESC LIMIT 3") == rows[-1:-4:-1]
    assert len(expanded) == 1  # the last batch holds the last three
    expanded.clear()
    wanted = [r for r in rows if r[1] == 1 and 10 <= r[2] <= 20]
    assert select(store, "SELECT * FROM records WHERE stream_id = 1 AND offset BETWEEN 10 AND 20") == wanted
    assert all(batch[1] == 1 for batch in expanded)
    assert len(expanded) <= 4


def test_hybridlog_sql_has_the_table(store: Path) -> None:
    result = CliRunner().invoke(
        cli, ["sql", str(store), "SELECT * FROM records WHERE stream_id = 7 AND offset = 3", "--output", "json"]
    )
    assert result.exit_code == 0, result.output
    expected = [row for row in expanded_batches(store) if row[1] == 7 and row[2] == 3]
    assert [tuple(row.values()) for row in json.loads(result.output)] == expected
    assert list(json.loads(result.output)[0]) == list(COLUMNS)


def edit_ignoring_checks(store: Path, sql: str, bindings: tuple[object, ...]) -> None:
    """Change the catalog as someone could with ``sqlite3`` and ``PRAGMA ignore_check_constraints``."""
    conn = apsw.Connection(str(store / CATALOG_FILE))
    try:
        conn.pragma("ignore_check_constraints", True)
        with conn:
            conn.execute(sql, bindings)
            assert conn.changes() == 1
    finally:
        conn.close()


DAMAGE: dict[str, tuple[bool, str]] = {
    # (whether the edit passes the table's CHECK constraints, the edit of one batches row)
    "frame_ends one record short": (False, "UPDATE batches SET frame_ends = substr(frame_ends, 5)"),
    "kinds of the wrong length": (False, "UPDATE batches SET kinds = x'0000'"),
    "a kind that is no kind": (True, "UPDATE batches SET kinds = CAST(x'09' || zeroblob(record_count - 1) AS BLOB)"),
    "frame ends that go back": (
        True,
        "UPDATE batches SET frame_ends = CAST(x'ffff0000' || zeroblob(4 * record_count - 4) AS BLOB)",
    ),
    "a record more, overlapping the next batch": (
        True,
        "UPDATE batches SET record_count = record_count + 1, frame_ends = CAST(frame_ends || x'ffffff00' AS BLOB)",
    ),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_batches_row_fails_the_query(tmp_path: Path, case: str) -> None:
    store = tmp_path / "store"
    build_store(store)
    first = "SELECT global_position, stream_id, first_offset FROM batches WHERE record_count > 2 ORDER BY 1 LIMIT 1"
    position, sid, offset = query_catalog(store, first).rows[0]
    assert isinstance(offset, int)
    other = STREAMS[1] if sid == STREAMS[0] else STREAMS[0]
    count_other = "SELECT count(*) FROM records WHERE stream_id = ?"
    before = query_catalog(store, count_other, [other]).rows
    passes_check, edit = DAMAGE[case]
    edit += " WHERE global_position = ?"
    if passes_check:
        assert edit_catalog(store, edit, (position,)) == 1
    else:
        with pytest.raises(apsw.ConstraintError):
            edit_catalog(store, edit, (position,))
        edit_ignoring_checks(store, edit, (position,))
    queries: list[tuple[str, tuple[SqlValue, ...]]] = [
        ("SELECT * FROM records", ()),
        ("SELECT count(*) FROM records", ()),
        ("SELECT * FROM records WHERE stream_id = ? ORDER BY offset", (sid,)),
    ]
    if "overlapping" not in case:  # a point query reads one batch: the one holding its offset, which is sound
        queries.append(("SELECT * FROM records WHERE stream_id = ? AND offset = ?", (sid, offset + 1)))
    for query, params in queries:
        with pytest.raises(CatalogMismatch) as caught:
            query_catalog(store, query, params)
        assert "batches" in str(caught.value), query
        assert "hybridlog check" in str(caught.value)
        assert caught.value.stream_id in STREAMS
    assert query_catalog(store, count_other, [other]).rows == before  # the push-down reads only that stream
    result = CliRunner().invoke(cli, ["sql", str(store), "SELECT * FROM records"])
    assert result.exit_code == 3, result.output  # damage, as for a damaged record through events
    assert "batches" in result.output
    assert "Traceback" not in result.output


def test_the_documented_decoding_of_batches_gives_the_rows_of_records(store: Path) -> None:
    """The Python in docs/schema.md's ``batches`` section, run with the standard library's sqlite3."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "schema.md").read_text(encoding="utf-8")
    section = text.split("## `batches`", 1)[1].split("\n## ", 1)[0]
    namespace: dict[str, object] = {}
    exec(section.split("```python\n", 1)[1].split("```", 1)[0], namespace)  # noqa: S102 (our own docs)
    decode = cast(Callable[[Path, int], Iterable[IndexRow]], namespace["stream_records"])
    for sid in STREAMS:
        expected = select(store, "SELECT * FROM records WHERE stream_id = ? ORDER BY offset", [sid])
        assert list(decode(store / CATALOG_FILE, sid)) == expected
