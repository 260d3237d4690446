"""The damage matrix: each damage -> the exact error -> repair -> the exact recovered state.

Every case starts from a copy of one deterministic store (a fixed clock, fixed payloads, 4 KiB
segments, a checkpoint every 4 events, two streams) and tells the same story:

1. **damage**: real bytes flipped, files cut, deleted or added with the ``hybridlog.testing.damage`` helpers;
2. **the exact error**: what a reader and a reopened writer raise (the exact ``IntegrityError``
   subclass, the stream, offset, segment file and byte position it names, a hint naming
   ``hybridlog repair``), or what opening a writer did on its own, as ``recovery_log`` records it;
   the records before the damage still read, and the other stream never notices;
3. **the finding**: what ``check()`` reports, and the plan it proposes;
4. **repair**: what ``repair()`` did, entry by entry in ``recovery_log``;
5. **the exact recovered state**: every record, the chain head and every catalog row (index,
   segments, checkpoints, stats) equal what the writer had built for the records up to the last
   valid batch; ``check()`` is ok; appends continue the chain;
6. **nothing lost**: every byte that was in a segment file before the repair is still in a
   segment file or in a quarantine file beside it, at the position its name gives.

The places ``check()`` names are tested apart from the repair flow
(``test_check_names_the_damaged_record_where_a_read_does`` and friends), so a wrong location does
not hide whether the repair itself is right.
"""

from __future__ import annotations

import re
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import apsw
import pytest

from hybridlog import (
    CatalogError,
    CatalogMismatch,
    CatalogUnusable,
    ChainBroken,
    ChainHash,
    CheckpointPolicy,
    CheckpointRow,
    CheckReport,
    ChecksumMismatch,
    FindingKind,
    HashMismatch,
    IndexEntry,
    IntegrityError,
    MarkerAction,
    Record,
    RecordIsolated,
    RecordKind,
    RecordsCut,
    RecoveryAction,
    RecoveryEntry,
    RepairKind,
    Storage,
    StreamId,
    StreamStats,
    TruncatedRecord,
)
from hybridlog.layout import QUARANTINE_SUFFIX, segment_name, segment_path, stream_path
from hybridlog.markers import decode_marker
from hybridlog.record import HASH_FIELD, HEADER_SIZE
from hybridlog.segment import SegmentReader
from hybridlog.testing.clocks import make_clock
from hybridlog.testing.damage import (
    OFFSET_FIELD,
    PREV_HASH_FIELD,
    STORED_LEN_FIELD,
    add_extra_segment,
    assert_no_bytes_lost,
    catalog_path,
    corrupt_catalog,
    delete_catalog,
    drop_segment,
    flip_byte,
    genesis_records,
    rehash_frame,
    replace_catalog,
    reseal_frame,
    rollback_catalog,
    save_catalog,
    segment_files,
    split_batches,
    stream_bytes,
    tear_tail,
    truncate_catalog,
)

STREAM = 0  # the stream that gets damaged
OTHER = 7  # a stream that must never notice
STREAMS = (STREAM, OTHER)
BATCHES = 18
STALE_AFTER = 7  # batches the stale catalog copy knows
EVENTS_PER_BATCH = 3
SEGMENT_SIZE = 4096
POLICY = CheckpointPolicy.every(4, on_close=False)
BUILD_NS = 1_700_000_000_000_000_000
REOPEN_NS = 1_800_000_000_000_000_000


# --- the deterministic store -------------------------------------------------------------------------


def event(stream_id: int, batch: int, index: int, history: str) -> bytes:
    """A fixed payload; ``history`` tells two different stores apart (and changes the record size)."""
    return f"history {history} stream {stream_id} batch {batch:03d} event {index} ".encode() * 7


def open_store(path: Path, clock: Callable[[], int] | None = None, *, read_only: bool = False) -> Storage:
    return Storage(
        path,
        checkpoint_policy=POLICY,
        max_segment_size=SEGMENT_SIZE,
        read_only=read_only,
        clock=make_clock(REOPEN_NS) if clock is None else clock,
    )


def append_batches(store: Storage, batches: range, history: str) -> None:
    for b in batches:
        for sid in STREAMS:
            store.append(sid, [event(sid, b, i, history) for i in range(EVENTS_PER_BATCH)], fsync=False)


@dataclass(frozen=True)
class FrameAt:
    """Where one record of ``STREAM`` is on disk."""

    offset: int
    segment_no: int
    position: int
    size: int
    batch_end: bool


@dataclass(frozen=True)
class CatalogView:
    """Everything the catalog says about one stream, in a form two stores can be compared by."""

    next_offset: int
    head: ChainHash | None
    entries: tuple[IndexEntry, ...]
    checkpoints: tuple[CheckpointRow, ...]
    segments: tuple[tuple[int, int, int, int, bool, bytes | None], ...]  # no, first, next, size, sealed, digest
    stats: StreamStats | None


def catalog_view(store: Storage, stream_id: int) -> CatalogView:
    return CatalogView(
        store.next_offset(stream_id),
        store.latest_chain_hash(stream_id),
        tuple(store.offset_index(stream_id).entries()),
        tuple(store.checkpoint_index(stream_id)),
        tuple(
            (s.segment_no, s.first_offset, s.next_offset, s.size_bytes, s.sealed, s.digest)
            for s in store.segments(stream_id)
        ),
        next((s for s in store.stats() if s.stream_id == stream_id), None),
    )


@dataclass(frozen=True)
class History:
    """The intact store every case copies, and everything it must read back as.

    ``stale_catalog`` is a copy of the catalog taken after ``STALE_AFTER`` batches, when it knew
    ``stale_views``; ``foreign_catalog`` is the catalog of another, longer store whose payloads
    differ (and are bigger), with ``foreign_views``.
    """

    path: Path
    records: dict[int, list[Record]]
    views: dict[int, CatalogView]
    frames: list[FrameAt]
    stale_catalog: Path
    stale_views: dict[int, CatalogView]
    foreign_catalog: Path
    foreign_views: dict[int, CatalogView]

    def batch_of(self, frame: FrameAt) -> list[FrameAt]:
        """The frames of the batch that holds ``frame``."""
        start = frame.offset
        while start > 0 and not self.frames[start - 1].batch_end:
            start -= 1
        end = frame.offset
        while not self.frames[end].batch_end:
            end += 1
        return self.frames[start : end + 1]

    def batches_in(self, segment_no: int) -> list[list[FrameAt]]:
        firsts = [f for f in self.frames if f.segment_no == segment_no and self.batch_of(f)[0] == f]
        return [self.batch_of(f) for f in firsts]

    @property
    def last_segment(self) -> int:
        return self.frames[-1].segment_no

    def segment_first_offset(self, segment_no: int) -> int:
        return next(f.offset for f in self.frames if f.segment_no == segment_no)


def frames_on_disk(path: Path) -> list[FrameAt]:
    found = []
    for seg in segment_files(path, STREAM):
        with SegmentReader(seg) as reader:
            found += [
                FrameAt(f.header.offset, int(seg.stem), f.position, f.header.frame_size, f.header.batch_end)
                for f in reader.frames()
            ]
    return found


def build_history(root: Path) -> History:
    path = root / "store"
    clock = make_clock(BUILD_NS)
    with open_store(path, clock) as store:
        append_batches(store, range(STALE_AFTER), "a")
        stale_views = {sid: catalog_view(store, sid) for sid in STREAMS}
    stale_catalog = save_catalog(path, root / "stale-catalog.db")
    with open_store(path, clock) as store:
        append_batches(store, range(STALE_AFTER, BATCHES), "a")
    with open_store(path, read_only=True) as reader:
        records = {sid: genesis_records(reader, sid) for sid in STREAMS}
        views = {sid: catalog_view(reader, sid) for sid in STREAMS}

    foreign = root / "foreign"
    with open_store(foreign, make_clock(BUILD_NS)) as store:
        append_batches(store, range(BATCHES + 4), "b-longer")
    with open_store(foreign, read_only=True) as reader:
        foreign_views = {sid: catalog_view(reader, sid) for sid in STREAMS}

    history = History(
        path, records, views, frames_on_disk(path), stale_catalog, stale_views, catalog_path(foreign), foreign_views
    )
    # The shape every case relies on: several sealed segments with several batches each, an active
    # segment with at least three batches, checkpoints inside batches.
    assert history.last_segment >= 4
    assert all(len(history.batches_in(n)) >= 3 for n in (2, history.last_segment))
    assert [f.offset for f in history.frames] == list(range(len(records[STREAM])))
    assert any(r.kind is RecordKind.CHECKPOINT for r in records[STREAM])
    stale_last = history.stale_views[STREAM].segments[-1]
    assert 0 < stale_last[3] < views[STREAM].segments[stale_last[0]][3], "the stale catalog ends inside a segment"
    return history


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    return build_history(tmp_path_factory.mktemp("history"))


@pytest.fixture
def store_copy(history: History, tmp_path: Path) -> Path:
    """A fresh copy of the intact store for one case to damage."""
    copy = tmp_path / "store"
    shutil.copytree(history.path, copy)
    return copy


# --- what each case expects ----------------------------------------------------------------------------


def read_until_damage(store: Storage, stream_id: int) -> tuple[list[Record], IntegrityError]:
    """The records a verified read from genesis returns before it raises, and the error."""
    records: list[Record] = []
    with pytest.raises(IntegrityError) as caught:
        records.extend(store.iter_records(stream_id, 0, anchored=False))
    return records, caught.value


def assert_error(
    error: BaseException, kind: type[IntegrityError], *, offset: int, segment: Path, position: int | None
) -> None:
    """``error`` is exactly ``kind``, names this place in ``STREAM``, and says what to run."""
    assert type(error) is kind, f"{type(error).__name__}: {error}"
    assert isinstance(error, IntegrityError)
    assert (error.stream_id, error.offset, error.segment, error.position) == (STREAM, offset, segment, position)
    assert_hint_names_repair(error)
    assert f"stream {STREAM}" in str(error)
    assert str(segment) in str(error)


def assert_hint_names_repair(error: IntegrityError) -> None:
    assert "hybridlog repair" in (error.hint or ""), f"hint {error.hint!r} does not name the repair command"


def expected_view(history: History, stream_id: int, cut: int) -> CatalogView:
    """The catalog the writer would have built had it stopped after the batch ending at ``cut``."""
    full = history.views[stream_id]
    if cut == full.next_offset:
        return full
    records = history.records[stream_id][:cut]
    entries = tuple(e for e in full.entries if e.offset < cut)
    last_no = entries[-1].segment_no
    segments = []
    for no, first, nxt, size, _sealed, digest in full.segments:
        if no < last_no:
            segments.append((no, first, nxt, size, True, digest))
        elif no == last_no:  # the last segment left is the active one again: not sealed
            segments.append((no, first, cut, entries[-1].position + entries[-1].length, False, None))
    events = [r for r in records if r.kind is RecordKind.EVENT]
    checkpoints = tuple(c for c in full.checkpoints if c.offset < cut)
    stats = StreamStats(
        StreamId(stream_id),
        records=cut,
        events=len(events),
        checkpoints=len(checkpoints),
        segments=len(segments),
        sealed_segments=len(segments) - 1,
        stored_bytes=sum(e.length for e in entries),
        payload_bytes=sum(len(r.payload) for r in events),
        first_timestamp_ns=records[0].timestamp_ns,
        last_timestamp_ns=records[-1].timestamp_ns,
    )
    return CatalogView(cut, records[-1].hash, entries, checkpoints, tuple(segments), stats)


def assert_recovered(store: Storage, history: History, cut: int) -> None:
    """``STREAM`` holds exactly the first ``cut`` records, indexed exactly; ``OTHER`` is untouched."""
    assert genesis_records(store, STREAM) == history.records[STREAM][:cut]
    assert store.latest_chain_hash(STREAM) == history.records[STREAM][cut - 1].hash
    assert catalog_view(store, STREAM) == expected_view(history, STREAM, cut)
    assert genesis_records(store, OTHER) == history.records[OTHER]
    assert catalog_view(store, OTHER) == history.views[OTHER]
    assert store.damaged_streams() == {}
    assert store.check().ok


def assert_appends_continue(store: Storage, history: History, cut: int) -> None:
    """A new batch links to the last record kept, and a fresh reader verifies the whole stream."""
    kept = history.records[STREAM][:cut]
    next_offset, head = store.append(STREAM, [b"after the repair"], expected_offset=cut)
    records = genesis_records(store, STREAM)
    assert records[:cut] == kept
    assert records[cut].prev_hash == kept[-1].hash
    assert records[cut].payload == b"after the repair"
    assert (len(records), records[-1].hash) == (next_offset, head)
    store.flush_indexes()
    with open_store(store.data_dir, read_only=True) as reader:
        assert genesis_records(reader, STREAM) == records


def repair_marker_bytes(store: Storage, stream_id: int = STREAM) -> dict[Path, int]:
    """Bytes of the repair marker records a repair appended, by segment file (relative to the store)."""
    appended: dict[Path, int] = {}
    for entry in store.offset_index(stream_id).entries():
        if entry.kind is RecordKind.REPAIR:
            path = segment_path(Path(), stream_id, entry.segment_no)
            appended[path] = appended.get(path, 0) + entry.length
    return appended


def assert_fresh_reader_agrees(store: Storage, from_offset: int) -> None:
    store.flush_indexes()
    mine = list(store.iter_records(STREAM, from_offset))
    with open_store(store.data_dir, read_only=True) as reader:
        assert list(reader.iter_records(STREAM, from_offset)) == mine


def assert_isolated(store: Storage, history: History, first: int, nxt: int, committed: int) -> None:
    """``STREAM`` reads every record but ``first .. nxt-1``, verified; those raise RecordIsolated;
    an ``isolated`` marker took offset ``committed``; ``OTHER`` is untouched; appends continue."""
    original = history.records[STREAM]
    records, error = read_until_damage(store, STREAM)
    assert records == original[:first]
    assert type(error) is RecordIsolated
    assert (error.first_offset, error.next_offset) == (first, nxt)
    for offset in (first, nxt - 1):
        with pytest.raises(RecordIsolated):
            store.read_from(STREAM, offset, 1 << 20)
    after = list(store.iter_records(STREAM, nxt))
    assert after[:-1] == original[nxt:]
    marker = after[-1]
    assert (marker.offset, marker.kind) == (committed, RecordKind.REPAIR)
    decoded = decode_marker(marker.payload)
    assert decoded is not None
    assert (decoded.action, decoded.first_offset, decoded.next_offset) == (MarkerAction.ISOLATED, first, nxt)
    assert genesis_records(store, OTHER) == history.records[OTHER]
    assert catalog_view(store, OTHER) == history.views[OTHER]
    assert store.damaged_streams() == {}
    assert store.check().ok
    next_offset, head = store.append(STREAM, [b"after the repair"], expected_offset=committed + 1)
    assert next_offset == committed + 2
    [record] = list(store.iter_records(STREAM, committed + 1))
    assert (record.payload, record.prev_hash, record.hash) == (b"after the repair", marker.hash, head)
    assert_fresh_reader_agrees(store, nxt)


def assert_cut(store: Storage, history: History, cut: int, committed: int, stream_id: int = STREAM) -> None:
    """``stream_id`` holds its first ``cut`` records, then a ``cut`` marker at offset ``committed``
    linked to the last of them; offsets ``cut .. committed-1`` raise RecordsCut; appends go on
    after the marker."""
    original = history.records[stream_id]
    records = genesis_records(store, stream_id)
    assert records[:-1] == original[:cut]
    marker = records[-1]
    assert (marker.offset, marker.kind, marker.prev_hash) == (committed, RecordKind.REPAIR, original[cut - 1].hash)
    decoded = decode_marker(marker.payload)
    assert decoded is not None
    assert (decoded.action, decoded.first_offset, decoded.next_offset) == (MarkerAction.CUT, cut, committed)
    for offset in (cut, committed - 1):
        with pytest.raises(RecordsCut):
            store.read_from(stream_id, offset, 100)
    assert store.damaged_streams() == {}
    assert store.check().ok
    next_offset, _ = store.append(stream_id, [b"after the repair"], expected_offset=committed + 1)
    assert next_offset == committed + 2
    store.flush_indexes()
    with open_store(store.data_dir, read_only=True) as reader:
        assert genesis_records(reader, stream_id) == genesis_records(store, stream_id)


LogRow = tuple[str, int | None, int | None, int | None, int | None, int | None, str | None]


def log_rows(entries: list[RecoveryEntry]) -> Counter[LogRow]:
    """recovery_log entries as (action, segment, start byte, end byte, first offset, next offset, kept as)."""
    return Counter(
        (e.action, e.segment_no, e.start_byte, e.end_byte, e.first_offset, e.next_offset, e.kept_as) for e in entries
    )


def quarantine_name(segment_no: int, position: int) -> Path:
    """Where bytes cut from ``STREAM``'s segment at ``position`` are kept, relative to the store."""
    return stream_path(Path(), STREAM) / f"{segment_name(segment_no)}.{position:020d}{QUARANTINE_SUFFIX}"


def segment_rel(segment_no: int) -> Path:
    return stream_path(Path(), STREAM) / segment_name(segment_no)


@dataclass(frozen=True)
class Truncation:
    """What truncating ``STREAM`` at a batch must do: log rows, and the files that keep the cut bytes."""

    log: Counter[LogRow]
    quarantine: dict[Path, bytes]


def expected_truncation(
    before: dict[Path, bytes], *, cut: int, cut_segment: int | None, position: int = 0
) -> Truncation:
    """Truncating ``STREAM`` so that offset ``cut`` is its next record.

    ``cut_segment`` is cut at byte ``position`` and every later segment file is moved aside whole;
    when the damage is a missing segment (``cut_segment`` None), every file after the gap is.
    Then the stream is re-indexed.
    """
    log: Counter[LogRow] = Counter()
    quarantine: dict[Path, bytes] = {}
    numbers = sorted(int(p.stem) for p in before if p.suffix == ".seg" and p.parent == segment_rel(0).parent)
    if cut_segment is None:
        gap = next(i for i, number in enumerate(numbers) if number != i)
        moved = numbers[gap:]
    else:
        data = before[segment_rel(cut_segment)]
        kept = quarantine_name(cut_segment, position)
        log[(RecoveryAction.TRUNCATED, cut_segment, position, len(data), cut, None, str(kept))] += 1
        quarantine[kept] = data[position:]
        moved = [n for n in numbers if n > cut_segment]
    for n in moved:
        data = before[segment_rel(n)]
        kept = quarantine_name(n, 0)
        log[(RecoveryAction.TRUNCATED, n, 0, len(data), None, None, str(kept))] += 1
        quarantine[kept] = data
    log[(RecoveryAction.REINDEXED, None, None, None, 0, cut, None)] += 1
    return Truncation(log, quarantine)


def expected_cut(
    before: dict[Path, bytes], *, cut: int, committed: int, cut_segment: int | None, position: int = 0
) -> Truncation:
    """A truncation at offset ``cut`` of a stream that had committed up to ``committed``: the
    files as ``expected_truncation`` says, then a cut marker at ``committed`` (logged as
    ``marked_cut``), and the stream re-indexed up to and including it."""
    moved = expected_truncation(before, cut=cut, cut_segment=cut_segment, position=position)
    log = Counter(row for row in moved.log.elements() if row[0] != RecoveryAction.REINDEXED)
    log[(RecoveryAction.MARKED_CUT, None, None, None, cut, committed, None)] += 1
    log[(RecoveryAction.REINDEXED, None, None, None, 0, committed + 1, None)] += 1
    return Truncation(log, moved.quarantine)


Located = tuple[int | None, str, str | None, int | None, Path | None, int | None]


def findings_of(report: CheckReport) -> list[Located]:
    """(stream, problem, repair, offset, segment, byte position) of each finding."""
    return [(f.stream_id, f.problem, f.repair, f.offset, f.segment, f.position) for f in report.findings]


def plan_of(report: CheckReport) -> list[tuple[str, int | None]]:
    return [(s.repair, s.stream_id) for s in report.plan()]


# --- damaged records -------------------------------------------------------------------------------------

Damage = Callable[[Path, FrameAt], None]


def flip_at(field: Callable[[FrameAt], int]) -> Damage:
    return lambda path, frame: flip_byte(path, frame.position + field(frame))


def forged(field: int, *, rehash: bool = False) -> Damage:
    """Flip a byte at ``field``, then recompute the hash (and a format-1 frame's checksum) as a tamperer would."""

    def damage(path: Path, frame: FrameAt) -> None:
        flip_byte(path, frame.position + field, 0x01)
        if rehash:
            rehash_frame(path, frame.position)
        else:
            reseal_frame(path, frame.position)

    return damage


@dataclass(frozen=True)
class RecordCase:
    """One damaged record: which one (``place``), what was done to it, and what a read raises."""

    place: str
    what: str
    damage: Damage
    error: type[IntegrityError]

    @property
    def id(self) -> str:
        return f"{self.what} / {self.place}"


def pick_record(history: History, place: str) -> FrameAt:
    """A record in the middle of the stream: in a middle batch of a sealed or of the active segment."""
    segment_no = 2 if place.startswith("sealed") else history.last_segment
    batches = history.batches_in(segment_no)
    batch = batches[len(batches) // 2]
    assert batch is not batches[-1]
    assert len(batch) >= 3
    return batch[0] if place.endswith("first of a batch") else batch[1]


PLACES = ["sealed segment, first of a batch", "sealed segment, middle of a batch", "active segment, middle of a batch"]
# Format 2 has no checksum: what a flipped byte breaks is the record hash (payload, hash field, the
# frame's last byte), the record's identity (offset), or the frame rules (a stored_len that no longer
# matches raw_len: not a frame).
FLIPS: dict[str, tuple[Callable[[FrameAt], int], type[IntegrityError]]] = {
    "payload byte": (lambda f: HEADER_SIZE + 5, HashMismatch),
    "header offset": (lambda f: OFFSET_FIELD, IntegrityError),
    "header stored_len": (lambda f: STORED_LEN_FIELD, ChecksumMismatch),
    "last byte": (lambda f: f.size - 2, HashMismatch),
    "hash field": (lambda f: HASH_FIELD + 7, HashMismatch),
}
RECORD_CASES = [
    RecordCase(place, what, flip_at(field), error) for place in PLACES for what, (field, error) in FLIPS.items()
]
# A frame rewritten by someone who knows the format: the record hash, its identity or the chain catches it.
RECORD_CASES += [
    RecordCase(PLACES[1], "header offset, hash recomputed", forged(OFFSET_FIELD, rehash=True), IntegrityError),
    RecordCase(PLACES[2], "prev_hash, hash recomputed", forged(PREV_HASH_FIELD + 3, rehash=True), ChainBroken),
]


@pytest.mark.parametrize("case", RECORD_CASES, ids=lambda c: c.id)
def test_damaged_middle_record(history: History, store_copy: Path, case: RecordCase) -> None:
    """A damaged record inside durable data: reported, never repaired on open; repair isolates it
    and keeps every other record readable and verified (nothing is cut)."""
    frame = pick_record(history, case.place)
    segment = segment_path(store_copy, STREAM, frame.segment_no)
    case.damage(segment, frame)
    committed = len(history.records[STREAM])

    with open_store(store_copy, read_only=True) as reader:
        records, error = read_until_damage(reader, STREAM)
        assert records == history.records[STREAM][: frame.offset]
        assert_error(error, case.error, offset=frame.offset, segment=segment, position=frame.position)
        assert genesis_records(reader, OTHER) == history.records[OTHER]

    before = stream_bytes(store_copy)
    with open_store(store_copy) as store:
        # Opening compares sizes only, so damage inside a file is found by the read that reaches it.
        assert store.damaged_streams() == {}
        records, error = read_until_damage(store, STREAM)
        assert records == history.records[STREAM][: frame.offset]
        assert_error(error, case.error, offset=frame.offset, segment=segment, position=frame.position)
        assert genesis_records(store, OTHER) == history.records[OTHER]

        report = store.check()
        assert [(f.stream_id, f.problem, f.repair, f.segment) for f in report.findings] == [
            (STREAM, FindingKind.DAMAGED_RECORD, RepairKind.ISOLATE, segment),
            (STREAM, FindingKind.CATALOG_AHEAD, RepairKind.REINDEX, None),
        ]
        [step] = report.plan()
        assert (step.repair, step.stream_id) == (RepairKind.ISOLATE, STREAM)
        assert step.effect.startswith(f"isolates offsets {frame.offset} (1 damaged record,")
        assert f"keeps the {committed - frame.offset - 1:,} verifying records after the damage" in step.effect
        assert "cuts" not in step.effect

        repaired = store.repair()
        assert [(s.repair, s.stream_id) for s in repaired.applied] == [(RepairKind.ISOLATE, STREAM)]
        assert repaired.after is not None
        assert repaired.after.ok
        end = frame.position + frame.size
        expected = Counter(
            [
                (RecoveryAction.ISOLATED, frame.segment_no, frame.position, end, frame.offset, frame.offset + 1, None),
                (RecoveryAction.REINDEXED, None, None, None, 0, committed + 1, None),
            ]
        )
        assert log_rows(store.recovery_log()) == expected
        assert log_rows(repaired.entries) == expected
        assert assert_no_bytes_lost(before, store_copy, repair_marker_bytes(store)) == {}
        assert_isolated(store, history, frame.offset, frame.offset + 1, committed)


@pytest.mark.parametrize("place", PLACES)
def test_truncate_cuts_from_the_damaged_record_and_never_reuses_its_offsets(
    history: History, store_copy: Path, place: str
) -> None:
    """An explicit truncate cuts from the damaged record on (the records of its batch before it
    stay), says so in records and bytes first, and a cut marker keeps the cut offsets unused."""
    frame = pick_record(history, place)
    segment = segment_path(store_copy, STREAM, frame.segment_no)
    flip_byte(segment, frame.position + HEADER_SIZE + 5)
    committed = len(history.records[STREAM])
    before = stream_bytes(store_copy)
    with open_store(store_copy) as store:
        [step] = store.check().plan(truncate=True)
        assert (step.repair, step.stream_id) == (RepairKind.TRUNCATE, STREAM)
        lost = committed - frame.offset
        assert step.effect.startswith(
            f"cuts offsets {frame.offset}..{committed - 1}: {lost:,} committed records, {lost - 1:,} of them still"
            " verifying"
        )
        assert f"a cut marker takes offset {committed}" in step.effect
        repaired = store.repair(truncate=True)
        assert [(s.repair, s.stream_id) for s in repaired.applied] == [(RepairKind.TRUNCATE, STREAM)]
        expected = expected_cut(
            before, cut=frame.offset, committed=committed, cut_segment=frame.segment_no, position=frame.position
        )
        assert log_rows(store.recovery_log()) == expected.log
        assert assert_no_bytes_lost(before, store_copy, repair_marker_bytes(store)) == expected.quarantine
        assert genesis_records(store, OTHER) == history.records[OTHER]
        assert_cut(store, history, frame.offset, committed)


@pytest.mark.parametrize("case", RECORD_CASES, ids=lambda c: c.id)
def test_check_names_the_damaged_record_where_a_read_does(history: History, store_copy: Path, case: RecordCase) -> None:
    """check()'s finding names the same stream, offset, segment file and byte as the read's error."""
    frame = pick_record(history, case.place)
    case.damage(segment_path(store_copy, STREAM, frame.segment_no), frame)
    with open_store(store_copy, read_only=True) as reader:
        _, error = read_until_damage(reader, STREAM)
        [finding] = [f for f in reader.check().findings if f.problem == FindingKind.DAMAGED_RECORD]
    assert (finding.stream_id, finding.offset, finding.segment, finding.position) == (
        error.stream_id,
        error.offset,
        error.segment,
        error.position,
    )


def test_repair_logs_the_cut_before_the_reindex(history: History, store_copy: Path) -> None:
    """recovery_log lists a truncation's actions in the order they were taken: cut, then re-index."""
    frame = pick_record(history, PLACES[0])
    flip_byte(segment_path(store_copy, STREAM, frame.segment_no), frame.position + HEADER_SIZE + 5)
    with open_store(store_copy) as store:
        store.repair(truncate=True)
        actions = [e.action for e in store.recovery_log(STREAM)]
        stamps = [e.at_ns for e in store.recovery_log(STREAM)]
    assert actions == [RecoveryAction.TRUNCATED] * (actions.count(RecoveryAction.TRUNCATED)) + [
        RecoveryAction.MARKED_CUT,
        RecoveryAction.REINDEXED,
    ]
    assert stamps == sorted(stamps)


def test_rebuild_does_not_cut_a_forged_record_followed_by_a_good_one(history: History, store_copy: Path) -> None:
    """Damage is never cut automatically: in the last batch of the active segment, a record whose
    checksum was forged and that a valid record follows is damage, not a torn write. A rebuild
    (here on open, the catalog being gone) indexes up to it (the records of its batch before it
    verify, so they are kept), fences the stream and cuts nothing."""
    last_batch = history.batches_in(history.last_segment)[-1]
    victim = last_batch[-2]
    segment = segment_path(store_copy, STREAM, history.last_segment)
    forged(HEADER_SIZE + 5)(segment, victim)
    delete_catalog(store_copy)
    before = stream_bytes(store_copy)
    with open_store(store_copy) as store:
        damage = store.damaged_streams()[StreamId(STREAM)]
        assert (damage.stream_id, damage.offset, damage.segment, damage.position) == (
            STREAM,
            victim.offset,
            segment,
            victim.position,
        )
        assert_hint_names_repair(damage)
        assert stream_bytes(store_copy) == before
        assert genesis_records(store, STREAM) == history.records[STREAM][: victim.offset]


# --- damaged, missing and extra segment files ------------------------------------------------------------


def test_deleted_middle_segment(history: History, store_copy: Path) -> None:
    """A missing sealed segment fences the stream; repair moves every later segment aside."""
    missing = drop_segment(store_copy, STREAM, 2)
    cut = history.segment_first_offset(2)

    with open_store(store_copy, read_only=True) as reader:
        records, error = read_until_damage(reader, STREAM)
        assert records == history.records[STREAM][:cut]
        assert_error(error, CatalogMismatch, offset=cut, segment=missing, position=None)

    before = stream_bytes(store_copy)
    with open_store(store_copy) as store:
        damage = store.damaged_streams()[StreamId(STREAM)]
        assert_error(damage, CatalogMismatch, offset=cut, segment=missing, position=0)
        with pytest.raises(CatalogMismatch) as refused:
            store.append(STREAM, [b"refused"])
        assert_error(refused.value, CatalogMismatch, offset=cut, segment=missing, position=0)
        records, error = read_until_damage(store, STREAM)
        assert records == history.records[STREAM][:cut]
        assert_error(error, CatalogMismatch, offset=cut, segment=missing, position=None)
        assert genesis_records(store, OTHER) == history.records[OTHER]

        report = store.check()
        assert findings_of(report) == [
            (STREAM, FindingKind.MISSING_SEGMENT, RepairKind.ISOLATE, cut, missing, None),
            (STREAM, FindingKind.CATALOG_AHEAD, RepairKind.REINDEX, cut, None, None),
        ]
        assert plan_of(report) == [(RepairKind.ISOLATE, STREAM)]

        repaired = store.repair()
        resume = history.segment_first_offset(3)
        committed = len(history.records[STREAM])
        assert log_rows(store.recovery_log()) == Counter(
            [
                (RecoveryAction.ISOLATED, 2, 0, None, cut, resume, None),
                (RecoveryAction.REINDEXED, None, None, None, 0, committed + 1, None),
            ]
        )
        assert assert_no_bytes_lost(before, store_copy, repair_marker_bytes(store)) == {}
        assert repaired.after is not None
        assert repaired.after.ok
        assert_isolated(store, history, cut, resume, committed)


def test_deleted_middle_segment_truncated_on_request(history: History, store_copy: Path) -> None:
    """``truncate``: every later segment is moved aside and the lost offsets are marked cut."""
    drop_segment(store_copy, STREAM, 2)
    cut = history.segment_first_offset(2)
    committed = len(history.records[STREAM])
    before = stream_bytes(store_copy)
    with open_store(store_copy) as store:
        store.repair(truncate=True)
        expected = expected_cut(before, cut=cut, committed=committed, cut_segment=None)
        assert log_rows(store.recovery_log()) == expected.log
        assert assert_no_bytes_lost(before, store_copy, repair_marker_bytes(store)) == expected.quarantine
        assert_cut(store, history, cut, committed)


def test_truncated_sealed_segment(history: History, store_copy: Path) -> None:
    """A sealed segment cut short inside its last batch: repair cuts that batch and every later segment."""
    last_batch = history.batches_in(2)[-1]
    first = last_batch[0]
    segment = segment_path(store_copy, STREAM, 2)
    tear_tail(segment, segment.stat().st_size - (first.position + 50))  # inside the batch's first header
    cut = first.offset

    with open_store(store_copy, read_only=True) as reader:
        records, error = read_until_damage(reader, STREAM)
        assert records == history.records[STREAM][:cut]
        assert_error(error, TruncatedRecord, offset=cut, segment=segment, position=first.position)

    before = stream_bytes(store_copy)
    with open_store(store_copy) as store:
        # The writer's open names the first record the missing bytes held.
        damage = store.damaged_streams()[StreamId(STREAM)]
        assert_error(damage, CatalogMismatch, offset=cut, segment=segment, position=first.position)
        with pytest.raises(CatalogMismatch) as refused:
            store.append(STREAM, [b"refused"])
        assert refused.value is damage
        assert genesis_records(store, OTHER) == history.records[OTHER]

        report = store.check()
        assert findings_of(report) == [
            (STREAM, FindingKind.DAMAGED_RECORD, RepairKind.ISOLATE, cut, segment, first.position),
            (STREAM, FindingKind.CATALOG_AHEAD, RepairKind.REINDEX, cut, None, None),
        ]
        assert plan_of(report) == [(RepairKind.ISOLATE, STREAM)]

        store.repair()
        resume = history.segment_first_offset(3)
        committed = len(history.records[STREAM])
        assert log_rows(store.recovery_log()) == Counter(
            [
                (RecoveryAction.ISOLATED, 2, first.position, None, cut, resume, None),
                (RecoveryAction.REINDEXED, None, None, None, 0, committed + 1, None),
            ]
        )
        assert assert_no_bytes_lost(before, store_copy, repair_marker_bytes(store)) == {}
        assert_isolated(store, history, cut, resume, committed)


def foreign_segment(history: History) -> bytes:
    """A valid-looking segment file that is not this stream's: the other stream's first segment."""
    return segment_path(history.path, OTHER, 0).read_bytes()


def test_extra_foreign_segment_after_the_last(history: History, store_copy: Path) -> None:
    """A valid-looking segment file of another stream after the last one: reported, then moved aside."""
    full = len(history.records[STREAM])
    extra_no = history.last_segment + 1
    extra = add_extra_segment(store_copy, STREAM, foreign_segment(history))
    assert extra == segment_path(store_copy, STREAM, extra_no)

    before = stream_bytes(store_copy)
    with open_store(store_copy) as store:
        damage = store.damaged_streams()[StreamId(STREAM)]
        assert type(damage) is IntegrityError
        assert (damage.stream_id, damage.offset, damage.segment) == (STREAM, full, extra)
        assert_hint_names_repair(damage)
        with pytest.raises(IntegrityError) as refused:
            store.append(STREAM, [b"refused"])
        assert refused.value is damage
        # The catalog never knew the file, so everything committed still reads.
        assert genesis_records(store, STREAM) == history.records[STREAM]

        report = store.check()
        # (its byte position: test_foreign_segment_is_reported_at_its_first_byte)
        assert [f[:5] for f in findings_of(report)] == [
            (STREAM, FindingKind.DAMAGED_RECORD, RepairKind.ISOLATE, full, extra)
        ]
        assert plan_of(report) == [(RepairKind.ISOLATE, STREAM)]
        assert report.plan()[0].effect.startswith(f"cuts an unacknowledged tail from offset {full},")

        store.repair()
        kept = quarantine_name(extra_no, 0)
        assert log_rows(store.recovery_log()) == Counter(
            [
                (RecoveryAction.QUARANTINED, extra_no, 0, len(before[segment_rel(extra_no)]), full, None, str(kept)),
                (RecoveryAction.REINDEXED, None, None, None, 0, full, None),
            ]
        )
        assert assert_no_bytes_lost(before, store_copy) == {kept: foreign_segment(history)}
        assert_recovered(store, history, full)
        assert_appends_continue(store, history, full)


def test_foreign_segment_is_reported_at_its_first_byte(history: History, store_copy: Path) -> None:
    """The place named for a foreign segment is its first record: byte 0 of that file."""
    extra = add_extra_segment(store_copy, STREAM, foreign_segment(history))
    with open_store(store_copy, read_only=True) as reader:
        [finding] = reader.check().findings
    assert (finding.segment, finding.position) == (extra, 0)
    with open_store(store_copy) as store:
        damage = store.damaged_streams()[StreamId(STREAM)]
    assert (damage.segment, damage.position) == (extra, 0)


def test_extra_segment_after_a_gap(history: History, store_copy: Path) -> None:
    """A segment file numbered past a gap: a missing segment; repair moves it aside."""
    full = len(history.records[STREAM])
    gap_no = history.last_segment + 1
    extra = add_extra_segment(store_copy, STREAM, foreign_segment(history), segment_no=gap_no + 1)

    before = stream_bytes(store_copy)
    with open_store(store_copy) as store:
        damage = store.damaged_streams()[StreamId(STREAM)]
        assert_error(damage, CatalogMismatch, offset=full, segment=extra, position=None)
        with pytest.raises(CatalogMismatch):
            store.append(STREAM, [b"refused"])
        assert genesis_records(store, STREAM) == history.records[STREAM]

        report = store.check()
        missing = segment_path(store_copy, STREAM, gap_no)
        assert findings_of(report) == [(STREAM, FindingKind.MISSING_SEGMENT, RepairKind.ISOLATE, full, missing, None)]
        assert plan_of(report) == [(RepairKind.ISOLATE, STREAM)]

        store.repair()
        kept = quarantine_name(gap_no + 1, 0)
        assert log_rows(store.recovery_log()) == Counter(
            [
                (
                    RecoveryAction.QUARANTINED,
                    gap_no + 1,
                    0,
                    len(before[segment_rel(gap_no + 1)]),
                    None,
                    None,
                    str(kept),
                ),
                (RecoveryAction.REINDEXED, None, None, None, 0, full, None),
            ]
        )
        assert assert_no_bytes_lost(before, store_copy) == {kept: foreign_segment(history)}
        assert_recovered(store, history, full)
        assert_appends_continue(store, history, full)


def test_extra_garbage_segment_is_quarantined_on_open(history: History, store_copy: Path) -> None:
    """A segment file of garbage after the last one (a rotation that crashed mid-write) is moved
    aside by the writer's open, logged, with nothing left for repair to do."""
    full = len(history.records[STREAM])
    garbage = bytes((i * 37 + 11) % 251 for i in range(3000))
    assert b"HLR1" not in garbage
    extra_no = history.last_segment + 1
    add_extra_segment(store_copy, STREAM, garbage)
    with open_store(store_copy, read_only=True) as reader:
        report = reader.check()
        assert findings_of(report) == [
            (STREAM, FindingKind.TORN_TAIL, RepairKind.REINDEX, full, segment_path(store_copy, STREAM, extra_no), 0)
        ]

    before = stream_bytes(store_copy)
    with open_store(store_copy) as store:
        kept = quarantine_name(extra_no, 0)
        assert log_rows(store.recovery_log()) == Counter(
            [(RecoveryAction.QUARANTINED, extra_no, 0, len(garbage), None, None, str(kept))]
        )
        assert assert_no_bytes_lost(before, store_copy) == {kept: garbage}
        assert store.repair().applied == []
        assert_recovered(store, history, full)
        assert_appends_continue(store, history, full)


# --- the catalog -----------------------------------------------------------------------------------------


def damage_catalog(path: Path, how: str) -> bytes | None:
    """Damage the catalog ``how``; returns the catalog file as damaged (None: deleted)."""
    if how == "deleted":
        delete_catalog(path)
        return None
    if how == "truncated":
        truncate_catalog(path)
    elif how == "corrupt":
        corrupt_catalog(path)
    elif how in ("another application's", "application id lost"):
        conn = apsw.Connection(str(catalog_path(path)))
        conn.pragma("application_id", 0x12345678 if how == "another application's" else 0)
        conn.pragma("wal_checkpoint", "TRUNCATE")
        conn.close()
    else:
        replace_catalog(path, bytes((i * 131 + 7) % 256 for i in range(20_000)))
    return catalog_path(path).read_bytes()


BAD_CATALOGS = {
    # how: (finding, what the writer's rebuild log entry says, what a reader's first use raises)
    "deleted": (FindingKind.CATALOG_MISSING, "catalog file missing", None),
    "truncated": (FindingKind.CATALOG_UNUSABLE, "malformed", CatalogUnusable),
    "corrupt": (FindingKind.CATALOG_UNUSABLE, "quick_check", CatalogError),
    "garbage": (FindingKind.CATALOG_UNUSABLE, "not a database", CatalogUnusable),
    "another application's": (FindingKind.CATALOG_UNUSABLE, "not a hybridlog catalog", CatalogUnusable),
    "application id lost": (FindingKind.CATALOG_UNUSABLE, "not a hybridlog catalog", CatalogUnusable),
}


@pytest.mark.parametrize("how", list(BAD_CATALOGS))
def test_dry_run_check_reports_a_bad_catalog(store_copy: Path, how: str) -> None:
    """A read-only store's check() reports a missing or unusable catalog, plans a rebuild, changes nothing."""
    damaged = damage_catalog(store_copy, how)
    before = stream_bytes(store_copy)
    with open_store(store_copy, read_only=True) as reader:
        report = reader.check()
    assert [(f.stream_id, f.problem, f.repair) for f in report.findings] == [
        (None, BAD_CATALOGS[how][0], RepairKind.REBUILD_CATALOG)
    ]
    assert plan_of(report) == [(RepairKind.REBUILD_CATALOG, None)]
    assert stream_bytes(store_copy) == before
    if damaged is not None:
        assert catalog_path(store_copy).read_bytes() == damaged


@pytest.mark.parametrize("how", [h for h, (_, _, error) in BAD_CATALOGS.items() if error is not None])
def test_reader_of_an_unusable_catalog_gets_a_catalog_error(store_copy: Path, how: str) -> None:
    """A reader cannot rebuild; it raises the exact CatalogError instead of returning anything."""
    damage_catalog(store_copy, how)
    with pytest.raises(CatalogError) as caught, open_store(store_copy, read_only=True) as reader:
        genesis_records(reader, STREAM)
    assert type(caught.value) is BAD_CATALOGS[how][2]


@pytest.mark.parametrize("how", list(BAD_CATALOGS))
def test_bad_catalog_is_rebuilt_when_a_writer_opens(history: History, store_copy: Path, how: str) -> None:
    """The writer's open moves the bad file aside, rebuilds every stream from its segments, logs it,
    and the rebuilt catalog equals the one the writer had built, row for row."""
    damaged = damage_catalog(store_copy, how)
    before = stream_bytes(store_copy)
    with open_store(store_copy) as store:
        rebuilt, *reindexed = store.recovery_log()
        assert (rebuilt.stream_id, rebuilt.action) == (None, RecoveryAction.REBUILT_CATALOG)
        assert BAD_CATALOGS[how][1] in rebuilt.found
        if damaged is None:
            assert rebuilt.kept_as is None
            assert list(store_copy.glob("*.aside")) == []
        else:
            assert rebuilt.kept_as is not None
            assert re.fullmatch(r"catalog\.db\.\d+\.aside", rebuilt.kept_as)
            assert (store_copy / rebuilt.kept_as).read_bytes() == damaged
        assert [(e.stream_id, e.action, e.first_offset, e.next_offset) for e in reindexed] == [
            (sid, RecoveryAction.REINDEXED, 0, len(history.records[sid])) for sid in STREAMS
        ]
        assert assert_no_bytes_lost(before, store_copy) == {}
        assert store.repair().applied == []
        full = len(history.records[STREAM])
        assert_recovered(store, history, full)
        assert_appends_continue(store, history, full)


def test_stale_catalog_is_caught_up_on_open(history: History, store_copy: Path) -> None:
    """An older copy of the catalog (restored from a backup): readers see only what it knew; the
    writer's open adopts every batch the segments hold past it, segment by segment, and logs it."""
    rollback_catalog(store_copy, history.stale_catalog)
    stale = {sid: history.stale_views[sid].next_offset for sid in STREAMS}

    with open_store(store_copy, read_only=True) as reader:
        for sid in STREAMS:
            assert genesis_records(reader, sid) == history.records[sid][: stale[sid]]
        report = reader.check()
        assert findings_of(report) == [
            (sid, FindingKind.CATALOG_BEHIND, RepairKind.REINDEX, stale[sid], None, None) for sid in STREAMS
        ]
        assert plan_of(report) == [(RepairKind.REINDEX, sid) for sid in STREAMS]

    before = stream_bytes(store_copy)
    with open_store(store_copy) as store:
        expected: Counter[LogRow] = Counter()
        for sid in STREAMS:
            known = {no: size for no, _, _, size, _, _ in history.stale_views[sid].segments}
            for no, first, nxt, size, _, _ in history.views[sid].segments:
                start = known.get(no, 0)
                if start < size:
                    expected[(RecoveryAction.ADOPTED, no, start, size, max(first, stale[sid]), nxt, None)] += 1
        assert log_rows(store.recovery_log()) == expected
        assert assert_no_bytes_lost(before, store_copy) == {}
        assert store.repair().applied == []
        full = len(history.records[STREAM])
        assert_recovered(store, history, full)
        assert_appends_continue(store, history, full)


def cut_active_to_a_batch_boundary(history: History, path: Path) -> tuple[int, Path, int]:
    """Cut the active segment back to the end of its first batch; returns (cut, segment, size)."""
    second = history.batches_in(history.last_segment)[1][0]
    segment = segment_path(path, STREAM, history.last_segment)
    tear_tail(segment, segment.stat().st_size - second.position)
    return second.offset, segment, second.position


def drop_active_segment(history: History, path: Path) -> tuple[int, Path, int]:
    """Delete the active segment; returns (cut, segment, size)."""
    segment = drop_segment(path, STREAM, history.last_segment)
    return history.segment_first_offset(history.last_segment), segment, 0


AHEAD: dict[str, tuple[Callable[[History, Path], tuple[int, Path, int]], type[IntegrityError], bool]] = {
    # how: (damage, what a read raises at the cut, whether that error has a byte position)
    "active segment cut to a batch boundary": (cut_active_to_a_batch_boundary, TruncatedRecord, True),
    "active segment deleted": (drop_active_segment, CatalogMismatch, False),
}


@pytest.mark.parametrize("how", list(AHEAD))
def test_catalog_ahead_of_the_segments(history: History, store_copy: Path, how: str) -> None:
    """The segments end at an earlier batch than the catalog says: reported, the stream fenced;
    repair rolls the catalog back to what the segments hold (nothing to cut)."""
    damage, read_error, has_position = AHEAD[how]
    cut, segment, size = damage(history, store_copy)

    before = stream_bytes(store_copy)
    with open_store(store_copy) as store:
        # The writer's open names the first record the missing bytes held.
        fenced = store.damaged_streams()[StreamId(STREAM)]
        assert_error(fenced, CatalogMismatch, offset=cut, segment=segment, position=size)
        with pytest.raises(CatalogMismatch) as refused:
            store.append(STREAM, [b"refused"])
        assert refused.value is fenced
        records, error = read_until_damage(store, STREAM)
        assert records == history.records[STREAM][:cut]
        assert_error(error, read_error, offset=cut, segment=segment, position=size if has_position else None)
        assert genesis_records(store, OTHER) == history.records[OTHER]

        report = store.check()
        assert findings_of(report) == [(STREAM, FindingKind.CATALOG_AHEAD, RepairKind.REINDEX, cut, None, None)]
        assert plan_of(report) == [(RepairKind.REINDEX, STREAM)]
        full = len(history.records[STREAM])
        lost = full - cut
        assert report.plan()[0].effect == (
            f"re-indexes the stream from its segments; {lost:,} committed records are lost: their bytes are gone"
            f" from the segments; a cut marker takes offset {full}: offsets {cut}..{full - 1} are never used again"
        )

        store.repair()
        assert log_rows(store.recovery_log()) == Counter(
            [
                (RecoveryAction.MARKED_CUT, None, None, None, cut, full, None),
                (RecoveryAction.REINDEXED, None, None, None, 0, full + 1, None),
            ]
        )
        assert assert_no_bytes_lost(before, store_copy, repair_marker_bytes(store)) == {}
        assert genesis_records(store, OTHER) == history.records[OTHER]
        assert_cut(store, history, cut, full)


def test_catalog_from_another_longer_history(history: History, store_copy: Path) -> None:
    """A catalog copied from a different, longer store: both streams fenced on open, reads never
    return a record the chain does not verify, and repair re-indexes both from their own segments."""
    rollback_catalog(store_copy, history.foreign_catalog)
    before = stream_bytes(store_copy)
    with open_store(store_copy) as store:
        fenced = store.damaged_streams()
        assert sorted(fenced) == list(STREAMS)
        for sid, error in fenced.items():
            assert type(error) is CatalogMismatch
            assert error.stream_id == sid
            assert error.segment is not None
            assert error.segment.parent == stream_path(store_copy, sid)
            assert_hint_names_repair(error)
        for stream_id in STREAMS:
            # Reads follow the foreign catalog's segment boundaries until a file starts with a
            # record other than the one it claims; every record returned before that verified.
            real = [first for _, first, *_ in history.views[stream_id].segments]
            claimed = [first for _, first, *_ in history.foreign_views[stream_id].segments]
            n = next(i for i, (a, b) in enumerate(zip(real, claimed, strict=False)) if a != b)
            assert claimed[n] < real[n], "the foreign store's bigger records make its segments hold fewer"
            records, error = read_until_damage(store, stream_id)
            assert records == history.records[stream_id][: claimed[n]]
            assert type(error) is IntegrityError
            assert (error.offset, error.segment, error.position) == (
                claimed[n],
                segment_path(store_copy, stream_id, n),
                0,
            )

        report = store.check()
        assert findings_of(report) == [
            (sid, FindingKind.CATALOG_AHEAD, RepairKind.REINDEX, len(history.records[sid]), None, None)
            for sid in STREAMS
        ]
        assert plan_of(report) == [(RepairKind.REINDEX, sid) for sid in STREAMS]

        # The catalog claimed more records than the segments hold: whatever its history was, the
        # offsets it gave out are never given out again.
        store.repair()
        claimed_next = {stream: history.foreign_views[stream].next_offset for stream in STREAMS}
        held = {stream: len(history.records[stream]) for stream in STREAMS}
        assert log_rows(store.recovery_log()) == Counter(
            row
            for stream in STREAMS
            for row in (
                (RecoveryAction.MARKED_CUT, None, None, None, held[stream], claimed_next[stream], None),
                (RecoveryAction.REINDEXED, None, None, None, 0, claimed_next[stream] + 1, None),
            )
        )
        marked = {**repair_marker_bytes(store, STREAM), **repair_marker_bytes(store, OTHER)}
        assert assert_no_bytes_lost(before, store_copy, marked) == {}
        for stream in STREAMS:
            assert_cut(store, history, held[stream], claimed_next[stream], stream)


def test_the_nothing_lost_oracle_fails_when_a_byte_is_lost(tmp_path: Path) -> None:
    """assert_no_bytes_lost accepts a cut kept in the right quarantine file, and nothing else."""
    segment = segment_path(tmp_path, STREAM, 3)
    segment.parent.mkdir(parents=True)
    segment.write_bytes(bytes(range(100)))
    before = stream_bytes(tmp_path)
    kept = tmp_path / quarantine_name(3, 60)

    tear_tail(segment, 40)
    kept.write_bytes(bytes(range(60, 100)))
    assert assert_no_bytes_lost(before, tmp_path) == {quarantine_name(3, 60): bytes(range(60, 100))}

    kept.write_bytes(bytes(range(61, 100)))  # one byte short
    with pytest.raises(AssertionError):
        assert_no_bytes_lost(before, tmp_path)
    kept.unlink()
    (tmp_path / quarantine_name(3, 59)).write_bytes(bytes(range(59, 100)))  # kept from the wrong place
    with pytest.raises(AssertionError):
        assert_no_bytes_lost(before, tmp_path)


# --- index rows that disagree with the segments ----------------------------------------------------


@pytest.mark.parametrize(
    "edit",
    [
        "DELETE FROM batches WHERE stream_id = ? AND first_offset = 10",
        "UPDATE batches SET position = position + 1 WHERE stream_id = ? AND first_offset = 10",
        "DELETE FROM checkpoints WHERE stream_id = ?",
    ],
)
def test_check_compares_index_and_checkpoint_rows_with_the_segments(
    history: History, store_copy: Path, edit: str
) -> None:
    """A catalog whose offset-index or checkpoint rows were changed by hand is found, then reindexed."""
    split_batches(store_copy)  # one row per record, so one record's row can be changed
    conn = apsw.Connection(str(store_copy / "catalog.db"))
    conn.execute(edit, (STREAM,))
    conn.close()
    with open_store(store_copy, read_only=True) as reader:
        report = reader.check()
    assert [(f.stream_id, f.problem) for f in report.findings] == [(STREAM, FindingKind.CATALOG_MISMATCH)]
    assert plan_of(report) == [(RepairKind.REINDEX, STREAM)]
    with open_store(store_copy) as store:
        store.repair()
        assert store.check().ok
        assert catalog_view(store, STREAM) == history.views[STREAM]
