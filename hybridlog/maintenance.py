"""Checks and repairs of an open store: the one home of what ``Storage.check``, ``repair``,
``recover`` and the ``rebuild_*`` family do, and of what recovery found since the store was opened.

``Storage`` hands those calls here. ``Maintenance`` is given what it needs the way ``Writer`` is:
the writable catalog (``catalog``), the writer (whose stream heads it drops before a stream's files
change), the store's lock, and ``rebuild_catalog`` (the store moves its catalog aside and opens the
new one). The work itself is done below: checks by ``repair.check_store``, stream repairs by
``stream_repair.repair_stream``, open-time recovery by ``recovery.recover_store``, checkpoint rows
by ``catalog_rebuild.rebuild_checkpoints``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from hybridlog.catalog import Catalog
from hybridlog.catalog_rebuild import rebuild_checkpoints
from hybridlog.errors import IntegrityError, InvalidArgument, StorageIOError, StoreClosed
from hybridlog.recovery import ReconcileResult, recover_store, streams_to_reconcile
from hybridlog.repair import CheckReport, RepairReport, RepairStep, check_store
from hybridlog.stream_repair import repair_stream
from hybridlog.tree import StoreTree
from hybridlog.types import RepairKind, StreamId, check_stream_id
from hybridlog.writer import Writer


class Maintenance:
    """A store's checks, repairs and rebuilds, and what recovery found (``damage``, ``results``).

    ``catalog`` returns the writable catalog (raising StoreClosed, ReadOnlyStore or LockLost);
    ``rebuild_catalog(found)`` replaces the store's catalog by one built from the segments;
    ``writer_paused`` says whether this process holds the writer lock (so no batch is being
    written past the catalog while a check runs); ``forget_verified`` drops the verified runs of
    point reads (records may have moved); ``committed`` wakes subscriptions. Every method that
    changes anything runs under ``lock``, the store's lock.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        lock: threading.RLock,
        catalog: Callable[[], Catalog],
        writer: Writer,
        now: Callable[[], int],
        closed: Callable[[], bool],
        writer_paused: Callable[[], bool],
        rebuild_catalog: Callable[[str], list[ReconcileResult]],
        forget_verified: Callable[[], None],
        committed: Callable[[], None],
        tree: Callable[[], StoreTree],
    ) -> None:
        self._data_dir = data_dir
        self._lock = lock
        self._catalog = catalog
        self._writer = writer
        self._now = now
        self._closed = closed
        self._writer_paused = writer_paused
        self._rebuild_catalog = rebuild_catalog
        self._forget_verified = forget_verified
        self._committed = committed
        self._tree = tree
        self.damage: dict[StreamId, IntegrityError] = {}  # streams that refuse appends until repaired
        self.results: list[ReconcileResult] = []  # what recovery found and did since the store was opened

    def note(self, results: list[ReconcileResult]) -> None:
        """Remember what recovery did, and which streams it found damaged (they refuse appends)."""
        self._forget_verified()  # records may have moved or gone
        for result in results:
            self.results.append(result)
            self._writer.forget(result.stream_id)
            if result.damage is not None:
                self.damage[result.stream_id] = result.damage
            else:
                self.damage.pop(result.stream_id, None)
        if results:
            self._committed()  # adopted records are committed now

    # --- recovery and checks ---------------------------------------------------------------------

    def recover(self) -> list[ReconcileResult]:
        """Run open-time recovery again: reconcile every stream whose files disagree with the catalog."""
        with self._lock:
            catalog = self._catalog()
            try:
                self._writer.trim_reserved()
                results = recover_store(catalog, self._data_dir, self._now)
            except OSError as e:
                raise StorageIOError(f"recovery of {self._data_dir} failed: {e}") from e
            self.note(results)
            return results

    def check(self, stream_ids: list[int] | None, *, progress: Callable[[int], None] | None) -> CheckReport:
        """Every disagreement between catalog and segments, and all damage, found by a full walk.

        Changes nothing. In a writer, appends wait while it runs (so the batch being written is
        not mistaken for a torn one); a reader judges what a writer in another process may be
        writing past the catalog only once no writer holds the lock (see repair.py);
        ``progress`` is called with each count of records verified.
        """
        sids: list[int] | None = None if stream_ids is None else [check_stream_id(s) for s in stream_ids]
        with self._lock:
            if self._closed():
                raise StoreClosed(f"store {self._data_dir} is closed")
            try:
                self._writer.trim_reserved()
                report = check_store(self._data_dir, sids, progress=progress, writer_paused=self._writer_paused())
                if sids is None and report.ok:  # the tree is checked over a store that reads whole
                    report.findings.extend(self._tree().findings())
                return report
            except OSError as e:
                raise StorageIOError(f"cannot check {self._data_dir}: {e}") from e

    # --- repairs ---------------------------------------------------------------------------------

    def repair(self, plan: list[RepairStep] | None, *, stream_ids: list[int] | None, truncate: bool) -> RepairReport:
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
            self._catalog()
            steps = self.check(sids, progress=None).plan(sids, truncate=bool(truncate)) if plan is None else plan
            for step in steps:
                if step.repair == RepairKind.REBUILD_CATALOG:
                    results = self._rebuild(step.reason)
                elif step.repair == RepairKind.REBUILD_TREE:
                    self._tree().rebuild()
                    results = []
                elif step.stream_id is None:
                    raise InvalidArgument(f"repair {step.repair!r} needs a stream id")
                elif step.repair in (RepairKind.ISOLATE, RepairKind.TRUNCATE, RepairKind.REINDEX):
                    results = [self._repair_stream(step.stream_id, step.repair, found=step.reason)]
                else:
                    raise InvalidArgument(f"unknown repair {step.repair!r}")
                report.applied.append(step)
                report.entries.extend(e for r in results for e in r.entries)
            report.after = self.check(sids, progress=None)
        return report

    def rebuild_catalog(self, *, found: str) -> list[ReconcileResult]:
        """Move the catalog aside and build a new one from every stream's segments."""
        with self._lock:
            self._catalog()
            return self._rebuild(found)

    def _rebuild(self, found: str) -> list[ReconcileResult]:
        for sid in list(self._writer.heads):
            self._writer.forget(sid)
        self.damage.clear()
        results = self._rebuild_catalog(found)
        self.note(results)
        return results

    def rebuild_index(self, sid: StreamId) -> None:
        """Replace the stream's catalog rows with a verifying scan of its segments.

        A torn tail is quarantined. If the scan meets damage, the records before it are indexed,
        the stream refuses appends, and the IntegrityError naming the damage is raised.
        """
        with self._lock:
            result = self._repair_stream(
                sid, RepairKind.REINDEX, found="rebuild_index requested", doing="rebuild its index"
            )
            if result.damage is not None:
                raise result.damage

    def rebuild_index_if_needed(self, sid: StreamId) -> None:
        """``rebuild_index`` if the stream's catalog rows do not agree with its segments."""
        with self._lock:
            catalog = self._catalog()
            self._writer.trim_reserved()
            if sid in streams_to_reconcile(catalog, self._data_dir) or sid in self.damage:
                self.rebuild_index(sid)

    def rebuild_checkpoint_index(self, sid: StreamId) -> int:
        """Re-derive the stream's checkpoint rows from its checkpoint records; returns how many."""
        with self._lock:
            catalog = self._catalog()
            self._writer.head(sid)
            try:
                return rebuild_checkpoints(catalog, self._data_dir, sid)
            except OSError as e:
                raise StorageIOError(f"stream {sid}: cannot rebuild checkpoints: {e}") from e

    def _repair_stream(self, sid: StreamId, repair: str, *, found: str, doing: str = "repair it") -> ReconcileResult:
        """Isolate a stream's damage, cut it there (``truncate``), or only re-index it (``reindex``:
        a torn tail is quarantined; offsets the catalog knew that the segments lost are marked cut,
        never given out again)."""
        catalog = self._catalog()
        self._writer.forget(sid)
        try:
            result = repair_stream(
                catalog,
                self._data_dir,
                sid,
                self._now,
                truncate=repair == RepairKind.TRUNCATE,
                reindex_only=repair == RepairKind.REINDEX,
                found=found,
            )
        except OSError as e:
            raise StorageIOError(f"stream {sid}: cannot {doing}: {e}") from e
        self.note([result])
        return result


def _checked_plan(plan: object) -> list[RepairStep]:
    """``repair``'s plan as a list of RepairSteps it can apply, or InvalidArgument before any is applied."""
    if isinstance(plan, (str, bytes, bytearray, memoryview)) or not isinstance(plan, Iterable):
        raise InvalidArgument(f"plan must be a list of RepairStep, not {type(plan).__name__}")
    steps: list[object] = list(plan)
    for i, step in enumerate(steps):
        if not isinstance(step, RepairStep):
            raise InvalidArgument(f"plan step {i} is {type(step).__name__} {step!r}, not a RepairStep")
        if step.repair not in (RepairKind.REBUILD_CATALOG, RepairKind.ISOLATE, RepairKind.TRUNCATE, RepairKind.REINDEX):
            raise InvalidArgument(f"plan step {i}: unknown repair {step.repair!r}")
        if step.stream_id is not None:
            check_stream_id(step.stream_id)
        elif step.repair != RepairKind.REBUILD_CATALOG:
            raise InvalidArgument(f"plan step {i}: repair {step.repair!r} needs a stream id")
    return [step for step in steps if isinstance(step, RepairStep)]
