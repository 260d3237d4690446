"""The settings half of the backend contract: what a backend does with a bad clock, checkpoint
policy or compression, when it is made and when it closes.

Part of ``BackendContract`` (``hybridlog.testing.contract``), which is what a backend subclasses.
"""

from __future__ import annotations

import pytest

from hybridlog import CheckpointPolicy, InvalidConfiguration, RecordKind, StoreClosed
from hybridlog.testing.backends import Harness, fill
from hybridlog.testing.clocks import START_NS, ManualClock


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
