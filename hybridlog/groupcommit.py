"""Group commit: the one home of the leader/follower queue that lets many threads share one commit.

An append happens in two stages (``writer.py``). Stage 1, in the caller's thread, checks and
prepares the batch. Stage 2 frames, writes, fsyncs and commits, and is run by one thread at a
time, the *leader*, for every request queued when it starts: callers that arrive while a leader is
busy (typically waiting for fsync, which releases the GIL) queue up, and the next leader commits
all of them together. Each caller returns only when its own request is done, and gets only its
own outcome.

A leader whose group will be fsynced first *gathers*: the threads of the last group return to
their callers when it is done and come back one by one, so the first of them to arrive would
otherwise lead a group of one and the rest would wait a whole fsync for the next. So it waits
until as many requests are queued as the last group had, or until half the time the last group
took has passed, whichever comes first (a lone appender never waits: its groups are of one).

The queue knows nothing about what a request holds: it only marks it ``done`` (with an ``error``
when the leader's commit failed before deciding it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

MAX_PATIENCE_S = 0.002
"""The longest a leader gathers, whatever the last group took."""


class Request(Protocol):
    """What the queue needs of a request: whether it is decided, and its error if it failed."""

    done: bool
    error: BaseException | None


R = TypeVar("R", bound=Request)


class GroupCommitQueue(Generic[R]):
    """Leader/follower hand-off: whoever finds no leader commits everything queued so far."""

    def __init__(self) -> None:
        lock = threading.Lock()
        self._cv = threading.Condition(lock)  # followers wait here for their request to be done
        self._arrivals = threading.Condition(lock)  # a gathering leader waits here for more requests
        self._queue: list[R] = []
        self._leader = False
        self._gathering = False
        self._last_size = 1  # how many requests the last group held
        self._patience = 0.0  # how long the next leader may gather: half the last group's time

    def submit(self, request: R, commit_group: Callable[[list[R]], None], *, gather: bool = False) -> None:
        """Queue ``request`` and return once it is done (by this thread or another leader).

        ``gather``: if this thread leads, wait for the last group's number of requests first (the
        group will be fsynced, so each request that joins it saves an fsync).
        """
        with self._cv:
            self._queue.append(request)
            if self._gathering:
                self._arrivals.notify()
            while not request.done and self._leader:
                self._cv.wait()
            if request.done:
                return
            self._leader = True
            if gather and self._last_size > len(self._queue):
                self._gather()
            group, self._queue = self._queue, []
        started = time.monotonic()
        try:
            commit_group(group)
        finally:
            took = time.monotonic() - started
            with self._cv:
                for r in group:
                    if not r.done:  # commit_group failed before deciding this one
                        r.error = r.error or RuntimeError("group commit did not complete")
                        r.done = True
                self._last_size = len(group)
                self._patience = min(MAX_PATIENCE_S, took / 2)
                self._leader = False
                self._cv.notify_all()

    def _gather(self) -> None:
        """Wait (holding the leadership) until the queue is as long as the last group, or the patience runs out."""
        deadline = time.monotonic() + self._patience
        self._gathering = True
        try:
            while len(self._queue) < self._last_size:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._arrivals.wait(left)
        finally:
            self._gathering = False
