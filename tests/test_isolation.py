"""Repair that keeps what verifies: damage isolated in place, only unverifiable tails cut, offsets
never reused, and the decision kept in the stream (repair markers) so a rebuilt catalog keeps it.

Each test damages real segment bytes, counts the records that read back before and after the
repair, and compares them with what was appended.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hybridlog import (
    CheckpointPolicy,
    FindingKind,
    MarkerAction,
    RecordIsolated,
    RecordKind,
    RecordsCut,
    RepairKind,
    Storage,
)
from hybridlog.layout import segment_path
from hybridlog.markers import decode_marker
from hybridlog.record import HEADER_SIZE
from hybridlog.testing.damage import flip_byte, quarantine_files, segment_files
from hybridlog.verified_cache import DEFAULT_MAX_RECORDS

STREAM = 3
EVENTS = 600
BATCH = 20


def event(i: int) -> bytes:
    return f"event {i:05d} ".encode() * 3


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    """600 events in batches of 20, checkpoints every 100 events, about 12 segments."""
    path = tmp_path / "store"
    with Storage(path, checkpoint_policy=CheckpointPolicy.every(100), max_segment_size=4096) as store:
        for first in range(0, EVENTS, BATCH):
            store.append(STREAM, [event(i) for i in range(first, first + BATCH)])
    return path


def all_records(store: Storage) -> list[tuple[int, int, bytes]]:
    """(offset, kind, payload) of every record, read from genesis (raises at damage)."""
    return [(r.offset, int(r.kind), r.payload) for r in store.iter_records(STREAM, 0, anchored=False)]


def collect(store: Storage, into: list[tuple[int, int, bytes]]) -> None:
    """Read from genesis into ``into`` until the read raises."""
    into.extend((r.offset, int(r.kind), r.payload) for r in store.iter_records(STREAM, 0, anchored=False))


def events_from(store: Storage, offset: int) -> list[bytes]:
    return [r.payload for r in store.iter_records(STREAM, offset) if r.kind is RecordKind.EVENT]


def record_at(store: Storage, offset: int) -> tuple[int, int, int]:
    """(segment_no, byte position, frame length) of a record, from the catalog."""
    entry = store.offset_index(STREAM).lookup(offset)
    assert entry is not None
    return entry.segment_no, entry.position, entry.length


def test_isolate_keeps_every_record_after_a_damaged_one(store_dir: Path) -> None:
    with Storage(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        original = all_records(store)
        committed = store.next_offset(STREAM)
        victim = original[len(original) // 2 + 3][0]
        segment_no, position, _ = record_at(store, victim)
    flip_byte(segment_path(store_dir, STREAM, segment_no), position + HEADER_SIZE + 2)
    before_files = {p: p.read_bytes() for p in segment_files(store_dir, STREAM)}

    with Storage(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        plan = store.check().plan()
        assert [(s.repair, s.stream_id) for s in plan] == [(RepairKind.ISOLATE, STREAM)]
        assert f"isolates offsets {victim} (1 damaged record" in plan[0].effect
        after_victim = sum(1 for r in original if r[0] > victim)
        assert f"keeps the {after_victim:,} verifying records" in plan[0].effect
        assert plan[0].effects is not None
        assert plan[0].effects["cut"] is None  # nothing is cut

        report = store.repair(plan)
        assert report.after is not None
        assert report.after.ok
        assert [f.problem for f in report.after.findings] == [FindingKind.ISOLATED_RECORDS]

        # Every record but the damaged one still reads, verified; the damaged one raises.
        with pytest.raises(RecordIsolated) as raised:
            store.read_from(STREAM, victim, 1 << 20)
        assert (raised.value.first_offset, raised.value.next_offset) == (victim, victim + 1)
        before = [r for r in original if r[0] < victim]
        got_before: list[tuple[int, int, bytes]] = []
        with pytest.raises(RecordIsolated):
            collect(store, got_before)
        assert got_before == before
        after = [(r.offset, int(r.kind), r.payload) for r in store.iter_records(STREAM, victim + 1)]
        assert after[: len(original) - victim - 1] == [r for r in original if r[0] > victim]
        # The repair marker took the next offset; appends continue after it.
        marker = after[-1]
        assert (marker[0], marker[1]) == (committed, RecordKind.REPAIR)
        decoded = decode_marker(marker[2])
        assert decoded is not None
        assert (decoded.action, decoded.first_offset, decoded.next_offset) == (
            MarkerAction.ISOLATED,
            victim,
            victim + 1,
        )
        assert store.append(STREAM, [b"after repair"])[0] == committed + 2

    # Nothing was cut or moved: every byte of every segment is still there.
    assert quarantine_files(store_dir, STREAM) == []
    for path, data in before_files.items():
        assert path.read_bytes()[: len(data)] == data

    # The decision is in the stream: a catalog rebuilt from the segments alone keeps the isolation.
    with Storage(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        store.rebuild_catalog()
        assert store.check().ok
        with pytest.raises(RecordIsolated):
            store.read_from(STREAM, victim, 100)
        assert events_from(store, victim + 1)[-1] == b"after repair"


def test_pages_end_before_an_isolated_record_and_the_next_page_raises(store_dir: Path) -> None:
    """The seed's page reads on a repaired stream: a page that reaches an isolated record ends
    before it; the next page (from inside the gap) raises RecordIsolated naming where the stream
    reads on; pages from there go on, and paging around the gap gives every other record."""
    with Storage(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        original = store.read_records_from_genesis(STREAM, 0, 1 << 30)
        victim = original[len(original) // 2 + 3].offset
        segment_no, position, _ = record_at(store, victim)
        assert len(original) == store.next_offset(STREAM)  # one page of 1 GiB held the whole stream
    flip_byte(segment_path(store_dir, STREAM, segment_no), position + HEADER_SIZE + 2)
    with Storage(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        store.repair()
        before = original[victim - 3 : victim]
        for read in (store.read_records_from_genesis, store.read_records_verified):
            assert read(STREAM, victim - 3, 1 << 20) == before  # ends before the gap, no error
            assert read(STREAM, victim - 1, 0) == before[-1:]
            with pytest.raises(RecordIsolated) as raised:
                read(STREAM, victim, 1 << 20)  # a page that starts in the gap
            assert (raised.value.first_offset, raised.value.next_offset) == (victim, victim + 1)
            assert read(STREAM, victim + 1, 0) == original[victim + 1 : victim + 2]
        events_before = [r.payload for r in before if r.kind is RecordKind.EVENT]
        assert store.read_from_genesis(STREAM, victim - 3, 1 << 20) == events_before
        with pytest.raises(RecordIsolated):
            store.read_from_genesis(STREAM, victim, 1 << 20)

        for read in (store.read_records_from_genesis, store.read_records_verified):
            seen: list[tuple[int, int, bytes]] = []
            offset = 0
            while True:
                try:
                    page = read(STREAM, offset, 500)
                except RecordIsolated as e:
                    offset = e.next_offset
                    continue
                if not page:
                    break
                seen += [(r.offset, int(r.kind), r.payload) for r in page]
                offset = page[-1].offset + 1
            kept = [(r.offset, int(r.kind), r.payload) for r in original if r.offset != victim]
            assert seen[:-1] == kept
            assert seen[-1][1] == RecordKind.REPAIR  # the marker the repair appended


def test_read_from_ends_before_an_isolated_record_like_the_pages(store_dir: Path) -> None:
    """``read_from`` (with and without its verified-run cache) ends a page before an isolated
    record instead of raising and losing the events it already read; the next read raises."""
    with Storage(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        original = all_records(store)
        victim = original[len(original) // 2 + 3][0]
        segment_no, position, _ = record_at(store, victim)
    flip_byte(segment_path(store_dir, STREAM, segment_no), position + HEADER_SIZE + 2)
    with Storage(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        store.repair()
    events = [(offset, payload) for offset, kind, payload in original if kind == RecordKind.EVENT]
    for cache in (DEFAULT_MAX_RECORDS, 0):
        with Storage(store_dir, read_only=True, verified_cache_records=cache) as reader:
            for start in (victim - 30, victim - 3, victim - 1, victim - 30):  # the last one warm
                expected = [p for o, p in events if start <= o < victim]
                assert reader.read_from(STREAM, start, 1 << 20) == expected
            with pytest.raises(RecordIsolated) as raised:
                reader.read_from(STREAM, victim, 1 << 20)
            assert raised.value.next_offset == victim + 1
            assert reader.read_from(STREAM, victim + 1, 0) == [next(p for o, p in events if o > victim)]


def test_truncate_would_cut_what_isolate_keeps(store_dir: Path, tmp_path: Path) -> None:
    """The issue's case in small: one flipped byte in the middle of a stream. The default plan
    (isolate) keeps every other record; an explicit truncate cuts every record after the damage.
    Counted by reading both repaired stores back."""
    with Storage(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        total = store.next_offset(STREAM)
        segment_no, position, _ = record_at(store, total // 2)
    flip_byte(segment_path(store_dir, STREAM, segment_no), position + HEADER_SIZE + 1)
    copy = tmp_path / "copy"
    shutil.copytree(store_dir, copy)
    kept = {}
    for path, isolate in ((store_dir, True), (copy, False)):
        with Storage(path, checkpoint_policy=CheckpointPolicy.explicit()) as store:
            [step] = store.check().plan(truncate=not isolate)
            assert step.repair == (RepairKind.ISOLATE if isolate else RepairKind.TRUNCATE)
            store.repair([step])
            readable = 0
            offset = 0
            while offset < store.next_offset(STREAM):
                try:
                    readable += sum(1 for r in store.iter_records(STREAM, offset) if r.kind is not RecordKind.REPAIR)
                    break
                except RecordIsolated as e:
                    readable += e.first_offset - offset
                    offset = e.next_offset
            kept[isolate] = readable
    assert kept[True] == total - 1
    assert kept[False] < total // 2 + 1


def test_damaged_tail_is_cut_and_its_offsets_are_never_reused(store_dir: Path) -> None:
    """Damage in the last record has nothing verifying after it: isolate cuts it (it does not
    verify), and a cut marker takes the next offset so the cut offset is never given out again."""
    with Storage(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        committed = store.next_offset(STREAM)
        last = committed - 1
        segment_no, position, _ = record_at(store, last)
        original = all_records(store)
    flip_byte(segment_path(store_dir, STREAM, segment_no), position + HEADER_SIZE + 2)
    with Storage(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        [step] = store.check().plan()
        assert f"cuts offsets {last}: 1 committed records" in step.effect
        assert f"a cut marker takes offset {committed}" in step.effect
        report = store.repair([step])
        assert report.after is not None
        assert report.after.ok
        with pytest.raises(RecordsCut):
            store.read_from(STREAM, last, 100)
        records = all_records(store)
        assert records[:-1] == original[:-1]
        assert records[-1][0] == committed  # the cut marker
        marker = decode_marker(records[-1][2])
        assert marker is not None
        assert (marker.action, marker.first_offset, marker.next_offset) == (MarkerAction.CUT, last, committed)
        assert store.append(STREAM, [b"next"])[0] == committed + 2
    assert len(quarantine_files(store_dir, STREAM)) == 1
    with Storage(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        store.rebuild_catalog()
        assert store.next_offset(STREAM) == committed + 2
        with pytest.raises(RecordsCut):
            store.read_from(STREAM, last, 100)


def test_a_missing_middle_segment_is_isolated(store_dir: Path) -> None:
    files = segment_files(store_dir, STREAM)
    gone = files[len(files) // 2]
    with Storage(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        original = all_records(store)
        committed = store.next_offset(STREAM)
        first_gone = next(s.first_offset for s in store.segments(STREAM) if s.path == gone)
        next_kept = next(s.first_offset for s in store.segments(STREAM) if s.path == files[len(files) // 2 + 1])
    gone.unlink()
    with Storage(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        store.repair()
        with pytest.raises(RecordIsolated) as raised:
            store.read_from(STREAM, first_gone, 100)
        assert (raised.value.first_offset, raised.value.next_offset) == (first_gone, next_kept)
        after = [(r.offset, int(r.kind), r.payload) for r in store.iter_records(STREAM, next_kept)]
        assert after[:-1] == [r for r in original if r[0] >= next_kept]
        assert store.next_offset(STREAM) == committed + 1


# --- a repair killed between its steps ----------------------------------------------------------

KILLED_REPAIR = """
import os, signal, sys
import hybridlog.stream_repair as steps
from hybridlog import CheckpointPolicy, Storage

def killed(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

setattr(steps, sys.argv[2], killed)
with Storage(sys.argv[1], checkpoint_policy=CheckpointPolicy.explicit()) as store:
    store.repair(truncate=sys.argv[3] == "truncate")
"""


def readable(store: Storage) -> list[tuple[int, int, object]]:
    """Every record a reader can get, stepping over isolated ranges as a reader would; a repair
    marker stands as its action and range (where the cut bytes went depends on when it ran)."""
    out: list[tuple[int, int, object]] = []
    offset = 0
    while True:
        try:
            for r in store.iter_records(STREAM, offset, anchored=False):
                marker = decode_marker(r.payload) if r.kind is RecordKind.REPAIR else None
                shown = (marker.action, marker.first_offset, marker.next_offset) if marker else r.payload
                out.append((r.offset, int(r.kind), shown))
            return out
        except RecordIsolated as e:
            out = [r for r in out if r[0] < e.first_offset]
            offset = e.next_offset


def repaired_state(path: Path) -> tuple[list[tuple[int, int, object]], list[tuple[object, ...]], int]:
    with Storage(path, read_only=True) as store:
        gaps: list[tuple[object, ...]] = [
            tuple(row) for row in store.sql("SELECT first_offset, next_offset, action FROM gaps").rows
        ]
        return readable(store), gaps, store.next_offset(STREAM)


@pytest.mark.parametrize("mode", ["isolate", "truncate", "tail"])
@pytest.mark.parametrize("step", ["_write_markers", "index_stream"])
def test_a_repair_killed_between_its_steps_is_finished_by_the_next_one(
    store_dir: Path, tmp_path: Path, mode: str, step: str
) -> None:
    """SIGKILL after the cut (before the markers are written) or after the markers (before the
    catalog commit): the next open reports what is left, and a second repair ends exactly where
    an uninterrupted repair does: the same records readable, the same gaps, no marker twice."""
    with Storage(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        total = store.next_offset(STREAM)
        victim = total - 1 if mode == "tail" else total // 2
        segment_no, position, _ = record_at(store, victim)
    flip_byte(segment_path(store_dir, STREAM, segment_no), position + HEADER_SIZE + 2)
    uninterrupted = tmp_path / "uninterrupted"
    shutil.copytree(store_dir, uninterrupted)
    with Storage(uninterrupted, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        store.repair(truncate=mode == "truncate")
    expected = repaired_state(uninterrupted)

    child = subprocess.run(
        [sys.executable, "-c", KILLED_REPAIR, str(store_dir), step, "truncate" if mode == "truncate" else "default"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    with Storage(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        report = store.repair(truncate=mode == "truncate")
        assert report.after is not None
        assert report.after.ok, report.after.findings
    assert repaired_state(store_dir) == expected
    with Storage(store_dir, read_only=True) as store:  # every cut byte's file is in the recovery log
        logged = {e.kept_as for e in store.recovery_log(STREAM) if e.kept_as}
    assert logged == {str(q.relative_to(store_dir)) for q in quarantine_files(store_dir, STREAM)}


def test_global_reads_subscriptions_and_sql_step_over_isolated_records(tmp_path: Path) -> None:
    """An isolated record has no global position and no row: reads by position, subscriptions and
    the ``events`` table go on past it with every other record, verified."""
    path = tmp_path / "store"
    with Storage(path, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        for i in range(10):
            store.append(1, [b"one %d" % i])
            store.append(2, [b"two %d" % i])
        entry = store.offset_index(1).lookup(4)
        assert entry is not None
        damaged_position = store.global_position_of(1, 4)
    flip_byte(segment_path(path, 1, entry.segment_no), entry.position + HEADER_SIZE)
    with Storage(path, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        store.repair()
    with Storage(path, read_only=True) as reader:
        page = reader.read_global(1, max_bytes=1 << 20)
        positions = [g.global_position for g in page]
        assert damaged_position not in positions
        assert positions == [p for p in range(1, 22) if p != damaged_position]  # 21: the repair marker
        ones = [g.record.payload for g in page if g.record.stream_id == 1 and g.record.kind is RecordKind.EVENT]
        assert ones == [b"one %d" % i for i in range(10) if i != 4]
        subscribed = [g.record.offset for _, g in zip(range(10), reader.subscribe(1, from_position=1), strict=False)]
        assert subscribed == [0, 1, 2, 3, 5, 6, 7, 8, 9, 10]
        rows = reader.sql("SELECT offset, kind FROM events WHERE stream_id = 1").rows
        assert [tuple(r) for r in rows] == [*((o, "event") for o in range(10) if o != 4), (10, "repair")]
        gaps = reader.sql("SELECT first_offset, next_offset, action FROM gaps WHERE stream_id = 1").rows
        assert [tuple(r) for r in gaps] == [(4, 5, "isolated")]


def test_recovery_log_detail_says_where_reads_resume_after_an_isolation(store_dir: Path) -> None:
    """``recovery_log.detail`` (docs/schema.md) is written where the action has more to say: an
    isolation names the segment and byte where reads resume after the damaged record."""
    with Storage(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        victim = all_records(store)[5][0]
        segment_no, position, length = record_at(store, victim)
    flip_byte(segment_path(store_dir, STREAM, segment_no), position + HEADER_SIZE + 2)
    with Storage(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        store.repair()
        sql = "SELECT first_offset, next_offset, detail FROM recovery_log WHERE stream_id = ? AND action = 'isolated'"
        rows = store.sql(sql, [STREAM]).rows
    assert rows == [(victim, victim + 1, f"reads resume at segment {segment_no} byte {position + length}")]
