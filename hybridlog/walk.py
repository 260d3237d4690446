"""The verifying walk: the one home of reading segment frames back as verified records.

``open_record`` turns one frame into a verified ``Record`` (identity, hash, chain link).
``SegmentWalk`` walks a segment from a byte position: fast, in large reads, over everything it can
vouch for, then frame by frame from where that stops (the one hand-off), to say precisely what is
wrong. Two walks use it: ``verified_frames`` (a verified read of a catalog snapshot from its start
entry, a trusted checkpoint or offset 0, up to the sizes the snapshot committed, checked against the
chain head) and ``SegmentScan`` (recovery, rebuild and repair: a segment to its end in complete
batches, with a ``ScanProblem`` where it stops early, judged by ``diagnose.py``).
``reverify_frame`` re-proves a frame a walk verified before from its hash alone (verified runs).
The frame-header rules themselves are ``record.header_problem``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import blake3
import zstandard

from hybridlog.dictionary import DictionaryCache, DictionaryUnavailable
from hybridlog.errors import (
    CatalogMismatch,
    ChainBroken,
    ChecksumMismatch,
    DamagedDictionary,
    DictionaryUnusable,
    HashMismatch,
    IntegrityError,
    MissingDictionary,
    RecordsUnavailable,
    StorageIOError,
    TruncatedRecord,
    Where,
    os_error_detail,
)
from hybridlog.evicted import readable_path
from hybridlog.layout import dictionary_name, segment_path
from hybridlog.markers import is_cut_jump, unavailable
from hybridlog.native import long_hash, speedups
from hybridlog.record import (
    CHECKSUM,
    CHECKSUM_SIZE,
    FLAG_BATCH_END,
    FLAG_COMPRESSED,
    FRAME_OVERHEAD_V1,
    HASH_FIELD,
    HEADER,
    HEADER_SIZE,
    HEADER_V1,
    HEADER_V1_SIZE,
    MAGIC,
    MAX_STORED_LEN,
    VERSION_BYTE,
    DictionarySource,
    FrameError,
    decode_payload,
    decode_stored,
    dictionary_no_of,
    frame_checksum,
    header_problem,
    parse_header,
    record_hash,
)
from hybridlog.segment import Frame, IncompleteFrame, SegmentReader
from hybridlog.types import GENESIS_HASH, ChainHash, GlobalPosition, MarkerAction, Offset, Record, RecordKind, StreamId

if TYPE_CHECKING:
    from hybridlog.catalog_rows import GapRow, StreamSnapshot


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
    own = header.hash_of(payload)  # its stream is ``stream_id``: checked above
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
        global_position=None if header.global_position is None else GlobalPosition(header.global_position),
    )


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


def reverify_frame(
    frame: bytes, stream_id: StreamId, offset: int, verified_hash: bytes, dictionaries: DictionarySource
) -> tuple[int, bytes] | None:
    """(kind, payload) of the record at ``offset`` if ``frame`` is exactly the record whose hash
    was verified before.

    The hash is recomputed from the frame's contents; equal to ``verified_hash`` it proves the
    frame holds that record. None for anything else (the caller falls back to a verified walk,
    which says precisely what is wrong).
    """
    if len(frame) < FRAME_OVERHEAD_V1:
        return None
    if len(frame) >= HEADER_SIZE and frame[VERSION_BYTE] == 2:
        magic, _, kind, flags, reserved, sid, off, _, _, stored_len, raw_len, _, own = HEADER.unpack_from(frame)
        if (
            own == verified_hash
            and sid == stream_id
            and off == offset
            and magic == MAGIC
            and flags in (0, FLAG_BATCH_END)  # uncompressed: the common case, checked here
            and not reserved
            and kind <= 2
            and stored_len == raw_len == len(frame) - HEADER_SIZE
        ):
            payload = frame[HEADER_SIZE:]
            if _record_hash is not None:  # the compiled twin of the two lines below (native.py)
                return (kind, payload) if _record_hash(frame, payload, long_hash) == verified_hash else None
            # the hash covers the header as written with flags 0 (record.py)
            head = frame[:HASH_FIELD] if not flags else frame[:6] + b"\x00" + frame[7:HASH_FIELD]
            return (kind, payload) if blake3.blake3(head).update(payload).digest() == verified_hash else None
    try:
        header = parse_header(frame)
    except FrameError:
        return None
    if (
        header.hash != verified_hash
        or header.stream_id != stream_id
        or header.offset != offset
        or len(frame) != header.frame_size
    ):
        return None
    stored = memoryview(frame)[header.header_size : header.header_size + header.stored_len]
    try:
        payload = decode_payload(header, stored, dictionaries)
    except FrameError:
        return None
    return (header.kind, payload) if header.hash_of(payload) == verified_hash else None


_CHUNK, _FIRST_CHUNK = 1 << 20, 8 << 10  # the fast walk's reads: 8 KiB, doubling up to 1 MiB (a page walks ~its size)
_KINDS = (RecordKind.EVENT, RecordKind.CHECKPOINT, RecordKind.REPAIR)
_walk_plain = speedups.walk_plain if speedups is not None else None
_record_hash = speedups.record_hash if speedups is not None else None

WalkedFrame = tuple[Record, int, int, bool]
"""A verified record and its frame: record, byte position, frame size, batch end."""


class SegmentWalk:
    """THE verifying walk over one segment, from a reader's position: fast first, then exact.

    The fast part verifies frames up to ``end`` in large reads, without per-frame objects, checking
    what ``SegmentReader.read_frame`` and ``open_record`` check (header rules, identity, checksum,
    bounded decompression, hash, link) plus, when given, the trusted ``anchor`` hash (the first
    record's, when ``prev`` is None) and the catalog's ``head`` (offset, hash). At the first frame
    it cannot vouch for, the exact part takes over there, frame by frame, to say precisely what is
    wrong: it raises FrameError (IncompleteFrame when the file ends inside a frame), the
    IntegrityError of ``open_record``, or CatalogMismatch for a record that is not the anchor or the
    head. The exact part reads on to the end of the file, or until ``stop(expected)`` says to
    stop before the next frame.

    ``frames`` yields every verified record (``WalkedFrame``). ``position``, ``expected`` and
    ``prev`` say where the walk is: the next frame (or the bad one, after an error), the offset it
    must hold and the hash it must link to.
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
        stop: Callable[[int], bool] | None = None,
        last_position: int = 0,
    ) -> None:
        self.reader = reader
        self.last_position = last_position
        self.fd = reader.raw_file().fileno()  # the fast walk preads: the file's 1 MiB buffer reads 1 MiB for a few KiB
        self.dictionaries = dictionaries
        self.stream_id = stream_id
        self.position = reader.position
        self.expected = expected
        self.prev = prev
        self.end = end
        self.anchor = anchor
        self.head_offset, self.head = head if head is not None else (-1, None)
        self.stop, self.chunk = stop, _FIRST_CHUNK

    def frames(self) -> Iterator[WalkedFrame]:
        """Every verified frame from the reader's position: the fast walk's, then the exact one's after it."""
        yield from self._fast()  # type: ignore[misc]  # frames=True: WalkedFrames
        # The one hand-off: the exact walk starts at the first frame the fast one did not vouch for.
        self.reader.seek(self.position)
        yield from self._exact()

    def records(self) -> Iterator[Record]:
        """``frames``, the records only (a read's walk: no tuple per record)."""
        yield from self._fast(frames=False)  # type: ignore[misc]  # frames=False: Records
        self.reader.seek(self.position)
        for record, _, _, _ in self._exact():
            yield record

    def _fast(self, frames: bool = True) -> Iterator[WalkedFrame | Record]:
        sid, end, head_offset, head = self.stream_id, self.end, self.head_offset, self.head
        buf, base = b"", self.position  # buf holds the file's bytes from ``base`` on
        unpack_v2, unpack_v1, unpack_checksum = HEADER.unpack_from, HEADER_V1.unpack_from, CHECKSUM.unpack_from
        new_record, hasher, kinds, walk_plain = Record, blake3.blake3(), _KINDS, _walk_plain
        position, expected, link, last_position = self.position, self.expected, self.prev, self.last_position
        anchor = self.anchor
        while position < end:
            at = position - base
            if walk_plain is not None and len(buf) - at >= HEADER_SIZE and buf[at + VERSION_BYTE] == 2:
                # The compiled twin of this loop (native.py) takes the run of plain format-2 frames
                # from here; it stops at the first frame it does not vouch for, which the loop below
                # then takes (reading on, decompressing, or finding it bad) exactly as without it.
                items, at, position, expected, link, last_position = walk_plain(
                    buf, at, position, end, sid, expected, link, anchor, head_offset, head, last_position, kinds,
                    frames, long_hash,
                )  # fmt: skip
                if items:
                    self.position, self.expected, self.prev = position, expected, link
                    self.last_position = last_position
                    yield from items
                    continue
            if len(buf) - at < HEADER_SIZE:
                buf, base, at = self._refill(buf, base, at, HEADER_SIZE)
                if len(buf) - at < HEADER_SIZE:
                    return
            gp: GlobalPosition | None
            if buf[at + VERSION_BYTE] == 2:
                magic, _, kind, flags, reserved, rsid, offset, gp, ts, stored_len, raw_len, prev, own = unpack_v2(
                    buf, at
                )
                size = HEADER_SIZE + stored_len
                # the common frame (uncompressed, format 2) is checked here; header_problem has every rule
                plain = magic == MAGIC and not reserved and kind <= 2 and flags in (0, FLAG_BATCH_END)
                if gp <= last_position or (
                    not (plain and stored_len == raw_len <= MAX_STORED_LEN)
                    and header_problem(magic, 2, kind, flags, reserved, stored_len, raw_len) is not None
                ):
                    return
            else:
                magic, version, kind, flags, reserved, rsid, offset, ts, stored_len, raw_len, prev, own = unpack_v1(
                    buf, at
                )
                size, gp = FRAME_OVERHEAD_V1 + stored_len, None
                if last_position or header_problem(magic, version, kind, flags, reserved, stored_len, raw_len):
                    return  # not a frame, or a format-1 record after a format-2 one
            if rsid != sid or offset != expected or position + size > end:
                return
            if len(buf) - at < size:
                buf, base, at = self._refill(buf, base, at, size)
                if len(buf) - at < size:
                    return
            if gp is None:  # format 1: header, payload, checksum
                body_start, body_end = at + HEADER_V1_SIZE, at + size - CHECKSUM_SIZE
                view = memoryview(buf)
                if frame_checksum(view[at:body_start], view[body_start:body_end]) != unpack_checksum(buf, body_end)[0]:
                    return
            else:
                body_start, body_end = at + HEADER_SIZE, at + size
            payload = buf[body_start:body_end]
            if flags & FLAG_COMPRESSED:
                try:
                    payload = decode_stored(payload, flags, raw_len, sid, self.dictionaries)
                except FrameError:
                    return
            if flags == 0 and gp is not None:  # the header as written is what the hash covers (record.py)
                hasher.reset()  # one hasher for the walk: creating one costs more than hashing a record
                hasher.update(buf[at : at + HASH_FIELD])
                if hasher.update(payload).digest() != own:
                    return
            elif record_hash(sid, offset, kind, ts, prev, payload, gp) != own:
                return
            if link is None:
                if own != self.anchor:
                    return
            elif prev != link:
                return
            if offset == head_offset and own != head:
                return
            record = new_record(sid, offset, kinds[kind], ts, prev, own, payload, gp)
            at_frame, position = position, position + size
            expected, link = offset + 1, own
            if gp is not None:
                last_position = gp
            self.position, self.expected, self.prev, self.last_position = position, expected, link, last_position
            yield (record, at_frame, size, bool(flags & FLAG_BATCH_END)) if frames else record

    def _refill(self, buf: bytes, base: int, at: int, need: int) -> tuple[bytes, int, int]:
        """Keep ``buf[at:]`` and read on, to hold at least ``need`` bytes from ``at`` (if the file has them)."""
        rest, chunk, self.chunk = buf[at:], self.chunk, min(2 * self.chunk, _CHUNK)
        want = min(max(chunk, need - len(rest)), self.end - (base + len(buf)))
        more = os.pread(self.fd, want, base + len(buf)) if want > 0 else b""
        return rest + more, base + at, 0

    def _exact(self) -> Iterator[WalkedFrame]:
        reader, path = self.reader, self.reader.path
        while self.stop is None or not self.stop(self.expected):
            frame = reader.read_frame()  # on a FrameError the reader stays at the bad frame
            if frame is None:
                return
            record = open_record(
                frame,
                stream_id=self.stream_id,
                expected_offset=self.expected,
                prev_hash=self.prev,
                segment=path,
                dictionaries=self.dictionaries,
            )
            gp = record.global_position
            if (gp is None and self.last_position) or (gp is not None and gp <= self.last_position):
                raise IntegrityError(
                    f"record's global position {gp} does not follow {self.last_position}, the stream's one before it",
                    stream_id=self.stream_id,
                    offset=self.expected,
                    segment=path,
                    position=frame.position,
                )
            mismatch = None
            if self.prev is None and self.anchor is not None and record.hash != self.anchor:
                mismatch = "checkpoint record does not match the catalog's anchor"
            elif record.offset == self.head_offset and record.hash != self.head:
                mismatch = "last record does not match the catalog's chain head"
            if mismatch is not None:
                raise CatalogMismatch(
                    mismatch, stream_id=self.stream_id, offset=self.expected, segment=path, position=frame.position
                )
            self.position = reader.position
            self.expected, self.prev = record.offset + 1, record.hash  # a cut marker jumps (markers.py)
            if gp is not None:
                self.last_position = gp
            yield record, frame.position, frame.header.frame_size, frame.header.batch_end


VerifiedFrame = tuple[int, int, int, Record]
"""A verified record and where its frame is: segment_no, byte position, frame size, record."""


def verified_records(
    data_dir: Path, snap: StreamSnapshot, from_offset: int, dictionaries: DictionarySource | None = None
) -> Iterator[Record]:
    """Walk a snapshot's segments from its start entry, verifying every record (see iter_records).

    ``dictionaries``: the store's cache of stream dictionaries (default: one for this walk).
    """
    try:
        for _, walk in _segment_walks(data_dir, snap, from_offset, dictionaries):
            try:
                if walk.expected < from_offset:  # the walk starts at an anchor before the first record asked for
                    for record in walk.records():
                        if record.offset >= from_offset:
                            yield record
                else:
                    yield from walk.records()
            except FrameError as e:
                raise _frame_damage(e, walk) from e
    except IntegrityError as e:
        add_repair_hint(e, data_dir)
        raise


def add_repair_hint(error: IntegrityError, data_dir: Path) -> None:
    """Point a read's integrity error at ``check`` and ``repair`` (a missing or damaged dictionary
    keeps its own hint: restore the file first; so does a range repair already made unreadable)."""
    if not isinstance(error, DictionaryUnusable | RecordsUnavailable):
        error.hint = f"see it with `hybridlog check {data_dir}`, fix it with `hybridlog repair {data_dir}`"


def verified_frames(
    data_dir: Path, snap: StreamSnapshot, from_offset: int, dictionaries: DictionarySource | None = None
) -> Iterator[VerifiedFrame]:
    """``verified_records``, with each record's place in its segment."""
    for segment_no, walk in _segment_walks(data_dir, snap, from_offset, dictionaries):
        try:
            for record, at, size, _batch_end in walk.frames():
                if record.offset >= from_offset:
                    yield segment_no, at, size, record
        except FrameError as e:
            raise _frame_damage(e, walk) from e


def _frame_damage(error: FrameError, walk: SegmentWalk) -> IntegrityError:
    """The IntegrityError for a frame a verified read cannot open (it ends the file, or is no frame)."""
    where: Where = {
        "stream_id": walk.stream_id,
        "offset": walk.expected,
        "segment": walk.reader.path,
        "position": walk.position,
    }
    if isinstance(error, IncompleteFrame):
        return TruncatedRecord(f"segment is cut short ({error.reason})", **where)
    return ChecksumMismatch(f"record is damaged ({error.reason})", **where)


def _segment_walks(
    data_dir: Path, snap: StreamSnapshot, from_offset: int, dictionaries: DictionarySource | None
) -> Iterator[tuple[int, SegmentWalk]]:
    """The verifying walk of each segment a read of ``snap`` from its start entry goes through, for
    the caller to run; once it has, the checks of where the walk stopped (the committed end, an
    isolated gap, the catalog's head) before the next segment's walk."""
    dictionaries = dictionaries or DictionaryCache(data_dir)
    stream = snap.stream
    sid = stream.stream_id
    for gap in snap.gaps:
        if gap.holds(from_offset):
            raise unavailable(data_dir, gap, from_offset)
    if snap.start is None:
        raise CatalogMismatch(
            "the offset index has no entry to start reading from",
            stream_id=sid,
            offset=snap.anchor.offset if snap.anchor else 0,
        )
    expected: int = snap.start.offset
    prev: bytes | None = None if snap.anchor else GENESIS_HASH
    last_position = 0  # the global position of the record before (0: not known yet)
    if snap.resume is not None:
        prev = snap.resume.link_hash  # the stored link of the first record after an isolated gap
    # The walk must not go into the next isolated gap: its bytes do not verify, and a read that
    # reaches it says so (cut gaps need nothing: the cut marker links past them).
    ahead = next((g for g in snap.gaps if g.action == MarkerAction.ISOLATED and g.first_offset >= expected), None)
    for seg in snap.segments:
        if seg.segment_no < snap.start.segment_no:
            continue
        if ahead is not None and expected == ahead.first_offset:
            raise unavailable(data_dir, ahead, expected)
        path = segment_path(data_dir, sid, seg.segment_no)
        position = snap.start.position if seg.segment_no == snap.start.segment_no else 0
        jumps = position == 0 and expected != seg.first_offset  # only past a cut marker may offsets jump
        if jumps and not _starts_with_cut_marker(snap, seg.first_offset, expected):
            raise CatalogMismatch(
                f"segment starts at offset {seg.first_offset}", stream_id=sid, offset=expected, segment=path
            )
        try:
            reader = SegmentReader(readable_path(path), position)
        except FileNotFoundError as e:
            raise CatalogMismatch("segment file is missing", stream_id=sid, offset=expected, segment=path) from e
        except OSError as e:  # permission denied, not a file...: the segment may be fine, so no IntegrityError
            raise StorageIOError(f"stream {sid}: cannot read segment {path}: {os_error_detail(e)}", path=path) from e
        with reader:
            walk = SegmentWalk(
                reader,
                sid,
                expected,
                prev,
                ahead.start_byte if ahead is not None and ahead.segment_no == seg.segment_no else seg.size_bytes,
                anchor=snap.anchor.hash if snap.anchor else None,
                head=(stream.next_offset - 1, stream.chain_head),
                dictionaries=dictionaries,
                stop=_committed_end(seg.next_offset, ahead),
                last_position=last_position,
            )
            yield seg.segment_no, walk
            expected, prev, last_position = walk.expected, walk.prev, walk.last_position
            if expected < seg.next_offset:  # the walk stopped before the segment's committed end
                if ahead is not None and expected == ahead.first_offset:
                    raise unavailable(data_dir, ahead, expected)
                raise TruncatedRecord(
                    "segment ends before the catalog says it does",
                    stream_id=sid,
                    offset=expected,
                    segment=path,
                    position=walk.position,
                )
        if expected >= stream.next_offset:
            return
    if ahead is not None and expected == ahead.first_offset:
        raise unavailable(data_dir, ahead, expected)
    if expected < stream.next_offset:
        raise CatalogMismatch(
            f"segments end at offset {expected}; the catalog says {stream.next_offset}", stream_id=sid, offset=expected
        )


def _committed_end(next_offset: int, ahead: GapRow | None) -> Callable[[int], bool]:
    """Where a read's exact walk stops in a segment: at its last committed record, or at the next
    isolated gap (the read then raises ``unavailable``)."""
    return lambda expected: expected >= next_offset or (ahead is not None and expected == ahead.first_offset)


def _starts_with_cut_marker(snap: StreamSnapshot, first_offset: int, expected: int) -> bool:
    """A segment whose first record is a cut marker starts, for the catalog, at the first offset cut
    (the walk's offset there); a read that starts at the marker expects the marker's own offset."""
    return any(
        g.action == MarkerAction.CUT and g.first_offset == first_offset and g.next_offset == expected for g in snap.gaps
    )
