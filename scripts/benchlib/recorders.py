"""eventsourcing's persistence modules side by side: ``hybridlog.eventsourcing`` against
eventsourcing's own SQLite module, in one process, on the same events (issue 13's speed criteria).

Both are used as an application uses them, through ``PERSISTENCE_MODULE``, with their defaults for
durability: hybridlog fsyncs each insert (``HYBRIDLOG_FSYNC`` unset), eventsourcing's SQLite module
runs in WAL mode with SQLite's default ``synchronous = FULL`` (checked), so each insert is on disk
when it returns in both. The workloads:

* ``insert_one``: one new aggregate per insert, one event (eventsourcing's ``test_performance``);
* ``insert_100``: 100 events of one new aggregate per insert (the recorder's share of a save);
* ``save_10``, ``save_100``: ``Application.save`` of a new aggregate with 10 or 100 events (the
  domain model's own work, the same for both, included);
* ``read_log``: the whole notification log read in pages of 500 (eventsourcing's subscriptions'
  page size), each notification verified by hybridlog as it is read.

Each round makes fresh stores for both and runs every workload on each, the order of the two
alternating between rounds; the figure is the median over the rounds. Events carry the bench's
256-byte JSON events as their state.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchlib.measure import Result, number
from benchlib.targets import PASS, Target
from benchlib.text import grid, micro, times

HYBRIDLOG_MODULE = "hybridlog.eventsourcing"
SQLITE_MODULE = "eventsourcing.sqlite"
CASES = ("insert_one", "insert_100", "save_10", "save_100", "read_log")
TITLES = {
    "insert_one": "insert, one new aggregate, 1 event",
    "insert_100": "insert, one new aggregate, 100 events",
    "save_10": "Application.save, 10 events",
    "save_100": "Application.save, 100 events",
    "read_log": "read the notification log (pages of 500)",
}
READ_PAGE = 500


@dataclass(frozen=True, slots=True)
class RecorderSizes:
    """Operations per workload and round."""

    insert_one: int = 400
    insert_100: int = 60
    save_10: int = 150
    save_100: int = 30
    read_events: int = 20_000
    rounds: int = 5


QUICK_RECORDER_SIZES = RecorderSizes(insert_one=5, insert_100=2, save_10=2, save_100=2, read_events=600, rounds=1)


def installed() -> str | None:
    """Why the workloads cannot run (None: they can)."""
    try:
        import eventsourcing.sqlite  # noqa: F401

        import hybridlog.eventsourcing  # noqa: F401
    except ImportError as e:
        return f"not installed ({e}; pip install -e '.[bench]')"
    return None


def _application(module: str, directory: Path) -> Any:
    from eventsourcing.application import Application

    env = {"PERSISTENCE_MODULE": module}
    if module == SQLITE_MODULE:
        env["SQLITE_DBNAME"] = str(directory / "eventsourcing.db")
    else:
        env["HYBRIDLOG_STORE"] = str(directory / "store")
    app: Any = Application(env=env)
    if module == SQLITE_MODULE:
        with app.recorder.datastore.transaction(commit=False) as cursor:
            cursor.execute("PRAGMA synchronous")
            synchronous = cursor.fetchone()[0]
        if synchronous != 2:  # FULL: an insert is on disk when it returns, as hybridlog's is
            raise RuntimeError(f"eventsourcing's SQLite runs with synchronous = {synchronous}, not FULL")
    return app


def _account_class() -> type[Any]:
    from eventsourcing.domain import Aggregate, event

    class Account(Aggregate):
        @event("Opened")
        def __init__(self, memo: str) -> None:
            self.memo = memo
            self.balance = 0

        @event("Credited")
        def credit(self, amount: int, memo: str) -> None:
            self.balance += amount
            self.memo = memo

    return Account


def _workloads(pool: Sequence[bytes], sizes: RecorderSizes) -> dict[str, Callable[[Any], tuple[int, float]]]:
    """Each workload: given an application, (operations, seconds)."""
    from eventsourcing.persistence import StoredEvent

    account = _account_class()
    memos = [p[:200].decode("ascii", "replace") for p in pool[:64]]

    def insert(app: Any, count: int, events: int) -> tuple[int, float]:
        ids = [uuid.uuid4() for _ in range(count)]
        batches = [
            [StoredEvent(ids[i], v + 1, "bench:Event", pool[(i * events + v) % len(pool)]) for v in range(events)]
            for i in range(count)
        ]
        started = time.perf_counter()
        for batch in batches:
            app.recorder.insert_events(batch)
        return count, time.perf_counter() - started

    def save(app: Any, count: int, events: int) -> tuple[int, float]:
        aggregates = []
        for i in range(count):
            aggregate = account(memos[i % len(memos)])
            for v in range(events - 1):
                aggregate.credit(v, memos[(i + v) % len(memos)])
            aggregates.append(aggregate)
        started = time.perf_counter()
        for aggregate in aggregates:
            app.save(aggregate)
        return count, time.perf_counter() - started

    def read_log(app: Any) -> tuple[int, float]:
        recorder = app.recorder
        missing = sizes.read_events - (recorder.max_notification_id() or 0)
        if missing > 0:
            insert(app, (missing + 99) // 100, 100)
        total, start = 0, 0
        started = time.perf_counter()
        while True:
            page = recorder.select_notifications(start, READ_PAGE, inclusive_of_start=False)
            if not page:
                break
            total += len(page)
            start = page[-1].id
        return total, time.perf_counter() - started

    return {
        "warm_up": lambda app: insert(app, 1, 1),
        "insert_one": lambda app: insert(app, sizes.insert_one, 1),
        "insert_100": lambda app: insert(app, sizes.insert_100, 100),
        "save_10": lambda app: save(app, sizes.save_10, 10),
        "save_100": lambda app: save(app, sizes.save_100, 100),
        "read_log": read_log,
    }


def run_recorders(pool: Sequence[bytes], sizes: RecorderSizes, tmp_root: Path | None) -> list[Result]:
    """Every workload for both modules, ``sizes.rounds`` times; one Result per (workload, module)."""
    workloads = _workloads(pool, sizes)
    seconds: dict[tuple[str, str], list[float]] = {}
    operations: dict[tuple[str, str], int] = {}
    modules = (HYBRIDLOG_MODULE, SQLITE_MODULE)
    for round_no in range(sizes.rounds):
        for module in modules if round_no % 2 == 0 else modules[::-1]:
            with tempfile.TemporaryDirectory(dir=tmp_root, prefix="bench-recorders-") as directory:
                app = _application(module, Path(directory))
                try:
                    workloads["warm_up"](app)  # the store's and the stream's creation, outside every timing
                    for case in CASES:
                        count, spent = workloads[case](app)
                        seconds.setdefault((case, module), []).append(spent / count)
                        operations[(case, module)] = count
                finally:
                    app.close()
    results: list[Result] = []
    for case in CASES:
        for module in modules:
            per_op = statistics.median(seconds[(case, module)])
            results.append(
                {
                    "workload": "eventsourcing_module",
                    "case": case,
                    "contender": module,
                    "operations": operations[(case, module)],
                    "seconds_per_op": per_op,
                    "runs_seconds_per_op": seconds[(case, module)],
                }
            )
        hybrid, sqlite = (r for r in results[-2:])
        hybrid["ratio_vs_sqlite_module"] = number(sqlite, "seconds_per_op") / number(hybrid, "seconds_per_op")
    return results


def recorder_lines(results: Sequence[Result], why_missing: str | None) -> list[str]:
    """The table: each workload's time per operation for both modules, and hybridlog's ratio."""
    title = "eventsourcing persistence modules (hybridlog.eventsourcing vs eventsourcing.sqlite, both fsync per insert)"
    if why_missing is not None:
        return [title, f"  {why_missing}"]
    rows = []
    for case in CASES:
        mine = next(r for r in results if r.get("case") == case and r["contender"] == HYBRIDLOG_MODULE)
        theirs = next(r for r in results if r.get("case") == case and r["contender"] == SQLITE_MODULE)
        unit = "per event" if case == "read_log" else "per op"
        rows.append(
            [
                TITLES[case],
                micro(number(mine, "seconds_per_op")),
                micro(number(theirs, "seconds_per_op")),
                times(number(mine, "ratio_vs_sqlite_module")),
                unit,
            ]
        )
    return [
        title,
        "  ratio: eventsourcing.sqlite's time / hybridlog's (above 1: hybridlog faster)",
        *grid(["workload", "hybridlog", "sqlite", "ratio", "time"], rows, note=True),
    ]


ISSUE_13_TARGETS = (
    ("insert_one", "one new aggregate per insert (test_performance's shape)", 1.0),
    ("save_10", "Application.save of an aggregate with 10 events", 1.0),
    ("read_log", "reading the notification log", 1.0),
    ("insert_100", "saves of 100 events: the recorder's insert of them", 2.0),
)


def recorder_targets(results: Sequence[Result], why_missing: str | None) -> list[Target]:
    """Issue 13's speed criteria: hybridlog's ratio to eventsourcing's SQLite module per workload."""
    targets = []
    for case, row, threshold in ISSUE_13_TARGETS:
        found = next((r for r in results if r.get("case") == case and r["contender"] == HYBRIDLOG_MODULE), None)
        ratio = None if found is None else number(found, "ratio_vs_sqlite_module")
        note = why_missing or TITLES[case]
        targets.append(Target(f"eventsourcing: {row}", f"vs {SQLITE_MODULE}", ratio, ">=", threshold, "x", note))
    return targets


def recorder_target_lines(targets: Sequence[Target], results: Sequence[Result]) -> list[str]:
    """The issue-13 TARGETS section, and Application.save of 100 events as information."""
    rows = [[t.row, t.measure, times(t.value), f">= {t.threshold:g}x", t.status, t.note] for t in targets]
    save_100 = next((r for r in results if r.get("case") == "save_100" and r["contender"] == HYBRIDLOG_MODULE), None)
    passed = sum(t.status == PASS for t in targets)
    lines = [
        "TARGETS (issue 13: hybridlog.eventsourcing vs eventsourcing.sqlite; ratios from this run)",
        *grid(["row", "measure", "value", "target", "status", "note"], rows, left=2, note=True),
        f"{passed} of {len(targets)} criteria pass",
    ]
    if save_100 is not None:
        lines.append(
            f"information: Application.save of 100 events (the domain model's work included, the same for both):"
            f" {times(number(save_100, 'ratio_vs_sqlite_module'))}"
        )
    return lines
