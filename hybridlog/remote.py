"""Reading a store from its objects alone (``Storage.open_remote``, ``docs/tiering.md``).

``fetch_remote`` reads every stream's manifests from the bucket, checks each one's signature and
that each follows the one before (``manifest.check_follows``: the chain of manifests from 1 to
the last), then brings the last manifest's segments and dictionaries into a local directory laid
out as a store (``layout.py``), each checked against the digest and size the manifest gives. A
file already in the directory with the right digest is not fetched again (the directory is a
cache). An object whose bytes do not match is still written, so that the verified walk that
follows can name the first record in it that does not verify; the mismatch is returned too.

``Storage.open_remote`` then opens the directory (the catalog is built from the segments, as for
any store that has none), walks every stream from its floor with the chain verified, and checks
it against the manifest: each segment ends on the chain hash the manifest gives, and the stream
ends at the manifest's head.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hybridlog.backend import BackendBase
from hybridlog.dictionary import DictionaryCache
from hybridlog.errors import BucketCutBack, IntegrityError, ManifestError, RetainedBucket, StorageError
from hybridlog.layout import dictionary_path, segment_path
from hybridlog.manifest import Manifest, check_follows, manifest_key, manifest_number, open_manifest
from hybridlog.note import VerifierKey
from hybridlog.objects import ObjectStore
from hybridlog.record import FrameError
from hybridlog.segment import SegmentReader, data_digest, make_dirs_durably, write_file_durably
from hybridlog.types import StreamId
from hybridlog.walk import SegmentWalk

_STREAM_MANIFEST = re.compile(r"streams/(\d+)/manifests/")


@dataclass(frozen=True, slots=True)
class RemoteStream:
    """A stream as the bucket holds it: its last manifest, and the segments (by number) whose
    object did not have the manifest's digest or size."""

    manifest: Manifest
    mismatched: tuple[int, ...]


def remote_stream_ids(objects: ObjectStore) -> list[StreamId]:
    """The streams that have a manifest in the bucket."""
    found = {int(m.group(1)) for key in objects.list("streams/") if (m := _STREAM_MANIFEST.match(key))}
    return [StreamId(sid) for sid in sorted(found)]


def manifest_chain(objects: ObjectStore, stream_id: int, vkeys: list[str] | list[VerifierKey]) -> list[Manifest]:
    """Every manifest of the stream, 1 to the last, each signed by one of ``vkeys`` and following
    the one before; ManifestError otherwise (a number missing, a changed or unsigned manifest)."""
    numbers = sorted(n for key in objects.list(f"streams/{stream_id}/manifests/") if (n := manifest_number(key)))
    if numbers != list(range(1, len(numbers) + 1)):
        raise ManifestError(f"stream {stream_id}'s manifests are not numbered 1 to {len(numbers)}: {numbers}")
    chain: list[Manifest] = []
    previous_signed = ""
    for number in numbers:
        signed = objects.get(manifest_key(stream_id, number)).decode()
        manifest = open_manifest(signed, vkeys)
        if (manifest.stream_id, manifest.number) != (stream_id, number):
            raise ManifestError(f"manifest {number} of stream {stream_id} says it is another one")
        if chain:
            check_follows(chain[-1], previous_signed, manifest)
        chain.append(manifest)
        previous_signed = signed
    return chain


def _fetch(objects: ObjectStore, key: str, path: Path, digest: bytes, size: int) -> bool:
    """Bring an object to ``path`` unless the file there already has ``digest``; True if what is
    there now has the digest and size the manifest gives."""
    if path.exists() and path.stat().st_size == size and data_digest(path.read_bytes()) == digest:
        return True
    data = objects.get(key)
    make_dirs_durably(path.parent)
    write_file_durably(path, data)
    return len(data) == size and data_digest(data) == digest


def fetch_remote(
    objects: ObjectStore,
    vkeys: list[str] | list[VerifierKey],
    directory: Path,
    against: Sequence[str] = (),
    *,
    from_genesis: bool = False,
) -> dict[StreamId, RemoteStream]:
    """Every stream's checked manifest chain, and its last manifest's objects in ``directory``.

    ``against``: signed manifests seen before (kept by an auditor, say); BucketCutBack unless the
    bucket still holds each of them, unchanged, in its stream's chain. ``from_genesis``:
    RetainedBucket (before fetching anything) if a stream's last manifest has a floor above 0."""
    chains = {sid: manifest_chain(objects, sid, vkeys) for sid in remote_stream_ids(objects)}
    for signed in against:
        seen = open_manifest(signed, vkeys)
        chain = chains.get(StreamId(seen.stream_id), [])
        if len(chain) < seen.number or chain[seen.number - 1] != seen:
            raise BucketCutBack(
                f"the bucket no longer holds manifest {seen.number} of stream {seen.stream_id} as it was seen"
                f" (it holds {len(chain)} manifests of the stream)",
                stream_id=seen.stream_id,
            )
    retained = {sid: chain[-1].floor for sid, chain in chains.items() if chain[-1].floor > 0}
    if from_genesis and retained:
        raise RetainedBucket(f"retention removed the first records of streams from the bucket (floors: {retained})")
    streams: dict[StreamId, RemoteStream] = {}
    for sid, chain in chains.items():
        manifest = chain[-1]
        named = {segment_path(directory, sid, s.segment_no) for s in manifest.segments}
        extra = sorted(p.name for p in segment_path(directory, sid, 0).parent.glob("*.seg") if p not in named)
        if extra:
            raise StorageError(
                f"the cache {directory} holds segments of stream {sid} its manifest does not name: {extra}",
                hint="open the remote store with an empty cache directory",
            )
        for d in manifest.dictionaries:
            if not _fetch(objects, d.key, dictionary_path(directory, sid, d.dictionary_no), d.digest, d.size):
                raise ManifestError(f"stream {sid}'s dictionary {d.dictionary_no} is not the object the manifest names")
        mismatched = tuple(
            s.segment_no
            for s in manifest.segments
            if not _fetch(objects, s.key, segment_path(directory, sid, s.segment_no), s.digest, s.size)
        )
        streams[sid] = RemoteStream(manifest, mismatched)
    return streams


@dataclass(frozen=True, slots=True)
class AnchoredStream:
    """A stream of the bucket verified from its last manifest's floor anchor: ``records`` records,
    offsets ``floor`` to ``head - 1``, the last with hash ``head_hash``."""

    stream_id: int
    floor: int
    head: int
    head_hash: bytes
    records: int


def verify_anchored(
    objects: ObjectStore,
    vkeys: list[str] | list[VerifierKey],
    directory: Path,
    against: Sequence[str] = (),
    stream_ids: list[int] | None = None,
) -> list[AnchoredStream]:
    """Verify every stream from the objects alone, retention or not: the manifests checked and the
    objects fetched as ``fetch_remote`` does, then each stream's segments walked with the chain
    verified from its manifest's floor (the first record must link to the signed floor hash), each
    segment ending on its signed end hash, the last on the head. IntegrityError names the stream,
    segment and offset where the objects part from the manifest. ``stream_ids``: walk only these
    (every manifest is checked all the same)."""
    streams = fetch_remote(objects, vkeys, directory, against)
    wanted = sorted(streams) if stream_ids is None else [StreamId(s) for s in stream_ids if s in streams]
    return [_walk_from_anchor(directory, sid, streams[sid]) for sid in wanted]


def _walk_from_anchor(directory: Path, sid: StreamId, remote: RemoteStream) -> AnchoredStream:
    manifest = remote.manifest
    dictionaries = DictionaryCache(directory)
    expected, link, records = manifest.floor, manifest.floor_hash, 0
    for segment in manifest.segments:
        path = segment_path(directory, sid, segment.segment_no)
        with SegmentReader(path) as reader:
            walk = SegmentWalk(reader, sid, expected, link, path.stat().st_size, dictionaries=dictionaries)
            try:
                for record in walk.records():
                    expected, link, records = record.offset + 1, record.hash, records + 1
            except FrameError as e:
                raise IntegrityError(
                    f"the bucket's copy holds no whole record here: {e.reason}",
                    stream_id=sid,
                    offset=walk.expected,
                    segment=path,
                    position=walk.position,
                ) from e
        if (expected, link) != (segment.next_offset, segment.end_hash):
            raise IntegrityError(
                f"segment {segment.segment_no} of the bucket's copy does not end where its manifest"
                f" ({manifest.number}) says (offset {segment.next_offset}, its end hash)",
                stream_id=sid,
                offset=expected,
                segment=path,
            )
    _check_objects_matched(sid, remote)
    return AnchoredStream(sid, manifest.floor, manifest.head, manifest.head_hash, records)


def check_remote_stream(store: BackendBase, sid: StreamId, remote: RemoteStream) -> None:
    """Walk the stream's records with the chain verified from genesis and check them against its
    manifest: IntegrityError naming the stream, segment and offset where they part."""
    manifest = remote.manifest
    ends = {s.next_offset - 1: s for s in manifest.segments}
    at = manifest.floor
    for record in store.iter_records(sid, manifest.floor, anchored=False):
        segment = ends.get(record.offset)
        if segment is not None and record.hash != segment.end_hash:
            raise IntegrityError(
                f"segment {segment.segment_no} of the bucket's copy ends on another chain hash than its manifest"
                f" ({manifest.number}) gives",
                stream_id=sid,
                offset=record.offset,
            )
        at = record.offset + 1
    if at != manifest.head:
        raise IntegrityError(
            f"the bucket's segments end at offset {at}, its manifest {manifest.number} at {manifest.head}",
            stream_id=sid,
            offset=at,
        )
    _check_objects_matched(sid, remote)


def _check_objects_matched(sid: StreamId, remote: RemoteStream) -> None:
    """IntegrityError if a segment object did not have its manifest's digest or size (raised after
    the walk, which names the first record in it that does not verify, when one does not)."""
    if remote.mismatched:
        raise IntegrityError(
            f"segment {remote.mismatched[0]} in the bucket is not the object its manifest names (digest or size)",
            stream_id=sid,
        )
