"""The ``StorageBackend`` contract (``hybridlog.testing.contract``) run against ``Storage`` and ``MemoryStorage``.

The contract's tests live in the package, so other backends and users' wrappers reuse them; here
each shipped backend subclasses it with its harness. What one backend does, the other must do too.
The tests at the end put the two side by side: the same appends with the same clock must give
byte-identical chain hashes and identical ``Record``s, whether or not ``Storage`` compresses its
payloads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hybridlog import (
    ChainHash,
    CheckpointPolicy,
    CompressionKind,
    IntegrityError,
    MemoryStorage,
    RecordKind,
    Storage,
    StorageBackend,
)
from hybridlog.record import HEADER_SIZE
from hybridlog.testing.backends import Harness, MemoryHarness, StorageHarness, assert_valid_chain, closed_records, fill
from hybridlog.testing.clocks import START_NS, Clock, ManualClock, make_clock
from hybridlog.testing.contract import BackendContract
from hybridlog.testing.damage import flip_byte, genesis_records


class TestStorage(BackendContract):
    @pytest.fixture
    def harness(self, tmp_path: Path) -> Iterator[Harness]:
        h = StorageHarness(root=tmp_path)
        yield h
        h.close_all()


class TestMemoryStorage(BackendContract):
    @pytest.fixture
    def harness(self) -> Iterator[Harness]:
        h = MemoryHarness()
        yield h
        h.close_all()


# --- Storage only ----------------------------------------------------------------------------------


def test_genesis_pages_verify_from_offset_0_and_verified_pages_from_their_checkpoint(tmp_path: Path) -> None:
    """A byte flipped in record 0: a page from genesis that starts at offset 5 still verifies from
    offset 0 and raises there; a checkpoint-anchored page from after the checkpoint past the damage
    trusts the checkpoint and reads."""
    path = tmp_path / "store"
    with Storage(path, checkpoint_policy=CheckpointPolicy.every(4, on_close=False)) as store:
        fill(store, 1, [[b"event %d" % i] for i in range(10)])  # e e e e C e e e e C e e
        records = genesis_records(store, 1)
        assert records[4].kind is RecordKind.CHECKPOINT
        first = store.offset_index(1).lookup(0)
        assert first is not None
        segment = store.segments(1)[0].path
    flip_byte(segment, first.position + HEADER_SIZE)  # the first payload byte of record 0
    with Storage(path, read_only=True) as store:
        for read in (store.read_from_genesis, store.read_records_from_genesis):
            with pytest.raises(IntegrityError) as raised:
                read(1, 5, 1 << 20)
            assert raised.value.offset == 0
        with pytest.raises(IntegrityError):
            store.read_records_verified(1, 3, 1 << 20)  # anchored at genesis: no checkpoint before 3
        assert store.read_records_verified(1, 5, 1 << 20) == records[5:]
        assert store.read_records_verified(1, 4, 0) == records[4:5]
        assert store.read_from(1, 5, 1 << 20) == [r.payload for r in records[5:] if r.kind is RecordKind.EVENT]


# --- both backends side by side ------------------------------------------------------------------


def compressible(i: int) -> bytes:
    """A payload zstd shrinks, so a ZSTD store really stores it compressed."""
    return (f'{{"event": {i}, "body": "' + "abcdefgh" * 40 + '"}').encode()


SCRIPT: list[tuple[str, int, list[bytes]]] = [
    ("append", 1, [compressible(0), b""]),
    ("append", 2, [b"short"]),
    ("append", 1, [compressible(1), compressible(2), compressible(3)]),
    ("checkpoint", 2, []),
    ("append", 1, [b"x" * 3000]),
    ("append", 2, [compressible(4), compressible(5), compressible(6), compressible(7)]),
    ("checkpoint", 1, []),
    ("append", 1, [bytes(range(256))]),
]
"""A mixed workload: batches of several sizes, empty and compressible payloads, checkpoints."""

POLICY = CheckpointPolicy.every(3, on_close=True)


def run_script(backend: StorageBackend, before_each: Callable[[int], None]) -> list[tuple[int, ChainHash]]:
    """Play SCRIPT on ``backend``; ``before_each(step)`` runs first (to set a clock). Returns the results."""
    results: list[tuple[int, ChainHash]] = []
    for step, (op, sid, events) in enumerate(SCRIPT):
        before_each(step)
        offset, head = backend.next_offset(sid), backend.latest_chain_hash(sid)
        if op == "append":
            results.append(backend.append_batch(sid, events, offset, head))
        else:
            results.append(backend.create_checkpoint(sid, offset, head, offset))
    return results


def three_backends(tmp_path: Path, clock: Callable[[], Clock]) -> dict[str, StorageBackend]:
    """Storage without and with compression, and MemoryStorage, each with its own fresh clock."""
    return {
        "storage": Storage(tmp_path / "plain", checkpoint_policy=POLICY, clock=clock()),
        "storage-zstd": Storage(
            tmp_path / "zstd", checkpoint_policy=POLICY, clock=clock(), compression=CompressionKind.ZSTD
        ),
        "memory": MemoryStorage(checkpoint_policy=POLICY, clock=clock()),
    }


def assert_same_everywhere(backends: dict[str, StorageBackend], results: dict[str, object]) -> None:
    """Same append results, same records (hashes included) before and after close, on every backend."""
    reference = results["memory"]
    for name in backends:
        assert results[name] == reference, name
    live = {name: {sid: genesis_records(b, sid) for sid in (1, 2)} for name, b in backends.items()}
    for name in backends:
        assert live[name] == live["memory"], name
    for sid in (1, 2):
        assert_valid_chain(live["memory"][sid], sid)
    for budget in (0, 300, 1 << 20):  # pages bounded by payload bytes (compressed ones are stored smaller)
        pages = {name: b.read_global(2, budget) for name, b in backends.items()}
        for name in backends:
            assert pages[name] == pages["memory"], (name, budget)
    for backend in backends.values():
        backend.close()
    closed = {name: {sid: closed_records(b, sid) for sid in (1, 2)} for name, b in backends.items()}
    for name in backends:
        assert closed[name] == closed["memory"], name
    assert all(closed["memory"][sid][-1].kind is RecordKind.CHECKPOINT for sid in (1, 2))


def test_same_appends_same_records_with_a_set_clock(tmp_path: Path) -> None:
    """With the time set before each append, both backends (and compression) give identical records.

    The ZSTD store's segments really are smaller, so the equality covers compressed records.
    """
    clocks: dict[str, ManualClock] = {}

    def new_clock() -> Clock:
        c = ManualClock()
        clocks[str(len(clocks))] = c
        return c

    backends = three_backends(tmp_path, new_clock)

    def set_time(step: int) -> None:
        for c in clocks.values():
            c.now = START_NS + 1_000 * step - (5_000 if step == 4 else 0)  # step 4 steps back

    results: dict[str, object] = {name: run_script(b, set_time) for name, b in backends.items()}
    plain = backends["storage"]
    zstd = backends["storage-zstd"]
    assert isinstance(plain, Storage)
    assert isinstance(zstd, Storage)
    plain_bytes = sum(p.stat().st_size for p in plain.data_dir.rglob("*.seg"))
    zstd_bytes = sum(p.stat().st_size for p in zstd.data_dir.rglob("*.seg"))
    assert zstd_bytes < plain_bytes
    assert_same_everywhere(backends, results)


def test_same_appends_same_chain_with_a_counting_clock(tmp_path: Path) -> None:
    """The same appends with the same deterministic clock (``hybridlog.testing.clocks.make_clock``) give the same chain.

    This is MemoryStorage's documented promise ("the same appends with the same clock give the same
    chain on both"), so it must not depend on how many times a backend reads its clock.
    """
    backends = three_backends(tmp_path, make_clock)
    results: dict[str, object] = {name: run_script(b, lambda step: None) for name, b in backends.items()}
    assert_same_everywhere(backends, results)
