"""Signing the store's tree head by policy: ``HeadPublisher``.

On demand is ``store.tree.sign(signer)``. A ``HeadPublisher`` runs in the writing process (only a
writer can bring the tree up to date) and signs for it, on one thread of its own:

* ``every=None`` (every commit): it wakes on each commit in this process and signs a head covering
  it. Commits that land while a head is being signed are covered by the next head, so a head
  follows every commit, but not one head per commit: under load the signatures coalesce, each
  covering every commit before it (signing makes what it covers durable first, which costs a
  catalog sync and two file syncs, more than a commit).
* ``every=SECONDS``: at most one head every ``SECONDS`` seconds, and only when the tree has grown
  since the last head it signed.

``wait_for(size)`` blocks until a head of at least ``size`` leaves is signed (a caller that wants
a receipt for what it just appended waits for ``store.tree.size()``). A failure to sign (the tree
no longer extends the last signed head, after a repair cut records; the store closed) stops the
publisher; ``wait_for`` and ``close`` then raise it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from hybridlog.errors import InvalidArgument, StorageError, StoreClosed
from hybridlog.note import note_text
from hybridlog.subscription import check_interval, commit_signal_for
from hybridlog.tree import HeadSigner
from hybridlog.tree_head import parse_tree_head

if TYPE_CHECKING:
    from hybridlog.storage import Storage

log = logging.getLogger(__name__)

IDLE_WAIT = 1.0
"""Seconds the thread waits for a commit before it looks whether it was asked to stop."""


class HeadPublisher:
    """Signs the head of ``store``'s tree with ``signer`` after every commit (``every=None``) or
    at most every ``every`` seconds, on a thread of its own, from ``start()`` (or ``with``) until
    ``close()``. ``clock``: seconds, monotonic (tests pass their own and call ``step``)."""

    def __init__(
        self,
        store: Storage,
        signer: HeadSigner,
        *,
        every: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if store.read_only:
            raise InvalidArgument("a read-only store cannot sign its tree (a writer keeps the tree up to date)")
        self.store = store
        self.signer = signer
        self.every = None if every is None else check_interval("every", every)
        self._clock = clock
        self._signal = commit_signal_for(store.data_dir)
        self._changed = threading.Condition()
        last = signer.last_head()
        self._signed_size = 0 if last is None or last.origin != signer.origin else last.size
        self._signed: str | None = None
        self._signed_at: float | None = None
        self._error: StorageError | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the policy --------------------------------------------------------------------------------

    def due(self) -> bool:
        """Whether a head should be signed now: the tree has grown past the last signed head, and,
        with ``every``, that many seconds have passed since the last signature."""
        if self.store.tree.size() <= self._signed_size:
            return False
        return self.every is None or self._signed_at is None or self._clock() - self._signed_at >= self.every

    def step(self) -> str | None:
        """Sign a head if one is due; returns it (None: none was due). Raises what signing raised."""
        if not self.due():
            return None
        signed = self.store.tree.sign(self.signer)
        with self._changed:
            self._signed = signed
            self._signed_size = parse_tree_head(note_text(signed)).size
            self._signed_at = self._clock()
            self._changed.notify_all()
        return signed

    # --- the thread --------------------------------------------------------------------------------

    def start(self) -> HeadPublisher:
        """Start signing on the publisher's own thread (once)."""
        if self._thread is not None:
            raise InvalidArgument("this publisher is already started")
        self._thread = threading.Thread(target=self._run, name=f"hybridlog-sign-{self.signer.origin}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        seen = self._signal.commits
        try:
            while not self._stop.is_set():
                self.step()
                pause = self._pause()
                if pause > 0:
                    self._stop.wait(pause)  # the interval is not over: commits can wait till it is
                elif self._signal.wait(seen, IDLE_WAIT):
                    seen = self._signal.commits
        except StoreClosed:
            pass  # the store closed under us: nothing more to sign
        except StorageError as e:
            log.error("head signing stopped: %s", e)
            with self._changed:
                self._error = e
                self._changed.notify_all()

    def _pause(self) -> float:
        """Seconds until the next head may be signed (0: now, or at the next commit)."""
        if self.every is None or self._signed_at is None:
            return 0.0
        return max(0.0, self.every - (self._clock() - self._signed_at))

    def wait_for(self, size: int, timeout: float | None = None) -> str:
        """The newest signed head once it covers at least ``size`` leaves; TimeoutError after
        ``timeout`` seconds; what stopped the publisher if it stopped first."""
        with self._changed:
            ok = self._changed.wait_for(
                lambda: self._error is not None or (self._signed is not None and self._signed_size >= size), timeout
            )
            if self._error is not None:
                raise self._error
            if not ok or self._signed is None:
                raise TimeoutError(f"no head of {size} leaves was signed in {timeout} s")
            return self._signed

    def close(self) -> None:
        """Stop the thread (after the signature under way, if any); raise what stopped it, if anything did."""
        self._stop.set()
        self._signal.notify()  # wake a wait for the next commit (a subscription woken by it looks again)
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error

    def __enter__(self) -> HeadPublisher:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()
