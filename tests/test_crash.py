"""Crashes: writer processes killed with SIGKILL, and power loss simulated at every byte of the last batch.

Contracts tested here:

* **Killed writers.** A child process appends batches (1-20 events of up to ~1.5 KB, ``fsync=True``)
  to three streams of one store with 4 KiB segments, frequent checkpoints and compression
  alternating per round, and is killed with SIGKILL at a seeded step (a failpoint of the write path
  in its Nth append, or right after its Nth acknowledgement), round after round on the same store.
  After every kill a reopened writer finds: every batch whose append returned, exactly,
  verified from genesis, with the head the child was told; no partial batch (each stream is exactly
  the acknowledged batches plus, possibly, the one batch in flight, whole); a catalog that agrees
  with the segments (``check()`` finds nothing); recovery-log entries that describe what recovery
  did (an adoption covers exactly the in-flight batch, a quarantine file holds a torn tail); and a
  chain that appends continue.
  Every record has a global position, 1..N without a gap, in each stream's offset order, and
  positions seen after one kill are unchanged after the next.
* **Power loss before the catalog commit.** The last batch's bytes reached the segment only in part
  (a prefix of every length, cut at every byte boundary), or were followed or replaced by zeros or
  garbage, and the catalog still describes the store before that batch. Reopening recovers to a
  correct store: the earlier batches verify, the last batch is wholly present (only when all of its
  bytes are there) or wholly absent, the cut bytes are kept in a quarantine file holding exactly
  them, ``check()`` finds nothing, and appends continue the chain. The same holds when the last
  batch was the first in a new segment file (a rotation the catalog never heard of).
* **Power loss during a group commit that rotates segments.** One group (two threads) writes batch
  A to the end of the active segment and batch B to a new segment file. With the catalog from
  before the group, any prefix of A and any prefix of B (the new file empty or never created, and a
  further segment file after it) is recovered on open without a repair: complete, chain-valid
  batches are adopted (B only with all of A), every other byte is moved to quarantine files,
  ``check()`` finds nothing, and appends continue the chain.
* **Catalog ahead of its segments.** With ``fsync=True`` the segment is durable before the catalog
  commit, so a committed batch whose bytes are cut short is damage: it is reported (never cut
  silently), reads fail with a typed error naming stream, segment and byte position, appends are
  refused, and ``repair()`` rolls the catalog back to what the segments hold.

The child processes run this file as a script (see ``child_main`` at the bottom).
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from hybridlog import (
    CatalogMismatch,
    CheckpointPolicy,
    CompressionKind,
    FindingKind,
    IntegrityError,
    MarkerAction,
    Record,
    RecordKind,
    RecoveryAction,
    RecoveryEntry,
    RepairKind,
    Storage,
)
from hybridlog.failpoints import STEPS
from hybridlog.layout import QUARANTINE_SUFFIX, segment_path
from hybridlog.markers import decode_marker
from hybridlog.record import HEADER_SIZE, MAGIC
from hybridlog.segment import SegmentReader, SegmentWriter
from hybridlog.testing.clocks import make_clock
from hybridlog.testing.damage import genesis_records
from hybridlog.testing.harness import ACK, CHILD_TIMEOUT, KillPlan, acknowledge, arm_from_environment, run_until_killed
from hybridlog.writer import Writer

THIS_FILE = Path(__file__).resolve()
SEGMENT_SIZE = 4096


def quarantine_files(data_dir: Path) -> list[Path]:
    """Every quarantine file in the store, in every stream directory."""
    return sorted(data_dir.glob(f"streams/*/*{QUARANTINE_SUFFIX}"))


def event_payloads(records: list[Record]) -> list[bytes]:
    return [r.payload for r in records if r.kind is RecordKind.EVENT]


def log_row(entry: RecoveryEntry) -> tuple[object, ...]:
    """The parts of a recovery-log entry that say what was done and where (not the wording, not the time)."""
    return (
        entry.stream_id,
        entry.action,
        entry.segment_no,
        entry.start_byte,
        entry.end_byte,
        entry.first_offset,
        entry.next_offset,
        entry.kept_as,
    )


def assert_append_continues(store: Storage, stream_id: int, records: list[Record], payload: bytes) -> Record:
    """Append one event at the head the caller saw (``records``); it must link to the last record.

    ``append_batch`` with the caller's offset and hash fails unless the writer's head is exactly the
    last record read. Returns the appended event's record.
    """
    prev = records[-1].hash if records else None
    head_offset = records[-1].offset + 1 if records else 0  # past a cut marker's jump too
    assert store.latest_chain_hash(stream_id) == prev
    assert store.next_offset(stream_id) == head_offset
    next_offset, head = store.append_batch(stream_id, [payload], head_offset, prev, fsync=True)
    after = genesis_records(store, stream_id)
    assert after[: len(records)] == records
    added = after[len(records) :]
    assert event_payloads(added) == [payload]
    assert added[0].prev_hash == (prev or bytes(32))
    assert (after[-1].offset + 1, after[-1].hash) == (next_offset, head)
    return added[0]


def assert_catalog_matches_segments(store: Storage, stream_id: int, records: list[Record]) -> None:
    """The catalog's rows for a stream agree with its segment files, record by record.

    ``check()`` compares heads, segment sizes and digests; this also compares every offset-index
    row with the frame it points at, each segment row's offsets with the frames in the file, and
    the checkpoint rows with the checkpoint records. ``records`` is the stream as read verified.
    """
    segments = store.segments(stream_id)
    frames = []
    for seg in segments:
        with SegmentReader(seg.path) as reader:
            in_file = [(f.header.offset, seg.segment_no, f.position, f.header.frame_size) for f in reader.frames()]
        assert in_file, f"segment {seg.path} holds no records"
        assert (seg.first_offset, seg.next_offset, seg.size_bytes) == (
            in_file[0][0],
            in_file[-1][0] + 1,
            seg.path.stat().st_size,
        )
        frames += in_file
    # Every segment but the active (last) one is sealed.
    assert [seg.sealed for seg in segments] == [seg is not segments[-1] for seg in segments]
    entries = store.offset_index(stream_id).entries()
    assert [(e.offset, e.segment_no, e.position, e.length) for e in entries] == frames
    assert [(e.offset, e.kind, e.timestamp_ns) for e in entries] == [
        (r.offset, r.kind, r.timestamp_ns) for r in records
    ]
    checkpoints = [(r.offset, r.hash) for r in records if r.kind is RecordKind.CHECKPOINT]
    assert [(c.offset, c.hash) for c in store.checkpoint_index(stream_id)] == checkpoints
    if records:
        # A read anchored at the last checkpoint (through the offset index) returns the same records.
        assert list(store.iter_records(stream_id, records[-1].offset)) == records[-1:]


@contextmanager
def case(label: str) -> Iterator[None]:
    """Name the case (one of many in a loop) in the report of any failure inside the block."""
    try:
        yield
    except BaseException as e:
        e.add_note(f"case: {label}")
        raise


# ===================================================================================================
# 1. Writer processes killed with SIGKILL
# ===================================================================================================

CRASH_STREAMS = (0, 3, 11)
CHECKPOINT_EVERY = 6


def open_crash_writer(path: Path, compression: CompressionKind) -> Storage:
    """The writer settings the child and the parent share: 4 KiB segments, a checkpoint every 6 events."""
    return Storage(
        path,
        checkpoint_policy=CheckpointPolicy.every(CHECKPOINT_EVERY),
        max_segment_size=SEGMENT_SIZE,
        compression=compression,
    )


def event_payload(seed: int, round_no: int, batch_no: int, index: int) -> bytes:
    """One event, derived only from where it belongs: mostly small, sometimes ~1.5 KB, part text, part noise."""
    rng = random.Random(f"event/{seed}/{round_no}/{batch_no}/{index}")
    size = rng.randint(0, 160) if rng.random() < 0.7 else rng.randint(160, 1500)
    text = (f"round {round_no} batch {batch_no} event {index};" * 40).encode()
    body = text[: size // 2] + rng.randbytes(size - size // 2)
    return f"r{round_no}.b{batch_no}.e{index}|".encode() + body


def planned_batch(seed: int, round_no: int, batch_no: int) -> tuple[int, list[bytes]]:
    """Which stream the child's batch ``batch_no`` of round ``round_no`` goes to, and its events."""
    rng = random.Random(f"batch/{seed}/{round_no}/{batch_no}")
    stream_id = rng.choice(CRASH_STREAMS)
    return stream_id, [event_payload(seed, round_no, batch_no, i) for i in range(rng.randint(1, 20))]


@dataclass(frozen=True)
class Ack:
    """An append that returned: the child printed it (or the parent made it) after ``append`` came back."""

    stream_id: int
    label: str
    next_offset: int
    head: bytes


@dataclass(frozen=True)
class KilledRun:
    """What one killed child acknowledged, and the batch it may have been writing when it died."""

    acks: list[Ack]
    acked_events: list[list[bytes]]  # the events of each acknowledged batch, in ``acks`` order
    in_flight_stream: int
    in_flight: list[bytes]
    plan: KillPlan


@dataclass
class Model:
    """What the store must hold: per stream, every event of every batch known to be there, in order."""

    events: dict[int, list[bytes]] = field(default_factory=lambda: {sid: [] for sid in CRASH_STREAMS})
    acks: list[Ack] = field(default_factory=list)
    log_seen: int = 0  # recovery-log entries already accounted for
    positions: dict[tuple[int, int], int] = field(default_factory=dict)  # global positions seen so far


def run_and_kill_writer(store_dir: Path, seed: int, round_no: int, plan: KillPlan) -> KilledRun:
    """Start an appending child that kills itself where ``plan`` says (a failpoint in its Nth append,
    or right after its Nth acknowledgement); returns what it acknowledged."""
    compression = CompressionKind.ZSTD if round_no % 2 else CompressionKind.NONE
    # Only whole lines count: a line cut off by the kill was not an acknowledgement.
    lines = run_until_killed(THIS_FILE, "write", str(store_dir), str(seed), str(round_no), compression.value, plan=plan)
    assert lines[0] == "ready"
    acks, acked_events = [], []
    for batch_no, line in enumerate(lines[1:]):
        word, stream_id, number, next_offset, head = line.split(" ")
        assert (word, int(number)) == ("ack", batch_no)
        planned_stream, events = planned_batch(seed, round_no, batch_no)
        assert int(stream_id) == planned_stream
        acks.append(Ack(planned_stream, f"r{round_no}.b{batch_no}", int(next_offset), bytes.fromhex(head)))
        acked_events.append(events)
    assert len(acks) == plan.acknowledged, f"{plan}: {len(acks)} acknowledgements"
    in_flight_stream, in_flight = planned_batch(seed, round_no, len(acks))
    return KilledRun(acks, acked_events, in_flight_stream, in_flight, plan)


def first_difference(a: list[bytes], b: list[bytes]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def first_record_of_event(records: list[Record], event_number: int) -> int:
    """The offset of the ``event_number``-th event record (0-based) of a stream."""
    events = (r.offset for r in records if r.kind is RecordKind.EVENT)
    return next(itertools.islice(events, event_number, None))


def check_after_kill(store: Storage, store_dir: Path, model: Model, run: KilledRun) -> dict[int, list[Record]]:
    """Everything a reopened writer must find after a kill; updates ``model`` with a landed in-flight batch."""
    records = {sid: genesis_records(store, sid) for sid in CRASH_STREAMS}  # verifies every record

    # Each stream is exactly its known batches, plus at most the in-flight batch, whole.
    landed_at: int | None = None
    for sid in CRASH_STREAMS:
        got, known = event_payloads(records[sid]), model.events[sid]
        if sid == run.in_flight_stream and got == known + run.in_flight:
            landed_at = first_record_of_event(records[sid], len(known))
            known.extend(run.in_flight)
        assert got == known, (
            f"stream {sid}: {len(got)} events, expected the {len(known)} acknowledged (or those plus the"
            f" {len(run.in_flight)} in flight); they differ from event {first_difference(got, known)}"
        )
    assert (landed_at is not None) == run.plan.in_flight_lands, f"killed at {run.plan}, landed at {landed_at}"

    # Every acknowledged head is where the writer was told it is.
    for ack in model.acks:
        stream = records[ack.stream_id]
        assert len(stream) >= ack.next_offset, f"acknowledged batch {ack.label} is missing"
        assert stream[ack.next_offset - 1].hash == ack.head, f"acknowledged batch {ack.label} changed"

    # The writer's heads are the last records read: appends will continue the chain from there.
    for sid in CRASH_STREAMS:
        assert store.next_offset(sid) == len(records[sid])
        assert store.latest_chain_hash(sid) == (records[sid][-1].hash if records[sid] else None)

    # The catalog agrees with the segments, and nothing is damaged.
    assert store.damaged_streams() == {}
    report = store.check()
    assert report.findings == [], [f.as_dict() for f in report.findings]
    assert report.records_verified == sum(len(r) for r in records.values())
    for sid in CRASH_STREAMS:
        assert_catalog_matches_segments(store, sid, records[sid])

    check_recovery_log(store, store_dir, model, run, records, landed_at)
    check_global_order(store, model, records)
    return records


def check_global_order(store: Storage, model: Model, records: dict[int, list[Record]]) -> None:
    """Positions 1..N with no gap (a kill never consumes one: an uncommitted batch is adopted or cut),
    each stream's in offset order, and every position seen after an earlier kill unchanged."""
    everything = store.read_global(1, 1 << 40)
    total = sum(len(r) for r in records.values())
    assert [g.global_position for g in everything] == list(range(1, total + 1))
    assert store.last_global_position() == total
    for sid in CRASH_STREAMS:
        assert [g.record for g in everything if g.record.stream_id == sid] == records[sid]
    placed: dict[tuple[int, int], int] = {(g.record.stream_id, g.record.offset): g.global_position for g in everything}
    assert {k: placed.get(k) for k in model.positions} == model.positions, "recovery renumbered records"
    model.positions = placed


def check_recovery_log(
    store: Storage,
    store_dir: Path,
    model: Model,
    run: KilledRun,
    records: dict[int, list[Record]],
    landed_at: int | None,
) -> None:
    """The recovery log records exactly what this reopen's recovery did, and it was about the batch in flight."""
    log = store.recovery_log()
    new = log[model.log_seen :]
    done_now = [e for result in store.recovery_results() for e in result.entries]
    assert [replace(e, at_ns=0) for e in new] == done_now, "the log and the recovery results disagree"
    in_flight_records = records[run.in_flight_stream]
    for entry in new:
        assert entry.stream_id == run.in_flight_stream, "recovery touched a stream nothing was in flight on"
        if entry.action == RecoveryAction.ADOPTED:
            # An adoption covers exactly the in-flight batch (checkpoints the policy put in it included).
            assert landed_at is not None
            assert (entry.first_offset, entry.next_offset) == (landed_at, len(in_flight_records))
            assert entry.segment_no is not None
            assert entry.start_byte is not None
            assert entry.end_byte is not None
            assert entry.start_byte < entry.end_byte
        elif entry.action == RecoveryAction.QUARANTINED:
            # A torn in-flight batch: cut at the end of what is kept, saved whole beside the segment.
            assert landed_at is None
            assert entry.segment_no is not None
            assert entry.start_byte is not None
            assert entry.end_byte is not None
            assert entry.kept_as is not None
            segment = segment_path(store_dir, entry.stream_id, entry.segment_no)
            assert (segment.stat().st_size if segment.exists() else 0) == entry.start_byte
            kept = (store_dir / entry.kept_as).read_bytes()
            assert len(kept) == entry.end_byte - entry.start_byte > 0
            assert MAGIC.startswith(kept[:4]), "the cut bytes do not start at a record"
        elif entry.action == RecoveryAction.TRIMMED:
            # The zeros an fsync'd append reserved past its data, after the batch adopted (or cut) before them.
            assert entry.segment_no is not None
            assert entry.kept_as is None
            segment = segment_path(store_dir, entry.stream_id, entry.segment_no)
            assert (segment.stat().st_size if segment.exists() else 0) == entry.start_byte
        else:
            # A rotation that stopped after creating its file, before writing to it.
            assert entry.action == RecoveryAction.REMOVED_EMPTY, f"unexpected recovery action {entry.action}"
            assert landed_at is None
            assert entry.segment_no is not None
            assert not segment_path(store_dir, entry.stream_id, entry.segment_no).exists()
    # Quarantine files exist only for torn tails that recovery logged.
    kept_as = sorted(e.kept_as for e in log if e.action == RecoveryAction.QUARANTINED and e.kept_as is not None)
    assert [str(p.relative_to(store_dir)) for p in quarantine_files(store_dir)] == kept_as
    assert all(
        e.action
        in (RecoveryAction.ADOPTED, RecoveryAction.QUARANTINED, RecoveryAction.REMOVED_EMPTY, RecoveryAction.TRIMMED)
        for e in log
    )


def seeded_plans(rounds: int, seed: int, max_batches: int) -> list[KillPlan]:
    """A seeded choice of failpoint in the child's Nth append, or right after its Nth acknowledgement,
    N up to ``max_batches`` (which also bounds how much the store grows per round)."""
    rng = random.Random(f"plans/{seed}")
    return [KillPlan.choose(rng, 1, max_batches) for _ in range(rounds)]


def crash_rounds(store_dir: Path, seed: int, plans: list[KillPlan]) -> None:
    """Kill a writer once per plan on one store; after each kill, reopen, check everything, append."""
    rng = random.Random(seed)
    model = Model()
    for round_no, plan in enumerate(plans):
        run = run_and_kill_writer(store_dir, seed, round_no, plan)
        for ack, events in zip(run.acks, run.acked_events, strict=True):
            model.events[ack.stream_id].extend(events)
        model.acks.extend(run.acks)
        compression = CompressionKind.ZSTD if rng.random() < 0.5 else CompressionKind.NONE
        with open_crash_writer(store_dir, compression) as store:
            with case(f"round {round_no}, killed at {plan}"):
                records = check_after_kill(store, store_dir, model, run)
                sid = rng.choice(CRASH_STREAMS)
                payload = f"parent after round {round_no}".encode()
                added = assert_append_continues(store, sid, records[sid], payload)
            model.events[sid].append(payload)
            model.acks.append(Ack(sid, f"parent-{round_no}", added.offset + 1, added.hash))
            model.log_seen = len(store.recovery_log())

    with Storage(store_dir, read_only=True) as reader:
        final = {sid: genesis_records(reader, sid) for sid in CRASH_STREAMS}
    for sid in CRASH_STREAMS:
        assert event_payloads(final[sid]) == model.events[sid]
    for ack in model.acks:
        assert final[ack.stream_id][ack.next_offset - 1].hash == ack.head


def test_writers_killed_at_seeded_steps_lose_nothing_acknowledged(tmp_path: Path) -> None:
    """25 SIGKILLs at seeded steps on one store; after each, every contract in the module docstring holds."""
    crash_rounds(tmp_path / "store", seed=25, plans=seeded_plans(25, seed=25, max_batches=40))


def test_a_writer_killed_at_each_failpoint_and_after_an_acknowledgement(tmp_path: Path) -> None:
    """One kill at each failpoint and one after an acknowledgement, in turn, on one store."""
    crash_rounds(tmp_path / "store", seed=6, plans=[KillPlan(step, 3) for step in (*STEPS, ACK)])


@pytest.mark.slow
def test_two_hundred_writers_killed_at_seeded_steps(tmp_path: Path) -> None:
    """The same, 200 times over on one store (damage, if any, would accumulate); shorter runs per round."""
    crash_rounds(tmp_path / "store", seed=200, plans=seeded_plans(200, seed=200, max_batches=8))


def test_the_child_plan_is_deterministic() -> None:
    """The parent regenerates the child's batches: same (seed, round, batch) gives the same stream and events."""
    assert planned_batch(1, 2, 3) == planned_batch(1, 2, 3)
    assert planned_batch(1, 2, 3) != planned_batch(1, 2, 4)
    sizes = [len(e) for b in range(200) for e in planned_batch(7, 0, b)[1]]
    assert max(sizes) > 1000  # varied sizes, as the module docstring says
    assert min(sizes) < 50
    assert {planned_batch(7, 0, b)[0] for b in range(50)} == set(CRASH_STREAMS)


# ===================================================================================================
# 2. Power loss, simulated at every byte of the last batch
# ===================================================================================================

LAST_STREAM = 2
OTHER_STREAM = 9
START_NS = 1_700_000_000_000_000_000
LAST_BATCH = [f"last batch, event {i}: {'abcdefgh' * 2}".encode() for i in range(3)]


def open_template_store(path: Path, compression: CompressionKind, start_ns: int) -> Storage:
    """4 KiB segments, a checkpoint every 5 events, none on close (so the last batch is the last thing written)."""
    return Storage(
        path,
        checkpoint_policy=CheckpointPolicy.every(5, on_close=False),
        max_segment_size=SEGMENT_SIZE,
        compression=compression,
        clock=make_clock(start_ns),
    )


@dataclass(frozen=True)
class LastBatch:
    """A store just before and just after its last batch was appended (``fsync=True``) to ``LAST_STREAM``.

    ``before`` and ``after`` are closed store directories. The batch's bytes, ``batch``, went to the
    segment file ``segment`` (relative to either) right after ``segment_before`` (empty when the
    batch rotated into a new file); ``frame_starts`` are the byte positions in that file where each
    of its frames begins.
    """

    compression: CompressionKind
    rotated: bool
    before: Path
    after: Path
    segment: Path
    segment_no: int
    segment_before: bytes
    batch: bytes
    frame_starts: list[int]
    records_before: dict[int, list[Record]]
    records_after: list[Record]

    @property
    def base(self) -> int:
        """Where the last batch starts in its segment file."""
        return len(self.segment_before)

    @property
    def label(self) -> str:
        return f"{self.compression.value}, {'new segment' if self.rotated else 'same segment'}"


def build_last_batch(root: Path, compression: CompressionKind, *, rotated: bool) -> LastBatch:
    """Build a store with two streams and several segments, then append ``LAST_BATCH`` in a copy.

    With ``rotated`` the active segment is filled so far that the last batch must start a new
    segment file; otherwise it is left with room for it.
    """
    before, after = root / "before", root / "after"
    with open_template_store(before, compression, START_NS) as store:
        for b in range(3):
            store.append(OTHER_STREAM, [f"other stream, batch {b}, event {i}".encode() for i in range(b + 1)])
        for n in range(200):
            store.append(LAST_STREAM, [f"filler {n} ".encode() * 12])
            segments = store.segments(LAST_STREAM)
            size = segments[-1].size_bytes
            if len(segments) >= 2 and (size > SEGMENT_SIZE - 250 if rotated else SEGMENT_SIZE - size > 1200):
                break
        else:
            pytest.fail("the filler never left the active segment where the variant needs it")
        records_before = {sid: genesis_records(store, sid) for sid in (LAST_STREAM, OTHER_STREAM)}

    shutil.copytree(before, after)
    with open_template_store(after, compression, START_NS + 10**12) as store:
        prev = records_before[LAST_STREAM]
        store.append_batch(LAST_STREAM, LAST_BATCH, len(prev), prev[-1].hash, fsync=True)
        records_after = genesis_records(store, LAST_STREAM)
        segments_after = store.segments(LAST_STREAM)
    assert event_payloads(records_after[len(prev) :]) == LAST_BATCH
    assert len(segments_after) == len(segments) + (1 if rotated else 0)

    last = segments_after[-1]
    segment = last.path.relative_to(after)
    assert (before / segment).exists() != rotated
    segment_before = b"" if rotated else (before / segment).read_bytes()
    written = (after / segment).read_bytes()
    assert written.startswith(segment_before)
    with SegmentReader(after / segment, len(segment_before)) as reader:
        frame_starts = [frame.position for frame in reader.frames()]
    assert len(frame_starts) == len(records_after) - len(prev)
    # Nothing else changed on disk: every other segment file is byte for byte the same.
    for path in before.glob("streams/*/*.seg"):
        if path.relative_to(before) != segment:
            assert (after / path.relative_to(before)).read_bytes() == path.read_bytes()
    return LastBatch(
        compression,
        rotated,
        before,
        after,
        segment,
        last.segment_no,
        segment_before,
        written[len(segment_before) :],
        frame_starts,
        records_before,
        records_after,
    )


@pytest.fixture(scope="module")
def last_batch_templates(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[CompressionKind, bool], LastBatch]:
    """Built on first use, one per (compression, rotated), shared by every test here."""
    templates: dict[tuple[CompressionKind, bool], LastBatch] = {}
    for compression in (CompressionKind.NONE, CompressionKind.ZSTD):
        for rotated in (False, True):
            root = tmp_path_factory.mktemp(f"last-batch-{compression.value}-{'rotated' if rotated else 'same'}")
            templates[(compression, rotated)] = build_last_batch(root, compression, rotated=rotated)
    return templates


@contextmanager
def copy_of(template_dir: Path, workdir: Path) -> Iterator[Path]:
    """A private copy of a template store for one case, removed afterwards."""
    store_dir = workdir / "case"
    shutil.copytree(template_dir, store_dir)
    try:
        yield store_dir
    finally:
        shutil.rmtree(store_dir)


def open_recovering_writer(store_dir: Path, compression: CompressionKind) -> Storage:
    """The writer that reopens a crashed store (recovery runs before this returns)."""
    return open_template_store(store_dir, compression, START_NS + 2 * 10**12)


# --- (a) and (c): the catalog from before the commit -------------------------------------------------


def recover_before_commit(tpl: LastBatch, workdir: Path, written: bytes) -> None:
    """The segment got ``written`` where the last batch began, the catalog never heard of it; reopen.

    ``written`` is a prefix of the batch's bytes, possibly followed or replaced by zeros or garbage
    (for a new segment file, it is the whole file; empty means the file was created and nothing
    more). Recovery must keep the last batch only if all of its bytes are there, and keep every
    other byte in a quarantine file, unless they are all zeros (space a writer reserved ahead of its
    data: trimmed, logged when recovery acted on the stream anyway, nothing to keep).
    """
    size = len(tpl.batch)
    whole = written[:size] == tpl.batch
    leftover = written[size:] if whole else written
    cut_at = tpl.base + (size if whole else 0)
    expected = tpl.records_after if whole else tpl.records_before[LAST_STREAM]
    with copy_of(tpl.before, workdir) as store_dir:
        segment = store_dir / tpl.segment
        with segment.open("ab") as f:  # creates the file in the rotated variant
            f.write(written)

        with open_recovering_writer(store_dir, tpl.compression) as store:
            assert genesis_records(store, LAST_STREAM) == expected
            assert genesis_records(store, OTHER_STREAM) == tpl.records_before[OTHER_STREAM]
            assert store.damaged_streams() == {}

            # The segment holds exactly the kept batches; the cut bytes are in one quarantine file.
            kept = quarantine_files(store_dir)
            if cut_at == 0:
                assert not segment.exists()
            else:
                assert segment.read_bytes() == tpl.segment_before + (tpl.batch if whole else b"")
            kept_as = None
            zeros_only = bool(leftover) and not leftover.strip(b"\0")
            if leftover and not zeros_only:
                assert [p.name for p in kept] == [f"{segment.name}.{cut_at:020d}{QUARANTINE_SUFFIX}"]
                assert kept[0].read_bytes() == leftover
                kept_as = str(kept[0].relative_to(store_dir))
            else:
                assert kept == []

            # The recovery log says exactly that.
            rows: list[tuple[object, ...]] = []
            if whole:
                first, nxt = len(tpl.records_before[LAST_STREAM]), len(tpl.records_after)
                rows.append(
                    (LAST_STREAM, RecoveryAction.ADOPTED, tpl.segment_no, tpl.base, tpl.base + size, first, nxt, None)
                )
            end = cut_at + len(leftover)
            if leftover and not zeros_only:
                rows.append((LAST_STREAM, RecoveryAction.QUARANTINED, tpl.segment_no, cut_at, end, None, None, kept_as))
            elif zeros_only and (whole or tpl.rotated):  # else trimmed before recovery looked at the stream
                rows.append((LAST_STREAM, RecoveryAction.TRIMMED, tpl.segment_no, cut_at, end, None, None, None))
            elif tpl.rotated and not written:
                rows.append((LAST_STREAM, RecoveryAction.REMOVED_EMPTY, tpl.segment_no, None, None, None, None, None))
            assert [log_row(e) for e in store.recovery_log()] == rows

            report = store.check()
            assert report.findings == [], [f.as_dict() for f in report.findings]
            assert_catalog_matches_segments(store, LAST_STREAM, expected)
            assert_append_continues(store, LAST_STREAM, expected, b"appended after the power came back")


def every_prefix(batch: bytes) -> Iterator[tuple[str, bytes]]:
    """The batch cut at every byte boundary: 0, 1, ..., all of its bytes."""
    for keep in range(len(batch) + 1):
        yield f"{keep} of {len(batch)} bytes written", batch[:keep]


def garbage(length: int, seed: str) -> bytes:
    return random.Random(f"garbage/{seed}").randbytes(length)


def damaged_tails(batch: bytes, step: int) -> Iterator[tuple[str, bytes]]:
    """The batch with its tail replaced by zeros or garbage (from every ``step``-th byte), and with
    zeros or garbage of various lengths after a prefix (a file system that extended the file)."""
    size = len(batch)
    for keep in [*range(0, size, step), size - 1]:
        yield f"zeros from byte {keep}", batch[:keep] + bytes(size - keep)
        yield f"garbage from byte {keep}", batch[:keep] + garbage(size - keep, f"{keep}")
    for keep in (0, 1, 104, size // 2, size - 1, size):
        for length in (1, 13, 512, SEGMENT_SIZE):
            yield f"{keep} bytes then {length} zeros", batch[:keep] + bytes(length)
            yield f"{keep} bytes then {length} bytes of garbage", batch[:keep] + garbage(length, f"{keep}+{length}")


VARIANTS = [False, True]
VARIANT_IDS = ["same-segment", "new-segment"]


@pytest.mark.parametrize("rotated", VARIANTS, ids=VARIANT_IDS)
def test_last_batch_cut_at_every_byte_before_the_commit(
    last_batch_templates: dict[tuple[CompressionKind, bool], LastBatch], tmp_path: Path, rotated: bool
) -> None:
    """(a) Every prefix of the last batch, catalog from before its commit: all or nothing, cut bytes kept."""
    tpl = last_batch_templates[(CompressionKind.NONE, rotated)]
    for label, written in every_prefix(tpl.batch):
        with case(f"{tpl.label}: {label}"):
            recover_before_commit(tpl, tmp_path, written)


@pytest.mark.parametrize("rotated", VARIANTS, ids=VARIANT_IDS)
def test_last_batch_tail_replaced_by_zeros_or_garbage_before_the_commit(
    last_batch_templates: dict[tuple[CompressionKind, bool], LastBatch], tmp_path: Path, rotated: bool
) -> None:
    """(c) Zeros or garbage in place of, or after, part of the last batch: cut and kept, never adopted."""
    tpl = last_batch_templates[(CompressionKind.NONE, rotated)]
    for label, written in damaged_tails(tpl.batch, step=7):
        with case(f"{tpl.label}: {label}"):
            recover_before_commit(tpl, tmp_path, written)


@pytest.mark.slow
@pytest.mark.parametrize("rotated", VARIANTS, ids=VARIANT_IDS)
def test_every_before_commit_crash_state_compressed_and_exhaustive(
    last_batch_templates: dict[tuple[CompressionKind, bool], LastBatch], tmp_path: Path, rotated: bool
) -> None:
    """(a) and (c) with zstd, and zeros / garbage from every byte, for both compressions."""
    for compression in (CompressionKind.NONE, CompressionKind.ZSTD):
        tpl = last_batch_templates[(compression, rotated)]
        cases = damaged_tails(tpl.batch, step=1)
        if compression is CompressionKind.ZSTD:
            cases = itertools.chain(every_prefix(tpl.batch), cases)
        for label, written in cases:
            with case(f"{tpl.label}: {label}"):
                recover_before_commit(tpl, tmp_path, written)


# --- (b): the catalog from after the commit, the segment shorter -------------------------------------


def catalog_ahead(tpl: LastBatch, workdir: Path, keep: int | None) -> None:
    """The catalog committed the last batch but its segment holds only ``keep`` of its bytes (None:
    the new segment file is gone). Reported, not cut; ``repair()`` rolls the catalog back."""
    before = tpl.records_before[LAST_STREAM]
    cut_at = tpl.base + (keep or 0)
    # The first record the cut hurts: the one whose frame holds byte ``cut_at`` (or starts there).
    hurt_at = max(s for s in tpl.frame_starts if s <= cut_at)
    frame_ends = [*tpl.frame_starts[1:], tpl.base + len(tpl.batch)]
    whole_frames = sum(1 for end in frame_ends if end <= cut_at)
    hurt_offset = len(before) + whole_frames
    with copy_of(tpl.after, workdir) as store_dir:
        segment = store_dir / tpl.segment
        if keep is None:
            segment.unlink()
        else:
            with segment.open("r+b") as f:
                f.truncate(cut_at)
        on_disk = None if keep is None else segment.read_bytes()

        with open_recovering_writer(store_dir, tpl.compression) as store:
            # Recovery found the damage and says where; it changed nothing.
            damage = store.damaged_streams()
            assert list(damage) == [LAST_STREAM]
            [found] = damage.values()
            assert isinstance(found, CatalogMismatch)
            assert (found.stream_id, found.offset, found.segment, found.position) == (
                LAST_STREAM,
                hurt_offset,
                segment,
                hurt_at,
            )
            assert "hybridlog repair" in str(found)
            assert store.recovery_log() == []

            # A verified read returns the records before the damage, then raises naming it.
            read: list[Record] = []
            with pytest.raises(IntegrityError) as caught:
                read.extend(store.iter_records(LAST_STREAM, 0, anchored=False))
            assert (caught.value.stream_id, caught.value.offset, caught.value.segment) == (
                LAST_STREAM,
                hurt_offset,
                segment,
            )
            assert read == tpl.records_after[:hurt_offset]
            if keep is not None:  # a missing file has no byte position to name
                assert caught.value.position == hurt_at
            with pytest.raises(IntegrityError) as refused:
                store.append(LAST_STREAM, [b"refused"])
            assert (refused.value.stream_id, refused.value.segment) == (LAST_STREAM, segment)
            assert genesis_records(store, OTHER_STREAM) == tpl.records_before[OTHER_STREAM]

            # check() reports it, with the repair that fixes it, and changes nothing either.
            report = store.check()
            expected_problems = {(LAST_STREAM, FindingKind.CATALOG_AHEAD)} | (
                {(LAST_STREAM, FindingKind.TORN_TAIL)} if keep else set()
            )
            assert {(f.stream_id, f.problem) for f in report.findings} == expected_problems
            assert [(s.repair, s.stream_id) for s in report.plan()] == [(RepairKind.REINDEX, LAST_STREAM)]
            assert (segment.read_bytes() if segment.exists() else None) == on_disk
            assert quarantine_files(store_dir) == []

            # repair() keeps every whole record of the committed batch, keeps the torn bytes aside,
            # and marks the offsets whose bytes are gone as cut: they are never given out again.
            repaired = store.repair()
            assert [(s.repair, s.stream_id) for s in repaired.applied] == [(RepairKind.REINDEX, LAST_STREAM)]
            assert repaired.after is not None
            assert repaired.after.findings == []
            assert store.damaged_streams() == {}
            committed = len(tpl.records_after)
            records = genesis_records(store, LAST_STREAM)
            assert records[:-1] == tpl.records_after[:hurt_offset]
            marker = decode_marker(records[-1].payload)
            assert marker is not None
            assert (records[-1].offset, marker.action, marker.first_offset, marker.next_offset) == (
                committed,
                MarkerAction.CUT,
                hurt_offset,
                committed,
            )
            assert_catalog_matches_segments(store, LAST_STREAM, records)
            kept = quarantine_files(store_dir)
            rows: list[tuple[object, ...]] = []
            if keep is not None and cut_at > hurt_at:
                assert [p.name for p in kept] == [f"{segment.name}.{hurt_at:020d}{QUARANTINE_SUFFIX}"]
                assert kept[0].read_bytes() == tpl.batch[hurt_at - tpl.base : keep]
                kept_as = str(kept[0].relative_to(store_dir))
                rows.append(
                    (LAST_STREAM, RecoveryAction.TRUNCATED, tpl.segment_no, hurt_at, cut_at, hurt_offset, None, kept_as)
                )
            else:
                assert kept == []
            rows.append((LAST_STREAM, RecoveryAction.MARKED_CUT, None, None, None, hurt_offset, committed, None))
            if keep == 0 and tpl.rotated:  # the marker goes after the last record, not into an empty file
                rows.append((LAST_STREAM, RecoveryAction.REMOVED_EMPTY, tpl.segment_no, None, None, None, None, None))
            rows.append((LAST_STREAM, RecoveryAction.REINDEXED, None, None, None, 0, committed + 1, None))
            assert [log_row(e) for e in store.recovery_log()] == rows
            assert [log_row(e) for e in repaired.entries] == rows
            marker_frame = store.offset_index(LAST_STREAM).lookup(committed)
            assert marker_frame is not None
            marker_segment = segment_path(store_dir, LAST_STREAM, marker_frame.segment_no)
            if keep is None or (tpl.rotated and whole_frames == 0):  # nothing of the new file was kept
                assert not segment.exists()
            else:
                whole = tpl.frame_starts[whole_frames] if whole_frames < len(tpl.frame_starts) else cut_at
                assert marker_segment == segment
                assert segment.read_bytes()[: marker_frame.position] == (tpl.segment_before + tpl.batch)[:whole]

            assert_append_continues(store, LAST_STREAM, records, b"appended after the repair")
            assert store.check().findings == []
            assert genesis_records(store, OTHER_STREAM) == tpl.records_before[OTHER_STREAM]


@pytest.mark.parametrize("rotated", VARIANTS, ids=VARIANT_IDS)
def test_catalog_ahead_of_a_segment_cut_at_every_byte_is_reported_then_repaired(
    last_batch_templates: dict[tuple[CompressionKind, bool], LastBatch], tmp_path: Path, rotated: bool
) -> None:
    """(b) The catalog committed the last batch, the segment lost some of it: report, refuse, repair."""
    tpl = last_batch_templates[(CompressionKind.NONE, rotated)]
    keeps: list[int | None] = [None] if rotated else []
    keeps += list(range(len(tpl.batch)))
    for keep in keeps:
        with case(f"{tpl.label}: {'file missing' if keep is None else f'{keep} of {len(tpl.batch)} bytes'}"):
            catalog_ahead(tpl, tmp_path, keep)


@pytest.mark.slow
@pytest.mark.parametrize("rotated", VARIANTS, ids=VARIANT_IDS)
def test_catalog_ahead_of_a_compressed_segment_cut_at_every_byte(
    last_batch_templates: dict[tuple[CompressionKind, bool], LastBatch], tmp_path: Path, rotated: bool
) -> None:
    """(b) with zstd."""
    tpl = last_batch_templates[(CompressionKind.ZSTD, rotated)]
    for keep in range(len(tpl.batch)):
        with case(f"{tpl.label}: {keep} of {len(tpl.batch)} bytes"):
            catalog_ahead(tpl, tmp_path, keep)


def test_the_whole_last_batch_with_the_commit_needs_no_recovery(
    last_batch_templates: dict[tuple[CompressionKind, bool], LastBatch], tmp_path: Path
) -> None:
    """The control case: every byte written and committed; reopening finds and logs nothing."""
    for (_compression, _rotated), tpl in sorted(last_batch_templates.items(), key=lambda kv: kv[1].label):
        with case(tpl.label), copy_of(tpl.after, tmp_path) as store_dir:
            with open_recovering_writer(store_dir, tpl.compression) as store:
                assert genesis_records(store, LAST_STREAM) == tpl.records_after
                assert store.recovery_log() == []
                assert store.check().findings == []
                assert_catalog_matches_segments(store, LAST_STREAM, tpl.records_after)
                assert_append_continues(store, LAST_STREAM, tpl.records_after, b"next")
            assert quarantine_files(store_dir) == []


def test_templates_are_what_the_cases_assume(
    last_batch_templates: dict[tuple[CompressionKind, bool], LastBatch],
) -> None:
    """The last batch is small (a few hundred cut points), framed as records, after the catalog's end."""
    for tpl in last_batch_templates.values():
        assert 300 < len(tpl.batch) < 700
        assert tpl.frame_starts[0] == tpl.base
        assert tpl.batch.startswith(MAGIC)
        assert (tpl.base == 0) == tpl.rotated
        assert tpl.records_after[: len(tpl.records_before[LAST_STREAM])] == tpl.records_before[LAST_STREAM]


# ===================================================================================================
# 3. Power loss during a group commit that rotates segments
# ===================================================================================================

GROUP_FIRST = [b"group batch A, event 0 " * 2, b"group batch A, event 1 " * 2]
GROUP_SECOND = [b"group batch B, event 0 " * 3, b"group batch B, event 1 " * 3]


def open_group_store(path: Path, start_ns: int) -> Storage:
    """4 KiB segments and explicit checkpoints only, so each batch is exactly its events."""
    return Storage(
        path, checkpoint_policy=CheckpointPolicy.explicit(), max_segment_size=SEGMENT_SIZE, clock=make_clock(start_ns)
    )


@dataclass(frozen=True)
class RotatingGroup:
    """One group commit of two batches for ``LAST_STREAM``: A fills the active segment ``old`` and
    B, which no longer fits, goes to the new segment file ``new`` (the group seals ``old``).

    ``before`` is the closed store as it was just before the group wrote anything (its catalog is
    the catalog before the commit); ``old_before`` is the old segment's bytes then, ``first`` and
    ``second`` the bytes the group wrote for A (after ``old_before``) and B (the whole new file).
    """

    before: Path
    old: Path
    new: Path
    old_before: bytes
    first: bytes
    second: bytes
    records_before: list[Record]
    records_first: list[Record]
    records_both: list[Record]
    other_records: list[Record]


def commit_as_one_group(store: Storage, store_dir: Path, snapshot: Path) -> int:
    """Append GROUP_FIRST then GROUP_SECOND to LAST_STREAM from two threads, committed as one group.

    A leader thread's append to OTHER_STREAM holds stage 2 (inside its write) until both are queued;
    the group's own first write is held until the store directory has been copied to ``snapshot``.
    Returns how many batches the group wrote.
    """
    real_write_at, real_write_group = SegmentWriter.write_at, Writer.write_group
    writes = itertools.count(1)
    leader_writing, leader_go = threading.Event(), threading.Event()
    group_writing, group_go = threading.Event(), threading.Event()
    group_sizes: list[int] = []

    def write_at(self: SegmentWriter, position: int, data: bytes | bytearray | memoryview) -> None:
        n = next(writes)
        if n == 1:
            leader_writing.set()
            assert leader_go.wait(CHILD_TIMEOUT)
        elif n == 2:
            group_writing.set()
            assert group_go.wait(CHILD_TIMEOUT)
        real_write_at(self, position, data)

    def write_group(self: Writer, batches: dict[int, list[object]], *args: object, **kwargs: object) -> None:
        group_sizes.append(sum(len(b) for b in batches.values()))
        real_write_group(self, batches, *args, **kwargs)  # type: ignore[arg-type]

    errors: list[BaseException] = []

    def append(stream_id: int, events: list[bytes]) -> threading.Thread:
        def run() -> None:
            try:
                store.append(stream_id, events)
            except BaseException as e:
                errors.append(e)

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SegmentWriter, "write_at", write_at)
        patch.setattr(Writer, "write_group", write_group)
        threads = [append(OTHER_STREAM, [b"the leader's own batch"])]
        assert leader_writing.wait(CHILD_TIMEOUT)
        for events in (GROUP_FIRST, GROUP_SECOND):  # queued in this order: A, then B on top of it
            queued = len(store._writer.commits._queue)
            threads.append(append(LAST_STREAM, events))
            while len(store._writer.commits._queue) == queued:
                time.sleep(0.001)
        leader_go.set()
        assert group_writing.wait(CHILD_TIMEOUT)
        shutil.copytree(store_dir, snapshot)  # nothing of the group is written yet (its new file is empty)
        group_go.set()
        for thread in threads:
            thread.join(CHILD_TIMEOUT)
    assert errors == []
    return group_sizes[-1]


def build_rotating_group(root: Path) -> RotatingGroup:
    store_dir, before = root / "store", root / "before"
    with open_group_store(store_dir, START_NS) as store:
        store.append(OTHER_STREAM, [b"other stream, first batch"])
        for n in itertools.count():  # fill until A fits in the active segment but A and B do not
            segments = store.segments(LAST_STREAM)
            free = SEGMENT_SIZE - segments[-1].size_bytes if segments else SEGMENT_SIZE
            if len(segments) >= 2 and free < 300 + 208:
                break
            store.append(LAST_STREAM, [f"filler {n} ".encode() * 10])
        records_before = genesis_records(store, LAST_STREAM)
        old = segments[-1].path
        batches = commit_as_one_group(store, store_dir, before)
        assert batches == 2  # A and B went in one group
        records_both = genesis_records(store, LAST_STREAM)
        other_records = genesis_records(store, OTHER_STREAM)
        after_segments = store.segments(LAST_STREAM)
    assert event_payloads(records_both[len(records_before) :]) == GROUP_FIRST + GROUP_SECOND
    assert [s.path for s in after_segments[:-1]] == [s.path for s in segments]
    new = after_segments[-1].path
    assert after_segments[-2].sealed
    assert new != old
    # The snapshot is the store before the group: the old catalog, the old segment, an empty new file
    # (zeros at most: space reserved ahead, as the old segment has past its data, given back here).
    new_in_snapshot = before / new.relative_to(store_dir)
    assert new_in_snapshot.read_bytes().strip(b"\0") == b""
    new_in_snapshot.unlink()
    old_in_snapshot = before / old.relative_to(store_dir)
    os.truncate(old_in_snapshot, segments[-1].size_bytes)
    old_before = old_in_snapshot.read_bytes()
    old_after = old.read_bytes()
    assert old_after.startswith(old_before)
    return RotatingGroup(
        before=before,
        old=old.relative_to(store_dir),
        new=new.relative_to(store_dir),
        old_before=old_before,
        first=old_after[len(old_before) :],
        second=new.read_bytes(),
        records_before=records_before,
        records_first=records_both[: len(records_before) + len(GROUP_FIRST)],
        records_both=records_both,
        other_records=other_records,
    )


@pytest.fixture(scope="module")
def rotating_group(tmp_path_factory: pytest.TempPathFactory) -> RotatingGroup:
    return build_rotating_group(tmp_path_factory.mktemp("rotating-group"))


def recover_rotating_group(
    tpl: RotatingGroup, workdir: Path, first: bytes, second: bytes | None, extra: bytes | None = None
) -> None:
    """Power loss during the group: the old segment got ``first`` after its committed end, the new
    file holds ``second`` (None: its creation was not durable), and ``extra`` (if given) is in a
    segment file after the new one; the catalog is from before the group. Reopen and check that
    complete, chain-valid batches are adopted, everything else is quarantined byte for byte, and
    the stream is appendable (no append of the group had returned, so nothing acknowledged is lost)."""
    a_whole = first == tpl.first
    b_whole = a_whole and second == tpl.second and extra is None
    expected = tpl.records_both if b_whole else tpl.records_first if a_whole else tpl.records_before
    with copy_of(tpl.before, workdir) as store_dir:
        old, new = store_dir / tpl.old, store_dir / tpl.new
        with old.open("ab") as f:
            f.write(first)
        if second is not None:
            new.write_bytes(second)
        after_new = new.with_name(f"{int(new.name.split('.')[0]) + 1:020d}.seg")
        if extra is not None:
            after_new.write_bytes(extra)

        with open_group_store(store_dir, START_NS + 2 * 10**12) as store:
            assert store.damaged_streams() == {}
            records = genesis_records(store, LAST_STREAM)
            assert records == expected
            assert genesis_records(store, OTHER_STREAM) == tpl.other_records

            # The segments hold exactly the adopted batches; every other byte is in a quarantine file.
            assert old.read_bytes() == tpl.old_before + (tpl.first if a_whole else b"")
            assert new.exists() == (b_whole and bool(second))
            assert not after_new.exists()
            cut = [first] if first and not a_whole else []
            if second and not b_whole:
                cut.append(second)
            if extra:
                cut.append(extra)
            assert sorted(p.read_bytes() for p in quarantine_files(store_dir)) == sorted(cut)
            adopted = [e for e in store.recovery_log() if e.action == RecoveryAction.ADOPTED]
            assert sum((e.next_offset or 0) - (e.first_offset or 0) for e in adopted) == len(expected) - len(
                tpl.records_before
            )

            report = store.check()
            assert report.findings == [], [f.as_dict() for f in report.findings]
            assert_catalog_matches_segments(store, LAST_STREAM, expected)
            assert_append_continues(store, LAST_STREAM, expected, b"appended after the power came back")


def frame_cuts(data: bytes) -> list[int]:
    """Every byte boundary of ``data``: 0, 1, ..., len(data)."""
    return list(range(len(data) + 1))


def test_rotating_group_template_is_what_the_cases_assume(rotating_group: RotatingGroup) -> None:
    tpl = rotating_group
    assert tpl.first.startswith(MAGIC)
    assert tpl.second.startswith(MAGIC)
    assert len(tpl.old_before) + len(tpl.first) <= SEGMENT_SIZE < len(tpl.old_before) + len(tpl.first) + len(tpl.second)
    assert len(tpl.records_both) == len(tpl.records_before) + len(GROUP_FIRST) + len(GROUP_SECOND)


def test_rotating_group_old_segment_cut_at_every_byte_new_segment_whole(
    rotating_group: RotatingGroup, tmp_path: Path
) -> None:
    """The new segment holds all of B, the old one any prefix of A: B is adopted only with all of A."""
    tpl = rotating_group
    for keep in frame_cuts(tpl.first):
        with case(f"A: {keep} of {len(tpl.first)} bytes, B whole"):
            recover_rotating_group(tpl, tmp_path, tpl.first[:keep], tpl.second)


def test_rotating_group_new_segment_cut_at_every_byte(rotating_group: RotatingGroup, tmp_path: Path) -> None:
    """All of A reached the old segment, the new one holds any prefix of B (or was never created)."""
    tpl = rotating_group
    with case("A whole, new file not durable"):
        recover_rotating_group(tpl, tmp_path, tpl.first, None)
    for keep in frame_cuts(tpl.second):
        with case(f"A whole, B: {keep} of {len(tpl.second)} bytes"):
            recover_rotating_group(tpl, tmp_path, tpl.first, tpl.second[:keep])


def test_rotating_group_both_segments_cut(rotating_group: RotatingGroup, tmp_path: Path) -> None:
    """Part of A and part of B (an empty new file included): A at every 7th byte, and both at each
    frame boundary and one byte either side; and a segment file after the new one (a group that
    rotated twice), moved aside whole whenever what comes before it is incomplete."""
    tpl = rotating_group

    def around_frame_ends(batch: bytes) -> list[int]:
        """Each frame boundary of ``batch`` (from each frame's stored length) and one byte either side."""
        ends, position = {0, len(batch)}, 0
        while position < len(batch):
            position += HEADER_SIZE + int.from_bytes(batch[position + 32 : position + 36], "little") + 4
            ends.add(position)
        return sorted({c for end in ends for c in (end - 1, end, end + 1) if 0 <= c <= len(batch)})

    a_cuts = sorted(set(around_frame_ends(tpl.first)[:-1]) | set(range(0, len(tpl.first), 7)))
    for keep_a in a_cuts:
        for keep_b in around_frame_ends(tpl.second):
            with case(f"A: {keep_a} bytes, B: {keep_b} bytes"):
                recover_rotating_group(tpl, tmp_path, tpl.first[:keep_a], tpl.second[:keep_b])
    for keep_a in (0, len(tpl.first) // 2, len(tpl.first)):
        for second in (b"", tpl.second[:50], tpl.second):
            if keep_a == len(tpl.first) and second == tpl.second:
                continue  # a third file would have to hold a batch after B: not a crash of this group
            with case(f"A: {keep_a} bytes, B: {len(second)} bytes, a third file after it"):
                recover_rotating_group(tpl, tmp_path, tpl.first[:keep_a], second, extra=tpl.second)


# --- the children ------------------------------------------------------------------------------------


def child_write(store_dir: Path, seed: int, round_no: int, compression: CompressionKind) -> None:
    """Append the planned batches with fsync until killed as planned, printing one line per append that returned."""
    arm_from_environment()
    store = open_crash_writer(store_dir, compression)
    print("ready", flush=True)
    for batch_no in range(1_000_000):
        stream_id, events = planned_batch(seed, round_no, batch_no)
        next_offset, head = store.append(stream_id, events, fsync=True)
        acknowledge(f"ack {stream_id} {batch_no} {next_offset} {head.hex()}")
    store.close()


def child_main(argv: list[str]) -> int:
    command, store_dir, seed, round_no, compression = argv
    if command != "write":
        raise SystemExit(f"unknown command {command}")
    child_write(Path(store_dir), int(seed), int(round_no), CompressionKind(compression))
    return 0


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
