"""``Storage``: append-only, hash-chained event streams in segment files, indexed by a catalog.

The one home of opening and closing a store (the writer lock, the catalog file ``opening.py``
chooses, recovery on open, a reader following a rebuilt catalog) and of its public API, as short
delegations: argument checks and the derived methods of the contract are ``backend.BackendBase``'s,
appends go to ``writer.py`` (the write path, in the order ``docs/format.md`` gives), verified reads
to ``reads.py``, checks and repairs to ``maintenance.py``, subscriptions and consumers to
``subscription.py`` and ``consumers.py``, the Merkle tree and proofs to ``tree.py``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from hybridlog.backend import BackendBase
from hybridlog.batch import BytesLike, check_position
from hybridlog.catalog import Catalog
from hybridlog.catalog_rows import RecoveryEntry, StreamStats
from hybridlog.consumers import Consumers
from hybridlog.db import DEFAULT_BUSY_TIMEOUT_MS
from hybridlog.dictionary import DictionaryCache
from hybridlog.errors import (
    CatalogUnusable,
    IntegrityError,
    InvalidArgument,
    ReadOnlyStore,
    StorageIOError,
    StoreClosed,
    os_error_detail,
)
from hybridlog.evicted import segment_file
from hybridlog.index import CheckpointIndex, OffsetIndex, SegmentInfo, segment_infos
from hybridlog.layout import CATALOG_FILE, stream_ids_on_disk
from hybridlog.lock import StoreLock
from hybridlog.maintenance import Maintenance
from hybridlog.note import VerifierKey
from hybridlog.objects import open_objects
from hybridlog.opening import file_identity, open_or_rebuild_catalog, open_reader_catalog, replace_catalog
from hybridlog.pipeline import AppendPipeline
from hybridlog.reads import Reads
from hybridlog.recovery import ReconcileResult, recover_store
from hybridlog.remote import check_remote_stream, fetch_remote
from hybridlog.repair import CheckReport, RepairReport, RepairStep
from hybridlog.segment import make_dirs_durably
from hybridlog.sql import QueryResult, QueryRows, SqlValue, check_limits, check_query, query_rows
from hybridlog.subscription import SubscribingStore, commit_signal_for
from hybridlog.tree import ProvingStore
from hybridlog.types import (
    DEFAULT_MAX_SEGMENT_SIZE,
    ChainHash,
    CheckpointPolicy,
    CompressionKind,
    GlobalPosition,
    GlobalRecord,
    Offset,
    Record,
    StreamId,
    check_storage_settings,
    check_stream_id,
)
from hybridlog.verified_cache import DEFAULT_MAX_RECORDS as DEFAULT_VERIFIED_CACHE_RECORDS
from hybridlog.verified_cache import VerifiedRunCache
from hybridlog.writer import Writer

log = logging.getLogger(__name__)


Clock = Callable[[], int]


class Storage(BackendBase, ProvingStore, SubscribingStore):
    """A store of append-only, hash-chained event streams in one directory.

    One process may hold a store for writing (others get ``StorageLocked``); any number may open
    it with ``read_only=True``. An instance is safe to share between threads. ``busy_timeout``:
    seconds opening waits while another process keeps the catalog locked, before ``CatalogBusy``
    (a busy or unreadable catalog is never rebuilt; see lock.py for ``LOCK``).
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
        check_storage_settings(max_segment_size, verified_cache_records, busy_timeout)
        super().__init__(checkpoint_policy=checkpoint_policy, compression=compression, clock=clock)
        self._data_dir = Path(data_dir)
        self._max_segment_size = max_segment_size
        self._read_only = read_only
        self._busy_timeout_ms = round(busy_timeout * 1000)  # how long opening waits for a locked catalog
        self._catalog: Catalog | None = None
        # A reader's catalog file, as (st_dev, st_ino) when opened: a rebuild renames a new one over it.
        self._catalog_identity: tuple[int, int] | None = None
        self._catalog_generation = 0  # how many times this store moved to a new catalog file
        self._store_lock: StoreLock | None = None
        self._dictionaries = DictionaryCache(self._data_dir)  # stream dictionaries, for reading and compressing
        # Point reads remember verified runs (see verified_cache.py); 0 turns that off.
        self._verified = VerifiedRunCache(verified_cache_records, lambda sid, no: segment_file(self._data_dir, sid, no))
        # Wakes subscriptions in this process after each commit (one per store directory).
        self._commit_signal = commit_signal_for(self._data_dir)
        self._reads = Reads(
            self._data_dir,
            lock=self._lock,
            read_only=read_only,
            dictionaries=self._dictionaries,
            verified=self._verified,
            readable=self._readable_catalog,
            follow=self._follow_catalog,
            current=lambda: self._catalog,
            closed=lambda: self._closed,
        )
        self._writer = Writer(
            self._data_dir,
            policy=self._policy,
            max_segment_size=max_segment_size,
            compression=compression,
            dictionaries=self._dictionaries,
            lock=self._lock,
            catalog=self._writable_catalog,
            now=self._now,
            closed=lambda: self._closed,
            damage=lambda sid: self._maintenance.damage.get(sid),
            committed=self._commit_signal.notify,
        )
        self._maintenance = Maintenance(
            self._data_dir,
            lock=self._lock,
            catalog=self._writable_catalog,
            writer=self._writer,
            now=self._now,
            closed=lambda: self._closed,
            writer_paused=lambda: self._store_lock is not None,
            rebuild_catalog=self._rebuild_catalog,
            forget_verified=self._verified.clear,
            committed=self._commit_signal.notify,
            tree=lambda: self.tree,
        )
        self._consumers = Consumers(
            self._data_dir,
            closed=lambda: self._closed,
            created=lambda: None if read_only else self.ensure_created(),
            now=self._now,
            last_position=self.last_global_position,
            record_at=self.record_at_position,
        )
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
        """The seed's constructor: a store at ``data_dir`` with the default settings."""
        return cls(data_dir)

    @classmethod
    def with_checkpoint_policy(cls, data_dir: str | os.PathLike[str], policy: CheckpointPolicy) -> Storage:
        """The seed's constructor: a store at ``data_dir`` with a checkpoint policy."""
        return cls(data_dir, checkpoint_policy=policy)

    @classmethod
    def with_max_segment_size(
        cls, data_dir: str | os.PathLike[str], policy: CheckpointPolicy, max_segment_size: int
    ) -> Storage:
        """The seed's constructor: a checkpoint policy and a segment size limit."""
        return cls(data_dir, checkpoint_policy=policy, max_segment_size=max_segment_size)

    @classmethod
    def open_remote(
        cls,
        url: str,
        *,
        vkey: str | VerifierKey | list[str] | list[VerifierKey],
        cache_dir: str | os.PathLike[str],
        against: Sequence[str] = (),
    ) -> Storage:
        """A read-only store from an object store's objects alone (``docs/tiering.md``): every
        stream's manifests checked (signed by ``vkey``, each following the one before), the last
        one's segments and dictionaries fetched into ``cache_dir`` (a directory of its own; kept
        as a cache for the next open) and checked against their digests, and every stream walked
        with its chain verified from genesis to the manifest's head. IntegrityError names the
        stream, segment and offset of anything that does not verify; BucketCutBack if a signed
        manifest in ``against`` (seen before) is no longer in the bucket as it was; RetainedBucket
        if retention removed a stream's first records (``remote.verify_anchored`` verifies it)."""
        vkeys: list[str] | list[VerifierKey] = vkey if isinstance(vkey, list) else [vkey]  # type: ignore[assignment]
        directory = Path(cache_dir)
        streams = fetch_remote(open_objects(url), vkeys, directory, against, from_genesis=True)
        with cls(directory, checkpoint_policy=CheckpointPolicy.explicit()):
            pass  # the catalog is built from the segments, as for any store that has none
        store = cls(directory, read_only=True)
        try:
            for sid, remote in streams.items():
                check_remote_stream(store, sid, remote)
        except BaseException:
            store.close()
            raise
        return store

    @classmethod
    def with_compression(
        cls, data_dir: str | os.PathLike[str], policy: CheckpointPolicy, compression: CompressionKind
    ) -> Storage:
        """The seed's constructor: a checkpoint policy and a compression."""
        return cls(data_dir, checkpoint_policy=policy, compression=compression)

    # --- settings --------------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        """The store's directory."""
        return self._data_dir

    @property
    def read_only(self) -> bool:
        """Whether this store was opened for reading only (no lock, no writes)."""
        return self._read_only

    def max_segment_size(self) -> int:
        """The size in bytes past which a stream's next batch starts a new segment."""
        return self._max_segment_size

    def index_path(self, stream_id: int) -> Path:
        """The catalog file holding this stream's index (one catalog serves every stream)."""
        check_stream_id(stream_id)
        return self._data_dir / CATALOG_FILE

    # --- opening and closing ---------------------------------------------------------------------

    def _open(self) -> None:
        """Readers open the catalog; a writer takes the lock, opens (or rebuilds) it, and recovers."""
        if self._read_only:
            opened = open_reader_catalog(self._data_dir, self._busy_timeout_ms)
            if opened is not None:
                self._catalog, self._catalog_identity = opened
            return
        try:
            make_dirs_durably(self._data_dir)
        except OSError as e:
            raise StorageIOError(f"cannot create store directory {self._data_dir}: {e}", path=self._data_dir) from e
        self._store_lock = StoreLock(self._data_dir)
        try:
            self._catalog, rebuilt = open_or_rebuild_catalog(self._data_dir, self._now, self._busy_timeout_ms)
            self._maintenance.note(rebuilt)
            self._maintenance.note(recover_store(self._catalog, self._data_dir, self._now))
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
        self._writer.close()
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None
        if self._store_lock is not None:
            self._store_lock.release()
            self._store_lock = None

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
        """The catalog to read (None before the store has one); a reader first checks (``follow``, one
        ``stat``) that no rebuild renamed a new catalog over its file (``_follow_catalog``)."""
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
        """Reopen a reader's catalog if the file at the path is no longer the one open (True if so): a
        rebuild renamed a new one over it, and the old file would never see another commit.
        Everything derived from the old file goes with it: verified runs (records may have moved)
        and the data_version / recovery-log marks they were checked against."""
        if file_identity(self._data_dir / CATALOG_FILE) == self._catalog_identity:
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

    def _due_checkpoints(self) -> list[StreamId]:
        lock_held = self._store_lock is not None and self._store_lock.is_held()
        if self._read_only or self._catalog is None or not lock_held:
            return []
        return self._writer.due_checkpoints()

    def _after_close(self) -> None:
        self._consumers.close()
        self._commit_signal.notify()  # waiting subscriptions wake, and their next read raises StoreClosed

    # --- appending (writer.py) --------------------------------------------------------------------

    def append_batch_pipelined(
        self,
        stream_id: int,
        events: Sequence[BytesLike],
        expected_offset: int,
        prev_hash: bytes | None,
        fsync: bool,
        pipeline: AppendPipeline,
    ) -> tuple[Offset, ChainHash]:
        """``append_batch`` framing into ``pipeline``'s reusable buffer and compressors (the group-commit
        leader frames the batch with them while this thread waits: ``writer.py``)."""
        sid, payloads, offset, given_hash = self._checked_batch(stream_id, events, expected_offset, prev_hash)
        if not isinstance(pipeline, AppendPipeline):
            raise InvalidArgument(f"pipeline must be an AppendPipeline, not {type(pipeline).__name__}")
        return self._writer.submit(
            sid, payloads, expected_offset=offset, prev_hash=given_hash, check_prev=True, fsync=fsync, pipeline=pipeline
        )

    def _append(
        self,
        sid: StreamId,
        payloads: list[BytesLike] | None,
        *,
        expected_offset: int | None,
        prev_hash: bytes | None,
        check_prev: bool,
        fsync: bool,
        record_count: int | None = None,
    ) -> tuple[Offset, ChainHash]:
        return self._writer.submit(
            sid,
            payloads,
            expected_offset=expected_offset,
            prev_hash=prev_hash,
            check_prev=check_prev,
            fsync=fsync,
            record_count=record_count,
        )

    # --- reading (reads.py) ----------------------------------------------------------------------

    def _iter_records(self, sid: StreamId, from_offset: int, *, anchored: bool) -> Iterator[Record]:
        return self._reads.iter_records(sid, from_offset, anchored=anchored)

    def _read_from(self, sid: StreamId, from_offset: int, limit: int) -> list[bytes]:
        return self._reads.read_from(sid, from_offset, limit)

    def _offset_at(self, sid: StreamId, timestamp_ns: int) -> Offset:
        return self._reads.query(lambda catalog: catalog.first_offset_at_or_after(sid, timestamp_ns), Offset(0))

    def last_global_position(self) -> GlobalPosition:
        """The global position of the last record committed (0: none yet); the next gets one more."""
        return self._reads.query(lambda catalog: catalog.last_global_position(), GlobalPosition(0))

    def _read_global(self, start: int, limit: int, only: StreamId | None) -> list[GlobalRecord]:
        return self._reads.read_global(start, limit, only)

    def global_position_of(self, stream_id: int, offset: int) -> GlobalPosition | None:
        """The global position of the stream's record at ``offset`` (None: no such record yet)."""
        sid = check_stream_id(stream_id)
        at = check_position("offset", offset)
        return self._reads.query(lambda catalog: catalog.global_position_of(sid, at), None)

    def record_at_position(self, position: int) -> tuple[StreamId, Offset] | None:
        """(stream, offset) of the record at a global position (None: none has it, or not yet)."""
        at = check_position("position", position)
        return self._reads.query(lambda catalog: catalog.record_at_position(at), None)

    def _stream_head(self, sid: StreamId) -> tuple[Offset, ChainHash | None]:
        row = self._reads.query(lambda catalog: catalog.stream(sid), None)
        return (row.next_offset, row.chain_head) if row else (Offset(0), None)

    # --- SQL ------------------------------------------------------------------------------------

    def sql(
        self,
        query: str,
        params: Sequence[SqlValue] = (),
        *,
        timeout: float | None = None,
        max_rows: int | None = None,
    ) -> QueryResult:
        """One read-only SQL statement over the catalog and ``events`` (docs/sql.md), every row collected."""
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
        """``sql``, its rows produced one at a time in bounded memory (see ``sql.query_rows``)."""
        check_query(query, params)  # bad arguments first, whatever state the store is in
        check_limits(timeout, max_rows)
        with self._lock:
            self._readable_catalog()  # StoreClosed, or a reader's late open
        return query_rows(self._data_dir, query, params, events=self, timeout=timeout, max_rows=max_rows)

    def global_ranges(self, low: int, high: int, stream_id: int | None) -> list[tuple[StreamId, int, int]]:
        """(stream, first offset, last offset) holding the records with global positions ``low`` to ``high``."""
        only = None if stream_id is None else StreamId(stream_id)
        return self._reads.query(lambda catalog: catalog.global_ranges(low, high, only), [])

    def global_positions(self, stream_id: int, first: int, last: int) -> dict[Offset, GlobalPosition]:
        """The global positions of a stream's records from offset ``first`` to ``last``."""
        sid = check_stream_id(stream_id)
        return self._reads.query(lambda catalog: catalog.global_positions(sid, first, last), {})

    def stream_ids(self) -> list[StreamId]:
        """The ids of every stream with records, ascending."""
        return self._reads.query(lambda catalog: catalog.stream_ids(), [])

    def _last_checkpoint(self, sid: StreamId) -> tuple[Offset, ChainHash] | None:
        row = self._reads.query(lambda catalog: catalog.checkpoint_at_or_before(sid, 2**63 - 1), None)
        return (row.offset, row.hash) if row else None

    def checkpoint_index(self, stream_id: int) -> CheckpointIndex:
        """A read-only view of the stream's checkpoints (from the catalog)."""
        sid = check_stream_id(stream_id)
        return CheckpointIndex(sid, self._reads.query(lambda catalog: catalog.checkpoints(sid), []))

    def offset_index(self, stream_id: int) -> OffsetIndex:
        """A read-only view of the stream's offset index (from the catalog)."""
        sid = check_stream_id(stream_id)
        return OffsetIndex(sid, self._readable_catalog, self._lock)

    def stats(self) -> list[StreamStats]:
        """Per-stream counts and sizes from the catalog (records, segments, bytes, compression)."""
        return self._reads.query(lambda catalog: catalog.stream_stats(), [])

    def schema_version(self) -> int:
        """The catalog's schema version (``PRAGMA user_version``); 0 before the store exists."""
        return self._reads.query(lambda catalog: catalog.schema_version(), 0)

    def segments(self, stream_id: int) -> list[SegmentInfo]:
        """The stream's segment files, oldest first, as the catalog records them."""
        sid = check_stream_id(stream_id)
        return segment_infos(self._data_dir, sid, self._reads.query(lambda catalog: catalog.segments(sid), []))

    def segment_count(self, stream_id: int) -> int:
        """How many segment files the stream has."""
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
            self._writer.sync_active()
            catalog.checkpoint_wal()

    def ensure_created(self) -> None:
        """Create the store now if it does not exist yet: its directory (missing parents too),
        ``LOCK`` and the catalog, each new directory entry fsynced before this returns. A writer
        otherwise creates its store on first use; an existing store is only opened."""
        with self._lock:
            self._writable_catalog()

    # --- checks, repairs, rebuilds (maintenance.py) ------------------------------------------------

    def recover(self) -> list[ReconcileResult]:
        """Run open-time recovery again: reconcile every stream whose files disagree with the catalog."""
        return self._maintenance.recover()

    def recovery_results(self) -> list[ReconcileResult]:
        """What recovery found and did since this store was opened (streams that needed it only)."""
        with self._lock:
            return list(self._maintenance.results)

    def recovery_log(self, stream_id: int | None = None) -> list[RecoveryEntry]:
        """The ``recovery_log`` table: every recovery and repair action ever taken on this store."""
        sid = None if stream_id is None else check_stream_id(stream_id)
        return self._reads.query(lambda catalog: catalog.recovery_log(sid), [])

    def damaged_streams(self) -> dict[StreamId, IntegrityError]:
        """Streams that recovery found damaged (appends refused until ``repair``), with where."""
        with self._lock:
            return dict(self._maintenance.damage)

    def check(
        self, stream_ids: list[int] | None = None, *, progress: Callable[[int], None] | None = None
    ) -> CheckReport:
        """All damage and catalog/segments disagreement, by a full walk; changes nothing (``Maintenance.check``)."""
        return self._maintenance.check(stream_ids, progress=progress)

    def repair(
        self, plan: list[RepairStep] | None = None, *, stream_ids: list[int] | None = None, truncate: bool = False
    ) -> RepairReport:
        """Apply ``plan`` (default: a fresh ``check``'s); returns what was done (see ``Maintenance.repair``)."""
        return self._maintenance.repair(plan, stream_ids=stream_ids, truncate=truncate)

    def rebuild_catalog(self) -> list[ReconcileResult]:
        """Move the catalog aside and build a new one from every stream's segments."""
        return self._maintenance.rebuild_catalog(found="rebuild_catalog requested")

    def _rebuild_catalog(self, found: str) -> list[ReconcileResult]:
        """Swap in a catalog built from the segments (``Maintenance`` forgets heads and damage first)."""
        retiring, self._catalog = self._catalog, None
        self._catalog, results = replace_catalog(self._data_dir, self._now, found=found, retiring=retiring)
        self._catalog_generation += 1
        return results

    def rebuild_index(self, stream_id: int) -> OffsetIndex:
        """Replace the stream's catalog rows with a scan of its segments (``Maintenance.rebuild_index``)."""
        sid = check_stream_id(stream_id)
        self._maintenance.rebuild_index(sid)
        return self.offset_index(sid)

    def load_or_rebuild_index(self, stream_id: int) -> OffsetIndex:
        """The stream's offset index; rebuilt from the segments if it does not agree with them."""
        sid = check_stream_id(stream_id)
        self._maintenance.rebuild_index_if_needed(sid)
        return self.offset_index(sid)

    def rebuild_checkpoint_index(self, stream_id: int) -> int:
        """Re-derive the stream's checkpoint rows from its checkpoint records; returns how many."""
        return self._maintenance.rebuild_checkpoint_index(check_stream_id(stream_id))
