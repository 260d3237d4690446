"""Preallocated segments: an fsync'd append writes into space reserved ahead of the data.

Contracts tested here:

* An fsync'd append reserves zeros past the data of the stream's active segment
  (``SegmentWriter.preallocate``); reads, the catalog and ``check()`` see only the data; appends
  without fsync fill the reserved space too.
* The zeros are given back where anything else looks at the file: a sealed segment ends where its
  data does (its digest is of the data), a clean close trims the active segment, and a check or
  recovery run by the writer itself trims first.
* A writer SIGKILLed after its Nth acknowledgement (a real child process) leaves zeros past its
  data; the next writer trims them exactly (the file ends at the last acknowledged record), keeps
  no quarantine file and logs no recovery action, and appends continue the chain. Killed between
  the segment write and the catalog commit, the batch is adopted and the zeros after it trimmed
  (logged as ``trimmed``).
* Nothing is reserved while the file system is nearly full, and a reservation the disk cannot
  hold is given back whole. Where the disk has no space to reserve (writing the zeros fails),
  appends go on as without it.

The child process runs this file as a script (see the bottom).
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import pytest

from hybridlog import CheckpointPolicy, Storage, segment
from hybridlog.segment import PREALLOCATE_BYTES
from hybridlog.testing.damage import genesis_events
from hybridlog.testing.harness import ACK, KillPlan, acknowledge, arm_from_environment, run_until_killed
from hybridlog.types import RecoveryAction

THIS_FILE = Path(__file__)
STREAM = 7
SEGMENT_SIZE = 64 * 1024


def open_store(store_dir: Path, *, max_segment_size: int = 64 * 1024 * 1024) -> Storage:
    return Storage(store_dir, checkpoint_policy=CheckpointPolicy.explicit(), max_segment_size=max_segment_size)


def event(n: int) -> bytes:
    return f"event {n} ".encode() * 8


def file_size(store: Storage, segment_no: int = -1) -> int:
    return store.segments(STREAM)[segment_no].path.stat().st_size


def data_size(store: Storage, segment_no: int = -1) -> int:
    return store.segments(STREAM)[segment_no].size_bytes


def test_an_fsyncd_append_reserves_zeros_that_reads_and_check_never_see(store_dir: Path) -> None:
    with open_store(store_dir) as store:
        store.append(STREAM, [event(0)], fsync=True)
        size, data = file_size(store), data_size(store)
        assert size >= data + PREALLOCATE_BYTES
        path = store.segments(STREAM)[-1].path
        assert not path.read_bytes()[data:].strip(b"\0")
        store.append(STREAM, [event(1)])  # no fsync: written into the reserved space, nothing new reserved
        assert file_size(store) == size
        assert data_size(store) > data
        assert genesis_events(store, STREAM) == [event(0), event(1)]
        with Storage(store_dir, read_only=True) as reader:  # another reader sees the data only
            assert genesis_events(reader, STREAM) == [event(0), event(1)]
        assert store.check().findings == []  # trims first: the file then ends at the data
        assert file_size(store) == data_size(store)
        store.append(STREAM, [event(2)], fsync=True)  # reserves again
        assert file_size(store) > data_size(store)
    with open_store(store_dir) as store:  # a clean close gave the space back
        assert file_size(store) == data_size(store)
        assert store.recovery_log() == []
        assert genesis_events(store, STREAM) == [event(0), event(1), event(2)]


def test_a_sealed_segment_ends_at_its_data_and_reservations_stop_at_the_size_limit(store_dir: Path) -> None:
    with open_store(store_dir, max_segment_size=SEGMENT_SIZE) as store:
        n = 0
        while len(store.segments(STREAM)) < 3:
            store.append(STREAM, [event(n)], fsync=True)
            n += 1
            assert file_size(store) <= SEGMENT_SIZE  # never reserved past the segment size limit
        for segment in store.completed_segments(STREAM):
            assert segment.path.stat().st_size == segment.size_bytes  # the digest covers the data only
        assert store.check().findings == []  # sealed digests match the files
        assert genesis_events(store, STREAM) == [event(i) for i in range(n)]


def test_appends_go_on_where_space_cannot_be_reserved(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_space(fd: int, data: object, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(segment, "_reserve_write", no_space)
    with open_store(store_dir) as store:
        for n in range(3):
            store.append(STREAM, [event(n)], fsync=True)
        assert file_size(store) == data_size(store)
        assert genesis_events(store, STREAM) == [event(0), event(1), event(2)]


def test_a_reservation_the_disk_cannot_hold_is_given_back_whole(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0

    def half_then_full(fd: int, data: memoryview, offset: int) -> int:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.pwrite(fd, data[: len(data) // 2], offset)  # some zeros written, then the disk is full

    monkeypatch.setattr(segment, "_reserve_write", half_then_full)
    with open_store(store_dir) as store:
        store.append(STREAM, [event(0)], fsync=True)
        assert calls == 2
        assert file_size(store) == data_size(store)  # the half reservation was given back
        assert genesis_events(store, STREAM) == [event(0)]


def test_nothing_is_reserved_on_a_nearly_full_file_system(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(segment, "_free_bytes", lambda fd: segment.RESERVE_FREE_FACTOR * PREALLOCATE_BYTES - 1)
    with open_store(store_dir) as store:
        for n in range(3):
            store.append(STREAM, [event(n)], fsync=True)
            assert file_size(store) == data_size(store)


@pytest.mark.parametrize("acks", [1, 5])
def test_a_writer_killed_after_its_nth_ack_leaves_zeros_the_next_writer_trims(store_dir: Path, acks: int) -> None:
    lines = run_until_killed(THIS_FILE, "append", str(store_dir), plan=KillPlan(ACK, acks))
    assert lines == [f"acked {n}" for n in range(acks)]
    segment = store_dir / "streams"
    files = list(segment.rglob("*.seg"))
    assert len(files) == 1
    with_zeros = files[0].read_bytes()
    data = with_zeros.rstrip(b"\0")
    assert len(with_zeros) > len(data)  # the kill left the reserved space
    with open_store(store_dir) as store:
        assert files[0].read_bytes() == data  # trimmed exactly at the end of the last record
        assert genesis_events(store, STREAM) == [event(n) for n in range(acks)]
        assert store.recovery_log() == []  # nothing to recover: zeros hold nothing
        assert list(store_dir.rglob("*.quarantine")) == []
        assert store.check().findings == []
        store.append(STREAM, [event(acks)], fsync=True)
    with open_store(store_dir) as store:
        assert genesis_events(store, STREAM) == [event(n) for n in range(acks + 1)]


def test_a_writer_killed_before_its_commit_has_its_batch_adopted_and_the_zeros_trimmed(store_dir: Path) -> None:
    lines = run_until_killed(THIS_FILE, "append", str(store_dir), plan=KillPlan("segment-synced", 3))
    assert lines == ["acked 0", "acked 1"]
    with open_store(store_dir) as store:
        assert genesis_events(store, STREAM) == [event(0), event(1), event(2)]  # durable, so adopted
        actions = [e.action for e in store.recovery_log()]
        assert actions == [RecoveryAction.ADOPTED, RecoveryAction.TRIMMED]
        trimmed = store.recovery_log()[-1]
        assert trimmed.kept_as is None
        assert trimmed.start_byte == file_size(store) == data_size(store)
        assert list(store_dir.rglob("*.quarantine")) == []
        assert store.check().findings == []


def child_append(store_dir: Path) -> None:
    """Append one event per fsync'd batch until the plan kills this process."""
    arm_from_environment()
    with open_store(store_dir) as store:
        for n in range(1000):
            store.append(STREAM, [event(n)], fsync=True)
            acknowledge(f"acked {n}")


if __name__ == "__main__":
    assert sys.argv[1] == "append"
    child_append(Path(sys.argv[2]))
