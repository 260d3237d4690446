"""Repairing one damaged stream while keeping every record that still verifies.

``plan_stream_repair`` measures what a repair would do (read only); ``repair_stream`` does it.

* **isolate** (the default): damage that has verifying records after it is stepped over. Its
  bytes stay where they are, an ``isolated`` repair marker (``markers.py``) is appended at the
  head of the stream naming its offsets, and the catalog records the gap: reads before and after
  it verify as usual (the chain is checked across it through the link the record after it
  stores), and a read of the damaged records raises ``RecordIsolated``. Damage with nothing
  verifying after it (the end of the stream) is cut into a quarantine file: only records that
  no longer verify are cut.
* **truncate** (only when the operator asks): everything from the first damaged record on is cut
  into quarantine files, records that still verify included.

Offsets are never given out twice: when a repair leaves the stream shorter than the highest
offset it ever committed (the catalog's next offset, or the last offset seen in the segments),
a ``cut`` marker takes that offset and links to the last record kept, so the stream continues
after it.

Order of the steps, each durable before the next: cut bytes to quarantine (``quarantine.py``) and
log where they went, then write the markers as one batch at the end of the stream and fsync them,
then re-index the stream from its segments, which finds the markers and records the gaps. A crash
in between leaves a stream that a second ``repair`` finishes the same way (the markers are the
record of what was decided; ``tests/test_isolation.py`` kills a repair at each step).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from hybridlog.catalog import Catalog
from hybridlog.catalog_rebuild import index_stream
from hybridlog.catalog_rows import RecoveryEntry
from hybridlog.diagnose import FoundGap, StreamScan, walk_stream
from hybridlog.dictionary import DictionaryCache, StreamDictionary, salvage_dictionary
from hybridlog.errors import DamagedDictionary, DictionaryUnusable
from hybridlog.evicted import stored_size
from hybridlog.layout import (
    QUARANTINE_SUFFIX,
    dictionary_name,
    parse_dictionary_name,
    quarantine_path,
    segment_numbers_on_disk,
    segment_path,
    stream_path,
)
from hybridlog.markers import RepairMarker
from hybridlog.quarantine import cut_tail, move_segment_aside, remove_empty_segment, reseal_dictionary
from hybridlog.record import append_frames
from hybridlog.recovery import Clock, ReconcileResult
from hybridlog.segment import SegmentWriter, fsync_dir, make_dirs_durably
from hybridlog.types import ChainHash, MarkerAction, RecordKind, RecoveryAction, StreamId


@dataclass(frozen=True, slots=True)
class Cut:
    """Where a repair cuts a stream: from ``offset``, whose bytes start in ``segment_no`` at ``byte``;
    the record kept before it has hash ``head`` (what a cut marker links to) and ``timestamp_ns``."""

    offset: int
    segment_no: int
    byte: int
    head: ChainHash
    timestamp_ns: int


@dataclass(slots=True)
class StreamRepairPlan:
    """What repairing one stream will do, in records, offsets and bytes (nothing done yet)."""

    stream_id: StreamId
    truncate: bool
    isolate: list[FoundGap] = field(default_factory=list)
    cut: Cut | None = None
    """Where the stream is cut (None: nothing is cut)."""
    cut_bytes: int = 0
    cut_files: list[str] = field(default_factory=list)
    cut_verifying: int = 0
    """Records cut that still verify (only an explicit truncate cuts those)."""
    committed_next: int = 0
    """The offset after the highest one the stream ever committed, as far as anyone knows."""
    kept_after: int = 0
    """Verifying records after the first isolated gap that stay readable."""
    keep_pending: bool = False
    """The cut starts at the damaged record itself: the records of its batch before it are kept."""
    dictionary: DictionaryUnusable | None = None
    """A dictionary file the stream's intact records need is missing or damaged: nothing is cut."""
    reseal: StreamDictionary | None = None
    """A dictionary file damaged outside its zstd dictionary (its digest, say), whose content every
    record that needs it decodes with to the hash it stores: rewritten whole, the old file kept."""

    @property
    def needs_cut_marker(self) -> bool:
        """Whether committed offsets are cut, so a cut marker must link over them."""
        return self.cut is not None and self.committed_next > self.cut.offset

    @property
    def cut_records(self) -> int:
        """How many committed records the cut takes out of the stream."""
        return self.committed_next - self.cut.offset if self.cut is not None else 0

    @property
    def changes_anything(self) -> bool:
        """Whether the plan would isolate, cut or reseal anything (or stops at a dictionary)."""
        return bool(self.isolate) or self.cut is not None or self.dictionary is not None or self.reseal is not None

    def statement(self) -> str:
        """The plan in words, with the numbers an operator needs before saying yes."""
        parts = []
        if self.reseal is not None:
            name = dictionary_name(self.reseal.number)
            parts.append(
                f"rewrites the damaged dictionary file {name} with a correct digest: every record that needs it"
                f" decodes with its content and verifies (the damaged file is kept as {name}{QUARANTINE_SUFFIX})"
            )
        parts.extend(
            f"isolates offsets {_span(gap.first_offset, gap.next_offset)} ({gap.records} damaged"
            f" record{'s' if gap.records != 1 else ''}, bytes kept in place in segment {gap.segment_no}"
            f" from byte {gap.start_byte})"
            for gap in self.isolate
        )
        if self.isolate:
            parts.append(f"keeps the {self.kept_after:,} verifying records after the damage readable")
        if self.cut is not None:
            lost = self.cut_records
            span = _span(self.cut.offset, self.committed_next)
            moved = f"{_size(self.cut_bytes)}, to {', '.join(self.cut_files)}"
            if lost > 0 and not self.cut_bytes:
                parts.append(f"{lost:,} committed records are lost: their bytes are gone from the segments")
            elif lost > 0:
                verifying = f", {self.cut_verifying:,} of them still verifying" if self.cut_verifying else ""
                parts.append(f"cuts offsets {span}: {lost:,} committed records{verifying}, {moved}")
            else:
                parts.append(f"cuts an unacknowledged tail from offset {self.cut.offset}, {moved}")
            if self.needs_cut_marker:
                parts.append(f"a cut marker takes offset {self.committed_next}: offsets {span} are never used again")
        if self.dictionary is not None:
            parts.append(
                f"cuts nothing: the records from offset {self.dictionary.offset} are intact but need"
                f" {self.dictionary.dictionary.name}; {self.dictionary.hint}"
            )
        return "; ".join(parts) if parts else "nothing to change"

    def as_dict(self) -> dict[str, object]:
        """The plan for ``--json``: the same numbers as ``statement``."""
        return {
            "stream_id": self.stream_id,
            "truncate": self.truncate,
            "isolates": [
                {
                    "first_offset": g.first_offset,
                    "next_offset": g.next_offset,
                    "records": g.records,
                    "segment_no": g.segment_no,
                    "start_byte": g.start_byte,
                }
                for g in self.isolate
            ],
            "kept_after": self.kept_after,
            "resealed_dictionary": None if self.reseal is None else self.reseal.number,
            "cut": None
            if self.cut is None
            else {
                "first_offset": self.cut.offset,
                "next_offset": self.committed_next,
                "committed_records": self.cut_records,
                "verifying_records": self.cut_verifying,
                "bytes": self.cut_bytes,
                "files": self.cut_files,
            },
        }


def _span(first: int, nxt: int) -> str:
    return str(first) if nxt == first + 1 else f"{first}..{nxt - 1}"


def _size(n: int) -> str:
    return f"{n:,} bytes" if n < 1_000_000 else f"{n / 1e6:.1f} MB"


def plan_stream_repair(
    catalog: Catalog | None,
    data_dir: Path,
    stream_id: StreamId,
    *,
    truncate: bool = False,
    reindex_only: bool = False,
    scan: StreamScan | None = None,
) -> tuple[StreamRepairPlan, StreamScan]:
    """Measure the repair of one stream (changes nothing). ``truncate``: cut at the first damage;
    ``reindex_only``: leave damage alone, cut only an unacknowledged tail (and mark offsets the
    catalog knew that the segments lost). ``scan``: a resyncing walk already made
    (``walk_stream(..., resync=True)``); returned with the plan (a re-sealed dictionary's walk)."""
    if scan is None:
        scan = walk_stream(data_dir, stream_id, resync=True)
    row = catalog.stream(stream_id) if catalog is not None else None
    plan = StreamRepairPlan(stream_id, truncate)
    damaged_dictionary = scan.problem.dictionary if scan.problem is not None else None
    if isinstance(damaged_dictionary, DamagedDictionary) and not truncate:
        resealed = _reseal(data_dir, stream_id, damaged_dictionary)
        if resealed is not None:
            plan.reseal, scan = resealed
    unexplained = scan.unexplained_gaps
    plan.committed_next = max(row.next_offset if row else 0, scan.highest_offset + 1, scan.next_offset)
    numbers, _ = segment_numbers_on_disk(stream_path(data_dir, stream_id))
    problem = scan.problem
    if problem is not None and problem.dictionary is not None and not truncate:
        plan.dictionary = problem.dictionary  # intact records: restore (or re-seal) the file, cut nothing
    elif truncate and unexplained:
        first = unexplained[0]
        plan.cut = Cut(
            first.first_offset, first.segment_no, first.start_byte, first.head_before, first.timestamp_before
        )
        plan.cut_verifying = scan.records_after_gap[scan.gaps.index(first)]
    elif reindex_only and (unexplained or (problem is not None and not scan.torn)):
        pass  # damage is for isolate or truncate to decide; re-indexing stops before it
    else:
        plan.isolate = [] if reindex_only else unexplained
        if unexplained:
            plan.kept_after = scan.records_after_gap[scan.gaps.index(unexplained[0])]
        head, timestamp = scan.head, scan.last_timestamp_ns  # the last record of the valid prefix
        if problem is not None and scan.problem_segment is not None:
            whole = scan.pending[-1] if scan.pending else None
            if whole is not None and plan.committed_next > whole.entry.offset + 1:
                # A committed batch damaged (or cut short) at its end: its records before that verify.
                end = whole.entry.position + whole.entry.length
                plan.cut = Cut(whole.entry.offset + 1, scan.problem_segment, end, whole.hash, whole.entry.timestamp_ns)
                plan.keep_pending = True
            else:
                byte = scan.valid_ends[scan.problem_segment]
                plan.cut = Cut(scan.next_offset, scan.problem_segment, byte, head, timestamp)
        elif scan.missing_segment is not None:
            plan.cut = Cut(scan.next_offset, scan.missing_segment, 0, head, timestamp)
        elif plan.committed_next > scan.next_offset:  # the catalog knew more than the segments hold
            last = numbers[-1] if numbers else 0
            size = stored_size(data_dir, stream_id, last) if numbers else 0
            plan.cut = Cut(scan.next_offset, last, size, head, timestamp)
    cut = plan.cut
    if cut is not None:
        for no in numbers:
            size = stored_size(data_dir, stream_id, no)
            if no == cut.segment_no:
                if size > cut.byte:
                    plan.cut_bytes += size - cut.byte
                    plan.cut_files.append(quarantine_path(data_dir, stream_id, no, cut.byte).name)
            elif no > cut.segment_no:
                plan.cut_bytes += size
                plan.cut_files.append(quarantine_path(data_dir, stream_id, no, 0).name)
    return plan, scan


def repair_stream(
    catalog: Catalog,
    data_dir: Path,
    stream_id: StreamId,
    now: Clock,
    *,
    truncate: bool = False,
    reindex_only: bool = False,
    found: str | None = None,
) -> ReconcileResult:
    """Repair one stream as ``plan_stream_repair`` describes it (see the module docstring)."""
    plan, scan = plan_stream_repair(catalog, data_dir, stream_id, truncate=truncate, reindex_only=reindex_only)
    if plan.dictionary is not None:
        # Intact records whose dictionary file must be restored: changing the catalog would only
        # hide them (it would end before them), so nothing is touched.
        return ReconcileResult(stream_id, damage=plan.dictionary)
    entries: list[RecoveryEntry] = []
    logged: list[RecoveryEntry] = []
    head: ChainHash = scan.head
    last_timestamp = scan.last_timestamp_ns
    next_offset = scan.next_offset
    if plan.reseal is not None:
        entries.append(reseal_dictionary(data_dir, stream_id, plan.reseal, action=RecoveryAction.RESEALED_DICTIONARY))
    markers: list[RepairMarker] = []
    cut = plan.cut
    if cut is not None:
        cut_entries = _cut(data_dir, stream_id, plan, cut)
        with catalog.transaction():  # logged now: a crash before the re-index must not lose where the bytes went
            for entry in cut_entries:
                catalog.log_recovery(replace(entry, at_ns=now()))
        logged = cut_entries
        head, last_timestamp, next_offset = cut.head, cut.timestamp_ns, cut.offset
        if plan.needs_cut_marker:
            end = cut.byte + plan.cut_bytes
            markers.append(
                RepairMarker(MarkerAction.CUT, cut.offset, plan.committed_next, cut.segment_no, cut.byte, end)
            )
            next_offset = plan.committed_next
    for gap in plan.isolate:
        markers.append(
            RepairMarker(
                MarkerAction.ISOLATED,
                gap.first_offset,
                gap.next_offset,
                gap.segment_no,
                gap.start_byte,
                gap.resume_byte,
            )
        )
        entries.append(
            RecoveryEntry(
                stream_id,
                found=f"damage: {gap.reason}",
                action=RecoveryAction.ISOLATED,
                segment_no=gap.segment_no,
                start_byte=gap.start_byte,
                end_byte=gap.resume_byte if gap.resume_segment_no == gap.segment_no else None,
                first_offset=gap.first_offset,
                next_offset=gap.next_offset,
                detail=f"reads resume at segment {gap.resume_segment_no} byte {gap.resume_byte}",
            )
        )
    if markers:
        numbers, _ = segment_numbers_on_disk(stream_path(data_dir, stream_id))
        if numbers and segment_path(data_dir, stream_id, numbers[-1]).stat().st_size == 0:
            # markers follow records
            entries.append(remove_empty_segment(data_dir, stream_id, numbers[-1], action=RecoveryAction.REMOVED_EMPTY))
        position = catalog.last_global_position() + 1  # after every position given out, the cut ones too
        _write_markers(data_dir, stream_id, markers, next_offset, position, head, max(now(), last_timestamp))
    found = found or ("truncate requested" if truncate else "repair keeping what verifies")
    result = index_stream(catalog, data_dir, stream_id, now, found=found, prior=entries)
    result.entries[:0] = logged
    return result


def _cut(data_dir: Path, stream_id: StreamId, plan: StreamRepairPlan, cut: Cut) -> list[RecoveryEntry]:
    """Move everything from the cut on into quarantine files (one entry per file cut or moved)."""
    if plan.truncate:
        found, action = "truncate requested", RecoveryAction.TRUNCATED
    elif plan.cut_records:
        found, action = (
            f"{plan.cut_records} committed records from offset {cut.offset} do not verify",
            RecoveryAction.TRUNCATED,
        )
    else:
        found, action = "incomplete batch at the end of the stream, never acknowledged", RecoveryAction.QUARANTINED
    entries = []
    numbers, _ = segment_numbers_on_disk(stream_path(data_dir, stream_id))
    for no in numbers:
        if no == cut.segment_no and segment_path(data_dir, stream_id, no).stat().st_size > cut.byte:
            entries.append(
                cut_tail(data_dir, stream_id, no, cut.byte, found=found, action=action, first_offset=cut.offset)
            )
        elif no > cut.segment_no:
            entries.append(move_segment_aside(data_dir, stream_id, no, found=found, action=action))
    if plan.needs_cut_marker:
        gone = "" if plan.cut_bytes else ": their bytes are gone from the segments"
        entries.append(
            RecoveryEntry(
                stream_id,
                found=f"{plan.cut_records} committed records are lost{gone}",
                action=RecoveryAction.MARKED_CUT,
                first_offset=cut.offset,
                next_offset=plan.committed_next,
                detail=f"a cut marker at offset {plan.committed_next} keeps these offsets from being used again",
            )
        )
    return entries


def _reseal(
    data_dir: Path, stream_id: StreamId, damaged: DictionaryUnusable
) -> tuple[StreamDictionary, StreamScan] | None:
    """The dictionary in a damaged file, if the stream verifies with it: every record decodes and
    matches its stored hash, and the walk meets no damage it did not meet before (else None)."""
    number = parse_dictionary_name(damaged.dictionary.name)
    if number is None or not damaged.dictionary.exists():
        return None
    salvaged = salvage_dictionary(damaged.dictionary.read_bytes(), stream_id=stream_id, number=number)
    if salvaged is None:
        return None
    dictionaries = DictionaryCache(data_dir)
    dictionaries.remember(salvaged)
    scan = walk_stream(data_dir, stream_id, resync=True, dictionaries=dictionaries)
    if scan.problem is not None or scan.unexplained_gaps:
        return None
    return salvaged, scan


def _write_markers(
    data_dir: Path,
    stream_id: StreamId,
    markers: list[RepairMarker],
    first_offset: int,
    first_global_position: int,
    prev_hash: ChainHash,
    timestamp_ns: int,
) -> None:
    """Append the markers as one batch at the end of the stream's last segment, durably."""
    frames = bytearray()
    append_frames(
        frames,
        [(RecordKind.REPAIR, m.encode()) for m in markers],
        stream_id=stream_id,
        first_offset=first_offset,
        first_global_position=first_global_position,
        timestamp_ns=timestamp_ns,
        prev_hash=prev_hash,
        batch_end=True,
        compressor=None,
    )
    directory = stream_path(data_dir, stream_id)
    make_dirs_durably(directory)
    numbers, _ = segment_numbers_on_disk(directory)
    path = segment_path(data_dir, stream_id, numbers[-1] if numbers else 0)
    created = not path.exists()
    writer = SegmentWriter(path, create=created)
    try:
        writer.write_at(os.fstat(writer.fd).st_size, frames)
        writer.sync()  # the markers are durable before the catalog points at them
    finally:
        writer.close()
    if created:
        fsync_dir(directory)
