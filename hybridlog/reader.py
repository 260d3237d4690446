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

from hybridlog.catalog import StreamSnapshot
from hybridlog.chain import FastWalk, open_record
from hybridlog.dictionary import DictionaryCache
from hybridlog.errors import CatalogMismatch, ChecksumMismatch, TruncatedRecord, Where
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
            fast = FastWalk(
                reader,
                sid,
                expected,
                prev,
                seg.size_bytes,
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
                if expected == stream.next_offset - 1 and record.hash != stream.chain_head:
                    raise CatalogMismatch("last record does not match the catalog's chain head", **where)
                prev = record.hash
                expected += 1
                if record.offset >= from_offset:
                    yield seg.segment_no, at, reader.position - at, record
        if expected >= stream.next_offset:
            return
    if expected < stream.next_offset:
        raise CatalogMismatch(
            f"segments end at offset {expected}; the catalog says {stream.next_offset}", stream_id=sid, offset=expected
        )
