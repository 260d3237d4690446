"""Failpoints (``hybridlog.failpoints``): named steps of the write path, empty in production.

Contracts tested here: the table is empty unless a test arms it; an append passes the five steps
once each, in write order; an unknown step is refused when armed; an armed action runs in the
writer's thread at its step (an error raised there fails the batch like a failed write, and the
store cuts what was written); and the kill plan a parent hands a child round-trips through the
environment.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from hybridlog import CheckpointPolicy, Storage, StorageIOError, failpoints
from hybridlog.failpoints import STEPS
from hybridlog.testing.damage import genesis_events
from hybridlog.testing.harness import ACK, KILL_AT_ENV, KillPlan


@pytest.fixture(autouse=True)
def clean_table() -> Iterator[None]:
    assert failpoints._armed == {}, "a failpoint was left armed"
    yield
    failpoints.disarm()


def test_every_append_passes_the_five_steps_in_write_order(store_dir: Path) -> None:
    hits: list[str] = []
    for step in STEPS:
        failpoints.arm(step, lambda step=step: hits.append(step))  # type: ignore[misc]
    with Storage(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        store.append(1, [b"a"])
        assert hits == list(STEPS)
        store.append(2, [b"b", b"c"])
        assert hits == list(STEPS) * 2


def test_an_unknown_step_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown failpoint"):
        failpoints.arm("segment-writen", lambda: None)
    with pytest.raises(ValueError, match="unknown kill step"):
        KillPlan("segment-writen", 1)


@pytest.mark.parametrize("step", ["segment-created", "segment-written", "segment-synced"])
def test_an_error_at_a_step_before_the_commit_stores_nothing(store_dir: Path, step: str) -> None:
    def fail() -> None:
        raise OSError(5, "injected at " + step)

    def segment_data() -> dict[Path, bytes]:  # without the zeros an fsync'd append reserves past the data
        return {p: p.read_bytes().rstrip(b"\0") for p in store_dir.rglob("*.seg")}

    with Storage(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        store.append(1, [b"kept"])
        before = segment_data()
        with failpoints.armed(step, fail), pytest.raises(StorageIOError):
            store.append(1, [b"lost"])
        assert segment_data() == before
        assert genesis_events(store, 1) == [b"kept"]
        store.append(1, [b"after"])
    with Storage(store_dir, read_only=True) as reader:
        assert genesis_events(reader, 1) == [b"kept", b"after"]


def test_kill_plans_round_trip_through_the_environment() -> None:
    rng = random.Random(3)
    plans = [KillPlan.choose(rng, 1, 9) for _ in range(50)]
    assert {p.step for p in plans} == {*STEPS, ACK}
    for plan in plans:
        step, nth = plan.environment()[KILL_AT_ENV].rsplit("@", 1)
        assert KillPlan(step, int(nth)) == plan
        assert plan.acknowledged == (plan.nth if plan.step == ACK else plan.nth - 1)
