#!/usr/bin/env python3
"""Baseline benchmark for hybridlog: append and read + full-verify throughput, with contenders.

Workloads (one function each, ``run_append`` and ``run_read_verify``):

* ``append``: realistic 256-byte JSON events appended to one stream in batches of 1, 100 and
  1000, fsync off and on, compression none and zstd (for contenders that compress). Reported as
  events/s and payload MB/s; for hybridlog also the compression ratio, payload bytes / stored
  bytes as the catalog's ``streams`` table counts them (stored bytes include record framing).
* ``read_verify``: a stream written beforehand (batches of 1000, fsync off) is read back from
  offset 0 and its whole hash chain verified, in a fresh reader. The page cache is warm, so this
  measures the CPU cost of reading and verifying, not the disk.

Contenders, measured in the same run for context (``CONTENDERS``):

* ``hybridlog``: ``Storage.append_batch`` / ``Storage.iter_records(anchored=False)``.
* ``raw_floor``: what a minimal hash-chained log costs in Python: each record is
  ``u32 length | 32-byte BLAKE3 chain hash | payload``, one ``os.write`` per batch, ``os.fsync``
  when asked, no index and no catalog. Reading verifies every hash and link.
* ``sqlite``: the same chain kept in one SQLite table through apsw (WAL; synchronous NORMAL with
  fsync off, FULL with fsync on), one transaction per batch.

Contenders do not compress; a hybridlog zstd row is compared with their uncompressed figures
for the same batch size and fsync setting. Every store lives in a fresh temporary directory.
Progress goes to stderr, the tables to stdout, and everything to the ``--json`` file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import gc
import importlib.metadata
import json
import os
import platform
import random
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import apsw
import blake3

from hybridlog import CheckpointPolicy, CompressionKind, RecordKind, Storage

JSONValue = str | int | float | bool | list[float] | None
Result = dict[str, JSONValue]
T = TypeVar("T")

EVENT_SIZE = 256
STREAM_ID = 1
GENESIS = bytes(32)
MB = 1_000_000
COMPRESSIONS = tuple(kind.value for kind in CompressionKind)


class BenchError(Exception):
    """Raised when a store reads back something other than what was written."""


# --- events ----------------------------------------------------------------------------------------

_WORD_TEXT = (
    "account balance transfer pending settled refund invoice customer merchant approved declined review "
    "payment card ledger audit daily limit risk score manual override branch region north south east west "
    "priority standard express delivery warehouse shipment order item quantity discount coupon loyalty "
    "points tier gold silver bronze session login logout device mobile desktop browser address verified "
    "email phone update profile consent policy retention archive export report quarterly annual summary"
)
_WORDS = _WORD_TEXT.split()
_EVENT_TYPES = (
    "payment.authorized",
    "payment.captured",
    "payment.refunded",
    "order.created",
    "order.shipped",
    "order.cancelled",
    "account.opened",
    "account.updated",
    "user.login",
    "user.logout",
)
_CURRENCIES = ("EUR", "USD", "GBP", "CHF", "JPY", "SEK")
_COUNTRIES = ("DE", "FR", "US", "GB", "CH", "JP", "SE", "NL", "ES", "IT")
_EPOCH = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def make_event(rng: random.Random, seq: int) -> bytes:
    """One JSON event of exactly EVENT_SIZE bytes: varied fields, padded with free text from a word list."""
    when = _EPOCH + dt.timedelta(seconds=(seq + rng.random()) * 0.25)
    fields: dict[str, object] = {
        "id": f"evt_{seq:010d}_{rng.getrandbits(32):08x}",
        "type": rng.choice(_EVENT_TYPES),
        "ts": when.isoformat(timespec="milliseconds"),
        "account": f"acct-{rng.randrange(1_000_000):06d}",
        "amount": round(rng.uniform(0.5, 25_000.0), 2),
        "currency": rng.choice(_CURRENCIES),
        "country": rng.choice(_COUNTRIES),
        "attempt": rng.randint(1, 3),
        "note": "",
    }
    room = EVENT_SIZE - len(json.dumps(fields, separators=(",", ":")))
    words: list[str] = []
    while len(" ".join(words)) < room:
        words.append(rng.choice(_WORDS))
    fields["note"] = " ".join(words)[:room]
    event = json.dumps(fields, separators=(",", ":")).encode("ascii")
    if len(event) != EVENT_SIZE:
        raise BenchError(f"generated a {len(event)}-byte event, expected {EVENT_SIZE}")
    return event


def make_event_pool(count: int, seed: int) -> list[bytes]:
    """``count`` distinct events from a seeded generator; workloads cycle through the pool."""
    rng = random.Random(seed)
    return [make_event(rng, seq) for seq in range(count)]


def make_batches(pool: Sequence[bytes], n_events: int, batch_size: int) -> list[list[bytes]]:
    """``n_events`` events from the pool, cut into batches (built before any timing starts)."""
    return [[pool[(start + i) % len(pool)] for i in range(batch_size)] for start in range(0, n_events, batch_size)]


# --- contenders ------------------------------------------------------------------------------------


class Writer(Protocol):
    """An open store that appends batches to stream STREAM_ID."""

    def append_batch(self, events: Sequence[bytes]) -> None: ...

    def close(self) -> None: ...


class Reader(Protocol):
    """An open store that reads stream STREAM_ID from the start, verifying every record."""

    def read_verify(self) -> tuple[int, int]:
        """Read and verify the whole stream; returns (events, payload bytes)."""
        ...

    def close(self) -> None: ...


class Contender(Protocol):
    """A store the benchmark can measure: how to open it for writing and for reading."""

    @property
    def name(self) -> str: ...

    @property
    def compressions(self) -> tuple[str, ...]: ...

    def open_writer(self, directory: Path, *, fsync: bool, compression: str) -> Writer: ...

    def open_reader(self, directory: Path) -> Reader: ...

    def space(self, directory: Path) -> tuple[int, int] | None:
        """(payload bytes, stored bytes) as the store itself accounts them, if it does."""
        ...


_LINK = struct.Struct("<QQ")
_LENGTH = struct.Struct("<I")


def chain_hash(prev: bytes, offset: int, payload: bytes) -> bytes:
    """The contenders' record hash: BLAKE3 over the previous hash, stream id, offset and payload."""
    return blake3.blake3(prev + _LINK.pack(STREAM_ID, offset) + payload).digest()


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


class HybridlogContender:
    name = "hybridlog"
    compressions = COMPRESSIONS

    def open_writer(self, directory: Path, *, fsync: bool, compression: str) -> Writer:
        return HybridlogWriter(directory, fsync=fsync, compression=compression)

    def open_reader(self, directory: Path) -> Reader:
        return HybridlogReader(directory)

    def space(self, directory: Path) -> tuple[int, int] | None:
        """The catalog's own accounting, read with SQL the way an operator would."""
        with Storage(directory / "store", read_only=True) as storage:
            catalog = storage.index_path(STREAM_ID)
        conn = apsw.Connection(str(catalog), flags=apsw.SQLITE_OPEN_READONLY)
        try:
            row = conn.execute(
                "SELECT payload_bytes, stored_bytes FROM streams WHERE stream_id = ?", (STREAM_ID,)
            ).fetchone()
        finally:
            conn.close()
        if row is None:
            raise BenchError("the catalog has no row for the benchmark stream")
        payload_bytes, stored_bytes = row
        if not isinstance(payload_bytes, int) or not isinstance(stored_bytes, int):
            raise BenchError(f"unexpected streams row {row!r}")
        return payload_bytes, stored_bytes


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
            os.fsync(self._fd)
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


class RawFloorContender:
    name = "raw_floor"
    compressions = (CompressionKind.NONE.value,)

    def open_writer(self, directory: Path, *, fsync: bool, compression: str) -> Writer:
        return RawFloorWriter(directory, fsync=fsync)

    def open_reader(self, directory: Path) -> Reader:
        return RawFloorReader(directory)

    def space(self, directory: Path) -> tuple[int, int] | None:
        return None


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
    def __init__(self, directory: Path, *, fsync: bool) -> None:
        self._conn = apsw.Connection(str(directory / "events.db"))
        self._conn.pragma("journal_mode", "wal")
        # NORMAL: a WAL commit is not fsynced (like fsync off); FULL: every commit is.
        self._conn.pragma("synchronous", "full" if fsync else "normal")
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


class SqliteContender:
    name = "sqlite"
    compressions = (CompressionKind.NONE.value,)

    def open_writer(self, directory: Path, *, fsync: bool, compression: str) -> Writer:
        return SqliteWriter(directory, fsync=fsync)

    def open_reader(self, directory: Path) -> Reader:
        return SqliteReader(directory)

    def space(self, directory: Path) -> tuple[int, int] | None:
        return None


CONTENDERS: list[Contender] = [HybridlogContender(), RawFloorContender(), SqliteContender()]
SUBJECT = "hybridlog"
"""The contender whose figures are also shown as ratios to every other contender."""


# --- sizes ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AppendCase:
    """One append measurement: ``events`` events in batches of ``batch_size``, fsync per batch or not."""

    batch_size: int
    fsync: bool
    events: int


@dataclass(frozen=True, slots=True)
class Sizes:
    """How many events each workload uses; fsync-on cases with small batches get far fewer."""

    append: tuple[AppendCase, ...]
    read_events: int
    pool: int
    repeat: int
    open_streams: int = 1000
    rebuild_events: int = 100_000


# Sized so one hybridlog measurement takes about 0.5-1.5 s on a 2-core VM (the whole run about a
# minute). With fsync on, batches of 1 cost one fsync each (milliseconds on a real disk), hence far
# fewer events there.
DEFAULT_SIZES = Sizes(
    append=(
        AppendCase(1, False, 30_000),
        AppendCase(100, False, 150_000),
        AppendCase(1000, False, 200_000),
        AppendCase(1, True, 1_000),
        AppendCase(100, True, 60_000),
        AppendCase(1000, True, 150_000),
    ),
    read_events=100_000,
    pool=20_000,
    repeat=3,
)
# Every workload on tiny sizes, once: checks the harness, measures nothing worth keeping.
QUICK_SIZES = Sizes(
    append=(
        AppendCase(1, False, 50),
        AppendCase(100, False, 500),
        AppendCase(1000, False, 2_000),
        AppendCase(1, True, 10),
        AppendCase(100, True, 200),
        AppendCase(1000, True, 2_000),
    ),
    read_events=2_000,
    pool=500,
    repeat=1,
    open_streams=20,
    rebuild_events=2_000,
)


# --- workloads -----------------------------------------------------------------------------------


def disk_bytes(directory: Path) -> int:
    """Bytes of every file under ``directory``."""
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


def timed(action: Callable[[], T]) -> tuple[float, T]:
    """(seconds ``action`` took by perf_counter, its result), after a garbage collection so it starts clean."""
    gc.collect()
    start = time.perf_counter()
    outcome = action()
    return time.perf_counter() - start, outcome


def append_all(writer: Writer, batches: Iterable[Sequence[bytes]]) -> None:
    for batch in batches:
        writer.append_batch(batch)


def run_append(
    contender: Contender, case: AppendCase, compression: str, pool: Sequence[bytes], repeat: int, tmp_root: Path | None
) -> Result:
    """Append ``case.events`` events in batches to a fresh store, ``repeat`` times; time the appends only."""
    batches = make_batches(pool, case.events, case.batch_size)
    events = sum(len(batch) for batch in batches)
    payload = sum(len(event) for batch in batches for event in batch)
    runs: list[float] = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory(prefix=f"bench-{contender.name}-", dir=tmp_root) as tmp:
            directory = Path(tmp)
            writer = contender.open_writer(directory, fsync=case.fsync, compression=compression)
            try:
                seconds, _ = timed(functools.partial(append_all, writer, batches))
                runs.append(seconds)
            finally:
                writer.close()
            space = contender.space(directory)
            on_disk = disk_bytes(directory)
    seconds = statistics.median(runs)
    result: Result = {
        "workload": "append",
        "contender": contender.name,
        "batch_size": case.batch_size,
        "fsync": case.fsync,
        "compression": compression,
        "events": events,
        "batches": len(batches),
        "payload_bytes": payload,
        "seconds": seconds,
        "runs_seconds": runs,
        "events_per_s": events / seconds,
        "mb_per_s": payload / seconds / MB,
        "disk_bytes": on_disk,
        "stored_bytes": None,
        "compression_ratio": None,
    }
    if space is not None:
        catalog_payload, stored = space
        if catalog_payload != payload:
            raise BenchError(f"{contender.name}: catalog counts {catalog_payload} payload bytes, wrote {payload}")
        result["stored_bytes"] = stored
        result["compression_ratio"] = catalog_payload / stored
    return result


def run_read_verify(
    contender: Contender, compression: str, n_events: int, pool: Sequence[bytes], repeat: int, tmp_root: Path | None
) -> Result:
    """Write ``n_events`` once (untimed), then time ``repeat`` fresh readers reading and verifying all of them."""
    batches = make_batches(pool, n_events, 1000)
    payload = sum(len(event) for batch in batches for event in batch)
    runs: list[float] = []
    with tempfile.TemporaryDirectory(prefix=f"bench-{contender.name}-", dir=tmp_root) as tmp:
        directory = Path(tmp)
        writer = contender.open_writer(directory, fsync=False, compression=compression)
        try:
            append_all(writer, batches)
        finally:
            writer.close()
        for _ in range(repeat):
            reader = contender.open_reader(directory)
            try:
                seconds, counted = timed(reader.read_verify)
            finally:
                reader.close()
            runs.append(seconds)
            if counted != (n_events, payload):
                raise BenchError(f"{contender.name}: read (events, bytes) {counted}, wrote {(n_events, payload)}")
    seconds = statistics.median(runs)
    return {
        "workload": "read_verify",
        "contender": contender.name,
        "compression": compression,
        "events": n_events,
        "payload_bytes": payload,
        "seconds": seconds,
        "runs_seconds": runs,
        "events_per_s": n_events / seconds,
        "mb_per_s": payload / seconds / MB,
    }


def run_open(n_streams: int, pool: Sequence[bytes], repeat: int, tmp_root: Path | None) -> Result:
    """Time opening a clean store of ``n_streams`` streams for writing (lock, catalog, recovery check)."""
    runs: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-open-", dir=tmp_root) as tmp:
        directory = Path(tmp) / "store"
        with Storage(directory, checkpoint_policy=CheckpointPolicy.explicit()) as store:
            for sid in range(n_streams):
                store.append(sid, [pool[sid % len(pool)]] * 3, fsync=False)
        for _ in range(repeat):
            seconds, store = timed(lambda: Storage(directory, checkpoint_policy=CheckpointPolicy.explicit()))
            store.close()
            runs.append(seconds)
    seconds = statistics.median(runs)
    return {
        "workload": "open_clean",
        "contender": SUBJECT,
        "compression": CompressionKind.NONE.value,
        "events": 3 * n_streams,
        "streams": n_streams,
        "seconds": seconds,
        "runs_seconds": runs,
    }


def run_rebuild(n_events: int, pool: Sequence[bytes], repeat: int, tmp_root: Path | None) -> Result:
    """Time rebuilding the whole catalog from the segments (every record read and verified)."""
    batches = make_batches(pool, n_events, 1000)
    runs: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-rebuild-", dir=tmp_root) as tmp:
        directory = Path(tmp) / "store"
        with Storage(directory, checkpoint_policy=CheckpointPolicy.explicit()) as store:
            for batch in batches:
                store.append(STREAM_ID, batch, fsync=False)
        for _ in range(repeat):
            with Storage(directory, checkpoint_policy=CheckpointPolicy.explicit()) as store:
                seconds, _ = timed(store.rebuild_catalog)
                if store.next_offset(STREAM_ID) != n_events:
                    raise BenchError(f"rebuild indexed {store.next_offset(STREAM_ID)} records, wrote {n_events}")
            runs.append(seconds)
    seconds = statistics.median(runs)
    return {
        "workload": "rebuild_catalog",
        "contender": SUBJECT,
        "compression": CompressionKind.NONE.value,
        "events": n_events,
        "seconds": seconds,
        "runs_seconds": runs,
        "events_per_s": n_events / seconds,
    }


def _match_key(result: Result) -> tuple[JSONValue, ...]:
    """What makes two results comparable: same workload and shape (compression aside)."""
    return (result["workload"], result.get("batch_size"), result.get("fsync"))


def add_ratios(results: list[Result], subject: str = SUBJECT) -> None:
    """Give every ``subject`` result ``ratio_vs_<contender>`` = its events/s over the contender's.

    The other contender's result must match on workload, batch size and fsync; contenders that do
    not compress are compared through their uncompressed result.
    """
    others: dict[tuple[str, tuple[JSONValue, ...]], Result] = {}
    for result in results:
        name = str(result["contender"])
        if name != subject and result["compression"] == CompressionKind.NONE.value:
            others[(name, _match_key(result))] = result
    for result in results:
        if result["contender"] != subject:
            continue
        for (name, key), other in others.items():
            if key == _match_key(result):
                result[f"ratio_vs_{name}"] = _number(result, "events_per_s") / _number(other, "events_per_s")


def _number(result: Result, key: str) -> float:
    value = result[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BenchError(f"{key} is not a number in {result!r}")
    return float(value)


def run_all(
    sizes: Sizes, contenders: Sequence[Contender], *, seed: int, repeat: int, tmp_root: Path | None
) -> list[Result]:
    """Every workload for every contender, in a fixed order; progress lines go to stderr.

    Each measurement runs ``repeat`` times and reports the median time.
    """
    pool = make_event_pool(sizes.pool, seed)
    results: list[Result] = []
    for case in sizes.append:
        for contender in contenders:
            for compression in contender.compressions:
                result = run_append(contender, case, compression, pool, repeat, tmp_root)
                _progress(result)
                results.append(result)
    for contender in contenders:
        for compression in contender.compressions:
            result = run_read_verify(contender, compression, sizes.read_events, pool, repeat, tmp_root)
            _progress(result)
            results.append(result)
    for result in (
        run_open(sizes.open_streams, pool, repeat, tmp_root),
        run_rebuild(sizes.rebuild_events, pool, repeat, tmp_root),
    ):
        _progress(result)
        results.append(result)
    add_ratios(results)
    return results


def _progress(result: Result) -> None:
    shape = f" batch={result['batch_size']} fsync={result['fsync']}" if result["workload"] == "append" else ""
    print(
        f"{result['workload']:<11} {result['contender']:<10}{shape} {result['compression']}:"
        f" {result['events']} events in {_number(result, 'seconds'):.2f}s",
        file=sys.stderr,
        flush=True,
    )


# --- report --------------------------------------------------------------------------------------


def machine_info(tmp_root: Path | None) -> dict[str, JSONValue]:
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "hybridlog": importlib.metadata.version("hybridlog"),
        "apsw": apsw.apsw_version(),
        "sqlite": apsw.sqlite_lib_version(),
        "tmp_dir": str(tmp_root) if tmp_root is not None else tempfile.gettempdir(),
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def _format(value: JSONValue, kind: str) -> str:
    """One table cell: kind is "name"/"text" (as is), "bool" (on/off) or a number format."""
    if value is None:
        return "-"
    if kind == "bool":
        return "on" if value else "off"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    number_formats = {"rate": "{:,.0f}", "mb": "{:.1f}", "ratio": "{:.2f}", "x": "{:.2f}x"}
    return number_formats.get(kind, "{}").format(value)


def _table(headers: Sequence[tuple[str, str, str]], rows: Sequence[Result]) -> str:
    """Render rows as a fixed-width text table; headers are (title, result key, cell kind)."""
    cells = [[_format(row.get(key), kind) for _, key, kind in headers] for row in rows]
    widths = [max([len(title), *(len(line[i]) for line in cells)]) for i, (title, _, _) in enumerate(headers)]

    def line(texts: Sequence[str]) -> str:
        aligned = (
            text.ljust(width) if kind == "name" else text.rjust(width)
            for text, width, (_, _, kind) in zip(texts, widths, headers, strict=True)
        )
        return "  ".join(aligned).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line([title for title, _, _ in headers]), rule, *(line(cells_of_row) for cells_of_row in cells)])


def render(mode: str, machine: dict[str, JSONValue], results: Sequence[Result], contenders: Sequence[str]) -> str:
    """The human-readable report: a machine line, the append table and the read + verify table."""
    ratios = [(f"vs {name}", f"ratio_vs_{name}", "x") for name in contenders if name != SUBJECT]
    append_headers = [
        ("contender", "contender", "name"),
        ("batch", "batch_size", "text"),
        ("fsync", "fsync", "bool"),
        ("compr", "compression", "text"),
        ("events", "events", "text"),
        ("events/s", "events_per_s", "rate"),
        ("MB/s", "mb_per_s", "mb"),
        ("payload/stored", "compression_ratio", "ratio"),
        *ratios,
    ]
    read_headers = [
        ("contender", "contender", "name"),
        ("compr", "compression", "text"),
        ("events", "events", "text"),
        ("events/s", "events_per_s", "rate"),
        ("MB/s", "mb_per_s", "mb"),
        *ratios,
    ]
    return "\n".join(
        [
            f"hybridlog bench ({mode}): {machine['nproc']} CPUs, Python {machine['python']},"
            f" SQLite {machine['sqlite']}, {machine['platform']}",
            "",
            f"append ({EVENT_SIZE}-byte JSON events; MB = 10^6 payload bytes; vs X = {SUBJECT} events/s over X's)",
            _table(append_headers, [r for r in results if r["workload"] == "append"]),
            "",
            "read + full verify from offset 0 (warm page cache)",
            _table(read_headers, [r for r in results if r["workload"] == "read_verify"]),
            "",
            "store operations (hybridlog only)",
            *_store_operation_lines(results),
        ]
    )


def _store_operation_lines(results: Sequence[Result]) -> list[str]:
    lines = []
    for r in results:
        if r["workload"] == "open_clean":
            lines.append(f"  open a clean store of {r['streams']} streams for writing: {_number(r, 'seconds'):.3f} s")
        elif r["workload"] == "rebuild_catalog":
            lines.append(
                f"  rebuild the catalog from segments: {r['events']} records in {_number(r, 'seconds'):.2f} s"
                f" ({_number(r, 'events_per_s'):,.0f} records/s)"
            )
    return lines


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds: checks the harness works")
    parser.add_argument("--json", type=Path, default=Path("bench-results.json"), metavar="PATH", help="results file")
    parser.add_argument("--repeat", type=_positive, default=None, help="runs per measurement (median reported)")
    parser.add_argument("--seed", type=int, default=2024, help="seed for the generated events")
    parser.add_argument("--tmpdir", type=Path, default=None, help="where the stores go (fsync cost depends on it)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = QUICK_SIZES if args.quick else DEFAULT_SIZES
    machine = machine_info(args.tmpdir)
    repeat = sizes.repeat if args.repeat is None else args.repeat
    results = run_all(sizes, CONTENDERS, seed=args.seed, repeat=repeat, tmp_root=args.tmpdir)
    mode = "quick" if args.quick else "default"
    report: dict[str, object] = {
        "mode": mode,
        "seed": args.seed,
        "repeat": repeat,
        "event_size": EVENT_SIZE,
        "machine": machine,
        "results": results,
    }
    print(render(mode, machine, results, [c.name for c in CONTENDERS]))
    args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nresults written to {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
