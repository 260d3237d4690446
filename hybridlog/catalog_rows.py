"""What the catalog's rows hold: its schema versions, the row types its queries return, and the
checks every row read passes before its values reach arithmetic.

A damaged page can hand back text, a blob or NULL where an integer was stored (STRICT tables check
types when a row is written, not when it is read); ``require_*`` turn that into CatalogMismatch
with the place and the command that fixes it (``damaged_hint``).
"""

from __future__ import annotations

import sys
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast, final

from hybridlog.db import catalog_migrations
from hybridlog.errors import CatalogMismatch
from hybridlog.record import CHECKPOINT_PAYLOAD, FRAME_OVERHEAD, FRAME_OVERHEAD_V1, MAX_STORED_LEN
from hybridlog.types import ChainHash, GlobalPosition, MarkerAction, Offset, RecordKind, RecoveryAction, StreamId

SCHEMA_VERSION = len(catalog_migrations())
GLOBAL_ORDER_VERSION = 3
"""The schema version that added global positions (``migrations/0003_global_order.sql``)."""
GAPS_VERSION = 4
"""The schema version that added repair gaps (``migrations/0004_gaps.sql``)."""
APPLICATION_ID_VERSION = 5
"""The schema version that sets the file's ``application_id`` (``migrations/0005_application_id.sql``)."""
BATCHES_VERSION = 6
"""The schema version whose index has one row per batch (``migrations/0006_batches.sql``)."""
RECORD_KIND_VALUES = frozenset(int(kind) for kind in RecordKind)
APPLICATION_ID = 0x484C4F47
"""SQLite's ``application_id`` of a hybridlog catalog: "HLOG"."""


def damaged_hint(data_dir: Path) -> str:
    """What to run when the catalog holds something its segments contradict (or its schema forbids)."""
    return f"see it with `hybridlog check {data_dir}`, fix it with `hybridlog repair {data_dir}`"


def require_ints(
    values: tuple[object, ...], what: str, path: Path, stream_id: int | None, offset: int | None = None
) -> None:
    """Refuse a row whose integer columns hold something else.

    STRICT tables check types when a row is written, not when it is read: a damaged page can hand
    back text, a blob or NULL where an integer was stored, which must not reach arithmetic.
    """
    for value in values:
        if type(value) is not int:
            raise CatalogMismatch(
                f"the catalog's {what} holds {value!r} where an integer belongs",
                stream_id=stream_id,
                offset=offset,
                hint=damaged_hint(path.parent),
            )


def require_hash(value: object, what: str, path: Path, stream_id: int, offset: int | None = None) -> ChainHash:
    """``value`` as a chain hash if it is 32 bytes; CatalogMismatch naming ``what`` otherwise."""
    if not isinstance(value, bytes) or len(value) != 32:
        raise CatalogMismatch(
            f"the catalog's {what} holds {value!r} where a 32-byte hash belongs",
            stream_id=stream_id,
            offset=offset,
            hint=damaged_hint(path.parent),
        )
    return ChainHash(value)


def require_kind(value: int, path: Path, stream_id: int, offset: int) -> RecordKind:
    """``value`` as a RecordKind; CatalogMismatch if the offset index holds a number that is no kind."""
    try:
        return RecordKind(value)
    except ValueError:
        raise CatalogMismatch(
            f"the catalog's offset index holds record kind {value!r}, which is no kind",
            stream_id=stream_id,
            offset=offset,
            hint=damaged_hint(path.parent),
        ) from None


@dataclass(frozen=True, slots=True)
class StreamRow:
    """A ``streams`` row: where a stream's chain ends (next offset, head hash) and what it holds."""

    stream_id: StreamId
    next_offset: Offset
    chain_head: ChainHash | None
    event_count: int
    last_timestamp_ns: int | None


@dataclass(frozen=True, slots=True)
class SegmentRow:
    """A ``segments`` row: a segment's offset range and committed size; ``digest`` once it is sealed."""

    stream_id: StreamId
    segment_no: int
    first_offset: Offset
    next_offset: Offset
    size_bytes: int
    sealed: bool
    digest: bytes | None


BatchRow = tuple[int, int, int, int, int, int, bytes, bytes | None, int]
"""A ``batches`` row: global_position (of its first record), stream_id, first_offset, record_count,
segment_no, position (of its first frame), frame_ends, kinds, timestamp_ns."""

BATCH_COLUMNS = (
    "global_position, stream_id, first_offset, record_count, segment_no, position, frame_ends, kinds, timestamp_ns"
)


def pack_frame_ends(ends: list[int]) -> bytes:
    """The ``frame_ends`` blob: each record's frame end, relative to the batch's first frame, as u32 LE."""
    packed = array("I", ends)
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tobytes()


def unpack_frame_ends(blob: bytes) -> array[int]:
    """The frame ends a ``frame_ends`` blob holds (ValueError if its length is not a multiple of 4)."""
    ends = array("I")
    ends.frombytes(blob)
    if sys.byteorder == "big":
        ends.byteswap()
    return ends


def pack_kinds(kinds: list[int]) -> bytes | None:
    """The ``kinds`` blob: None when every record is an event, else one byte per record."""
    return bytes(kinds) if any(kinds) else None


MIN_FRAME_SIZE = min(FRAME_OVERHEAD, FRAME_OVERHEAD_V1)
"""The least bytes a frame takes: an empty payload's frame (108 bytes in format 1, 112 in format 2)."""


MAX_FRAME_SIZE = MAX_STORED_LEN + max(FRAME_OVERHEAD, FRAME_OVERHEAD_V1)
"""The most bytes a frame takes: the largest stored payload's frame."""


def _a_frame_apart(end: int, following: int) -> bool:
    return MIN_FRAME_SIZE <= following - end <= MAX_FRAME_SIZE


def expand_batch(row: tuple[object, ...], path: Path, stream_id: int | None) -> list[IndexRow]:
    """The per-record rows a ``batches`` row stands for, its values checked (CatalogMismatch if damaged)."""
    require_ints((*row[:6], row[8]), "batches row", path, stream_id)
    position, sid, first, count, no, byte, ends_blob, kinds_blob, ts = cast(BatchRow, row)
    try:
        if not isinstance(ends_blob, bytes) or not (kinds_blob is None or isinstance(kinds_blob, bytes)):
            raise ValueError("not blobs")
        ends = unpack_frame_ends(ends_blob)
        kinds = bytes(count) if kinds_blob is None else kinds_blob
        if len(ends) != count or len(kinds) != count or count < 1 or any(k not in RECORD_KIND_VALUES for k in kinds):
            raise ValueError("wrong lengths")
        # every frame has a length a frame can have (a damaged blob could give a negative length, or
        # one past any file, which the sizes a global read adds up would take as real)
        if not MIN_FRAME_SIZE <= ends[0] <= MAX_FRAME_SIZE or not all(map(_a_frame_apart, ends, ends[1:])):
            raise ValueError("frame ends that are not a frame apart")
    except ValueError as e:
        raise CatalogMismatch(
            f"the catalog's batches row at global position {position} is damaged ({e})",
            stream_id=StreamId(sid),
            offset=first,
            hint=damaged_hint(path.parent),
        ) from e
    rows: list[IndexRow] = []
    start = 0
    for i, end in enumerate(ends):
        rows.append((position + i, sid, first + i, no, byte + start, end - start, kinds[i], ts))
        start = end
    return rows


IndexRow = tuple[int, int, int, int, int, int, int, int]
"""One record's place, as ``expand_batch`` gives it: global_position, stream_id, offset, segment_no,
position, length, kind, timestamp_ns."""


@dataclass(frozen=True, slots=True)
class GlobalRow:
    """Where one record is in the store-wide order: its position, stream, offset and frame length."""

    global_position: GlobalPosition
    stream_id: StreamId
    offset: Offset
    length: int


@final
@dataclass(frozen=True, slots=True, init=False)
class IndexEntry:
    """Where one record is: its segment, byte position and frame length.

    Built like ``types.Record`` (a scan or rebuild makes one per record): ``__new__`` fills a
    ``_IndexEntrySlots`` with plain slot assignment, then makes it an ``IndexEntry``.
    """

    offset: Offset
    segment_no: int
    position: int
    length: int
    kind: RecordKind
    timestamp_ns: int

    def __new__(
        cls, offset: Offset, segment_no: int, position: int, length: int, kind: RecordKind, timestamp_ns: int
    ) -> IndexEntry:
        """An entry holding these fields (positional or keyword, in the order above)."""
        self = _new_object(_IndexEntrySlots)
        self.offset, self.segment_no, self.position = offset, segment_no, position
        self.length, self.kind, self.timestamp_ns = length, kind, timestamp_ns
        self.__class__ = cls  # type: ignore[assignment]  # the same slots: from here on, an IndexEntry
        return self  # type: ignore[return-value]

    def __reduce__(self) -> tuple[type[IndexEntry], tuple[object, ...]]:
        """Pickle and copy as a call with the fields (``__new__`` needs them all)."""
        return type(self), (self.offset, self.segment_no, self.position, self.length, self.kind, self.timestamp_ns)


class _IndexEntrySlots:
    """An ``IndexEntry`` under construction: the same ``__slots__``, plain attribute assignment."""

    __slots__ = IndexEntry.__slots__
    offset: Offset
    segment_no: int
    position: int
    length: int
    kind: RecordKind
    timestamp_ns: int


_new_object = object.__new__


@dataclass(frozen=True, slots=True)
class CheckpointRow:
    """A ``checkpoints`` row: the hash a verified read can start from at ``offset``."""

    stream_id: StreamId
    offset: Offset
    hash: ChainHash
    timestamp_ns: int


@dataclass(frozen=True, slots=True)
class RecoveryEntry:
    """One row of ``recovery_log``: something recovery or repair found and what it did about it."""

    stream_id: StreamId | None
    found: str
    action: RecoveryAction | str
    """A RecoveryAction; a plain str when this code does not know the value (another version's)."""
    segment_no: int | None = None
    start_byte: int | None = None
    end_byte: int | None = None
    first_offset: int | None = None
    next_offset: int | None = None
    kept_as: str | None = None
    detail: str | None = None
    at_ns: int = 0


@dataclass(frozen=True, slots=True)
class StreamStats:
    """One stream's size and shape, as ``hybridlog stats`` shows it."""

    stream_id: StreamId
    records: int
    events: int
    checkpoints: int
    segments: int
    sealed_segments: int
    stored_bytes: int
    payload_bytes: int
    first_timestamp_ns: int | None
    last_timestamp_ns: int | None

    @property
    def stored_payload_bytes(self) -> int:
        """Bytes the event payloads take on disk: frames less their headers and checkpoint bodies."""
        return self.stored_bytes - self.records * FRAME_OVERHEAD - self.checkpoints * CHECKPOINT_PAYLOAD.size

    @property
    def compression_ratio(self) -> float | None:
        """Payload bytes before compression over payload bytes stored (1.0: uncompressed)."""
        stored = self.stored_payload_bytes
        return self.payload_bytes / stored if stored > 0 else None


@dataclass(frozen=True, slots=True)
class GapRow:
    """A ``gaps`` row: offsets ``first_offset .. next_offset - 1`` of a stream that repair isolated
    (damaged, left in place; reading resumes at ``resume_segment_no``/``resume_byte`` with the
    stored link ``link_hash``) or cut (moved to quarantine; the stream's cut marker links past them)."""

    stream_id: StreamId
    first_offset: Offset
    next_offset: Offset
    action: MarkerAction | str
    """A MarkerAction; a plain str only if the row holds a value this code does not know."""
    segment_no: int
    start_byte: int
    resume_segment_no: int | None = None
    resume_byte: int | None = None
    link_hash: ChainHash | None = None

    def holds(self, offset: int) -> bool:
        """Whether ``offset`` is one of the gap's offsets."""
        return self.first_offset <= offset < self.next_offset


@dataclass(frozen=True, slots=True)
class StreamSnapshot:
    """What a reader needs, read in one transaction so the parts agree with each other.

    ``resume``: set when the read starts after an isolated gap later than the checkpoint anchor:
    the walk then starts at the record after the gap and trusts its stored link to it, as it
    would trust a checkpoint's hash. ``gaps``: the stream's gaps, by offset.
    """

    stream: StreamRow
    segments: list[SegmentRow]
    anchor: CheckpointRow | None
    start: IndexEntry | None
    gaps: list[GapRow] = field(default_factory=list)
    resume: GapRow | None = None
