"""A Hypothesis state machine driving the real ``Storage`` and a tiny in-memory model side by side.

The model is deliberately independent of the library: per stream, a plain list of records
(kind, payload, timestamp, prev_hash, hash) with the hashes computed by ``record.record_hash``,
the checkpoint policy re-implemented in a few lines, and the batch boundaries remembered so the
segment layout can be checked. ``MemoryStorage`` plays no part.

Rules: appends (1..N events, empty and multi-KB payloads, compressible or not, several streams),
rejected appends (wrong offset, wrong prev_hash, empty batch: a typed error, the model unchanged
and no segment file grows), reads from any offset with any ``max_bytes``, verified record reads,
explicit and rejected checkpoints, the clock stepping forwards and back, reopening the store
(closing may write on-close checkpoints, which the model writes too), and a crash: the store is
handed to a child process that appends a few batches and is SIGKILLed at a named failpoint of its
last one (or right after acknowledging it); reopened, the store holds every acknowledged batch with
the head the child was told, and the batch in flight wholly (exactly when its bytes were written)
or not at all (``CrashingStorageMachine``, run with fewer examples: each crash is a process). The store rotates at 4096
bytes; compression is on or off per run; the policy checkpoints every few events.

Invariants after every step: the head and next offset of every stream agree with the model, and
every stream's segments tile its offsets, hold whole batches, and are sealed (with a digest equal
to the BLAKE3 of the file) once completed. The model also keeps the global order (every record's
(stream, offset) in commit order; the on-close checkpoints of a reopen in whatever order the store
wrote them, checked to be exactly those): the store's last global position always equals the
model's record count, and every read also pages ``read_global`` against it.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import random
import shutil
import struct
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import blake3
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from hybridlog import (
    ChainHash,
    ChainMismatch,
    CheckpointPolicy,
    CompressionKind,
    EmptyBatch,
    GlobalPosition,
    Offset,
    OffsetMismatch,
    Record,
    RecordCountMismatch,
    RecordKind,
    Storage,
    StreamId,
)
from hybridlog.failpoints import STEPS
from hybridlog.record import record_hash
from hybridlog.testing.clocks import ManualClock
from hybridlog.testing.damage import genesis_events, genesis_records
from hybridlog.testing.harness import ACK, KillPlan, acknowledge, arm_from_environment, run_until_killed

MAX_SEGMENT_SIZE = 4096
STREAMS = [0, 1, 2**63 - 1]
START_NS = 1_700_000_000_000_000_000
ZERO_HASH = bytes(32)

HEAVY = os.environ.get("HYPOTHESIS_PROFILE") == "heavy"
# At the ci profile both machines together take about 20 s on 2 cores (real fsyncs included); the
# runs are many because a machine is cheap and some bugs need a particular policy plus a reopen.
# The heavy profile brings its own (larger) max_examples, and the runs get longer.
MACHINE_SETTINGS = settings(stateful_step_count=100) if HEAVY else settings(max_examples=200, stateful_step_count=50)
# A crash is a child process (a few tenths of a second): the crashing machine runs fewer, shorter runs.
CRASH_SETTINGS = settings(stateful_step_count=40) if HEAVY else settings(max_examples=12, stateful_step_count=20)
THIS_FILE = Path(__file__).resolve()


# --- the model -----------------------------------------------------------------------------------


def model_checkpoint_payload(offset: int) -> bytes:
    """A checkpoint record's payload as ``docs/format.md`` specifies it: a tag and its offset."""
    return b"HLCKPT01" + struct.pack("<Q", offset)


@dataclass
class ModelStream:
    """One stream as the model sees it."""

    stream_id: int
    records: list[Record] = field(default_factory=list)
    batch_starts: list[int] = field(default_factory=list)
    events_since_checkpoint: int = 0

    @property
    def next_offset(self) -> int:
        return len(self.records)

    @property
    def head(self) -> bytes | None:
        return self.records[-1].hash if self.records else None

    def write(
        self, kinds_and_payloads: list[tuple[RecordKind, bytes]], now: int, first_position: int
    ) -> tuple[int, bytes]:
        """Append one batch: one timestamp (the clock, clamped to the stream's last), linked records
        at consecutive global positions from ``first_position`` on (hashed into each)."""
        timestamp = max([now] + [r.timestamp_ns for r in self.records[-1:]])
        self.batch_starts.append(self.next_offset)
        prev = ChainHash(self.head or ZERO_HASH)
        for kind, payload in kinds_and_payloads:
            offset = self.next_offset
            if kind is RecordKind.CHECKPOINT:
                payload = model_checkpoint_payload(offset)
                self.events_since_checkpoint = 0
            else:
                self.events_since_checkpoint += 1
            position = GlobalPosition(first_position + len(self.records) - self.batch_starts[-1])
            own = record_hash(self.stream_id, offset, kind, timestamp, prev, payload, position)
            sid = StreamId(self.stream_id)
            self.records.append(Record(sid, Offset(offset), kind, timestamp, prev, own, payload, position))
            prev = own
        return self.next_offset, prev

    def move_last(self, position: int) -> None:
        """Give the stream's last record (an on-close checkpoint) the global position the store gave it."""
        last = self.records[-1]
        own = record_hash(
            self.stream_id, last.offset, last.kind, last.timestamp_ns, last.prev_hash, last.payload, position
        )
        self.records[-1] = dataclasses.replace(last, hash=own, global_position=GlobalPosition(position))

    def append(self, events: list[bytes], every: int | None, now: int, first_position: int) -> tuple[int, bytes]:
        """Append events, with a checkpoint after every ``every``-th event since the last one."""
        planned: list[tuple[RecordKind, bytes]] = []
        since = self.events_since_checkpoint
        for event in events:
            planned.append((RecordKind.EVENT, event))
            since += 1
            if every is not None and since >= every:
                planned.append((RecordKind.CHECKPOINT, b""))
                since = 0
        return self.write(planned, now, first_position)

    def checkpoint(self, now: int, position: int) -> tuple[int, bytes]:
        return self.write([(RecordKind.CHECKPOINT, b"")], now, position)

    def last_checkpoint(self) -> tuple[int, bytes] | None:
        for record in reversed(self.records):
            if record.kind is RecordKind.CHECKPOINT:
                return record.offset, record.hash
        return None

    def read_from(self, from_offset: int, max_bytes: int) -> list[bytes]:
        out: list[bytes] = []
        total = 0
        for record in self.records[from_offset:]:
            if record.kind is not RecordKind.EVENT:
                continue
            if out and total + len(record.payload) > max_bytes:
                break
            out.append(record.payload)
            total += len(record.payload)
        return out


# --- strategies ----------------------------------------------------------------------------------


def make_payload(style: str, seed: int, length: int) -> bytes:
    """Cheap to draw: random bytes (incompressible) or repetitive text (zstd shrinks it)."""
    if style == "random":
        return random.Random(seed).randbytes(length)
    unit = f"event {seed} says hello; ".encode()
    return (unit * (length // len(unit) + 1))[:length]


payloads = st.builds(
    make_payload,
    st.sampled_from(["random", "text"]),
    st.integers(min_value=0, max_value=2**16),
    st.one_of(st.integers(min_value=0, max_value=64), st.integers(min_value=200, max_value=3500)),
)
batches = st.lists(payloads, min_size=1, max_size=6)
streams = st.sampled_from(STREAMS)


# --- the machine ---------------------------------------------------------------------------------


class StorageMachine(RuleBasedStateMachine):
    """Storage and the model, step by step (see the module docstring)."""

    def __init__(self, root: Path, compression: CompressionKind) -> None:
        super().__init__()
        self.work = Path(tempfile.mkdtemp(dir=root))
        self.path = self.work / "store"
        self.compression = compression
        self.clock = ManualClock()
        self.policy = CheckpointPolicy()
        self.model = {sid: ModelStream(sid) for sid in STREAMS}
        self.global_order: list[tuple[int, int]] = []  # (stream, offset) of position i + 1
        self.store: Storage | None = None
        # Streams the open writer has written to (or tried): close checkpoints only these, since a
        # writer loads a stream's head on its first write (events a killed writer left unchecked
        # in a stream nobody writes to after the reopen get no on-close checkpoint).
        self.written: set[int] = set()

    # --- lifecycle -------------------------------------------------------------------------------

    @initialize(
        every=st.one_of(st.none(), st.integers(min_value=1, max_value=5)),
        on_close=st.booleans(),
    )
    def open_store(self, every: int | None, on_close: bool) -> None:
        self.policy = CheckpointPolicy(every_records=every, on_close=on_close)
        self.store = self.open()

    def open(self) -> Storage:
        self.written = set()
        return Storage(
            self.path,
            checkpoint_policy=self.policy,
            max_segment_size=MAX_SEGMENT_SIZE,
            compression=self.compression,
            clock=self.clock,
        )

    def teardown(self) -> None:
        if self.store is not None:
            self.store.close()
        shutil.rmtree(self.work, ignore_errors=True)

    @property
    def s(self) -> Storage:
        assert self.store is not None
        return self.store

    @rule()
    def reopen(self) -> None:
        """Close (writing on-close checkpoints if the policy says so) and open the directory again."""
        closing = self.close()
        self.store = self.open()
        self.check_reopened(closing, [])

    def close(self) -> list[tuple[int, int]]:
        """Close the store; the model writes the on-close checkpoints too. Returns their places."""
        self.s.close()
        closing: list[tuple[int, int]] = []
        if self.policy.on_close:
            for stream in self.model.values():
                if stream.events_since_checkpoint > 0 and stream.stream_id in self.written:
                    closing.append((stream.stream_id, stream.next_offset))
                    stream.checkpoint(self.clock.now, len(self.global_order) + len(closing))
        if closing:  # the store wrote them in an order of its own: their positions, hashed into them
            with Storage(self.path, read_only=True) as reader:
                for g in reader.read_global(len(self.global_order) + 1, 1 << 30):
                    self.model[g.record.stream_id].move_last(g.global_position)
        return closing

    def check_reopened(self, closing: list[tuple[int, int]], then: list[tuple[int, int]]) -> None:
        """Since the last known record the store holds exactly the on-close checkpoints (in any
        order), then the records ``then`` in that order."""
        written = self.s.read_global(len(self.global_order) + 1, 1 << 30)
        order = [(g.record.stream_id, g.record.offset) for g in written]
        assert sorted(order[: len(closing)]) == sorted(closing)  # after everything before
        for g in written[: len(closing)]:
            assert g.record == self.model[g.record.stream_id].records[g.record.offset]
        assert order[len(closing) :] == then
        self.global_order += order

    @rule(delta=st.integers(min_value=-3_000_000_000, max_value=3_000_000_000))
    def move_clock(self, delta: int) -> None:
        """The wall clock may step back; timestamps must be clamped, never go backwards."""
        self.clock.now = max(0, self.clock.now + delta)

    # --- appending -------------------------------------------------------------------------------

    @rule(sid=streams, events=batches, at_head=st.booleans(), fsync=st.booleans())
    def append(self, sid: int, events: list[bytes], at_head: bool, fsync: bool) -> None:
        """append_batch with the model's head, or append() finding the head itself."""
        stream = self.model[sid]
        start = stream.next_offset
        self.written.add(sid)
        if at_head:
            result = self.s.append(sid, events, fsync=fsync)
        else:
            result = self.s.append_batch(sid, events, stream.next_offset, stream.head, fsync=fsync)
        assert result == stream.append(events, self.policy.every_records, self.clock.now, len(self.global_order) + 1)
        self.global_order += [(sid, offset) for offset in range(start, stream.next_offset)]

    @rule(sid=streams)
    def checkpoint(self, sid: int) -> None:
        self.written.add(sid)
        stream = self.model[sid]
        offset = stream.next_offset
        result = self.s.create_checkpoint(sid, offset, stream.head, offset, fsync=False)
        assert result == stream.checkpoint(self.clock.now, len(self.global_order) + 1)
        self.global_order.append((sid, offset))

    # --- refused writes: a typed error, and nothing changes --------------------------------------

    @rule(
        sid=streams,
        mistake=st.sampled_from(["offset", "prev_hash", "empty", "record_count"]),
        distance=st.integers(min_value=-5, max_value=5).filter(bool),
        wrong_hash=st.one_of(st.none(), st.binary(min_size=32, max_size=32)),
        events=batches,
    )
    def refused_write(
        self, sid: int, mistake: str, distance: int, wrong_hash: bytes | None, events: list[bytes]
    ) -> None:
        """A write with a wrong offset, prev_hash or record count, or no events, is refused."""
        stream = self.model[sid]
        offset, head = stream.next_offset, stream.head
        wrong_offset = offset + distance if offset + distance >= 0 else offset - distance
        if wrong_hash == head:  # None on an empty stream is right, not wrong
            wrong_hash = ZERO_HASH if head is None else None
        calls: dict[str, tuple[Callable[[], object], type[Exception]]] = {
            "offset": (lambda: self.s.append_batch(sid, events, wrong_offset, head), OffsetMismatch),
            "prev_hash": (lambda: self.s.append_batch(sid, events, offset, wrong_hash), ChainMismatch),
            "empty": (lambda: self.s.append_batch(sid, [], offset, head), EmptyBatch),
            "record_count": (lambda: self.s.create_checkpoint(sid, offset, head, wrong_offset), RecordCountMismatch),
        }
        call, expected = calls[mistake]
        if mistake != "empty":  # refused by the head, which the writer loads for it
            self.written.add(sid)
        before = self.disk_state()
        with pytest.raises(expected) as info:
            call()
        assert self.disk_state() == before
        if isinstance(info.value, OffsetMismatch):
            assert (info.value.expected, info.value.actual) == (wrong_offset, offset)
        if isinstance(info.value, ChainMismatch):
            assert (info.value.given, info.value.head) == (wrong_hash, head)
        if isinstance(info.value, RecordCountMismatch):
            assert (info.value.given, info.value.actual) == (wrong_offset, offset)

    def disk_state(self) -> dict[str, int]:
        """Every segment file's size: a refused write must not change a byte count."""
        return {str(p.relative_to(self.path)): p.stat().st_size for p in sorted(self.path.rglob("*.seg"))}

    # --- reading ---------------------------------------------------------------------------------

    @rule(
        sid=streams,
        how=st.sampled_from(["read_from", "records_verified", "genesis"]),
        position=st.integers(min_value=0, max_value=1000),
        max_bytes=st.integers(min_value=0, max_value=12_000),
    )
    def read(self, sid: int, how: str, position: int, max_bytes: int) -> None:
        """Reads from any offset (past the end too) agree with the model."""
        stream = self.model[sid]
        from_offset = position % (stream.next_offset + 3)
        if how == "read_from":
            assert self.s.read_from(sid, from_offset, max_bytes) == stream.read_from(from_offset, max_bytes)
        elif how == "records_verified":
            assert list(self.s.iter_records(sid, from_offset)) == stream.records[from_offset:]
        else:
            assert genesis_records(self.s, sid) == stream.records
            events = [r.payload for r in stream.records if r.kind is RecordKind.EVENT]
            assert genesis_events(self.s, sid) == events
        self.check_read_global(position % (len(self.global_order) + 3), max_bytes)

    def check_read_global(self, from_position: int, max_bytes: int) -> None:
        """A page of ``read_global`` is the model's records in commit order: at least one, then within max_bytes."""
        expected: list[tuple[int, Record]] = []
        total = 0
        for position in range(max(from_position, 1), len(self.global_order) + 1):
            sid, offset = self.global_order[position - 1]
            record = self.model[sid].records[offset]
            if expected and total + len(record.payload) > max_bytes:
                break
            expected.append((position, record))
            total += len(record.payload)
        assert [(g.global_position, g.record) for g in self.s.read_global(from_position, max_bytes)] == expected

    # --- invariants ------------------------------------------------------------------------------

    @invariant()
    def heads_agree(self) -> None:
        if self.store is None:
            return
        for sid, stream in self.model.items():
            assert self.store.next_offset(sid) == stream.next_offset
            assert self.store.latest_chain_hash(sid) == stream.head
            assert self.store.last_checkpoint(sid) == stream.last_checkpoint()
        assert self.store.stream_ids() == [sid for sid, s in self.model.items() if s.records]
        assert self.store.last_global_position() == len(self.global_order)

    @invariant()
    def segments_are_well_formed(self) -> None:
        if self.store is None:
            return
        for sid, stream in self.model.items():
            segments = self.store.segments(sid)
            assert self.store.segment_count(sid) == len(segments)
            if not stream.records:
                assert segments == []
                continue
            assert len(segments) >= 1
            assert [s.segment_no for s in segments] == list(range(len(segments)))
            on_disk = sorted(segments[0].path.parent.glob("*.seg"))
            assert on_disk == [s.path for s in segments]
            # The segments tile the stream's offsets, each starting on a batch boundary.
            assert segments[0].first_offset == 0
            for before, after in itertools.pairwise(segments):
                assert before.next_offset == after.first_offset
            assert segments[-1].next_offset == stream.next_offset
            for seg in segments:
                assert seg.first_offset in stream.batch_starts
                if seg is segments[-1]:  # the active one: past its data, zeros reserved for fsync'd appends
                    data = seg.path.read_bytes()
                    assert not data[seg.size_bytes :].strip(b"\0")
                    assert len(data) <= max(seg.size_bytes, MAX_SEGMENT_SIZE)
                else:
                    assert seg.path.stat().st_size == seg.size_bytes
                # Only a segment holding a single batch may be bigger than the limit.
                if seg.size_bytes > MAX_SEGMENT_SIZE:
                    later = [b for b in stream.batch_starts if b > seg.first_offset]
                    assert not later or later[0] >= seg.next_offset
            # Completed segments are sealed with the BLAKE3 of their bytes; the active one is not.
            for seg in segments[:-1]:
                assert seg.sealed
                assert seg.digest == blake3.blake3(seg.path.read_bytes()).digest()
            assert not segments[-1].sealed
            assert self.store.completed_segments(sid) == segments[:-1]


class CrashingStorageMachine(StorageMachine):
    """The machine with a crash rule: a child process appends and is killed at a failpoint."""

    @rule(
        plan=st.builds(KillPlan, st.sampled_from([*STEPS, ACK]), st.integers(min_value=1, max_value=3)),
        appends=st.lists(st.tuples(streams, batches), min_size=3, max_size=3),
    )
    def crash(self, plan: KillPlan, appends: list[tuple[int, list[bytes]]]) -> None:
        """Hand the store to a child that appends ``appends`` and dies as ``plan`` says; reopen and
        check: acknowledged batches are there with the heads the child was told, the one in flight
        wholly when its bytes were written and not at all otherwise."""
        closing = self.close()
        self.store = None
        child_input = json.dumps([[sid, [e.hex() for e in events]] for sid, events in appends])
        every, on_close = self.policy.every_records, self.policy.on_close
        args = [str(self.path), self.compression.value, str(every or 0), str(int(on_close)), str(self.clock.now)]
        lines = run_until_killed(THIS_FILE, "append", *args, plan=plan, stdin=child_input)
        assert len(lines) == plan.acknowledged
        landed = plan.acknowledged + (1 if plan.in_flight_lands else 0)
        then: list[tuple[int, int]] = []
        for n, (sid, events) in enumerate(appends[:landed]):
            stream = self.model[sid]
            start = stream.next_offset
            position = len(self.global_order) + len(closing) + len(then) + 1
            result = stream.append(events, every, self.clock.now, position)
            if n < len(lines):  # acknowledged: with the head the child was told
                next_offset, head = lines[n].split(" ")
                assert result == (int(next_offset), bytes.fromhex(head))
            then += [(sid, offset) for offset in range(start, stream.next_offset)]
        self.store = self.open()
        assert self.s.damaged_streams() == {}
        for sid in {sid for sid, _ in appends}:
            assert genesis_records(self.s, sid) == self.model[sid].records
        self.check_reopened(closing, then)


def child_append(argv: list[str]) -> None:
    """Open the store as the machine does, append the batches given on stdin, acknowledge each."""
    path, compression, every, on_close, now = argv
    arm_from_environment()
    policy = CheckpointPolicy(every_records=int(every) or None, on_close=bool(int(on_close)))
    store = Storage(
        Path(path),
        checkpoint_policy=policy,
        max_segment_size=MAX_SEGMENT_SIZE,
        compression=CompressionKind(compression),
        clock=lambda: int(now),
    )
    for sid, events in json.loads(sys.stdin.read()):
        next_offset, head = store.append(sid, [bytes.fromhex(e) for e in events])
        acknowledge(f"{next_offset} {head.hex()}")
    raise SystemExit("the child was not killed")


def run_machine(
    root: Path, compression: CompressionKind, machine_settings: settings, machine: type[StorageMachine] = StorageMachine
) -> None:
    class Machine(machine):  # type: ignore[valid-type,misc]
        def __init__(self) -> None:
            super().__init__(root, compression)

    run_state_machine_as_test(Machine, settings=machine_settings)


@pytest.mark.parametrize("compression", list(CompressionKind), ids=lambda c: c.value)
def test_storage_matches_the_model(tmp_path: Path, compression: CompressionKind) -> None:
    """Storage behaves like the model under random appends, rejections, reads and reopens."""
    run_machine(tmp_path, compression, MACHINE_SETTINGS)


@pytest.mark.slow
@pytest.mark.parametrize("compression", list(CompressionKind), ids=lambda c: c.value)
def test_storage_matches_the_model_long_runs(tmp_path: Path, compression: CompressionKind) -> None:
    """The same machine with many more and longer runs."""
    run_machine(tmp_path, compression, settings(MACHINE_SETTINGS, max_examples=500, stateful_step_count=100))


@pytest.mark.parametrize("compression", list(CompressionKind), ids=lambda c: c.value)
def test_storage_matches_the_model_across_writers_killed_at_failpoints(
    tmp_path: Path, compression: CompressionKind
) -> None:
    """The machine with the crash rule (each crash runs a child process, so fewer, shorter runs)."""
    run_machine(tmp_path, compression, CRASH_SETTINGS, CrashingStorageMachine)


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    if command != "append":
        raise SystemExit(f"unknown command {command}")
    child_append(rest)
