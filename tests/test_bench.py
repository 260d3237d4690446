"""``scripts/bench.py --quick`` runs end to end and writes a complete, sane results file.

Correctness only: the benchmark is run once as a subprocess on tiny sizes, and the tests check
that every workload was measured for every contender, that the numbers are positive and
self-consistent, and that hybridlog's figures carry their ratios to the contenders. No test
looks at how fast anything was.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "scripts" / "bench.py"
CONTENDERS = ("hybridlog", "raw_floor", "sqlite")
OTHERS = ("raw_floor", "sqlite")
BATCH_SIZES = (1, 100, 1000)
EVENT_SIZE = 256


@dataclass(frozen=True)
class BenchRun:
    returncode: int
    stdout: str
    stderr: str
    report: dict[str, Any]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> BenchRun:
    """One ``--quick`` run of the benchmark, its stores in a private temp dir, shared by every test."""
    work = tmp_path_factory.mktemp("bench")
    out = work / "results.json"
    stores = work / "stores"
    stores.mkdir()
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", str(out), "--tmpdir", str(stores)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    report: dict[str, Any] = json.loads(out.read_text(encoding="utf-8")) if out.exists() else {}
    return BenchRun(proc.returncode, proc.stdout, proc.stderr, report)


def results_of(run: BenchRun, workload: str) -> list[dict[str, Any]]:
    return [r for r in run.report["results"] if r["workload"] == workload]


def test_quick_run_exits_zero_and_prints_both_tables(quick_run: BenchRun) -> None:
    """The script succeeds, prints the append and read+verify tables, and leaves no store behind."""
    assert quick_run.returncode == 0, quick_run.stderr
    assert "append (" in quick_run.stdout
    assert "read + full verify" in quick_run.stdout
    for name in CONTENDERS:
        assert name in quick_run.stdout
    stores = Path(quick_run.report["machine"]["tmp_dir"])
    assert list(stores.iterdir()) == []


def test_report_describes_the_machine_and_mode(quick_run: BenchRun) -> None:
    machine = quick_run.report["machine"]
    assert quick_run.report["mode"] == "quick"
    assert quick_run.report["event_size"] == EVENT_SIZE
    assert isinstance(machine["nproc"], int)
    assert machine["nproc"] > 0
    assert machine["python"] == ".".join(str(part) for part in sys.version_info[:3])


def test_append_covers_every_batch_size_fsync_and_compression(quick_run: BenchRun) -> None:
    """hybridlog is measured with none and zstd, contenders uncompressed, for 1/100/1000 x fsync off/on."""
    seen = {(r["contender"], r["batch_size"], r["fsync"], r["compression"]) for r in results_of(quick_run, "append")}
    expected = {
        (name, batch, fsync, compression)
        for batch in BATCH_SIZES
        for fsync in (False, True)
        for name, compressions in (("hybridlog", ("none", "zstd")), ("raw_floor", ("none",)), ("sqlite", ("none",)))
        for compression in compressions
    }
    assert seen == expected
    assert len(results_of(quick_run, "append")) == len(expected)


def test_append_numbers_are_positive_and_consistent(quick_run: BenchRun) -> None:
    """Counts match the batch shape; rates are positive and agree with events / seconds."""
    for r in results_of(quick_run, "append"):
        assert r["events"] > 0
        assert r["events"] == r["batches"] * r["batch_size"]
        assert r["payload_bytes"] == r["events"] * EVENT_SIZE
        assert r["seconds"] > 0
        assert len(r["runs_seconds"]) == quick_run.report["repeat"]
        assert r["events_per_s"] == pytest.approx(r["events"] / r["seconds"])
        assert r["mb_per_s"] == pytest.approx(r["payload_bytes"] / r["seconds"] / 1e6)
        assert r["disk_bytes"] > 0


def test_hybridlog_reports_compression_ratio_from_the_catalog(quick_run: BenchRun) -> None:
    """payload/stored comes from the streams table; zstd stores the same events in fewer bytes."""
    stored: dict[tuple[int, bool, str], int] = {}
    for r in results_of(quick_run, "append"):
        if r["contender"] != "hybridlog":
            assert r["compression_ratio"] is None
            continue
        assert r["stored_bytes"] > 0
        assert r["compression_ratio"] == pytest.approx(r["payload_bytes"] / r["stored_bytes"])
        stored[(r["batch_size"], r["fsync"], r["compression"])] = r["stored_bytes"]
    for batch in BATCH_SIZES:
        for fsync in (False, True):
            assert stored[(batch, fsync, "zstd")] < stored[(batch, fsync, "none")]


def test_hybridlog_rows_carry_ratios_to_each_contender(quick_run: BenchRun) -> None:
    """Each hybridlog row has ratio_vs_<contender> = its events/s over the matching contender row's."""
    for workload in ("append", "read_verify"):
        rows = results_of(quick_run, workload)
        for r in rows:
            if r["contender"] != "hybridlog":
                assert not any(key.startswith("ratio_vs_") for key in r)
                continue
            for other in OTHERS:
                (match,) = [
                    o
                    for o in rows
                    if o["contender"] == other
                    and o.get("batch_size") == r.get("batch_size")
                    and o.get("fsync") == r.get("fsync")
                ]
                assert r[f"ratio_vs_{other}"] == pytest.approx(r["events_per_s"] / match["events_per_s"])
                assert r[f"ratio_vs_{other}"] > 0


def test_read_verify_reads_back_everything_for_every_contender(quick_run: BenchRun) -> None:
    """Every contender read and verified the whole stream it wrote, at a positive rate."""
    rows = results_of(quick_run, "read_verify")
    assert {(r["contender"], r["compression"]) for r in rows} == {
        ("hybridlog", "none"),
        ("hybridlog", "zstd"),
        ("raw_floor", "none"),
        ("sqlite", "none"),
    }
    events = {r["events"] for r in rows}
    assert len(events) == 1
    for r in rows:
        assert r["events"] > 0
        assert r["payload_bytes"] == r["events"] * EVENT_SIZE
        assert r["seconds"] > 0
        assert r["events_per_s"] > 0
        assert r["mb_per_s"] > 0


def load_bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """scripts/bench.py imported as a module (scripts/ is not a package), registered for this test only."""
    spec = importlib.util.spec_from_file_location("bench_under_test", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def test_events_are_varied_json_of_exactly_256_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The generator makes distinct, valid JSON events of EVENT_SIZE bytes, reproducible by seed."""
    bench = load_bench(monkeypatch)
    events: list[bytes] = bench.make_event_pool(200, 7)
    assert bench.make_event_pool(200, 7) == events
    assert bench.make_event_pool(200, 8) != events
    assert len(set(events)) == len(events)
    assert {len(e) for e in events} == {EVENT_SIZE}
    decoded = [json.loads(e) for e in events]
    assert len({d["type"] for d in decoded}) > 3
    assert len({d["amount"] for d in decoded}) > 100
    assert all(d["note"] for d in decoded)
