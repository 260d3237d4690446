"""The admin commands of `hybridlog`: check, repair, rebuild-index, checkpoint, stats, migrate, tail.

Contracts tested here (tests/test_cli.py covers init, append, read, verify, sql output and demo):

* ``check`` changes nothing, exits 0 on a clean store and 3 on damage, and each finding names the
  stream, offset, segment file and byte position (the same place ``verify`` names); ``--json``
  holds the findings and the plan;
* ``repair --dry-run`` (exit 3 when it has a plan, as ``check``) and a declined ``repair`` leave
  every byte of the store as it was;
  ``repair --yes`` applies the plan, keeps the cut bytes in a quarantine file, and exits 0 when
  the store checks clean afterwards;
* ``rebuild-index`` rebuilds the whole catalog (keeping the old file aside) or one stream's rows;
* ``checkpoint`` writes a checkpoint record that ``read --records`` shows; ``stats`` reports sizes
  and a compression ratio; ``migrate`` upgrades a schema-version-1 catalog with the data intact;
* ``tail`` (a real subprocess beside a writer) prints exactly the events committed after it starts;
  without ``--stream`` it follows every stream in global order (``--records``: JSON Lines with
  ``global_position``); with ``--consumer`` it acknowledges each record it printed and resumes after it;
* ``sql`` cannot change the catalog by any statement;
* every error is one line on stderr, no traceback, with the documented exit code; progress bars
  appear on a terminal only.

The damage is real: bytes are flipped in segment files and catalogs are edited with apsw.
"""

from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import sys
import time
from pathlib import Path

import apsw
import pytest
from click.testing import CliRunner

from hybridlog import CheckpointPolicy, CompressionKind, RecordIsolated, RecordKind, Storage
from hybridlog.catalog_rows import SCHEMA_VERSION
from hybridlog.cli import EXIT_DAMAGE, EXIT_ERROR, EXIT_USAGE, cli
from hybridlog.layout import CATALOG_FILE, QUARANTINE_SUFFIX, segment_path, stream_path
from hybridlog.record import HEADER_SIZE
from hybridlog.sql import query_catalog
from hybridlog.testing.clocks import make_clock
from hybridlog.testing.damage import genesis_events

DAMAGED = 1
HEALTHY = 2
DAMAGED_BATCHES = [[b"a0", b"a1"], [b"a2", b"a3"], [b"a4", b"a5"]]
HEALTHY_BATCHES = [[b"b0", b"b1"]]
ALL_COMMANDS = (
    "init",
    "append",
    "read",
    "tail",
    "verify",
    "check",
    "repair",
    "rebuild-index",
    "checkpoint",
    "stats",
    "sql",
    "migrate",
    "demo",
)


# --- helpers -------------------------------------------------------------------------------------------


def run(*args: str, stdin: bytes | str | None = None) -> tuple[int, str, str]:
    """Invoke the CLI in-process: (exit code, stdout, stderr)."""
    result = CliRunner().invoke(cli, list(args), input=stdin)
    return result.exit_code, result.stdout, result.stderr


def hybridlog_process(*args: str, stdin: int | None = None, stderr: int = subprocess.PIPE) -> subprocess.Popen[bytes]:
    """``python -m hybridlog ARGS`` in a real child process; stdout piped, stderr piped unless given (an fd)."""
    command = [sys.executable, "-m", "hybridlog", *args]
    return subprocess.Popen(command, stdin=stdin, stdout=subprocess.PIPE, stderr=stderr)


def one_error_line(err: str) -> str:
    """The CLI's error contract: exactly one line on stderr, no traceback. Returns the line."""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got: {err!r}"
    return lines[0]


def writer(path: Path, compression: CompressionKind = CompressionKind.NONE) -> Storage:
    """A writer that writes no checkpoints of its own, so offsets are exactly the events appended."""
    return Storage(path, checkpoint_policy=CheckpointPolicy.explicit(), compression=compression, clock=make_clock())


def build_store(path: Path, streams: dict[int, list[list[bytes]]]) -> None:
    """A store holding ``streams``: stream id -> batches, each appended as one atomic batch."""
    with writer(path) as storage:
        for sid, batches in streams.items():
            for batch in batches:
                storage.append(sid, batch)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """Two streams: DAMAGED (three batches of two events) and HEALTHY (one batch); nothing damaged yet."""
    path = tmp_path / "store"
    build_store(path, {DAMAGED: DAMAGED_BATCHES, HEALTHY: HEALTHY_BATCHES})
    return path


def record_location(store: Path, stream_id: int, offset: int) -> tuple[Path, int]:
    """(segment file, byte position) of one record, from the catalog's offset index."""
    result = query_catalog(
        store, "SELECT segment_no, position FROM records WHERE stream_id = ? AND offset = ?", (stream_id, offset)
    )
    ((segment_no, position),) = result.rows
    assert isinstance(segment_no, int)
    assert isinstance(position, int)
    return segment_path(store, stream_id, segment_no), position


def flip_byte(path: Path, position: int) -> None:
    """XOR one byte of ``path`` in place."""
    data = bytearray(path.read_bytes())
    data[position] ^= 0x40
    path.write_bytes(bytes(data))


def damage_payload(store: Path, stream_id: int, offset: int) -> tuple[Path, int]:
    """Flip the first payload byte of the record at ``offset``; returns (segment, record position)."""
    segment, position = record_location(store, stream_id, offset)
    flip_byte(segment, position + HEADER_SIZE)
    return segment, position


def add_unacknowledged_torn_tail(store: Path, stream_id: int) -> Path:
    """Append the first half of a copy of the stream's last record to its segment: a write that a crash
    cut short before the catalog commit (the catalog never knew it). Returns the segment."""
    (segment_no, position, length), *_ = query_catalog(
        store,
        "SELECT segment_no, position, length FROM records WHERE stream_id = ? ORDER BY offset DESC LIMIT 1",
        (stream_id,),
    ).rows
    assert isinstance(segment_no, int)
    assert isinstance(position, int)
    assert isinstance(length, int)
    segment = segment_path(store, stream_id, segment_no)
    data = segment.read_bytes()
    segment.write_bytes(data + data[position : position + length // 2])
    return segment


def store_bytes(store: Path) -> dict[str, bytes]:
    """Every file of the store and its bytes.

    Left out: SQLite's ``-shm`` file (the WAL index, which even a read-only connection writes its
    read marks to) and an empty ``-wal`` file (a read-only open may create one); neither holds data.
    """
    files = {}
    for path in sorted(store.rglob("*")):
        if not path.is_file() or path.name.endswith("-shm"):
            continue
        data = path.read_bytes()
        if path.name.endswith("-wal") and not data:
            continue
        files[str(path.relative_to(store))] = data
    return files


def catalog_dump(store: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every catalog table, plus the schema version, through the read-only SQL path."""
    tables = [
        str(name)
        for (name,) in query_catalog(store, "SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name").rows
    ]
    dump: dict[str, list[tuple[object, ...]]] = {
        table: list(query_catalog(store, f"SELECT * FROM {table}").rows)  # noqa: S608 (names from sqlite_schema)
        for table in tables
    }
    dump["user_version"] = list(query_catalog(store, "PRAGMA user_version").rows)
    return dump


def read_events(store: Path, stream_id: int) -> list[bytes]:
    with Storage(store, read_only=True) as reader:
        return genesis_events(reader, stream_id)


def quarantine_files(store: Path, stream_id: int) -> list[Path]:
    return sorted(stream_path(store, stream_id).glob(f"*{QUARANTINE_SUFFIX}"))


# --- check ---------------------------------------------------------------------------------------------


def test_check_clean_store_exits_0_and_changes_nothing(store: Path) -> None:
    before = store_bytes(store)
    code, out, err = run("check", str(store))
    assert code == 0, err
    assert "ok: 2 streams, 8 records verified" in out
    code, out, _ = run("check", str(store), "--json")
    assert code == 0
    assert json.loads(out) == {"ok": True, "streams_checked": 2, "records_verified": 8, "findings": [], "plan": []}
    assert store_bytes(store) == before


def test_check_reports_damage_with_exit_3_naming_the_place(store: Path) -> None:
    segment, position = damage_payload(store, DAMAGED, 2)  # the first record of the second batch
    before = store_bytes(store)
    code, out, err = run("check", str(store))
    assert code == EXIT_DAMAGE
    assert "Traceback" not in out + err
    line = next(line for line in out.splitlines() if "damaged_record" in line)
    assert line.startswith(f"stream {DAMAGED}: damaged_record:")
    assert f"offset 2, segment {segment}, byte {position}" in line
    assert "-> repair: isolate" in line
    assert f"isolate stream {DAMAGED}" in out  # the plan
    assert f"isolates offsets 2 (1 damaged record, bytes kept in place in segment 0 from byte {position})" in out
    assert "PROBLEMS FOUND" in err
    assert store_bytes(store) == before


def test_check_json_shape_holds_findings_and_plan(store: Path) -> None:
    segment, position = damage_payload(store, DAMAGED, 2)
    code, out, _ = run("check", str(store), "--json")
    assert code == EXIT_DAMAGE
    report = json.loads(out)
    assert set(report) == {"ok", "streams_checked", "records_verified", "findings", "plan"}
    assert report["ok"] is False
    assert report["streams_checked"] == 2
    # every record but the damaged one: check steps over damage and verifies the records after it
    total = sum(len(b) for b in HEALTHY_BATCHES) + sum(len(b) for b in DAMAGED_BATCHES)
    assert report["records_verified"] == total - 1
    damaged = [f for f in report["findings"] if f["problem"] == "damaged_record"]
    assert damaged == [
        {
            "stream_id": DAMAGED,
            "problem": "damaged_record",
            "message": damaged[0]["message"],
            "repair": "isolate",
            "offset": 2,
            "segment": str(segment),
            "position": position,
        }
    ]
    assert "record hash does not match" in damaged[0]["message"]
    assert all(f["stream_id"] == DAMAGED for f in report["findings"])
    assert report["plan"] == [isolate_step(damaged[0]["message"], position)]


def isolate_step(reason: str, position: int) -> dict[str, object]:
    """The plan step (as JSON) that isolates the damaged record at offset 2 of ``DAMAGED``."""
    return {
        "repair": "isolate",
        "stream_id": DAMAGED,
        "reason": reason,
        "effect": f"isolates offsets 2 (1 damaged record, bytes kept in place in segment 0 from byte {position});"
        " keeps the 3 verifying records after the damage readable",
        "effects": {
            "stream_id": DAMAGED,
            "truncate": False,
            "isolates": [{"first_offset": 2, "next_offset": 3, "records": 1, "segment_no": 0, "start_byte": position}],
            "kept_after": 3,
            "resealed_dictionary": None,
            "cut": None,
        },
    }


def test_check_finding_offset_is_the_damaged_records_offset(store: Path) -> None:
    """A finding's offset and byte position name the same record, the one ``verify`` names.

    The damage is in the second record of a batch, so the batch's first offset is not the answer.
    """
    segment, position = damage_payload(store, DAMAGED, 3)
    code, out, _ = run("verify", str(store), "--json")
    assert code == EXIT_DAMAGE
    (verdict,) = [s for s in json.loads(out)["streams"] if s["stream_id"] == DAMAGED]
    assert (verdict["error"]["offset"], verdict["error"]["position"]) == (3, position)
    code, out, _ = run("check", str(store), "--json")
    assert code == EXIT_DAMAGE
    (finding,) = [f for f in json.loads(out)["findings"] if f["problem"] == "damaged_record"]
    assert (finding["segment"], finding["position"]) == (str(segment), position)
    assert finding["offset"] == 3, "the finding names byte position of offset 3 but a different offset"


def test_check_of_other_streams_is_clean(store: Path) -> None:
    damage_payload(store, DAMAGED, 2)
    code, out, _ = run("check", str(store), "--stream", str(HEALTHY), "--json")
    assert code == 0
    report = json.loads(out)
    assert report["streams_checked"] == 1
    assert report["findings"] == []


# --- repair --------------------------------------------------------------------------------------------


def test_repair_dry_run_shows_the_plan_and_changes_nothing(store: Path) -> None:
    _, position = damage_payload(store, DAMAGED, 2)
    before, dump = store_bytes(store), catalog_dump(store)
    code, out, err = run("repair", str(store), "--dry-run")
    assert code == EXIT_DAMAGE, err  # like `check`: there is something to repair
    assert "`hybridlog repair` without --dry-run applies the plan" in one_error_line(err)
    step = isolate_step("damaged record (record hash does not match its contents)", position)
    assert out.splitlines() == [
        "repair plan:",
        f"  isolate stream {DAMAGED}  (damaged record (record hash does not match its contents))",
        f"    {step['effect']}",
    ]
    code, out, _ = run("repair", str(store), "--dry-run", "--json")
    assert code == EXIT_DAMAGE
    assert json.loads(out) == {"plan": [step], "applied": []}
    code, out, _ = run("repair", str(store), "--dry-run", "--truncate")
    assert code == EXIT_DAMAGE
    assert out.splitlines() == [
        "repair plan:",
        f"  truncate stream {DAMAGED}  (damaged record (record hash does not match its contents))",
        "    cuts offsets 2..5: 4 committed records, 3 of them still verifying, 456 bytes, to"
        " 00000000000000000000.seg.00000000000000000228.quarantine; a cut marker takes offset 6: offsets 2..5 are"
        " never used again",
    ]
    assert store_bytes(store) == before
    assert catalog_dump(store) == dump


def test_repair_asks_and_no_leaves_everything_unchanged(store: Path) -> None:
    damage_payload(store, DAMAGED, 2)
    before, dump = store_bytes(store), catalog_dump(store)
    code, out, err = run("repair", str(store), stdin="n\n")
    assert code == EXIT_ERROR
    assert "apply this plan?" in err
    assert "not applied" in err
    assert f"isolate stream {DAMAGED}" in out
    assert "Traceback" not in out + err
    assert store_bytes(store) == before
    assert catalog_dump(store) == dump
    assert quarantine_files(store, DAMAGED) == []


def test_declined_repair_does_not_cut_an_unacknowledged_torn_tail(store: Path) -> None:
    """Answering 'n' changes nothing, even where open-time recovery would cut something.

    ``check`` and ``repair --dry-run`` show a torn tail and a plan to cut it; a ``repair`` that is
    declined must leave those bytes where they are, like every other declined repair.
    """
    segment = add_unacknowledged_torn_tail(store, HEALTHY)
    code, out, _ = run("repair", str(store), "--dry-run")
    assert code == EXIT_DAMAGE
    assert f"reindex stream {HEALTHY}" in out
    before, dump = store_bytes(store), catalog_dump(store)
    code, out, err = run("repair", str(store), stdin="n\n")
    assert store_bytes(store) == before, "a declined repair changed the store"
    assert catalog_dump(store) == dump
    assert quarantine_files(store, HEALTHY) == []
    assert code == EXIT_ERROR
    assert "not applied" in err
    assert segment.exists()


def events_around(store: Path, stream_id: int, damaged: int) -> tuple[list[bytes], list[bytes]]:
    """The events before the isolated offset ``damaged`` (a read from genesis stops there with
    RecordIsolated) and the events after it."""
    before: list[bytes] = []
    with Storage(store, read_only=True) as reader:
        with pytest.raises(RecordIsolated):
            before.extend(r.payload for r in reader.iter_records(stream_id, 0) if r.kind is RecordKind.EVENT)
        after = [r.payload for r in reader.iter_records(stream_id, damaged + 1) if r.kind is RecordKind.EVENT]
        with pytest.raises(RecordIsolated):
            reader.read_from(stream_id, damaged, 100)
    return before, after


def test_repair_yes_isolates_and_keeps_every_verifying_record(store: Path) -> None:
    segment, _ = damage_payload(store, DAMAGED, 2)
    size = segment.stat().st_size
    code, out, err = run("repair", str(store), "--yes")
    assert code == 0, err
    assert "repaired; the store checks clean" in out
    assert f"stream {DAMAGED}: isolated" in out
    # every event but the damaged one reads back; nothing was cut, only the marker appended
    assert events_around(store, DAMAGED, 2) == ([b"a0", b"a1"], [b"a3", b"a4", b"a5"])
    assert read_events(store, HEALTHY) == HEALTHY_BATCHES[0]
    assert quarantine_files(store, DAMAGED) == []
    assert segment.stat().st_size > size
    assert run("check", str(store))[0] == 0
    code, out, _ = run("sql", str(store), "SELECT action FROM recovery_log WHERE stream_id = 1", "--output", "json")
    assert {"action": "isolated"} in json.loads(out)


def test_repair_truncate_cuts_and_keeps_the_cut_bytes(store: Path) -> None:
    segment, position = damage_payload(store, DAMAGED, 2)
    damaged_tail = segment.read_bytes()[position:]
    code, out, err = run("repair", str(store), "--yes", "--truncate")
    assert code == 0, err
    assert "repaired; the store checks clean" in out
    assert f"stream {DAMAGED}: truncated" in out
    # exactly the valid prefix remains (then the cut marker); the other stream is untouched
    assert read_events(store, DAMAGED) == DAMAGED_BATCHES[0]
    assert read_events(store, HEALTHY) == HEALTHY_BATCHES[0]
    (kept,) = quarantine_files(store, DAMAGED)
    assert kept.read_bytes() == damaged_tail
    assert run("check", str(store))[0] == 0
    assert run("verify", str(store))[0] == 0
    code, out, _ = run("sql", str(store), "SELECT action FROM recovery_log WHERE stream_id = 1", "--output", "json")
    assert {"action": "truncated"} in json.loads(out)
    with Storage(store) as writer:
        assert writer.append(DAMAGED, [b"next"])[0] == len(DAMAGED_BATCHES) * 2 + 2  # after the cut marker


def test_repair_confirmed_with_y_applies(store: Path) -> None:
    damage_payload(store, DAMAGED, 4)
    code, _, err = run("repair", str(store), stdin="y\n")
    assert code == 0, err
    assert events_around(store, DAMAGED, 4) == ([b"a0", b"a1", b"a2", b"a3"], [b"a5"])


def test_repair_json_shape(store: Path) -> None:
    damage_payload(store, DAMAGED, 2)
    code, out, err = run("repair", str(store), "--yes", "--truncate", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert set(report) == {"plan", "applied", "actions", "ok_after"}
    step = {
        "repair": "truncate",
        "stream_id": DAMAGED,
        "reason": "damaged record (record hash does not match its contents)",
    }
    assert [{k: v for k, v in s.items() if k in step} for s in report["plan"]] == [step]
    assert report["applied"] == report["plan"]
    assert report["ok_after"] is True
    actions = {a["action"]: a for a in report["actions"]}
    assert set(actions) == {"truncated", "marked_cut", "reindexed"}
    assert (actions["marked_cut"]["first_offset"], actions["marked_cut"]["next_offset"]) == (2, 6)
    truncated = actions["truncated"]
    assert set(truncated) == {
        "stream_id",
        "found",
        "action",
        "segment_no",
        "start_byte",
        "end_byte",
        "first_offset",
        "next_offset",
        "kept_as",
    }
    assert truncated["stream_id"] == DAMAGED
    (kept,) = quarantine_files(store, DAMAGED)
    assert (store / truncated["kept_as"]) == kept
    assert truncated["end_byte"] - truncated["start_byte"] == kept.stat().st_size


def test_after_the_catalog_is_deleted_every_hint_names_repair_and_repair_works(store: Path) -> None:
    """Issue 9: the command every other command's hint names must be the one that fixes it."""
    for path in store.glob(f"{CATALOG_FILE}*"):
        path.unlink()
    segments = store_bytes(store)
    for args in (
        ["verify"],
        ["check"],
        ["stats"],
        ["read", "--stream", str(DAMAGED)],
        ["sql", "SELECT count(*) FROM events"],
    ):
        code, out, err = run(args[0], str(store), *args[1:])
        assert code != 0, args
        assert f"hybridlog repair {store}" in out + err or "`hybridlog repair`" in out + err, (args, out, err)
        assert "Traceback" not in out + err
    assert store_bytes(store) == segments  # none of them changed anything
    code, out, err = run("repair", str(store), "--yes")
    assert code == 0, err
    assert "repaired; the store checks clean" in out
    assert run("verify", str(store))[0] == 0
    assert read_events(store, DAMAGED) == [e for b in DAMAGED_BATCHES for e in b]
    assert read_events(store, HEALTHY) == HEALTHY_BATCHES[0]


def test_repair_on_a_clean_store_does_nothing(store: Path) -> None:
    before = store_bytes(store)
    code, out, _ = run("repair", str(store))
    assert code == 0
    assert out.strip() == "nothing to repair"
    code, out, _ = run("repair", str(store), "--json")
    assert json.loads(out) == {"plan": [], "applied": []}
    assert store_bytes(store) == before


# --- rebuild-index -------------------------------------------------------------------------------------


def test_rebuild_index_of_the_whole_store_keeps_the_old_catalog_aside(store: Path) -> None:
    old_rows = catalog_dump(store)["streams"]
    code, out, err = run("rebuild-index", str(store), "--json")
    assert code == 0, err
    assert json.loads(out) == {  # an object, as every command's --json
        "streams": [
            {"stream_id": DAMAGED, "records": 6, "damage": None},
            {"stream_id": HEALTHY, "records": 2, "damage": None},
        ]
    }
    (aside,) = store.glob(f"{CATALOG_FILE}.*.aside")
    conn = apsw.Connection(str(aside), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        assert [tuple(r) for r in conn.execute("SELECT * FROM streams")] == old_rows
    finally:
        conn.close()
    assert read_events(store, DAMAGED) == [e for b in DAMAGED_BATCHES for e in b]
    assert read_events(store, HEALTHY) == HEALTHY_BATCHES[0]
    assert run("verify", str(store))[0] == 0


def test_rebuild_index_of_one_stream_restores_its_lost_rows(store: Path) -> None:
    conn = apsw.Connection(str(store / CATALOG_FILE))
    conn.execute("DELETE FROM batches WHERE stream_id = ?", (DAMAGED,))  # the offset index is lost
    conn.close()
    assert run("read", str(store), "--stream", str(DAMAGED))[0] != 0
    code, out, err = run("rebuild-index", str(store), "--stream", str(DAMAGED))
    assert code == 0, err
    assert out.strip() == f"stream {DAMAGED}: 6 records indexed"
    assert read_events(store, DAMAGED) == [e for b in DAMAGED_BATCHES for e in b]
    assert read_events(store, HEALTHY) == HEALTHY_BATCHES[0]
    assert list(store.glob("*.aside")) == []  # one stream: the catalog itself is kept


def test_rebuild_index_of_a_damaged_stream_exits_3(store: Path) -> None:
    segment, position = damage_payload(store, DAMAGED, 2)
    code, _, err = run("rebuild-index", str(store), "--stream", str(DAMAGED))
    assert code == EXIT_DAMAGE
    line = one_error_line(err)
    assert f"stream {DAMAGED}" in line
    assert str(segment) in line
    assert f"byte {position}" in line
    assert "hybridlog repair" in line


# --- checkpoint, stats ---------------------------------------------------------------------------------


def test_checkpoint_json_shape_and_the_record_read_shows(store: Path) -> None:
    code, out, err = run("checkpoint", str(store), "--stream", str(DAMAGED), "--json")
    assert code == 0, err
    (made,) = json.loads(out)["checkpoints"]  # an object, as every command's --json
    assert set(made) == {"stream_id", "offset", "hash"}
    assert made["stream_id"] == DAMAGED
    assert made["offset"] == 6  # at the head: after the six events
    code, out, _ = run("read", str(store), "--stream", str(DAMAGED), "--records")
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["kind"] for r in records] == ["event"] * 6 + ["checkpoint"]
    assert records[-1]["offset"] == made["offset"]
    assert records[-1]["hash"] == made["hash"]
    assert records[-1]["prev_hash"] == records[-2]["hash"]
    # every stream by default; a checkpoint right after another one still goes at the head
    code, out, _ = run("checkpoint", str(store), "--json")
    assert [(c["stream_id"], c["offset"]) for c in json.loads(out)["checkpoints"]] == [(DAMAGED, 7), (HEALTHY, 2)]
    assert run("verify", str(store), "--from-checkpoints")[0] == 0


def test_stats_json_shape_and_compression_ratio(tmp_path: Path) -> None:
    path = tmp_path / "store"
    events = [
        json.dumps({"type": "deposit", "account": 42, "amount": i, "memo": "monthly salary payment " * 4}).encode()
        for i in range(40)
    ]
    with writer(path, CompressionKind.ZSTD) as storage:
        storage.append(3, events)
    with writer(path) as storage:
        storage.append(4, [b"plain"])
    code, out, err = run("stats", str(path), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert set(report) == {"streams", "totals"}
    compressed, plain = report["streams"]
    assert set(compressed) == {
        "stream_id",
        "records",
        "events",
        "checkpoints",
        "segments",
        "sealed_segments",
        "stored_bytes",
        "payload_bytes",
        "compression_ratio",
    }
    assert (compressed["stream_id"], compressed["events"], compressed["records"]) == (3, 40, 40)
    assert compressed["payload_bytes"] == sum(len(e) for e in events)
    assert compressed["compression_ratio"] > 1.0
    assert plain["compression_ratio"] == 1.0
    assert plain["payload_bytes"] == len(b"plain")
    assert report["totals"] == {
        "records": 41,
        "events": 41,
        "segments": 2,
        "stored_bytes": compressed["stored_bytes"] + plain["stored_bytes"],
    }
    code, out, _ = run("stats", str(path))
    assert out.splitlines()[0].split()[:2] == ["stream_id", "records"]
    assert out.splitlines()[-1] == f"2 streams, 41 events, {report['totals']['stored_bytes']} bytes in segments"


# --- migrate -------------------------------------------------------------------------------------------


def test_migrate_check_on_a_current_store(store: Path) -> None:
    before = store_bytes(store)
    code, out, err = run("migrate", str(store), "--check")
    assert code == 0, err
    assert out.strip() == f"schema version {SCHEMA_VERSION}; this hybridlog knows {SCHEMA_VERSION}: up to date"
    code, out, _ = run("migrate", str(store), "--json")
    assert json.loads(out) == {"before": SCHEMA_VERSION, "after": SCHEMA_VERSION, "code_version": SCHEMA_VERSION}
    assert store_bytes(store) == before


SCHEMA2_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "schema2_store"


def test_migrate_upgrades_an_old_catalog_with_the_data_intact(tmp_path: Path) -> None:
    """A catalog of schema version 2 (a store written by an older hybridlog, format-1 frames) climbs
    the whole ladder: 0003 numbers its records, 0006 turns them into rows of ``batches``."""
    store = tmp_path / "old"
    shutil.copytree(SCHEMA2_FIXTURE, store)
    rows_before = catalog_dump(store)
    code, out, err = run("migrate", str(store), "--check")
    assert code == 0, err
    assert f"schema version 2; this hybridlog knows {SCHEMA_VERSION}" in out
    assert f"{SCHEMA_VERSION - 2} migrations pending" in out
    assert catalog_dump(store) == rows_before  # --check changed nothing

    code, out, err = run("migrate", str(store), "--json")
    assert code == 0, err
    assert json.loads(out) == {"before": 2, "after": SCHEMA_VERSION, "code_version": SCHEMA_VERSION}
    after = catalog_dump(store)
    assert after["user_version"] == [(SCHEMA_VERSION,)]
    # 0003 numbered the records 1..n and 0006 kept every column: the records table (now computed
    # from batches) holds the same places, numbered.
    records = list(query_catalog(store, "SELECT * FROM records ORDER BY global_position").rows)
    assert [row[0] for row in records] == list(range(1, len(records) + 1))
    assert sorted(row[1:] for row in records) == sorted(rows_before["records"])
    assert after["gaps"] == []
    assert after["record_kinds"] == [(0, "event"), (1, "checkpoint"), (2, "repair")]  # 0004 added one
    assert {k: after[k] for k in ("streams", "segments", "checkpoints")} == {
        k: rows_before[k] for k in ("streams", "segments", "checkpoints")
    }
    assert run("verify", str(store))[0] == 0


# --- tail (a real process beside a writer) -------------------------------------------------------------


def test_tail_from_an_offset_prints_exactly_the_new_events(store: Path) -> None:
    tail = hybridlog_process(
        "tail", str(store), "--stream", str(HEALTHY), "--from", "2", "--count", "3", "--poll", "0.01"
    )
    new = [b"c0", b"c1", b"c2"]
    with writer(store) as storage:
        storage.append(HEALTHY, [new[0]])
        head = storage.latest_chain_hash(HEALTHY)
        storage.create_checkpoint(HEALTHY, 3, head, 3)  # tail prints events, not checkpoints
        storage.append(HEALTHY, [new[1]])
        storage.append(HEALTHY, [new[2], b"c3"])  # beyond --count
    out, err = tail.communicate(timeout=60)
    assert tail.returncode == 0, err
    assert out.splitlines() == new


def test_tail_follows_from_the_end_while_a_writer_appends(store: Path) -> None:
    """Without --from, tail starts at the end: it prints a contiguous run of new events, in order,
    none of the old ones, and exits after --count."""
    count = 5
    tail = hybridlog_process("tail", str(store), "--stream", str(HEALTHY), "--count", str(count), "--poll", "0.01")
    appended: list[bytes] = []
    deadline = time.monotonic() + 60  # a bound on a broken tail, not a timing assertion
    with writer(store) as storage:
        while tail.poll() is None and time.monotonic() < deadline:
            event = f"new-{len(appended)}".encode()
            storage.append(HEALTHY, [event], fsync=False)
            appended.append(event)
            time.sleep(0.01)
    out, err = tail.communicate(timeout=60)
    assert tail.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == count
    assert lines[0] in appended, f"tail printed an event from before it started: {lines[0]!r}"
    start = appended.index(lines[0])
    assert lines == appended[start : start + count]


def test_tail_records_follow_every_stream_in_global_order(store: Path) -> None:
    """Without --stream, tail follows every stream; --records prints JSON Lines with the position."""
    code, out, err = run("tail", str(store), "--from-position", "6", "--records", "--count", "3")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(r["global_position"], r["stream_id"], r["offset"], r["payload"]) for r in lines] == [
        (6, DAMAGED, 5, "a5"),
        (7, HEALTHY, 0, "b0"),
        (8, HEALTHY, 1, "b1"),
    ]
    with Storage(store, read_only=True) as reader:
        expected = reader.read_global(6)
    assert [r["hash"] for r in lines] == [g.record.hash.hex() for g in expected]


def test_tail_with_a_consumer_acknowledges_and_resumes(store: Path) -> None:
    code, out, err = run("tail", str(store), "--stream", str(DAMAGED), "--consumer", "audit", "--count", "2")
    assert (code, out) == (0, "a0\na1\n"), err
    code, out, err = run("tail", str(store), "--stream", str(DAMAGED), "--consumer", "audit", "--count", "3")
    assert (code, out) == (0, "a2\na3\na4\n"), err
    with Storage(store, read_only=True) as reader:
        (state,) = reader.consumers()
    assert (state.name, state.stream_id, state.position, state.acked) == ("audit", DAMAGED, 5, (DAMAGED, 4))
    # a --from option moves the consumer where the output starts, backwards too
    code, out, err = run(
        "tail", str(store), "--stream", str(DAMAGED), "--consumer", "audit", "--from", "1", "--count", "1"
    )
    assert (code, out) == (0, "a1\n"), err
    code, out, err = run("tail", str(store), "--stream", str(DAMAGED), "--consumer", "audit", "--count", "1")
    assert (code, out) == (0, "a2\n"), err
    # a consumer follows the streams it was registered for
    code, _out, err = run("tail", str(store), "--consumer", "audit", "--count", "1")
    assert code == EXIT_ERROR
    assert "follows stream 1, not every stream" in one_error_line(err)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from-offset", "1"], "--from-offset needs --stream"),
        (["--stream", "1", "--from-offset", "1", "--from-position", "1"], "not both"),
    ],
)
def test_tail_refuses_contradicting_start_options(store: Path, args: list[str], message: str) -> None:
    code, _out, err = run("tail", str(store), *args)
    assert code == EXIT_USAGE
    assert message in err


def test_python_dash_m_help_lists_every_command() -> None:
    proc = hybridlog_process("--help")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    text = out.decode()
    assert text.startswith("Usage: ")
    listed = text.split("Commands:")[1].split()
    for command in ALL_COMMANDS:
        assert command in listed


# --- sql cannot change the catalog ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO streams (stream_id, next_offset, created_at_ns, updated_at_ns) VALUES (9, 0, 0, 0)",
        "REPLACE INTO store_info (key, value) VALUES ('record_format_version', '9')",
        "SELECT 1; DELETE FROM records",
        "PRAGMA journal_mode = delete",
        "PRAGMA user_version = 99",
        "PRAGMA wal_checkpoint(TRUNCATE)",
        "VACUUM",
        "VACUUM INTO '{copy}'",
        "REINDEX",
        "ANALYZE",
        "DROP INDEX recovery_log_by_stream",
        "ALTER TABLE streams ADD COLUMN x INTEGER",
        "CREATE TRIGGER t AFTER INSERT ON streams BEGIN DELETE FROM records; END",
    ],
)
def test_sql_refuses_every_statement_that_changes_the_catalog(store: Path, statement: str) -> None:
    copy = store.parent / "copy.db"
    before, dump = store_bytes(store), catalog_dump(store)
    code, _, err = run("sql", str(store), statement.format(copy=copy))
    assert code == EXIT_ERROR
    assert "refused" in one_error_line(err)
    assert catalog_dump(store) == dump
    assert store_bytes(store) == before
    assert not copy.exists()
    assert run("sql", str(store), "PRAGMA journal_mode")[1].split()[-1] == "wal"


def test_sql_allows_reading_pragmas(store: Path) -> None:
    """Reading pragmas changes nothing; sql.py allows them (user_version, table_info, ...)."""
    code, out, err = run("sql", str(store), "PRAGMA user_version", "--output", "json")
    assert code == 0, err
    assert json.loads(out) == [{"user_version": SCHEMA_VERSION}]
    code, out, err = run("sql", str(store), "PRAGMA table_info(streams)", "--output", "json")
    assert code == 0, err
    assert "chain_head" in [row["name"] for row in json.loads(out)]


# --- errors: one line, no traceback, the documented exit code ------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["append", "{store}", "--stream", "1"],
        ["checkpoint", "{store}"],
        ["rebuild-index", "{store}"],
        ["repair", "{store}", "--yes"],
    ],
)
def test_a_second_writer_is_refused_while_one_holds_the_store(store: Path, args: list[str]) -> None:
    """Every command that writes needs the writer lock; the store is damaged so that ``repair``
    has a plan to apply. Nothing is written, and readers keep working beside the writer."""
    damage_payload(store, DAMAGED, 4)
    before = store_bytes(store)
    with writer(store):
        code, _, err = run(*(a.format(store=store) for a in args), stdin=b"late\n")
        assert code == EXIT_ERROR
        line = one_error_line(err)
        assert "locked" in line
        assert f"process {os.getpid()}" in line
        assert run("read", str(store), "--stream", str(HEALTHY))[0] == 0
        assert run("verify", str(store), "--stream", str(HEALTHY))[0] == 0
        assert run("check", str(store))[0] == EXIT_DAMAGE
        assert run("stats", str(store))[0] == 0
    assert quarantine_files(store, DAMAGED) == []
    assert {k: v for k, v in store_bytes(store).items() if k != "LOCK"} == {
        k: v for k, v in before.items() if k != "LOCK"
    }


@pytest.mark.parametrize(
    "args",
    [
        ["check"],
        ["repair", "--yes"],
        ["rebuild-index"],
        ["checkpoint"],
        ["stats"],
        ["migrate"],
        ["tail", "--count", "1"],
        ["verify"],
    ],
)
def test_a_missing_store_is_one_error_line_and_is_not_created(tmp_path: Path, args: list[str]) -> None:
    missing = tmp_path / "missing"
    code, _, err = run(args[0], str(missing), *args[1:])
    assert code == EXIT_ERROR
    assert f"no store at {missing}" in one_error_line(err)
    assert not missing.exists()


def test_a_catalog_newer_than_the_code_is_refused(store: Path) -> None:
    conn = apsw.Connection(str(store / CATALOG_FILE))
    conn.pragma("user_version", SCHEMA_VERSION + 1)
    conn.close()
    for args in (["stats"], ["migrate"], ["append", "--stream", "1"], ["check"]):
        code, _, err = run(args[0], str(store), *args[1:], stdin=b"x\n")
        assert code == EXIT_ERROR, args
        line = one_error_line(err)
        assert f"schema version {SCHEMA_VERSION + 1}" in line
        assert "upgrade hybridlog" in line


def test_reading_into_damage_exits_3_naming_the_place(store: Path) -> None:
    segment, position = damage_payload(store, DAMAGED, 2)
    code, out, err = run("read", str(store), "--stream", str(DAMAGED))
    assert code == EXIT_DAMAGE
    line = one_error_line(err)
    assert f"stream {DAMAGED}, offset 2, segment {segment}, byte {position}" in line
    # the healthy stream still reads
    code, out, _ = run("read", str(store), "--stream", str(HEALTHY))
    assert (code, out.splitlines()) == (0, ["b0", "b1"])


def test_appending_to_a_stream_recovery_found_damaged_exits_3_and_writes_nothing(store: Path) -> None:
    """A segment cut short below what the catalog holds (a catalog ahead of its segments) is damage
    that open-time recovery finds and does not repair: the stream refuses appends, others take them."""
    segment, position = record_location(store, DAMAGED, 4)
    with segment.open("r+b") as f:
        f.truncate(position)  # the last batch is gone; the catalog still counts it
    # a real process: in-process, pytest's log capture would hide what the library logs on stderr
    append = hybridlog_process("append", str(store), "--stream", str(DAMAGED), stdin=subprocess.PIPE)
    _, err_bytes = append.communicate(b"more\n", timeout=60)
    assert append.returncode == EXIT_DAMAGE
    line = one_error_line(err_bytes.decode())
    assert f"stream {DAMAGED}" in line
    assert str(segment) in line
    assert "hybridlog repair" in line
    assert segment.stat().st_size == position
    assert run("append", str(store), "--stream", str(HEALTHY), stdin=b"b2\n")[0] == 0
    assert read_events(store, HEALTHY) == [*HEALTHY_BATCHES[0], b"b2"]


def test_sql_errors_and_usage_errors(store: Path, tmp_path: Path) -> None:
    code, _, err = run("sql", str(store), "SELEKT 1")
    assert code == EXIT_ERROR
    assert "SQL error" in one_error_line(err)
    a_file = tmp_path / "a-file"
    a_file.write_bytes(b"")
    assert run("stats", str(a_file))[0] == EXIT_USAGE
    assert run("check", str(store), "--stream", "x")[0] == EXIT_USAGE
    assert run("repair", str(store), "--bogus")[0] == EXIT_USAGE


# --- progress bars: on a terminal only -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "label"),
    [(["verify"], "verifying"), (["check"], "checking"), (["repair", "--yes"], "checking")],
)
def test_no_progress_bar_when_not_a_terminal(store: Path, args: list[str], label: str) -> None:
    damage_payload(store, DAMAGED, 4)
    _, out, err = run(args[0], str(store), *args[1:])
    for text in (out, err):
        assert label not in text
        assert "[#" not in text
        assert "%" not in text
        assert "\r" not in text


def test_progress_bar_on_a_terminal(store: Path) -> None:
    """The other half: with stderr on a pseudo-terminal, the same command draws a bar there."""
    primary, secondary = pty.openpty()
    try:
        proc = hybridlog_process("verify", str(store), stderr=secondary)
        os.close(secondary)
        secondary = -1
        drawn = b""
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # EIO: the child closed its end
                break
            if not chunk:
                break
            drawn += chunk
        out, _ = proc.communicate(timeout=60)
    finally:
        os.close(primary)
        if secondary != -1:
            os.close(secondary)
    assert proc.returncode == 0
    assert b"verifying" in drawn
    assert b"100%" in drawn
    assert b"verifying" not in out
