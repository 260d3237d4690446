"""``StorageBackend``: the contract ``Storage`` and ``MemoryStorage`` both keep."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

from hybridlog.batch import BytesLike
from hybridlog.types import (
    DEFAULT_MAX_READ_BYTES,
    ChainHash,
    CheckpointPolicy,
    CompressionKind,
    GlobalPosition,
    GlobalRecord,
    Offset,
    Record,
    StreamId,
)


@runtime_checkable
class StorageBackend(Protocol):
    """Append-only, hash-chained streams: what every hybridlog backend offers."""

    def default_compression(self) -> CompressionKind: ...

    def checkpoint_policy(self) -> CheckpointPolicy: ...

    def append_batch(
        self,
        stream_id: int,
        events: Sequence[BytesLike],
        expected_offset: int,
        prev_hash: bytes | None,
        fsync: bool = True,
    ) -> tuple[Offset, ChainHash]: ...

    def append(
        self, stream_id: int, events: Sequence[BytesLike], *, expected_offset: int | None = None, fsync: bool = True
    ) -> tuple[Offset, ChainHash]: ...

    def create_checkpoint(
        self, stream_id: int, current_offset: int, prev_hash: bytes | None, record_count: int, fsync: bool = True
    ) -> tuple[Offset, ChainHash]: ...

    def iter_records(self, stream_id: int, from_offset: int = 0, *, anchored: bool = True) -> Iterator[Record]: ...

    def read_from(self, stream_id: int, from_offset: int, max_bytes: int) -> list[bytes]: ...

    def read_from_genesis(self, stream_id: int, from_offset: int, max_bytes: int) -> list[bytes]: ...

    def read_records_from_genesis(self, stream_id: int, from_offset: int, max_bytes: int) -> list[Record]: ...

    def read_records_verified(self, stream_id: int, from_offset: int, max_bytes: int) -> list[Record]: ...

    def offset_at(self, stream_id: int, timestamp_ns: int) -> Offset: ...

    def read_between(
        self,
        stream_id: int,
        since_ns: int | None,
        until_ns: int | None,
        max_bytes: int = DEFAULT_MAX_READ_BYTES,
    ) -> list[Record]: ...

    def last_global_position(self) -> GlobalPosition: ...

    def read_global(
        self, from_position: int = 1, max_bytes: int = DEFAULT_MAX_READ_BYTES, *, stream_id: int | None = None
    ) -> list[GlobalRecord]: ...

    def latest_chain_hash(self, stream_id: int) -> ChainHash | None: ...

    def next_offset(self, stream_id: int) -> Offset: ...

    def last_checkpoint(self, stream_id: int) -> tuple[Offset, ChainHash] | None: ...

    def stream_ids(self) -> list[StreamId]: ...

    def close(self) -> None: ...
