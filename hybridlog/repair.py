"""Checking a store without changing it, and repairing what the check found.

``check_store`` compares the catalog with a verifying walk over every stream's segment files and
returns a ``CheckReport``: one ``Finding`` per disagreement or damage, each naming the stream,
offset, segment file and byte position where it applies, and the repair that fixes it. It opens
the catalog read-only, so it is safe to run beside a live writer.

``apply_repairs`` (through ``Storage.repair``) carries out a plan. The repairs:

* ``rebuild_catalog``: move the catalog aside and build a new one from every stream's segments;
* ``reindex``: replace one stream's catalog rows with what its segments hold (rolls back a
  catalog that is ahead of its segments, adopts what it missed, quarantines a torn tail);
* ``truncate``: cut a damaged stream back to its last complete, valid batch, moving the rest to
  quarantine files, then reindex it.

None of them deletes bytes: what they cut is kept in ``*.quarantine`` files, and every action
is written to ``recovery_log``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hybridlog.catalog import CATALOG_FILE, Catalog, RecoveryEntry
from hybridlog.errors import CatalogTooNew, CatalogUnusable, MissingDictionary
from hybridlog.recovery import stream_ids_on_disk
from hybridlog.scan import ScannedRecord, walk_stream
from hybridlog.segment import STREAMS_DIR, file_digest, foreign_stream_entries, segment_path
from hybridlog.types import RecordKind, StreamId

# Finding.problem values
CATALOG_MISSING = "catalog_missing"
CATALOG_UNUSABLE = "catalog_unusable"
CATALOG_BEHIND = "catalog_behind"
CATALOG_AHEAD = "catalog_ahead"
CATALOG_MISMATCH = "catalog_mismatch"
TORN_TAIL = "torn_tail"
MISSING_SEGMENT = "missing_segment"
DAMAGED_RECORD = "damaged_record"
MISSING_DICTIONARY = "missing_dictionary"
DAMAGED_DICTIONARY = "damaged_dictionary"
FOREIGN_FILE = "foreign_file"

# repair names, in the order a plan applies them
REBUILD_CATALOG = "rebuild_catalog"
TRUNCATE = "truncate"
REINDEX = "reindex"
_REPAIR_ORDER = {REBUILD_CATALOG: 0, TRUNCATE: 1, REINDEX: 2}


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing ``check`` found: what, where, and which repair fixes it (None: nothing to do)."""

    stream_id: StreamId | None
    problem: str
    message: str
    repair: str | None
    offset: int | None = None
    segment: Path | None = None
    position: int | None = None

    def as_dict(self) -> dict[str, object]:
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
    """One repair to apply: ``rebuild_catalog`` (store-wide), or ``truncate`` / ``reindex`` a stream."""

    repair: str
    stream_id: StreamId | None
    reason: str

    def as_dict(self) -> dict[str, object]:
        return {"repair": self.repair, "stream_id": self.stream_id, "reason": self.reason}


@dataclass(slots=True)
class CheckReport:
    findings: list[Finding] = field(default_factory=list)
    streams_checked: int = 0
    records_verified: int = 0

    @property
    def ok(self) -> bool:
        """True when nothing needs repairing (foreign files are reported but need no repair)."""
        return all(f.repair is None for f in self.findings)

    def plan(self, stream_ids: list[int] | None = None) -> list[RepairStep]:
        """The repairs that fix every finding (for ``stream_ids`` only, if given), in order."""
        steps: dict[tuple[str, StreamId | None], RepairStep] = {}
        for f in self.findings:
            if f.repair is None or (stream_ids is not None and f.stream_id not in stream_ids):
                continue
            key = (f.repair, f.stream_id)
            steps.setdefault(key, RepairStep(f.repair, f.stream_id, f.message))
        # truncating a stream re-indexes it, so a separate reindex of it is redundant
        truncated = {s.stream_id for s in steps.values() if s.repair == TRUNCATE}
        kept = [s for s in steps.values() if not (s.repair == REINDEX and s.stream_id in truncated)]
        return sorted(kept, key=lambda s: (_REPAIR_ORDER[s.repair], -1 if s.stream_id is None else s.stream_id))

    def as_dict(self) -> dict[str, object]:
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
                Finding(None, CATALOG_MISSING, f"{path} is missing; the segments are there", REBUILD_CATALOG)
            )
        return None
    try:
        catalog = Catalog(path, read_only=True)
    except CatalogTooNew:
        raise
    except CatalogUnusable as e:
        report.findings.append(Finding(None, CATALOG_UNUSABLE, e.message, REBUILD_CATALOG))
        return None
    problem = catalog.health_problem()
    if problem is not None:
        catalog.close()
        report.findings.append(Finding(None, CATALOG_UNUSABLE, f"quick_check: {problem}", REBUILD_CATALOG))
        return None
    return catalog


def check_store(
    data_dir: Path,
    stream_ids: list[int] | None = None,
    *,
    progress: Callable[[int], None] | None = None,
) -> CheckReport:
    """Find every disagreement between catalog and segments, and all damage; change nothing."""
    report = CheckReport()
    catalog = _open_catalog_for_check(data_dir, report)
    try:
        known = set(catalog.stream_ids()) if catalog else set()
        streams = sorted(known | set(stream_ids_on_disk(data_dir)))
        if stream_ids is not None:
            streams = [s for s in streams if s in stream_ids]
        else:
            report.findings.extend(
                Finding(None, FOREIGN_FILE, f"{STREAMS_DIR}/{name} is not a stream directory; left alone", None)
                for name in foreign_stream_entries(data_dir)
            )
        for sid in streams:
            report.findings.extend(_check_stream(data_dir, catalog, sid, report, progress))
            report.streams_checked += 1
    finally:
        if catalog is not None:
            catalog.close()
    return report


def _check_stream(
    data_dir: Path,
    catalog: Catalog | None,
    sid: StreamId,
    report: CheckReport,
    progress: Callable[[int], None] | None,
) -> list[Finding]:
    index = _IndexComparison(catalog, sid)

    def count(batch: list[ScannedRecord]) -> None:
        report.records_verified += len(batch)
        index.compare(batch)
        if progress is not None:
            progress(len(batch))

    scan = walk_stream(data_dir, sid, count)
    found: list[Finding] = [
        Finding(sid, FOREIGN_FILE, f"file {name} is not a segment, dictionary or quarantine file", None)
        for name in scan.foreign_files
    ]
    if scan.missing_segment is not None:
        found.append(
            Finding(
                sid,
                MISSING_SEGMENT,
                f"segment {scan.missing_segment} is missing; records from offset {scan.next_offset} on are cut off",
                TRUNCATE,
                offset=scan.next_offset,
                segment=segment_path(data_dir, sid, scan.missing_segment),
            )
        )
    elif scan.problem is not None:
        assert scan.problem_segment is not None
        path = segment_path(data_dir, sid, scan.problem_segment)
        unusable = scan.problem.dictionary
        if unusable is not None:
            found.append(
                Finding(
                    sid,
                    MISSING_DICTIONARY if isinstance(unusable, MissingDictionary) else DAMAGED_DICTIONARY,
                    f"{unusable.reason}; {unusable.hint}",
                    TRUNCATE,
                    offset=scan.problem.offset,
                    segment=path,
                    position=scan.problem.position,
                )
            )
        elif scan.torn:
            found.append(
                Finding(
                    sid,
                    TORN_TAIL,
                    f"incomplete last batch ({scan.problem.reason})",
                    REINDEX,
                    offset=scan.next_offset,
                    segment=path,
                    position=scan.valid_ends[scan.problem_segment],
                )
            )
        else:
            found.append(
                Finding(
                    sid,
                    DAMAGED_RECORD,
                    f"damaged record ({scan.problem.reason})",
                    TRUNCATE,
                    offset=scan.problem.offset,
                    segment=path,
                    position=scan.problem.position,
                )
            )
    if catalog is None:
        return found

    row = catalog.stream(sid)
    catalog_next = row.next_offset if row else 0
    if catalog_next > scan.next_offset:
        found.append(
            Finding(
                sid,
                CATALOG_AHEAD,
                f"the catalog claims {catalog_next} records; the segments hold {scan.next_offset} valid ones",
                REINDEX,
                offset=scan.next_offset,
            )
        )
    elif catalog_next < scan.next_offset:
        found.append(
            Finding(
                sid,
                CATALOG_BEHIND,
                f"the segments hold {scan.next_offset} records; the catalog knows {catalog_next}",
                REINDEX,
                offset=catalog_next,
            )
        )
    elif row is not None and row.chain_head != (scan.head if scan.next_offset else None):
        found.append(Finding(sid, CATALOG_MISMATCH, "the catalog's chain head is not the last record's hash", REINDEX))
    else:
        found.extend(_check_segment_rows(data_dir, catalog, sid))
        found.extend(index.findings())
    return found


class _IndexComparison:
    """Compares the catalog's offset-index and checkpoint rows with the records a walk finds.

    Fed batch by batch, it walks the catalog's rows alongside, so memory stays bounded.
    """

    def __init__(self, catalog: Catalog | None, sid: StreamId) -> None:
        self.sid = sid
        self.catalog = catalog
        self.rows = iter(catalog.index_entries(sid)) if catalog else iter(())
        self.first_wrong: int | None = None
        self.checkpoints: list[tuple[int, bytes]] = []

    def compare(self, batch: list[ScannedRecord]) -> None:
        for record in batch:
            if record.entry.kind == RecordKind.CHECKPOINT:
                self.checkpoints.append((record.entry.offset, record.hash))
            if self.first_wrong is None and next(self.rows, None) != record.entry:
                self.first_wrong = record.entry.offset

    def findings(self) -> list[Finding]:
        found = []
        if self.first_wrong is not None or next(self.rows, None) is not None:
            where = f"from offset {self.first_wrong}" if self.first_wrong is not None else "past the last record"
            found.append(
                Finding(
                    self.sid,
                    CATALOG_MISMATCH,
                    f"the offset index disagrees with the segments {where}",
                    REINDEX,
                    offset=self.first_wrong,
                )
            )
        if self.catalog is not None:
            rows = [(c.offset, c.hash) for c in self.catalog.checkpoints(self.sid)]
            if rows != self.checkpoints:
                found.append(
                    Finding(self.sid, CATALOG_MISMATCH, "the checkpoint rows disagree with the segments", REINDEX)
                )
        return found


def _check_segment_rows(data_dir: Path, catalog: Catalog, sid: StreamId) -> list[Finding]:
    """Catalog segment rows against the files: sizes, and digests of sealed segments."""
    found = []
    for seg in catalog.segments(sid):
        path = segment_path(data_dir, sid, seg.segment_no)
        size = path.stat().st_size if path.exists() else None
        if size != seg.size_bytes:
            message = f"segment is {size} bytes; the catalog records {seg.size_bytes}"
            found.append(Finding(sid, CATALOG_MISMATCH, message, REINDEX, segment=path))
        elif seg.sealed and seg.digest != file_digest(path):
            found.append(Finding(sid, CATALOG_MISMATCH, "sealed segment's digest differs", REINDEX, segment=path))
    return found
