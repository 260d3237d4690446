"""What the reporting commands print: one payload encoding in `read`, `tail` and `sql`; `--json`
on every command that reports something, always one object (or JSON Lines of objects) in one
vocabulary; and `tail`'s start-at-the-beginning and exit-when-caught-up options.

The CLI runs through click's CliRunner against real stores on disk.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from hybridlog import CheckpointPolicy, Storage
from hybridlog.cli import cli
from hybridlog.output import json_value, text_value

# Stream 1: ASCII, bytes that are not UTF-8, the text a lossy decoding of them would print
# (backslash, x, f, f), UTF-8 beyond ASCII, empty. Stream 2 is appended in between, so global
# order interleaves the streams.
PAYLOADS = [b"a", b"c\xff", b"c\\xff", "caf\u00e9".encode(), b""]
OTHER = [b"two-0", b"two-1"]


def run(*args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), input=stdin)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    with Storage(path, checkpoint_policy=CheckpointPolicy.explicit()) as writer:
        writer.append(1, PAYLOADS[:2])
        writer.append(2, OTHER[:1])
        writer.append(1, PAYLOADS[2:])
        writer.append(2, OTHER[1:])
        writer.create_checkpoint(1, 5, writer.latest_chain_hash(1), 5)
    return path


def lines(out: str) -> list[str]:
    return out.split("\n")[:-1]


def json_lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines(out)]


# --- one payload encoding ------------------------------------------------------------------------


def test_bytes_that_are_not_utf8_and_text_that_spells_them_print_differently(store: Path) -> None:
    code, out, err = run("read", str(store), "--stream", "1")
    assert code == 0, err
    shown = lines(out)
    assert shown == [text_value(p) for p in PAYLOADS]
    assert shown[1] == '{"$base64": true, "encoded": "Y/8="}'
    assert shown[2] == "c\\xff"
    assert shown[3] == "caf\u00e9"


def test_every_command_prints_a_payload_the_same_way(store: Path) -> None:
    """Text lines: `read` and `tail`; JSON values: `read --json`, `read --records`, `tail --json`,
    `tail --records` and `sql --nl`. A payload is its UTF-8 text, else the `$base64` object."""
    text = [text_value(p) for p in PAYLOADS]
    values = [json_value(p) for p in PAYLOADS]
    assert (
        run("read", str(store), "--stream", "1")[1]
        == run("tail", str(store), "--stream", "1", "--from-beginning", "-e")[1]
    )
    assert lines(run("tail", str(store), "--stream", "1", "--from-beginning", "-e")[1]) == text

    def payloads(*args: str) -> list[object]:
        code, out, err = run(*args)
        assert code == 0, err
        return [r["payload"] for r in json_lines(out) if r.get("kind", "event") == "event"]

    assert payloads("read", str(store), "--stream", "1", "--json") == values
    assert payloads("read", str(store), "--stream", "1", "--records") == values
    assert payloads("tail", str(store), "--stream", "1", "--from-beginning", "-e", "--json") == values
    assert payloads("tail", str(store), "--stream", "1", "--from-beginning", "-e", "--records") == values
    query = "SELECT payload FROM events WHERE stream_id = 1 AND kind = 'event' ORDER BY offset"
    assert payloads("sql", str(store), query, "--nl") == values
    code, out, _ = run("sql", str(store), query, "--csv")
    assert code == 0
    assert [row[0] for row in csv.reader(io.StringIO(out))][1:] == text  # a CSV cell holds the text line


def test_read_json_is_one_object_per_event_in_the_shared_vocabulary(store: Path) -> None:
    code, out, err = run("read", str(store), "--stream", "1", "--json")
    assert code == 0, err
    rows = json_lines(out)
    assert [r["offset"] for r in rows] == [0, 1, 2, 3, 4]  # events only: the checkpoint at 5 is left out
    assert list(rows[0]) == ["stream_id", "offset", "kind", "timestamp_ns", "prev_hash", "hash", "payload"]
    assert {r["stream_id"] for r in rows} == {1}
    assert all(later["prev_hash"] == earlier["hash"] for earlier, later in itertools.pairwise(rows))
    code, out, _ = run("read", str(store), "--stream", "1", "--records", "--limit", "6")
    assert [r["kind"] for r in json_lines(out)] == ["event"] * 5 + ["checkpoint"]


# --- tail: from the beginning, exit when caught up ------------------------------------------------


def test_tail_from_the_beginning_prints_everything_in_global_order_and_exits_when_caught_up(store: Path) -> None:
    code, out, err = run("tail", str(store), "--from-beginning", "--exit-when-caught-up", "--json")
    assert code == 0, err
    rows = json_lines(out)
    assert [(r["stream_id"], r["offset"]) for r in rows] == [(1, 0), (1, 1), (2, 0), (1, 2), (1, 3), (1, 4), (2, 1)]
    assert [r["global_position"] for r in rows] == sorted(r["global_position"] for r in rows)
    assert [r["payload"] for r in rows] == [json_value(p) for p in [*PAYLOADS[:2], OTHER[0], *PAYLOADS[2:], OTHER[1]]]
    # the same with the store's own positions: --from-beginning is --from-position 1
    assert run("tail", str(store), "--from-position", "1", "-e", "--json")[1] == out
    # one stream, and --count still stops first
    code, out, _ = run("tail", str(store), "--stream", "2", "--from-beginning", "-e")
    assert (code, lines(out)) == (0, ["two-0", "two-1"])
    code, out, _ = run("tail", str(store), "--from-beginning", "-e", "--count", "2")
    assert (code, lines(out)) == (0, ["a", text_value(b"c\xff")])


def test_tail_exit_when_caught_up_at_the_end_prints_nothing_and_exits(store: Path) -> None:
    """Without a start option tail starts at the end: caught up at once."""
    assert run("tail", str(store), "-e") == (0, "", "")


def test_a_consumer_tailing_until_caught_up_resumes_where_it_stopped(store: Path) -> None:
    code, out, _ = run("tail", str(store), "--consumer", "audit", "-e", "--count", "3")
    assert (code, lines(out)) == (0, ["a", text_value(b"c\xff"), "two-0"])
    with Storage(store, checkpoint_policy=CheckpointPolicy.explicit()) as writer:
        writer.append(2, [b"two-2"])
    code, out, _ = run("tail", str(store), "--consumer", "audit", "-e")
    assert (code, lines(out)) == (0, ["c\\xff", "caf\u00e9", "", "two-1", "two-2"])
    assert run("tail", str(store), "--consumer", "audit", "-e") == (0, "", "")


def test_tail_refuses_two_starts(store: Path) -> None:
    code, _, err = run("tail", str(store), "--from-beginning", "--from-position", "3")
    assert code == 2
    assert "--from-position or --from-beginning" in err


def test_a_subscription_that_stops_when_caught_up_ends_after_the_last_commit(store: Path) -> None:
    with Storage(store, checkpoint_policy=CheckpointPolicy.explicit()) as writer:
        seen = [(r.record.stream_id, r.record.offset) for r in writer.subscribe(stop_when_caught_up=True)]
        assert seen == [(1, 0), (1, 1), (2, 0), (1, 2), (1, 3), (1, 4), (2, 1), (1, 5)]
        writer.append(2, [b"two-2"])
        later = writer.subscribe(2, from_offset=2, stop_when_caught_up=True)
        assert [r.record.payload for r in later] == [b"two-2"]


# --- --json everywhere: objects, one vocabulary ---------------------------------------------------


def test_init_json_says_whether_it_created_the_store(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "store"
    code, out, err = run("init", str(path), "--json")
    assert code == 0, err
    assert json.loads(out) == {"store": str(path.absolute()), "created": True}
    assert json.loads(run("init", str(path), "--json")[1]) == {"store": str(path.absolute()), "created": False}


def test_demo_json_gives_the_demos_numbers(tmp_path: Path) -> None:
    path = tmp_path / "demo"
    code, out, err = run("demo", str(path), "--json")
    assert code == 0, err
    first = json.loads(out)
    # 40 events and a checkpoint after every 4 of them: 50 offsets
    assert {k: first[k] for k in ("stream_id", "appended", "checkpoints", "next_offset", "ok")} == {
        "stream_id": 7,
        "appended": 40,
        "checkpoints": 10,
        "next_offset": 50,
        "ok": True,
    }
    again = json.loads(run("demo", str(path), "--json")[1])
    assert (again["next_offset"], again["records_verified"]) == (100, 100)
    with Storage(path, read_only=True) as reader:
        head = reader.latest_chain_hash(7)
        assert head is not None
        assert head.hex() == again["head"]


STREAM_KEYS_ELSEWHERE = {"stream", "sid", "stream_no", "pos", "global_pos", "position_global"}


def keys_of(value: object) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in keys_of(v)}
    if isinstance(value, list):
        return {k for v in value for k in keys_of(v)}
    return set()


def test_every_reporting_command_prints_one_json_object_in_one_vocabulary(store: Path, tmp_path: Path) -> None:
    commands = [
        ["init", str(tmp_path / "new")],
        ["append", str(store), "--stream", "3"],
        ["verify", str(store)],
        ["check", str(store)],
        ["repair", str(store), "--dry-run"],
        ["stats", str(store)],
        ["checkpoint", str(store)],
        ["rebuild-index", str(store), "--stream", "1"],
        ["rebuild-index", str(store)],
        ["migrate", str(store), "--check"],
        ["demo", str(tmp_path / "demo")],
    ]
    for args in commands:
        code, out, err = run(*args, "--json", stdin=b"x\n" if args[0] == "append" else None)
        assert code == 0, (args, err)
        printed = json.loads(out)
        assert isinstance(printed, dict), args
        assert not keys_of(printed) & STREAM_KEYS_ELSEWHERE, args
