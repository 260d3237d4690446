"""Readers and ``check`` beside a writer in another process, across whole-catalog rebuilds.

Contracts tested here:

* a reader (``read_only=True``) opened before a catalog rebuild follows the new catalog: it sees
  every record committed after the rebuild, and so do its subscriptions; if the rebuild
  renumbered the positions a subscription delivered, it raises ConsumerPositionLost;
* a reader opening while ``hybridlog rebuild-index`` runs (paused at a named step) sees the old
  catalog whole: every record, never a stream read as empty;
* ``check`` beside a writer appending continuously reports nothing (exit 0), yet still finds a
  flipped byte in an old record.

The writer runs as a child process (this file run as a script, see ``child_main``), driven line
by line over its stdin and acknowledging each step on its stdout.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from hybridlog import CheckpointPolicy, GlobalRecord, Record, Storage
from hybridlog.testing import harness
from hybridlog.testing.damage import genesis_events, genesis_records
from hybridlog.testing.harness import CHILD_TIMEOUT, read_line

THIS_FILE = Path(__file__).resolve()
SECOND = 1_000_000_000
T0 = 1_700_000_000 * SECOND


def open_writer(path: Path, clock: Callable[[], int] | None = None) -> Storage:
    """Small segments (rotation) and a checkpoint every 3 events (verified runs end there)."""
    return Storage(path, checkpoint_policy=CheckpointPolicy.every(3), max_segment_size=4096, clock=clock)


# --- the writer child, driven over stdin -------------------------------------------------------------


@contextmanager
def writer_child(*args: str) -> Iterator[subprocess.Popen[str]]:
    child = harness.spawn(THIS_FILE, *args, stdin=subprocess.PIPE)
    try:
        assert read_line(child) == "ready"
        yield child
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(CHILD_TIMEOUT)
        for pipe in (child.stdin, child.stdout, child.stderr):
            if pipe is not None:
                pipe.close()


def tell(child: subprocess.Popen[str], command: str) -> str:
    """Send one command line; the child's answer."""
    assert child.stdin is not None
    child.stdin.write(command + "\n")
    child.stdin.flush()
    return read_line(child)


def follow(sub: Iterator[GlobalRecord], count: int) -> list[GlobalRecord]:
    """The next ``count`` records of a subscription (it stops itself, see ``deadline``)."""
    got: list[GlobalRecord] = []
    for item in sub:
        got.append(item)
        if len(got) == count:
            break
    return got


def deadline(seconds: float = 20.0) -> Callable[[], bool]:
    """A subscription's should_stop: only a guard against a hang, never what a test waits for."""
    end = time.monotonic() + seconds
    return lambda: time.monotonic() > end


def payloads(records: list[Record]) -> list[bytes]:
    return [r.payload for r in records]


# --- a reader opened before a rebuild follows it -----------------------------------------------------


def test_a_reader_and_its_subscription_follow_a_rebuild_in_another_process(tmp_path: Path) -> None:
    store_dir = tmp_path / "s"
    with writer_child("writer", str(store_dir)) as writer:
        assert tell(writer, "append 0 5") == "ok 0 6"  # 5 events, a checkpoint after the third
        reader = Storage(store_dir, read_only=True)
        sub = reader.subscribe(0, poll_interval=0.01, max_interval=0.05, should_stop=deadline())
        assert [g.global_position for g in follow(sub, 6)] == list(range(1, 7))
        assert reader.read_from(0, 1, 100) == [b"0-1", b"0-2", b"0-3", b"0-4"]  # a verified run now
        assert reader.read_from(0, 2, 1) == [b"0-2"]

        assert tell(writer, "rebuild") == "ok"
        assert tell(writer, "append 0 4") == "ok 0 12"

        # Reads see the commits made after the rebuild.
        assert reader.next_offset(0) == 12
        assert genesis_events(reader, 0) == [f"0-{i}".encode() for i in range(9)]
        assert reader.read_from(0, 10, 1) == [b"0-8"]
        assert reader.read_from(0, 2, 1) == [b"0-2"]
        assert reader.last_global_position() == 12
        assert reader.catalog_generation == 1
        # One stream, so the rebuild's time-order numbering is the numbering it had: the
        # subscription goes on where it was.
        after = follow(sub, 6)
        assert [g.global_position for g in after] == list(range(7, 13))
        assert [g.record.offset for g in after] == list(range(6, 12))
        sub.close()
        reader.close()
        assert tell(writer, "exit") == "bye"


def test_a_subscription_carries_on_across_a_rebuild_whatever_the_clock_did(tmp_path: Path) -> None:
    """Positions are in the frames: a rebuild keeps them even where time order is not commit
    order, so a subscription goes on from where it was, missing and repeating nothing."""
    store_dir = tmp_path / "s"
    with writer_child("writer", str(store_dir)) as writer:
        assert tell(writer, f"append 1 1 {T0 + 10 * SECOND}") == "ok 1 1"  # position 1
        assert tell(writer, f"append 2 1 {T0 + 5 * SECOND}") == "ok 2 1"  # position 2, earlier
        reader = Storage(store_dir, read_only=True)
        sub = reader.subscribe(poll_interval=0.01, max_interval=0.05, should_stop=deadline())
        assert [(g.record.stream_id, g.global_position) for g in follow(sub, 2)] == [(1, 1), (2, 2)]
        assert tell(writer, "rebuild") == "ok"
        assert tell(writer, f"append 1 1 {T0 + 20 * SECOND}") == "ok 1 2"
        assert [(g.record.stream_id, g.global_position) for g in follow(sub, 1)] == [(1, 3)]
        fresh = reader.subscribe(poll_interval=0.01, max_interval=0.05, should_stop=deadline())
        assert [(g.record.stream_id, g.record.offset) for g in follow(fresh, 3)] == [(1, 0), (2, 0), (1, 1)]
        reader.close()
        assert tell(writer, "exit") == "bye"


# --- a reader opening during rebuild-index -----------------------------------------------------------


def fill_store(store_dir: Path) -> dict[int, list[Record]]:
    """Three streams of a few segments each; every record, by stream."""
    with open_writer(store_dir) as store:
        for round_no in range(12):
            for sid in (1, 2, 3):
                store.append(sid, [f"{sid}-{round_no}-{i}".encode() * 20 for i in range(4)])
        return {sid: genesis_records(store, sid) for sid in (1, 2, 3)}


def assert_reads_whole(reader: Storage, expected: dict[int, list[Record]]) -> None:
    for sid, records in expected.items():
        assert genesis_records(reader, sid) == records
        assert reader.read_from(sid, 5, 10**9) == [r.payload for r in records[5:] if r.kind.name == "EVENT"]
    total = sum(len(r) for r in expected.values())
    assert reader.last_global_position() == total
    assert len(reader.read_global(1, 10**9)) == total


@pytest.mark.parametrize(
    ("step", "args"),
    [
        ("index_stream", []),  # the whole-catalog rebuild, between two streams
        ("_install_catalog", []),  # the whole-catalog rebuild, built and about to be put in place
        ("insert_batches", ["--stream", "2"]),  # one stream's reindex, inside its transaction
    ],
)
def test_a_reader_opening_during_rebuild_index_sees_the_old_catalog_whole(
    tmp_path: Path, step: str, args: list[str]
) -> None:
    store_dir = tmp_path / "s"
    expected = fill_store(store_dir)
    early = Storage(store_dir, read_only=True)  # opened before the rebuild
    assert_reads_whole(early, expected)
    with writer_child("rebuild-index", str(store_dir), step, *args) as child:
        assert read_line(child) == f"paused at {step}"
        during = Storage(store_dir, read_only=True)  # opened while the rebuild is paused
        assert_reads_whole(during, expected)
        assert_reads_whole(early, expected)
        assert tell(child, "go") == "done 0"
        child.wait(CHILD_TIMEOUT)
    for reader in (during, early):  # both follow the rebuilt catalog
        assert_reads_whole(reader, expected)
        reader.close()
    assert [p.name for p in store_dir.glob("catalog.db.new*")] == []


# --- check beside a live writer ----------------------------------------------------------------------


def check_exit(store_dir: Path) -> tuple[int, str]:
    from click.testing import CliRunner

    from hybridlog.cli import cli

    result = CliRunner().invoke(cli, ["check", str(store_dir), "--json"])
    return result.exit_code, result.output


def test_check_beside_a_writer_appending_finds_nothing_false_and_real_damage_still(tmp_path: Path) -> None:
    store_dir = tmp_path / "s"
    with open_writer(store_dir) as store:
        store.append(7, [b"old record %d" % i * 10 for i in range(60)])  # sealed segments the writer leaves alone
    child = harness.spawn(THIS_FILE, "stream-writer", str(store_dir))
    try:
        acks = 0
        for target in (3, 10, 25, 40, 60, 90, 130, 180):
            while acks < target:
                assert read_line(child) == f"ack {acks}"
                acks += 1
            report = Storage(store_dir, read_only=True).check()
            assert report.findings == [], (acks, report.findings)
            code, output = check_exit(store_dir)
            assert code == 0, (acks, output)
        # Real damage beside the live writer: one flipped byte in a record of stream 7.
        segment = sorted((store_dir / "streams").glob("*7/*.seg"))[0]
        data = bytearray(segment.read_bytes())
        data[200] ^= 0x01
        segment.write_bytes(bytes(data))
        while acks < 200:
            assert read_line(child) == f"ack {acks}"
            acks += 1
        report = Storage(store_dir, read_only=True).check()
        assert ("damaged_record", 7) in {(f.problem, f.stream_id) for f in report.findings}
        assert {f.stream_id for f in report.findings} == {7}  # nothing about the streams being written
        code, _ = check_exit(store_dir)
        assert code == 3
    finally:
        child.kill()
        child.wait(CHILD_TIMEOUT)
        for pipe in (child.stdout, child.stderr):
            if pipe is not None:
                pipe.close()


# --- the child ----------------------------------------------------------------------------------------


def run_writer(store_dir: Path) -> None:
    """Commands on stdin: ``append SID N [CLOCK_NS]``, ``rebuild``, ``exit``."""
    now = [T0]

    def clock() -> int:
        return now[0]

    store = open_writer(store_dir, clock=clock)
    print("ready", flush=True)
    counts: dict[int, int] = {}
    for line in sys.stdin:
        words = line.split()
        if words[0] == "append":
            sid, n = int(words[1]), int(words[2])
            now[0] = int(words[3]) if len(words) > 3 else now[0] + SECOND
            first = counts.get(sid, 0)
            offset, _ = store.append(sid, [f"{sid}-{first + i}".encode() for i in range(n)])
            counts[sid] = first + n
            print(f"ok {sid} {offset}", flush=True)
        elif words[0] == "rebuild":
            store.rebuild_catalog()
            print("ok", flush=True)
        elif words[0] == "exit":
            store.close()
            print("bye", flush=True)
            return


def run_paused_rebuild_index(store_dir: Path, step: str, args: list[str]) -> None:
    """``hybridlog rebuild-index STORE [args]``, paused at ``step`` until a line comes on stdin."""
    from click.testing import CliRunner

    from hybridlog import catalog, catalog_rebuild
    from hybridlog.cli import cli

    owner = catalog.Catalog if step == "insert_batches" else catalog_rebuild
    original = getattr(owner, step)
    calls = [0]
    to_parent, from_parent = sys.stdout, sys.stdin  # CliRunner swaps sys.stdout and sys.stdin

    def paused(*a: object, **k: object) -> object:
        calls[0] += 1
        if calls[0] == (2 if step == "index_stream" else 1):
            print(f"paused at {step}", file=to_parent, flush=True)
            from_parent.readline()
        return original(*a, **k)

    setattr(owner, step, paused)
    print("ready", flush=True)
    result = CliRunner().invoke(cli, ["rebuild-index", str(store_dir), *args])
    print(f"done {result.exit_code}", flush=True)
    if result.exit_code != 0:
        print(result.output, result.exception, file=sys.stderr)


def run_stream_writer(store_dir: Path) -> None:
    """Append batches of 1..5 events to streams 1 and 2 without end, printing ``ack N`` after each."""
    store = open_writer(store_dir)
    for n in range(10**9):
        store.append(1 + n % 2, [b"live %d" % n * 8] * (1 + n % 5), fsync=n % 3 == 0)
        print(f"ack {n}", flush=True)


def child_main(argv: list[str]) -> None:
    role, store_dir = argv[0], Path(argv[1])
    if role == "writer":
        run_writer(store_dir)
    elif role == "rebuild-index":
        run_paused_rebuild_index(store_dir, argv[2], argv[3:])
    elif role == "stream-writer":
        run_stream_writer(store_dir)


if __name__ == "__main__":
    sys.path.insert(0, str(THIS_FILE.parent))
    child_main(sys.argv[1:])
