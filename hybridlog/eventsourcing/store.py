"""One hybridlog store as eventsourcing sees it: the write path of ``insert_events`` and the reads
behind every recorder (``docs/eventsourcing.md``).

Each recorder name (an application's name and purpose) has one stream; its id is derived from the
name, and the stream's first record names it. An ``insert_events`` is one batch of that stream: its
events, then its tracking record, so a crash leaves all of it or none of it, and the notification
ids (in the event payloads) are a fact of the segments. The conflict checks are made against the
index (``index.py``) inside its open write transaction, under this store's lock, and an insert's
rows go into it only after its batch is appended. An index that is ahead of its stream all the
same (inserts without fsync and a power loss, a restored backup) is found when the stream is
next opened and read again (``_agrees``).

A process opens a store directory once (``acquire``), and every factory and recorder on it shares
that ``SharedStore``: the writer lock allows one ``Storage`` per directory.
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from itertools import islice
from pathlib import Path

import apsw
from blake3 import blake3
from eventsourcing.persistence import IntegrityError as EventsourcingIntegrityError
from eventsourcing.persistence import Notification, StoredEvent, Tracking

from hybridlog.batch import checkpoint_positions
from hybridlog.db import sqlite_errors
from hybridlog.errors import ConflictError, StorageError
from hybridlog.es_records import EVENT, HEADER, TRACKING
from hybridlog.eventsourcing.codec import (
    DecodedEvent,
    decode_event,
    decode_header,
    decode_tracking,
    encode_events,
    encode_header,
    encode_tracking,
    notifications_in,
    originator_key,
    payload_type,
    utf8,
)
from hybridlog.eventsourcing.index import INDEX_FILE, EventIndex, RecorderRow, Run, runs_of
from hybridlog.storage import Storage
from hybridlog.types import MAX_STREAM_ID, CheckpointPolicy, Record, RecordKind

log = logging.getLogger(__name__)

CHECKPOINT_EVERY = 128
"""Records between checkpoints in a recorder's stream (a read verifies from the nearest one)."""

SYNC_CHUNK = 10_000
"""Records indexed per index transaction while an index catches up with its stream."""


class RecordConflict(ConflictError, EventsourcingIntegrityError):
    """An event's (originator id, version) is already recorded, twice in one insert, or a tracking
    id is not above the last one tracked: nothing was written. Both a hybridlog ``ConflictError``
    and eventsourcing's ``IntegrityError``."""


class ForeignStream(StorageError):
    """A recorder's stream holds records this module did not write (or another recorder's)."""


def placed(base: int, plan: list[int], first: int, last: int) -> list[tuple[int, int, int]]:
    """(first index, last index, offset of the first) of each stretch of a batch's records ``first ..
    last`` at consecutive offsets, the batch appended at offset ``base`` with the checkpoints ``plan``."""
    stretches, start = [], first
    for after in plan:
        if start <= after < last:
            stretches.append((start, after))
            start = after + 1
    stretches.append((start, last))
    return [(s, e, base + s + bisect.bisect_left(plan, s)) for s, e in stretches]


def stream_id_for(name: str) -> int:
    """The stream of the recorder called ``name``: 63 bits of BLAKE3 of the name (its header record
    guards against the one-in-2**63 chance that two names meet)."""
    digest = blake3(b"hybridlog.eventsourcing\x00" + utf8(name, "a recorder name")).digest()
    return int.from_bytes(digest[:8], "little") & MAX_STREAM_ID


class SharedStore:
    """A store directory opened once in this process for every recorder on it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        # The store writes a checkpoint after every CHECKPOINT_EVERY-th record, inside the batch
        # (``batch.checkpoint_positions`` says where, so the offsets of the events after it are
        # known; ``_as_planned`` checks every batch against the catalog).
        policy = CheckpointPolicy(every_records=CHECKPOINT_EVERY, on_close=False)
        self.storage = Storage(data_dir, checkpoint_policy=policy)
        try:
            self.storage.ensure_created()  # the directory (and lock) before the index file in it
            self.index = EventIndex(data_dir, busy_timeout_ms=5000)
        except BaseException:
            self.storage.close()
            raise
        self.lock = threading.RLock()
        self.references = 0
        self._rows: dict[int, RecorderRow] = {}  # streams the index has caught up with, as the writer sees them
        self._stream_ids: dict[str, int] = {}
        self._since_checkpoint: dict[int, int] = {}
        self._listeners: set[threading.Event] = set()

    def close(self) -> None:
        """Commit the index, then close it and the store."""
        with self.lock:
            try:
                self.index.flush(self._rows.values())
            finally:
                self._forget()
                self.index.close()
                self.storage.close()

    def _forget(self) -> None:
        """Roll the index back to its last commit and forget every stream's row: each is caught up
        again from the stream before its next use (after any failure that may have left the index
        half-changed, or the stream changed without it)."""
        self.index.abandon()
        self._rows.clear()
        self._since_checkpoint.clear()

    @contextmanager
    def _walk(self, sid: int, offset: int) -> Iterator[Iterator[Record]]:
        """The stream's verified records from ``offset`` (from its nearest checkpoint), closed after the block."""
        records = self.storage.iter_records(sid, offset)
        try:
            yield records
        finally:
            if isinstance(records, Generator):
                records.close()

    # --- catching up -----------------------------------------------------------------------------

    def row(self, name: str) -> RecorderRow:
        """The recorder's row, with the index caught up with its stream first (once per open)."""
        sid = self._stream_ids.get(name)
        if sid is None:
            sid = self._stream_ids[name] = stream_id_for(name)
        row = self._rows.get(sid)
        if row is not None:
            return row
        with self.lock:
            row = self._rows.get(sid)
            if row is None:
                try:
                    with sqlite_errors("eventsourcing index catch-up failed", error=StorageError):
                        row = self._rows[sid] = self._catch_up(sid, name)
                except BaseException:
                    self._forget()
                    raise
            return row

    def _catch_up(self, sid: int, name: str) -> RecorderRow:
        stream_next = self.storage.next_offset(sid)
        conn = self.index.begin()
        row = EventIndex.recorder(conn, sid)
        if row is not None and not self._agrees(row, stream_next):
            EventIndex.forget(conn, sid)  # the stream was cut back or rewritten: read it again
            row = None
        if row is None:
            row = RecorderRow(sid, name, 0, None, 1)
        elif row.name != name:
            raise ForeignStream(f"stream {sid} is recorder {row.name!r}'s, not {name!r}'s")
        if stream_next > 0:
            self._check_header(sid, name)
        while row.next_offset < stream_next:
            self._index_records(self.index.begin(), row, stream_next)
            self.index.flush([row])
        self._since_checkpoint[sid] = self._records_since_checkpoint(sid)
        return row

    def _records_since_checkpoint(self, sid: int) -> int:
        """The event records after the stream's last checkpoint (what the store's policy counts)."""
        last = self.storage.last_checkpoint(sid)
        start = last[0] + 1 if last else 0
        if start >= self.storage.next_offset(sid):
            return 0
        with self._walk(sid, start) as records:
            return sum(1 for record in records if record.kind == RecordKind.EVENT)

    def _agrees(self, row: RecorderRow, stream_next: int) -> bool:
        """Whether the stream still holds what the index read: the record before ``next_offset`` has the same hash."""
        if row.next_offset > stream_next:
            return False
        if row.next_offset == 0:
            return True
        with self._walk(row.stream_id, row.next_offset - 1) as records:
            return next(records).hash == row.head

    def _check_header(self, sid: int, name: str) -> None:
        with self._walk(sid, 0) as records:
            first = next(records)
        if payload_type(first.payload) != HEADER or decode_header(first.payload) != name:
            raise ForeignStream(f"stream {sid} of {self.data_dir} does not begin with recorder {name!r}'s header")

    def _index_records(self, conn: apsw.Connection, row: RecorderRow, stream_next: int) -> None:
        """Index up to ``SYNC_CHUNK`` records of the stream from ``row.next_offset``, and move the row on."""
        versions: list[tuple[bytes, int, int]] = []
        ids: list[tuple[bytes, int, int]] = []
        tracked: dict[str, int] = {}
        count = min(SYNC_CHUNK, stream_next - row.next_offset)
        with self._walk(row.stream_id, row.next_offset) as records:
            for record in islice(records, count):
                kind = payload_type(record.payload) if record.kind == RecordKind.EVENT else None
                if kind == EVENT:
                    decoded = decode_event(record.payload)
                    versions.append((decoded.key, decoded.originator_version, record.offset))
                    ids.append((b"", decoded.notification_id, record.offset))
                    row.next_notification_id = decoded.notification_id + 1
                elif kind == TRACKING:
                    tracking = decode_tracking(record.payload)
                    tracked[tracking.application_name] = tracking.notification_id
                elif record.kind == RecordKind.EVENT and not (kind == HEADER and record.offset == 0):
                    raise ForeignStream(
                        f"stream {row.stream_id} has a record at offset {record.offset} not written here"
                    )
                row.next_offset, row.head = record.offset + 1, record.hash
        with _index_errors(row.stream_id):
            EventIndex.add_runs(conn, row.stream_id, runs_of(versions))
            for _, run in runs_of(ids):
                EventIndex.add_notifications(conn, row.stream_id, run)
            for application_name, notification_id in tracked.items():
                EventIndex.set_tracking_id(conn, row.stream_id, application_name, notification_id)

    # --- writing ---------------------------------------------------------------------------------

    def insert(self, name: str, events: Sequence[StoredEvent], tracking: Tracking | None, *, fsync: bool) -> list[int]:
        """Append ``events`` (and ``tracking``) as one batch of the recorder's stream; their notification ids."""
        if not events and tracking is None:
            return []
        with self.lock:
            row = self.row(name)
            sid = row.stream_id
            first_id = row.next_notification_id
            encoded = encode_events(events, first_id)
            payloads = [] if row.next_offset else [encode_header(name)]
            first_event = len(payloads)  # the payload index of the first event
            payloads += encoded.payloads
            if tracking is not None:
                payloads.append(encode_tracking(tracking))
            since = self._since_checkpoint.get(sid, 0)
            plan = checkpoint_positions(len(payloads), since, CHECKPOINT_EVERY)
            runs = [
                (key, Run(first + (start - at), first + (end - at), offset))
                for key, first, last, index in encoded.runs
                for at in [first_event + index]
                for start, end, offset in placed(row.next_offset, plan, at, at + last - first)
            ]
            with sqlite_errors("eventsourcing index read failed", error=StorageError):
                conn = self.index.begin()
                self._check_conflicts(conn, sid, encoded.duplicate, runs, tracking)  # reads: a conflict writes nothing
            try:
                next_offset, head = self.storage.append_batch(sid, payloads, row.next_offset, row.head, fsync)
            except BaseException:
                self._forget()  # the stream may have moved (AppendOutcomeUnknown): read it again before going on
                raise
            try:  # the batch is stored: what follows is bookkeeping that can always be redone from the stream
                if not self._as_planned(sid, row.next_offset, len(payloads), plan, next_offset):
                    raise StorageError("the checkpoints did not land where planned")
                with sqlite_errors("eventsourcing index write failed", error=StorageError):
                    EventIndex.add_runs(conn, sid, runs)
                    last_event = first_event + len(events) - 1
                    for start, end, offset in placed(row.next_offset, plan, first_event, last_event) if events else ():
                        ids = Run(first_id + start - first_event, first_id + end - first_event, offset)
                        EventIndex.add_notifications(conn, sid, ids)
                    if tracking is not None:
                        EventIndex.set_tracking_id(conn, sid, tracking.application_name, tracking.notification_id)
                self._rows[sid] = RecorderRow(sid, name, next_offset, head, first_id + len(events))
                self._since_checkpoint[sid] = len(payloads) - (plan[-1] + 1) if plan else since + len(payloads)
                if self.index.due():
                    self.index.flush(self._rows.values())
            except Exception as e:
                log.warning("%s: %s after an insert was stored; the index is read again from the stream", name, e)
                self._forget()
        self._notify()
        return list(range(first_id, first_id + len(events)))

    def _check_conflicts(
        self,
        conn: apsw.Connection,
        sid: int,
        duplicate: bool,
        runs: list[tuple[bytes, Run]],
        tracking: Tracking | None,
    ) -> None:
        if duplicate:
            raise RecordConflict("the same originator version is twice in one insert", stream_id=sid)
        for key, run in runs:
            before = EventIndex.run_at_or_before(conn, sid, key, run.last)
            if before is not None and before.last >= run.first:
                raise RecordConflict(
                    f"originator {key[1:].hex()} already has a version in {run.first}..{run.last}", stream_id=sid
                )
        if tracking is not None:
            tracked = EventIndex.max_tracking_id(conn, sid, tracking.application_name)
            if tracked is not None and tracked >= tracking.notification_id:
                raise RecordConflict(
                    f"tracking {tracking.application_name!r} is at {tracked}, not below {tracking.notification_id}",
                    stream_id=sid,
                )

    def _as_planned(self, sid: int, base: int, count: int, plan: list[int], next_offset: int) -> bool:
        """Whether the batch of ``count`` records appended at ``base`` got the checkpoints ``plan``
        said: as many (the stream's next offset), and the last one where planned (the catalog's)."""
        if next_offset != base + count + len(plan):
            return False
        if not plan:
            return True
        last = self.storage.last_checkpoint(sid)
        return last is not None and last[0] == base + plan[-1] + len(plan)

    # --- reading ---------------------------------------------------------------------------------

    def select_events(
        self, name: str, originator_id: object, gt: int | None, lte: int | None, *, desc: bool, limit: int | None
    ) -> list[StoredEvent]:
        """The originator's events with versions in (gt, lte], in version order (reversed with ``desc``)."""
        sid = self.row(name).stream_id
        key = originator_key(originator_id)  # type: ignore[arg-type]  # checked there
        with self.lock, sqlite_errors("eventsourcing index read failed", error=StorageError):
            runs = EventIndex.runs(self.index.conn, sid, key, gt, lte)
        wanted: list[tuple[int, int, int]] = []  # (first offset, first version, count)
        for run in runs:
            low = run.first if gt is None else max(run.first, gt + 1)
            high = run.last if lte is None else min(run.last, lte)
            wanted.append((run.first_offset + low - run.first, low, high - low + 1))
        if desc:
            wanted.reverse()
        events: list[StoredEvent] = []
        for offset, version, count in wanted:
            take = count if limit is None else min(count, limit - len(events))
            if take <= 0:
                break
            if desc:  # the last ``take`` versions of the run
                offset, version = offset + count - take, version + count - take
            read = [d.stored_event() for d in self._read_events(sid, offset, take, key, version)]
            events += reversed(read) if desc else read
        return events

    def _read_events(self, sid: int, offset: int, count: int, key: bytes, version: int) -> Iterator[DecodedEvent]:
        """``count`` events from ``offset``, verified, and checked to be the versions the index says."""
        with self._walk(sid, offset) as records:
            for i, record in enumerate(islice(records, count)):
                decoded = _decoded_event(record)
                if decoded is None or decoded.key != key or decoded.originator_version != version + i:
                    raise StorageError(
                        f"the eventsourcing index of {self.data_dir} disagrees with stream {sid} "
                        f"at offset {record.offset}",
                        hint=f"delete {self.data_dir / INDEX_FILE}; it is read again from the segments",
                    )
                yield decoded

    def select_notifications(
        self, name: str, lowest: int, limit: int, stop: int | None, topics: Sequence[str]
    ) -> list[Notification]:
        """Up to ``limit`` notifications with ids from ``lowest`` to ``stop``, of ``topics`` if any."""
        with self.lock, sqlite_errors("eventsourcing index read failed", error=StorageError):
            row = self.row(name)
            last_id = row.next_notification_id - 1
            offset = EventIndex.offset_of_notification(self.index.conn, row.stream_id, lowest)
        if offset is None or limit <= 0:
            return []
        sid = row.stream_id
        last_id = last_id if stop is None else min(stop, last_id)
        with self._walk(sid, offset) as records:
            return notifications_in(records, lowest, last_id, limit, set(topics))

    def max_notification_id(self, name: str) -> int | None:
        """The highest notification id recorded (None: no events yet)."""
        last_id = self.row(name).next_notification_id - 1
        return last_id if last_id > 0 else None

    def max_tracking_id(self, name: str, application_name: str) -> int | None:
        """The highest notification id of ``application_name`` tracked by the recorder."""
        with self.lock, sqlite_errors("eventsourcing index read failed", error=StorageError):
            return EventIndex.max_tracking_id(self.index.conn, self.row(name).stream_id, application_name)

    # --- listeners -------------------------------------------------------------------------------

    def listen(self, event: threading.Event) -> None:
        """Set ``event`` after every insert."""
        with self.lock:
            self._listeners.add(event)

    def unlisten(self, event: threading.Event) -> None:
        """Stop setting ``event``."""
        with self.lock:
            self._listeners.discard(event)

    def _notify(self) -> None:
        if not self._listeners:
            return
        with self.lock:
            listeners = list(self._listeners)
        for event in listeners:
            event.set()


def _decoded_event(record: Record) -> DecodedEvent | None:
    if record.kind != RecordKind.EVENT or payload_type(record.payload) != EVENT:
        return None
    return decode_event(record.payload)


@contextmanager
def _index_errors(stream_id: int) -> Iterator[None]:
    """A duplicate key while reading a stream into the index: the stream holds a version twice."""
    try:
        yield
    except apsw.ConstraintError as e:
        raise ForeignStream(f"stream {stream_id} holds an originator version twice: {e}") from e


# --- one SharedStore per directory in this process ----------------------------------------------

_open: dict[Path, SharedStore] = {}
_open_lock = threading.Lock()


def acquire(data_dir: str | os.PathLike[str]) -> SharedStore:
    """The store at ``data_dir``, opened if no one in this process has it open; pair with ``release``."""
    key = Path(os.path.realpath(data_dir))
    with _open_lock:
        store = _open.get(key)
        if store is None:
            store = _open[key] = SharedStore(key)
        store.references += 1
        return store


def release(store: SharedStore) -> None:
    """Give back a store from ``acquire``; the last one out closes it."""
    with _open_lock:
        store.references -= 1
        if store.references > 0:
            return
        _open.pop(store.data_dir, None)
    store.close()
