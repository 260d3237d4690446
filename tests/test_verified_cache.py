"""Point reads served from verified runs (hybridlog/verified_cache.py).

The contract: with the cache on, ``read_from`` returns exactly what a full verified walk returns,
and a record changed on disk after it was verified is never returned (the read falls back to the
walk, which raises the precise integrity error).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridlog import (
    CheckpointPolicy,
    CompressionKind,
    IntegrityError,
    InvalidConfiguration,
    RecordKind,
    RecordsCut,
    Storage,
    StreamId,
    walk,
)
from hybridlog.layout import segment_path
from hybridlog.record import FRAME_OVERHEAD, HEADER_SIZE, record_hash
from hybridlog.testing.damage import flip_byte, genesis_records, segment_files
from hybridlog.verified_cache import VerifiedRun, VerifiedRunCache

STREAM = 3


def fill(store: Storage, batches: int, batch_size: int, rng: random.Random) -> list[bytes]:
    """Append ``batches`` batches of random events of varying sizes; returns the payloads in order."""
    payloads: list[bytes] = []
    for _ in range(batches):
        batch = [rng.randbytes(rng.randrange(0, 300)) for _ in range(batch_size)]
        store.append(STREAM, batch)
        payloads += batch
    return payloads


def expected_read(payloads: list[bytes], offset_to_event: Mapping[int, int], offset: int, limit: int) -> list[bytes]:
    """The read_from rule on the plain list: events from ``offset``, at least one, then up to ``limit``."""
    out: list[bytes] = []
    total = 0
    for o in sorted(k for k in offset_to_event if k >= offset):
        payload = payloads[offset_to_event[o]]
        if out and total + len(payload) > limit:
            break
        out.append(payload)
        total += len(payload)
    return out


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    every=st.sampled_from([None, 1, 7, 50]),
    compressed=st.booleans(),
    cache_records=st.sampled_from([1, 40, 100_000]),
)
def test_point_reads_match_the_plain_model(
    tmp_path_factory: pytest.TempPathFactory, seed: int, every: int | None, compressed: bool, cache_records: int
) -> None:
    rng = random.Random(seed)
    store_dir = tmp_path_factory.mktemp("store")
    policy = CheckpointPolicy(every_records=every, on_close=False)
    compression = CompressionKind.ZSTD if compressed else CompressionKind.NONE
    with Storage(
        store_dir,
        checkpoint_policy=policy,
        compression=compression,
        max_segment_size=4096,
        verified_cache_records=cache_records,
    ) as store:
        payloads = fill(store, rng.randrange(1, 12), rng.randrange(1, 20), rng)
        records = genesis_records(store, STREAM)
        events = [r for r in records if r.kind == RecordKind.EVENT]
        offset_to_event = {int(r.offset): i for i, r in enumerate(events)}
        end = records[-1].offset + 1
        for _ in range(60):  # the same offsets come back, so later reads hit remembered runs
            offset = rng.randrange(0, end + 2)
            limit = rng.choice([0, 1, 100, 1000, 10_000])
            assert store.read_from(STREAM, offset, limit) == expected_read(payloads, offset_to_event, offset, limit)


def populated(store_dir: Path, **options: object) -> Storage:
    """A store of 40 events (a checkpoint after every 10th) read once at offsets 5 and 25."""
    store = Storage(store_dir, checkpoint_policy=CheckpointPolicy(every_records=10, on_close=False), **options)  # type: ignore[arg-type]
    store.append(STREAM, [b"event %02d" % i for i in range(40)])
    assert store.read_from(STREAM, 5, 0) == [b"event 05"]
    assert store.read_from(STREAM, 25, 0) == [b"event 23"]  # offsets 10 and 21 hold checkpoints
    return store


def frame_position(store: Storage, offset: int) -> int:
    entry = store.offset_index(STREAM).lookup(offset)
    assert entry is not None
    return entry.position


@pytest.mark.parametrize("field", ["payload", "hash", "header"])
def test_a_record_changed_after_it_was_verified_is_never_returned(store_dir: Path, field: str) -> None:
    store = populated(store_dir)
    position = frame_position(store, 6)
    at = {"payload": HEADER_SIZE + 2, "hash": 72 + 5, "header": 26}[field]
    flip_byte(segment_files(store_dir, STREAM)[0], position + at)
    with pytest.raises(IntegrityError) as caught:
        store.read_from(STREAM, 6, 0)
    assert caught.value.offset == 6
    store.close()


def test_a_cut_segment_after_caching_falls_back_to_the_walk(store_dir: Path) -> None:
    store = populated(store_dir)
    segment = segment_files(store_dir, STREAM)[0]
    with segment.open("r+b") as f:
        f.truncate(frame_position(store, 7) + FRAME_OVERHEAD)
    assert store.read_from(STREAM, 6, 0) == [b"event 06"]  # still whole
    with pytest.raises(IntegrityError):
        store.read_from(STREAM, 7, 0)
    store.close()


def test_a_reader_sees_what_the_writer_appends_after_it_cached(store_dir: Path) -> None:
    writer = populated(store_dir)
    with Storage(store_dir, read_only=True) as reader:
        assert reader.read_from(STREAM, 33, 0) == [b"event 30"]
        writer.append(STREAM, [b"late %d" % i for i in range(5)])
        assert reader.read_from(STREAM, 33, 10_000)[-5:] == [b"late %d" % i for i in range(5)]
    writer.close()


def counting_hashes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the record hashes computed by reads (a walk computes one per record it passes)."""
    counter = [0]

    def counted(*args: Any, **kwargs: Any) -> bytes:
        counter[0] += 1
        return record_hash(*args, **kwargs)

    class CountedHasher:  # the fast walk hashes a plain frame's header as it lies, with one reused hasher
        def __init__(self, data: bytes = b"") -> None:
            self.inner = blake3.blake3(data)

        def reset(self) -> None:
            self.inner.reset()

        def update(self, data: bytes) -> CountedHasher:
            self.inner.update(data)
            return self

        def digest(self) -> bytes:
            counter[0] += 1  # one per record hashed
            return bytes(self.inner.digest())

    monkeypatch.setattr("hybridlog.walk.record_hash", counted)
    monkeypatch.setattr("hybridlog.walk.blake3", SimpleNamespace(blake3=CountedHasher))
    compiled_hash = walk._record_hash  # the compiled helper's, where it is used (native.py)
    if compiled_hash is not None:

        def counted_compiled(*args: Any) -> bytes:
            counter[0] += 1
            return compiled_hash(*args)  # type: ignore[no-any-return]

        monkeypatch.setattr("hybridlog.walk._record_hash", counted_compiled)
    monkeypatch.setattr("hybridlog.walk._walk_plain", None)  # walks hash through what is counted above
    return counter


def test_a_readers_runs_outlive_appends_but_not_a_repair(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = populated(store_dir)
    with Storage(store_dir, read_only=True) as reader:
        assert reader.read_from(STREAM, 9, 0) == [b"event 09"]  # walks 0..9 and remembers them
        writer.append(STREAM, [b"late %d" % i for i in range(5)])  # a batch of its own: offsets 44..48
        hashes = counting_hashes(monkeypatch)
        assert reader.read_from(STREAM, 8, 0) == [b"event 08"]
        assert hashes[0] == 1  # an append does not drop the run: one frame re-hashed, no walk
        flip_byte(segment_files(store_dir, STREAM)[0], frame_position(writer, 46) + HEADER_SIZE)
        report = writer.repair(truncate=True)  # cuts offsets 46..48, a cut marker at 49, and logs it
        assert report.applied
        assert report.entries
        writer.append(STREAM, [b"after repair"])  # offset 50
        hashes[0] = 0
        assert reader.read_from(STREAM, 8, 0) == [b"event 08"]
        assert hashes[0] > 1  # the repair's log entry dropped the runs: a fresh walk
        assert reader.read_from(STREAM, 44, 0) == [b"late 0"]
        with pytest.raises(RecordsCut):
            reader.read_from(STREAM, 46, 0)
        assert reader.read_from(STREAM, 50, 0) == [b"after repair"]
    writer.close()


def test_the_cache_can_be_turned_off_and_refuses_bad_sizes(store_dir: Path) -> None:
    with Storage(store_dir, verified_cache_records=0) as store:
        store.append(STREAM, [b"a", b"b"])
        assert store.read_from(STREAM, 1, 0) == [b"b"]
    for bad in (-1, 1.5, True, "10"):
        with pytest.raises(InvalidConfiguration, match="verified_cache_records"):
            Storage(store_dir, verified_cache_records=bad)  # type: ignore[arg-type]


def run_of(stream: int, first: int, count: int) -> VerifiedRun:
    run = VerifiedRun(StreamId(stream), first)
    for i in range(count):
        run.add(0, i * 100, 100, bytes([i % 256]) * 32)
    return run


def test_runs_are_found_by_offset_and_evicted_least_recently_used_first(tmp_path: Path) -> None:
    cache = VerifiedRunCache(25, lambda sid, no: segment_path(tmp_path, sid, no))
    first, second, third = run_of(1, 0, 10), run_of(1, 10, 10), run_of(2, 0, 10)
    cache.add(first)
    cache.add(second)
    assert cache.find(StreamId(1), 9) is first
    assert cache.find(StreamId(1), 10) is second
    assert cache.find(StreamId(1), 20) is None
    assert cache.find(StreamId(2), 0) is None
    cache.find(StreamId(1), 0)  # first is now the most recently used
    cache.add(third)  # 30 records > 25: the least recently used (second) goes
    assert cache.find(StreamId(1), 10) is None
    assert cache.find(StreamId(1), 3) is first
    assert cache.find(StreamId(2), 5) is third


def test_an_overlapping_run_replaces_the_runs_it_overlaps(tmp_path: Path) -> None:
    cache = VerifiedRunCache(1000, lambda sid, no: segment_path(tmp_path, sid, no))
    cache.add(run_of(1, 0, 10))
    cache.add(run_of(1, 10, 10))
    newer = run_of(1, 5, 10)
    cache.add(newer)
    assert cache.find(StreamId(1), 0) is None
    assert cache.find(StreamId(1), 5) is newer
    assert cache.find(StreamId(1), 16) is None
