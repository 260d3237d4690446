"""Tiering: a store's sealed segments and dictionaries to an object store, committed by a signed
manifest per stream (``docs/tiering.md``; the objects and manifests are in ``objects.py`` and
``manifest.py``).

``Tiering.upload()`` does, for each stream, in this order:

1. read the stream's last manifest from the bucket (its signature checked with the key's verifier);
   one with a higher writer epoch than ours means another writer took the stream over:
   WriterFenced;
2. the sealed segments after that manifest's head, in order (never the active segment): each is
   read verified (its records chain from the manifest's head hash; its file has the BLAKE3 digest
   the catalog recorded when it was sealed), then uploaded create-only under its content address,
   and the stream's dictionaries likewise; an object already there under its address is the same
   bytes (a retry after a crash), so it is not uploaded twice;
3. the next manifest, listing everything before plus those segments, created only if its number is
   free. If another uploader created that number first, the winner is read: a higher epoch is
   WriterFenced; the same epoch (a retry of ours) is planned on from.

Objects come first and the manifest last, so a manifest names only objects whose upload succeeded,
and a reader that goes by manifests never meets a half-uploaded state.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from hybridlog.catalog_rows import SegmentRow
from hybridlog.errors import IntegrityError, InvalidArgument, ManifestError, WriterFenced
from hybridlog.evicted import is_evicted
from hybridlog.failpoints import failpoint
from hybridlog.fence import fence_store, unfence_store
from hybridlog.layout import dictionary_numbers_on_disk, dictionary_path, segment_path, stream_path
from hybridlog.manifest import (
    DictionaryObject,
    Manifest,
    SegmentObject,
    dictionary_key,
    manifest_digest,
    manifest_key,
    manifest_number,
    manifests_prefix,
    open_manifest,
    segment_key,
    segment_key_number,
    segments_prefix,
    sign_manifest,
)
from hybridlog.note import SignerKey, VerifierKey
from hybridlog.objects import ObjectStore
from hybridlog.remote import remote_stream_ids
from hybridlog.segment import data_digest
from hybridlog.storage import Storage
from hybridlog.types import GENESIS_HASH, StreamId

log = logging.getLogger(__name__)

PUBLISH_ATTEMPTS = 5
"""Times an upload re-plans after losing the race for a manifest number to a writer of its epoch."""


@dataclass(frozen=True, slots=True)
class StreamUpload:
    """What one upload did for a stream: the manifest it left as the stream's state, and the
    segments and bytes it uploaded (0 when the bucket had them already)."""

    stream_id: int
    manifest: int
    segments: int
    uploaded_bytes: int


@dataclass(frozen=True, slots=True)
class StreamRetention:
    """What retention did for a stream: the manifest it left, the floor (offsets below it are gone
    from the bucket), the segments it dropped from the manifest and the objects it deleted."""

    stream_id: int
    manifest: int
    floor: int
    dropped_segments: int
    deleted_objects: int


def latest_manifest(
    objects: ObjectStore, stream_id: int, vkeys: list[str] | list[VerifierKey]
) -> tuple[Manifest, str] | None:
    """The stream's manifest with the highest number and its signed text (None: none yet),
    its signature checked."""
    numbers = [n for key in objects.list(manifests_prefix(stream_id)) if (n := manifest_number(key)) is not None]
    if not numbers:
        return None
    signed = objects.get(manifest_key(stream_id, max(numbers))).decode()
    manifest = open_manifest(signed, vkeys)
    if (manifest.stream_id, manifest.number) != (stream_id, max(numbers)):
        raise ManifestError(
            f"manifest {max(numbers)} of stream {stream_id} says it is manifest {manifest.number}"
            f" of stream {manifest.stream_id}"
        )
    return manifest, signed


@dataclass(frozen=True, slots=True)
class StreamTierStatus:
    """A stream's local sealed segments against its state in the bucket."""

    stream_id: int
    manifest: int | None
    """The bucket's last manifest (None: none yet)."""
    epoch: int | None
    bucket_head: int
    """The next offset after what the bucket holds."""
    sealed_head: int
    """The next offset after the local sealed segments (the active segment holds the rest)."""
    pending_segments: int
    pending_bytes: int
    """The sealed segments, and their bytes, the next upload would send."""


def tier_status(store: Storage, objects: ObjectStore, vkeys: list[str] | list[VerifierKey]) -> list[StreamTierStatus]:
    """Every stream's local sealed segments against the bucket's last manifest (checked)."""
    found: list[StreamTierStatus] = []
    for sid in store.stream_ids():
        latest = latest_manifest(objects, sid, vkeys)
        head = 0 if latest is None else latest[0].head
        sealed = sealed_rows(store, sid)
        pending = [row for row in sealed if row.first_offset >= head]
        sealed_head = max((row.next_offset for row in sealed), default=0)
        found.append(
            StreamTierStatus(
                sid,
                None if latest is None else latest[0].number,
                None if latest is None else latest[0].epoch,
                head,
                sealed_head,
                len(pending),
                sum(row.size_bytes for row in pending),
            )
        )
    return found


def segment_rows(store: Storage, sid: StreamId) -> list[SegmentRow]:
    """The stream's ``segments`` rows, by number."""
    no_rows: list[SegmentRow] = []
    return store._reads.query(lambda catalog: catalog.segments(sid), no_rows)


def sealed_rows(store: Storage, sid: StreamId, rows: list[SegmentRow] | None = None) -> list[SegmentRow]:
    """The stream's sealed, non-empty segments' rows, by number, up to the first that is not sealed
    (of ``rows`` when the caller has read them)."""
    if rows is None:
        rows = segment_rows(store, sid)
    sealed = []
    for row in rows:
        if not row.sealed or row.digest is None:
            break
        if row.next_offset > row.first_offset:
            sealed.append(row)
    return sealed


class Tiering:
    """Uploads one store's sealed segments to ``objects`` under manifests signed by ``key`` as
    writer ``epoch`` (see the module docstring). The store may be open read-only: an uploader can
    run in its own process beside the writer."""

    def __init__(self, store: Storage, objects: ObjectStore, key: SignerKey, *, epoch: int = 1) -> None:
        self.store = store
        self.objects = objects
        self.key = key
        self.epoch = epoch
        self._vkeys: list[VerifierKey] = [key.verifier]

    def upload(self, *, progress: Callable[[int], None] | None = None) -> list[StreamUpload]:
        """Upload what is sealed and not yet in the bucket, stream by stream; ``progress`` is told
        the bytes of each object uploaded."""
        return [self.upload_stream(sid, progress=progress) for sid in self.store.stream_ids()]

    def upload_stream(self, stream_id: int, *, progress: Callable[[int], None] | None = None) -> StreamUpload:
        """Upload one stream's sealed segments after its last manifest, then publish the next."""
        sid = StreamId(stream_id)
        for _ in range(PUBLISH_ATTEMPTS):
            found = latest_manifest(self.objects, sid, self._vkeys)
            if found is not None:
                self._check_epoch(found[0])
                self._check_same_history(found[0])
            segments = self._sealed_after(sid, found[0] if found else None)
            if not segments and found is not None and found[0].epoch == self.epoch:
                return StreamUpload(sid, found[0].number, 0, 0)  # nothing new, and the epoch is ours
            uploaded = 0
            for segment, data in segments:
                if self.objects.put_new(segment.key, data):
                    uploaded += len(data)
                failpoint("object-uploaded")
                if progress is not None:
                    progress(len(data))
            dictionaries = self._dictionaries(sid)
            for dictionary, data in dictionaries:
                if self.objects.put_new(dictionary.key, data):
                    uploaded += len(data)
                failpoint("object-uploaded")
            manifest = self._next_manifest(sid, found, [s for s, _ in segments], [d for d, _ in dictionaries])
            failpoint("manifest-built")
            if self.objects.put_new(manifest_key(sid, manifest.number), sign_manifest(manifest, self.key).encode()):
                failpoint("manifest-published")
                log.info("stream %d: manifest %d names %d new segments", sid, manifest.number, len(segments))
                return StreamUpload(sid, manifest.number, len(segments), uploaded)
            log.info("stream %d: manifest %d was created by another uploader; planning again", sid, manifest.number)
        raise WriterFenced(f"stream {sid}: lost the race for the next manifest {PUBLISH_ATTEMPTS} times")

    def claim(self) -> list[StreamUpload]:
        """Take the store's streams over in the bucket as this writer epoch, before writing: for
        each stream, upload what is sealed and publish a manifest of this epoch, which fences every
        writer of a lower one. The epoch must be above every stream's in the bucket, and the store
        must hold every stream the bucket holds, up to its head (a host restored from the bucket
        does). A claim lifts this store's own fence (``fence.py``): it takes the streams back."""
        local = set(self.store.stream_ids())
        missing = sorted(set(remote_stream_ids(self.objects)) - local)
        if missing:
            raise ManifestError(f"the bucket holds streams this store lacks ({missing}): restore them first")
        for sid in sorted(local):
            found = latest_manifest(self.objects, sid, self._vkeys)
            if found is not None and found[0].epoch >= self.epoch:
                raise InvalidArgument(
                    f"stream {sid}'s manifest {found[0].number} is writer epoch {found[0].epoch}: a claim needs a"
                    f" higher epoch than {self.epoch}"
                )
            if found is not None and self.store.next_offset(sid) < found[0].head:
                raise ManifestError(
                    f"stream {sid} in the bucket reaches offset {found[0].head}, this store only"
                    f" {self.store.next_offset(sid)}: restore it from the bucket first"
                )
        claimed = [self.upload_stream(sid) for sid in sorted(local)]
        unfence_store(self.store.data_dir)
        return claimed

    def retain(self, stream_id: int, floor: int) -> StreamRetention:
        """Remove the stream's records below ``floor`` from the bucket, whole segments only: the
        next manifest's floor is the start of the segment that holds ``floor`` (or ``floor``, at a
        boundary), its anchor the chain hash the segment before it ends on, and it lists only the
        segments from there; then their objects are deleted. Everything from the floor on stays
        verifiable from that signed anchor (``remote.verify_anchored``). Refused (InvalidArgument,
        nothing changed) for a floor above the bucket's head, or when this store has evicted a
        segment below it: the bucket holds its only copy. Objects a crash left after the
        manifest are deleted by the next call."""
        sid = StreamId(stream_id)
        for _ in range(PUBLISH_ATTEMPTS):
            found = latest_manifest(self.objects, sid, self._vkeys)
            if found is None:
                raise InvalidArgument(f"stream {sid} has no manifest in the bucket: nothing to retain")
            last, signed = found
            self._check_epoch(last)
            if floor > last.head:
                raise InvalidArgument(f"floor {floor} is above stream {sid}'s head in the bucket ({last.head})")
            dropped = [s for s in last.segments if s.next_offset <= floor]
            if not dropped:
                return StreamRetention(sid, last.number, last.floor, 0, self._delete_below(sid, last))
            data_dir = self.store.data_dir
            evicted = [s.segment_no for s in dropped if is_evicted(segment_path(data_dir, sid, s.segment_no))]
            if evicted:
                raise InvalidArgument(
                    f"stream {sid}'s segments {evicted} are evicted from this store: the bucket holds their only copy"
                )
            manifest = dataclasses.replace(
                last,
                number=last.number + 1,
                previous=manifest_digest(signed),
                epoch=self.epoch,
                floor=dropped[-1].next_offset,
                floor_hash=dropped[-1].end_hash,
                segments=last.segments[len(dropped) :],
            )
            if self.objects.put_new(manifest_key(sid, manifest.number), sign_manifest(manifest, self.key).encode()):
                deleted = self._delete_below(sid, manifest, dropped[-1].segment_no + 1)
                return StreamRetention(sid, manifest.number, manifest.floor, len(dropped), deleted)
        raise WriterFenced(f"stream {sid}: lost the race for the next manifest {PUBLISH_ATTEMPTS} times")

    def _delete_below(self, sid: StreamId, manifest: Manifest, below: int | None = None) -> int:
        """Delete the stream's segment objects numbered below its first listed segment (or
        ``below``, when it lists none): those retention removed. Returns how many."""
        first = manifest.segments[0].segment_no if manifest.segments else below
        if first is None:
            return 0
        numbered = ((key, segment_key_number(key)) for key in self.objects.list(segments_prefix(sid)))
        gone = [key for key, number in numbered if number is not None and number < first]
        for key in gone:
            self.objects.delete(key)
        return len(gone)

    def _check_epoch(self, manifest: Manifest) -> None:
        """Fence this store if ``manifest`` is of a higher writer epoch than ours."""
        if manifest.epoch > self.epoch:
            self._fenced(
                f"stream {manifest.stream_id}'s manifest {manifest.number} is writer epoch {manifest.epoch}, above"
                f" ours ({self.epoch})"
            )

    def _fenced(self, reason: str) -> NoReturn:
        """Fence this store's writer (``fence.py``), then raise WriterFenced."""
        fence_store(self.store.data_dir, reason)
        raise WriterFenced(reason)

    def _check_same_history(self, manifest: Manifest) -> None:
        """ManifestError unless this store's record before the manifest's head has the manifest's
        head hash (the bucket holds another history of the stream); WriterFenced if this store
        does not reach that head (another writer wrote past it)."""
        if manifest.head == 0:
            return
        sid = StreamId(manifest.stream_id)
        if self.store.next_offset(sid) < manifest.head:
            self._fenced(
                f"stream {sid} in the bucket reaches offset {manifest.head}, this store only"
                f" {self.store.next_offset(sid)}: another writer wrote it"
            )
        last = self.store.read_records_verified(sid, manifest.head - 1, 1)[0]
        if last.hash != manifest.head_hash:
            raise ManifestError(
                f"stream {sid}'s manifest {manifest.number} ends on another chain than this store at offset"
                f" {manifest.head - 1}: the bucket holds another history of the stream"
            )

    def _sealed_after(self, sid: StreamId, last: Manifest | None) -> list[tuple[SegmentObject, bytes]]:
        """The sealed segments from the manifest's head on, in order, each read verified."""
        head, head_hash = (0, GENESIS_HASH) if last is None else (last.head, last.head_hash)
        found: list[tuple[SegmentObject, bytes]] = []
        for row in sealed_rows(self.store, sid):
            if row.next_offset <= head:
                continue
            if row.digest is None or row.first_offset != head:
                break  # one that does not start where the bucket's copy ends
            path = segment_path(self.store.data_dir, sid, row.segment_no)
            data = path.read_bytes()
            if data_digest(data) != row.digest or len(data) != row.size_bytes:
                raise IntegrityError(
                    f"sealed segment {row.segment_no} of stream {sid} is not the file that was sealed",
                    stream_id=sid,
                    segment=path,
                )
            end_hash = self._verified_end(sid, row.first_offset, row.next_offset, head_hash)
            key = segment_key(sid, row.segment_no, row.digest)
            found.append(
                (
                    SegmentObject(
                        row.segment_no, row.first_offset, row.next_offset, len(data), row.digest, end_hash, key
                    ),
                    data,
                )
            )
            head, head_hash = row.next_offset, end_hash
        return found

    def _verified_end(self, sid: StreamId, first: int, after: int, link: bytes) -> bytes:
        """The chain hash of record ``after - 1``, read verified; IntegrityError unless record
        ``first`` links to ``link``."""
        last = None
        for record in self.store.iter_records(sid, first):
            if record.offset == first and record.prev_hash != link:
                raise IntegrityError(
                    f"stream {sid} record {first} does not link to the chain hash the bucket's copy ends with",
                    stream_id=sid,
                    offset=first,
                )
            last = record
            if record.offset == after - 1:
                return record.hash
        raise IntegrityError(
            f"stream {sid} ends at offset {None if last is None else last.offset}, before {after - 1}", stream_id=sid
        )

    def _dictionaries(self, sid: StreamId) -> list[tuple[DictionaryObject, bytes]]:
        found = []
        for number in dictionary_numbers_on_disk(stream_path(self.store.data_dir, sid)):
            path = dictionary_path(self.store.data_dir, sid, number)
            data = path.read_bytes()
            digest = data_digest(data)
            found.append((DictionaryObject(number, len(data), digest, dictionary_key(sid, number, digest)), data))
        return found

    def _next_manifest(
        self,
        sid: StreamId,
        last: tuple[Manifest, str] | None,
        segments: list[SegmentObject],
        dictionaries: list[DictionaryObject],
    ) -> Manifest:
        previous = None if last is None else last[0]
        kept = () if previous is None else previous.segments
        all_segments = (*kept, *segments)
        floor, floor_hash = (0, GENESIS_HASH) if previous is None else (previous.floor, previous.floor_hash)
        head, head_hash = (
            (floor, floor_hash) if not all_segments else (all_segments[-1].next_offset, all_segments[-1].end_hash)
        )
        return Manifest(
            origin=self.key.name,
            stream_id=sid,
            number=1 if previous is None else previous.number + 1,
            previous=None if last is None else manifest_digest(last[1]),
            epoch=self.epoch,
            floor=floor,
            floor_hash=floor_hash,
            head=head,
            head_hash=head_hash,
            dictionaries=tuple(dictionaries),
            segments=all_segments,
        )
