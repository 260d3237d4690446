"""Damage helpers: the one home of damaging a store on purpose, building its bytes by hand, and
checking that nothing was lost.

Used by the damage tests (``test_damage.py``, ``test_repair.py``), by every test that reads a
whole stream back (``genesis_records``, ``genesis_events``), and by anyone testing a wrapper of a
store against damage.

Every helper does real damage to real files: it flips bytes, cuts files, deletes them, or puts
other bytes in their place. Catalog helpers expect the store to be closed (no ``-wal`` file holding
commits), so the damage hits everything the catalog knows.
"""

from __future__ import annotations

import os
import re
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

import apsw

from hybridlog import ChainHash, CompressionKind, GlobalPosition, Offset, Record, RecordKind, StorageBackend, StreamId
from hybridlog.catalog_rows import BATCH_COLUMNS, expand_batch, pack_frame_ends, pack_kinds
from hybridlog.layout import CATALOG_FILE, QUARANTINE_SUFFIX, SEGMENT_SUFFIX, segment_path, stream_path
from hybridlog.record import (
    CHECKSUM,
    CHECKSUM_SIZE,
    HASH_FIELD,
    HEADER_SIZE,
    append_frame,
    new_compressor,
    parse_header,
)

CATALOG_SIDE_FILES = ("-wal", "-shm")

# Byte positions of fields inside a format-2 record frame (the table in hybridlog/record.py).
STREAM_ID_FIELD = 8
OFFSET_FIELD = 16
STORED_LEN_FIELD = 40
PREV_HASH_FIELD = 48

# --- segment files -----------------------------------------------------------------------------------


def flip_byte(path: Path, pos: int, mask: int = 0xFF) -> None:
    """XOR the byte at ``pos`` of ``path`` with ``mask`` (non-zero), in place."""
    assert mask & 0xFF, "a zero mask changes nothing"
    with path.open("r+b") as f:
        f.seek(pos)
        old = f.read(1)
        assert len(old) == 1, f"{path} has no byte {pos}"
        f.seek(pos)
        f.write(bytes([old[0] ^ (mask & 0xFF)]))


def tear_tail(path: Path, n: int) -> bytes:
    """Cut the last ``n`` bytes off ``path`` (a write that never finished); returns the bytes cut."""
    data = path.read_bytes()
    assert 0 <= n <= len(data)
    with path.open("r+b") as f:
        f.truncate(len(data) - n)
    return data[len(data) - n :]


def drop_segment(data_dir: Path, stream_id: int, segment_no: int) -> Path:
    """Delete one segment file of a stream; returns its path."""
    path = segment_path(data_dir, stream_id, segment_no)
    path.unlink()
    return path


def reseal_frame(path: Path, position: int) -> None:
    """Recompute the checksum of the frame at ``position``, so a change made to it passes the checksum.

    This is what someone who knows the format would do to hide an edit; only the record hash and
    the chain can catch it then.
    """
    data = bytearray(path.read_bytes())
    header = parse_header(bytes(data[position : position + HEADER_SIZE]))
    if not header.checksum_size:
        return  # a format-2 frame has no checksum: its hash is all there is to recompute
    end = position + header.header_size + header.stored_len
    data[end : end + CHECKSUM_SIZE] = CHECKSUM.pack(zlib.crc32(data[position:end]))
    path.write_bytes(bytes(data))


def rehash_frame(path: Path, position: int) -> None:
    """Recompute the record hash (then the checksum) of the uncompressed frame at ``position``.

    After changing a field the hash covers (such as ``prev_hash``), this makes the record valid on
    its own again: only the chain link to the record before it can catch the edit.
    """
    data = bytearray(path.read_bytes())
    header = parse_header(bytes(data[position : position + HEADER_SIZE]))
    assert not header.compressed, "rehash_frame handles uncompressed payloads only"
    payload = bytes(data[position + HEADER_SIZE : position + HEADER_SIZE + header.stored_len])
    own = header.hash_of(payload)
    data[position + HASH_FIELD : position + HASH_FIELD + len(own)] = own
    path.write_bytes(bytes(data))
    reseal_frame(path, position)


def add_extra_segment(data_dir: Path, stream_id: int, content: bytes, segment_no: int | None = None) -> Path:
    """Put a segment file the catalog never heard of into a stream's directory; returns its path.

    ``segment_no`` defaults to one past the highest segment on disk (a gap if larger).
    """
    if segment_no is None:
        segment_no = int(active_segment(data_dir, stream_id).stem) + 1
    path = segment_path(data_dir, stream_id, segment_no)
    assert not path.exists(), f"{path} already exists"
    path.write_bytes(content)
    return path


def active_segment(data_dir: Path, stream_id: int) -> Path:
    """The highest-numbered segment file of a stream (the one appends go to)."""
    return max(stream_path(data_dir, stream_id).glob(f"*{SEGMENT_SUFFIX}"))


def segment_files(data_dir: Path, stream_id: int) -> list[Path]:
    """A stream's segment files, in sequence order."""
    return sorted(stream_path(data_dir, stream_id).glob(f"*{SEGMENT_SUFFIX}"))


def quarantine_files(data_dir: Path, stream_id: int) -> list[Path]:
    """The files holding bytes cut from a stream (``*.quarantine``), sorted."""
    return sorted(stream_path(data_dir, stream_id).glob(f"*{QUARANTINE_SUFFIX}"))


# --- the catalog -------------------------------------------------------------------------------------


def catalog_path(data_dir: Path) -> Path:
    """The store's ``catalog.db``."""
    return data_dir / CATALOG_FILE


def _assert_no_pending_wal(data_dir: Path) -> None:
    wal = data_dir / (CATALOG_FILE + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0, "close the store first: its WAL holds commits"


def _remove_side_files(data_dir: Path) -> None:
    for suffix in CATALOG_SIDE_FILES:
        (data_dir / (CATALOG_FILE + suffix)).unlink(missing_ok=True)


def save_catalog(data_dir: Path, saved_copy: Path) -> Path:
    """Copy a closed store's catalog to ``saved_copy`` (for ``rollback_catalog`` later)."""
    _assert_no_pending_wal(data_dir)
    shutil.copyfile(catalog_path(data_dir), saved_copy)
    return saved_copy


def rollback_catalog(data_dir: Path, saved_copy: Path) -> None:
    """Replace the catalog with an older (or foreign) copy, as a restore from a backup would."""
    _remove_side_files(data_dir)
    shutil.copyfile(saved_copy, catalog_path(data_dir))


def delete_catalog(data_dir: Path) -> list[Path]:
    """Delete ``catalog.db`` and its ``-wal`` / ``-shm`` files; returns the files deleted."""
    gone = []
    for suffix in ("", *CATALOG_SIDE_FILES):
        path = data_dir / (CATALOG_FILE + suffix)
        if path.exists():
            path.unlink()
            gone.append(path)
    assert gone, f"{data_dir} has no catalog"
    return gone


def truncate_catalog(data_dir: Path, keep: int | None = None) -> bytes:
    """Cut the catalog file to ``keep`` bytes (default: half of it); returns the file as left."""
    _assert_no_pending_wal(data_dir)
    _remove_side_files(data_dir)
    path = catalog_path(data_dir)
    size = path.stat().st_size
    tear_tail(path, size - (size // 2 if keep is None else keep))
    return path.read_bytes()


def corrupt_catalog(data_dir: Path, table: str = "batches") -> int:
    """Overwrite the root page of ``table`` with a byte pattern; returns the byte position hit.

    The file stays an SQLite database (its header is intact) but ``PRAGMA quick_check`` fails,
    as after a bad sector or a stray write in the middle of the file.
    """
    _assert_no_pending_wal(data_dir)
    path = catalog_path(data_dir)
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        page_size = int(conn.pragma("page_size"))
        row = conn.execute("SELECT rootpage FROM sqlite_schema WHERE type = 'table' AND name = ?", (table,)).fetchone()
    finally:
        conn.close()
    assert row is not None, f"no table {table}"
    page = int(row[0])
    assert page > 1, "page 1 holds the file header; corrupting it makes the file no database at all"
    position = (page - 1) * page_size
    with path.open("r+b") as f:
        f.seek(position)
        f.write(bytes([0xA5, 0x5A]) * (page_size // 2))
    _remove_side_files(data_dir)
    return position


def edit_catalog(data_dir: Path, sql: str, bindings: tuple[object, ...] = ()) -> int:
    """Run one SQL statement on a closed store's catalog file, as someone with ``sqlite3`` would;
    returns how many rows it changed. The edit is in the file when this returns (the connection's
    close folds its WAL in)."""
    _assert_no_pending_wal(data_dir)
    conn = apsw.Connection(str(catalog_path(data_dir)))
    try:
        with conn:
            conn.execute(sql, bindings)
            changed = conn.changes()
    finally:
        conn.close()
    _assert_no_pending_wal(data_dir)
    return changed


def split_batches(data_dir: Path) -> None:
    """Rewrite a closed store's ``batches`` rows as one row per record (a catalog the store reads as
    well: what migration 0006 makes of an older one), so a test can edit one record's index entry
    with ``edit_catalog``: ``UPDATE batches SET ... WHERE stream_id = ? AND first_offset = ?``."""
    _assert_no_pending_wal(data_dir)
    conn = apsw.Connection(str(catalog_path(data_dir)))
    try:
        with conn:
            rows = list(conn.execute(f"SELECT {BATCH_COLUMNS} FROM batches"))  # noqa: S608
            conn.execute("DELETE FROM batches")
            for row in rows:
                for position, sid, offset, no, byte, length, kind, ts in expand_batch(row, data_dir / "catalog", None):
                    conn.execute(
                        f"INSERT INTO batches ({BATCH_COLUMNS}) VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?)",  # noqa: S608
                        (position, sid, offset, no, byte, pack_frame_ends([length]), pack_kinds([kind]), ts),
                    )
    finally:
        conn.close()
    _assert_no_pending_wal(data_dir)


def index_entry(data_dir: Path, stream_id: int, offset: int) -> tuple[int, int, int]:
    """(segment_no, position, frame length) of a record, as a closed store's catalog has it."""
    conn = apsw.Connection(str(catalog_path(data_dir)), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        for row in conn.execute(
            f"SELECT {BATCH_COLUMNS} FROM batches WHERE stream_id = ? AND first_offset <= ?"  # noqa: S608
            " ORDER BY first_offset DESC LIMIT 1",
            (stream_id, offset),
        ):
            for _, _, found, no, position, length, _, _ in expand_batch(row, data_dir / "catalog", stream_id):
                if found == offset:
                    return no, position, length
    finally:
        conn.close()
    raise KeyError(f"stream {stream_id} offset {offset} is not in the catalog")


def age_segments(data_dir: Path, seconds: int = 3600) -> None:
    """Make every segment file look last written ``seconds`` ago (a store that has sat for a while).

    A reader gives a segment written moments ago the benefit of the doubt: a writer may be about to
    commit the catalog rows for it. Damage tests on a store just built need files past that.
    """
    for path in data_dir.glob(f"streams/*/*{SEGMENT_SUFFIX}"):
        info = path.stat()
        os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns - seconds * 1_000_000_000))


def replace_catalog(data_dir: Path, content: bytes) -> None:
    """Put ``content`` (for example garbage that is no database at all) where the catalog was."""
    _remove_side_files(data_dir)
    catalog_path(data_dir).write_bytes(content)


# --- batches framed by hand --------------------------------------------------------------------------


@dataclass(frozen=True)
class FramedBatch:
    """A batch framed by hand: its records and the byte size of each record's frame."""

    records: list[Record]
    frame_sizes: list[int]


def frame_batch(
    out: bytearray,
    *,
    stream_id: int,
    offset: int,
    global_position: int,
    prev: bytes,
    timestamp_ns: int,
    payloads: list[bytes],
    compression: CompressionKind,
) -> FramedBatch:
    """Frame one batch of events onto ``out`` the way the store would, its records at global positions
    from ``global_position`` on."""
    compressor = new_compressor() if compression is CompressionKind.ZSTD else None
    records, sizes = [], []
    for i, payload in enumerate(payloads):
        start = len(out)
        own = append_frame(
            out,
            stream_id=stream_id,
            offset=offset + i,
            global_position=global_position + i,
            kind=RecordKind.EVENT,
            timestamp_ns=timestamp_ns,
            prev_hash=prev,
            payload=payload,
            batch_end=i == len(payloads) - 1,
            compressor=compressor,
        )
        sid, off = StreamId(stream_id), Offset(offset + i)
        position = GlobalPosition(global_position + i)
        records.append(Record(sid, off, RecordKind.EVENT, timestamp_ns, ChainHash(prev), own, payload, position))
        sizes.append(len(out) - start)
        prev = own
    return FramedBatch(records, sizes)


# --- whole streams, read back ------------------------------------------------------------------------


def genesis_records(store: StorageBackend, stream_id: int) -> list[Record]:
    """Every record of a stream, checkpoints included, verified from offset 0: a whole-stream walk
    (``iter_records(..., anchored=False)``), where the paged ``read_records_from_genesis`` gives one
    ``max_bytes`` page."""
    return list(store.iter_records(stream_id, 0, anchored=False))


def genesis_events(store: StorageBackend, stream_id: int) -> list[bytes]:
    """Every event payload of a stream, verified from offset 0 (``genesis_records``' events)."""
    return [r.payload for r in store.iter_records(stream_id, 0, anchored=False) if r.kind is RecordKind.EVENT]


# --- nothing lost ------------------------------------------------------------------------------------

_QUARANTINE_NAME = re.compile(
    r"(?P<segment>\d{20}\.seg)\.(?P<position>\d{20})(?:\.\d+)?" + re.escape(QUARANTINE_SUFFIX)
)


def cut_position(quarantine: Path, segment: Path) -> int | None:
    """Where in ``segment`` the bytes of ``quarantine`` were cut from (None: not cut from it)."""
    match = _QUARANTINE_NAME.fullmatch(quarantine.name)
    if match is None or quarantine.parent != segment.parent or match["segment"] != segment.name:
        return None
    return int(match["position"])


def stream_bytes(data_dir: Path) -> dict[Path, bytes]:
    """Every segment and quarantine file of every stream, by path relative to ``data_dir``."""
    return {p.relative_to(data_dir): p.read_bytes() for p in sorted(data_dir.glob("streams/*/*")) if p.is_file()}


def assert_no_bytes_lost(
    before: dict[Path, bytes], data_dir: Path, appended: dict[Path, int] | None = None
) -> dict[Path, bytes]:
    """Every byte of ``before`` (a ``stream_bytes`` snapshot) is still in a segment or quarantine file.

    Each segment file of ``before`` must read back as: what is left of it, followed by the new
    quarantine files cut from it (``<segment>.<position>.quarantine``), each starting exactly where
    the previous part ended, and every new quarantine file must be one of those parts. Quarantine
    files of ``before`` must be unchanged. ``appended``: bytes a repair appended at the end of
    segment files (its marker records, ``repair_marker_bytes``), left out of the comparison.
    Returns the new quarantine files and their contents.
    """
    after = stream_bytes(data_dir)
    for path, n in (appended or {}).items():
        after[path] = after[path][: len(after[path]) - n]
    new_quarantine = {
        path: data for path, data in after.items() if path not in before and path.name.endswith(QUARANTINE_SUFFIX)
    }
    accounted: set[Path] = set()
    for path, data in before.items():
        if path.name.endswith(QUARANTINE_SUFFIX):
            assert after.get(path) == data, f"quarantine file {path} changed"
            continue
        rebuilt = after.get(path, b"")
        cuts = sorted((position, q) for q in new_quarantine if (position := cut_position(q, path)) is not None)
        for position, q in cuts:
            assert position == len(rebuilt), f"{q} does not start where {path} ends"
            rebuilt += new_quarantine[q]
            accounted.add(q)
        assert rebuilt == data, f"bytes of {path} are lost"
    assert accounted == set(new_quarantine), "quarantine files that no segment was cut into"
    assert sum(map(len, after.values())) >= sum(map(len, before.values()))
    return new_quarantine
