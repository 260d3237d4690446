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
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from benchlib.contenders import HYBRIDLOG, BenchError
from benchlib.measure import Result, number
from hybridlog import RecordKind, Storage

ONE_THREAD = "one_thread"
OWN_STREAMS = "own_streams"
ONE_STREAM = "one_stream"


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


def _measure(variant: str, plan: Sequence[tuple[int, Sequence[bytes]]], repeat: int, tmp_root: Path | None) -> Result:
    runs = [_run_once(variant, plan, tmp_root) for _ in range(repeat)]
    seconds = statistics.median(runs)
    total = sum(len(appended) for _, appended in plan)
    return {
        "workload": "group_commit",
        "contender": HYBRIDLOG,
        "variant": variant,
        "threads": len(plan),
        "streams": len({stream_id for stream_id, _ in plan}),
        "event_size": len(plan[0][1][0]),
        "events": total,
        "seconds": seconds,
        "runs_seconds": runs,
        "events_per_s": total / seconds,
    }


def run_group_commit(
    pool: Sequence[bytes], threads: int, per_thread: int, single_events: int, repeat: int, tmp_root: Path | None
) -> list[Result]:
    """The three runs, each multi-threaded one with ``ratio_vs_one_thread`` (its events/s over one thread's)."""

    def slice_of_pool(start: int, count: int) -> list[bytes]:
        return [pool[(start + i) % len(pool)] for i in range(count)]

    single = _measure(ONE_THREAD, [(1, slice_of_pool(0, single_events))], repeat, tmp_root)
    results = [single]
    for variant in (OWN_STREAMS, ONE_STREAM):
        plan = [
            (1 + i if variant == OWN_STREAMS else 1, slice_of_pool(i * per_thread, per_thread)) for i in range(threads)
        ]
        result = _measure(variant, plan, repeat, tmp_root)
        result["ratio_vs_one_thread"] = number(result, "events_per_s") / number(single, "events_per_s")
        results.append(result)
    return results
