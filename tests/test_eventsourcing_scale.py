"""``hybridlog.eventsourcing`` at event-sourcing scale (slow: ``--run-slow``): 1,000,000 aggregates of
1 to 3 events each, in one store, in a child process that reports what it cost.

The child records the aggregates in inserts of 100 aggregates (fsync off: the load is not what is
measured), closes the store and counts its files, opens it again (timed), reads the whole
notification log back and 10,000 aggregates picked at random (timed, each checked version by
version), then deletes the index and opens again, so the index is read again from the stream
(timed, and checked the same way). It prints one JSON line; the test checks the numbers that are
facts (every event read back, ids 1..N, a handful of files) and prints the rest for the note.
Run it with ``pytest --run-slow -s tests/test_eventsourcing_scale.py``.
"""

from __future__ import annotations

import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from uuid import UUID

import pytest

THIS_FILE = Path(__file__)
AGGREGATES = 1_000_000
PER_INSERT = 100
SAMPLE = 10_000


def versions_of(n: int) -> int:
    return 1 + n % 3


def aggregate_id(n: int) -> UUID:
    return UUID(int=n + 1)


@pytest.mark.slow
def test_a_million_aggregates_in_one_store(tmp_path: Path) -> None:
    child = subprocess.run(
        [sys.executable, str(THIS_FILE), str(tmp_path / "store")],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    report = json.loads(child.stdout.splitlines()[-1])
    print("\n" + json.dumps(report, indent=2))
    events = sum(versions_of(n) for n in range(AGGREGATES))
    assert report["events"] == events
    assert report["notifications_read"] == events
    assert report["sampled_ok"] == SAMPLE
    assert report["sampled_ok_after_index_rebuild"] == SAMPLE
    assert report["files"] < 50  # not a file, let alone a directory, per aggregate


def stored_events(n: int) -> list[object]:
    from eventsourcing.persistence import StoredEvent

    return [
        StoredEvent(aggregate_id(n), v, "Account.Credited", b'{"amount":%d,"n":%d}' % (v, n))
        for v in range(1, versions_of(n) + 1)
    ]


def child(store_dir: Path) -> None:
    from eventsourcing.utils import Environment

    from hybridlog.eventsourcing import HybridlogFactory

    def open_recorder(fsync: str) -> tuple[HybridlogFactory, object]:
        env = Environment("Bank", {"HYBRIDLOG_STORE": str(store_dir), "HYBRIDLOG_FSYNC": fsync})
        factory = HybridlogFactory(env)
        recorder = factory.application_recorder()
        recorder.max_notification_id()  # the stream's row: the index caught up with it
        return factory, recorder

    report: dict[str, object] = {"aggregates": AGGREGATES}
    factory, recorder = open_recorder("no")
    started = time.perf_counter()
    events = 0
    for first in range(0, AGGREGATES, PER_INSERT):
        batch = [e for n in range(first, first + PER_INSERT) for e in stored_events(n)]
        recorder.insert_events(batch)  # type: ignore[attr-defined]
        events += len(batch)
    report["events"] = events
    report["write_seconds"] = round(time.perf_counter() - started, 2)
    factory.close()
    files = [p for p in store_dir.rglob("*") if p.is_file()]
    report["files"] = len(files)
    report["store_bytes"] = sum(p.stat().st_size for p in files)

    started = time.perf_counter()
    factory, recorder = open_recorder("yes")
    report["open_seconds"] = round(time.perf_counter() - started, 3)
    report.update(read_back(recorder, events))
    factory.close()

    for suffix in ("", "-wal", "-shm"):
        (store_dir / f"eventsourcing.db{suffix}").unlink(missing_ok=True)
    started = time.perf_counter()
    factory, recorder = open_recorder("yes")
    report["open_seconds_index_rebuilt"] = round(time.perf_counter() - started, 2)
    report["sampled_ok_after_index_rebuild"] = sample(recorder)
    factory.close()
    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(report))


def read_back(recorder: object, events: int) -> dict[str, object]:
    started = time.perf_counter()
    read, start, expected_id = 0, 0, 1
    while True:
        page = recorder.select_notifications(start, 500, inclusive_of_start=False)  # type: ignore[attr-defined]
        if not page:
            break
        assert [n.id for n in page] == list(range(expected_id, expected_id + len(page)))
        expected_id += len(page)
        read += len(page)
        start = page[-1].id
    log_seconds = time.perf_counter() - started
    started = time.perf_counter()
    ok = sample(recorder)
    sample_seconds = time.perf_counter() - started
    return {
        "notifications_read": read,
        "log_read_seconds": round(log_seconds, 2),
        "log_read_us_per_event": round(log_seconds / max(read, 1) * 1e6, 2),
        "sampled_ok": ok,
        "sample_read_us_per_aggregate": round(sample_seconds / SAMPLE * 1e6, 1),
    }


def sample(recorder: object) -> int:
    rng = random.Random(7)
    ok = 0
    for n in rng.sample(range(AGGREGATES), SAMPLE):
        if recorder.select_events(aggregate_id(n)) == stored_events(n):  # type: ignore[attr-defined]
            ok += 1
    return ok


if __name__ == "__main__":
    child(Path(sys.argv[1]))
