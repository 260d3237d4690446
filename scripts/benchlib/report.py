"""The human-readable report: the machine, the contenders, one table per workload, then TARGETS.

Ratios come from ``ratios`` (written into the results), the TARGETS section from ``targets``;
the tables go to stdout, the same figures to the JSON file (``bench.py``).
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import sqlite3
import tempfile
from collections.abc import Sequence
from pathlib import Path

import apsw

from benchlib.contenders import NONE, SQLITE_FULL, SQLITE_NORMAL, ZSTD, Contender, eventsourcing_version
from benchlib.groupcommit import SIMULATED_SLOW, SLOW_FSYNC_DELAY
from benchlib.measure import MB, JSONValue, Result, number
from benchlib.randomread import PREAD_FLOOR
from benchlib.ratios import OTHERS, SUBJECT, find, only, value
from benchlib.targets import Figure, Target, target_lines
from benchlib.text import fixed, grid, micro, onoff, rate, times


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
        plain = only(
            [r for r in subject if (r["batch_size"], r["fsync"], r["compression"]) == (batch, fsync, NONE)], "row"
        )
        zstd = find(subject, batch_size=batch, fsync=fsync, compression=ZSTD)
        row = [str(batch), onoff(fsync)]
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
            row.append(rate(number(match[0], "events_per_s")) if match else "-")
        rates.append(row)
        ratios.append(
            [
                str(batch),
                onoff(fsync),
                *(
                    "not installed" if n in missing else times(value(plain, f"ratio_vs_{n}"))
                    for n in names
                    if n != SUBJECT
                ),
                times(value(zstd, "speed_vs_uncompressed")),
                fixed(value(zstd, "compression_ratio_with_dictionaries")),
                fixed(value(zstd, "dictionary_ratio")),
                fixed(value(zstd, "disk_ratio")),
                fixed(value(plain, "disk_ratio")),
            ]
        )
    return [
        f"append, {size}-byte events: events/s (MB/s = events/s x {size} / 10^6)",
        f"  {SQLITE_NORMAL} / {SQLITE_FULL}: measured once per batch size (the pragma sets their durability),"
        " shown in both fsync rows",
        *grid(["batch", "fsync", *(title for _, _, title in columns)], rates, left=0),
        "",
        f"append, {size}-byte events: hybridlog (uncompressed) events/s over each contender's",
        "  zstd speed: hybridlog zstd events/s over uncompressed (the whole run, dictionary training included);",
        "  zstd ratio: payload bytes over stored payload bytes plus the dictionary file, the whole run;"
        " dict ratio: the same over the events stored once the dictionary was in use (- : none trained);",
        "  on disk: payload bytes over stored bytes, record framing and dictionary files included",
        *grid(
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
                rate(number(r, "events_per_s")),
                fixed(number(r, "mb_per_s"), 1),
                times(ratio),
            ]
        )
    return [
        "read + verify from offset 0, a fresh reader, warm page cache (hybridlog / this: hybridlog uncompressed"
        " events/s over this row's)",
        *grid(
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
            rate(number(r, "reads_per_s")),
            fixed(value(r, "records_verified_mean"), 1),
            times(value(r, f"ratio_vs_{PREAD_FLOOR}")),
        ]
        for r in reads
    ]
    return [
        f"random read of one event by offset, warm ({first['event_size']}-byte events, stream of"
        f" {first['stream_events']:,} events, {first['distinct_offsets']:,} distinct random offsets)",
        *grid(["contender", "method", "reads", "reads/s", "records verified/read", f"vs {PREAD_FLOOR}"], rows, left=2),
    ]


def _group_lines(results: Sequence[Result]) -> list[str]:
    runs = [r for r in results if r["workload"] == "group_commit"]
    if not runs:
        return []
    rows = [
        [
            "real" if r["disk"] != SIMULATED_SLOW else f"SIMULATED +{SLOW_FSYNC_DELAY * 1e3:g} ms",
            str(r["variant"]),
            str(r["threads"]),
            str(r["streams"]),
            str(r["events"]),
            rate(number(r, "events_per_s")),
            times(value(r, "ratio_vs_one_thread")),
            fixed(value(r, "fraction_of_bound")),
            fixed(value(r, "fraction_of_effective_bound")),
        ]
        for r in runs
    ]
    bound = find(results, workload="group_commit_bound")
    lines = [
        "group commit: single-event Storage.append calls with fsync on, threads sharing one Storage",
        "  of bound: vs one thread over 1 + f/c; of effective: over min(threads, 1 + f/c) (real disk only)",
        *grid(
            [
                "fsync",
                "variant",
                "threads",
                "streams",
                "events",
                "events/s",
                "vs one thread",
                "of bound",
                "of effective",
            ],
            rows,
            left=2,
        ),
    ]
    if bound is not None:
        lines.append(
            f"  f = {micro(value(bound, 'fsync_seconds'))} per write + fdatasync,"
            f" c = {micro(value(bound, 'append_cpu_seconds'))} CPU per unsynced append:"
            f" bound {fixed(value(bound, 'bound'))}, effective bound {fixed(value(bound, 'effective_bound'))}"
        )
    return lines


def _store_lines(results: Sequence[Result]) -> list[str]:
    lines = ["store operations (hybridlog)"]
    for r in results:
        if r["workload"] == "open_clean":
            lines.append(f"  open a clean store of {r['streams']} streams for writing: {number(r, 'seconds'):.3f} s")
        elif r["workload"] == "rebuild_catalog":
            lines.append(
                f"  rebuild the catalog from segments: {r['events']} records in {number(r, 'seconds'):.2f} s"
                f" ({number(r, 'events_per_s'):,.0f} records/s, {times(value(r, 'ratio_vs_read_verify'))}"
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


def render(
    mode: str,
    machine: dict[str, JSONValue],
    repeat: int,
    results: Sequence[Result],
    contenders: Sequence[Contender],
    missing: dict[str, str],
    targets: Sequence[Target],
    figures: Sequence[Figure],
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
    lines += ["", *target_lines(targets, figures, results, mode)]
    return "\n".join(lines)
