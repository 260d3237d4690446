"""The one classifier of damage: what a verifying walk's stop means, stream by stream.

``walk_stream`` walks all of a stream's segment files from genesis (``walk.SegmentScan`` per
segment) and turns where the walk stopped into a judgement (``StreamScan``): a torn tail
(``is_torn_tail``: an interrupted write, safe to cut), a missing segment, or damage in durable data;
with ``resync`` it steps over damage that has verifying records after it (``find_resume``) and
lists it as gaps, each isolated by repair or not yet decided. ``unlisted_stream_problem`` says when a
catalog has lost a stream whose files hold records. ``Adoption`` gathers the catalog rows of the
complete batches a walk found past the catalog's end. Open-time recovery, ``check``/``repair`` and
reads use these verdicts; nothing here changes a file.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hybridlog.catalog_rows import CheckpointRow, IndexEntry
from hybridlog.dictionary import DictionaryCache, DictionaryUnavailable
from hybridlog.errors import CatalogMismatch
from hybridlog.layout import segment_numbers_on_disk, segment_path, stream_path
from hybridlog.markers import ISOLATED, RepairMarker
from hybridlog.record import MAGIC, DictionarySource, FrameError, FrameHeader, decode_payload, record_hash
from hybridlog.segment import SegmentReader
from hybridlog.types import GENESIS_HASH, ChainHash, RecordKind, StreamId
from hybridlog.walk import ScannedRecord, ScanProblem, SegmentScan


@dataclass(frozen=True, slots=True)
class FoundGap:
    """Damaged records a resyncing walk stepped over: offsets ``first_offset .. next_offset - 1``,
    whose bytes start in segment ``segment_no`` at ``start_byte``. The walk went on at the first
    record after them that verifies on its own (``resume_segment_no`` / ``resume_byte``), linked
    through the hash it stores of the record before it (``link_hash``)."""

    first_offset: int
    next_offset: int
    segment_no: int
    start_byte: int
    resume_segment_no: int
    resume_byte: int
    link_hash: ChainHash
    reason: str
    missing: bool = False
    """True when the damage is a missing segment file (``segment_no``)."""
    head_before: ChainHash = GENESIS_HASH
    """The hash of the last verified record before the gap (the link a cut there continues from)."""
    timestamp_before: int = 0

    @property
    def records(self) -> int:
        return self.next_offset - self.first_offset


@dataclass(slots=True)
class StreamScan:
    """What a verifying walk over all of a stream's segment files found.

    ``next_offset`` / ``head`` describe the valid prefix (complete, verified batches). When the walk
    stopped early, ``problem`` says why and ``problem_segment`` where; ``missing_segment`` is set
    when a segment number is absent from the sequence; ``torn`` is True when the problem is an
    interrupted write at the very end of the stream rather than damage. A resyncing walk steps
    over damage that has verifying records after it and lists it in ``gaps``; ``markers`` are
    the repair markers it met (``markers.py``).
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
    gaps: list[FoundGap] = field(default_factory=list)
    markers: list[RepairMarker] = field(default_factory=list)
    last_timestamp_ns: int = 0
    pending: list[ScannedRecord] = field(default_factory=list)
    """At ``problem``: the verified records of the damaged record's batch before it."""
    records: int = 0
    """How many records the walk handed out (verified)."""
    highest_offset: int = -1
    """The offset of the last of them."""
    records_after_gap: list[int] = field(default_factory=list)
    """For each of ``gaps``: how many records the walk handed out after it."""

    @property
    def clean(self) -> bool:
        return self.problem is None and self.missing_segment is None and not self.gaps

    def is_isolated(self, gap: FoundGap) -> bool:
        """Whether an ``isolated`` repair marker of the stream names exactly this gap's offsets."""
        return any(
            m.action == ISOLATED and (m.first_offset, m.next_offset) == (gap.first_offset, gap.next_offset)
            for m in self.markers
        )

    @property
    def unexplained_gaps(self) -> list[FoundGap]:
        """The gaps no repair decided about: damage found, not yet isolated."""
        return [g for g in self.gaps if not self.is_isolated(g)]


def walk_stream(
    data_dir: Path,
    stream_id: StreamId,
    on_batch: Callable[[list[ScannedRecord]], None] | None = None,
    *,
    resync: bool = False,
    dictionaries: DictionaryCache | None = None,
) -> StreamScan:
    """Verify a stream's segment files from genesis, in order, up to the first problem.

    With ``resync``, damage (a bad record, a missing segment) that has a verifying record after it
    is stepped over (``find_resume``) and listed in ``gaps``, and the walk goes on from there; the
    verified records of a damaged record's batch before it are handed to ``on_batch`` too. Damage
    with nothing verifying after it still stops the walk. ``dictionaries``: where dictionary-
    compressed records find their dictionary (default: the stream's files).
    """
    result = StreamScan(stream_id)
    numbers, result.foreign_files = segment_numbers_on_disk(stream_path(data_dir, stream_id))
    dictionaries = dictionaries or DictionaryCache(data_dir)

    def deliver(batch: list[ScannedRecord]) -> None:
        result.markers.extend(r.marker for r in batch if r.marker is not None)
        result.last_timestamp_ns = batch[-1].entry.timestamp_ns
        result.records += len(batch)
        result.highest_offset = batch[-1].entry.offset
        for i in range(len(result.records_after_gap)):
            result.records_after_gap[i] += len(batch)
        if on_batch is not None:
            on_batch(batch)

    def resume_after(at: int, position: int, gap_segment: int) -> tuple[int, int, int, FrameHeader] | None:
        """Where the walk goes on after damage at ``numbers[at]``/``position`` (the record at
        ``result.next_offset``). A missing segment passes ``gap_segment`` before ``numbers[at]``
        and ``position`` 0."""
        search_from = position + 1 if gap_segment == numbers[at] else 0
        return find_resume(data_dir, stream_id, numbers, at, search_from, result.next_offset, dictionaries)

    def step_over(
        at: int, position: int, gap_segment: int, reason: str, resume: tuple[int, int, int, FrameHeader]
    ) -> tuple[int, int]:
        """Record the gap from the record at ``result.next_offset`` to ``resume``, and go on there:
        returns (index into numbers, byte)."""
        index, segment_no, byte, header = resume
        result.gaps.append(
            FoundGap(
                result.next_offset,
                header.offset,
                gap_segment,
                position,
                segment_no,
                byte,
                header.prev_hash,
                reason,
                missing=gap_segment != numbers[at],
                head_before=result.head,
                timestamp_before=result.last_timestamp_ns,
            )
        )
        result.records_after_gap.append(0)
        for skipped in numbers[at + 1 : index]:  # whole segments inside the gap
            result.segments.append(skipped)
            result.first_offsets[skipped] = result.next_offsets[skipped] = header.offset
            result.valid_ends[skipped] = 0
        if index != at:
            result.segments.append(segment_no)
            result.first_offsets[segment_no] = header.offset
        result.next_offset, result.head = header.offset, header.prev_hash
        return index, byte

    i, position, resumed_here = 0, 0, False
    while i < len(numbers):
        segment_no = numbers[i]
        expected_no = numbers[i - 1] + 1 if i else 0
        if position == 0 and segment_no != expected_no and not resumed_here:
            resume = resume_after(i, 0, expected_no) if resync else None
            if resume is None:
                result.missing_segment = expected_no
                break
            missing = f"segment {expected_no} is missing"
            (i, position), resumed_here = step_over(i, 0, expected_no, missing, resume), True
            continue
        resumed_here = False
        if segment_no not in result.first_offsets:
            result.segments.append(segment_no)
            result.first_offsets[segment_no] = result.next_offset
        scan = SegmentScan(
            data_dir,
            stream_id,
            segment_no,
            position=position,
            next_offset=result.next_offset,
            prev_hash=result.head,
            dictionaries=dictionaries,
        )
        for batch in scan.batches():
            deliver(batch)
        result.valid_ends[segment_no] = scan.valid_end
        result.next_offsets[segment_no] = scan.next_offset
        result.next_offset, result.head = scan.next_offset, scan.prev_hash
        problem = scan.problem
        if problem is not None and resync and problem.dictionary is None and not problem.unterminated:
            # The damaged record's batch: the records before it verify, and are kept when the walk
            # can go on after the damage (at the end of the stream, the batch counts as torn).
            result.next_offset = problem.offset
            resume = resume_after(i, problem.position, segment_no)
            if resume is not None:
                if scan.pending:
                    deliver(scan.pending)
                    result.head = scan.pending[-1].hash
                    result.valid_ends[segment_no] = problem.position
                    result.next_offsets[segment_no] = problem.offset
                (i, position), resumed_here = step_over(i, problem.position, segment_no, problem.reason, resume), True
                continue
            result.next_offset = scan.next_offset  # damage at the tail: as without resync
        if problem is not None:
            result.problem, result.problem_segment, result.pending = problem, segment_no, scan.pending
            result.torn = segment_no == numbers[-1] and is_torn_tail(scan.path, problem)
            break
        i, position = i + 1, 0
    return result


def find_resume(
    data_dir: Path,
    stream_id: StreamId,
    numbers: list[int],
    at: int,
    search_from: int,
    expected: int,
    dictionaries: DictionarySource,
) -> tuple[int, int, int, FrameHeader] | None:
    """The first record after damage that verifies on its own: (index into ``numbers``, segment
    number, byte position, header); None if nothing after the damage does.

    Looks in segment ``numbers[at]`` from byte ``search_from``, then in every later segment from
    its start. A candidate must be a whole frame (magic, checksum) of this stream at an offset past
    ``expected`` whose stored hash is the hash of its contents; whether it links to the records
    before the damage cannot be known (their bytes are what is damaged), so the walk goes on
    from the link it stores.
    """
    for index in range(at, len(numbers)):
        segment_no = numbers[index]
        path = segment_path(data_dir, stream_id, segment_no)
        start = search_from if index == at else 0
        with path.open("rb") as f:
            f.seek(start)
            data = f.read()
        found = data.find(MAGIC)
        while found != -1:
            header = _self_verifying(path, start + found, stream_id, expected, dictionaries)
            if header is not None:
                return index, segment_no, start + found, header
            found = data.find(MAGIC, found + 1)
    return None


def _self_verifying(
    path: Path, position: int, stream_id: StreamId, expected: int, dictionaries: DictionarySource
) -> FrameHeader | None:
    with SegmentReader(path, position) as reader:
        try:
            frame = reader.read_frame()
        except FrameError:
            return None
    if frame is None:
        return None
    header = frame.header
    if header.stream_id != stream_id or header.offset <= expected:
        return None
    try:
        payload = decode_payload(header, frame.stored, dictionaries)
    except (FrameError, DictionaryUnavailable):
        return None
    own = record_hash(stream_id, header.offset, header.kind, header.timestamp_ns, header.prev_hash, payload)
    return header if own == header.hash else None


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


NEW_STREAM_GRACE_NS = 5_000_000_000
"""How long a stream's newest segment file may have been written before the catalog must list it.

A writer creates a new stream's first segment file and writes its first batch there before it
commits the catalog rows that name the stream; a reader that looks in between sees records on
disk that the catalog does not list yet. Within this time of the file's last write the reader
waits for that commit; after it, the catalog has lost the stream.
"""


def unlisted_stream_problem(data_dir: Path, stream_id: StreamId, listed: Callable[[], bool]) -> CatalogMismatch | None:
    """Why a stream the catalog did not list is not simply empty: its directory holds records.

    ``listed`` asks the catalog again (True: it lists the stream now). Returns None when the
    stream has no segment file with bytes in it, or once ``listed`` says the commit has landed;
    else, once the newest such file is older than ``NEW_STREAM_GRACE_NS``, the CatalogMismatch
    to raise.
    """
    directory = stream_path(data_dir, stream_id)
    while True:
        written: list[os.stat_result] = []
        numbers, _ = segment_numbers_on_disk(directory)
        for no in numbers:
            try:
                info = segment_path(data_dir, stream_id, no).stat()
            except FileNotFoundError:
                continue  # a failed first batch removes its new file again
            if info.st_size > 0:
                written.append(info)
        if not written or listed():
            return None
        if time.time_ns() - max(info.st_mtime_ns for info in written) >= NEW_STREAM_GRACE_NS:
            return CatalogMismatch(
                f"the catalog has no row for this stream, yet its directory {directory} holds"
                f" {len(written)} segment file(s) with {sum(info.st_size for info in written)} bytes",
                stream_id=stream_id,
                hint=f"see it with `hybridlog check {data_dir}`, rebuild the stream's rows with"
                f" `hybridlog repair {data_dir}`",
            )
        time.sleep(0.01)


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
