"""The compiled helper (``hybridlog/_speedups.c``) against the Python loops it stands in for.

Contracts tested here:

* It is built wherever the package is installed with a C compiler, and used unless
  ``HYBRIDLOG_PURE=1`` (``.ci/run`` runs the whole suite both ways).
* ``record_hash`` is the format-2 record hash of ``record.record_hash`` for every payload length,
  one BLAKE3 chunk or more (longer records go through ``long_hash``), whatever the flags byte.
* ``frame_plain`` frames exactly the bytes ``record.append_frames`` frames without compression,
  with the same frame ends, special records and last hash.
* A walk with ``walk_plain`` yields the same records and ends the same way (the same error, at the
  same place, or the same position) as the pure-Python walk, over intact frames, and over the same
  frames with any byte flipped or cut off.

These call the compiled module directly, so they test it in the pure-Python run too.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridlog import native, record, walk
from hybridlog.errors import StorageError
from hybridlog.record import FrameError, record_hash
from hybridlog.segment import SegmentReader
from hybridlog.types import GENESIS_HASH, Record, RecordKind, StreamId


def compiled() -> ModuleType:
    module = importlib.import_module("hybridlog._speedups")
    module.bind_record(Record)
    return module


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
        python = record.append_frames(
            python_out,
            records,
            stream_id=sid,
            first_offset=offset,
            first_global_position=position,
            timestamp_ns=timestamp,
            prev_hash=prev,
            batch_end=batch_end,
            compressor=None,
        )
    ends, specials, last = compiled().frame_plain(
        c_out, records, sid, offset, position, timestamp, prev, batch_end, native.long_hash
    )
    assert c_out == python_out
    assert (ends, specials, last) == (python.ends, python.specials, python.last_hash)


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
