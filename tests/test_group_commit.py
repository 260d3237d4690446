"""Group commit: concurrent appends share one write, fsync and catalog commit per group.

Each test slows fsync down (a short sleep in the segment writer's sync) so that while one thread
leads a group, others really do queue up behind it; the assertions are about outcomes (what was
stored, who got which error, how many fsyncs ran), never about time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hybridlog import (
    CheckpointPolicy,
    OffsetMismatch,
    RecordKind,
    Storage,
    StorageIOError,
)
from hybridlog.groupcommit import GroupCommitQueue
from hybridlog.segment import SegmentWriter
from hybridlog.testing.damage import genesis_events, genesis_records
from hybridlog.writer import Writer

THREADS = 8
APPENDS_PER_THREAD = 25


@pytest.fixture
def slow_fsync(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make every segment fsync take 2 ms and count them; returns the one-element counter."""
    calls = [0]
    real_sync = SegmentWriter.sync

    def sync(self: SegmentWriter) -> None:
        calls[0] += 1
        time.sleep(0.002)
        real_sync(self)

    monkeypatch.setattr(SegmentWriter, "sync", sync)
    return calls


@pytest.fixture
def group_count(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the groups committed (each is one catalog transaction)."""
    calls = [0]
    real_write_group = Writer.write_group

    def write_group(self: Writer, *args: Any, **kwargs: Any) -> None:
        calls[0] += 1
        real_write_group(self, *args, **kwargs)

    monkeypatch.setattr(Writer, "write_group", write_group)
    return calls


def run_threads(count: int, work: Callable[[int], None]) -> list[BaseException]:
    errors: list[BaseException] = []
    start = threading.Barrier(count)

    def body(n: int) -> None:
        start.wait()
        try:
            work(n)
        except BaseException as e:  # collected and asserted on by the caller
            errors.append(e)

    threads = [threading.Thread(target=body, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_threads_on_their_own_streams_share_commits(
    store_dir: Path, slow_fsync: list[int], group_count: list[int]
) -> None:
    with Storage(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as store:

        def work(n: int) -> None:
            offset, head = 0, None
            for i in range(APPENDS_PER_THREAD):
                offset, head = store.append_batch(n, [f"{n}:{i}".encode()], offset, head, fsync=True)

        assert run_threads(THREADS, work) == []
        appends = THREADS * APPENDS_PER_THREAD
        # Every append was durable when it returned (one fsync per stream touched per group), but
        # the appends shared their catalog commits.
        assert slow_fsync[0] >= group_count[0]
        assert group_count[0] < appends / 2
        for n in range(THREADS):
            assert genesis_events(store, n) == [f"{n}:{i}".encode() for i in range(APPENDS_PER_THREAD)]
        assert store.check().ok


def test_threads_appending_to_one_stream_all_land_in_order_per_thread(store_dir: Path, slow_fsync: list[int]) -> None:
    with Storage(store_dir, checkpoint_policy=CheckpointPolicy.every(10)) as store:

        def work(n: int) -> None:
            for i in range(APPENDS_PER_THREAD):
                store.append(0, [f"{n}:{i}".encode()], fsync=True)

        assert run_threads(THREADS, work) == []
        events = genesis_events(store, 0)
        assert len(events) == THREADS * APPENDS_PER_THREAD
        for n in range(THREADS):
            mine = [int(e.split(b":")[1]) for e in events if e.startswith(f"{n}:".encode())]
            assert mine == list(range(APPENDS_PER_THREAD))
        kinds = [r.kind for r in genesis_records(store, 0)]
        assert kinds.count(RecordKind.CHECKPOINT) == len(events) // 10
        assert slow_fsync[0] < len(events) / 2
        assert store.check().ok


def test_a_conflict_in_a_group_fails_only_its_caller(store_dir: Path, slow_fsync: list[int]) -> None:
    """Racing appends at the same expected offset: exactly one wins, the others get OffsetMismatch."""
    with Storage(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        store.append(0, [b"genesis"])
        head = store.latest_chain_hash(0)
        outcomes: dict[int, str] = {}

        def work(n: int) -> None:
            try:
                store.append_batch(0, [f"racer {n}".encode()], 1, head)
                outcomes[n] = "won"
            except OffsetMismatch as e:
                outcomes[n] = f"conflict {e.expected} {e.actual}"

        assert run_threads(THREADS, work) == []
        assert sorted(outcomes.values()) == ["conflict 1 2"] * (THREADS - 1) + ["won"]
        (winner,) = (n for n, o in outcomes.items() if o == "won")
        assert genesis_events(store, 0) == [b"genesis", f"racer {winner}".encode()]


def test_a_failed_group_write_fails_every_batch_in_it_and_stores_none(
    store_dir: Path, slow_fsync: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    with Storage(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        store.append(0, [b"before"])
        real_write_at = SegmentWriter.write_at
        failing = threading.Event()
        failing.set()

        def write_at(self: SegmentWriter, position: int, data: bytes | bytearray | memoryview) -> None:
            if failing.is_set():
                raise OSError(5, "Input/output error")
            real_write_at(self, position, data)

        monkeypatch.setattr(SegmentWriter, "write_at", write_at)

        def work(n: int) -> None:
            store.append(n % 2, [f"lost {n}".encode()])

        errors = run_threads(THREADS, work)
        assert len(errors) == THREADS
        assert all(isinstance(e, StorageIOError) for e in errors)
        failing.clear()
        assert genesis_events(store, 0) == [b"before"]
        assert genesis_events(store, 1) == []
        store.append(0, [b"after"])
        assert genesis_events(store, 0) == [b"before", b"after"]
        assert store.check().ok


def test_rotation_inside_a_group(store_dir: Path, slow_fsync: list[int]) -> None:
    """Many batches of one group may fill several segments; each is sealed and indexed."""
    with Storage(store_dir, max_segment_size=4096, checkpoint_policy=CheckpointPolicy.every(5)) as store:

        def work(n: int) -> None:
            for i in range(10):
                store.append(0, [bytes([n]) * 900, f"{n}:{i}".encode()])

        assert run_threads(THREADS, work) == []
        segments = store.segments(0)
        assert len(segments) > 10
        assert all(s.sealed for s in segments[:-1])
        assert not segments[-1].sealed
        assert len(genesis_events(store, 0)) == THREADS * 10 * 2
        assert store.check().ok
    with Storage(store_dir, read_only=True) as reader:
        assert reader.check().ok


# --- the queue's gathering leader (groupcommit.py) ------------------------------------------------


class Request:
    def __init__(self, name: str) -> None:
        self.name = name
        self.done = False
        self.error: BaseException | None = None


def _wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "the condition never came true"
        time.sleep(0.001)


def _recording(groups: list[list[str]]) -> Callable[[list[Request]], None]:
    def commit(group: list[Request]) -> None:
        groups.append([r.name for r in group])
        for r in group:
            r.done = True

    return commit


def _after_a_group_of_two(queue: GroupCommitQueue[Request]) -> None:
    """The queue's state after a group of two that took two minutes (so its patience is one)."""
    queue._last_size, queue._patience = 2, 60.0


def test_a_leader_about_to_fsync_gathers_as_many_requests_as_the_last_group_held() -> None:
    queue: GroupCommitQueue[Request] = GroupCommitQueue()
    _after_a_group_of_two(queue)
    groups: list[list[str]] = []
    leader = threading.Thread(target=queue.submit, args=(Request("first"), _recording(groups)), kwargs={"gather": True})
    leader.start()
    _wait_until(lambda: queue._gathering)  # the leader waits for a second request, committing nothing
    assert groups == []
    queue.submit(Request("second"), _recording(groups), gather=True)  # joins the leader's group
    leader.join()
    assert groups == [["first", "second"]]


def test_a_leader_that_will_not_fsync_does_not_wait() -> None:
    queue: GroupCommitQueue[Request] = GroupCommitQueue()
    _after_a_group_of_two(queue)
    groups: list[list[str]] = []
    queue.submit(Request("alone"), _recording(groups), gather=False)
    assert groups == [["alone"]]
