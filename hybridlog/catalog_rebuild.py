"""Rebuilding catalog rows from the segments: one stream's (``index_stream``), every stream's into
a fresh catalog (``rebuild_catalog``), and a stream's checkpoint rows (``rebuild_checkpoints``).

The segments are the truth for data, so each of these replaces what the catalog says with what a
verifying walk of the segment files finds, up to the first damage no repair marker accounts for.
A re-indexed stream keeps the global positions its records had; only ``rebuild_catalog``, which
has no old catalog to trust, numbers every record afresh, in (timestamp_ns, stream_id, offset)
order. Every action is written to the ``recovery_log`` table and to the log; the old catalog is
kept aside, never thrown away.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from hybridlog.catalog import Catalog
from hybridlog.catalog_rows import CheckpointRow, GapRow, RecoveryEntry
from hybridlog.db import sqlite_errors
from hybridlog.diagnose import FoundGap, StreamScan, stream_damage, walk_stream
from hybridlog.errors import IntegrityError
from hybridlog.evicted import stored_size
from hybridlog.layout import (
    CATALOG_FILE,
    catalog_aside_path,
    catalog_path,
    segment_numbers_on_disk,
    segment_path,
    stream_ids_on_disk,
    stream_path,
)
from hybridlog.quarantine import cut_tail, keep_catalog_aside, put_catalog_in_place, relative_name, remove_empty_segment
from hybridlog.recovery import (
    TORN_TAIL_FOUND,
    Adoption,
    Clock,
    ReconcileResult,
    commit_entries,
    seal_all_but_last,
    store_adoption,
)
from hybridlog.scan import PlainScan, ScannedRecord, scan_plain_stream
from hybridlog.types import GENESIS_HASH, MarkerAction, Offset, RecordKind, RecoveryAction, StreamId

log = logging.getLogger(__name__)


def index_stream(
    catalog: Catalog,
    data_dir: Path,
    stream_id: StreamId,
    now: Clock,
    *,
    found: str,
    prior: list[RecoveryEntry] | None = None,
) -> ReconcileResult:
    """Replace a stream's catalog rows with a verifying scan of its segment files.

    Indexes every valid record up to the first damage that no repair marker accounts for: damage
    that a repair isolated (an ``isolated`` marker later in the stream names its offsets) is
    stepped over and recorded as a gap, as are the offsets a ``cut`` marker jumps over
    (``markers.py``). A torn tail of the last segment is quarantined. Other damage (a bad record
    that is not a torn tail, a missing segment) is left where it is and returned as ``damage``:
    the catalog then ends before it, so reads stop before it. ``prior``: entries for what the
    caller already did to the files (``stream_repair.repair_stream``), logged first and in the same transaction.
    """
    plain = scan_plain_stream(data_dir, stream_id)
    if plain is not None:
        return _index_plain(catalog, data_dir, stream_id, plain, now, found=found, prior=prior)
    result = ReconcileResult(stream_id, entries=list(prior or []))
    numbers, _ = segment_numbers_on_disk(stream_path(data_dir, stream_id))
    if numbers and segment_path(data_dir, stream_id, numbers[-1]).stat().st_size == 0:
        result.entries.append(
            remove_empty_segment(data_dir, stream_id, numbers[-1], action=RecoveryAction.REMOVED_EMPTY)
        )
    scanned: list[ScannedRecord] = []
    scan = walk_stream(data_dir, stream_id, scanned.extend, resync=True)
    result.foreign_files = scan.foreign_files
    unexplained = next(iter(scan.unexplained_gaps), None)
    if unexplained is None:
        result.damage = _damage_of(data_dir, scan)
        if scan.torn and scan.problem_segment is not None:
            at = scan.valid_ends[scan.problem_segment]
            entry = cut_tail(
                data_dir, stream_id, scan.problem_segment, at, found=TORN_TAIL_FOUND, action=RecoveryAction.QUARANTINED
            )
            result.entries.append(entry)
        kept, gaps = scanned, scan.gaps
    else:
        result.damage = IntegrityError(
            f"bad record ({unexplained.reason}); {unexplained.records} records up to offset"
            f" {unexplained.next_offset - 1} do not verify, the records after them do",
            stream_id=stream_id,
            offset=unexplained.first_offset,
            segment=segment_path(data_dir, stream_id, unexplained.segment_no),
            position=unexplained.start_byte,
            hint=f"run `hybridlog repair {data_dir} --stream {stream_id}` to isolate it",
        )
        kept = [r for r in scanned if r.entry.offset < unexplained.first_offset]
        gaps = [g for g in scan.gaps if g.first_offset < unexplained.first_offset]
    adoption = Adoption()
    if kept:
        adoption.add(stream_id, kept)
    next_offset, head = (kept[-1].entry.offset + 1, kept[-1].hash) if kept else (0, GENESIS_HASH)
    result.entries.append(
        RecoveryEntry(stream_id, found=found, action=RecoveryAction.REINDEXED, first_offset=0, next_offset=next_offset)
    )
    t = now()
    with catalog.transaction():
        kept_positions = catalog.global_positions(stream_id)
        catalog.raise_global_mark(catalog.last_global_position())  # positions of rows deleted now stay given out
        catalog.forget_stream(stream_id)
        rows = _segment_rows(data_dir, stream_id, scan, kept)
        store_adoption(catalog, data_dir, stream_id, adoption, rows, (next_offset, head), t, kept_positions)
        catalog.insert_gaps(_gap_rows(stream_id, gaps, kept))
        commit_entries(catalog, result.entries, t)
    log.info("stream %d: catalog rows rebuilt from segments: %d records", stream_id, next_offset)
    if result.damage is not None:
        log.error("%s", result.damage)
    return result


def _index_plain(
    catalog: Catalog,
    data_dir: Path,
    stream_id: StreamId,
    plain: PlainScan,
    now: Clock,
    *,
    found: str,
    prior: list[RecoveryEntry] | None,
) -> ReconcileResult:
    """``index_stream`` for a stream the compiled scan read whole (``scan.scan_plain_stream``): the
    same rows and log entry, from its ``batches`` rows."""
    result = ReconcileResult(stream_id, entries=list(prior or []))
    result.foreign_files = segment_numbers_on_disk(stream_path(data_dir, stream_id))[1]
    result.entries.append(
        RecoveryEntry(
            stream_id, found=found, action=RecoveryAction.REINDEXED, first_offset=0, next_offset=plain.next_offset
        )
    )
    t = now()
    with catalog.transaction():
        catalog.raise_global_mark(catalog.last_global_position())  # positions of rows deleted now stay given out
        catalog.forget_stream(stream_id)
        for segment_no, first, nxt, size in plain.segments:
            catalog.upsert_segment(
                stream_id, segment_no, first_offset=first, next_offset=nxt, size_bytes=size, now_ns=t
            )
        catalog.insert_batches(plain.rows)
        catalog.insert_checkpoints(plain.checkpoints)
        catalog.upsert_stream(
            stream_id,
            next_offset=plain.next_offset,
            chain_head=plain.head,
            add_events=plain.events,
            add_checkpoints=len(plain.checkpoints),
            add_stored_bytes=plain.stored_bytes,
            add_payload_bytes=plain.payload_bytes,
            first_timestamp_ns=plain.rows[0][8],
            last_timestamp_ns=plain.rows[-1][8],
            now_ns=t,
        )
        seal_all_but_last(catalog, data_dir, stream_id, t)
        commit_entries(catalog, result.entries, t)
    log.info("stream %d: catalog rows rebuilt from segments: %d records", stream_id, plain.next_offset)
    return result


def _damage_of(data_dir: Path, scan: StreamScan) -> IntegrityError | None:
    """The IntegrityError describing where a stream walk met damage (None: clean or a torn tail)."""
    damage = stream_damage(data_dir, scan)
    return None if damage is None else damage.error(f"run `hybridlog repair {data_dir} --stream {scan.stream_id}`")


def _segment_rows(
    data_dir: Path, stream_id: StreamId, scan: StreamScan, kept: list[ScannedRecord]
) -> list[tuple[int, int, int, int]]:
    """(segment_no, first_offset, next_offset, size) for every segment up to the last one holding a
    kept record: that one ends after its last kept record; the ones before it keep their whole
    file (damage an isolated gap steps over stays in place)."""
    if not kept:
        return []
    last_no = kept[-1].entry.segment_no
    ends: dict[int, int] = {}
    for record in kept:
        ends[record.entry.segment_no] = record.entry.offset + 1
    rows = []
    for no in scan.segments:
        if no > last_no:
            break
        if no == last_no:
            size = kept[-1].entry.position + kept[-1].entry.length
        else:
            size = stored_size(data_dir, stream_id, no)
        first = scan.first_offsets[no]
        rows.append((no, first, ends.get(no, first), size))
    return rows


def _gap_rows(stream_id: StreamId, gaps: list[FoundGap], kept: list[ScannedRecord]) -> list[GapRow]:
    """Catalog rows for the isolated gaps a walk stepped over and the ranges cut markers jump over."""
    rows = [
        GapRow(
            stream_id,
            Offset(g.first_offset),
            Offset(g.next_offset),
            MarkerAction.ISOLATED,
            g.segment_no,
            g.start_byte,
            g.resume_segment_no,
            g.resume_byte,
            g.link_hash,
        )
        for g in gaps
    ]
    for record in kept:
        marker = record.marker
        if marker is not None and marker.action == MarkerAction.CUT and record.entry.offset == marker.next_offset:
            rows.append(
                GapRow(
                    stream_id,
                    Offset(marker.first_offset),
                    Offset(marker.next_offset),
                    MarkerAction.CUT,
                    marker.segment_no,
                    marker.start_byte,
                )
            )
    return sorted(rows, key=lambda g: g.first_offset)


def rebuild_catalog(
    data_dir: Path, now: Clock, *, found: str, retiring: Catalog | None = None
) -> tuple[Catalog, list[ReconcileResult]]:
    """Build a fresh catalog from every stream's segments and put it in place of the old one (kept aside).

    The new catalog is built as ``catalog.db.new`` and renamed over ``catalog.db`` only when it is
    complete, so a reader that opens the store meanwhile sees the old catalog whole, never a
    catalog half-way through the rebuild. ``retiring``: the old catalog's open connection (a
    writer's), closed just before the swap; None when the old one is missing or unusable.
    """
    t = now()
    path = catalog_path(data_dir)
    kept = catalog_aside_path(data_dir, t) if path.exists() else None
    catalog = Catalog.build(path)
    building = catalog.path
    try:
        with catalog.transaction():
            catalog.set_aside_legacy_positions()
            catalog.log_recovery(
                RecoveryEntry(
                    None,
                    found=found,
                    action=RecoveryAction.REBUILT_CATALOG,
                    kept_as=relative_name(data_dir, kept) if kept else None,
                    at_ns=t,
                )
            )
        results = [index_stream(catalog, data_dir, sid, now, found=found) for sid in stream_ids_on_disk(data_dir)]
        with catalog.transaction():
            catalog.number_legacy_records()  # deterministic: the same segments give the same positions
    finally:
        catalog.close()  # the only connection: its close folds the WAL into the file
    _install_catalog(data_dir, building, kept, retiring, found=found, now_ns=t)
    log.info("catalog rebuilt from the segments of %d streams (%s); old file kept as %s", len(results), found, kept)
    return Catalog(path, read_only=False), results


def _install_catalog(
    data_dir: Path, building: Path, kept: Path | None, retiring: Catalog | None, *, found: str, now_ns: int
) -> None:
    """Rename the complete catalog ``building`` over ``catalog.db``, keeping the old file as ``kept``.

    Until the last step ``catalog.db`` is the old catalog, whole: its WAL is folded into it
    first, because the old -wal / -shm files must leave before the new file arrives (SQLite
    would read them as the new file's). The old file stays reachable under ``catalog.db`` until
    the rename replaces it (a hard link keeps it aside), so there is no moment without a catalog.
    Readers with the old file open keep reading it; ``Storage`` notices the swap and reopens
    (the last entry logged in the old catalog moves its ``data_version``, so readers look at once).
    """
    path = catalog_path(data_dir)
    # 1. The new file's bytes are durable before its name is.
    with building.open("rb") as f:
        os.fsync(f.fileno())
    # 2. Every commit of the old catalog is in its main file (readers that open it now need no WAL).
    if retiring is not None:
        try:
            with sqlite_errors(f"cannot retire the old catalog {retiring.path}"), retiring.transaction():
                retiring.log_recovery(
                    RecoveryEntry(
                        None,
                        found=found,
                        action=RecoveryAction.REBUILT_CATALOG,
                        kept_as=relative_name(data_dir, kept) if kept else None,
                        detail=f"this catalog was replaced by one rebuilt from the segments as {CATALOG_FILE}",
                        at_ns=now_ns,
                    )
                )
            retiring.fold_wal()
        finally:
            retiring.close()
    # 3. Keep the old file aside under a second name, and move its WAL and shared memory with it.
    if kept is not None:
        keep_catalog_aside(path, kept)
    # 4. The swap: one rename, then the directory fsync that makes it durable.
    put_catalog_in_place(building, path)


def rebuild_checkpoints(catalog: Catalog, data_dir: Path, stream_id: StreamId) -> int:
    """Re-derive a stream's checkpoint rows from its checkpoint records; returns how many."""
    rows: list[CheckpointRow] = []

    def collect(batch: list[ScannedRecord]) -> None:
        rows.extend(
            CheckpointRow(stream_id, r.entry.offset, r.hash, r.entry.timestamp_ns)
            for r in batch
            if r.entry.kind == RecordKind.CHECKPOINT
        )

    damage = _damage_of(data_dir, walk_stream(data_dir, stream_id, collect))
    if damage is not None:
        raise damage
    with catalog.transaction():
        catalog.forget_checkpoints(stream_id)
        catalog.insert_checkpoints(rows)
    return len(rows)
