"""eventsourcing's own reusable test cases, run against ``hybridlog.eventsourcing``.

Each class subclasses a test case shipped in ``eventsourcing.tests`` (9.5.x) the way eventsourcing's
SQLite module tests itself: it says how to make a recorder (or sets the environment an application
reads), and inherits every test unchanged. Nothing is skipped or overridden. The base classes are
referred to through their modules, so pytest collects only the subclasses here.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import ClassVar

import pytest
from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    ProcessRecorder,
    StoredEvent,
    Tracking,
    TrackingRecorder,
)
from eventsourcing.tests import application as es_application
from eventsourcing.tests import persistence as es_persistence
from eventsourcing.tests import projection as es_projection
from eventsourcing.utils import Environment, get_topic

from hybridlog.eventsourcing import (
    HybridlogAggregateRecorder,
    HybridlogApplicationRecorder,
    HybridlogFactory,
    HybridlogProcessRecorder,
    HybridlogTrackingRecorder,
)
from hybridlog.eventsourcing.store import SharedStore, acquire, release

FACTORY_TOPIC = get_topic(HybridlogFactory)


class StoreInTempDir:
    """A fresh store directory per test, and the shared store on it."""

    store_dir: str
    store: SharedStore

    def setUp(self) -> None:
        self.store_dir = tempfile.mkdtemp(prefix="hybridlog-es-")
        self.store = acquire(self.store_dir)
        super().setUp()  # type: ignore[misc]

    def tearDown(self) -> None:
        super().tearDown()  # type: ignore[misc]
        release(self.store)
        shutil.rmtree(self.store_dir, ignore_errors=True)


class TestAggregateRecorder(StoreInTempDir, es_persistence.AggregateRecorderTestCase):
    def create_recorder(self) -> AggregateRecorder:
        return HybridlogAggregateRecorder(self.store, "test:events")


class TestSnapshotRecorder(StoreInTempDir, es_persistence.AggregateRecorderTestCase):
    def create_recorder(self) -> AggregateRecorder:
        return HybridlogAggregateRecorder(self.store, "test:snapshots")


class TestApplicationRecorder(StoreInTempDir, es_persistence.ApplicationRecorderTestCase[ApplicationRecorder]):
    def create_recorder(self) -> ApplicationRecorder:
        return HybridlogApplicationRecorder(self.store, "test:events")

    def test_insert_subscribe(self) -> None:
        self.optional_test_insert_subscribe()


class TestTrackingRecorder(StoreInTempDir, es_persistence.TrackingRecorderTestCase):
    def create_recorder(self) -> TrackingRecorder:
        return HybridlogTrackingRecorder(self.store, "test:events")


class TestProcessRecorder(StoreInTempDir, es_persistence.ProcessRecorderTestCase):
    def create_recorder(self) -> ProcessRecorder:
        return HybridlogProcessRecorder(self.store, "test:events")


class TestNonInterleavingNotificationIDs(StoreInTempDir, es_persistence.NonInterleavingNotificationIDsBaseCase):
    def create_recorder(self) -> ApplicationRecorder:
        return HybridlogApplicationRecorder(self.store, "test:events")


class ViewTrackingRecorder(HybridlogTrackingRecorder):
    """A tracking recorder subclass, for the factory test that names one by argument and by topic."""


class TestInfrastructureFactory(es_persistence.InfrastructureFactoryTestCase[HybridlogFactory]):
    def setUp(self) -> None:
        self.store_dir = tempfile.mkdtemp(prefix="hybridlog-es-")
        self.env = Environment("TestCase")
        self.env[HybridlogFactory.PERSISTENCE_MODULE] = "hybridlog.eventsourcing"
        self.env[HybridlogFactory.HYBRIDLOG_STORE] = self.store_dir
        super().setUp()

    def tearDown(self) -> None:
        super().tearDown()
        shutil.rmtree(self.store_dir, ignore_errors=True)

    def expected_factory_class(self) -> type[HybridlogFactory]:
        return HybridlogFactory

    def expected_aggregate_recorder_class(self) -> type[AggregateRecorder]:
        return HybridlogAggregateRecorder

    def expected_application_recorder_class(self) -> type[ApplicationRecorder]:
        return HybridlogApplicationRecorder

    def expected_tracking_recorder_class(self) -> type[TrackingRecorder]:
        return HybridlogTrackingRecorder

    def tracking_recorder_subclass(self) -> type[TrackingRecorder]:
        return ViewTrackingRecorder

    def expected_process_recorder_class(self) -> type[ProcessRecorder]:
        return HybridlogProcessRecorder


class EnvironmentStore:
    """``PERSISTENCE_MODULE`` and ``HYBRIDLOG_STORE`` in ``os.environ``, as a user switching an
    application over would set them; a fresh store directory per test."""

    def setUp(self) -> None:
        self.store_dir = tempfile.mkdtemp(prefix="hybridlog-es-")
        os.environ["PERSISTENCE_MODULE"] = "hybridlog.eventsourcing"
        os.environ["HYBRIDLOG_STORE"] = self.store_dir
        super().setUp()  # type: ignore[misc]

    def tearDown(self) -> None:
        super().tearDown()  # type: ignore[misc]
        del os.environ["PERSISTENCE_MODULE"]
        del os.environ["HYBRIDLOG_STORE"]
        shutil.rmtree(self.store_dir, ignore_errors=True)


# test_application_log records the DeprecationWarning of ``app.log`` with the default warning
# filters in mind; this suite's pytest settings turn warnings into errors, so here it is let through.
@pytest.mark.filterwarnings("always::DeprecationWarning")
class TestApplication(EnvironmentStore, es_application.ApplicationTestCase):
    pass


class TestExampleApplication(EnvironmentStore, es_application.ExampleApplicationTestCase):
    expected_factory_topic = FACTORY_TOPIC


class EventCountersView(HybridlogProcessRecorder, es_projection.EventCountersView):
    """The projection tests' materialised view: each increment is an event of a counter aggregate,
    recorded in one batch with the tracking object of what caused it."""

    def _count(self, counter: str) -> int:
        last = self.select_events(counter, desc=True, limit=1)
        return last[0].originator_version if last else 0

    def _increment(self, counter: str, tracking: Tracking) -> None:
        event = StoredEvent(counter, self._count(counter) + 1, "incremented", b"")
        self.insert_events([event], tracking=tracking)

    def get_created_event_counter(self) -> int:
        return self._count("created")

    def get_subsequent_event_counter(self) -> int:
        return self._count("subsequent")

    def incr_created_event_counter(self, tracking: Tracking) -> None:
        self._increment("created", tracking)

    def incr_subsequent_event_counter(self, tracking: Tracking) -> None:
        self._increment("subsequent", tracking)


class TestEventCountersView(StoreInTempDir, es_projection.EventCountersViewTestCase):
    def construct_event_counters_view(self) -> es_projection.EventCountersView:
        return EventCountersView(self.store, "counters:events")


class ProjectionEnvironment:
    """The projection runners read their settings from ``env``: a fresh store directory per test."""

    env: ClassVar[dict[str, str]]

    def setUp(self) -> None:
        self.store_dir = tempfile.mkdtemp(prefix="hybridlog-es-")
        type(self).env = {"PERSISTENCE_MODULE": "hybridlog.eventsourcing", "HYBRIDLOG_STORE": self.store_dir}
        super().setUp()  # type: ignore[misc]

    def tearDown(self) -> None:
        super().tearDown()  # type: ignore[misc]
        shutil.rmtree(self.store_dir, ignore_errors=True)


class TestAggregateEventCountersProjection(
    ProjectionEnvironment, es_projection.AggregateEventCountersProjectionTestCase
):
    view_class = EventCountersView


class TestEventSourcedProjection(ProjectionEnvironment, es_projection.EventSourcedProjectionTestCase):
    pass
