"""The settings half of the backend contract: what a backend does with a bad clock, checkpoint
policy or compression, when it is made and when it closes.

Part of ``BackendContract`` (``hybridlog.testing.contract``), which is what a backend subclasses.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from hybridlog import CheckpointPolicy, InvalidConfiguration, RecordKind, StorageBackend, StoreClosed
from hybridlog.testing.backends import Harness, fill
from hybridlog.testing.clocks import START_NS, ManualClock

# Every call of the contract that reads or writes a backend's streams, by name.
DATA_CALLS: dict[str, Callable[[StorageBackend], object]] = {
    "stream_ids": lambda b: b.stream_ids(),
    "next_offset": lambda b: b.next_offset(1),
    "latest_chain_hash": lambda b: b.latest_chain_hash(1),
    "last_checkpoint": lambda b: b.last_checkpoint(1),
    "last_global_position": lambda b: b.last_global_position(),
    "read_global": lambda b: b.read_global(),
    "iter_records": lambda b: list(b.iter_records(1)),
    "read_from": lambda b: b.read_from(1, 0, 100),
    "read_from_genesis": lambda b: b.read_from_genesis(1, 0, 100),
    "read_records_from_genesis": lambda b: b.read_records_from_genesis(1, 0, 100),
    "read_records_verified": lambda b: b.read_records_verified(1, 0, 100),
    "offset_at": lambda b: b.offset_at(1, 0),
    "read_between": lambda b: b.read_between(1, None, None),
    "append": lambda b: b.append(2, [b"x"]),
    "append_batch": lambda b: b.append_batch(2, [b"x"], 0, None),
    "create_checkpoint": lambda b: b.create_checkpoint(1, 1, None, 1),
}


class SettingsContract:
    """Bad settings are InvalidConfiguration, the same in every backend."""

    def test_a_clock_reading_gone_bad_at_close_closes_the_backend_and_writes_nothing(self, harness: Harness) -> None:
        """Closing writes on-close checkpoints with the clock's reading: a reading a record cannot
        hold raises InvalidConfiguration from ``close``, no checkpoint is written, and the backend
        is closed anyway (a second ``close`` does nothing, reads raise StoreClosed)."""
        clock = ManualClock(START_NS)
        backend = harness.make(clock=clock, policy=CheckpointPolicy.every(100, on_close=True))
        fill(backend, 1, [[b"a"]])
        fill(backend, 2, [[b"b"]])
        clock.now = 1.5  # type: ignore[assignment]
        with pytest.raises(InvalidConfiguration):
            backend.close()
        clock.now = START_NS + 1
        backend.close()
        with pytest.raises(StoreClosed):
            backend.next_offset(1)
        for sid, payload in ((1, b"a"), (2, b"b")):
            records = harness.records_after_close(backend, sid)
            assert [(r.kind, r.payload) for r in records] == [(RecordKind.EVENT, payload)]

    @pytest.mark.parametrize(
        "settings_",
        [{"clock": 5}, {"clock": "now"}, {"policy": 3}, {"policy": "every 10"}, {"compression": "zstd"}],
        ids=repr,
    )
    def test_a_bad_clock_policy_or_compression_is_invalid_configuration_at_once(
        self, harness: Harness, settings_: dict[str, object]
    ) -> None:
        """A clock that is not a function, a checkpoint policy that is not a CheckpointPolicy and
        a compression that is not a CompressionKind are refused when the backend is made."""
        with pytest.raises(InvalidConfiguration):
            harness.make(**settings_)  # type: ignore[arg-type]

    @pytest.mark.parametrize("call", sorted(DATA_CALLS))
    def test_every_call_on_a_closed_backend_is_store_closed(self, harness: Harness, call: str) -> None:
        """Once closed, a backend answers no question about its streams and takes no append: every
        such call raises StoreClosed (none returns what the backend held, or an empty answer)."""
        backend = harness.make()
        fill(backend, 1, [[b"a"]])
        backend.close()
        with pytest.raises(StoreClosed):
            DATA_CALLS[call](backend)
