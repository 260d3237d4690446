"""The write half of the backend contract: appends, refusals, stream ids, checkpoints and policies.

Part of ``BackendContract`` (``hybridlog.testing.contract``), which is what a backend subclasses.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridlog import (
    GENESIS_HASH,
    ChainMismatch,
    CheckpointPolicy,
    CompressionKind,
    ConflictError,
    EmptyBatch,
    InvalidEvent,
    InvalidStreamId,
    OffsetMismatch,
    RecordCountMismatch,
    RecordKind,
    StorageBackend,
    StorageError,
)
from hybridlog.record import checkpoint_payload
from hybridlog.testing.backends import (
    Harness,
    assert_valid_chain,
    expected_kinds,
    fill,
    observe,
)
from hybridlog.testing.damage import genesis_events, genesis_records

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


class WriteContract:
    """Appends extend the chain; refused writes change nothing; checkpoints follow the policy."""

    def test_backend_satisfies_the_protocol_and_reports_its_settings(self, harness: Harness) -> None:
        """Both backends are StorageBackends and report the policy and compression they were given."""
        policy = CheckpointPolicy.every(7, on_close=False)
        backend = harness.make(policy=policy, compression=CompressionKind.ZSTD)
        assert isinstance(backend, StorageBackend)
        assert backend.checkpoint_policy() == policy
        assert backend.default_compression() is CompressionKind.ZSTD

    def test_first_append_to_an_empty_stream(self, harness: Harness) -> None:
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

    def test_appends_extend_the_chain(self, harness: Harness) -> None:
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
    def test_offset_mismatch_is_refused_and_changes_nothing(self, harness: Harness, wrong_offset: int) -> None:
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

    def test_offset_mismatch_on_an_empty_stream(self, harness: Harness) -> None:
        """An empty stream's only acceptable offset is 0."""
        backend = harness.make()
        with pytest.raises(OffsetMismatch):
            backend.append_batch(1, [b"a"], 1, None)
        assert backend.next_offset(1) == 0
        assert genesis_records(backend, 1) == []

    @pytest.mark.parametrize("case", ["none-on-non-empty", "random-hash", "first-record-hash", "zero-hash"])
    def test_chain_mismatch_is_refused_and_changes_nothing(self, harness: Harness, case: str) -> None:
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

    def test_a_hash_on_an_empty_stream_is_a_chain_mismatch(self, harness: Harness) -> None:
        """An empty stream has no head: only prev_hash None fits it (the genesis hash does not)."""
        backend = harness.make()
        for wrong in (GENESIS_HASH, bytes(range(32))):
            with pytest.raises(ChainMismatch):
                backend.append_batch(1, [b"a"], 0, wrong)
        assert genesis_records(backend, 1) == []

    @pytest.mark.parametrize("events", [[], ()], ids=["list", "tuple"])
    def test_empty_batch_is_a_value_error(self, harness: Harness, events: Sequence[bytes]) -> None:
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
    def test_non_bytes_event_is_a_type_error(self, harness: Harness, events: object) -> None:
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

    def test_bytes_like_events_are_accepted(self, harness: Harness) -> None:
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

    @pytest.mark.parametrize("stream_id", BAD_STREAM_IDS, ids=repr)
    def test_invalid_stream_ids_are_refused_before_anything_is_touched(
        self, harness: Harness, stream_id: object
    ) -> None:
        """Stream ids are ints in 0..2**63-1, not bools: anything else raises InvalidStreamId at once.

        For Storage, the store directory is not even created.
        """
        backend = harness.make()
        for call in every_call_with(backend, stream_id):
            with pytest.raises(InvalidStreamId):
                call()
        harness.assert_untouched(backend)

    def test_invalid_stream_id_is_a_storage_error_and_a_builtin(self, harness: Harness) -> None:
        """Callers may catch a bad stream id as StorageError, ValueError or TypeError."""
        backend = harness.make()
        with pytest.raises(InvalidStreamId) as info:
            backend.append_batch(-1, [b"a"], 0, None)
        assert isinstance(info.value, StorageError)
        assert isinstance(info.value, ValueError)
        assert isinstance(info.value, TypeError)

    @pytest.mark.parametrize("stream_id", [0, 2**63 - 1])
    def test_stream_ids_at_the_limits_are_accepted(self, harness: Harness, stream_id: int) -> None:
        """0 and 2**63-1 are valid stream ids and round-trip."""
        backend = harness.make()
        backend.append_batch(stream_id, [b"edge"], 0, None)
        assert genesis_events(backend, stream_id) == [b"edge"]
        assert backend.stream_ids() == [stream_id]
        assert_valid_chain(genesis_records(backend, stream_id), stream_id)

    def test_append_fills_in_the_head(self, harness: Harness) -> None:
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

    def test_create_checkpoint_writes_a_checkpoint_record(self, harness: Harness) -> None:
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

    def test_create_checkpoint_on_an_empty_stream(self, harness: Harness) -> None:
        """An empty stream can be checkpointed: offset 0, prev_hash None, record_count 0."""
        backend = harness.make()
        next_offset, checkpoint_hash = backend.create_checkpoint(1, 0, None, 0)
        assert next_offset == 1
        assert backend.last_checkpoint(1) == (0, checkpoint_hash)
        assert genesis_events(backend, 1) == []
        assert_valid_chain(genesis_records(backend, 1), 1)

    @pytest.mark.parametrize("wrong", ["offset", "prev_hash", "none_prev_hash", "record_count"])
    def test_create_checkpoint_checks_its_arguments(self, harness: Harness, wrong: str) -> None:
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

    def test_last_checkpoint(self, harness: Harness) -> None:
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
    def test_every_n_policy_places_checkpoints(self, harness: Harness, every: int, batch_sizes: list[int]) -> None:
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

    def test_explicit_checkpoints_restart_the_policy_count(self, harness: Harness) -> None:
        """The every-N count runs from the last checkpoint, whichever way it was written."""
        backend = harness.make(policy=CheckpointPolicy.every(3, on_close=False))
        offset, head = fill(backend, 1, [[b"a", b"b"]])
        offset, head = backend.create_checkpoint(1, offset, head, offset)
        fill(backend, 1, [[b"c", b"d"], [b"e"]])
        kinds = [r.kind for r in genesis_records(backend, 1)]
        e, c = RecordKind.EVENT, RecordKind.CHECKPOINT
        assert kinds == [e, e, c, e, e, e, c]

    @pytest.mark.parametrize("on_close", [True, False])
    def test_on_close_policy(self, harness: Harness, on_close: bool) -> None:
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

    def test_every_n_policy_with_on_close_adds_only_what_is_missing(self, harness: Harness) -> None:
        """A stream the every-N policy left on a checkpoint gets no extra one on close."""
        backend = harness.make(policy=CheckpointPolicy.every(2, on_close=True))
        fill(backend, 1, [[b"a", b"b"]])  # ends on a policy checkpoint
        fill(backend, 2, [[b"a", b"b", b"c"]])  # one event after it
        backend.close()
        e, c = RecordKind.EVENT, RecordKind.CHECKPOINT
        assert [r.kind for r in harness.records_after_close(backend, 1)] == [e, e, c]
        assert [r.kind for r in harness.records_after_close(backend, 2)] == [e, e, c, e, c]
