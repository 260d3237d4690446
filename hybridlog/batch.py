"""Argument checks and small pieces of the read and append contract, shared by every backend."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Protocol, TypeVar, cast

from hybridlog.errors import (
    CatalogMismatch,
    ChainMismatch,
    EmptyBatch,
    EventTooLarge,
    IntegrityError,
    InvalidArgument,
    InvalidConfiguration,
    InvalidEvent,
    OffsetMismatch,
    RecordCountMismatch,
    RecordIsolated,
    StorageError,
)
from hybridlog.record import checkpoint_payload
from hybridlog.types import (
    HASH_SIZE,
    MAX_EVENT_SIZE,
    MAX_POSITION,
    MAX_TIMESTAMP_NS,
    CheckpointPolicy,
    Record,
    RecordKind,
    StreamId,
)

BytesLike = bytes | bytearray | memoryview
PlannedRecord = tuple[RecordKind, BytesLike]
T = TypeVar("T")


def check_events(events: Iterable[object]) -> list[BytesLike]:
    """The events as a list of immutable ``bytes`` payloads, or a typed error naming the first bad one.

    A ``bytearray`` or ``memoryview`` is copied here, before anything hashes or writes it: another
    thread changing the buffer during the append then cannot make a record whose bytes differ from
    the bytes its hash covers. ``bytes`` objects are taken as they are (no copy).
    """
    if isinstance(events, (bytes, bytearray, memoryview, str)):
        raise InvalidEvent(f"events must be a sequence of bytes objects, not one {type(events).__name__}")
    try:
        payloads: list[object] = list(events)
    except TypeError as e:
        raise InvalidEvent(f"events must be a sequence of bytes objects, not {type(events).__name__}") from e
    # The common case, all plain bytes within the limit, is checked at C speed; anything else
    # goes through the loop that copies mutable buffers and names the first bad event.
    plain = payloads and set(map(type, payloads)) == {bytes}
    if plain and max(map(len, cast(list[bytes], payloads))) <= MAX_EVENT_SIZE:
        return cast(list[BytesLike], payloads)
    checked: list[BytesLike] = [_checked_event(i, event) for i, event in enumerate(payloads)]
    if not checked:
        raise EmptyBatch("a batch needs at least one event")
    return checked


def _checked_event(i: int, event: object) -> bytes:
    if not isinstance(event, (bytes, bytearray, memoryview)):
        raise InvalidEvent(f"event {i} is {type(event).__name__}, not bytes")
    if isinstance(event, memoryview):
        if not event.contiguous:
            raise InvalidEvent(f"event {i} is a non-contiguous memoryview")
        event = event.cast("B")
    if len(event) > MAX_EVENT_SIZE:
        raise EventTooLarge(f"event {i} is {len(event)} bytes; the limit is {MAX_EVENT_SIZE}")
    return event if type(event) is bytes else bytes(event)  # a snapshot of a mutable buffer


def check_offset(name: str, value: object) -> int:
    """``value`` as an offset if it is an int (not a bool); InvalidArgument naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{name} must be an int, not {type(value).__name__}")
    return value


def check_prev_hash(prev_hash: object) -> bytes | None:
    """``prev_hash`` as bytes, or None; anything but None or 32 bytes is refused."""
    if prev_hash is None:
        return None
    if not isinstance(prev_hash, (bytes, bytearray, memoryview)) or len(prev_hash) != HASH_SIZE:
        raise InvalidArgument(f"prev_hash must be None or {HASH_SIZE} bytes")
    return bytes(prev_hash)


def append_conflict(
    stream_id: StreamId,
    next_offset: int,
    head: bytes | None,
    *,
    expected_offset: int | None,
    prev_hash: bytes | None,
    check_prev: bool,
    record_count: int | None = None,
) -> StorageError | None:
    """Why an append cannot go on top of a stream whose head is (``next_offset``, ``head``); None: it can.

    ``expected_offset`` None: no offset check; ``check_prev`` False: no chain-head check;
    ``record_count``: a checkpoint's count of the records before it.
    """
    if expected_offset is not None and expected_offset != next_offset:
        return OffsetMismatch(stream_id=stream_id, expected=expected_offset, actual=next_offset)
    if check_prev and prev_hash != head:
        return ChainMismatch(stream_id=stream_id, given=prev_hash, head=head)
    if record_count is not None and record_count != next_offset:
        return RecordCountMismatch(stream_id=stream_id, given=record_count, actual=next_offset)
    return None


def checkpoint_positions(count: int, since: int, every: int | None) -> list[int]:
    """The indices of a batch's ``count`` events after which a checkpoint record goes, under a policy
    of a checkpoint after every ``every``-th event (None: never), ``since`` events after the last one.
    The one home of that rule: ``plan_batch`` lays batches out by it, and ``hybridlog.eventsourcing``
    computes its events' offsets by it."""
    if every is None:
        return []
    return list(range(max(1, every - since) - 1, count, every))


def plan_batch(
    payloads: list[BytesLike], policy: CheckpointPolicy, events_since_checkpoint: int, first_offset: int
) -> list[PlannedRecord]:
    """The records a batch writes from ``first_offset`` on: its events, and a checkpoint record
    after every ``every_records``-th event since the last checkpoint (``checkpoint_positions``)."""
    positions = checkpoint_positions(len(payloads), events_since_checkpoint, policy.every_records)
    if not positions:
        return [(RecordKind.EVENT, payload) for payload in payloads]
    planned: list[PlannedRecord] = []
    taken = 0
    for after in positions:
        planned += [(RecordKind.EVENT, payload) for payload in payloads[taken : after + 1]]
        planned.append((RecordKind.CHECKPOINT, checkpoint_payload(first_offset + len(planned))))
        taken = after + 1
    planned += [(RecordKind.EVENT, payload) for payload in payloads[taken:]]
    return planned


def check_non_negative(name: str, value: object) -> int:
    """``value`` if it is an int of 0 or more (not a bool); InvalidArgument naming ``name`` otherwise."""
    if type(value) is int and value >= 0:  # the common case first: one type test (bool is not int)
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument(f"{name} must be a non-negative int, not {value!r}")
    return value


def check_position(name: str, value: object) -> int:
    """An offset or global position to read from: an int in 0..2**63-1, or InvalidArgument."""
    if type(value) is int and 0 <= value <= MAX_POSITION:  # the common case first
        return value
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_POSITION:
        raise InvalidArgument(f"{name} must be an int in 0..2**63-1, not {value!r}")
    return value


def check_clock_reading(value: object) -> int:
    """A clock's reading as a record timestamp (nanoseconds, an int in 0..2**63-1), or InvalidConfiguration."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TIMESTAMP_NS:
        raise InvalidConfiguration(f"clock must return nanoseconds as an int in 0..2**63-1, not {value!r}")
    return value


def take_payloads(records: Iterable[Record], max_bytes: int) -> list[bytes]:
    """Event payloads from ``records`` (checkpoints skipped): at least one, then up to ``max_bytes``."""
    return take_within((r.payload for r in records if r.kind is RecordKind.EVENT), len, max_bytes)


def check_time_window(since_ns: object, until_ns: object) -> tuple[int | None, int | None]:
    """``since_ns`` and ``until_ns`` as ints or None (no bound); ``since_ns`` after ``until_ns`` is refused."""
    for name, value in (("since_ns", since_ns), ("until_ns", until_ns)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidArgument(f"{name} must be an int (nanoseconds since the epoch) or None, not {value!r}")
    assert since_ns is None or isinstance(since_ns, int)
    assert until_ns is None or isinstance(until_ns, int)
    if since_ns is not None and until_ns is not None and since_ns > until_ns:
        raise InvalidArgument(f"since_ns ({since_ns}) is after until_ns ({until_ns})")
    return since_ns, until_ns


def take_within(items: Iterable[T], size: Callable[[T], int], max_bytes: int) -> list[T]:
    """At least one item (when there is one), then more while their sizes add up to ``max_bytes``.

    Stops without taking another item once the total is over ``max_bytes`` (not even an empty one
    would fit), so a verified read never reads a record it will not return.
    """
    out: list[T] = []
    total = 0
    for item in items:
        if out and total + size(item) > max_bytes:
            break
        out.append(item)
        total += size(item)
        if total > max_bytes:
            break
    return out


def read_page(
    source: RecordSource, stream_id: int, from_offset: int, max_bytes: object, *, anchored: bool, events_only: bool
) -> list[Record]:
    """One page of the seed's ``(stream_id, from_offset, max_bytes)`` reads (``read_from_genesis``,
    ``read_records_from_genesis``, ``read_records_verified``), for every backend: ``take_page``
    over the verified records from ``from_offset`` (``anchored``: verified from the nearest
    checkpoint at or before it; otherwise from offset 0)."""
    limit = check_non_negative("max_bytes", max_bytes)
    return take_page(source.iter_records(stream_id, from_offset, anchored=anchored), limit, events_only=events_only)


def take_page(records: Iterable[Record], max_bytes: int, *, events_only: bool) -> list[Record]:
    """A page of ``records`` (only events when ``events_only``): at least one when there is one,
    then more while their payloads add up to ``max_bytes`` (``take_within``'s rule).

    A page that reaches a range a repair isolated ends before it when it already holds a record; the
    next page, read from inside the range, raises ``RecordIsolated`` (its ``next_offset`` says where
    the stream reads on). A page with nothing before the range raises at once.
    """
    taken = False

    def walk() -> Iterator[Record]:
        nonlocal taken
        try:
            for record in records:
                if events_only and record.kind is not RecordKind.EVENT:
                    continue
                yield record
                taken = True  # resumed: take_within kept the record and asks for the next one
        except RecordIsolated:
            if not taken:
                raise

    return take_within(walk(), lambda r: len(r.payload), max_bytes)


def records_before(records: Iterable[Record], stop_offset: int | None) -> Iterator[Record]:
    """The records before ``stop_offset`` (None: all), without reading the one at ``stop_offset``:
    a read that ends before damage never reaches it."""
    for record in records:
        if stop_offset is not None and record.offset >= stop_offset:
            return
        yield record
        if stop_offset is not None and record.offset + 1 >= stop_offset:
            return


class RecordSource(Protocol):
    """A backend's part that ``records_between`` needs."""

    def iter_records(self, stream_id: int, from_offset: int = 0, *, anchored: bool = True) -> Iterator[Record]:
        """The stream's records from ``from_offset`` on, each verified before it is yielded."""


def records_between(source: RecordSource, stream_id: int, first: int, last: int) -> Iterator[Record]:
    """A stream's verified records from offset ``first`` to ``last``, stepping over ranges a repair
    isolated (they have no index rows, no global positions and no verified content; reads of them
    raise ``RecordIsolated``). Never asks for the record after ``last``."""
    offset = first
    while offset <= last:
        try:
            yield from records_before(source.iter_records(stream_id, offset), last + 1)
            return
        except RecordIsolated as e:
            offset = e.next_offset


class TimeIndexed(Protocol):
    """A backend's part that ``read_window`` needs."""

    def offset_at(self, stream_id: int, timestamp_ns: int) -> int:
        """The first offset appended at or after ``timestamp_ns`` (the next offset if none)."""

    def iter_records(self, stream_id: int, from_offset: int = 0, *, anchored: bool = True) -> Iterator[Record]:
        """The stream's records from ``from_offset`` on, each verified before it is yielded."""


def read_window(
    backend: TimeIndexed, stream_id: int, since_ns: object, until_ns: object, max_bytes: object
) -> list[Record]:
    """``read_between`` for every backend: the records of ``window_records``, at least one, then up
    to ``max_bytes``."""
    since, until = check_time_window(since_ns, until_ns)
    limit = check_non_negative("max_bytes", max_bytes)
    return take_within(window_records(backend, stream_id, since, until), lambda r: len(r.payload), limit)


def window_records(
    backend: TimeIndexed, stream_id: int, since: int | None, until: int | None, from_offset: int = 0
) -> Iterator[Record]:
    """Verified records appended at or after ``since`` and before ``until`` (None: no bound), from
    ``from_offset`` on: those from ``offset_at(since)`` up to ``offset_at(until)``.

    ``offset_at`` answers from the time index, which is only as good as the catalog. The walk that
    verifies the window also checks it against the records' own (hashed) timestamps: every record
    returned is inside the window, the record before the first one is before ``since``, and the
    record at ``offset_at(until)`` is not before ``until``. A contradiction raises CatalogMismatch,
    so a damaged time index never shortens a window silently. The record at ``offset_at(until)`` is
    only looked at: if it fails verification itself, the window before it is still returned.
    """
    start, before = from_offset, None
    if since is not None:
        found = backend.offset_at(stream_id, since)
        if found > from_offset:
            start, before = found, found - 1
    stop = None if until is None else backend.offset_at(stream_id, until)
    walk = backend.iter_records(stream_id, start if before is None else before)
    try:
        if before is not None:
            try:
                record = next(walk, None)
            except IntegrityError as e:
                if e.offset != before:
                    raise
                # damage at the record before the window: the walk from ``start`` says whether it matters
                walk = backend.iter_records(stream_id, start)
            else:
                assert since is not None
                if record is not None and record.timestamp_ns >= since:
                    raise _time_index_mismatch(record, f"it is before offset_at(since={since}) = {start}")
        while True:
            past_window = stop is not None and start >= stop
            try:
                record = next(walk)
            except StopIteration:
                return
            except IntegrityError as e:
                if past_window and e.offset is not None and stop is not None and e.offset >= stop:
                    return  # the record after the window is damaged: a read of it says so
                raise
            if past_window:
                if until is not None and record.timestamp_ns < until:
                    raise _time_index_mismatch(record, f"it is at or after offset_at(until={until}) = {stop}")
                return
            if (since is not None and record.timestamp_ns < since) or (
                until is not None and record.timestamp_ns >= until
            ):
                raise _time_index_mismatch(record, f"the time index puts it in the window [{since}, {until})")
            yield record
            start = record.offset + 1
    finally:
        close = getattr(walk, "close", None)  # a walk left early (an error, the window's end) holds a file
        if close is not None:
            close()


def _time_index_mismatch(record: Record, claim: str) -> CatalogMismatch:
    return CatalogMismatch(
        f"the time index disagrees with the record's timestamp {record.timestamp_ns}: {claim}",
        stream_id=record.stream_id,
        offset=record.offset,
        hint="see it with `hybridlog check`, fix it with `hybridlog repair`",
    )
