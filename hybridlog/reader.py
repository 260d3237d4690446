"""The verified read: walking a catalog snapshot's segments from a start entry, checking each record.

A read starts at the offset-index entry of its anchor (the nearest checkpoint at or before the
requested offset, trusted because its hash is in the catalog; or offset 0), then reads frames
sequentially, verifying each one's checksum, identity, hash and link to the one before, and
checks the stream's last record against the catalog's chain head. It reads each segment only up
to the size the snapshot committed, so it never sees a batch that is being written.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path

from hybridlog.catalog import StreamSnapshot
from hybridlog.chain import open_record
from hybridlog.errors import CatalogMismatch, ChecksumMismatch, TruncatedRecord, Where
from hybridlog.record import (
    CHECKSUM,
    FLAG_COMPRESSED,
    FORMAT_VERSION,
    FRAME_OVERHEAD,
    HEADER,
    HEADER_SIZE,
    KNOWN_FLAGS,
    MAGIC,
    MAX_STORED_LEN,
    FrameError,
    decompress_payload,
    record_hash,
)
from hybridlog.segment import IncompleteFrame, SegmentReader, segment_path
from hybridlog.types import GENESIS_HASH, MAX_EVENT_SIZE, ChainHash, Offset, Record, RecordKind, StreamId

_CHUNK = 1 << 20
_KINDS = (RecordKind.EVENT, RecordKind.CHECKPOINT)


class _FastWalk:
    """Verifies frames from a reader's position up to ``end`` in large reads, without per-frame objects.

    After ``records()`` is exhausted, ``position``, ``expected`` and ``prev`` say where it stopped:
    at ``end``, or at the first frame it could not verify (left to the caller's exact checks).
    """

    def __init__(
        self,
        reader: SegmentReader,
        stream_id: StreamId,
        expected: int,
        prev: bytes | None,
        end: int,
        snap: StreamSnapshot,
    ) -> None:
        self.file = reader.raw_file()
        self.stream_id = stream_id
        self.position = reader.position
        self.expected = expected
        self.prev = prev
        self.end = end
        self.anchor = snap.anchor.hash if snap.anchor else None
        self.head_offset = snap.stream.next_offset - 1
        self.head = snap.stream.chain_head

    def records(self) -> Iterator[Record]:
        sid, end = self.stream_id, self.end
        buf, base = b"", self.position  # buf holds the file's bytes from ``base`` on
        unpack_header, unpack_checksum = HEADER.unpack_from, CHECKSUM.unpack_from
        while self.position < end:
            at = self.position - base
            if len(buf) - at < HEADER_SIZE:
                buf, base, at = self._refill(buf, base, at, HEADER_SIZE)
                if len(buf) - at < HEADER_SIZE:
                    return
            magic, version, kind, flags, reserved, rsid, offset, ts, stored_len, raw_len, prev, own = unpack_header(
                buf, at
            )
            if (
                magic != MAGIC
                or version != FORMAT_VERSION
                or kind not in _KINDS
                or flags & ~KNOWN_FLAGS
                or reserved
                or rsid != sid
                or offset != self.expected
                or stored_len > MAX_STORED_LEN
                or raw_len > MAX_EVENT_SIZE
                or (not flags & FLAG_COMPRESSED and stored_len != raw_len)
            ):
                return
            size = FRAME_OVERHEAD + stored_len
            if self.position + size > end:
                return
            if len(buf) - at < size:
                buf, base, at = self._refill(buf, base, at, size)
                if len(buf) - at < size:
                    return
            body_end = at + HEADER_SIZE + stored_len
            if zlib.crc32(memoryview(buf)[at:body_end]) != unpack_checksum(buf, body_end)[0]:
                return
            stored = buf[at + HEADER_SIZE : body_end]
            if flags & FLAG_COMPRESSED:
                try:
                    payload = decompress_payload(stored, raw_len)
                except FrameError:
                    return
            else:
                payload = stored
            if record_hash(sid, offset, kind, ts, prev, payload) != own:
                return
            if self.prev is None:
                if own != self.anchor:
                    return
            elif prev != self.prev:
                return
            if offset == self.head_offset and own != self.head:
                return
            self.position += size
            self.expected, self.prev = offset + 1, own
            yield Record(sid, Offset(offset), _KINDS[kind], ts, ChainHash(prev), ChainHash(own), payload)

    def _refill(self, buf: bytes, base: int, at: int, need: int) -> tuple[bytes, int, int]:
        """Keep ``buf[at:]`` and read on, to hold at least ``need`` bytes from ``at`` (if the file has them)."""
        rest = buf[at:]
        want = min(max(_CHUNK, need - len(rest)), self.end - (base + len(buf)))
        self.file.seek(base + len(buf))
        more = self.file.read(want) if want > 0 else b""
        return rest + more, base + at, 0


def verified_records(data_dir: Path, snap: StreamSnapshot, from_offset: int) -> Iterator[Record]:
    """Walk a snapshot's segments from its start entry, verifying every record (see iter_records)."""
    stream = snap.stream
    sid = stream.stream_id
    if snap.start is None:
        raise CatalogMismatch(
            "the offset index has no entry to start reading from",
            stream_id=sid,
            offset=snap.anchor.offset if snap.anchor else 0,
        )
    expected: int = snap.start.offset
    prev: bytes | None = None if snap.anchor else GENESIS_HASH
    for seg in snap.segments:
        if seg.segment_no < snap.start.segment_no:
            continue
        path = segment_path(data_dir, sid, seg.segment_no)
        position = snap.start.position if seg.segment_no == snap.start.segment_no else 0
        if position == 0 and expected != seg.first_offset:
            raise CatalogMismatch(
                f"segment starts at offset {seg.first_offset}", stream_id=sid, offset=expected, segment=path
            )
        try:
            reader = SegmentReader(path, position)
        except FileNotFoundError as e:
            raise CatalogMismatch("segment file is missing", stream_id=sid, offset=expected, segment=path) from e
        with reader:
            # The fast walk verifies everything the slow one does; it stops at the first record it
            # cannot vouch for, and the slow walk below takes over there to raise the exact error.
            fast = _FastWalk(reader, sid, expected, prev, seg.size_bytes, snap)
            for record in fast.records():
                if record.offset >= from_offset:
                    yield record
            expected, prev = fast.expected, fast.prev
            reader.seek(fast.position)
            while expected < seg.next_offset:
                where: Where = {"stream_id": sid, "offset": expected, "segment": path, "position": reader.position}
                try:
                    frame = reader.read_frame()
                except IncompleteFrame as e:
                    raise TruncatedRecord(f"segment is cut short ({e.reason})", **where) from e
                except FrameError as e:
                    raise ChecksumMismatch(f"record is damaged ({e.reason})", **where) from e
                if frame is None:
                    raise TruncatedRecord("segment ends before the catalog says it does", **where)
                record = open_record(frame, stream_id=sid, expected_offset=expected, prev_hash=prev, segment=path)
                if prev is None and snap.anchor is not None and record.hash != snap.anchor.hash:
                    raise CatalogMismatch("checkpoint record does not match the catalog's anchor", **where)
                if expected == stream.next_offset - 1 and record.hash != stream.chain_head:
                    raise CatalogMismatch("last record does not match the catalog's chain head", **where)
                prev = record.hash
                expected += 1
                if record.offset >= from_offset:
                    yield record
        if expected >= stream.next_offset:
            return
    if expected < stream.next_offset:
        raise CatalogMismatch(
            f"segments end at offset {expected}; the catalog says {stream.next_offset}", stream_id=sid, offset=expected
        )
