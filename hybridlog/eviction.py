"""Eviction: sealed segments that are safely in the bucket leave the local disk.

``evict(store, objects, vkeys, keep_bytes=..., keep_age_s=...)`` keeps, per stream, the newest
segments up to ``keep_bytes`` of segment files (the active segment always stays and counts) and
those written less than ``keep_age_s`` seconds ago; a segment must pass both bounds given to stay.
A sealed segment past them is evicted only when all of these hold:

1. the stream's last manifest in the bucket (its signature checked) names it, with the digest and
   size the catalog recorded when it was sealed;
2. its object, read back from the bucket now, has that size and BLAKE3 digest.

Then its stub is written durably and the file removed (``evicted.evict_file``); from then on reads
fetch it back through the store's bounded cache (``evicted.readable_path``). So a segment leaves
the disk only while a whole, signed copy of it is in the bucket.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from hybridlog.errors import InvalidArgument, ObjectMissing
from hybridlog.evicted import EvictedSegment, evict_file, is_evicted
from hybridlog.layout import segment_path
from hybridlog.manifest import SegmentObject
from hybridlog.note import VerifierKey
from hybridlog.objects import ObjectStore
from hybridlog.segment import data_digest
from hybridlog.storage import Storage
from hybridlog.tiering import latest_manifest, sealed_rows, segment_rows
from hybridlog.types import StreamId


@dataclass(frozen=True, slots=True)
class StreamEviction:
    """What eviction did for a stream: the segments it evicted and their bytes, and the sealed
    segments past the bounds it had to keep because the bucket's last manifest does not hold them
    (upload first)."""

    stream_id: int
    evicted: list[int]
    evicted_bytes: int
    not_uploaded: list[int]


def evict(
    store: Storage,
    objects: ObjectStore,
    vkeys: list[str] | list[VerifierKey],
    *,
    keep_bytes: int | None = None,
    keep_age_s: float | None = None,
) -> list[StreamEviction]:
    """Evict, stream by stream, the sealed segments past the local retention (module docstring)."""
    if keep_bytes is None and keep_age_s is None:
        raise InvalidArgument("say what to keep locally: keep_bytes, keep_age_s or both")
    if (keep_bytes is not None and keep_bytes < 0) or (keep_age_s is not None and keep_age_s < 0):
        raise InvalidArgument("keep_bytes and keep_age_s must not be negative")
    return [
        _evict_stream(store, objects, vkeys, sid, keep_bytes, keep_age_s, time.time()) for sid in store.stream_ids()
    ]


def _evict_stream(
    store: Storage,
    objects: ObjectStore,
    vkeys: list[str] | list[VerifierKey],
    sid: StreamId,
    keep_bytes: int | None,
    keep_age_s: float | None,
    now: float,
) -> StreamEviction:
    latest = latest_manifest(objects, sid, vkeys)
    in_bucket: dict[int, SegmentObject] = {} if latest is None else {s.segment_no: s for s in latest[0].segments}
    rows = segment_rows(store, sid)
    sealed = {row.segment_no: row for row in sealed_rows(store, sid, rows)}
    evicted: list[int] = []
    not_uploaded: list[int] = []
    local_bytes = 0
    for row in sorted(rows, key=lambda r: r.segment_no, reverse=True):  # newest first
        path = segment_path(store.data_dir, sid, row.segment_no)
        if is_evicted(path):
            continue
        stat = path.stat()
        local_bytes += stat.st_size
        too_many = keep_bytes is not None and local_bytes > keep_bytes
        too_old = keep_age_s is not None and now - stat.st_mtime > keep_age_s
        if not (too_many or too_old) or row.segment_no not in sealed:
            continue  # within the retention, or the active segment
        uploaded = in_bucket.get(row.segment_no)
        if uploaded is None or (uploaded.digest, uploaded.size) != (row.digest, row.size_bytes):
            not_uploaded.append(row.segment_no)
            continue
        if not _bucket_holds(objects, uploaded):
            not_uploaded.append(row.segment_no)
            continue
        evict_file(path, EvictedSegment(objects.url, uploaded.key, uploaded.size, uploaded.digest))
        evicted.append(row.segment_no)
        local_bytes -= stat.st_size
    return StreamEviction(sid, sorted(evicted), sum(sealed[n].size_bytes for n in evicted), sorted(not_uploaded))


def _bucket_holds(objects: ObjectStore, segment: SegmentObject) -> bool:
    """Whether the bucket's object for ``segment`` is whole: its size and BLAKE3 digest, read now."""
    try:
        data = objects.get(segment.key)
    except ObjectMissing:
        return False
    return len(data) == segment.size and data_digest(data) == segment.digest
