"""Scanning a segment for recovery, rebuild and repair: the one home of ``SegmentScan``.

``SegmentScan`` walks a segment (``walk.SegmentWalk``, the verifying walk) to its end in complete
batches, and says where and why it stopped early (``ScanProblem``, which ``diagnose.py`` judges):
a torn last batch, a bad record, a dictionary it cannot use. Each verified record comes out as a
``ScannedRecord``: its index entry, hash, payload size, repair marker and the global position its
frame carries.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from hybridlog.catalog_rows import IndexEntry
from hybridlog.dictionary import DictionaryCache
from hybridlog.errors import DictionaryUnusable, IntegrityError
from hybridlog.layout import segment_path
from hybridlog.markers import RepairMarker, decode_marker
from hybridlog.record import DictionarySource, FrameError
from hybridlog.segment import SegmentReader
from hybridlog.types import ChainHash, RecordKind, StreamId
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
        with SegmentReader(self.path, self.valid_end) as reader:
            walk = SegmentWalk(
                reader,
                self.stream_id,
                self.next_offset,
                self.prev_hash,
                self.path.stat().st_size,
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
