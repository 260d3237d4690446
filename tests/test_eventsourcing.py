"""``hybridlog.eventsourcing`` beyond eventsourcing's own test cases (``test_eventsourcing_suite.py``):
what a hybridlog user expects of it.

Contracts tested here:

* Bad input (a field eventsourcing would not make) is a ``StorageError`` (``InvalidArgument``), and
  nothing is written; a version or tracking conflict is a ``RecordConflict``, both eventsourcing's
  ``IntegrityError`` and hybridlog's ``ConflictError``, and nothing is written.
* The settings come through eventsourcing's ``Environment``: ``<APPNAME>_HYBRIDLOG_STORE`` before
  ``HYBRIDLOG_STORE``; a missing store or a bad ``HYBRIDLOG_FSYNC`` is ``InvalidConfiguration``.
* Factories and recorders in one process share one open store; the last one out closes it.
* The index is derived: an index from a later state of the store (a restored backup) is dropped
  for the streams it is ahead on and read again; an index that disagrees with its stream is
  refused with a hint, and deleting it puts it right.
* A stream at a recorder's id that does not begin with the recorder's header is ``ForeignStream``.
* The application's history is a hybridlog stream: ``hybridlog verify`` proves it and names a
  flipped byte, and a read through the recorder refuses it; checkpoints anchor reads.
* A subscription wakes when an insert is recorded.
* An append that fails records nothing (the inserts before it, not yet committed to the index,
  stay); an index write that fails after the append leaves the insert recorded, and the index is
  read again from the stream.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID, uuid4

import apsw
import pytest
from click.testing import CliRunner
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError as EventsourcingIntegrityError
from eventsourcing.persistence import StoredEvent, Tracking
from eventsourcing.utils import Environment

from hybridlog import (
    ConflictError,
    IntegrityError,
    InvalidArgument,
    InvalidConfiguration,
    Storage,
    StorageError,
    StorageIOError,
)
from hybridlog.batch import checkpoint_positions, plan_batch
from hybridlog.cli import cli
from hybridlog.eventsourcing import (
    ForeignStream,
    HybridlogApplicationRecorder,
    HybridlogFactory,
    HybridlogProcessRecorder,
    RecordConflict,
    stream_id_for,
)
from hybridlog.eventsourcing.codec import encode_events, encode_header
from hybridlog.eventsourcing.index import EventIndex
from hybridlog.eventsourcing.store import CHECKPOINT_EVERY, SharedStore, acquire, release
from hybridlog.testing.damage import flip_byte, segment_files
from hybridlog.types import CheckpointPolicy, RecordKind


@pytest.fixture
def store(store_dir: Path) -> Iterator[SharedStore]:
    shared = acquire(store_dir)
    yield shared
    release(shared)


def event(oid: UUID | str, version: int, state: bytes = b"{}") -> StoredEvent:
    return StoredEvent(oid, version, "topic", state)


def test_bad_input_is_a_storage_error_and_writes_nothing(store: SharedStore) -> None:
    recorder = HybridlogApplicationRecorder(store, "app:events")
    recorder.insert_events([event(uuid4(), 1)])
    before = store.storage.next_offset(recorder.stream_id)
    good = event(uuid4(), 1)
    for bad in (
        StoredEvent(42, 1, "topic", b""),  # type: ignore[arg-type]
        StoredEvent(uuid4(), True, "topic", b""),
        StoredEvent(uuid4(), 2**63, "topic", b""),
        StoredEvent(uuid4(), 1, b"topic", b""),  # type: ignore[arg-type]
        StoredEvent(uuid4(), 1, "topic", "state"),  # type: ignore[arg-type]
        StoredEvent("x" * 70_000, 1, "topic", b""),
        StoredEvent("\udc80", 1, "topic", b""),  # a lone surrogate: no UTF-8
        StoredEvent(uuid4(), 1, "\ud800", b""),
    ):
        with pytest.raises(InvalidArgument):
            recorder.insert_events([good, bad])
    for tracking in (Tracking("up", -1), Tracking("\udc80", 1)):
        with pytest.raises(InvalidArgument):
            HybridlogProcessRecorder(store, "app:events").insert_events([good], tracking=tracking)
    with pytest.raises(InvalidArgument):
        recorder.select_events(42)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        recorder.select_events(uuid4(), gt="1")  # type: ignore[arg-type]
    for start, limit, topics in (("1", 10, ()), (None, 1.5, ()), (None, 10, "topic"), (None, 10, [b"topic"])):
        with pytest.raises(InvalidArgument):
            recorder.select_notifications(start, limit, topics=topics)  # type: ignore[arg-type]
    assert issubclass(InvalidArgument, StorageError)
    assert store.storage.next_offset(recorder.stream_id) == before
    assert recorder.max_notification_id() == 1
    assert recorder.insert_events([good]) == [2]


def test_a_conflict_is_both_integrity_errors_and_writes_nothing(store: SharedStore) -> None:
    recorder = HybridlogProcessRecorder(store, "app:events")
    a, b = uuid4(), uuid4()
    recorder.insert_events([event(a, 1), event(a, 2), event(a, 3)], tracking=Tracking("up", 5))
    before = store.storage.next_offset(recorder.stream_id)
    attempts = [
        ([event(b, 1), event(a, 2)], None),  # a version inside a run
        ([event(b, 1), event(a, 3)], None),  # the run's last version
        ([event(b, 1), event(b, 1)], None),  # twice in one insert
        ([event(b, 1)], Tracking("up", 5)),  # tracking not above the last
        ([event(b, 1)], Tracking("up", 4)),
    ]
    for events, tracking in attempts:
        with pytest.raises(RecordConflict) as caught:
            recorder.insert_events(events, tracking=tracking)
        assert isinstance(caught.value, EventsourcingIntegrityError)
        assert isinstance(caught.value, ConflictError)
        assert caught.value.stream_id == recorder.stream_id
    assert store.storage.next_offset(recorder.stream_id) == before
    assert recorder.select_events(b) == []
    assert recorder.max_tracking_id("up") == 5
    assert recorder.insert_events([event(a, 4), event(b, 1)], tracking=Tracking("up", 6)) == [4, 5]
    assert [e.originator_version for e in recorder.select_events(a)] == [1, 2, 3, 4]
    assert [e.originator_version for e in recorder.select_events(a, gt=1, lte=3, desc=True)] == [3, 2]


def test_an_append_that_fails_records_nothing_and_the_next_insert_goes_on(
    store: SharedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = HybridlogProcessRecorder(store, "app:events")
    a = uuid4()
    for version in (1, 2, 3):  # not committed to the index yet: only in its open transaction
        recorder.insert_events([event(a, version)], tracking=Tracking("up", version))
    append = store.storage.append_batch

    def disk_full(*args: object, **kwargs: object) -> object:
        raise StorageIOError("no space left on device")

    monkeypatch.setattr(store.storage, "append_batch", disk_full)
    with pytest.raises(StorageIOError):
        recorder.insert_events([event(a, 4), event(uuid4(), 1)], tracking=Tracking("up", 4))
    monkeypatch.setattr(store.storage, "append_batch", append)
    assert [e.originator_version for e in recorder.select_events(a)] == [1, 2, 3]
    assert recorder.max_notification_id() == 3
    assert recorder.max_tracking_id("up") == 3
    assert recorder.insert_events([event(a, 4)], tracking=Tracking("up", 4)) == [4]
    assert [n.id for n in recorder.select_notifications(None, 10)] == [1, 2, 3, 4]


def test_an_index_write_that_fails_after_the_append_is_redone_from_the_stream(
    store: SharedStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = HybridlogProcessRecorder(store, "app:events")
    a, b = uuid4(), uuid4()
    recorder.insert_events([event(a, 1)], tracking=Tracking("up", 1))
    add = EventIndex.add_notifications

    def full(*args: object) -> None:
        raise apsw.FullError("database or disk is full")

    monkeypatch.setattr(EventIndex, "add_notifications", staticmethod(full))
    assert recorder.insert_events([event(a, 2), event(b, 1)], tracking=Tracking("up", 2)) == [2, 3]  # it is stored
    assert "read again from the stream" in caplog.text
    monkeypatch.setattr(EventIndex, "add_notifications", staticmethod(add))
    assert [e.originator_version for e in recorder.select_events(a)] == [1, 2]
    assert recorder.select_events(b) == [event(b, 1)]
    assert [n.id for n in recorder.select_notifications(None, 10)] == [1, 2, 3]
    assert recorder.max_tracking_id("up") == 2
    with pytest.raises(RecordConflict):
        recorder.insert_events([event(b, 1)])
    assert recorder.insert_events([event(b, 2)]) == [4]


def test_a_uuid_and_its_string_are_different_aggregates(store: SharedStore) -> None:
    recorder = HybridlogApplicationRecorder(store, "app:events")
    oid = uuid4()
    recorder.insert_events([event(oid, 1), event(str(oid), 1)])
    assert recorder.select_events(oid) == [event(oid, 1)]
    assert recorder.select_events(str(oid)) == [event(str(oid), 1)]


def test_settings_come_through_the_environment(tmp_path: Path) -> None:
    with pytest.raises(InvalidConfiguration, match="HYBRIDLOG_STORE"):
        HybridlogFactory(Environment("Bank", {}))
    with pytest.raises(InvalidConfiguration, match="HYBRIDLOG_FSYNC"):
        HybridlogFactory(Environment("Bank", {"HYBRIDLOG_STORE": str(tmp_path / "s"), "HYBRIDLOG_FSYNC": "often"}))
    env = Environment(
        "Bank", {"HYBRIDLOG_STORE": str(tmp_path / "shared"), "BANK_HYBRIDLOG_STORE": str(tmp_path / "b")}
    )
    factory = HybridlogFactory(env)
    try:
        assert factory.store.data_dir == (tmp_path / "b").resolve()
        assert factory.fsync
    finally:
        factory.close()


def test_factories_in_one_process_share_the_store_and_the_last_one_closes_it(tmp_path: Path) -> None:
    env = {"PERSISTENCE_MODULE": "hybridlog.eventsourcing", "HYBRIDLOG_STORE": str(tmp_path / "store")}
    first, second = Application[UUID](env=env), Application[UUID](env=env)
    assert first.factory.store is second.factory.store  # type: ignore[attr-defined]
    aggregate = Aggregate()
    first.save(aggregate)
    assert second.repository.get(aggregate.id).version == 1
    first.close()
    aggregate.trigger_event(Aggregate.Event)
    second.save(aggregate)  # still open for the second
    second.close()
    with pytest.raises(StorageError):
        second.factory.store.storage.next_offset(0)  # type: ignore[attr-defined]  # closed by the last one out
    third = Application[UUID](env=env)
    try:
        assert third.repository.get(aggregate.id).version == 2
    finally:
        third.close()


def test_an_index_from_a_later_state_is_read_again(tmp_path: Path) -> None:
    store_dir, backup = tmp_path / "store", tmp_path / "backup"
    shared = acquire(store_dir)
    recorder = HybridlogApplicationRecorder(shared, "app:events")
    oid = uuid4()
    recorder.insert_events([event(oid, 1), event(oid, 2)])
    release(shared)
    shutil.copytree(store_dir, backup)
    shared = acquire(store_dir)
    recorder = HybridlogApplicationRecorder(shared, "app:events")
    recorder.insert_events([event(oid, 3), event(uuid4(), 1)])
    release(shared)
    shutil.copy(store_dir / "eventsourcing.db", backup / "eventsourcing.db")  # an index ahead of its stream
    shared = acquire(backup)
    try:
        recorder = HybridlogApplicationRecorder(shared, "app:events")
        assert [e.originator_version for e in recorder.select_events(oid)] == [1, 2]
        assert recorder.max_notification_id() == 2
        assert recorder.insert_events([event(oid, 3)]) == [3]
    finally:
        release(shared)


def test_an_index_that_disagrees_with_its_stream_is_refused_until_deleted(store_dir: Path) -> None:
    shared = acquire(store_dir)
    recorder = HybridlogApplicationRecorder(shared, "app:events")
    a, b = uuid4(), uuid4()
    recorder.insert_events([event(a, 1), event(b, 1)])
    shared.index.conn.execute("UPDATE runs SET first_offset = first_offset + 1")  # points a's run at b's event
    with pytest.raises(StorageError, match="disagrees") as caught:
        recorder.select_events(a)
    assert "eventsourcing.db" in (caught.value.hint or "")
    release(shared)
    for suffix in ("", "-wal", "-shm"):
        (store_dir / f"eventsourcing.db{suffix}").unlink(missing_ok=True)
    shared = acquire(store_dir)
    try:
        recorder = HybridlogApplicationRecorder(shared, "app:events")
        assert recorder.select_events(a) == [event(a, 1)]
        assert recorder.select_events(b) == [event(b, 1)]
    finally:
        release(shared)


@pytest.mark.parametrize("damage", ["garbage", "another database"])
def test_an_unusable_index_file_is_made_again_from_the_stream(store_dir: Path, damage: str) -> None:
    shared = acquire(store_dir)
    recorder = HybridlogProcessRecorder(shared, "app:events")
    a = uuid4()
    recorder.insert_events([event(a, 1), event(a, 2)], tracking=Tracking("up", 3))
    release(shared)
    index = store_dir / "eventsourcing.db"
    for suffix in ("-wal", "-shm"):
        Path(f"{index}{suffix}").unlink(missing_ok=True)
    if damage == "garbage":
        index.write_bytes(b"not a database at all " * 100)
    else:
        index.unlink()
        other = apsw.Connection(str(index))
        other.execute("CREATE TABLE t (x); PRAGMA user_version = 7")
        other.close()
    shared = acquire(store_dir)
    try:
        recorder = HybridlogProcessRecorder(shared, "app:events")
        assert [e.originator_version for e in recorder.select_events(a)] == [1, 2]
        assert recorder.max_tracking_id("up") == 3
        assert recorder.insert_events([event(a, 3)]) == [3]
    finally:
        release(shared)


def test_a_stream_holding_a_version_twice_is_foreign(store_dir: Path) -> None:
    a = uuid4()
    with Storage(store_dir) as storage:  # written past the module: the same version twice
        twice = encode_events([event(a, 1)], 1).payloads + encode_events([event(a, 1)], 2).payloads
        storage.append(stream_id_for("app:events"), [encode_header("app:events"), *twice])
    shared = acquire(store_dir)
    try:
        with pytest.raises(ForeignStream, match="twice"):
            HybridlogApplicationRecorder(shared, "app:events").max_notification_id()
    finally:
        release(shared)


def test_a_stream_without_the_recorders_header_is_foreign(store_dir: Path) -> None:
    with Storage(store_dir) as storage:
        storage.append(stream_id_for("app:events"), [b"someone else's record"])
    shared = acquire(store_dir)
    try:
        with pytest.raises(ForeignStream):
            HybridlogApplicationRecorder(shared, "app:events").max_notification_id()
        other = HybridlogApplicationRecorder(shared, "other:events")
        assert other.insert_events([event(uuid4(), 1)]) == [1]
    finally:
        release(shared)


def test_verify_proves_the_history_and_names_a_flipped_byte(store_dir: Path) -> None:
    shared = acquire(store_dir)
    recorder = HybridlogApplicationRecorder(shared, "app:events")
    oid = uuid4()
    for version in range(1, 2 * CHECKPOINT_EVERY + 2):
        recorder.insert_events([event(oid, version, b'{"amount": %d}' % version)])
    sid = recorder.stream_id
    kinds = [r.kind for r in shared.storage.iter_records(sid, 0, anchored=False)]
    assert kinds.count(RecordKind.CHECKPOINT) == 2  # a checkpoint every CHECKPOINT_EVERY records
    release(shared)

    runner = CliRunner()
    assert runner.invoke(cli, ["verify", str(store_dir)]).exit_code == 0
    with Storage(store_dir) as storage:
        assert storage.check().findings == []  # eventsourcing.db is no foreign file to check
    assert (store_dir / "eventsourcing.db").exists()
    segment = segment_files(store_dir, sid)[-1]
    data = segment.read_bytes()
    flip_byte(segment, data.rindex(b'{"amount": 200}') + 12)
    result = runner.invoke(cli, ["verify", str(store_dir)])
    assert result.exit_code != 0
    assert str(sid) in result.output

    shared = acquire(store_dir)
    try:
        recorder = HybridlogApplicationRecorder(shared, "app:events")
        with pytest.raises(IntegrityError):
            recorder.select_events(oid, gt=199, lte=200)
        assert [e.originator_version for e in recorder.select_events(oid, lte=3)] == [1, 2, 3]
    finally:
        release(shared)


@pytest.mark.parametrize("every", [1, 2, 5, 128])
def test_the_checkpoint_positions_are_where_the_store_puts_checkpoints(every: int) -> None:
    """``checkpoint_positions`` says where ``plan_batch`` puts checkpoints, for every batch size and start
    (``tests/test_batch.py`` holds ``plan_batch`` to the one-event-at-a-time rule)."""
    for since in range(2 * every + 2):
        for count in range(3 * every + 3):
            planned = plan_batch([b"x"] * count, CheckpointPolicy.every(every), since, 0)
            checkpoints = [at for at, (kind, _) in enumerate(planned) if kind == RecordKind.CHECKPOINT]
            assert checkpoint_positions(count, since, every) == [at - n - 1 for n, at in enumerate(checkpoints)]
            assert len(checkpoints) == (
                0 if count < max(1, every - since) else 1 + (count - max(1, every - since)) // every
            )


def test_records_land_where_the_index_says_across_checkpoints(
    store: SharedStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Inserts that straddle the store's checkpoints: every run and notification points at its
    records, and a wrong plan (a store whose policy differs) is caught, not indexed."""
    recorder = HybridlogProcessRecorder(store, "app:events")
    a = uuid4()
    version = 0
    for size in (1, 60, 127, 3, 300, 128, 2):
        recorder.insert_events([event(a, version + v + 1) for v in range(size)], tracking=Tracking("up", version + 1))
        version += size
    kinds = [r.kind for r in store.storage.iter_records(recorder.stream_id, 0, anchored=False)]
    assert kinds.count(RecordKind.CHECKPOINT) == len(kinds) // (CHECKPOINT_EVERY + 1)
    assert [e.originator_version for e in recorder.select_events(a)] == list(range(1, version + 1))
    assert [n.id for n in recorder.select_notifications(None, 1000)] == list(range(1, version + 1))
    assert [e.originator_version for e in recorder.select_events(a, gt=120, lte=140)] == list(range(121, 141))

    store._since_checkpoint[recorder.stream_id] += 7  # a plan that cannot be the store's
    recorder.insert_events([event(a, version + v + 1) for v in range(200)])  # stored; the index is read again
    version += 200
    assert "checkpoints did not land where planned" in caplog.text
    assert [e.originator_version for e in recorder.select_events(a)] == list(range(1, version + 1))
    assert [n.id for n in recorder.select_notifications(None, 1000)] == list(range(1, version + 1))


def test_a_subscription_wakes_when_an_insert_is_recorded(store: SharedStore) -> None:
    recorder = HybridlogApplicationRecorder(store, "app:events")
    oid = uuid4()
    received: list[int] = []
    with recorder.subscribe(gt=None) as subscription:

        def insert_later() -> None:
            recorder.insert_events([event(oid, 1), event(oid, 2)])

        threading.Thread(target=insert_later).start()
        for notification in subscription:
            received.append(notification.originator_version)
            if len(received) == 2:
                break
    assert received == [1, 2]
