"""Reconciling the catalog with the segments when a writer opens a store.

The segments are the truth for data; the catalog is an index of them, trusted only as far as it
agrees with them. Everything here walks segments with ``walk.SegmentScan``.

* ``recover_store`` runs when a writer opens a store: a size check per stream finds the streams
  whose catalog rows and files disagree, and ``reconcile_stream`` runs on those only.
* ``reconcile_stream`` does what is provably safe: it adopts complete, chain-valid batches the
  catalog missed (a crash between the segment write and the catalog commit, or a catalog that lost
  its last commits) and cuts off an incomplete last batch after saving its bytes to a quarantine
  file (after a rotating group commit, also the segment files that follow it:
  ``_cut_unacknowledged``). Anything else (a file shorter than the catalog says, a missing
  segment, a bad record that is not a torn tail) it reports as ``damage`` without touching anything.

Rebuilding catalog rows from the segments (one stream's, or the whole catalog) is
``catalog_rebuild.py``, which uses the steps here. Adopted records keep the global positions
their frames carry (format-1 records, which carry none, get the next ones after the high-water mark).

What a problem is (a torn tail, damage, a catalog ahead of its files) is decided by
``diagnose.py``; the cutting and moving aside is done by ``quarantine.py``. Every action is written
to the ``recovery_log`` table and to the log; cut bytes are kept in ``*.quarantine`` files beside
the segment, never thrown away.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from hybridlog.catalog import Catalog
from hybridlog.catalog_rows import CheckpointRow, IndexEntry, RecoveryEntry, SegmentRow
from hybridlog.diagnose import DamageKind, catalog_ahead_damage, classify_problem
from hybridlog.errors import CatalogMismatch, IntegrityError
from hybridlog.evicted import stored_digest, stored_size
from hybridlog.layout import (
    STREAMS_DIR,
    parse_stream_dir_name,
    segment_numbers_on_disk,
    segment_path,
    stream_path,
)
from hybridlog.quarantine import cut_tail, move_segment_aside, remove_empty_segment, trim_reserved_zeros
from hybridlog.scan import ScannedRecord, SegmentScan
from hybridlog.types import GENESIS_HASH, ChainHash, GlobalPosition, Offset, RecordKind, RecoveryAction, StreamId

log = logging.getLogger(__name__)

Clock = Callable[[], int]


TORN_TAIL_FOUND = "incomplete batch at the end of the segment"
"""``recovery_log.found`` for a torn tail cut on open or by a re-index."""


@dataclass(slots=True)
class ReconcileResult:
    """What reconciling (or re-indexing) one stream found and did."""

    stream_id: StreamId
    entries: list[RecoveryEntry] = field(default_factory=list)
    damage: IntegrityError | None = None
    foreign_files: list[str] = field(default_factory=list)

    @property
    def adopted_records(self) -> int:
        """How many records were adopted: complete, chain-valid records the catalog had missed."""
        return sum(
            (e.next_offset or 0) - (e.first_offset or 0) for e in self.entries if e.action == RecoveryAction.ADOPTED
        )

    @property
    def quarantined(self) -> list[str]:
        """The names of the files cut bytes were kept in, relative to the store."""
        return [e.kept_as for e in self.entries if e.kept_as is not None]


def commit_entries(catalog: Catalog, entries: list[RecoveryEntry], now_ns: int) -> None:
    """Write the entries to ``recovery_log``, stamped ``now_ns`` (in the caller's transaction)."""
    for entry in entries:
        catalog.log_recovery(replace(entry, at_ns=now_ns))


def seal_all_but_last(catalog: Catalog, data_dir: Path, stream_id: StreamId, now_ns: int) -> None:
    """Seal every segment of the stream but its last (digest of its file), where not sealed yet."""
    rows: list[SegmentRow] = catalog.segments(stream_id)
    for seg in rows[:-1]:
        if not seg.sealed:
            digest = stored_digest(data_dir, stream_id, seg.segment_no)
            catalog.seal_segment(stream_id, seg.segment_no, digest=digest, now_ns=now_ns)


def _global_positions(catalog: Catalog, adoption: Adoption, kept: dict[Offset, GlobalPosition]) -> list[GlobalPosition]:
    """Global positions for records being (re-)indexed, in offset order.

    A format-2 record has the position its frame carries. A format-1 record (which has none) keeps
    the position the catalog had given it (``kept``) as long as that keeps the stream's positions
    increasing; otherwise it gets the next position after the high-water mark. So recovery never
    renumbers what readers may have seen, and positions cut away are never given out again.
    """
    mark: int = catalog.last_global_position()
    positions: list[GlobalPosition] = []
    previous = 0
    for entry, carried in zip(adoption.entries, adoption.positions, strict=True):
        if carried is not None:  # a format-2 record: the walk checked that these increase
            positions.append(GlobalPosition(carried))
            previous = carried
            continue
        position = kept.get(entry.offset)
        if position is None or position <= previous:
            mark = max(mark, previous) + 1
            position = GlobalPosition(mark)
        positions.append(position)
        previous = position
    return positions


@dataclass(slots=True)
class Adoption:
    """Catalog rows for batches found in a segment, ready to be committed in one transaction."""

    entries: list[IndexEntry] = field(default_factory=list)
    positions: list[int | None] = field(default_factory=list)  # as the frames carry them
    checkpoints: list[CheckpointRow] = field(default_factory=list)
    events: int = 0
    payload_bytes: int = 0
    stored_bytes: int = 0
    first_timestamp_ns: int | None = None
    last_timestamp_ns: int | None = None

    def add(self, stream_id: StreamId, batch: list[ScannedRecord]) -> None:
        """Take in one scanned batch: its index rows, checkpoints, counts and time span."""
        if not batch:
            return
        entries, positions, checkpoints = self.entries, self.positions, self.checkpoints
        stored = events = payload = 0
        for rec in batch:  # a rebuild runs this once per record: locals, no attribute writes
            entry = rec.entry
            entries.append(entry)
            positions.append(rec.global_position)
            stored += entry.length
            if entry.kind == RecordKind.CHECKPOINT:
                checkpoints.append(CheckpointRow(stream_id, entry.offset, rec.hash, entry.timestamp_ns))
            else:
                events += 1
                payload += rec.payload_len
        self.stored_bytes += stored
        self.events += events
        self.payload_bytes += payload
        if self.first_timestamp_ns is None:
            self.first_timestamp_ns = batch[0].entry.timestamp_ns
        self.last_timestamp_ns = batch[-1].entry.timestamp_ns


def store_adoption(
    catalog: Catalog,
    data_dir: Path,
    stream_id: StreamId,
    adoption: Adoption,
    segment_rows: list[tuple[int, int, int, int]],
    head: tuple[int, ChainHash],
    now_ns: int,
    kept_positions: dict[Offset, GlobalPosition] | None = None,
) -> None:
    """Write scanned records into the catalog (inside the caller's transaction).

    ``kept_positions``: the global positions the stream's records had before a re-index.
    """
    known = {s.segment_no: s for s in catalog.segments(stream_id)}
    for segment_no, first, nxt, size in segment_rows:
        existing = known.get(segment_no)
        catalog.upsert_segment(
            stream_id,
            segment_no,
            first_offset=existing.first_offset if existing else first,
            next_offset=nxt,
            size_bytes=size,
            now_ns=now_ns,
        )
    positions = _global_positions(catalog, adoption, kept_positions or {})
    catalog.insert_records(stream_id, zip(positions, adoption.entries, strict=True))
    catalog.insert_checkpoints(adoption.checkpoints)
    if head[0] > 0:
        catalog.upsert_stream(
            stream_id,
            next_offset=head[0],
            chain_head=head[1],
            add_events=adoption.events,
            add_checkpoints=len(adoption.checkpoints),
            add_stored_bytes=adoption.stored_bytes,
            add_payload_bytes=adoption.payload_bytes,
            first_timestamp_ns=adoption.first_timestamp_ns,
            last_timestamp_ns=adoption.last_timestamp_ns,
            now_ns=now_ns,
        )
    seal_all_but_last(catalog, data_dir, stream_id, now_ns)


def reconcile_stream(catalog: Catalog, data_dir: Path, stream_id: StreamId, now: Clock) -> ReconcileResult:
    """Bring one stream's catalog rows in step with its segment files (see the module docstring)."""
    result = ReconcileResult(stream_id)
    on_disk, result.foreign_files = segment_numbers_on_disk(stream_path(data_dir, stream_id))
    for name in result.foreign_files:
        log.warning("stream %d: unexpected file %s in its directory", stream_id, name)
    result.damage = catalog_ahead_damage(catalog, data_dir, stream_id)
    if result.damage is not None:
        log.error("%s", result.damage)
        return result

    stream = catalog.stream(stream_id)
    known = catalog.segments(stream_id)
    last = known[-1] if known else None
    next_offset = stream.next_offset if stream else 0
    prev = (stream.chain_head if stream else None) or GENESIS_HASH

    # The files to scan: the rest of the last known segment, then any newer segment files.
    to_scan: list[tuple[int, int]] = [] if last is None else [(last.segment_no, last.size_bytes)]
    expected_no = 0 if last is None else last.segment_no + 1
    for n in (n for n in on_disk if last is None or n > last.segment_no):
        if n != expected_no:
            result.damage = CatalogMismatch(
                f"segment {n} found where segment {expected_no} was expected",
                stream_id=stream_id,
                offset=next_offset,
                segment=segment_path(data_dir, stream_id, n),
                hint=f"run `hybridlog repair {data_dir} --stream {stream_id}`",
            )
            log.error("%s", result.damage)
            return result
        to_scan.append((n, 0))
        expected_no += 1

    adoption = Adoption()
    segment_rows: list[tuple[int, int, int, int]] = []  # (segment_no, first_offset, next_offset, size)
    for i, (segment_no, position) in enumerate(to_scan):
        path = segment_path(data_dir, stream_id, segment_no)
        size = path.stat().st_size
        later = [no for no, _ in to_scan[i + 1 :]]
        if size == 0 and position == 0:
            # A rotation created this file and stopped before its bytes were durable.
            result.entries += _cut_unacknowledged(data_dir, stream_id, later)
            result.entries.append(
                remove_empty_segment(data_dir, stream_id, segment_no, action=RecoveryAction.REMOVED_EMPTY)
            )
            break
        if size == position:
            continue
        scan = SegmentScan(data_dir, stream_id, segment_no, position=position, next_offset=next_offset, prev_hash=prev)
        for batch in scan.batches():
            adoption.add(stream_id, batch)
        if scan.next_offset > next_offset:
            result.entries.append(
                RecoveryEntry(
                    stream_id,
                    found="complete batches past the catalog's end",
                    action=RecoveryAction.ADOPTED,
                    segment_no=segment_no,
                    start_byte=position,
                    end_byte=scan.valid_end,
                    first_offset=next_offset,
                    next_offset=scan.next_offset,
                )
            )
        if scan.problem is not None:
            # A problem at the start of a later file may be the rest of a group that never became durable.
            group = (stream_id, next_offset) if position == 0 and i > 0 and scan.valid_end == 0 else None
            kind = classify_problem(path, scan.problem, at_end=True, group_expected=group)
            if scan.problem.dictionary is not None:  # an intact record whose dictionary file is not usable
                result.damage = scan.problem.dictionary
                log.error("%s", result.damage)
                result.entries = []  # nothing was changed
                return result
            if kind is DamageKind.DAMAGED_RECORD:
                result.damage = IntegrityError(
                    f"bad record past the catalog's end, not a torn write ({scan.problem.reason})",
                    stream_id=stream_id,
                    offset=scan.problem.offset,
                    segment=path,
                    position=scan.problem.position,
                    hint=f"run `hybridlog repair {data_dir} --stream {stream_id}`",
                )
                log.error("%s", result.damage)
                result.entries = []  # nothing was changed
                return result
            # An interrupted write (or group): what follows it was never acknowledged.
            result.entries += _cut_unacknowledged(data_dir, stream_id, later)
            result.entries.append(
                cut_tail(
                    data_dir,
                    stream_id,
                    segment_no,
                    scan.valid_end,
                    found=TORN_TAIL_FOUND,
                    action=RecoveryAction.QUARANTINED,
                )
            )
        if scan.valid_end > 0:
            first = next_offset if position == 0 else (last.first_offset if last else 0)
            segment_rows.append((segment_no, first, scan.next_offset, scan.valid_end))
        next_offset, prev = scan.next_offset, scan.prev_hash
        if scan.problem is not None:
            break

    if result.entries:
        t = now()
        with catalog.transaction():
            if adoption.entries:
                store_adoption(catalog, data_dir, stream_id, adoption, segment_rows, (next_offset, prev), t)
            commit_entries(catalog, result.entries, t)
        if adoption.entries:
            log.warning("stream %d: adopted %d records the catalog had missed", stream_id, result.adopted_records)
    return result


def _cut_unacknowledged(data_dir: Path, stream_id: StreamId, segment_nos: list[int]) -> list[RecoveryEntry]:
    """Move aside whole segment files (empty ones are removed) that follow an interrupted write.

    A group that creates a segment file seals the one before it and fsyncs that before its commit,
    so a torn or missing batch in an earlier file means the group never committed: no append of it
    (or after it) returned. The highest file goes first, so a crash in between leaves a state this
    same rule recovers.
    """
    entries = []
    for no in sorted(segment_nos, reverse=True):
        if segment_path(data_dir, stream_id, no).stat().st_size == 0:
            entries.append(remove_empty_segment(data_dir, stream_id, no, action=RecoveryAction.REMOVED_EMPTY))
        else:
            found = "segment written by a group commit that was interrupted"
            entries.append(move_segment_aside(data_dir, stream_id, no, found=found, action=RecoveryAction.QUARANTINED))
    return entries


def streams_to_reconcile(catalog: Catalog, data_dir: Path) -> list[StreamId]:
    """The streams whose segment files are not exactly what the catalog says: a cheap check.

    One query, then a directory listing per stream and a stat per segment: the same segment
    numbers on disk as in the catalog, each file of its committed size. Damage inside a file is
    not looked for here (that is ``hybridlog check``'s job); reads find it when they reach it.
    """
    expected = catalog.segment_sizes()
    on_disk: dict[StreamId, list[int]] = {}
    streams_root = data_dir / STREAMS_DIR
    if streams_root.is_dir():
        for entry in streams_root.iterdir():
            sid = parse_stream_dir_name(entry.name)
            if sid is None:
                log.warning("unexpected entry %s in %s", entry.name, streams_root)
                continue
            on_disk[StreamId(sid)] = segment_numbers_on_disk(entry)[0]
    needing = []
    for sid in sorted(set(expected) | set(on_disk)):
        sizes = expected.get(sid, {})
        if sizes and sorted(sizes) == on_disk.get(sid, []):
            last = max(sizes)
            trim_reserved_zeros(segment_path(data_dir, sid, last), sizes[last])
        if sorted(sizes) != on_disk.get(sid, []) or any(
            stored_size(data_dir, sid, no) != size for no, size in sizes.items()
        ):
            needing.append(sid)
    return needing


def recover_store(catalog: Catalog, data_dir: Path, now: Clock) -> list[ReconcileResult]:
    """Reconcile every stream whose files disagree with the catalog; returns what each found."""
    return [reconcile_stream(catalog, data_dir, sid, now) for sid in streams_to_reconcile(catalog, data_dir)]
