"""Every file and directory name under a store: the one home where they are formatted and parsed.

Layout under a store's directory (``docs/format.md`` is the authority)::

    catalog.db                                  the SQLite catalog (``catalog.py``)
    catalog.db-wal, catalog.db-shm              SQLite's write-ahead log and shared memory
    catalog.db.new                              a catalog being built, renamed over catalog.db when whole
    catalog.db.<time_ns>.aside                  a catalog a rebuild replaced (with its -wal / -shm)
    consumers.db (+ -wal, -shm)                 named consumers' positions (``consumers.py``)
    LOCK                                        held (flock) by the one writer process (``lock.py``)
    heads/<key_id>.checkpoint                   the last tree head signed by a key, as a signed note (``tree.py``)
    streams/<stream_id>/                        one directory per stream
    streams/<stream_id>/<segment_no>.seg        a segment file (``segment.py``)
    streams/<stream_id>/<dictionary_no>.zdict   a zstd dictionary (``dictionary.py``)
    streams/<stream_id>/<segment>.<byte>[.<n>].quarantine   bytes cut from a segment at <byte>
    streams/<stream_id>/<dictionary>[.<n>].quarantine       a damaged dictionary file, kept

Stream ids and segment, dictionary and byte numbers are 20 digits, zero-padded, so lexical order
is numeric order. Every ``parse_*`` returns None for a name hybridlog does not make (a number out
of range included), so callers report it as foreign rather than ignore it silently.
"""

from __future__ import annotations

import re
from pathlib import Path

from hybridlog.record import MAX_DICTIONARY_NO
from hybridlog.types import MAX_STREAM_ID, StreamId

# --- names at the top of a store -----------------------------------------------------------------

CATALOG_FILE = "catalog.db"
CONSUMERS_FILE = "consumers.db"
EVENTSOURCING_INDEX_FILE = "eventsourcing.db"
"""The index ``hybridlog.eventsourcing`` keeps of its recorders' streams (derived: deleting it loses nothing)."""
LOCK_FILE = "LOCK"
STREAMS_DIR = "streams"
HEADS_DIR = "heads"
HEAD_SUFFIX = ".checkpoint"
_HEAD_NAME = re.compile(r"^[0-9a-f]{8}\.checkpoint$")
SQLITE_COMPANIONS = ("-wal", "-shm")
"""The suffixes of the files SQLite keeps beside a database in WAL mode (its log, its shared memory)."""
BUILDING_SUFFIX = ".new"
ASIDE_SUFFIX = ".aside"


def catalog_path(data_dir: Path) -> Path:
    """The store's SQLite catalog, ``<store>/catalog.db``: the index rebuilt from the segments."""
    return data_dir / CATALOG_FILE


def consumers_path(data_dir: Path) -> Path:
    """The store's consumer-position database, ``<store>/consumers.db`` (not rebuilt from the segments)."""
    return data_dir / CONSUMERS_FILE


def lock_path(data_dir: Path) -> Path:
    """The file the writer holds its exclusive lock on, ``<store>/LOCK``."""
    return data_dir / LOCK_FILE


def sqlite_companions(path: Path) -> list[Path]:
    """The -wal and -shm files of the SQLite database at ``path`` (which may not exist)."""
    return [path.with_name(path.name + suffix) for suffix in SQLITE_COMPANIONS]


def building_path(path: Path) -> Path:
    """Where a new database is built before it is renamed over ``path``: ``<path>.new``."""
    return path.with_name(path.name + BUILDING_SUFFIX)


def catalog_aside_path(data_dir: Path, at_ns: int) -> Path:
    """Where a rebuild keeps the catalog it replaces: ``catalog.db.<time_ns>.aside``."""
    return data_dir / f"{CATALOG_FILE}.{at_ns}{ASIDE_SUFFIX}"


def signed_head_path(data_dir: Path, key_id: int) -> Path:
    """Where the store keeps the last tree head the key ``key_id`` signed: ``heads/<key_id>.checkpoint``."""
    return data_dir / HEADS_DIR / f"{key_id:08x}{HEAD_SUFFIX}"


def signed_heads_on_disk(data_dir: Path) -> list[Path]:
    """The signed tree heads kept in the store (one per key that signed), by name."""
    heads = data_dir / HEADS_DIR
    if not heads.is_dir():
        return []
    return sorted(p for p in heads.iterdir() if _HEAD_NAME.match(p.name))


def temp_path(path: Path) -> Path:
    """The temporary name a file is written under before it is renamed to ``path``."""
    return path.with_name(path.name + ".tmp")


# --- stream directories --------------------------------------------------------------------------

_NAME_DIGITS = 20
_STREAM_NAME = re.compile(r"^\d{20}$")


def stream_dir_name(stream_id: int) -> str:
    """A stream's directory name: its id as 20 zero-padded digits, so lexical order is id order."""
    return f"{stream_id:0{_NAME_DIGITS}d}"


def parse_stream_dir_name(name: str) -> int | None:
    """The stream id a directory name stands for; None for any other name, a number above the
    largest stream id (2**63-1) included, so callers report it as a foreign entry."""
    if not _STREAM_NAME.match(name):
        return None
    number = int(name)
    return number if number <= MAX_STREAM_ID else None


def stream_path(data_dir: Path, stream_id: int) -> Path:
    """The directory holding a stream's segments and dictionaries: ``<store>/streams/<stream id>``."""
    return data_dir / STREAMS_DIR / stream_dir_name(stream_id)


def stream_ids_on_disk(data_dir: Path) -> list[StreamId]:
    """The ids of the stream directories under ``<store>/streams``, sorted; foreign names are skipped."""
    root = data_dir / STREAMS_DIR
    if not root.is_dir():
        return []
    found = (parse_stream_dir_name(entry.name) for entry in root.iterdir())
    return sorted(StreamId(sid) for sid in found if sid is not None)


_STORE_ROOT_NAME = re.compile(
    rf"^(?:{re.escape(CATALOG_FILE)}(?:{re.escape(BUILDING_SUFFIX)}|\.\d+{re.escape(ASIDE_SUFFIX)})?"
    rf"|{re.escape(CONSUMERS_FILE)}|{re.escape(EVENTSOURCING_INDEX_FILE)})(?:-wal|-shm)?$"
)


FENCE_FILE = "FENCED"
"""Present when another writer host took the store's streams over (``fence.py``)."""
TIER_CACHE_DIR = "tier-cache"
"""Fetched copies of evicted segments (``evicted.py``)."""


def foreign_store_entries(data_dir: Path) -> list[str]:
    """The names at the top of a store that no part of it makes, sorted: anything but the catalog
    (with its SQLite companions, a ``.new`` one being built and ``.<time>.aside`` ones kept by a
    rebuild), ``consumers.db`` and ``eventsourcing.db`` (and companions), ``LOCK``, ``streams/``,
    ``heads/``, ``FENCED`` and ``tier-cache/``."""
    if not data_dir.is_dir():
        return []
    return sorted(
        entry.name
        for entry in data_dir.iterdir()
        if entry.name not in (LOCK_FILE, STREAMS_DIR, HEADS_DIR, FENCE_FILE, TIER_CACHE_DIR)
        and not _STORE_ROOT_NAME.match(entry.name)
    )


def foreign_stream_entries(data_dir: Path) -> list[str]:
    """The names in ``<store>/streams`` that are not stream directories (out-of-range numbers included), sorted."""
    root = data_dir / STREAMS_DIR
    if not root.is_dir():
        return []
    return sorted(entry.name for entry in root.iterdir() if parse_stream_dir_name(entry.name) is None)


# --- files in a stream directory -----------------------------------------------------------------

SEGMENT_SUFFIX = ".seg"
_SEGMENT_NAME = re.compile(r"^(\d{20})\.seg$")
DICTIONARY_SUFFIX = ".zdict"
_DICTIONARY_NAME = re.compile(r"^(\d{20})\.zdict$")
QUARANTINE_SUFFIX = ".quarantine"
EVICTED_SUFFIX = ".evicted"
_EVICTED_NAME = re.compile(r"^(\d{20})\.evicted$")
"""A stub standing for a segment whose bytes are only in the object store (``evicted.py``)."""
MAX_SEGMENT_NO = 2**63 - 1
"""The largest segment number: the catalog stores it as an SQLite (signed 64-bit) integer."""


def segment_name(segment_no: int) -> str:
    """A segment's file name: its number as 20 zero-padded digits and ``.seg``, so lexical order is sequence order."""
    return f"{segment_no:0{_NAME_DIGITS}d}{SEGMENT_SUFFIX}"


def parse_segment_name(name: str) -> int | None:
    """The segment number a file name stands for; None for any other name, a number above
    ``MAX_SEGMENT_NO`` included (the catalog could not hold it), so callers report it as foreign."""
    match = _SEGMENT_NAME.match(name)
    if match is None:
        return None
    number = int(match.group(1))
    return number if number <= MAX_SEGMENT_NO else None


def dictionary_name(dictionary_no: int) -> str:
    """A dictionary's file name: its number as 20 zero-padded digits and ``.zdict``."""
    return f"{dictionary_no:0{_NAME_DIGITS}d}{DICTIONARY_SUFFIX}"


def parse_dictionary_name(name: str) -> int | None:
    """The dictionary number a file name stands for; None for any other name, a number above
    ``record.MAX_DICTIONARY_NO`` included, so callers report it as foreign."""
    match = _DICTIONARY_NAME.match(name)
    if match is None:
        return None
    number = int(match.group(1))
    return number if number <= MAX_DICTIONARY_NO else None


def segment_path(data_dir: Path, stream_id: int, segment_no: int) -> Path:
    """Where segment ``segment_no`` of a stream lives, in the stream's directory."""
    return stream_path(data_dir, stream_id) / segment_name(segment_no)


def dictionary_path(data_dir: Path, stream_id: int, dictionary_no: int) -> Path:
    """Where dictionary ``dictionary_no`` of a stream lives, in the stream's directory."""
    return stream_path(data_dir, stream_id) / dictionary_name(dictionary_no)


def quarantine_path(data_dir: Path, stream_id: int, segment_no: int, position: int) -> Path:
    """A new file for bytes cut from ``segment_no`` at ``position``: ``<segment>.<position>.quarantine``.

    If that name is taken (the same place was cut before), ``.1``, ``.2``, ... is added before the
    suffix, so an earlier quarantine file is never overwritten.
    """
    return kept_copy_path(stream_path(data_dir, stream_id) / f"{segment_name(segment_no)}.{position:0{_NAME_DIGITS}d}")


def kept_copy_path(path: Path) -> Path:
    """A new name for keeping ``path``'s bytes aside: ``<name>.quarantine``, or ``<name>.<n>.quarantine``
    (n = 1, 2, ...) if that is taken, so an earlier quarantine file is never overwritten."""
    candidate = path.with_name(f"{path.name}{QUARANTINE_SUFFIX}")
    n = 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}{QUARANTINE_SUFFIX}")
    return candidate


def segment_numbers_on_disk(stream_dir: Path) -> tuple[list[int], list[str]]:
    """The segment numbers found in a stream directory, sorted, and the names that are not ours."""
    numbers, foreign = [], []
    if not stream_dir.is_dir():
        return [], []
    for name in (entry.name for entry in stream_dir.iterdir()):
        number = parse_segment_name(name)
        evicted = _EVICTED_NAME.match(name)
        if number is not None:
            numbers.append(number)
        elif evicted is not None and int(evicted.group(1)) <= MAX_SEGMENT_NO:
            numbers.append(int(evicted.group(1)))  # an evicted segment is still one of the stream's
        elif not name.endswith(QUARANTINE_SUFFIX) and parse_dictionary_name(name) is None:
            foreign.append(name)
    return sorted(set(numbers)), sorted(foreign)


def dictionary_numbers_on_disk(stream_dir: Path) -> list[int]:
    """The numbers of the dictionary files in a stream directory, sorted."""
    if not stream_dir.is_dir():
        return []
    numbers = (parse_dictionary_name(entry.name) for entry in stream_dir.iterdir())
    return sorted(n for n in numbers if n is not None)
