"""Group commit: the one home of the leader/follower queue that lets many threads share one commit.

An append happens in two stages (``writer.py``). Stage 1, in the caller's thread, frames the
batch. Stage 2 writes, fsyncs and commits, and is run by one thread at a time, the *leader*, for
every request queued when it starts: callers that arrive while a leader is busy (typically waiting
for fsync, which releases the GIL) queue up, and the next leader commits all of them together.
Each caller returns only when its own request is done, and gets only its own outcome.

The queue knows nothing about what a request holds: it only marks it ``done`` (with an ``error``
when the leader's commit failed before deciding it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar


class Request(Protocol):
    """What the queue needs of a request: whether it is decided, and its error if it failed."""

    done: bool
    error: BaseException | None


R = TypeVar("R", bound=Request)


class GroupCommitQueue(Generic[R]):
    """Leader/follower hand-off: whoever finds no leader commits everything queued so far."""

    def __init__(self) -> None:
        self._cv = threading.Condition(threading.Lock())
        self._queue: list[R] = []
        self._leader = False

    def submit(self, request: R, commit_group: Callable[[list[R]], None]) -> None:
        """Queue ``request`` and return once it is done (by this thread or another leader)."""
        with self._cv:
            self._queue.append(request)
            while not request.done and self._leader:
                self._cv.wait()
            if request.done:
                return
            self._leader = True
            group, self._queue = self._queue, []
        try:
            commit_group(group)
        finally:
            with self._cv:
                for r in group:
                    if not r.done:  # commit_group failed before deciding this one
                        r.error = r.error or RuntimeError("group commit did not complete")
                        r.done = True
                self._leader = False
                self._cv.notify_all()
