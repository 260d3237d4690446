"""Subscriptions (``Storage.subscribe``) and named consumers (``register_consumer``, ``ack``).

Contracts tested here:

* a subscription yields every committed record once, in global order (filtered to one stream if
  asked), from the start asked for: a position, a stream offset (also one not written yet), a
  consumer's acknowledged position, or the beginning;
* in the writer's process it wakes on each commit: with a poll interval of an hour it still gets
  each record as soon as it is committed (also through a read-only ``Storage`` of the same
  store), and ``close()`` or closing the store wakes it;
* in another process it polls: a reader process follows a writer process to the last record;
* **the issue's test**: a consumer process following a writer process that is SIGKILLed and
  restarted mid-stream, acknowledging each record, receives every committed record exactly once,
  in order, and nothing uncommitted; killed and restarted itself, it resumes right after its
  acknowledged position;
* consumers resume after a restart from their acknowledged position; ``ack`` is one transaction
  that refuses positions past the last commit, positions behind the stored one (unless
  ``force``), and unknown consumers; concurrent acks never move a consumer back; a process killed
  while acknowledging leaves one whole acknowledgement;
* gaps left by a repair are stepped over, never waited for; a consumer whose acknowledged record
  was cut resumes after it, and one whose positions were renumbered by a full catalog rebuild gets
  ``ConsumerPositionLost`` instead of a guess;
* a damaged record raises IntegrityError out of the iterator; it is never yielded.

Child processes run this file as a script (see ``child_main`` at the bottom).
"""

from __future__ import annotations

import json
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import apsw
import pytest

from hybridlog import (
    CheckpointPolicy,
    ConsumerMismatch,
    ConsumerPositionLost,
    GlobalRecord,
    IntegrityError,
    InvalidArgument,
    RecordKind,
    Storage,
    StorageLocked,
    StoreClosed,
    UnknownConsumer,
)
from hybridlog.layout import CONSUMERS_FILE, segment_path
from hybridlog.testing import harness
from hybridlog.testing.damage import active_segment, flip_byte, rollback_catalog, save_catalog, tear_tail
from hybridlog.testing.harness import (
    CHILD_TIMEOUT,
    KillPlan,
    acknowledge,
    arm_when_told,
    drain_killed,
    read_line,
    send_plan,
)

THIS_FILE = Path(__file__).resolve()
WAKE_TIMEOUT = 30  # seconds; bounds a broken wake-up (the poll interval is an hour), not a timing assertion
HOUR = 3600.0
STREAMS = (0, 1, 2)
T0 = 1_700_000_000_000_000_000
SECOND = 1_000_000_000


def open_writer(path: Path, **options: object) -> Storage:
    """A writer with small segments and a checkpoint every 5 events, unless told otherwise."""
    options.setdefault("checkpoint_policy", CheckpointPolicy.every(5))
    options.setdefault("max_segment_size", 4096)
    return Storage(path, **options)  # type: ignore[arg-type]


Placement = tuple[int, int, int, bytes]
"""(global_position, stream_id, offset, hash): a record's identity in the store-wide order."""


def placement(item: GlobalRecord) -> Placement:
    return (item.global_position, item.record.stream_id, item.record.offset, item.record.hash)


def everything(store_dir: Path) -> list[Placement]:
    """Every record of the store in global order, read (and verified) by a fresh reader."""
    out: list[Placement] = []
    with Storage(store_dir, read_only=True) as reader:
        position = 1
        while page := reader.read_global(position, 1 << 20):
            out += [placement(g) for g in page]
            position = page[-1].global_position + 1
    return out


def take(subscription: Iterator[GlobalRecord], n: int) -> list[GlobalRecord]:
    """The next ``n`` records; only call when they are committed already (else it would wait)."""
    return list(islice(subscription, n))


class SetClock:
    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@contextmanager
def following(subscription: Iterator[GlobalRecord]) -> Iterator[queue.Queue[object]]:
    """Run the subscription in a thread, putting each record (or the error that ended it, then
    ``None``) on the queue it yields."""
    got: queue.Queue[object] = queue.Queue()

    def run() -> None:
        try:
            for item in subscription:
                got.put(item)
        except BaseException as e:
            got.put(e)
        got.put(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield got
    finally:
        close = getattr(subscription, "close", None)
        if close is not None:
            close()
        thread.join(WAKE_TIMEOUT)


# --- where a subscription starts, and what it yields ---------------------------------------------------


def fill(store: Storage, batches: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    for b in range(batches):
        sid = rng.choice(STREAMS)
        store.append(sid, [f"b{b}-{i}".encode() for i in range(rng.randint(1, 3))])


def test_every_record_once_in_global_order_from_the_start_asked_for(store_dir: Path) -> None:
    with open_writer(store_dir) as store:
        fill(store, 30)
        expected = everything(store_dir)
        total = len(expected)
        assert [placement(g) for g in take(store.subscribe(), total)] == expected
        assert [placement(g) for g in take(store.subscribe(from_position=0), total)] == expected
        assert [placement(g) for g in take(store.subscribe(from_position=11), total - 10)] == expected[10:]
        for sid in STREAMS:
            mine = [p for p in expected if p[1] == sid]
            assert [placement(g) for g in take(store.subscribe(sid), len(mine))] == mine
            assert [placement(g) for g in take(store.subscribe(sid, from_offset=3), len(mine) - 3)] == mine[3:]
            # from a position: the stream's first record at or after it
            later = [p for p in mine if p[0] >= 20]
            assert [placement(g) for g in take(store.subscribe(sid, from_position=20), len(later))] == later
        # checkpoint records are in the order too: nothing is left out
        assert {g.record.kind.name for g in take(store.subscribe(), total)} == {"EVENT", "CHECKPOINT"}
        sub = store.subscribe()
        take(sub, 5)
        assert sub.position == 5


def test_an_offset_not_written_yet_starts_with_that_record(store_dir: Path) -> None:
    """from_offset past the stream's end: the records before it that come first are passed over."""
    with open_writer(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        store.append(1, [b"a0"])
        sub = store.subscribe(1, from_offset=3, poll_interval=HOUR, max_interval=HOUR)
        store.append(2, [b"other"])
        store.append(1, [b"a1", b"a2"])  # offsets 1, 2: before the start
        store.append(1, [b"a3", b"a4"])
        got = take(sub, 2)
        assert [(g.record.offset, g.record.payload) for g in got] == [(3, b"a3"), (4, b"a4")]
        assert [g.global_position for g in got] == [5, 6]


def test_bad_arguments_are_refused_before_anything_is_written(store_dir: Path) -> None:
    with open_writer(store_dir) as store:
        store.append(1, [b"x"])
        with pytest.raises(InvalidArgument, match="not both"):
            store.subscribe(1, from_offset=0, from_position=1)
        with pytest.raises(InvalidArgument, match="needs a stream_id"):
            store.subscribe(from_offset=0)
        for bad in ({"from_position": -1}, {"poll_interval": 0}, {"max_interval": float("inf")}):
            with pytest.raises(InvalidArgument):
                store.subscribe(1, consumer="c", **bad)
        with pytest.raises(InvalidArgument, match="shorter than"):
            store.subscribe(poll_interval=2, max_interval=1)
        for name in ("", "x" * 201, "a\0b", 7):
            with pytest.raises(InvalidArgument):
                store.subscribe(consumer=name)  # type: ignore[arg-type]
        assert store.consumers() == []  # none of the refused calls registered "c"


def test_should_stop_ends_the_iteration(store_dir: Path) -> None:
    with open_writer(store_dir) as store:
        store.append(1, [b"a", b"b"])
        polls = 0

        def stop() -> bool:
            nonlocal polls
            polls += 1
            return polls > 3

        got = list(store.subscribe(poll_interval=0.001, should_stop=stop))
        assert [g.record.payload for g in got] == [b"a", b"b"]


# --- waking in the writer's process --------------------------------------------------------------------


@pytest.mark.parametrize("through", ["the writer", "a read-only store in the same process"])
def test_a_subscriber_in_the_writers_process_wakes_on_each_commit(store_dir: Path, through: str) -> None:
    """With an hour between polls, only the commit signal can deliver each record within the bound."""
    with open_writer(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        store.append(0, [b"before"])
        follower = store if through == "the writer" else Storage(store_dir, read_only=True)
        try:
            with following(follower.subscribe(poll_interval=HOUR, max_interval=HOUR)) as got:
                assert isinstance(first := got.get(timeout=WAKE_TIMEOUT), GlobalRecord)
                assert first.record.payload == b"before"
                for i in range(8):
                    store.append(i % 3, [b"e%d" % i])
                    item = got.get(timeout=WAKE_TIMEOUT)
                    assert isinstance(item, GlobalRecord), item
                    assert (item.global_position, item.record.payload) == (i + 2, b"e%d" % i)
        finally:
            if follower is not store:
                follower.close()
        assert got.get(timeout=WAKE_TIMEOUT) is None  # close() woke it, and it ended
        assert got.empty()


def test_closing_the_store_wakes_a_waiting_subscription(store_dir: Path) -> None:
    store = open_writer(store_dir)
    store.append(0, [b"x"])
    with following(store.subscribe(from_position=2, poll_interval=HOUR, max_interval=HOUR)) as got:
        store.close()
        assert isinstance(got.get(timeout=WAKE_TIMEOUT), StoreClosed)
        assert got.get(timeout=WAKE_TIMEOUT) is None


def test_threads_appending_while_a_subscription_follows(store_dir: Path) -> None:
    """Four threads append concurrently (group commit); the follower gets every record once, in order."""
    per_thread = 40
    with open_writer(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        sub = store.subscribe(poll_interval=HOUR, max_interval=HOUR)
        with following(sub) as got:

            def append(t: int) -> None:
                for i in range(per_thread):
                    store.append(t, [b"t%d-%d" % (t, i)], fsync=False)

            threads = [threading.Thread(target=append, args=(t,)) for t in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            items = [got.get(timeout=WAKE_TIMEOUT) for _ in range(4 * per_thread)]
        assert all(isinstance(i, GlobalRecord) for i in items)
        records = [i for i in items if isinstance(i, GlobalRecord)]
        assert [g.global_position for g in records] == list(range(1, 4 * per_thread + 1))
        for t in range(4):
            assert [g.record.payload for g in records if g.record.stream_id == t] == [
                b"t%d-%d" % (t, i) for i in range(per_thread)
            ]


# --- consumers -------------------------------------------------------------------------------------------


def test_a_consumer_resumes_after_its_acknowledged_position(store_dir: Path) -> None:
    with open_writer(store_dir) as store:
        fill(store, 10)
        sub = store.subscribe(consumer="all")
        assert sub.consumer is not None
        assert sub.consumer.position == 0  # new: from the beginning
        first = take(sub, 6)
        assert first[0].global_position == 1
        state = store.ack("all", first[3].global_position)
        assert state.position == first[3].global_position
        assert state.acked == (first[3].record.stream_id, first[3].record.offset)
        stream_sub = store.subscribe(2, consumer="two")
        mine = take(stream_sub, 2)
        store.ack("two", mine[0].global_position)
    with open_writer(store_dir) as store:  # a restart of the writer and of the consumers
        fill(store, 5, seed=1)
        expected = everything(store_dir)
        resumed = store.subscribe(consumer="all")
        got = take(resumed, len(expected) - 4)
        assert [placement(g) for g in got] == expected[4:]
        assert [placement(g) for g in take(store.subscribe(consumer="all"), 2)] == expected[4:6]  # nothing acked since
        theirs = [p for p in expected if p[1] == 2]
        assert [placement(g) for g in take(store.subscribe(2, consumer="two"), len(theirs) - 1)] == theirs[1:]
        # a consumer follows what it was registered for
        with pytest.raises(ConsumerMismatch, match="follows stream 2, not every stream"):
            store.subscribe(consumer="two")
        with pytest.raises(ConsumerMismatch):
            store.register_consumer("all", 1)
        assert [(c.name, c.stream_id) for c in store.consumers()] == [("all", None), ("two", 2)]


def test_ack_is_checked_and_stored_in_one_transaction(store_dir: Path) -> None:
    with open_writer(store_dir) as store:
        store.append(1, [b"a", b"b", b"c"])
        store.register_consumer("c")
        with pytest.raises(UnknownConsumer):
            store.ack("nobody", 1)
        with pytest.raises(InvalidArgument, match="last committed position is 3"):
            store.ack("c", 4)
        assert store.ack("c", 3).position == 3
        assert store.ack("c", 3).position == 3  # the same again: nothing changes
        with pytest.raises(InvalidArgument, match="would move it back"):
            store.ack("c", 2)
        with pytest.raises(InvalidArgument):
            store.ack("c", -1)
        (state,) = store.consumers()
        assert (state.position, state.acked) == (3, (1, 2))
        back = store.ack("c", 0, force=True)  # start over, on purpose
        assert (back.position, back.acked) == (0, None)
        assert back.created_at_ns == state.created_at_ns
    # a read-only store acknowledges too: positions live in consumers.db, not the catalog
    with Storage(store_dir, read_only=True) as reader:
        assert reader.ack("c", 2).position == 2
        assert [c.position for c in reader.consumers()] == [2]


def test_concurrent_acks_never_move_a_consumer_back(store_dir: Path) -> None:
    """Threads with their own connections ack random positions: each either moves the consumer
    forward (or keeps it) or is refused, and it ends at the highest position acknowledged."""
    with open_writer(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        store.append(1, [b"e%d" % i for i in range(200)])
        store.register_consumer("shared")
    results: list[tuple[int, int]] = []  # (asked, stored afterwards) of every ack that succeeded
    lock = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        with Storage(store_dir, read_only=True) as reader:
            for _ in range(25):
                asked = rng.randint(1, 200)
                try:
                    state = reader.ack("shared", asked)
                except InvalidArgument:
                    continue
                with lock:
                    results.append((asked, state.position))

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results
    assert all(asked == stored for asked, stored in results)
    with Storage(store_dir, read_only=True) as reader:
        (state,) = reader.consumers()
    assert state.position == max(asked for asked, _ in results)
    assert state.acked == (1, state.position - 1)


def test_a_process_killed_while_acknowledging_leaves_one_whole_ack(store_dir: Path) -> None:
    with open_writer(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        for i in range(50):
            store.append(i % 3, [b"r%d" % i])
    child = spawn("ack-loop", str(store_dir))
    seen = [int(read_line(child)) for _ in range(10)]
    child.send_signal(signal.SIGKILL)
    seen += [int(line) for line in drain_killed(child)]
    with Storage(store_dir, read_only=True) as reader:
        (state,) = reader.consumers()
        # the last ack it reported, or the next one, whole: position and acknowledged record agree
        assert state.position in (seen[-1], seen[-1] % 50 + 1)
        assert state.acked == reader.record_at_position(state.position)
    conn = apsw.Connection(str(store_dir / CONSUMERS_FILE))
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()


def test_the_consumers_query_in_docs_schema_runs(store_dir: Path) -> None:
    """The read-only query docs/schema.md shows for consumers.db, run on a real one."""
    text = (THIS_FILE.parent.parent / "docs" / "schema.md").read_text(encoding="utf-8")
    (command,) = [b.split("```", 1)[0].strip() for b in text.split("```sh")[1:] if "consumers.db" in b]
    query = command.split('"')[1]
    with open_writer(store_dir) as store:
        store.append(4, [b"x", b"y"])
        store.register_consumer("audit", 4)
        store.ack("audit", 2)
        store.register_consumer("all")
    conn = apsw.Connection(str(store_dir / CONSUMERS_FILE), flags=apsw.SQLITE_OPEN_READONLY)
    rows = [row[:3] for row in conn.execute(query)]
    conn.close()
    assert rows == [("all", "all", 0), ("audit", 4, 2)]


# --- gaps, renumbering, damage ---------------------------------------------------------------------------


def cut_offset_2_of_stream_1(store_dir: Path) -> None:
    """Damage stream 1's record at offset 2 and cut the stream there: its positions 4 and 5 become a
    gap, and the cut marker that stands in for offsets 2..3 takes offset 4 and position 6."""
    with Storage(store_dir, read_only=True) as reader:
        third = reader.offset_index(1).lookup(2)
        assert third is not None
    flip_byte(segment_path(store_dir, 1, third.segment_no), third.position + third.length - 20)
    with open_writer(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        report = store.repair(truncate=True)
        assert report.after is not None
        assert report.after.ok
        assert store.last_global_position() == 6
        assert store.record_at_position(4) is None
        assert store.record_at_position(6) == (1, 4)


def five_records(store_dir: Path) -> None:
    with open_writer(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        store.append(1, [b"one", b"two"])  # 1, 2
        store.append(2, [b"other"])  # 3
        store.append(1, [b"three"])  # 4
        store.append(1, [b"four"])  # 5


def test_gaps_left_by_a_repair_are_stepped_over(store_dir: Path) -> None:
    five_records(store_dir)
    with open_writer(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        store.register_consumer("cut")
        store.ack("cut", 5)  # the record at 5 will be cut
    cut_offset_2_of_stream_1(store_dir)
    with open_writer(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        everyone = store.subscribe(poll_interval=HOUR, max_interval=HOUR)
        assert [g.global_position for g in take(everyone, 3)] == [1, 2, 3]
        at_gap = store.subscribe(1, from_position=4, poll_interval=HOUR, max_interval=HOUR)
        with following(at_gap) as got, following(everyone) as got_all:
            store.append(1, [b"five"])  # position 7
            for q in (got, got_all):
                marker = q.get(timeout=WAKE_TIMEOUT)
                assert isinstance(marker, GlobalRecord)
                assert (marker.global_position, marker.record.offset, marker.record.kind) == (6, 4, RecordKind.REPAIR)
                item = q.get(timeout=WAKE_TIMEOUT)
                assert isinstance(item, GlobalRecord)
                assert (item.global_position, item.record.offset, item.record.payload) == (7, 5, b"five")
        assert everyone.position == 7
        # the acknowledged record was cut: positions are never reused, so the consumer resumes after it
        resumed = store.subscribe(consumer="cut")
        assert [g.global_position for g in take(resumed, 1)] == [6]


def test_a_consumer_whose_position_a_power_loss_gave_to_another_record_is_told_so(
    store_dir: Path, tmp_path: Path
) -> None:
    """An append without fsync can be lost with the catalog commit that gave out its position (a
    power loss); that position then goes to the next record committed. A consumer that had
    acknowledged the lost record would resume after another one: it is refused until told where
    to resume."""
    policy = CheckpointPolicy.explicit()
    with open_writer(store_dir, checkpoint_policy=policy) as store:
        store.append(1, [b"kept"])  # position 1
    saved = save_catalog(store_dir, tmp_path / "catalog.saved")
    segment = active_segment(store_dir, 1)
    size = segment.stat().st_size
    with open_writer(store_dir, checkpoint_policy=policy) as store:
        store.append(1, [b"lost"], fsync=False)  # position 2
        store.register_consumer("c")
        store.ack("c", 2)
        store.register_consumer("fresh")
    # the power loss: neither the unsynced bytes nor the catalog commit survive it
    tear_tail(segment, segment.stat().st_size - size)
    rollback_catalog(store_dir, saved)
    with open_writer(store_dir, checkpoint_policy=policy) as store:
        store.append(2, [b"other"])  # position 2 again: the lost record's was never durable
        assert store.record_at_position(2) == (2, 0)
        with pytest.raises(ConsumerPositionLost, match=r"was stream 1 offset 1 .* now stream 2 offset 0"):
            store.subscribe(consumer="c")
        assert [g.record.payload for g in take(store.subscribe(consumer="fresh"), 2)] == [b"kept", b"other"]
        # the owner decides: start again from the beginning
        store.ack("c", 0, force=True)
        assert [g.record.payload for g in take(store.subscribe(consumer="c"), 2)] == [b"kept", b"other"]


def test_a_consumer_past_the_mark_after_a_power_loss_is_told_so(store_dir: Path, tmp_path: Path) -> None:
    policy = CheckpointPolicy.explicit()
    with open_writer(store_dir, checkpoint_policy=policy) as store:
        store.append(1, [b"a", b"b", b"c"])  # positions 1..3
    saved = save_catalog(store_dir, tmp_path / "catalog.saved")
    segment = active_segment(store_dir, 1)
    size = segment.stat().st_size
    with open_writer(store_dir, checkpoint_policy=policy) as store:
        store.append(1, [b"d", b"e"], fsync=False)  # positions 4, 5
        store.register_consumer("c")
        store.ack("c", 5)
    tear_tail(segment, segment.stat().st_size - size)
    rollback_catalog(store_dir, saved)
    with open_writer(store_dir, checkpoint_policy=policy) as store:
        assert store.last_global_position() == 3
        with pytest.raises(ConsumerPositionLost, match="past the last position"):
            store.subscribe(consumer="c")
        sub = store.subscribe(consumer="c", from_position=3)  # an explicit start is always allowed
        assert [g.global_position for g in take(sub, 1)] == [3]
        assert store.ack("c", 3, force=True).position == 3


def test_a_consumer_keeps_its_place_across_a_rebuild_whatever_the_clock_did(store_dir: Path) -> None:
    """Positions are in the frames: a rebuild keeps them, so a consumer resumes where it was."""
    clock = SetClock(T0 + 10 * SECOND)
    policy = CheckpointPolicy.explicit()
    with open_writer(store_dir, checkpoint_policy=policy, clock=clock) as store:
        store.append(1, [b"late"])  # position 1, at 10 s
        clock.now = T0 + 5 * SECOND
        store.append(2, [b"early"])  # position 2, at 5 s
        store.register_consumer("c")
        store.ack("c", 1)
        store.rebuild_catalog()
        assert store.record_at_position(1) == (1, 0)
        assert [g.record.payload for g in take(store.subscribe(consumer="c"), 1)] == [b"early"]


def test_a_damaged_record_raises_out_of_the_iterator(store_dir: Path) -> None:
    with open_writer(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        store.append(1, [b"good"])
        store.append(2, [b"tampered"])
        position = store.offset_index(2).lookup(0)
        assert position is not None
    flip_byte(segment_path(store_dir, 2, position.segment_no), position.position + position.length - 20)
    with Storage(store_dir, read_only=True) as reader:
        sub = reader.subscribe(from_position=2)
        with pytest.raises(IntegrityError):
            next(sub)
        # a subscription of the other stream is not affected
        assert [g.record.payload for g in take(reader.subscribe(1), 1)] == [b"good"]


# --- other processes -------------------------------------------------------------------------------------


def spawn(*args: str, stdin: bool = False) -> subprocess.Popen[str]:
    return harness.spawn(THIS_FILE, *args, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL)


def test_a_reader_process_follows_a_writer_process(store_dir: Path) -> None:
    """The writer is the other process here; this one follows it, read-only, by polling, until the
    writer has exited and everything it committed has arrived."""
    batches = 60
    writer = spawn("write", str(store_dir), "follow", str(batches), "0", "0.002")
    deadline = time.monotonic() + CHILD_TIMEOUT
    final_mark: int | None = None
    got: list[Placement] = []
    with Storage(store_dir, read_only=True) as reader:

        def done() -> bool:
            nonlocal final_mark
            if final_mark is None and writer.poll() is not None:
                final_mark = reader.last_global_position()  # nothing commits after the writer exits
            return (final_mark is not None and sub.position >= final_mark) or time.monotonic() > deadline

        sub = reader.subscribe(poll_interval=0.002, max_interval=0.02, should_stop=done)
        got += [placement(item) for item in sub]
    out, err = writer.communicate(timeout=CHILD_TIMEOUT)
    assert writer.returncode == 0, err
    assert len(out.splitlines()) == batches
    assert got == everything(store_dir)
    assert got[-1][0] == final_mark


@pytest.mark.parametrize("found", ["no store yet", "a catalog being created"])
def test_a_reader_started_before_the_writer_waits_for_it(store_dir: Path, found: str) -> None:
    """A follower may open the store before a writer has created it, or while the writer's new
    catalog has no schema yet: it sees an empty store, and then the writer's records."""
    if found == "a catalog being created":
        store_dir.mkdir()
        (store_dir / "catalog.db").touch()  # what a reader can meet between the writer's create and migrate
    with Storage(store_dir, read_only=True) as reader:
        sub = reader.subscribe(poll_interval=0.001, max_interval=0.01)
        assert reader.last_global_position() == 0
        assert reader.read_global() == []
        with open_writer(store_dir) as store:
            store.append(3, [b"first"])
        assert [(g.global_position, g.record.payload) for g in take(sub, 1)] == [(1, b"first")]


@dataclass(frozen=True)
class Delivery:
    """One record as the consumer process printed it, before acknowledging it."""

    position: int
    stream_id: int
    offset: int
    kind: str
    hash: str
    payload: str

    def placement(self) -> Placement:
        return (self.position, self.stream_id, self.offset, bytes.fromhex(self.hash))


def acknowledged_position(store_dir: Path, consumer: str) -> int:
    with Storage(store_dir, read_only=True) as reader:
        (state,) = [c for c in reader.consumers() if c.name == consumer]
        return state.position


def run_killed_writers_and_a_consumer(store_dir: Path, rounds: int, consumer_kills: set[int], seed: int) -> None:
    """The issue's test: writers SIGKILLed mid-stream, a consumer process following and acknowledging.

    In the rounds named by ``consumer_kills`` the consumer is SIGKILLed too (while a writer runs),
    then restarted: what it printed after its acknowledged position is dropped (it was not
    acknowledged; a consumer that is killed processes such a record again), and the restarted one
    must go on from exactly there.
    """
    rng = random.Random(seed)
    with open_writer(store_dir) as store:
        store.append(1, [b'{"start": true}'])  # the store exists before the consumer opens it read-only
    consumer = spawn("consume", str(store_dir), "issue")
    received: list[Delivery] = []

    def receive(line: str) -> None:
        received.append(Delivery(**json.loads(line)))

    acknowledged_batches: list[str] = []
    for r in range(rounds):
        writer = spawn("write", str(store_dir), f"r{r}", "1000000", str(rng.randrange(1 << 30)), "0", stdin=True)
        acknowledged_batches += [read_line(writer) for _ in range(rng.randint(2, 12))]
        if r in consumer_kills:
            for _ in range(rng.randint(1, 5)):
                receive(read_line(consumer))
            consumer.send_signal(signal.SIGKILL)
            for line in drain_killed(consumer):
                receive(line)
            acked = acknowledged_position(store_dir, "issue")
            printed = [d.position for d in received]
            assert acked == 0 or acked in printed, "it acknowledged a record it never printed"
            assert len([p for p in printed if p > acked]) <= 1, "it prints, then acknowledges, one at a time"
            received = [d for d in received if d.position <= acked]
            consumer = spawn("consume", str(store_dir), "issue")
        send_plan(writer, KillPlan.choose(rng, 1, 3))  # it kills itself there, from now on
        acknowledged_batches += drain_killed(writer)
    # a last writer (recovery runs) ends the run with a marker, and no checkpoint after it
    with open_writer(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        store.append(0, [b'{"end": true}'])
    while not received or received[-1].payload != '{"end": true}':
        receive(read_line(consumer))
    _out, err = consumer.communicate(timeout=CHILD_TIMEOUT)
    assert consumer.returncode == 0, err

    final = everything(store_dir)
    # every committed record exactly once, in order, and nothing else (nothing uncommitted)
    assert [d.placement() for d in received] == final
    assert acknowledged_position(store_dir, "issue") == final[-1][0]
    # what the writers acknowledged is among them
    delivered_batches = {json.loads(d.payload).get("batch") for d in received if d.kind == "EVENT"}
    for line in acknowledged_batches:
        assert line.split(" ")[1] in delivered_batches, f"acknowledged {line} was not delivered"


def test_a_consumer_process_gets_every_committed_event_once_while_writers_are_killed(store_dir: Path) -> None:
    run_killed_writers_and_a_consumer(store_dir, rounds=4, consumer_kills={1}, seed=4)


@pytest.mark.slow
def test_twenty_killed_writers_and_five_killed_consumers(store_dir: Path) -> None:
    run_killed_writers_and_a_consumer(store_dir, rounds=20, consumer_kills={2, 5, 9, 13, 17}, seed=20)


def test_a_second_writer_still_refused_while_consumers_ack(store_dir: Path) -> None:
    """Acknowledging writes consumers.db only: the store keeps its one writer."""
    with open_writer(store_dir) as store:
        store.append(0, [b"x"])
        with Storage(store_dir, read_only=True) as reader:
            reader.register_consumer("r")
            reader.ack("r", 1)
        with pytest.raises(StorageLocked):
            open_writer(store_dir)


# --- the children ----------------------------------------------------------------------------------------


def child_write(store_dir: Path, run: str, batches: int, seed: int, pause: float) -> None:
    """Append batches of 1-3 events to random streams, printing "ack BATCH" after each returns (and
    dying where the kill plan the parent sends on stdin says, if it sends one)."""
    arm_when_told()
    rng = random.Random(seed)
    with open_writer(store_dir) as store:
        for b in range(batches):
            batch_id = f"{run}-{b}"
            events = [json.dumps({"batch": batch_id, "i": i}).encode() for i in range(rng.randint(1, 3))]
            store.append(rng.choice(STREAMS), events)
            acknowledge(f"ack {batch_id}")
            time.sleep(pause)


def child_consume(store_dir: Path, name: str) -> None:
    """Follow every stream as consumer ``name``: print each record, then acknowledge it; stop at the end marker."""
    with Storage(store_dir, read_only=True) as reader:
        for item in reader.subscribe(consumer=name, poll_interval=0.002, max_interval=0.05):
            record = item.record
            line = {
                "position": item.global_position,
                "stream_id": record.stream_id,
                "offset": record.offset,
                "kind": record.kind.name,
                "hash": record.hash.hex(),
                "payload": record.payload.decode("utf-8", errors="backslashreplace"),
            }
            print(json.dumps(line), flush=True)
            reader.ack(name, item.global_position)
            if record.payload == b'{"end": true}':
                return


def child_ack_loop(store_dir: Path) -> None:
    """Acknowledge positions 1, 2, ..., last, 1, 2, ... for consumer "loop", printing each after it returns."""
    with Storage(store_dir, read_only=True) as reader:
        reader.register_consumer("loop")
        last = reader.last_global_position()
        for n in range(1_000_000):
            position = n % last + 1
            reader.ack("loop", position, force=True)
            print(position, flush=True)


def child_main(argv: list[str]) -> int:
    command, store_dir, *rest = argv
    if command == "write":
        run, batches, seed, pause = rest
        child_write(Path(store_dir), run, int(batches), int(seed), float(pause))
    elif command == "consume":
        (name,) = rest
        child_consume(Path(store_dir), name)
    elif command == "ack-loop":
        child_ack_loop(Path(store_dir))
    else:
        raise SystemExit(f"unknown command {command}")
    return 0


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
