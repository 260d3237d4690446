#!/usr/bin/env python3
"""The hybridlog benchmark: every workload, every contender, one process, the same data.

    .venv/bin/python scripts/bench.py            # about 3 minutes on 2 cores
    .venv/bin/python scripts/bench.py --quick    # a few seconds: checks the harness only

Measured (``scripts/README.md`` says how): appends of 256-byte and 4 KiB JSON events in batches
of 1, 100 and 1000 with fsync off and on; sequential read + verify; random reads by offset;
opening a clean store of 1,000 streams; rebuilding the catalog; peak memory verifying a store far
larger than a segment (in a subprocess); group commit; what the store's Merkle tree costs an
append (with it and without it) and a proof. Contenders: a raw hash-chained file, an
SQLite-only store (synchronous NORMAL and FULL) and the eventsourcing library's SQLite recorder
(when the ``bench`` extra is installed; otherwise reported as not installed). Every hybridlog
figure is shown as a ratio to the contenders of the same run, and a TARGETS section checks
issue 12's targets table (group commit also against the bound 1 + fsync time / per-append CPU,
and on a slow disk simulated in this process). The tables go to stdout, progress to stderr,
everything to ``--json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from benchlib.contenders import Contender, available_contenders
from benchlib.events import SMALL_EVENT, make_event_pool
from benchlib.groupcommit import run_group_commit
from benchlib.measure import (
    DEFAULT_SIZES,
    LARGE_MEMORY_BYTES,
    QUICK_SIZES,
    Result,
    Sizes,
    number,
    run_append,
    run_open,
    run_read_verify,
    run_rebuild,
)
from benchlib.memory import run_verify_memory
from benchlib.randomread import run_random_read
from benchlib.ratios import add_ratios
from benchlib.recorders import (
    QUICK_RECORDER_SIZES,
    RecorderSizes,
    installed,
    recorder_lines,
    recorder_target_lines,
    recorder_targets,
    run_recorders,
)
from benchlib.report import machine_info, render
from benchlib.targets import evaluate_targets, information
from benchlib.tiercost import QUICK_TIER_SIZES, TierSizes, run_tier_cost, tier_cost_lines
from benchlib.treecost import QUICK_TREE_SIZES, TreeCostSizes, run_tree_cost, tree_cost_lines


def _progress(result: Result) -> None:
    """One stderr line per finished measurement."""
    shape = " ".join(
        f"{key}={result[key]}"
        for key in ("event_size", "batch_size", "fsync", "compression", "method", "variant", "disk")
        if key in result
    )
    if "seconds" in result:
        figure = f"{number(result, 'seconds'):.2f}s"
    elif "seconds_per_op" in result:
        figure = f"{result['case']}: {number(result, 'seconds_per_op') * 1e6:.1f}us per op"
    else:  # the group-commit bound
        figure = f"f={number(result, 'fsync_seconds') * 1e6:.0f}us c={number(result, 'append_cpu_seconds') * 1e6:.1f}us"
    print(f"{result['workload']:<15} {result['contender']:<14} {shape}: {figure}", file=sys.stderr, flush=True)


def run_all(
    sizes: Sizes,
    contenders: Sequence[Contender],
    *,
    seed: int,
    repeat: int,
    tmp_root: Path | None,
    recorder_sizes: RecorderSizes | None,
    tree_sizes: TreeCostSizes,
    tier_sizes: TierSizes = QUICK_TIER_SIZES,
) -> list[Result]:
    """Every measurement in a fixed order; each append/read one runs ``repeat`` times (median kept)."""
    pools = {size: make_event_pool(sizes.pool[size], seed, size) for size in sizes.event_sizes}
    small = pools[min(pools)]
    results: list[Result] = []

    def keep(*measured: Result) -> None:
        for result in measured:
            _progress(result)
            results.append(result)

    for case in sizes.append:
        for contender in contenders:
            if case.fsync in contender.fsync_modes:
                for compression in contender.compressions:
                    keep(run_append(contender, case, compression, pools[case.event_size], repeat, tmp_root))
    for size, n_events in sizes.read_events.items():
        for contender in contenders:
            if contender.measures_read:
                for compression in contender.compressions:
                    keep(run_read_verify(contender, compression, size, n_events, pools[size], repeat, tmp_root))
    keep(*run_random_read(small, sizes.random_events, sizes.random_reads, sizes.random_min_seconds, seed, tmp_root))
    keep(run_open(sizes.open_streams, small, repeat, tmp_root))
    keep(run_rebuild(sizes.rebuild_events, small, repeat, tmp_root))
    keep(*run_group_commit(small, sizes, repeat, tmp_root))
    keep(run_verify_memory(small, sizes.memory_bytes, sizes.memory_segment_size, tmp_root))
    keep(*run_tree_cost(small, tree_sizes, seed, tmp_root))
    keep(*run_tier_cost(small, tier_sizes, tmp_root))
    if recorder_sizes is not None:
        keep(*run_recorders(make_event_pool(2000, seed, SMALL_EVENT), recorder_sizes, tmp_root))
    add_ratios(results)
    return results


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds: checks the harness works")
    parser.add_argument("--large", action="store_true", help="verify a 1 GB store for the peak-memory figure")
    parser.add_argument("--json", type=Path, default=Path("bench-results.json"), metavar="PATH", help="results file")
    parser.add_argument("--repeat", type=_positive, default=None, help="runs per measurement (median reported)")
    parser.add_argument("--seed", type=int, default=2024, help="seed for the generated events and offsets")
    parser.add_argument("--tmpdir", type=Path, default=None, help="where the stores go (fsync cost depends on it)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = QUICK_SIZES if args.quick else DEFAULT_SIZES
    if args.large:
        sizes = dataclasses.replace(sizes, memory_bytes=LARGE_MEMORY_BYTES, memory_segment_size=None)
    mode = "quick" if args.quick else "default"
    mode += "+large" if args.large else ""
    machine = machine_info(args.tmpdir)
    repeat = sizes.repeat if args.repeat is None else args.repeat
    contenders, missing = available_contenders()
    es_missing = installed()
    es_sizes = None if es_missing else (QUICK_RECORDER_SIZES if args.quick else RecorderSizes())
    tree_sizes = QUICK_TREE_SIZES if args.quick else TreeCostSizes()
    results = run_all(
        sizes,
        contenders,
        seed=args.seed,
        repeat=repeat,
        tmp_root=args.tmpdir,
        recorder_sizes=es_sizes,
        tree_sizes=tree_sizes,
        tier_sizes=QUICK_TIER_SIZES if args.quick else TierSizes(),
    )
    targets = evaluate_targets(results, missing)
    es_targets = recorder_targets(results, es_missing)
    figures = information(results, missing)
    report: dict[str, object] = {
        "mode": mode,
        "seed": args.seed,
        "repeat": repeat,
        "event_sizes": list(sizes.event_sizes),
        "machine": machine,
        "contenders": {
            **{c.name: {"installed": True, "summary": c.summary} for c in contenders},
            **{name: {"installed": False, "summary": why} for name, why in missing.items()},
        },
        "results": results,
        "targets": [t.as_json() for t in targets],
        "eventsourcing_targets": [t.as_json() for t in es_targets],
        "information": [f.as_json() for f in figures],
    }
    print(render(mode, machine, repeat, results, contenders, missing, targets, figures))
    print("\n" + "\n".join([*recorder_lines(results, es_missing), "", *recorder_target_lines(es_targets, results)]))
    print("\n" + "\n".join(tree_cost_lines(results)))
    print("\n" + "\n".join(tier_cost_lines(results)))
    args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nresults written to {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
