"""The infrastructure factory eventsourcing finds by ``PERSISTENCE_MODULE=hybridlog.eventsourcing``.

Settings, read through eventsourcing's ``Environment`` (so ``<APPNAME>_HYBRIDLOG_STORE`` is tried
before ``HYBRIDLOG_STORE``):

- ``HYBRIDLOG_STORE``: the store directory (created if missing). Required.
- ``HYBRIDLOG_FSYNC``: whether each insert is on disk before it returns (default yes).

Every recorder of an application is a stream of that store named after the application and the
recorder's purpose: ``<name>:events`` (the application, process and tracking recorders, and the
aggregate recorder for events) and ``<name>:snapshots``.
"""

from __future__ import annotations

from typing import TypeVar

from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    InfrastructureFactory,
    ProcessRecorder,
)
from eventsourcing.utils import Environment, EnvType, resolve_topic, strtobool

from hybridlog.errors import InvalidConfiguration
from hybridlog.eventsourcing.recorders import (
    HybridlogAggregateRecorder,
    HybridlogApplicationRecorder,
    HybridlogProcessRecorder,
    HybridlogTrackingRecorder,
)
from hybridlog.eventsourcing.store import acquire, release

_R = TypeVar("_R")


class HybridlogFactory(InfrastructureFactory[HybridlogTrackingRecorder]):
    """Recorders of one application, all in the hybridlog store ``HYBRIDLOG_STORE`` names."""

    HYBRIDLOG_STORE = "HYBRIDLOG_STORE"
    HYBRIDLOG_FSYNC = "HYBRIDLOG_FSYNC"

    aggregate_recorder_class = HybridlogAggregateRecorder
    application_recorder_class = HybridlogApplicationRecorder
    tracking_recorder_class = HybridlogTrackingRecorder
    process_recorder_class = HybridlogProcessRecorder

    def __init__(self, env: Environment | EnvType | None):
        super().__init__(env)
        data_dir = (self.env.get(self.HYBRIDLOG_STORE) or "").strip()
        if not data_dir:
            keys = ", ".join(self.env.create_keys(self.HYBRIDLOG_STORE))
            raise InvalidConfiguration(f"no hybridlog store directory in the environment (keys: {keys})")
        fsync = self.env.get(self.HYBRIDLOG_FSYNC, "yes") or "yes"
        try:
            self.fsync = bool(strtobool(fsync))
        except ValueError:
            raise InvalidConfiguration(f"{self.HYBRIDLOG_FSYNC} must be a yes or no value, not {fsync!r}") from None
        self.store = acquire(data_dir)
        self._closed = False

    def _recorder_name(self, purpose: str) -> str:
        return f"{self.env.name}:{purpose}"

    def aggregate_recorder(self, purpose: str = "events") -> AggregateRecorder:
        """Stored events (``purpose="events"``) or snapshots (``"snapshots"``) of aggregates."""
        return self.aggregate_recorder_class(self.store, self._recorder_name(purpose), fsync=self.fsync)

    def application_recorder(self) -> ApplicationRecorder:
        """The application's events with notification ids (``APPLICATION_RECORDER_TOPIC`` may name a subclass)."""
        cls = self._resolve(self.APPLICATION_RECORDER_TOPIC, self.application_recorder_class)
        return cls(self.store, self._recorder_name("events"), fsync=self.fsync)

    def tracking_recorder(
        self, tracking_recorder_class: type[HybridlogTrackingRecorder] | None = None
    ) -> HybridlogTrackingRecorder:
        """Tracking objects (``TRACKING_RECORDER_TOPIC`` or the argument may name a subclass, such as a view)."""
        cls = tracking_recorder_class or self._resolve(self.TRACKING_RECORDER_TOPIC, self.tracking_recorder_class)
        if not issubclass(cls, HybridlogTrackingRecorder):
            raise InvalidConfiguration(f"{cls.__name__} is not a HybridlogTrackingRecorder")
        return cls(self.store, self._recorder_name("events"), fsync=self.fsync)

    def process_recorder(self) -> ProcessRecorder:
        """Events with notification ids, each insert with the tracking object of its cause."""
        cls = self._resolve(self.PROCESS_RECORDER_TOPIC, self.process_recorder_class)
        return cls(self.store, self._recorder_name("events"), fsync=self.fsync)

    def _resolve(self, key: str, default: type[_R]) -> type[_R]:
        topic = self.env.get(key)
        if not topic:
            return default
        cls = resolve_topic(topic)
        if not (isinstance(cls, type) and issubclass(cls, default)):
            raise InvalidConfiguration(f"{key} {topic!r} is not a {default.__name__}")
        return cls

    def close(self) -> None:
        """Give back the store (closed when no factory in this process uses it)."""
        if not self._closed:
            self._closed = True
            release(self.store)
