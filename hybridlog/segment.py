"""Segment files: where they live, how they are named, and reading and writing their bytes.

Layout under a store's directory::

    streams/<stream_id>/<segment_no>.seg     both numbers 20 digits, zero-padded
    streams/<stream_id>/<dictionary_no>.zdict  the stream's zstd dictionaries (``dictionary.py``)

so lexical order is numeric order. A segment is a sequence of record frames (``record.py``).
Only the highest-numbered segment of a stream is written to; the others are sealed (immutable)
and their BLAKE3 digests are in the catalog. The only file names in a stream directory that this
module makes are segments, dictionaries and ``*.quarantine`` files; ``parse_segment_name`` and
``parse_dictionary_name`` return None for any other name so callers can report it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import blake3

from hybridlog.record import (
    CHECKSUM,
    CHECKSUM_SIZE,
    HEADER_SIZE,
    MAX_DICTIONARY_NO,
    FrameError,
    FrameHeader,
    frame_checksum,
    parse_header,
)
from hybridlog.types import MAX_STREAM_ID

STREAMS_DIR = "streams"
SEGMENT_SUFFIX = ".seg"
_NAME_DIGITS = 20
_SEGMENT_NAME = re.compile(r"^(\d{20})\.seg$")
DICTIONARY_SUFFIX = ".zdict"
_DICTIONARY_NAME = re.compile(r"^(\d{20})\.zdict$")
_STREAM_NAME = re.compile(r"^\d{20}$")
_READ_BUFFER = 1024 * 1024
MAX_SEGMENT_NO = 2**63 - 1
"""The largest segment number: the catalog stores it as an SQLite (signed 64-bit) integer."""


def stream_dir_name(stream_id: int) -> str:
    return f"{stream_id:0{_NAME_DIGITS}d}"


def parse_stream_dir_name(name: str) -> int | None:
    """The stream id a directory name stands for; None for any other name, a number above the
    largest stream id (2**63-1) included, so callers report it as a foreign entry."""
    if not _STREAM_NAME.match(name):
        return None
    number = int(name)
    return number if number <= MAX_STREAM_ID else None


def segment_name(segment_no: int) -> str:
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
    return f"{dictionary_no:0{_NAME_DIGITS}d}{DICTIONARY_SUFFIX}"


def parse_dictionary_name(name: str) -> int | None:
    """The dictionary number a file name stands for; None for any other name, a number above
    ``record.MAX_DICTIONARY_NO`` included, so callers report it as foreign."""
    match = _DICTIONARY_NAME.match(name)
    if match is None:
        return None
    number = int(match.group(1))
    return number if number <= MAX_DICTIONARY_NO else None


def stream_path(data_dir: Path, stream_id: int) -> Path:
    return data_dir / STREAMS_DIR / stream_dir_name(stream_id)


def segment_path(data_dir: Path, stream_id: int, segment_no: int) -> Path:
    return stream_path(data_dir, stream_id) / segment_name(segment_no)


def dictionary_path(data_dir: Path, stream_id: int, dictionary_no: int) -> Path:
    return stream_path(data_dir, stream_id) / dictionary_name(dictionary_no)


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (files created or renamed in it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs_durably(path: Path) -> None:
    """Create ``path`` and missing parents, fsyncing each parent that gained an entry."""
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        directory.mkdir(exist_ok=True)
        fsync_dir(directory.parent)


QUARANTINE_SUFFIX = ".quarantine"


def quarantine_path(data_dir: Path, stream_id: int, segment_no: int, position: int) -> Path:
    """A new file for bytes cut from ``segment_no`` at ``position``: ``<segment>.<position>.quarantine``.

    If that name is taken (the same place was cut before), ``.1``, ``.2``, ... is added before the
    suffix, so an earlier quarantine file is never overwritten.
    """
    stem = f"{segment_name(segment_no)}.{position:0{_NAME_DIGITS}d}"
    directory = stream_path(data_dir, stream_id)
    candidate = directory / f"{stem}{QUARANTINE_SUFFIX}"
    n = 0
    while candidate.exists():
        n += 1
        candidate = directory / f"{stem}.{n}{QUARANTINE_SUFFIX}"
    return candidate


def segment_numbers_on_disk(stream_dir: Path) -> tuple[list[int], list[str]]:
    """The segment numbers found in a stream directory, sorted, and the names that are not ours."""
    numbers, foreign = [], []
    if not stream_dir.is_dir():
        return [], []
    for entry in os.listdir(stream_dir):
        number = parse_segment_name(entry)
        if number is not None:
            numbers.append(number)
        elif not entry.endswith(QUARANTINE_SUFFIX) and parse_dictionary_name(entry) is None:
            foreign.append(entry)
    return sorted(numbers), sorted(foreign)


def foreign_stream_entries(data_dir: Path) -> list[str]:
    """The names in ``<store>/streams`` that are not stream directories (out-of-range numbers included), sorted."""
    root = data_dir / STREAMS_DIR
    if not root.is_dir():
        return []
    return sorted(name for name in os.listdir(root) if parse_stream_dir_name(name) is None)


def dictionary_numbers_on_disk(stream_dir: Path) -> list[int]:
    """The numbers of the dictionary files in a stream directory, sorted."""
    if not stream_dir.is_dir():
        return []
    return sorted(n for n in map(parse_dictionary_name, os.listdir(stream_dir)) if n is not None)


def write_file_durably(path: Path, data: bytes) -> None:
    """Create ``path`` holding ``data``, durably: temp file, fsync, rename, fsync the directory."""
    temp = path.with_name(path.name + ".tmp")
    with temp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)
    fsync_dir(path.parent)


def file_digest(path: Path) -> bytes:
    """BLAKE3 of a whole file (the digest stored for a sealed segment)."""
    hasher = blake3.blake3()
    with path.open("rb") as f:
        while chunk := f.read(_READ_BUFFER):
            hasher.update(chunk)
    return hasher.digest()


class SegmentWriter:
    """The active segment of one stream, open for writing at explicit positions."""

    def __init__(self, path: Path, *, create: bool) -> None:
        self.path = path
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        self.fd = os.open(path, flags | os.O_CLOEXEC, 0o644)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def write_at(self, position: int, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self.fd, view, position)
            position += written
            view = view[written:]

    def sync(self) -> None:
        os.fdatasync(self.fd)

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, size)

    def close(self) -> None:
        os.close(self.fd)


@dataclass(frozen=True, slots=True)
class Frame:
    """One record frame read from a segment: where it starts, its header and its stored payload."""

    position: int
    header: FrameHeader
    stored: bytes


class IncompleteFrame(FrameError):
    """The segment ends inside a frame (a torn write, or a file cut short)."""


class SegmentReader:
    """Reads frames one after another from a position in a segment file, in bounded memory."""

    def __init__(self, path: Path, position: int = 0) -> None:
        self.path = path
        self.position = position
        self._file = path.open("rb", buffering=_READ_BUFFER)
        self._file.seek(position)

    def __enter__(self) -> SegmentReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def raw_file(self) -> BinaryIO:
        """The open file, for a caller that reads ahead itself (then ``seek`` before ``read_frame``)."""
        return self._file

    def seek(self, position: int) -> None:
        self._file.seek(position)
        self.position = position

    def read_frame(self) -> Frame | None:
        """The next frame, or None at the end of the file.

        Raises IncompleteFrame when the file ends inside a frame, FrameError when the bytes are not
        a valid frame. Either way ``self.position`` stays at the start of the bad frame.
        """
        head = self._file.read(HEADER_SIZE)
        if not head:
            return None
        if len(head) < HEADER_SIZE:
            raise IncompleteFrame(f"file ends {len(head)} bytes into a record header")
        header = parse_header(head)
        rest = self._file.read(header.stored_len + CHECKSUM_SIZE)
        if len(rest) < header.stored_len + CHECKSUM_SIZE:
            raise IncompleteFrame("file ends inside a record")
        stored = rest[: header.stored_len]
        (checksum,) = CHECKSUM.unpack(rest[header.stored_len :])
        if checksum != frame_checksum(head, stored):
            raise FrameError("checksum mismatch")
        frame = Frame(self.position, header, stored)
        self.position += header.frame_size
        return frame

    def frames(self, end: int | None = None) -> Iterator[Frame]:
        """Frames until ``end`` (a byte position) or the end of the file."""
        while end is None or self.position < end:
            frame = self.read_frame()
            if frame is None:
                return
            yield frame
