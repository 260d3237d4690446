"""Ratios between the contenders of one run, the text report, and the TARGETS section.

Every hybridlog figure is shown as a ratio to what the contenders did in the same run (this
machine is noisy; absolute numbers are not comparable between runs). ``add_ratios`` writes the
ratios into the results (``ratio_vs_<contender>``, ``speed_vs_uncompressed``,
``ratio_vs_read_verify``); ``evaluate_targets`` checks them against issue 4's targets table.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import sqlite3
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import apsw

from benchlib.contenders import (
    EVENTSOURCING,
    HYBRIDLOG,
    NONE,
    RAW_FLOOR,
    SQLITE_FULL,
    SQLITE_NORMAL,
    ZSTD,
    BenchError,
    Contender,
    eventsourcing_version,
)
from benchlib.events import SMALL_EVENT
from benchlib.groupcommit import ONE_STREAM, OWN_STREAMS
from benchlib.measure import MB, JSONValue, Result, number
from benchlib.randomread import PREAD_FLOOR

SUBJECT = HYBRIDLOG
COMPARED = ("append", "read_verify")
OTHERS = (RAW_FLOOR, SQLITE_NORMAL, SQLITE_FULL, EVENTSOURCING)


# --- ratios ----------------------------------------------------------------------------------------


def _comparable(subject: Result, other: Result) -> bool:
    """Same workload and event size; for appends also the batch size and fsync (None: any fsync)."""
    if subject["workload"] != other["workload"] or subject.get("event_size") != other.get("event_size"):
        return False
    if subject["workload"] == "append":
        return subject["batch_size"] == other["batch_size"] and other["fsync"] in (None, subject["fsync"])
    return True


def _only(results: Sequence[Result], what: str) -> Result:
    if len(results) != 1:
        raise BenchError(f"expected one {what} result, found {len(results)}")
    return results[0]


def add_ratios(results: list[Result]) -> None:
    """Write every ratio the report shows into the results it belongs to."""
    others = [r for r in results if r["workload"] in COMPARED and r["contender"] != SUBJECT]
    subjects = [r for r in results if r["workload"] in COMPARED and r["contender"] == SUBJECT]
    for r in subjects:
        for other in others:
            if _comparable(r, other):
                key = f"ratio_vs_{other['contender']}"
                if key in r:
                    raise BenchError(f"two {other['contender']} results match {r!r}")
                r[key] = number(r, "events_per_s") / number(other, "events_per_s")
        if r["compression"] != NONE:
            plain = _only(
                [
                    p
                    for p in subjects
                    if p["compression"] == NONE and _comparable(r, p) and p.get("fsync") == r.get("fsync")
                ],
                f"uncompressed twin of {r!r}",
            )
            r["speed_vs_uncompressed"] = number(r, "events_per_s") / number(plain, "events_per_s")
    floors = [r for r in results if r["workload"] == "random_read" and r["contender"] == PREAD_FLOOR]
    for r in results:
        if r["workload"] == "random_read" and r["contender"] == SUBJECT:
            floor = _only(floors, "random-read floor")
            r[f"ratio_vs_{PREAD_FLOOR}"] = number(r, "reads_per_s") / number(floor, "reads_per_s")
        elif r["workload"] == "rebuild_catalog":
            read = _only(
                [
                    s
                    for s in subjects
                    if s["workload"] == "read_verify"
                    and s["compression"] == NONE
                    and s["event_size"] == r["event_size"]
                ],
                "uncompressed hybridlog read + verify",
            )
            r["ratio_vs_read_verify"] = number(r, "events_per_s") / number(read, "events_per_s")


def find(results: Sequence[Result], **criteria: JSONValue) -> Result | None:
    """The one result whose fields equal ``criteria`` (None if there is none)."""
    found = [r for r in results if all(r.get(key) == value for key, value in criteria.items())]
    if len(found) > 1:
        raise BenchError(f"{len(found)} results match {criteria!r}")
    return found[0] if found else None


# --- targets ---------------------------------------------------------------------------------------

PASS, FAIL, MISSING = "PASS", "FAIL", "MISSING"


@dataclass(frozen=True, slots=True)
class Target:
    """One criterion of the issue's targets table, with what this run measured."""

    row: str
    """The targets-table row (a row with two criteria gives two Targets)."""
    measure: str
    value: float | None
    op: str
    """">=", "<=" or "<": how ``value`` must compare with ``threshold``."""
    threshold: float
    unit: str
    """"x" (a ratio), "s" or "MB"."""
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


def _value(result: Result | None, key: str) -> float | None:
    return None if result is None or result.get(key) is None else number(result, key)


def evaluate_targets(results: Sequence[Result], missing: dict[str, str]) -> list[Target]:
    """Issue 4's targets table, row by row, from this run's 256-byte results."""
    size = SMALL_EVENT

    def append(batch: int, fsync: bool, compression: str = NONE) -> Result | None:
        return find(
            results,
            workload="append",
            contender=SUBJECT,
            event_size=size,
            batch_size=batch,
            fsync=fsync,
            compression=compression,
        )

    def absent(name: str) -> str:
        return f"{name} {missing[name]}" if name in missing else ""

    b100, b1000_on, b1_on = append(100, False), append(1000, True), append(1, True)
    zstd = append(100, False, ZSTD)
    read = find(results, workload="read_verify", contender=SUBJECT, event_size=size, compression=NONE)
    random_read = find(results, workload="random_read", contender=SUBJECT, method="read_from")
    own = find(results, workload="group_commit", variant=OWN_STREAMS)
    one = find(results, workload="group_commit", variant=ONE_STREAM)
    opened = find(results, workload="open_clean")
    rebuild = find(results, workload="rebuild_catalog")
    memory = find(results, workload="verify_memory")
    threads = own["threads"] if own else 8
    reads_per_s = _value(random_read, "reads_per_s")
    store_mb = _value(memory, "segment_bytes")
    row_b100 = "append, batch 100, fsync off"
    row_group = f"group commit: {threads} threads, single events, fsync on"
    row_zstd = "zstd on 256-byte JSON (batch 100, fsync off)"
    return [
        Target(row_b100, f"vs {SQLITE_NORMAL}", _value(b100, f"ratio_vs_{SQLITE_NORMAL}"), ">=", 2.0, "x"),
        Target(
            row_b100,
            f"vs {EVENTSOURCING}",
            _value(b100, f"ratio_vs_{EVENTSOURCING}"),
            ">=",
            3.0,
            "x",
            absent(EVENTSOURCING),
        ),
        Target(
            "append, batch 1000, fsync on",
            f"vs {SQLITE_FULL}",
            _value(b1000_on, f"ratio_vs_{SQLITE_FULL}"),
            ">=",
            2.0,
            "x",
        ),
        Target(
            "append, batch 1, fsync on, one thread",
            f"vs {RAW_FLOOR} with fsync",
            _value(b1_on, f"ratio_vs_{RAW_FLOOR}"),
            ">=",
            0.85,
            "x",
        ),
        Target(row_group, "own streams vs one thread", _value(own, "ratio_vs_one_thread"), ">=", 5.0, "x"),
        Target(row_group, "one stream vs one thread", _value(one, "ratio_vs_one_thread"), ">=", 5.0, "x"),
        Target(
            "sequential read + full verify",
            f"vs {SQLITE_NORMAL} read + verify",
            _value(read, f"ratio_vs_{SQLITE_NORMAL}"),
            ">=",
            1.0,
            "x",
        ),
        Target(
            "random read by offset (warm)",
            f"read_from vs {PREAD_FLOOR}",
            _value(random_read, f"ratio_vs_{PREAD_FLOOR}"),
            ">=",
            0.6,
            "x",
            "" if reads_per_s is None else f"{reads_per_s:,.0f} reads/s",
        ),
        Target(
            row_zstd,
            "compression ratio, whole run, dictionary file counted",
            _value(zstd, "compression_ratio_with_dictionaries"),
            ">=",
            2.5,
            "x",
            _dictionary_note(zstd),
        ),
        Target(row_zstd, "append speed vs uncompressed", _value(zstd, "speed_vs_uncompressed"), ">=", 0.5, "x"),
        Target("open a clean store with 1,000 streams", "seconds", _value(opened, "seconds"), "<=", 0.5, "s"),
        Target(
            "rebuild the catalog from segments",
            "vs sequential read + verify",
            _value(rebuild, "ratio_vs_read_verify"),
            ">=",
            0.5,
            "x",
        ),
        Target(
            "peak memory verifying a 1 GB store",
            "child peak RSS",
            _value(memory, "peak_rss_mb"),
            "<",
            150.0,
            "MB",
            "" if store_mb is None else f"{store_mb / MB:,.0f} MB of segments",
        ),
    ]


def _dictionary_note(result: Result | None) -> str:
    """What the stream dictionary did in a zstd append run, in words."""
    if result is None:
        return ""
    ratio = _value(result, "dictionary_ratio")
    if ratio is None:
        return "no dictionary came into use (plain zstd throughout)"
    return f"{ratio:.2f}x once the dictionary was in use (after {result['events_before_dictionary']} events)"


# --- text ------------------------------------------------------------------------------------------


def _grid(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> list[str]:
    """A fixed-width table: the first ``left`` columns left-aligned, the rest right-aligned."""
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(headers), "  ".join("-" * w for w in widths), *(line(row) for row in rows)]


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _x(value: float | None) -> str:
    """A ratio: two decimals, or three significant digits below 0.1 (so 0.0009x does not show as 0.00x)."""
    if value is None:
        return "-"
    return f"{value:.2f}x" if value >= 0.1 else f"{value:.3g}x"


def _fixed(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _onoff(fsync: JSONValue) -> str:
    return "on" if fsync else "off"


def machine_info(tmp_root: Path | None) -> dict[str, JSONValue]:
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "hybridlog": importlib.metadata.version("hybridlog"),
        "apsw": apsw.apsw_version(),
        "sqlite": apsw.sqlite_lib_version(),
        "sqlite3_module_sqlite": sqlite3.sqlite_version,
        "eventsourcing": eventsourcing_version(),
        "tmp_dir": str(tmp_root) if tmp_root is not None else tempfile.gettempdir(),
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def _contender_lines(contenders: Sequence[Contender], missing: dict[str, str]) -> list[str]:
    lines = ["contenders"]
    for c in contenders:
        durability = (
            c.durability(False)
            if c.pragma_durability
            else f"fsync off: {c.durability(False)}; on: {c.durability(True)}"
        )
        lines.append(f"  {c.name:<14} {c.summary}")
        lines.append(f"  {'':<14} {durability}")
    lines.extend(f"  {name:<14} {why}" for name, why in missing.items())
    return lines


def _append_lines(results: Sequence[Result], size: int, names: Sequence[str], missing: dict[str, str]) -> list[str]:
    subject = [
        r for r in results if r["workload"] == "append" and r["contender"] == SUBJECT and r["event_size"] == size
    ]
    shapes = list(dict.fromkeys((r["batch_size"], r["fsync"]) for r in subject))
    columns = [(SUBJECT, NONE, SUBJECT), (SUBJECT, ZSTD, f"{SUBJECT}+zstd")]
    columns += [(n, NONE, n) for n in names if n != SUBJECT]
    rates: list[list[str]] = []
    ratios: list[list[str]] = []
    for batch, fsync in shapes:
        plain = _only(
            [r for r in subject if (r["batch_size"], r["fsync"], r["compression"]) == (batch, fsync, NONE)], "row"
        )
        zstd = find(subject, batch_size=batch, fsync=fsync, compression=ZSTD)
        row = [str(batch), _onoff(fsync)]
        for name, compression, _ in columns:
            if name in missing:
                row.append("not installed")
                continue
            match = [
                r
                for r in results
                if r["workload"] == "append"
                and r["contender"] == name
                and r["compression"] == compression
                and r["event_size"] == size
                and r["batch_size"] == batch
                and r["fsync"] in (None, fsync)
            ]
            row.append(_rate(number(match[0], "events_per_s")) if match else "-")
        rates.append(row)
        ratios.append(
            [
                str(batch),
                _onoff(fsync),
                *(
                    "not installed" if n in missing else _x(_value(plain, f"ratio_vs_{n}"))
                    for n in names
                    if n != SUBJECT
                ),
                _x(_value(zstd, "speed_vs_uncompressed")),
                _fixed(_value(zstd, "compression_ratio_with_dictionaries")),
                _fixed(_value(zstd, "dictionary_ratio")),
                _fixed(_value(zstd, "disk_ratio")),
                _fixed(_value(plain, "disk_ratio")),
            ]
        )
    return [
        f"append, {size}-byte events: events/s (MB/s = events/s x {size} / 10^6)",
        f"  {SQLITE_NORMAL} / {SQLITE_FULL}: measured once per batch size (the pragma sets their durability),"
        " shown in both fsync rows",
        *_grid(["batch", "fsync", *(title for _, _, title in columns)], rates, left=0),
        "",
        f"append, {size}-byte events: hybridlog (uncompressed) events/s over each contender's",
        "  zstd speed: hybridlog zstd events/s over uncompressed (the whole run, dictionary training included);",
        "  zstd ratio: payload bytes over stored payload bytes plus the dictionary file, the whole run;"
        " dict ratio: the same over the events stored once the dictionary was in use (- : none trained);",
        "  on disk: payload bytes over stored bytes, record framing and dictionary files included",
        *_grid(
            [
                "batch",
                "fsync",
                *(f"vs {n}" for n in names if n != SUBJECT),
                "zstd speed",
                "zstd ratio",
                "dict ratio",
                "zstd on disk",
                "none on disk",
            ],
            ratios,
            left=0,
        ),
    ]


def _read_lines(results: Sequence[Result], missing: dict[str, str]) -> list[str]:
    rows = []
    reads = [r for r in results if r["workload"] == "read_verify"]
    for r in reads:
        base = find(reads, contender=SUBJECT, compression=NONE, event_size=r["event_size"])
        ratio = None if base is None else number(base, "events_per_s") / number(r, "events_per_s")
        rows.append(
            [
                str(r["event_size"]),
                str(r["contender"]),
                str(r["compression"]),
                "chain" if r["verifies_chain"] else "read only (no chain)",
                str(r["events"]),
                _rate(number(r, "events_per_s")),
                _fixed(number(r, "mb_per_s"), 1),
                _x(ratio),
            ]
        )
    return [
        "read + verify from offset 0, a fresh reader, warm page cache (hybridlog / this: hybridlog uncompressed"
        " events/s over this row's)",
        *_grid(
            ["size", "contender", "compr", "verifies", "events", "events/s", "MB/s", "hybridlog / this"], rows, left=4
        ),
        *(f"{name}: {why}" for name, why in missing.items()),
    ]


def _random_lines(results: Sequence[Result]) -> list[str]:
    reads = [r for r in results if r["workload"] == "random_read"]
    if not reads:
        return []
    first = reads[0]
    rows = [
        [
            str(r["contender"]),
            str(r["method"]),
            str(r["reads"]),
            _rate(number(r, "reads_per_s")),
            _fixed(_value(r, "records_verified_mean"), 1),
            _x(_value(r, f"ratio_vs_{PREAD_FLOOR}")),
        ]
        for r in reads
    ]
    return [
        f"random read of one event by offset, warm ({first['event_size']}-byte events, stream of"
        f" {first['stream_events']:,} events, {first['distinct_offsets']:,} distinct random offsets)",
        *_grid(["contender", "method", "reads", "reads/s", "records verified/read", f"vs {PREAD_FLOOR}"], rows, left=2),
    ]


def _group_lines(results: Sequence[Result]) -> list[str]:
    runs = [r for r in results if r["workload"] == "group_commit"]
    if not runs:
        return []
    rows = [
        [
            str(r["variant"]),
            str(r["threads"]),
            str(r["streams"]),
            str(r["events"]),
            _rate(number(r, "events_per_s")),
            _x(_value(r, "ratio_vs_one_thread")),
        ]
        for r in runs
    ]
    return [
        "group commit: single-event Storage.append calls with fsync on, threads sharing one Storage",
        *_grid(["variant", "threads", "streams", "events", "events/s", "vs one thread"], rows),
    ]


def _store_lines(results: Sequence[Result]) -> list[str]:
    lines = ["store operations (hybridlog)"]
    for r in results:
        if r["workload"] == "open_clean":
            lines.append(f"  open a clean store of {r['streams']} streams for writing: {number(r, 'seconds'):.3f} s")
        elif r["workload"] == "rebuild_catalog":
            lines.append(
                f"  rebuild the catalog from segments: {r['events']} records in {number(r, 'seconds'):.2f} s"
                f" ({number(r, 'events_per_s'):,.0f} records/s, {_x(_value(r, 'ratio_vs_read_verify'))}"
                " sequential read + verify)"
            )
        elif r["workload"] == "verify_memory":
            lines.append(
                f"  verify a store of {number(r, 'segment_bytes') / MB:,.0f} MB of segments ({r['segments']} of at"
                f" most {number(r, 'max_segment_size') / 2**20:,.2f} MiB, {r['events']:,} events;"
                f" {number(r, 'store_bytes') / MB:,.0f} MB with the catalog) read-only in a child process:"
                f"\n    peak RSS {number(r, 'peak_rss_mb'):.1f} MB ({number(r, 'baseline_rss_mb'):.1f} MB before the"
                f" walk), {number(r, 'events_per_s'):,.0f} events/s"
            )
    return lines


def _target_lines(targets: Sequence[Target], mode: str) -> list[str]:
    rows = []
    for t in targets:
        value = _x(t.value) if t.unit == "x" or t.value is None else f"{t.value:.3g} {t.unit}"
        goal = f"{t.op} {t.threshold:g}{'x' if t.unit == 'x' else ' ' + t.unit}"
        rows.append([t.row, t.measure, value, goal, t.status, t.note])
    passed = sum(t.status == PASS for t in targets)
    by_row: dict[str, bool] = {}
    for t in targets:
        by_row[t.row] = by_row.get(t.row, True) and t.status == PASS
    lines = [
        f"TARGETS (issue 4; {SMALL_EVENT}-byte events; ratios from this run)",
        *_grid(["row", "measure", "value", "target", "status", "note"], rows, left=2),
        f"{passed} of {len(targets)} criteria pass; {sum(by_row.values())} of {len(by_row)} rows pass",
    ]
    if mode == "quick":
        lines.append("(quick mode: sizes far too small for these figures to mean anything)")
    return lines


def render(
    mode: str,
    machine: dict[str, JSONValue],
    repeat: int,
    results: Sequence[Result],
    contenders: Sequence[Contender],
    missing: dict[str, str],
    targets: Sequence[Target],
) -> str:
    """The whole human-readable report."""
    names = [c.name for c in contenders] + [n for n in missing if n not in {c.name for c in contenders}]
    names = [n for n in (SUBJECT, *OTHERS) if n in names]
    sizes = list(dict.fromkeys(r["event_size"] for r in results if r["workload"] == "append"))
    lines = [
        f"hybridlog bench ({mode}): {machine['nproc']} CPUs, Python {machine['python']}, SQLite {machine['sqlite']}"
        f" (apsw) / {machine['sqlite3_module_sqlite']} (sqlite3), {machine['platform']}",
        f"stores under {machine['tmp_dir']}; append, read and group-commit figures are the median of {repeat} run(s)",
        "",
        *_contender_lines(contenders, missing),
    ]
    for size in sizes:
        assert isinstance(size, int)
        lines += ["", *_append_lines(results, size, names, missing)]
    for section in (
        _read_lines(results, missing),
        _random_lines(results),
        _group_lines(results),
        _store_lines(results),
    ):
        lines += ["", *section]
    lines += ["", *_target_lines(targets, mode)]
    return "\n".join(lines)
