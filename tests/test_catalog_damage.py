"""A damaged catalog is checked against the segments, never trusted into returning fewer records.

The segments are the truth; the catalog is an index of them. Each test here damages the catalog
file for real (an SQL edit made with a separate connection, as someone with ``sqlite3`` would,
or flipped bytes) and checks the promise: every read returns exactly the records the segments
hold or raises a StorageError (never a raw exception, never fewer records in silence), and
``hybridlog verify`` names the disagreement and exits 3.

* a lost ``streams`` row: reads and ``hybridlog read`` raise CatalogMismatch naming the repair,
  ``verify`` says so; while a writer's first batch of a new stream is in flight it is no error;
* a wrong timestamp in the offset index: ``read_between`` and ``read --since/--until`` raise
  instead of dropping records, and ``verify`` names the offset and both timestamps;
* a moved or missing global position: ``read_global`` raises instead of skipping or reordering;
* a sampled sweep of single-byte flips over the whole catalog file.
"""

from __future__ import annotations

import contextlib
import gc
import random
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from hybridlog import CatalogMismatch, CheckpointPolicy, GlobalRecord, Record, Storage, StorageError, verify_store
from hybridlog.cli import EXIT_DAMAGE, cli
from hybridlog.layout import CATALOG_FILE
from hybridlog.testing.clocks import make_clock
from hybridlog.testing.damage import (
    age_segments,
    catalog_path,
    edit_catalog,
    genesis_events,
    genesis_records,
    split_batches,
)

T0 = 1_700_000_000_000_000_000
STREAMS = (1, 2, 7)


def run(*args: str) -> tuple[int, str, str, BaseException | None]:
    result = CliRunner().invoke(cli, list(args))
    raised = result.exception if not isinstance(result.exception, SystemExit) else None
    return result.exit_code, result.stdout, result.stderr, raised


class SetClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


def build_store(data_dir: Path, batches: int = 90, seed: int = 1) -> None:
    """Three streams appended in interleaved batches (so their global positions interleave), with
    checkpoints, several segment files each, and timestamps that advance in uneven steps."""
    clock = SetClock()
    rng = random.Random(seed)
    policy = CheckpointPolicy.every(10, on_close=False)
    with Storage(data_dir, clock=clock, checkpoint_policy=policy, max_segment_size=4096) as store:
        for i in range(batches):
            clock.now += rng.choice([0, 5, 100])
            sid = rng.choice([1, 1, 2, 7])
            size = rng.randrange(1, 4)
            store.append(sid, [b"%d-%d-" % (sid, i) + b"x" * rng.randrange(0, 120) for _ in range(size)])
    age_segments(data_dir)


class Truth:
    """What the segments hold, read before any damage."""

    def __init__(self, data_dir: Path) -> None:
        with Storage(data_dir, read_only=True) as store:
            self.records: dict[int, list[Record]] = {sid: genesis_records(store, sid) for sid in STREAMS}
            self.global_order: list[GlobalRecord] = store.read_global(1, 1 << 30)
        assert all(len(r) > 20 for r in self.records.values())
        assert len(self.global_order) == sum(map(len, self.records.values()))

    def window(self, sid: int, since: int | None, until: int | None) -> list[Record]:
        return [
            r
            for r in self.records[sid]
            if (since is None or r.timestamp_ns >= since) and (until is None or r.timestamp_ns < until)
        ]

    def windows(self, sid: int) -> list[tuple[int | None, int | None]]:
        times = sorted({r.timestamp_ns for r in self.records[sid]})
        third = len(times) // 3
        return [
            (times[0], times[-1]),
            (times[third], times[2 * third]),
            (times[len(times) // 2], None),
            (None, times[len(times) // 2]),
            (times[third] + 1, times[third] + 2),
        ]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Truth]:
    """One store built for the whole module; each test works on its own copy."""
    data_dir = tmp_path_factory.mktemp("pristine") / "store"
    build_store(data_dir)
    return data_dir, Truth(data_dir)


@pytest.fixture
def store(pristine: tuple[Path, Truth], tmp_path: Path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(pristine[0], copy)
    return copy


@pytest.fixture
def truth(pristine: tuple[Path, Truth]) -> Truth:
    return pristine[1]


# --- a lost streams row --------------------------------------------------------------------------


def test_a_lost_stream_row_is_an_error_not_an_empty_stream(store: Path, truth: Truth) -> None:
    assert edit_catalog(store, "DELETE FROM streams WHERE stream_id = 1") == 1
    with Storage(store, read_only=True) as reader:
        for read in (
            lambda: reader.read_records_from_genesis(1, 0, 1 << 30),
            lambda: reader.read_from(1, 0, 1 << 20),
            lambda: reader.read_records_verified(1, 5, 1 << 30),
            lambda: reader.read_from_genesis(1, 5, 1 << 30),
            lambda: reader.read_between(1, None, None),
            lambda: reader.read_global(1, 1 << 30),
            lambda: reader.read_global(1, 1 << 30, stream_id=1),
        ):
            with pytest.raises(CatalogMismatch) as caught:
                read()
            assert caught.value.stream_id == 1
            assert "hybridlog repair" in str(caught.value)
        assert genesis_records(reader, 2) == truth.records[2]  # the other streams read as before

    code, out, err, raised = run("read", str(store), "--stream", "1")
    assert (code, out, raised) == (EXIT_DAMAGE, "", None)
    assert "no row for this stream" in err
    assert "Traceback" not in err

    code, out, _, raised = run("verify", str(store))
    assert raised is None
    assert code == EXIT_DAMAGE
    assert "stream 1: streams row: the catalog has none" in out
    with Storage(store, read_only=True) as reader:
        report = verify_store(reader)
    assert [v.stream_id for v in report.streams if not v.ok] == [1]

    # the hint's command puts it right, and every record is there again
    code, _, err, raised = run("repair", str(store), "--yes")
    assert (code, raised) == (0, None), err
    with Storage(store, read_only=True) as reader:
        assert genesis_records(reader, 1) == truth.records[1]
    assert run("verify", str(store))[0] == 0


def test_a_new_streams_first_batch_in_flight_is_waited_for_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between writing a new stream's first segment and committing its catalog rows, a reader sees
    records on disk the catalog does not list yet: it waits for the commit and reads the batch."""
    data_dir = tmp_path / "store"
    writer = Storage(data_dir, clock=make_clock(), checkpoint_policy=CheckpointPolicy.explicit())
    writer.append(1, [b"first stream"])
    reader = Storage(data_dir, read_only=True)
    written, release, reader_waits = threading.Event(), threading.Event(), threading.Event()
    real_sync_all = writer._writer._sync_all
    real_sleep = time.sleep

    def pause_before_commit(writers: Any) -> None:  # step 4 of the write path: after the write
        real_sync_all(writers)
        written.set()
        assert release.wait(30)

    def sleeping(seconds: float) -> None:
        reader_waits.set()
        real_sleep(seconds)

    writer._writer._sync_all = pause_before_commit  # type: ignore[method-assign]
    appending = threading.Thread(target=writer.append, args=(9, [b"new-0", b"new-1"]))
    appending.start()
    assert written.wait(30)
    results: list[object] = []
    monkeypatch.setattr(time, "sleep", sleeping)  # the reader's poll for the commit
    try:
        reading = threading.Thread(target=lambda: results.append(_outcome(lambda: genesis_events(reader, 9))))
        reading.start()
        assert reader_waits.wait(30)  # the reader found the segment and no row, and is waiting
        release.set()
        appending.join(30)
        reading.join(30)
    finally:
        release.set()
        reader.close()
        writer.close()
    assert results == [[b"new-0", b"new-1"]]


def _outcome(read: Callable[[], object]) -> object:
    try:
        return read()
    except StorageError as e:
        return e


# --- a damaged time index ------------------------------------------------------------------------


def _move_timestamp(store: Path, sid: int, offset: int, to: int) -> None:
    split_batches(store)  # one catalog row per record, so one record's time can be moved
    changed = edit_catalog(
        store, "UPDATE batches SET timestamp_ns = ? WHERE stream_id = ? AND first_offset = ?", (to, sid, offset)
    )
    assert changed == 1


def test_a_timestamp_raised_in_the_index_never_shortens_a_window(store: Path, truth: Truth) -> None:
    records = truth.records[1]
    middle = records[len(records) // 2]
    last = records[-1].timestamp_ns
    _move_timestamp(store, 1, middle.offset, last + 10**9)  # a binary search now meets a time far ahead
    later = next(r for r in records if r.timestamp_ns > middle.timestamp_ns + 50)
    windows = [
        (records[0].timestamp_ns, later.timestamp_ns + 1),  # ends after the damaged row
        (later.timestamp_ns, last),  # starts after it
        (later.timestamp_ns, None),
        (None, later.timestamp_ns + 1),
    ]
    with Storage(store, read_only=True) as reader:
        for since, until in windows:
            got = _outcome(partial(reader.read_between, 1, since, until, 1 << 30))
            if isinstance(got, CatalogMismatch):
                assert got.stream_id == 1
                assert "time index" in got.message
            else:
                assert got == truth.window(1, since, until), (since, until)
        with pytest.raises(CatalogMismatch):  # the window the old code cut short in silence
            reader.read_between(1, records[0].timestamp_ns, later.timestamp_ns + 1, max_bytes=1 << 30)

    code, out, err, raised = run(
        "read",
        str(store),
        "--stream",
        "1",
        "--since",
        _iso(records[0].timestamp_ns),
        "--until",
        _iso(later.timestamp_ns + 1),
    )
    assert (code, raised) == (EXIT_DAMAGE, None)
    assert "time index" in err
    code, out, _, raised = run("verify", str(store))
    assert (code, raised) == (EXIT_DAMAGE, None)
    assert f"stream 1 offset {middle.offset}: offset index row" in out
    assert f"timestamp {last + 10**9}" in out
    assert f"timestamp {middle.timestamp_ns}" in out


def test_a_timestamp_lowered_in_the_index_never_shortens_a_window(store: Path, truth: Truth) -> None:
    records = truth.records[2]
    middle = records[len(records) // 2]
    _move_timestamp(store, 2, middle.offset, T0 - 1)
    with Storage(store, read_only=True) as reader:
        for since, until in truth.windows(2):
            got = _outcome(partial(reader.read_between, 2, since, until, 1 << 30))
            if isinstance(got, CatalogMismatch):
                assert got.stream_id == 2
            else:
                assert got == truth.window(2, since, until), (since, until)
        assert open_segment_files() == []  # a window read stopped by the mismatch closed its walk
    assert run("verify", str(store))[0] == EXIT_DAMAGE


def _iso(ns: int) -> str:
    seconds, nanos = divmod(ns, 10**9)
    from datetime import UTC, datetime

    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z"


# --- damaged global positions --------------------------------------------------------------------


def _global_reads(reader: Storage) -> Iterator[tuple[str, Callable[[], list[GlobalRecord]]]]:
    yield "all", lambda: reader.read_global(1, 1 << 30)

    def paged() -> list[GlobalRecord]:
        got: list[GlobalRecord] = []
        at = 1
        while page := reader.read_global(at, 300):
            got += page
            at = page[-1].global_position + 1
        return got

    yield "paged", paged
    for sid in STREAMS:
        yield f"stream {sid}", partial(reader.read_global, 1, 1 << 30, stream_id=sid)


def _position(truth: Truth, sid: int, offset: int) -> int:
    return next(g.global_position for g in truth.global_order if (g.record.stream_id, g.record.offset) == (sid, offset))


def _move_past_the_mark(store: Path, truth: Truth) -> None:
    split_batches(store)
    edit_catalog(store, "UPDATE batches SET global_position = 100000 WHERE stream_id = 1 AND first_offset = 5")


def _swap_two(store: Path, truth: Truth) -> None:
    third, eighth = _position(truth, 1, 3), _position(truth, 1, 8)
    split_batches(store)
    move = "UPDATE batches SET global_position = ? WHERE global_position = ?"
    for to, at in ((10**9, third), (third, eighth), (eighth, 10**9)):  # through a free position
        assert edit_catalog(store, move, (to, at)) == 1


def _delete_one(store: Path, truth: Truth) -> None:
    split_batches(store)
    edit_catalog(store, "DELETE FROM batches WHERE stream_id = 1 AND first_offset = 5")


@pytest.mark.parametrize(
    ("damage", "verify_says"),
    [
        pytest.param(
            _move_past_the_mark, "stream 1 offset 5: global position: the catalog has 100000", id="moved-past-the-mark"
        ),
        pytest.param(_swap_two, "stream 1 offset 4: global position", id="two-swapped"),
        pytest.param(_delete_one, "stream 1 offset 5: offset index: the catalog has no row", id="row-deleted"),
    ],
)
def test_a_damaged_global_position_is_an_error_not_a_skipped_record(
    store: Path, truth: Truth, damage: Callable[[Path, Truth], None], verify_says: str
) -> None:
    damage(store, truth)
    with Storage(store, read_only=True) as reader:
        for name, read in _global_reads(reader):
            if name in ("stream 2", "stream 7"):  # reads that never meet stream 1's rows
                assert read() == [g for g in truth.global_order if f"stream {g.record.stream_id}" == name]
                continue
            with pytest.raises(CatalogMismatch) as caught:
                read()
            assert "global positions" in caught.value.message or "offset index" in caught.value.message, name
    code, out, _, raised = run("verify", str(store))
    assert (code, raised) == (EXIT_DAMAGE, None)
    assert verify_says in out


# --- byte flips anywhere in the catalog ----------------------------------------------------------


def _reads(reader: Storage, truth: Truth) -> Iterator[tuple[str, Callable[[], object], object]]:
    for sid in STREAMS:
        records = truth.records[sid]
        yield f"genesis {sid}", partial(reader.read_records_from_genesis, sid, 0, 1 << 30), records
        for offset in (0, len(records) // 2, len(records) - 1):
            events = [r.payload for r in records[offset:] if r.kind == 0]
            yield f"read_from {sid}@{offset}", partial(reader.read_from, sid, offset, 1), events[:1]
        for since, until in truth.windows(sid):
            yield (
                f"between {sid} {since}..{until}",
                partial(reader.read_between, sid, since, until, 1 << 30),
                truth.window(sid, since, until),
            )
        expected = [g for g in truth.global_order if g.record.stream_id == sid]
        yield f"global {sid}", partial(reader.read_global, 1, 1 << 30, stream_id=sid), expected
    for name, read in _global_reads(reader):
        if name in ("all", "paged"):
            yield f"global {name}", read, truth.global_order


def _flip_and_check(store: Path, original: bytes, truth: Truth, position: int, mask: int) -> None:
    damaged = bytearray(original)
    damaged[position] ^= mask
    catalog_path(store).write_bytes(bytes(damaged))
    for suffix in ("-wal", "-shm"):
        (store / (CATALOG_FILE + suffix)).unlink(missing_ok=True)
    where = f"byte {position} ^ {mask:#04x}"
    failed = []
    try:
        with Storage(store, read_only=True) as reader:
            for name, read, expected in _reads(reader, truth):
                try:
                    got = read()
                except StorageError:
                    failed.append(name)
                    continue
                assert got == expected, f"{where}: {name} returned other records than the segments hold"
    except StorageError:
        failed.append("open")
    code, _, err, raised = run("verify", str(store))
    assert raised is None, f"{where}: verify raised {raised!r}"
    assert code in (0, EXIT_DAMAGE) or (code == 1 and "Error:" in err), f"{where}: verify exit {code}: {err}"
    if failed:
        assert code != 0, f"{where}: verify exits 0, yet these reads failed: {failed}"


def _sweep(tmp_path: Path, pristine: tuple[Path, Truth], flips: int, seed: int) -> None:
    store = tmp_path / "store"
    shutil.copytree(pristine[0], store)
    original = catalog_path(store).read_bytes()
    rng = random.Random(seed)
    for _ in range(flips):
        _flip_and_check(store, original, pristine[1], rng.randrange(len(original)), rng.randrange(1, 256))


def test_sampled_catalog_byte_flips_give_the_true_records_or_a_typed_error(
    tmp_path: Path, pristine: tuple[Path, Truth]
) -> None:
    _sweep(tmp_path, pristine, flips=200, seed=20240509)


@pytest.mark.slow
def test_many_catalog_byte_flips_give_the_true_records_or_a_typed_error(
    tmp_path: Path, pristine: tuple[Path, Truth]
) -> None:
    _sweep(tmp_path, pristine, flips=2500, seed=9)


def test_a_writer_refuses_to_append_over_a_head_the_catalog_lost(store: Path, truth: Truth) -> None:
    """Without its streams, records and checkpoints rows, a stream would take offset 0 again, on
    top of the records its segment holds. The segments row still says where the stream ends."""
    for table in ("streams", "batches", "checkpoints"):
        assert edit_catalog(store, f"DELETE FROM {table} WHERE stream_id = 1") > 0  # noqa: S608 (a constant)
    before = {p: p.read_bytes() for p in sorted(store.glob("streams/1/*"))}
    with Storage(store, clock=make_clock(T0 + 10**12), checkpoint_policy=CheckpointPolicy.explicit()) as writer:
        with pytest.raises(CatalogMismatch) as caught:
            writer.append(1, [b"would be offset 0 again"])
        assert caught.value.stream_id == 1
        writer.append(2, [b"other streams still take appends"])
    assert {p: p.read_bytes() for p in sorted(store.glob("streams/1/*"))} == before


def open_segment_files() -> list[str]:
    """The segment files this process has open (from /proc/self/fd)."""
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):  # the listing's own descriptor is gone by now
            target = str(fd.readlink())
            if target.endswith(".seg"):
                found.append(target)
    return found


@pytest.mark.parametrize("position", [-1, -(2**40), 2**62])
def test_a_record_position_no_file_can_have_is_a_typed_error_and_leaves_no_file_open(
    tmp_path: Path, position: int
) -> None:
    """A catalog byte flip can give a record a byte position no segment has (negative, or past any
    file): reading it raises a StorageError, and the segment file opened to read it is closed
    (before, a failed seek left it open until the garbage collector found it)."""
    store_dir = tmp_path / "store"
    with Storage(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as writer:
        writer.append(1, [b"a", b"b", b"c"])
    split_batches(store_dir)
    assert edit_catalog(
        store_dir, "UPDATE batches SET position = ? WHERE stream_id = 1 AND first_offset = 0", (position,)
    )
    with Storage(store_dir, read_only=True, verified_cache_records=0) as reader:
        for _ in range(3):
            with pytest.raises(StorageError):
                reader.read_from(1, 0, 100)
        assert open_segment_files() == []
    gc.collect()  # an unclosed file would warn here, and warnings are errors
