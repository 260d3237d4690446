"""``scripts/bench.py --quick`` runs end to end and writes a complete, self-consistent results file.

Correctness only: the benchmark runs as a subprocess on tiny sizes (once as installed, once with
the optional eventsourcing library made unimportable), and the tests check that every workload
was measured for every contender present, that the numbers are positive and agree with each
other, that every ratio is the quotient it claims to be, and that the TARGETS section covers
every row of issue 12's targets table with a status that follows from its value. No test looks
at how fast anything was. The benchlib modules' own unit tests are in ``test_benchlib.py``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
BENCH = SCRIPTS / "bench.py"
EVENT_SIZES = (256, 4096)
BATCH_SIZES = (1, 100, 1000)
FSYNC = (False, True)
HAVE_EVENTSOURCING = importlib.util.find_spec("eventsourcing") is not None
TARGETS_TITLE = "TARGETS (issue 12; 256-byte events; ratios from this run)"
GROUP_ROW = "group commit, 8 threads, single fsync'd appends"
# Issue 12's targets table: row -> (measure, op, threshold) of each of its criteria.
TARGET_CRITERIA = {
    "append, batch 100, fsync off": [("vs sqlite_normal", ">=", 2.0), ("vs eventsourcing", ">=", 3.0)],
    "append, batch 1000, fsync on": [("vs sqlite_full", ">=", 2.0)],
    "append, batch 1, fsync on, one thread": [("vs raw_floor (write + fdatasync)", ">=", 0.85)],
    GROUP_ROW: [
        ("own streams, slow fsync (SIMULATED): vs one thread", ">=", 5.0),
        ("one stream, slow fsync (SIMULATED): vs one thread", ">=", 5.0),
        ("own streams, real fsync: speed-up / effective bound", ">=", 0.8),
        ("one stream, real fsync: speed-up / effective bound", ">=", 0.8),
    ],
    "sequential read + full verify": [("vs sqlite_normal read + verify", ">=", 1.0)],
    "random read by offset (warm, read-only process)": [("read_from (read_only=True) vs pread_floor", ">=", 0.6)],
    "rebuild the catalog from segments": [("vs sequential read + verify", ">=", 0.5)],
    "open a clean store with 1,000 streams": [("seconds", "<=", 0.5)],
    "peak memory verifying a 1 GB store": [("child peak RSS", "<", 150.0)],
}
ZSTD_ROW = "zstd on 256-byte JSON (batch 100, fsync off)"
STDOUT_SECTIONS = (
    "contenders",
    "append, 256-byte events",
    "append, 4096-byte events",
    "read + verify from offset 0",
    "random read of one event by offset",
    "group commit",
    "store operations",
    "TARGETS",
    "the store's Merkle tree: cost per append",
    "tiering to S3",
)
# Runs bench.py as __main__ with the eventsourcing package unimportable (as if not installed).
WITHOUT_EVENTSOURCING = (
    "import runpy, sys; sys.modules['eventsourcing'] = None; sys.argv = sys.argv[1:];"
    " sys.path.insert(0, str(__import__('pathlib').Path(sys.argv[0]).parent));"
    " runpy.run_path(sys.argv[0], run_name='__main__')"
)


@dataclass(frozen=True)
class BenchRun:
    returncode: int
    stdout: str
    stderr: str
    report: dict[str, Any]
    stores: Path


def run_quick(work: Path, *, block_eventsourcing: bool) -> BenchRun:
    """One ``--quick`` run in a subprocess, its stores in a private directory."""
    out = work / "results.json"
    stores = work / "stores"
    stores.mkdir()
    args = [str(BENCH), "--quick", "--json", str(out), "--tmpdir", str(stores)]
    command = [sys.executable, "-c", WITHOUT_EVENTSOURCING, *args] if block_eventsourcing else [sys.executable, *args]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    report: dict[str, Any] = json.loads(out.read_text(encoding="utf-8")) if out.exists() else {}
    return BenchRun(proc.returncode, proc.stdout, proc.stderr, report, stores)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> BenchRun:
    """The benchmark as installed (with eventsourcing if this environment has it), shared by the tests."""
    return run_quick(tmp_path_factory.mktemp("bench"), block_eventsourcing=False)


@pytest.fixture(scope="module")
def run_without_eventsourcing(tmp_path_factory: pytest.TempPathFactory) -> BenchRun:
    """The benchmark with ``eventsourcing`` unimportable, as on a machine without the ``bench`` extra."""
    return run_quick(tmp_path_factory.mktemp("bench-no-es"), block_eventsourcing=True)


def results_of(run: BenchRun, workload: str) -> list[dict[str, Any]]:
    return [r for r in run.report["results"] if r["workload"] == workload]


def contenders_of(run: BenchRun) -> set[str]:
    return {name for name, info in run.report["contenders"].items() if info["installed"]}


def the(rows: list[dict[str, Any]], **criteria: Any) -> dict[str, Any]:
    """The one row matching every criterion."""
    (row,) = [r for r in rows if all(r.get(k) == v for k, v in criteria.items())]
    return row


# --- the run as a whole ----------------------------------------------------------------------------


def test_quick_run_exits_zero_prints_every_section_and_cleans_up(quick_run: BenchRun) -> None:
    """The script succeeds, prints every table and the TARGETS section, and leaves no store behind."""
    assert quick_run.returncode == 0, quick_run.stderr
    for section in STDOUT_SECTIONS:
        assert section in quick_run.stdout, section
    for name in contenders_of(quick_run):
        assert name in quick_run.stdout
    assert list(quick_run.stores.iterdir()) == []


def test_report_describes_the_machine_mode_and_contenders(quick_run: BenchRun) -> None:
    """The JSON names the mode, sizes, machine and which contenders were installed (eventsourcing as found)."""
    report = quick_run.report
    assert report["mode"] == "quick"
    assert report["event_sizes"] == list(EVENT_SIZES)
    assert report["machine"]["nproc"] > 0
    assert report["machine"]["python"] == ".".join(str(part) for part in sys.version_info[:3])
    assert contenders_of(quick_run) >= {"hybridlog", "raw_floor", "sqlite_normal", "sqlite_full"}
    assert report["contenders"]["eventsourcing"]["installed"] is HAVE_EVENTSOURCING
    assert (report["machine"]["eventsourcing"] is not None) is HAVE_EVENTSOURCING


# --- append ----------------------------------------------------------------------------------------


def expected_append_rows(eventsourcing: bool) -> set[tuple[str, int, int, bool | None, str]]:
    """(contender, event size, batch, fsync, compression) of every append measurement a run makes.

    The SQLite-only stores are measured once per batch size (their pragma sets durability):
    NORMAL with the fsync-off sizes, FULL with the fsync-on ones; their fsync is recorded as None.
    """
    rows: set[tuple[str, int, int, bool | None, str]] = set()
    for size in EVENT_SIZES:
        for batch in BATCH_SIZES:
            rows |= {("sqlite_normal", size, batch, None, "none"), ("sqlite_full", size, batch, None, "none")}
            for fsync in FSYNC:
                rows |= {
                    ("hybridlog", size, batch, fsync, "none"),
                    ("hybridlog", size, batch, fsync, "zstd"),
                    ("raw_floor", size, batch, fsync, "none"),
                }
                if eventsourcing:
                    rows.add(("eventsourcing", size, batch, fsync, "none"))
    return rows


def test_append_covers_every_size_batch_fsync_and_contender(quick_run: BenchRun) -> None:
    rows = results_of(quick_run, "append")
    seen = [(r["contender"], r["event_size"], r["batch_size"], r["fsync"], r["compression"]) for r in rows]
    assert len(seen) == len(set(seen))
    assert set(seen) == expected_append_rows(HAVE_EVENTSOURCING)


def test_append_numbers_are_positive_and_consistent(quick_run: BenchRun) -> None:
    """Counts match the batch shape and event size; rates agree with events / seconds."""
    for r in results_of(quick_run, "append"):
        assert r["events"] > 0
        assert r["batches"] == math.ceil(r["events"] / r["batch_size"])
        assert r["payload_bytes"] == r["events"] * r["event_size"]
        assert r["seconds"] > 0
        assert len(r["runs_seconds"]) == quick_run.report["repeat"]
        assert r["events_per_s"] == pytest.approx(r["events"] / r["seconds"])
        assert r["mb_per_s"] == pytest.approx(r["payload_bytes"] / r["seconds"] / 1e6)
        assert r["disk_bytes"] > 0
        assert r["durability"]


DICTIONARY_FIELDS = ("dictionary_bytes", "compression_ratio_with_dictionaries", "dictionary_ratio")


def test_hybridlog_space_comes_from_the_catalog(quick_run: BenchRun) -> None:
    """payload/stored from the catalog; zstd shrinks these JSON events, none stores them as they are.

    Dictionary files count as stored bytes in the whole-run ratio and on disk; the dictionary ratio
    covers the events stored once the dictionary was in use.
    """
    rows = results_of(quick_run, "append")
    for r in rows:
        if r["contender"] != "hybridlog":
            assert r["stored_bytes"] is None
            assert r["compression_ratio"] is None
            assert all(r[key] is None for key in DICTIONARY_FIELDS)
            continue
        assert r["stored_bytes"] > 0
        assert r["disk_ratio"] == pytest.approx(r["payload_bytes"] / (r["stored_bytes"] + r["dictionary_bytes"]))
        stored_payload = r["payload_bytes"] / r["compression_ratio"]
        assert r["compression_ratio_with_dictionaries"] == pytest.approx(
            r["payload_bytes"] / (stored_payload + r["dictionary_bytes"])
        )
        if r["compression"] == "none":
            assert r["compression_ratio"] == pytest.approx(1.0)
            assert r["dictionary_bytes"] == 0
            assert r["dictionary_ratio"] is None
        else:
            plain = the(rows, contender="hybridlog", compression="none", **shape_of(r))
            assert r["compression_ratio"] > 1.0
            assert r["stored_bytes"] < plain["stored_bytes"]
        if r["dictionary_ratio"] is None:
            assert r["events_before_dictionary"] is None
        else:
            # A dictionary is trained after some events (1,000 of 256 bytes, 64 of 4 KiB) and shrinks
            # the events after it further.
            assert r["events"] > r["events_before_dictionary"] > 0
            assert r["dictionary_bytes"] > 0
            assert r["dictionary_ratio"] > r["compression_ratio_with_dictionaries"]


def test_the_zstd_target_run_is_long_enough_to_train_a_dictionary(quick_run: BenchRun) -> None:
    """The row the zstd target reads (256-byte events, batch 100, fsync off) has its dictionary in use."""
    zstd = the(
        results_of(quick_run, "append"),
        contender="hybridlog",
        event_size=256,
        batch_size=100,
        fsync=False,
        compression="zstd",
    )
    assert zstd["dictionary_ratio"] is not None
    assert zstd["events_before_dictionary"] == 1000


def shape_of(r: dict[str, Any]) -> dict[str, Any]:
    return {key: r[key] for key in ("workload", "event_size", "batch_size", "fsync") if key in r}


def matching_contender_row(rows: list[dict[str, Any]], subject: dict[str, Any], name: str) -> dict[str, Any]:
    """The contender's result compared with ``subject``: same shape; a None fsync matches either."""
    (match,) = [
        o
        for o in rows
        if o["contender"] == name
        and o["event_size"] == subject["event_size"]
        and o.get("batch_size") == subject.get("batch_size")
        and o.get("fsync") in (None, subject.get("fsync"))
    ]
    return match


@pytest.mark.parametrize("workload", ["append", "read_verify"])
def test_hybridlog_rows_carry_their_ratio_to_every_contender(quick_run: BenchRun, workload: str) -> None:
    """ratio_vs_<name> is hybridlog's events/s over the matching contender row's, for every contender present."""
    rows = results_of(quick_run, workload)
    others = contenders_of(quick_run) - {"hybridlog"}
    if workload == "read_verify":
        others -= {"sqlite_full"}  # reading does not depend on the pragma: sqlite_normal's store is read
    for r in rows:
        if r["contender"] != "hybridlog":
            assert not any(key.startswith("ratio_vs_") for key in r)
            continue
        assert {key.removeprefix("ratio_vs_") for key in r if key.startswith("ratio_vs_")} == others
        for name in others:
            match = matching_contender_row(rows, r, name)
            assert r[f"ratio_vs_{name}"] == pytest.approx(r["events_per_s"] / match["events_per_s"])
        if r["compression"] == "zstd":
            plain = the(rows, contender="hybridlog", compression="none", **shape_of(r))
            assert r["speed_vs_uncompressed"] == pytest.approx(r["events_per_s"] / plain["events_per_s"])


# --- reads -----------------------------------------------------------------------------------------


def test_read_verify_reads_back_everything_for_every_contender(quick_run: BenchRun) -> None:
    """Every contender that reads read its whole stream; only eventsourcing has no chain to verify."""
    rows = results_of(quick_run, "read_verify")
    expected = {(name, size, "none") for name in ("hybridlog", "raw_floor", "sqlite_normal") for size in EVENT_SIZES}
    expected |= {("hybridlog", size, "zstd") for size in EVENT_SIZES}
    if HAVE_EVENTSOURCING:
        expected |= {("eventsourcing", size, "none") for size in EVENT_SIZES}
    assert {(r["contender"], r["event_size"], r["compression"]) for r in rows} == expected
    for size in EVENT_SIZES:
        assert len({r["events"] for r in rows if r["event_size"] == size}) == 1
    for r in rows:
        assert r["verifies_chain"] is (r["contender"] != "eventsourcing")
        assert r["payload_bytes"] == r["events"] * r["event_size"]
        assert r["events_per_s"] == pytest.approx(r["events"] / r["seconds"])
        assert r["mb_per_s"] > 0


def test_random_reads_compare_both_read_paths_with_the_floor(quick_run: BenchRun) -> None:
    rows = results_of(quick_run, "random_read")
    assert {(r["contender"], r["method"]) for r in rows} == {
        ("pread_floor", "lookup+pread+blake3"),
        ("hybridlog", "read_from"),
        ("hybridlog", "read_from_cold"),
        ("hybridlog", "read_from_writer"),
        ("hybridlog", "iter_records"),
    }
    floor = the(rows, contender="pread_floor")
    assert floor["records_verified_mean"] == 1.0
    for r in rows:
        assert r["event_size"] == 256
        assert r["reads"] > 0
        assert r["reads"] % r["offsets"] == 0  # the offset list is read whole, once or more
        assert 0 < r["distinct_offsets"] <= r["offsets"]
        assert r["reads_per_s"] == pytest.approx(r["reads"] / r["seconds"])
        if r["contender"] == "hybridlog":
            if r["method"] == "read_from_cold":
                assert r["records_verified_mean"] is None  # a walk per interval, not per read
            else:
                assert r["records_verified_mean"] >= 1.0
            assert r["ratio_vs_pread_floor"] == pytest.approx(r["reads_per_s"] / floor["reads_per_s"])


# --- store operations, group commit, memory --------------------------------------------------------


def test_open_and_rebuild_are_measured_and_rebuild_is_compared_with_reading(quick_run: BenchRun) -> None:
    """Open time is measured; rebuild speed is also given over hybridlog's sequential read + verify speed."""
    opened = the(results_of(quick_run, "open_clean"))
    assert opened["streams"] > 1
    assert opened["seconds"] > 0
    rebuild = the(results_of(quick_run, "rebuild_catalog"))
    read = the(results_of(quick_run, "read_verify"), contender="hybridlog", compression="none", event_size=256)
    assert rebuild["events_per_s"] == pytest.approx(rebuild["events"] / rebuild["seconds"])
    assert rebuild["ratio_vs_read_verify"] == pytest.approx(rebuild["events_per_s"] / read["events_per_s"])


def test_group_commit_runs_one_thread_and_eight_threads_two_ways_on_both_disks(quick_run: BenchRun) -> None:
    """One thread, eight threads on their own streams, eight on one stream, on the real and the
    simulated slow disk; ratios over the one thread of the same disk."""
    rows = results_of(quick_run, "group_commit")
    assert len(rows) == 6
    for disk, delay in (("real", None), ("simulated_slow", 0.001)):
        one = the(rows, variant="one_thread", disk=disk)
        own = the(rows, variant="own_streams", disk=disk)
        shared = the(rows, variant="one_stream", disk=disk)
        assert (one["threads"], one["streams"]) == (1, 1)
        assert (own["threads"], own["streams"]) == (8, 8)
        assert (shared["threads"], shared["streams"]) == (8, 1)
        assert own["events"] == shared["events"]
        assert own["events"] % 8 == 0
        for r in (one, own, shared):
            assert r["simulated_fsync_delay_s"] == delay
            assert len(r["runs_seconds"]) == quick_run.report["repeat"]
            assert r["events_per_s"] == pytest.approx(r["events"] / r["seconds"])
        for r in (own, shared):
            assert r["ratio_vs_one_thread"] == pytest.approx(r["events_per_s"] / one["events_per_s"])
        assert "ratio_vs_one_thread" not in one


def test_the_simulated_runs_went_through_the_slow_sync(quick_run: BenchRun) -> None:
    """Every fsync'd single append of the one-thread run was slowed; the threaded runs synced too."""
    for r in results_of(quick_run, "group_commit"):
        if r["disk"] == "real":
            assert "simulated_syncs" not in r
        elif r["variant"] == "one_thread":
            assert r["simulated_syncs"] >= r["events"] * quick_run.report["repeat"]
        else:
            assert r["simulated_syncs"] > 0


def test_group_commit_bound_is_one_plus_fsync_time_over_append_cpu(quick_run: BenchRun) -> None:
    """bound = 1 + f/c, the effective bound is capped at the thread count, and the real-disk runs
    carry their speed-up over both."""
    bound = the(results_of(quick_run, "group_commit_bound"))
    assert bound["fsync_samples"] > 1
    assert bound["fsync_p10_seconds"] <= bound["fsync_seconds"] <= bound["fsync_p90_seconds"]
    assert bound["append_cpu_seconds"] > 0
    assert bound["append_cpu_seconds"] == pytest.approx(statistics.median(bound["append_cpu_runs_seconds"]))
    assert bound["bound"] == pytest.approx(1 + bound["fsync_seconds"] / bound["append_cpu_seconds"])
    assert bound["effective_bound"] == pytest.approx(min(bound["threads"], bound["bound"]))
    one = the(results_of(quick_run, "group_commit"), variant="one_thread", disk="real")
    assert bound["one_thread_seconds_per_append"] == pytest.approx(1 / one["events_per_s"])
    assert bound["implied_fsync_seconds"] == pytest.approx(
        bound["one_thread_seconds_per_append"] - bound["append_cpu_seconds"]
    )
    for r in results_of(quick_run, "group_commit"):
        if r["disk"] != "real" or r["variant"] == "one_thread":
            assert "fraction_of_bound" not in r
            continue
        assert (r["bound"], r["effective_bound"]) == (bound["bound"], bound["effective_bound"])
        assert r["fraction_of_bound"] == pytest.approx(r["ratio_vs_one_thread"] / bound["bound"])
        assert r["fraction_of_effective_bound"] == pytest.approx(r["ratio_vs_one_thread"] / bound["effective_bound"])


def test_peak_memory_comes_from_a_child_verifying_a_multi_segment_store(quick_run: BenchRun) -> None:
    """The verified store spans several segments, the child read every event, and its peak is its own."""
    memory = the(results_of(quick_run, "verify_memory"))
    assert memory["segments"] >= 2
    assert memory["segment_bytes"] > memory["max_segment_size"]
    assert memory["store_bytes"] >= memory["segment_bytes"]
    assert memory["records"] >= memory["events"] > 0
    assert memory["peak_rss_mb"] >= memory["baseline_rss_mb"] > 0


# --- targets ---------------------------------------------------------------------------------------


def expected_status(target: dict[str, Any]) -> str:
    value, threshold = target["value"], target["threshold"]
    if value is None:
        return "MISSING"
    passed = {">=": value >= threshold, "<=": value <= threshold, "<": value < threshold}[target["op"]]
    return "PASS" if passed else "FAIL"


def test_targets_cover_every_row_of_the_issue_with_a_status_that_follows(quick_run: BenchRun) -> None:
    """Issue 12's rows and criteria in order, each with a status that follows from its value, one line each."""
    targets = quick_run.report["targets"]
    assert [(t["row"], t["measure"], t["op"], t["threshold"]) for t in targets] == [
        (row, *criterion) for row, criteria in TARGET_CRITERIA.items() for criterion in criteria
    ]
    for t in targets:
        assert t["status"] == expected_status(t)
        assert (t["status"] == "MISSING") is (t["measure"] == "vs eventsourcing" and not HAVE_EVENTSOURCING)
    section = quick_run.stdout[quick_run.stdout.index(TARGETS_TITLE) :].splitlines()
    for t in targets:
        assert [line for line in section if line.startswith(t["row"]) and t["measure"] in line and t["status"] in line]
    passed = sum(t["status"] == "PASS" for t in targets)
    rows_passed = sum(all(t["status"] == "PASS" for t in targets if t["row"] == row) for row in TARGET_CRITERIA)
    assert f"{passed} of {len(targets)} criteria pass; {rows_passed} of {len(TARGET_CRITERIA)} rows pass" in section


def test_slow_fsync_is_said_to_be_simulated(quick_run: BenchRun) -> None:
    """The simulated-disk criteria and the TARGETS section say the slow disk is simulated; the bound is shown."""
    section = quick_run.stdout[quick_run.stdout.index(TARGETS_TITLE) :]
    assert "slow fsync is SIMULATED" in section
    assert "bound 1 + f/c" in section
    for t in quick_run.report["targets"]:
        if "slow fsync" in t["measure"]:
            assert "SIMULATED" in t["note"]
        elif "real fsync" in t["measure"]:
            assert "effective min(8, 1 + f/c)" in t["note"]


def test_zstd_and_4k_figures_are_information_not_targets(quick_run: BenchRun) -> None:
    """zstd is no target any more; it and the 4 KiB ratios are listed as information, after the counts."""
    assert not [t for t in quick_run.report["targets"] if "zstd" in t["row"]]
    figures = {(f["row"], f["measure"]): f["value"] for f in quick_run.report["information"]}
    zstd = the(
        results_of(quick_run, "append"),
        contender="hybridlog",
        event_size=256,
        batch_size=100,
        fsync=False,
        compression="zstd",
    )
    assert (
        figures[(ZSTD_ROW, "compression ratio, whole run, dictionary file counted")]
        == (zstd["compression_ratio_with_dictionaries"])
    )
    assert figures[(ZSTD_ROW, "append speed vs uncompressed")] == zstd["speed_vs_uncompressed"]
    large = the(
        results_of(quick_run, "append"),
        contender="hybridlog",
        event_size=4096,
        batch_size=1000,
        fsync=True,
        compression="none",
    )
    assert (
        figures[("4096-byte events: append, batch 1000, fsync on", "vs sqlite_full")] == large["ratio_vs_sqlite_full"]
    )
    section = quick_run.stdout[quick_run.stdout.index(TARGETS_TITLE) :]
    assert section.index("criteria pass") < section.index("information (not targets)") < section.index(ZSTD_ROW)


def test_targets_take_their_values_from_the_256_byte_results(quick_run: BenchRun) -> None:
    """Spot checks: each target's value is the named figure of the matching result."""
    targets = {(t["row"], t["measure"]): t["value"] for t in quick_run.report["targets"]}
    appends = results_of(quick_run, "append")

    def append(batch: int, fsync: bool) -> dict[str, Any]:
        return the(appends, contender="hybridlog", event_size=256, batch_size=batch, fsync=fsync, compression="none")

    assert targets[("append, batch 100, fsync off", "vs sqlite_normal")] == append(100, False)["ratio_vs_sqlite_normal"]
    assert targets[("append, batch 1000, fsync on", "vs sqlite_full")] == append(1000, True)["ratio_vs_sqlite_full"]
    assert (
        targets[("append, batch 1, fsync on, one thread", "vs raw_floor (write + fdatasync)")]
        == append(1, True)["ratio_vs_raw_floor"]
    )
    groups = results_of(quick_run, "group_commit")
    for variant, name in (("own_streams", "own streams"), ("one_stream", "one stream")):
        slow = the(groups, variant=variant, disk="simulated_slow")
        real = the(groups, variant=variant, disk="real")
        assert targets[(GROUP_ROW, f"{name}, slow fsync (SIMULATED): vs one thread")] == slow["ratio_vs_one_thread"]
        assert (
            targets[(GROUP_ROW, f"{name}, real fsync: speed-up / effective bound")]
            == real["fraction_of_effective_bound"]
        )
    random_read = the(results_of(quick_run, "random_read"), contender="hybridlog", method="read_from")
    random_row = "random read by offset (warm, read-only process)"
    assert targets[(random_row, "read_from (read_only=True) vs pread_floor")] == random_read["ratio_vs_pread_floor"]
    rebuild = the(results_of(quick_run, "rebuild_catalog"))
    assert (
        targets[("rebuild the catalog from segments", "vs sequential read + verify")]
        == (rebuild["ratio_vs_read_verify"])
    )
    memory = the(results_of(quick_run, "verify_memory"))
    assert targets[("peak memory verifying a 1 GB store", "child peak RSS")] == memory["peak_rss_mb"]
    opened = the(results_of(quick_run, "open_clean"))
    assert targets[("open a clean store with 1,000 streams", "seconds")] == opened["seconds"]


def test_without_eventsourcing_the_harness_runs_and_says_not_installed(run_without_eventsourcing: BenchRun) -> None:
    """With the optional library unimportable, every other measurement runs and its target is MISSING."""
    run = run_without_eventsourcing
    assert run.returncode == 0, run.stderr
    assert run.report["contenders"]["eventsourcing"]["installed"] is False
    assert not [r for r in run.report["results"] if r["contender"] == "eventsourcing"]
    assert {row_key(r) for r in results_of(run, "append")} == expected_append_rows(False)
    assert "eventsourcing  not installed" in run.stdout
    (target,) = [t for t in run.report["targets"] if t["measure"] == "vs eventsourcing"]
    assert target["status"] == "MISSING"
    assert "not installed" in target["note"]


ES_CASES = ("insert_one", "insert_100", "save_10", "save_100", "read_log")
ES_TITLE = "TARGETS (issue 13: hybridlog.eventsourcing vs eventsourcing.sqlite; ratios from this run)"
ES_MODULES = ("hybridlog.eventsourcing", "eventsourcing.sqlite")


def test_both_persistence_modules_run_every_workload_and_the_ratio_is_their_quotient(quick_run: BenchRun) -> None:
    """Issue 13's workloads for hybridlog.eventsourcing and eventsourcing.sqlite, ratios and targets consistent."""
    rows = results_of(quick_run, "eventsourcing_module")
    assert {(r["case"], r["contender"]) for r in rows} == {(c, m) for c in ES_CASES for m in ES_MODULES}
    for case in ES_CASES:
        mine, theirs = (the(rows, case=case, contender=m) for m in ES_MODULES)
        assert mine["seconds_per_op"] > 0
        assert theirs["seconds_per_op"] > 0
        assert mine["seconds_per_op"] == statistics.median(mine["runs_seconds_per_op"])
        assert math.isclose(mine["ratio_vs_sqlite_module"], theirs["seconds_per_op"] / mine["seconds_per_op"])
    assert the(rows, case="read_log", contender=ES_MODULES[0])["operations"] >= 600  # the whole log, read back
    targets = quick_run.report["eventsourcing_targets"]
    assert [(t["threshold"], t["note"]) for t in targets] == [
        (1.0, "insert, one new aggregate, 1 event"),
        (1.0, "Application.save, 10 events"),
        (1.0, "read the notification log (pages of 500)"),
        (2.0, "insert, one new aggregate, 100 events"),
    ]
    cases = ("insert_one", "save_10", "read_log", "insert_100")
    for target, case in zip(targets, cases, strict=True):
        assert target["value"] == the(rows, case=case, contender=ES_MODULES[0])["ratio_vs_sqlite_module"]
        assert target["status"] == expected_status(target)
    section = quick_run.stdout[quick_run.stdout.index(ES_TITLE) :]
    assert f"{sum(t['status'] == 'PASS' for t in targets)} of 4 criteria pass" in section


def test_without_eventsourcing_the_persistence_module_targets_are_missing(run_without_eventsourcing: BenchRun) -> None:
    run = run_without_eventsourcing
    assert results_of(run, "eventsourcing_module") == []
    assert [t["status"] for t in run.report["eventsourcing_targets"]] == ["MISSING"] * 4
    assert all("not installed" in t["note"] for t in run.report["eventsourcing_targets"])
    assert ES_TITLE in run.stdout


def row_key(r: dict[str, Any]) -> tuple[str, int, int, bool | None, str]:
    return (r["contender"], r["event_size"], r["batch_size"], r["fsync"], r["compression"])


def test_tiering_is_measured_against_a_real_s3_server(quick_run: BenchRun) -> None:
    """Upload, a cold and a warm remote open, eviction and the verify of the evicted store, and the
    local verify they are compared with."""
    rows = results_of(quick_run, "tiering")
    assert [r["case"] for r in rows] == ["upload", "remote", "remote_warm", "evict", "evicted", "local"]
    assert all(r["mb_per_s"] > 0 and r["segment_bytes"] > 0 for r in rows)
    uploaded = the(rows, case="upload")["segment_bytes"]
    assert the(rows, case="remote")["segment_bytes"] == uploaded <= the(rows, case="local")["segment_bytes"]
    assert the(rows, case="evict")["segment_bytes"] == uploaded  # every uploaded segment, nothing else
    assert the(rows, case="evicted")["segment_bytes"] == the(rows, case="local")["segment_bytes"]
    for case in ("remote", "evicted"):
        assert the(rows, case=case)["ratio_vs_local"] == pytest.approx(
            the(rows, case=case)["mb_per_s"] / the(rows, case="local")["mb_per_s"]
        )
