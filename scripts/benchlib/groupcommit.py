"""Group commit: many threads appending single events with fsync on, against one thread doing it.

Three runs, each on a fresh store shared by every thread of the run (default checkpoint policy):

* ``one_thread``: one thread appends ``single_events`` events, one ``append`` call (one event,
  ``fsync=True``) each, to its own stream;
* ``own_streams``: ``threads`` threads, each appending ``per_thread`` single events with
  ``fsync=True`` to a stream of its own;
* ``one_stream``: ``threads`` threads all appending to the same stream with ``Storage.append``
  (which appends at the current head, so the threads never conflict).

The threads start together at a barrier; the time runs from the barrier to the last thread's
end. Afterwards every stream is read back from genesis (verified) and its events counted. Each
run is repeated ``repeat`` times on fresh stores and the median time kept.

The three runs are made twice (issue 12's two criteria):

* ``disk=real``: this machine's fsync, usually fast (a few hundred microseconds). Here group
  commit is bounded by about ``1 + f / c``: ``f`` the time of one fsync (the median of many
  ``os.write`` of ``FSYNC_PROBE_BYTES`` appended to a file + ``os.fdatasync``, in the same
  directory as the stores, half just before the real-disk runs and half just after), ``c``
  hybridlog's CPU per append (seconds per single ``Storage.append(..., fsync=False)`` of one
  event, one thread): while one fsync runs, the other threads can only prepare ``f / c``
  appends. No run of ``threads`` threads can exceed ``threads`` times one thread either, so the
  figure judged is the speed-up over the *effective* bound ``min(threads, 1 + f / c)``. The
  ``group_commit_bound`` result carries ``f``, ``c`` and both bounds.
* ``disk=simulated_slow``: a slow disk SIMULATED in this process only:
  ``hybridlog.segment.SegmentWriter.sync`` is wrapped to sleep ``SLOW_FSYNC_DELAY`` (1 ms) after
  the real fdatasync (``time.sleep`` releases the GIL as a real fsync does), for these three runs
  only, and restored afterwards. Every sync is counted: a run in which an fsync'd append did
  not go through the wrapped method fails the benchmark instead of measuring a fast disk.
"""

from __future__ import annotations

import contextlib
import functools
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import hybridlog.segment
from benchlib.contenders import HYBRIDLOG, BenchError
from benchlib.measure import Result, Sizes, number, timed
from hybridlog import RecordKind, Storage

ONE_THREAD = "one_thread"
OWN_STREAMS = "own_streams"
ONE_STREAM = "one_stream"
REAL = "real"
SIMULATED_SLOW = "simulated_slow"
SLOW_FSYNC_DELAY = 0.001
"""Seconds the simulated slow disk adds after every real segment fdatasync."""
FSYNC_PROBE_BYTES = 300
"""Bytes per write of the fsync probe: about one 256-byte event with its framing."""
_CPU_WARMUP = 10
"""Appends made before the per-append CPU is timed (the stream's directory and segment exist then)."""


def _appender(storage: Storage, stream_id: int, events: Sequence[bytes], start: threading.Barrier) -> None:
    start.wait()
    for event in events:
        storage.append(stream_id, [event], fsync=True)


def _run_threads(storage: Storage, plan: Sequence[tuple[int, Sequence[bytes]]]) -> tuple[float, list[BaseException]]:
    """Run one thread per (stream, events) in ``plan``; (seconds from the barrier, errors raised)."""
    start = threading.Barrier(len(plan) + 1)
    errors: list[BaseException] = []

    def work(stream_id: int, events: Sequence[bytes]) -> None:
        try:
            _appender(storage, stream_id, events, start)
        except BaseException as e:  # reported to the caller, which raises
            errors.append(e)

    threads = [threading.Thread(target=work, args=item, name=f"appender-{i}") for i, item in enumerate(plan)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - began, errors


def _run_once(variant: str, plan: Sequence[tuple[int, Sequence[bytes]]], tmp_root: Path | None) -> float:
    """One run on a fresh store: seconds from the barrier to the last thread's end, then a read-back check."""
    expected: dict[int, int] = {}
    for stream_id, appended in plan:
        expected[stream_id] = expected.get(stream_id, 0) + len(appended)
    with (
        tempfile.TemporaryDirectory(prefix="bench-group-", dir=tmp_root) as tmp,
        Storage(Path(tmp) / "store") as storage,
    ):
        seconds, errors = _run_threads(storage, plan)
        if errors:
            raise BenchError(f"group commit {variant}: {len(errors)} appends failed") from errors[0]
        for stream_id, count in expected.items():
            read = sum(1 for r in storage.iter_records(stream_id, 0, anchored=False) if r.kind is RecordKind.EVENT)
            if read != count:
                raise BenchError(f"group commit {variant}: stream {stream_id} holds {read} events, wrote {count}")
    return seconds


class SyncCounter:
    """How many times the wrapped ``SegmentWriter.sync`` ran (from any thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def add(self) -> None:
        with self._lock:
            self.count += 1


@contextlib.contextmanager
def simulated_slow_fsync(delay: float) -> Iterator[SyncCounter]:
    """Make every segment fdatasync of this process take ``delay`` seconds longer, until the block ends.

    Fails loudly when ``hybridlog.segment.SegmentWriter.sync`` does not exist: the simulation
    cannot be applied, and measuring the real disk instead would pass a fast disk off as slow.
    """
    writer_class = getattr(hybridlog.segment, "SegmentWriter", None)
    original: Callable[[hybridlog.segment.SegmentWriter], None] | None = getattr(writer_class, "sync", None)
    if writer_class is None or original is None or not callable(original):
        raise BenchError(
            "hybridlog.segment.SegmentWriter.sync does not exist: the slow-fsync simulation of the group-commit"
            " benchmark wraps it (update scripts/benchlib/groupcommit.py to the new sync path)"
        )
    real_sync = original
    counter = SyncCounter()

    def slow_sync(self: hybridlog.segment.SegmentWriter) -> None:
        real_sync(self)
        time.sleep(delay)  # releases the GIL, as a real fsync does
        counter.add()

    writer_class.sync = slow_sync
    try:
        yield counter
    finally:
        writer_class.sync = real_sync


def _measure(
    variant: str, plan: Sequence[tuple[int, Sequence[bytes]]], repeat: int, tmp_root: Path | None, disk: str
) -> Result:
    runs = [_run_once(variant, plan, tmp_root) for _ in range(repeat)]
    seconds = statistics.median(runs)
    total = sum(len(appended) for _, appended in plan)
    return {
        "workload": "group_commit",
        "contender": HYBRIDLOG,
        "variant": variant,
        "disk": disk,
        "simulated_fsync_delay_s": SLOW_FSYNC_DELAY if disk == SIMULATED_SLOW else None,
        "threads": len(plan),
        "streams": len({stream_id for stream_id, _ in plan}),
        "event_size": len(plan[0][1][0]),
        "events": total,
        "seconds": seconds,
        "runs_seconds": runs,
        "events_per_s": total / seconds,
    }


def _three_runs(
    pool: Sequence[bytes],
    threads: int,
    per_thread: int,
    single_events: int,
    repeat: int,
    tmp_root: Path | None,
    disk: str,
    counter: SyncCounter | None = None,
) -> list[Result]:
    """One thread, then ``threads`` threads on their own streams and on one stream, on one kind of disk."""

    def slice_of_pool(start: int, count: int) -> list[bytes]:
        return [pool[(start + i) % len(pool)] for i in range(count)]

    plans = {ONE_THREAD: [(1, slice_of_pool(0, single_events))]}
    for variant in (OWN_STREAMS, ONE_STREAM):
        plans[variant] = [
            (1 + i if variant == OWN_STREAMS else 1, slice_of_pool(i * per_thread, per_thread)) for i in range(threads)
        ]
    results: list[Result] = []
    for variant, plan in plans.items():
        before = 0 if counter is None else counter.count
        result = _measure(variant, plan, repeat, tmp_root, disk)
        if counter is not None:
            syncs = counter.count - before
            result["simulated_syncs"] = syncs
            appends = number(result, "events") * repeat
            if syncs == 0 or (variant == ONE_THREAD and syncs < appends):
                raise BenchError(
                    f"group commit {variant}: {syncs} simulated slow syncs for {appends:.0f} fsync'd appends:"
                    " hybridlog no longer syncs segments through SegmentWriter.sync"
                    " (update scripts/benchlib/groupcommit.py)"
                )
        if variant != ONE_THREAD:
            result["ratio_vs_one_thread"] = number(result, "events_per_s") / number(results[0], "events_per_s")
        results.append(result)
    return results


def measure_fsync(samples: int, tmp_root: Path | None) -> list[float]:
    """Seconds of each of ``samples`` ``os.write`` of FSYNC_PROBE_BYTES appended to one file + ``os.fdatasync``."""
    data = b"x" * FSYNC_PROBE_BYTES
    times: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-fsync-", dir=tmp_root) as tmp:
        fd = os.open(Path(tmp) / "probe.bin", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            for _ in range(samples):
                start = time.perf_counter()
                os.write(fd, data)
                os.fdatasync(fd)
                times.append(time.perf_counter() - start)
        finally:
            os.close(fd)
    return times


def _append_unsynced(storage: Storage, events: Sequence[bytes]) -> None:
    for event in events:
        storage.append(1, [event], fsync=False)


def measure_append_cpu(pool: Sequence[bytes], n_appends: int, repeat: int, tmp_root: Path | None) -> list[float]:
    """Seconds per single ``Storage.append(..., fsync=False)`` of one event, one thread, one run per repeat."""
    events = [pool[i % len(pool)] for i in range(n_appends)]
    runs: list[float] = []
    for _ in range(repeat):
        with (
            tempfile.TemporaryDirectory(prefix="bench-cpu-", dir=tmp_root) as tmp,
            Storage(Path(tmp) / "store") as storage,
        ):
            _append_unsynced(storage, events[:_CPU_WARMUP])
            seconds, _ = timed(functools.partial(_append_unsynced, storage, events))
            runs.append(seconds / n_appends)
    return runs


def _bound(pool: Sequence[bytes], fsyncs: list[float], sizes: Sizes, repeat: int, tmp_root: Path | None) -> Result:
    """The fast-fsync bound ``1 + f / c`` and the effective bound ``min(threads, 1 + f / c)``."""
    cpu_runs = measure_append_cpu(pool, sizes.cpu_appends, repeat, tmp_root)
    fsync_s = statistics.median(fsyncs)
    cpu_s = statistics.median(cpu_runs)
    deciles = statistics.quantiles(fsyncs, n=10) if len(fsyncs) > 1 else [fsync_s] * 9
    bound = 1 + fsync_s / cpu_s
    return {
        "workload": "group_commit_bound",
        "contender": HYBRIDLOG,
        "event_size": len(pool[0]),
        "threads": sizes.group_threads,
        "fsync_seconds": fsync_s,
        "fsync_p10_seconds": deciles[0],
        "fsync_p90_seconds": deciles[-1],
        "fsync_samples": len(fsyncs),
        "fsync_write_bytes": FSYNC_PROBE_BYTES,
        "append_cpu_seconds": cpu_s,
        "append_cpu_runs_seconds": cpu_runs,
        "append_cpu_appends": sizes.cpu_appends,
        "bound": bound,
        "effective_bound": min(float(sizes.group_threads), bound),
    }


def run_group_commit(pool: Sequence[bytes], sizes: Sizes, repeat: int, tmp_root: Path | None) -> list[Result]:
    """The three runs on the real disk, the bound, then the three runs on the simulated slow disk.

    Every multi-threaded run has ``ratio_vs_one_thread`` (its events/s over one thread's on the
    same disk); on the real disk also ``fraction_of_bound`` and ``fraction_of_effective_bound``
    (that ratio over the bound and over the effective bound).
    """
    threads = sizes.group_threads
    # The fsync probes bracket the real-disk runs (half before, half after): a shared disk's fsync
    # time drifts, and the bound should describe the disk the runs saw.
    fsyncs = measure_fsync(sizes.fsync_samples // 2, tmp_root)
    real = _three_runs(pool, threads, sizes.group_events_per_thread, sizes.group_single_events, repeat, tmp_root, REAL)
    fsyncs += measure_fsync(sizes.fsync_samples - sizes.fsync_samples // 2, tmp_root)
    bound = _bound(pool, fsyncs, sizes, repeat, tmp_root)
    # A cross-check, not the bound: what an fsync'd append of the real one-thread run cost beyond an
    # unsynced one. Far above f: the fsync'd path does more than one fdatasync, or the disk changed.
    per_append = 1 / number(real[0], "events_per_s")
    bound["one_thread_seconds_per_append"] = per_append
    bound["implied_fsync_seconds"] = per_append - number(bound, "append_cpu_seconds")
    for result in real[1:]:
        ratio = number(result, "ratio_vs_one_thread")
        result["bound"] = bound["bound"]
        result["effective_bound"] = bound["effective_bound"]
        result["fraction_of_bound"] = ratio / number(bound, "bound")
        result["fraction_of_effective_bound"] = ratio / number(bound, "effective_bound")
    with simulated_slow_fsync(SLOW_FSYNC_DELAY) as counter:
        slow = _three_runs(
            pool,
            threads,
            sizes.slow_events_per_thread,
            sizes.slow_single_events,
            repeat,
            tmp_root,
            SIMULATED_SLOW,
            counter,
        )
    return [*real, bound, *slow]
