"""The backend contract: ``StorageBackend`` (what every backend offers) and ``BackendBase``, the one
home of its argument checks and derived methods, which ``Storage`` and ``MemoryStorage`` share."""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from hybridlog.batch import (
    BytesLike,
    check_clock_reading,
    check_events,
    check_non_negative,
    check_offset,
    check_position,
    check_prev_hash,
    read_page,
    read_window,
    take_page,
)
from hybridlog.errors import InvalidConfiguration
from hybridlog.types import (
    DEFAULT_MAX_READ_BYTES,
    MAX_POSITION,
    MAX_STREAM_ID,
    ChainHash,
    CheckpointPolicy,
    CompressionKind,
    GlobalPosition,
    GlobalRecord,
    Offset,
    Record,
    StreamId,
    check_stream_id,
)


@runtime_checkable
class StorageBackend(Protocol):
    """Append-only, hash-chained streams: what every hybridlog backend offers."""

    def default_compression(self) -> CompressionKind:
        """The compression new records get unless an append says otherwise."""

    def checkpoint_policy(self) -> CheckpointPolicy:
        """When checkpoint records are written (every N events, on close)."""

    def append_batch(
        self,
        stream_id: int,
        events: Sequence[BytesLike],
        expected_offset: int,
        prev_hash: bytes | None,
        fsync: bool = True,
    ) -> tuple[Offset, ChainHash]:
        """Append ``events`` at ``expected_offset`` on top of ``prev_hash`` (the seed's call); returns the next
        offset and the new chain head."""

    def append(
        self, stream_id: int, events: Sequence[BytesLike], *, expected_offset: int | None = None, fsync: bool = True
    ) -> tuple[Offset, ChainHash]:
        """Append ``events`` at the stream's head (at ``expected_offset`` if given); returns the next offset and the
        new chain head."""

    def create_checkpoint(
        self, stream_id: int, current_offset: int, prev_hash: bytes | None, record_count: int, fsync: bool = True
    ) -> tuple[Offset, ChainHash]:
        """Write a checkpoint record at the head, which must be ``current_offset`` on top of ``prev_hash``."""

    def iter_records(self, stream_id: int, from_offset: int = 0, *, anchored: bool = True) -> Iterator[Record]:
        """Every verified record from ``from_offset`` to the head, from the nearest checkpoint (``anchored``) or
        from genesis."""

    def read_from(self, stream_id: int, from_offset: int, max_bytes: int) -> list[bytes]:
        """One page of event payloads from ``from_offset``, verified from the nearest checkpoint."""

    def read_from_genesis(self, stream_id: int, from_offset: int, max_bytes: int) -> list[bytes]:
        """One page of event payloads from ``from_offset``, with the chain verified from genesis."""

    def read_records_from_genesis(self, stream_id: int, from_offset: int, max_bytes: int) -> list[Record]:
        """One page of records from ``from_offset``, with the chain verified from genesis."""

    def read_records_verified(self, stream_id: int, from_offset: int, max_bytes: int) -> list[Record]:
        """One page of records from ``from_offset``, verified from the nearest checkpoint."""

    def offset_at(self, stream_id: int, timestamp_ns: int) -> Offset:
        """The offset of the stream's first record stored at or after ``timestamp_ns`` (the next offset if none)."""

    def read_between(
        self,
        stream_id: int,
        since_ns: int | None,
        until_ns: int | None,
        max_bytes: int = DEFAULT_MAX_READ_BYTES,
    ) -> list[Record]:
        """One page of the stream's records stored in ``[since_ns, until_ns)``."""

    def last_global_position(self) -> GlobalPosition:
        """The highest global position given out so far (0 before the first record)."""

    def read_global(
        self, from_position: int = 1, max_bytes: int = DEFAULT_MAX_READ_BYTES, *, stream_id: int | None = None
    ) -> list[GlobalRecord]:
        """One page of records in store-wide order from ``from_position`` (one stream's only, with ``stream_id``)."""

    def latest_chain_hash(self, stream_id: int) -> ChainHash | None:
        """The stream's chain head (None for a stream with no records)."""

    def next_offset(self, stream_id: int) -> Offset:
        """The offset the stream's next record gets (0 for a new stream)."""

    def last_checkpoint(self, stream_id: int) -> tuple[Offset, ChainHash] | None:
        """The offset and hash of the stream's last checkpoint record (None if it has none)."""

    def stream_ids(self) -> list[StreamId]:
        """The ids of every stream with records, ascending."""

    def close(self) -> None:
        """Write the on-close checkpoints the policy asks for and release the backend (again: nothing)."""


class BackendBase(ABC):
    """Every argument check and every derived method of the contract, once, for every backend.

    Public methods check their arguments and derive what they can; a backend implements the
    primitives below them (``_append``, ``_iter_records``, ``_offset_at``, ...), which take
    checked values only. So ``Storage`` and ``MemoryStorage`` refuse the same arguments with the
    same errors, and read the same pages, windows and global ranges from the same records.
    """

    def __init__(
        self,
        *,
        checkpoint_policy: CheckpointPolicy | None,
        compression: CompressionKind,
        clock: Callable[[], int] | None,
    ) -> None:
        if not isinstance(compression, CompressionKind):
            raise InvalidConfiguration(f"compression must be a CompressionKind, not {compression!r}")
        policy = CheckpointPolicy() if checkpoint_policy is None else checkpoint_policy
        if not isinstance(policy, CheckpointPolicy):
            raise InvalidConfiguration(f"checkpoint_policy must be a CheckpointPolicy, not {policy!r}")
        if clock is not None and not callable(clock):
            raise InvalidConfiguration(f"clock must be a function returning nanoseconds, not {clock!r}")
        self._policy = policy
        self._compression = compression
        self._clock: Callable[[], int] = clock or time.time_ns
        self._lock = threading.RLock()
        self._closed = False

    def default_compression(self) -> CompressionKind:
        """The compression new records get unless an append says otherwise."""
        return self._compression

    def checkpoint_policy(self) -> CheckpointPolicy:
        """When checkpoint records are written (every N events, on close)."""
        return self._policy

    def _now(self) -> int:
        """The clock's reading, checked: record headers hold it as a u64, the catalog as a signed 64-bit integer."""
        return check_clock_reading(self._clock())

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
        sid, payloads, offset, given_hash = self._checked_batch(stream_id, events, expected_offset, prev_hash)
        return self._append(sid, payloads, expected_offset=offset, prev_hash=given_hash, check_prev=True, fsync=fsync)

    @staticmethod
    def _checked_batch(
        stream_id: object, events: Sequence[BytesLike], expected_offset: object, prev_hash: object
    ) -> tuple[StreamId, list[BytesLike], int, bytes | None]:
        """``append_batch``'s arguments, checked in this order."""
        sid = check_stream_id(stream_id)
        payloads = check_events(events)
        offset = check_offset("expected_offset", expected_offset)
        return sid, payloads, offset, check_prev_hash(prev_hash)

    def append(
        self, stream_id: int, events: Sequence[BytesLike], *, expected_offset: int | None = None, fsync: bool = True
    ) -> tuple[Offset, ChainHash]:
        """Append at the stream's current head, whatever it is (checked against ``expected_offset`` if given)."""
        sid = check_stream_id(stream_id)
        payloads = check_events(events)
        offset = None if expected_offset is None else check_offset("expected_offset", expected_offset)
        return self._append(sid, payloads, expected_offset=offset, prev_hash=None, check_prev=False, fsync=fsync)

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
        return self._append(
            sid, None, expected_offset=offset, prev_hash=given_hash, check_prev=True, fsync=fsync, record_count=count
        )

    @abstractmethod
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
        """Append ``payloads`` (None: one checkpoint record) if ``batch.append_conflict`` finds no conflict."""

    # --- reading ---------------------------------------------------------------------------------

    def iter_records(self, stream_id: int, from_offset: int = 0, *, anchored: bool = True) -> Iterator[Record]:
        """Verified records from ``from_offset`` to the head, streamed in bounded memory.

        ``anchored``: verify from the nearest checkpoint at or before ``from_offset`` (trusting
        it); otherwise from offset 0. The head record is checked against the catalog's chain head.
        """
        sid = check_stream_id(stream_id)
        check_position("from_offset", from_offset)
        yield from self._iter_records(sid, from_offset, anchored=anchored)

    @abstractmethod
    def _iter_records(self, sid: StreamId, from_offset: int, *, anchored: bool) -> Iterator[Record]: ...

    def read_from(self, stream_id: int, from_offset: int, max_bytes: int) -> list[bytes]:
        """Event payloads from ``from_offset``, verified from the nearest checkpoint.

        Returns at least one event when there is one, then stops before the payloads would exceed
        ``max_bytes``. Checkpoint records are skipped. An unknown stream gives ``[]``. Like the page
        reads, it ends before a range a repair isolated (see ``take_page``).
        """
        if not (  # the common case in one test (a warm point read is a few microseconds in all)
            type(stream_id) is int
            and type(from_offset) is int
            and type(max_bytes) is int
            and 0 <= stream_id <= MAX_STREAM_ID
            and 0 <= from_offset <= MAX_POSITION
            and max_bytes >= 0
        ):
            max_bytes = check_non_negative("max_bytes", max_bytes)
            stream_id = check_stream_id(stream_id)
            check_position("from_offset", from_offset)
        return self._read_from(stream_id, from_offset, max_bytes)  # type: ignore[arg-type]  # checked

    def _read_from(self, sid: StreamId, from_offset: int, limit: int) -> list[bytes]:
        """``read_from`` as a page of the anchored walk (a backend may answer it faster)."""
        return [
            r.payload for r in take_page(self._iter_records(sid, from_offset, anchored=True), limit, events_only=True)
        ]

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

    # --- time and global order -------------------------------------------------------------------

    def offset_at(self, stream_id: int, timestamp_ns: int) -> Offset:
        """The first offset whose record was appended at or after ``timestamp_ns`` (nanoseconds
        since the epoch); the stream's next offset if there is none (0 for an unknown stream).

        Timestamps never decrease within a stream, so this is a binary search over its records.
        """
        sid = check_stream_id(stream_id)
        ts = check_offset("timestamp_ns", timestamp_ns)
        return self._offset_at(sid, ts)

    @abstractmethod
    def _offset_at(self, sid: StreamId, timestamp_ns: int) -> Offset: ...

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

    @abstractmethod
    def last_global_position(self) -> GlobalPosition:
        """The global position of the last record committed (0: none yet); the next gets one more."""

    def read_global(
        self, from_position: int = 1, max_bytes: int = DEFAULT_MAX_READ_BYTES, *, stream_id: int | None = None
    ) -> list[GlobalRecord]:
        """Records of every stream in global (commit) order, from the first position >= ``from_position``.

        Checkpoint records are included, so a store never repaired shows consecutive positions.
        Returns at least one record when there is one, then stops before the payloads would exceed
        ``max_bytes``; continue from the last one's ``global_position + 1``. Every record is verified
        by its stream's checkpoint-anchored read: a damaged one raises IntegrityError.
        ``stream_id``: only that stream's records.
        """
        start = check_position("from_position", from_position)
        limit = check_non_negative("max_bytes", max_bytes)
        only = None if stream_id is None else check_stream_id(stream_id)
        return self._read_global(start, limit, only)

    @abstractmethod
    def _read_global(self, start: int, limit: int, only: StreamId | None) -> list[GlobalRecord]: ...

    # --- heads and checkpoints -------------------------------------------------------------------

    def latest_chain_hash(self, stream_id: int) -> ChainHash | None:
        """The hash of the stream's last record (None for an empty or unknown stream)."""
        return self._stream_head(check_stream_id(stream_id))[1]

    def next_offset(self, stream_id: int) -> Offset:
        """The offset the stream's next record will get (its record count)."""
        return self._stream_head(check_stream_id(stream_id))[0]

    @abstractmethod
    def _stream_head(self, sid: StreamId) -> tuple[Offset, ChainHash | None]:
        """(next offset, chain head) of a stream; (0, None) for an unknown one."""

    def last_checkpoint(self, stream_id: int) -> tuple[Offset, ChainHash] | None:
        """(offset, hash) of the stream's latest checkpoint record, or None."""
        return self._last_checkpoint(check_stream_id(stream_id))

    @abstractmethod
    def _last_checkpoint(self, sid: StreamId) -> tuple[Offset, ChainHash] | None: ...

    @abstractmethod
    def stream_ids(self) -> list[StreamId]:
        """The ids of every stream with records, ascending (StoreClosed once closed)."""

    # --- closing ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Write on-close checkpoints (if the policy says so), then release everything.

        The backend is closed even when a checkpoint fails (a clock gone bad, a full disk): the
        error is raised after.
        """
        try:
            with self._lock:
                if self._closed:
                    return
                due = self._due_checkpoints() if self._policy.on_close else []
            # Not under the lock: a group-commit leader in another thread needs it to finish.
            for sid in due:
                self._append(sid, None, expected_offset=None, prev_hash=None, check_prev=False, fsync=True)
        finally:
            with self._lock:
                self._closed = True
                self._release()
            self._after_close()

    @abstractmethod
    def _due_checkpoints(self) -> list[StreamId]:
        """The streams an on-close checkpoint is due for (events since their last checkpoint)."""

    @abstractmethod
    def _release(self) -> None:
        """Let go of everything the backend holds (called under the lock, once closed)."""

    @abstractmethod
    def _after_close(self) -> None:
        """What happens once the backend is closed, outside its lock."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
