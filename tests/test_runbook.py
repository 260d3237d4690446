"""``scripts/repair_runbook.py``: check, show, confirm, repair, verify, in one operator command.

Contracts tested here, each by running the script as a real process (``sys.executable``):

* on a clean store it changes nothing, asks nothing and exits 0;
* on a damaged store it prints each finding (stream, offset, segment, byte) and the plan before
  asking; with ``--yes`` it repairs, keeps the cut bytes in a quarantine file, verifies and exits 0;
* declined (``n``, or no answer at all) it changes nothing and exits 3;
* ``--json`` prints one object with the check, plan, decision, repair, verify and outcome;
* what open-time recovery fixes when the script opens the store for writing is reported;
* errors (no store, a store locked by another writer) are one line on stderr with exit 1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hybridlog import CheckpointPolicy, RecordKind, Storage
from hybridlog.layout import QUARANTINE_SUFFIX, segment_path, stream_path
from hybridlog.record import HEADER_SIZE
from hybridlog.sql import query_catalog
from hybridlog.testing.clocks import make_clock
from hybridlog.testing.damage import genesis_events

RUNBOOK = Path(__file__).resolve().parent.parent / "scripts" / "repair_runbook.py"
DAMAGED = 1
HEALTHY = 2
DAMAGED_BATCHES = [[b"a0", b"a1"], [b"a2", b"a3"], [b"a4", b"a5"]]
HEALTHY_EVENTS = [b"b0", b"b1"]


def runbook(*args: str, answer: str = "") -> subprocess.CompletedProcess[str]:
    """Run the script; ``answer`` is what the operator types (empty: stdin ends at once)."""
    return subprocess.run(
        [sys.executable, str(RUNBOOK), *args], input=answer, capture_output=True, text=True, timeout=120, check=False
    )


def writer(path: Path) -> Storage:
    return Storage(path, checkpoint_policy=CheckpointPolicy.explicit(), clock=make_clock())


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """Two streams: DAMAGED (three batches of two events) and HEALTHY (one batch); nothing damaged yet."""
    path = tmp_path / "store"
    with writer(path) as storage:
        for batch in DAMAGED_BATCHES:
            storage.append(DAMAGED, batch)
        storage.append(HEALTHY, HEALTHY_EVENTS)
    return path


def record_location(store: Path, stream_id: int, offset: int) -> tuple[Path, int, int]:
    """(segment file, byte position, frame length) of one record, from the catalog's offset index."""
    sql = "SELECT segment_no, position, length FROM records WHERE stream_id = ? AND offset = ?"
    ((segment_no, position, length),) = query_catalog(store, sql, (stream_id, offset)).rows
    assert isinstance(segment_no, int)
    assert isinstance(position, int)
    assert isinstance(length, int)
    return segment_path(store, stream_id, segment_no), position, length


def damage_payload(store: Path, stream_id: int, offset: int) -> tuple[Path, int]:
    """Flip the first payload byte of the record at ``offset``; returns (segment, record position)."""
    segment, position, _ = record_location(store, stream_id, offset)
    data = bytearray(segment.read_bytes())
    data[position + HEADER_SIZE] ^= 0x40
    segment.write_bytes(bytes(data))
    return segment, position


def store_bytes(store: Path) -> dict[str, bytes]:
    """Every file's bytes, except SQLite's -shm file and empty -wal files (a read-only open makes them)."""
    files = {}
    for path in sorted(store.rglob("*")):
        if not path.is_file() or path.name.endswith("-shm"):
            continue
        data = path.read_bytes()
        if not (path.name.endswith("-wal") and not data):
            files[str(path.relative_to(store))] = data
    return files


def events_after(store: Path, stream_id: int, offset: int) -> list[bytes]:
    with Storage(store, read_only=True) as reader:
        return [r.payload for r in reader.iter_records(stream_id, offset) if r.kind is RecordKind.EVENT]


def read_events(store: Path, stream_id: int) -> list[bytes]:
    with Storage(store, read_only=True) as reader:
        return genesis_events(reader, stream_id)


def quarantine_files(store: Path, stream_id: int) -> list[Path]:
    return sorted(stream_path(store, stream_id).glob(f"*{QUARANTINE_SUFFIX}"))


def one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got: {err!r}"
    return lines[0]


def test_clean_store_exits_0_and_changes_nothing(store: Path) -> None:
    before = store_bytes(store)
    done = runbook(str(store))
    assert done.returncode == 0, done.stderr
    assert "check: 2 streams, 8 records verified, 0 findings" in done.stdout
    assert "plan:" not in done.stdout
    assert done.stdout.splitlines()[-1] == f"result: CLEAN: {store} checks and verifies clean"
    assert "[y/N]" not in done.stderr  # nothing to ask
    assert store_bytes(store) == before


def test_damaged_store_with_yes_is_repaired_and_verified(store: Path) -> None:
    segment, position = damage_payload(store, DAMAGED, 2)
    done = runbook(str(store), "--yes")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"stream {DAMAGED}: damaged_record:" in out
    assert f"segment {segment}, byte {position} -> isolate" in out
    assert f"1. isolate stream {DAMAGED}" in out
    assert f"isolates offsets 2 (1 damaged record, bytes kept in place in segment 0 from byte {position})" in out
    assert f"stream {DAMAGED}: isolated" in out
    # every record of the damaged stream but offset 2, its repair marker, and the other stream's two
    assert "verify: 8 records verified" in out
    assert f"stream {DAMAGED} ok, offsets 2 isolated by repair" in out
    assert out.splitlines()[-1].startswith("result: CLEAN")
    # the findings and the plan come before the repair
    assert out.index("plan:") < out.index("repair: applied") < out.index("verify:")
    assert events_after(store, DAMAGED, 3) == [b"a3", b"a4", b"a5"]
    assert read_events(store, HEALTHY) == HEALTHY_EVENTS
    assert quarantine_files(store, DAMAGED) == []


def test_json_shape(store: Path) -> None:
    segment, position = damage_payload(store, DAMAGED, 2)
    done = runbook(str(store), "--yes", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert set(report) == {
        "store",
        "check",
        "plan",
        "decision",
        "recovered_on_open",
        "repair",
        "verify",
        "remaining",
        "clean",
        "exit_code",
    }
    assert report["store"] == str(store)
    assert report["decision"] == "applied"
    assert (report["clean"], report["exit_code"], report["remaining"]) == (True, 0, [])
    assert report["recovered_on_open"] == []
    check = report["check"]
    assert check["ok"] is False
    (damaged,) = [f for f in check["findings"] if f["problem"] == "damaged_record"]
    assert (damaged["stream_id"], damaged["segment"], damaged["position"]) == (DAMAGED, str(segment), position)
    assert report["plan"] == check["plan"] == report["repair"]["applied"]
    [step] = report["plan"]
    assert (step["repair"], step["stream_id"], step["reason"]) == ("isolate", DAMAGED, damaged["message"])
    assert step["effects"]["isolates"] == [
        {"first_offset": 2, "next_offset": 3, "records": 1, "segment_no": 0, "start_byte": position}
    ]
    assert report["repair"]["ok_after"] is True
    assert "isolated" in [a["action"] for a in report["repair"]["actions"]]
    assert report["verify"]["ok"] is True
    assert report["verify"]["records_verified"] == 8


def test_clean_store_json(store: Path) -> None:
    done = runbook(str(store), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["decision"] == "nothing_to_do"
    assert report["plan"] == []
    assert report["repair"] is None
    assert report["verify"]["ok"] is True
    assert report["clean"] is True


@pytest.mark.parametrize("answer", ["n\n", ""])
def test_declined_changes_nothing_and_exits_3(store: Path, answer: str) -> None:
    damage_payload(store, DAMAGED, 2)
    before = store_bytes(store)
    done = runbook(str(store), answer=answer)
    assert done.returncode == 3
    assert f"apply this plan (1 step) to {store}? [y/N]" in done.stderr
    assert "repair: declined; nothing was changed" in done.stdout
    assert any(line.startswith("result: DAMAGE REMAINS") for line in done.stdout.splitlines())
    assert store_bytes(store) == before
    assert quarantine_files(store, DAMAGED) == []


def test_yes_typed_at_the_prompt_applies(store: Path) -> None:
    damage_payload(store, DAMAGED, 4)
    done = runbook(str(store), answer="y\n")
    assert done.returncode == 0, done.stderr
    assert events_after(store, DAMAGED, 5) == [b"a5"]


def test_what_open_time_recovery_did_is_reported(store: Path) -> None:
    """A torn write past the catalog's end: declined, nothing is cut; confirmed, the cut is reported."""
    segment, position, length = record_location(store, HEALTHY, 1)
    intact = segment.read_bytes()
    segment.write_bytes(intact + intact[position : position + length // 2])
    torn = store_bytes(store)
    assert runbook(str(store), answer="n\n").returncode == 3
    assert store_bytes(store) == torn
    done = runbook(str(store), "--yes", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [(s["repair"], s["stream_id"]) for s in report["plan"]] == [("reindex", HEALTHY)]
    assert [e["action"] for e in report["recovered_on_open"]] == ["quarantined"]
    assert report["clean"] is True
    assert segment.read_bytes() == intact
    (kept,) = quarantine_files(store, HEALTHY)
    assert kept.read_bytes() == intact[position : position + length // 2]


def test_only_the_streams_asked_for(store: Path) -> None:
    damage_payload(store, DAMAGED, 2)
    before = store_bytes(store)
    done = runbook(str(store), "--stream", str(HEALTHY), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["check"]["streams_checked"] == 1
    assert [s["stream_id"] for s in report["verify"]["streams"]] == [HEALTHY]
    assert store_bytes(store) == before


def test_missing_store_is_an_error_and_is_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    done = runbook(str(missing), "--yes")
    assert done.returncode == 1
    assert f"no store at {missing}" in one_error_line(done.stderr)
    assert not missing.exists()


def test_locked_store_is_an_error(store: Path) -> None:
    damage_payload(store, DAMAGED, 2)
    with writer(store):
        done = runbook(str(store), "--yes")
    assert done.returncode == 1
    line = one_error_line(done.stderr)
    assert "locked" in line
    assert f"process {os.getpid()}" in line
    assert quarantine_files(store, DAMAGED) == []


def test_usage_error_exits_2(store: Path) -> None:
    assert runbook(str(store), "--stream", "-1").returncode == 2
