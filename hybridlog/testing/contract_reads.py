"""The read half of the backend contract: payload and record pages, time windows, clocks, global order.

Part of ``BackendContract`` (``hybridlog.testing.contract``), which is what a backend subclasses.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridlog import (
    CheckpointPolicy,
    GlobalRecord,
    InvalidArgument,
    InvalidConfiguration,
    InvalidStreamId,
    Record,
    RecordKind,
    StorageBackend,
)
from hybridlog.record import checkpoint_payload
from hybridlog.testing.backends import (
    Harness,
    assert_valid_chain,
    expected_read,
    fill,
)
from hybridlog.testing.clocks import START_NS, ManualClock
from hybridlog.testing.damage import genesis_events, genesis_records

# --- the seed's page reads: (stream_id, from_offset, max_bytes) -----------------------------------

PAGE_READS = ["read_from_genesis", "read_records_from_genesis", "read_records_verified"]


def page_of(backend: StorageBackend, read: str, stream_id: int, from_offset: int, max_bytes: int) -> list[bytes]:
    """The payloads of one page of ``read`` (the record reads' Records as their payloads)."""
    if read == "read_from_genesis":
        return backend.read_from_genesis(stream_id, from_offset, max_bytes)
    if read == "read_records_from_genesis":
        return [r.payload for r in backend.read_records_from_genesis(stream_id, from_offset, max_bytes)]
    assert read == "read_records_verified"
    return [r.payload for r in backend.read_records_verified(stream_id, from_offset, max_bytes)]


def expected_page(records: Sequence[Record], from_offset: int, max_bytes: int) -> list[Record]:
    """Reference page over records: from ``from_offset``, at least one, then within max_bytes."""
    out: list[Record] = []
    total = 0
    for record in records:
        if record.offset < from_offset:
            continue
        if out and total + len(record.payload) > max_bytes:
            break
        out.append(record)
        total += len(record.payload)
    return out


# --- time -----------------------------------------------------------------------------------------


def timed_stream(harness: Harness, policy: CheckpointPolicy | None = None) -> StorageBackend:
    """Stream 1 with offsets a0 b1 c2 at +100, d3 e4 at +200 (e's clock stepped back to +150), f5 at +300."""
    clock = ManualClock(START_NS + 100)
    backend = harness.make(clock=clock, policy=policy)
    backend.append(1, [b"a", b"b"])
    backend.append(1, [b"c"])  # an equal timestamp in the next batch
    clock.now = START_NS + 200
    backend.append(1, [b"d"])
    clock.now = START_NS + 150
    backend.append(1, [b"e"])  # clamped to +200
    clock.now = START_NS + 300
    backend.append(1, [b"f"])
    return backend


OUT_OF_RANGE = [2**63, 2**64, 2**100, -1, -(2**63) - 1, True, False, 1.5, 2.0**63, "0", None]


PAGE_CASES = given(
    sizes=st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=12),
    every=st.none() | st.integers(min_value=1, max_value=4),
    from_offset=st.integers(min_value=0, max_value=20),
    max_bytes=st.integers(min_value=0, max_value=120),
)
"""Streams of events of these sizes under this checkpoint policy, read from this offset with this budget."""


class ReadContract:
    """Every read agrees with a reference; times and positions are checked the same way in every backend."""

    def test_read_from_max_bytes(self, harness: Harness) -> None:
        """read_from returns at least one event, then stops before the payloads would exceed max_bytes."""
        backend = harness.make()
        fill(backend, 1, [[b"a" * 5, b"b" * 5], [b"c" * 5, b"d" * 20, b"e" * 5]])
        assert backend.read_from(1, 0, 0) == [b"a" * 5]
        assert backend.read_from(1, 0, 9) == [b"a" * 5]
        assert backend.read_from(1, 0, 10) == [b"a" * 5, b"b" * 5]
        assert backend.read_from(1, 0, 14) == [b"a" * 5, b"b" * 5]
        assert backend.read_from(1, 0, 15) == [b"a" * 5, b"b" * 5, b"c" * 5]
        assert backend.read_from(1, 3, 4) == [b"d" * 20]  # one event even when it alone is too big
        assert backend.read_from(1, 2, 24) == [b"c" * 5]  # stops at the first event that does not fit
        assert backend.read_from(1, 1, 1 << 20) == [b"b" * 5, b"c" * 5, b"d" * 20, b"e" * 5]

    def test_read_from_unknown_stream_and_past_the_end(self, harness: Harness) -> None:
        """An unknown stream, or a from_offset at or beyond the end, reads as []."""
        backend = harness.make()
        assert backend.read_from(9, 0, 100) == []
        fill(backend, 1, [[b"a", b"b"]])
        assert backend.read_from(9, 0, 100) == []
        assert backend.read_from(1, 2, 100) == []
        assert backend.read_from(1, 50, 100) == []
        assert backend.read_records_verified(1, 2, 100) == []
        assert backend.read_records_verified(1, 50, 100) == []
        assert backend.read_from_genesis(9, 0, 100) == []
        assert backend.read_records_from_genesis(9, 0, 100) == []
        assert backend.read_records_verified(9, 0, 100) == []

    def test_read_from_skips_checkpoint_records(self, harness: Harness) -> None:
        """Starting at a checkpoint's offset reads from the next event; no checkpoint payload appears."""
        backend = harness.make(policy=CheckpointPolicy.every(2, on_close=False))
        fill(backend, 1, [[b"a", b"b", b"c", b"d", b"e"]])  # a b C c d C e
        assert backend.read_from(1, 2, 1 << 20) == [b"c", b"d", b"e"]
        assert backend.read_from(1, 5, 0) == [b"e"]
        assert backend.read_from(1, 0, 1 << 20) == [b"a", b"b", b"c", b"d", b"e"]

    @settings(max_examples=25)
    @PAGE_CASES
    def test_read_from_matches_the_reference(
        self, harness: Harness, sizes: list[int], every: int | None, from_offset: int, max_bytes: int
    ) -> None:
        """read_from agrees with a reference implementation for any offset, budget and policy."""
        backend = harness.make(policy=CheckpointPolicy(every_records=every, on_close=False))
        payloads = [bytes([i]) * n for i, n in enumerate(sizes)]
        backend.append_batch(1, payloads, 0, None)
        events = [(r.offset, r.payload) for r in genesis_records(backend, 1) if r.kind is RecordKind.EVENT]
        assert [p for _, p in events] == payloads
        assert backend.read_from(1, from_offset, max_bytes) == expected_read(events, from_offset, max_bytes)

    def test_genesis_and_verified_reads(self, harness: Harness) -> None:
        """read_from_genesis gives event payloads; the record reads give Records, checkpoints included."""
        backend = harness.make(policy=CheckpointPolicy.every(3, on_close=False))
        fill(backend, 1, [[b"a", b"b"], [b"c", b"d"], [b"e"]])  # a b c C d e
        records = genesis_records(backend, 1)
        assert [(r.kind, r.payload) for r in records if r.kind is RecordKind.EVENT] == [
            (RecordKind.EVENT, p) for p in (b"a", b"b", b"c", b"d", b"e")
        ]
        assert [r.kind for r in records].count(RecordKind.CHECKPOINT) == 1
        assert_valid_chain(records, 1)
        assert backend.read_from_genesis(1, 0, 1 << 20) == [b"a", b"b", b"c", b"d", b"e"]
        for start in range(len(records) + 2):
            assert backend.read_records_verified(1, start, 1 << 20) == records[start:]
            assert backend.read_records_from_genesis(1, start, 1 << 20) == records[start:]
            assert list(backend.iter_records(1, start)) == records[start:]
            assert list(backend.iter_records(1, start, anchored=False)) == records[start:]
        assert genesis_events(backend, 1) == [b"a", b"b", b"c", b"d", b"e"]

    @pytest.mark.parametrize("read", PAGE_READS)
    def test_page_reads_take_at_least_one_then_stop_within_max_bytes(self, harness: Harness, read: str) -> None:
        """The seed's signature: from ``from_offset``, at least one item when there is one, then stop
        before the payloads would exceed ``max_bytes`` (``read_from``'s rule)."""
        backend = harness.make()
        fill(backend, 1, [[b"a" * 5, b"b" * 5], [b"c" * 5, b"d" * 20, b"e" * 5]])
        assert page_of(backend, read, 1, 0, 0) == [b"a" * 5]  # max_bytes 0: one item
        assert page_of(backend, read, 1, 0, 9) == [b"a" * 5]
        assert page_of(backend, read, 1, 0, 10) == [b"a" * 5, b"b" * 5]
        assert page_of(backend, read, 1, 0, 14) == [b"a" * 5, b"b" * 5]
        assert page_of(backend, read, 1, 0, 15) == [b"a" * 5, b"b" * 5, b"c" * 5]
        assert page_of(backend, read, 1, 3, 4) == [b"d" * 20]  # one item even when it alone is too big
        assert page_of(backend, read, 1, 2, 24) == [b"c" * 5]  # stops at the first item that does not fit
        assert page_of(backend, read, 1, 1, 1 << 20) == [b"b" * 5, b"c" * 5, b"d" * 20, b"e" * 5]
        assert page_of(backend, read, 1, 4, 2**100) == [b"e" * 5]  # a budget past any payload
        assert page_of(backend, read, 1, 5, 100) == []  # at the end
        assert page_of(backend, read, 1, 2**63 - 1, 100) == []  # far past it
        assert page_of(backend, read, 9, 0, 100) == []  # an unknown stream
        backend.create_checkpoint(2, 0, None, 0)
        assert page_of(backend, read, 2, 0, 0) == ([] if read == "read_from_genesis" else [checkpoint_payload(0)])

    def test_page_reads_of_records_include_checkpoints_and_payload_pages_skip_them(self, harness: Harness) -> None:
        """From a checkpoint's offset, the record pages start with it and the payload page with the next event."""
        backend = harness.make(policy=CheckpointPolicy.every(2, on_close=False))
        fill(backend, 1, [[b"a", b"b", b"c", b"d", b"e"]])  # a b C c d C e
        records = genesis_records(backend, 1)
        assert backend.read_from_genesis(1, 2, 0) == [b"c"]  # from a checkpoint: the next event
        assert backend.read_from_genesis(1, 5, 1 << 20) == [b"e"]
        assert backend.read_records_from_genesis(1, 2, 0) == records[2:3]
        assert backend.read_records_verified(1, 2, 0) == records[2:3]
        assert backend.read_records_verified(1, 3, 1) == records[3:4]

    @pytest.mark.parametrize("bad", [-1, -(2**63), True, False, 1.5, "10", None, b"1"], ids=repr)
    def test_page_reads_refuse_a_bad_max_bytes(self, harness: Harness, bad: object) -> None:
        """``max_bytes`` is a non-negative int (as for ``read_from``, no upper bound); anything else
        is InvalidArgument in both backends, also for an unknown stream."""
        backend = harness.make()
        fill(backend, 1, [[b"a", b"b"]])
        reads: list[Callable[[int, int, int], object]] = [
            backend.read_from,
            backend.read_from_genesis,
            backend.read_records_from_genesis,
            backend.read_records_verified,
        ]
        for read, sid in itertools.product(reads, (1, 9)):
            with pytest.raises(InvalidArgument):
                read(sid, 0, bad)  # type: ignore[arg-type]
        assert genesis_events(backend, 1) == [b"a", b"b"]

    @settings(max_examples=25)
    @PAGE_CASES
    def test_page_reads_match_the_reference_and_page_through_the_stream(
        self, harness: Harness, sizes: list[int], every: int | None, from_offset: int, max_bytes: int
    ) -> None:
        """Every page read agrees with a reference for any offset, budget and policy, and paging from
        ``page[-1].offset + 1`` gives every record once, in order."""
        backend = harness.make(policy=CheckpointPolicy(every_records=every, on_close=False))
        backend.append_batch(1, [bytes([i]) * n for i, n in enumerate(sizes)], 0, None)
        records = genesis_records(backend, 1)
        events = [(r.offset, r.payload) for r in records if r.kind is RecordKind.EVENT]
        assert backend.read_from_genesis(1, from_offset, max_bytes) == expected_read(events, from_offset, max_bytes)
        page = expected_page(records, from_offset, max_bytes)
        assert backend.read_records_from_genesis(1, from_offset, max_bytes) == page
        assert backend.read_records_verified(1, from_offset, max_bytes) == page
        for read in (backend.read_records_from_genesis, backend.read_records_verified):
            seen: list[Record] = []
            offset = 0
            while got := read(1, offset, max_bytes):
                assert len(got) == 1 or sum(len(r.payload) for r in got) <= max_bytes
                seen += got
                offset = got[-1].offset + 1
            assert seen == records

    def test_timestamps_never_decrease_when_the_clock_steps_back(self, harness: Harness) -> None:
        """A clock stepping back is clamped per stream; a batch's records share one timestamp."""
        clock = ManualClock(START_NS)
        backend = harness.make(clock=clock, policy=CheckpointPolicy.every(2, on_close=False))
        backend.append(1, [b"a"])
        clock.now = START_NS - 5_000
        backend.append(1, [b"b", b"c"])  # b, checkpoint, c: the checkpoint shares the batch's timestamp
        clock.now = START_NS - 10_000
        backend.append(2, [b"other"])  # another stream is not clamped by stream 1
        clock.now = START_NS + 7
        backend.append(1, [b"d"])  # d, checkpoint

        assert [r.timestamp_ns for r in genesis_records(backend, 1)] == [START_NS] * 4 + [START_NS + 7] * 2
        assert [r.timestamp_ns for r in genesis_records(backend, 2)] == [START_NS - 10_000]
        assert all(r.timestamp == r.timestamp_ns for r in genesis_records(backend, 1))

    def test_timestamps_come_from_the_clock(self, harness: Harness) -> None:
        """Records carry the clock's reading at append time; explicit checkpoints too."""
        clock = ManualClock(START_NS)
        backend = harness.make(clock=clock)
        backend.append(1, [b"a", b"b"])
        clock.now = START_NS + 1_000
        offset, head = backend.next_offset(1), backend.latest_chain_hash(1)
        backend.create_checkpoint(1, offset, head, offset)
        assert [r.timestamp_ns for r in genesis_records(backend, 1)] == [START_NS, START_NS, START_NS + 1_000]

    def test_offset_at_finds_the_first_record_at_or_after_a_time(self, harness: Harness) -> None:
        """offset_at gives the first offset stored at or after a time, the next offset after the last one."""
        backend = timed_stream(harness)
        at = {t: backend.offset_at(1, START_NS + t) for t in (-(10**9), 0, 99, 100, 101, 150, 199, 200, 201, 300, 301)}
        assert at == {-(10**9): 0, 0: 0, 99: 0, 100: 0, 101: 3, 150: 3, 199: 3, 200: 3, 201: 5, 300: 5, 301: 6}
        assert backend.offset_at(1, -1) == 0
        assert backend.offset_at(1, 2**64) == backend.next_offset(1) == 6  # after the last: the next offset
        assert backend.offset_at(9, START_NS) == 0  # an unknown stream

    def test_read_between_since_inclusive_until_exclusive(self, harness: Harness) -> None:
        """read_between takes the records stored at or after ``since`` and before ``until``, paged by ``max_bytes``."""
        backend = timed_stream(harness)

        def payloads(since: int | None, until: int | None, max_bytes: int = 1 << 20) -> list[bytes]:
            since_ns = None if since is None else START_NS + since
            until_ns = None if until is None else START_NS + until
            return [r.payload for r in backend.read_between(1, since_ns, until_ns, max_bytes)]

        assert payloads(None, None) == [b"a", b"b", b"c", b"d", b"e", b"f"]
        assert payloads(100, 200) == [b"a", b"b", b"c"]
        assert payloads(100, 201) == [b"a", b"b", b"c", b"d", b"e"]
        assert payloads(101, 300) == [b"d", b"e"]
        assert payloads(150, 200) == []  # e was appended at +150 by the clock, but stored at +200
        assert payloads(200, 200) == []  # an empty window
        assert payloads(None, 100) == []  # before the first
        assert payloads(301, None) == []  # after the last
        assert payloads(300, None) == [b"f"]
        assert payloads(None, 101) == [b"a", b"b", b"c"]
        assert payloads(100, None, max_bytes=0) == [b"a"]  # at least one
        assert payloads(100, None, max_bytes=2) == [b"a", b"b"]
        assert backend.read_between(9, None, None) == []
        records = backend.read_between(1, START_NS + 200, None)
        assert records == backend.read_records_verified(1, 3, 1 << 20)  # whole, verified Records

    def test_read_between_includes_checkpoints_in_the_window(self, harness: Harness) -> None:
        """Checkpoints stored inside the window are among the records read_between returns."""
        backend = timed_stream(harness, policy=CheckpointPolicy.every(2, on_close=False))
        # a b C c d C e f C: the checkpoints share their batch's timestamp
        kinds = [(r.kind, r.payload) for r in backend.read_between(1, START_NS + 200, START_NS + 300)]
        assert [k for k, _ in kinds] == [RecordKind.EVENT, RecordKind.CHECKPOINT, RecordKind.EVENT]
        assert [p for k, p in kinds if k is RecordKind.EVENT] == [b"d", b"e"]

    @pytest.mark.parametrize(
        ("since", "until", "max_bytes"),
        [(5, 4, 10), (True, None, 10), (None, 1.5, 10), (None, "2024", 10), (None, None, -1), (None, None, 1.0)],
    )
    def test_read_between_refuses_bad_arguments(
        self, harness: Harness, since: object, until: object, max_bytes: object
    ) -> None:
        """``since`` after ``until``, a time that is not an int, or a bad ``max_bytes`` is InvalidArgument."""
        backend = timed_stream(harness)
        with pytest.raises(InvalidArgument):
            backend.read_between(1, since, until, max_bytes)  # type: ignore[arg-type]

    def test_offset_at_refuses_a_time_that_is_not_an_int(self, harness: Harness) -> None:
        """offset_at refuses a time that is not an int (InvalidArgument) and a negative stream id (InvalidStreamId)."""
        backend = timed_stream(harness)
        for bad in (1.5, "now", None, True):
            with pytest.raises(InvalidArgument):
                backend.offset_at(1, bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidStreamId):
            backend.offset_at(-1, START_NS)

    @pytest.mark.parametrize("bad", OUT_OF_RANGE, ids=repr)
    def test_read_offsets_and_positions_out_of_range_are_invalid_arguments(self, harness: Harness, bad: object) -> None:
        """An offset or global position a read starts from is an int in 0..2**63-1 (the largest any
        stream can reach); anything else is InvalidArgument in both backends, and changes nothing."""
        backend = harness.make()
        fill(backend, 1, [[b"a", b"b"]])
        reads: list[Callable[[], object]] = [
            lambda: backend.read_from(1, bad, 100),  # type: ignore[arg-type]
            lambda: list(backend.iter_records(1, bad)),  # type: ignore[arg-type]
            lambda: list(backend.iter_records(1, bad, anchored=False)),  # type: ignore[arg-type]
            lambda: backend.read_records_verified(1, bad, 100),  # type: ignore[arg-type]
            lambda: backend.read_records_from_genesis(1, bad, 100),  # type: ignore[arg-type]
            lambda: backend.read_from_genesis(1, bad, 100),  # type: ignore[arg-type]
            lambda: backend.read_global(bad),  # type: ignore[arg-type]
            lambda: backend.read_global(bad, 100, stream_id=1),  # type: ignore[arg-type]
        ]
        for read in reads:
            with pytest.raises(InvalidArgument):
                read()
        assert genesis_events(backend, 1) == [b"a", b"b"]
        assert backend.last_global_position() == 2

    def test_reads_at_the_largest_offset_and_position_find_nothing(self, harness: Harness) -> None:
        """Every read from offset or position 2**63-1 is valid and finds nothing."""
        backend = harness.make()
        fill(backend, 1, [[b"a", b"b"]])
        top = 2**63 - 1
        assert backend.read_from(1, top, 100) == []
        assert list(backend.iter_records(1, top)) == []
        assert backend.read_records_verified(1, top, 100) == []
        assert backend.read_records_from_genesis(1, top, 100) == []
        assert backend.read_from_genesis(1, top, 100) == []
        assert backend.read_global(top) == []
        assert backend.read_global(top, 100, stream_id=1) == []

    def test_times_beyond_any_clock_reading_are_bounds_both_backends_agree_on(self, harness: Harness) -> None:
        """offset_at and read_between take any int as a time: before the first record or after the
        last, the answer is the same in both backends (no error for times no clock can give)."""
        backend = timed_stream(harness)
        everything = genesis_records(backend, 1)
        for early in (-1, -(2**63) - 1, -(2**100)):
            assert backend.offset_at(1, early) == 0
            assert backend.read_between(1, None, early) == []
            assert backend.read_between(1, early, None) == everything
        for late in (2**63, 2**64, 2**100):
            assert backend.offset_at(1, late) == len(everything)
            assert backend.read_between(1, late, None) == []
            assert backend.read_between(1, None, late) == everything
            assert backend.read_between(1, None, None, late) == everything  # a max_bytes past any payload

    @pytest.mark.parametrize("reading", [2**63, 2**64, -1, True, False, 1.7e18, float(2**62), None, "now"], ids=repr)
    def test_a_clock_reading_a_record_cannot_hold_is_invalid_configuration(
        self, harness: Harness, reading: object
    ) -> None:
        """Timestamps are nanoseconds in 0..2**63-1 (frames hold a u64, the catalog a signed 64-bit
        integer, so the store takes the smaller range): a clock giving anything else makes an append
        raise InvalidConfiguration in both backends, and nothing is written."""
        clock = ManualClock(START_NS)
        backend = harness.make(clock=clock)
        fill(backend, 1, [[b"a"]])
        clock.now = reading  # type: ignore[assignment]
        writes: list[Callable[[], object]] = [
            lambda: backend.append(1, [b"b"]),
            lambda: backend.append(2, [b"b"]),
            lambda: backend.append_batch(1, [b"b"], 1, backend.latest_chain_hash(1)),
            lambda: backend.create_checkpoint(1, 1, backend.latest_chain_hash(1), 1),
        ]
        for write in writes:
            with pytest.raises(InvalidConfiguration):
                write()
        assert genesis_events(backend, 1) == [b"a"]
        assert backend.next_offset(2) == 0
        assert backend.stream_ids() == [1]
        clock.now = START_NS + 1
        fill(backend, 1, [[b"b"]])
        assert genesis_events(backend, 1) == [b"a", b"b"]

    def test_the_largest_clock_reading_is_stored(self, harness: Harness) -> None:
        """A clock reading of 2**63-1 nanoseconds is stored as it is and found by offset_at."""
        backend = harness.make(clock=ManualClock(2**63 - 1))
        fill(backend, 1, [[b"a"], [b"b"]])
        assert [r.timestamp_ns for r in genesis_records(backend, 1)] == [2**63 - 1, 2**63 - 1]
        assert backend.offset_at(1, 2**63 - 1) == 0

    @settings(max_examples=25)
    @given(
        steps=st.lists(
            st.tuples(st.integers(min_value=-3, max_value=3), st.integers(min_value=1, max_value=3)),
            min_size=1,
            max_size=12,
        ),
        probes=st.lists(st.integers(min_value=-2, max_value=25), min_size=1, max_size=6),
    )
    def test_time_reads_match_a_linear_scan(
        self, harness: Harness, steps: list[tuple[int, int]], probes: list[int]
    ) -> None:
        """offset_at and read_between agree with a scan of the records, whatever the clock did."""
        clock = ManualClock(START_NS + 10)
        backend = harness.make(clock=clock, policy=CheckpointPolicy.every(3, on_close=False))
        for i, (step, size) in enumerate(steps):
            clock.now += step  # may step back: clamped per stream
            backend.append(1, [b"%d.%d" % (i, j) for j in range(size)])
        records = genesis_records(backend, 1)
        stamps = [r.timestamp_ns for r in records]
        assert stamps == sorted(stamps)
        for probe in probes:
            t = START_NS + probe
            assert backend.offset_at(1, t) == next((r.offset for r in records if r.timestamp_ns >= t), len(records))
            for other in probes:
                u = START_NS + other
                if t <= u:
                    assert backend.read_between(1, t, u, 1 << 20) == [r for r in records if t <= r.timestamp_ns < u]

    # --- global order ---------------------------------------------------------------------------------

    def test_global_positions_follow_append_order_across_streams(self, harness: Harness) -> None:
        """Global positions number every record from 1 in append order, across streams, checkpoints included."""
        backend = harness.make(policy=CheckpointPolicy.every(2, on_close=False))
        assert backend.last_global_position() == 0
        assert backend.read_global() == []
        backend.append(3, [b"a"])
        backend.append(1, [b"b", b"c"])  # b, c, checkpoint
        backend.append(3, [b"d"])  # d, checkpoint
        got = [(g.global_position, g.record.stream_id, g.record.offset, g.record.kind) for g in backend.read_global()]
        e, c = RecordKind.EVENT, RecordKind.CHECKPOINT
        assert got == [(1, 3, 0, e), (2, 1, 0, e), (3, 1, 1, e), (4, 1, 2, c), (5, 3, 1, e), (6, 3, 2, c)]
        assert backend.last_global_position() == 6
        by_stream = {sid: genesis_records(backend, sid) for sid in (1, 3)}
        assert all(g.record == by_stream[g.record.stream_id][g.record.offset] for g in backend.read_global())
        assert [g.global_position for g in backend.read_global(0)] == [1, 2, 3, 4, 5, 6]
        assert [g.global_position for g in backend.read_global(5)] == [5, 6]
        assert backend.read_global(7) == []

    def test_read_global_max_bytes(self, harness: Harness) -> None:
        """read_global gives at least one record, then stops before the payloads would exceed ``max_bytes``."""
        backend = harness.make()
        backend.append(1, [b"a" * 5])
        backend.append(2, [b"b" * 5, b"c" * 20])
        backend.append(1, [b"d" * 5])

        def payloads(start: int, limit: int) -> list[bytes]:
            return [g.record.payload for g in backend.read_global(start, limit)]

        assert payloads(1, 0) == [b"a" * 5]
        assert payloads(1, 10) == [b"a" * 5, b"b" * 5]
        assert payloads(1, 29) == [b"a" * 5, b"b" * 5]
        assert payloads(1, 30) == [b"a" * 5, b"b" * 5, b"c" * 20]
        assert payloads(3, 1) == [b"c" * 20]  # one record even when it alone is too big
        with pytest.raises(InvalidArgument):
            backend.read_global(-1)
        with pytest.raises(InvalidArgument):
            backend.read_global(1, -1)

    @settings(max_examples=25)
    @given(
        appends=st.lists(
            st.tuples(
                st.integers(min_value=0, max_value=3),
                st.lists(st.integers(min_value=0, max_value=30), min_size=1, max_size=4),
            ),
            min_size=1,
            max_size=10,
        ),
        max_bytes=st.integers(min_value=0, max_value=80),
    )
    def test_paging_through_read_global_gives_every_record_once_in_order(
        self, harness: Harness, appends: list[tuple[int, list[int]]], max_bytes: int
    ) -> None:
        """Paging on from the last position read sees every record once, in order, store-wide and per stream."""
        backend = harness.make(policy=CheckpointPolicy.every(3, on_close=False))
        expected: list[tuple[int, int]] = []  # (stream, offset) in append order
        for n, (sid, sizes) in enumerate(appends):
            start = backend.next_offset(sid)
            end, _ = backend.append(sid, [bytes([n]) * size for size in sizes])
            expected += [(sid, o) for o in range(start, end)]
        seen: list[GlobalRecord] = []
        position = 1
        while page := backend.read_global(position, max_bytes):
            total = sum(len(g.record.payload) for g in page)
            assert len(page) == 1 or total <= max_bytes
            seen += page
            position = page[-1].global_position + 1
        assert [g.global_position for g in seen] == list(range(1, len(expected) + 1))
        assert [(g.record.stream_id, g.record.offset) for g in seen] == expected
        assert backend.last_global_position() == len(expected)
        # one stream's share of the order, paged the same way
        for sid in {sid for sid, _ in appends}:
            mine: list[GlobalRecord] = []
            position = 1
            while page := backend.read_global(position, max_bytes, stream_id=sid):
                assert len(page) == 1 or sum(len(g.record.payload) for g in page) <= max_bytes
                mine += page
                position = page[-1].global_position + 1
            assert mine == [g for g in seen if g.record.stream_id == sid]
        middle = len(expected) // 2 + 1
        for sid in {sid for sid, _ in appends}:
            assert backend.read_global(middle, 1 << 20, stream_id=sid) == [
                g for g in seen if g.record.stream_id == sid and g.global_position >= middle
            ]
        assert backend.read_global(1, stream_id=99) == []
        with pytest.raises(InvalidArgument):
            backend.read_global(1, stream_id=-1)
