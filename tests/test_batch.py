"""The append argument checks and checkpoint planning (hybridlog/batch.py) against plain references.

Both have a fast path for the common case; these tests hold the fast path to the simple rule.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hybridlog import MAX_EVENT_SIZE, CheckpointPolicy, EmptyBatch, EventTooLarge, InvalidEvent, RecordKind
from hybridlog.batch import PlannedRecord, check_events, plan_batch
from hybridlog.record import checkpoint_payload


def reference_plan(payloads: list[bytes], every: int | None, since: int, first_offset: int) -> list[PlannedRecord]:
    """The rule, one event at a time: a checkpoint follows the event that makes ``every`` since the last."""
    planned: list[PlannedRecord] = []
    for payload in payloads:
        planned.append((RecordKind.EVENT, payload))
        since += 1
        if every is not None and since >= every:
            planned.append((RecordKind.CHECKPOINT, checkpoint_payload(first_offset + len(planned))))
            since = 0
    return planned


@given(
    count=st.integers(1, 60),
    every=st.none() | st.integers(1, 20),
    since=st.integers(0, 40),
    first_offset=st.integers(0, 2**40),
)
def test_plan_batch_matches_the_one_event_at_a_time_rule(
    count: int, every: int | None, since: int, first_offset: int
) -> None:
    payloads = [b"e%d" % i for i in range(count)]
    policy = CheckpointPolicy(every_records=every)
    assert plan_batch(list(payloads), policy, since, first_offset) == reference_plan(
        payloads, every, since, first_offset
    )


def test_check_events_accepts_bytes_bytearray_and_memoryview() -> None:
    raw = b"abcdef"
    checked = check_events([raw, bytearray(b"xy"), memoryview(raw)[1:3]])
    assert [bytes(e) for e in checked] == [raw, b"xy", b"bc"]


@pytest.mark.parametrize(
    ("events", "error", "message"),
    [
        ([b"ok", "text"], InvalidEvent, "event 1 is str"),
        ([b"ok", None], InvalidEvent, "event 1 is NoneType"),
        (b"one bytes object", InvalidEvent, "not one bytes"),
        (42, InvalidEvent, "not int"),
        ([], EmptyBatch, "at least one event"),
        ([memoryview(b"abcd")[::2]], InvalidEvent, "non-contiguous"),
    ],
)
def test_check_events_names_the_first_bad_event(events: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        check_events(events)  # type: ignore[arg-type]


def test_check_events_refuses_an_event_over_the_limit_on_both_paths() -> None:
    big = bytes(MAX_EVENT_SIZE + 1)
    with pytest.raises(EventTooLarge, match="event 1"):
        check_events([b"small", big])  # all plain bytes: the fast path
    with pytest.raises(EventTooLarge, match="event 1"):
        check_events([bytearray(b"small"), big])  # mixed types: the loop
