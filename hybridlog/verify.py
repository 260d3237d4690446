"""Whole-store verification: walk every stream's chain, and check the catalog against the records.

``verify_store`` never prints and never changes anything; it returns a ``VerifyReport`` that the
CLI renders. A stream passes when every record links to the one before it, the last one matches
the catalog's chain head (see the trust model in docs/format.md), and every catalog row about the
stream agrees with the records the walk found:

* its ``streams`` row exists whenever its directory holds records (next offset and chain head are
  checked by the walk itself, which stops at the catalog's end);
* one ``records`` row per record, none more, each naming the record's segment, byte position,
  frame length, kind and timestamp (the timestamps ``offset_at`` and ``read_between`` search);
* one ``checkpoints`` row per checkpoint record, with its hash and timestamp, and none for events;
* its ``segments`` rows: where each segment's records start and end, in offsets and bytes;
* one global position per record, increasing with the offset, no later than the high-water mark.

Store-wide (a full verification only): no two records share a global position, every position up
to the high-water mark is some record's unless the recovery log records a repair that cuts or
renumbers records, and no rows name a stream that neither the catalog nor the disk has.

The segments are the truth: each disagreement says what the catalog holds and what the records
are. Rows are read alongside the walk, one stream at a time in one read transaction, so memory
stays bounded and a live writer's commits never look like disagreements.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import apsw

from hybridlog.catalog import Catalog
from hybridlog.catalog_rows import StreamSnapshot, damaged_hint
from hybridlog.diagnose import unlisted_stream_problem
from hybridlog.dictionary import DictionaryCache
from hybridlog.errors import (
    CatalogError,
    CatalogMismatch,
    CatalogTooNew,
    IntegrityError,
    RecordIsolated,
    StorageError,
)
from hybridlog.layout import CATALOG_FILE, stream_ids_on_disk
from hybridlog.storage import Storage
from hybridlog.types import ChainHash, MarkerAction, Record, RecordKind, StreamId
from hybridlog.walk import verified_frames

MAX_LISTED = 20
"""Disagreements listed per stream (and store-wide); the rest are counted."""


@dataclass(frozen=True, slots=True)
class Disagreement:
    """One place where the catalog says something the records contradict."""

    stream_id: StreamId | None
    offset: int | None
    subject: str
    catalog: str
    segments: str

    def __str__(self) -> str:
        where = "store" if self.stream_id is None else f"stream {self.stream_id}"
        if self.offset is not None:
            where += f" offset {self.offset}"
        told = f"{where}: {self.subject}: the catalog has {self.catalog}"
        return f"{told}; the segments have {self.segments}" if self.segments else told

    def as_dict(self) -> dict[str, object]:
        """The disagreement for ``--json``."""
        return {
            "stream_id": self.stream_id,
            "offset": self.offset,
            "subject": self.subject,
            "catalog": self.catalog,
            "segments": self.segments,
        }


@dataclass(slots=True)
class Disagreements:
    """The first ``MAX_LISTED`` disagreements, and how many there were in all."""

    listed: list[Disagreement] = field(default_factory=list)
    count: int = 0

    def add(self, found: Disagreement) -> None:
        """Count a disagreement, and keep it if fewer than ``MAX_LISTED`` are listed."""
        self.count += 1
        if len(self.listed) < MAX_LISTED:
            self.listed.append(found)


@dataclass(slots=True)
class StreamVerdict:
    """What verifying one stream found: how far its chain verified, and where the catalog disagrees."""

    stream_id: StreamId
    records: int
    head: ChainHash | None
    error: IntegrityError | None = None
    catalog: Disagreements = field(default_factory=Disagreements)
    isolated: list[tuple[int, int]] = field(default_factory=list)
    """(first offset, next offset) of each range of records a repair isolated: listed, not damage."""

    @property
    def ok(self) -> bool:
        """True when every record verified and the catalog agrees with them."""
        return self.error is None and self.catalog.count == 0

    def as_dict(self) -> dict[str, object]:
        """The verdict for ``--json``: the error's type and place, the disagreements listed."""
        err = self.error
        return {
            "stream_id": self.stream_id,
            "ok": self.ok,
            "records_verified": self.records,
            "head": self.head.hex() if self.head else None,
            "error": None
            if err is None
            else {
                "type": type(err).__name__,
                "message": err.message,
                "offset": err.offset,
                "segment": str(err.segment) if err.segment else None,
                "position": err.position,
                "hint": err.hint,
            },
            "isolated": [{"first_offset": first, "next_offset": nxt} for first, nxt in self.isolated],
            "catalog_disagreements": [d.as_dict() for d in self.catalog.listed],
            "catalog_disagreement_count": self.catalog.count,
        }


@dataclass(slots=True)
class VerifyReport:
    """What ``verify`` found, stream by stream and store-wide."""

    streams: list[StreamVerdict] = field(default_factory=list)
    catalog: Disagreements = field(default_factory=Disagreements)
    """Store-wide disagreements (global positions, rows of streams nobody has)."""
    error: StorageError | None = None
    """Set when the catalog could not be read at all (nothing else was verified then)."""

    @property
    def ok(self) -> bool:
        """True when the catalog was read, agrees with the records, and every stream verified."""
        return self.error is None and self.catalog.count == 0 and all(s.ok for s in self.streams)

    @property
    def records(self) -> int:
        """How many records were verified, over all streams."""
        return sum(s.records for s in self.streams)

    def as_dict(self) -> dict[str, object]:
        """The report for ``--json``."""
        return {
            "ok": self.ok,
            "records_verified": self.records,
            "streams": [s.as_dict() for s in self.streams],
            "catalog_disagreements": [d.as_dict() for d in self.catalog.listed],
            "catalog_disagreement_count": self.catalog.count,
            "error": None if self.error is None else {"type": type(self.error).__name__, "message": str(self.error)},
        }


def verify_store(
    storage: Storage,
    stream_ids: list[int] | None = None,
    *,
    from_genesis: bool = True,
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Verify the given streams (default: all, and the store-wide global order); ``progress`` is
    called with each record count done.

    ``from_genesis=False``: from each stream's last checkpoint (trusting it), comparing the rows
    from there on; the store-wide checks need a full verification and are skipped.
    """
    report = VerifyReport()
    data_dir = storage.data_dir
    try:
        listed = storage.stream_ids()  # the store's own checks first: closed, no catalog, a newer schema
    except CatalogTooNew:
        raise
    except (CatalogError, IntegrityError) as e:
        report.error = e
        return report
    if not (data_dir / CATALOG_FILE).exists():
        return report  # no catalog and (stream_ids said) no segments: an empty store
    try:
        catalog = Catalog(data_dir / CATALOG_FILE, read_only=True)
    except CatalogError as e:
        report.error = e
        return report
    try:
        wanted = (
            sorted(set(listed) | set(stream_ids_on_disk(data_dir)))
            if stream_ids is None
            else [StreamId(s) for s in stream_ids]
        )
        dictionaries = DictionaryCache(data_dir)
        for sid in wanted:
            report.streams.append(_verify_stream(storage, catalog, sid, from_genesis, dictionaries, progress))
        if stream_ids is None and from_genesis:
            _check_store(catalog, report, set(wanted))
    finally:
        catalog.close()
    return report


def _verify_stream(
    storage: Storage,
    catalog: Catalog,
    sid: StreamId,
    from_genesis: bool,
    dictionaries: DictionaryCache,
    progress: Callable[[int], None] | None,
) -> StreamVerdict:
    verdict = StreamVerdict(sid, 0, None)
    data_dir = storage.data_dir
    try:
        for attempt in range(2):
            with catalog.conn:  # one read: the snapshot, the rows and the walk's bounds agree
                snap = _snapshot(catalog, sid, from_genesis)
                if snap is not None:
                    start = snap.anchor.offset if snap.anchor else 0
                    comparison = _StreamComparison(catalog, sid, start, verdict.catalog)
                    walked: StreamSnapshot | None = snap
                    while walked is not None:
                        try:
                            for segment_no, position, size, record in verified_frames(
                                data_dir, walked, start, dictionaries
                            ):
                                comparison.add(segment_no, position, size, record)
                                verdict.records += 1
                                verdict.head = record.hash
                                if progress is not None:
                                    progress(1)
                            walked = None
                        except RecordIsolated as e:  # a repair's decision: go on from the record after it
                            verdict.isolated.append((e.first_offset, e.next_offset))
                            start = e.next_offset
                            walked = catalog.snapshot(sid, start, anchored=True)
                    comparison.finish(snap)
                    return verdict
            # Not in the catalog: a new stream whose first commit is on its way, or a lost row.
            problem = unlisted_stream_problem(data_dir, sid, lambda: _snapshot(catalog, sid, True) is not None)
            if problem is None and attempt == 0 and _snapshot(catalog, sid, True) is not None:
                continue  # it was being created: verify what is committed now
            if problem is not None:
                verdict.catalog.add(Disagreement(sid, None, "streams row", "none", f"records ({problem.reason})"))
            return verdict
    except IntegrityError as e:
        if e.hint is None or e.hint == IntegrityError.hint:
            e.hint = damaged_hint(data_dir)
        verdict.error = e
    except (CatalogError, apsw.Error, UnicodeDecodeError) as e:
        verdict.error = CatalogMismatch(f"cannot read the catalog's rows: {e}", stream_id=sid)
        verdict.error.hint = damaged_hint(data_dir)
    return verdict


def _snapshot(catalog: Catalog, sid: StreamId, from_genesis: bool) -> StreamSnapshot | None:
    if from_genesis:
        return catalog.snapshot(sid, 0, anchored=False)
    last = catalog.checkpoint_at_or_before(sid, 2**63 - 1)
    return catalog.snapshot(sid, last.offset if last else 0, anchored=True)


def _show(value: object) -> str:
    return repr(value) if not isinstance(value, bytes) else (value.hex() if len(value) == 32 else repr(value))


def _entry(values: tuple[object, ...]) -> str:
    segment_no, position, length, kind, timestamp = values
    kinds = {int(k): k.name.lower() for k in RecordKind}
    name = kinds.get(kind, _show(kind)) if isinstance(kind, int) else _show(kind)
    return (
        f"segment {_show(segment_no)} byte {_show(position)}, length {_show(length)},"
        f" {name}, timestamp {_show(timestamp)}"
    )


class _StreamComparison:
    """The catalog's rows about one stream, read alongside a verifying walk and compared with it.

    ``records`` and ``checkpoints`` rows come from cursors ordered by offset, so memory stays
    bounded: each row is compared with the record at its offset as the walk reaches it.
    """

    def __init__(self, catalog: Catalog, sid: StreamId, start: int, found: Disagreements) -> None:
        self.sid = sid
        self.start = start
        self.found = found
        self.rows = catalog.stream_index_rows(sid, start)
        self.row = next(self.rows, None)
        self.checkpoint_rows = catalog.stream_checkpoint_rows(sid, start)
        self.checkpoint_row = next(self.checkpoint_rows, None)
        try:
            self.mark: int | None = catalog.last_global_position()
        except CatalogMismatch:
            self.mark = None  # the store-wide check names it
        self.previous_position: int | None = None
        # per segment walked: (first offset, next offset, end byte, walked from its first byte)
        self.segments: dict[int, list[int]] = {}

    def disagree(self, offset: int | None, subject: str, catalog: str, segments: str) -> None:
        self.found.add(Disagreement(self.sid, offset, subject, catalog, segments))

    def add(self, segment_no: int, position: int, size: int, record: Record) -> None:
        offset = record.offset
        seen = self.segments.get(segment_no)
        if seen is None:
            self.segments[segment_no] = [offset, offset + 1, position + size, int(position == 0)]
        else:
            seen[1], seen[2] = offset + 1, position + size
        self._compare_index_row(segment_no, position, size, record)
        self._compare_checkpoint_row(record)

    def _compare_index_row(self, segment_no: int, position: int, size: int, record: Record) -> None:
        offset = record.offset
        want = (segment_no, position, size, int(record.kind), record.timestamp_ns)
        while True:
            row = self.row
            if row is None or (type(row[0]) is int and row[0] > offset):
                self.disagree(offset, "offset index", "no row", _entry(want))
                return
            if type(row[0]) is int and row[0] == offset:
                if tuple(row[1:6]) != want:
                    self.disagree(offset, "offset index row", _entry(tuple(row[1:6])), _entry(want))
                if record.global_position is not None and row[6] != record.global_position:
                    self.disagree(
                        offset, "global position", _show(row[6]), f"{record.global_position} (in the record's frame)"
                    )
                self._check_position(offset, row[6])
                self.row = next(self.rows, None)
                return
            at = row[0] if type(row[0]) is int else None
            self.disagree(at, "offset index row", f"offset {_show(row[0])}: {_entry(tuple(row[1:6]))}", "no record")
            self.row = next(self.rows, None)

    def _check_position(self, offset: int, position: object) -> None:
        problem = None
        if type(position) is not int or position < 1:
            problem = "not a position"
        elif self.previous_position is not None and position <= self.previous_position:
            problem = f"not after offset {offset - 1}'s position {self.previous_position}"
        elif self.mark is not None and position > self.mark:
            problem = f"past the high-water mark {self.mark}"
        if problem is not None:
            self.disagree(offset, "global position", f"{_show(position)} ({problem})", "a record in stream order")
        if type(position) is int:
            self.previous_position = position

    def _compare_checkpoint_row(self, record: Record) -> None:
        offset = record.offset
        want = (record.hash.hex(), record.timestamp_ns)
        while (row := self.checkpoint_row) is not None and not (type(row[0]) is int and row[0] >= offset):
            at = row[0] if type(row[0]) is int else None
            self.disagree(at, "checkpoint row", f"offset {_show(row[0])}", "no record")
            self.checkpoint_row = next(self.checkpoint_rows, None)
        row = self.checkpoint_row
        if row is not None and row[0] == offset:
            got = (_show(row[1]), row[2])
            if record.kind is not RecordKind.CHECKPOINT:
                self.disagree(offset, "checkpoint row", f"hash {got[0]}", "an event record")
            elif got != want:
                self.disagree(
                    offset,
                    "checkpoint row",
                    f"hash {got[0]}, timestamp {_show(got[1])}",
                    f"hash {want[0]}, timestamp {want[1]}",
                )
            self.checkpoint_row = next(self.checkpoint_rows, None)
        elif record.kind is RecordKind.CHECKPOINT:
            self.disagree(offset, "checkpoint row", "none", f"a checkpoint record, hash {want[0]}")

    def finish(self, snap: StreamSnapshot) -> None:
        """After a walk that reached the catalog's end: rows past it, and the segments rows."""
        for row in _rest(self.row, self.rows):
            at = row[0] if type(row[0]) is int else None
            self.disagree(at, "offset index row", f"offset {_show(row[0])}: {_entry(tuple(row[1:6]))}", "no record")
        for row in _rest(self.checkpoint_row, self.checkpoint_rows):
            at = row[0] if type(row[0]) is int else None
            self.disagree(at, "checkpoint row", f"offset {_show(row[0])}", "no record")
        # Segments an isolated gap runs through keep their damaged bytes: the walk does not read them.
        touched = {
            no
            for g in snap.gaps
            if g.action == MarkerAction.ISOLATED and g.resume_segment_no is not None
            for no in range(g.segment_no, g.resume_segment_no + 1)
        }
        for seg in snap.segments:
            if seg.segment_no in touched:
                continue
            seen = self.segments.get(seg.segment_no)
            if seen is None:
                if snap.start is None or seg.segment_no >= snap.start.segment_no:
                    self.disagree(seg.first_offset, f"segments row {seg.segment_no}", "a segment", "no records in it")
                continue
            first, nxt, end, whole = seen
            said = (seg.first_offset if whole else first, seg.next_offset, seg.size_bytes)
            if said != (first, nxt, end):
                self.disagree(
                    first,
                    f"segments row {seg.segment_no}",
                    f"offsets {said[0]}..{said[1]}, {said[2]} bytes",
                    f"offsets {first}..{nxt}, {end} bytes",
                )


def _rest(first: tuple[object, ...] | None, rows: Iterator[tuple[object, ...]]) -> Iterator[tuple[object, ...]]:
    if first is not None:
        yield first
        yield from rows


def _check_store(catalog: Catalog, report: VerifyReport, streams: set[StreamId]) -> None:
    """The store-wide checks of a full verification (see the module docstring)."""
    found = report.catalog
    try:
        with catalog.conn:
            for line in catalog.structure_problems(MAX_LISTED):
                found.add(Disagreement(None, None, "catalog file", f"integrity_check: {line}", ""))
            for line in catalog.schema_problems():
                found.add(Disagreement(None, None, "catalog schema", line, "the schema its migrations make"))
            mark, count, largest = catalog.global_order_summary()
            if type(mark) is not int or mark < 0:
                found.add(Disagreement(None, None, "global-position mark", _show(mark), "a position"))
                return
            if type(count) is not int:  # a damaged page can hand back another type (STRICT checks writes only)
                found.add(
                    Disagreement(None, None, "batches rows", f"record counts add up to {_show(count)}", "a count")
                )
                return
            if type(largest) is int and largest > mark:
                found.add(
                    Disagreement(None, None, "global-position mark", f"{mark}", f"a record at position {largest}")
                )
            previous: object = 0
            for position in catalog.all_global_positions():
                if type(position) is not int or type(previous) is not int or position <= previous:
                    found.add(
                        Disagreement(
                            None,
                            None,
                            "global positions",
                            f"{_show(position)} after {_show(previous)}",
                            "each position once",
                        )
                    )
                previous = position
            unused = mark - count
            if unused > 0 and not catalog.positions_may_be_unused():
                found.add(
                    Disagreement(
                        None,
                        None,
                        "global positions",
                        f"{count} records numbered up to the mark {mark}",
                        f"{unused} positions unused, and the recovery log records no repair that cut records",
                    )
                )
            for table, sids in catalog.streams_with_rows().items():
                for sid in sorted(sids - streams, key=repr):
                    found.add(
                        Disagreement(None, None, f"{table} rows", f"rows for stream {_show(sid)}", "no such stream")
                    )
    except (CatalogError, apsw.Error, UnicodeDecodeError) as e:
        report.error = CatalogError(
            f"cannot read the catalog's global order: {e}", hint=damaged_hint(catalog.path.parent)
        )
