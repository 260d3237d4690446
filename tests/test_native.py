"""The compiled helper (``hybridlog/_speedups.c``) against the Python loops it stands in for.

Contracts tested here:

* It is built wherever the package is installed with a C compiler, and used unless
  ``HYBRIDLOG_PURE=1`` (``.ci/run`` runs the whole suite both ways).
* ``record_hash`` is the format-2 record hash of ``record.record_hash`` for every payload length,
  one BLAKE3 chunk or more (longer records go through ``long_hash``), whatever the flags byte.
* ``tree_leaves`` gives the Merkle tree leaf hash (``merkle.leaf_hash`` of ``tree_head.leaf_entry``)
  of each frame of a batch, and ``merkle_root`` is ``merkle.root`` over hashes laid end to end,
  with each SHA-256 compression the CPU can run (the portable one and, where the CPU has the x86
  SHA extensions, SHA-NI, which is then the one in use).
* ``frame_plain`` frames exactly the bytes ``record.append_frames`` frames without compression,
  with the same frame ends, special records and last hash.
* A walk with ``walk_plain`` yields the same records and ends the same way (the same error, at the
  same place, or the same position) as the pure-Python walk, over intact frames, and over the same
  frames with any byte flipped or cut off.
* A catalog rebuilt through ``scan_plain`` (``scan.scan_plain_stream``) has exactly the rows of one
  rebuilt record by record, and a stream that is not all plain (compressed, torn, damaged) is left
  to the record scan.

These call the compiled module directly, so they test it in the pure-Python run too.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import apsw
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridlog import CheckpointPolicy, CompressionKind, Storage, merkle, native, record, scan, walk
from hybridlog.errors import StorageError
from hybridlog.layout import CATALOG_FILE
from hybridlog.record import HASH_FIELD, FrameError, record_hash
from hybridlog.segment import SegmentReader
from hybridlog.testing.clocks import ManualClock
from hybridlog.testing.damage import flip_byte, segment_files
from hybridlog.tree_head import leaf_entry
from hybridlog.types import GENESIS_HASH, Record, RecordKind, StreamId


def compiled() -> ModuleType:
    module = importlib.import_module("hybridlog._speedups")
    module.bind_record(Record)
    return module


def python_frames(
    out: bytearray,
    records: list[tuple[RecordKind, Any]],
    sid: int,
    offset: int,
    position: int,
    timestamp: int,
    prev: bytes,
    batch_end: bool,
) -> record.FramedRecords:
    """``record.append_frames`` of uncompressed records (what the C loops are compared with)."""
    return record.append_frames(
        out,
        records,
        stream_id=sid,
        first_offset=offset,
        first_global_position=position,
        timestamp_ns=timestamp,
        prev_hash=prev,
        batch_end=batch_end,
        compressor=None,
    )


SHA256_BACKENDS: list[str] = compiled().sha256_backends()


@contextlib.contextmanager
def sha256_backend(name: str) -> Iterator[None]:
    module = compiled()
    before = module.sha256_backend()
    module.use_sha256_backend(name)
    try:
        yield
    finally:
        module.use_sha256_backend(before)


def test_the_helper_is_built_and_used_unless_pure_is_asked() -> None:
    assert compiled() is not None
    assert (native.speedups is None) == (os.environ.get(native.PURE_ENV) == "1")


header_fields = st.tuples(
    st.sampled_from([0, 1, 2]),  # kind
    st.integers(0, 2**64 - 1),  # stream id
    st.integers(0, 2**64 - 1),  # offset
    st.integers(1, 2**64 - 1),  # global position
    st.integers(0, 2**64 - 1),  # timestamp
    st.binary(min_size=32, max_size=32),  # prev hash
)
payloads = st.one_of(st.binary(max_size=1100), st.integers(900, 5000).map(lambda n: bytes(range(256)) * (n // 256)))


@settings(max_examples=300)
@given(fields=header_fields, payload=payloads, flags=st.integers(0, 255))
def test_record_hash_is_the_python_one(
    fields: tuple[int, int, int, int, int, bytes], payload: bytes, flags: int
) -> None:
    kind, sid, offset, position, timestamp, prev = fields
    header = bytearray(
        record.HASHED_HEADER.pack(
            b"HLR1", 2, kind, flags, 0, sid, offset, position, timestamp, len(payload), len(payload), prev
        )
    )
    expected = record_hash(sid, offset, kind, timestamp, prev, payload, position)
    assert compiled().record_hash(bytes(header), payload, native.long_hash) == expected


batches = st.lists(
    st.tuples(st.sampled_from(list(RecordKind)), payloads, st.sampled_from([bytes, bytearray, memoryview])),
    max_size=12,
)


@settings(max_examples=200)
@given(fields=header_fields, batch=batches, batch_end=st.booleans(), before=st.binary(max_size=40))
def test_frame_plain_frames_the_python_bytes(
    fields: tuple[int, int, int, int, int, bytes],
    batch: list[tuple[RecordKind, bytes, type]],
    batch_end: bool,
    before: bytes,
) -> None:
    _, sid, offset, position, timestamp, prev = fields
    records = [(kind, as_type(payload)) for kind, payload, as_type in batch]
    offset, position = min(offset, 2**63), min(position, 2**63)  # room for the batch's records after them
    python_out, c_out = bytearray(before), bytearray(before)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(record, "_frame_plain", None)
        python = python_frames(python_out, records, sid, offset, position, timestamp, prev, batch_end)
    ends, specials, last = compiled().frame_plain(
        c_out, records, sid, offset, position, timestamp, prev, batch_end, native.long_hash
    )
    assert c_out == python_out
    assert (ends, specials, last) == (python.ends, python.specials, python.last_hash)


@pytest.mark.parametrize("backend", SHA256_BACKENDS)
@settings(max_examples=200)
@given(fields=header_fields, batch=batches)
def test_tree_leaves_are_the_leaf_hashes_of_each_frame(
    backend: str, fields: tuple[int, int, int, int, int, bytes], batch: list[tuple[RecordKind, bytes, type]]
) -> None:
    _, sid, offset, position, timestamp, prev = fields
    records = [(kind, as_type(payload)) for kind, payload, as_type in batch]
    offset, position = min(offset, 2**63), min(position, 2**63)
    data = bytearray()
    framed = python_frames(data, records, sid, offset, position, timestamp, prev, True)
    starts = [0, *framed.ends][: len(framed.ends)]
    expected = [
        merkle.leaf_hash(
            leaf_entry(kind, sid, offset + i, timestamp, bytes(data[at + HASH_FIELD : at + HASH_FIELD + 32]))
        )
        for i, ((kind, _), at) in enumerate(zip(records, starts, strict=True))
    ]
    with sha256_backend(backend):
        assert compiled().tree_leaves(bytes(data), framed.ends, sid, offset, timestamp) == expected


def test_tree_leaves_refuse_frame_ends_outside_the_data() -> None:
    with pytest.raises(ValueError, match="out of the data's range"):
        compiled().tree_leaves(bytes(200), [300], 1, 0, 0)  # past the end
    with pytest.raises(ValueError, match="out of the data's range"):
        compiled().tree_leaves(bytes(100), [100], 1, 0, 0)  # shorter than a header


@pytest.mark.parametrize("backend", SHA256_BACKENDS)
@settings(max_examples=100)
@given(hashes=st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=70))
def test_merkle_root_is_the_python_root(backend: str, hashes: list[bytes]) -> None:
    with sha256_backend(backend):
        assert compiled().merkle_root(b"".join(hashes)) == merkle.root(hashes)


def test_the_fastest_sha256_the_cpu_has_is_used_and_no_other_can_be_chosen() -> None:
    module = compiled()
    assert module.sha256_backend() == SHA256_BACKENDS[-1]  # SHA-NI where the CPU has it
    assert SHA256_BACKENDS[0] == "portable"
    with pytest.raises(ValueError, match="no SHA-256 backend"):
        module.use_sha256_backend("sha-ni" if "sha-ni" not in SHA256_BACKENDS else "md5")
    assert module.sha256_backend() == SHA256_BACKENDS[-1]


@pytest.mark.parametrize("length", [0, 31, 33])
def test_merkle_root_refuses_what_is_not_whole_hashes(length: int) -> None:
    with pytest.raises(ValueError, match="32-byte hashes"):
        compiled().merkle_root(bytes(length))


def walk_outcome(path: Path, *, use_c: bool, frames: bool) -> tuple[list[object], object]:
    """What a verifying walk of ``path`` (stream 3 from offset 0) yields, and how it ends."""
    got: list[object] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(walk, "_walk_plain", compiled().walk_plain if use_c else None)
        with SegmentReader(path) as reader:
            segment_walk = walk.SegmentWalk(reader, StreamId(3), 0, GENESIS_HASH, path.stat().st_size)
            try:
                got.extend(segment_walk.frames() if frames else segment_walk.records())
            except (StorageError, FrameError) as e:  # FrameError: the exact walk's, for its caller to place
                return got, (type(e), str(e))
            return got, (segment_walk.position, segment_walk.expected, segment_walk.prev)


def segment_bytes(sizes: list[int]) -> bytes:
    """A segment of stream 3: batches of events of these payload sizes (0: a checkpoint)."""
    out = bytearray()
    prev, offset = GENESIS_HASH, 0
    for i, size in enumerate(sizes):
        kind = RecordKind.CHECKPOINT if size == 0 else RecordKind.EVENT
        framed = record.append_frames(
            out,
            [(kind, bytes([i % 251 + 1]) * size)],
            stream_id=3,
            first_offset=offset,
            first_global_position=10 + offset,
            timestamp_ns=1_700_000_000_000_000_000 + i,
            prev_hash=prev,
            batch_end=i % 3 == 2,
            compressor=None,
        )
        prev, offset = framed.last_hash, offset + 1
    return bytes(out)


@settings(max_examples=150, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 1200), min_size=1, max_size=8),
    damage=st.one_of(st.none(), st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255))),
    cut=st.one_of(st.none(), st.integers(0, 10**6)),
    frames=st.booleans(),
)
def test_a_walk_with_walk_plain_is_the_python_walk(
    tmp_path_factory: pytest.TempPathFactory,
    sizes: list[int],
    damage: tuple[str, int, int] | None,
    cut: int | None,
    frames: bool,
) -> None:
    data = bytearray(segment_bytes(sizes))
    if damage is not None:
        _, at, mask = damage
        data[at % len(data)] ^= mask
    if cut is not None:
        del data[cut % (len(data) + 1) :]
    path = tmp_path_factory.mktemp("walk") / "segment.seg"
    path.write_bytes(data)
    assert walk_outcome(path, use_c=True, frames=frames) == walk_outcome(path, use_c=False, frames=frames)


def test_an_intact_segment_is_walked_by_the_c_loop_to_its_end(tmp_path: Path) -> None:
    sizes = [10, 0, 944, 945, 3000, 1]  # one chunk, a checkpoint, the longest one chunk holds, longer ones
    path = tmp_path / "segment.seg"
    path.write_bytes(segment_bytes(sizes))
    records, end = walk_outcome(path, use_c=True, frames=True)
    assert end == (path.stat().st_size, len(sizes), records[-1][0].hash)  # type: ignore[index]
    assert [r[0].offset for r in records] == list(range(len(sizes)))  # type: ignore[index]
    assert [r[3] for r in records] == [i % 3 == 2 for i in range(len(sizes))]  # type: ignore[index]
    assert records == walk_outcome(path, use_c=False, frames=True)[0]


# --- the rebuild's plain scan ------------------------------------------------------------------------

CATALOG_TABLES = {
    "batches": "SELECT * FROM batches ORDER BY global_position",
    "checkpoints": "SELECT * FROM checkpoints ORDER BY stream_id, offset",
    "segments": "SELECT stream_id, segment_no, first_offset, next_offset, size_bytes, sealed, digest FROM segments"
    " ORDER BY stream_id, segment_no",
    "streams": "SELECT stream_id, next_offset, chain_head, event_count, checkpoint_count, stored_bytes,"
    " payload_bytes, first_timestamp_ns, last_timestamp_ns FROM streams ORDER BY stream_id",
    "global_order": "SELECT * FROM global_order",
}


def rebuilt_rows(store_dir: Path, *, plain: bool) -> dict[str, list[tuple[object, ...]]]:
    """Every catalog row a whole-catalog rebuild writes, by the plain scan or record by record."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scan, "speedups", compiled() if plain else None)
        with Storage(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as store:
            store.rebuild_catalog()
    connection = apsw.Connection(str(store_dir / CATALOG_FILE), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return {name: list(connection.execute(sql)) for name, sql in CATALOG_TABLES.items()}
    finally:
        connection.close()


@settings(max_examples=40, deadline=None)
@given(
    batches=st.lists(st.tuples(st.integers(0, 3), st.integers(1, 40), st.integers(0, 600)), min_size=1, max_size=40),
    every=st.sampled_from([None, 3, 25]),
    segment_size=st.sampled_from([4096, 64 * 1024]),
    tick=st.sampled_from([0, 1]),
    chunk=st.sampled_from([512, 4096, 1 << 20]),
)
def test_the_plain_scan_rebuilds_the_rows_the_record_scan_does(
    tmp_path_factory: pytest.TempPathFactory,
    batches: list[tuple[int, int, int]],
    every: int | None,
    segment_size: int,
    tick: int,
    chunk: int,
) -> None:
    """Streams interleaved, checkpoints, rotations, and (``tick`` 0) batches that share a timestamp,
    which one ``batches`` row holds when they follow one another; read in reads of ``chunk`` bytes
    (a row then joins across them, and a batch longer than a read takes a longer one)."""
    patch = pytest.MonkeyPatch()
    patch.setattr(scan, "_PLAIN_CHUNK", chunk)
    patch.setattr(scan, "speedups", compiled())  # in the pure-Python run too
    try:
        check_plain_rebuild(tmp_path_factory, batches, every, segment_size, tick)
    finally:
        patch.undo()


def check_plain_rebuild(
    tmp_path_factory: pytest.TempPathFactory,
    batches: list[tuple[int, int, int]],
    every: int | None,
    segment_size: int,
    tick: int,
) -> None:
    store_dir = tmp_path_factory.mktemp("plain") / "store"
    clock = ManualClock()
    policy = CheckpointPolicy.every(every, on_close=False) if every else CheckpointPolicy.explicit()
    with Storage(store_dir, clock=clock, checkpoint_policy=policy, max_segment_size=segment_size) as store:
        for sid, count, size in batches:
            clock.now += tick
            store.append(sid, [bytes([sid + 1]) * size] * count, fsync=False)
    assert all(scan.scan_plain_stream(store_dir, StreamId(sid)) is not None for sid, _, _ in batches)
    assert rebuilt_rows(store_dir, plain=True) == rebuilt_rows(store_dir, plain=False)


def test_the_plain_scan_leaves_what_is_not_plain_to_the_record_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A compressed stream, a torn tail, damage: no plain rows, and the rebuild is the record scan's."""
    monkeypatch.setattr(scan, "speedups", compiled())  # in the pure-Python run too
    store_dir = tmp_path / "store"
    with Storage(store_dir, checkpoint_policy=CheckpointPolicy.explicit(), compression=CompressionKind.ZSTD) as store:
        store.append(1, [b"squeezable " * 20] * 5)
    with Storage(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        store.append(2, [b"plain"] * 5)
        store.append(3, [b"plain"] * 5)
    calls = []
    real_scan = compiled().scan_plain

    def counted_scan(*args: object) -> object:
        calls.append(args[1])
        return real_scan(*args)

    monkeypatch.setattr(scan, "_PLAIN_CHUNK", 256)
    monkeypatch.setattr(compiled(), "scan_plain", counted_scan)
    assert scan.scan_plain_stream(store_dir, StreamId(1)) is None  # compressed
    assert len(calls) == 1  # it gives up at the first frame, without reading on
    monkeypatch.setattr(compiled(), "scan_plain", real_scan)
    found = scan.scan_plain_stream(store_dir, StreamId(2))
    assert found is not None
    assert (found.next_offset, len(found.rows)) == (5, 1)
    (segment,) = segment_files(store_dir, 3)
    with segment.open("ab") as f:
        f.write(b"HLR1\x02")  # a torn tail
    assert scan.scan_plain_stream(store_dir, StreamId(3)) is None
    flip_byte(segment_files(store_dir, 2)[0], 200)  # damage in the middle: the record scan reports it
    assert scan.scan_plain_stream(store_dir, StreamId(2)) is None
    rows = rebuilt_rows(store_dir, plain=True)
    assert rows == rebuilt_rows(store_dir, plain=False)
