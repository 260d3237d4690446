"""What ``append`` says after a failed write is what the store holds after a reopen.

Contracts tested here, with I/O errors injected for real at named steps of the write path (the
segment writer's ``write_at``, ``sync`` and ``truncate`` raise ``OSError(EIO)``; the catalog's
COMMIT is refused by SQLite's commit hook, or fails after it happened):

* **"batch not stored" is true.** A ``StorageIOError`` / ``CatalogError`` that is not
  ``AppendOutcomeUnknown`` means the batch is absent after the store is reopened (the cut-back is
  fsynced, so not even a power loss brings it back), and the stream takes appends at once.
* **Otherwise the outcome is unknown, and says so.** When the cut-back fails, or the COMMIT itself
  fails, the caller gets ``AppendOutcomeUnknown`` naming the stream and the batch's offsets; the
  stream refuses further appends (a plain ``StorageIOError``: those are not stored) until the store
  is reopened; other streams go on. After the reopen the batch is wholly there or wholly absent,
  reading from ``first_offset`` tells which, and appends continue the chain.
* In a group with several streams, only the streams whose cut failed get ``AppendOutcomeUnknown``.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import apsw
import pytest

from hybridlog import (
    AppendOutcomeUnknown,
    CatalogError,
    CheckpointPolicy,
    Storage,
    StorageError,
    StorageIOError,
)
from hybridlog.catalog import Catalog
from hybridlog.segment import SegmentWriter
from hybridlog.testing.clocks import make_clock
from hybridlog.testing.damage import genesis_events

SEGMENT_SIZE = 4096
EIO = OSError(errno.EIO, "Input/output error")


def open_store(path: Path) -> Storage:
    return Storage(
        path, checkpoint_policy=CheckpointPolicy.explicit(), max_segment_size=SEGMENT_SIZE, clock=make_clock()
    )


class Failpoints:
    """Makes the segment writer raise EIO at named steps: ``write`` (after writing every byte, the
    worst case), ``sync``, ``truncate``, ``sync_after_truncate``; ``only`` limits them to one file."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.armed: set[str] = set()
        self.only: Path | None = None
        self.truncated: set[Path] = set()
        self.hits: list[str] = []
        real_write, real_sync, real_truncate = SegmentWriter.write_at, SegmentWriter.sync, SegmentWriter.truncate
        points = self

        def applies(writer: SegmentWriter, step: str) -> bool:
            if step in points.armed and (points.only is None or writer.path == points.only):
                points.hits.append(step)
                return True
            return False

        def write_at(self: SegmentWriter, position: int, data: bytes | bytearray | memoryview) -> None:
            real_write(self, position, data)
            if applies(self, "write"):
                raise EIO

        def sync(self: SegmentWriter) -> None:
            if applies(self, "sync_after_truncate" if self.path in points.truncated else "sync"):
                raise EIO
            real_sync(self)

        def truncate(self: SegmentWriter, size: int) -> None:
            if applies(self, "truncate"):
                raise EIO
            real_truncate(self, size)
            points.truncated.add(self.path)

        monkeypatch.setattr(SegmentWriter, "write_at", write_at)
        monkeypatch.setattr(SegmentWriter, "sync", sync)
        monkeypatch.setattr(SegmentWriter, "truncate", truncate)

    def arm(self, *steps: str, only: Path | None = None) -> None:
        self.armed, self.only, self.hits = set(steps), only, []
        self.truncated.clear()

    def disarm(self) -> None:
        self.armed = set()


@pytest.fixture
def failpoints(monkeypatch: pytest.MonkeyPatch) -> Failpoints:
    return Failpoints(monkeypatch)


def stored_after_reopen(store_dir: Path, stream_id: int, first: int, batch: list[bytes], before: list[bytes]) -> bool:
    """Reopen the store (recovery runs) and say whether ``batch`` is there from offset ``first``.

    Either way the stream holds exactly ``before`` plus, possibly, the whole batch; nothing is
    damaged, ``check()`` finds nothing, and an append continues the chain.
    """
    with open_store(store_dir) as store:
        assert store.damaged_streams() == {}
        events = genesis_events(store, stream_id)
        assert events in (before, before + batch), events
        stored = events == before + batch
        assert [r.payload for r in list(store.iter_records(stream_id, first))] == (batch if stored else [])
        assert store.check().findings == []
        store.append(stream_id, [b"after reopen"])
        assert genesis_events(store, stream_id) == [*events, b"after reopen"]
    return stored


def fill(store: Storage, stream_id: int, count: int) -> list[bytes]:
    events = [f"stream {stream_id} event {i}".encode() * 4 for i in range(count)]
    for event in events:
        store.append(stream_id, [event])
    return events


BATCH = [b"first of the batch " * 5, b"second of the batch " * 5, b"third"]


# --- a single stream ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "unknown"),
    [
        (("write",), False),  # cut back and synced: not stored
        (("sync",), False),
        (("write", "truncate"), True),  # the bytes stay: recovery adopts them
        (("sync", "truncate"), True),
        (("write", "sync_after_truncate"), True),  # the cut may not be durable
        (("sync", "sync_after_truncate"), True),
    ],
    ids=lambda v: "+".join(v) if isinstance(v, tuple) else ("unknown" if v else "not-stored"),
)
def test_the_error_says_what_a_reopen_finds(
    tmp_path: Path, failpoints: Failpoints, steps: tuple[str, ...], unknown: bool
) -> None:
    store_dir = tmp_path / "store"
    with open_store(store_dir) as store:
        before = fill(store, 1, 3)
        other = fill(store, 2, 1)
        first = store.next_offset(1)
        failpoints.arm(*steps)
        with pytest.raises(StorageError) as caught:
            store.append(1, BATCH)
        assert failpoints.hits[: len(steps)] == list(steps)
        failpoints.disarm()
        error = caught.value
        assert isinstance(error, AppendOutcomeUnknown) == unknown, error
        if unknown:
            assert isinstance(error, AppendOutcomeUnknown)
            assert (error.stream_id, error.first_offset, error.next_offset) == (1, first, first + len(BATCH))
            assert "reopen" in str(error)
            assert f"offset {first}" in str(error)
            # Fenced: a later append to the stream fails (and is not stored); other streams go on.
            with pytest.raises(StorageIOError) as fenced:
                store.append(1, [b"refused"])
            assert not isinstance(fenced.value, AppendOutcomeUnknown)
            assert "reopened" in str(fenced.value)
        else:
            assert isinstance(error, StorageIOError)
            assert "batch not stored" in str(error)
            assert store.next_offset(1) == first
        store.append(2, [b"other stream goes on"])
    stored = stored_after_reopen(store_dir, 1, first, BATCH, before)
    if not unknown:
        assert not stored  # "not stored" was true
    else:
        assert stored == ("truncate" in steps)  # the complete bytes were left for recovery
    with open_store(store_dir) as store:
        assert genesis_events(store, 2) == [*other, b"other stream goes on"]


def test_a_rotating_append_whose_new_segment_cannot_be_removed(tmp_path: Path, failpoints: Failpoints) -> None:
    """The batch goes to a new segment file; writing it fails and so does cutting it: unknown."""
    store_dir = tmp_path / "store"
    with open_store(store_dir) as store:
        before: list[bytes] = []
        while store.segments(1)[-1:] == [] or store.segments(1)[-1].size_bytes < SEGMENT_SIZE - 500:
            before += fill(store, 1, 1)  # until the batch no longer fits in the active segment
        segments = store.segments(1)
        first = store.next_offset(1)
        new_segment = segments[-1].path.with_name(f"{segments[-1].segment_no + 1:020d}.seg")
        failpoints.arm("write", "truncate", only=new_segment)
        with pytest.raises(AppendOutcomeUnknown) as caught:
            store.append(1, BATCH)
        failpoints.disarm()
        assert (caught.value.first_offset, caught.value.next_offset) == (first, first + len(BATCH))
        assert new_segment.exists()
    assert stored_after_reopen(store_dir, 1, first, BATCH, before)
    with open_store(store_dir) as store:
        assert len(store.segments(1)) == len(segments) + 1
        assert store.segments(1)[-2].sealed


# --- the catalog COMMIT --------------------------------------------------------------------------------


def test_a_refused_commit_is_an_unknown_outcome_and_nothing_is_cut(tmp_path: Path) -> None:
    """SQLite turns the COMMIT into a rollback (the commit hook says no): the batch's bytes stay,
    the caller is told the outcome is unknown, and the reopen adopts the batch."""
    store_dir = tmp_path / "store"
    with open_store(store_dir) as store:
        before = fill(store, 1, 2)
        first = store.next_offset(1)
        catalog = store._catalog
        assert catalog is not None
        catalog.conn.set_commit_hook(lambda: True)
        try:
            with pytest.raises(AppendOutcomeUnknown) as caught:
                store.append(1, BATCH)
        finally:
            catalog.conn.set_commit_hook(None)
        assert isinstance(caught.value.__cause__, apsw.Error)
        assert store.next_offset(1) == first  # the catalog did not commit it
        with pytest.raises(StorageIOError):
            store.append(1, [b"refused"])
    assert stored_after_reopen(store_dir, 1, first, BATCH, before)


def test_a_commit_that_happened_then_failed_is_not_cut_from_under_the_catalog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The COMMIT reaches the catalog, then an error is raised: cutting the segment now would leave
    the catalog pointing at bytes that are gone. The batch stays, the outcome is unknown, and the
    reopened store holds the batch with nothing damaged."""
    store_dir = tmp_path / "store"
    real_transaction = Catalog.transaction

    @contextmanager
    def commit_then_fail(self: Catalog) -> Iterator[None]:
        with real_transaction(self):
            yield
        raise apsw.IOError("disk I/O error after the commit")

    with open_store(store_dir) as store:
        before = fill(store, 1, 2)
        first = store.next_offset(1)
        monkeypatch.setattr(Catalog, "transaction", commit_then_fail)
        with pytest.raises(AppendOutcomeUnknown) as caught:
            store.append(1, BATCH)
        monkeypatch.undo()
        assert caught.value.stream_id == 1
        with pytest.raises(StorageIOError):
            store.append(1, [b"refused"])
    assert stored_after_reopen(store_dir, 1, first, BATCH, before)


def test_a_failure_inside_the_transaction_is_not_stored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A statement of the catalog transaction fails: rolled back, cut back, and truly not stored."""
    store_dir = tmp_path / "store"

    def refuse(*args: object, **kwargs: object) -> None:
        raise apsw.FullError("database or disk is full")

    with open_store(store_dir) as store:
        before = fill(store, 1, 2)
        first = store.next_offset(1)
        monkeypatch.setattr(Catalog, "insert_batches", refuse)
        with pytest.raises(CatalogError, match="batch not stored") as caught:
            store.append(1, BATCH)
        monkeypatch.undo()
        assert not isinstance(caught.value, AppendOutcomeUnknown)
        store.append(1, [b"accepted at once"])
        before.append(b"accepted at once")
    assert not stored_after_reopen(store_dir, 1, first + 1, BATCH, before)


# --- a group of several streams ----------------------------------------------------------------------


def test_in_a_group_only_the_streams_whose_cut_failed_are_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two threads' batches for streams 1 and 2 are committed as one group; the write fails for the
    group and only stream 1's cut fails: stream 1's caller gets AppendOutcomeUnknown, stream 2's a
    plain "not stored", and the reopen agrees with both."""
    store_dir = tmp_path / "store"
    with open_store(store_dir) as store:
        before = {1: fill(store, 1, 2), 2: fill(store, 2, 2)}
        firsts = {sid: store.next_offset(sid) for sid in (1, 2)}
        batches = {1: [b"one-a", b"one-b"], 2: [b"two-a"]}
        segment_1 = store.segments(1)[-1].path
        real_write, real_truncate = SegmentWriter.write_at, SegmentWriter.truncate
        leader_writing, release = threading.Event(), threading.Event()

        def write_at(self: SegmentWriter, position: int, data: bytes | bytearray | memoryview) -> None:
            if not leader_writing.is_set():  # the first group (stream 3): held until the others queue
                leader_writing.set()
                assert release.wait(30)
                real_write(self, position, data)
                return
            real_write(self, position, data)  # the second group: every byte written, then EIO
            raise EIO

        def truncate(self: SegmentWriter, size: int) -> None:
            if self.path == segment_1:
                raise EIO
            real_truncate(self, size)

        monkeypatch.setattr(SegmentWriter, "write_at", write_at)
        monkeypatch.setattr(SegmentWriter, "truncate", truncate)
        results: dict[int, BaseException | None] = {}

        def append(sid: int, events: list[bytes]) -> threading.Thread:
            def run() -> None:
                try:
                    store.append(sid, events)
                    results[sid] = None
                except BaseException as e:
                    results[sid] = e

            thread = threading.Thread(target=run)
            thread.start()
            return thread

        threads = [append(3, [b"leader"])]
        assert leader_writing.wait(30)
        threads += [append(sid, batches[sid]) for sid in (1, 2)]
        while len(store._writer.commits._queue) < 2:  # both wait behind the leader: they form the next group
            threading.Event().wait(0.001)
        release.set()
        for thread in threads:
            thread.join(30)
        monkeypatch.undo()

        assert results[3] is None
        unknown, not_stored = results[1], results[2]
        assert isinstance(unknown, AppendOutcomeUnknown), unknown
        assert (unknown.stream_id, unknown.first_offset, unknown.next_offset) == (1, firsts[1], firsts[1] + 2)
        assert isinstance(not_stored, StorageIOError)
        assert not isinstance(not_stored, AppendOutcomeUnknown)
        assert "batch not stored" in str(not_stored)
        store.append(2, [b"stream 2 goes on"])
        with pytest.raises(StorageIOError):
            store.append(1, [b"fenced"])
    assert stored_after_reopen(store_dir, 1, firsts[1], batches[1], before[1])
    with open_store(store_dir) as store:
        assert genesis_events(store, 2) == [*before[2], b"stream 2 goes on"]
        assert genesis_events(store, 3) == [b"leader"]
