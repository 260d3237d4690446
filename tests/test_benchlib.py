"""Unit tests of ``scripts/benchlib`` modules, loaded directly (``test_bench.py`` runs the whole script).

The event generator; the raw floor's sync (issue 12's floor is write + fdatasync); the simulated
slow disk of the group-commit measurement (wraps ``SegmentWriter.sync``, counts, restores, and
stops the benchmark when there is nothing to wrap).
"""

from __future__ import annotations

import importlib
import json
import os
import time
from pathlib import Path
from types import ModuleType

import pytest

from hybridlog.segment import SegmentWriter

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
EVENT_SIZES = (256, 4096)


def load_benchlib(monkeypatch: pytest.MonkeyPatch, module: str) -> ModuleType:
    """``scripts/benchlib/<module>`` imported with scripts/ on sys.path for this test only."""
    monkeypatch.syspath_prepend(str(SCRIPTS))
    return importlib.import_module(f"benchlib.{module}")


# --- the generator ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", EVENT_SIZES)
def test_events_are_varied_json_of_the_exact_size(monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    """Distinct, valid JSON events of exactly ``size`` bytes with varied fields, reproducible by seed."""
    events_module = load_benchlib(monkeypatch, "events")
    events: list[bytes] = events_module.make_event_pool(100, 7, size)
    assert events_module.make_event_pool(100, 7, size) == events
    assert events_module.make_event_pool(100, 8, size) != events
    assert len(set(events)) == len(events)
    assert {len(e) for e in events} == {size}
    decoded = [json.loads(e) for e in events]
    assert len({d["type"] for d in decoded}) > 3
    assert len({d["amount"] for d in decoded}) > 50
    assert len({d["ts"] for d in decoded}) == len(decoded)
    assert all(d["note"] for d in decoded)
    if size >= 1024:
        assert all(d["lines"] and d["customer"]["address"]["city"] for d in decoded)
        assert len({len(d["lines"]) for d in decoded}) > 1


def test_make_batches_cuts_the_exact_count_from_the_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches hold exactly the events asked for, cycling through the pool; the last may be short."""
    events_module = load_benchlib(monkeypatch, "events")
    pool = [bytes([i]) for i in range(7)]
    batches: list[list[bytes]] = events_module.make_batches(pool, 25, 10)
    assert [len(b) for b in batches] == [10, 10, 5]
    assert [e for b in batches for e in b] == [pool[i % 7] for i in range(25)]


# --- the raw floor and the slow-disk simulation ----------------------------------------------------


@pytest.mark.parametrize("fsync", [True, False])
def test_raw_floor_syncs_each_batch_with_fdatasync(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fsync: bool
) -> None:
    """Issue 12's floor is write + fdatasync: one fdatasync per batch with fsync on, never an fsync."""
    contenders = load_benchlib(monkeypatch, "contenders")
    calls: list[str] = []
    monkeypatch.setattr(os, "fdatasync", lambda fd: calls.append("fdatasync"))
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append("fsync"))
    writer = contenders.RawFloorWriter(tmp_path, fsync=fsync)
    writer.append_batch([b"a", b"b"])
    writer.append_batch([b"c"])
    writer.close()
    assert calls == (["fdatasync", "fdatasync"] if fsync else [])
    assert contenders.RawFloorReader(tmp_path).read_verify() == (3, 3)


def test_slow_fsync_simulation_sleeps_after_the_real_sync_counts_and_restores(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Inside the block every SegmentWriter.sync is the real fdatasync then the sleep; after it, the original."""
    groupcommit = load_benchlib(monkeypatch, "groupcommit")
    original = SegmentWriter.sync
    calls: list[object] = []
    monkeypatch.setattr(os, "fdatasync", lambda fd: calls.append("fdatasync"))
    monkeypatch.setattr(time, "sleep", lambda seconds: calls.append(("sleep", seconds)))
    writer = SegmentWriter(tmp_path / "segment", create=True)
    try:
        with groupcommit.simulated_slow_fsync(0.001) as counter:
            assert SegmentWriter.sync is not original
            writer.sync()
            writer.sync()
        assert SegmentWriter.sync is original
        assert counter.count == 2
        assert calls == ["fdatasync", ("sleep", 0.001)] * 2
        with pytest.raises(RuntimeError, match="inside"), groupcommit.simulated_slow_fsync(0.001):
            raise RuntimeError("inside")
        assert SegmentWriter.sync is original
    finally:
        writer.close()


def test_slow_fsync_simulation_fails_loudly_without_segment_writer_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    """No SegmentWriter.sync to wrap: the benchmark stops instead of measuring the real disk as slow."""
    groupcommit = load_benchlib(monkeypatch, "groupcommit")
    contenders = load_benchlib(monkeypatch, "contenders")
    monkeypatch.delattr(SegmentWriter, "sync")
    with (
        pytest.raises(contenders.BenchError, match=r"SegmentWriter\.sync does not exist"),
        groupcommit.simulated_slow_fsync(0.001),
    ):
        pass
