"""Stage 1 of an append: the one home of stream heads and of framing a batch on one.

A batch is framed (hashed, compressed, checksummed: ``frame_batch``) against a ``HeadView``, the
stream's head as the caller last saw it, in the caller's thread and without the store's lock.
``writer.py`` then commits it only if the head is still that view (otherwise the group-commit
leader frames it again). ``StreamHead`` is the writer's state of a stream (its view, and where its
next batch goes), loaded from the catalog by ``load_head`` and advanced after each commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hybridlog.batch import PlannedRecord
from hybridlog.catalog import Catalog
from hybridlog.catalog_rows import damaged_hint
from hybridlog.errors import CatalogMismatch, StorageError, StorageIOError
from hybridlog.layout import segment_path
from hybridlog.record import FrameSpan, PayloadCompressor, append_frames
from hybridlog.segment import SegmentWriter
from hybridlog.types import GENESIS_HASH, ChainHash, RecordKind, StreamId


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


@dataclass(slots=True)
class StreamHead:
    """The writer's view of one stream: where the next batch goes and what it links to."""

    stream_id: StreamId
    view: HeadView  # replaced whole after each commit, so stage 1 can read it without the lock
    segment_no: int
    segment_first_offset: int
    segment_size: int
    writer: SegmentWriter | None
    damage: StorageError | None = None


def load_head(catalog: Catalog, data_dir: Path, stream_id: StreamId, damage: StorageError | None) -> StreamHead:
    """A stream's head as the catalog records it, its active segment open for writing.

    ``damage``: what recovery found in the stream (it then refuses appends, and nothing is opened).
    """
    row = catalog.stream(stream_id)
    segments = catalog.segments(stream_id)
    last_checkpoint = catalog.checkpoint_at_or_before(stream_id, (row.next_offset if row else 0))
    if damage is None and segments and (row is None or row.next_offset != segments[-1].next_offset):
        # appending on top of a head the catalog lost would write offsets that are taken
        damage = CatalogMismatch(
            f"the catalog's streams row ({'missing' if row is None else f'next offset {row.next_offset}'})"
            f" disagrees with its segments row (next offset {segments[-1].next_offset})",
            stream_id=stream_id,
            hint=damaged_hint(data_dir),
        )
    head = StreamHead(
        stream_id=stream_id,
        view=HeadView(
            next_offset=row.next_offset if row else 0,
            head=row.chain_head if row else None,
            events_since_checkpoint=catalog.events_after(stream_id, last_checkpoint.offset if last_checkpoint else -1),
            last_timestamp_ns=(row.last_timestamp_ns or 0) if row else 0,
        ),
        segment_no=segments[-1].segment_no if segments else -1,
        segment_first_offset=segments[-1].first_offset if segments else 0,
        segment_size=segments[-1].size_bytes if segments else 0,
        writer=None,
        damage=damage,
    )
    if segments and damage is None:
        path = segment_path(data_dir, stream_id, head.segment_no)
        try:
            head.writer = SegmentWriter(path, create=False)
        except OSError as e:
            raise StorageIOError(f"stream {stream_id}: cannot open {path}: {e}", path=path) from e
    return head
