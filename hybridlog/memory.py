"""``MemoryStorage``: the same contract as ``Storage``, held in memory.

For tests and for code that wants the API without files. It computes the same record hashes as
``Storage`` (``record.record_hash``) and applies the same checks and checkpoint policy, so the
same appends with the same clock give the same chain on both.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType

from hybridlog.batch import (
    BytesLike,
    PlannedRecord,
    check_clock_reading,
    check_events,
    check_non_negative,
    check_offset,
    check_position,
    check_prev_hash,
    plan_batch,
    read_page,
    read_window,
    take_payloads,
    take_within,
)
from hybridlog.errors import (
    ChainMismatch,
    OffsetMismatch,
    RecordCountMismatch,
    StoreClosed,
)
from hybridlog.record import checkpoint_payload, record_hash
from hybridlog.types import (
    DEFAULT_MAX_READ_BYTES,
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
    check_stream_id,
)


class MemoryStorage:
    """Hash-chained streams in memory; nothing survives ``close``."""

    def __init__(
        self,
        *,
        checkpoint_policy: CheckpointPolicy | None = None,
        compression: CompressionKind = CompressionKind.NONE,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self._policy = CheckpointPolicy() if checkpoint_policy is None else checkpoint_policy
        self._compression = compression
        self._clock = clock or time.time_ns
        self._streams: dict[StreamId, list[Record]] = {}
        self._since_checkpoint: dict[StreamId, int] = {}
        self._global_order: list[Record] = []  # every record in commit order: position i + 1 is item i
        self._lock = threading.RLock()
        self._closed = False

    def default_compression(self) -> CompressionKind:
        return self._compression

    def checkpoint_policy(self) -> CheckpointPolicy:
        return self._policy

    def _records(self, stream_id: StreamId) -> list[Record]:
        if self._closed:
            raise StoreClosed("memory store is closed")
        return self._streams.get(stream_id, [])

    # --- appending -------------------------------------------------------------------------------

    def append_batch(
        self,
        stream_id: int,
        events: Sequence[BytesLike],
        expected_offset: int,
        prev_hash: bytes | None,
        fsync: bool = True,
    ) -> tuple[Offset, ChainHash]:
        sid = check_stream_id(stream_id)
        payloads = check_events(events)
        offset = check_offset("expected_offset", expected_offset)
        given = check_prev_hash(prev_hash)
        with self._lock:
            self._check_head(sid, offset, given)
            return self._write(sid, plan_batch(payloads, self._policy, self._since_checkpoint.get(sid, 0), offset))

    def append(
        self, stream_id: int, events: Sequence[BytesLike], *, expected_offset: int | None = None, fsync: bool = True
    ) -> tuple[Offset, ChainHash]:
        sid = check_stream_id(stream_id)
        with self._lock:
            offset = len(self._records(sid)) if expected_offset is None else expected_offset
            return self.append_batch(sid, events, offset, self.latest_chain_hash(sid), fsync)

    def create_checkpoint(
        self, stream_id: int, current_offset: int, prev_hash: bytes | None, record_count: int, fsync: bool = True
    ) -> tuple[Offset, ChainHash]:
        sid = check_stream_id(stream_id)
        offset = check_offset("current_offset", current_offset)
        given = check_prev_hash(prev_hash)
        count = check_offset("record_count", record_count)
        with self._lock:
            self._check_head(sid, offset, given)
            if count != len(self._records(sid)):
                raise RecordCountMismatch(stream_id=sid, given=count, actual=len(self._records(sid)))
            return self._write(sid, [(RecordKind.CHECKPOINT, b"")])

    def _check_head(self, sid: StreamId, offset: int, given: bytes | None) -> None:
        records = self._records(sid)
        if offset != len(records):
            raise OffsetMismatch(stream_id=sid, expected=offset, actual=len(records))
        head = records[-1].hash if records else None
        if given != head:
            raise ChainMismatch(stream_id=sid, given=given, head=head)

    def _write(self, sid: StreamId, planned: list[PlannedRecord]) -> tuple[Offset, ChainHash]:
        now = check_clock_reading(self._clock())  # before the stream exists: a bad clock changes nothing
        records = self._streams.setdefault(sid, [])
        timestamp = max(now, records[-1].timestamp_ns if records else 0)
        prev = records[-1].hash if records else GENESIS_HASH
        since = self._since_checkpoint.get(sid, 0)
        for kind, payload in planned:
            offset = len(records)
            body = checkpoint_payload(offset) if kind is RecordKind.CHECKPOINT else bytes(payload)
            since = 0 if kind is RecordKind.CHECKPOINT else since + 1
            own = record_hash(sid, offset, kind, timestamp, prev, body)
            record = Record(sid, Offset(offset), kind, timestamp, prev, own, body)
            records.append(record)
            self._global_order.append(record)
            prev = own
        self._since_checkpoint[sid] = since
        return Offset(len(records)), prev

    # --- reading ---------------------------------------------------------------------------------

    def iter_records(self, stream_id: int, from_offset: int = 0, *, anchored: bool = True) -> Iterator[Record]:
        sid = check_stream_id(stream_id)
        check_position("from_offset", from_offset)
        with self._lock:
            snapshot = self._records(sid)[from_offset:]
        yield from snapshot

    def read_from(self, stream_id: int, from_offset: int, max_bytes: int) -> list[bytes]:
        limit = check_non_negative("max_bytes", max_bytes)
        return take_payloads(self.iter_records(stream_id, from_offset), limit)

    def read_from_genesis(self, stream_id: int, from_offset: int, max_bytes: int) -> list[bytes]:
        page = read_page(self, stream_id, from_offset, max_bytes, anchored=False, events_only=True)
        return [r.payload for r in page]

    def read_records_from_genesis(self, stream_id: int, from_offset: int, max_bytes: int) -> list[Record]:
        return read_page(self, stream_id, from_offset, max_bytes, anchored=False, events_only=False)

    def read_records_verified(self, stream_id: int, from_offset: int, max_bytes: int) -> list[Record]:
        return read_page(self, stream_id, from_offset, max_bytes, anchored=True, events_only=False)

    def offset_at(self, stream_id: int, timestamp_ns: int) -> Offset:
        sid = check_stream_id(stream_id)
        ts = check_offset("timestamp_ns", timestamp_ns)
        with self._lock:
            return Offset(bisect.bisect_left(self._records(sid), ts, key=lambda r: r.timestamp_ns))

    def read_between(
        self,
        stream_id: int,
        since_ns: int | None,
        until_ns: int | None,
        max_bytes: int = DEFAULT_MAX_READ_BYTES,
    ) -> list[Record]:
        return read_window(self, check_stream_id(stream_id), since_ns, until_ns, max_bytes)

    def last_global_position(self) -> GlobalPosition:
        with self._lock:
            if self._closed:
                raise StoreClosed("memory store is closed")
            return GlobalPosition(len(self._global_order))

    def read_global(
        self, from_position: int = 1, max_bytes: int = DEFAULT_MAX_READ_BYTES, *, stream_id: int | None = None
    ) -> list[GlobalRecord]:
        start = max(check_position("from_position", from_position), 1)
        limit = check_non_negative("max_bytes", max_bytes)
        only = None if stream_id is None else check_stream_id(stream_id)
        with self._lock:
            if self._closed:
                raise StoreClosed("memory store is closed")
            tail = self._global_order[start - 1 :]
        numbered = (GlobalRecord(GlobalPosition(start + i), r) for i, r in enumerate(tail))
        wanted = (g for g in numbered if only is None or g.record.stream_id == only)
        return take_within(wanted, lambda g: len(g.record.payload), limit)

    def latest_chain_hash(self, stream_id: int) -> ChainHash | None:
        records = self._records(check_stream_id(stream_id))
        return records[-1].hash if records else None

    def next_offset(self, stream_id: int) -> Offset:
        return Offset(len(self._records(check_stream_id(stream_id))))

    def last_checkpoint(self, stream_id: int) -> tuple[Offset, ChainHash] | None:
        for record in reversed(self._records(check_stream_id(stream_id))):
            if record.kind is RecordKind.CHECKPOINT:
                return record.offset, record.hash
        return None

    def stream_ids(self) -> list[StreamId]:
        return sorted(self._streams)

    # --- closing ---------------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            if self._policy.on_close:
                for sid, since in self._since_checkpoint.items():
                    if since > 0:
                        self._write(sid, [(RecordKind.CHECKPOINT, b"")])
            self._closed = True

    def __enter__(self) -> MemoryStorage:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
