"""Read-only views of what the catalog records of a stream: its offset index, its checkpoint index
and its segment files (``SegmentInfo``)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from hybridlog.catalog import Catalog
from hybridlog.catalog_rows import CheckpointRow, IndexEntry, SegmentRow, damaged_hint
from hybridlog.db import sqlite_errors
from hybridlog.layout import segment_path
from hybridlog.types import Offset, StreamId

T = TypeVar("T")


class OffsetIndex:
    """Where each record of one stream is: ``lookup(offset)`` -> segment, byte position, length."""

    def __init__(self, stream_id: StreamId, catalog: Callable[[], Catalog | None], lock: threading.RLock) -> None:
        self.stream_id = stream_id
        self._catalog = catalog
        self._lock = lock

    def lookup(self, offset: int) -> IndexEntry | None:
        """Where the record at ``offset`` is; None if the index has no row for it or no catalog is open."""
        return self._ask(lambda catalog: catalog.index_entry(self.stream_id, offset), None)

    def __len__(self) -> int:
        return self._ask(lambda catalog: catalog.index_size(self.stream_id), 0)

    def entries(self, from_offset: int = 0) -> list[IndexEntry]:
        """The index rows from ``from_offset`` on, in offset order ([] if no catalog is open)."""
        return self._ask(lambda catalog: list(catalog.index_entries(self.stream_id, from_offset)), [])

    def _ask(self, ask: Callable[[Catalog], T], empty: T) -> T:
        with self._lock:
            catalog = self._catalog()
            if catalog is None:
                return empty
            with sqlite_errors("cannot read the offset index", hint=damaged_hint(catalog.path.parent)):
                return ask(catalog)


class CheckpointIndex:
    """The checkpoints of one stream, oldest first, as of when the index was taken."""

    def __init__(self, stream_id: StreamId, rows: list[CheckpointRow]) -> None:
        self.stream_id = stream_id
        self._rows = rows

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[CheckpointRow]:
        return iter(self._rows)

    def last(self) -> CheckpointRow | None:
        """The newest checkpoint, None if the stream has none."""
        return self._rows[-1] if self._rows else None

    def nearest_at_or_before(self, offset: int) -> CheckpointRow | None:
        """The checkpoint a read from ``offset`` is verified from (None: from offset 0)."""
        best = None
        for row in self._rows:
            if row.offset > offset:
                break
            best = row
        return best

    def offsets(self) -> list[Offset]:
        """The offsets of the checkpoint records, oldest first."""
        return [r.offset for r in self._rows]


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """One segment file of a stream, as the catalog records it."""

    stream_id: StreamId
    segment_no: int
    path: Path
    first_offset: Offset
    next_offset: Offset
    size_bytes: int
    sealed: bool
    digest: bytes | None


def segment_infos(data_dir: Path, stream_id: StreamId, rows: list[SegmentRow]) -> list[SegmentInfo]:
    """The catalog's segments rows of a stream, with their files' paths."""
    return [
        SegmentInfo(
            stream_id,
            r.segment_no,
            segment_path(data_dir, stream_id, r.segment_no),
            r.first_offset,
            r.next_offset,
            r.size_bytes,
            r.sealed,
            r.digest,
        )
        for r in rows
    ]
