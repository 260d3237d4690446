"""The `hybridlog` command: outputs, JSON shapes and exit codes, through click's CliRunner."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import hybridlog.cli.admin as cli_module
from hybridlog import MAX_EVENT_SIZE, Storage
from hybridlog.cli import EXIT_DAMAGE, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_USAGE, cli
from hybridlog.layout import segment_path
from hybridlog.testing.damage import genesis_events


def run(*args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), input=stdin)
    return result.exit_code, result.stdout, result.stderr


def flip_byte(path: Path, position: int) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.fixture
def populated(tmp_path: Path) -> Path:
    store = tmp_path / "store"
    code, _, err = run("init", str(store))
    assert code == 0, err
    code, out, err = run("append", str(store), "--stream", "5", "--json", stdin=b"alpha\nbeta\ngamma\n")
    assert code == 0, err
    report = json.loads(out)
    assert report["appended"] == 3
    assert report["next_offset"] == 3
    assert len(report["head"]) == 64
    code, _, err = run("checkpoint", str(store), "--stream", "5")  # append writes none of its own
    assert code == 0, err
    return store


def test_append_then_read(populated: Path) -> None:
    code, out, _ = run("read", str(populated), "--stream", "5")
    assert code == 0
    assert out.splitlines() == ["alpha", "beta", "gamma"]
    code, out, _ = run("read", str(populated), "--stream", "5", "--from", "1", "--limit", "1")
    assert out.splitlines() == ["beta"]


def test_read_records_prints_json_lines_with_checkpoints(populated: Path) -> None:
    code, out, _ = run("read", str(populated), "--stream", "5", "--records")
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    # the checkpoint the fixture wrote after the append
    assert [r["kind"] for r in records] == ["event", "event", "event", "checkpoint"]
    assert records[1]["prev_hash"] == records[0]["hash"]
    assert records[0]["prev_hash"] == "00" * 32


def test_append_files(tmp_path: Path) -> None:
    store = tmp_path / "s"
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"\x00\x01 multi\nline")
    b.write_bytes(b"")
    code, _, _ = run("append", str(store), str(a), str(b))
    assert code == 0
    with Storage(store, read_only=True) as s:
        assert genesis_events(s, 0) == [b"\x00\x01 multi\nline", b""]


def test_verify_ok_and_json_shape(populated: Path) -> None:
    code, out, _ = run("verify", str(populated), "--json")
    assert code == 0
    report = json.loads(out)
    assert report["ok"] is True
    assert report["records_verified"] == 4
    assert report["catalog_disagreements"] == []
    assert report["catalog_disagreement_count"] == 0
    assert report["error"] is None
    (stream,) = report["streams"]
    assert stream == {
        "stream_id": 5,
        "ok": True,
        "records_verified": 4,
        "head": stream["head"],
        "error": None,
        "isolated": [],
        "catalog_disagreements": [],
        "catalog_disagreement_count": 0,
    }


def test_verify_reports_damage_with_exit_code_3(populated: Path) -> None:
    flip_byte(segment_path(populated, 5, 0), 106)  # inside the first record's payload (bytes 104..108)
    code, out, _ = run("verify", str(populated), "--json")
    assert code == EXIT_DAMAGE
    (stream,) = json.loads(out)["streams"]
    assert stream["ok"] is False
    assert stream["error"]["offset"] == 0
    assert stream["error"]["position"] == 0
    assert stream["error"]["segment"].endswith("00000000000000000000.seg")
    assert "hybridlog repair" in stream["error"]["hint"]
    code, out, err = run("verify", str(populated))
    assert code == EXIT_DAMAGE
    assert "DAMAGED" in out
    assert "Traceback" not in out + err


def test_sql_outputs(populated: Path) -> None:
    query = "SELECT stream_id, event_count, checkpoint_count FROM streams"
    code, out, _ = run("sql", str(populated), query, "--output", "json")
    assert code == 0
    assert json.loads(out) == [{"stream_id": 5, "event_count": 3, "checkpoint_count": 1}]
    code, out, _ = run("sql", str(populated), query, "--output", "csv")
    assert out.splitlines() == ["stream_id,event_count,checkpoint_count", "5,3,1"]
    code, out, _ = run("sql", str(populated), query)
    assert out.splitlines()[0].split() == ["stream_id", "event_count", "checkpoint_count"]
    assert out.splitlines()[2].split() == ["5", "3", "1"]


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM records",
        "DROP TABLE streams",
        "UPDATE streams SET next_offset = 0",
        "ATTACH DATABASE 'other.db' AS other",
        "PRAGMA writable_schema = 1",
        "CREATE TABLE x (a)",
    ],
)
def test_sql_cannot_change_the_catalog(populated: Path, statement: str) -> None:
    before = run("sql", str(populated), "SELECT * FROM records", "--output", "json")[1]
    code, _, err = run("sql", str(populated), statement)
    assert code == EXIT_ERROR
    assert "refused" in err
    assert run("sql", str(populated), "SELECT * FROM records", "--output", "json")[1] == before
    assert not (populated / "other.db").exists()


def test_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    code, _, err = run("read", str(tmp_path / "missing"))
    assert code == EXIT_ERROR
    assert "no store at" in err
    assert "Traceback" not in err
    code, _, err = run("sql", str(tmp_path), "SELECT 1")
    assert code == EXIT_ERROR
    assert "no store at" in err  # an empty directory is not a store


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert run("read", str(tmp_path), "--stream", "-1")[0] == EXIT_USAGE
    assert run("no-such-command")[0] == EXIT_USAGE


def test_store_from_environment(populated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYBRIDLOG_STORE", str(populated))
    code, out, _ = run("read", "--stream", "5", "--limit", "1")
    assert code == 0
    assert out.splitlines() == ["alpha"]


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    code, out, err = run("demo", str(tmp_path / "demo"))
    assert code == 0, err
    assert "appended 40 events to stream 7, and 10 checkpoint records" in out  # why 40 events make 50 offsets
    assert "a checkpoint takes an offset too): next offset 50" in out
    assert "verify from genesis: ok, 50 records" in out
    assert "stream_id" in out
    with Storage(tmp_path / "demo", read_only=True) as s:
        assert len(genesis_events(s, 7)) == 40


def test_demo_runs_again_on_its_own_store(tmp_path: Path) -> None:
    """A second ``demo STORE`` appends at the stream's head instead of failing with a library hint."""
    assert run("demo", str(tmp_path / "demo"))[0] == 0
    code, out, err = run("demo", str(tmp_path / "demo"))
    assert code == 0, err
    assert "next offset 100" in out
    assert "verify from genesis: ok, 100 records" in out
    with Storage(tmp_path / "demo", read_only=True) as s:
        assert len(genesis_events(s, 7)) == 80


def test_the_progress_bar_is_drawn_at_most_every_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    """Counting a million records one by one draws the bar a handful of times, and the total is exact."""
    drawn: list[int] = []

    class Bar:
        def __enter__(self) -> Bar:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def update(self, n: int) -> None:
            drawn.append(n)

    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    monkeypatch.setattr(click, "progressbar", lambda **_kwargs: Bar())
    ticks = iter(range(10**7))
    with cli_module.progress_bar("verifying", 10**6, clock=lambda: next(ticks) * 1e-6) as advance:  # 1 us a record
        for _ in range(10**6):
            advance(1)
    assert sum(drawn) == 10**6
    assert len(drawn) <= 1 + 10**6 * 1e-6 / cli_module.PROGRESS_INTERVAL_S  # one draw per interval, plus the last


# --- read --since / --until ------------------------------------------------------------------------

T0 = 1_700_000_000 * 1_000_000_000  # 2023-11-14T22:13:20Z
SECOND = 1_000_000_000


@pytest.fixture
def timed(tmp_path: Path) -> Path:
    """Stream 3: e0 at T0, e1 at T0+1s, e2 at T0+1s+1ns, e3 (and the on-close checkpoint) at T0+1h."""
    times = iter([T0, T0 + SECOND, T0 + SECOND + 1, T0 + 3600 * SECOND])
    now = [T0]

    def clock() -> int:
        return now[0]

    store = tmp_path / "timed"
    with Storage(store, clock=clock) as storage:
        for i in range(4):
            now[0] = next(times)
            storage.append(3, [f"e{i}".encode()])
    return store


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--since", "2023-11-14T22:13:21Z"], ["e1", "e2", "e3"]),
        (["--since", "2023-11-14T22:13:21"], ["e1", "e2", "e3"]),  # no offset: UTC
        (["--since", "2023-11-14T23:13:21+01:00"], ["e1", "e2", "e3"]),
        (["--since", "2023-11-14T22:13:21.000000001Z"], ["e2", "e3"]),  # nanoseconds kept
        (["--since", "2023-11-14T22:13:21,5Z"], ["e3"]),
        (["--until", "2023-11-14T22:13:21Z"], ["e0"]),  # until is exclusive
        (["--since", "2023-11-14T22:13:20Z", "--until", "2023-11-14T22:13:20Z"], []),
        (["--since", "2023-11-14", "--until", "2023-11-15"], ["e0", "e1", "e2", "e3"]),  # dates: midnight UTC
        (["--since", "2023-11-14T22:13:21Z", "--until", "2023-11-14T23:00:00Z"], ["e1", "e2"]),
        (["--since", "2023-11-14T22:13:21Z", "--from", "2"], ["e2", "e3"]),  # the later start wins
        (["--since", "2023-11-14T22:13:21Z", "--limit", "1"], ["e1"]),
        (["--since", "2023-11-15"], []),  # after the last
        (["--until", "2023-11-14"], []),  # before the first
    ],
)
def test_read_since_until(timed: Path, args: list[str], expected: list[str]) -> None:
    code, out, err = run("read", str(timed), "--stream", "3", *args)
    assert code == 0, err
    assert out.splitlines() == expected


def test_read_since_until_with_records_shows_checkpoints_in_the_window(timed: Path) -> None:
    code, out, _ = run("read", str(timed), "--stream", "3", "--records", "--since", "2023-11-14T23:00:00Z")
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert [(r["offset"], r["kind"], r["timestamp_ns"]) for r in records] == [
        (3, "event", T0 + 3600 * SECOND),
        (4, "checkpoint", T0 + 3600 * SECOND),
    ]


@pytest.mark.parametrize(
    "args",
    [
        ["--since", "yesterday"],
        ["--until", "2023-13-01"],
        ["--since", "2023-11-14T22:13:21.0000000001Z"],  # finer than nanoseconds
        ["--since", "2023-11-15", "--until", "2023-11-14"],  # since after until
    ],
)
def test_read_with_a_bad_time_is_a_usage_error(timed: Path, args: list[str]) -> None:
    code, out, err = run("read", str(timed), "--stream", "3", *args)
    assert code == EXIT_USAGE
    assert out == ""
    assert ("--since" in err) or ("--until" in err)
    assert "Traceback" not in err


def schema_doc_examples() -> list[str]:
    """Every statement in the ```sql blocks of docs/schema.md."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "schema.md").read_text(encoding="utf-8")
    blocks = [b.split("```", 1)[0] for b in text.split("```sql")[1:]]
    statements = []
    for block in blocks:
        code = "\n".join(line for line in block.splitlines() if not line.lstrip().startswith("--"))
        statements += [s.strip() for s in code.split(";") if s.strip()]
    return statements


def test_schema_doc_examples_run(timed: Path) -> None:
    examples = schema_doc_examples()
    assert len(examples) >= 7
    for statement in examples:
        code, out, err = run("sql", str(timed), statement.replace("stream_id = 7", "stream_id = 3"), "--output", "json")
        assert code == 0, (statement, err)
        assert isinstance(json.loads(out), list)
    code, out, _ = run(
        "sql",
        str(timed),
        "SELECT global_position, stream_id, offset FROM records ORDER BY global_position DESC LIMIT 2",
    )
    assert [line.split() for line in out.splitlines()[2:]] == [["5", "3", "4"], ["4", "3", "3"]]


# --- append: what was committed, in every ending ---------------------------------------------------


def test_append_reports_the_head_the_store_has_after_it_exits(tmp_path: Path) -> None:
    """No checkpoint is written when the command ends: five one-line appends make five records, and
    each --json report is the stream's head as the next reader sees it."""
    store = tmp_path / "store"
    for i in range(5):
        code, out, err = run("append", str(store), "--stream", "3", "--json", stdin=b"line %d\n" % i)
        assert code == 0, err
        report = json.loads(out)
        with Storage(store, read_only=True) as reader:
            assert (report["next_offset"], report["head"]) == (
                reader.next_offset(3),
                reader.latest_chain_hash(3).hex(),  # type: ignore[union-attr]
            )
    with Storage(store, read_only=True) as reader:
        assert reader.next_offset(3) == 5
        assert genesis_events(reader, 3) == [b"line %d" % i for i in range(5)]
    code, out, _ = run("append", str(store), "--stream", "3", stdin=b"x\n")
    assert out.strip() == "appended 1 event to stream 3; next offset 6"


def test_an_oversized_line_is_named_with_what_was_committed_before_it(tmp_path: Path) -> None:
    store = tmp_path / "store"
    big = b"x" * (MAX_EVENT_SIZE + 1)
    code, out, err = run("append", str(store), "--stream", "0", stdin=b"a\nb\nc\n" + big + b"\nd\n")
    assert code == EXIT_ERROR
    assert out == ""
    [line] = err.strip().splitlines()
    assert f"line 4 is {MAX_EVENT_SIZE + 1:,} bytes, more than an event may hold ({MAX_EVENT_SIZE:,})" in line
    assert "3 events (lines 1-3) appended to stream 0, next offset 3; nothing from line 4 on" in line
    with Storage(store, read_only=True) as reader:
        assert genesis_events(reader, 0) == [b"a", b"b", b"c"]


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def committed(store: Path, stream_id: int) -> int:
    if not (store / "catalog.db").exists():
        return 0
    with Storage(store, read_only=True) as reader:
        return reader.next_offset(stream_id)


def test_slow_live_input_is_committed_as_it_comes_and_ctrl_c_says_what_was(tmp_path: Path) -> None:
    """A real ``hybridlog append`` reading a pipe: each line is committed within the flush interval
    without waiting for more input or its end; Ctrl-C then exits 130 with one line saying exactly
    what was committed."""
    store = tmp_path / "store"
    child = subprocess.Popen(
        [sys.executable, "-m", "hybridlog", "append", str(store), "--stream", "1", "--flush-interval", "0.05"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert child.stdin is not None
    try:
        for i in range(1, 4):
            child.stdin.write(b"event %d\n" % i)
            child.stdin.flush()
            wait_for(lambda i=i: committed(store, 1) == i, f"line {i} to be committed")  # type: ignore[misc]
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == EXIT_INTERRUPTED, err
    assert out == b""
    assert err.decode().strip().splitlines() == [
        "Error: interrupted: 3 events (lines 1-3) appended to stream 1, next offset 3; the lines read after"
        " them were not"
    ]
    with Storage(store, read_only=True) as reader:
        assert genesis_events(reader, 1) == [b"event 1", b"event 2", b"event 3"]
