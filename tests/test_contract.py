"""The ``StorageBackend`` contract, written once and run against ``Storage`` and ``MemoryStorage``.

Every test here takes the ``harness`` fixture, which is parametrized over both backends and
hands out fresh backends with a chosen clock and checkpoint policy. What one backend does, the
other must do too. The tests at the end put the two side by side: the same appends with the same
clock must give byte-identical chain hashes and identical ``Record``s, whether or not ``Storage``
compresses its payloads.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import make_clock
from damage_tools import flip_byte, genesis_events, genesis_records
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridlog import (
    GENESIS_HASH,
    ChainHash,
    ChainMismatch,
    CheckpointPolicy,
    CompressionKind,
    ConflictError,
    EmptyBatch,
    GlobalRecord,
    IntegrityError,
    InvalidArgument,
    InvalidConfiguration,
    InvalidEvent,
    InvalidStreamId,
    MemoryStorage,
    OffsetMismatch,
    Record,
    RecordCountMismatch,
    RecordKind,
    Storage,
    StorageBackend,
    StorageError,
    StoreClosed,
    StreamId,
)
from hybridlog.record import HEADER_SIZE, checkpoint_payload, record_hash

Clock = Callable[[], int]

START_NS = 1_700_000_000_000_000_000


class ManualClock:
    """A clock the test moves by hand: every call returns ``now`` until the test changes it.

    Unlike a counting clock, its readings do not depend on how often a backend asks, so it pins
    down every timestamp (and therefore every hash) a backend writes.
    """

    def __init__(self, now: int = START_NS) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@dataclass
class Harness:
    """Makes fresh backends of one kind ("storage" on a tmp dir, or "memory") and closes them."""

    kind: str
    root: Path
    opened: list[StorageBackend] = field(default_factory=list)

    def make(
        self,
        *,
        policy: CheckpointPolicy | None = None,
        clock: Clock | None = None,
        compression: CompressionKind = CompressionKind.NONE,
    ) -> StorageBackend:
        """A new, empty backend; the policy defaults to explicit-only so tests see no surprises."""
        policy = CheckpointPolicy.explicit() if policy is None else policy
        clock = make_clock() if clock is None else clock
        backend: StorageBackend
        if self.kind == "storage":
            path = self.root / f"store{len(self.opened)}"
            backend = Storage(path, checkpoint_policy=policy, clock=clock, compression=compression)
        else:
            backend = MemoryStorage(checkpoint_policy=policy, clock=clock, compression=compression)
        self.opened.append(backend)
        return backend

    def records_after_close(self, backend: StorageBackend, stream_id: int) -> list[Record]:
        """What ``backend`` holds for a stream once closed (on-close checkpoints included)."""
        return closed_records(backend, stream_id)

    def assert_untouched(self, backend: StorageBackend) -> None:
        """Nothing was created: no store directory on disk, no stream in memory."""
        if isinstance(backend, Storage):
            assert not backend.data_dir.exists()
        assert backend.stream_ids() == []

    def close_all(self) -> None:
        for backend in self.opened:
            backend.close()


def closed_records(backend: StorageBackend, stream_id: int) -> list[Record]:
    """A closed backend's records for a stream: Storage reopened read-only, MemoryStorage's lists."""
    if isinstance(backend, Storage):
        with Storage(backend.data_dir, read_only=True) as reader:
            return genesis_records(reader, stream_id)
    assert isinstance(backend, MemoryStorage)
    # MemoryStorage refuses reads once closed, so look at its record lists directly.
    return list(backend._streams.get(StreamId(stream_id), []))


@pytest.fixture(params=["storage", "memory"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    h = Harness(kind=request.param, root=tmp_path)
    yield h
    h.close_all()


# --- helpers -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamState:
    """Everything a caller can observe about one stream through the contract."""

    next_offset: int
    head: ChainHash | None
    records: list[Record]
    last_checkpoint: tuple[int, ChainHash] | None


def observe(backend: StorageBackend, stream_id: int) -> StreamState:
    return StreamState(
        next_offset=backend.next_offset(stream_id),
        head=backend.latest_chain_hash(stream_id),
        records=genesis_records(backend, stream_id),
        last_checkpoint=backend.last_checkpoint(stream_id),
    )


def assert_valid_chain(records: Sequence[Record], stream_id: int) -> None:
    """Offsets count from 0, each record links to the one before, and each hash is recomputable."""
    prev = GENESIS_HASH
    for i, record in enumerate(records):
        assert record.stream_id == stream_id
        assert record.offset == i
        assert record.prev_hash == prev
        expected = record_hash(
            stream_id, record.offset, record.kind, record.timestamp_ns, record.prev_hash, record.payload
        )
        assert record.hash == expected
        assert isinstance(record.payload, bytes)
        prev = record.hash


def fill(backend: StorageBackend, stream_id: int, batches: Sequence[Sequence[bytes]]) -> tuple[int, ChainHash]:
    """Append ``batches`` in order with append_batch, checking each result against the head."""
    offset, head = backend.next_offset(stream_id), backend.latest_chain_hash(stream_id)
    for batch in batches:
        offset, new_head = backend.append_batch(stream_id, batch, offset, head)
        assert new_head == backend.latest_chain_hash(stream_id)
        assert offset == backend.next_offset(stream_id)
        head = new_head
    assert head is not None
    return offset, head


def expected_kinds(batch_sizes: Sequence[int], every: int) -> list[RecordKind]:
    """The record kinds a policy of a checkpoint after every ``every`` events produces."""
    kinds: list[RecordKind] = []
    since = 0
    for size in batch_sizes:
        for _ in range(size):
            kinds.append(RecordKind.EVENT)
            since += 1
            if since >= every:
                kinds.append(RecordKind.CHECKPOINT)
                since = 0
    return kinds


def expected_read(events: Sequence[tuple[int, bytes]], from_offset: int, max_bytes: int) -> list[bytes]:
    """Reference ``read_from`` over (offset, payload) events: at least one, then within max_bytes."""
    out: list[bytes] = []
    total = 0
    for offset, payload in events:
        if offset < from_offset:
            continue
        if out and total + len(payload) > max_bytes:
            break
        out.append(payload)
        total += len(payload)
    return out


# --- the contract --------------------------------------------------------------------------------


def test_backend_satisfies_the_protocol_and_reports_its_settings(harness: Harness) -> None:
    """Both backends are StorageBackends and report the policy and compression they were given."""
    policy = CheckpointPolicy.every(7, on_close=False)
    backend = harness.make(policy=policy, compression=CompressionKind.ZSTD)
    assert isinstance(backend, StorageBackend)
    assert backend.checkpoint_policy() == policy
    assert backend.default_compression() is CompressionKind.ZSTD


def test_first_append_to_an_empty_stream(harness: Harness) -> None:
    """An empty stream takes offset 0 and prev_hash None; the result is (next offset, chain head)."""
    backend = harness.make()
    assert backend.next_offset(5) == 0
    assert backend.latest_chain_hash(5) is None
    assert genesis_records(backend, 5) == []

    next_offset, head = backend.append_batch(5, [b"a", b"bc", b""], 0, None)

    assert next_offset == 3
    assert len(head) == 32
    assert backend.latest_chain_hash(5) == head
    assert backend.next_offset(5) == 3
    records = genesis_records(backend, 5)
    assert [r.payload for r in records] == [b"a", b"bc", b""]
    assert [r.kind for r in records] == [RecordKind.EVENT] * 3
    assert records[0].prev_hash == GENESIS_HASH
    assert records[-1].hash == head
    assert_valid_chain(records, 5)
    assert backend.stream_ids() == [5]


def test_appends_extend_the_chain(harness: Harness) -> None:
    """Each batch links to the head the previous one returned; streams are independent chains."""
    backend = harness.make()
    _, head1 = backend.append_batch(1, [b"x"], 0, None)
    _, other = backend.append_batch(2, [b"x"], 0, None)
    next_offset, head2 = backend.append_batch(1, [b"y", b"z"], 1, head1)

    assert next_offset == 3
    assert head2 != head1
    records = genesis_records(backend, 1)
    assert records[1].prev_hash == head1
    assert records[-1].hash == head2
    assert_valid_chain(records, 1)
    # Same payload, offset and (possibly) timestamp, but another stream: another hash.
    assert other != head1
    assert backend.stream_ids() == [1, 2]


@pytest.mark.parametrize("wrong_offset", [0, 1, 3, 4, 100])
def test_offset_mismatch_is_refused_and_changes_nothing(harness: Harness, wrong_offset: int) -> None:
    """An expected_offset other than the stream's next offset raises OffsetMismatch; nothing is written."""
    backend = harness.make()
    _, head = fill(backend, 1, [[b"a", b"b"]])
    before = observe(backend, 1)

    with pytest.raises(OffsetMismatch) as info:
        backend.append_batch(1, [b"c"], wrong_offset, head)

    assert isinstance(info.value, ConflictError)
    assert info.value.stream_id == 1
    assert info.value.actual == 2
    assert observe(backend, 1) == before


def test_offset_mismatch_on_an_empty_stream(harness: Harness) -> None:
    """An empty stream's only acceptable offset is 0."""
    backend = harness.make()
    with pytest.raises(OffsetMismatch):
        backend.append_batch(1, [b"a"], 1, None)
    assert backend.next_offset(1) == 0
    assert genesis_records(backend, 1) == []


@pytest.mark.parametrize("case", ["none-on-non-empty", "random-hash", "first-record-hash", "zero-hash"])
def test_chain_mismatch_is_refused_and_changes_nothing(harness: Harness, case: str) -> None:
    """A prev_hash that is not the head raises ChainMismatch, None included; nothing is written."""
    backend = harness.make()
    _, head = fill(backend, 1, [[b"a"], [b"b"]])
    first_hash = genesis_records(backend, 1)[0].hash
    wrong: bytes | None = {
        "none-on-non-empty": None,
        "random-hash": bytes(range(32)),
        "first-record-hash": first_hash,
        "zero-hash": GENESIS_HASH,
    }[case]
    before = observe(backend, 1)

    with pytest.raises(ChainMismatch) as info:
        backend.append_batch(1, [b"c"], 2, wrong)

    assert info.value.given == wrong
    assert info.value.head == head
    assert observe(backend, 1) == before


def test_a_hash_on_an_empty_stream_is_a_chain_mismatch(harness: Harness) -> None:
    """An empty stream has no head: only prev_hash None fits it (the genesis hash does not)."""
    backend = harness.make()
    for wrong in (GENESIS_HASH, bytes(range(32))):
        with pytest.raises(ChainMismatch):
            backend.append_batch(1, [b"a"], 0, wrong)
    assert genesis_records(backend, 1) == []


@pytest.mark.parametrize("events", [[], ()], ids=["list", "tuple"])
def test_empty_batch_is_a_value_error(harness: Harness, events: Sequence[bytes]) -> None:
    """An empty batch raises EmptyBatch, which is both a StorageError and a ValueError."""
    backend = harness.make()
    fill(backend, 1, [[b"a"]])
    before = observe(backend, 1)
    with pytest.raises(EmptyBatch) as info:
        backend.append_batch(1, events, 1, before.head)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, StorageError)
    assert observe(backend, 1) == before


@pytest.mark.parametrize(
    "events",
    [
        [b"ok", "text"],
        [b"ok", 1],
        [None],
        [[1, 2]],
        "abc",
        b"abc",
    ],
    ids=["str-event", "int-event", "none-event", "list-event", "str-batch", "bytes-batch"],
)
def test_non_bytes_event_is_a_type_error(harness: Harness, events: object) -> None:
    """A non-bytes event (or a lone bytes/str instead of a sequence) raises InvalidEvent, a TypeError.

    Nothing of the batch is written, not even its valid events.
    """
    backend = harness.make()
    fill(backend, 1, [[b"a"]])
    before = observe(backend, 1)
    with pytest.raises(InvalidEvent) as info:
        backend.append_batch(1, events, 1, before.head)  # type: ignore[arg-type]
    assert isinstance(info.value, TypeError)
    assert isinstance(info.value, StorageError)
    assert observe(backend, 1) == before


def test_bytes_like_events_are_accepted(harness: Harness) -> None:
    """bytearray and memoryview events are stored as their bytes and read back as bytes."""
    backend = harness.make()
    source = bytearray(b"0123456789")
    events: list[bytes | bytearray | memoryview] = [
        bytearray(b"array"),
        memoryview(b"view"),
        memoryview(source)[2:5],
        b"plain",
    ]
    backend.append_batch(1, events, 0, None)
    source[:] = b"XXXXXXXXXX"  # the store must have copied what it was given
    records = genesis_records(backend, 1)
    assert [r.payload for r in records] == [b"array", b"view", b"234", b"plain"]
    assert all(type(r.payload) is bytes for r in records)
    assert_valid_chain(records, 1)


BAD_STREAM_IDS: list[object] = [True, False, -1, 2**63, 1.0, "1", None]


def every_call_with(backend: StorageBackend, stream_id: object) -> list[Callable[[], object]]:
    """Every contract method that takes a stream id, bound to ``stream_id``."""
    sid: int = stream_id  # type: ignore[assignment]
    return [
        lambda: backend.append_batch(sid, [b"a"], 0, None),
        lambda: backend.append(sid, [b"a"]),
        lambda: backend.create_checkpoint(sid, 0, None, 0),
        lambda: backend.read_from(sid, 0, 100),
        lambda: backend.read_from_genesis(sid, 0, 100),
        lambda: backend.read_records_from_genesis(sid, 0, 100),
        lambda: backend.read_records_verified(sid, 0, 100),
        lambda: list(backend.iter_records(sid, 0)),
        lambda: backend.latest_chain_hash(sid),
        lambda: backend.next_offset(sid),
        lambda: backend.last_checkpoint(sid),
    ]


@pytest.mark.parametrize("stream_id", BAD_STREAM_IDS, ids=repr)
def test_invalid_stream_ids_are_refused_before_anything_is_touched(harness: Harness, stream_id: object) -> None:
    """Stream ids are ints in 0..2**63-1, not bools: anything else raises InvalidStreamId at once.

    For Storage, the store directory is not even created.
    """
    backend = harness.make()
    for call in every_call_with(backend, stream_id):
        with pytest.raises(InvalidStreamId):
            call()
    harness.assert_untouched(backend)


def test_invalid_stream_id_is_a_storage_error_and_a_builtin(harness: Harness) -> None:
    """Callers may catch a bad stream id as StorageError, ValueError or TypeError."""
    backend = harness.make()
    with pytest.raises(InvalidStreamId) as info:
        backend.append_batch(-1, [b"a"], 0, None)
    assert isinstance(info.value, StorageError)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, TypeError)


@pytest.mark.parametrize("stream_id", [0, 2**63 - 1])
def test_stream_ids_at_the_limits_are_accepted(harness: Harness, stream_id: int) -> None:
    """0 and 2**63-1 are valid stream ids and round-trip."""
    backend = harness.make()
    backend.append_batch(stream_id, [b"edge"], 0, None)
    assert genesis_events(backend, stream_id) == [b"edge"]
    assert backend.stream_ids() == [stream_id]
    assert_valid_chain(genesis_records(backend, stream_id), stream_id)


def test_append_fills_in_the_head(harness: Harness) -> None:
    """``append`` appends at the current head; a given expected_offset is still checked."""
    backend = harness.make()
    assert backend.append(1, [b"a"]) == (1, backend.latest_chain_hash(1))
    next_offset, head = backend.append(1, [b"b", b"c"])
    assert next_offset == 3
    assert head == backend.latest_chain_hash(1)

    before = observe(backend, 1)
    with pytest.raises(OffsetMismatch):
        backend.append(1, [b"d"], expected_offset=2)
    assert observe(backend, 1) == before

    assert backend.append(1, [b"d"], expected_offset=3)[0] == 4
    assert genesis_events(backend, 1) == [b"a", b"b", b"c", b"d"]
    assert_valid_chain(genesis_records(backend, 1), 1)


def test_create_checkpoint_writes_a_checkpoint_record(harness: Harness) -> None:
    """create_checkpoint appends a CHECKPOINT record at the head and returns (next offset, its hash)."""
    backend = harness.make()
    offset, head = fill(backend, 1, [[b"a", b"b"]])

    next_offset, checkpoint_hash = backend.create_checkpoint(1, offset, head, offset)

    assert next_offset == 3
    assert checkpoint_hash == backend.latest_chain_hash(1)
    assert backend.last_checkpoint(1) == (2, checkpoint_hash)
    records = genesis_records(backend, 1)
    assert records[-1].kind is RecordKind.CHECKPOINT
    assert records[-1].offset == 2
    assert records[-1].prev_hash == head
    assert records[-1].payload == checkpoint_payload(2)
    assert_valid_chain(records, 1)
    # Checkpoints are not events.
    assert genesis_events(backend, 1) == [b"a", b"b"]
    assert backend.read_from(1, 0, 1 << 20) == [b"a", b"b"]
    # The stream goes on after it.
    assert backend.append_batch(1, [b"c"], 3, checkpoint_hash)[0] == 4


def test_create_checkpoint_on_an_empty_stream(harness: Harness) -> None:
    """An empty stream can be checkpointed: offset 0, prev_hash None, record_count 0."""
    backend = harness.make()
    next_offset, checkpoint_hash = backend.create_checkpoint(1, 0, None, 0)
    assert next_offset == 1
    assert backend.last_checkpoint(1) == (0, checkpoint_hash)
    assert genesis_events(backend, 1) == []
    assert_valid_chain(genesis_records(backend, 1), 1)


@pytest.mark.parametrize("wrong", ["offset", "prev_hash", "none_prev_hash", "record_count"])
def test_create_checkpoint_checks_its_arguments(harness: Harness, wrong: str) -> None:
    """current_offset and prev_hash are checked like an append, record_count against the stream."""
    backend = harness.make()
    offset, head = fill(backend, 1, [[b"a", b"b"]])
    before = observe(backend, 1)
    error: type[ConflictError] = {
        "offset": OffsetMismatch,
        "prev_hash": ChainMismatch,
        "none_prev_hash": ChainMismatch,
        "record_count": RecordCountMismatch,
    }[wrong]
    current = offset + 1 if wrong == "offset" else offset
    prev: bytes | None = {"prev_hash": bytes(32 * [7]), "none_prev_hash": None}.get(wrong, head)
    count = offset - 1 if wrong == "record_count" else offset

    with pytest.raises(error) as info:
        backend.create_checkpoint(1, current, prev, count)

    if isinstance(info.value, RecordCountMismatch):
        assert (info.value.given, info.value.actual) == (1, 2)
    assert observe(backend, 1) == before


def test_last_checkpoint(harness: Harness) -> None:
    """None for unknown streams and streams without checkpoints, else the newest (offset, hash)."""
    backend = harness.make()
    assert backend.last_checkpoint(1) is None
    offset, head = fill(backend, 1, [[b"a"]])
    assert backend.last_checkpoint(1) is None
    offset, first = backend.create_checkpoint(1, offset, head, offset)
    offset, head = backend.append_batch(1, [b"b"], offset, first)
    assert backend.last_checkpoint(1) == (1, first)
    _, second = backend.create_checkpoint(1, offset, head, offset)
    assert backend.last_checkpoint(1) == (3, second)
    assert backend.last_checkpoint(2) is None


@settings(max_examples=25)
@given(
    every=st.integers(min_value=1, max_value=5),
    batch_sizes=st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=6),
)
def test_every_n_policy_places_checkpoints(harness: Harness, every: int, batch_sizes: list[int]) -> None:
    """A policy of every N records writes a checkpoint right after each N-th event, inside the batch.

    read_from never returns checkpoint payloads; read_records_* include them with kind CHECKPOINT;
    the head a batch returns is its last record's, a checkpoint's when the batch ends on one.
    """
    backend = harness.make(policy=CheckpointPolicy.every(every, on_close=False))
    payloads = iter(f"event-{i}".encode() for i in itertools.count())
    sent: list[bytes] = []
    for size in batch_sizes:
        batch = [next(payloads) for _ in range(size)]
        sent += batch
        next_offset, head = backend.append(1, batch)
        records = genesis_records(backend, 1)
        assert next_offset == len(records)
        assert head == records[-1].hash

    records = genesis_records(backend, 1)
    assert [r.kind for r in records] == expected_kinds(batch_sizes, every)
    for r in records:
        if r.kind is RecordKind.CHECKPOINT:
            assert r.payload == checkpoint_payload(r.offset)
    assert_valid_chain(records, 1)
    assert genesis_events(backend, 1) == sent
    assert backend.read_from(1, 0, 1 << 30) == sent
    checkpoint_offsets = [r.offset for r in records if r.kind is RecordKind.CHECKPOINT]
    if checkpoint_offsets:
        assert backend.last_checkpoint(1) == (checkpoint_offsets[-1], records[checkpoint_offsets[-1]].hash)
    else:
        assert backend.last_checkpoint(1) is None


def test_explicit_checkpoints_restart_the_policy_count(harness: Harness) -> None:
    """The every-N count runs from the last checkpoint, whichever way it was written."""
    backend = harness.make(policy=CheckpointPolicy.every(3, on_close=False))
    offset, head = fill(backend, 1, [[b"a", b"b"]])
    offset, head = backend.create_checkpoint(1, offset, head, offset)
    fill(backend, 1, [[b"c", b"d"], [b"e"]])
    kinds = [r.kind for r in genesis_records(backend, 1)]
    e, c = RecordKind.EVENT, RecordKind.CHECKPOINT
    assert kinds == [e, e, c, e, e, e, c]


@pytest.mark.parametrize("on_close", [True, False])
def test_on_close_policy(harness: Harness, on_close: bool) -> None:
    """With on_close, closing checkpoints every stream with events after its last checkpoint.

    Streams that already end in a checkpoint get none; without on_close, close writes nothing.
    """
    policy = CheckpointPolicy(every_records=None, on_close=on_close)
    backend = harness.make(policy=policy)
    fill(backend, 1, [[b"a"], [b"b"]])
    fill(backend, 2, [[b"c"]])
    offset, head = fill(backend, 3, [[b"d"]])
    backend.create_checkpoint(3, offset, head, offset)
    before = {sid: genesis_records(backend, sid) for sid in (1, 2, 3)}

    backend.close()
    backend.close()  # idempotent: no second round of checkpoints

    for sid in (1, 2):
        after = harness.records_after_close(backend, sid)
        if on_close:
            assert after[:-1] == before[sid]
            assert after[-1].kind is RecordKind.CHECKPOINT
            assert after[-1].offset == len(before[sid])
            assert after[-1].prev_hash == before[sid][-1].hash
            assert_valid_chain(after, sid)
        else:
            assert after == before[sid]
    assert harness.records_after_close(backend, 3) == before[3]


def test_every_n_policy_with_on_close_adds_only_what_is_missing(harness: Harness) -> None:
    """A stream the every-N policy left on a checkpoint gets no extra one on close."""
    backend = harness.make(policy=CheckpointPolicy.every(2, on_close=True))
    fill(backend, 1, [[b"a", b"b"]])  # ends on a policy checkpoint
    fill(backend, 2, [[b"a", b"b", b"c"]])  # one event after it
    backend.close()
    e, c = RecordKind.EVENT, RecordKind.CHECKPOINT
    assert [r.kind for r in harness.records_after_close(backend, 1)] == [e, e, c]
    assert [r.kind for r in harness.records_after_close(backend, 2)] == [e, e, c, e, c]


def test_read_from_max_bytes(harness: Harness) -> None:
    """read_from returns at least one event, then stops before the payloads would exceed max_bytes."""
    backend = harness.make()
    fill(backend, 1, [[b"a" * 5, b"b" * 5], [b"c" * 5, b"d" * 20, b"e" * 5]])
    assert backend.read_from(1, 0, 0) == [b"a" * 5]
    assert backend.read_from(1, 0, 9) == [b"a" * 5]
    assert backend.read_from(1, 0, 10) == [b"a" * 5, b"b" * 5]
    assert backend.read_from(1, 0, 14) == [b"a" * 5, b"b" * 5]
    assert backend.read_from(1, 0, 15) == [b"a" * 5, b"b" * 5, b"c" * 5]
    assert backend.read_from(1, 3, 4) == [b"d" * 20]  # one event even when it alone is too big
    assert backend.read_from(1, 2, 24) == [b"c" * 5]  # stops at the first event that does not fit
    assert backend.read_from(1, 1, 1 << 20) == [b"b" * 5, b"c" * 5, b"d" * 20, b"e" * 5]


def test_read_from_unknown_stream_and_past_the_end(harness: Harness) -> None:
    """An unknown stream, or a from_offset at or beyond the end, reads as []."""
    backend = harness.make()
    assert backend.read_from(9, 0, 100) == []
    fill(backend, 1, [[b"a", b"b"]])
    assert backend.read_from(9, 0, 100) == []
    assert backend.read_from(1, 2, 100) == []
    assert backend.read_from(1, 50, 100) == []
    assert backend.read_records_verified(1, 2, 100) == []
    assert backend.read_records_verified(1, 50, 100) == []
    assert backend.read_from_genesis(9, 0, 100) == []
    assert backend.read_records_from_genesis(9, 0, 100) == []
    assert backend.read_records_verified(9, 0, 100) == []


def test_read_from_skips_checkpoint_records(harness: Harness) -> None:
    """Starting at a checkpoint's offset reads from the next event; no checkpoint payload appears."""
    backend = harness.make(policy=CheckpointPolicy.every(2, on_close=False))
    fill(backend, 1, [[b"a", b"b", b"c", b"d", b"e"]])  # a b C c d C e
    assert backend.read_from(1, 2, 1 << 20) == [b"c", b"d", b"e"]
    assert backend.read_from(1, 5, 0) == [b"e"]
    assert backend.read_from(1, 0, 1 << 20) == [b"a", b"b", b"c", b"d", b"e"]


@settings(max_examples=25)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=12),
    every=st.none() | st.integers(min_value=1, max_value=4),
    from_offset=st.integers(min_value=0, max_value=20),
    max_bytes=st.integers(min_value=0, max_value=120),
)
def test_read_from_matches_the_reference(
    harness: Harness, sizes: list[int], every: int | None, from_offset: int, max_bytes: int
) -> None:
    """read_from agrees with a reference implementation for any offset, budget and policy."""
    backend = harness.make(policy=CheckpointPolicy(every_records=every, on_close=False))
    payloads = [bytes([i]) * n for i, n in enumerate(sizes)]
    backend.append_batch(1, payloads, 0, None)
    events = [(r.offset, r.payload) for r in genesis_records(backend, 1) if r.kind is RecordKind.EVENT]
    assert [p for _, p in events] == payloads
    assert backend.read_from(1, from_offset, max_bytes) == expected_read(events, from_offset, max_bytes)


def test_genesis_and_verified_reads(harness: Harness) -> None:
    """read_from_genesis gives event payloads; the record reads give Records, checkpoints included."""
    backend = harness.make(policy=CheckpointPolicy.every(3, on_close=False))
    fill(backend, 1, [[b"a", b"b"], [b"c", b"d"], [b"e"]])  # a b c C d e
    records = genesis_records(backend, 1)
    assert [(r.kind, r.payload) for r in records if r.kind is RecordKind.EVENT] == [
        (RecordKind.EVENT, p) for p in (b"a", b"b", b"c", b"d", b"e")
    ]
    assert [r.kind for r in records].count(RecordKind.CHECKPOINT) == 1
    assert_valid_chain(records, 1)
    assert backend.read_from_genesis(1, 0, 1 << 20) == [b"a", b"b", b"c", b"d", b"e"]
    for start in range(len(records) + 2):
        assert backend.read_records_verified(1, start, 1 << 20) == records[start:]
        assert backend.read_records_from_genesis(1, start, 1 << 20) == records[start:]
        assert list(backend.iter_records(1, start)) == records[start:]
        assert list(backend.iter_records(1, start, anchored=False)) == records[start:]
    assert genesis_events(backend, 1) == [b"a", b"b", b"c", b"d", b"e"]


# --- the seed's page reads: (stream_id, from_offset, max_bytes) -----------------------------------

PAGE_READS = ["read_from_genesis", "read_records_from_genesis", "read_records_verified"]


def page_of(backend: StorageBackend, read: str, stream_id: int, from_offset: int, max_bytes: int) -> list[bytes]:
    """The payloads of one page of ``read`` (the record reads' Records as their payloads)."""
    if read == "read_from_genesis":
        return backend.read_from_genesis(stream_id, from_offset, max_bytes)
    if read == "read_records_from_genesis":
        return [r.payload for r in backend.read_records_from_genesis(stream_id, from_offset, max_bytes)]
    assert read == "read_records_verified"
    return [r.payload for r in backend.read_records_verified(stream_id, from_offset, max_bytes)]


def expected_page(records: Sequence[Record], from_offset: int, max_bytes: int) -> list[Record]:
    """Reference page over records: from ``from_offset``, at least one, then within max_bytes."""
    out: list[Record] = []
    total = 0
    for record in records:
        if record.offset < from_offset:
            continue
        if out and total + len(record.payload) > max_bytes:
            break
        out.append(record)
        total += len(record.payload)
    return out


@pytest.mark.parametrize("read", PAGE_READS)
def test_page_reads_take_at_least_one_then_stop_within_max_bytes(harness: Harness, read: str) -> None:
    """The seed's signature: from ``from_offset``, at least one item when there is one, then stop
    before the payloads would exceed ``max_bytes`` (``read_from``'s rule)."""
    backend = harness.make()
    fill(backend, 1, [[b"a" * 5, b"b" * 5], [b"c" * 5, b"d" * 20, b"e" * 5]])
    assert page_of(backend, read, 1, 0, 0) == [b"a" * 5]  # max_bytes 0: one item
    assert page_of(backend, read, 1, 0, 9) == [b"a" * 5]
    assert page_of(backend, read, 1, 0, 10) == [b"a" * 5, b"b" * 5]
    assert page_of(backend, read, 1, 0, 14) == [b"a" * 5, b"b" * 5]
    assert page_of(backend, read, 1, 0, 15) == [b"a" * 5, b"b" * 5, b"c" * 5]
    assert page_of(backend, read, 1, 3, 4) == [b"d" * 20]  # one item even when it alone is too big
    assert page_of(backend, read, 1, 2, 24) == [b"c" * 5]  # stops at the first item that does not fit
    assert page_of(backend, read, 1, 1, 1 << 20) == [b"b" * 5, b"c" * 5, b"d" * 20, b"e" * 5]
    assert page_of(backend, read, 1, 4, 2**100) == [b"e" * 5]  # a budget past any payload
    assert page_of(backend, read, 1, 5, 100) == []  # at the end
    assert page_of(backend, read, 1, 2**63 - 1, 100) == []  # far past it
    assert page_of(backend, read, 9, 0, 100) == []  # an unknown stream
    backend.create_checkpoint(2, 0, None, 0)
    assert page_of(backend, read, 2, 0, 0) == ([] if read == "read_from_genesis" else [checkpoint_payload(0)])


def test_page_reads_of_records_include_checkpoints_and_payload_pages_skip_them(harness: Harness) -> None:
    backend = harness.make(policy=CheckpointPolicy.every(2, on_close=False))
    fill(backend, 1, [[b"a", b"b", b"c", b"d", b"e"]])  # a b C c d C e
    records = genesis_records(backend, 1)
    assert backend.read_from_genesis(1, 2, 0) == [b"c"]  # from a checkpoint: the next event
    assert backend.read_from_genesis(1, 5, 1 << 20) == [b"e"]
    assert backend.read_records_from_genesis(1, 2, 0) == records[2:3]
    assert backend.read_records_verified(1, 2, 0) == records[2:3]
    assert backend.read_records_verified(1, 3, 1) == records[3:4]


@pytest.mark.parametrize("bad", [-1, -(2**63), True, False, 1.5, "10", None, b"1"], ids=repr)
def test_page_reads_refuse_a_bad_max_bytes(harness: Harness, bad: object) -> None:
    """``max_bytes`` is a non-negative int (as for ``read_from``, no upper bound); anything else
    is InvalidArgument in both backends, also for an unknown stream."""
    backend = harness.make()
    fill(backend, 1, [[b"a", b"b"]])
    reads: list[Callable[[int, int, int], object]] = [
        backend.read_from,
        backend.read_from_genesis,
        backend.read_records_from_genesis,
        backend.read_records_verified,
    ]
    for read, sid in itertools.product(reads, (1, 9)):
        with pytest.raises(InvalidArgument):
            read(sid, 0, bad)  # type: ignore[arg-type]
    assert genesis_events(backend, 1) == [b"a", b"b"]


@settings(max_examples=25)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=12),
    every=st.none() | st.integers(min_value=1, max_value=4),
    from_offset=st.integers(min_value=0, max_value=20),
    max_bytes=st.integers(min_value=0, max_value=120),
)
def test_page_reads_match_the_reference_and_page_through_the_stream(
    harness: Harness, sizes: list[int], every: int | None, from_offset: int, max_bytes: int
) -> None:
    """Every page read agrees with a reference for any offset, budget and policy, and paging from
    ``page[-1].offset + 1`` gives every record once, in order."""
    backend = harness.make(policy=CheckpointPolicy(every_records=every, on_close=False))
    backend.append_batch(1, [bytes([i]) * n for i, n in enumerate(sizes)], 0, None)
    records = genesis_records(backend, 1)
    events = [(r.offset, r.payload) for r in records if r.kind is RecordKind.EVENT]
    assert backend.read_from_genesis(1, from_offset, max_bytes) == expected_read(events, from_offset, max_bytes)
    page = expected_page(records, from_offset, max_bytes)
    assert backend.read_records_from_genesis(1, from_offset, max_bytes) == page
    assert backend.read_records_verified(1, from_offset, max_bytes) == page
    for read in (backend.read_records_from_genesis, backend.read_records_verified):
        seen: list[Record] = []
        offset = 0
        while got := read(1, offset, max_bytes):
            assert len(got) == 1 or sum(len(r.payload) for r in got) <= max_bytes
            seen += got
            offset = got[-1].offset + 1
        assert seen == records


def test_genesis_pages_verify_from_offset_0_and_verified_pages_from_their_checkpoint(tmp_path: Path) -> None:
    """A byte flipped in record 0: a page from genesis that starts at offset 5 still verifies from
    offset 0 and raises there; a checkpoint-anchored page from after the checkpoint past the damage
    trusts the checkpoint and reads."""
    path = tmp_path / "store"
    with Storage(path, checkpoint_policy=CheckpointPolicy.every(4, on_close=False)) as store:
        fill(store, 1, [[b"event %d" % i] for i in range(10)])  # e e e e C e e e e C e e
        records = genesis_records(store, 1)
        assert records[4].kind is RecordKind.CHECKPOINT
        first = store.offset_index(1).lookup(0)
        assert first is not None
        segment = store.segments(1)[0].path
    flip_byte(segment, first.position + HEADER_SIZE)  # the first payload byte of record 0
    with Storage(path, read_only=True) as store:
        for read in (store.read_from_genesis, store.read_records_from_genesis):
            with pytest.raises(IntegrityError) as raised:
                read(1, 5, 1 << 20)
            assert raised.value.offset == 0
        with pytest.raises(IntegrityError):
            store.read_records_verified(1, 3, 1 << 20)  # anchored at genesis: no checkpoint before 3
        assert store.read_records_verified(1, 5, 1 << 20) == records[5:]
        assert store.read_records_verified(1, 4, 0) == records[4:5]
        assert store.read_from(1, 5, 1 << 20) == [r.payload for r in records[5:] if r.kind is RecordKind.EVENT]


def test_timestamps_never_decrease_when_the_clock_steps_back(harness: Harness) -> None:
    """A clock stepping back is clamped per stream; a batch's records share one timestamp."""
    clock = ManualClock(START_NS)
    backend = harness.make(clock=clock, policy=CheckpointPolicy.every(2, on_close=False))
    backend.append(1, [b"a"])
    clock.now = START_NS - 5_000
    backend.append(1, [b"b", b"c"])  # b, checkpoint, c: the checkpoint shares the batch's timestamp
    clock.now = START_NS - 10_000
    backend.append(2, [b"other"])  # another stream is not clamped by stream 1
    clock.now = START_NS + 7
    backend.append(1, [b"d"])  # d, checkpoint

    assert [r.timestamp_ns for r in genesis_records(backend, 1)] == [START_NS] * 4 + [START_NS + 7] * 2
    assert [r.timestamp_ns for r in genesis_records(backend, 2)] == [START_NS - 10_000]
    assert all(r.timestamp == r.timestamp_ns for r in genesis_records(backend, 1))


def test_timestamps_come_from_the_clock(harness: Harness) -> None:
    """Records carry the clock's reading at append time; explicit checkpoints too."""
    clock = ManualClock(START_NS)
    backend = harness.make(clock=clock)
    backend.append(1, [b"a", b"b"])
    clock.now = START_NS + 1_000
    offset, head = backend.next_offset(1), backend.latest_chain_hash(1)
    backend.create_checkpoint(1, offset, head, offset)
    assert [r.timestamp_ns for r in genesis_records(backend, 1)] == [START_NS, START_NS, START_NS + 1_000]


# --- time -----------------------------------------------------------------------------------------


def timed_stream(harness: Harness, policy: CheckpointPolicy | None = None) -> StorageBackend:
    """Stream 1 with offsets a0 b1 c2 at +100, d3 e4 at +200 (e's clock stepped back to +150), f5 at +300."""
    clock = ManualClock(START_NS + 100)
    backend = harness.make(clock=clock, policy=policy)
    backend.append(1, [b"a", b"b"])
    backend.append(1, [b"c"])  # an equal timestamp in the next batch
    clock.now = START_NS + 200
    backend.append(1, [b"d"])
    clock.now = START_NS + 150
    backend.append(1, [b"e"])  # clamped to +200
    clock.now = START_NS + 300
    backend.append(1, [b"f"])
    return backend


def test_offset_at_finds_the_first_record_at_or_after_a_time(harness: Harness) -> None:
    backend = timed_stream(harness)
    at = {t: backend.offset_at(1, START_NS + t) for t in (-(10**9), 0, 99, 100, 101, 150, 199, 200, 201, 300, 301)}
    assert at == {-(10**9): 0, 0: 0, 99: 0, 100: 0, 101: 3, 150: 3, 199: 3, 200: 3, 201: 5, 300: 5, 301: 6}
    assert backend.offset_at(1, -1) == 0
    assert backend.offset_at(1, 2**64) == backend.next_offset(1) == 6  # after the last: the next offset
    assert backend.offset_at(9, START_NS) == 0  # an unknown stream


def test_read_between_since_inclusive_until_exclusive(harness: Harness) -> None:
    backend = timed_stream(harness)

    def payloads(since: int | None, until: int | None, max_bytes: int = 1 << 20) -> list[bytes]:
        since_ns = None if since is None else START_NS + since
        until_ns = None if until is None else START_NS + until
        return [r.payload for r in backend.read_between(1, since_ns, until_ns, max_bytes)]

    assert payloads(None, None) == [b"a", b"b", b"c", b"d", b"e", b"f"]
    assert payloads(100, 200) == [b"a", b"b", b"c"]
    assert payloads(100, 201) == [b"a", b"b", b"c", b"d", b"e"]
    assert payloads(101, 300) == [b"d", b"e"]
    assert payloads(150, 200) == []  # e was appended at +150 by the clock, but stored at +200
    assert payloads(200, 200) == []  # an empty window
    assert payloads(None, 100) == []  # before the first
    assert payloads(301, None) == []  # after the last
    assert payloads(300, None) == [b"f"]
    assert payloads(None, 101) == [b"a", b"b", b"c"]
    assert payloads(100, None, max_bytes=0) == [b"a"]  # at least one
    assert payloads(100, None, max_bytes=2) == [b"a", b"b"]
    assert backend.read_between(9, None, None) == []
    records = backend.read_between(1, START_NS + 200, None)
    assert records == backend.read_records_verified(1, 3, 1 << 20)  # whole, verified Records


def test_read_between_includes_checkpoints_in_the_window(harness: Harness) -> None:
    backend = timed_stream(harness, policy=CheckpointPolicy.every(2, on_close=False))
    # a b C c d C e f C: the checkpoints share their batch's timestamp
    kinds = [(r.kind, r.payload) for r in backend.read_between(1, START_NS + 200, START_NS + 300)]
    assert [k for k, _ in kinds] == [RecordKind.EVENT, RecordKind.CHECKPOINT, RecordKind.EVENT]
    assert [p for k, p in kinds if k is RecordKind.EVENT] == [b"d", b"e"]


@pytest.mark.parametrize(
    ("since", "until", "max_bytes"),
    [(5, 4, 10), (True, None, 10), (None, 1.5, 10), (None, "2024", 10), (None, None, -1), (None, None, 1.0)],
)
def test_read_between_refuses_bad_arguments(harness: Harness, since: object, until: object, max_bytes: object) -> None:
    backend = timed_stream(harness)
    with pytest.raises(InvalidArgument):
        backend.read_between(1, since, until, max_bytes)  # type: ignore[arg-type]


def test_offset_at_refuses_a_time_that_is_not_an_int(harness: Harness) -> None:
    backend = timed_stream(harness)
    for bad in (1.5, "now", None, True):
        with pytest.raises(InvalidArgument):
            backend.offset_at(1, bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidStreamId):
        backend.offset_at(-1, START_NS)


OUT_OF_RANGE = [2**63, 2**64, 2**100, -1, -(2**63) - 1, True, False, 1.5, 2.0**63, "0", None]


@pytest.mark.parametrize("bad", OUT_OF_RANGE, ids=repr)
def test_read_offsets_and_positions_out_of_range_are_invalid_arguments(harness: Harness, bad: object) -> None:
    """An offset or global position a read starts from is an int in 0..2**63-1 (the largest any
    stream can reach); anything else is InvalidArgument in both backends, and changes nothing."""
    backend = harness.make()
    fill(backend, 1, [[b"a", b"b"]])
    reads: list[Callable[[], object]] = [
        lambda: backend.read_from(1, bad, 100),  # type: ignore[arg-type]
        lambda: list(backend.iter_records(1, bad)),  # type: ignore[arg-type]
        lambda: list(backend.iter_records(1, bad, anchored=False)),  # type: ignore[arg-type]
        lambda: backend.read_records_verified(1, bad, 100),  # type: ignore[arg-type]
        lambda: backend.read_records_from_genesis(1, bad, 100),  # type: ignore[arg-type]
        lambda: backend.read_from_genesis(1, bad, 100),  # type: ignore[arg-type]
        lambda: backend.read_global(bad),  # type: ignore[arg-type]
        lambda: backend.read_global(bad, 100, stream_id=1),  # type: ignore[arg-type]
    ]
    for read in reads:
        with pytest.raises(InvalidArgument):
            read()
    assert genesis_events(backend, 1) == [b"a", b"b"]
    assert backend.last_global_position() == 2


def test_reads_at_the_largest_offset_and_position_find_nothing(harness: Harness) -> None:
    backend = harness.make()
    fill(backend, 1, [[b"a", b"b"]])
    top = 2**63 - 1
    assert backend.read_from(1, top, 100) == []
    assert list(backend.iter_records(1, top)) == []
    assert backend.read_records_verified(1, top, 100) == []
    assert backend.read_records_from_genesis(1, top, 100) == []
    assert backend.read_from_genesis(1, top, 100) == []
    assert backend.read_global(top) == []
    assert backend.read_global(top, 100, stream_id=1) == []


def test_times_beyond_any_clock_reading_are_bounds_both_backends_agree_on(harness: Harness) -> None:
    """offset_at and read_between take any int as a time: before the first record or after the
    last, the answer is the same in both backends (no error for times no clock can give)."""
    backend = timed_stream(harness)
    everything = genesis_records(backend, 1)
    for early in (-1, -(2**63) - 1, -(2**100)):
        assert backend.offset_at(1, early) == 0
        assert backend.read_between(1, None, early) == []
        assert backend.read_between(1, early, None) == everything
    for late in (2**63, 2**64, 2**100):
        assert backend.offset_at(1, late) == len(everything)
        assert backend.read_between(1, late, None) == []
        assert backend.read_between(1, None, late) == everything
        assert backend.read_between(1, None, None, late) == everything  # a max_bytes past any payload


@pytest.mark.parametrize("reading", [2**63, 2**64, -1, True, False, 1.7e18, float(2**62), None, "now"], ids=repr)
def test_a_clock_reading_a_record_cannot_hold_is_invalid_configuration(harness: Harness, reading: object) -> None:
    """Timestamps are nanoseconds in 0..2**63-1 (frames hold a u64, the catalog a signed 64-bit
    integer, so the store takes the smaller range): a clock giving anything else makes an append
    raise InvalidConfiguration in both backends, and nothing is written."""
    clock = ManualClock(START_NS)
    backend = harness.make(clock=clock)
    fill(backend, 1, [[b"a"]])
    clock.now = reading  # type: ignore[assignment]
    writes: list[Callable[[], object]] = [
        lambda: backend.append(1, [b"b"]),
        lambda: backend.append(2, [b"b"]),
        lambda: backend.append_batch(1, [b"b"], 1, backend.latest_chain_hash(1)),
        lambda: backend.create_checkpoint(1, 1, backend.latest_chain_hash(1), 1),
    ]
    for write in writes:
        with pytest.raises(InvalidConfiguration):
            write()
    assert genesis_events(backend, 1) == [b"a"]
    assert backend.next_offset(2) == 0
    assert backend.stream_ids() == [1]
    clock.now = START_NS + 1
    fill(backend, 1, [[b"b"]])
    assert genesis_events(backend, 1) == [b"a", b"b"]


def test_a_clock_reading_gone_bad_at_close_closes_the_backend_and_writes_nothing(harness: Harness) -> None:
    """Closing writes on-close checkpoints with the clock's reading: a reading a record cannot hold
    raises InvalidConfiguration from ``close``, no checkpoint is written, and the backend is closed
    anyway (a second ``close`` does nothing, reads raise StoreClosed), in both backends."""
    clock = ManualClock(START_NS)
    backend = harness.make(clock=clock, policy=CheckpointPolicy.every(100, on_close=True))
    fill(backend, 1, [[b"a"]])
    fill(backend, 2, [[b"b"]])
    clock.now = 1.5  # type: ignore[assignment]
    with pytest.raises(InvalidConfiguration):
        backend.close()
    clock.now = START_NS + 1
    backend.close()
    with pytest.raises(StoreClosed):
        backend.next_offset(1)
    for sid, payload in ((1, b"a"), (2, b"b")):
        assert [(r.kind, r.payload) for r in harness.records_after_close(backend, sid)] == [(RecordKind.EVENT, payload)]


@pytest.mark.parametrize(
    "settings_",
    [{"clock": 5}, {"clock": "now"}, {"policy": 3}, {"policy": "every 10"}, {"compression": "zstd"}],
    ids=repr,
)
def test_a_bad_clock_policy_or_compression_is_invalid_configuration_at_once(
    harness: Harness, settings_: dict[str, object]
) -> None:
    """A clock that is not a function, a checkpoint policy that is not a CheckpointPolicy and a
    compression that is not a CompressionKind are refused when the backend is made, in both."""
    with pytest.raises(InvalidConfiguration):
        harness.make(**settings_)  # type: ignore[arg-type]


def test_the_largest_clock_reading_is_stored(harness: Harness) -> None:
    backend = harness.make(clock=ManualClock(2**63 - 1))
    fill(backend, 1, [[b"a"], [b"b"]])
    assert [r.timestamp_ns for r in genesis_records(backend, 1)] == [2**63 - 1, 2**63 - 1]
    assert backend.offset_at(1, 2**63 - 1) == 0


@settings(max_examples=25)
@given(
    steps=st.lists(
        st.tuples(st.integers(min_value=-3, max_value=3), st.integers(min_value=1, max_value=3)),
        min_size=1,
        max_size=12,
    ),
    probes=st.lists(st.integers(min_value=-2, max_value=25), min_size=1, max_size=6),
)
def test_time_reads_match_a_linear_scan(harness: Harness, steps: list[tuple[int, int]], probes: list[int]) -> None:
    """offset_at and read_between agree with a scan of the records, whatever the clock did."""
    clock = ManualClock(START_NS + 10)
    backend = harness.make(clock=clock, policy=CheckpointPolicy.every(3, on_close=False))
    for i, (step, size) in enumerate(steps):
        clock.now += step  # may step back: clamped per stream
        backend.append(1, [b"%d.%d" % (i, j) for j in range(size)])
    records = genesis_records(backend, 1)
    stamps = [r.timestamp_ns for r in records]
    assert stamps == sorted(stamps)
    for probe in probes:
        t = START_NS + probe
        assert backend.offset_at(1, t) == next((r.offset for r in records if r.timestamp_ns >= t), len(records))
        for other in probes:
            u = START_NS + other
            if t <= u:
                assert backend.read_between(1, t, u, 1 << 20) == [r for r in records if t <= r.timestamp_ns < u]


# --- global order ---------------------------------------------------------------------------------


def test_global_positions_follow_append_order_across_streams(harness: Harness) -> None:
    backend = harness.make(policy=CheckpointPolicy.every(2, on_close=False))
    assert backend.last_global_position() == 0
    assert backend.read_global() == []
    backend.append(3, [b"a"])
    backend.append(1, [b"b", b"c"])  # b, c, checkpoint
    backend.append(3, [b"d"])  # d, checkpoint
    got = [(g.global_position, g.record.stream_id, g.record.offset, g.record.kind) for g in backend.read_global()]
    e, c = RecordKind.EVENT, RecordKind.CHECKPOINT
    assert got == [(1, 3, 0, e), (2, 1, 0, e), (3, 1, 1, e), (4, 1, 2, c), (5, 3, 1, e), (6, 3, 2, c)]
    assert backend.last_global_position() == 6
    by_stream = {sid: genesis_records(backend, sid) for sid in (1, 3)}
    assert all(g.record == by_stream[g.record.stream_id][g.record.offset] for g in backend.read_global())
    assert [g.global_position for g in backend.read_global(0)] == [1, 2, 3, 4, 5, 6]
    assert [g.global_position for g in backend.read_global(5)] == [5, 6]
    assert backend.read_global(7) == []


def test_read_global_max_bytes(harness: Harness) -> None:
    backend = harness.make()
    backend.append(1, [b"a" * 5])
    backend.append(2, [b"b" * 5, b"c" * 20])
    backend.append(1, [b"d" * 5])

    def payloads(start: int, limit: int) -> list[bytes]:
        return [g.record.payload for g in backend.read_global(start, limit)]

    assert payloads(1, 0) == [b"a" * 5]
    assert payloads(1, 10) == [b"a" * 5, b"b" * 5]
    assert payloads(1, 29) == [b"a" * 5, b"b" * 5]
    assert payloads(1, 30) == [b"a" * 5, b"b" * 5, b"c" * 20]
    assert payloads(3, 1) == [b"c" * 20]  # one record even when it alone is too big
    with pytest.raises(InvalidArgument):
        backend.read_global(-1)
    with pytest.raises(InvalidArgument):
        backend.read_global(1, -1)


@settings(max_examples=25)
@given(
    appends=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=3),
            st.lists(st.integers(min_value=0, max_value=30), min_size=1, max_size=4),
        ),
        min_size=1,
        max_size=10,
    ),
    max_bytes=st.integers(min_value=0, max_value=80),
)
def test_paging_through_read_global_gives_every_record_once_in_order(
    harness: Harness, appends: list[tuple[int, list[int]]], max_bytes: int
) -> None:
    backend = harness.make(policy=CheckpointPolicy.every(3, on_close=False))
    expected: list[tuple[int, int]] = []  # (stream, offset) in append order
    for n, (sid, sizes) in enumerate(appends):
        start = backend.next_offset(sid)
        end, _ = backend.append(sid, [bytes([n]) * size for size in sizes])
        expected += [(sid, o) for o in range(start, end)]
    seen: list[GlobalRecord] = []
    position = 1
    while page := backend.read_global(position, max_bytes):
        total = sum(len(g.record.payload) for g in page)
        assert len(page) == 1 or total <= max_bytes
        seen += page
        position = page[-1].global_position + 1
    assert [g.global_position for g in seen] == list(range(1, len(expected) + 1))
    assert [(g.record.stream_id, g.record.offset) for g in seen] == expected
    assert backend.last_global_position() == len(expected)
    # one stream's share of the order, paged the same way
    for sid in {sid for sid, _ in appends}:
        mine: list[GlobalRecord] = []
        position = 1
        while page := backend.read_global(position, max_bytes, stream_id=sid):
            assert len(page) == 1 or sum(len(g.record.payload) for g in page) <= max_bytes
            mine += page
            position = page[-1].global_position + 1
        assert mine == [g for g in seen if g.record.stream_id == sid]
    middle = len(expected) // 2 + 1
    for sid in {sid for sid, _ in appends}:
        assert backend.read_global(middle, 1 << 20, stream_id=sid) == [
            g for g in seen if g.record.stream_id == sid and g.global_position >= middle
        ]
    assert backend.read_global(1, stream_id=99) == []
    with pytest.raises(InvalidArgument):
        backend.read_global(1, stream_id=-1)


# --- both backends side by side ------------------------------------------------------------------


def compressible(i: int) -> bytes:
    """A payload zstd shrinks, so a ZSTD store really stores it compressed."""
    return (f'{{"event": {i}, "body": "' + "abcdefgh" * 40 + '"}').encode()


SCRIPT: list[tuple[str, int, list[bytes]]] = [
    ("append", 1, [compressible(0), b""]),
    ("append", 2, [b"short"]),
    ("append", 1, [compressible(1), compressible(2), compressible(3)]),
    ("checkpoint", 2, []),
    ("append", 1, [b"x" * 3000]),
    ("append", 2, [compressible(4), compressible(5), compressible(6), compressible(7)]),
    ("checkpoint", 1, []),
    ("append", 1, [bytes(range(256))]),
]
"""A mixed workload: batches of several sizes, empty and compressible payloads, checkpoints."""

POLICY = CheckpointPolicy.every(3, on_close=True)


def run_script(backend: StorageBackend, before_each: Callable[[int], None]) -> list[tuple[int, ChainHash]]:
    """Play SCRIPT on ``backend``; ``before_each(step)`` runs first (to set a clock). Returns the results."""
    results: list[tuple[int, ChainHash]] = []
    for step, (op, sid, events) in enumerate(SCRIPT):
        before_each(step)
        offset, head = backend.next_offset(sid), backend.latest_chain_hash(sid)
        if op == "append":
            results.append(backend.append_batch(sid, events, offset, head))
        else:
            results.append(backend.create_checkpoint(sid, offset, head, offset))
    return results


def three_backends(tmp_path: Path, clock: Callable[[], Clock]) -> dict[str, StorageBackend]:
    """Storage without and with compression, and MemoryStorage, each with its own fresh clock."""
    return {
        "storage": Storage(tmp_path / "plain", checkpoint_policy=POLICY, clock=clock()),
        "storage-zstd": Storage(
            tmp_path / "zstd", checkpoint_policy=POLICY, clock=clock(), compression=CompressionKind.ZSTD
        ),
        "memory": MemoryStorage(checkpoint_policy=POLICY, clock=clock()),
    }


def assert_same_everywhere(backends: dict[str, StorageBackend], results: dict[str, object]) -> None:
    """Same append results, same records (hashes included) before and after close, on every backend."""
    reference = results["memory"]
    for name in backends:
        assert results[name] == reference, name
    live = {name: {sid: genesis_records(b, sid) for sid in (1, 2)} for name, b in backends.items()}
    for name in backends:
        assert live[name] == live["memory"], name
    for sid in (1, 2):
        assert_valid_chain(live["memory"][sid], sid)
    for budget in (0, 300, 1 << 20):  # pages bounded by payload bytes (compressed ones are stored smaller)
        pages = {name: b.read_global(2, budget) for name, b in backends.items()}
        for name in backends:
            assert pages[name] == pages["memory"], (name, budget)
    for backend in backends.values():
        backend.close()
    closed = {name: {sid: closed_records(b, sid) for sid in (1, 2)} for name, b in backends.items()}
    for name in backends:
        assert closed[name] == closed["memory"], name
    assert all(closed["memory"][sid][-1].kind is RecordKind.CHECKPOINT for sid in (1, 2))


def test_same_appends_same_records_with_a_set_clock(tmp_path: Path) -> None:
    """With the time set before each append, both backends (and compression) give identical records.

    The ZSTD store's segments really are smaller, so the equality covers compressed records.
    """
    clocks: dict[str, ManualClock] = {}

    def new_clock() -> Clock:
        c = ManualClock()
        clocks[str(len(clocks))] = c
        return c

    backends = three_backends(tmp_path, new_clock)

    def set_time(step: int) -> None:
        for c in clocks.values():
            c.now = START_NS + 1_000 * step - (5_000 if step == 4 else 0)  # step 4 steps back

    results: dict[str, object] = {name: run_script(b, set_time) for name, b in backends.items()}
    plain = backends["storage"]
    zstd = backends["storage-zstd"]
    assert isinstance(plain, Storage)
    assert isinstance(zstd, Storage)
    plain_bytes = sum(p.stat().st_size for p in plain.data_dir.rglob("*.seg"))
    zstd_bytes = sum(p.stat().st_size for p in zstd.data_dir.rglob("*.seg"))
    assert zstd_bytes < plain_bytes
    assert_same_everywhere(backends, results)


def test_same_appends_same_chain_with_a_counting_clock(tmp_path: Path) -> None:
    """The same appends with the same deterministic clock (conftest's make_clock) give the same chain.

    This is MemoryStorage's documented promise ("the same appends with the same clock give the same
    chain on both"), so it must not depend on how many times a backend reads its clock.
    """
    backends = three_backends(tmp_path, make_clock)
    results: dict[str, object] = {name: run_script(b, lambda step: None) for name, b in backends.items()}
    assert_same_everywhere(backends, results)
