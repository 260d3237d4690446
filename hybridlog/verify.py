"""Whole-store verification: walk every stream's chain and report what holds and what does not.

``verify_store`` never prints and never changes anything; it returns a ``VerifyReport`` that the
CLI renders. A stream passes when every record links to the one before it and the last one
matches the catalog's chain head (see the trust model in docs/format.md). Records a repair
isolated (``stream_repair.py``) are listed in the verdict, not counted as damage: the walk goes on
after them from the link the next record stores, as reads do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from hybridlog.errors import IntegrityError, RecordIsolated
from hybridlog.storage import Storage
from hybridlog.types import ChainHash, StreamId


@dataclass(slots=True)
class StreamVerdict:
    stream_id: StreamId
    records: int
    head: ChainHash | None
    error: IntegrityError | None = None
    isolated: list[tuple[int, int]] = field(default_factory=list)
    """(first offset, next offset) of each range of records a repair isolated."""

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict[str, object]:
        err = self.error
        return {
            "stream_id": self.stream_id,
            "ok": self.ok,
            "records_verified": self.records,
            "head": self.head.hex() if self.head else None,
            "isolated": [{"first_offset": first, "next_offset": nxt} for first, nxt in self.isolated],
            "error": None
            if err is None
            else {
                "type": type(err).__name__,
                "message": err.message,
                "offset": err.offset,
                "segment": str(err.segment) if err.segment else None,
                "position": err.position,
                "hint": err.hint,
            },
        }


@dataclass(slots=True)
class VerifyReport:
    streams: list[StreamVerdict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.streams)

    @property
    def records(self) -> int:
        return sum(s.records for s in self.streams)

    def as_dict(self) -> dict[str, object]:
        return {"ok": self.ok, "records_verified": self.records, "streams": [s.as_dict() for s in self.streams]}


def verify_store(
    storage: Storage,
    stream_ids: list[int] | None = None,
    *,
    from_genesis: bool = True,
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Verify the given streams (default: all); ``progress`` is called with each record count done."""
    report = VerifyReport()
    for sid in storage.stream_ids() if stream_ids is None else [StreamId(s) for s in stream_ids]:
        verdict = StreamVerdict(sid, 0, None)
        start: int | None = 0 if from_genesis else _last_checkpoint_offset(storage, sid)
        anchored = not from_genesis
        while start is not None:
            start, anchored = _verify_from(storage, verdict, start, anchored, progress), True
        report.streams.append(verdict)
    return report


def _verify_from(
    storage: Storage, verdict: StreamVerdict, start: int, anchored: bool, progress: Callable[[int], None] | None
) -> int | None:
    """Walk one stream from ``start``; returns where to go on after isolated records (None: done)."""
    try:
        for record in storage.iter_records(verdict.stream_id, start, anchored=anchored):
            verdict.records += 1
            verdict.head = record.hash
            if progress is not None:
                progress(1)
    except RecordIsolated as e:
        verdict.isolated.append((e.first_offset, e.next_offset))
        return e.next_offset
    except IntegrityError as e:
        verdict.error = e
    return None


def _last_checkpoint_offset(storage: Storage, stream_id: StreamId) -> int:
    last = storage.last_checkpoint(stream_id)
    return last[0] if last else 0
