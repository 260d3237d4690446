"""Scanning a segment for recovery, rebuild and repair: the one home of ``SegmentScan``.

``SegmentScan`` walks a segment (``walk.SegmentWalk``, the verifying walk) to its end in complete
batches, and says where and why it stopped early (``ScanProblem``, which ``diagnose.py`` judges):
a torn last batch, a bad record, a dictionary it cannot use. Each verified record comes out as a
``ScannedRecord``: its index entry, hash, payload size, repair marker and the global position its
frame carries.

``scan_plain_stream`` is a rebuild's fast way through a whole stream whose every record is a plain
(uncompressed, format-2) event or checkpoint, intact to the end: the compiled helper (``native.py``)
verifies it and hands out ``batches`` rows directly, no object per record. Anything else (no helper,
a repair marker, compression, format 1, damage, a torn tail) makes it return None, and the caller
takes the record-by-record scan, whose rows it gives exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from hybridlog.catalog_rows import BatchRow, CheckpointRow, IndexEntry, unpack_frame_ends
from hybridlog.catalog_rows import pack_frame_ends as pack_ends
from hybridlog.dictionary import DictionaryCache
from hybridlog.errors import DictionaryUnusable, IntegrityError
from hybridlog.evicted import readable_path
from hybridlog.layout import segment_numbers_on_disk, segment_path, stream_path
from hybridlog.markers import RepairMarker, decode_marker
from hybridlog.native import long_hash, speedups
from hybridlog.record import DictionarySource, FrameError
from hybridlog.segment import SegmentReader
from hybridlog.types import GENESIS_HASH, ChainHash, Offset, RecordKind, StreamId
from hybridlog.walk import SegmentWalk


class ScannedRecord(NamedTuple):
    """One verified record as a scan hands it out: its index row, hash, payload size and any repair marker.

    A named tuple: a rebuild makes one per record, and a tuple is the cheapest object to build.
    """

    entry: IndexEntry
    hash: ChainHash
    payload_len: int
    marker: RepairMarker | None = None
    """The repair marker a kind-2 record holds (``markers.py``)."""
    global_position: int | None = None
    """The global position the record's frame carries (None: a format-1 record)."""


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
    """Verifying walk over one segment from ``position`` to its end, yielding complete batches.

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
        self.pending: list[ScannedRecord] = []
        """At a bad record: the verified records of its batch before it (not handed out as a batch)."""

    def batches(self) -> Iterator[list[ScannedRecord]]:
        """The segment's complete, verified batches, in order; where the scan stops early, ``problem`` says why."""
        pending: list[ScannedRecord] = []
        source = readable_path(self.path)  # an evicted segment's cached copy
        with SegmentReader(source, self.valid_end) as reader:
            walk = SegmentWalk(
                reader,
                self.stream_id,
                self.next_offset,
                self.prev_hash,
                source.stat().st_size,
                dictionaries=self.dictionaries,
            )
            segment_no, new_entry, repair, new_tuple = self.segment_no, IndexEntry, RecordKind.REPAIR, tuple.__new__
            try:
                for record, position, size, batch_end in walk.frames():  # a rebuild: once per record
                    kind = record.kind
                    entry = new_entry(record.offset, segment_no, position, size, kind, record.timestamp_ns)
                    marker = decode_marker(record.payload) if kind is repair else None
                    # ScannedRecord(...) without its generated __new__'s frame: the same tuple, built directly
                    scanned = (entry, record.hash, len(record.payload), marker, record.global_position)
                    pending.append(new_tuple(ScannedRecord, scanned))
                    if batch_end:
                        yield pending
                        self.valid_end = position + size
                        self.next_offset, self.prev_hash = record.offset + 1, record.hash
                        pending = []
            except (FrameError, IntegrityError) as e:  # IncompleteFrame too
                self.problem = ScanProblem(walk.position, e.reason, unterminated=False, offset=walk.expected)
                if isinstance(e, DictionaryUnusable):
                    self.problem.dictionary = e
                self.pending = pending
                return
        if pending:
            self.problem = ScanProblem(
                pending[0].entry.position,
                "last batch has no end marker",
                unterminated=True,
                offset=pending[0].entry.offset,
            )
            self.pending = pending


@dataclass(slots=True)
class PlainScan:
    """What ``scan_plain_stream`` found: the stream's ``batches`` and checkpoint rows, its segments
    (segment_no, first offset, next offset, size), its head and the counts its streams row adds up."""

    rows: list[BatchRow]
    checkpoints: list[CheckpointRow]
    segments: list[tuple[int, int, int, int]]
    next_offset: int
    head: ChainHash
    events: int = 0
    payload_bytes: int = 0
    stored_bytes: int = 0


_PLAIN_CHUNK = 1 << 20


def scan_plain_stream(data_dir: Path, stream_id: StreamId) -> PlainScan | None:
    """The stream's rows, read by the compiled scan, if every segment (numbered from 0, none empty)
    holds nothing but complete batches of plain format-2 events and checkpoints that verify (see
    the module docstring); else None."""
    if speedups is None:
        return None
    numbers, _ = segment_numbers_on_disk(stream_path(data_dir, stream_id))
    if not numbers or numbers != list(range(len(numbers))):
        return None
    found = PlainScan([], [], [], 0, GENESIS_HASH)
    expected, link, last_position = 0, GENESIS_HASH, 0
    for segment_no in numbers:
        path = readable_path(segment_path(data_dir, stream_id, segment_no))
        first, position, want = expected, 0, _PLAIN_CHUNK
        with path.open("rb") as f:
            size = f.seek(0, 2)
            while position < size:
                f.seek(position)
                buf = f.read(min(want, size - position))
                rows, checkpoints, _, reached, expected, link, last_position, events, payload, stored, more = (
                    speedups.scan_plain(
                        buf, 0, position, size, stream_id, expected, link, last_position, segment_no, long_hash
                    )
                )
                if reached == position:  # not one whole batch taken: one longer than ``buf``, or not plain
                    if not more or len(buf) == size - position:
                        return None
                    want *= 2
                    continue
                _merge_rows(found.rows, rows)
                found.checkpoints += [CheckpointRow(stream_id, Offset(o), h, ts) for o, h, ts in checkpoints]
                found.events += events
                found.payload_bytes += payload
                found.stored_bytes += stored
                position, want = reached, _PLAIN_CHUNK
        if size == 0:
            return None
        found.segments.append((segment_no, first, expected, size))
    found.next_offset, found.head = expected, ChainHash(link)
    return found


def _merge_rows(rows: list[BatchRow], more: list[BatchRow]) -> None:
    """Append ``more`` to ``rows``, the first joining the last when they continue one another in
    one segment at one timestamp (``Catalog.insert_records`` makes one row of such a run)."""
    if rows and more:
        last, first = rows[-1], more[0]
        ends = unpack_frame_ends(last[6])
        if (
            first[4] == last[4]
            and first[0] == last[0] + last[3]
            and first[8] == last[8]
            and first[5] == last[5] + ends[-1]
        ):
            shift = ends[-1]
            joined = list(ends) + [end + shift for end in unpack_frame_ends(first[6])]
            kinds = (
                None
                if last[7] is None and first[7] is None
                else (last[7] or bytes(last[3])) + (first[7] or bytes(first[3]))
            )
            rows[-1] = (
                last[0],
                last[1],
                last[2],
                last[3] + first[3],
                last[4],
                last[5],
                pack_ends(joined),
                kinds,
                last[8],
            )
            more = more[1:]
    rows.extend(more)
