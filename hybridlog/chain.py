"""Turning a frame read from a segment into a verified ``Record``: identity, hash and chain link."""

from __future__ import annotations

from pathlib import Path

from hybridlog.errors import ChainBroken, ChecksumMismatch, HashMismatch, IntegrityError, Where
from hybridlog.record import FrameError, decode_payload, record_hash
from hybridlog.segment import Frame
from hybridlog.types import ChainHash, Offset, Record, RecordKind, StreamId


def open_record(
    frame: Frame,
    *,
    stream_id: StreamId,
    expected_offset: int,
    prev_hash: bytes | None,
    segment: Path,
) -> Record:
    """Verify ``frame`` as the record at ``expected_offset`` of ``stream_id`` and return it.

    Checks that the frame belongs to this stream and offset, that its hash is the hash of its
    contents, and (unless ``prev_hash`` is None, for a trusted anchor) that it links to the record
    before it. Raises an IntegrityError subclass naming the place.
    """
    header = frame.header
    where: Where = {"stream_id": stream_id, "offset": expected_offset, "segment": segment, "position": frame.position}
    if header.stream_id != stream_id or header.offset != expected_offset:
        raise IntegrityError(f"record belongs to stream {header.stream_id} offset {header.offset}, not here", **where)
    try:
        payload = decode_payload(header, frame.stored)
    except FrameError as e:
        raise ChecksumMismatch(f"payload cannot be decoded ({e.reason})", **where) from e
    own = record_hash(stream_id, expected_offset, header.kind, header.timestamp_ns, header.prev_hash, payload)
    if own != header.hash:
        raise HashMismatch("record hash does not match its contents", **where)
    if prev_hash is not None and header.prev_hash != prev_hash:
        raise ChainBroken("record does not link to the record before it", **where)
    return Record(
        stream_id=stream_id,
        offset=Offset(expected_offset),
        kind=RecordKind(header.kind),
        timestamp_ns=header.timestamp_ns,
        prev_hash=ChainHash(header.prev_hash),
        hash=ChainHash(own),
        payload=payload,
    )
