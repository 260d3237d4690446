"""Checking a store without changing it, and repairing what the check found.

``check_store`` compares the catalog with a verifying walk over every stream's segment files and
returns a ``CheckReport``: one ``Finding`` per disagreement or damage, each naming the stream,
offset, segment file and byte position where it applies, and the repair that fixes it. It opens
the catalog read-only and is safe to run beside a live writer: it reads the catalog in one read
transaction (a snapshot) and judges each stream's records up to what that snapshot committed.
Bytes past it (a batch being written, a segment just created, or committed after the snapshot)
are in flight while a writer runs, so they are judged only when no other process holds the writer
lock at the end of the walk and the catalog did not move meanwhile (then they are what they are:
a torn tail, records the catalog missed).

``Storage.repair`` carries out a plan. The repairs:

* ``rebuild_catalog``: build a new catalog from every stream's segments (the old one kept aside);
* ``isolate`` (the default for damage): keep every record that still verifies. Damage with
  verifying records after it is isolated in place; only records at the end of a stream that no
  longer verify are cut (``stream_repair.py``);
* ``truncate`` (only when asked: ``plan(truncate=True)``, ``hybridlog repair --truncate``): cut a
  damaged stream at its first damaged record, verifying records after it included;
* ``reindex``: replace one stream's catalog rows with what its segments hold (adopts what the
  catalog missed, quarantines a torn tail, and when the catalog knew more records than the
  segments hold, says how many are lost and marks their offsets as cut).

Every step says beforehand what it will do in records, offsets and bytes (``RepairStep.effect``).
None of them deletes bytes: what they cut is kept in ``*.quarantine`` files, every action is
written to ``recovery_log``, and no offset is ever given out twice (repair markers,
``markers.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from hybridlog.catalog import Catalog
from hybridlog.catalog_rows import RecoveryEntry
from hybridlog.diagnose import Damage, DamageKind, as_stopped, segment_row_problems, stream_damage, walk_stream
from hybridlog.errors import CatalogTooNew, CatalogUnusable
from hybridlog.layout import (
    ASIDE_SUFFIX,
    CATALOG_FILE,
    STREAMS_DIR,
    foreign_store_entries,
    foreign_stream_entries,
    segment_path,
    stream_ids_on_disk,
)
from hybridlog.lock import writer_holds_lock
from hybridlog.scan import ScannedRecord
from hybridlog.stream_repair import StreamRepairPlan, plan_stream_repair
from hybridlog.types import FindingKind, RecordKind, RepairKind, StreamId

_REPAIR_ORDER = {
    RepairKind.REBUILD_CATALOG: 0,
    RepairKind.ISOLATE: 1,
    RepairKind.TRUNCATE: 1,
    RepairKind.REINDEX: 2,
    RepairKind.REBUILD_TREE: 3,
}
STREAM_REPAIRS = (RepairKind.ISOLATE, RepairKind.TRUNCATE)


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing ``check`` found: what, where, and which repair fixes it (None: nothing to do)."""

    stream_id: StreamId | None
    problem: FindingKind
    message: str
    repair: RepairKind | None
    offset: int | None = None
    segment: Path | None = None
    position: int | None = None

    def as_dict(self) -> dict[str, object]:
        """The finding for ``--json``: plain values, the segment as a path string."""
        return {
            "stream_id": self.stream_id,
            "problem": self.problem,
            "message": self.message,
            "repair": self.repair,
            "offset": self.offset,
            "segment": str(self.segment) if self.segment else None,
            "position": self.position,
        }


@dataclass(frozen=True, slots=True)
class RepairStep:
    """One repair to apply: ``rebuild_catalog`` (store-wide), or ``isolate`` / ``truncate`` /
    ``reindex`` a stream. ``reason`` says what was found; ``effect`` what the step will do, in
    records, offsets and bytes (``effects`` the same numbers for ``--json``)."""

    repair: RepairKind
    stream_id: StreamId | None
    reason: str
    effect: str = ""
    effects: dict[str, object] | None = None

    def as_dict(self) -> dict[str, object]:
        """The step for ``--json``."""
        return {
            "repair": self.repair,
            "stream_id": self.stream_id,
            "reason": self.reason,
            "effect": self.effect,
            "effects": self.effects,
        }


@dataclass(slots=True)
class CheckReport:
    """What ``check`` found (``findings``), how much it read, and what each repair would do."""

    findings: list[Finding] = field(default_factory=list)
    streams_checked: int = 0
    records_verified: int = 0
    stream_plans: dict[StreamId, tuple[StreamRepairPlan, ...]] = field(default_factory=dict)
    """For each stream a repair would change: what isolate, truncate and reindex would do, in order."""

    @property
    def ok(self) -> bool:
        """True when nothing needs repairing (foreign files and isolated records are reported but
        need no repair)."""
        return all(f.repair is None for f in self.findings)

    def plan(self, stream_ids: list[int] | None = None, *, truncate: bool = False) -> list[RepairStep]:
        """The repairs that fix every finding (for ``stream_ids`` only, if given), in order.

        Damage is isolated, keeping every record that still verifies; ``truncate`` cuts each
        damaged stream at its first damaged record instead (records after it that verify too).
        """
        steps: dict[tuple[str, StreamId | None], RepairStep] = {}
        for f in self.findings:
            if f.repair is None or (stream_ids is not None and f.stream_id not in stream_ids):
                continue
            repair = RepairKind.TRUNCATE if truncate and f.repair == RepairKind.ISOLATE else f.repair
            if (repair, f.stream_id) in steps:
                continue
            plans = self.stream_plans.get(f.stream_id) if f.stream_id is not None else None
            if repair == RepairKind.REBUILD_CATALOG:
                effect = (
                    f"builds a new catalog from the segments of {self.streams_checked} streams; the old"
                    f" {CATALOG_FILE}, if there is one, is kept aside as {CATALOG_FILE}.<time>{ASIDE_SUFFIX}"
                )
                steps[repair, f.stream_id] = RepairStep(repair, f.stream_id, f.message, effect)
            elif repair == RepairKind.REBUILD_TREE:
                effect = "recomputes the store's Merkle tree from the segments; no record is touched"
                steps[repair, f.stream_id] = RepairStep(repair, f.stream_id, f.message, effect)
            elif plans is not None:
                chosen = plans[{RepairKind.ISOLATE: 0, RepairKind.TRUNCATE: 1, RepairKind.REINDEX: 2}[repair]]
                statement = chosen.statement()
                if repair == RepairKind.REINDEX:
                    statement = f"re-indexes the stream from its segments; {statement}"
                steps[repair, f.stream_id] = RepairStep(repair, f.stream_id, f.message, statement, chosen.as_dict())
            else:
                effect = "re-indexes the stream from its segments; no record is cut"
                steps[repair, f.stream_id] = RepairStep(repair, f.stream_id, f.message, effect)
        # isolating or truncating a stream re-indexes it, so a separate reindex of it is redundant
        rebuilt = {s.stream_id for s in steps.values() if s.repair in STREAM_REPAIRS}
        kept = [s for s in steps.values() if not (s.repair == RepairKind.REINDEX and s.stream_id in rebuilt)]
        return sorted(kept, key=lambda s: (_REPAIR_ORDER[s.repair], -1 if s.stream_id is None else s.stream_id))

    def as_dict(self) -> dict[str, object]:
        """The report for ``--json``: findings and the plan, in the order a repair applies it."""
        return {
            "ok": self.ok,
            "streams_checked": self.streams_checked,
            "records_verified": self.records_verified,
            "findings": [f.as_dict() for f in self.findings],
            "plan": [s.as_dict() for s in self.plan()],
        }


@dataclass(slots=True)
class RepairReport:
    """What ``Storage.repair`` did: the steps applied, their recovery-log entries, the check after."""

    applied: list[RepairStep] = field(default_factory=list)
    entries: list[RecoveryEntry] = field(default_factory=list)
    after: CheckReport | None = None

    def as_dict(self) -> dict[str, object]:
        """The report for ``--json``: the steps applied, the recovery-log entries and the check after."""
        return {
            "applied": [s.as_dict() for s in self.applied],
            "actions": [
                {
                    "stream_id": e.stream_id,
                    "found": e.found,
                    "action": e.action,
                    "segment_no": e.segment_no,
                    "start_byte": e.start_byte,
                    "end_byte": e.end_byte,
                    "first_offset": e.first_offset,
                    "next_offset": e.next_offset,
                    "kept_as": e.kept_as,
                }
                for e in self.entries
            ],
            "ok_after": self.after.ok if self.after else None,
        }


def _open_catalog_for_check(data_dir: Path, report: CheckReport) -> Catalog | None:
    path = data_dir / CATALOG_FILE
    if not path.exists():
        if stream_ids_on_disk(data_dir):
            report.findings.append(
                Finding(
                    None,
                    FindingKind.CATALOG_MISSING,
                    f"{path} is missing; the segments are there",
                    RepairKind.REBUILD_CATALOG,
                )
            )
        return None
    try:
        catalog = Catalog(path, read_only=True)
    except CatalogTooNew:
        raise
    except CatalogUnusable as e:
        report.findings.append(Finding(None, FindingKind.CATALOG_UNUSABLE, e.message, RepairKind.REBUILD_CATALOG))
        return None
    problem = catalog.health_problem()
    if problem is not None:
        catalog.close()
        report.findings.append(
            Finding(None, FindingKind.CATALOG_UNUSABLE, f"quick_check: {problem}", RepairKind.REBUILD_CATALOG)
        )
        return None
    return catalog


def check_store(
    data_dir: Path,
    stream_ids: list[int] | None = None,
    *,
    progress: Callable[[int], None] | None = None,
    writer_paused: bool = False,
) -> CheckReport:
    """Find every disagreement between catalog and segments, and all damage; change nothing.

    Beside a live writer, bytes past the catalog snapshot are not judged (see the module
    docstring). ``writer_paused``: the caller is the store's writer and its appends wait until
    the check ends, so nothing is in flight and every byte is judged.
    """
    report = CheckReport()
    catalog = _open_catalog_for_check(data_dir, report)
    judged: list[tuple[list[Finding], list[Finding]]] = []
    in_flight = False
    try:
        with catalog.read_snapshot() if catalog else nullcontext():
            version = catalog.data_version() if catalog else 0
            known = set(catalog.stream_ids()) if catalog else set()
            streams = sorted(known | set(stream_ids_on_disk(data_dir)))
            if stream_ids is not None:
                streams = [s for s in streams if s in stream_ids]
            else:
                report.findings.extend(
                    Finding(
                        None,
                        FindingKind.FOREIGN_FILE,
                        f"{STREAMS_DIR}/{name} is not a stream directory; left alone",
                        None,
                    )
                    for name in foreign_stream_entries(data_dir)
                )
                report.findings.extend(
                    Finding(None, FindingKind.FOREIGN_FILE, f"{name} is not part of a store; left alone", None)
                    for name in foreign_store_entries(data_dir)
                )
            for sid in streams:
                judged.append(_check_stream(data_dir, catalog, sid, report, progress))
                report.streams_checked += 1
        if catalog is not None and not writer_paused:
            # After the walk: a writer that ran during it either still holds the lock or committed.
            in_flight = writer_holds_lock(data_dir) or catalog.data_version() != version
    finally:
        if catalog is not None:
            catalog.close()
    for to_the_end, committed_only in judged:
        report.findings.extend(committed_only if in_flight else to_the_end)
    return report


def _check_stream(
    data_dir: Path,
    catalog: Catalog | None,
    sid: StreamId,
    report: CheckReport,
    progress: Callable[[int], None] | None,
) -> tuple[list[Finding], list[Finding]]:
    """The stream's findings judged to the end of its files, and judged only up to the records the
    catalog snapshot committed (what may be said while a writer is writing past them)."""
    row = catalog.stream(sid) if catalog else None
    catalog_next = row.next_offset if row else 0
    index = _IndexComparison(catalog, sid, catalog_next)

    def count(batch: list[ScannedRecord]) -> None:
        report.records_verified += len(batch)
        index.compare(batch)
        if progress is not None:
            progress(len(batch))

    walked = walk_stream(data_dir, sid, count, resync=True)
    found: list[Finding] = [
        Finding(sid, FindingKind.FOREIGN_FILE, f"file {name} is not a segment, dictionary or quarantine file", None)
        for name in walked.foreign_files
    ]
    found.extend(
        Finding(
            sid,
            FindingKind.ISOLATED_RECORDS,
            f"offsets {gap.first_offset}..{gap.next_offset - 1} were isolated by a repair ({gap.reason})",
            None,
            offset=gap.first_offset,
            segment=segment_path(data_dir, sid, gap.segment_no),
            position=gap.start_byte,
        )
        for gap in walked.gaps
        if walked.is_isolated(gap)
    )
    plans = tuple(
        plan_stream_repair(catalog, data_dir, sid, truncate=t, reindex_only=r, scan=walked)[0]
        for t, r in ((False, False), (True, False), (False, True))
    )
    if any(p.changes_anything for p in plans):
        report.stream_plans[sid] = plans
    scan = as_stopped(walked)
    damage = stream_damage(data_dir, scan)
    if damage is not None:
        found.append(_damage_finding(damage))
    if catalog is None:
        return found, found

    foreign = [f for f in found if f.problem == FindingKind.FOREIGN_FILE]
    to_the_end, committed_only = found, found
    if scan.next_offset >= catalog_next:  # every committed record verified: what follows may be in flight
        committed_only = foreign + index.committed_findings(row.chain_head if row else None)
        committed_only.extend(_check_segment_rows(data_dir, catalog, sid, last_may_grow=True))
    if catalog_next > scan.next_offset:
        found.append(
            Finding(
                sid,
                FindingKind.CATALOG_AHEAD,
                f"the catalog claims {catalog_next} records; the segments hold {scan.next_offset} valid ones",
                RepairKind.REINDEX,
                offset=scan.next_offset,
            )
        )
    elif catalog_next < scan.next_offset:
        found.append(
            Finding(
                sid,
                FindingKind.CATALOG_BEHIND,
                f"the segments hold {scan.next_offset} records; the catalog knows {catalog_next}",
                RepairKind.REINDEX,
                offset=catalog_next,
            )
        )
    elif row is not None and row.chain_head != (scan.head if scan.next_offset else None):
        found.append(
            Finding(
                sid,
                FindingKind.CATALOG_MISMATCH,
                "the catalog's chain head is not the last record's hash",
                RepairKind.REINDEX,
            )
        )
    else:
        found.extend(_check_segment_rows(data_dir, catalog, sid))
        found.extend(index.findings())
    return to_the_end, committed_only


def _damage_finding(damage: Damage) -> Finding:
    """The finding for where a stream's walk stopped, and the repair that fixes it."""
    sid, kind = damage.stream_id, damage.kind
    if kind is DamageKind.MISSING_SEGMENT:
        message = f"{damage.reason}; records from offset {damage.offset} on are cut off"
        return Finding(
            sid, FindingKind.MISSING_SEGMENT, message, RepairKind.ISOLATE, offset=damage.offset, segment=damage.segment
        )
    if damage.dictionary is not None:
        problem = (
            FindingKind.MISSING_DICTIONARY if kind is DamageKind.MISSING_DICTIONARY else FindingKind.DAMAGED_DICTIONARY
        )
        message, repair = f"{damage.dictionary.reason}; {damage.dictionary.hint}", RepairKind.ISOLATE
    elif kind is DamageKind.TORN_TAIL:
        problem, message, repair = FindingKind.TORN_TAIL, f"incomplete last batch ({damage.reason})", RepairKind.REINDEX
    else:
        problem, message, repair = FindingKind.DAMAGED_RECORD, f"damaged record ({damage.reason})", RepairKind.ISOLATE
    return Finding(
        sid, problem, message, repair, offset=damage.offset, segment=damage.segment, position=damage.position
    )


class _IndexComparison:
    """Compares the catalog's offset-index and checkpoint rows with the records a walk finds.

    Fed batch by batch, it walks the catalog's rows alongside, so memory stays bounded. Where the
    walk stepped over offsets (damage it went on after, a cut marker's jump), rows for them are
    skipped: the damage is reported by its own finding.
    ``committed``: the catalog's record count, for ``committed_findings``.
    """

    def __init__(self, catalog: Catalog | None, sid: StreamId, committed: int) -> None:
        self.sid = sid
        self.catalog = catalog
        self.committed = committed
        self.rows = iter(catalog.placed_entries(sid)) if catalog else iter(())
        self.first_wrong: int | None = None
        self.checkpoints: list[tuple[int, bytes]] = []
        self.committed_head: bytes | None = None  # the hash of the last committed record, as walked
        self.walked = 0  # the offset after the last record compared

    def compare(self, batch: list[ScannedRecord]) -> None:
        for record in batch:
            offset = record.entry.offset
            if record.entry.kind == RecordKind.CHECKPOINT:
                self.checkpoints.append((offset, record.hash))
            if offset == self.committed - 1:
                self.committed_head = record.hash
            if self.first_wrong is None:
                row = next(self.rows, None)
                # A walk that stepped over damage (or a cut marker's jump) skips offsets: so do the rows.
                while row is not None and row[0].offset < offset and offset != self.walked:
                    row = next(self.rows, None)
                if row is None or row[0] != record.entry or record.global_position not in (None, row[1]):
                    self.first_wrong = offset  # (a format-1 record's position is in the catalog only)
            self.walked = offset + 1

    def committed_findings(self, chain_head: bytes | None) -> list[Finding]:
        """Disagreements about the committed records only (call before ``findings``)."""
        if chain_head != self.committed_head:
            return [
                Finding(
                    self.sid,
                    FindingKind.CATALOG_MISMATCH,
                    "the catalog's chain head is not the last record's hash",
                    RepairKind.REINDEX,
                )
            ]
        found = []
        assert self.catalog is not None
        wrong = self.first_wrong if self.first_wrong is not None and self.first_wrong < self.committed else None
        if wrong is not None or self.catalog.index_size(self.sid) != self.committed:
            where = f"from offset {wrong}" if wrong is not None else "past the last record"
            found.append(
                Finding(
                    self.sid,
                    FindingKind.CATALOG_MISMATCH,
                    f"the offset index disagrees with the segments {where}",
                    RepairKind.REINDEX,
                    offset=wrong,
                )
            )
        if self._checkpoint_rows() != [c for c in self.checkpoints if c[0] < self.committed]:
            found.append(self._checkpoints_disagree())
        return found

    def findings(self) -> list[Finding]:
        found = []
        if self.first_wrong is not None or next(self.rows, None) is not None:
            where = f"from offset {self.first_wrong}" if self.first_wrong is not None else "past the last record"
            found.append(
                Finding(
                    self.sid,
                    FindingKind.CATALOG_MISMATCH,
                    f"the offset index disagrees with the segments {where}",
                    RepairKind.REINDEX,
                    offset=self.first_wrong,
                )
            )
        if self.catalog is not None and self._checkpoint_rows() != self.checkpoints:
            found.append(self._checkpoints_disagree())
        return found

    def _checkpoint_rows(self) -> list[tuple[int, bytes]]:
        assert self.catalog is not None
        return [(c.offset, c.hash) for c in self.catalog.checkpoints(self.sid)]

    def _checkpoints_disagree(self) -> Finding:
        message = "the checkpoint rows disagree with the segments"
        return Finding(self.sid, FindingKind.CATALOG_MISMATCH, message, RepairKind.REINDEX)


def _check_segment_rows(
    data_dir: Path, catalog: Catalog, sid: StreamId, *, last_may_grow: bool = False
) -> list[Finding]:
    """Catalog segment rows against the files: sizes, and digests of sealed segments.

    ``last_may_grow``: the last segment, if not sealed, may be longer than the catalog says (a
    writer is appending to it).
    """
    problems = segment_row_problems(data_dir, sid, catalog.segments(sid), digests=True, last_may_grow=last_may_grow)
    return [
        Finding(
            sid,
            FindingKind.CATALOG_MISMATCH,
            "sealed segment's digest differs"
            if p.digest_differs
            else f"segment is {p.size} bytes; the catalog records {p.row.size_bytes}",
            RepairKind.REINDEX,
            segment=p.path,
        )
        for p in problems
    ]
