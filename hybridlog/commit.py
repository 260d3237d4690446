"""Group commit: many appending threads share one segment write, fsync and catalog commit.

An append happens in two stages. Stage 1, in the caller's thread and outside the store's lock,
frames the batch (hash, compress, checksum: ``frame_batch``) against the stream head the caller
expects. Stage 2 writes, fsyncs and commits. Stage 2 is run by one thread at a time, the
*leader*, for every request queued when it starts (``GroupCommitQueue``): callers that arrive
while a leader is busy (typically waiting for fsync, which releases the GIL) queue up, and the next
leader commits all of them together. Each caller returns only when its own batch is committed
(and durable, when it asked for fsync), and gets only its own error.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from hybridlog.batch import BytesLike, PlannedRecord
from hybridlog.catalog_rows import CheckpointRow, IndexRow
from hybridlog.record import FrameSpan, PayloadCompressor, append_frames
from hybridlog.segment import SegmentWriter
from hybridlog.types import GENESIS_HASH, ChainHash, Offset, RecordKind, StreamId


@dataclass(frozen=True, slots=True)
class HeadView:
    """What a batch is framed against: the stream head as it was (or is expected to be)."""

    next_offset: int
    head: ChainHash | None
    events_since_checkpoint: int
    last_timestamp_ns: int


@dataclass(frozen=True, slots=True)
class FramedBatch:
    """Stage 1's output: a batch's bytes and its records, valid only on top of ``on``."""

    stream_id: StreamId
    on: HeadView
    timestamp_ns: int
    data: bytes
    records: list[FrameSpan]
    events: int
    payload_bytes: int
    after: HeadView  # the head once this batch is committed


def frame_batch(
    stream_id: StreamId,
    planned: list[PlannedRecord],
    on: HeadView,
    now_ns: int,
    buffer: bytearray,
    compressor: PayloadCompressor | None,
) -> FramedBatch:
    """Frame ``planned`` records as the next batch after ``on`` (stage 1; no I/O)."""
    timestamp = max(now_ns, on.last_timestamp_ns)  # never backwards within a stream
    buffer.clear()
    records = append_frames(
        buffer,
        planned,
        stream_id=stream_id,
        first_offset=on.next_offset,
        timestamp_ns=timestamp,
        prev_hash=on.head or GENESIS_HASH,
        batch_end=True,
        compressor=compressor,
    )
    kinds = [kind for kind, _ in planned]
    checkpoints = kinds.count(RecordKind.CHECKPOINT)
    events = len(planned) - checkpoints
    if checkpoints:
        payload_bytes = sum(len(payload) for kind, payload in planned if kind is RecordKind.EVENT)
        since = kinds[::-1].index(RecordKind.CHECKPOINT)  # events after the last checkpoint
    else:
        payload_bytes = sum(len(payload) for _, payload in planned)
        since = on.events_since_checkpoint + events
    after = HeadView(on.next_offset + len(records), records[-1][4], since, timestamp)
    return FramedBatch(stream_id, on, timestamp, bytes(buffer), records, events, payload_bytes, after)


@dataclass(eq=False, slots=True)
class AppendRequest:
    """One caller's batch waiting for stage 2, and, once done, its outcome.

    ``payloads`` None means a checkpoint record. ``expected_offset`` None means no offset check
    (``Storage.append``); ``check_prev`` False means no chain-head check.
    """

    stream_id: StreamId
    payloads: list[BytesLike] | None
    expected_offset: int | None
    prev_hash: bytes | None
    check_prev: bool
    fsync: bool
    record_count: int | None = None  # create_checkpoint's check
    framed: FramedBatch | None = None
    result: tuple[Offset, ChainHash] | None = None
    error: BaseException | None = None
    done: bool = False


@dataclass(slots=True)
class SegmentWrite:
    """Bytes for one segment file in one group: where they go and the catalog rows they need."""

    stream_id: StreamId
    segment_no: int
    base: int  # byte position of the first batch in the file
    first_offset: int  # the segment's first offset
    new_file: bool
    data: bytearray = field(default_factory=bytearray)
    writer: SegmentWriter | None = None
    rows: list[IndexRow] = field(default_factory=list)
    checkpoints: list[CheckpointRow] = field(default_factory=list)
    next_offset: int = 0

    def add(self, batch: FramedBatch, first_global_position: int) -> None:
        """Lay ``batch`` after what this write holds; its records get consecutive global positions."""
        position = self.base + len(self.data)
        self.data += batch.data
        sid, no, ts = self.stream_id, self.segment_no, batch.timestamp_ns
        self.rows.extend(
            (first_global_position + i, sid, offset, no, position + start, length, kind, ts)
            for i, (offset, start, length, kind, _) in enumerate(batch.records)
        )
        for offset, _, _, kind, digest in batch.records:
            if kind == RecordKind.CHECKPOINT:
                self.checkpoints.append(CheckpointRow(sid, Offset(offset), digest, ts))
        self.next_offset = batch.after.next_offset

    @property
    def end(self) -> int:
        return self.base + len(self.data)


class GroupCommitQueue:
    """Leader/follower hand-off: whoever finds no leader commits everything queued so far."""

    def __init__(self) -> None:
        self._cv = threading.Condition(threading.Lock())
        self._queue: list[AppendRequest] = []
        self._leader = False

    def submit(self, request: AppendRequest, commit_group: Callable[[list[AppendRequest]], None]) -> None:
        """Queue ``request`` and return once it is done (by this thread or another leader)."""
        with self._cv:
            self._queue.append(request)
            while not request.done and self._leader:
                self._cv.wait()
            if request.done:
                return
            self._leader = True
            group, self._queue = self._queue, []
        try:
            commit_group(group)
        finally:
            with self._cv:
                for r in group:
                    if not r.done:  # commit_group failed before deciding this one
                        r.error = r.error or RuntimeError("group commit did not complete")
                        r.done = True
                self._leader = False
                self._cv.notify_all()
