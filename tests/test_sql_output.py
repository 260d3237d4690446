"""`hybridlog sql` and `Storage.sql` as a new user meets them: output formats, blobs, column order,
one statement per query, the `consumers` relation before any consumer, and iterable results.

The CLI runs through click's CliRunner (streaming through a real pipe is tested in
test_sql_limits.py); the library through a real store on disk.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from test_sql_limits import snapshot

from hybridlog import InvalidArgument, MultipleStatements, Storage
from hybridlog.cli import EXIT_DAMAGE, EXIT_ERROR, EXIT_USAGE, cli
from hybridlog.layout import CONSUMERS_FILE
from hybridlog.output import BASE64_KEY, json_value, text_value
from hybridlog.record import HEADER_SIZE
from hybridlog.sql import SqlRefused
from hybridlog.testing.damage import flip_byte, segment_files

REPO = Path(__file__).resolve().parent.parent
CONSUMER_COLUMNS = [
    "name",
    "stream_id",
    "position",
    "acked_stream_id",
    "acked_offset",
    "created_at_ns",
    "updated_at_ns",
]
# payloads of stream 1, offsets 0..3: ASCII, not UTF-8, UTF-8 beyond ASCII, empty
PAYLOADS = [b"a", b"c\xff", "caf\u00e9".encode(), b""]
NOT_UTF8 = {"$base64": True, "encoded": base64.b64encode(b"c\xff").decode()}


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    with Storage(path) as writer:
        for payload in PAYLOADS:  # one batch each: no checkpoint between them
            writer.append(1, [payload])
    return path


# --- output formats --------------------------------------------------------------------------------

QUERY = "SELECT offset, kind FROM events WHERE stream_id = 1 AND offset < 2"
ROWS = [{"offset": 0, "kind": "event"}, {"offset": 1, "kind": "event"}]


def test_the_format_flags_print_json_json_lines_csv_and_a_table(store: Path) -> None:
    code, out, err = run("sql", str(store), QUERY, "--json")
    assert (code, err) == (0, "")
    assert json.loads(out) == ROWS
    code, out, _ = run("sql", str(store), QUERY, "--nl")
    assert code == 0
    assert [json.loads(line) for line in out.splitlines()] == ROWS
    code, out, _ = run("sql", str(store), QUERY, "--csv")
    assert code == 0
    assert out.splitlines() == ["offset,kind", "0,event", "1,event"]
    code, table, _ = run("sql", str(store), QUERY, "--table")
    assert code == 0
    assert [line.split() for line in table.splitlines()] == [
        ["offset", "kind"],
        ["------", "-----"],
        ["0", "event"],
        ["1", "event"],
    ]
    assert run("sql", str(store), QUERY) == (0, table, "")  # a table is the default


@pytest.mark.parametrize("fmt", ["table", "csv", "json", "nl"])
def test_output_is_kept_as_another_spelling_of_the_flags(store: Path, fmt: str) -> None:
    assert run("sql", str(store), QUERY, "--output", fmt) == run("sql", str(store), QUERY, f"--{fmt}")


@pytest.mark.parametrize("args", [["--json", "--csv"], ["--nl", "--table"], ["--output", "csv", "--json"]])
def test_two_formats_are_a_usage_error(store: Path, args: list[str]) -> None:
    code, out, err = run("sql", str(store), QUERY, *args)
    assert code == EXIT_USAGE
    assert out == ""
    assert "choose one output format" in err


def test_an_empty_result_in_every_format(store: Path) -> None:
    empty = "SELECT offset, kind FROM events WHERE stream_id = 99"
    assert run("sql", str(store), empty, "--json")[1] == "[]\n"
    assert run("sql", str(store), empty, "--nl")[1] == ""
    assert run("sql", str(store), empty, "--csv")[1].splitlines() == ["offset,kind"]


# --- column order ----------------------------------------------------------------------------------


def test_json_keeps_the_columns_order(store: Path) -> None:
    query = "SELECT 'z' AS zulu, 1 AS alpha, offset AS mike FROM events WHERE stream_id = 1 AND offset = 0"
    code, out, _ = run("sql", str(store), query, "--json")
    assert code == 0
    assert [list(row) for row in json.loads(out)] == [["zulu", "alpha", "mike"]]
    assert out.index('"zulu"') < out.index('"alpha"') < out.index('"mike"')  # the text itself, not just a parser's dict
    code, out, _ = run("sql", str(store), query, "--nl")
    assert out == '{"zulu": "z", "alpha": 1, "mike": 0}\n'


# --- blobs -----------------------------------------------------------------------------------------

PAYLOAD_QUERY = "SELECT offset, payload FROM events WHERE stream_id = 1 AND kind = 'event' ORDER BY offset"
EXPECTED = ["a", NOT_UTF8, "caf\u00e9", ""]


def test_json_prints_utf8_payloads_as_text_and_others_as_base64(store: Path) -> None:
    code, out, _ = run("sql", str(store), PAYLOAD_QUERY, "--json")
    assert code == 0
    assert [row["payload"] for row in json.loads(out)] == EXPECTED
    code, out, _ = run("sql", str(store), PAYLOAD_QUERY, "--nl")
    assert [json.loads(line)["payload"] for line in out.splitlines()] == EXPECTED


def test_csv_and_table_print_the_same_encoding_as_text(store: Path) -> None:
    as_text = ["a", json.dumps(NOT_UTF8), "caf\u00e9", ""]
    code, out, _ = run("sql", str(store), PAYLOAD_QUERY, "--csv")
    assert code == 0
    assert [row[1] for row in list(csv.reader(io.StringIO(out)))[1:]] == as_text
    code, out, _ = run("sql", str(store), PAYLOAD_QUERY, "--table")
    assert code == 0
    lines = out.splitlines()[2:]
    assert [line[len("offset  ") :].rstrip() for line in lines] == as_text


def test_bytes_and_the_text_they_look_like_print_differently(store: Path) -> None:
    """``b"c\\xff"`` (a payload) and the text ``"c\\xff"`` (SQL ``char(99, 255)``) used to print alike."""
    query = "SELECT payload AS blob, char(99, 255) AS text FROM events WHERE stream_id = 1 AND offset = 1"
    code, out, _ = run("sql", str(store), query, "--json")
    assert code == 0
    assert json.loads(out) == [{"blob": NOT_UTF8, "text": "c\u00ff"}]
    code, out, _ = run("sql", str(store), query, "--csv")
    assert list(csv.reader(io.StringIO(out)))[1] == [json.dumps(NOT_UTF8), "c\u00ff"]


def test_hashes_are_base64_unless_they_happen_to_be_utf8(store: Path) -> None:
    with Storage(store, read_only=True) as reader:
        hashes = [h for (h,) in reader.sql("SELECT hash FROM events WHERE stream_id = 1")]
    code, out, _ = run("sql", str(store), "SELECT hash FROM events WHERE stream_id = 1", "--json")
    assert code == 0
    assert [decode(row["hash"]) for row in json.loads(out)] == hashes


def decode(printed: Any) -> bytes:
    """The bytes a JSON value printed by ``json_value`` stands for."""
    if isinstance(printed, dict):
        assert set(printed) == {BASE64_KEY, "encoded"}
        assert printed[BASE64_KEY] is True
        return base64.b64decode(printed["encoded"], validate=True)
    assert isinstance(printed, str)
    return printed.encode("utf-8")


@given(st.binary(max_size=64) | st.text(max_size=20).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_the_blob_encoding_loses_nothing(data: bytes) -> None:
    printed = json.loads(json.dumps(json_value(data)))
    assert decode(printed) == data
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        assert isinstance(printed, dict)
        assert text_value(data) == json.dumps(printed)
    else:
        assert printed == text == text_value(data)


def test_values_other_than_blobs_are_left_alone() -> None:
    for value in (None, 0, -3, 1.5, "text", "c\u00ff"):
        assert json_value(value) == value
    assert [text_value(None), text_value(None, null="NULL"), text_value(7), text_value(0.5)] == ["", "NULL", "7", "0.5"]


# --- one statement ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "params"),
    [
        ("SELECT 1 AS a; SELECT 2 AS b, 3 AS c", ()),
        ("SELECT offset FROM events;\n-- and then\nSELECT count(*) FROM records", ()),
        ("SELECT ? AS a; SELECT ? AS b", (1, 2)),
        ("SELECT 1; DELETE FROM records", ()),
        ("SELECT 1 /* one */ ; ; /* two */ SELECT 2", ()),
    ],
)
def test_more_than_one_statement_is_refused_before_any_runs(store: Path, query: str, params: tuple[int, ...]) -> None:
    before = snapshot(store)
    with Storage(store, read_only=True) as reader:
        with pytest.raises(MultipleStatements) as caught:
            reader.sql(query, params)
        assert isinstance(caught.value, InvalidArgument)
        assert "more than one statement" in str(caught.value)
        with pytest.raises(MultipleStatements), reader.iter_sql(query, params) as rows:
            list(rows)
    assert snapshot(store) == before


def test_the_cli_refuses_more_than_one_statement_with_one_line_and_no_rows(store: Path) -> None:
    code, out, err = run("sql", str(store), "SELECT 1 AS a; SELECT 2 AS b, 3 AS c", "--csv")
    assert code == EXIT_ERROR
    assert out == ""
    assert err.splitlines() == [
        "Error: refused: the query holds more than one statement (the second begins at character 15:"
        " 'SELECT 2 AS b, 3 AS c'); nothing was run (hint: run one statement at a time)"
    ]


@pytest.mark.parametrize(
    "query",
    ["SELECT 1 AS a;", "SELECT 1 AS a;;  ;\n", "SELECT 1 AS a; -- a comment", "SELECT 1 AS a; /* x */ ; -- y\n"],
)
def test_one_statement_with_trailing_semicolons_and_comments_runs(store: Path, query: str) -> None:
    with Storage(store, read_only=True) as reader:
        assert (reader.sql(query).columns, reader.sql(query).rows) == (["a"], [(1,)])
    assert run("sql", str(store), query, "--nl") == (0, '{"a": 1}\n', "")


def test_a_bad_second_statement_is_an_sql_error_and_nothing_runs(store: Path) -> None:
    code, out, err = run("sql", str(store), "SELECT 1 AS a; SELEKT 2", "--csv")
    assert code == EXIT_ERROR
    assert out == ""
    assert "syntax error" in err


# --- consumers -------------------------------------------------------------------------------------


def test_consumers_exists_and_is_empty_before_any_consumer(store: Path) -> None:
    assert not (store / CONSUMERS_FILE).exists()
    before = snapshot(store)
    with Storage(store, read_only=True) as reader:
        result = reader.sql("SELECT * FROM consumers")
        assert (result.columns, result.rows) == (CONSUMER_COLUMNS, [])
        joined = reader.sql("SELECT c.name FROM consumers AS c JOIN events AS e ON e.global_position = c.position")
        assert joined.rows == []
        with pytest.raises(SqlRefused):
            reader.sql("DELETE FROM consumers")
    assert run("sql", str(store), "SELECT * FROM consumers", "--json") == (0, "[]\n", "")
    code, out, _ = run("sql", str(store), "SELECT * FROM consumers", "--csv")
    assert (code, out.splitlines()) == (0, [",".join(CONSUMER_COLUMNS)])
    assert not (store / CONSUMERS_FILE).exists()  # a query creates nothing
    assert snapshot(store) == before


def test_consumers_is_empty_while_its_file_has_no_schema_yet(store: Path) -> None:
    """The state a crash leaves between SQLite creating ``consumers.db`` and its first migration."""
    (store / CONSUMERS_FILE).touch()
    with Storage(store, read_only=True) as reader:
        assert reader.sql("SELECT * FROM consumers").columns == CONSUMER_COLUMNS
        assert reader.sql("SELECT * FROM consumers").rows == []
    assert (store / CONSUMERS_FILE).stat().st_size == 0


def test_the_empty_consumers_has_the_real_tables_columns(store: Path) -> None:
    with Storage(store, read_only=True) as reader:
        empty = reader.sql("SELECT name, type, \"notnull\", pk FROM pragma_table_info('consumers')").rows
    with Storage(store) as writer:
        writer.register_consumer("billing", stream_id=1)
        writer.ack("billing", 2)
    with Storage(store, read_only=True) as reader:
        real = reader.sql("SELECT name, type, \"notnull\", pk FROM pragma_table_info('consumers')").rows
        assert reader.sql("SELECT name, position FROM consumers").rows == [("billing", 2)]
    assert empty == real
    assert [name for name, *_ in real] == CONSUMER_COLUMNS


# --- QueryResult -----------------------------------------------------------------------------------


def test_a_query_result_iterates_over_its_rows(store: Path) -> None:
    with Storage(store, read_only=True) as reader:
        result = reader.sql("SELECT offset, payload FROM events WHERE stream_id = 1 AND offset < 2")
    assert result.columns == ["offset", "payload"]
    assert result.rows == [(0, b"a"), (1, b"c\xff")]
    assert list(result) == result.rows
    # The comprehension unpacks each row as a pair; dict(result) would need a cast (rows are tuples of any length).
    assert {offset: payload for offset, payload in result} == {0: b"a", 1: b"c\xff"}  # noqa: C416
    assert list(result) == result.rows  # again: iterating does not use it up


# --- damage ----------------------------------------------------------------------------------------


def test_damage_reached_by_a_query_exits_3_as_docs_sql_md_says(store: Path) -> None:
    with Storage(store, read_only=True) as reader:
        entry = reader.offset_index(1).lookup(2)
        assert entry is not None
    flip_byte(segment_files(store, 1)[0], entry.position + HEADER_SIZE + 1)  # inside offset 2's payload
    code, out, err = run("sql", str(store), "SELECT offset FROM events WHERE stream_id = 1", "--csv")
    assert code == EXIT_DAMAGE
    assert out.splitlines() == ["offset", "0", "1"]  # the rows before the damage, then the error
    assert "offset 2" in err
    documented = re.search(r"`hybridlog sql` exits with code (\d+)", (REPO / "docs" / "sql.md").read_text())
    assert documented is not None
    assert int(documented.group(1)) == code
