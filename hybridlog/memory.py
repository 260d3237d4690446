"""``MemoryStorage``: the same contract as ``Storage``, held in memory.

For tests and for code that wants the API without files. It computes the same record hashes as
``Storage`` (``record.record_hash``) and shares its argument checks, derived reads and checkpoint
policy (``backend.BackendBase``), so the same appends with the same clock give the same chain on
both. What is here are the primitives: records kept in lists.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator

from hybridlog.backend import BackendBase
from hybridlog.batch import BytesLike, PlannedRecord, append_conflict, plan_batch, take_within
from hybridlog.errors import StoreClosed
from hybridlog.record import checkpoint_payload, record_hash
from hybridlog.types import (
    GENESIS_HASH,
    ChainHash,
    CheckpointPolicy,
    CompressionKind,
    GlobalPosition,
    GlobalRecord,
    Offset,
    Record,
    RecordKind,
    StreamId,
)


class MemoryStorage(BackendBase):
    """Hash-chained streams in memory; nothing survives ``close``."""

    def __init__(
        self,
        *,
        checkpoint_policy: CheckpointPolicy | None = None,
        compression: CompressionKind = CompressionKind.NONE,
        clock: Callable[[], int] | None = None,
    ) -> None:
        super().__init__(checkpoint_policy=checkpoint_policy, compression=compression, clock=clock)
        self._streams: dict[StreamId, list[Record]] = {}
        self._since_checkpoint: dict[StreamId, int] = {}
        self._global_order: list[Record] = []  # every record in commit order: position i + 1 is item i

    def _records(self, stream_id: StreamId) -> list[Record]:
        if self._closed:
            raise StoreClosed("memory store is closed")
        return self._streams.get(stream_id, [])

    # --- appending -------------------------------------------------------------------------------

    def _append(
        self,
        sid: StreamId,
        payloads: list[BytesLike] | None,
        *,
        expected_offset: int | None,
        prev_hash: bytes | None,
        check_prev: bool,
        fsync: bool,
        record_count: int | None = None,
    ) -> tuple[Offset, ChainHash]:
        with self._lock:
            records = self._records(sid)
            conflict = append_conflict(
                sid,
                len(records),
                records[-1].hash if records else None,
                expected_offset=expected_offset,
                prev_hash=prev_hash,
                check_prev=check_prev,
                record_count=record_count,
            )
            if conflict is not None:
                raise conflict
            if payloads is None:
                return self._write(sid, [(RecordKind.CHECKPOINT, b"")])
            since = self._since_checkpoint.get(sid, 0)
            return self._write(sid, plan_batch(payloads, self._policy, since, len(records)))

    def _write(self, sid: StreamId, planned: list[PlannedRecord]) -> tuple[Offset, ChainHash]:
        now = self._now()  # before the stream exists: a bad clock changes nothing
        records = self._streams.setdefault(sid, [])
        timestamp = max(now, records[-1].timestamp_ns if records else 0)
        prev = records[-1].hash if records else GENESIS_HASH
        since = self._since_checkpoint.get(sid, 0)
        for kind, payload in planned:
            offset = len(records)
            body = checkpoint_payload(offset) if kind is RecordKind.CHECKPOINT else bytes(payload)
            since = 0 if kind is RecordKind.CHECKPOINT else since + 1
            position = GlobalPosition(len(self._global_order) + 1)
            own = record_hash(sid, offset, kind, timestamp, prev, body, position)
            record = Record(sid, Offset(offset), kind, timestamp, prev, own, body, position)
            records.append(record)
            self._global_order.append(record)
            prev = own
        self._since_checkpoint[sid] = since
        return Offset(len(records)), prev

    # --- reading ---------------------------------------------------------------------------------

    def _iter_records(self, sid: StreamId, from_offset: int, *, anchored: bool) -> Iterator[Record]:
        with self._lock:
            snapshot = self._records(sid)[from_offset:]
        yield from snapshot

    def _offset_at(self, sid: StreamId, timestamp_ns: int) -> Offset:
        with self._lock:
            return Offset(bisect.bisect_left(self._records(sid), timestamp_ns, key=lambda r: r.timestamp_ns))

    def last_global_position(self) -> GlobalPosition:
        """The highest global position given out so far (0 before the first record)."""
        with self._lock:
            if self._closed:
                raise StoreClosed("memory store is closed")
            return GlobalPosition(len(self._global_order))

    def _read_global(self, start: int, limit: int, only: StreamId | None) -> list[GlobalRecord]:
        start = max(start, 1)
        with self._lock:
            if self._closed:
                raise StoreClosed("memory store is closed")
            tail = self._global_order[start - 1 :]
        numbered = (GlobalRecord(GlobalPosition(start + i), r) for i, r in enumerate(tail))
        wanted = (g for g in numbered if only is None or g.record.stream_id == only)
        return take_within(wanted, lambda g: len(g.record.payload), limit)

    def _stream_head(self, sid: StreamId) -> tuple[Offset, ChainHash | None]:
        records = self._records(sid)
        return Offset(len(records)), (records[-1].hash if records else None)

    def _last_checkpoint(self, sid: StreamId) -> tuple[Offset, ChainHash] | None:
        for record in reversed(self._records(sid)):
            if record.kind is RecordKind.CHECKPOINT:
                return record.offset, record.hash
        return None

    def stream_ids(self) -> list[StreamId]:
        """The ids of every stream with records, ascending (StoreClosed once closed)."""
        with self._lock:
            if self._closed:
                raise StoreClosed("memory store is closed")
            return sorted(self._streams)

    # --- closing ---------------------------------------------------------------------------------

    def _due_checkpoints(self) -> list[StreamId]:
        return [sid for sid, since in self._since_checkpoint.items() if since > 0]

    def _release(self) -> None:
        """Nothing to let go of: the records stay for a test to look at (``_streams``)."""

    def _after_close(self) -> None:
        """Nothing waits on a memory store."""
