"""``hybridlog.eventsourcing`` under SIGKILL: an insert of several aggregates and a tracking record
is there whole or not at all, and nothing the index holds is lost with the catalog or the index.

A real child process (this file run as a script, see the bottom) records inserts through
eventsourcing's process recorder: each of two to four new aggregates with one to three events,
one more event of a ledger aggregate that every insert extends (so insert i needs every insert
before it), and, for two inserts in three, a tracking record. It prints an acknowledgement after
each insert returned, and dies by SIGKILL where the parent planned: at a named failpoint of the
write path in its Nth write group, after its Nth acknowledgement (``hybridlog.testing.harness``),
or inside its Nth commit of the index, before the commit (the index commits every two inserts
here). The parent then opens the store and checks, insert by insert, that every acknowledged one
is there, at most the one in flight besides, each whole (every aggregate's every version and its
tracking record, or none of them), notification ids 1, 2, 3, ... in insert order, and the tracked
position of the last insert there. The next child goes on from there, in the same store.

Afterwards the catalog and then the index are deleted: the notifications (ids and contents), the
aggregates and the tracking position read back the same.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from uuid import NAMESPACE_URL, UUID, uuid5

import pytest
from eventsourcing.persistence import ProcessRecorder, StoredEvent, Tracking
from eventsourcing.utils import Environment

from hybridlog import Storage, verify_store
from hybridlog.eventsourcing import HybridlogFactory
from hybridlog.testing.harness import CHILD_TIMEOUT, KillPlan, acknowledge, arm_from_environment, kill_self

THIS_FILE = Path(__file__)
UPSTREAM = "upstream"
KILL_IN_INDEX_COMMIT = "HYBRIDLOG_TEST_KILL_IN_INDEX_COMMIT"


def aggregate_id(insert: int, aggregate: int) -> UUID:
    return uuid5(NAMESPACE_URL, f"/insert/{insert}/aggregate/{aggregate}")


LEDGER = uuid5(NAMESPACE_URL, "/ledger")


def insert_of(i: int) -> tuple[list[StoredEvent], Tracking | None]:
    """Insert ``i``: its events (new aggregates and the ledger's next version) and its tracking record."""
    rng = random.Random(i)
    events = [
        StoredEvent(aggregate_id(i, a), v, f"topic{v}", f"insert {i} aggregate {a} version {v}".encode())
        for a in range(rng.randint(2, 4))
        for v in range(1, rng.randint(1, 3) + 1)
    ]
    events.insert(rng.randint(0, len(events)), StoredEvent(LEDGER, i + 1, "ledger", f"entry {i}".encode()))
    tracking = Tracking(UPSTREAM, i + 1) if i % 3 else None
    return events, tracking


def open_recorder(store_dir: Path) -> tuple[HybridlogFactory, ProcessRecorder]:
    env = Environment("Bank", {"HYBRIDLOG_STORE": str(store_dir)})
    factory = HybridlogFactory(env)
    return factory, factory.process_recorder()


def inserts_present(recorder: ProcessRecorder, first: int, count: int) -> int:
    """How many of inserts ``first ..`` are there, checking that each is whole and that they are a prefix."""
    present = first
    for i in range(first, first + count):
        events, _ = insert_of(i)
        found = [
            recorder.select_events(e.originator_id, gt=e.originator_version - 1, lte=e.originator_version)
            for e in events
        ]
        whole, none = all(len(f) == 1 for f in found), not any(found)
        assert whole or none, f"insert {i} is partly there"
        if whole:
            assert present == i, f"insert {i} is there but insert {present} is not"
            assert [f[0] for f in found] == events
            present = i + 1
    return present


def check_store(recorder: ProcessRecorder, present: int) -> None:
    """Notifications 1, 2, 3, ... are the events of inserts 0 .. present-1 in order; tracking is at the last one."""
    expected = [event for i in range(present) for event in insert_of(i)[0]]
    notifications = recorder.select_notifications(None, len(expected) + 10)
    assert [n.id for n in notifications] == list(range(1, len(expected) + 1))
    assert [StoredEvent(n.originator_id, n.originator_version, n.topic, n.state) for n in notifications] == expected
    assert recorder.max_notification_id() == (len(expected) or None)
    tracked = [i + 1 for i in range(present) if insert_of(i)[1] is not None]
    assert recorder.max_tracking_id(UPSTREAM) == (tracked[-1] if tracked else None)


def snapshot(recorder: ProcessRecorder, present: int) -> tuple[object, ...]:
    ledger = recorder.select_events(LEDGER)
    return (recorder.select_notifications(None, 10_000), ledger, recorder.max_tracking_id(UPSTREAM), present)


def test_a_killed_insert_is_whole_or_absent_and_the_index_is_rebuilt_from_the_segments(tmp_path: Path) -> None:
    kill_rounds(tmp_path / "store", random.Random(13), [None] * 12 + [1, 2, 3, 4])


@pytest.mark.slow
def test_many_more_kill_rounds(tmp_path: Path) -> None:
    """The same, 150 rounds: more write steps, more acknowledgement counts, more index commits."""
    rng = random.Random(2026)
    kill_rounds(tmp_path / "store", rng, [None if rng.random() < 0.75 else rng.randint(1, 6) for _ in range(150)])


def kill_rounds(store_dir: Path, rng: random.Random, index_commit_kills: list[int | None]) -> None:
    """One child per entry, killed as planned (None: a write step or an acknowledgement from ``rng``;
    a number: inside that index commit), each checked; then the catalog and the index deleted."""
    present = 0
    rounds = 0
    for index_commit_kill in index_commit_kills:
        plan = None if index_commit_kill else KillPlan.choose(rng, 1, 6)
        acks = run_child(store_dir, present, plan, index_commit_kill)
        assert acks == [str(i) for i in range(present, present + len(acks))]
        factory, recorder = open_recorder(store_dir)
        try:
            now = inserts_present(recorder, present, 12)
            assert present + len(acks) <= now <= present + len(acks) + 1, (plan, index_commit_kill, acks, now)
            check_store(recorder, now)
        finally:
            factory.close()
        present, rounds = now, rounds + 1
    assert present >= rounds  # the rounds did record inserts
    with Storage(store_dir, read_only=True) as reader:
        report = verify_store(reader)
        assert report.ok
        assert report.records > present  # every insert is records of the store, and they verify

    factory, recorder = open_recorder(store_dir)
    before = snapshot(recorder, present)
    factory.close()
    for deleted in ("catalog.db", "eventsourcing.db"):
        for suffix in ("", "-wal", "-shm"):
            (store_dir / f"{deleted}{suffix}").unlink(missing_ok=True)
        factory, recorder = open_recorder(store_dir)
        try:
            assert snapshot(recorder, present) == before, f"after deleting {deleted}"
            assert inserts_present(recorder, 0, present) == present
            check_store(recorder, present)
        finally:
            factory.close()


def run_child(store_dir: Path, first: int, plan: KillPlan | None, index_commit_kill: int | None) -> list[str]:
    """Run the child until it dies as ``plan`` says, or inside its ``index_commit_kill``-th index commit."""
    env = plan.environment() if plan is not None else dict(os.environ)
    if index_commit_kill:
        env[KILL_IN_INDEX_COMMIT] = str(index_commit_kill)
    child = subprocess.run(
        [sys.executable, str(THIS_FILE), "insert", str(store_dir), str(first)],
        capture_output=True,
        text=True,
        env=env,
        timeout=CHILD_TIMEOUT,
        check=False,
    )
    assert child.returncode == -signal.SIGKILL, f"child ended on its own ({child.returncode}):\n{child.stderr}"
    return child.stdout.split("\n")[:-1]


def child_insert(store_dir: Path, first: int) -> None:
    """Record inserts ``first, first+1, ...`` until killed."""
    import hybridlog.eventsourcing.index as index_module

    index_module.FLUSH_EVERY = 2  # an index commit every two inserts: kills land between and inside them
    kill_at_commit = int(os.environ.get(KILL_IN_INDEX_COMMIT) or 0)
    if kill_at_commit:
        commits = 0
        flush = index_module.EventIndex.flush

        def flush_then_die(self: index_module.EventIndex, rows: object) -> None:
            nonlocal commits
            commits += 1
            if commits == kill_at_commit:
                self.conn.execute("SAVEPOINT dying")  # changes made, the commit never comes
                kill_self()
            flush(self, rows)  # type: ignore[arg-type]

        index_module.EventIndex.flush = flush_then_die  # type: ignore[method-assign]
    arm_from_environment()
    _, recorder = open_recorder(store_dir)
    for i in range(first, first + 1000):
        events, tracking = insert_of(i)
        recorder.insert_events(events, tracking=tracking)
        acknowledge(str(i))


if __name__ == "__main__":
    assert sys.argv[1] == "insert"
    child_insert(Path(sys.argv[2]), int(sys.argv[3]))
