"""Global positions are a fact of the segments: a catalog rebuilt from them gives every record the
position it had, and no position is ever given out twice (issue 12, design invariant 8).

One store is written by 8 threads through one ``Storage`` whose clock steps back now and then, so
commit order, time order and stream order all differ. Every record's position is taken from
``read_global`` before and after (a) deleting the catalog and reopening as a writer, (b)
``rebuild_catalog()``, (c) a repair that cuts a stream's tail followed by (a): the positions must be
identical, and new appends must get positions above every one given out before. Threads interleave
differently in every run, so each test compares a store with itself, never with constants.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from hybridlog import CheckpointPolicy, RecordKind, Storage, verify_store
from hybridlog.catalog_rows import SCHEMA_VERSION
from hybridlog.layout import segment_path
from hybridlog.testing.clocks import START_NS
from hybridlog.testing.damage import delete_catalog, flip_byte, genesis_records

THREADS = 8
BATCHES_PER_THREAD = 25
SHARED = 0
"""The stream every thread appends to now and then; thread t owns stream 10 + t."""
POLICY = CheckpointPolicy.every(7, on_close=False)
SEGMENT_SIZE = 4096

Placement = tuple[int, int]
"""(stream_id, offset)"""
Seen = tuple[int, int, int, str]
"""(global_position, stream_id, offset, record hash hex): one record as ``read_global`` gave it."""


class SteppingBackClock:
    """Nanoseconds that advance by ``step`` on each call, and jump back by ``back`` every ``every``-th
    call: a wall clock that NTP keeps correcting. Thread-safe; its readings are a fixed sequence."""

    def __init__(self, start: int = START_NS, step: int = 1_000, every: int = 7, back: int = 50_000) -> None:
        self._now = start
        self._calls = 0
        self._step, self._every, self._back = step, every, back
        self._lock = threading.Lock()
        self.steps_back = 0

    def __call__(self) -> int:
        """The next reading."""
        with self._lock:
            self._calls += 1
            if self._calls % self._every == 0:
                self._now -= self._back
                self.steps_back += 1
            else:
                self._now += self._step
            return self._now


def own_stream(thread: int) -> int:
    """The stream only thread ``thread`` appends to."""
    return 10 + thread


def open_writer(store: Path, clock: SteppingBackClock | None = None) -> Storage:
    """A writer with the settings every session of these tests uses (4 KiB segments: many rotate)."""
    return Storage(store, checkpoint_policy=POLICY, max_segment_size=SEGMENT_SIZE, clock=clock or SteppingBackClock())


def write_concurrently(store: Path) -> SteppingBackClock:
    """Eight threads append batches of 1-5 events to their own stream and now and then to the shared
    one (some fsync'd, so group commit forms groups), with explicit checkpoints on their own streams."""
    clock = SteppingBackClock()
    failures: list[BaseException] = []
    with open_writer(store, clock) as writer:

        def work(t: int) -> None:
            rng = random.Random(t)
            try:
                for b in range(BATCHES_PER_THREAD):
                    sid = SHARED if rng.random() < 0.3 else own_stream(t)
                    events = [f"thread {t} batch {b} event {i} ".encode() * 3 for i in range(rng.randint(1, 5))]
                    writer.append(sid, events, fsync=rng.random() < 0.2)
                    if sid != SHARED and rng.random() < 0.15:
                        offset = writer.next_offset(sid)
                        writer.create_checkpoint(sid, offset, writer.latest_chain_hash(sid), offset, fsync=False)
            except BaseException as e:
                failures.append(e)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []
    assert clock.steps_back > 10
    return clock


def global_order(store: Storage) -> list[Seen]:
    """Every record in store-wide order, as ``read_global`` gives it (verified)."""
    return [
        (g.global_position, g.record.stream_id, g.record.offset, g.record.hash.hex())
        for g in store.read_global(1, max_bytes=1 << 30)
    ]


def by_placement(seen: list[Seen]) -> dict[Placement, int]:
    """Global positions by (stream_id, offset)."""
    return {(sid, offset): position for position, sid, offset, _ in seen}


@dataclass(frozen=True)
class Written:
    """A store written by the threads, closed, and what ``read_global`` said of it."""

    path: Path
    seen: list[Seen]
    mark: int


@pytest.fixture
def written(tmp_path: Path) -> Written:
    """A closed store written by 8 threads, with every record's position."""
    path = tmp_path / "store"
    write_concurrently(path)
    with Storage(path, read_only=True) as reader:
        seen = global_order(reader)
        mark = reader.last_global_position()
        records = sum(len(genesis_records(reader, sid)) for sid in reader.stream_ids())
        in_time_order = sorted(
            reader.read_global(1, max_bytes=1 << 30),
            key=lambda g: (g.record.timestamp_ns, g.record.stream_id, g.record.offset),
        )
    # the clock stepped back across streams: numbering by time (as format 1's rebuild did) would differ
    assert [g.global_position for g in in_time_order] != [p for p, _, _, _ in seen]
    assert len(seen) == records > THREADS * BATCHES_PER_THREAD
    assert len({sid for _, sid, _, _ in seen}) == THREADS + 1
    assert [p for p, _, _, _ in seen] == list(range(1, mark + 1))  # never repaired: gap-free
    return Written(path, seen, mark)


def assert_same_order_and_appends_go_above(store: Storage, before: list[Seen], highest_given: int) -> None:
    """``read_global`` yields exactly ``before``; the store verifies; new appends get positions
    above ``highest_given`` (the highest position ever given out), in commit order."""
    assert global_order(store) == before
    report = verify_store(store)
    assert report.ok, report.as_dict()
    assert report.records == len(before)
    assert store.last_global_position() >= highest_given
    appended = []
    for sid in (own_stream(3), SHARED, own_stream(0)):
        next_offset, _ = store.append(sid, [b"after the rebuild"])
        appended.append((sid, next_offset - 1))
    positions = []
    for sid, offset in appended:
        position = store.global_position_of(sid, offset)
        assert position is not None
        positions.append(position)
    assert all(p > highest_given for p in positions), (highest_given, positions)
    assert positions == sorted(positions)
    assert len(set(positions)) == len(positions)


def test_a_deleted_catalog_is_rebuilt_with_every_position(written: Written) -> None:
    """(a) Delete catalog.db and its -wal/-shm; a writer rebuilds it from the segments."""
    assert delete_catalog(written.path)
    with open_writer(written.path) as writer:
        assert writer.schema_version() == SCHEMA_VERSION
        assert writer.last_global_position() == written.mark
        assert by_placement(global_order(writer)) == by_placement(written.seen)
        assert_same_order_and_appends_go_above(writer, written.seen, written.mark)


def test_rebuild_catalog_keeps_every_position(written: Written) -> None:
    """(b) ``rebuild_catalog()`` on a writer: the catalog built from the segments numbers nothing afresh."""
    with open_writer(written.path) as writer:
        writer.rebuild_catalog()
        assert writer.last_global_position() == written.mark
        assert by_placement(global_order(writer)) == by_placement(written.seen)
        writer.rebuild_catalog()  # and again, from a rebuilt catalog's store
        assert_same_order_and_appends_go_above(writer, written.seen, written.mark)
    with Storage(written.path, read_only=True) as reader:  # a new reader sees the same
        assert global_order(reader)[: len(written.seen)] == written.seen


def test_positions_are_never_reused_after_a_cut_and_a_rebuild(written: Written) -> None:
    """(c) A repair cuts a stream's last records; a rebuild from the segments then keeps every
    surviving position (and the cut marker's), and new appends go above every position ever given
    out, the cut ones included."""
    victim = own_stream(5)
    with Storage(written.path, read_only=True) as reader:
        tail = [r.offset for r in genesis_records(reader, victim)][-3]
        entry = reader.offset_index(victim).lookup(tail)
    assert entry is not None
    flip_byte(segment_path(written.path, victim, entry.segment_no), entry.position + entry.length - 20)
    with open_writer(written.path) as writer:
        report = writer.repair(truncate=True)
        assert report.after is not None
        assert report.after.ok, report
        repaired = global_order(writer)
        highest_given = writer.last_global_position()
    survivors = {p: pos for p, pos in by_placement(written.seen).items() if not (p[0] == victim and p[1] >= tail)}
    [marker] = [(sid, off) for _, sid, off, _ in repaired if (sid, off) not in survivors]
    assert marker[0] == victim
    assert by_placement(repaired) == {**survivors, marker: by_placement(repaired)[marker]}
    assert by_placement(repaired)[marker] > written.mark  # the cut positions stay unused
    assert highest_given > written.mark

    delete_catalog(written.path)
    with open_writer(written.path) as writer:
        assert [r.kind for r in genesis_records(writer, victim)][-1] is RecordKind.REPAIR
        assert writer.last_global_position() >= highest_given
        assert by_placement(global_order(writer)) == by_placement(repaired)
        assert_same_order_and_appends_go_above(writer, repaired, highest_given)


def test_a_rebuild_of_an_open_store_keeps_positions_across_later_appends(tmp_path: Path) -> None:
    """Rebuild, append, rebuild again: positions handed out between the rebuilds stay too."""
    path = tmp_path / "store"
    write_concurrently(path)
    with open_writer(path) as writer:
        writer.rebuild_catalog()
        for t in range(THREADS):
            writer.append(own_stream(t), [b"between rebuilds %d" % t])
            writer.append(SHARED, [b"shared between rebuilds %d" % t])
        before = global_order(writer)
        mark = writer.last_global_position()
        writer.rebuild_catalog()
        assert global_order(writer) == before
        assert writer.last_global_position() == mark
