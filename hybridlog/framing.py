"""Stage 1 of an append: the one home of stream heads, of framing a batch on one, and of laying
framed batches out in segment files.

A batch is framed (hashed, compressed, checksummed: ``frame_batch``) against a ``HeadView``, the
stream's head, by the group-commit leader once the batch is accepted into a group: its records'
global positions are then known, and they are hashed into every record. ``StreamHead`` is the
writer's state of a stream (its view, and where its next batch goes), loaded from the catalog by
``load_head`` and advanced after each commit.
``lay_out`` plans where a group's framed batches go (``SegmentWrite``s, and the segments they
fill up and seal), before ``writer.py`` creates, writes, syncs and commits them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hybridlog.batch import PlannedRecord
from hybridlog.catalog import Catalog
from hybridlog.catalog_rows import BatchRow, CheckpointRow, damaged_hint, pack_frame_ends
from hybridlog.errors import CatalogMismatch, StorageError, StorageIOError
from hybridlog.layout import segment_path
from hybridlog.merkle import leaf_hash
from hybridlog.native import speedups
from hybridlog.record import HASH_FIELD, FramedRecords, PayloadCompressor, append_frames
from hybridlog.segment import SegmentWriter
from hybridlog.tree_head import leaf_entry
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
    first_global_position: int
    timestamp_ns: int
    data: bytes
    framed: FramedRecords  # where each frame ends in ``data``; the records that are not events
    events: int
    payload_bytes: int
    after: HeadView  # the head once this batch is committed


def frame_batch(
    stream_id: StreamId,
    planned: list[PlannedRecord],
    on: HeadView,
    first_global_position: int,
    now_ns: int,
    buffer: bytearray,
    compressor: PayloadCompressor | None,
    payload_bytes: int,
) -> FramedBatch:
    """Frame ``planned`` records as the next batch after ``on``, its records at global positions
    from ``first_global_position`` on (stage 1; no I/O). ``payload_bytes``: the events' bytes."""
    timestamp = max(now_ns, on.last_timestamp_ns)  # never backwards within a stream
    buffer.clear()
    framed = append_frames(
        buffer,
        planned,
        stream_id=stream_id,
        first_offset=on.next_offset,
        first_global_position=first_global_position,
        timestamp_ns=timestamp,
        prev_hash=on.head or GENESIS_HASH,
        batch_end=True,
        compressor=compressor,
    )
    specials = framed.specials
    events = len(planned) - len(specials)
    checkpoints = [i for i, kind, _ in specials if kind == RecordKind.CHECKPOINT]
    since = len(planned) - 1 - checkpoints[-1] if checkpoints else on.events_since_checkpoint + events
    after = HeadView(on.next_offset + len(planned), framed.last_hash, since, timestamp)
    return FramedBatch(
        stream_id, on, first_global_position, timestamp, bytes(buffer), framed, events, payload_bytes, after
    )


KIND_BYTE = 5  # where a frame keeps its record's kind (docs/format.md section 2)
_tree_leaves = speedups.tree_leaves if speedups is not None else None


def leaf_hashes(batch: FramedBatch) -> list[bytes]:
    """The Merkle tree leaf hash of each record of a framed batch, in order (``tree_head.py``: the
    leaf entry binds kind, stream, offset, timestamp and record hash), read from its frames."""
    if _tree_leaves is not None:  # the compiled twin of the loop below (native.py)
        leaves: list[bytes] = _tree_leaves(
            batch.data, batch.framed.ends, batch.stream_id, batch.on.next_offset, batch.timestamp_ns
        )
        return leaves
    data, start, offset, hashes = batch.data, 0, batch.on.next_offset, []
    for end in batch.framed.ends:
        record_hash = data[start + HASH_FIELD : start + HASH_FIELD + 32]
        hashes.append(
            leaf_hash(leaf_entry(data[start + KIND_BYTE], batch.stream_id, offset, batch.timestamp_ns, record_hash))
        )
        start, offset = end, offset + 1
    return hashes


def extend_tree(catalog: Catalog, batches: dict[StreamId, list[FramedBatch]]) -> None:
    """Append a group's records to the store's Merkle tree in the group's catalog transaction, when
    they follow on from the tree's last leaf and the tree is up to date. Otherwise (positions an
    unsettled group left behind, a stale tree) the tree waits for ``tree.catch_up`` to compute it
    from the segments once recovery has settled every position below."""
    state = catalog.tree_state()
    ordered = sorted((b for group in batches.values() for b in group), key=lambda b: b.first_global_position)
    if state.stale_from is not None or not ordered or ordered[0].first_global_position != state.size + 1:
        return
    hashes: list[bytes] = []
    for batch in ordered:
        if batch.first_global_position != state.size + 1 + len(hashes):
            break
        hashes += leaf_hashes(batch)
    catalog.append_leaves(state, hashes)


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


def lay_out(
    heads: dict[StreamId, StreamHead],
    batches: dict[StreamId, list[FramedBatch]],
    max_segment_size: int,
) -> tuple[list[SegmentWrite], list[tuple[StreamId, int, SegmentWrite | None]]]:
    """Which segment each batch goes to: a batch never spans two, and a full segment is sealed.

    Returns the writes and the seals; a seal's SegmentWrite is the in-group write of a segment
    created and filled in this same group (None: the stream's active segment on disk).
    """
    writes: list[SegmentWrite] = []
    seals: list[tuple[StreamId, int, SegmentWrite | None]] = []
    for sid, framed in batches.items():
        head = heads[sid]
        segment_no, size, current = head.segment_no, head.segment_size, None
        has_segment = head.writer is not None
        for batch in framed:
            if not has_segment or (size > 0 and size + len(batch.data) > max_segment_size):
                if has_segment:
                    seals.append((sid, segment_no, current))
                segment_no, size, has_segment = segment_no + 1, 0, True
                current = SegmentWrite(sid, segment_no, 0, batch.on.next_offset, new_file=True)
                writes.append(current)
            elif current is None:
                current = SegmentWrite(sid, segment_no, size, head.segment_first_offset, new_file=False)
                writes.append(current)
            current.add(batch)
            size += len(batch.data)
    return writes, seals


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
    rows: list[BatchRow] = field(default_factory=list)
    checkpoints: list[CheckpointRow] = field(default_factory=list)
    next_offset: int = 0

    def add(self, batch: FramedBatch) -> None:
        """Lay ``batch`` after what this write holds, with its ``batches`` row and checkpoint rows."""
        position = self.base + len(self.data)
        self.data += batch.data
        sid, ts, first = self.stream_id, batch.timestamp_ns, batch.on.next_offset
        ends, specials = batch.framed.ends, batch.framed.specials
        kinds = None
        if specials:
            marks = bytearray(len(ends))
            for i, kind, digest in specials:
                marks[i] = kind
                if kind == RecordKind.CHECKPOINT:
                    self.checkpoints.append(CheckpointRow(sid, Offset(first + i), digest, ts))
            kinds = bytes(marks)
        self.rows.append(
            (
                batch.first_global_position,
                sid,
                first,
                len(ends),
                self.segment_no,
                position,
                pack_frame_ends(ends),
                kinds,
                ts,
            )
        )
        self.next_offset = batch.after.next_offset

    @property
    def end(self) -> int:
        """The byte position in the segment just after this write."""
        return self.base + len(self.data)
