"""Damaged segment files: every change is detected, torn tails are cut aside, nothing wrong is returned.

Contracts tested here:

* flipping any single byte of any segment file makes a full verified read of that stream raise an
  ``IntegrityError`` naming the stream and the damaged segment file, through a read-only store and
  through a reopened writer (whose recovery runs first); the other stream still reads exactly what
  was appended;
* a flip in bytes the catalog has not committed yet (a crash between the segment write and the
  catalog commit) never makes a read return anything but whole batches that were really appended;
* a torn last batch is cut into a ``*.quarantine`` file holding exactly the cut bytes, complete
  batches before it are adopted, and appends continue the chain;
* damage that recovery may not repair on its own (a missing segment, a segment cut short below
  the catalog's end, a bad record followed by good ones, a flipped length field) is reported and
  nothing is cut;
* an empty segment file left by a crash during rotation does not block later appends.

The damage is real: bytes are flipped and files cut or removed with the helpers ``flip_byte``,
``tear_tail`` and ``drop_segment`` from ``hybridlog.testing.damage``.
"""

from __future__ import annotations

import itertools
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.vendor.pretty import RepresentationPrinter

from hybridlog import (
    CatalogMismatch,
    ChainHash,
    CheckpointPolicy,
    CompressionKind,
    IntegrityError,
    Offset,
    Record,
    RecordKind,
    Storage,
    StreamId,
    TruncatedRecord,
)
from hybridlog.layout import QUARANTINE_SUFFIX, segment_path, stream_path
from hybridlog.record import FLAG_BATCH_END, MIN_HEADER_SIZE, header_size_of, parse_header
from hybridlog.segment import SegmentReader
from hybridlog.testing.damage import (
    active_segment,
    drop_segment,
    flip_byte,
    frame_batch,
    genesis_events,
    genesis_records,
    quarantine_files,
    tear_tail,
)

SEGMENT_SIZE = 4096
STREAMS = (0, 7)
TAIL_STREAM = 0
START_NS = 1_700_000_000_000_000_000
COMPRESSIONS = [CompressionKind.NONE, CompressionKind.ZSTD]


# --- building stores ---------------------------------------------------------------------------------


def counting_clock(start: int) -> Callable[[], int]:
    counter = itertools.count(start, 1_000)
    return lambda: next(counter)


def open_store(
    path: Path, compression: CompressionKind, *, read_only: bool = False, start_ns: int = START_NS
) -> Storage:
    """The store with the settings every test here uses: 4 KiB segments, a checkpoint every 5 events."""
    return Storage(
        path,
        checkpoint_policy=CheckpointPolicy.every(5),
        max_segment_size=SEGMENT_SIZE,
        compression=compression,
        read_only=read_only,
        clock=counting_clock(start_ns),
    )


def event_payload(rng: random.Random, stream_id: int, batch: int, index: int) -> bytes:
    """A JSON-ish event, partly random so zstd shrinks it but cannot make it tiny."""
    noise = rng.randbytes(rng.randint(60, 220)).hex()
    return f'{{"stream":{stream_id},"batch":{batch},"event":{index},"noise":"{noise}"}}'.encode()


def fill_store(path: Path, compression: CompressionKind, *, batches: int = 12, seed: int = 1) -> dict[int, list[bytes]]:
    """Append ``batches`` batches of 1-4 events to each stream, interleaved; returns the events per stream."""
    rng = random.Random(seed)
    appended: dict[int, list[bytes]] = {sid: [] for sid in STREAMS}
    with open_store(path, compression) as store:
        for b in range(batches):
            for sid in STREAMS:
                events = [event_payload(rng, sid, b, i) for i in range(rng.randint(1, 4))]
                store.append(sid, events)
                appended[sid].extend(events)
    return appended


def records_of(path: Path, compression: CompressionKind, stream_id: int) -> list[Record]:
    with open_store(path, compression, read_only=True) as store:
        return genesis_records(store, stream_id)


def global_mark(path: Path, compression: CompressionKind) -> int:
    with open_store(path, compression, read_only=True) as store:
        return store.last_global_position()


@dataclass(frozen=True, repr=False)
class Template:
    """A built store, copied for each example, and what it must read back as.

    ``committed`` are the records the catalog knows, per stream. ``tail`` are batches framed onto
    stream 0's active segment after the catalog's end (a crash before the catalog commit), starting
    at byte ``tail_start`` of ``tail_file``; a writer adopts them, a reader does not see them.
    """

    path: Path
    compression: CompressionKind
    committed: dict[int, list[Record]]
    tail: list[list[Record]]
    tail_file: Path
    tail_start: int
    tail_batch_ends: list[int]  # byte position in ``tail_file`` just after each pending batch
    segment_files: list[Path]  # relative to ``path``

    def __repr__(self) -> str:
        return f"Template({self.path}, {self.compression.value})"

    def _repr_pretty_(self, printer: RepresentationPrinter, cycle: bool) -> None:
        printer.text(repr(self))  # keep Hypothesis reports short


def build_template(path: Path, compression: CompressionKind) -> Template:
    appended = fill_store(path, compression)
    committed = {sid: records_of(path, compression, sid) for sid in STREAMS}
    for sid in STREAMS:
        assert [r.payload for r in committed[sid] if r.kind is RecordKind.EVENT] == appended[sid]
        assert any(r.kind is RecordKind.CHECKPOINT for r in committed[sid])
        assert len(list(stream_path(path, sid).glob("*.seg"))) >= 3, "want several segments per stream"

    last = committed[TAIL_STREAM][-1]
    tail_bytes = bytearray()
    tail: list[list[Record]] = []
    ends: list[int] = []
    offset, prev = last.offset + 1, last.hash
    position = global_mark(path, compression) + 1
    for b, size in enumerate((2, 1, 3)):
        payloads = [f"pending batch {b} event {i}".encode() * 3 for i in range(size)]
        batch = frame_batch(
            tail_bytes,
            stream_id=TAIL_STREAM,
            offset=offset,
            global_position=position + offset - last.offset - 1,
            prev=prev,
            timestamp_ns=last.timestamp_ns + b + 1,
            payloads=payloads,
            compression=compression,
        ).records
        tail.append(batch)
        ends.append(len(tail_bytes))
        offset, prev = offset + size, batch[-1].hash
    tail_file = active_segment(path, TAIL_STREAM)
    tail_start = tail_file.stat().st_size
    with tail_file.open("ab") as f:
        f.write(tail_bytes)
    files = sorted(p.relative_to(path) for p in path.glob("streams/*/*.seg"))
    batch_ends = [tail_start + end for end in ends]
    return Template(path, compression, committed, tail, tail_file.relative_to(path), tail_start, batch_ends, files)


@pytest.fixture(scope="module", params=COMPRESSIONS, ids=[c.value for c in COMPRESSIONS])
def template(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Template:
    compression: CompressionKind = request.param
    return build_template(tmp_path_factory.mktemp(f"template-{compression.value}") / "store", compression)


@dataclass(frozen=True)
class Flip:
    """One damaged byte in a copy of the template."""

    store: Path
    file: Path  # absolute, inside ``store``
    stream_id: int
    position: int
    in_tail: bool  # in bytes the catalog has not committed
    damaged: bytes  # the whole damaged file, as the flip left it
    # it may leave every record as it was: it toggled only a frame's batch-end flag, or a bit of a
    # compressed payload, which can decode to the same bytes (docs/format.md section 3)
    may_change_nothing: bool = False


def copy_and_flip(template: Template, workdir: Path, file_index: int, position: int, mask: int, pending: bool) -> Flip:
    """Copy the template and flip one byte: anywhere, or (``pending``) in the uncommitted tail."""
    store = workdir / "store"
    shutil.copytree(template.path, store)
    rel = template.tail_file if pending else template.segment_files[file_index % len(template.segment_files)]
    path = store / rel
    start = template.tail_start if pending else 0
    position = start + position % (path.stat().st_size - start)
    may_change_nothing = harmless_place(path.read_bytes(), position, mask)
    flip_byte(path, position, mask)
    in_tail = rel == template.tail_file and position >= template.tail_start
    return Flip(store, path, int(rel.parent.name), position, in_tail, path.read_bytes(), may_change_nothing)


FLAGS_BYTE = 6  # where a frame's flags are (both formats)


def harmless_place(data: bytes, position: int, mask: int) -> bool:
    """Whether flipping ``mask`` at ``position`` of the segment ``data`` may leave every record as it
    was: the batch-end flag of a format-2 frame, or a byte of a compressed format-2 payload."""
    at = 0
    while at < len(data):
        header = parse_header(data[at : at + header_size_of(data[at : at + MIN_HEADER_SIZE])])
        if at <= position < at + header.frame_size:
            if header.global_position is None:
                return False  # format 1: its checksum covers every byte
            payload = at + header.header_size
            return (position == at + FLAGS_BYTE and mask == FLAG_BATCH_END) or (
                header.compressed and position >= payload
            )
        at += header.frame_size
    return False


@contextmanager
def fresh_dir() -> Iterator[Path]:
    """A new empty directory for one Hypothesis example (a test's fixtures are shared by all of them)."""
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


def assert_names_the_damage(error: IntegrityError, flip: Flip) -> None:
    assert error.stream_id == flip.stream_id
    assert error.segment == flip.file
    assert f"stream {flip.stream_id}" in str(error)
    assert str(flip.file) in str(error)


def tail_batch_of(template: Template, position: int) -> int:
    """Which pending batch the byte at ``position`` of the tail file belongs to."""
    return next(b for b, end in enumerate(template.tail_batch_ends) if position < end)


def assert_appended_after(before: list[Record], after: list[Record], payload: bytes, result: tuple[int, bytes]) -> None:
    """``after`` is ``before`` plus one appended event (and any checkpoint the policy added after it)."""
    next_offset, head = result
    assert after[: len(before)] == before
    added = after[len(before) :]
    assert [r.payload for r in added if r.kind is RecordKind.EVENT] == [payload]
    assert added[0].prev_hash == (before[-1].hash if before else bytes(32))
    assert (after[-1].hash, len(after)) == (head, next_offset)


def flat(batches: list[list[Record]]) -> list[Record]:
    return [r for batch in batches for r in batch]


flips = {
    "file_index": st.integers(min_value=0, max_value=10_000),
    "position": st.integers(min_value=0, max_value=2**40),
    "mask": st.integers(min_value=1, max_value=255),
    # Uniform positions rarely land in the small uncommitted tail, which recovery has to judge.
    "pending": st.booleans(),
}


# --- any flipped byte --------------------------------------------------------------------------------


@given(**flips)
def test_any_flipped_byte_fails_a_read_only_verified_read(
    template: Template, file_index: int, position: int, mask: int, pending: bool
) -> None:
    """Read-only: a flip in committed bytes raises, naming stream and segment; nothing else changes."""
    with fresh_dir() as workdir:
        check_flip_read_only(template, copy_and_flip(template, workdir, file_index, position, mask, pending))


@given(**flips)
def test_any_flipped_byte_fails_a_reopened_writers_verified_read(
    template: Template, file_index: int, position: int, mask: int, pending: bool
) -> None:
    """Writer: recovery runs first; reads raise on damage or return exactly what was appended."""
    with fresh_dir() as workdir:
        check_flip_writer(template, copy_and_flip(template, workdir, file_index, position, mask, pending))


def check_flip_read_only(template: Template, flip: Flip) -> None:
    with open_store(flip.store, template.compression, read_only=True) as store:
        for sid in STREAMS:
            if sid == flip.stream_id and not flip.in_tail:
                try:
                    got = genesis_records(store, sid)
                except IntegrityError as e:
                    assert_names_the_damage(e, flip)
                    with pytest.raises(IntegrityError):
                        genesis_events(store, sid)
                else:
                    # only where the format lets a flip change nothing a record says, and then nothing did
                    assert flip.may_change_nothing
                    assert got == template.committed[sid]
            else:
                # Bytes past the catalog's end are invisible to a reader.
                assert genesis_records(store, sid) == template.committed[sid]


def check_flip_writer(template: Template, flip: Flip) -> None:
    with open_store(flip.store, template.compression, start_ns=START_NS * 2) as store:
        for sid in STREAMS:
            if sid == flip.stream_id and not flip.in_tail:
                try:
                    got = genesis_records(store, sid)
                except IntegrityError as e:
                    assert_names_the_damage(e, flip)
                else:  # as in the read-only check (recovery adopts the pending tail as ever)
                    assert flip.may_change_nothing
                    assert got == template.committed[sid] + (flat(template.tail) if sid == TAIL_STREAM else [])
            elif sid == flip.stream_id:
                check_tail_flip(template, store, flip)
            else:
                expected = template.committed[sid] + (flat(template.tail) if sid == TAIL_STREAM else [])
                assert genesis_records(store, sid) == expected
                # The undamaged stream also takes new appends and reads them back.
                result = store.append(sid, [b"after the flip"])
                assert_appended_after(expected, genesis_records(store, sid), b"after the flip", result)


def check_tail_flip(template: Template, store: Storage, flip: Flip) -> None:
    """A flip in uncommitted bytes: recovery adopts only whole, undamaged batches before it (or none).

    Recovery then either cuts the damaged batch and everything after it into a quarantine file
    (no valid frame follows the damage) or reports the damage and refuses appends.
    """
    damaged_batch = tail_batch_of(template, flip.position)
    committed = template.committed[TAIL_STREAM]
    records = genesis_records(store, TAIL_STREAM)  # the first use runs recovery
    allowed = [committed + flat(template.tail[:n]) for n in range(damaged_batch + 1)]
    assert records in allowed
    quarantined = quarantine_files(flip.store, TAIL_STREAM)
    if quarantined:
        cut_at = flip.file.stat().st_size
        assert cut_at <= flip.position
        [kept] = quarantined
        assert kept.name == f"{flip.file.name}.{cut_at:020d}{QUARANTINE_SUFFIX}"
        assert kept.read_bytes() == flip.damaged[cut_at:]
        result = store.append(TAIL_STREAM, [b"after the flip"])
        assert_appended_after(records, genesis_records(store, TAIL_STREAM), b"after the flip", result)
    else:
        assert flip.file.read_bytes() == flip.damaged  # nothing cut
        with pytest.raises(IntegrityError) as caught:
            store.append(TAIL_STREAM, [b"refused"])
        assert_names_the_damage(caught.value, flip)
        assert genesis_records(store, TAIL_STREAM) == records


# --- torn writes -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pending:
    """A store with one complete and one torn batch written past the catalog's end of stream 0."""

    committed: list[Record]
    adopted: list[Record]  # the complete batch
    torn: list[Record]  # the batch whose write did not finish
    torn_frame_sizes: list[int]
    segment: Path
    segment_before: bytes  # the segment as the catalog knows it
    complete_bytes: bytes
    torn_bytes: bytes


def write_pending(store_dir: Path, compression: CompressionKind) -> Pending:
    """Build a store, then frame two batches onto its active segment without telling the catalog."""
    fill_store(store_dir, compression, batches=4)
    committed = records_of(store_dir, compression, TAIL_STREAM)
    last = committed[-1]
    complete, torn = bytearray(), bytearray()
    position = global_mark(store_dir, compression) + 1
    adopted = frame_batch(
        complete,
        stream_id=TAIL_STREAM,
        offset=last.offset + 1,
        global_position=position,
        prev=last.hash,
        timestamp_ns=last.timestamp_ns + 1,
        payloads=[b"complete batch, event 0", b"complete batch, event 1"],
        compression=compression,
    ).records
    torn_batch = frame_batch(
        torn,
        stream_id=TAIL_STREAM,
        offset=last.offset + 3,
        global_position=position + 2,
        prev=adopted[-1].hash,
        timestamp_ns=last.timestamp_ns + 2,
        payloads=[b"torn batch, event %d " % i * 20 for i in range(3)],
        compression=compression,
    )
    segment = active_segment(store_dir, TAIL_STREAM)
    before = segment.read_bytes()
    segment.write_bytes(before + complete + torn)
    return Pending(
        committed, adopted, torn_batch.records, torn_batch.frame_sizes, segment, before, bytes(complete), bytes(torn)
    )


CUT_POINTS: dict[str, Callable[[list[int]], int]] = {
    "one byte": lambda sizes: 1,
    "inside the first header": lambda sizes: 50,
    "after the first header": lambda sizes: 104,
    "inside the first payload": lambda sizes: 110,
    "one byte short of the first record": lambda sizes: sizes[0] - 1,
    "after the first record": lambda sizes: sizes[0],
    "after two records, no batch end": lambda sizes: sizes[0] + sizes[1],
    "one byte short of the batch": lambda sizes: sum(sizes) - 1,
}


@pytest.mark.parametrize("compression", COMPRESSIONS, ids=[c.value for c in COMPRESSIONS])
@pytest.mark.parametrize("cut_point", list(CUT_POINTS))
def test_torn_last_batch_is_quarantined_and_complete_batches_adopted(
    store_dir: Path, compression: CompressionKind, cut_point: str
) -> None:
    """Crash before the catalog commit, mid-write: adopt the whole batch, keep the torn bytes aside."""
    pending = write_pending(store_dir, compression)
    keep = CUT_POINTS[cut_point](pending.torn_frame_sizes)
    cut = tear_tail(pending.segment, len(pending.torn_bytes) - keep)
    assert cut == pending.torn_bytes[keep:]

    with open_store(store_dir, compression, start_ns=START_NS * 2) as store:
        expected = pending.committed + pending.adopted
        assert genesis_records(store, TAIL_STREAM) == expected
        assert store.latest_chain_hash(TAIL_STREAM) == pending.adopted[-1].hash
        assert pending.segment.read_bytes() == pending.segment_before + pending.complete_bytes
        [kept] = quarantine_files(store_dir, TAIL_STREAM)
        assert kept.read_bytes() == pending.torn_bytes[:keep]
        assert kept.name.startswith(pending.segment.name)

        result = store.append_batch(TAIL_STREAM, [b"after recovery"], len(expected), expected[-1].hash)
        records = genesis_records(store, TAIL_STREAM)
        assert_appended_after(expected, records, b"after recovery", result)
    with open_store(store_dir, compression, read_only=True) as reader:
        assert genesis_records(reader, TAIL_STREAM)[: len(records)] == records


@pytest.mark.parametrize("compression", COMPRESSIONS, ids=[c.value for c in COMPRESSIONS])
def test_complete_batches_past_the_catalog_are_adopted_without_quarantine(
    store_dir: Path, compression: CompressionKind
) -> None:
    """Crash after the segment write, before the catalog commit: every whole batch is adopted."""
    pending = write_pending(store_dir, compression)
    with open_store(store_dir, compression, start_ns=START_NS * 2) as store:
        expected = pending.committed + pending.adopted + pending.torn
        assert genesis_records(store, TAIL_STREAM) == expected
        assert quarantine_files(store_dir, TAIL_STREAM) == []
        result = store.append(TAIL_STREAM, [b"next"])
        assert_appended_after(expected, genesis_records(store, TAIL_STREAM), b"next", result)


@pytest.mark.parametrize("compression", COMPRESSIONS, ids=[c.value for c in COMPRESSIONS])
def test_zeros_after_a_torn_batch_are_quarantined_with_it(store_dir: Path, compression: CompressionKind) -> None:
    """A torn batch followed by zeros (space the file system allocated) is cut whole, zeros included."""
    pending = write_pending(store_dir, compression)
    keep = pending.torn_frame_sizes[0] + 20
    tear_tail(pending.segment, len(pending.torn_bytes) - keep)
    with pending.segment.open("ab") as f:
        f.write(bytes(300))
    with open_store(store_dir, compression, start_ns=START_NS * 2) as store:
        assert genesis_records(store, TAIL_STREAM) == pending.committed + pending.adopted
        [kept] = quarantine_files(store_dir, TAIL_STREAM)
        assert kept.read_bytes() == pending.torn_bytes[:keep] + bytes(300)
        assert pending.segment.read_bytes() == pending.segment_before + pending.complete_bytes


@pytest.mark.parametrize("compression", COMPRESSIONS, ids=[c.value for c in COMPRESSIONS])
def test_bad_record_before_good_ones_in_the_tail_is_reported_not_cut(
    store_dir: Path, compression: CompressionKind
) -> None:
    """A damaged frame with valid frames after it is damage, not a torn write: report it, cut nothing."""
    pending = write_pending(store_dir, compression)
    damaged_at = len(pending.segment_before) + 60  # inside the first record of the complete batch
    flip_byte(pending.segment, damaged_at)
    on_disk = pending.segment.read_bytes()
    with open_store(store_dir, compression, start_ns=START_NS * 2) as store:
        with pytest.raises(IntegrityError) as caught:
            store.append(TAIL_STREAM, [b"refused"])
        assert caught.value.stream_id == TAIL_STREAM
        assert caught.value.segment == pending.segment
        assert caught.value.position == len(pending.segment_before)
        # Committed data still reads, exactly; nothing was cut or adopted.
        assert genesis_records(store, TAIL_STREAM) == pending.committed
    assert pending.segment.read_bytes() == on_disk
    assert quarantine_files(store_dir, TAIL_STREAM) == []


# --- damage recovery must not repair -----------------------------------------------------------------


@pytest.mark.parametrize("which", ["first", "middle", "active"])
def test_a_dropped_segment_is_reported(store_dir: Path, which: str) -> None:
    """A missing segment file fails reads and refuses appends, naming the file; the other stream is fine."""
    appended = fill_store(store_dir, CompressionKind.NONE)
    count = len(list(stream_path(store_dir, TAIL_STREAM).glob("*.seg")))
    segment_no = {"first": 0, "middle": count // 2, "active": count - 1}[which]
    other = STREAMS[1]
    other_records = records_of(store_dir, CompressionKind.NONE, other)
    path = drop_segment(store_dir, TAIL_STREAM, segment_no)

    with open_store(store_dir, CompressionKind.NONE, read_only=True) as reader:
        with pytest.raises(CatalogMismatch) as caught:
            genesis_records(reader, TAIL_STREAM)
        assert (caught.value.stream_id, caught.value.segment) == (TAIL_STREAM, path)
        assert genesis_records(reader, other) == other_records

    with open_store(store_dir, CompressionKind.NONE, start_ns=START_NS * 2) as store:
        with pytest.raises(CatalogMismatch) as refused:
            store.append(TAIL_STREAM, [b"refused"])
        assert (refused.value.stream_id, refused.value.segment) == (TAIL_STREAM, path)
        with pytest.raises(CatalogMismatch):
            genesis_records(store, TAIL_STREAM)
        assert [r.payload for r in genesis_records(store, other) if r.kind is RecordKind.EVENT] == appended[other]
    assert not path.exists()
    assert quarantine_files(store_dir, TAIL_STREAM) == []


def test_committed_bytes_cut_off_are_reported_not_repaired(store_dir: Path) -> None:
    """A segment shorter than the catalog says: TruncatedRecord for readers, appends refused, no cut."""
    fill_store(store_dir, CompressionKind.NONE)
    segment = active_segment(store_dir, TAIL_STREAM)
    tear_tail(segment, 10)
    size = segment.stat().st_size

    with open_store(store_dir, CompressionKind.NONE, read_only=True) as reader:
        with pytest.raises(TruncatedRecord) as caught:
            genesis_records(reader, TAIL_STREAM)
        assert (caught.value.stream_id, caught.value.segment) == (TAIL_STREAM, segment)

    with open_store(store_dir, CompressionKind.NONE, start_ns=START_NS * 2) as store:
        with pytest.raises(CatalogMismatch) as refused:
            store.append(TAIL_STREAM, [b"refused"])
        assert (refused.value.stream_id, refused.value.segment) == (TAIL_STREAM, segment)
    assert segment.stat().st_size == size
    assert quarantine_files(store_dir, TAIL_STREAM) == []


def test_helpers_do_what_they_say(tmp_path: Path) -> None:
    """flip_byte changes exactly one byte; tear_tail cuts and returns exactly the tail."""
    path = tmp_path / "f"
    path.write_bytes(bytes(range(10)))
    flip_byte(path, 3, 0x80)
    assert path.read_bytes() == bytes([0, 1, 2, 3 ^ 0x80, 4, 5, 6, 7, 8, 9])
    assert tear_tail(path, 4) == bytes([6, 7, 8, 9])
    assert path.read_bytes() == bytes([0, 1, 2, 3 ^ 0x80, 4, 5])
    with pytest.raises(AssertionError):
        flip_byte(path, 6)


def test_records_compare_field_by_field() -> None:
    """The oracle comparisons above rely on Record equality covering every field."""
    record = Record(StreamId(0), Offset(0), RecordKind.EVENT, 1, ChainHash(bytes(32)), ChainHash(bytes(32)), b"x")
    assert record == replace(record)
    assert record != replace(record, payload=b"y")
    assert record != replace(record, hash=ChainHash(b"\x01" * 32))


def test_rebuild_does_not_cut_acknowledged_records_after_a_flipped_length(store_dir: Path) -> None:
    """A flipped stored_len that points past the end of the file is damage, not a torn write.

    The records after the damaged one are valid and were acknowledged; ``rebuild_index`` must
    report the damage (IntegrityError naming the segment and byte) and cut nothing.
    """
    fill_store(store_dir, CompressionKind.ZSTD)
    segment = active_segment(store_dir, TAIL_STREAM)
    with SegmentReader(segment) as reader:
        frames = list(reader.frames())
    victim = next(f for f in frames if f.header.compressed and f is not frames[-1])
    stored_len_field = victim.position + 32
    flip_byte(segment, stored_len_field + 2, 0x01)  # stored_len grows by 64 KiB: past the end of the file
    damaged = segment.read_bytes()

    with open_store(store_dir, CompressionKind.ZSTD, start_ns=START_NS * 2) as store:
        with pytest.raises(IntegrityError) as caught:
            store.rebuild_index(TAIL_STREAM)
        assert (caught.value.stream_id, caught.value.segment) == (TAIL_STREAM, segment)
        assert caught.value.position == victim.position
    assert segment.exists()
    assert segment.read_bytes() == damaged
    assert quarantine_files(store_dir, TAIL_STREAM) == []


def test_an_empty_segment_left_by_a_rotation_crash_does_not_block_appends(store_dir: Path) -> None:
    """A crash right after rotation created the next segment file, before writing to it.

    The empty file holds no records and was never in the catalog; recovery must not let it block
    the next rotation (which creates that file exclusively), and the stream keeps taking appends.
    """
    fill_store(store_dir, CompressionKind.NONE, batches=4)
    committed = records_of(store_dir, CompressionKind.NONE, TAIL_STREAM)
    last = active_segment(store_dir, TAIL_STREAM)
    empty = last.with_name(f"{int(last.stem) + 1:020d}.seg")
    empty.touch()

    with open_store(store_dir, CompressionKind.NONE, start_ns=START_NS * 2) as store:
        records = committed
        for n in range(12):  # enough to fill the active segment and rotate past it
            payload = f"after the crash {n} ".encode() * 20
            result = store.append(TAIL_STREAM, [payload])
            after = genesis_records(store, TAIL_STREAM)
            assert_appended_after(records, after, payload, result)
            records = after
        assert store.segment_count(TAIL_STREAM) > int(last.stem) + 1


def test_an_empty_first_segment_left_by_a_crash_does_not_block_a_new_stream(store_dir: Path) -> None:
    """A crash during a new stream's first append, after its segment 0 was created but not written."""
    fill_store(store_dir, CompressionKind.NONE, batches=1)
    new_stream = 9
    empty = segment_path(store_dir, new_stream, 0)
    empty.parent.mkdir(parents=True)
    empty.touch()

    with open_store(store_dir, CompressionKind.NONE, start_ns=START_NS * 2) as store:
        result = store.append(new_stream, [b"first event"])
        assert_appended_after([], genesis_records(store, new_stream), b"first event", result)
