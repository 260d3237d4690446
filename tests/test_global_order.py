"""Global order: every record's store-wide ``global_position``, and ``Storage.read_global``.

* Positions follow commit order across streams, a batch's records are consecutive, and a stream's
  positions increase with its offsets, also when many threads append at once (group commit).
* They are never given out twice: recovery adopts records after the high-water mark, a repair
  that cuts records leaves a gap, a re-index keeps the positions, and only a full catalog rebuild
  numbers everything afresh, in (timestamp_ns, stream_id, offset) order.
* A catalog of schema version 2 (``tests/fixtures/schema2_store``) is upgraded in place by
  migration 0003: records numbered as documented, all readable and verified, numbering continued.
* ``read_global`` verifies every record it returns: a tampered one raises, it is never returned.

The contract (both backends) for ``read_global`` paging is in ``test_contract.py``.
"""

from __future__ import annotations

import random
import shutil
import threading
import time
from pathlib import Path

import apsw
import pytest

from hybridlog import (
    CatalogError,
    CheckpointPolicy,
    FindingKind,
    GlobalRecord,
    IntegrityError,
    Record,
    RecordKind,
    Storage,
)
from hybridlog.catalog_rows import GLOBAL_ORDER_VERSION, SCHEMA_VERSION
from hybridlog.layout import CATALOG_FILE, segment_path
from hybridlog.segment import SegmentWriter
from hybridlog.sql import query_catalog
from hybridlog.testing.clocks import make_clock
from hybridlog.testing.damage import (
    flip_byte,
    genesis_events,
    genesis_records,
    rollback_catalog,
    save_catalog,
    split_batches,
)

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "schema2_store"
T0 = 1_700_000_000_000_000_000
SECOND = 1_000_000_000

Placement = tuple[int, int]
"""(stream_id, offset)"""


class SetClock:
    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def positions(store: Path) -> dict[Placement, int]:
    """Every record's global position, by (stream_id, offset), through the read-only SQL path."""
    rows = query_catalog(store, "SELECT stream_id, offset, global_position FROM records").rows
    return {(int(sid), int(off)): int(pos) for sid, off, pos in rows}  # type: ignore[arg-type]


def in_global_order(store: Path) -> list[Placement]:
    rows = query_catalog(store, "SELECT stream_id, offset FROM records ORDER BY global_position").rows
    return [(int(sid), int(off)) for sid, off in rows]  # type: ignore[arg-type]


def mark(store: Path) -> int:
    sql = (  # docs/schema.md: the larger of the stored mark and the last batch row's last position
        "SELECT max(last_position, coalesce((SELECT global_position + record_count - 1 FROM batches"
        " ORDER BY global_position DESC LIMIT 1), 0)) FROM global_order"
    )
    ((last,),) = query_catalog(store, sql).rows
    assert isinstance(last, int)
    return last


def assert_stream_order_kept(by_placement: dict[Placement, int]) -> None:
    """Within every stream, positions increase with offsets."""
    streams: dict[int, list[tuple[int, int]]] = {}
    for (sid, offset), position in by_placement.items():
        streams.setdefault(sid, []).append((offset, position))
    for sid, pairs in streams.items():
        pairs.sort()
        assert [o for o, _ in pairs] == list(range(len(pairs))), f"stream {sid} offsets"
        found = [p for _, p in pairs]
        assert found == sorted(found), f"stream {sid}: positions out of offset order"


# --- commit order --------------------------------------------------------------------------------


def test_positions_follow_commit_order_and_batches_are_consecutive(store_dir: Path) -> None:
    policy = CheckpointPolicy.every(3, on_close=False)
    with Storage(store_dir, checkpoint_policy=policy) as store:
        assert store.last_global_position() == 0
        store.append(7, [b"a0", b"a1"])  # stream 7: offsets 0, 1
        store.append(2, [b"b0"])  # stream 2: offset 0
        store.append(7, [b"a2", b"a3"])  # stream 7: a2, checkpoint, a3 (offsets 2, 3, 4)
        store.append(2, [b"b1"])
        assert store.last_global_position() == 7
        got = store.read_global()
    assert [(g.global_position, g.record.stream_id, g.record.offset) for g in got] == [
        (1, 7, 0),
        (2, 7, 1),
        (3, 2, 0),
        (4, 7, 2),
        (5, 7, 3),
        (6, 7, 4),
        (7, 2, 1),
    ]
    assert got[4].record.kind is RecordKind.CHECKPOINT
    assert [g.record.payload for g in got if g.record.kind is RecordKind.EVENT] == [
        b"a0",
        b"a1",
        b"b0",
        b"a2",
        b"a3",
        b"b1",
    ]
    assert mark(store_dir) == 7
    assert positions(store_dir) == {
        (g.record.stream_id, g.record.offset): g.global_position for g in got
    }  # read_global reports what the catalog holds


def test_numbering_continues_across_reopen_and_on_close_checkpoints(store_dir: Path) -> None:
    with Storage(store_dir, checkpoint_policy=CheckpointPolicy.close_only()) as store:
        store.append(1, [b"x"])
        store.append(2, [b"y"])
    # close wrote one checkpoint per stream: positions 3 and 4
    with Storage(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        assert store.last_global_position() == 4
        store.append(1, [b"z"])
        last = store.read_global(5)
    assert [(g.global_position, g.record.stream_id, g.record.payload) for g in last] == [(5, 1, b"z")]
    assert sorted(positions(store_dir).values()) == [1, 2, 3, 4, 5]


def test_read_global_starts_at_the_first_position_at_or_after_from(store_dir: Path) -> None:
    with Storage(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        for i in range(6):
            store.append(i % 3, [bytes([65 + i])])
        assert [g.global_position for g in store.read_global(0)] == [1, 2, 3, 4, 5, 6]
        assert [g.global_position for g in store.read_global(1)] == [1, 2, 3, 4, 5, 6]
        assert [g.global_position for g in store.read_global(4)] == [4, 5, 6]
        assert store.read_global(7) == []
        assert store.read_global(1000) == []
        assert [g.record.payload for g in store.read_global(3, max_bytes=2)] == [b"C", b"D"]


def test_read_global_on_a_new_or_missing_store(tmp_path: Path) -> None:
    assert Storage(tmp_path / "nothing", read_only=True).read_global() == []
    assert Storage(tmp_path / "nothing", read_only=True).last_global_position() == 0
    with Storage(tmp_path / "empty") as store:
        assert store.read_global() == []
        assert store.last_global_position() == 0


# --- many threads, group commit ------------------------------------------------------------------


def test_concurrent_appends_get_unique_contiguous_positions_in_stream_order(store_dir: Path) -> None:
    """Threads appending to many streams: positions 1..N with no gap, each batch's records consecutive,
    each stream's positions increasing with its offsets, and read_global agreeing with the catalog."""
    threads, batches_per_thread, streams = 8, 30, 5
    # checkpoints inside batches too: they take positions like any record
    policy = CheckpointPolicy.every(7, on_close=False)
    appended: list[tuple[int, list[bytes], int]] = []  # (stream, payloads, next offset after the batch)
    lock = threading.Lock()
    failures: list[BaseException] = []

    with Storage(store_dir, checkpoint_policy=policy) as store:

        def worker(t: int) -> None:
            rng = random.Random(t)
            try:
                for b in range(batches_per_thread):
                    sid = rng.randrange(streams)
                    payloads = [f"t{t}-b{b}-e{i}".encode() for i in range(rng.randint(1, 4))]
                    next_offset, _ = store.append(sid, payloads, fsync=rng.random() < 0.5)
                    with lock:
                        appended.append((sid, payloads, next_offset))
            except BaseException as e:
                failures.append(e)

        workers = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert failures == []
        records: dict[Placement, Record] = {
            (r.stream_id, r.offset): r for sid in range(streams) for r in genesis_records(store, sid)
        }
        total = len(records)
        everything = store.read_global(1, max_bytes=1 << 30)
        assert store.last_global_position() == total

    by_placement = positions(store_dir)
    assert sorted(by_placement.values()) == list(range(1, total + 1))  # unique and gap-free
    assert mark(store_dir) == total
    assert_stream_order_kept(by_placement)
    # each batch: the records from its first event to its last record have consecutive positions
    first_offset = {r.payload: r.offset for r in records.values() if r.kind is RecordKind.EVENT}
    assert len(appended) == threads * batches_per_thread
    for sid, payloads, next_offset in appended:
        start = first_offset[payloads[0]]
        span = [by_placement[sid, o] for o in range(start, next_offset)]
        assert span == list(range(span[0], span[0] + len(span))), f"batch {payloads[0]!r} is not consecutive"
        assert [
            records[sid, o].payload for o in range(start, next_offset) if records[sid, o].kind is RecordKind.EVENT
        ] == payloads
    assert [g.global_position for g in everything] == list(range(1, total + 1))
    assert all(by_placement[g.record.stream_id, g.record.offset] == g.global_position for g in everything)
    assert all(records[g.record.stream_id, g.record.offset] == g.record for g in everything)


def test_a_commit_group_numbers_its_batches_in_the_order_it_took_them(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches queued behind a busy leader commit as one group, positioned in queue order (not by stream)."""
    store = Storage(store_dir, checkpoint_policy=CheckpointPolicy.explicit())
    for sid in (9, 1, 2, 3):  # positions 1..4; known heads, so followers frame without the store's lock
        store.append(sid, [b"setup"])
    gate, leader_syncing = threading.Event(), threading.Event()
    real_sync = SegmentWriter.sync

    def held_sync(writer: SegmentWriter) -> None:
        if not gate.is_set():
            leader_syncing.set()
            assert gate.wait(timeout=60)
        real_sync(writer)

    monkeypatch.setattr(SegmentWriter, "sync", held_sync)
    appenders = [threading.Thread(target=store.append, args=(9, [b"leader"]))]
    appenders[0].start()
    assert leader_syncing.wait(timeout=60)  # the leader is inside its group, holding the commit
    for i, (sid, payload) in enumerate([(1, b"a"), (2, b"b"), (1, b"c"), (3, b"d")]):
        appenders.append(threading.Thread(target=store.append, args=(sid, [payload])))
        appenders[-1].start()
        deadline = time.monotonic() + 60
        while len(store._writer.commits._queue) < i + 1:  # queued behind the leader, in this order
            assert time.monotonic() < deadline
            time.sleep(0.001)
    gate.set()
    for t in appenders:
        t.join()
    got = [(g.global_position, g.record.payload) for g in store.read_global(5)]
    store.close()
    assert got == [(5, b"leader"), (6, b"a"), (7, b"b"), (8, b"c"), (9, b"d")]


# --- recovery, repair, rebuild -------------------------------------------------------------------


def test_adopted_records_get_the_next_positions_after_the_mark(store_dir: Path, tmp_path: Path) -> None:
    """A catalog that lost its last commits: recovery adopts the records after its mark, in stream order."""
    policy = CheckpointPolicy.explicit()
    with Storage(store_dir, checkpoint_policy=policy) as store:
        store.append(1, [b"a"])
        store.append(2, [b"b"])
    saved = save_catalog(store_dir, tmp_path / "catalog.saved")
    with Storage(store_dir, checkpoint_policy=policy) as store:
        store.append(2, [b"c", b"d"])
        store.append(1, [b"e"])
    rollback_catalog(store_dir, saved)  # as if the last two commits were lost
    with Storage(store_dir, checkpoint_policy=policy) as store:
        adopted = sum(r.adopted_records for r in store.recovery_results())
        assert adopted == 3
        assert store.last_global_position() == 5
        store.append(3, [b"f"])
        assert store.check().ok
    by_placement = positions(store_dir)
    assert by_placement[1, 0] == 1
    assert by_placement[2, 0] == 2
    assert {by_placement[1, 1], by_placement[2, 1], by_placement[2, 2]} == {3, 4, 5}
    assert by_placement[2, 1] < by_placement[2, 2]
    assert by_placement[3, 0] == 6
    assert_stream_order_kept(by_placement)


def test_a_truncating_repair_leaves_a_gap_and_positions_are_not_reused(store_dir: Path) -> None:
    policy = CheckpointPolicy.explicit()
    with Storage(store_dir, checkpoint_policy=policy) as store:
        store.append(1, [b"one", b"two"])  # 1, 2
        store.append(2, [b"other"])  # 3
        store.append(1, [b"three"])  # 4
        store.append(1, [b"four"])  # 5
        before = positions(store_dir)
        third = store.offset_index(1).lookup(2)
        assert third is not None
    flip_byte(segment_path(store_dir, 1, third.segment_no), third.position + third.length - 20)  # damage offset 2
    with Storage(store_dir, checkpoint_policy=policy) as store:
        report = store.repair(truncate=True)
        assert report.after is not None
        assert report.after.ok
        assert store.next_offset(1) == 5  # a cut marker at offset 4 stands in for the cut offsets 2..3
        assert store.last_global_position() == 6  # the marker's position: 4 and 5 are never given out again
        after_repair = positions(store_dir)
        store.append(1, [b"five"])
        tail = store.read_global(6)
    assert after_repair == {
        **{k: v for k, v in before.items() if k not in {(1, 2), (1, 3)}},  # 4 and 5 are gone
        (1, 4): 6,
    }
    assert [(g.global_position, g.record.stream_id, g.record.offset, g.record.kind) for g in tail] == [
        (6, 1, 4, RecordKind.REPAIR),
        (7, 1, 5, RecordKind.EVENT),
    ]


def test_an_isolating_repair_keeps_every_other_position(store_dir: Path) -> None:
    """The default repair isolates the damaged record: its position is gone, every other record
    keeps its own, and the repair marker gets the next one."""
    policy = CheckpointPolicy.explicit()
    with Storage(store_dir, checkpoint_policy=policy) as store:
        store.append(1, [b"one", b"two"])  # 1, 2
        store.append(2, [b"other"])  # 3
        store.append(1, [b"three"])  # 4
        store.append(1, [b"four"])  # 5
        before = positions(store_dir)
        third = store.offset_index(1).lookup(2)
        assert third is not None
    flip_byte(segment_path(store_dir, 1, third.segment_no), third.position + third.length - 20)  # damage offset 2
    with Storage(store_dir, checkpoint_policy=policy) as store:
        report = store.repair()
        assert report.after is not None
        assert report.after.ok
        assert store.last_global_position() == 6
        assert positions(store_dir) == {**{k: v for k, v in before.items() if k != (1, 2)}, (1, 4): 6}


def test_rebuild_index_keeps_every_position(store_dir: Path) -> None:
    with Storage(store_dir, checkpoint_policy=CheckpointPolicy.every(2, on_close=False)) as store:
        for i in range(5):
            store.append(i % 2, [b"p%d" % i, b"q%d" % i])
        before = positions(store_dir)
        store.rebuild_index(0)
        store.rebuild_index(1)
        assert positions(store_dir) == before
        assert store.check().ok
        store.append(0, [b"more"])
        assert positions(store_dir)[0, store.next_offset(0) - 1] == max(before.values()) + 1


def test_full_rebuild_keeps_every_position_whatever_the_clock_did(store_dir: Path) -> None:
    """Commit order and time order differ when a clock steps back; the positions are in the frames,
    so a full rebuild, having only the segments, gives every record the position it had."""
    clock = SetClock(T0 + 10 * SECOND)
    policy = CheckpointPolicy.explicit()
    with Storage(store_dir, checkpoint_policy=policy, clock=clock) as store:
        store.append(1, [b"late-1"])  # position 1, at 10 s
        clock.now = T0 + 5 * SECOND
        store.append(2, [b"early-2", b"early-2b"])  # positions 2, 3, at 5 s
        clock.now = T0 + 5 * SECOND
        store.append(0, [b"early-0"])  # position 4, at 5 s
        store.append(1, [b"later-1"])  # clamped to 10 s: position 5
    committed = [(1, 0), (2, 0), (2, 1), (0, 0), (1, 1)]
    assert in_global_order(store_dir) == committed
    before = positions(store_dir)
    with Storage(store_dir, checkpoint_policy=policy, clock=clock) as store:
        store.rebuild_catalog()
        assert store.last_global_position() == 5
    assert in_global_order(store_dir) == committed
    assert positions(store_dir) == before
    (store_dir / CATALOG_FILE).unlink()
    with Storage(store_dir, checkpoint_policy=policy, clock=clock) as store:
        assert [(g.record.stream_id, g.record.offset) for g in store.read_global()] == committed
        store.append(2, [b"new"])
        assert store.last_global_position() == 6
    assert mark(store_dir) == 6


def test_a_missing_catalog_is_rebuilt_with_positions(store_dir: Path) -> None:
    with Storage(store_dir, checkpoint_policy=CheckpointPolicy.explicit(), clock=make_clock()) as store:
        for i in range(4):
            store.append(i % 2, [b"r%d" % i])
        before = in_global_order(store_dir)
    (store_dir / CATALOG_FILE).unlink()
    with Storage(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        assert store.last_global_position() == 4
    # a counting clock gave every batch a later time than the one before: time order = commit order
    assert in_global_order(store_dir) == before


def test_check_finds_catalog_positions_that_differ_from_the_frames(store_dir: Path) -> None:
    """Positions are in the frames: a catalog numbering them otherwise is damage, and a repair
    re-indexes it with the positions the frames carry."""
    with Storage(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        store.append(1, [b"a"])
        store.append(2, [b"b"])
    split_batches(store_dir)
    conn = apsw.Connection(str(store_dir / CATALOG_FILE))
    with conn:  # renumber by hand: 1 -> 10, 2 -> 20
        conn.execute("UPDATE batches SET global_position = global_position * 10")
        conn.execute("UPDATE global_order SET last_position = 20")
        conn.execute("INSERT INTO recovery_log (at_ns, found, action) VALUES (1, 'by hand', 'rebuilt_catalog')")
    conn.close()
    with Storage(store_dir, read_only=True) as reader:
        report = reader.check()
        assert {(f.stream_id, f.problem) for f in report.findings} == {
            (1, FindingKind.CATALOG_MISMATCH),
            (2, FindingKind.CATALOG_MISMATCH),
        }
    with Storage(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        store.repair()
        assert store.check().ok
        assert [g.global_position for g in store.read_global()] == [1, 2]
        assert store.last_global_position() == 20  # positions once given out are never given again


# --- verification --------------------------------------------------------------------------------


def test_a_tampered_record_makes_read_global_raise(store_dir: Path) -> None:
    with Storage(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        store.append(1, [b"good-1"])
        store.append(2, [b"target", b"after"])
        store.append(1, [b"good-2"])
        entry = store.offset_index(2).lookup(0)
        assert entry is not None
    flip_byte(segment_path(store_dir, 2, entry.segment_no), entry.position + entry.length - 20)  # in "target"
    with Storage(store_dir, read_only=True) as reader:
        assert [g.record.payload for g in reader.read_global(1, max_bytes=0)] == [b"good-1"]
        for start in (0, 2, 3):
            with pytest.raises(IntegrityError) as caught:
                reader.read_global(start)
            assert caught.value.stream_id == 2
        assert [g.record.payload for g in reader.read_global(4)] == [b"good-2"]
        # a page that ends before the damaged record does not read it
        assert [g.record.payload for g in reader.read_global(1, max_bytes=6)] == [b"good-1"]


def test_read_global_of_a_schema_2_catalog_asks_for_the_upgrade(tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(FIXTURE, store)
    with Storage(store, read_only=True) as reader:
        assert reader.schema_version() == 2
        assert genesis_events(reader, 0) == [b"s0-a0", b"s0-b0", b"s0-b1"]  # per-stream reads still work
        with pytest.raises(CatalogError, match="before global positions") as caught:
            reader.read_global()
        assert caught.value.hint is not None
        assert "hybridlog migrate" in caught.value.hint
        with pytest.raises(CatalogError):
            reader.last_global_position()


# --- upgrading a schema-2 catalog ----------------------------------------------------------------


def fixture_rows() -> list[tuple[int, int, int, int]]:
    """(stream_id, offset, kind, timestamp_ns) of every record in the schema-2 fixture, as committed."""
    conn = apsw.Connection(str(FIXTURE / CATALOG_FILE), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        assert conn.pragma("user_version") == 2
        return [tuple(r) for r in conn.execute("SELECT stream_id, offset, kind, timestamp_ns FROM records")]
    finally:
        conn.close()


FIXTURE_EVENTS = {
    0: [b"s0-a0", b"s0-b0", b"s0-b1"],
    1: [b"s1-a0", b"s1-a1", b"s1-a2", b"s1-b0", b"s1-b1", b"s1-b2"],
    2: [b"s2-a0", b"s2-a1", b"x" * 1500, b"y" * 1500, b"z" * 1500, b"s2-late"],
}


def test_a_schema_2_store_is_upgraded_in_place(tmp_path: Path) -> None:
    assert GLOBAL_ORDER_VERSION == 3 <= SCHEMA_VERSION
    rows = fixture_rows()
    assert len(rows) == 20
    store = tmp_path / "store"
    shutil.copytree(FIXTURE, store)
    segments_before = {p: p.read_bytes() for p in store.rglob("*.seg")}

    with Storage(store, checkpoint_policy=CheckpointPolicy.explicit()) as writer:
        assert writer.schema_version() == SCHEMA_VERSION
        assert writer.recovery_log() == []  # upgraded, not rebuilt
        assert writer.last_global_position() == 20
        # numbered 1..20 in (timestamp_ns, stream_id, offset) order, as migration 0003 documents
        expected = [(sid, off) for sid, off, _, _ in sorted(rows, key=lambda r: (r[3], r[0], r[1]))]
        assert in_global_order(store) == expected
        assert expected[:5] == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1)]  # equal times: by stream, then offset
        assert positions(store)[0, 0] == 10
        # every record readable and verified, from genesis and through the global read
        for sid, events in FIXTURE_EVENTS.items():
            assert genesis_events(writer, sid) == events
        got = writer.read_global(1, max_bytes=1 << 20)
        assert [g.global_position for g in got] == list(range(1, 21))
        assert [(g.record.stream_id, g.record.offset) for g in got] == expected
        assert all(isinstance(g, GlobalRecord) for g in got)
        assert writer.check().ok
        # numbering continues after the upgraded records
        writer.append(1, [b"s1-new"])
        writer.append(0, [b"s0-new", b"s0-new2"])
        assert [(g.global_position, g.record.payload) for g in writer.read_global(21)] == [
            (21, b"s1-new"),
            (22, b"s0-new"),
            (23, b"s0-new2"),
        ]
    assert all(p.read_bytes()[: len(data)] == data for p, data in segments_before.items())  # appends only
    with Storage(store, read_only=True) as reader:
        assert reader.schema_version() == SCHEMA_VERSION
        assert reader.last_global_position() == 23
        assert genesis_events(reader, 1)[-1] == b"s1-new"


def test_the_upgrade_numbers_records_as_a_full_rebuild_would(tmp_path: Path) -> None:
    """Migration 0003 and rebuild_catalog use the same order, so rebuilding an upgraded store renumbers nothing."""
    store = tmp_path / "store"
    shutil.copytree(FIXTURE, store)
    with Storage(store, checkpoint_policy=CheckpointPolicy.explicit()) as writer:
        upgraded = positions(store)
        writer.rebuild_catalog()
        assert positions(store) == upgraded
        assert writer.last_global_position() == 20
