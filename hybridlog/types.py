"""Value types shared by every module: ids, offsets, hashes, record kinds, policies, and the
vocabularies that cross modules (recovery actions, repair marker actions, finding and repair kinds)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NewType, TypeVar, final

from hybridlog.errors import InvalidConfiguration, InvalidStreamId

StreamId = NewType("StreamId", int)
"""A stream's id: a non-negative integer below 2**63."""

Offset = NewType("Offset", int)
"""A record's position within its stream, counted in records from 0 (checkpoints included)."""

GlobalPosition = NewType("GlobalPosition", int)
"""A record's place in the store-wide order of commits: 1, 2, 3, ... (0: before the first record)."""

ChainHash = NewType("ChainHash", bytes)
"""A 32-byte BLAKE3 record hash; the hash of a stream's last record is its chain head."""

HASH_SIZE = 32
MAX_STREAM_ID = 2**63 - 1
MAX_POSITION = 2**63 - 1
"""The largest offset or global position a read may ask for (the catalog holds them as SQLite integers)."""
MAX_TIMESTAMP_NS = 2**63 - 1
"""The largest clock reading a record may carry: frames hold a u64, the catalog a signed 64-bit integer."""
MAX_EVENT_SIZE = 64 * 1024 * 1024
"""The largest event payload accepted, in bytes (before compression)."""

MIN_SEGMENT_SIZE = 4096
DEFAULT_MAX_SEGMENT_SIZE = 64 * 1024 * 1024
DEFAULT_CHECKPOINT_INTERVAL = 1000
DEFAULT_MAX_READ_BYTES = 1024 * 1024
"""How many payload bytes ``read_global`` and ``read_between`` return at most, unless told."""


class RecordKind(enum.IntEnum):
    """What a record holds; stored as one byte in the frame and in the catalog."""

    EVENT = 0
    CHECKPOINT = 1
    REPAIR = 2
    """A repair marker: a range of offsets that repair isolated or cut (``markers.py``)."""


class CompressionKind(enum.Enum):
    """How event payloads are stored. ZSTD is applied per record and kept only when smaller."""

    NONE = "none"
    ZSTD = "zstd"


class Vocabulary(enum.StrEnum):
    """A set of names stored in the catalog and printed as they are (text and ``--json``).

    A member is its string: it compares, hashes, formats, binds to SQL and encodes to JSON as its
    value, and its repr is the value's too, so messages and reprs read exactly as the plain strings
    did. The values are stored: never change one (``tests/test_vocabulary.py`` holds them).
    """

    def __repr__(self) -> str:
        return repr(self.value)


class RecoveryAction(Vocabulary):
    """What recovery or repair did, as ``recovery_log.action`` stores it (``docs/schema.md``)."""

    ADOPTED = "adopted"
    """Complete, chain-valid records the catalog missed, added to it (recovery on open)."""
    QUARANTINED = "quarantined"
    """Bytes never acknowledged (an incomplete batch, a segment past it) moved to a quarantine file."""
    REMOVED_EMPTY = "removed_empty"
    """An empty segment file the catalog does not know, removed."""
    TRIMMED = "trimmed"
    """Zero bytes past a segment's last record cut off: space a writer reserved ahead
    (``SegmentWriter.preallocate``) and did not give back because it stopped without closing."""
    REINDEXED = "reindexed"
    """A stream's catalog rows replaced with what its segments hold."""
    TRUNCATED = "truncated"
    """Committed records cut from a stream by repair, their bytes kept in quarantine files."""
    ISOLATED = "isolated"
    """Damaged records left in place and stepped over by reads (a repair marker says so)."""
    MARKED_CUT = "marked_cut"
    """Offsets a stream's cut marker now stands for."""
    RESEALED_DICTIONARY = "resealed_dictionary"
    """A dictionary file damaged outside its zstd dictionary, rewritten whole (the old one kept)."""
    REBUILT_CATALOG = "rebuilt_catalog"
    """The whole catalog built afresh from the segments (the old file kept aside)."""


class MarkerAction(Vocabulary):
    """What a repair did to a range of a stream's offsets: a repair marker's action
    (``markers.py``) and a ``gaps`` row's (``migrations/0004_gaps.sql``)."""

    ISOLATED = "isolated"
    """Damaged records left in place; reads resume after them."""
    CUT = "cut"
    """Records moved to quarantine; the stream's cut marker links past them."""


class FindingKind(Vocabulary):
    """What ``check`` found (``Finding.problem``)."""

    CATALOG_MISSING = "catalog_missing"
    CATALOG_UNUSABLE = "catalog_unusable"
    CATALOG_BEHIND = "catalog_behind"
    CATALOG_AHEAD = "catalog_ahead"
    CATALOG_MISMATCH = "catalog_mismatch"
    TORN_TAIL = "torn_tail"
    MISSING_SEGMENT = "missing_segment"
    DAMAGED_RECORD = "damaged_record"
    MISSING_DICTIONARY = "missing_dictionary"
    DAMAGED_DICTIONARY = "damaged_dictionary"
    FOREIGN_FILE = "foreign_file"
    """A file or directory under the store that is none of its own; reported, left alone."""
    ISOLATED_RECORDS = "isolated_records"
    """Records an earlier repair isolated; reported, nothing to do."""
    TREE_MISMATCH = "tree_mismatch"
    """The catalog's Merkle tree does not hash to the root of the leaves the segments give."""


class RepairKind(Vocabulary):
    """A repair ``check`` proposes and ``Storage.repair`` applies (``Finding.repair``, ``RepairStep.repair``)."""

    REBUILD_CATALOG = "rebuild_catalog"
    ISOLATE = "isolate"
    TRUNCATE = "truncate"
    REINDEX = "reindex"
    REBUILD_TREE = "rebuild_tree"


_V = TypeVar("_V", bound=Vocabulary)


def known(vocabulary: type[_V], value: str) -> _V | str:
    """``value`` (as read back from the catalog) as a member of ``vocabulary``, or unchanged when it
    is none: an older or newer store may hold a value this code does not know, which must not fail
    the read."""
    try:
        return vocabulary(value)
    except ValueError:
        return value


@dataclass(frozen=True, slots=True)
class CheckpointPolicy:
    """When the store writes checkpoint records on its own.

    ``every_records``: after this many event records since the last checkpoint (None: never).
    ``on_close``: when the store is closed, for every stream with records after its last checkpoint
    that this session appended to (or tried to). A stream a killed writer left with events after
    its last checkpoint gets one only from a later session that writes to it: a session that
    writes nothing (opened to read, check or migrate) leaves the store as it found it.
    ``create_checkpoint`` works under every policy.
    """

    every_records: int | None = DEFAULT_CHECKPOINT_INTERVAL
    on_close: bool = True

    def __post_init__(self) -> None:
        if self.every_records is not None and (
            isinstance(self.every_records, bool) or not isinstance(self.every_records, int) or self.every_records < 1
        ):
            raise ValueError(f"every_records must be a positive integer or None, not {self.every_records!r}")

    @classmethod
    def every(cls, records: int, *, on_close: bool = True) -> CheckpointPolicy:
        """A checkpoint after every ``records`` events."""
        return cls(every_records=records, on_close=on_close)

    @classmethod
    def close_only(cls) -> CheckpointPolicy:
        """A checkpoint only when the store is closed."""
        return cls(every_records=None, on_close=True)

    @classmethod
    def explicit(cls) -> CheckpointPolicy:
        """Checkpoints only through ``create_checkpoint``."""
        return cls(every_records=None, on_close=False)


_new_object = object.__new__
"""``object.__new__``, looked up once (``Record.__new__`` runs once per record read)."""


@final
@dataclass(frozen=True, slots=True, init=False)
class Record:
    """One verified record as read back from a stream.

    A frozen dataclass that is built without the frozen ``__init__`` (reads build one per record):
    ``__new__`` fills a ``_RecordSlots``, which stores with plain slot assignment, and then makes it
    a ``Record`` by ``__class__`` assignment (allowed between classes with the same ``__slots__``).
    That costs about a third of the generated ``__init__``, whose every field goes through
    ``object.__setattr__``; equality, hashing, repr, ``dataclasses.replace`` and friends are the
    dataclass's own, and assigning or deleting a field still raises ``FrozenInstanceError``. It is
    final, since ``__new__`` builds this class's layout only.
    """

    stream_id: StreamId
    offset: Offset
    kind: RecordKind
    timestamp_ns: int
    prev_hash: ChainHash
    hash: ChainHash
    payload: bytes
    global_position: GlobalPosition | None = None
    """The record's place in the store-wide order, as its frame carries it (None: a format-1 record,
    whose frame has none; its position is in the catalog only)."""

    def __new__(
        cls,
        stream_id: StreamId,
        offset: Offset,
        kind: RecordKind,
        timestamp_ns: int,
        prev_hash: ChainHash,
        hash: ChainHash,
        payload: bytes,
        global_position: GlobalPosition | None = None,
    ) -> Record:
        """A record holding these fields (positional or keyword, in the order above)."""
        self = _new_object(_RecordSlots)
        self.stream_id = stream_id
        self.offset = offset
        self.kind = kind
        self.timestamp_ns = timestamp_ns
        self.prev_hash = prev_hash
        self.hash = hash
        self.payload = payload
        self.global_position = global_position
        self.__class__ = cls  # type: ignore[assignment]  # the same slots: from here on, a Record
        return self  # type: ignore[return-value]

    def __init_subclass__(cls, **kwargs: object) -> None:
        """Refuse subclasses: one may add fields, slots or a ``__dict__``, which ``__new__`` cannot build."""
        raise TypeError(f"{cls.__name__}: Record is final and cannot be subclassed")

    def __reduce__(self) -> tuple[type[Record], tuple[object, ...]]:
        """Pickle and copy as a call with the fields (``__new__`` needs them all)."""
        return type(self), (
            self.stream_id,
            self.offset,
            self.kind,
            self.timestamp_ns,
            self.prev_hash,
            self.hash,
            self.payload,
            self.global_position,
        )

    @property
    def timestamp(self) -> int:
        """The append time in nanoseconds since the epoch (alias of ``timestamp_ns``)."""
        return self.timestamp_ns


class _RecordSlots:
    """A ``Record`` under construction: the same ``__slots__``, with Python's plain attribute
    assignment (``Record.__new__``)."""

    __slots__ = Record.__slots__
    stream_id: StreamId
    offset: Offset
    kind: RecordKind
    timestamp_ns: int
    prev_hash: ChainHash
    hash: ChainHash
    payload: bytes
    global_position: GlobalPosition | None


@final
@dataclass(frozen=True, slots=True, init=False)
class GlobalRecord:
    """A verified record with its position in the store-wide order (``read_global``).

    Built like ``Record``, for the same reason (one per record read in store-wide order), and final too.
    """

    global_position: GlobalPosition
    record: Record

    def __new__(cls, global_position: GlobalPosition, record: Record) -> GlobalRecord:
        """A global record holding these fields."""
        self = _new_object(_GlobalRecordSlots)
        self.global_position = global_position
        self.record = record
        self.__class__ = cls  # type: ignore[assignment]  # the same slots: from here on, a GlobalRecord
        return self  # type: ignore[return-value]

    def __init_subclass__(cls, **kwargs: object) -> None:
        """Refuse subclasses, as ``Record`` does."""
        raise TypeError(f"{cls.__name__}: GlobalRecord is final and cannot be subclassed")

    def __reduce__(self) -> tuple[type[GlobalRecord], tuple[object, ...]]:
        """Pickle and copy as a call with the fields (``__new__`` needs them all)."""
        return type(self), (self.global_position, self.record)


class _GlobalRecordSlots:
    """A ``GlobalRecord`` under construction (see ``_RecordSlots``)."""

    __slots__ = GlobalRecord.__slots__
    global_position: GlobalPosition
    record: Record


GENESIS_HASH = ChainHash(bytes(HASH_SIZE))
"""The ``prev_hash`` stored in a stream's first record."""


def check_stream_id(stream_id: object) -> StreamId:
    """Return ``stream_id`` as a StreamId, or raise InvalidStreamId before anything is touched."""
    if type(stream_id) is int and 0 <= stream_id <= MAX_STREAM_ID:  # the common case: one type test
        return stream_id  # type: ignore[return-value]  # a StreamId is an int (NewType)
    if isinstance(stream_id, bool) or not isinstance(stream_id, int):
        raise InvalidStreamId(f"stream id must be an int, not {type(stream_id).__name__}: {stream_id!r}")
    if not 0 <= stream_id <= MAX_STREAM_ID:
        raise InvalidStreamId(f"stream id must be in 0..2**63-1, not {stream_id}")
    return StreamId(int(stream_id))


def check_storage_settings(max_segment_size: object, verified_cache_records: object, busy_timeout: object) -> None:
    """InvalidConfiguration unless ``Storage``'s own settings are usable: a segment size limit of at
    least ``MIN_SEGMENT_SIZE`` bytes, a verified-run cache of 0 (off) or more records, and a busy
    timeout of 0 to 3600 seconds."""
    if isinstance(max_segment_size, bool) or not isinstance(max_segment_size, int):
        raise InvalidConfiguration(f"max_segment_size must be an int, not {type(max_segment_size).__name__}")
    if max_segment_size < MIN_SEGMENT_SIZE:
        raise InvalidConfiguration(f"max_segment_size must be at least {MIN_SEGMENT_SIZE} bytes")
    if isinstance(verified_cache_records, bool) or not isinstance(verified_cache_records, int):
        raise InvalidConfiguration("verified_cache_records must be an int")
    if verified_cache_records < 0:
        raise InvalidConfiguration("verified_cache_records must be 0 (off) or more")
    if isinstance(busy_timeout, bool) or not isinstance(busy_timeout, int | float) or not 0 <= busy_timeout <= 3600:
        raise InvalidConfiguration(f"busy_timeout must be 0 to 3600 seconds, not {busy_timeout!r}")
