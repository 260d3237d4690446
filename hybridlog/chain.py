"""Turning frames read from a segment into verified ``Record``s: identity, hash and chain link."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import zstandard

from hybridlog.dictionary import DictionaryUnavailable
from hybridlog.errors import (
    ChainBroken,
    ChecksumMismatch,
    DamagedDictionary,
    DictionaryUnusable,
    HashMismatch,
    IntegrityError,
    MissingDictionary,
    Where,
)
from hybridlog.layout import dictionary_name
from hybridlog.markers import is_cut_jump
from hybridlog.record import (
    CHECKSUM,
    FLAG_BATCH_END,
    FLAG_COMPRESSED,
    FLAG_DICTIONARY,
    FORMAT_VERSION,
    FRAME_OVERHEAD,
    HEADER,
    HEADER_SIZE,
    KNOWN_FLAGS,
    MAGIC,
    MAX_STORED_LEN,
    DictionarySource,
    FrameError,
    decode_payload,
    decode_stored,
    dictionary_no_of,
    frame_checksum,
    parse_header,
    record_hash,
)
from hybridlog.segment import Frame, SegmentReader
from hybridlog.types import MAX_EVENT_SIZE, ChainHash, Offset, Record, RecordKind, StreamId


def open_record(
    frame: Frame,
    *,
    stream_id: StreamId,
    expected_offset: int,
    prev_hash: bytes | None,
    segment: Path,
    dictionaries: DictionarySource | None = None,
) -> Record:
    """Verify ``frame`` as the record at ``expected_offset`` of ``stream_id`` and return it.

    The one record that may carry a later offset is a cut marker naming exactly the offsets it
    steps over (``markers.py``): callers continue from ``record.offset + 1``.

    Checks that the frame belongs to this stream and offset, that its hash is the hash of its
    contents, and (unless ``prev_hash`` is None, for a trusted anchor) that it links to the record
    before it. Raises an IntegrityError subclass naming the place. ``dictionaries``: where a
    payload compressed with a stream dictionary finds it (``dictionary.DictionaryCache``).
    """
    header = frame.header
    where: Where = {"stream_id": stream_id, "offset": expected_offset, "segment": segment, "position": frame.position}
    misplaced = f"record belongs to stream {header.stream_id} offset {header.offset}, not here"
    if header.stream_id != stream_id or (header.offset != expected_offset and header.kind != RecordKind.REPAIR):
        raise IntegrityError(misplaced, **where)
    try:
        payload = decode_payload(header, frame.stored, dictionaries)
    except DictionaryUnavailable as e:
        raise dictionary_unusable(e, where) from e
    except FrameError as e:
        raise ChecksumMismatch(f"payload cannot be decoded ({e.reason})", **where) from e
    if header.offset != expected_offset and not is_cut_jump(header.kind, payload, expected_offset, header.offset):
        raise IntegrityError(misplaced, **where)
    own = record_hash(stream_id, header.offset, header.kind, header.timestamp_ns, header.prev_hash, payload)
    if own != header.hash:
        used = f" (decompressed with dictionary {_dictionary_file(frame, segment)})" if header.uses_dictionary else ""
        raise HashMismatch(f"record hash does not match its contents{used}", **where)
    if prev_hash is not None and header.prev_hash != prev_hash:
        raise ChainBroken("record does not link to the record before it", **where)
    return Record(
        stream_id=stream_id,
        offset=Offset(header.offset),
        kind=RecordKind(header.kind),
        timestamp_ns=header.timestamp_ns,
        prev_hash=ChainHash(header.prev_hash),
        hash=ChainHash(own),
        payload=payload,
    )


def reverify_frame(
    frame: bytes, *, stream_id: StreamId, offset: int, verified_hash: bytes, dictionaries: DictionarySource
) -> tuple[int, bytes] | None:
    """(kind, payload) of the record at ``offset`` if ``frame`` is exactly the record whose hash
    was verified before.

    The hash is recomputed from the frame's contents; equal to ``verified_hash`` it proves the
    frame holds that record. None for anything else (the caller falls back to a verified walk,
    which says precisely what is wrong).
    """
    if len(frame) < FRAME_OVERHEAD:
        return None
    magic, _, kind, flags, _, sid, off, ts, stored_len, _, prev, own = HEADER.unpack_from(frame)
    if (
        own != verified_hash
        or sid != stream_id
        or off != offset
        or magic != MAGIC
        or len(frame) != FRAME_OVERHEAD + stored_len
    ):
        return None
    stored = memoryview(frame)[HEADER_SIZE : HEADER_SIZE + stored_len]
    try:
        payload = (
            bytes(stored) if not flags & ~FLAG_BATCH_END else decode_payload(parse_header(frame), stored, dictionaries)
        )
    except FrameError:
        return None
    if record_hash(stream_id, offset, kind, ts, prev, payload) != verified_hash:
        return None
    return kind, payload


def dictionary_unusable(problem: DictionaryUnavailable, where: Where) -> DictionaryUnusable:
    """The IntegrityError for a record whose dictionary file is missing or damaged, with what to do."""
    kind = MissingDictionary if problem.missing else DamagedDictionary
    hint = (
        f"restore {problem.path} from a backup: the records that need it are intact; without it"
        f" `hybridlog repair` can only cut the stream before offset {where['offset']}"
    )
    return kind(problem.reason, dictionary=problem.path, hint=hint, **where)


def _dictionary_file(frame: Frame, segment: Path) -> Path | str:
    """The dictionary file a dictionary-compressed frame names (for messages)."""
    try:
        number = dictionary_no_of(zstandard.get_frame_parameters(frame.stored).dict_id)
    except zstandard.ZstdError:
        number = None
    return segment.parent / dictionary_name(number) if number is not None else "(no valid dictionary id)"


_CHUNK = 1 << 20
_KINDS = (RecordKind.EVENT, RecordKind.CHECKPOINT, RecordKind.REPAIR)


class FastWalk:
    """Verifies frames from a reader's position up to ``end`` in large reads, without per-frame objects.

    It checks what ``SegmentReader.read_frame`` and ``open_record`` check (header fields, identity,
    checksum, bounded decompression, hash, link) plus, when given, the trusted ``anchor`` hash (the
    first record's, when ``prev`` is None) and the catalog's ``head`` (offset, hash). It yields
    (record, position, frame size, batch end) and stops at the first frame it cannot vouch for;
    ``position``, ``expected`` and ``prev`` then say where, and the caller's exact frame-by-frame
    checks take over there to say precisely what is wrong.
    """

    def __init__(
        self,
        reader: SegmentReader,
        stream_id: StreamId,
        expected: int,
        prev: bytes | None,
        end: int,
        *,
        anchor: bytes | None = None,
        head: tuple[int, bytes | None] | None = None,
        dictionaries: DictionarySource | None = None,
    ) -> None:
        self.file = reader.raw_file()
        self.dictionaries = dictionaries
        self.stream_id = stream_id
        self.position = reader.position
        self.expected = expected
        self.prev = prev
        self.end = end
        self.anchor = anchor
        self.head_offset, self.head = head if head is not None else (-1, None)

    def frames(self) -> Iterator[tuple[Record, int, int, bool]]:
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
                or (not flags & FLAG_COMPRESSED and (stored_len != raw_len or flags & FLAG_DICTIONARY))
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
            view = memoryview(buf)
            if (
                frame_checksum(view[at : at + HEADER_SIZE], view[at + HEADER_SIZE : body_end])
                != unpack_checksum(buf, body_end)[0]
            ):
                return
            stored = buf[at + HEADER_SIZE : body_end]
            if flags & FLAG_COMPRESSED:
                try:
                    payload = decode_stored(stored, flags, raw_len, sid, self.dictionaries)
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
            record = Record(sid, Offset(offset), _KINDS[kind], ts, ChainHash(prev), ChainHash(own), payload)
            position = self.position
            self.position += size
            self.expected, self.prev = offset + 1, own
            yield record, position, size, bool(flags & FLAG_BATCH_END)

    def _refill(self, buf: bytes, base: int, at: int, need: int) -> tuple[bytes, int, int]:
        """Keep ``buf[at:]`` and read on, to hold at least ``need`` bytes from ``at`` (if the file has them)."""
        rest = buf[at:]
        want = min(max(_CHUNK, need - len(rest)), self.end - (base + len(buf)))
        self.file.seek(base + len(buf))
        more = self.file.read(want) if want > 0 else b""
        return rest + more, base + at, 0
