"""``Storage``: append-only, hash-chained event streams in segment files, indexed by a catalog.

Write path, in this order (``commit.py`` explains how concurrent appends form a group):

1. frame every record of a batch (hash, compress, checksum) into one buffer, checkpoint records
   included, in the caller's thread (``commit.frame_batch``); with zstd, a stream's records are
   compressed with its trained dictionary once it has one (``training.py``);
2. lay the group's batches out in segments (``_layout``): a batch that would push the active
   segment past ``max_segment_size`` goes to a new segment file (the directory is fsynced so the
   new name is durable); a batch never spans two segments;
3. write each segment's bytes at its committed end (``_write_group``);
4. fsync the segments when any batch of the group asked (and always the ones being sealed, whose
   digests are then computed): this is the durability point;
5. commit one catalog transaction: index rows, segment stats and seals, checkpoints, chain heads,
   and the global-position mark (each batch's records get the next positions, in group order).

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
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import apsw
import blake3

from hybridlog.batch import (
    BytesLike,
    PlannedRecord,
    check_clock_reading,
    check_events,
    check_non_negative,
    check_offset,
    check_position,
    check_prev_hash,
    plan_batch,
    read_page,
    read_window,
    records_between,
    take_page,
    take_payloads,
    take_within,
)
from hybridlog.catalog import (
    CATALOG_FILE,
    DEFAULT_BUSY_TIMEOUT_MS,
    Catalog,
    GlobalRow,
    RecoveryEntry,
    SegmentRow,
    StreamSnapshot,
    StreamStats,
    damaged_hint,
)
from hybridlog.chain import reverify_frame
from hybridlog.commit import AppendRequest, FramedBatch, GroupCommitQueue, HeadView, SegmentWrite, frame_batch
from hybridlog.consumers import CONSUMERS_FILE, ConsumerState, ConsumerStore, check_consumer_name
from hybridlog.dictionary import DictionaryCache
from hybridlog.errors import (
    AppendOutcomeUnknown,
    CatalogError,
    CatalogMismatch,
    CatalogUnusable,
    ChainMismatch,
    DictionaryUnusable,
    IntegrityError,
    InvalidArgument,
    InvalidConfiguration,
    OffsetMismatch,
    ReadOnlyStore,
    RecordCountMismatch,
    RecordIsolated,
    RecordsUnavailable,
    StorageError,
    StorageIOError,
    StoreClosed,
    os_error_detail,
)
from hybridlog.failpoints import failpoint
from hybridlog.index import CheckpointIndex, OffsetIndex
from hybridlog.lock import StoreLock
from hybridlog.pipeline import AppendPipeline
from hybridlog.reader import unavailable, unlisted_stream_problem, verified_frames, verified_records
from hybridlog.record import PayloadCompressor, checkpoint_payload
from hybridlog.recovery import (
    ReconcileResult,
    rebuild_catalog,
    rebuild_checkpoints,
    recover_store,
    stream_ids_on_disk,
    streams_to_reconcile,
)
from hybridlog.repair import (
    ISOLATE,
    REBUILD_CATALOG,
    REINDEX,
    TRUNCATE,
    CheckReport,
    RepairReport,
    RepairStep,
    check_store,
)
from hybridlog.segment import (
    SegmentWriter,
    file_digest,
    fsync_dir,
    make_dirs_durably,
    segment_path,
    stream_path,
)
from hybridlog.sql import QueryResult, QueryRows, SqlValue, check_limits, check_query, query_rows
from hybridlog.stream_repair import repair_stream
from hybridlog.subscription import DEFAULT_MAX_INTERVAL, DEFAULT_POLL_INTERVAL, Subscription, commit_signal_for
from hybridlog.training import DictionaryTrainer
from hybridlog.types import (
    DEFAULT_MAX_READ_BYTES,
    DEFAULT_MAX_SEGMENT_SIZE,
    MIN_SEGMENT_SIZE,
    ChainHash,
    CheckpointPolicy,
    CompressionKind,
    GlobalPosition,
    GlobalRecord,
    Offset,
    Record,
    RecordKind,
    StreamId,
    check_stream_id,
)
from hybridlog.verified_cache import DEFAULT_MAX_RECORDS as DEFAULT_VERIFIED_CACHE_RECORDS
from hybridlog.verified_cache import MAX_RUN, VerifiedRun, VerifiedRunCache

log = logging.getLogger(__name__)

T = TypeVar("T")

Clock = Callable[[], int]


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """One segment file of a stream, as the catalog records it."""

    stream_id: StreamId
    segment_no: int
    path: Path
    first_offset: Offset
    next_offset: Offset
    size_bytes: int
    sealed: bool
    digest: bytes | None


@dataclass(slots=True)
class _StreamHead:
    """The writer's view of one stream: where the next batch goes and what it links to."""

    stream_id: StreamId
    view: HeadView  # replaced whole after each commit, so stage 1 can read it without the lock
    segment_no: int
    segment_first_offset: int
    segment_size: int
    writer: SegmentWriter | None
    damage: StorageError | None = None


def wall_clock() -> int:
    return time.time_ns()


class Storage:
    """A store of append-only, hash-chained event streams in one directory.

    One process may hold a store for writing (others get ``StorageLocked``); any number may open
    it with ``read_only=True``. An instance is safe to share between threads.

    ``busy_timeout``: seconds opening waits while another process keeps the catalog locked, before
    ``CatalogBusy`` (a busy or unreadable catalog is never rebuilt; see lock.py for ``LOCK``).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        checkpoint_policy: CheckpointPolicy | None = None,
        max_segment_size: int = DEFAULT_MAX_SEGMENT_SIZE,
        compression: CompressionKind = CompressionKind.NONE,
        read_only: bool = False,
        clock: Clock | None = None,
        verified_cache_records: int = DEFAULT_VERIFIED_CACHE_RECORDS,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT_MS / 1000,
    ) -> None:
        if isinstance(max_segment_size, bool) or not isinstance(max_segment_size, int):
            raise InvalidConfiguration(f"max_segment_size must be an int, not {type(max_segment_size).__name__}")
        if max_segment_size < MIN_SEGMENT_SIZE:
            raise InvalidConfiguration(f"max_segment_size must be at least {MIN_SEGMENT_SIZE} bytes")
        if not isinstance(compression, CompressionKind):
            raise InvalidConfiguration(f"compression must be a CompressionKind, not {compression!r}")
        if isinstance(verified_cache_records, bool) or not isinstance(verified_cache_records, int):
            raise InvalidConfiguration("verified_cache_records must be an int")
        if verified_cache_records < 0:
            raise InvalidConfiguration("verified_cache_records must be 0 (off) or more")
        if isinstance(busy_timeout, bool) or not isinstance(busy_timeout, int | float) or not 0 <= busy_timeout <= 3600:
            raise InvalidConfiguration(f"busy_timeout must be 0 to 3600 seconds, not {busy_timeout!r}")
        policy = CheckpointPolicy() if checkpoint_policy is None else checkpoint_policy
        if not isinstance(policy, CheckpointPolicy):
            raise InvalidConfiguration(f"checkpoint_policy must be a CheckpointPolicy, not {policy!r}")
        self._data_dir = Path(data_dir)
        self._policy = policy
        self._max_segment_size = max_segment_size
        self._compression = compression
        self._read_only = read_only
        self._busy_timeout_ms = round(busy_timeout * 1000)  # how long opening waits for a locked catalog
        self._clock = clock or wall_clock
        self._lock = threading.RLock()
        self._catalog: Catalog | None = None
        # A reader's catalog file, as (st_dev, st_ino) when opened: a rebuild renames a new one over it.
        self._catalog_file = str(self._data_dir / CATALOG_FILE)
        self._catalog_identity: tuple[int, int] | None = None
        self._catalog_generation = 0  # how many times this store moved to a new catalog file
        self._store_lock: StoreLock | None = None
        self._heads: dict[StreamId, _StreamHead] = {}
        self._damage: dict[StreamId, IntegrityError] = {}
        self._recovery: list[ReconcileResult] = []
        self._pipeline = AppendPipeline()  # the group-commit leader's, for batches it must frame again
        self._pipelines = threading.local()  # each appending thread's own (stage 1 runs in the caller)
        self._commits = GroupCommitQueue()
        self._dictionaries = DictionaryCache(self._data_dir)  # stream dictionaries, for reading
        self._trainer = DictionaryTrainer(self._data_dir, self._dictionaries)  # and for compressing
        self._syncers: ThreadPoolExecutor | None = None  # started by the first group that touches several files
        # Point reads remember verified runs (see verified_cache.py); 0 turns that off.
        self._verified = VerifiedRunCache(verified_cache_records, lambda sid, no: segment_path(self._data_dir, sid, no))
        # Wakes subscriptions in this process after each commit (one per store directory).
        self._commit_signal = commit_signal_for(self._data_dir)
        self._consumers: ConsumerStore | None = None  # consumers.db, opened when first needed
        self._consumers_lock = threading.Lock()
        self._closed = False
        if self._data_dir.exists() and not self._data_dir.is_dir():
            raise StorageIOError(f"store path {self._data_dir} is not a directory", path=self._data_dir)
        if self._data_dir.exists():
            try:
                self._open()
            except CatalogUnusable:
                if not read_only:
                    raise
                # A reader cannot rebuild the catalog: check() still reports it, reads raise it.

    # --- the seed's constructors -----------------------------------------------------------------

    @classmethod
    def new(cls, data_dir: str | os.PathLike[str]) -> Storage:
        return cls(data_dir)

    @classmethod
    def with_checkpoint_policy(cls, data_dir: str | os.PathLike[str], policy: CheckpointPolicy) -> Storage:
        return cls(data_dir, checkpoint_policy=policy)

    @classmethod
    def with_max_segment_size(
        cls, data_dir: str | os.PathLike[str], policy: CheckpointPolicy, max_segment_size: int
    ) -> Storage:
        return cls(data_dir, checkpoint_policy=policy, max_segment_size=max_segment_size)

    @classmethod
    def with_compression(
        cls, data_dir: str | os.PathLike[str], policy: CheckpointPolicy, compression: CompressionKind
    ) -> Storage:
        return cls(data_dir, checkpoint_policy=policy, compression=compression)

    # --- settings --------------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    @property
    def read_only(self) -> bool:
        return self._read_only

    def default_compression(self) -> CompressionKind:
        return self._compression

    def checkpoint_policy(self) -> CheckpointPolicy:
        return self._policy

    def max_segment_size(self) -> int:
        return self._max_segment_size

    def index_path(self, stream_id: int) -> Path:
        """The catalog file holding this stream's index (one catalog serves every stream)."""
        check_stream_id(stream_id)
        return self._data_dir / CATALOG_FILE

    # --- opening and closing ---------------------------------------------------------------------

    def _open(self) -> None:
        """Readers open the catalog; a writer takes the lock, opens (or rebuilds) it, and recovers."""
        catalog_path = self._data_dir / CATALOG_FILE
        if self._read_only:
            for _attempt in range(3):
                identity = _file_identity(self._catalog_file)
                if identity is None:
                    return
                catalog = Catalog(catalog_path, read_only=True, busy_timeout_ms=self._busy_timeout_ms)
                if _file_identity(self._catalog_file) != identity:
                    catalog.close()  # replaced while we opened it: open the new one
                elif catalog.schema_version() == 0:
                    catalog.close()  # a writer is creating it right now: not a catalog yet, look again later
                    return
                else:
                    self._catalog, self._catalog_identity = catalog, identity
                    return
            return
        try:
            make_dirs_durably(self._data_dir)
        except OSError as e:
            raise StorageIOError(f"cannot create store directory {self._data_dir}: {e}", path=self._data_dir) from e
        self._store_lock = StoreLock(self._data_dir)
        try:
            self._catalog = self._open_or_rebuild_catalog()
            self._note_recovery(recover_store(self._catalog, self._data_dir, self._now))
        except OSError as e:
            self._release()
            detail = os_error_detail(e)
            raise StorageIOError(f"cannot open store {self._data_dir}: {detail}", path=self._data_dir) from e
        except BaseException:
            self._release()
            raise

    def _release(self) -> None:
        """Close every file and the catalog, and drop the writer lock."""
        self._verified.clear()
        if self._syncers is not None:
            self._syncers.shutdown()
            self._syncers = None
        for head in self._heads.values():
            if head.writer is not None:
                head.writer.close()
        self._heads.clear()
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None
        if self._store_lock is not None:
            self._store_lock.release()
            self._store_lock = None

    def _open_or_rebuild_catalog(self) -> Catalog:
        """The catalog, migrated; rebuilt from the segments if it is missing or unusable.

        Unusable means proven so (not a database, failing ``quick_check``): a catalog that is
        busy (CatalogBusy, after ``busy_timeout``), unreadable (CatalogPermissionDenied) or on a
        failing disk (CatalogIOError) raises, and is left exactly as it is.
        """
        path = self._data_dir / CATALOG_FILE
        problem: str | None = None
        if not path.exists():
            if not stream_ids_on_disk(self._data_dir):
                catalog = Catalog.create(path)  # a new store
                fsync_dir(self._data_dir)
                return catalog
            problem = "catalog file missing"
        else:
            try:
                catalog = Catalog(path, read_only=False, busy_timeout_ms=self._busy_timeout_ms)
            except CatalogUnusable as e:
                problem = f"catalog unusable: {e.message}"
            else:
                try:
                    health = catalog.health_problem()
                except BaseException:
                    catalog.close()
                    raise
                if health is None:
                    return catalog
                catalog.close()
                problem = f"catalog failed quick_check: {health}"
        log.warning("store %s: %s; rebuilding the catalog from the segments", self._data_dir, problem)
        catalog, results = rebuild_catalog(self._data_dir, self._now, found=problem)
        self._note_recovery(results)
        return catalog

    def _note_recovery(self, results: list[ReconcileResult]) -> None:
        """Remember what recovery did, and which streams it found damaged (they refuse appends)."""
        self._verified.clear()  # records may have moved or gone
        for result in results:
            self._recovery.append(result)
            self._forget_head(result.stream_id)
            if result.damage is not None:
                self._damage[result.stream_id] = result.damage
            else:
                self._damage.pop(result.stream_id, None)
        if results:
            self._commit_signal.notify()  # adopted records are committed now

    def _writable_catalog(self) -> Catalog:
        if self._closed:
            raise StoreClosed(f"store {self._data_dir} is closed")
        if self._read_only:
            raise ReadOnlyStore(f"store {self._data_dir} was opened read-only")
        if self._catalog is None:
            self._open()
        assert self._catalog is not None
        if self._store_lock is not None:
            self._store_lock.check()  # LockLost if LOCK was deleted or replaced: write nothing more
        return self._catalog

    def _readable_catalog(self, *, follow: bool = True) -> Catalog | None:
        """The catalog to read (None before the store has one).

        A reader checks first (``follow``) that its catalog file is still the one at the path: a
        rebuild in another process renames a new catalog over it, and the old file, still open
        here, would never see another commit. One ``stat``; see ``_follow_catalog``.
        """
        if self._closed:
            raise StoreClosed(f"store {self._data_dir} is closed")
        if follow and self._read_only and self._catalog is not None:
            self._follow_catalog()
        if self._catalog is None and self._read_only:
            if (self._data_dir / CATALOG_FILE).exists():
                self._open()
            if self._catalog is None and stream_ids_on_disk(self._data_dir):
                raise CatalogUnusable(
                    f"store {self._data_dir} has segments but no catalog",
                    hint=f"open it for writing, or run `hybridlog repair {self._data_dir}`, to rebuild the catalog",
                )
        return self._catalog

    def _follow_catalog(self) -> bool:
        """Reopen a reader's catalog if the file at the path is no longer the one open (True if so).

        Everything derived from the old file goes with it: verified runs (records may have moved)
        and the data_version / recovery-log marks they were checked against.
        """
        if _file_identity(self._catalog_file) == self._catalog_identity:
            return False
        log.info("store %s: the catalog file was replaced (a rebuild); reopening it", self._data_dir)
        self._verified.clear()
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None
        self._catalog_identity = None
        self._catalog_generation += 1
        self._open()
        return True

    @property
    def catalog_generation(self) -> int:
        """How many times this store moved to a new catalog file: a rebuild here, or one a reader
        noticed. Global positions may have been renumbered by it (subscriptions check)."""
        return self._catalog_generation

    def close(self) -> None:
        """Write on-close checkpoints (if the policy says so), close files, release the lock."""
        try:
            with self._lock:
                if self._closed:
                    return
                due = []
                lock_held = self._store_lock is not None and self._store_lock.is_held()
                if not self._read_only and self._policy.on_close and self._catalog is not None and lock_held:
                    due = [
                        h.stream_id for h in self._heads.values() if h.damage is None and h.view.events_since_checkpoint
                    ]
            # Not under the lock: a group-commit leader in another thread needs it to finish.
            for sid in due:
                self._submit(sid, None, expected_offset=None, prev_hash=None, check_prev=False, fsync=True)
        finally:
            with self._lock:
                self._closed = True
                self._release()
            with self._consumers_lock:
                if self._consumers is not None:
                    self._consumers.close()
                    self._consumers = None
            self._commit_signal.notify()  # waiting subscriptions wake, and their next read raises StoreClosed

    def __enter__(self) -> Storage:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- stream heads ----------------------------------------------------------------------------

    def _head(self, stream_id: StreamId) -> _StreamHead:
        """The writer's state for a stream, loaded from the catalog on first use."""
        head = self._heads.get(stream_id)
        if head is None:
            head = self._load_head(self._writable_catalog(), stream_id)
            self._heads[stream_id] = head
        return head

    def _load_head(self, catalog: Catalog, stream_id: StreamId) -> _StreamHead:
        row = catalog.stream(stream_id)
        segments = catalog.segments(stream_id)
        last_checkpoint = catalog.checkpoint_at_or_before(stream_id, (row.next_offset if row else 0))
        damage = self._damage.get(stream_id)
        if damage is None and segments and (row is None or row.next_offset != segments[-1].next_offset):
            # appending on top of a head the catalog lost would write offsets that are taken
            damage = CatalogMismatch(
                f"the catalog's streams row ({'missing' if row is None else f'next offset {row.next_offset}'})"
                f" disagrees with its segments row (next offset {segments[-1].next_offset})",
                stream_id=stream_id,
                hint=damaged_hint(self._data_dir),
            )
        head = _StreamHead(
            stream_id=stream_id,
            view=HeadView(
                next_offset=row.next_offset if row else 0,
                head=row.chain_head if row else None,
                events_since_checkpoint=catalog.events_after(
                    stream_id, last_checkpoint.offset if last_checkpoint else -1
                ),
                last_timestamp_ns=(row.last_timestamp_ns or 0) if row else 0,
            ),
            segment_no=segments[-1].segment_no if segments else -1,
            segment_first_offset=segments[-1].first_offset if segments else 0,
            segment_size=segments[-1].size_bytes if segments else 0,
            writer=None,
            damage=damage,
        )
        if segments and damage is None:
            path = segment_path(self._data_dir, stream_id, head.segment_no)
            try:
                head.writer = SegmentWriter(path, create=False)
            except OSError as e:
                raise StorageIOError(f"stream {stream_id}: cannot open {path}: {e}", path=path) from e
        return head

    # --- appending -------------------------------------------------------------------------------

    def append_batch(
        self,
        stream_id: int,
        events: Sequence[BytesLike],
        expected_offset: int,
        prev_hash: bytes | None,
        fsync: bool = True,
    ) -> tuple[Offset, ChainHash]:
        """Append ``events`` as one atomic batch; returns the new (next offset, chain head).

        ``expected_offset`` must be the stream's next offset and ``prev_hash`` its chain head
        (None for an empty stream), or OffsetMismatch / ChainMismatch is raised and nothing is
        written. Checkpoint records the policy calls for are written inside the batch, so the
        returned head may be a checkpoint's. Threads appending at the same time share one write,
        fsync and catalog commit (group commit); each returns when its own batch is committed.
        """
        return self.append_batch_pipelined(
            stream_id, events, expected_offset, prev_hash, fsync, self._thread_pipeline()
        )

    def append_batch_pipelined(
        self,
        stream_id: int,
        events: Sequence[BytesLike],
        expected_offset: int,
        prev_hash: bytes | None,
        fsync: bool,
        pipeline: AppendPipeline,
    ) -> tuple[Offset, ChainHash]:
        """``append_batch`` framing into ``pipeline``'s reusable buffer (same contract).

        Framing (stage 1) runs in the calling thread, outside the store's lock, so it overlaps the
        write and fsync (stage 2) of batches other threads are committing.
        """
        sid = check_stream_id(stream_id)
        payloads = check_events(events)
        offset = check_offset("expected_offset", expected_offset)
        given_hash = check_prev_hash(prev_hash)
        if not isinstance(pipeline, AppendPipeline):
            raise InvalidArgument(f"pipeline must be an AppendPipeline, not {type(pipeline).__name__}")
        return self._submit(
            sid, payloads, expected_offset=offset, prev_hash=given_hash, check_prev=True, fsync=fsync, pipeline=pipeline
        )

    def append(
        self, stream_id: int, events: Sequence[BytesLike], *, expected_offset: int | None = None, fsync: bool = True
    ) -> tuple[Offset, ChainHash]:
        """Append at the stream's current head, whatever it is (checked against ``expected_offset`` if given)."""
        sid = check_stream_id(stream_id)
        payloads = check_events(events)
        offset = None if expected_offset is None else check_offset("expected_offset", expected_offset)
        return self._submit(sid, payloads, expected_offset=offset, prev_hash=None, check_prev=False, fsync=fsync)

    def create_checkpoint(
        self, stream_id: int, current_offset: int, prev_hash: bytes | None, record_count: int, fsync: bool = True
    ) -> tuple[Offset, ChainHash]:
        """Write a checkpoint record at the head; returns (next offset, checkpoint hash).

        ``current_offset`` and ``prev_hash`` are checked like an append; ``record_count`` must be
        the number of records before the checkpoint (its offset).
        """
        sid = check_stream_id(stream_id)
        offset = check_offset("current_offset", current_offset)
        given_hash = check_prev_hash(prev_hash)
        count = check_offset("record_count", record_count)
        return self._submit(
            sid, None, expected_offset=offset, prev_hash=given_hash, check_prev=True, fsync=fsync, record_count=count
        )

    def _thread_pipeline(self) -> AppendPipeline:
        pipeline: AppendPipeline | None = getattr(self._pipelines, "pipeline", None)
        if pipeline is None:
            pipeline = self._pipelines.pipeline = AppendPipeline()
        return pipeline

    def _submit(
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
        """Stage 1 here (frame against the head as it looks now), stage 2 through the group commit."""
        head = self._heads.get(sid)
        if head is None or self._closed:
            with self._lock:
                head = self._head(sid)  # raises StoreClosed / ReadOnlyStore as needed
        request = AppendRequest(sid, payloads, expected_offset, prev_hash, check_prev, fsync, record_count)
        view = head.view
        if self._conflict(request, view) is None:
            pipeline = pipeline or self._thread_pipeline()
            compressor = self._compressor(sid, pipeline)
            request.framed = frame_batch(sid, self._plan(request, view), view, self._now(), pipeline.buffer, compressor)
        self._commits.submit(request, self._commit_group)
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

    @staticmethod
    def _conflict(request: AppendRequest, view: HeadView) -> StorageError | None:
        """Why ``request`` cannot go on top of ``view`` (None: it can)."""
        sid = request.stream_id
        if request.expected_offset is not None and request.expected_offset != view.next_offset:
            return OffsetMismatch(stream_id=sid, expected=request.expected_offset, actual=view.next_offset)
        if request.check_prev and request.prev_hash != view.head:
            return ChainMismatch(stream_id=sid, given=request.prev_hash, head=view.head)
        if request.record_count is not None and request.record_count != view.next_offset:
            return RecordCountMismatch(stream_id=sid, given=request.record_count, actual=view.next_offset)
        return None

    def _commit_group(self, group: list[AppendRequest]) -> None:
        """Stage 2 for every request in ``group`` (the leader runs this; see commit.py)."""
        with self._lock:
            tentative: dict[StreamId, HeadView] = {}
            batches: dict[StreamId, list[FramedBatch]] = {}
            accepted: list[AppendRequest] = []
            for request in group:
                try:
                    head = self._head(request.stream_id)
                    if head.damage is not None:
                        raise head.damage
                    view = tentative.get(request.stream_id, head.view)
                    conflict = self._conflict(request, view)
                    if conflict is not None:
                        raise conflict
                    framed = request.framed
                    if framed is None or framed.on != view:
                        # framed on a head that moved since (another batch in this group or before it)
                        compressor = self._compressor(request.stream_id, self._pipeline)
                        framed = frame_batch(
                            request.stream_id,
                            self._plan(request, view),
                            view,
                            self._now(),
                            self._pipeline.buffer,
                            compressor,
                        )
                        request.framed = framed
                except StorageError as e:
                    request.error, request.done = e, True
                    continue
                tentative[request.stream_id] = framed.after
                batches.setdefault(request.stream_id, []).append(framed)
                accepted.append(request)
            if not accepted:
                return
            try:
                self._write_group(
                    batches, [r.framed for r in accepted if r.framed], fsync=any(r.fsync for r in accepted)
                )
            except _GroupFailed as failure:
                for i, request in enumerate(accepted):
                    if request.stream_id in failure.unsure:
                        request.error = _outcome_unknown(request, failure)
                    else:
                        request.error = failure.error if i == 0 else _copy_error(failure.error)
                    request.done = True
                return
            except StorageError as e:
                for i, request in enumerate(accepted):
                    request.error, request.done = (e if i == 0 else _copy_error(e)), True
                return
            for request in accepted:
                assert request.framed is not None
                after = request.framed.after
                assert after.head is not None
                request.result, request.done = (Offset(after.next_offset), after.head), True

    def _write_group(
        self, batches: dict[StreamId, list[FramedBatch]], in_order: list[FramedBatch], *, fsync: bool
    ) -> None:
        """Write, fsync and commit framed batches (see the module docstring for the order).

        ``in_order``: the same batches in the order the group accepted them, which is the order
        of their global positions: each batch gets the next contiguous range after the mark.
        """
        catalog = self._writable_catalog()
        try:
            last_position = catalog.last_global_position()
        except apsw.Error as e:
            raise CatalogError(f"cannot read the catalog, batch not stored: {e}") from e
        first_positions: dict[tuple[StreamId, int], int] = {}
        new_last: int = last_position
        for batch in in_order:
            first_positions[batch.stream_id, batch.on.next_offset] = new_last + 1
            new_last += len(batch.records)
        writes, seals = self._layout(batches, first_positions)
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
                    w.writer = self._heads[w.stream_id].writer
            for directory in new_dirs:
                fsync_dir(directory)  # new names are durable before the catalog points at them
            failpoint("segment-created")
            # 3. Write each segment's batches with one write at its committed end.
            for w in writes:
                assert w.writer is not None
                w.writer.write_at(w.base, w.data)
            failpoint("segment-written")
            # 4. The durability point (segments sealed in this group are synced either way, so
            #    their digests describe durable bytes).
            sealed = {(sid, no) for sid, no, _ in seals}
            self._sync_all([w.writer for w in writes if w.writer and (fsync or (w.stream_id, w.segment_no) in sealed)])
            digests: list[tuple[StreamId, int, bytes]] = []
            for sid, segment_no, in_group in seals:
                if in_group is not None and in_group.new_file:
                    digests.append((sid, segment_no, blake3.blake3(in_group.data).digest()))
                    continue
                writer = self._heads[sid].writer if in_group is None else in_group.writer
                assert writer is not None
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
                    catalog.insert_index_rows(w.rows)
                    catalog.insert_checkpoints(w.checkpoints)
                for sid, segment_no, digest in digests:  # after the upserts: a segment may be new
                    catalog.seal_segment(sid, segment_no, digest=digest, now_ns=now)
                for sid, framed in batches.items():
                    catalog.upsert_stream(
                        sid,
                        next_offset=framed[-1].after.next_offset,
                        chain_head=framed[-1].after.head,
                        add_events=sum(b.events for b in framed),
                        add_checkpoints=sum(len(b.records) - b.events for b in framed),
                        add_stored_bytes=sum(len(b.data) for b in framed),
                        add_payload_bytes=sum(b.payload_bytes for b in framed),
                        first_timestamp_ns=framed[0].timestamp_ns,
                        last_timestamp_ns=framed[-1].timestamp_ns,
                        now_ns=now,
                    )
                catalog.advance_global_position(last_position, new_last)
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
        self._commit_signal.notify()

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

    def _layout(
        self, batches: dict[StreamId, list[FramedBatch]], first_positions: dict[tuple[StreamId, int], int]
    ) -> tuple[list[SegmentWrite], list[tuple[StreamId, int, SegmentWrite | None]]]:
        """Which segment each batch goes to: a batch never spans two, and a full segment is sealed.

        Returns the writes and the seals; a seal's SegmentWrite is the in-group write of a segment
        created and filled in this same group (None: the stream's active segment on disk).
        ``first_positions``: each batch's first global position, by (stream, first offset).
        """
        writes: list[SegmentWrite] = []
        seals: list[tuple[StreamId, int, SegmentWrite | None]] = []
        for sid, framed in batches.items():
            head = self._heads[sid]
            segment_no, size, current = head.segment_no, head.segment_size, None
            has_segment = head.writer is not None
            for batch in framed:
                if not has_segment or (size > 0 and size + len(batch.data) > self._max_segment_size):
                    if has_segment:
                        seals.append((sid, segment_no, current))
                    segment_no, size, has_segment = segment_no + 1, 0, True
                    current = SegmentWrite(sid, segment_no, 0, batch.on.next_offset, new_file=True)
                    writes.append(current)
                elif current is None:
                    current = SegmentWrite(sid, segment_no, size, head.segment_first_offset, new_file=False)
                    writes.append(current)
                current.add(batch, first_positions[sid, batch.on.next_offset])
                size += len(batch.data)
        return writes, seals

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
        head = self._heads[sid]
        head.damage = StorageIOError(
            f"stream {sid} refuses appends until the store is reopened: {reason}",
            path=segment_path(self._data_dir, sid, head.segment_no) if head.segment_no >= 0 else None,
        )
        log.error("%s", head.damage)

    def _advance_heads(self, batches: dict[StreamId, list[FramedBatch]], writes: list[SegmentWrite]) -> None:
        for sid, framed in batches.items():
            head = self._heads[sid]
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

    # --- reading ---------------------------------------------------------------------------------

    def _query(self, ask: Callable[[Catalog], T], empty: T) -> T:
        """``ask(catalog)`` under the lock, SQLite errors translated; ``empty`` before any catalog exists."""
        with self._lock:
            catalog = self._readable_catalog()
            if catalog is None:
                return empty
            with self._catalog_errors():
                return ask(catalog)

    @contextmanager
    def _catalog_errors(self) -> Iterator[None]:
        """Catalog reads in this block raise CatalogError, never a driver or a bare Python error."""
        try:
            yield
        except apsw.Error as e:
            raise CatalogError(f"cannot read the catalog: {e}", hint=damaged_hint(self._data_dir)) from e
        except StorageError:
            raise
        except (TypeError, ValueError, KeyError, OverflowError) as e:
            # The catalog's rows are checked where catalog.py reads them; this is the net
            # under those checks, so that a damaged page never surfaces as a bare traceback.
            raise CatalogError(
                f"the catalog holds a value its schema does not allow ({type(e).__name__}: {e})",
                hint=damaged_hint(self._data_dir),
            ) from e

    def _snapshot(self, stream_id: StreamId, from_offset: int, *, anchored: bool) -> StreamSnapshot | None:
        """What a read of the stream needs (None: no such stream, in the catalog or on disk).

        A stream the catalog does not list but whose directory holds records is lost from the
        catalog, not empty: that raises CatalogMismatch (after giving a new stream's first commit
        the time to land, see ``unlisted_stream_problem``).
        """

        def ask(catalog: Catalog) -> StreamSnapshot | None:
            return catalog.snapshot(stream_id, from_offset, anchored=anchored)

        snap = self._query(ask, None)
        if snap is None:
            problem = unlisted_stream_problem(self._data_dir, stream_id, lambda: self._query(ask, None) is not None)
            if problem is not None:
                raise problem
            snap = self._query(ask, None)
        return snap

    def iter_records(self, stream_id: int, from_offset: int = 0, *, anchored: bool = True) -> Iterator[Record]:
        """Verified records from ``from_offset`` to the head, streamed in bounded memory.

        ``anchored``: verify from the nearest checkpoint at or before ``from_offset`` (trusting
        it); otherwise from offset 0. The head record is checked against the catalog's chain head.
        """
        sid = check_stream_id(stream_id)
        check_position("from_offset", from_offset)
        snap = self._snapshot(sid, from_offset, anchored=anchored)
        if snap is None or from_offset >= snap.stream.next_offset:
            return
        try:
            yield from verified_records(self._data_dir, snap, from_offset, self._dictionaries)
        except IntegrityError as e:
            self._add_repair_hint(e)
            raise

    def _add_repair_hint(self, error: IntegrityError) -> None:
        """Point a read's integrity error at ``check`` and ``repair`` (a missing or damaged
        dictionary keeps its own hint: restore the file first)."""
        if not isinstance(error, DictionaryUnusable | RecordsUnavailable):
            error.hint = (
                f"see it with `hybridlog check {self._data_dir}`, fix it with `hybridlog repair {self._data_dir}`"
            )

    def read_from(self, stream_id: int, from_offset: int, max_bytes: int) -> list[bytes]:
        """Event payloads from ``from_offset``, verified from the nearest checkpoint.

        Returns at least one event when there is one, then stops before the payloads would exceed
        ``max_bytes``. Checkpoint records are skipped. An unknown stream gives ``[]``. Like the page
        reads, it ends before a range a repair isolated (see ``take_page``).

        A point read remembers the checkpoint interval it verified, so the next read in it checks
        only the records it returns against the hashes verified then (see verified_cache.py).
        """
        limit = check_non_negative("max_bytes", max_bytes)
        if not self._verified.enabled:
            return [r.payload for r in read_page(self, stream_id, from_offset, limit, anchored=True, events_only=True)]
        sid = check_stream_id(stream_id)
        check_position("from_offset", from_offset)
        remembered = self._read_remembered(sid, from_offset, limit)
        if remembered is not None:
            return remembered
        return self._read_remembering(sid, from_offset, limit)

    def _read_remembered(self, sid: StreamId, from_offset: int, limit: int) -> list[bytes] | None:
        """``read_from`` out of a verified run, or None when the run cannot answer it all."""
        if self._closed:
            return None
        if self._read_only and not self._runs_still_hold():
            return None
        run = self._verified.find(sid, from_offset)
        if run is None:
            return None
        # take_payloads' rule, inline: this loop is the whole cost of a warm point read (a
        # generator feeding take_within measured ~10% slower).
        out: list[bytes] = []
        total = 0
        for offset in range(from_offset, run.end):
            stored = self._verified.read(run, offset)
            found = stored and reverify_frame(
                stored[0], stream_id=sid, offset=offset, verified_hash=stored[1], dictionaries=self._dictionaries
            )
            if found is None:
                self._verified.drop(run)  # the walk will say what changed
                return None
            kind, payload = found
            if kind != RecordKind.EVENT:
                continue
            if out and total + len(payload) > limit:
                return out
            out.append(payload)
            total += len(payload)
            if total > limit:
                return out  # not even an empty event fits any more
        return None  # the answer goes past the run

    def _runs_still_hold(self) -> bool:
        """A reader's runs hold until recovery or repair (in any process) logs an action.

        Appends leave every remembered record where it was, so a commit alone (a new
        ``data_version``) only makes us look at the recovery log's last entry.
        """
        with self._lock, self._catalog_errors():
            # No stat while nothing was committed: a run's records are re-verified from their bytes,
            # and a read past the runs goes through ``_readable_catalog``, which follows a rebuild.
            catalog = self._readable_catalog(follow=False)
            version = catalog.data_version() if catalog is not None else None
            if version is not None and version == self._verified.data_version:
                return True
            if self._follow_catalog() or catalog is None:
                catalog = self._catalog
                if catalog is None:
                    self._verified.clear()
                    return False
                version = catalog.data_version()
            generation = catalog.recovery_generation()
        held = generation == self._verified.generation
        if not held:
            self._verified.clear()
            self._verified.generation = generation
        self._verified.data_version = version
        return held

    def _read_remembering(self, sid: StreamId, from_offset: int, limit: int) -> list[bytes]:
        """``read_from`` by a verified walk from the anchor that goes on to the end of its
        checkpoint interval (the next checkpoint, the head, or ``MAX_RUN`` records) and remembers
        what it verified there as a run. Payloads are kept only up to ``limit``."""
        if self._read_only:
            self._runs_still_hold()
        generation = self._verified.generation
        snap = self._snapshot(sid, from_offset, anchored=True)
        if snap is None or from_offset >= snap.stream.next_offset:
            return []
        for gap in snap.gaps:
            if gap.holds(from_offset):
                raise unavailable(self._data_dir, gap, from_offset)
        start = snap.start.offset if snap.start else 0
        run = VerifiedRun(sid, start)
        wanted: list[Record] = []
        wanted_bytes = 0
        at_gap = False
        try:
            for segment_no, position, size, record in verified_frames(self._data_dir, snap, start, self._dictionaries):
                if (
                    (record.kind is RecordKind.CHECKPOINT and record.offset > start)
                    or len(run) >= MAX_RUN
                    or record.offset != start + len(run)  # a cut marker's jump: runs hold consecutive offsets
                ):
                    break
                run.add(segment_no, position, size, record.hash)
                if record.offset >= from_offset and wanted_bytes <= limit:
                    wanted.append(record)
                    wanted_bytes += len(record.payload) if record.kind is RecordKind.EVENT else 0
        except RecordIsolated:
            if not any(r.kind is RecordKind.EVENT for r in wanted):
                raise
            at_gap = True  # the answer ends before the isolated range (take_page's rule)
        except IntegrityError as e:
            self._add_repair_hint(e)
            raise
        if not self._read_only or self._verified.generation == generation:
            self._verified.add(run)
        if at_gap or wanted_bytes > limit or run.end >= snap.stream.next_offset:
            return take_payloads(wanted, limit)
        # The answer goes past the interval: the next one starts at its checkpoint.
        rest = chain(wanted, self.iter_records(sid, max(run.end, from_offset)))
        return [r.payload for r in take_page(rest, limit, events_only=True)]

    def read_from_genesis(self, stream_id: int, from_offset: int, max_bytes: int) -> list[bytes]:
        """A page of event payloads from ``from_offset``, verified from offset 0 (genesis) even when
        the page starts later: at least one event when there is one, then stops before the payloads
        would exceed ``max_bytes``. Checkpoint records are skipped. An unknown stream gives ``[]``.

        A page ends before a range a repair isolated; a page that starts in one raises
        ``RecordIsolated``. To walk a whole stream in bounded memory, use
        ``iter_records(stream_id, 0, anchored=False)``.
        """
        page = read_page(self, stream_id, from_offset, max_bytes, anchored=False, events_only=True)
        return [r.payload for r in page]

    def read_records_from_genesis(self, stream_id: int, from_offset: int, max_bytes: int) -> list[Record]:
        """``read_from_genesis`` as Records, checkpoints included; the next page starts at
        ``page[-1].offset + 1``."""
        return read_page(self, stream_id, from_offset, max_bytes, anchored=False, events_only=False)

    def read_records_verified(self, stream_id: int, from_offset: int, max_bytes: int) -> list[Record]:
        """``read_records_from_genesis``, verified from the nearest checkpoint at or before
        ``from_offset`` instead of from genesis."""
        return read_page(self, stream_id, from_offset, max_bytes, anchored=True, events_only=False)

    # --- time and global order ------------------------------------------------------------------

    def offset_at(self, stream_id: int, timestamp_ns: int) -> Offset:
        """The first offset whose record was appended at or after ``timestamp_ns`` (nanoseconds
        since the epoch); the stream's next offset if there is none (0 for an unknown stream).

        Timestamps never decrease within a stream, so this is a binary search over its offset index.
        """
        sid = check_stream_id(stream_id)
        ts = check_offset("timestamp_ns", timestamp_ns)
        return self._query(lambda catalog: catalog.first_offset_at_or_after(sid, ts), Offset(0))

    def read_between(
        self,
        stream_id: int,
        since_ns: int | None,
        until_ns: int | None,
        max_bytes: int = DEFAULT_MAX_READ_BYTES,
    ) -> list[Record]:
        """Verified records appended at or after ``since_ns`` and before ``until_ns`` (None: no bound).

        Checkpoint records in the window are included (``kind`` tells them apart). Returns at least
        one record when there is one, then stops before the payloads would exceed ``max_bytes``;
        the rest of the window runs from the last one's offset + 1 to ``offset_at(until_ns)``.
        """
        return read_window(self, check_stream_id(stream_id), since_ns, until_ns, max_bytes)

    def last_global_position(self) -> GlobalPosition:
        """The global position of the last record committed (0: none yet); the next gets one more."""
        return self._query(lambda catalog: catalog.last_global_position(), GlobalPosition(0))

    def read_global(
        self, from_position: int = 1, max_bytes: int = DEFAULT_MAX_READ_BYTES, *, stream_id: int | None = None
    ) -> list[GlobalRecord]:
        """Records of every stream in global (commit) order, from the first position >= ``from_position``.

        Checkpoint records are included, so a store never repaired shows consecutive positions.
        Returns at least one record when there is one, then stops before the payloads would exceed
        ``max_bytes``; continue from the last one's ``global_position + 1``. Every record is verified
        by its stream's checkpoint-anchored read: a damaged one raises IntegrityError.
        ``stream_id``: only that stream's records (found through its offset index, not by reading
        past the others').
        """
        start = check_position("from_position", from_position)
        limit = check_non_negative("max_bytes", max_bytes)
        only = None if stream_id is None else check_stream_id(stream_id)
        rows: list[GlobalRow] = self._query(lambda catalog: catalog.global_rows(start, limit, only), [])
        # Within a stream, positions increase with offsets: each stream's share of the rows is one
        # offset range, read with one verified walk.
        ranges: dict[StreamId, tuple[int, int]] = {}
        for row in rows:
            low, _high = ranges.get(row.stream_id, (row.offset, row.offset))
            ranges[row.stream_id] = (min(low, row.offset), row.offset)
        found: dict[tuple[StreamId, int], Record] = {}
        for sid, (low, high) in ranges.items():
            for record in records_between(self, sid, low, high):  # isolated records have no position
                found[sid, record.offset] = record

        def in_order() -> Iterator[GlobalRecord]:
            for row in rows:
                record = found.get((row.stream_id, row.offset))
                if record is None:
                    return  # cut off by a repair after the rows were read: the read ends before it
                yield GlobalRecord(row.global_position, record)

        return take_within(in_order(), lambda g: len(g.record.payload), limit)

    def global_position_of(self, stream_id: int, offset: int) -> GlobalPosition | None:
        """The global position of the stream's record at ``offset`` (None: no such record yet)."""
        sid = check_stream_id(stream_id)
        at = check_position("offset", offset)
        return self._query(lambda catalog: catalog.global_position_of(sid, at), None)

    def record_at_position(self, position: int) -> tuple[StreamId, Offset] | None:
        """(stream, offset) of the record at a global position (None: none has it, or not yet)."""
        at = check_position("position", position)
        return self._query(lambda catalog: catalog.record_at_position(at), None)

    # --- subscriptions and consumers (subscription.py, consumers.py) -----------------------------

    def subscribe(
        self,
        stream_id: int | None = None,
        *,
        from_offset: int | None = None,
        from_position: int | None = None,
        consumer: str | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        max_interval: float = DEFAULT_MAX_INTERVAL,
        should_stop: Callable[[], bool] | None = None,
        stop_when_caught_up: bool = False,
    ) -> Subscription:
        """Every committed record (checkpoints included) in global order, waiting for new ones.

        ``stream_id``: one stream's records only (None: every stream). The start is the first
        record at or after ``from_position``; or the stream's record at ``from_offset`` (needs
        ``stream_id``; an offset not written yet starts with that record when it comes); or, for a
        ``consumer``, the first after its acknowledged position; else position 1. Giving both
        ``from_offset`` and ``from_position`` is InvalidArgument.

        ``consumer`` names a consumer whose position is kept in ``consumers.db``: it is registered
        (for ``stream_id``) if new, and a new one starts at the beginning; acknowledge progress
        with ``ack``. A consumer follows the streams it was registered for: another ``stream_id``
        raises ConsumerMismatch. If its position no longer names the record it acknowledged
        (positions renumbered by a full catalog rebuild), ConsumerPositionLost is raised.

        The iterator never ends by itself: it waits for new records (woken by this process's
        commits, or polling the catalog every ``poll_interval`` seconds, doubling up to
        ``max_interval``) until ``close()`` is called on it or ``should_stop()`` returns True.
        With ``stop_when_caught_up`` it ends instead the first time it finds nothing more committed
        (``hybridlog tail --exit-when-caught-up``, as kcat's ``-e``).
        Records are verified as they are read; a damaged one raises IntegrityError. Closing the
        store wakes it, and its next read raises StoreClosed.
        """
        return Subscription(
            self,
            self._commit_signal,
            stream_id,
            from_offset=from_offset,
            from_position=from_position,
            consumer=consumer,
            poll_interval=poll_interval,
            max_interval=max_interval,
            should_stop=should_stop,
            stop_when_caught_up=stop_when_caught_up,
        )

    def _consumer_store(self, *, create: bool) -> ConsumerStore | None:
        """``consumers.db``, opened on first use (created only when ``create``; None if it does not exist)."""
        if create and not self._read_only:
            with self._lock:
                self._writable_catalog()  # a writer creates its store on first use
        with self._consumers_lock:
            if self._closed:
                raise StoreClosed(f"store {self._data_dir} is closed")
            if self._consumers is None and (create or (self._data_dir / CONSUMERS_FILE).exists()):
                if not self._data_dir.is_dir():
                    raise InvalidArgument(
                        f"no store at {self._data_dir}", hint="a writer creates it: open it without read_only"
                    )
                self._consumers = ConsumerStore(self._data_dir)
            return self._consumers

    def register_consumer(self, name: str, stream_id: int | None = None) -> ConsumerState:
        """The named consumer, registered at position 0 for ``stream_id`` (None: every stream) if new.

        ConsumerMismatch if it exists for other streams. Works on read-only stores too: consumer
        positions live in ``consumers.db``, which any process may write (see consumers.py).
        """
        checked = check_consumer_name(name)
        sid = None if stream_id is None else check_stream_id(stream_id)
        store = self._consumer_store(create=True)
        assert store is not None
        return store.register(checked, sid, self._now())

    def ack(self, consumer: str, position: int, *, force: bool = False) -> ConsumerState:
        """Record that ``consumer`` is done with every record it follows up to global ``position``.

        One transaction: the position is checked and stored together. InvalidArgument if it is
        past the last committed position, or behind the consumer's position (unless ``force``,
        which moves it back, or to 0 to start over); UnknownConsumer if it was never registered.
        Works on read-only stores too (see ``register_consumer``). Returns the consumer's new state.
        """
        name = check_consumer_name(consumer)
        at = GlobalPosition(check_non_negative("position", position))
        last = self.last_global_position()
        if at > last:
            raise InvalidArgument(f"cannot acknowledge position {at}: the last committed position is {last}")
        acked = self.record_at_position(at) if at else None
        store = self._consumer_store(create=True)
        assert store is not None
        return store.ack(name, at, acked, force=bool(force), now_ns=self._now())

    def consumers(self) -> list[ConsumerState]:
        """Every registered consumer, by name."""
        store = self._consumer_store(create=False)
        return store.all() if store is not None else []

    # --- heads, checkpoints, segments ------------------------------------------------------------

    def latest_chain_hash(self, stream_id: int) -> ChainHash | None:
        """The hash of the stream's last record (None for an empty or unknown stream)."""
        sid = check_stream_id(stream_id)
        row = self._query(lambda catalog: catalog.stream(sid), None)
        return row.chain_head if row else None

    def next_offset(self, stream_id: int) -> Offset:
        """The offset the stream's next record will get (its record count)."""
        sid = check_stream_id(stream_id)
        row = self._query(lambda catalog: catalog.stream(sid), None)
        return row.next_offset if row else Offset(0)

    # --- SQL ------------------------------------------------------------------------------------

    def sql(
        self,
        query: str,
        params: Sequence[SqlValue] = (),
        *,
        timeout: float | None = None,
        max_rows: int | None = None,
    ) -> QueryResult:
        """Run one read-only SQL statement over the catalog and the ``events`` table (docs/sql.md),
        to its end: every row is collected (``iter_sql`` streams them instead).

        Rows of ``events`` are verified records: a damaged one raises its IntegrityError.
        ``timeout``: seconds the query may run (None: no limit), else QueryTimeout. ``max_rows``:
        rows it may return (None: no limit), else QueryRowLimit. Both are QueryLimitExceeded. A
        query that is not a str (or holds a NUL or a lone surrogate), params that are not a
        sequence of None, int (64-bit), float, str or bytes, and bad limits raise InvalidArgument.
        """
        with self.iter_sql(query, params, timeout=timeout, max_rows=max_rows) as rows:
            return QueryResult(rows.columns, list(rows))

    def iter_sql(
        self,
        query: str,
        params: Sequence[SqlValue] = (),
        *,
        timeout: float | None = None,
        max_rows: int | None = None,
    ) -> QueryRows:
        """Start one read-only SQL statement, like ``sql``; returns ``columns`` and the rows one at
        a time as they are produced, in bounded memory. Use it in a ``with`` block (or close it)
        when stopping early: it holds a catalog connection until its rows run out.
        ``timeout`` counts only the time spent producing rows, not the caller's time between them.
        """
        check_query(query, params)  # bad arguments first, whatever state the store is in
        check_limits(timeout, max_rows)
        with self._lock:
            self._readable_catalog()  # StoreClosed, or a reader's late open
        return query_rows(self._data_dir, query, params, events=self, timeout=timeout, max_rows=max_rows)

    def global_ranges(self, low: int, high: int, stream_id: int | None) -> list[tuple[StreamId, int, int]]:
        """(stream, first offset, last offset) holding the records with global positions ``low`` to ``high``."""
        only = None if stream_id is None else StreamId(stream_id)
        return self._query(lambda catalog: catalog.global_ranges(low, high, only), [])

    def global_positions(self, stream_id: int, first: int, last: int) -> dict[Offset, GlobalPosition]:
        """The global positions of a stream's records from offset ``first`` to ``last``."""
        sid = check_stream_id(stream_id)
        return self._query(lambda catalog: catalog.global_positions(sid, first, last), {})

    def stream_ids(self) -> list[StreamId]:
        return self._query(lambda catalog: catalog.stream_ids(), [])

    def last_checkpoint(self, stream_id: int) -> tuple[Offset, ChainHash] | None:
        """(offset, hash) of the stream's latest checkpoint record, or None."""
        sid = check_stream_id(stream_id)
        row = self._query(lambda catalog: catalog.checkpoint_at_or_before(sid, 2**63 - 1), None)
        return (row.offset, row.hash) if row else None

    def checkpoint_index(self, stream_id: int) -> CheckpointIndex:
        sid = check_stream_id(stream_id)
        return CheckpointIndex(sid, self._query(lambda catalog: catalog.checkpoints(sid), []))

    def offset_index(self, stream_id: int) -> OffsetIndex:
        sid = check_stream_id(stream_id)
        return OffsetIndex(sid, self._readable_catalog, self._lock)

    def stats(self) -> list[StreamStats]:
        """Per-stream counts and sizes from the catalog (records, segments, bytes, compression)."""
        return self._query(lambda catalog: catalog.stream_stats(), [])

    def schema_version(self) -> int:
        """The catalog's schema version (``PRAGMA user_version``); 0 before the store exists."""
        return self._query(lambda catalog: catalog.schema_version(), 0)

    def segments(self, stream_id: int) -> list[SegmentInfo]:
        sid = check_stream_id(stream_id)
        rows: list[SegmentRow] = self._query(lambda catalog: catalog.segments(sid), [])
        return [
            SegmentInfo(
                sid,
                r.segment_no,
                segment_path(self._data_dir, sid, r.segment_no),
                r.first_offset,
                r.next_offset,
                r.size_bytes,
                r.sealed,
                r.digest,
            )
            for r in rows
        ]

    def segment_count(self, stream_id: int) -> int:
        return len(self.segments(stream_id))

    def completed_segments(self, stream_id: int) -> list[SegmentInfo]:
        """The sealed (immutable) segments of a stream, oldest first."""
        return [s for s in self.segments(stream_id) if s.sealed]

    def flush_indexes(self) -> None:
        """Make everything committed durable: fsync active segments, checkpoint the catalog's WAL."""
        with self._lock:
            if self._read_only or self._catalog is None:
                return
            catalog = self._writable_catalog()
            for head in self._heads.values():
                if head.writer is not None:
                    head.writer.sync()
            catalog.checkpoint_wal()

    def ensure_created(self) -> None:
        """Create the store now if it does not exist yet: its directory (missing parents too),
        ``LOCK`` and the catalog, each new directory entry fsynced before this returns. A writer
        otherwise creates its store on first use; an existing store is only opened."""
        with self._lock:
            self._writable_catalog()

    # --- rebuilding ------------------------------------------------------------------------------

    def recover(self) -> list[ReconcileResult]:
        """Run open-time recovery again: reconcile every stream whose files disagree with the catalog."""
        with self._lock:
            catalog = self._writable_catalog()
            try:
                results = recover_store(catalog, self._data_dir, self._now)
            except OSError as e:
                raise StorageIOError(f"recovery of {self._data_dir} failed: {e}") from e
            self._note_recovery(results)
            return results

    def recovery_results(self) -> list[ReconcileResult]:
        """What recovery found and did since this store was opened (streams that needed it only)."""
        with self._lock:
            return list(self._recovery)

    def recovery_log(self, stream_id: int | None = None) -> list[RecoveryEntry]:
        """The ``recovery_log`` table: every recovery and repair action ever taken on this store."""
        sid = None if stream_id is None else check_stream_id(stream_id)
        return self._query(lambda catalog: catalog.recovery_log(sid), [])

    def damaged_streams(self) -> dict[StreamId, IntegrityError]:
        """Streams that recovery found damaged (appends refused until ``repair``), with where."""
        with self._lock:
            return dict(self._damage)

    def check(
        self, stream_ids: list[int] | None = None, *, progress: Callable[[int], None] | None = None
    ) -> CheckReport:
        """Every disagreement between catalog and segments, and all damage, found by a full walk.

        Changes nothing. In a writer, appends wait while it runs (so the batch being written is
        not mistaken for a torn one); a reader judges what a writer in another process may be
        writing past the catalog only once no writer holds the lock (see repair.py);
        ``progress`` is called with each count of records verified.
        """
        sids: list[int] | None = None if stream_ids is None else [check_stream_id(s) for s in stream_ids]
        with self._lock:
            if self._closed:
                raise StoreClosed(f"store {self._data_dir} is closed")
            try:
                return check_store(self._data_dir, sids, progress=progress, writer_paused=self._store_lock is not None)
            except OSError as e:
                raise StorageIOError(f"cannot check {self._data_dir}: {e}") from e

    def repair(
        self, plan: list[RepairStep] | None = None, *, stream_ids: list[int] | None = None, truncate: bool = False
    ) -> RepairReport:
        """Apply ``plan`` (default: the plan of a fresh ``check``); returns what was done.

        The default plan keeps every record that still verifies (``stream_repair.py``): damage is
        isolated in place and marked in the stream, and only records that no longer verify at
        the end of a stream are cut. ``truncate=True`` cuts each damaged stream at its first
        damaged record instead. Either way a stream continues after the highest offset it ever
        committed, cut bytes go to quarantine files, and each action to ``recovery_log``.
        """
        sids: list[int] | None = None if stream_ids is None else [check_stream_id(s) for s in stream_ids]
        plan = None if plan is None else _checked_plan(plan)
        report = RepairReport()
        with self._lock:
            self._writable_catalog()
            for step in self.check(sids).plan(sids, truncate=bool(truncate)) if plan is None else plan:
                if step.repair == REBUILD_CATALOG:
                    results = self._rebuild_catalog(found=step.reason)
                elif step.stream_id is None:
                    raise InvalidArgument(f"repair {step.repair!r} needs a stream id")
                elif step.repair in (ISOLATE, TRUNCATE, REINDEX):
                    results = [self._repair_stream(step.stream_id, step.repair, found=step.reason)]
                else:
                    raise InvalidArgument(f"unknown repair {step.repair!r}")
                report.applied.append(step)
                report.entries.extend(e for r in results for e in r.entries)
            report.after = self.check(sids)
        return report

    def rebuild_catalog(self) -> list[ReconcileResult]:
        """Move the catalog aside and build a new one from every stream's segments."""
        with self._lock:
            self._writable_catalog()
            return self._rebuild_catalog(found="rebuild_catalog requested")

    def _rebuild_catalog(self, *, found: str) -> list[ReconcileResult]:
        for sid in list(self._heads):
            self._forget_head(sid)
        # Readers keep reading the old catalog until the new one is renamed into place.
        retiring, self._catalog = self._catalog, None
        self._damage.clear()
        try:
            self._catalog, results = rebuild_catalog(self._data_dir, self._now, found=found, retiring=retiring)
        except OSError as e:
            raise StorageIOError(f"cannot rebuild the catalog of {self._data_dir}: {e}") from e
        finally:
            if self._catalog is None and retiring is not None:
                retiring.close()
        self._catalog_generation += 1
        self._note_recovery(results)
        return results

    def rebuild_index(self, stream_id: int) -> OffsetIndex:
        """Replace the stream's catalog rows with a verifying scan of its segments.

        A torn tail is quarantined. If the scan meets damage, the records before it are indexed,
        the stream refuses appends, and the IntegrityError naming the damage is raised.
        """
        sid = check_stream_id(stream_id)
        with self._lock:
            result = self._reindex(sid, found="rebuild_index requested")
            if result.damage is not None:
                raise result.damage
        return self.offset_index(sid)

    def _reindex(self, sid: StreamId, *, found: str) -> ReconcileResult:
        """Rebuild one stream's catalog rows from its segments (a torn tail is quarantined; offsets
        the catalog knew that the segments lost are marked cut, never given out again)."""
        catalog = self._writable_catalog()
        self._forget_head(sid)
        try:
            result = repair_stream(catalog, self._data_dir, sid, self._now, reindex_only=True, found=found)
        except OSError as e:
            raise StorageIOError(f"stream {sid}: cannot rebuild its index: {e}") from e
        self._note_recovery([result])
        return result

    def _repair_stream(self, sid: StreamId, repair: str, *, found: str) -> ReconcileResult:
        """Isolate a stream's damage, cut it there (``truncate``) or only re-index it (``reindex``)."""
        catalog = self._writable_catalog()
        self._forget_head(sid)
        try:
            result = repair_stream(
                catalog,
                self._data_dir,
                sid,
                self._now,
                truncate=repair == TRUNCATE,
                reindex_only=repair == REINDEX,
                found=found,
            )
        except OSError as e:
            raise StorageIOError(f"stream {sid}: cannot repair it: {e}") from e
        self._note_recovery([result])
        return result

    def load_or_rebuild_index(self, stream_id: int) -> OffsetIndex:
        """The stream's offset index; rebuilt from the segments if it does not agree with them."""
        sid = check_stream_id(stream_id)
        with self._lock:
            catalog = self._writable_catalog()
            if sid in streams_to_reconcile(catalog, self._data_dir) or sid in self._damage:
                return self.rebuild_index(sid)
        return self.offset_index(sid)

    def rebuild_checkpoint_index(self, stream_id: int) -> int:
        """Re-derive the stream's checkpoint rows from its checkpoint records; returns how many."""
        sid = check_stream_id(stream_id)
        with self._lock:
            catalog = self._writable_catalog()
            self._head(sid)
            try:
                return rebuild_checkpoints(catalog, self._data_dir, sid)
            except OSError as e:
                raise StorageIOError(f"stream {sid}: cannot rebuild checkpoints: {e}") from e

    def _forget_head(self, stream_id: StreamId) -> None:
        head = self._heads.pop(stream_id, None)
        if head is not None and head.writer is not None:
            head.writer.close()

    def _now(self) -> int:
        """The clock's reading, checked: record headers hold it as a u64, the catalog as a signed 64-bit integer."""
        return check_clock_reading(self._clock())


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


def _checked_plan(plan: object) -> list[RepairStep]:
    """``repair``'s plan as a list of RepairSteps it can apply, or InvalidArgument before any is applied."""
    if isinstance(plan, (str, bytes, bytearray, memoryview)) or not isinstance(plan, Iterable):
        raise InvalidArgument(f"plan must be a list of RepairStep, not {type(plan).__name__}")
    steps: list[object] = list(plan)
    for i, step in enumerate(steps):
        if not isinstance(step, RepairStep):
            raise InvalidArgument(f"plan step {i} is {type(step).__name__} {step!r}, not a RepairStep")
        if step.repair not in (REBUILD_CATALOG, ISOLATE, TRUNCATE, REINDEX):
            raise InvalidArgument(f"plan step {i}: unknown repair {step.repair!r}")
        if step.stream_id is not None:
            check_stream_id(step.stream_id)
        elif step.repair != REBUILD_CATALOG:
            raise InvalidArgument(f"plan step {i}: repair {step.repair!r} needs a stream id")
    return [step for step in steps if isinstance(step, RepairStep)]


def _file_identity(path: str) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the file at ``path``; None if there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _copy_error(error: StorageError) -> StorageError:
    """A copy of ``error`` for another waiting thread (one exception object per raise)."""
    try:
        return copy.copy(error)
    except Exception:  # an error type that cannot be copied: share the original
        return error
