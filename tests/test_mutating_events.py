"""An event buffer changed by another thread while ``append`` runs cannot corrupt the stream.

Contract tested here: ``append`` / ``append_batch`` take a snapshot of every ``bytearray`` and
writable ``memoryview`` event before hashing it, so the record stored is the event as it was when
``append`` was called, its hash covers exactly those bytes, the stream verifies, and appends go
on. ``bytes`` events are not copied (they cannot change).

The damage is done by a real second thread at the worst moment, deterministically: the record
hasher (``hybridlog.record``'s BLAKE3) is wrapped so that right after it has hashed a payload, a
thread rewrites every buffer the test handed to ``append`` and is joined before framing goes on.
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import blake3
import pytest

import hybridlog.record
from hybridlog import CheckpointPolicy, CompressionKind, MemoryStorage, Storage
from hybridlog.batch import check_events
from hybridlog.testing.damage import genesis_events


class MutatingHasher:
    """A BLAKE3 hasher that, after each payload it hashes, lets a second thread rewrite the buffers."""

    def __init__(self, buffers: list[bytearray], data: bytes = b"") -> None:
        self._inner = blake3.blake3(data)
        self._buffers = buffers

    def reset(self) -> None:
        self._inner.reset()

    def update(self, data: bytes | bytearray | memoryview) -> MutatingHasher:
        self._inner.update(data)
        writer = threading.Thread(target=self._scribble)
        writer.start()
        writer.join()
        return self  # as blake3's update does

    def _scribble(self) -> None:
        for buffer in self._buffers:
            buffer[:] = b"X" * len(buffer)  # same length: only the content changes under the append

    def digest(self) -> bytes:
        return self._inner.digest()


@pytest.fixture
def buffers(monkeypatch: pytest.MonkeyPatch) -> list[bytearray]:
    """The buffers a second thread rewrites right after every payload hash in ``hybridlog.record``."""
    watched: list[bytearray] = []
    fake = SimpleNamespace(blake3=lambda data=b"": MutatingHasher(watched, data))
    monkeypatch.setattr(hybridlog.record, "blake3", fake)
    # The Python framing loop, which hashes through ``blake3``: the compiled one holds the GIL from
    # the first payload hashed to the last one copied, so no other thread can run in between.
    monkeypatch.setattr(hybridlog.record, "_frame_plain", None)
    return watched


def make_backend(kind: str, tmp_path: Path) -> Storage | MemoryStorage:
    policy = CheckpointPolicy.every(3, on_close=False)
    if kind == "memory":
        return MemoryStorage(checkpoint_policy=policy)
    compression = CompressionKind.ZSTD if kind == "storage-zstd" else CompressionKind.NONE
    return Storage(tmp_path / "store", checkpoint_policy=policy, compression=compression)


@pytest.mark.parametrize("kind", ["storage", "storage-zstd", "memory"])
def test_events_changed_by_another_thread_after_hashing_are_stored_as_given(
    tmp_path: Path, buffers: list[bytearray], monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    originals = [b'{"amount": 10, "to": "alice"}' * 4, b"second event " * 20, b"third"]
    with make_backend(kind, tmp_path) as backend:
        backend.append(1, [b"before"])
        first, second, third = (bytearray(p) for p in originals)
        buffers[:] = [first, second, third]
        events: list[bytes | bytearray | memoryview] = [first, memoryview(second), memoryview(third)[:]]
        backend.append(1, events)
        assert [bytes(b) for b in buffers] == [b"X" * len(p) for p in originals]  # they did change
        buffers.clear()
        backend.append(1, [b"after"])  # the stream still takes appends
        assert genesis_events(backend, 1) == [b"before", *originals, b"after"]
        assert backend.read_from(1, 1, 1 << 20)[:3] == originals
        if isinstance(backend, Storage):
            assert backend.check().findings == []
    if isinstance(backend, Storage):
        monkeypatch.undo()  # the reopened store hashes for real
        with Storage(backend.data_dir) as reopened:
            assert genesis_events(reopened, 1) == [b"before", *originals, b"after"]
            assert reopened.check().findings == []
            assert reopened.damaged_streams() == {}


def test_check_events_copies_mutable_buffers_and_keeps_bytes() -> None:
    plain = b"plain"
    buffer = bytearray(b"buffer")
    view_source = bytearray(b"view")
    checked = check_events([plain, buffer, memoryview(view_source)])
    assert checked[0] is plain  # bytes: no copy
    assert all(type(event) is bytes for event in checked)
    buffer[:] = b"BUFFER"
    view_source[:] = b"VIEW"
    assert checked == [b"plain", b"buffer", b"view"]
    fast = [b"a", b"b"]
    assert all(x is y for x, y in zip(check_events(fast), fast, strict=True))
