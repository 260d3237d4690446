"""What the store's Merkle tree costs an append (issue 14), and what a proof costs.

Appends keep the tree in their own catalog transaction (``framing.extend_tree``: hash each new
record's leaf entry, append the leaf hashes to the tiles). The same appends are timed with the tree
and with ``hybridlog.writer.extend_tree`` replaced by a function that does nothing (the tree then
stays empty; nothing else changes), in batches of 1 and 100, fsync off and on, on 256-byte events.
Each round runs both on fresh stores, their order alternating between rounds; the figure is the
median over the rounds, and ``ratio_vs_no_tree`` is the speed with the tree over the speed without
(1.0: free; 0.9: appends 10% slower).

Then, as information, on a store of the batch-100 events written with the default checkpoint
policy: ``prove_inclusion`` of records picked at random (each record read and verified from its
nearest checkpoint) and ``prove_consistency`` from random earlier sizes, per proof.
"""

from __future__ import annotations

import contextlib
import random
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

from benchlib.contenders import HYBRIDLOG, STREAM_ID, BenchError
from benchlib.events import SMALL_EVENT, make_batches
from benchlib.measure import Result, number, timed
from benchlib.text import grid, micro, onoff, rate, times
from hybridlog import CheckpointPolicy, Storage

WORKLOAD = "tree_cost"
PROOF_WORKLOAD = "tree_proof"
WITH_TREE = "tree"
WITHOUT_TREE = "no_tree"


@dataclass(frozen=True, slots=True)
class TreeCostSizes:
    """Events appended per (batch size, fsync) case and round, rounds, and proofs timed."""

    events: tuple[tuple[int, bool, int], ...] = (
        (1, False, 5_000),
        (100, False, 50_000),
        (1, True, 1_000),
        (100, True, 20_000),
    )
    rounds: int = 5
    proofs: int = 500


QUICK_TREE_SIZES = TreeCostSizes(
    events=((1, False, 20), (100, False, 400), (1, True, 5), (100, True, 200)), rounds=1, proofs=10
)


@contextlib.contextmanager
def _tree_switched(on: bool) -> Iterator[None]:
    """The writer with its tree step as shipped (``on``) or replaced by one that does nothing."""
    if on:
        yield
    else:
        with mock.patch("hybridlog.writer.extend_tree", return_value=None):
            yield


def _append_seconds(directory: Path, batches: Sequence[Sequence[bytes]], fsync: bool, tree: bool) -> float:
    with _tree_switched(tree), Storage(directory, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        store.append(STREAM_ID, [b"{}"], fsync=False)  # the stream's creation, outside the timing

        def append_all() -> None:
            for batch in batches:
                store.append(STREAM_ID, batch, fsync=fsync)

        seconds, _ = timed(append_all)
        expected = 1 + sum(len(batch) for batch in batches)
        size = store.tree.size() if tree else 0
        if tree and size != expected:
            raise BenchError(f"the tree holds {size} leaves after {expected} appended records")
    return seconds


def _proof_results(directory: Path, proofs: int, seed: int) -> list[Result]:
    """Inclusion and consistency proofs on the store in ``directory``, each checked, per proof."""
    picker = random.Random(seed)
    with Storage(directory, read_only=True) as store:
        size = store.tree.size()
        root = store.tree.root()
        offsets = [picker.randrange(size) for _ in range(proofs)]
        old_sizes = [picker.randrange(1, size + 1) for _ in range(proofs)]
        started = time.perf_counter()
        inclusion = [store.prove_inclusion(STREAM_ID, offset) for offset in offsets]
        inclusion_seconds = (time.perf_counter() - started) / proofs
        started = time.perf_counter()
        consistency = [store.prove_consistency(old) for old in old_sizes]
        consistency_seconds = (time.perf_counter() - started) / proofs
    if any(p.root != root for p in inclusion) or any(p.root != root for p in consistency):
        raise BenchError("a proof names another root than the store's tree")
    return [
        {
            "workload": PROOF_WORKLOAD,
            "contender": HYBRIDLOG,
            "case": case,
            "tree_size": size,
            "operations": proofs,
            "seconds_per_op": seconds,
        }
        for case, seconds in (("inclusion", inclusion_seconds), ("consistency", consistency_seconds))
    ]


def run_tree_cost(pool: Sequence[bytes], sizes: TreeCostSizes, seed: int, tmp_root: Path | None) -> list[Result]:
    """One Result per (batch size, fsync, tree or not), then the proof figures."""
    results: list[Result] = []
    proofs: list[Result] = []
    for batch_size, fsync, events in sizes.events:
        batches = make_batches(pool, events, batch_size)
        runs: dict[str, list[float]] = {WITH_TREE: [], WITHOUT_TREE: []}
        for round_no in range(sizes.rounds):
            order = (WITH_TREE, WITHOUT_TREE) if round_no % 2 == 0 else (WITHOUT_TREE, WITH_TREE)
            for variant in order:
                with tempfile.TemporaryDirectory(prefix="bench-tree-", dir=tmp_root) as tmp:
                    store_dir = Path(tmp) / "store"
                    runs[variant].append(_append_seconds(store_dir, batches, fsync, variant == WITH_TREE))
        if batch_size == 100 and not fsync:
            with tempfile.TemporaryDirectory(prefix="bench-tree-proofs-", dir=tmp_root) as tmp:
                store_dir = Path(tmp) / "store"
                with Storage(store_dir) as store:  # the default checkpoint policy, as a user's store
                    for batch in batches:
                        store.append(STREAM_ID, batch, fsync=False)
                proofs = _proof_results(store_dir, sizes.proofs, seed)
        pair: dict[str, Result] = {}
        for variant, seconds_list in runs.items():
            seconds = statistics.median(seconds_list)
            pair[variant] = {
                "workload": WORKLOAD,
                "contender": HYBRIDLOG,
                "variant": variant,
                "event_size": len(pool[0]),
                "batch_size": batch_size,
                "fsync": fsync,
                "events": events,
                "seconds": seconds,
                "runs_seconds": seconds_list,
                "events_per_s": events / seconds,
            }
        pair[WITH_TREE]["ratio_vs_no_tree"] = number(pair[WITH_TREE], "events_per_s") / number(
            pair[WITHOUT_TREE], "events_per_s"
        )
        results += [pair[WITH_TREE], pair[WITHOUT_TREE]]
    return results + proofs


def tree_cost_lines(results: Sequence[Result]) -> list[str]:
    """The table: events/s with and without the tree, the ratio, and the time the tree adds per event."""
    rows = []
    for mine in (r for r in results if r["workload"] == WORKLOAD and r["variant"] == WITH_TREE):
        bare = next(
            r
            for r in results
            if r["workload"] == WORKLOAD
            and r["variant"] == WITHOUT_TREE
            and r["batch_size"] == mine["batch_size"]
            and r["fsync"] == mine["fsync"]
        )
        added = (number(mine, "seconds") - number(bare, "seconds")) / number(mine, "events")
        rows.append(
            [
                f"batch {mine['batch_size']}, fsync {onoff(mine['fsync'])}",
                rate(number(mine, "events_per_s")),
                rate(number(bare, "events_per_s")),
                times(number(mine, "ratio_vs_no_tree")),
                micro(added),
            ]
        )
    lines = [
        f"the store's Merkle tree: cost per append (issue 14; {SMALL_EVENT}-byte events)",
        "  ratio: events/s with the tree / without (1.00x: free)",
        *grid(["appends", "tree ev/s", "no tree ev/s", "ratio", "added per event"], rows),
    ]
    lines += [
        f"information: prove_{proof['case']} on a tree of {proof['tree_size']:,} leaves (read-only store):"
        f" {micro(number(proof, 'seconds_per_op'))} per proof"
        for proof in results
        if proof["workload"] == PROOF_WORKLOAD
    ]
    return lines
