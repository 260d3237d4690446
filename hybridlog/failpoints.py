"""Failpoints: the one home of the named steps of the write path a test can stop a writer at.

The group commit writes in five steps (``docs/format.md`` and ``Writer.write_group`` give the
order); each ends at a failpoint named for what has just become true:

1. ``batch-framed``: every batch of the group is framed; nothing of it is on disk;
2. ``segment-created``: rotation done (new segment files exist, their directory is fsynced);
3. ``segment-written``: the group's bytes are written at the segments' committed ends (not fsynced);
4. ``segment-synced``: the durability point: the bytes (and sealed segments' digests) are durable;
5. ``catalog-committed``: the catalog transaction committed; the callers are not told yet.

The upload to an object store (``tiering.py``) has failpoints of its own, in upload order:
``object-uploaded`` (after each segment or dictionary object's create-only PUT), ``manifest-built``
(every object is there; the manifest is not), ``manifest-published`` (after the manifest's PUT).

The table of armed failpoints is empty in production, so ``failpoint(step)`` costs one truth test
of an empty dict. A test arms a step with an action (``arm``); the action runs on every hit, in
the writer's thread, with the store's lock held. The writer-kill harness
(``hybridlog.testing.harness``) arms them to SIGKILL a child process at a named step. Model: etcd's
``// gofail: var walBeforeSync``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal, get_args

Step = Literal["batch-framed", "segment-created", "segment-written", "segment-synced", "catalog-committed"]

STEPS: tuple[Step, ...] = get_args(Step)
"""The failpoints in write order."""

TierStep = Literal["object-uploaded", "manifest-built", "manifest-published", "stub-written"]

TIER_STEPS: tuple[TierStep, ...] = get_args(TierStep)
"""The failpoints of an upload, in upload order, then eviction's (between a stub and the unlink)."""

_armed: dict[str, Callable[[], None]] = {}


def failpoint(step: Step | TierStep) -> None:
    """Run the action armed at ``step``, if any (called by the write path at each step)."""
    if _armed:
        action = _armed.get(step)
        if action is not None:
            action()


def arm(step: str, action: Callable[[], None]) -> None:
    """Run ``action`` every time the write path reaches ``step`` (replacing what was armed there)."""
    if step not in STEPS and step not in TIER_STEPS:
        raise ValueError(f"unknown failpoint {step!r}; the steps are {', '.join((*STEPS, *TIER_STEPS))}")
    _armed[step] = action


def disarm(step: str | None = None) -> None:
    """Disarm ``step`` (None: every step)."""
    if step is None:
        _armed.clear()
    else:
        _armed.pop(step, None)


@contextmanager
def armed(step: str, action: Callable[[], None]) -> Iterator[None]:
    """``arm(step, action)`` for the duration of a ``with`` block."""
    arm(step, action)
    try:
        yield
    finally:
        disarm(step)
