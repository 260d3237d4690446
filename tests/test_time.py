"""Reading by time in ``Storage``: ``offset_at`` and ``read_between`` over real segment files.

The contract both backends keep (boundaries, equal timestamps, a clock stepping back) is in
``test_contract.py``; here is what only the file-backed store can get wrong: the clamp surviving a
reopen, windows across segment files and checkpoints, verification of what a window returns,
and ``offset_at`` being a binary search (a handful of lookups, not a scan).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hybridlog import CheckpointPolicy, IntegrityError, Storage
from hybridlog.layout import segment_path
from hybridlog.testing.damage import flip_byte, genesis_records

T0 = 1_700_000_000_000_000_000


class SetClock:
    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def test_the_clamp_survives_a_reopen(store_dir: Path) -> None:
    clock = SetClock(T0 + 500)
    with Storage(store_dir, clock=clock, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        store.append(1, [b"a"])
    clock.now = T0 + 100  # the clock is behind the stream's last record now
    with Storage(store_dir, clock=clock, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        store.append(1, [b"b"])
        assert [r.timestamp_ns for r in genesis_records(store, 1)] == [T0 + 500, T0 + 500]
        assert store.offset_at(1, T0 + 100) == 0
        assert store.offset_at(1, T0 + 501) == 2
        assert store.read_between(1, T0 + 100, T0 + 500) == []


def test_windows_across_segments_and_checkpoints_match_a_scan(store_dir: Path) -> None:
    clock = SetClock()
    policy = CheckpointPolicy.every(5, on_close=False)
    with Storage(store_dir, clock=clock, checkpoint_policy=policy, max_segment_size=4096) as store:
        for i in range(120):
            clock.now = T0 + (i // 3) * 10 - (7 if i % 11 == 0 else 0)  # runs of equal times, steps back
            store.append(1, [b"%04d" % i + b"." * 200])
        assert store.segment_count(1) > 3
        records = genesis_records(store, 1)
        for probe in range(-10, 420, 7):
            t = T0 + probe
            expected_offset = next((r.offset for r in records if r.timestamp_ns >= t), len(records))
            assert store.offset_at(1, t) == expected_offset
            window = store.read_between(1, t, t + 45, max_bytes=1 << 20)
            assert window == [r for r in records if t <= r.timestamp_ns < t + 45]
        # max_bytes pages through a window without losing or repeating a record
        page = store.read_between(1, T0 + 100, T0 + 300, max_bytes=1000)
        assert 1 <= len(page) < len([r for r in records if T0 + 100 <= r.timestamp_ns < T0 + 300])
        assert sum(len(r.payload) for r in page) <= 1000


def test_offset_at_is_a_binary_search(store_dir: Path) -> None:
    """A stream of 2000 records: offset_at asks the catalog for a few rows, not for all of them."""
    clock = SetClock()
    with Storage(store_dir, clock=clock, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        for i in range(200):
            clock.now = T0 + i * 1000
            store.append(1, [b"%d" % j for j in range(10)])
    with Storage(store_dir, read_only=True) as reader:
        assert reader.read_from(1, 0, 0) == [b"0"]  # opens the catalog
        catalog = reader._catalog
        assert catalog is not None
        lookups: list[str] = []

        def count(_cursor: object, sql: str, _bindings: object) -> bool:
            if "FROM batches" in sql:
                lookups.append(sql)
            return True

        catalog.conn.exec_trace = count
        assert reader.offset_at(1, T0 + 123_456) == 1240
        assert 1 <= len(lookups) <= 12  # log2(2000) ~ 11


def test_a_tampered_record_in_the_window_raises(store_dir: Path) -> None:
    clock = SetClock()
    with Storage(store_dir, clock=clock, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        for i in range(4):
            clock.now = T0 + i * 100
            store.append(1, [b"event-%d" % i])
        entry = store.offset_index(1).lookup(2)
        assert entry is not None
    flip_byte(segment_path(store_dir, 1, entry.segment_no), entry.position + entry.length - 20)
    with Storage(store_dir, read_only=True) as reader:
        with pytest.raises(IntegrityError) as caught:
            reader.read_between(1, T0 + 150, None)
        assert caught.value.offset == 2
        assert [r.payload for r in reader.read_between(1, None, T0 + 200)] == [b"event-0", b"event-1"]
