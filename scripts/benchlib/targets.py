"""The TARGETS section: issue 12's targets table judged on this run's 256-byte results.

One ``Target`` per criterion (a table row with two criteria gives two), each with the measured
value, the threshold and a status: PASS, FAIL or MISSING (a contender not installed). Figures
the issue asks to see but sets no target for (zstd on JSON, the same ratios on 4 KiB events)
are ``Figure``s: shown under the table as information, never counted.

The group-commit row has four criteria, two per variant (own streams: each thread its own
stream; one stream shared by all threads):

* slow fsync: the speed-up of 8 threads over one thread with the slow disk SIMULATED in the
  bench process (``groupcommit.simulated_slow_fsync``: 1 ms more per segment fdatasync), >= 5x;
* fast fsync: on this machine's real disk, the speed-up over one thread divided by the
  *effective* bound ``min(threads, 1 + f / c)`` (``f`` the fsync time, ``c`` the per-append CPU;
  ``threads`` threads can never exceed ``threads`` times one thread, so a bound above that cannot
  be reached), >= 0.8. The note gives the speed-up, both bounds and the fraction of the raw one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from benchlib.contenders import EVENTSOURCING, NONE, RAW_FLOOR, SQLITE_FULL, SQLITE_NORMAL, ZSTD
from benchlib.events import LARGE_EVENT, SMALL_EVENT
from benchlib.groupcommit import ONE_STREAM, ONE_THREAD, OWN_STREAMS, REAL, SIMULATED_SLOW, SLOW_FSYNC_DELAY
from benchlib.measure import MB, JSONValue, Result
from benchlib.randomread import PREAD_FLOOR
from benchlib.ratios import SUBJECT, find, value
from benchlib.text import fixed, grid, micro, rate, times

PASS, FAIL, MISSING = "PASS", "FAIL", "MISSING"
ROW_B100 = "append, batch 100, fsync off"
ROW_B1000 = "append, batch 1000, fsync on"
ROW_B1 = "append, batch 1, fsync on, one thread"
ROW_READ = "sequential read + full verify"
ROW_RANDOM = "random read by offset (warm, read-only process)"
ROW_REBUILD = "rebuild the catalog from segments"
ROW_OPEN = "open a clean store with 1,000 streams"
ROW_MEMORY = "peak memory verifying a 1 GB store"
ROW_ZSTD = f"zstd on {SMALL_EVENT}-byte JSON (batch 100, fsync off)"
VARIANTS = {OWN_STREAMS: "own streams", ONE_STREAM: "one stream"}


def group_row(threads: int) -> str:
    return f"group commit, {threads} threads, single fsync'd appends"


@dataclass(frozen=True, slots=True)
class Target:
    """One criterion of the issue's targets table, with what this run measured."""

    row: str
    """The targets-table row (a row with several criteria gives several Targets)."""
    measure: str
    value: float | None
    op: str
    """">=", "<=" or "<": how ``value`` must compare with ``threshold``."""
    threshold: float
    unit: str
    """"x" (a ratio), "s", "MB" or "" (a plain fraction)."""
    note: str = ""

    @property
    def status(self) -> str:
        if self.value is None:
            return MISSING
        passed = {
            ">=": self.value >= self.threshold,
            "<=": self.value <= self.threshold,
            "<": self.value < self.threshold,
        }
        return PASS if passed[self.op] else FAIL

    def as_json(self) -> dict[str, JSONValue]:
        data: dict[str, JSONValue] = asdict(self)
        data["status"] = self.status
        return data


@dataclass(frozen=True, slots=True)
class Figure:
    """A figure shown beside the targets as information: no threshold, no status."""

    row: str
    measure: str
    value: float | None
    unit: str
    note: str = ""

    def as_json(self) -> dict[str, JSONValue]:
        return dict(asdict(self))


def _append(results: Sequence[Result], size: int, batch: int, fsync: bool, compression: str = NONE) -> Result | None:
    return find(
        results,
        workload="append",
        contender=SUBJECT,
        event_size=size,
        batch_size=batch,
        fsync=fsync,
        compression=compression,
    )


def _group_targets(results: Sequence[Result]) -> list[Target]:
    """Both group-commit criteria for both variants (see the module docstring)."""
    bound = find(results, workload="group_commit_bound")
    threads = int(value(bound, "threads") or 8)
    row = group_row(threads)
    slow_delay = f"{SLOW_FSYNC_DELAY * 1e3:g} ms"
    targets: list[Target] = []
    for variant, name in VARIANTS.items():
        slow = find(results, workload="group_commit", variant=variant, disk=SIMULATED_SLOW)
        one = find(results, workload="group_commit", variant=ONE_THREAD, disk=SIMULATED_SLOW)
        note = f"SIMULATED: +{slow_delay} per segment fdatasync (see below)"
        if slow is not None and one is not None:
            note += (
                f"; {rate(value(slow, 'events_per_s'))} vs {rate(value(one, 'events_per_s'))} events/s,"
                f" {_per_sync(slow)} appends/fsync"
            )
        targets.append(
            Target(
                row,
                f"{name}, slow fsync (SIMULATED): vs one thread",
                value(slow, "ratio_vs_one_thread"),
                ">=",
                5.0,
                "x",
                note,
            )
        )
    for variant, name in VARIANTS.items():
        real = find(results, workload="group_commit", variant=variant, disk=REAL)
        ratio, raw = value(real, "ratio_vs_one_thread"), value(real, "fraction_of_bound")
        note = ""
        if bound is not None and ratio is not None and raw is not None:
            note = (
                f"{times(ratio)} one thread; bound 1 + f/c = {fixed(value(bound, 'bound'))},"
                f" effective min({threads}, 1 + f/c) = {fixed(value(bound, 'effective_bound'))};"
                f" {fixed(raw)} of the raw bound"
            )
        targets.append(
            Target(
                row,
                f"{name}, real fsync: speed-up / effective bound",
                value(real, "fraction_of_effective_bound"),
                ">=",
                0.8,
                "",
                note,
            )
        )
    return targets


def _per_sync(result: Result) -> str:
    """Appends per simulated fsync over a simulated run's repeats (how well the group filled)."""
    syncs, events, runs = value(result, "simulated_syncs"), value(result, "events"), result.get("runs_seconds")
    if not syncs or events is None or not isinstance(runs, list):
        return "-"
    return f"{events * len(runs) / syncs:.1f}"


def evaluate_targets(results: Sequence[Result], missing: dict[str, str]) -> list[Target]:
    """Issue 12's targets table, criterion by criterion, from this run's 256-byte results."""
    size = SMALL_EVENT
    b100, b1000_on, b1_on = (_append(results, size, b, f) for b, f in ((100, False), (1000, True), (1, True)))
    read = find(results, workload="read_verify", contender=SUBJECT, event_size=size, compression=NONE)
    random_read = find(results, workload="random_read", contender=SUBJECT, method="read_from")
    reads_per_s = value(random_read, "reads_per_s")
    memory = find(results, workload="verify_memory")
    store_mb = value(memory, "segment_bytes")
    es_note = f"{EVENTSOURCING} {missing[EVENTSOURCING]}" if EVENTSOURCING in missing else ""
    return [
        Target(ROW_B100, f"vs {SQLITE_NORMAL}", value(b100, f"ratio_vs_{SQLITE_NORMAL}"), ">=", 2.0, "x"),
        Target(ROW_B100, f"vs {EVENTSOURCING}", value(b100, f"ratio_vs_{EVENTSOURCING}"), ">=", 3.0, "x", es_note),
        Target(ROW_B1000, f"vs {SQLITE_FULL}", value(b1000_on, f"ratio_vs_{SQLITE_FULL}"), ">=", 2.0, "x"),
        Target(
            ROW_B1,
            f"vs {RAW_FLOOR} (write + fdatasync)",
            value(b1_on, f"ratio_vs_{RAW_FLOOR}"),
            ">=",
            0.85,
            "x",
        ),
        *_group_targets(results),
        Target(ROW_READ, f"vs {SQLITE_NORMAL} read + verify", value(read, f"ratio_vs_{SQLITE_NORMAL}"), ">=", 1.0, "x"),
        Target(
            ROW_RANDOM,
            f"read_from (read_only=True) vs {PREAD_FLOOR}",
            value(random_read, f"ratio_vs_{PREAD_FLOOR}"),
            ">=",
            0.6,
            "x",
            "" if reads_per_s is None else f"{reads_per_s:,.0f} reads/s",
        ),
        Target(
            ROW_REBUILD,
            "vs sequential read + verify",
            value(find(results, workload="rebuild_catalog"), "ratio_vs_read_verify"),
            ">=",
            0.5,
            "x",
        ),
        Target(ROW_OPEN, "seconds", value(find(results, workload="open_clean"), "seconds"), "<=", 0.5, "s"),
        Target(
            ROW_MEMORY,
            "child peak RSS",
            value(memory, "peak_rss_mb"),
            "<",
            150.0,
            "MB",
            "" if store_mb is None else f"{store_mb / MB:,.0f} MB of segments",
        ),
    ]


def information(results: Sequence[Result], missing: dict[str, str]) -> list[Figure]:
    """The figures shown under the targets: zstd on JSON, and the ratio criteria on 4 KiB events."""
    zstd = _append(results, SMALL_EVENT, 100, False, ZSTD)
    figures = [
        Figure(
            ROW_ZSTD,
            "compression ratio, whole run, dictionary file counted",
            value(zstd, "compression_ratio_with_dictionaries"),
            "x",
            _dictionary_note(zstd),
        ),
        Figure(ROW_ZSTD, "append speed vs uncompressed", value(zstd, "speed_vs_uncompressed"), "x"),
    ]
    size, large = LARGE_EVENT, f"{LARGE_EVENT}-byte events"
    b100, b1000_on, b1_on = (_append(results, size, b, f) for b, f in ((100, False), (1000, True), (1, True)))
    read = find(results, workload="read_verify", contender=SUBJECT, event_size=size, compression=NONE)
    for row, result, name in (
        (ROW_B100, b100, SQLITE_NORMAL),
        (ROW_B100, b100, EVENTSOURCING),
        (ROW_B1000, b1000_on, SQLITE_FULL),
        (ROW_B1, b1_on, RAW_FLOOR),
        (ROW_READ, read, SQLITE_NORMAL),
    ):
        note = f"{name} {missing[name]}" if name in missing else ""
        figures.append(Figure(f"{large}: {row}", f"vs {name}", value(result, f"ratio_vs_{name}"), "x", note))
    return figures


def _dictionary_note(result: Result | None) -> str:
    """What the stream dictionary did in a zstd append run, in words."""
    if result is None:
        return ""
    ratio = value(result, "dictionary_ratio")
    if ratio is None:
        return "no dictionary came into use (plain zstd throughout)"
    return f"{ratio:.2f}x once the dictionary was in use (after {result['events_before_dictionary']} events)"


def _shown(number: float | None, unit: str) -> str:
    if unit == "x" or number is None:
        return times(number)
    return f"{number:.2f}" if unit == "" else f"{number:.3g} {unit}"


def _bound_lines(results: Sequence[Result]) -> list[str]:
    """How the group-commit bound was measured, and that the slow disk is simulated."""
    bound = find(results, workload="group_commit_bound")
    if bound is None:
        return []
    return [
        f"group commit bound: f = {micro(value(bound, 'fsync_seconds'))} per fsync (median of"
        f" {bound['fsync_samples']} os.write of {bound['fsync_write_bytes']} bytes appended + os.fdatasync in the"
        f" stores' directory; p10 {micro(value(bound, 'fsync_p10_seconds'))}, p90"
        f" {micro(value(bound, 'fsync_p90_seconds'))}),",
        f"  c = {micro(value(bound, 'append_cpu_seconds'))} CPU per append (Storage.append(..., fsync=False) of one"
        f" {bound['event_size']}-byte event, one thread); bound 1 + f/c = {fixed(value(bound, 'bound'))},"
        f" effective bound min({bound['threads']}, 1 + f/c) = {fixed(value(bound, 'effective_bound'))}",
        f"  cross-check: the real one-thread run took {micro(value(bound, 'one_thread_seconds_per_append'))} per"
        f" fsync'd append: {micro(value(bound, 'implied_fsync_seconds'))} more than c (far above f: the fsync'd"
        " path costs more than one fdatasync, or the disk changed between the probes and the runs)",
        f"slow fsync is SIMULATED: hybridlog.segment.SegmentWriter.sync sleeps {SLOW_FSYNC_DELAY * 1e3:g} ms after"
        " the real fdatasync, in the bench process only, for the simulated group-commit runs (restored after)",
    ]


def target_lines(
    targets: Sequence[Target], figures: Sequence[Figure], results: Sequence[Result], mode: str
) -> list[str]:
    """The TARGETS section: one line per criterion, the counts, how the bound was measured, the information."""
    rows = []
    for t in targets:
        goal = f"{t.op} {t.threshold:g}{'x' if t.unit == 'x' else (' ' + t.unit).rstrip()}"
        rows.append([t.row, t.measure, _shown(t.value, t.unit), goal, t.status, t.note])
    passed = sum(t.status == PASS for t in targets)
    by_row: dict[str, bool] = {}
    for t in targets:
        by_row[t.row] = by_row.get(t.row, True) and t.status == PASS
    lines = [
        f"TARGETS (issue 12; {SMALL_EVENT}-byte events; ratios from this run)",
        *grid(["row", "measure", "value", "target", "status", "note"], rows, left=2, note=True),
        f"{passed} of {len(targets)} criteria pass; {sum(by_row.values())} of {len(by_row)} rows pass",
        *_bound_lines(results),
        "",
        "information (not targets)",
        *grid(
            ["row", "measure", "value", "note"],
            [[f.row, f.measure, _shown(f.value, f.unit), f.note] for f in figures],
            left=2,
            note=True,
        ),
    ]
    if mode == "quick":
        lines.append("(quick mode: sizes far too small for these figures to mean anything)")
    return lines
