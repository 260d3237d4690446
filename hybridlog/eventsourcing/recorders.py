"""eventsourcing's recorders over a hybridlog store (``store.py`` does the work).

A recorder is a name on a ``SharedStore``: the aggregate recorder (events or snapshots), the
application recorder (events with notification ids), the tracking recorder and the process recorder
(both at once). Its records are one stream of the store, which ``hybridlog verify`` proves like any
other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    ListenNotifySubscription,
    Notification,
    ProcessRecorder,
    StoredEvent,
    Subscription,
    Tracking,
    TrackingRecorder,
)

from hybridlog.errors import InvalidArgument
from hybridlog.eventsourcing.store import SharedStore


class HybridlogRecorder:
    """What every recorder here has: the store, its stream's name, and whether inserts are fsynced."""

    def __init__(self, store: SharedStore, name: str, *, fsync: bool = True) -> None:
        if not isinstance(store, SharedStore):
            raise InvalidArgument(f"store must be a SharedStore, not {type(store).__name__}")
        self.store = store
        self.name = name
        self.fsync = fsync

    @property
    def stream_id(self) -> int:
        """The hybridlog stream holding this recorder's records."""
        return self.store.row(self.name).stream_id

    def _insert(self, stored_events: Sequence[StoredEvent], tracking: Tracking | None) -> list[int]:
        return self.store.insert(self.name, list(stored_events), tracking, fsync=self.fsync)


class HybridlogAggregateRecorder(HybridlogRecorder, AggregateRecorder):
    """Stored events of aggregates (or snapshots), selected by originator id and version."""

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        """Record ``stored_events`` all or nothing (IntegrityError, nothing written, on a version conflict)."""
        self._insert(stored_events, kwargs.get("tracking"))
        return None

    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        """The originator's events with versions above ``gt`` and up to ``lte``, verified as they are read."""
        _ints(gt=gt, lte=lte, limit=limit)
        return self.store.select_events(self.name, originator_id, gt, lte, desc=desc, limit=limit)


class HybridlogApplicationRecorder(HybridlogAggregateRecorder, ApplicationRecorder):
    """Stored events in the application sequence: each gets the next notification id (1, 2, 3, ...)."""

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        """Record ``stored_events`` all or nothing; their notification ids."""
        return self._insert(stored_events, kwargs.get("tracking"))

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        """Up to ``limit`` notifications from ``start`` (or after it) up to ``stop``, of ``topics`` if given."""
        _ints(start=start, limit=limit, stop=stop)
        if isinstance(topics, str) or not all(isinstance(topic, str) for topic in topics):
            raise InvalidArgument(f"topics must be a sequence of str, not {topics!r}")
        lowest = 1 if start is None else (start if inclusive_of_start else start + 1)
        return self.store.select_notifications(self.name, lowest, limit, stop, topics)

    def max_notification_id(self) -> int | None:
        """The highest notification id, None before the first event."""
        return self.store.max_notification_id(self.name)

    def subscribe(self, gt: int | None = None, topics: Sequence[str] = ()) -> Subscription[ApplicationRecorder]:
        """Notifications after ``gt``: those recorded, then each new one as it is recorded."""
        return HybridlogSubscription(self, gt=gt, topics=topics)


class HybridlogTrackingRecorder(HybridlogRecorder, TrackingRecorder):
    """Tracking objects: the last notification id of each upstream application processed."""

    def insert_tracking(self, tracking: Tracking) -> None:
        """Record ``tracking`` (IntegrityError unless its id is above the last one of its application)."""
        self._insert([], tracking)

    def max_tracking_id(self, application_name: str) -> int | None:
        """The highest notification id tracked for ``application_name``."""
        return self.store.max_tracking_id(self.name, application_name)


class HybridlogProcessRecorder(HybridlogTrackingRecorder, HybridlogApplicationRecorder, ProcessRecorder):
    """An application recorder whose inserts may carry the tracking object of what caused them."""


def _ints(**values: object) -> None:
    """InvalidArgument for a value that is neither None nor an int (a bool is not one)."""
    for name, value in values.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidArgument(f"{name} must be an int or None, not {value!r}")


class HybridlogSubscription(ListenNotifySubscription[HybridlogApplicationRecorder]):
    """eventsourcing's listen/notify subscription, woken by every insert into the store. Every insert
    goes through this process's ``SharedStore`` (the writer lock keeps other processes out), so
    there is nothing to poll for."""

    def __init__(self, recorder: HybridlogApplicationRecorder, gt: int | None = None, topics: Sequence[str] = ()):
        super().__init__(recorder=recorder, gt=gt, topics=topics)
        recorder.store.listen(self._has_been_notified)

    def stop(self) -> None:
        """Stop the subscription."""
        super().stop()
        self._recorder.store.unlisten(self._has_been_notified)
