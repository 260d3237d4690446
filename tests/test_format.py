"""The on-disk record format: the test vectors in docs/format.md, round trips, bounded decompression.

Contracts tested here:

* every format-2 ``hybridlog-vector`` block in ``docs/format.md`` is exactly what
  ``record.append_frame`` produces from the listed inputs (frame bytes and record hash), every
  format-1 block is exactly the frame this file builds from the documented format-1 layout, each
  ``hash_input`` is the hash input the document describes for its format, and decoding the frame
  gives the inputs back; a vector's dictionary file is laid out as documented and is exactly the
  file the writer makes;
* the chained vectors are, byte for byte, the segment file a ``Storage`` writes for those appends;
  the format-1 vectors still read back as verified records, followed by format-2 ones in the same
  segment (and a store made of them reads, appends, verifies and rebuilds keeping positions);
* any record (stream id, offset, global position, kind, timestamp, payload, compression on or off)
  survives ``append_frame`` -> segment file -> ``SegmentReader`` / ``open_record`` unchanged, batch
  ends included, and its hash does not depend on compression;
* a format-2 frame has no checksum, yet a changed global position, ``flags`` or ``stored_len``
  is caught (through the hash, the header rules or the payload's decoding; the batch-end flag by
  ``verify``), and a format-1 frame after a format-2 one in a stream is refused;
* a compressed payload whose zstd frame lies about (or omits) its content size is refused with
  ``FrameError`` without allocating more than ``raw_len`` bytes, with or without a dictionary.
"""

from __future__ import annotations

import functools
import json
import random
import re
import struct
import tracemalloc
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import blake3
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from hybridlog import (
    GENESIS_HASH,
    MAX_EVENT_SIZE,
    ChainHash,
    CheckpointPolicy,
    ChecksumMismatch,
    CompressionKind,
    HashMismatch,
    RecordKind,
    Storage,
    StreamId,
)
from hybridlog.dictionary import DictionaryUnavailable, StreamDictionary, parse_dictionary_file
from hybridlog.layout import segment_path
from hybridlog.record import (
    CHECKPOINT_MAGIC,
    FLAG_BATCH_END,
    FLAG_COMPRESSED,
    FLAG_DICTIONARY,
    FRAME_OVERHEAD,
    FrameError,
    PayloadCompressor,
    append_frame,
    check_frame,
    checkpoint_payload,
    decode_payload,
    dictionary_compressor,
    dictionary_id,
    new_compressor,
    parse_header,
    record_hash,
)
from hybridlog.scan import SegmentScan
from hybridlog.segment import SegmentReader
from hybridlog.testing.damage import genesis_records
from hybridlog.verify import verify_store
from hybridlog.walk import SegmentWalk, open_record

FORMAT_DOC = Path(__file__).resolve().parent.parent / "docs" / "format.md"
VECTOR_BLOCK = re.compile(r"^```hybridlog-vector\n(.*?)^```$", re.MULTILINE | re.DOTALL)

# The layouts as docs/format.md states them, written out here rather than imported, so that the
# tests compare the code against the document and not against itself.
DOC_HEADER = struct.Struct("<4sBBBBQQQQII32s32s")  # format 2 (section 2)
HEADER_SIZE = 112
DOC_HASH_FIELDS = struct.Struct("<4sBBBBQQQQII32s")  # the format-2 hash input's header (section 3)
DOC_HEADER_V1 = struct.Struct("<4sBBBBQQQII32s32s")  # format 1 (section 2, "Format 1")
HEADER_SIZE_V1 = 104
DOC_HASH_FIELDS_V1 = struct.Struct("<BQQBQ")  # format 1's hash input, after its domain tag (section 3)
DOC_HASH_DOMAIN_V1 = b"hybridlog.record\x00"
DOC_DICTIONARY_HEADER = struct.Struct("<4sB3sQQI")
DOC_DICTIONARY_ID_BASE = 32768


# --- the vectors -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Vector:
    """One test vector from docs/format.md: the inputs and the bytes they must produce."""

    name: str
    format: int
    stream_id: int
    offset: int
    global_position: int | None  # None in format 1
    kind: int
    timestamp_ns: int
    prev_hash: bytes
    payload: bytes
    batch_end: bool
    compression: bool
    dictionary_no: int | None
    dictionary_file: bytes | None
    flags: int
    stored_len: int
    raw_len: int
    checksum: int | None  # format 1 only
    hash_input: bytes
    frame: bytes
    hash: bytes


def parse_vector_block(block: str) -> Vector:
    """Parse one vector block: ``key: value`` lines, ``#`` comments, indented continuation lines."""
    fields: dict[str, str] = {}
    key: str | None = None
    for line in block.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("  "):
            assert key is not None, f"continuation line before any key: {line!r}"
            fields[key] += line.strip()
            continue
        key, sep, value = line.partition(":")
        assert sep, f"not a key: value line: {line!r}"
        assert key not in fields, f"key {key} given twice"
        fields[key] = value.strip()

    def integer(name: str) -> int:
        return int(fields[name], 0)

    def hexbytes(name: str) -> bytes:
        return bytes.fromhex(fields[name])

    def flag(name: str) -> bool:
        assert fields[name] in ("true", "false"), f"{name} must be true or false"
        return fields[name] == "true"

    assert fields["compression"] in ("none", "zstd", "zstd-dictionary")
    with_dictionary = fields["compression"] == "zstd-dictionary"
    assert with_dictionary == ("dictionary_file" in fields) == ("dictionary_no" in fields)
    version = integer("format")
    assert version in (1, 2), f"unknown format {version}"
    assert ("global_position" in fields) == (version == 2), "global_position is given in format 2 only"
    assert ("checksum" in fields) == (version == 1), "checksum is given in format 1 only"
    return Vector(
        name=fields["name"],
        format=version,
        stream_id=integer("stream_id"),
        offset=integer("offset"),
        global_position=integer("global_position") if version == 2 else None,
        kind=integer("kind"),
        timestamp_ns=integer("timestamp_ns"),
        prev_hash=hexbytes("prev_hash"),
        payload=hexbytes("payload"),
        batch_end=flag("batch_end"),
        compression=fields["compression"] != "none",
        dictionary_no=integer("dictionary_no") if with_dictionary else None,
        dictionary_file=hexbytes("dictionary_file") if with_dictionary else None,
        flags=integer("flags"),
        stored_len=integer("stored_len"),
        raw_len=integer("raw_len"),
        checksum=integer("checksum") if version == 1 else None,
        hash_input=hexbytes("hash_input"),
        frame=hexbytes("frame"),
        hash=hexbytes("hash"),
    )


def load_vectors(path: Path = FORMAT_DOC) -> list[Vector]:
    return [parse_vector_block(m.group(1)) for m in VECTOR_BLOCK.finditer(path.read_text(encoding="utf-8"))]


VECTORS = load_vectors()
BY_NAME = {v.name: v for v in VECTORS}
CHAIN = ["event-genesis", "event-batch-end", "event-compressed", "checkpoint"]
V1_CHAIN = ["v1-event-genesis", "v1-event-batch-end", "v1-event-compressed"]
V2_VECTORS = [v for v in VECTORS if v.format == 2]
V1_VECTORS = [v for v in VECTORS if v.format == 1]


def doc_dictionary(vector: Vector) -> bytes:
    """The zstd dictionary inside a vector's dictionary file, read by the layout docs/format.md states."""
    content = vector.dictionary_file
    assert content is not None, f"{vector.name} has no dictionary file"
    magic, version, reserved, stream_id, number, length = DOC_DICTIONARY_HEADER.unpack_from(content)
    assert (magic, version, reserved) == (b"HLZD", 1, bytes(3))
    assert (stream_id, number) == (vector.stream_id, vector.dictionary_no)
    assert len(content) == DOC_DICTIONARY_HEADER.size + length + 32
    assert blake3.blake3(content[:-32]).digest() == content[-32:]
    return content[DOC_DICTIONARY_HEADER.size : DOC_DICTIONARY_HEADER.size + length]


class VectorDictionaries:
    """A dictionary source holding one vector's dictionary (and refusing any other)."""

    def __init__(self, vector: Vector) -> None:
        self.key = (vector.stream_id, vector.dictionary_no)
        self.dictionary = zstandard.ZstdCompressionDict(doc_dictionary(vector), dict_type=zstandard.DICT_TYPE_FULLDICT)

    def decompressor(self, stream_id: int, dictionary_no: int) -> zstandard.ZstdDecompressor:
        assert (stream_id, dictionary_no) == self.key
        return zstandard.ZstdDecompressor(dict_data=self.dictionary)


def compressor_of(vector: Vector) -> PayloadCompressor | None:
    if vector.dictionary_file is not None:
        return dictionary_compressor(VectorDictionaries(vector).dictionary)
    return new_compressor() if vector.compression else None


def frame_of(vector: Vector) -> bytes:
    """What ``append_frame`` makes of a (format-2) vector's inputs."""
    assert vector.global_position is not None, f"{vector.name} is not a format-2 vector"
    out = bytearray()
    own = append_frame(
        out,
        stream_id=vector.stream_id,
        offset=vector.offset,
        global_position=vector.global_position,
        kind=vector.kind,
        timestamp_ns=vector.timestamp_ns,
        prev_hash=vector.prev_hash,
        payload=vector.payload,
        batch_end=vector.batch_end,
        compressor=compressor_of(vector),
    )
    assert own == vector.hash, f"{vector.name}: append_frame returned hash {own.hex()}"
    return bytes(out)


def doc_hash_input(
    stream_id: int,
    offset: int,
    kind: int,
    timestamp_ns: int,
    prev: bytes,
    payload: bytes,
    global_position: int | None,
) -> bytes:
    """The record hash input exactly as docs/format.md section 3 lays it out (``global_position``
    None: format 1's)."""
    raw_len = len(payload)
    if global_position is None:
        fields = DOC_HASH_FIELDS_V1.pack(1, stream_id, offset, kind, timestamp_ns)
        return DOC_HASH_DOMAIN_V1 + fields + prev + struct.pack("<Q", raw_len) + payload
    head = DOC_HASH_FIELDS.pack(
        b"HLR1", 2, kind, 0, 0, stream_id, offset, global_position, timestamp_ns, raw_len, raw_len, prev
    )
    return head + payload


def doc_stored(payload: bytes, compressed: bool) -> tuple[bytes, int]:
    """The stored payload and compression flag section 7 prescribes (zstd level 3, content size
    written, kept only when strictly shorter), made with zstandard directly."""
    if compressed and payload:
        squeezed = zstandard.ZstdCompressor(level=3, write_content_size=True).compress(payload)
        if len(squeezed) < len(payload):
            return squeezed, FLAG_COMPRESSED
    return payload, 0


def doc_frame_v1(
    *,
    stream_id: int,
    offset: int,
    kind: int,
    timestamp_ns: int,
    prev: bytes,
    payload: bytes,
    batch_end: bool,
    compressed: bool = False,
) -> bytes:
    """A format-1 frame built from the layout docs/format.md states (no hybridlog code): header,
    stored payload, CRC-32 of both."""
    own = blake3.blake3(doc_hash_input(stream_id, offset, kind, timestamp_ns, prev, payload, None)).digest()
    stored, flags = doc_stored(payload, compressed)
    flags |= FLAG_BATCH_END if batch_end else 0
    lengths = (len(stored), len(payload))
    header = DOC_HEADER_V1.pack(b"HLR1", 1, kind, flags, 0, stream_id, offset, timestamp_ns, *lengths, prev, own)
    body = header + stored
    return body + struct.pack("<I", zlib.crc32(body))


def test_the_document_holds_the_required_vectors() -> None:
    """The doc has an event at genesis, a linked batch end, a compressed record and a checkpoint, at
    a new store's first global positions, and format-1 vectors of the same records."""
    assert set(CHAIN) <= set(BY_NAME), f"vectors found: {sorted(BY_NAME)}"
    genesis, second, compressed, checkpoint = (BY_NAME[n] for n in CHAIN)
    assert all(BY_NAME[n].format == 2 for n in CHAIN)
    assert [BY_NAME[n].global_position for n in CHAIN] == [1, 2, 3, 4]
    assert (genesis.stream_id, genesis.offset, genesis.kind) == (0, 0, RecordKind.EVENT)
    assert genesis.prev_hash == GENESIS_HASH
    assert not genesis.batch_end
    assert second.prev_hash == genesis.hash
    assert second.batch_end
    assert second.offset == 1
    assert compressed.flags & FLAG_COMPRESSED
    assert compressed.stored_len < compressed.raw_len
    assert compressed.prev_hash == second.hash
    assert checkpoint.kind == RecordKind.CHECKPOINT
    assert checkpoint.prev_hash == compressed.hash
    assert checkpoint.payload == checkpoint_payload(checkpoint.offset)
    assert checkpoint.payload[:8] == CHECKPOINT_MAGIC
    with_dictionary = BY_NAME["event-dictionary"]
    assert with_dictionary.flags == FLAG_COMPRESSED | FLAG_BATCH_END | FLAG_DICTIONARY
    assert with_dictionary.stored_len < with_dictionary.raw_len
    assert with_dictionary.dictionary_no is not None
    assert with_dictionary.dictionary_file is not None

    assert set(V1_CHAIN) <= set(BY_NAME), f"vectors found: {sorted(BY_NAME)}"
    link: bytes = GENESIS_HASH
    for v1_name, v2_name in zip(V1_CHAIN, CHAIN[: len(V1_CHAIN)], strict=True):
        old, new = BY_NAME[v1_name], BY_NAME[v2_name]
        assert old.format == 1
        assert (old.stream_id, old.offset, old.kind, old.timestamp_ns, old.payload, old.batch_end) == (
            new.stream_id,
            new.offset,
            new.kind,
            new.timestamp_ns,
            new.payload,
            new.batch_end,
        )
        assert old.prev_hash == link
        assert old.hash != new.hash  # another hash input
        link = old.hash


@pytest.mark.parametrize("vector", V2_VECTORS, ids=[v.name for v in V2_VECTORS])
def test_append_frame_produces_the_vector(vector: Vector) -> None:
    """append_frame gives exactly the documented frame bytes and record hash."""
    assert frame_of(vector).hex() == vector.frame.hex()
    own = record_hash(
        vector.stream_id,
        vector.offset,
        vector.kind,
        vector.timestamp_ns,
        vector.prev_hash,
        vector.payload,
        vector.global_position,
    )
    assert own == vector.hash


@pytest.mark.parametrize("vector", V1_VECTORS, ids=[v.name for v in V1_VECTORS])
def test_format1_vector_is_the_documented_layout(vector: Vector) -> None:
    """A format-1 vector is the frame the documented format-1 layout gives, and record_hash with no
    global position is its hash (format-1 frames are read, never written, so no writer makes them)."""
    frame = doc_frame_v1(
        stream_id=vector.stream_id,
        offset=vector.offset,
        kind=vector.kind,
        timestamp_ns=vector.timestamp_ns,
        prev=vector.prev_hash,
        payload=vector.payload,
        batch_end=vector.batch_end,
        compressed=vector.compression,
    )
    assert frame.hex() == vector.frame.hex()
    own = record_hash(
        vector.stream_id, vector.offset, vector.kind, vector.timestamp_ns, vector.prev_hash, vector.payload, None
    )
    assert own == vector.hash


@pytest.mark.parametrize("vector", VECTORS, ids=[v.name for v in VECTORS])
def test_vector_hash_input_is_the_documented_layout(vector: Vector) -> None:
    """The hash is BLAKE3 of the documented hash input, built here from the inputs independently."""
    expected = doc_hash_input(
        vector.stream_id,
        vector.offset,
        vector.kind,
        vector.timestamp_ns,
        vector.prev_hash,
        vector.payload,
        vector.global_position,
    )
    assert vector.hash_input == expected
    assert blake3.blake3(vector.hash_input).digest() == vector.hash
    if vector.format == 2 and vector.flags == 0:
        # A plain record that ends no batch: the hash input is the frame minus its hash field.
        assert vector.hash_input == vector.frame[:80] + vector.frame[HEADER_SIZE:]


@pytest.mark.parametrize("vector", VECTORS, ids=[v.name for v in VECTORS])
def test_vector_frame_decodes_to_its_inputs(vector: Vector) -> None:
    """parse_header / check_frame / decode_payload return the inputs; the frame is laid out as documented."""
    frame = vector.frame
    check_frame(frame)
    header = parse_header(frame)
    assert header.kind == vector.kind
    assert header.flags == vector.flags
    assert header.batch_end == vector.batch_end
    assert header.compressed == bool(vector.flags & FLAG_COMPRESSED)
    assert vector.compression or not header.compressed
    assert (header.stream_id, header.offset, header.global_position, header.timestamp_ns) == (
        vector.stream_id,
        vector.offset,
        vector.global_position,
        vector.timestamp_ns,
    )
    assert (header.stored_len, header.raw_len) == (vector.stored_len, vector.raw_len)
    assert header.raw_len == len(vector.payload)
    assert header.prev_hash == vector.prev_hash
    assert header.hash == vector.hash

    # The documented layout, read with the document's own struct.
    if vector.format == 2:
        assert header.frame_size == len(frame) == HEADER_SIZE + vector.stored_len == FRAME_OVERHEAD + vector.stored_len
        magic, version, kind, flags, reserved, sid, offset, position, ts, stored_len, raw_len, prev, own = (
            DOC_HEADER.unpack(frame[:HEADER_SIZE])
        )
        assert (magic, version, reserved, position) == (b"HLR1", 2, 0, vector.global_position)
        stored = frame[HEADER_SIZE:]
    else:
        assert header.frame_size == len(frame) == HEADER_SIZE_V1 + vector.stored_len + 4
        magic, version, kind, flags, reserved, sid, offset, ts, stored_len, raw_len, prev, own = DOC_HEADER_V1.unpack(
            frame[:HEADER_SIZE_V1]
        )
        assert (magic, version, reserved) == (b"HLR1", 1, 0)
        assert zlib.crc32(frame[:-4]) == vector.checksum == struct.unpack("<I", frame[-4:])[0]
        stored = frame[HEADER_SIZE_V1:-4]
    assert (kind, flags, sid, offset, ts) == (
        vector.kind,
        vector.flags,
        vector.stream_id,
        vector.offset,
        vector.timestamp_ns,
    )
    assert (stored_len, raw_len, prev, own) == (vector.stored_len, vector.raw_len, vector.prev_hash, vector.hash)
    assert len(stored) == header.stored_len

    if vector.dictionary_file is None:
        assert not header.uses_dictionary
        assert decode_payload(header, stored) == vector.payload
    else:
        assert header.uses_dictionary
        # The zstd frame names the dictionary by its id, 32768 + its number.
        dict_id = zstandard.get_frame_parameters(stored).dict_id
        assert dict_id == DOC_DICTIONARY_ID_BASE + (vector.dictionary_no or 0)
        assert decode_payload(header, stored, VectorDictionaries(vector)) == vector.payload
        with pytest.raises(FrameError, match="no dictionaries"):
            decode_payload(header, stored)


@pytest.mark.parametrize("vector", [v for v in VECTORS if v.dictionary_file is not None], ids=lambda v: v.name)
def test_vector_dictionary_file_is_the_file_the_writer_makes(tmp_path: Path, vector: Vector) -> None:
    """The documented .zdict bytes parse as that stream's dictionary, and a writer makes exactly them."""
    assert vector.dictionary_file is not None
    assert vector.dictionary_no is not None
    inner = doc_dictionary(vector)
    parsed = parse_dictionary_file(
        vector.dictionary_file, stream_id=vector.stream_id, number=vector.dictionary_no, path=tmp_path / "x.zdict"
    )
    assert parsed.data == inner
    assert parsed.zstd.dict_id() == DOC_DICTIONARY_ID_BASE + vector.dictionary_no
    assert StreamDictionary(vector.stream_id, vector.dictionary_no, inner).file_bytes() == vector.dictionary_file


@pytest.mark.parametrize(
    ("chain", "batches"),
    [(CHAIN, [[0, 1], [2], [3]]), (V1_CHAIN, [[0, 1], [2]])],
    ids=["format-2", "format-1"],
)
def test_chained_vectors_read_back_as_verified_records(
    tmp_path: Path, chain: list[str], batches: list[list[int]]
) -> None:
    """The chain's frames in a segment file open as verified records linked from genesis, in their
    batches, each with the global position its frame carries (none in format 1)."""
    path = write_segment(tmp_path, 0, b"".join(BY_NAME[n].frame for n in chain))
    prev: bytes = GENESIS_HASH
    with SegmentReader(path) as reader:
        for name in chain:
            vector = BY_NAME[name]
            frame = reader.read_frame()
            assert frame is not None
            record = open_record(
                frame, stream_id=StreamId(0), expected_offset=vector.offset, prev_hash=prev, segment=path
            )
            assert (record.kind, record.timestamp_ns, record.payload, record.global_position) == (
                vector.kind,
                vector.timestamp_ns,
                vector.payload,
                vector.global_position,
            )
            assert (record.prev_hash, record.hash) == (vector.prev_hash, vector.hash)
            prev = record.hash
        assert reader.read_frame() is None

    scan = SegmentScan(tmp_path, StreamId(0), 0, position=0, next_offset=0, prev_hash=GENESIS_HASH)
    scanned = list(scan.batches())
    assert [[r.entry.offset for r in batch] for batch in scanned] == batches
    assert [r.global_position for batch in scanned for r in batch] == [BY_NAME[n].global_position for n in chain]
    assert scan.problem is None
    assert scan.prev_hash == BY_NAME[chain[-1]].hash


def v2_frames_after(link: bytes, first_offset: int, first_position: int, payloads: list[bytes]) -> bytes:
    """Format-2 frames of stream 0 (one batch) continuing a chain at ``first_offset``."""
    out = bytearray()
    for i, payload in enumerate(payloads):
        link = append_frame(
            out,
            stream_id=0,
            offset=first_offset + i,
            global_position=first_position + i,
            kind=RecordKind.EVENT,
            timestamp_ns=BY_NAME["checkpoint"].timestamp_ns,
            prev_hash=link,
            payload=payload,
            batch_end=i == len(payloads) - 1,
            compressor=None,
        )
    return bytes(out)


def test_format1_frames_then_format2_frames_in_one_segment(tmp_path: Path) -> None:
    """A format-2 batch after the format-1 chain, in the same segment, links to it and verifies:
    through the scan, and through the fast walk that verified reads use."""
    old = [BY_NAME[n] for n in V1_CHAIN]
    path = write_segment(tmp_path, 0, b"".join(v.frame for v in old))
    more = v2_frames_after(old[-1].hash, len(old), 7, [b"after", b"the upgrade"])
    path.write_bytes(path.read_bytes() + more)

    scan = SegmentScan(tmp_path, StreamId(0), 0, position=0, next_offset=0, prev_hash=GENESIS_HASH)
    scanned = [r for batch in scan.batches() for r in batch]
    assert scan.problem is None
    assert [r.entry.offset for r in scanned] == [0, 1, 2, 3, 4]
    assert [r.global_position for r in scanned] == [None, None, None, 7, 8]
    assert [r.hash for r in scanned[:3]] == [v.hash for v in old]
    assert scan.valid_end == path.stat().st_size

    with SegmentReader(path) as reader:
        walk = SegmentWalk(reader, StreamId(0), 0, GENESIS_HASH, path.stat().st_size)
        walked = [(record.offset, record.global_position, at) for record, at, _size, _end in walk.frames()]
    v1_ends = [sum(len(v.frame) for v in old[:i]) for i in range(len(old) + 1)]
    assert walked[:3] == [(i, None, v1_ends[i]) for i in range(3)]
    assert walked[3:] == [(3, 7, v1_ends[3]), (4, 8, v1_ends[3] + HEADER_SIZE + len(b"after"))]


def test_a_format1_frame_after_a_format2_frame_is_refused(tmp_path: Path) -> None:
    """A stream's format-1 records come first: one after a format-2 record stops the walk there,
    although its checksum, hash and link are all right."""
    first = v2_frames_after(GENESIS_HASH, 0, 1, [b"new format"])
    own = parse_header(first).hash
    late = doc_frame_v1(
        stream_id=0, offset=1, kind=RecordKind.EVENT, timestamp_ns=5, prev=own, payload=b"old format", batch_end=True
    )
    check_frame(late)  # a good format-1 frame in itself
    path = write_segment(tmp_path, 0, first + late)
    with SegmentReader(path) as reader:
        reader.read_frame()
        frame = reader.read_frame()
    assert frame is not None
    record = open_record(frame, stream_id=StreamId(0), expected_offset=1, prev_hash=own, segment=path)
    assert record.global_position is None  # the frame alone verifies; its place in the stream does not

    scan = SegmentScan(tmp_path, StreamId(0), 0, position=0, next_offset=0, prev_hash=GENESIS_HASH)
    assert [[r.entry.offset for r in batch] for batch in scan.batches()] == [[0]]
    assert scan.problem is not None
    assert (scan.problem.offset, scan.problem.position) == (1, len(first))
    assert "global position" in scan.problem.reason
    assert not scan.problem.unterminated


# --- what stands in for the checksum ----------------------------------------------------------------
# A format-2 frame has no CRC: its hash covers every header field but flags and stored_len, and a
# wrong value in either of those is caught through what the payload decodes to (section 3).


def damaged_chain(name: str, change: Callable[[bytearray], None]) -> bytes:
    """The four chained vectors back to back, the frame of vector ``name`` changed by ``change``."""
    frames = [bytearray(BY_NAME[n].frame) for n in CHAIN]
    change(frames[CHAIN.index(name)])
    return b"".join(frames)


def scan_chain(directory: Path, data: bytes) -> tuple[SegmentScan, list[int]]:
    """Scan ``data`` as segment 0 of stream 0: the scan, and the offsets of the batches it accepted."""
    write_segment(directory, 0, data)
    scan = SegmentScan(directory, StreamId(0), 0, position=0, next_offset=0, prev_hash=GENESIS_HASH)
    return scan, [r.entry.offset for batch in scan.batches() for r in batch]


def accepted_before(offset: int) -> list[int]:
    """The offsets of the chain's batches (``[0, 1], [2], [3]``) that end before ``offset``."""
    return [o for batch in ([0, 1], [2], [3]) if batch[-1] < offset for o in batch]


def put(field: struct.Struct, at: int, value: int) -> Callable[[bytearray], None]:
    """A change that writes ``value`` into a frame's header at byte ``at``, as ``field`` packs it."""

    def change(frame: bytearray) -> None:
        field.pack_into(frame, at, value)

    return change


U8, U32, U64 = struct.Struct("<B"), struct.Struct("<I"), struct.Struct("<Q")
FLAGS_AT, GLOBAL_POSITION_AT, STORED_LEN_AT = 6, 24, 40  # section 2


@pytest.mark.parametrize(
    ("name", "position"),
    [("event-genesis", 0), ("event-genesis", 2), ("event-compressed", 4), ("checkpoint", 5), ("checkpoint", 2**64 - 1)],
)
def test_a_changed_global_position_fails_the_hash(tmp_path: Path, name: str, position: int) -> None:
    """A record moved to another place in the store-wide order (even one that keeps the stream's
    positions increasing) no longer matches its hash."""
    vector = BY_NAME[name]
    frame = bytearray(vector.frame)
    put(U64, GLOBAL_POSITION_AT, position)(frame)
    assert parse_header(bytes(frame)).global_position == position
    path = write_segment(tmp_path, 0, bytes(frame))
    with SegmentReader(path) as reader:
        read = reader.read_frame()
    assert read is not None
    with pytest.raises(HashMismatch):
        open_record(read, stream_id=StreamId(0), expected_offset=vector.offset, prev_hash=None, segment=path)

    scan, offsets = scan_chain(tmp_path, damaged_chain(name, put(U64, GLOBAL_POSITION_AT, position)))
    assert scan.problem is not None
    assert scan.problem.offset == vector.offset
    assert "hash" in scan.problem.reason
    assert offsets == accepted_before(vector.offset)


def or_flags(bits: int) -> Callable[[bytearray], None]:
    """A change that sets ``bits`` in a frame's flags."""

    def change(frame: bytearray) -> None:
        frame[FLAGS_AT] |= bits

    return change


def add_to_stored_len(delta: int) -> Callable[[bytearray], None]:
    """A change that moves a frame's stored_len by ``delta``."""

    def change(frame: bytearray) -> None:
        U32.pack_into(frame, STORED_LEN_AT, U32.unpack_from(frame, STORED_LEN_AT)[0] + delta)

    return change


FLAG_AND_LENGTH_DAMAGE = {
    "compressed bit on a plain payload": ("event-batch-end", or_flags(FLAG_COMPRESSED), "zstd"),
    "compressed bit cleared": ("event-compressed", put(U8, FLAGS_AT, FLAG_BATCH_END), "length mismatch"),
    "dictionary bit on a plain zstd frame": ("event-compressed", or_flags(FLAG_DICTIONARY), "dictionary id 0"),
    "dictionary bit alone": ("event-genesis", put(U8, FLAGS_AT, FLAG_DICTIONARY), "dictionary flag"),
    "unknown flag bit": ("event-genesis", or_flags(0x80), "invalid kind or flags"),
    "plain stored_len one longer": ("event-genesis", add_to_stored_len(1), "length mismatch"),
    "plain stored_len one shorter": ("event-batch-end", add_to_stored_len(-1), "length mismatch"),
    "compressed stored_len one shorter": ("event-compressed", add_to_stored_len(-1), "zstd"),
    "compressed stored_len past the file's end": ("event-compressed", add_to_stored_len(1000), "file ends"),
}


@pytest.mark.parametrize("damage", list(FLAG_AND_LENGTH_DAMAGE))
def test_flags_and_stored_len_damage_is_caught_without_a_checksum(tmp_path: Path, damage: str) -> None:
    """A wrong compression flag, an unknown bit or a wrong stored length stops the walk at that
    record: the records before it verify, and nothing from it on is accepted."""
    name, change, reason = FLAG_AND_LENGTH_DAMAGE[damage]
    offset = BY_NAME[name].offset
    scan, offsets = scan_chain(tmp_path, damaged_chain(name, change))
    assert scan.problem is not None
    assert (scan.problem.offset, scan.problem.position) == (
        offset,
        sum(len(BY_NAME[n].frame) for n in CHAIN[:offset]),
    )
    assert reason in scan.problem.reason
    assert offsets == accepted_before(offset)


def test_a_compressed_stored_len_one_longer_is_caught_at_the_next_frame(tmp_path: Path) -> None:
    """zstd stops at the end of its frame, so a compressed record whose stored_len takes in the
    next frame's first byte still decodes to its own payload and hash (the record is intact); the
    next frame, looked for one byte late, is not a frame, and the walk stops there."""
    scan, offsets = scan_chain(tmp_path, damaged_chain("event-compressed", add_to_stored_len(1)))
    assert scan.problem is not None
    at = sum(len(BY_NAME[n].frame) for n in CHAIN[:3])
    assert (scan.problem.offset, scan.problem.position, scan.problem.reason) == (3, at + 1, "no record magic")
    assert offsets == [0, 1, 2]


def store_with_batch_end_flag(store_dir: Path, name: str, flags: int) -> list[bytes]:
    """A store holding the first two chained vectors (one batch) and a second batch, whose frame of
    vector ``name`` then gets ``flags``; returns the record hashes."""
    genesis, second = BY_NAME["event-genesis"], BY_NAME["event-batch-end"]
    with Storage(store_dir, checkpoint_policy=CheckpointPolicy.explicit(), clock=lambda: genesis.timestamp_ns) as store:
        store.append_batch(0, [genesis.payload, second.payload], 0, None)
        store.append(0, [b"a second batch"])
        hashes_: list[bytes] = [r.hash for r in genesis_records(store, 0)]
    path = segment_path(store_dir, 0, 0)
    data = bytearray(path.read_bytes())
    at = sum(len(BY_NAME[n].frame) for n in CHAIN[: BY_NAME[name].offset])
    assert data[at : at + len(BY_NAME[name].frame)] == BY_NAME[name].frame
    data[at + FLAGS_AT] = flags
    path.write_bytes(bytes(data))
    scan = SegmentScan(store_dir, StreamId(0), 0, position=0, next_offset=0, prev_hash=GENESIS_HASH)
    assert [r.hash for batch in scan.batches() for r in batch] == hashes_  # every record still verifies
    assert scan.problem is None
    return hashes_


def test_a_cleared_batch_end_flag_in_committed_data_changes_no_record(store_dir: Path) -> None:
    """The batch-end flag is the one header bit no decode depends on: cleared inside committed data
    (where nothing reads it: only recovery does, past the catalog's end) every record reads back
    verified and unchanged, and ``verify`` passes (section 3 says why it does not look at it)."""
    hashes_ = store_with_batch_end_flag(store_dir, "event-batch-end", 0)
    with Storage(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        assert [r.hash for r in genesis_records(store, 0)] == hashes_
        report = verify_store(store)
    assert report.ok, report.as_dict()


def test_a_batch_end_flag_set_inside_a_batch_changes_no_record(store_dir: Path) -> None:
    """A batch-end flag set inside a committed batch is framing only: every record reads back
    verified and unchanged (section 3 says why it is harmless)."""
    hashes_ = store_with_batch_end_flag(store_dir, "event-genesis", FLAG_BATCH_END)
    with Storage(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        records = genesis_records(store, 0)
    assert [r.hash for r in records] == hashes_
    assert [r.payload for r in records[:2]] == [BY_NAME["event-genesis"].payload, BY_NAME["event-batch-end"].payload]


DOC_MARKER = struct.Struct("<8sB7sQQQQQ")  # section 4a


def test_the_repair_marker_vector_is_the_documented_cut() -> None:
    marker = BY_NAME["repair-cut"]
    magic, action, reserved, first, nxt, segment_no, start, end = DOC_MARKER.unpack(marker.payload)
    assert (magic, action, reserved, first, nxt) == (b"HLREPAIR", 2, bytes(7), 4, 10)
    assert (marker.kind, marker.offset, marker.prev_hash) == (RecordKind.REPAIR, nxt, BY_NAME["checkpoint"].hash)
    assert (segment_no, start, end) == (0, sum(len(BY_NAME[n].frame) for n in CHAIN), start)
    # the cut offsets 4..9 had the positions after the checkpoint's; the marker comes after them
    checkpoint_position = BY_NAME["checkpoint"].global_position
    assert checkpoint_position is not None
    assert marker.global_position == checkpoint_position + (nxt - first) + 1


@pytest.mark.parametrize("first", [4, 5, 3])
def test_a_walk_takes_the_cut_markers_jump_only_as_its_payload_names_it(tmp_path: Path, first: int) -> None:
    """After the chain, the marker at offset 10 is accepted exactly when it names offsets 4..9: a
    marker naming another range (re-hashed and re-sealed as a forger would) is refused there."""
    vector = BY_NAME["repair-cut"]
    payload = DOC_MARKER.pack(b"HLREPAIR", 2, bytes(7), first, 10, *DOC_MARKER.unpack(vector.payload)[5:])
    frame = bytearray()
    assert vector.global_position is not None
    append_frame(
        frame,
        stream_id=0,
        offset=10,
        global_position=vector.global_position,
        kind=RecordKind.REPAIR,
        timestamp_ns=vector.timestamp_ns,
        prev_hash=vector.prev_hash,
        payload=payload,
        batch_end=True,
        compressor=None,
    )
    if first == 4:
        assert bytes(frame) == vector.frame
    path = segment_path(tmp_path, 0, 0)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"".join(BY_NAME[n].frame for n in CHAIN) + frame)
    scan = SegmentScan(tmp_path, StreamId(0), 0, position=0, next_offset=0, prev_hash=GENESIS_HASH)
    offsets = [r.entry.offset for batch in scan.batches() for r in batch]
    if first == 4:
        assert offsets == [0, 1, 2, 3, 10]
        assert scan.problem is None
        assert (scan.next_offset, scan.prev_hash) == (11, vector.hash)
    else:
        assert offsets == [0, 1, 2, 3]
        assert scan.problem is not None
        assert scan.problem.offset == 4


def test_chained_vectors_are_the_segment_a_store_writes(store_dir: Path) -> None:
    """A Storage making the documented appends writes exactly the concatenated vector frames."""
    genesis, second, compressed, checkpoint = (BY_NAME[n] for n in CHAIN)
    now = [genesis.timestamp_ns]
    store = Storage(
        store_dir,
        compression=CompressionKind.ZSTD,
        checkpoint_policy=CheckpointPolicy.explicit(),
        clock=lambda: now[0],
    )
    with store:
        assert store.append_batch(0, [genesis.payload, second.payload], 0, None) == (2, second.hash)
        now[0] = compressed.timestamp_ns
        assert store.append(0, [compressed.payload]) == (3, compressed.hash)
        now[0] = checkpoint.timestamp_ns
        assert store.create_checkpoint(0, 3, compressed.hash, 3) == (4, checkpoint.hash)
        records = genesis_records(store, 0)
        positions = [store.global_position_of(0, offset) for offset in range(4)]
    assert [r.hash for r in records] == [BY_NAME[n].hash for n in CHAIN]
    assert positions == [BY_NAME[n].global_position for n in CHAIN]
    assert segment_path(store_dir, 0, 0).read_bytes().hex() == b"".join(BY_NAME[n].frame for n in CHAIN).hex()


def test_a_store_of_format1_frames_reads_appends_and_rebuilds_keeping_positions(store_dir: Path) -> None:
    """A store whose segment holds the format-1 vectors (and no catalog) is rebuilt from them, reads
    them back verified, appends format-2 frames to the same segment, verifies, and a second rebuild
    gives every record the position it had (format-1 ones numbered 1, 2, 3 as section 8a says)."""
    old = [BY_NAME[n] for n in V1_CHAIN]
    path = write_segment(store_dir, 0, b"".join(v.frame for v in old))
    v1_bytes = path.read_bytes()
    now = [BY_NAME["checkpoint"].timestamp_ns]
    with Storage(store_dir, checkpoint_policy=CheckpointPolicy.explicit(), clock=lambda: now[0]) as store:
        assert [r.hash for r in genesis_records(store, 0)] == [v.hash for v in old]
        assert [store.global_position_of(0, offset) for offset in range(3)] == [1, 2, 3]
        next_offset, head = store.append(0, [b"after", b"the upgrade"])
        assert next_offset == 5
        positions = [store.global_position_of(0, offset) for offset in range(5)]
        assert positions == [1, 2, 3, 4, 5]
        report = verify_store(store)
        assert report.ok, report.as_dict()
    data = path.read_bytes()
    assert data[: len(v1_bytes)] == v1_bytes  # old frames are never rewritten
    assert data[len(v1_bytes) :] == v2_frames_after(old[-1].hash, 3, 4, [b"after", b"the upgrade"])
    assert parse_header(data[len(v1_bytes) :]).hash != head  # the batch's first record; its last is the head

    for name in list(store_dir.iterdir()):
        if name.name.startswith("catalog.db"):
            name.unlink()
    with Storage(store_dir, checkpoint_policy=CheckpointPolicy.explicit(), clock=lambda: now[0]) as store:
        assert [store.global_position_of(0, offset) for offset in range(5)] == positions
        assert store.last_global_position() == 5
        assert [r.hash for r in genesis_records(store, 0)][-1] == head
        assert store.append(0, [b"next"])[0] == 6
        assert store.global_position_of(0, 5) == 6
        report = verify_store(store)
        assert report.ok, report.as_dict()


# --- round trips -------------------------------------------------------------------------------------

stream_ids = st.integers(min_value=0, max_value=2**63 - 1)
u64 = st.integers(min_value=0, max_value=2**64 - 1)
global_positions = st.integers(min_value=1, max_value=2**64 - 1)
kinds = st.sampled_from(list(RecordKind))
hashes = st.binary(min_size=32, max_size=32)
compressible_payloads = st.builds(
    lambda pattern, times: pattern * times,
    st.binary(min_size=1, max_size=8),
    st.integers(min_value=64, max_value=400),
)
payloads = st.one_of(st.binary(max_size=600), compressible_payloads)


def write_segment(directory: Path, stream_id: int, data: bytes) -> Path:
    """Write ``data`` as segment 0 of ``stream_id`` under ``directory`` (replacing any earlier one)."""
    path = segment_path(directory, stream_id, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@given(
    stream_id=stream_ids,
    offset=u64,
    position=global_positions,
    kind=kinds,
    timestamp_ns=u64,
    prev=hashes,
    payload=payloads,
    compress=st.booleans(),
    batch_end=st.booleans(),
)
def test_any_record_round_trips(
    tmp_path: Path,
    stream_id: int,
    offset: int,
    position: int,
    kind: RecordKind,
    timestamp_ns: int,
    prev: bytes,
    payload: bytes,
    compress: bool,
    batch_end: bool,
) -> None:
    """append_frame -> segment file -> SegmentReader gives back every field and the payload; the
    hash is BLAKE3 of the documented hash input, built here independently."""
    out = bytearray()
    own = append_frame(
        out,
        stream_id=stream_id,
        offset=offset,
        global_position=position,
        kind=kind,
        timestamp_ns=timestamp_ns,
        prev_hash=prev,
        payload=payload,
        batch_end=batch_end,
        compressor=new_compressor() if compress else None,
    )
    assert own == record_hash(stream_id, offset, kind, timestamp_ns, prev, payload, position)
    assert own == blake3.blake3(doc_hash_input(stream_id, offset, kind, timestamp_ns, prev, payload, position)).digest()
    path = write_segment(tmp_path, stream_id, bytes(out))
    with SegmentReader(path) as reader:
        frame = reader.read_frame()
        assert frame is not None
        assert reader.read_frame() is None
    header = frame.header
    assert (header.stream_id, header.offset, header.global_position, header.kind, header.timestamp_ns) == (
        stream_id,
        offset,
        position,
        kind,
        timestamp_ns,
    )
    assert (header.prev_hash, header.hash, header.raw_len) == (prev, own, len(payload))
    assert header.batch_end == batch_end
    assert header.frame_size == len(out)
    if header.compressed:
        assert compress
        assert header.stored_len < header.raw_len
    else:
        assert frame.stored == payload
    assert decode_payload(header, frame.stored) == payload
    if offset < 2**63:  # open_record takes offsets as the store uses them
        record = open_record(frame, stream_id=StreamId(stream_id), expected_offset=offset, prev_hash=prev, segment=path)
        assert (record.payload, record.hash, record.kind, record.global_position) == (payload, own, kind, position)


@given(
    stream_id=stream_ids,
    offset=u64,
    position=global_positions,
    kind=kinds,
    timestamp_ns=u64,
    prev=hashes,
    payload=compressible_payloads,
)
def test_hash_does_not_depend_on_compression(
    stream_id: int, offset: int, position: int, kind: RecordKind, timestamp_ns: int, prev: bytes, payload: bytes
) -> None:
    """The same record framed with and without zstd has one hash; only the stored form differs."""
    plain, squeezed = bytearray(), bytearray()
    common = {
        "stream_id": stream_id,
        "offset": offset,
        "global_position": position,
        "kind": kind,
        "timestamp_ns": timestamp_ns,
    }
    h_plain = append_frame(plain, **common, prev_hash=prev, payload=payload, batch_end=True, compressor=None)
    h_squeezed = append_frame(
        squeezed, **common, prev_hash=prev, payload=payload, batch_end=True, compressor=new_compressor()
    )
    assert h_plain == h_squeezed
    p, s = parse_header(bytes(plain)), parse_header(bytes(squeezed))
    assert not p.compressed
    assert s.compressed
    assert p.hash == s.hash
    assert p.raw_len == s.raw_len
    assert s.stored_len < p.stored_len
    assert s.flags == p.flags | FLAG_COMPRESSED


batch_plans = st.lists(
    st.lists(st.tuples(kinds, payloads), min_size=1, max_size=4),
    min_size=1,
    max_size=5,
)


@given(
    stream_id=stream_ids,
    batches=batch_plans,
    compress=st.booleans(),
    start_ts=u64,
    start_position=st.integers(min_value=1, max_value=2**63),
    skipped=st.lists(st.integers(min_value=0, max_value=3), min_size=5, max_size=5),
)
def test_a_chain_of_batches_round_trips_through_the_scan(
    tmp_path: Path,
    stream_id: int,
    batches: list[list[tuple[RecordKind, bytes]]],
    compress: bool,
    start_ts: int,
    start_position: int,
    skipped: list[int],
) -> None:
    """Framed batches read back as the same verified chain, split at the batch-end flags, each record
    with its global position (consecutive within a batch; other streams' batches may come between)."""
    data = bytearray()
    prev: bytes = GENESIS_HASH
    expected: list[tuple[int, RecordKind, int, bytes, bytes]] = []
    positions: list[int] = []
    compressor = new_compressor() if compress else None
    offset, position = 0, start_position
    for b, batch in enumerate(batches):
        timestamp = min(start_ts + b, 2**64 - 1)
        position += skipped[b]  # positions other streams' batches took
        for i, (kind, payload) in enumerate(batch):
            prev = append_frame(
                data,
                stream_id=stream_id,
                offset=offset,
                global_position=position,
                kind=kind,
                timestamp_ns=timestamp,
                prev_hash=prev,
                payload=payload,
                batch_end=i == len(batch) - 1,
                compressor=compressor,
            )
            expected.append((offset, kind, timestamp, payload, prev))
            positions.append(position)
            offset, position = offset + 1, position + 1
    path = write_segment(tmp_path, stream_id, bytes(data))

    got: list[tuple[int, RecordKind, int, bytes, bytes]] = []
    link: bytes = GENESIS_HASH
    with SegmentReader(path) as reader:
        for frame in reader.frames():
            record = open_record(
                frame, stream_id=StreamId(stream_id), expected_offset=len(got), prev_hash=link, segment=path
            )
            got.append((record.offset, record.kind, record.timestamp_ns, record.payload, record.hash))
            link = record.hash
    assert got == expected

    scan = SegmentScan(tmp_path, StreamId(stream_id), 0, position=0, next_offset=0, prev_hash=GENESIS_HASH)
    scanned = list(scan.batches())
    assert [len(batch) for batch in scanned] == [len(batch) for batch in batches]
    assert [r.global_position for batch in scanned for r in batch] == positions
    assert scan.problem is None
    assert scan.valid_end == len(data)
    assert scan.prev_hash == prev


# --- bounded decompression ---------------------------------------------------------------------------


def handmade_compressed_frame(stored: bytes, raw_len: int, *, stream_id: int = 3, offset: int = 0) -> bytes:
    """A format-2 frame flagged compressed around ``stored``, built without append_frame."""
    own = bytes(32)  # decoding comes before the hash check, so any hash will do
    flags, position, timestamp = FLAG_COMPRESSED | FLAG_BATCH_END, 1, 1
    lengths = (len(stored), raw_len)
    return (
        DOC_HEADER.pack(b"HLR1", 2, 0, flags, 0, stream_id, offset, position, timestamp, *lengths, GENESIS_HASH, own)
        + stored
    )


def peak_traced_allocation(action: Callable[[], object]) -> int:
    """The peak of Python-heap memory allocated while ``action`` runs (exceptions propagate)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def refused_with_peak(frame: bytes) -> tuple[FrameError, int]:
    """Decode ``frame``'s payload, which must be refused; return the error and the peak allocation."""
    header = parse_header(frame)
    check_frame(frame)
    stored = frame[HEADER_SIZE:]
    errors: list[FrameError] = []

    def attempt() -> None:
        try:
            decode_payload(header, stored)
        except FrameError as e:
            errors.append(e)

    peak = peak_traced_allocation(attempt)
    assert errors, "the payload was decoded instead of refused"
    return errors[0], peak


SLACK = 64 * 1024  # bookkeeping allocations, far below the sizes the bombs would produce


def test_the_allocation_probe_sees_payload_buffers() -> None:
    """Control for the bomb tests: a legitimate 4 MiB decode shows up as a >= 4 MiB peak."""
    size = 4 * 1024 * 1024
    stored = new_compressor().compress(bytes(size))
    frame = handmade_compressed_frame(stored, size)
    header = parse_header(frame)
    peak = peak_traced_allocation(lambda: decode_payload(header, frame[HEADER_SIZE:]))
    assert peak >= size


def test_content_size_larger_than_raw_len_is_refused_without_allocating() -> None:
    """A zstd frame of 32 MiB of zeros under raw_len 1024 is refused; nothing near 32 MiB is allocated."""
    bomb = new_compressor().compress(bytes(32 * 1024 * 1024))
    error, peak = refused_with_peak(handmade_compressed_frame(bomb, 1024))
    assert "raw_len" in error.reason
    assert peak < 1024 + SLACK


def test_frame_without_content_size_is_refused() -> None:
    """A zstd frame that does not declare its content size is refused even when raw_len is right."""
    raw = bytes(1024 * 1024)
    stored = zstandard.ZstdCompressor(write_content_size=False).compress(raw)
    assert zstandard.frame_content_size(stored) == -1
    error, peak = refused_with_peak(handmade_compressed_frame(stored, len(raw)))
    assert "raw_len" in error.reason
    assert peak < SLACK


def test_content_size_smaller_than_the_data_is_refused_within_raw_len() -> None:
    """A zstd header that under-states the data (matching raw_len) fails inside a raw_len-sized buffer."""
    stored = bytearray(new_compressor().compress(b"x" * 1000))
    # Frame header descriptor 0x60: single segment, 2-byte content size field holding size - 256.
    assert stored[4] == 0x60
    assert int.from_bytes(stored[5:7], "little") == 1000 - 256
    stored[5:7] = (300 - 256).to_bytes(2, "little")
    assert zstandard.frame_content_size(bytes(stored)) == 300
    _error, peak = refused_with_peak(handmade_compressed_frame(bytes(stored), 300))
    assert peak < 300 + SLACK


def test_garbage_flagged_as_compressed_is_refused() -> None:
    """Bytes that are not a zstd frame at all are refused, not decoded."""
    error, _peak = refused_with_peak(handmade_compressed_frame(b"not a zstd frame", 100))
    assert "zstd" in error.reason


def test_raw_len_above_the_event_limit_is_refused_by_the_header() -> None:
    """No header may announce more than MAX_EVENT_SIZE bytes, which bounds every decode."""
    frame = handmade_compressed_frame(b"\x28\xb5\x2f\xfd", MAX_EVENT_SIZE + 1)
    with pytest.raises(FrameError, match="length out of range"):
        parse_header(frame)


def test_a_bomb_in_a_segment_fails_the_verified_read(tmp_path: Path) -> None:
    """Read through a segment, the refused payload is an IntegrityError naming stream, offset and file."""
    bomb = new_compressor().compress(bytes(32 * 1024 * 1024))
    path = write_segment(tmp_path, 3, handmade_compressed_frame(bomb, 1024))
    with SegmentReader(path) as reader:
        frame = reader.read_frame()
    assert frame is not None
    with pytest.raises(ChecksumMismatch) as caught:
        open_record(frame, stream_id=StreamId(3), expected_offset=0, prev_hash=GENESIS_HASH, segment=path)
    assert (caught.value.stream_id, caught.value.offset, caught.value.segment) == (3, 0, path)


# --- stream dictionaries -----------------------------------------------------------------------------


@functools.cache
def sample_dictionary() -> StreamDictionary:
    """A dictionary for stream 3, number 40, trained on small JSON records (built once)."""
    rng = random.Random(3)
    samples: list[bytes | bytearray | memoryview] = [
        json.dumps({"type": rng.choice(("deposit", "withdrawal")), "amount": rng.randrange(10**6), "n": i}).encode()
        for i in range(500)
    ]
    trained = zstandard.train_dictionary(2048, samples, dict_id=dictionary_id(40))
    return StreamDictionary(3, 40, trained.as_bytes())


class OneDictionary:
    """A dictionary source holding ``sample_dictionary()`` only."""

    def decompressor(self, stream_id: int, dictionary_no: int) -> zstandard.ZstdDecompressor:
        dictionary = sample_dictionary()
        if (stream_id, dictionary_no) != (dictionary.stream_id, dictionary.number):
            raise FrameError(f"no dictionary {dictionary_no} for stream {stream_id}")
        return dictionary.decompressor()


@given(payloads=st.lists(payloads, min_size=1, max_size=6), prev=hashes)
def test_dictionary_compressed_records_round_trip_through_every_reader(
    tmp_path: Path, payloads: list[bytes], prev: bytes
) -> None:
    """Framed with the stream's dictionary, records read back through open_record, the fast walk and the
    scan (which loads the .zdict file from the stream directory); the hashes are those of the plain payloads."""
    dictionary = sample_dictionary()
    compressor = dictionary_compressor(dictionary.zstd)
    data = bytearray()
    link, hashes_ = prev, []
    for i, payload in enumerate(payloads):
        own = append_frame(
            data,
            stream_id=3,
            offset=50 + i,
            global_position=700 + i,
            kind=RecordKind.EVENT,
            timestamp_ns=9,
            prev_hash=link,
            payload=payload,
            batch_end=i == len(payloads) - 1,
            compressor=compressor,
        )
        assert own == record_hash(3, 50 + i, RecordKind.EVENT, 9, link, payload, 700 + i)  # as if stored plain
        hashes_.append(own)
        link = own
    path = write_segment(tmp_path, 3, bytes(data))
    (path.parent / "00000000000000000040.zdict").write_bytes(dictionary.file_bytes())

    link = prev
    with SegmentReader(path) as reader:
        for i, frame in enumerate(reader.frames()):
            assert frame.header.uses_dictionary == (frame.header.stored_len < frame.header.raw_len)
            record = open_record(
                frame,
                stream_id=StreamId(3),
                expected_offset=50 + i,
                prev_hash=link,
                segment=path,
                dictionaries=OneDictionary(),
            )
            assert (record.payload, record.hash) == (payloads[i], hashes_[i])
            link = record.hash

    scan = SegmentScan(tmp_path, StreamId(3), 0, position=0, next_offset=50, prev_hash=ChainHash(prev))
    (batch,) = list(scan.batches())
    assert scan.problem is None
    assert [r.hash for r in batch] == hashes_
    assert [r.payload_len for r in batch] == [len(p) for p in payloads]


def handmade_dictionary_frame(stored: bytes, raw_len: int) -> bytes:
    """A frame of stream 3 flagged compressed with the stream dictionary, around ``stored``."""
    frame = bytearray(handmade_compressed_frame(stored, raw_len))
    frame[6] |= FLAG_DICTIONARY
    return bytes(frame)


def refused_with_dictionary(frame: bytes) -> tuple[FrameError, int]:
    """Like ``refused_with_peak``, decoding with ``sample_dictionary()`` at hand."""
    header = parse_header(frame)
    check_frame(frame)
    stored = frame[HEADER_SIZE:]
    source = OneDictionary()
    source.decompressor(3, 40)  # the dictionary is loaded before measuring
    errors: list[FrameError] = []

    def attempt() -> None:
        try:
            decode_payload(header, stored, source)
        except FrameError as e:
            errors.append(e)

    peak = peak_traced_allocation(attempt)
    assert errors, "the payload was decoded instead of refused"
    return errors[0], peak


def test_a_dictionary_bomb_is_refused_without_allocating() -> None:
    """32 MiB of zeros compressed with the dictionary, under raw_len 1024: refused, nothing near 32 MiB allocated."""
    bomb = dictionary_compressor(sample_dictionary().zstd).compress(bytes(32 * 1024 * 1024))
    assert zstandard.get_frame_parameters(bomb).dict_id == dictionary_id(40)
    error, peak = refused_with_dictionary(handmade_dictionary_frame(bomb, 1024))
    assert "raw_len" in error.reason
    assert peak < 1024 + SLACK


def test_a_dictionary_frame_without_content_size_is_refused() -> None:
    raw = bytes(1024 * 1024)
    stored = zstandard.ZstdCompressor(dict_data=sample_dictionary().zstd, write_content_size=False).compress(raw)
    error, peak = refused_with_dictionary(handmade_dictionary_frame(stored, len(raw)))
    assert "raw_len" in error.reason
    assert peak < SLACK


def test_the_dictionary_flag_must_match_the_zstd_frame() -> None:
    """Flag bit 2 needs bit 0 and a frame naming one of our dictionary ids; bit 0 alone needs no dictionary."""
    payload = b'{"type":"deposit","amount":12345,"n":7}' * 3
    with_dictionary = dictionary_compressor(sample_dictionary().zstd).compress(payload)
    plain = new_compressor().compress(payload)

    no_compressed_bit = bytearray(handmade_compressed_frame(payload, len(payload)))
    no_compressed_bit[6] = FLAG_DICTIONARY | FLAG_BATCH_END
    with pytest.raises(FrameError, match="dictionary flag on an uncompressed payload"):
        parse_header(bytes(no_compressed_bit))

    header = parse_header(handmade_dictionary_frame(plain, len(payload)))
    with pytest.raises(FrameError, match="dictionary id 0"):
        decode_payload(header, plain, OneDictionary())

    header = parse_header(handmade_compressed_frame(with_dictionary, len(payload)))
    with pytest.raises(FrameError, match="zstd"):
        decode_payload(header, with_dictionary, OneDictionary())

    header = parse_header(handmade_dictionary_frame(with_dictionary, len(payload)))
    assert decode_payload(header, with_dictionary, OneDictionary()) == payload


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("cut short", "too short"),
        ("flipped byte", "digest mismatch"),
        ("other stream", "of stream 4, not 40 of stream 3"),
        ("other number", "dictionary 41 of stream 3, not 40"),
        ("not a zstd dictionary", "zstd dictionary inside has id 0"),
        ("bad magic", "not a version 1 dictionary file"),
    ],
)
def test_a_dictionary_file_that_is_not_what_its_name_says_is_refused(tmp_path: Path, damage: str, reason: str) -> None:
    """Every check of the .zdict layout refuses with DictionaryUnavailable naming the file and why."""
    good = sample_dictionary()
    content = good.file_bytes()
    if damage == "cut short":
        content = content[:40]
    elif damage == "flipped byte":
        content = content[:100] + bytes([content[100] ^ 1]) + content[101:]
    elif damage == "other stream":
        content = StreamDictionary(4, 40, good.data).file_bytes()
    elif damage == "other number":
        content = StreamDictionary(3, 41, good.data).file_bytes()
    elif damage == "not a zstd dictionary":
        content = StreamDictionary(3, 40, b"just some bytes, no zstd dictionary header").file_bytes()
    else:
        body = b"HLZX" + content[4:-32]
        content = body + blake3.blake3(body).digest()
    path = tmp_path / "00000000000000000040.zdict"
    with pytest.raises(DictionaryUnavailable) as caught:
        parse_dictionary_file(content, stream_id=3, number=40, path=path)
    assert reason in caught.value.reason
    assert str(path) in caught.value.reason
    assert caught.value.path == path
    assert not caught.value.missing
    assert parse_dictionary_file(good.file_bytes(), stream_id=3, number=40, path=path).data == good.data
