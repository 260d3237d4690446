"""Verified reads: the one home of reading records back out of a store, checked as they go.

Every read starts from a catalog snapshot of the stream (``snapshot``: its segments, its anchor
checkpoint, the ranges a repair isolated) and walks the segments from the anchor, verifying each
record's checksum and chain link (``walk.py``), so a read never returns a record that does not
verify. ``read_from`` also remembers the checkpoint interval it verified, so the next point read
in it re-checks only the records it returns (``verified_cache.py``); ``read_global`` reads each
stream's share of a global range with one verified walk. Argument checks are the caller's
(``backend.py``): everything here takes checked values.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import chain
from pathlib import Path
from typing import TypeVar

import apsw

from hybridlog.batch import records_between, take_page, take_payloads, take_within
from hybridlog.catalog import Catalog
from hybridlog.catalog_rows import GlobalRow, StreamSnapshot, damaged_hint
from hybridlog.diagnose import unlisted_stream_problem
from hybridlog.dictionary import DictionaryCache
from hybridlog.errors import (
    CatalogError,
    IntegrityError,
    RecordIsolated,
    StorageError,
)
from hybridlog.markers import unavailable
from hybridlog.types import GlobalRecord, Record, RecordKind, StreamId
from hybridlog.verified_cache import MAX_RUN, VerifiedRun, VerifiedRunCache
from hybridlog.walk import add_repair_hint, reverify_frame, verified_frames, verified_records

T = TypeVar("T")


class Reads:
    """A store's verified reads.

    ``readable`` returns the catalog to read (None before the store has one; ``follow``: a reader
    first checks that its catalog file is still the one at the path), ``follow`` reopens a
    reader's catalog if a rebuild replaced it (True if so), ``current`` is the catalog open now.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        lock: threading.RLock,
        read_only: bool,
        dictionaries: DictionaryCache,
        verified: VerifiedRunCache,
        readable: Callable[..., Catalog | None],
        follow: Callable[[], bool],
        current: Callable[[], Catalog | None],
        closed: Callable[[], bool],
    ) -> None:
        self._data_dir = data_dir
        self._lock = lock
        self._read_only = read_only
        self._dictionaries = dictionaries
        self._verified = verified
        self._readable = readable
        self._follow = follow
        self._current = current
        self._closed = closed

    def query(self, ask: Callable[[Catalog], T], empty: T) -> T:
        """``ask(catalog)`` under the lock, SQLite errors translated; ``empty`` before any catalog exists."""
        with self._lock:
            catalog = self._readable()
            if catalog is None:
                return empty
            with self.catalog_errors():
                return ask(catalog)

    @contextmanager
    def catalog_errors(self) -> Iterator[None]:
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

    def snapshot(self, stream_id: StreamId, from_offset: int, *, anchored: bool) -> StreamSnapshot | None:
        """What a read of the stream needs (None: no such stream, in the catalog or on disk).

        A stream the catalog does not list but whose directory holds records is lost from the
        catalog, not empty: that raises CatalogMismatch (after giving a new stream's first commit
        the time to land, see ``unlisted_stream_problem``).
        """

        def ask(catalog: Catalog) -> StreamSnapshot | None:
            return catalog.snapshot(stream_id, from_offset, anchored=anchored)

        snap = self.query(ask, None)
        if snap is None:
            problem = unlisted_stream_problem(self._data_dir, stream_id, lambda: self.query(ask, None) is not None)
            if problem is not None:
                raise problem
            snap = self.query(ask, None)
        return snap

    def iter_records(self, stream_id: int, from_offset: int = 0, *, anchored: bool = True) -> Iterator[Record]:
        """Verified records from ``from_offset`` to the head, streamed in bounded memory.

        ``anchored``: verify from the nearest checkpoint at or before ``from_offset`` (trusting
        it); otherwise from offset 0. The head record is checked against the catalog's chain head.
        The snapshot is taken now; the walk (no generator of its own here: a read's records pass
        through as few as can be) runs as the records are taken.
        """
        sid = StreamId(stream_id)  # checked by the caller
        snap = self.snapshot(sid, from_offset, anchored=anchored)
        if snap is None or from_offset >= snap.stream.next_offset:
            return iter(())
        return verified_records(self._data_dir, snap, from_offset, self._dictionaries)

    def read_from(self, sid: StreamId, from_offset: int, limit: int) -> list[bytes]:
        """Event payloads from ``from_offset``, verified from the nearest checkpoint.

        Returns at least one event when there is one, then stops before the payloads would exceed
        ``max_bytes``. Checkpoint records are skipped. An unknown stream gives ``[]``. Like the page
        reads, it ends before a range a repair isolated (see ``take_page``).

        A point read remembers the checkpoint interval it verified, so the next read in it checks
        only the records it returns against the hashes verified then (see verified_cache.py).
        """
        if not self._verified.max_records:  # verified runs are off
            return [r.payload for r in take_page(self.iter_records(sid, from_offset), limit, events_only=True)]
        remembered = self._read_remembered(sid, from_offset, limit)
        if remembered is not None:
            return remembered
        return self._read_remembering(sid, from_offset, limit)

    def _read_remembered(self, sid: StreamId, from_offset: int, limit: int) -> list[bytes] | None:
        """``read_from`` out of a verified run, or None when the run cannot answer it all."""
        if self._closed():
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
            found = stored and reverify_frame(stored[0], sid, offset, stored[1], self._dictionaries)
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
        with self._lock:
            # No stat while nothing was committed: a run's records are re-verified from their bytes,
            # and a read past the runs goes through ``_readable_catalog``, which follows a rebuild.
            # (The warm point read's one catalog call: no context manager around it.)
            catalog = self._readable(follow=False)
            try:
                version = catalog.data_version() if catalog is not None else None
            except apsw.Error as e:
                raise CatalogError(f"cannot read the catalog: {e}", hint=damaged_hint(self._data_dir)) from e
            if version is not None and version == self._verified.data_version:
                return True
            with self.catalog_errors():
                if self._follow() or catalog is None:
                    catalog = self._current()
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
        snap = self.snapshot(sid, from_offset, anchored=True)
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
            add_repair_hint(e, self._data_dir)
            raise
        if not self._read_only or self._verified.generation == generation:
            self._verified.add(run)
        if at_gap or wanted_bytes > limit or run.end >= snap.stream.next_offset:
            return take_payloads(wanted, limit)
        # The answer goes past the interval: the next one starts at its checkpoint.
        rest = chain(wanted, self.iter_records(sid, max(run.end, from_offset)))
        return [r.payload for r in take_page(rest, limit, events_only=True)]

    def read_global(self, start: int, limit: int, only: StreamId | None) -> list[GlobalRecord]:
        """Records of every stream in global (commit) order, from the first position >= ``from_position``.

        Checkpoint records are included, so a store never repaired shows consecutive positions.
        Returns at least one record when there is one, then stops before the payloads would exceed
        ``max_bytes``; continue from the last one's ``global_position + 1``. Every record is verified
        by its stream's checkpoint-anchored read: a damaged one raises IntegrityError.
        ``stream_id``: only that stream's records (found through its offset index, not by reading
        past the others').
        """
        rows: list[GlobalRow] = self.query(lambda catalog: catalog.global_rows(start, limit, only), [])
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
