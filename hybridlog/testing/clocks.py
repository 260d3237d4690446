"""Deterministic clocks for tests: the one home of the clocks a backend is handed in a test.

A backend's ``clock`` is a callable giving nanoseconds since the epoch. ``make_clock`` counts (each
call advances it); ``ManualClock`` stands still until the test moves it, so its readings do not
depend on how often a backend asks.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

Clock = Callable[[], int]

START_NS = 1_700_000_000_000_000_000
"""Where the test clocks start: November 2023, in nanoseconds."""


def make_clock(start: int = START_NS, step: int = 1_000) -> Clock:
    """A deterministic clock: nanoseconds that advance by ``step`` on every call."""
    counter = itertools.count(start, step)
    return lambda: next(counter)


class ManualClock:
    """A clock the test moves by hand: every call returns ``now`` until the test changes it.

    Unlike a counting clock, its readings do not depend on how often a backend asks, so it pins
    down every timestamp (and therefore every hash) a backend writes.
    """

    def __init__(self, now: int = START_NS) -> None:
        self.now = now

    def __call__(self) -> int:
        """The reading the test set, however often it is asked."""
        return self.now
