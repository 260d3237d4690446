"""Verified runs: where records this process has verified are, and the hashes it verified.

A verified read starts at the nearest checkpoint at or before its offset (trusted: its hash is in
the catalog) and walks forward, so a point read deep into a checkpoint interval re-verifies up to
a whole interval of records. To make repeated point reads cheap without trusting anything new,
the first point read in an interval walks on to the end of the interval (the next checkpoint, the
head, or ``MAX_RUN`` records) and remembers, for each record, where its frame is and the hash the
walk verified: a *verified run*.

A later point read inside a run reads that one frame and recomputes the record's hash from the
bytes on disk (``walk.reverify_frame``). Equal to the remembered hash, it proves the bytes are the
record the walk verified (BLAKE3 is collision resistant), so the read proves exactly what the
walk proved. A short read or any mismatch drops the run and the read falls back to the walk,
which reports damage precisely. Runs are dropped whenever this process changes the store other
than by appending (recovery, repair, rebuilds), and a read-only store drops them whenever the
catalog's recovery log has a new entry (checked when SQLite's ``data_version`` says another
connection committed): recovery and repair log every action that moves or cuts bytes.

Memory: about 52 bytes per remembered record, bounded by ``max_records`` (least recently used
runs go first).
"""

from __future__ import annotations

import os
import threading
from array import array
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from hybridlog.types import HASH_SIZE, ChainHash, StreamId

MAX_RUN = 65_536
"""The most records one run remembers (a stream without checkpoints gets runs from offset 0 only)."""

DEFAULT_MAX_RECORDS = 262_144
"""The default bound on remembered records, across all runs (about 13 MiB)."""

_MAX_OPEN_FILES = 64


class VerifiedRun:
    """Consecutive verified records of one stream from ``first_offset``: frame places and hashes."""

    __slots__ = ("end", "first_offset", "hashes", "positions", "segment_nos", "sizes", "stream_id")

    def __init__(self, stream_id: StreamId, first_offset: int) -> None:
        self.stream_id = stream_id
        self.first_offset = first_offset
        self.end = first_offset  # the offset after the run's last record
        self.segment_nos = array("Q")
        self.positions = array("Q")
        self.sizes = array("L")
        self.hashes: bytes | bytearray = bytearray()  # made bytes when the run is remembered

    def __len__(self) -> int:
        return len(self.positions)

    def add(self, segment_no: int, position: int, size: int, record_hash: bytes) -> None:
        """Remember the next record (the caller verified it, at offset ``end``)."""
        self.segment_nos.append(segment_no)
        self.positions.append(position)
        self.sizes.append(size)
        self.hashes += record_hash
        self.end += 1


class VerifiedRunCache:
    """Runs by stream, least recently used first out, and the segment files they point into.

    ``segment_path(stream_id, segment_no)`` names a segment file. Thread-safe.
    """

    def __init__(self, max_records: int, segment_path: Callable[[StreamId, int], Path]) -> None:
        self.max_records = max_records
        self._segment_path = segment_path
        self._lock = threading.Lock()
        self._runs: OrderedDict[tuple[StreamId, int], VerifiedRun] = OrderedDict()
        self._starts: dict[StreamId, list[int]] = {}  # each stream's run first offsets, sorted
        self._records = 0
        self._files: dict[tuple[StreamId, int], int] = {}
        # A read-only store's view of the catalog: the data_version last seen, and the recovery
        # log's last entry the runs were built under (see reads.Reads._runs_still_hold).
        self.data_version: int | None = None
        self.generation: int | None = None

    @property
    def enabled(self) -> bool:
        """Whether runs are remembered at all (``max_records`` 0 turns the cache off)."""
        return self.max_records > 0

    def find(self, stream_id: StreamId, offset: int) -> VerifiedRun | None:
        """The run holding ``offset``, if one is remembered."""
        with self._lock:
            starts = self._starts.get(stream_id)
            if not starts:
                return None
            i = bisect_right(starts, offset) - 1
            if i < 0:
                return None
            run = self._runs[(stream_id, starts[i])]
            if offset >= run.end:
                return None
            self._runs.move_to_end((stream_id, starts[i]))
            return run

    def add(self, run: VerifiedRun) -> None:
        """Remember ``run`` (replacing one that starts at the same offset), evicting old runs."""
        if not run or len(run) > self.max_records:
            return
        run.hashes = bytes(run.hashes)  # a read then slices out a bytes object, with no copy of a copy
        with self._lock:
            self._forget((run.stream_id, run.first_offset))
            starts = self._starts.setdefault(run.stream_id, [])
            i = bisect_right(starts, run.first_offset)
            # Runs start at checkpoints and stop before the next one, so they never overlap; a
            # neighbour that does (the store changed under us) is dropped rather than trusted.
            while i < len(starts) and starts[i] < run.end:
                self._forget((run.stream_id, starts[i]))
            if i > 0 and self._runs[(run.stream_id, starts[i - 1])].end > run.first_offset:
                self._forget((run.stream_id, starts[i - 1]))
            self._runs[(run.stream_id, run.first_offset)] = run
            starts = self._starts.setdefault(run.stream_id, [])  # _forget drops a list it empties
            starts.insert(bisect_right(starts, run.first_offset), run.first_offset)
            self._records += len(run)
            while self._records > self.max_records:
                self._forget(next(iter(self._runs)))

    def drop(self, run: VerifiedRun) -> None:
        """Forget ``run`` if it is still the run remembered at its start (rereading it did not verify)."""
        with self._lock:
            if self._runs.get((run.stream_id, run.first_offset)) is run:
                self._forget((run.stream_id, run.first_offset))

    def clear(self) -> None:
        """Forget every run and close every file."""
        with self._lock:
            self._runs.clear()
            self._starts.clear()
            self._records = 0
            self.data_version = None
            self.generation = None
            self._close_files()

    def read(self, run: VerifiedRun, offset: int) -> tuple[bytes, ChainHash] | None:
        """The frame bytes now on disk where the run's record at ``offset`` was, and its verified
        hash; None if the segment file is gone (or cannot be opened)."""
        i = offset - run.first_offset
        key = (run.stream_id, run.segment_nos[i])
        with self._lock:  # held while reading: ``clear`` must not close the file under us
            fd = self._files.get(key)
            if fd is None:
                if len(self._files) >= _MAX_OPEN_FILES:
                    self._close_files()
                try:
                    fd = os.open(self._segment_path(*key), os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                except OSError:  # gone or unreadable: the verified walk says which
                    return None
                self._files[key] = fd
            frame = os.pread(fd, run.sizes[i], run.positions[i])
        return frame, run.hashes[i * HASH_SIZE : (i + 1) * HASH_SIZE]  # type: ignore[return-value]  # bytes

    def _forget(self, key: tuple[StreamId, int]) -> None:
        run = self._runs.pop(key, None)
        if run is None:
            return
        self._records -= len(run)
        starts = self._starts[key[0]]
        starts.pop(bisect_right(starts, key[1]) - 1)
        if not starts:
            del self._starts[key[0]]

    def _close_files(self) -> None:
        for fd in self._files.values():
            os.close(fd)
        self._files.clear()
