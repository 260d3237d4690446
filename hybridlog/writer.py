"""The append path, the one home of everything between an append call and its committed records.

In this order (``docs/format.md`` section 8; ``groupcommit.py`` explains how concurrent appends
form a group):

1. frame every record of a batch (compress, hash) into one buffer, checkpoint records included
   (``framing.frame_batch``), when the group-commit leader accepts the batch into its group: the
   batch's records then get the next global positions after the writer's mark, in the order the
   group accepts batches, and each record's position is in its frame and hash (format 2); with
   zstd, a stream's records are compressed with its trained dictionary once it has one
   (``training.py``);
2. lay the group's batches out in segments (``framing.lay_out``): a batch that would push the active
   segment past ``max_segment_size`` goes to a new segment file (the directory is fsynced so the
   new name is durable); a batch never spans two segments;
3. write each segment's bytes at its committed end (``write_group``);
4. fsync the segments when any batch of the group asked (and always the ones being sealed, whose
   digests are then computed): this is the durability point;
5. commit one catalog transaction: one ``batches`` row per batch, segment stats and seals,
   checkpoints, chain heads and the global-position mark;
6. advance the writer's stream heads to the committed ones.

If anything in 3-5 fails, every segment is cut back to where the group began (new segment files
are removed; the cut is fsynced) and every caller in the group gets the error ("batch not
stored"), so no partial batch stays. Where that cut fails, or the catalog COMMIT itself fails (it
may have happened), the batch may be stored: its callers get ``AppendOutcomeUnknown``, nothing is
cut, and the stream refuses appends until the store is reopened and recovery settles it. A crash
between 4 and 5 leaves complete batches the catalog does not know; recovery
(``recovery.recover_store``, run when a writer opens the store) adopts them.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import apsw
import blake3

from hybridlog.batch import BytesLike, PlannedRecord, append_conflict, plan_batch
from hybridlog.catalog import Catalog
from hybridlog.dictionary import DictionaryCache
from hybridlog.errors import (
    AppendOutcomeUnknown,
    CatalogError,
    StorageError,
    StorageIOError,
)
from hybridlog.failpoints import failpoint
from hybridlog.fence import fence_error
from hybridlog.framing import (
    FramedBatch,
    HeadView,
    SegmentWrite,
    StreamHead,
    extend_tree,
    frame_batch,
    lay_out,
    load_head,
)
from hybridlog.groupcommit import GroupCommitQueue
from hybridlog.layout import segment_path, stream_path
from hybridlog.pipeline import AppendPipeline
from hybridlog.record import PayloadCompressor, checkpoint_payload
from hybridlog.segment import SegmentWriter, file_digest, fsync_dir, make_dirs_durably
from hybridlog.training import DictionaryTrainer
from hybridlog.types import ChainHash, CheckpointPolicy, CompressionKind, Offset, RecordKind, StreamId

log = logging.getLogger(__name__)


@dataclass(eq=False, slots=True)
class AppendRequest:
    """One caller's batch waiting for stage 2, and, once done, its outcome.

    ``payloads`` None means a checkpoint record. ``expected_offset`` None means no offset check
    (``Storage.append``); ``check_prev`` False means no chain-head check.
    """

    stream_id: StreamId
    payloads: list[BytesLike] | None
    expected_offset: int | None
    prev_hash: bytes | None
    check_prev: bool
    fsync: bool
    record_count: int | None = None  # create_checkpoint's check
    pipeline: AppendPipeline | None = None  # the caller's own buffer and compressors (it waits meanwhile)
    framed: FramedBatch | None = None
    result: tuple[Offset, ChainHash] | None = None
    error: BaseException | None = None
    done: bool = False


class Writer:
    """A store's append path: stream heads, the group-commit queue and the write of each group.

    ``catalog`` returns the writable catalog (raising StoreClosed, ReadOnlyStore or LockLost);
    ``damage`` what recovery found in a stream (it then refuses appends); ``committed`` is called
    after each commit. Stage 2 runs under ``lock``, the store's lock.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        policy: CheckpointPolicy,
        max_segment_size: int,
        compression: CompressionKind,
        dictionaries: DictionaryCache,
        lock: threading.RLock,
        catalog: Callable[[], Catalog],
        now: Callable[[], int],
        closed: Callable[[], bool],
        damage: Callable[[StreamId], StorageError | None],
        committed: Callable[[], None],
    ) -> None:
        self._data_dir = data_dir
        self._policy = policy
        self._max_segment_size = max_segment_size
        self._compression = compression
        self._lock = lock
        self._catalog = catalog
        self._now = now
        self._closed = closed
        self._damage = damage
        self._committed = committed
        self.heads: dict[StreamId, StreamHead] = {}
        self._pipeline = AppendPipeline()  # the group-commit leader's, for requests that bring none
        self.commits: GroupCommitQueue[AppendRequest] = GroupCommitQueue()
        self._trainer = DictionaryTrainer(data_dir, dictionaries)  # stream dictionaries, for compressing
        self._syncers: ThreadPoolExecutor | None = None  # started by the first group that touches several files
        self._mark: int | None = None  # the last global position given out (None: ask the catalog)
        self.fenced = False  # a group's outcome is unknown: positions below later ones may yet be adopted

    def submit(
        self,
        sid: StreamId,
        payloads: list[BytesLike] | None,
        *,
        expected_offset: int | None,
        prev_hash: bytes | None,
        check_prev: bool,
        fsync: bool,
        record_count: int | None = None,
        pipeline: AppendPipeline | None = None,
    ) -> tuple[Offset, ChainHash]:
        """Both stages through the group commit: the leader of the group frames the batch (its global
        positions are known only then) and writes it with the others."""
        head = self.heads.get(sid)
        if head is None or self._closed():
            with self._lock:
                head = self.head(sid)  # raises StoreClosed / ReadOnlyStore as needed
        request = AppendRequest(sid, payloads, expected_offset, prev_hash, check_prev, fsync, record_count, pipeline)
        self.commits.submit(request, self._commit_group, gather=fsync)
        if request.error is not None:
            raise request.error
        assert request.result is not None
        if payloads and self._compression is CompressionKind.ZSTD:
            self._trainer.observe(sid, payloads, request.result[0])  # after the commit: never fails a batch
        return request.result

    def _compressor(self, sid: StreamId, pipeline: AppendPipeline) -> PayloadCompressor | None:
        """How the stream's new records are compressed: not, plain zstd, or with its dictionary."""
        if self._compression is not CompressionKind.ZSTD:
            return None
        return pipeline.compressor_for(self._trainer.dictionary(sid))

    def _plan(self, request: AppendRequest, view: HeadView) -> list[PlannedRecord]:
        if request.payloads is None:
            return [(RecordKind.CHECKPOINT, checkpoint_payload(view.next_offset))]
        return plan_batch(request.payloads, self._policy, view.events_since_checkpoint, view.next_offset)

    # --- 2-6. a group: lay out, write, fsync, commit, advance -------------------------------------

    def _commit_group(self, group: list[AppendRequest]) -> None:
        """Stage 2 for every request in ``group`` (the leader runs this; see groupcommit.py)."""
        with self._lock:
            tentative: dict[StreamId, HeadView] = {}
            batches: dict[StreamId, list[FramedBatch]] = {}
            accepted: list[AppendRequest] = []
            try:
                fenced = fence_error(self._data_dir)  # another writer host took the streams over
                if fenced is not None:
                    raise fenced
                mark = self.global_mark()
            except StorageError as e:
                for i, request in enumerate(group):
                    request.error, request.done = (e if i == 0 else _copy_error(e)), True
                return
            first_mark = mark
            for request in group:
                try:
                    head = self.head(request.stream_id)
                    if head.damage is not None:
                        raise head.damage
                    view = tentative.get(request.stream_id, head.view)
                    conflict = _conflict(request, view)
                    if conflict is not None:
                        raise conflict
                    pipeline = request.pipeline or self._pipeline
                    compressor = self._compressor(request.stream_id, pipeline)
                    framed = frame_batch(
                        request.stream_id,
                        self._plan(request, view),
                        view,
                        mark + 1,  # the group's batches get the next positions, in the order accepted
                        self._now(),
                        pipeline.buffer,
                        compressor,
                        sum(map(len, request.payloads)) if request.payloads else 0,
                    )
                except StorageError as e:
                    request.error, request.done = e, True
                    continue
                request.framed = framed
                mark += len(framed.framed.ends)
                tentative[request.stream_id] = framed.after
                batches.setdefault(request.stream_id, []).append(framed)
                accepted.append(request)
            if not accepted:
                return
            self._mark = mark  # given out: a failure below takes them back only when nothing can be stored
            try:
                self.write_group(batches, fsync=any(r.fsync for r in accepted))
            except _GroupFailed as failure:
                for i, request in enumerate(accepted):
                    if request.stream_id in failure.unsure:
                        request.error = _outcome_unknown(request, failure)
                    else:
                        request.error = failure.error if i == 0 else _copy_error(failure.error)
                    request.done = True
                return
            except StorageError as e:
                self._mark = first_mark  # the group was cut back: none of its positions is stored
                for i, request in enumerate(accepted):
                    request.error, request.done = (e if i == 0 else _copy_error(e)), True
                return
            for request in accepted:
                assert request.framed is not None
                after = request.framed.after
                assert after.head is not None
                request.result, request.done = (Offset(after.next_offset), after.head), True

    def global_mark(self) -> int:
        """The last global position given out: the catalog's, until this writer gives out more."""
        if self._mark is None:
            try:
                self._mark = self._catalog().last_global_position()
            except apsw.Error as e:
                raise CatalogError(f"cannot read the catalog, batch not stored: {e}") from e
        return self._mark

    def write_group(self, batches: dict[StreamId, list[FramedBatch]], *, fsync: bool) -> None:
        """Write, fsync and commit framed batches (see the module docstring for the order)."""
        catalog = self._catalog()
        writes, seals = lay_out(self.heads, batches, self._max_segment_size)
        now = max(b.timestamp_ns for bs in batches.values() for b in bs)
        committing = False
        try:
            failpoint("batch-framed")
            # 2. Rotation: create the new segment files (full ones are sealed in step 5).
            new_dirs: set[Path] = set()
            for w in writes:
                if w.new_file:
                    directory = stream_path(self._data_dir, w.stream_id)
                    make_dirs_durably(directory)
                    w.writer = SegmentWriter(segment_path(self._data_dir, w.stream_id, w.segment_no), create=True)
                    new_dirs.add(directory)
                else:
                    w.writer = self.heads[w.stream_id].writer
            for directory in new_dirs:
                fsync_dir(directory)  # new names are durable before the catalog points at them
            failpoint("segment-created")
            # 3. Write each segment's batches with one write at its committed end. A group that
            #    fsyncs writes into space reserved ahead in the segment that stays active, so the
            #    fdatasync flushes data only, not a new file size too (most of the time).
            sealed = {(sid, no) for sid, no, _ in seals}
            for w in writes:
                assert w.writer is not None
                if fsync and (w.stream_id, w.segment_no) not in sealed:
                    w.writer.preallocate(w.end, self._max_segment_size)
                w.writer.write_at(w.base, w.data)
            sealing = [(sid, no, in_group, self._sealed_writer(sid, in_group)) for sid, no, in_group in seals]
            for _, _, _, writer in sealing:
                writer.trim()  # a sealed segment ends where its data does
            failpoint("segment-written")
            # 4. The durability point (segments sealed in this group are synced either way, so
            #    their digests describe durable bytes).
            self._sync_all([w.writer for w in writes if w.writer and (fsync or (w.stream_id, w.segment_no) in sealed)])
            digests: list[tuple[StreamId, int, bytes]] = []
            for sid, segment_no, in_group, writer in sealing:
                if in_group is not None and in_group.new_file:
                    digests.append((sid, segment_no, blake3.blake3(in_group.data).digest()))
                    continue
                if in_group is None:
                    writer.sync()
                digests.append((sid, segment_no, file_digest(writer.path)))
            failpoint("segment-synced")
            # 5. One catalog transaction for the whole group.
            with catalog.transaction():
                for w in writes:
                    catalog.upsert_segment(
                        w.stream_id,
                        w.segment_no,
                        first_offset=w.first_offset,
                        next_offset=w.next_offset,
                        size_bytes=w.end,
                        now_ns=now,
                    )
                    catalog.insert_batches(w.rows)
                    catalog.insert_checkpoints(w.checkpoints)
                for sid, segment_no, digest in digests:  # after the upserts: a segment may be new
                    catalog.seal_segment(sid, segment_no, digest=digest, now_ns=now)
                for sid, framed in batches.items():
                    catalog.upsert_stream(
                        sid,
                        next_offset=framed[-1].after.next_offset,
                        chain_head=framed[-1].after.head,
                        add_events=sum(b.events for b in framed),
                        add_checkpoints=sum(len(b.framed.ends) - b.events for b in framed),
                        add_stored_bytes=sum(len(b.data) for b in framed),
                        add_payload_bytes=sum(b.payload_bytes for b in framed),
                        first_timestamp_ns=framed[0].timestamp_ns,
                        last_timestamp_ns=framed[-1].timestamp_ns,
                        now_ns=now,
                    )
                # The mark kept apart from the batch rows too: a damaged b-tree that hides the last
                # rows from a scan cannot then hide them from the mark it is checked against.
                catalog.raise_global_mark(self.global_mark())  # the group's last position
                extend_tree(catalog, batches)
                committing = True  # what fails from here on is the COMMIT itself: it may have happened
            failpoint("catalog-committed")
        except BaseException as e:
            if committing:
                # The catalog may hold the group or not; cutting the segments could leave it
                # pointing at bytes that are gone. Keep them, and fence the streams until a reopen
                # lets recovery settle it (the batches are then wholly there, or wholly absent).
                unsure = set(batches)
                reason = f"the catalog commit failed and may have happened: {e}"
            else:
                unsure = self._undo_writes(writes)
                reason = f"the write failed ({e}) and could not be cut back"
            for sid in unsure:
                self._fence(sid, reason)
            if isinstance(e, OSError):
                error: StorageError = StorageIOError(
                    f"write failed, batch not stored: {e}", path=getattr(e, "filename", None)
                )
            elif isinstance(e, apsw.Error):
                error = CatalogError(f"catalog commit failed, batch not stored: {e}")
            elif isinstance(e, Exception) and unsure:
                error = StorageIOError(f"append failed: {e!r}")
            else:
                raise
            if unsure:
                raise _GroupFailed(error, unsure, reason) from e
            raise error from e
        self._advance_heads(batches, writes)
        self._committed()

    def _sealed_writer(self, sid: StreamId, in_group: SegmentWrite | None) -> SegmentWriter:
        """The open file of a segment this group seals: the stream's active one, or one it created."""
        writer = self.heads[sid].writer if in_group is None else in_group.writer
        assert writer is not None
        return writer

    def _sync_all(self, writers: list[SegmentWriter]) -> None:
        """fsync every file, in parallel when there are several: the file system can then merge
        them into fewer journal commits, and fsync releases the GIL."""
        if len(writers) <= 1:
            for writer in writers:
                writer.sync()
            return
        if self._syncers is None:
            self._syncers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="hybridlog-fsync")
        futures = [self._syncers.submit(writer.sync) for writer in writers]
        wait(futures)  # all of them finish before any failure is raised (and the group undone)
        for future in futures:
            future.result()

    def _undo_writes(self, writes: list[SegmentWrite]) -> set[StreamId]:
        """Cut every segment back to where this group began, durably; returns the streams where
        that failed (their batches' bytes may still be there, whole, for recovery to adopt)."""
        failed: set[StreamId] = set()
        for w in reversed(writes):
            if w.writer is None:
                continue
            try:
                w.writer.truncate(w.base)
                if w.new_file:
                    w.writer.close()
                    w.writer.path.unlink()
                    fsync_dir(w.writer.path.parent)
                else:
                    w.writer.sync()  # the cut is durable: a power loss cannot bring the batch back
            except OSError as e:
                failed.add(w.stream_id)
                log.error("stream %d: could not cut a failed batch from %s: %s", w.stream_id, w.writer.path, e)
        return failed

    def _fence(self, sid: StreamId, reason: str) -> None:
        """Refuse appends to a stream until the store is reopened (recovery then settles its files)."""
        self.fenced = True
        head = self.heads[sid]
        head.damage = StorageIOError(
            f"stream {sid} refuses appends until the store is reopened: {reason}",
            path=segment_path(self._data_dir, sid, head.segment_no) if head.segment_no >= 0 else None,
        )
        log.error("%s", head.damage)

    def _advance_heads(self, batches: dict[StreamId, list[FramedBatch]], writes: list[SegmentWrite]) -> None:
        for sid, framed in batches.items():
            head = self.heads[sid]
            mine = [w for w in writes if w.stream_id == sid]
            last = mine[-1]
            for w in mine[:-1]:
                if w.new_file and w.writer is not None:
                    w.writer.close()  # created and sealed within this group
            if last.new_file:
                if head.writer is not None:
                    head.writer.close()
                head.writer = last.writer
                head.segment_no = last.segment_no
                head.segment_first_offset = last.first_offset
            head.segment_size = last.end
            head.view = framed[-1].after

    # --- stream heads ----------------------------------------------------------------------------

    def head(self, stream_id: StreamId) -> StreamHead:
        """The writer's state for a stream, loaded from the catalog on first use."""
        head = self.heads.get(stream_id)
        if head is None:
            head = load_head(self._catalog(), self._data_dir, stream_id, self._damage(stream_id))
            self.heads[stream_id] = head
        return head

    def due_checkpoints(self) -> list[StreamId]:
        """Streams with events since their last checkpoint (and no damage): an on-close checkpoint's;
        none in a fenced store (another host writes its streams now)."""
        if fence_error(self._data_dir) is not None:
            return []
        return [h.stream_id for h in self.heads.values() if h.damage is None and h.view.events_since_checkpoint]

    def trim_reserved(self) -> None:
        """Give back the space reserved past every active segment's data (``SegmentWriter.preallocate``),
        so that a check or recovery in this process sees each file end where its data does."""
        for head in self.heads.values():
            if head.writer is not None:
                head.writer.trim()

    def sync_active(self) -> None:
        """fsync every stream's active segment."""
        for head in self.heads.values():
            if head.writer is not None:
                head.writer.sync()

    def forget(self, stream_id: StreamId) -> None:
        """Drop a stream's head (reloaded from the catalog on next use), closing its segment, and the
        global mark (a repair or re-index may have moved it)."""
        self._mark = None
        head = self.heads.pop(stream_id, None)
        if head is not None and head.writer is not None:
            head.writer.close()

    def close(self) -> None:
        """Close every segment file and stop the fsync threads."""
        if self._syncers is not None:
            self._syncers.shutdown()
            self._syncers = None
        for head in self.heads.values():
            if head.writer is not None:
                head.writer.close()
        self.heads.clear()
        self._mark = None


# --- failures ------------------------------------------------------------------------------------


def _conflict(request: AppendRequest, view: HeadView) -> StorageError | None:
    """Why ``request`` cannot go on top of ``view`` (None: it can)."""
    return append_conflict(
        request.stream_id,
        view.next_offset,
        view.head,
        expected_offset=request.expected_offset,
        prev_hash=request.prev_hash,
        check_prev=request.check_prev,
        record_count=request.record_count,
    )


class _GroupFailed(Exception):
    """A failed group in which the batches of ``unsure`` streams may be stored (the others are not)."""

    def __init__(self, error: StorageError, unsure: set[StreamId], reason: str) -> None:
        super().__init__(error.message)
        self.error = error
        self.unsure = unsure
        self.reason = reason


def _outcome_unknown(request: AppendRequest, failure: _GroupFailed) -> AppendOutcomeUnknown:
    """The error for a caller whose batch may or may not be stored."""
    assert request.framed is not None
    first, nxt = request.framed.on.next_offset, request.framed.after.next_offset
    sid = request.stream_id
    error = AppendOutcomeUnknown(
        f"stream {sid}: the batch for offsets {first}..{nxt - 1} may or may not be stored ({failure.reason});"
        " the stream refuses appends until the store is reopened",
        stream_id=sid,
        first_offset=first,
        next_offset=nxt,
        path=failure.error.path if isinstance(failure.error, StorageIOError) else None,
    )
    error.__cause__ = failure.__cause__
    return error


def _copy_error(error: StorageError) -> StorageError:
    """A copy of ``error`` for another waiting thread (one exception object per raise)."""
    try:
        return copy.copy(error)
    except Exception:  # an error type that cannot be copied: share the original
        return error
