"""Every store the benchmark measures, behind one small interface: open a writer, open a reader.

* ``hybridlog``: ``Storage.append_batch`` (default checkpoint policy) and
  ``Storage.iter_records(anchored=False)``, compression none or zstd (zstd trains the stream a
  dictionary after its first 1,000 events and compresses the later ones with it).
* ``raw_floor``: the least a hash-chained log costs in Python: records ``u32 length | 32-byte
  BLAKE3 chain hash | payload`` appended to one file, one ``os.write`` per batch, ``os.fdatasync``
  when fsync is on (issue 12 defines the floor as write + fdatasync: the file's bytes and size
  durable, its times not); no index, no catalog, no recovery. Reading verifies every hash and link.
* ``sqlite_normal`` / ``sqlite_full``: one apsw table ``events(stream, offset, prev_hash, hash,
  payload)``, the same chain computed in Python, one transaction per batch, WAL, with
  ``synchronous=NORMAL`` (a commit is not fsynced) or ``FULL`` (every commit fsyncs the WAL).
  The pragma decides their durability, so each is measured once per batch size and compared
  with hybridlog's fsync-off and fsync-on rows alike.
* ``eventsourcing``: the eventsourcing library's ``SQLiteApplicationRecorder`` (what an
  ``Application`` on SQLite uses; it also hands out notification ids), fed ``StoredEvent``
  objects directly, one ``insert_events`` call per batch, in a fresh SQLite file. The library
  leaves ``synchronous`` at SQLite's default (FULL: an fsync per commit), which the fsync-on rows
  use; for the fsync-off rows the benchmark sets ``synchronous=NORMAL`` on its one pooled
  connection. It keeps no hash chain, so its read is a read, not a verify. Optional: the ``bench`` extra installs it.
"""

from __future__ import annotations

import importlib.metadata
import os
import struct
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import apsw
import blake3

from hybridlog import CompressionKind, RecordKind, Storage
from hybridlog.layout import DICTIONARY_SUFFIX, SEGMENT_SUFFIX, stream_path
from hybridlog.segment import SegmentReader

try:
    from eventsourcing.persistence import StoredEvent  # type: ignore[import-not-found,unused-ignore]
    from eventsourcing.sqlite import (  # type: ignore[import-not-found,unused-ignore]
        SQLiteApplicationRecorder,
        SQLiteDatastore,
    )
except ImportError:  # the optional `bench` extra is not installed
    HAVE_EVENTSOURCING = False
else:
    HAVE_EVENTSOURCING = True

STREAM_ID = 1
GENESIS = bytes(32)
NONE = CompressionKind.NONE.value
ZSTD = CompressionKind.ZSTD.value

HYBRIDLOG = "hybridlog"
RAW_FLOOR = "raw_floor"
SQLITE_NORMAL = "sqlite_normal"
SQLITE_FULL = "sqlite_full"
EVENTSOURCING = "eventsourcing"
ALL_NAMES = (HYBRIDLOG, RAW_FLOOR, SQLITE_NORMAL, SQLITE_FULL, EVENTSOURCING)
NOT_INSTALLED = "not installed (pip install -e '.[bench]')"


class BenchError(Exception):
    """Raised when a store reads back something other than what was written."""


class Writer(Protocol):
    """An open store that appends batches to stream STREAM_ID."""

    def append_batch(self, events: Sequence[bytes]) -> None: ...

    def close(self) -> None: ...


class Reader(Protocol):
    """An open store that reads stream STREAM_ID from the start, verifying every record it can."""

    def read_verify(self) -> tuple[int, int]:
        """Read (and verify) the whole stream; returns (events, payload bytes)."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Space:
    """How a store accounts for its own bytes (hybridlog's catalog does)."""

    payload_bytes: int
    stored_bytes: int
    compression_ratio: float | None
    """Payload bytes before compression over payload bytes stored (framing excluded)."""
    stored_payload_bytes: int | None = None
    """Payload bytes as stored (framing excluded)."""
    dictionary_bytes: int = 0
    """Bytes of the stream's zstd dictionary files (hybridlog with zstd)."""
    dictionary_ratio: float | None = None
    """Over the events stored from the first one compressed with a dictionary on: payload bytes
    before compression over payload bytes stored (None: no dictionary came into use)."""
    events_before_dictionary: int | None = None
    """How many events were stored before the first one compressed with a dictionary."""


class Contender(ABC):
    """A store the benchmark can measure."""

    name: str
    summary: str
    """One line on what is measured."""
    compressions: tuple[str, ...] = (NONE,)
    fsync_modes: tuple[bool, ...] = (False, True)
    """The fsync settings it is measured with (append cases with another setting are skipped)."""
    pragma_durability = False
    """True when its own setting, not the per-batch fsync flag, decides durability."""
    verifies_chain = True
    measures_read = True

    @abstractmethod
    def durability(self, fsync: bool) -> str:
        """What one acknowledged batch costs in syncs, in words."""

    @abstractmethod
    def open_writer(self, directory: Path, *, fsync: bool, compression: str) -> Writer: ...

    def open_reader(self, directory: Path) -> Reader:
        raise BenchError(f"{self.name} is not measured reading")

    def space(self, directory: Path) -> Space | None:
        return None


_LINK = struct.Struct("<QQ")
_LENGTH = struct.Struct("<I")


def chain_hash(prev: bytes, offset: int, payload: bytes) -> bytes:
    """The contenders' record hash: BLAKE3 over the previous hash, stream id, offset and payload."""
    return blake3.blake3(prev + _LINK.pack(STREAM_ID, offset) + payload).digest()


# --- hybridlog -------------------------------------------------------------------------------------


class HybridlogWriter:
    def __init__(self, directory: Path, *, fsync: bool, compression: str) -> None:
        self._storage = Storage(directory / "store", compression=CompressionKind(compression))
        self._fsync = fsync
        self._offset = 0
        self._head: bytes | None = None

    def append_batch(self, events: Sequence[bytes]) -> None:
        self._offset, self._head = self._storage.append_batch(
            STREAM_ID, events, self._offset, self._head, fsync=self._fsync
        )

    def close(self) -> None:
        self._storage.close()


class HybridlogReader:
    def __init__(self, directory: Path) -> None:
        self._storage = Storage(directory / "store", read_only=True)

    def read_verify(self) -> tuple[int, int]:
        events = payload_bytes = 0
        for record in self._storage.iter_records(STREAM_ID, 0, anchored=False):
            if record.kind is RecordKind.EVENT:
                events += 1
                payload_bytes += len(record.payload)
        return events, payload_bytes

    def close(self) -> None:
        self._storage.close()


class HybridlogContender(Contender):
    name = HYBRIDLOG
    summary = "Storage.append_batch, default checkpoint policy; reads iter_records(anchored=False)"
    compressions = (NONE, ZSTD)

    def durability(self, fsync: bool) -> str:
        return "segment fsync per batch" if fsync else "no fsync"

    def open_writer(self, directory: Path, *, fsync: bool, compression: str) -> Writer:
        return HybridlogWriter(directory, fsync=fsync, compression=compression)

    def open_reader(self, directory: Path) -> Reader:
        return HybridlogReader(directory)

    def space(self, directory: Path) -> Space | None:
        """The catalog's own accounting (``Storage.stats``), and the dictionaries' share from the files."""
        with Storage(directory / "store", read_only=True) as storage:
            stats = [s for s in storage.stats() if s.stream_id == STREAM_ID]
        if not stats:
            raise BenchError("the catalog has no row for the benchmark stream")
        stream_dir = stream_path(directory / "store", STREAM_ID)
        raw = stored = before = 0
        in_use = False
        for segment in sorted(stream_dir.glob(f"*{SEGMENT_SUFFIX}")):
            with SegmentReader(segment) as reader:
                for frame in reader.frames():
                    if frame.header.kind != RecordKind.EVENT:
                        continue
                    in_use = in_use or frame.header.uses_dictionary
                    if in_use:
                        raw += frame.header.raw_len
                        stored += frame.header.stored_len
                    else:
                        before += 1
        return Space(
            stats[0].payload_bytes,
            stats[0].stored_bytes,
            stats[0].compression_ratio,
            stored_payload_bytes=stats[0].stored_payload_bytes,
            dictionary_bytes=sum(path.stat().st_size for path in stream_dir.glob(f"*{DICTIONARY_SUFFIX}")),
            dictionary_ratio=raw / stored if in_use else None,
            events_before_dictionary=before if in_use else None,
        )


# --- raw floor -------------------------------------------------------------------------------------


class RawFloorWriter:
    def __init__(self, directory: Path, *, fsync: bool) -> None:
        self._fd = os.open(directory / "log.bin", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._fsync = fsync
        self._offset = 0
        self._head = GENESIS

    def append_batch(self, events: Sequence[bytes]) -> None:
        buffer = bytearray()
        offset, head = self._offset, self._head
        for payload in events:
            head = chain_hash(head, offset, payload)
            buffer += _LENGTH.pack(len(payload))
            buffer += head
            buffer += payload
            offset += 1
        view = memoryview(buffer)
        while view:
            view = view[os.write(self._fd, view) :]
        if self._fsync:
            os.fdatasync(self._fd)  # the floor of issue 12: write + fdatasync
        self._offset, self._head = offset, head

    def close(self) -> None:
        os.close(self._fd)


class RawFloorReader:
    def __init__(self, directory: Path) -> None:
        self._path = directory / "log.bin"

    def read_verify(self) -> tuple[int, int]:
        data = self._path.read_bytes()
        position = offset = payload_bytes = 0
        prev = GENESIS
        while position < len(data):
            (length,) = _LENGTH.unpack_from(data, position)
            stored = data[position + 4 : position + 36]
            payload = data[position + 36 : position + 36 + length]
            if len(payload) != length:
                raise BenchError(f"raw_floor: record {offset} is cut short")
            prev = chain_hash(prev, offset, payload)
            if prev != stored:
                raise BenchError(f"raw_floor: record {offset} does not verify")
            position += 36 + length
            offset += 1
            payload_bytes += length
        return offset, payload_bytes

    def close(self) -> None:
        pass


class RawFloorContender(Contender):
    name = RAW_FLOOR
    summary = "length | BLAKE3 chain hash | payload in one file, one os.write per batch; no index"

    def durability(self, fsync: bool) -> str:
        return "os.fdatasync per batch" if fsync else "no fsync"

    def open_writer(self, directory: Path, *, fsync: bool, compression: str) -> Writer:
        return RawFloorWriter(directory, fsync=fsync)

    def open_reader(self, directory: Path) -> Reader:
        return RawFloorReader(directory)


# --- SQLite-only store -----------------------------------------------------------------------------

_SQLITE_SCHEMA = """
CREATE TABLE events (
    stream    INTEGER NOT NULL,
    offset    INTEGER NOT NULL,
    prev_hash BLOB NOT NULL,
    hash      BLOB NOT NULL,
    payload   BLOB NOT NULL,
    PRIMARY KEY (stream, offset)
) STRICT, WITHOUT ROWID
"""


class SqliteWriter:
    def __init__(self, directory: Path, *, synchronous: str) -> None:
        self._conn = apsw.Connection(str(directory / "events.db"))
        self._conn.pragma("journal_mode", "wal")
        self._conn.pragma("synchronous", synchronous)
        self._conn.execute(_SQLITE_SCHEMA)
        self._offset = 0
        self._head = GENESIS

    def append_batch(self, events: Sequence[bytes]) -> None:
        rows: list[tuple[int, int, bytes, bytes, bytes]] = []
        offset, head = self._offset, self._head
        for payload in events:
            digest = chain_hash(head, offset, payload)
            rows.append((STREAM_ID, offset, head, digest, payload))
            head = digest
            offset += 1
        with self._conn:
            self._conn.executemany(
                "INSERT INTO events (stream, offset, prev_hash, hash, payload) VALUES (?, ?, ?, ?, ?)", rows
            )
        self._offset, self._head = offset, head

    def close(self) -> None:
        self._conn.close()


class SqliteReader:
    def __init__(self, directory: Path) -> None:
        self._conn = apsw.Connection(str(directory / "events.db"), flags=apsw.SQLITE_OPEN_READONLY)

    def read_verify(self) -> tuple[int, int]:
        expected = payload_bytes = 0
        prev = GENESIS
        rows = self._conn.execute(
            "SELECT offset, prev_hash, hash, payload FROM events WHERE stream = ? ORDER BY offset", (STREAM_ID,)
        )
        for offset, prev_hash, stored, payload in rows:
            if offset != expected or prev_hash != prev or not isinstance(payload, bytes):
                raise BenchError(f"sqlite: row {expected} does not link")
            prev = chain_hash(prev, expected, payload)
            if prev != stored:
                raise BenchError(f"sqlite: row {expected} does not verify")
            expected += 1
            payload_bytes += len(payload)
        return expected, payload_bytes

    def close(self) -> None:
        self._conn.close()


class SqliteContender(Contender):
    pragma_durability = True

    def __init__(self, synchronous: str) -> None:
        self.synchronous = synchronous
        self.name = SQLITE_FULL if synchronous == "full" else SQLITE_NORMAL
        self.summary = f"one apsw table, chain in Python, a transaction per batch, {self.durability(True)}"
        # FULL is measured with the fsync-on sizes, NORMAL with the fsync-off ones; both are
        # compared with every hybridlog row. Reading does not depend on the pragma: NORMAL reads.
        self.fsync_modes = (synchronous == "full",)
        self.measures_read = synchronous == "normal"

    def durability(self, fsync: bool) -> str:
        return "WAL, synchronous=FULL (fsync per commit)" if self.synchronous == "full" else "WAL, synchronous=NORMAL"

    def open_writer(self, directory: Path, *, fsync: bool, compression: str) -> Writer:
        return SqliteWriter(directory, synchronous=self.synchronous)

    def open_reader(self, directory: Path) -> Reader:
        return SqliteReader(directory)


# --- eventsourcing ---------------------------------------------------------------------------------

ES_TOPIC = "bench.events:JsonEvent"
ES_ORIGINATOR = uuid.UUID(int=STREAM_ID)
ES_PAGE = 1000
_SQLITE_NORMAL = 1
_SQLITE_FULL = 2


class EventsourcingWriter:
    def __init__(self, directory: Path, *, fsync: bool) -> None:
        # One pooled connection, so the pragma below holds for every statement the recorder runs.
        self._datastore = SQLiteDatastore(str(directory / "eventsourcing.db"), pool_size=1, max_overflow=0)
        self._recorder = SQLiteApplicationRecorder(self._datastore)
        self._recorder.create_table()
        # FULL is SQLite's default, which the library keeps; set both ways so the rows mean what they say.
        self._pragma("PRAGMA synchronous=FULL" if fsync else "PRAGMA synchronous=NORMAL")
        self.synchronous = self._pragma("PRAGMA synchronous")
        if self.synchronous != (_SQLITE_FULL if fsync else _SQLITE_NORMAL):
            raise BenchError(f"eventsourcing: PRAGMA synchronous is {self.synchronous} after setting it")
        self._version = 0

    def _pragma(self, sql: str) -> int | None:
        with self._datastore.get_connection(commit=True) as conn:
            cursor = conn.cursor()
            cursor.execute(sql)
            row = cursor.fetchone()
        return None if row is None else int(row[0])

    def append_batch(self, events: Sequence[bytes]) -> None:
        first = self._version + 1
        stored = [
            StoredEvent(originator_id=ES_ORIGINATOR, originator_version=first + i, topic=ES_TOPIC, state=payload)
            for i, payload in enumerate(events)
        ]
        self._recorder.insert_events(stored)
        self._version += len(events)

    def close(self) -> None:
        self._datastore.close()


class EventsourcingReader:
    def __init__(self, directory: Path) -> None:
        self._datastore = SQLiteDatastore(str(directory / "eventsourcing.db"), pool_size=1, max_overflow=0)
        self._recorder = SQLiteApplicationRecorder(self._datastore)

    def read_verify(self) -> tuple[int, int]:
        """Every event in version order, a page at a time; nothing to verify (no hash chain)."""
        events = payload_bytes = version = 0
        while True:
            page = self._recorder.select_events(ES_ORIGINATOR, gt=version, limit=ES_PAGE)
            for stored in page:
                if stored.originator_version != version + 1:
                    raise BenchError(f"eventsourcing: version {stored.originator_version} after {version}")
                version += 1
                events += 1
                payload_bytes += len(stored.state)
            if len(page) < ES_PAGE:
                return events, payload_bytes

    def close(self) -> None:
        self._datastore.close()


class EventsourcingContender(Contender):
    name = EVENTSOURCING
    summary = "SQLiteApplicationRecorder.insert_events(StoredEvent...) per batch, WAL; no hash chain"
    verifies_chain = False

    def durability(self, fsync: bool) -> str:
        return "WAL, synchronous=FULL (its default)" if fsync else "WAL, synchronous=NORMAL (set by the bench)"

    def open_writer(self, directory: Path, *, fsync: bool, compression: str) -> Writer:
        return EventsourcingWriter(directory, fsync=fsync)

    def open_reader(self, directory: Path) -> Reader:
        return EventsourcingReader(directory)


def eventsourcing_version() -> str | None:
    """The installed eventsourcing version, or None when the library cannot be imported."""
    return importlib.metadata.version("eventsourcing") if HAVE_EVENTSOURCING else None


def available_contenders() -> tuple[list[Contender], dict[str, str]]:
    """The contenders this run measures, and those it cannot (name -> why)."""
    contenders: list[Contender] = [
        HybridlogContender(),
        RawFloorContender(),
        SqliteContender("normal"),
        SqliteContender("full"),
    ]
    missing: dict[str, str] = {}
    if HAVE_EVENTSOURCING:
        contenders.append(EventsourcingContender())
    else:
        missing[EVENTSOURCING] = NOT_INSTALLED
    return contenders, missing
