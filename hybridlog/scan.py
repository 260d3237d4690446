"""Verifying walks over segment files: the one reader that recovery, rebuild and repair share.

``SegmentScan`` walks a segment's frames from a byte position and verifies every one (checksum,
identity, hash, chain link), handing back complete batches (a batch ends at a frame with the
batch-end flag). When it stops early it says where and why (``ScanProblem``), and
``is_torn_tail`` tells an interrupted write from damage.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hybridlog.catalog import CheckpointRow, IndexEntry
from hybridlog.chain import FastWalk, open_record
from hybridlog.dictionary import DictionaryCache
from hybridlog.errors import DictionaryUnusable, IntegrityError
from hybridlog.record import MAGIC, DictionarySource, FrameError
from hybridlog.segment import SegmentReader, segment_numbers_on_disk, segment_path, stream_path
from hybridlog.types import GENESIS_HASH, ChainHash, RecordKind, StreamId


@dataclass(frozen=True, slots=True)
class ScannedRecord:
    entry: IndexEntry
    hash: ChainHash
    payload_len: int


@dataclass(slots=True)
class ScanProblem:
    """Why a scan stopped before the end of a file: where, why, and whether the file just ends."""

    position: int
    reason: str
    unterminated: bool
    """True when every frame read fine but the last batch had no end marker: a write cut short."""
    offset: int
    """The offset of the record at ``position``: the bad record, or the first of the unterminated batch."""
    dictionary: DictionaryUnusable | None = None
    """Set when the record is whole but the stream dictionary it needs is missing or damaged."""


class SegmentScan:
    """Verifying walk over one segment from ``position``, yielding complete batches.

    After the walk: ``valid_end`` is the byte position after the last complete batch,
    ``next_offset`` / ``prev_hash`` continue the chain from there, and ``problem`` says why the
    walk stopped early (None when every byte up to the end of the file was a complete batch).
    """

    def __init__(
        self,
        data_dir: Path,
        stream_id: StreamId,
        segment_no: int,
        *,
        position: int,
        next_offset: int,
        prev_hash: ChainHash,
        dictionaries: DictionarySource | None = None,
    ) -> None:
        self.path = segment_path(data_dir, stream_id, segment_no)
        self.dictionaries = dictionaries or DictionaryCache(data_dir)
        self.stream_id = stream_id
        self.segment_no = segment_no
        self.valid_end = position
        self.next_offset = next_offset
        self.prev_hash = prev_hash
        self.problem: ScanProblem | None = None

    def batches(self) -> Iterator[list[ScannedRecord]]:
        pending: list[ScannedRecord] = []
        offset, prev = self.next_offset, self.prev_hash
        with SegmentReader(self.path, self.valid_end) as reader:
            # Fast over everything that verifies; exact frame-by-frame from where it stops.
            fast = FastWalk(
                reader, self.stream_id, offset, prev, self.path.stat().st_size, dictionaries=self.dictionaries
            )
            for record, position, size, batch_end in fast.frames():
                entry = IndexEntry(record.offset, self.segment_no, position, size, record.kind, record.timestamp_ns)
                pending.append(ScannedRecord(entry, record.hash, len(record.payload)))
                if batch_end:
                    yield pending
                    self.valid_end = position + size
                    self.next_offset, self.prev_hash = record.offset + 1, record.hash
                    pending = []
            offset = fast.expected
            prev = ChainHash(fast.prev) if fast.prev is not None else prev
            reader.seek(fast.position)
            while True:
                try:
                    frame = reader.read_frame()
                except FrameError as e:  # IncompleteFrame too: the reader stays at the bad frame
                    self.problem = ScanProblem(reader.position, e.reason, unterminated=False, offset=offset)
                    return
                if frame is None:
                    break
                try:
                    record = open_record(
                        frame,
                        stream_id=self.stream_id,
                        expected_offset=offset,
                        prev_hash=prev,
                        segment=self.path,
                        dictionaries=self.dictionaries,
                    )
                except IntegrityError as e:
                    # The frame was read whole, so the reader is already past it: name the frame's start.
                    self.problem = ScanProblem(frame.position, e.reason, unterminated=False, offset=offset)
                    if isinstance(e, DictionaryUnusable):
                        self.problem.dictionary = e
                    return
                entry = IndexEntry(
                    record.offset,
                    self.segment_no,
                    frame.position,
                    frame.header.frame_size,
                    record.kind,
                    record.timestamp_ns,
                )
                pending.append(ScannedRecord(entry, record.hash, len(record.payload)))
                offset, prev = offset + 1, record.hash
                if frame.header.batch_end:
                    yield pending
                    self.valid_end = reader.position
                    self.next_offset, self.prev_hash = offset, prev
                    pending = []
        if pending:
            self.problem = ScanProblem(
                pending[0].entry.position,
                "last batch has no end marker",
                unterminated=True,
                offset=pending[0].entry.offset,
            )


@dataclass(slots=True)
class Adoption:
    """Catalog rows for batches found in a segment, ready to be committed in one transaction."""

    entries: list[IndexEntry] = field(default_factory=list)
    checkpoints: list[CheckpointRow] = field(default_factory=list)
    events: int = 0
    payload_bytes: int = 0
    stored_bytes: int = 0
    first_timestamp_ns: int | None = None
    last_timestamp_ns: int | None = None

    def add(self, stream_id: StreamId, batch: list[ScannedRecord]) -> None:
        for rec in batch:
            self.entries.append(rec.entry)
            self.stored_bytes += rec.entry.length
            if rec.entry.kind == RecordKind.CHECKPOINT:
                self.checkpoints.append(CheckpointRow(stream_id, rec.entry.offset, rec.hash, rec.entry.timestamp_ns))
            else:
                self.events += 1
                self.payload_bytes += rec.payload_len
            if self.first_timestamp_ns is None:
                self.first_timestamp_ns = rec.entry.timestamp_ns
            self.last_timestamp_ns = rec.entry.timestamp_ns


def is_torn_tail(path: Path, problem: ScanProblem) -> bool:
    """Whether a scan problem looks like an interrupted write rather than damage.

    True when every frame to the end of the file was whole but the last batch has no end marker,
    or when no valid record frame starts anywhere after the problem (a frame cut short, zeros or
    garbage to the end). A valid frame after it means bytes in the middle were damaged (a flipped
    length field can make a good record look cut short), and cutting there would throw away good
    records. A whole record whose stream dictionary is missing or damaged is never a torn write.
    """
    if problem.dictionary is not None:
        return False
    if problem.unterminated:
        return True
    with path.open("rb") as f:
        f.seek(problem.position)
        data = f.read()
    start = 1
    while (found := data.find(MAGIC, start)) != -1:
        with SegmentReader(path, problem.position + found) as reader:
            try:
                if reader.read_frame() is not None:
                    return False
            except FrameError:
                pass
        start = found + 1
    return True


@dataclass(slots=True)
class StreamScan:
    """What a verifying walk over all of a stream's segment files found.

    ``next_offset`` / ``head`` describe the valid prefix (complete, verified batches). When the walk
    stopped early, ``problem`` says why and ``problem_segment`` where; ``missing_segment`` is set
    when a segment number is absent from the sequence; ``torn`` is True when the problem is an
    interrupted write at the very end of the stream rather than damage.
    """

    stream_id: StreamId
    segments: list[int] = field(default_factory=list)
    valid_ends: dict[int, int] = field(default_factory=dict)
    first_offsets: dict[int, int] = field(default_factory=dict)
    next_offsets: dict[int, int] = field(default_factory=dict)
    next_offset: int = 0
    head: ChainHash = GENESIS_HASH
    problem: ScanProblem | None = None
    problem_segment: int | None = None
    missing_segment: int | None = None
    torn: bool = False
    foreign_files: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return self.problem is None and self.missing_segment is None


def walk_stream(
    data_dir: Path,
    stream_id: StreamId,
    on_batch: Callable[[list[ScannedRecord]], None] | None = None,
) -> StreamScan:
    """Verify a stream's segment files from genesis, in order, up to the first problem."""
    result = StreamScan(stream_id)
    numbers, result.foreign_files = segment_numbers_on_disk(stream_path(data_dir, stream_id))
    dictionaries = DictionaryCache(data_dir)
    for expected_no, segment_no in enumerate(numbers):
        if segment_no != expected_no:
            result.missing_segment = expected_no
            break
        result.segments.append(segment_no)
        scan = SegmentScan(
            data_dir,
            stream_id,
            segment_no,
            position=0,
            next_offset=result.next_offset,
            prev_hash=result.head,
            dictionaries=dictionaries,
        )
        result.first_offsets[segment_no] = result.next_offset
        for batch in scan.batches():
            if on_batch is not None:
                on_batch(batch)
        result.valid_ends[segment_no] = scan.valid_end
        result.next_offsets[segment_no] = scan.next_offset
        result.next_offset, result.head = scan.next_offset, scan.prev_hash
        if scan.problem is not None:
            result.problem, result.problem_segment = scan.problem, segment_no
            result.torn = segment_no == numbers[-1] and is_torn_tail(scan.path, scan.problem)
            break
    return result
