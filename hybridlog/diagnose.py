"""The one classifier of damage: what a verifying walk's stop means, stream by stream.

``walk_stream`` walks all of a stream's segment files from genesis (``walk.SegmentScan`` per
segment) and turns where the walk stopped into a judgement (``StreamScan``); with ``resync`` it
steps over damage that has verifying records after it (``find_resume``) and lists it as gaps, each
isolated by repair or not yet decided (``as_stopped``: the walk as if it had stopped at the first
undecided one).

What a problem is, decided once for everyone (open-time recovery, ``check``, re-indexing, reads):

* ``classify_problem``: where a segment scan stopped -> a ``DamageKind``: a torn tail
  (``is_torn_tail``: an interrupted write, safe to cut), a missing or damaged dictionary file, or
  a damaged record in durable data;
* ``stream_damage``: a stream walk -> the one ``Damage`` it stopped at (kind and place), which
  ``check`` turns into a finding and recovery and re-indexing into the error they report;
* ``segment_row_problems`` / ``catalog_ahead_damage``: catalog segment rows against the files
  (missing, sizes, digests of sealed segments);
* ``unlisted_stream_problem``: a catalog that has lost a stream whose files hold records.

Nothing here changes a file (``quarantine.py`` does).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path

from hybridlog.catalog import Catalog
from hybridlog.catalog_rows import SegmentRow
from hybridlog.dictionary import DictionaryCache, DictionaryUnavailable
from hybridlog.errors import CatalogMismatch, DictionaryUnusable, IntegrityError, MissingDictionary
from hybridlog.evicted import readable_path, stored_digest, stored_size
from hybridlog.layout import segment_numbers_on_disk, segment_path, stream_path
from hybridlog.markers import RepairMarker
from hybridlog.record import MAGIC, DictionarySource, FrameError, FrameHeader, decode_payload
from hybridlog.scan import ScannedRecord, ScanProblem, SegmentScan
from hybridlog.segment import Frame, SegmentReader
from hybridlog.types import GENESIS_HASH, ChainHash, MarkerAction, StreamId


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
        """How many offsets the gap spans."""
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
        """True when the walk found no bad record, no missing segment and no gap."""
        return self.problem is None and self.missing_segment is None and not self.gaps

    def is_isolated(self, gap: FoundGap) -> bool:
        """Whether an ``isolated`` repair marker of the stream names exactly this gap's offsets."""
        return any(
            m.action == MarkerAction.ISOLATED and (m.first_offset, m.next_offset) == (gap.first_offset, gap.next_offset)
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
            at_end = segment_no == numbers[-1]
            result.torn = classify_problem(scan.path, problem, at_end=at_end) is DamageKind.TORN_TAIL
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
        with readable_path(path).open("rb") as f:
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
    with SegmentReader(readable_path(path), position) as reader:
        try:
            frame = reader.read_frame()
        except FrameError:
            return None
    if frame is None or frame.header.stream_id != stream_id or frame.header.offset <= expected:
        return None
    return frame.header if _hash_holds(frame, dictionaries) else None


def _hash_holds(frame: Frame, dictionaries: DictionarySource | None) -> bool:
    """Whether a frame's stored hash is the hash of its contents (False when they cannot be decoded)."""
    header = frame.header
    try:
        payload = decode_payload(header, frame.stored, dictionaries)
    except (FrameError, DictionaryUnavailable):
        return False
    return header.hash_of(payload) == header.hash


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
    with readable_path(path).open("rb") as f:
        f.seek(problem.position)
        data = f.read()
    start = 1
    while (found := data.find(MAGIC, start)) != -1:
        with SegmentReader(readable_path(path), problem.position + found) as reader:
            try:
                frame = reader.read_frame()
                # a record by itself: a format-1 frame (read_frame checked its checksum), or a
                # format-2 one whose hash holds (one needing a dictionary, not at hand here, whole)
                if frame is not None and (
                    frame.header.global_position is None or frame.header.uses_dictionary or _hash_holds(frame, None)
                ):
                    return False
            except FrameError:
                pass
        start = found + 1
    return True


class DamageKind(StrEnum):
    """What a stream walk stopped at (the same words as ``check``'s finding kinds)."""

    TORN_TAIL = "torn_tail"
    """An interrupted write at the very end of the stream: never acknowledged, safe to cut."""
    MISSING_SEGMENT = "missing_segment"
    DAMAGED_RECORD = "damaged_record"
    """Damage in durable data: repair decides."""
    MISSING_DICTIONARY = "missing_dictionary"
    DAMAGED_DICTIONARY = "damaged_dictionary"
    """Intact records whose dictionary file is missing or damaged: never cut."""


def classify_problem(
    path: Path, problem: ScanProblem, *, at_end: bool, group_expected: tuple[StreamId, int] | None = None
) -> DamageKind:
    """What a segment scan's ``problem`` in the file ``path`` is.

    ``at_end``: nothing the stream holds follows this file, so the problem may be a torn tail
    (``is_torn_tail``); else it is damage. ``group_expected``: (stream, next offset) when the
    problem is at the very start of a file after the first one scanned: a file that starts with a
    whole frame of the stream past that offset (``starts_past``) holds the rest of a group whose
    earlier batches never became durable, so it is torn too.
    """
    if problem.dictionary is not None:
        if isinstance(problem.dictionary, MissingDictionary):
            return DamageKind.MISSING_DICTIONARY
        return DamageKind.DAMAGED_DICTIONARY
    if group_expected is not None and starts_past(path, *group_expected):
        return DamageKind.TORN_TAIL
    if at_end and is_torn_tail(path, problem):
        return DamageKind.TORN_TAIL
    return DamageKind.DAMAGED_RECORD


def starts_past(path: Path, stream_id: StreamId, next_offset: int) -> bool:
    """Whether a segment file starts with a whole, valid frame of this stream at an offset past
    ``next_offset``: the batches before it in the same group never became durable."""
    try:
        with SegmentReader(readable_path(path)) as reader:
            frame = reader.read_frame()
    except FrameError:
        return False
    return frame is not None and frame.header.stream_id == stream_id and frame.header.offset > next_offset


@dataclass(frozen=True, slots=True)
class Damage:
    """Where a stream walk stopped, and why: the record at ``offset`` (the first one it affects), in
    segment ``segment_no`` (file ``segment``) from byte ``position`` (None: the file is missing)."""

    kind: DamageKind
    stream_id: StreamId
    segment_no: int
    segment: Path
    offset: int
    position: int | None
    reason: str
    dictionary: DictionaryUnusable | None = None
    """For the dictionary kinds: the error naming the file and how to restore it."""

    def error(self, hint: str, *, what: str = "bad record") -> IntegrityError | None:
        """The error that reports this damage (None for a torn tail, which is cut, not reported);
        ``what`` names a damaged record in its message."""
        if self.kind is DamageKind.TORN_TAIL:
            return None
        if self.dictionary is not None:
            return self.dictionary
        if self.kind is DamageKind.MISSING_SEGMENT:
            return CatalogMismatch(
                self.reason, stream_id=self.stream_id, offset=self.offset, segment=self.segment, hint=hint
            )
        return IntegrityError(
            f"{what} ({self.reason})",
            stream_id=self.stream_id,
            offset=self.offset,
            segment=self.segment,
            position=self.position,
            hint=hint,
        )


def stream_damage(data_dir: Path, scan: StreamScan) -> Damage | None:
    """What a stream walk stopped at (None: it did not stop). A resyncing walk: see ``as_stopped``.

    A torn tail starts at the end of the valid prefix (``next_offset``, the valid end of its file);
    damage at the record it is found in; a missing segment at the first offset it would hold.
    """
    sid = scan.stream_id
    if scan.missing_segment is not None:
        gone = scan.missing_segment
        path = segment_path(data_dir, sid, gone)
        return Damage(DamageKind.MISSING_SEGMENT, sid, gone, path, scan.next_offset, None, f"segment {gone} is missing")
    problem, no = scan.problem, scan.problem_segment
    if problem is None:
        return None
    assert no is not None
    path = segment_path(data_dir, sid, no)
    if scan.torn:
        return Damage(DamageKind.TORN_TAIL, sid, no, path, scan.next_offset, scan.valid_ends[no], problem.reason)
    kind = classify_problem(path, problem, at_end=False)
    return Damage(kind, sid, no, path, problem.offset, problem.position, problem.reason, problem.dictionary)


def as_stopped(walked: StreamScan) -> StreamScan:
    """A resyncing walk as a walk without resync would have ended: at the first damage no repair
    marker accounts for (so it is reported there, and the catalog compared with what comes before)."""
    gap = next(iter(walked.unexplained_gaps), None)
    if gap is None:
        return walked
    view = replace(walked, next_offset=gap.first_offset, head=gap.head_before)
    if gap.missing:
        view.missing_segment = gap.segment_no
    else:
        view.problem = ScanProblem(gap.start_byte, gap.reason, unterminated=False, offset=gap.first_offset)
        view.problem_segment = gap.segment_no
        view.torn = False
    return view


@dataclass(frozen=True, slots=True)
class SegmentRowProblem:
    """A catalog segment row the file does not match: its ``size`` (None: missing), or its digest."""

    row: SegmentRow
    path: Path
    size: int | None
    digest_differs: bool = False

    @property
    def lost_bytes(self) -> bool:
        """The catalog records bytes the file does not hold (missing, shorter, a sealed file changed)."""
        size, row = self.size, self.row
        return size is None or size < row.size_bytes or (row.sealed and size != row.size_bytes)


def segment_row_problems(
    data_dir: Path, stream_id: StreamId, rows: list[SegmentRow], *, digests: bool, last_may_grow: bool = False
) -> list[SegmentRowProblem]:
    """Catalog segment rows against the files: sizes, and (``digests``) digests of sealed segments.

    ``last_may_grow``: the last segment, if not sealed, may be longer than the catalog says (a
    writer is appending to it).
    """
    found = []
    for seg in rows:
        path = segment_path(data_dir, stream_id, seg.segment_no)
        try:
            size: int | None = stored_size(data_dir, stream_id, seg.segment_no)  # an evicted one's: its stub's
        except FileNotFoundError:
            size = None
        growing = last_may_grow and seg is rows[-1] and not seg.sealed
        if size != seg.size_bytes and not (growing and size is not None and size > seg.size_bytes):
            found.append(SegmentRowProblem(seg, path, size))
        elif digests and seg.sealed and seg.digest != stored_digest(data_dir, stream_id, seg.segment_no):
            found.append(SegmentRowProblem(seg, path, size, digest_differs=True))
    return found


def catalog_ahead_damage(catalog: Catalog, data_dir: Path, stream_id: StreamId) -> CatalogMismatch | None:
    """The first segment the catalog knows that is missing, shorter than recorded, or changed after
    sealing: records the catalog committed that the files no longer hold (open refuses to guess)."""
    problems = segment_row_problems(data_dir, stream_id, catalog.segments(stream_id), digests=False)
    lost = next((p for p in problems if p.lost_bytes), None)
    if lost is None:
        return None
    seg, size = lost.row, lost.size
    found = "missing" if size is None else f"{size} bytes"
    cut = min(size or 0, seg.size_bytes)
    hurt = catalog.first_entry_ending_after(stream_id, seg.segment_no, cut)
    return CatalogMismatch(
        f"segment is {found} but the catalog records {seg.size_bytes} bytes",
        stream_id=stream_id,
        offset=hurt.offset if hurt else seg.next_offset,
        segment=lost.path,
        position=hurt.position if hurt else cut,
        hint=f"run `hybridlog repair {data_dir} --stream {stream_id}`",
    )


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
