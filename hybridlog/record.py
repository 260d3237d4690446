"""Record framing: the byte layout of one record in a segment file, and the record hash.

A segment file is a plain sequence of records, nothing before, between or after them. One record
in format 2 (the one written)::

    offset  size  field
         0     4  magic            b"HLR1": the start of a record (every format)
         4     1  version          format version: 2 (1 in older stores; read, never written)
         5     1  kind             0 event, 1 checkpoint, 2 repair marker (``markers.py``)
         6     1  flags            bit 0: payload is zstd-compressed; bit 1: last record of its batch;
                                   bit 2: compressed with the stream's dictionary (bit 0 set too)
         7     1  reserved         0
         8     8  stream_id        u64
        16     8  offset           u64, the record's position in its stream
        24     8  global_position  u64, the record's position in the store-wide order (from 1)
        32     8  timestamp        u64, nanoseconds since the epoch
        40     4  stored_len       u32, payload bytes as stored (after compression)
        44     4  raw_len          u32, payload bytes before compression
        48    32  prev_hash        hash of the record before (32 zero bytes for offset 0)
        80    32  hash             this record's hash (below)
       112     N  payload          stored_len bytes

Format 1 has no ``global_position`` field (its header is the same without bytes 24..31, 104 bytes)
and ends with a 4-byte CRC-32 (zlib) of the header and stored payload. The version byte, at the
same place in both, says which layout a frame has. All integers are little-endian.

A format-2 frame has no checksum: the record hash covers every field but ``flags`` and
``stored_len``, and both are checked through it (a wrong length or compression flag gives other
payload bytes, so another hash); the batch-end flag alone is checked against the catalog's batch
rows by ``verify``. So a record is told valid or not on its own by its hash: a torn write or
garbage fails it without looking at the next record. (Measured: the CRC cost about a third of the
time of framing and of a verified read of a 256-byte event, and proved nothing the hash does not.)

The record hash of format 2 is BLAKE3 over the header's first 80 bytes as they are written for
an uncompressed record that ends no batch (``flags`` 0, ``stored_len`` = ``raw_len``), then the
uncompressed payload: one hash over header and payload (the magic and version byte open it, so it
is its own domain tag). Format 1 hashed::

    b"hybridlog.record\\x00" | version u8 (1) | stream_id u64 | offset u64 | kind u8 | timestamp u64
    | prev_hash (32) | raw_len u64 | uncompressed payload

Either way a record cannot be moved to another stream, offset or (format 2) place in the
store-wide order, re-timed, or re-linked without changing its hash, and compression does not
change it. ``docs/format.md`` repeats this with test vectors.

A payload compressed with one of its stream's trained zstd dictionaries (flag bit 2) is a zstd
frame carrying that dictionary's id (``dictionary_id``: ``DICTIONARY_ID_BASE`` + the dictionary's
number, which names its file: ``dictionary.py``). Decoding it needs that file; since the hash
covers the uncompressed payload, a wrong or damaged dictionary cannot go unnoticed.
"""

from __future__ import annotations

import struct
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, cast

import blake3
import zstandard

from hybridlog.native import long_hash, speedups
from hybridlog.types import MAX_EVENT_SIZE, ChainHash, RecordKind

MAGIC = b"HLR1"
RECORD_KINDS = frozenset(int(kind) for kind in RecordKind)
FORMAT_VERSION = 2
"""The frame format new records are written in."""
LEGACY_FORMAT_VERSION = 1
"""The frame format of stores written before global positions were in the frames: read, never written."""
HASH_DOMAIN = b"hybridlog.record\x00"

FLAG_COMPRESSED = 0x01
FLAG_BATCH_END = 0x02
FLAG_DICTIONARY = 0x04
KNOWN_FLAGS = FLAG_COMPRESSED | FLAG_BATCH_END | FLAG_DICTIONARY

COMPRESSION_LEVEL = 3

# zstd reserves dictionary ids below 32768 (and from 2**31 on), so ours start at 32768. Ids below
# 65536 take 2 bytes in a zstd frame header.
DICTIONARY_ID_BASE = 32768
MAX_DICTIONARY_NO = 2**31 - 1 - DICTIONARY_ID_BASE

HEADER = struct.Struct("<4sBBBBQQQQII32s32s")  # format 2
HEADER_SIZE = HEADER.size
HEADER_V1 = struct.Struct("<4sBBBBQQQII32s32s")  # format 1: no global_position
HEADER_V1_SIZE = HEADER_V1.size
MIN_HEADER_SIZE = HEADER_V1_SIZE
"""Bytes a reader needs before it knows a frame's version and so its header size."""
CHECKSUM = struct.Struct("<I")
CHECKSUM_SIZE = CHECKSUM.size
FRAME_OVERHEAD = HEADER_SIZE  # format 2: no checksum
FRAME_OVERHEAD_V1 = HEADER_V1_SIZE + CHECKSUM_SIZE
VERSION_BYTE = 4
"""Where the version byte is in every frame."""

HASHED_HEADER = struct.Struct("<4sBBBBQQQQII32s")  # format 2's header up to the hash: what its hash covers
HASH_FIELD = HASHED_HEADER.size  # 80: where the hash is in a format-2 header
_HASH_PREFIX_V1 = struct.Struct(f"<{len(HASH_DOMAIN)}sBQQBQ32sQ")

# The stored payload of a compressed record may be larger than its raw payload only if we
# wrote it uncompressed, so this bounds every stored_len a valid record can have.
MAX_STORED_LEN = MAX_EVENT_SIZE

assert HEADER_SIZE == 112
assert HEADER.size == HASHED_HEADER.size + 32  # the hash ends the header
assert FORMAT_VERSION == 2  # append_frames writes the literal 2
assert HEADER_V1_SIZE == 104

_frame_plain = speedups.frame_plain if speedups is not None else None


def record_hash(
    stream_id: int,
    offset: int,
    kind: int,
    timestamp_ns: int,
    prev_hash: bytes,
    payload: bytes | bytearray | memoryview,
    global_position: int | None,
) -> ChainHash:
    """The BLAKE3 hash of a record, over its identity, its link and its uncompressed payload.

    ``global_position`` None: a format-1 record (which has none), hashed as format 1 does.
    """
    # Everything before the payload is packed in one go: one struct call, one hasher update.
    raw_len = len(payload)
    if global_position is None:
        prefix = _HASH_PREFIX_V1.pack(
            HASH_DOMAIN, LEGACY_FORMAT_VERSION, stream_id, offset, kind, timestamp_ns, prev_hash, raw_len
        )
    else:
        prefix = HASHED_HEADER.pack(
            MAGIC,
            FORMAT_VERSION,
            kind,
            0,
            0,
            stream_id,
            offset,
            global_position,
            timestamp_ns,
            raw_len,
            raw_len,
            prev_hash,
        )
    return ChainHash(blake3.blake3(prefix).update(payload).digest())


@dataclass(frozen=True, slots=True)
class FrameHeader:
    """The fixed-size fields of one record frame, as read from a segment."""

    kind: int
    flags: int
    stream_id: int
    offset: int
    global_position: int | None  # None in a format-1 frame
    timestamp_ns: int
    stored_len: int
    raw_len: int
    prev_hash: ChainHash
    hash: ChainHash

    def hash_of(self, payload: bytes | bytearray | memoryview) -> ChainHash:
        """The record hash this header's fields and the uncompressed ``payload`` give (``record_hash``)."""
        return record_hash(
            self.stream_id, self.offset, self.kind, self.timestamp_ns, self.prev_hash, payload, self.global_position
        )

    @property
    def header_size(self) -> int:
        """Bytes of the frame's header (112 in format 2, 104 in format 1)."""
        return HEADER_V1_SIZE if self.global_position is None else HEADER_SIZE

    @property
    def checksum_size(self) -> int:
        """Bytes of the checksum after the payload (4 in format 1; format 2 has none)."""
        return CHECKSUM_SIZE if self.global_position is None else 0

    @property
    def frame_size(self) -> int:
        """Bytes the whole frame takes in its segment: header, stored payload and (format 1) checksum."""
        return self.header_size + self.stored_len + self.checksum_size

    @property
    def compressed(self) -> bool:
        """Whether the stored payload is zstd-compressed."""
        return bool(self.flags & FLAG_COMPRESSED)

    @property
    def batch_end(self) -> bool:
        """Whether this record is the last of its batch (a batch without one was never completed)."""
        return bool(self.flags & FLAG_BATCH_END)

    @property
    def uses_dictionary(self) -> bool:
        """Whether the payload was compressed with one of the stream's dictionaries."""
        return bool(self.flags & FLAG_DICTIONARY)


class FrameError(Exception):
    """A frame that is not a valid record; ``reason`` says why. Callers turn it into a StorageError."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def header_problem(
    magic: bytes, version: int, kind: int, flags: int, reserved: int, stored_len: int, raw_len: int
) -> str | None:
    """Why these header fields are not a record's frame header; None when they are.

    The one list of frame-header rules: ``parse_header`` raises its answer as a FrameError, and the
    fast walk (``walk.SegmentWalk``) stops where it is not None.
    """
    if magic != MAGIC:
        return "no record magic"
    if version != FORMAT_VERSION and version != LEGACY_FORMAT_VERSION:
        return f"unknown format version {version}"
    if kind not in RECORD_KINDS or flags & ~KNOWN_FLAGS or reserved:
        return "invalid kind or flags"
    if stored_len > MAX_STORED_LEN or raw_len > MAX_EVENT_SIZE:
        return "length out of range"
    if not flags & FLAG_COMPRESSED and stored_len != raw_len:
        return "uncompressed length mismatch"
    if flags & FLAG_DICTIONARY and not flags & FLAG_COMPRESSED:
        return "dictionary flag on an uncompressed payload"
    return None


def header_size_of(data: bytes | memoryview) -> int:
    """The header size of the frame ``data`` starts with (it must hold ``MIN_HEADER_SIZE`` bytes)."""
    return HEADER_V1_SIZE if data[VERSION_BYTE] == LEGACY_FORMAT_VERSION else HEADER_SIZE


def parse_header(data: bytes | memoryview) -> FrameHeader:
    """Decode and sanity-check a frame header of either format (``frame_checksum`` gives the checksum
    to compare); ``data`` must hold the whole header (``header_size_of`` says how long it is)."""
    global_position: int | None
    if len(data) > VERSION_BYTE and data[VERSION_BYTE] == LEGACY_FORMAT_VERSION:
        magic, version, kind, flags, reserved, stream_id, offset, ts, stored_len, raw_len, prev, own = HEADER_V1.unpack(
            data[:HEADER_V1_SIZE]
        )
        global_position = None
    else:
        (
            magic,
            version,
            kind,
            flags,
            reserved,
            stream_id,
            offset,
            global_position,
            ts,
            stored_len,
            raw_len,
            prev,
            own,
        ) = HEADER.unpack(data[:HEADER_SIZE])
    problem = header_problem(magic, version, kind, flags, reserved, stored_len, raw_len)
    if problem is not None:
        raise FrameError(problem)
    return FrameHeader(
        kind, flags, stream_id, offset, global_position, ts, stored_len, raw_len, ChainHash(prev), ChainHash(own)
    )


def frame_checksum(header: bytes | memoryview, stored: bytes | bytearray | memoryview) -> int:
    """A format-1 frame's checksum: CRC-32 of the header, then the stored payload (bytes 0 .. 104+N)."""
    return zlib.crc32(stored, zlib.crc32(header))


def check_frame(frame: bytes | memoryview) -> None:
    """Raise FrameError unless a whole format-1 frame (checksum included) matches its checksum
    (a format-2 frame has none: its hash is checked when it is opened as a record)."""
    view = memoryview(frame)
    if view[VERSION_BYTE] != LEGACY_FORMAT_VERSION:
        return
    (stored,) = CHECKSUM.unpack(view[-CHECKSUM_SIZE:])
    size = header_size_of(view)
    if frame_checksum(view[:size], view[size:-CHECKSUM_SIZE]) != stored:
        raise FrameError("checksum mismatch")


def dictionary_id(dictionary_no: int) -> int:
    """The zstd dictionary id of a stream's dictionary number ``dictionary_no``."""
    if not 0 <= dictionary_no <= MAX_DICTIONARY_NO:
        raise ValueError(f"dictionary number {dictionary_no} out of range")
    return DICTIONARY_ID_BASE + dictionary_no


def dictionary_no_of(dict_id: int) -> int | None:
    """The dictionary number a zstd dictionary id stands for (None: not one of ours)."""
    no = dict_id - DICTIONARY_ID_BASE
    return no if 0 <= no <= MAX_DICTIONARY_NO else None


class DictionarySource(Protocol):
    """Where dictionary-compressed payloads find their dictionary (``dictionary.DictionaryCache``)."""

    def decompressor(self, stream_id: int, dictionary_no: int) -> zstandard.ZstdDecompressor:
        """A decompressor holding the stream's dictionary ``dictionary_no``; FrameError if there is none."""
        ...


_per_thread = threading.local()


def _decompressor() -> zstandard.ZstdDecompressor:
    """One decompressor per thread: creating one per record costs more than decompressing it."""
    found: zstandard.ZstdDecompressor | None = getattr(_per_thread, "decompressor", None)
    if found is None:
        found = _per_thread.decompressor = zstandard.ZstdDecompressor()
    return found


def decode_payload(
    header: FrameHeader, stored: bytes | memoryview, dictionaries: DictionarySource | None = None
) -> bytes:
    """The uncompressed payload, never allocating more than the header's ``raw_len``."""
    if not header.compressed:
        return bytes(stored)
    return decode_stored(stored, header.flags, header.raw_len, header.stream_id, dictionaries)


def decode_stored(
    stored: bytes | memoryview, flags: int, raw_len: int, stream_id: int, dictionaries: DictionarySource | None
) -> bytes:
    """Decompress a compressed stored payload (``flags`` has bit 0 set); FrameError if it cannot be."""
    if not flags & FLAG_DICTIONARY:
        return decompress_payload(stored, raw_len)
    try:
        dict_id = zstandard.get_frame_parameters(stored).dict_id
    except zstandard.ZstdError as e:
        raise FrameError(f"zstd: {e}") from e
    dictionary_no = dictionary_no_of(dict_id)
    if dictionary_no is None:
        raise FrameError(f"flagged as compressed with a stream dictionary, but names dictionary id {dict_id}")
    if dictionaries is None:
        raise FrameError("compressed with a stream dictionary, and no dictionaries were given to decode it")
    return decompress_payload(stored, raw_len, dictionaries.decompressor(stream_id, dictionary_no))


def decompress_payload(
    stored: bytes | memoryview, raw_len: int, decompressor: zstandard.ZstdDecompressor | None = None
) -> bytes:
    """Decompress a stored payload that must come out exactly ``raw_len`` bytes long (FrameError if not).

    ``decompressor``: one holding the payload's dictionary (default: a plain one).
    """
    try:
        # We always write the content size; refusing frames without it (or with another size)
        # bounds the output buffer, so a crafted frame cannot act as a decompression bomb.
        if zstandard.frame_content_size(stored) != raw_len:
            raise FrameError("compressed size does not match raw_len")
        payload = (decompressor or _decompressor()).decompress(stored, max_output_size=raw_len)
    except zstandard.ZstdError as e:
        raise FrameError(f"zstd: {e}") from e
    if len(payload) != raw_len:
        raise FrameError("decompressed size does not match raw_len")
    return payload


class PayloadCompressor:
    """How payloads are compressed: a zstd compressor, and the flags a payload it shrank carries.

    Plain (``new_compressor``) or holding a stream's dictionary (``dictionary_compressor``). Like
    the zstd compressor inside it, one serves one thread at a time.
    """

    __slots__ = ("flags", "zstd")

    def __init__(self, dictionary: zstandard.ZstdCompressionDict | None = None) -> None:
        # The content size is always written: ``decompress_payload`` needs it to bound its output.
        # A dictionary's id goes into every frame compressed with it (zstd's default).
        self.zstd = zstandard.ZstdCompressor(
            level=COMPRESSION_LEVEL, dict_data=dictionary, write_content_size=True, write_checksum=False
        )
        self.flags = FLAG_COMPRESSED if dictionary is None else FLAG_COMPRESSED | FLAG_DICTIONARY

    def compress(self, payload: bytes | bytearray | memoryview) -> bytes:
        """The zstd frame of ``payload`` (whether it is stored so is ``choose_stored``'s call)."""
        return self.zstd.compress(payload)


def choose_stored(
    payload: bytes | bytearray | memoryview, compressor: PayloadCompressor | None
) -> tuple[bytes | bytearray | memoryview, int]:
    """What to store for ``payload``, and the compression flags that say how (0: as it is).

    The compressed form is kept only when it is strictly shorter; an empty payload is never
    compressed.
    """
    if compressor is not None and payload:
        squeezed = compressor.zstd.compress(payload)
        if len(squeezed) < len(payload):
            return squeezed, compressor.flags
    return payload, 0


def append_frames(
    out: bytearray,
    records: Sequence[tuple[int, bytes | bytearray | memoryview]],
    *,
    stream_id: int,
    first_offset: int,
    first_global_position: int,
    timestamp_ns: int,
    prev_hash: bytes,
    batch_end: bool,
    compressor: PayloadCompressor | None,
) -> FramedRecords:
    """Frame ``records`` (kind, payload) as consecutive offsets and global positions onto the end of ``out``.

    Each record is hashed, linked to the one before and optionally compressed (kept only when
    smaller), in format 2. With ``batch_end`` the last record is flagged as the end of its batch.

    This is the append hot loop: it binds what it calls to locals, packs each header once (and
    again only for a record whose flags are not 0: compressed, or the batch's last), hashes it
    with the payload in one hasher, and makes no per-record objects besides the frame bytes.
    """
    if compressor is None and _frame_plain is not None:  # the compiled twin of this loop (native.py)
        return FramedRecords(
            *_frame_plain(
                out,
                records,
                stream_id,
                first_offset,
                first_global_position,
                timestamp_ns,
                prev_hash,
                batch_end,
                long_hash,
            )
        )
    hasher, pack_head = blake3.blake3(), HASHED_HEADER.pack  # one hasher, reset per record: cheaper than a new one
    ends: list[int] = []
    specials: list[tuple[int, int, bytes]] = []
    offset, position, prev = first_offset, first_global_position, prev_hash
    flagged = len(records) - 1 if batch_end else -1  # the one record with flags even uncompressed
    for i, (kind, payload) in enumerate(records):
        raw_len = len(payload)
        head = pack_head(MAGIC, 2, kind, 0, 0, stream_id, offset, position, timestamp_ns, raw_len, raw_len, prev)
        hasher.reset()
        hasher.update(head)
        own = hasher.update(payload).digest()
        if compressor is not None or i == flagged:
            stored, flags = choose_stored(payload, compressor) if compressor is not None else (payload, 0)
            if i == flagged:
                flags |= FLAG_BATCH_END
            if flags:
                head = pack_head(
                    MAGIC, 2, kind, flags, 0, stream_id, offset, position, timestamp_ns, len(stored), raw_len, prev
                )
            payload = stored
        out += head
        out += own
        out += payload
        ends.append(len(out))
        if kind:
            specials.append((i, kind, own))
        offset += 1
        position += 1
        prev = own
    return FramedRecords(ends, cast(list[tuple[int, int, ChainHash]], specials), ChainHash(prev))


@dataclass(frozen=True, slots=True)
class FramedRecords:
    """What ``append_frames`` framed: where each frame ends in the buffer, the (index, kind, hash)
    of each record that is not an event (checkpoints, repair markers), and the last record's hash."""

    ends: list[int]
    specials: list[tuple[int, int, ChainHash]]
    last_hash: ChainHash


def append_frame(
    out: bytearray,
    *,
    stream_id: int,
    offset: int,
    global_position: int,
    kind: int,
    timestamp_ns: int,
    prev_hash: bytes,
    payload: bytes | bytearray | memoryview,
    batch_end: bool,
    compressor: PayloadCompressor | None,
) -> ChainHash:
    """Frame one record onto the end of ``out`` and return its hash (``append_frames`` for one)."""
    return append_frames(
        out,
        [(kind, payload)],
        stream_id=stream_id,
        first_offset=offset,
        first_global_position=global_position,
        timestamp_ns=timestamp_ns,
        prev_hash=prev_hash,
        batch_end=batch_end,
        compressor=compressor,
    ).last_hash


def new_compressor() -> PayloadCompressor:
    """The plain zstd compressor used for payloads (content size written: ``decode_payload`` needs it)."""
    return PayloadCompressor()


def dictionary_compressor(dictionary: zstandard.ZstdCompressionDict) -> PayloadCompressor:
    """A compressor for payloads of the stream ``dictionary`` was trained for (flag bit 2 on its records)."""
    return PayloadCompressor(dictionary)


CHECKPOINT_PAYLOAD = struct.Struct("<8sQ")
CHECKPOINT_MAGIC = b"HLCKPT01"


def checkpoint_payload(record_count: int) -> bytes:
    """The payload of a checkpoint record: a tag and the number of records before it."""
    return CHECKPOINT_PAYLOAD.pack(CHECKPOINT_MAGIC, record_count)
