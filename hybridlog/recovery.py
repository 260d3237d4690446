"""Reconciling the catalog with the segments, and rebuilding it from them.

The segments are the truth for data; the catalog is an index of them. ``SegmentScan`` walks a
segment's frames and verifies every one (checksum, identity, hash, chain link), handing back
complete batches. On top of it:

* ``reconcile_stream`` runs before a writer first touches a stream. It adopts complete,
  chain-valid batches that the catalog missed (a crash between the segment write and the catalog
  commit), cuts off an incomplete last batch after saving its bytes to a quarantine file, and
  reports, without touching anything, damage it may not repair on its own (a file shorter than the
  catalog says, a missing segment, a bad record before the tail).
* ``rebuild_stream`` replaces a stream's catalog rows with what a full scan of its segments finds.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hybridlog.catalog import Catalog, CheckpointRow, IndexEntry, SegmentRow
from hybridlog.chain import open_record
from hybridlog.errors import CatalogMismatch, IntegrityError
from hybridlog.record import MAGIC, FrameError
from hybridlog.segment import (
    IncompleteFrame,
    SegmentReader,
    file_digest,
    fsync_dir,
    quarantine_path,
    segment_numbers_on_disk,
    segment_path,
    stream_path,
    write_file_durably,
)
from hybridlog.types import GENESIS_HASH, ChainHash, RecordKind, StreamId

log = logging.getLogger(__name__)


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
    incomplete: bool


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
    ) -> None:
        self.path = segment_path(data_dir, stream_id, segment_no)
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
            while True:
                try:
                    frame = reader.read_frame()
                    if frame is None:
                        break
                    record = open_record(
                        frame, stream_id=self.stream_id, expected_offset=offset, prev_hash=prev, segment=self.path
                    )
                except IncompleteFrame as e:
                    self.problem = ScanProblem(reader.position, e.reason, incomplete=True)
                    return
                except FrameError as e:
                    self.problem = ScanProblem(reader.position, e.reason, incomplete=False)
                    return
                except IntegrityError as e:
                    self.problem = ScanProblem(reader.position, e.message, incomplete=False)
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
            self.problem = ScanProblem(pending[0].entry.position, "last batch has no end marker", incomplete=True)


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


@dataclass(slots=True)
class ReconcileResult:
    """What reconciling one stream found and did."""

    stream_id: StreamId
    adopted_records: int = 0
    quarantined: list[Path] = field(default_factory=list)
    damage: IntegrityError | None = None
    foreign_files: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.adopted_records or self.quarantined)


def is_torn_tail(path: Path, problem: ScanProblem) -> bool:
    """Whether a scan problem looks like an interrupted write rather than damage.

    True when the file simply ends inside the last batch, or when no valid record frame starts
    anywhere after the problem (zeros or garbage to the end). A valid frame after it means bytes
    in the middle were damaged, and cutting there would throw away good records.
    """
    if problem.incomplete:
        return True
    with path.open("rb") as f:
        data = f.read()
    start = problem.position + 1
    while (found := data.find(MAGIC, start)) != -1:
        with SegmentReader(path, found) as reader:
            try:
                if reader.read_frame() is not None:
                    return False
            except FrameError:
                pass
        start = found + 1
    return True


def quarantine_tail(data_dir: Path, stream_id: StreamId, segment_no: int, position: int) -> Path:
    """Save the bytes of a segment from ``position`` to its end aside, then cut the segment there.

    The saved copy is durable before the cut, so a crash in between loses nothing.
    """
    path = segment_path(data_dir, stream_id, segment_no)
    with path.open("rb") as f:
        f.seek(position)
        tail = f.read()
    kept = quarantine_path(data_dir, stream_id, segment_no, position)
    write_file_durably(kept, tail)
    with path.open("r+b") as f:
        f.truncate(position)
        os.fsync(f.fileno())
    if position == 0:
        path.unlink()
        fsync_dir(path.parent)
    log.warning("stream %d: cut %d bytes from %s at byte %d, kept in %s", stream_id, len(tail), path, position, kept)
    return kept


def reconcile_stream(catalog: Catalog, data_dir: Path, stream_id: StreamId, now: Callable[[], int]) -> ReconcileResult:
    """Bring one stream's catalog rows in step with its segment files (see the module docstring)."""
    result = ReconcileResult(stream_id)
    stream = catalog.stream(stream_id)
    known = catalog.segments(stream_id)
    on_disk, result.foreign_files = segment_numbers_on_disk(stream_path(data_dir, stream_id))
    for name in result.foreign_files:
        log.warning("stream %d: unexpected file %s in its directory", stream_id, name)

    for seg in known:
        path = segment_path(data_dir, stream_id, seg.segment_no)
        size = path.stat().st_size if path.exists() else None
        if size is None or size < seg.size_bytes or (seg.sealed and size != seg.size_bytes):
            found = "missing" if size is None else f"{size} bytes"
            result.damage = CatalogMismatch(
                f"segment is {found} but the catalog records {seg.size_bytes} bytes",
                stream_id=stream_id,
                offset=seg.first_offset,
                segment=path,
                position=min(size or 0, seg.size_bytes),
            )
            return result

    last = known[-1] if known else None
    next_offset = stream.next_offset if stream else 0
    prev = (stream.chain_head if stream and stream.chain_head else None) or GENESIS_HASH
    to_scan: list[tuple[int, int]] = []
    if last is not None:
        to_scan.append((last.segment_no, last.size_bytes))
    extra = [n for n in on_disk if last is None or n > last.segment_no]
    expected_no = 0 if last is None else last.segment_no + 1
    for n in extra:
        if n != expected_no:
            result.damage = CatalogMismatch(
                f"segment {n} found where segment {expected_no} was expected",
                stream_id=stream_id,
                segment=segment_path(data_dir, stream_id, n),
            )
            return result
        to_scan.append((n, 0))
        expected_no += 1

    adoption = Adoption()
    segment_rows: list[tuple[int, int, int, int]] = []  # (segment_no, first_offset, next_offset, size)
    for i, (segment_no, position) in enumerate(to_scan):
        is_last_file = i == len(to_scan) - 1
        path = segment_path(data_dir, stream_id, segment_no)
        if path.stat().st_size == position:
            continue
        scan = SegmentScan(data_dir, stream_id, segment_no, position=position, next_offset=next_offset, prev_hash=prev)
        first_offset = next_offset
        for batch in scan.batches():
            adoption.add(stream_id, batch)
        if scan.problem is not None:
            if not is_last_file or not is_torn_tail(path, scan.problem):
                result.damage = IntegrityError(
                    f"bad record before the end of the stream ({scan.problem.reason})",
                    stream_id=stream_id,
                    offset=scan.next_offset,
                    segment=path,
                    position=scan.problem.position,
                )
                return result
            result.quarantined.append(quarantine_tail(data_dir, stream_id, segment_no, scan.valid_end))
        if scan.valid_end > 0:
            segment_rows.append((segment_no, first_offset, scan.next_offset, scan.valid_end))
        next_offset, prev = scan.next_offset, scan.prev_hash

    result.adopted_records = len(adoption.entries)
    if not adoption.entries:
        return result
    t = now()
    with catalog.transaction():
        for segment_no, first, nxt, size in segment_rows:
            existing = next((s for s in known if s.segment_no == segment_no), None)
            catalog.upsert_segment(
                stream_id,
                segment_no,
                first_offset=existing.first_offset if existing else first,
                next_offset=nxt,
                size_bytes=size,
                now_ns=t,
            )
        _seal_all_but_last(catalog, data_dir, stream_id, t)
        catalog.insert_records(stream_id, adoption.entries)
        catalog.insert_checkpoints(adoption.checkpoints)
        catalog.upsert_stream(
            stream_id,
            next_offset=next_offset,
            chain_head=prev,
            add_events=adoption.events,
            add_checkpoints=len(adoption.checkpoints),
            add_stored_bytes=adoption.stored_bytes,
            add_payload_bytes=adoption.payload_bytes,
            first_timestamp_ns=adoption.first_timestamp_ns,
            last_timestamp_ns=adoption.last_timestamp_ns,
            now_ns=t,
        )
    log.warning("stream %d: adopted %d records the catalog had missed", stream_id, result.adopted_records)
    return result


def _seal_all_but_last(catalog: Catalog, data_dir: Path, stream_id: StreamId, now_ns: int) -> None:
    rows: list[SegmentRow] = catalog.segments(stream_id)
    for seg in rows[:-1]:
        if not seg.sealed:
            digest = file_digest(segment_path(data_dir, stream_id, seg.segment_no))
            catalog.seal_segment(stream_id, seg.segment_no, digest=digest, now_ns=now_ns)


def rebuild_stream(catalog: Catalog, data_dir: Path, stream_id: StreamId, now: Callable[[], int]) -> int:
    """Replace a stream's catalog rows with a full, verifying scan of its segments.

    An incomplete tail of the last segment is quarantined and cut, as recovery would. Any other
    problem raises IntegrityError and leaves the catalog as it was. Returns the record count.
    """
    numbers, _foreign = segment_numbers_on_disk(stream_path(data_dir, stream_id))
    if numbers and numbers != list(range(len(numbers))):
        missing = sorted(set(range(numbers[-1] + 1)) - set(numbers))
        raise CatalogMismatch(
            f"segment {missing[0]} is missing",
            stream_id=stream_id,
            segment=segment_path(data_dir, stream_id, missing[0]),
        )
    t = now()
    next_offset, prev = 0, GENESIS_HASH
    with catalog.transaction():
        catalog.forget_stream(stream_id)
        totals = Adoption()
        for segment_no in numbers:
            scan = SegmentScan(data_dir, stream_id, segment_no, position=0, next_offset=next_offset, prev_hash=prev)
            first = next_offset
            for batch in scan.batches():
                part = Adoption()
                part.add(stream_id, batch)
                catalog.insert_records(stream_id, part.entries)
                catalog.insert_checkpoints(part.checkpoints)
                totals.events += part.events
                totals.payload_bytes += part.payload_bytes
                totals.stored_bytes += part.stored_bytes
                totals.checkpoints.extend(part.checkpoints)
                if totals.first_timestamp_ns is None:
                    totals.first_timestamp_ns = part.first_timestamp_ns
                totals.last_timestamp_ns = part.last_timestamp_ns
            path = segment_path(data_dir, stream_id, segment_no)
            if scan.problem is not None:
                if segment_no != numbers[-1] or not is_torn_tail(path, scan.problem):
                    raise IntegrityError(
                        f"cannot rebuild past a bad record ({scan.problem.reason})",
                        stream_id=stream_id,
                        offset=scan.next_offset,
                        segment=path,
                        position=scan.problem.position,
                    )
                quarantine_tail(data_dir, stream_id, segment_no, scan.valid_end)
            if scan.valid_end > 0:
                catalog.upsert_segment(
                    stream_id,
                    segment_no,
                    first_offset=first,
                    next_offset=scan.next_offset,
                    size_bytes=scan.valid_end,
                    now_ns=t,
                )
            next_offset, prev = scan.next_offset, scan.prev_hash
        _seal_all_but_last(catalog, data_dir, stream_id, t)
        if next_offset > 0:
            catalog.upsert_stream(
                stream_id,
                next_offset=next_offset,
                chain_head=prev,
                add_events=totals.events,
                add_checkpoints=len(totals.checkpoints),
                add_stored_bytes=totals.stored_bytes,
                add_payload_bytes=totals.payload_bytes,
                first_timestamp_ns=totals.first_timestamp_ns,
                last_timestamp_ns=totals.last_timestamp_ns,
                now_ns=t,
            )
    log.info("stream %d: catalog rebuilt from %d segments, %d records", stream_id, len(numbers), next_offset)
    return next_offset


def rebuild_checkpoints(catalog: Catalog, data_dir: Path, stream_id: StreamId) -> int:
    """Re-derive a stream's checkpoint rows from its checkpoint records; returns how many."""
    rows: list[CheckpointRow] = []
    next_offset, prev = 0, GENESIS_HASH
    segments = catalog.segments(stream_id)
    for seg in segments:
        scan = SegmentScan(data_dir, stream_id, seg.segment_no, position=0, next_offset=next_offset, prev_hash=prev)
        for batch in scan.batches():
            rows.extend(
                CheckpointRow(stream_id, r.entry.offset, r.hash, r.entry.timestamp_ns)
                for r in batch
                if r.entry.kind == RecordKind.CHECKPOINT and r.entry.offset < seg.next_offset
            )
        if scan.problem is not None and scan.valid_end < seg.size_bytes:
            raise IntegrityError(
                f"bad record ({scan.problem.reason})",
                stream_id=stream_id,
                offset=scan.next_offset,
                segment=scan.path,
                position=scan.problem.position,
            )
        next_offset, prev = scan.next_offset, scan.prev_hash
    with catalog.transaction():
        catalog.forget_checkpoints(stream_id)
        catalog.insert_checkpoints(rows)
    return len(rows)
