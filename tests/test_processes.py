"""Several real processes on one store: the writer lock, readers during writes, writers killed mid-append.

Contracts tested here:

* one writer per store: a second writer, in another process or in the same one, gets
  ``StorageLocked`` at once, naming the holder's pid; once the holder closes (or dies, even by
  SIGKILL) a new writer can open;
* a reader process (``read_only=True``) polling while a writer process appends sees, at every read,
  a verified prefix of the stream made of whole batches, never shrinking;
* a writer killed with SIGKILL in the middle of appending loses nothing it acknowledged: after
  reopening, every batch whose append returned is present and verifies, no batch is partial, and
  appends continue the chain.

The child processes run this file as a script (see ``child_main`` at the bottom).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from hybridlog import CheckpointPolicy, CompressionKind, Record, RecordKind, Storage, StorageLocked
from hybridlog.testing import harness
from hybridlog.testing.damage import genesis_records
from hybridlog.testing.harness import (
    CHILD_TIMEOUT,
    KillPlan,
    acknowledge,
    arm_from_environment,
    drain_killed,
    read_line,
)

THIS_FILE = Path(__file__).resolve()
STREAM = 0
SEGMENT_SIZE = 4096


# --- shared by the test and its children -------------------------------------------------------------


def open_writer(path: Path, compression: CompressionKind = CompressionKind.NONE) -> Storage:
    """The writer settings both sides use: small segments (rotation under load), a checkpoint every 7 events."""
    return Storage(
        path,
        checkpoint_policy=CheckpointPolicy.every(7),
        max_segment_size=SEGMENT_SIZE,
        compression=compression,
    )


def batch_events(batch_id: str, k: int) -> list[bytes]:
    """``k`` events that say which batch they belong to and where in it, padded to about 150 bytes."""
    return [
        json.dumps({"batch": batch_id, "i": i, "k": k, "pad": "x" * (90 + 7 * i)}, separators=(",", ":")).encode()
        for i in range(k)
    ]


def whole_batches(records: list[Record]) -> list[str]:
    """The batch ids in ``records``, in order; fails if any batch is partial, repeated or out of order."""
    events = [json.loads(r.payload) for r in records if r.kind is RecordKind.EVENT]
    ids: list[str] = []
    i = 0
    while i < len(events):
        first = events[i]
        k = first["k"]
        group = events[i : i + k]
        assert [e["batch"] for e in group] == [first["batch"]] * k, f"batch {first['batch']} is partial"
        assert [e["i"] for e in group] == list(range(k)), f"batch {first['batch']} is out of order"
        ids.append(first["batch"])
        i += k
    assert len(ids) == len(set(ids)), "a batch appears twice"
    return ids


# --- running children --------------------------------------------------------------------------------


def spawn(*args: str, plan: KillPlan | None = None) -> subprocess.Popen[str]:
    return harness.spawn(THIS_FILE, *args, stdin=subprocess.PIPE, plan=plan)


@contextmanager
def holder_process(store_dir: Path) -> Iterator[subprocess.Popen[str]]:
    """A child process holding the store for writing until the block ends."""
    child = spawn("hold", str(store_dir))
    try:
        assert read_line(child) == f"holding {child.pid}"
        yield child
    finally:
        if child.poll() is None:
            child.communicate(timeout=CHILD_TIMEOUT)  # closing its stdin tells it to close the store


def try_open_in_child(store_dir: Path) -> str:
    """Try to open the store for writing in a new process: "opened", or "locked <pid named>"."""
    child = spawn("try-open", str(store_dir))
    out, err = child.communicate(timeout=CHILD_TIMEOUT)
    assert child.returncode == 0, err
    answer = json.loads(out)
    if answer["error"] is None:
        return "opened"
    assert answer["error"] == "StorageLocked"
    assert f"process {answer['holder_pid']}" in answer["message"]
    return f"locked {answer['holder_pid']}"


# --- (a) one writer ----------------------------------------------------------------------------------


def test_a_second_writer_process_is_refused_with_the_holders_pid(store_dir: Path) -> None:
    """A writer in another process holds the lock: this process, and a third one, get StorageLocked."""
    with holder_process(store_dir) as holder:
        with pytest.raises(StorageLocked) as caught:
            Storage(store_dir)
        assert caught.value.holder_pid == holder.pid
        assert f"process {holder.pid}" in str(caught.value)

        assert try_open_in_child(store_dir) == f"locked {holder.pid}"

        # A reader does not need the lock and sees the holder's committed batch.
        with Storage(store_dir, read_only=True) as reader:
            assert whole_batches(genesis_records(reader, STREAM)) == ["holder"]

    assert holder.returncode == 0
    with open_writer(store_dir) as store:
        store.append(STREAM, batch_events("after the holder", 2))
        assert whole_batches(genesis_records(store, STREAM)) == ["holder", "after the holder"]


def test_a_second_writer_in_the_same_process_is_refused(store_dir: Path) -> None:
    """Two Storage objects in one process on one store: the second is refused, naming this process."""
    first = open_writer(store_dir)
    first.append(STREAM, batch_events("first", 3))
    with pytest.raises(StorageLocked) as caught:
        open_writer(store_dir)
    assert caught.value.holder_pid == os.getpid()
    assert f"process {os.getpid()}" in str(caught.value)
    assert try_open_in_child(store_dir) == f"locked {os.getpid()}"
    first.append(STREAM, batch_events("still first", 1))  # the refusal did not disturb the holder
    first.close()

    assert try_open_in_child(store_dir) == "opened"
    with open_writer(store_dir) as second:
        second.append(STREAM, batch_events("second", 2))
        assert whole_batches(genesis_records(second, STREAM)) == ["first", "still first", "second"]


def test_the_lock_dies_with_a_killed_writer(store_dir: Path) -> None:
    """SIGKILL leaves no stale lock: the kernel drops it, and the next writer opens at once."""
    child = spawn("hold", str(store_dir))
    assert read_line(child) == f"holding {child.pid}"
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=CHILD_TIMEOUT)
    assert child.returncode == -signal.SIGKILL
    with open_writer(store_dir) as store:
        store.append(STREAM, batch_events("after the kill", 1))
        assert whole_batches(genesis_records(store, STREAM)) == ["holder", "after the kill"]


# --- (b) a reader while a writer appends -------------------------------------------------------------


def test_a_reader_process_sees_whole_batches_while_a_writer_appends(store_dir: Path) -> None:
    """Every read of a read-only store is a verified, non-shrinking prefix made of whole batches."""
    batches, k = 150, 5
    writer = spawn("append", str(store_dir), "reader-test", str(batches), str(k), "none")
    assert read_line(writer).startswith("ack reader-test-0 ")
    seen_sizes: list[int] = []
    last_hash: bytes | None = None
    with Storage(store_dir, read_only=True) as reader:
        while True:
            running = writer.poll() is None
            records = genesis_records(reader, STREAM)  # verifies every record and the head
            ids = whole_batches(records)
            assert ids == [f"reader-test-{b}" for b in range(len(ids))]
            if seen_sizes:
                assert len(records) >= seen_sizes[-1]
                # What was seen before is still there, unchanged: the chain passes through it.
                assert records[seen_sizes[-1] - 1].hash == last_hash
            seen_sizes.append(len(records))
            last_hash = records[-1].hash
            if not running:
                break
    _out, err = writer.communicate(timeout=CHILD_TIMEOUT)
    assert writer.returncode == 0, err
    assert ids == [f"reader-test-{b}" for b in range(batches)]


# --- (c) writers killed mid-append -------------------------------------------------------------------


@dataclass(frozen=True)
class Ack:
    """One acknowledged append, as the child printed it after ``append`` returned."""

    batch_id: str
    next_offset: int
    head: bytes


def parse_ack(line: str) -> Ack:
    word, batch_id, next_offset, head = line.split(" ")
    assert word == "ack"
    return Ack(batch_id, int(next_offset), bytes.fromhex(head))


def kill_mid_append(store_dir: Path, run: str, compression: CompressionKind, plan: KillPlan) -> list[Ack]:
    """Run an appending child that SIGKILLs itself where ``plan`` says; returns every ack it printed."""
    child = spawn("append", str(store_dir), run, "1000000", "4", compression.value, plan=plan)
    # Lines printed in full before the kill were acknowledged; a cut-off last line was not.
    acks = [parse_ack(line) for line in drain_killed(child)]
    assert len(acks) == plan.acknowledged, f"{plan}: {len(acks)} acknowledgements"
    return acks


def check_acknowledged(records: list[Record], acks: list[Ack]) -> None:
    ids = set(whole_batches(records))
    for ack in acks:
        assert ack.batch_id in ids, f"acknowledged batch {ack.batch_id} is missing"
        assert len(records) >= ack.next_offset
        assert records[ack.next_offset - 1].hash == ack.head


def crash_rounds(store_dir: Path, rounds: int, seed: int) -> None:
    """Kill a writer ``rounds`` times at seeded points (a failpoint in its Nth append, or after its Nth
    acknowledgement); after each, reopen, check and extend the chain."""
    rng = random.Random(seed)
    acks: list[Ack] = []
    for r in range(rounds):
        compression = CompressionKind.ZSTD if r % 2 else CompressionKind.NONE
        acks += kill_mid_append(store_dir, f"r{r}", compression, KillPlan.choose(rng, 1, 12))
        with open_writer(store_dir, compression) as store:
            records = genesis_records(store, STREAM)
            check_acknowledged(records, acks)
            head = records[-1].hash
            next_offset, new_head = store.append_batch(STREAM, batch_events(f"parent-{r}", 3), len(records), head)
            after = genesis_records(store, STREAM)
            assert after[: len(records)] == records
            assert after[len(records)].prev_hash == head
            assert (len(after), after[-1].hash) == (next_offset, new_head)
            acks.append(Ack(f"parent-{r}", next_offset, new_head))
    with Storage(store_dir, read_only=True) as reader:
        final = genesis_records(reader, STREAM)
    check_acknowledged(final, acks)
    assert [i for i in whole_batches(final) if i.startswith("parent-")] == [f"parent-{r}" for r in range(rounds)]


def test_a_writer_killed_mid_append_loses_nothing_it_acknowledged(store_dir: Path) -> None:
    """Five SIGKILLs during appends; every acknowledged batch survives and the chain continues."""
    crash_rounds(store_dir, rounds=5, seed=5)


@pytest.mark.slow
def test_fifty_writers_killed_mid_append(store_dir: Path) -> None:
    """The same, fifty times over on one store."""
    crash_rounds(store_dir, rounds=50, seed=50)


# --- the children ------------------------------------------------------------------------------------


def child_hold(store_dir: Path) -> None:
    """Hold the store for writing (after one batch) until stdin closes."""
    with open_writer(store_dir) as store:
        store.append(STREAM, batch_events("holder", 2))
        print(f"holding {os.getpid()}", flush=True)
        sys.stdin.read()


def child_try_open(store_dir: Path) -> None:
    """Try to open the store for writing; print what happened as JSON."""
    answer: dict[str, object] = {"error": None}
    try:
        store = open_writer(store_dir)
    except StorageLocked as e:
        answer = {"error": type(e).__name__, "holder_pid": e.holder_pid, "message": str(e)}
    else:
        store.close()
    print(json.dumps(answer), flush=True)


def child_append(store_dir: Path, run: str, batches: int, k: int, compression: str) -> None:
    """Append ``batches`` batches of ``k`` events, printing an ack line after each append returns
    (and dying where the parent's kill plan says, if it gave one)."""
    arm_from_environment()
    with open_writer(store_dir, CompressionKind(compression)) as store:
        for b in range(batches):
            batch_id = f"{run}-{b}"
            next_offset, head = store.append(STREAM, batch_events(batch_id, k))
            acknowledge(f"ack {batch_id} {next_offset} {head.hex()}")


def child_main(argv: list[str]) -> int:
    command, store_dir, *rest = argv
    if command == "hold":
        child_hold(Path(store_dir))
    elif command == "try-open":
        child_try_open(Path(store_dir))
    elif command == "append":
        run, batches, k, compression = rest
        child_append(Path(store_dir), run, int(batches), int(k), compression)
    else:
        raise SystemExit(f"unknown command {command}")
    return 0


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
