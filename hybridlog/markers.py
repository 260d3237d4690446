"""Repair markers: records (kind 2) that say, inside the hash chain, what a repair did to a stream.

A repair never rewrites bytes in place, and it never gives an offset out twice. What it did is
written into the stream itself as a marker record, chained like any other record, so a catalog
rebuilt from the segments alone can tell a repaired gap from new damage:

* ``isolated``: offsets ``first_offset .. next_offset - 1`` are damaged and were isolated. Their
  bytes stay where they are (segment ``segment_no`` from byte ``start_byte`` to ``end_byte``,
  which may run into later segments); the records after them verify against the link the first
  of them stores. The marker goes at the head of the stream, after the records it vouches for.
* ``cut``: offsets ``first_offset .. next_offset - 1`` were cut from the stream (their bytes moved
  to quarantine files, or already gone). The marker itself takes offset ``next_offset``, the
  offset after the highest one the stream ever committed, and links to the record before
  ``first_offset``: the one place where a stream's offsets jump, and the jump is covered by the
  marker's hash.

Payload layout (56 bytes, little-endian)::

    offset  size  field
         0     8  magic         b"HLREPAIR"
         8     1  action        1 isolated, 2 cut
         9     7  reserved      zero
        16     8  first_offset  u64, the first offset of the range
        24     8  next_offset   u64, the offset after the range
        32     8  segment_no    u64, the segment where the range's bytes begin
        40     8  start_byte    u64, where they begin in it
        48     8  end_byte      u64, the byte after them (in the segment where reading resumes)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hybridlog.errors import RecordIsolated, RecordsCut, RecordsUnavailable
from hybridlog.layout import segment_path
from hybridlog.types import MarkerAction, RecordKind

if TYPE_CHECKING:
    from pathlib import Path

    from hybridlog.catalog_rows import GapRow

MARKER_MAGIC = b"HLREPAIR"
MARKER_PAYLOAD = struct.Struct("<8sB7sQQQQQ")
_ACTION_CODES = {MarkerAction.ISOLATED: 1, MarkerAction.CUT: 2}
_ACTIONS = {code: name for name, code in _ACTION_CODES.items()}

assert MARKER_PAYLOAD.size == 56


@dataclass(frozen=True, slots=True)
class RepairMarker:
    """What one repair did to a range of a stream's offsets (see the module docstring)."""

    action: MarkerAction
    first_offset: int
    next_offset: int
    segment_no: int
    start_byte: int
    end_byte: int

    @property
    def records(self) -> int:
        """How many offsets the marker covers."""
        return self.next_offset - self.first_offset

    def encode(self) -> bytes:
        """The marker as a repair record's 56-byte payload (the layout in the module docstring)."""
        return MARKER_PAYLOAD.pack(
            MARKER_MAGIC,
            _ACTION_CODES[self.action],
            bytes(7),
            self.first_offset,
            self.next_offset,
            self.segment_no,
            self.start_byte,
            self.end_byte,
        )


def decode_marker(payload: bytes) -> RepairMarker | None:
    """The marker a repair record's payload holds (None: not a well-formed marker payload)."""
    if len(payload) != MARKER_PAYLOAD.size:
        return None
    magic, code, reserved, first, nxt, segment_no, start, end = MARKER_PAYLOAD.unpack(payload)
    if magic != MARKER_MAGIC or code not in _ACTIONS or any(reserved) or not first < nxt:
        return None
    return RepairMarker(_ACTIONS[code], first, nxt, segment_no, start, end)


def is_cut_jump(kind: int, payload: bytes, expected_offset: int, offset: int) -> bool:
    """Whether a record at ``offset`` may follow the record before ``expected_offset``: only a
    cut marker may, and only one naming exactly the offsets it steps over."""
    if kind != RecordKind.REPAIR or offset <= expected_offset:
        return False
    marker = decode_marker(payload)
    return (
        marker is not None
        and marker.action == MarkerAction.CUT
        and marker.first_offset == expected_offset
        and marker.next_offset == offset
    )


def unavailable(data_dir: Path, gap: GapRow, offset: int) -> RecordsUnavailable:
    """The error for a read that reaches ``offset`` inside a gap repair made."""
    sid = gap.stream_id
    where = f"offsets {gap.first_offset}..{gap.next_offset - 1}"
    more = f"the stream reads on from offset {gap.next_offset}"
    if gap.action == MarkerAction.ISOLATED:
        return RecordIsolated(
            f"damaged record isolated by repair ({where}; {more})",
            first_offset=gap.first_offset,
            next_offset=gap.next_offset,
            stream_id=sid,
            offset=offset,
            segment=segment_path(data_dir, sid, gap.segment_no),
            position=gap.start_byte,
            hint="its bytes are kept in place; read from the offset after the gap",
        )
    return RecordsCut(
        f"record cut from the stream by repair ({where}; {more})",
        first_offset=gap.first_offset,
        next_offset=gap.next_offset,
        stream_id=sid,
        offset=offset,
        hint="the cut bytes are in the stream's *.quarantine files; the catalog's recovery_log table names each one",
    )
