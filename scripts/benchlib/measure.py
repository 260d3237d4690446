"""The run sizes and the main workloads: append, sequential read + verify, open, catalog rebuild.

Every measurement uses fresh stores in a temporary directory, times only the work itself with
``time.perf_counter`` (after a garbage collection), runs ``repeat`` times and reports the median.
A result is a flat JSON object (``Result``); ``report`` turns them into tables and targets.
"""

from __future__ import annotations

import functools
import gc
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from benchlib.contenders import HYBRIDLOG, NONE, STREAM_ID, BenchError, Contender, Writer
from benchlib.events import LARGE_EVENT, SMALL_EVENT, make_batches
from hybridlog import CheckpointPolicy, Storage

JSONValue = str | int | float | bool | list[float] | None
Result = dict[str, JSONValue]
T = TypeVar("T")
MB = 1_000_000


@dataclass(frozen=True, slots=True)
class AppendCase:
    """One append measurement: ``events`` events of ``event_size`` bytes in batches, fsync per batch or not."""

    event_size: int
    batch_size: int
    fsync: bool
    events: int


def _cases(event_size: int, counts: dict[tuple[int, bool], int]) -> tuple[AppendCase, ...]:
    return tuple(AppendCase(event_size, batch, fsync, n) for (batch, fsync), n in counts.items())


@dataclass(frozen=True, slots=True)
class Sizes:
    """How much work each measurement does."""

    append: tuple[AppendCase, ...]
    read_events: dict[int, int]
    """Events in the stream read back, by event size."""
    pool: dict[int, int]
    """Distinct generated events, by event size; workloads cycle through them."""
    repeat: int
    open_streams: int
    rebuild_events: int
    random_events: int
    """Events in the stream that random reads pick from."""
    random_reads: int
    random_min_seconds: float
    """Random reads repeat their offsets until this much time has passed (noise control)."""
    memory_bytes: int
    """Size of the store verified in a subprocess for the peak-memory figure."""
    memory_segment_size: int | None
    """None: the default segment size."""
    group_threads: int = 8
    group_events_per_thread: int = 400
    group_single_events: int = 1000
    slow_events_per_thread: int = 200
    """Group commit on the simulated slow disk (1 ms more per fsync): events per thread."""
    slow_single_events: int = 500
    fsync_samples: int = 500
    """write + fdatasync probes whose median is the fsync time of the group-commit bound."""
    cpu_appends: int = 2000
    """Single unsynced appends timed for the per-append CPU of the group-commit bound."""
    event_sizes: tuple[int, ...] = field(default=(SMALL_EVENT, LARGE_EVENT))


# Sized for about 3 minutes on a 2-core VM whose fsync takes well under a millisecond; with
# slower fsyncs the fsync-on cases with small batches dominate (see --tmpdir).
_SMALL_COUNTS = {
    (1, False): 10_000,
    (100, False): 50_000,
    (1000, False): 100_000,
    (1, True): 2_000,
    (100, True): 30_000,
    (1000, True): 100_000,
}
_LARGE_COUNTS = {
    (1, False): 4_000,
    (100, False): 15_000,
    (1000, False): 25_000,
    (1, True): 1_000,
    (100, True): 10_000,
    (1000, True): 25_000,
}
DEFAULT_SIZES = Sizes(
    append=_cases(SMALL_EVENT, _SMALL_COUNTS) + _cases(LARGE_EVENT, _LARGE_COUNTS),
    read_events={SMALL_EVENT: 100_000, LARGE_EVENT: 25_000},
    pool={SMALL_EVENT: 20_000, LARGE_EVENT: 1_000},
    repeat=3,
    open_streams=1000,
    rebuild_events=100_000,
    random_events=100_000,
    random_reads=1000,
    random_min_seconds=0.5,
    memory_bytes=200 * MB,
    memory_segment_size=None,
)
# Every workload on tiny sizes, once: checks the harness, measures nothing worth keeping.
_QUICK_COUNTS = {
    (1, False): 20,
    (100, False): 1_500,  # past the 1,000 events after which zstd trains a dictionary
    (1000, False): 2_000,
    (1, True): 5,
    (100, True): 200,
    (1000, True): 1_000,
}
QUICK_SIZES = Sizes(
    append=_cases(SMALL_EVENT, _QUICK_COUNTS) + _cases(LARGE_EVENT, _QUICK_COUNTS),
    read_events={SMALL_EVENT: 2_000, LARGE_EVENT: 500},
    pool={SMALL_EVENT: 300, LARGE_EVENT: 50},
    repeat=1,
    open_streams=20,
    rebuild_events=2_000,
    random_events=2_500,
    random_reads=30,
    random_min_seconds=0.0,
    memory_bytes=2 * MB,
    memory_segment_size=256 * 1024,
    group_threads=8,
    group_events_per_thread=5,
    group_single_events=20,
    slow_events_per_thread=3,
    slow_single_events=10,
    fsync_samples=20,
    cpu_appends=50,
)
LARGE_MEMORY_BYTES = 1_000 * MB


def disk_bytes(directory: Path) -> int:
    """Bytes of every file under ``directory``."""
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


def timed(action: Callable[[], T]) -> tuple[float, T]:
    """(seconds ``action`` took by perf_counter, its result), after a garbage collection so it starts clean."""
    gc.collect()
    start = time.perf_counter()
    outcome = action()
    return time.perf_counter() - start, outcome


def number(result: Result, key: str) -> float:
    """``result[key]`` as a float; BenchError if it is not a number."""
    value = result.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BenchError(f"{key} is not a number in {result!r}")
    return float(value)


def append_all(writer: Writer, batches: Iterable[Sequence[bytes]]) -> None:
    for batch in batches:
        writer.append_batch(batch)


def run_append(
    contender: Contender, case: AppendCase, compression: str, pool: Sequence[bytes], repeat: int, tmp_root: Path | None
) -> Result:
    """Append ``case.events`` events in batches to a fresh store, ``repeat`` times; time the appends only."""
    batches = make_batches(pool, case.events, case.batch_size)
    payload = sum(len(event) for batch in batches for event in batch)
    runs: list[float] = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory(prefix=f"bench-{contender.name}-", dir=tmp_root) as tmp:
            directory = Path(tmp)
            writer = contender.open_writer(directory, fsync=case.fsync, compression=compression)
            try:
                seconds, _ = timed(functools.partial(append_all, writer, batches))
                runs.append(seconds)
            finally:
                writer.close()
            space = contender.space(directory)
            on_disk = disk_bytes(directory)
    seconds = statistics.median(runs)
    result: Result = {
        "workload": "append",
        "contender": contender.name,
        "event_size": case.event_size,
        "batch_size": case.batch_size,
        "fsync": None if contender.pragma_durability else case.fsync,
        "durability": contender.durability(case.fsync),
        "compression": compression,
        "events": case.events,
        "batches": len(batches),
        "payload_bytes": payload,
        "seconds": seconds,
        "runs_seconds": runs,
        "events_per_s": case.events / seconds,
        "mb_per_s": payload / seconds / MB,
        "disk_bytes": on_disk,
        "stored_bytes": None,
        "dictionary_bytes": None,
        "disk_ratio": None,
        "compression_ratio": None,
        "compression_ratio_with_dictionaries": None,
        "dictionary_ratio": None,
        "events_before_dictionary": None,
    }
    if space is not None:
        if space.payload_bytes != payload:
            raise BenchError(f"{contender.name}: catalog counts {space.payload_bytes} payload bytes, wrote {payload}")
        result["stored_bytes"] = space.stored_bytes
        result["dictionary_bytes"] = space.dictionary_bytes
        result["disk_ratio"] = payload / (space.stored_bytes + space.dictionary_bytes)
        result["compression_ratio"] = space.compression_ratio
        if space.stored_payload_bytes:
            # The catalog's ratio, with the dictionary files counted as stored bytes too.
            stored = space.stored_payload_bytes + space.dictionary_bytes
            result["compression_ratio_with_dictionaries"] = payload / stored
        result["dictionary_ratio"] = space.dictionary_ratio
        result["events_before_dictionary"] = space.events_before_dictionary
    return result


def run_read_verify(
    contender: Contender,
    compression: str,
    event_size: int,
    n_events: int,
    pool: Sequence[bytes],
    repeat: int,
    tmp_root: Path | None,
) -> Result:
    """Write ``n_events`` once (untimed), then time ``repeat`` fresh readers reading and verifying all of them."""
    batches = make_batches(pool, n_events, 1000)
    payload = sum(len(event) for batch in batches for event in batch)
    runs: list[float] = []
    with tempfile.TemporaryDirectory(prefix=f"bench-{contender.name}-", dir=tmp_root) as tmp:
        directory = Path(tmp)
        writer = contender.open_writer(directory, fsync=False, compression=compression)
        try:
            append_all(writer, batches)
        finally:
            writer.close()
        for _ in range(repeat):
            reader = contender.open_reader(directory)
            try:
                seconds, counted = timed(reader.read_verify)
            finally:
                reader.close()
            runs.append(seconds)
            if counted != (n_events, payload):
                raise BenchError(f"{contender.name}: read (events, bytes) {counted}, wrote {(n_events, payload)}")
    seconds = statistics.median(runs)
    return {
        "workload": "read_verify",
        "contender": contender.name,
        "event_size": event_size,
        "compression": compression,
        "verifies_chain": contender.verifies_chain,
        "events": n_events,
        "payload_bytes": payload,
        "seconds": seconds,
        "runs_seconds": runs,
        "events_per_s": n_events / seconds,
        "mb_per_s": payload / seconds / MB,
    }


def run_open(n_streams: int, pool: Sequence[bytes], repeat: int, tmp_root: Path | None) -> Result:
    """Time opening a clean store of ``n_streams`` streams for writing (lock, catalog, recovery check)."""
    runs: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-open-", dir=tmp_root) as tmp:
        directory = Path(tmp) / "store"
        with Storage(directory, checkpoint_policy=CheckpointPolicy.explicit()) as store:
            for sid in range(n_streams):
                store.append(sid, [pool[sid % len(pool)]] * 3, fsync=False)
        for _ in range(repeat):
            seconds, store = timed(lambda: Storage(directory, checkpoint_policy=CheckpointPolicy.explicit()))
            store.close()
            runs.append(seconds)
    seconds = statistics.median(runs)
    return {
        "workload": "open_clean",
        "contender": HYBRIDLOG,
        "compression": NONE,
        "events": 3 * n_streams,
        "streams": n_streams,
        "seconds": seconds,
        "runs_seconds": runs,
    }


def run_rebuild(n_events: int, pool: Sequence[bytes], repeat: int, tmp_root: Path | None) -> Result:
    """Time rebuilding the whole catalog from the segments (every record read and verified)."""
    batches = make_batches(pool, n_events, 1000)
    runs: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-rebuild-", dir=tmp_root) as tmp:
        directory = Path(tmp) / "store"
        with Storage(directory, checkpoint_policy=CheckpointPolicy.explicit()) as store:
            for batch in batches:
                store.append(STREAM_ID, batch, fsync=False)
        for _ in range(repeat):
            with Storage(directory, checkpoint_policy=CheckpointPolicy.explicit()) as store:
                seconds, _ = timed(store.rebuild_catalog)
                if store.next_offset(STREAM_ID) != n_events:
                    raise BenchError(f"rebuild indexed {store.next_offset(STREAM_ID)} records, wrote {n_events}")
            runs.append(seconds)
    seconds = statistics.median(runs)
    return {
        "workload": "rebuild_catalog",
        "contender": HYBRIDLOG,
        "compression": NONE,
        "event_size": len(pool[0]),
        "events": n_events,
        "seconds": seconds,
        "runs_seconds": runs,
        "events_per_s": n_events / seconds,
    }
