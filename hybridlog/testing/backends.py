"""Backend harnesses for the contract suite: the one home of making, closing and looking inside backends.

A ``Harness`` makes fresh backends of one kind with a chosen clock, checkpoint policy and
compression, and closes them after the test. It also gives the contract a raw backdoor: what a
closed backend holds, read without going through the backend under test (``records_after_close``),
and a check that a refused call created nothing (``assert_untouched``). ``StorageHarness`` and
``MemoryHarness`` are the two shipped backends'; a new backend (or a user's wrapper of one)
subclasses ``Harness``. The helpers below the harnesses are shared by the contract's test classes.

Needs pytest and Hypothesis (install the ``testing`` extra: ``pip install hybridlog[testing]``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hybridlog import (
    GENESIS_HASH,
    ChainHash,
    CheckpointPolicy,
    CompressionKind,
    MemoryStorage,
    Record,
    RecordKind,
    Storage,
    StorageBackend,
    StreamId,
)
from hybridlog.record import record_hash
from hybridlog.testing.clocks import Clock, make_clock
from hybridlog.testing.damage import genesis_records


@dataclass
class Harness(ABC):
    """Makes fresh backends of one kind and closes them; subclass it for a new backend."""

    opened: list[StorageBackend] = field(default_factory=list)

    @abstractmethod
    def new_backend(self, *, policy: CheckpointPolicy, clock: Clock, compression: CompressionKind) -> StorageBackend:
        """A new, empty backend with these settings."""

    @abstractmethod
    def records_after_close(self, backend: StorageBackend, stream_id: int) -> list[Record]:
        """What ``backend`` holds for a stream once closed (on-close checkpoints included)."""

    @abstractmethod
    def assert_untouched(self, backend: StorageBackend) -> None:
        """Nothing was created by the calls made so far (no files, no streams)."""

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
        backend = self.new_backend(policy=policy, clock=clock, compression=compression)
        self.opened.append(backend)
        return backend

    def close_all(self) -> None:
        """Close every backend this harness made."""
        for backend in self.opened:
            backend.close()


@dataclass(kw_only=True)
class StorageHarness(Harness):
    """``Storage`` backends, each in its own directory under ``root``."""

    root: Path

    def new_backend(self, *, policy: CheckpointPolicy, clock: Clock, compression: CompressionKind) -> StorageBackend:
        """A ``Storage`` in a new directory ``store<n>`` under ``root``."""
        path = self.root / f"store{len(self.opened)}"
        return Storage(path, checkpoint_policy=policy, clock=clock, compression=compression)

    def records_after_close(self, backend: StorageBackend, stream_id: int) -> list[Record]:
        """The stream's records as a fresh read-only ``Storage`` over the directory reads them."""
        return closed_records(backend, stream_id)

    def assert_untouched(self, backend: StorageBackend) -> None:
        """The store's directory was never created and the backend has no streams."""
        assert isinstance(backend, Storage)
        assert not backend.data_dir.exists()
        assert backend.stream_ids() == []


@dataclass
class MemoryHarness(Harness):
    """``MemoryStorage`` backends."""

    def new_backend(self, *, policy: CheckpointPolicy, clock: Clock, compression: CompressionKind) -> StorageBackend:
        """A new ``MemoryStorage``."""
        return MemoryStorage(checkpoint_policy=policy, clock=clock, compression=compression)

    def records_after_close(self, backend: StorageBackend, stream_id: int) -> list[Record]:
        """The stream's records from the closed backend's lists."""
        return closed_records(backend, stream_id)

    def assert_untouched(self, backend: StorageBackend) -> None:
        """The backend has no streams."""
        assert backend.stream_ids() == []


def closed_records(backend: StorageBackend, stream_id: int) -> list[Record]:
    """A closed backend's records for a stream: Storage reopened read-only, MemoryStorage's lists."""
    if isinstance(backend, Storage):
        with Storage(backend.data_dir, read_only=True) as reader:
            return genesis_records(reader, stream_id)
    assert isinstance(backend, MemoryStorage)
    # MemoryStorage refuses reads once closed, so look at its record lists directly.
    return list(backend._streams.get(StreamId(stream_id), []))


@dataclass(frozen=True)
class StreamState:
    """Everything a caller can observe about one stream through the contract."""

    next_offset: int
    head: ChainHash | None
    records: list[Record]
    last_checkpoint: tuple[int, ChainHash] | None


def observe(backend: StorageBackend, stream_id: int) -> StreamState:
    """Everything the contract compares about one stream: next offset, head, records, last checkpoint."""
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
            stream_id,
            record.offset,
            record.kind,
            record.timestamp_ns,
            record.prev_hash,
            record.payload,
            record.global_position,
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
