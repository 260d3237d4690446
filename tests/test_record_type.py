"""``Record`` and ``GlobalRecord`` behave exactly as the frozen dataclasses they are.

They are built by a fast ``__new__`` instead of the dataclass's frozen ``__init__`` (reads build
one per record), so everything a caller can see is pinned here: construction by position and by
keyword, the fields and their order, immutability, field-by-field equality and hashing, the repr,
``dataclasses`` helpers, pattern matching, pickling and copying.
"""

from __future__ import annotations

import copy
import dataclasses
import pickle
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hybridlog import GlobalRecord, Record
from hybridlog.types import ChainHash, GlobalPosition, Offset, RecordKind, StreamId

FIELDS = ("stream_id", "offset", "kind", "timestamp_ns", "prev_hash", "hash", "payload", "global_position")
PREV = ChainHash(bytes(32))
OWN = ChainHash(b"\x01" * 32)


def sample(payload: bytes = b"pay") -> Record:
    """A checkpoint record with distinct field values."""
    return Record(StreamId(3), Offset(7), RecordKind.CHECKPOINT, 99, PREV, OWN, payload)


records = st.builds(
    Record,
    st.integers(0, 2**63 - 1).map(StreamId),
    st.integers(0, 2**63 - 1).map(Offset),
    st.sampled_from(RecordKind),
    st.integers(0, 2**64 - 1),
    st.binary(min_size=32, max_size=32).map(ChainHash),
    st.binary(min_size=32, max_size=32).map(ChainHash),
    st.binary(max_size=64),
)


def test_fields_are_the_documented_ones_in_order() -> None:
    """Field names and order, slots (no ``__dict__``), match arguments and the exact type."""
    record = sample()
    assert tuple(f.name for f in dataclasses.fields(Record)) == FIELDS
    assert Record.__slots__ == FIELDS
    assert Record.__match_args__ == FIELDS
    assert not hasattr(record, "__dict__")
    assert type(record) is Record
    assert Record.__mro__ == (Record, object)
    assert dataclasses.astuple(record) == (3, 7, RecordKind.CHECKPOINT, 99, PREV, OWN, b"pay", None)
    assert record.timestamp == record.timestamp_ns == 99
    assert tuple(f.name for f in dataclasses.fields(GlobalRecord)) == ("global_position", "record")
    assert GlobalRecord.__slots__ == GlobalRecord.__match_args__ == ("global_position", "record")
    assert type(GlobalRecord(GlobalPosition(1), record)) is GlobalRecord


def test_keyword_and_positional_construction_agree() -> None:
    """Every field can be passed by keyword, in any order; wrong arity is a TypeError."""
    by_keyword = Record(
        payload=b"pay",
        hash=OWN,
        prev_hash=PREV,
        timestamp_ns=99,
        kind=RecordKind.CHECKPOINT,
        offset=Offset(7),
        stream_id=StreamId(3),
    )
    assert by_keyword == sample()
    assert GlobalRecord(record=sample(), global_position=GlobalPosition(5)) == GlobalRecord(GlobalPosition(5), sample())
    with pytest.raises(TypeError):
        Record(StreamId(3), Offset(7), RecordKind.EVENT, 99, PREV, OWN)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Record(StreamId(3), Offset(7), RecordKind.EVENT, 99, PREV, OWN, b"", None, 5)  # type: ignore[call-arg]
    placed = Record(StreamId(3), Offset(7), RecordKind.EVENT, 99, PREV, OWN, b"", GlobalPosition(12))
    assert placed == Record(
        StreamId(3), Offset(7), RecordKind.EVENT, 99, PREV, OWN, b"", global_position=GlobalPosition(12)
    )
    assert placed != Record(StreamId(3), Offset(7), RecordKind.EVENT, 99, PREV, OWN, b"")
    with pytest.raises(TypeError):
        Record(StreamId(3), Offset(7), RecordKind.EVENT, 99, PREV, OWN, b"", payload=b"")  # type: ignore[misc]


@pytest.mark.parametrize("name", FIELDS)
def test_a_record_cannot_be_changed(name: str) -> None:
    """Assigning or deleting any field raises FrozenInstanceError; no new attribute can be added."""
    record = sample()
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(record, name, getattr(record, name))
    with pytest.raises(dataclasses.FrozenInstanceError):
        delattr(record, name)
    with pytest.raises((AttributeError, TypeError)):
        record.extra = 1  # type: ignore[attr-defined]
    assert record == sample()


def test_a_global_record_cannot_be_changed() -> None:
    """The same for GlobalRecord."""
    item = GlobalRecord(GlobalPosition(5), sample())
    with pytest.raises(dataclasses.FrozenInstanceError):
        item.global_position = GlobalPosition(6)  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del item.record
    assert item.global_position == 5


@pytest.mark.parametrize("name", FIELDS)
def test_equality_and_hash_cover_every_field(name: str) -> None:
    """Changing any one field makes a record unequal; equal records hash equal, as a tuple of
    their fields does; a record is not equal to that tuple."""
    record = sample()
    twin = sample()
    assert record == twin
    assert record is not twin
    assert hash(record) == hash(twin) == hash(dataclasses.astuple(record))
    fields: object = dataclasses.astuple(record)
    assert record != fields
    other: Any = {"stream_id": 4, "offset": 8, "kind": RecordKind.EVENT, "timestamp_ns": 100}.get(name, b"\x02" * 32)
    changed = dataclasses.replace(record, **{name: other})
    assert type(changed) is Record
    assert changed != record
    assert getattr(changed, name) == other
    assert GlobalRecord(GlobalPosition(5), record) == GlobalRecord(GlobalPosition(5), twin)
    assert GlobalRecord(GlobalPosition(5), record) != GlobalRecord(GlobalPosition(5), changed)
    assert GlobalRecord(GlobalPosition(5), record) != GlobalRecord(GlobalPosition(6), record)
    assert hash(GlobalRecord(GlobalPosition(5), record)) == hash((5, record))


def test_repr_is_the_dataclass_repr() -> None:
    """The repr names every field in order, with each value's repr."""
    record = Record(StreamId(3), Offset(7), RecordKind.CHECKPOINT, 99, ChainHash(b"p" * 32), ChainHash(b"h" * 32), b"x")
    expected = (
        "Record(stream_id=3, offset=7, kind=<RecordKind.CHECKPOINT: 1>, timestamp_ns=99, "
        f"prev_hash=b'{'p' * 32}', hash=b'{'h' * 32}', payload=b'x', global_position=None)"
    )
    assert repr(record) == expected
    assert repr(GlobalRecord(GlobalPosition(5), record)) == f"GlobalRecord(global_position=5, record={expected})"


def test_match_and_asdict() -> None:
    """Positional patterns bind the fields in order; asdict recurses into the record."""
    item = GlobalRecord(GlobalPosition(5), sample())
    match item:
        case GlobalRecord(position, Record(stream, offset, kind, _, _, _, payload)):
            assert (position, stream, offset, kind, payload) == (5, 3, 7, RecordKind.CHECKPOINT, b"pay")
        case _:
            pytest.fail("the pattern did not match")
    assert dataclasses.asdict(item) == {
        "global_position": 5,
        "record": dict(zip(FIELDS, dataclasses.astuple(sample()), strict=True)),
    }


@given(records, st.integers(0, 2**63 - 1), st.integers(0, pickle.HIGHEST_PROTOCOL))
def test_pickle_and_copy_round_trip(record: Record, position: int, protocol: int) -> None:
    """Pickling (every protocol), copy and deepcopy give back an equal object of the same type."""
    item = GlobalRecord(GlobalPosition(position), record)
    for original in (record, item):
        pickled = pickle.loads(pickle.dumps(original, protocol))  # noqa: S301 (our own bytes)
        for back in (pickled, copy.copy(original), copy.deepcopy(original)):
            assert type(back) is type(original)
            assert back == original
            assert hash(back) == hash(original)


@pytest.mark.parametrize("base", [Record, GlobalRecord])
def test_the_record_types_are_final(base: type) -> None:
    """Their fast ``__new__`` builds their own layout only, so subclassing is refused up front."""
    with pytest.raises(TypeError, match="final"):
        type("Tagged", (base,), {})
