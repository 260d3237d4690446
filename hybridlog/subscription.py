"""Subscriptions: every committed record, in global order, as it is committed (``Storage.subscribe``).

A subscription keeps the next global position it will deliver. It reads a page with
``Storage.read_global`` (verified reads: a damaged record raises IntegrityError out of the
iterator) from that position, delivers it, and reads again; once it has caught up it waits:

* in the process that holds the store for writing, on a ``CommitSignal`` that the writer notifies
  after every commit (and recovery, and close): it wakes as soon as something is committed,
  without polling. Read-only stores opened in the same process share the signal (one per store
  directory), so they wake too;
* in any other process there is nobody to notify it, so the wait is a poll of the catalog with
  backoff: ``poll_interval``, doubled after each empty poll up to ``max_interval``, and back to
  ``poll_interval`` when records arrive.

Why nothing is skipped, repeated or delivered uncommitted: the catalog is the only source, and
it only holds committed records; a commit gives its records positions above the high-water mark
(``last_global_position``) in the same transaction that moves the mark, so every position at or
below a mark a reader has seen is either readable or gone for good (cut by a repair). A
subscription asks for "the first positions at or after the next one", so it steps over such gaps,
and when a read finds nothing at or after the next position although the mark is past it, it
moves past the mark instead of waiting for a position that will never come. Within one
subscription positions only grow, so no record comes twice.

A full catalog rebuild (here, or in another process: the store follows it, see
``Storage.catalog_generation``) may renumber positions. A subscription that meets a new catalog
checks that the last record it delivered still has its position: then it goes on from there;
otherwise it raises ConsumerPositionLost rather than guess where to resume.
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, cast

from hybridlog.batch import check_position
from hybridlog.consumers import Consumers, ConsumerState, check_consumer_name
from hybridlog.errors import ConsumerPositionLost, InvalidArgument
from hybridlog.types import DEFAULT_MAX_READ_BYTES, GlobalPosition, GlobalRecord, Offset, StreamId, check_stream_id

if TYPE_CHECKING:
    from hybridlog.storage import Storage

DEFAULT_POLL_INTERVAL = 0.05
"""Seconds a subscription in another process first waits between polls of the catalog."""

DEFAULT_MAX_INTERVAL = 1.0
"""The longest wait between polls (the backoff doubles up to it)."""

PAGE_BYTES = DEFAULT_MAX_READ_BYTES
"""Payload bytes a subscription reads at once (at least one record)."""


class CommitSignal:
    """Counts a store's commits in this process and wakes whoever waits for the next one."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._commits = 0

    @property
    def commits(self) -> int:
        """How many times ``notify`` was called: read it before looking for records, then wait for it to move."""
        with self._changed:
            return self._commits

    def notify(self) -> None:
        """Count a commit and wake every waiting subscription."""
        with self._changed:
            self._commits += 1
            self._changed.notify_all()

    def wait(self, seen: int, timeout: float) -> bool:
        """Wait until ``commits`` is no longer ``seen`` (True) or ``timeout`` seconds pass (False)."""
        with self._changed:
            return self._changed.wait_for(lambda: self._commits != seen, timeout)


_signals: weakref.WeakValueDictionary[Path, CommitSignal] = weakref.WeakValueDictionary()
_signals_lock = threading.Lock()


def commit_signal_for(data_dir: Path) -> CommitSignal:
    """The one signal of a store directory in this process, shared by every ``Storage`` open on it."""
    key = Path(os.path.realpath(data_dir))
    with _signals_lock:
        signal = _signals.get(key)
        if signal is None:
            signal = _signals[key] = CommitSignal()
        return signal


def check_interval(name: str, value: object) -> float:
    """``value`` as seconds if it is a positive finite number; InvalidArgument naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise InvalidArgument(f"{name} must be a positive number of seconds, not {value!r}")
    return float(value)


class Subscription(Iterator[GlobalRecord]):
    """An endless iterator over committed records in global order (or one that ends once it has
    caught up, with ``stop_when_caught_up``), as ``Storage.subscribe`` returns it.

    ``stream_id``: one stream's records only (None: every stream). The start is the first
    record at or after ``from_position``; or the stream's record at ``from_offset`` (needs
    ``stream_id``; an offset not written yet starts with that record when it comes); or, for a
    ``consumer``, the first after its acknowledged position; else position 1. Giving both
    ``from_offset`` and ``from_position`` is InvalidArgument.

    ``consumer`` names a consumer whose position is kept in ``consumers.db``: it is registered
    (for ``stream_id``) if new, and a new one starts at the beginning; acknowledge progress
    with ``Storage.ack``. A consumer follows the streams it was registered for: another
    ``stream_id`` raises ConsumerMismatch. If its position no longer names the record it
    acknowledged (positions renumbered by a full catalog rebuild), ConsumerPositionLost is raised.

    The iterator never ends by itself: it waits for new records (woken by this process's
    commits, or polling the catalog every ``poll_interval`` seconds, doubling up to
    ``max_interval``) until ``close()`` is called on it or ``should_stop()`` returns True.
    With ``stop_when_caught_up`` it ends instead the first time it finds nothing more committed
    (``hybridlog tail --exit-when-caught-up``, as kcat's ``-e``).
    Records are verified as they are read; a damaged one raises IntegrityError. Closing the
    store wakes it, and its next read raises StoreClosed.

    ``position`` is how far it has gone: the last position delivered, or passed over (gaps, other
    streams' records). ``close()`` ends it from any thread, waking it if it waits.
    """

    def __init__(
        self,
        storage: Storage,
        signal: CommitSignal,
        stream_id: int | None,
        *,
        from_offset: int | None,
        from_position: int | None,
        consumer: str | None,
        poll_interval: float,
        max_interval: float,
        should_stop: Callable[[], bool] | None,
        stop_when_caught_up: bool = False,
    ) -> None:
        self._storage = storage
        self._signal = signal
        self.stream_id: StreamId | None = None if stream_id is None else check_stream_id(stream_id)
        self._poll_interval = check_interval("poll_interval", poll_interval)
        self._max_interval = check_interval("max_interval", max_interval)
        if self._max_interval < self._poll_interval:
            raise InvalidArgument(f"max_interval ({max_interval}) is shorter than poll_interval ({poll_interval})")
        if from_offset is not None and from_position is not None:
            raise InvalidArgument("give from_offset or from_position, not both")
        if from_offset is not None and self.stream_id is None:
            raise InvalidArgument("from_offset needs a stream_id (offsets count records within one stream)")
        if from_offset is not None:
            check_position("from_offset", from_offset)
        if from_position is not None:
            check_position("from_position", from_position)
        if should_stop is not None and not callable(should_stop):
            raise InvalidArgument(f"should_stop must be callable, not {should_stop!r}")
        self._should_stop = should_stop
        self._stop_when_caught_up = bool(stop_when_caught_up)
        self._stopped = False
        name = None if consumer is None else check_consumer_name(consumer)
        self.consumer: ConsumerState | None = None
        if name is not None:  # every argument is checked before this writes anything
            self.consumer = storage.register_consumer(name, self.stream_id)
        # Records of the stream before this offset are passed over (set by from_offset).
        self._min_offset = 0
        # The catalog the positions come from, and the last record delivered from it.
        self._generation = storage.catalog_generation
        self._delivered: tuple[int, StreamId, Offset] | None = None
        self._next = self._start(from_offset, from_position)
        self._records = self._follow()

    @property
    def position(self) -> GlobalPosition:
        """The last global position delivered or passed over (before the first: the start less one)."""
        return GlobalPosition(self._next - 1)

    def __next__(self) -> GlobalRecord:
        return next(self._records)

    def close(self) -> None:
        """End the subscription: the iteration stops (a waiting one is woken to stop)."""
        self._stopped = True
        self._signal.notify()

    # --- where to start --------------------------------------------------------------------------

    def _start(self, from_offset: int | None, from_position: int | None) -> int:
        """The first position to deliver (the first record at or after it, in the streams followed)."""
        storage = self._storage
        if from_position is not None:
            return max(from_position, 1)
        if from_offset is not None:
            assert self.stream_id is not None
            # The mark first: a record not committed yet will get a position above it.
            mark = storage.last_global_position()
            found = storage.global_position_of(self.stream_id, from_offset)
            self._min_offset = from_offset
            return found if found is not None else mark + 1
        if self.consumer is not None:
            return self._resume(self.consumer)
        return 1

    def _resume(self, consumer: ConsumerState) -> int:
        """After the consumer's position, if it still names the record it acknowledged."""
        if consumer.position == 0:
            return 1
        mark = self._storage.last_global_position()
        if consumer.position > mark:
            raise ConsumerPositionLost(
                consumer.name,
                consumer.position,
                f"is past the last position the store has given out ({mark}): its catalog was rebuilt or lost commits",
            )
        if consumer.acked is not None:
            found = self._storage.record_at_position(consumer.position)
            if found is not None and found != consumer.acked:
                stream, offset = consumer.acked
                raise ConsumerPositionLost(
                    consumer.name,
                    consumer.position,
                    f"was stream {stream} offset {offset} when acknowledged and is now stream {found[0]} offset"
                    f" {found[1]}: global positions were renumbered",
                )
            # None: a repair cut the acknowledged record; positions are never reused, so resume after it.
        return consumer.position + 1

    # --- following -------------------------------------------------------------------------------

    def _stop_requested(self) -> bool:
        return self._stopped or (self._should_stop is not None and self._should_stop())

    def _follow(self) -> Iterator[GlobalRecord]:
        wait = self._poll_interval
        while not self._stop_requested():
            seen = self._signal.commits  # before reading: a commit after the read still wakes the wait
            page = self._read_page()
            if page:
                for item in page:
                    if self._stop_requested():
                        return
                    self._next = item.global_position + 1
                    if item.record.offset >= self._min_offset:
                        self._delivered = (item.global_position, item.record.stream_id, item.record.offset)
                        yield item
                wait = self._poll_interval
                continue
            if self._stop_requested() or self._stop_when_caught_up:
                return  # caught up: nothing committed is left to deliver
            if not self._signal.wait(seen, wait):
                wait = min(wait * 2, self._max_interval)  # a quiet poll: wait longer next time

    def _read_page(self) -> list[GlobalRecord]:
        """The next records after ``_next`` (an empty list when there are none yet)."""
        while True:
            mark = self._storage.last_global_position()  # before the read: see the module docstring
            if self._storage.catalog_generation != self._generation:
                self._follow_new_catalog()
                continue
            if mark < self._next:
                return []
            page = self._storage.read_global(self._next, PAGE_BYTES, stream_id=self.stream_id)
            if self._storage.catalog_generation == self._generation:
                break  # the mark and the page come from the same catalog
        if not page:
            # Nothing at or after _next although the mark has reached it: the positions up to the
            # mark are gaps, or (with a stream filter) other streams' records. Never wait for them.
            self._next = mark + 1
        return page

    def _follow_new_catalog(self) -> None:
        """Go on in a new catalog if the last record delivered kept its position; else ConsumerPositionLost."""
        self._generation = self._storage.catalog_generation
        name = None if self.consumer is None else self.consumer.name
        if self._delivered is None:
            if self.consumer is not None and self._next == self.consumer.position + 1:
                self._next = self._resume(self.consumer)  # nothing delivered yet: check where it resumed
            return
        position, stream, offset = self._delivered
        found = self._storage.record_at_position(position)
        if found is not None and found != (stream, offset):
            raise ConsumerPositionLost(
                name,
                position,
                f"was stream {stream} offset {offset} when delivered and is now stream {found[0]} offset"
                f" {found[1]}: the catalog was rebuilt and global positions renumbered",
            )
        if found is None and self._storage.global_position_of(stream, offset) is not None:
            raise ConsumerPositionLost(
                name, position, f"no longer names stream {stream} offset {offset}: the catalog was rebuilt"
            )
        # Positions passed over after it (gaps, other streams) are looked at again in the new catalog.
        self._next = position + 1


class SubscribingStore:
    """``Storage``'s subscriptions and named consumers (``consumers.py``)."""

    _commit_signal: CommitSignal
    _consumers: Consumers

    def subscribe(
        self,
        stream_id: int | None = None,
        *,
        from_offset: int | None = None,
        from_position: int | None = None,
        consumer: str | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        max_interval: float = DEFAULT_MAX_INTERVAL,
        should_stop: Callable[[], bool] | None = None,
        stop_when_caught_up: bool = False,
    ) -> Subscription:
        """Every committed record in global order, waiting for new ones (see ``Subscription``)."""
        return Subscription(
            cast("Storage", self),
            self._commit_signal,
            stream_id,
            from_offset=from_offset,
            from_position=from_position,
            consumer=consumer,
            poll_interval=poll_interval,
            max_interval=max_interval,
            should_stop=should_stop,
            stop_when_caught_up=stop_when_caught_up,
        )

    def register_consumer(self, name: str, stream_id: int | None = None) -> ConsumerState:
        """The named consumer, registered for ``stream_id`` (None: every stream) if new (``Consumers.register``)."""
        return self._consumers.register(name, stream_id)

    def ack(self, consumer: str, position: int, *, force: bool = False) -> ConsumerState:
        """Record that ``consumer`` is done with every record it follows up to ``position`` (``Consumers.ack``)."""
        return self._consumers.ack(consumer, position, force=force)

    def consumers(self) -> list[ConsumerState]:
        """Every registered consumer, by name."""
        return self._consumers.all()
