"""Evicted segments: sealed segments whose bytes live only in the object store.

``tiering.evict`` replaces a sealed segment that a signed manifest names (and whose object in the
bucket it has just read back with the right digest) by a small *stub* file beside where the
segment was, ``<number>.evicted``::

    hybridlog evicted segment 1
    url s3://bucket/prefix
    key streams/1/segments/0000000003.<blake3 hex>.seg
    size 1048576
    digest <blake3 hex>

The stub stands for the segment: the segment numbers of a stream directory include it
(``layout.segment_numbers_on_disk``), its size is the segment's (``stored_size``), and anything
that opens the segment goes through ``readable_path``, which returns the segment file when it is
there and otherwise a copy fetched whole from the bucket into the store's bounded cache
(``<store>/tier-cache/``). A copy enters the cache only once its BLAKE3 digest is the stub's (the
digest the catalog sealed and the manifest signed), and whoever reads it then verifies its chain
as any read does. So reads, verification, recovery and a catalog rebuild treat "uploaded, not
local" as normal; the bucket must be reachable (the standard ``AWS_*`` variables) when they
reach an evicted segment.

The cache holds at most ``HYBRIDLOG_TIER_CACHE_BYTES`` bytes (default 1 GiB), least recently used
copies going first; a copy being read by another thread or process stays readable after it is
removed (POSIX). A crash during eviction leaves the stub beside the segment file (the file wins)
or the stub alone: both are whole states.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from hybridlog.errors import IntegrityError, ObjectStoreError, StorageIOError, os_error_detail
from hybridlog.failpoints import failpoint
from hybridlog.layout import EVICTED_SUFFIX, TIER_CACHE_DIR, parse_stream_dir_name, segment_path
from hybridlog.objects import open_objects
from hybridlog.segment import data_digest, file_digest, fsync_dir, write_file_durably

CACHE_DIR = TIER_CACHE_DIR
DEFAULT_CACHE_BYTES = 1 << 30
CACHE_BYTES_VARIABLE = "HYBRIDLOG_TIER_CACHE_BYTES"
_MAGIC = "hybridlog evicted segment 1"
_FIELD = re.compile(r"^(url|key|size|digest) (\S+)$")
_fetching = threading.Lock()  # one fetch at a time in a process: two readers of a segment fetch it once


@dataclass(frozen=True, slots=True)
class EvictedSegment:
    """What a stub says: where the segment's bytes are, how many, and their BLAKE3 digest."""

    url: str
    key: str
    size: int
    digest: bytes

    def text(self) -> str:
        """The stub file's contents."""
        return f"{_MAGIC}\nurl {self.url}\nkey {self.key}\nsize {self.size}\ndigest {self.digest.hex()}\n"


def stub_path(segment: Path) -> Path:
    """The stub that stands for an evicted segment file."""
    return segment.with_suffix(EVICTED_SUFFIX)


def read_stub(stub: Path) -> EvictedSegment:
    """Parse a stub file; a malformed one is an IntegrityError naming it."""
    try:
        lines = stub.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise IntegrityError("evicted-segment stub is not text", segment=stub) from e
    except OSError as e:
        raise StorageIOError(f"cannot read {stub}: {os_error_detail(e)}", path=stub) from e
    fields = {m[1]: m[2] for line in lines[1:] if (m := _FIELD.match(line))}
    if not lines or lines[0] != _MAGIC or len(fields) != 4 or len(lines) != 5:
        raise IntegrityError("evicted-segment stub is malformed", segment=stub)
    try:
        digest = bytes.fromhex(fields["digest"])
        size = int(fields["size"])
    except ValueError as e:
        raise IntegrityError("evicted-segment stub is malformed", segment=stub) from e
    if len(digest) != 32 or size < 0:
        raise IntegrityError("evicted-segment stub is malformed", segment=stub)
    return EvictedSegment(fields["url"], fields["key"], size, digest)


def write_stub(segment: Path, evicted: EvictedSegment) -> None:
    """Create the stub for ``segment`` durably (the segment file itself is left to the caller)."""
    write_file_durably(stub_path(segment), evicted.text().encode())


def stored_size(data_dir: Path, stream_id: int, segment_no: int) -> int:
    """The size of a segment, from its file or, evicted, from its stub (FileNotFoundError: neither)."""
    path = segment_path(data_dir, stream_id, segment_no)
    try:
        return path.stat().st_size
    except FileNotFoundError:
        if not stub_path(path).exists():
            raise
        return read_stub(stub_path(path)).size


def stored_digest(data_dir: Path, stream_id: int, segment_no: int) -> bytes:
    """A sealed segment's BLAKE3 digest: of its file or, evicted, as its stub says (the digest
    its fetched copy is checked against)."""
    path = segment_path(data_dir, stream_id, segment_no)
    return read_stub(stub_path(path)).digest if is_evicted(path) else file_digest(path)


def is_evicted(path: Path) -> bool:
    """Whether the segment at ``path`` has left the disk for the bucket (a stub and no file)."""
    return not path.exists() and stub_path(path).exists()


def readable_path(path: Path) -> Path:
    """A file holding the segment at ``path``: the segment file itself, or for an evicted segment
    its cached copy, fetched first if the cache does not hold it. A path that is neither is
    returned as it is (opening it raises FileNotFoundError, as for any missing segment)."""
    if not is_evicted(path):
        return path
    stub = stub_path(path)
    evicted = read_stub(stub)
    cache = path.parent.parent.parent / CACHE_DIR
    copy = cache / f"{path.parent.name}.{path.name}"
    with _fetching:
        try:
            if copy.stat().st_size == evicted.size:
                os.utime(copy)  # most recently used
                return copy
        except FileNotFoundError:
            pass
        data = _fetch(stub, evicted)
        _make_room(cache, len(data))
        _write_copy(copy, data)
    return copy


def segment_file(data_dir: Path, stream_id: int, segment_no: int) -> Path:
    """A file holding a stream's segment: ``readable_path`` of its ``segment_path``."""
    return readable_path(segment_path(data_dir, stream_id, segment_no))


def _fetch(stub: Path, evicted: EvictedSegment) -> bytes:
    """The segment's bytes from the bucket, checked against the stub's size and digest."""
    try:
        data = open_objects(evicted.url).get(evicted.key)
    except ObjectStoreError as e:
        raise ObjectStoreError(f"evicted segment {stub.with_suffix('.seg')}: {e.message}", hint=e.hint) from e
    if len(data) != evicted.size or data_digest(data) != evicted.digest:
        raise IntegrityError(
            f"the bucket's copy of evicted segment {evicted.key} ({len(data)} bytes) is not the one that was"
            f" sealed ({evicted.size} bytes, BLAKE3 {evicted.digest.hex()[:16]}...)",
            stream_id=parse_stream_dir_name(stub.parent.name),
            segment=stub.with_suffix(".seg"),
        )
    return data


def cache_limit() -> int:
    """The cache's bound in bytes: ``HYBRIDLOG_TIER_CACHE_BYTES`` or 1 GiB."""
    value = os.environ.get(CACHE_BYTES_VARIABLE, "")
    return int(value) if value.isdigit() else DEFAULT_CACHE_BYTES


def _make_room(cache: Path, incoming: int) -> None:
    """Remove least recently used copies until ``incoming`` more bytes fit under the bound (the new
    copy is kept even when it alone is larger: a read needs it)."""
    if not cache.is_dir():
        return
    copies = sorted((p.stat().st_mtime_ns, p.stat().st_size, p) for p in cache.iterdir() if p.suffix == ".seg")
    total = sum(size for _, size, _ in copies) + incoming
    for _, size, copy in copies:
        if total <= cache_limit():
            break
        copy.unlink(missing_ok=True)
        total -= size


def _write_copy(copy: Path, data: bytes) -> None:
    """Put a fetched copy in the cache whole (temporary file, then rename). No fsync: a copy lost
    in a crash is fetched again, and one cut short has the wrong size and is fetched again too
    (its chain would not verify either)."""
    copy.parent.mkdir(exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=copy.parent, prefix=".fetch-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        Path(temp).replace(copy)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def evict_file(segment: Path, evicted: EvictedSegment) -> None:
    """Replace a sealed segment file by its stub: the stub first (durably), then the file goes."""
    write_stub(segment, evicted)
    failpoint("stub-written")
    segment.unlink()
    fsync_dir(segment.parent)
