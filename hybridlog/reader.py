"""The verified read: walking a catalog snapshot's segments from a start entry, checking each record.

A read starts at the offset-index entry of its anchor (the nearest checkpoint at or before the
requested offset, trusted because its hash is in the catalog; or offset 0), then reads frames
sequentially, verifying each one's checksum, identity, hash and link to the one before, and
checks the stream's last record against the catalog's chain head. It reads each segment only up
to the size the snapshot committed, so it never sees a batch that is being written.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from hybridlog.catalog import GapRow, StreamSnapshot
from hybridlog.chain import FastWalk, open_record
from hybridlog.dictionary import DictionaryCache
from hybridlog.errors import (
    CatalogMismatch,
    ChecksumMismatch,
    RecordIsolated,
    RecordsCut,
    RecordsUnavailable,
    StorageIOError,
    TruncatedRecord,
    Where,
    os_error_detail,
)
from hybridlog.markers import CUT, ISOLATED
from hybridlog.record import DictionarySource, FrameError
from hybridlog.segment import IncompleteFrame, SegmentReader, segment_numbers_on_disk, segment_path, stream_path
from hybridlog.types import GENESIS_HASH, Record, StreamId

VerifiedFrame = tuple[int, int, int, Record]
"""A verified record and where its frame is: segment_no, byte position, frame size, record."""

NEW_STREAM_GRACE_NS = 5_000_000_000
"""How long a stream's newest segment file may have been written before the catalog must list it.

A writer creates a new stream's first segment file and writes its first batch there before it
commits the catalog rows that name the stream; a reader that looks in between sees records on
disk that the catalog does not list yet. Within this time of the file's last write the reader
waits for that commit; after it, the catalog has lost the stream.
"""


def unlisted_stream_problem(data_dir: Path, stream_id: StreamId, listed: Callable[[], bool]) -> CatalogMismatch | None:
    """Why a stream the catalog did not list is not simply empty: its directory holds records.

    ``listed`` asks the catalog again (True: it lists the stream now). Returns None when the
    stream has no segment file with bytes in it, or once ``listed`` says the commit has landed;
    else, once the newest such file is older than ``NEW_STREAM_GRACE_NS``, the CatalogMismatch
    to raise.
    """
    directory = stream_path(data_dir, stream_id)
    while True:
        written: list[os.stat_result] = []
        numbers, _ = segment_numbers_on_disk(directory)
        for no in numbers:
            try:
                info = segment_path(data_dir, stream_id, no).stat()
            except FileNotFoundError:
                continue  # a failed first batch removes its new file again
            if info.st_size > 0:
                written.append(info)
        if not written or listed():
            return None
        if time.time_ns() - max(info.st_mtime_ns for info in written) >= NEW_STREAM_GRACE_NS:
            return CatalogMismatch(
                f"the catalog has no row for this stream, yet its directory {directory} holds"
                f" {len(written)} segment file(s) with {sum(info.st_size for info in written)} bytes",
                stream_id=stream_id,
                hint=f"see it with `hybridlog check {data_dir}`, rebuild the stream's rows with"
                f" `hybridlog repair {data_dir}`",
            )
        time.sleep(0.01)


def verified_records(
    data_dir: Path, snap: StreamSnapshot, from_offset: int, dictionaries: DictionarySource | None = None
) -> Iterator[Record]:
    """Walk a snapshot's segments from its start entry, verifying every record (see iter_records).

    ``dictionaries``: the store's cache of stream dictionaries (default: one for this walk).
    """
    for _, _, _, record in verified_frames(data_dir, snap, from_offset, dictionaries):
        yield record


def verified_frames(
    data_dir: Path, snap: StreamSnapshot, from_offset: int, dictionaries: DictionarySource | None = None
) -> Iterator[VerifiedFrame]:
    """``verified_records``, with each record's place in its segment."""
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
    if snap.resume is not None:
        prev = snap.resume.link_hash  # the stored link of the first record after an isolated gap
    # The walk must not go into the next isolated gap: its bytes do not verify, and a read that
    # reaches it says so (cut gaps need nothing: the cut marker links past them).
    ahead = next((g for g in snap.gaps if g.action == ISOLATED and g.first_offset >= expected), None)
    for seg in snap.segments:
        if seg.segment_no < snap.start.segment_no:
            continue
        if ahead is not None and expected == ahead.first_offset:
            raise unavailable(data_dir, ahead, expected)
        path = segment_path(data_dir, sid, seg.segment_no)
        position = snap.start.position if seg.segment_no == snap.start.segment_no else 0
        if (
            position == 0
            and expected != seg.first_offset
            and not _starts_with_cut_marker(snap, seg.first_offset, expected)
        ):
            raise CatalogMismatch(
                f"segment starts at offset {seg.first_offset}", stream_id=sid, offset=expected, segment=path
            )
        try:
            reader = SegmentReader(path, position)
        except FileNotFoundError as e:
            raise CatalogMismatch("segment file is missing", stream_id=sid, offset=expected, segment=path) from e
        except OSError as e:  # permission denied, not a file...: the segment may be fine, so no IntegrityError
            raise StorageIOError(f"stream {sid}: cannot read segment {path}: {os_error_detail(e)}", path=path) from e
        with reader:
            # The fast walk verifies everything the slow one does; it stops at the first record it
            # cannot vouch for, and the slow walk below takes over there to raise the exact error.
            fast = FastWalk(
                reader,
                sid,
                expected,
                prev,
                ahead.start_byte if ahead is not None and ahead.segment_no == seg.segment_no else seg.size_bytes,
                anchor=snap.anchor.hash if snap.anchor else None,
                head=(stream.next_offset - 1, stream.chain_head),
                dictionaries=dictionaries,
            )
            no = seg.segment_no
            for record, at, size, _batch_end in fast.frames():
                if record.offset >= from_offset:
                    yield no, at, size, record
            expected, prev = fast.expected, fast.prev
            reader.seek(fast.position)
            while expected < seg.next_offset:
                if ahead is not None and expected == ahead.first_offset:
                    raise unavailable(data_dir, ahead, expected)
                at = reader.position
                where: Where = {"stream_id": sid, "offset": expected, "segment": path, "position": at}
                try:
                    frame = reader.read_frame()
                except IncompleteFrame as e:
                    raise TruncatedRecord(f"segment is cut short ({e.reason})", **where) from e
                except FrameError as e:
                    raise ChecksumMismatch(f"record is damaged ({e.reason})", **where) from e
                if frame is None:
                    raise TruncatedRecord("segment ends before the catalog says it does", **where)
                record = open_record(
                    frame,
                    stream_id=sid,
                    expected_offset=expected,
                    prev_hash=prev,
                    segment=path,
                    dictionaries=dictionaries,
                )
                if prev is None and snap.anchor is not None and record.hash != snap.anchor.hash:
                    raise CatalogMismatch("checkpoint record does not match the catalog's anchor", **where)
                if record.offset == stream.next_offset - 1 and record.hash != stream.chain_head:
                    raise CatalogMismatch("last record does not match the catalog's chain head", **where)
                prev = record.hash
                expected = record.offset + 1  # a cut marker jumps over the offsets it names (markers.py)
                if record.offset >= from_offset:
                    yield seg.segment_no, at, reader.position - at, record
        if expected >= stream.next_offset:
            return
    if ahead is not None and expected == ahead.first_offset:
        raise unavailable(data_dir, ahead, expected)
    if expected < stream.next_offset:
        raise CatalogMismatch(
            f"segments end at offset {expected}; the catalog says {stream.next_offset}", stream_id=sid, offset=expected
        )


def _starts_with_cut_marker(snap: StreamSnapshot, first_offset: int, expected: int) -> bool:
    """A segment whose first record is a cut marker starts, for the catalog, at the first offset cut
    (the walk's offset there); a read that starts at the marker expects the marker's own offset."""
    return any(g.action == CUT and g.first_offset == first_offset and g.next_offset == expected for g in snap.gaps)


def unavailable(data_dir: Path, gap: GapRow, offset: int) -> RecordsUnavailable:
    """The error for a read that reaches ``offset`` inside a gap repair made."""
    sid = gap.stream_id
    where = f"offsets {gap.first_offset}..{gap.next_offset - 1}"
    more = f"the stream reads on from offset {gap.next_offset}"
    if gap.action == ISOLATED:
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
