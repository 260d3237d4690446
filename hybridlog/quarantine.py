"""The one home of every operation that cuts, moves, renames or deletes a store's data bytes.

Everything else in the package only appends to segment files (the writer, a repair's markers) or
reads them. Open-time recovery (``recovery.py``), re-indexing and the catalog rebuild
(``catalog_rebuild.py``) and repair (``stream_repair.py``) decide *what* to cut; the operations
here do it, the one way each is safe to do:

* ``cut_tail``: a segment's bytes from a position to its end are copied into a quarantine file,
  then the segment is cut there (a segment cut to nothing is removed); a tail of nothing but
  zeros (space a writer reserved ahead of its data and did not give back) is cut without a copy,
  as ``trim_reserved_zeros`` cuts such zeros past the catalog's end before recovery compares sizes;
* ``move_segment_aside``: a whole segment file is renamed to a quarantine name;
* ``remove_empty_segment``: an empty segment file (no bytes to keep) is removed;
* ``reseal_dictionary``: a damaged dictionary file is replaced by the same dictionary correctly
  sealed, the damaged file kept under a quarantine name;
* ``keep_catalog_aside`` and ``put_catalog_in_place``: a rebuilt catalog replaces the old one,
  which is kept aside.

Durability, the same rules for all of them:

1. A copy kept aside is durable before the original loses its bytes (temp file, fsync, rename,
   fsync the directory: ``segment.write_file_durably``), so a crash in between loses nothing and
   leaves at worst the bytes twice, which a second run cuts the same way.
2. A cut (``truncate``) is fsynced on the file before the operation returns: a power loss cannot
   bring the cut bytes back under the catalog that is committed next.
3. A rename, link or removal is made durable by fsyncing the directory that holds the names.
4. A file replaced under its own name (a dictionary, the catalog) stays reachable under a second
   name (a hard link) before the new file is renamed over it: there is no moment without it.

Cut bytes are never thrown away: quarantine files are named by ``layout.quarantine_path`` /
``layout.kept_copy_path`` and never overwritten. Each segment operation returns the
``RecoveryEntry`` its caller logs, with the ``found`` and ``action`` the caller names.

Two cuts live elsewhere on purpose, both steps of the append path: the writer's undo of its own
group that failed before it was acknowledged (``writer.py``, ``_undo_writes``), and giving back the
zeros it reserved past its data (``segment.SegmentWriter.trim``).
``tests/test_quarantine.py`` fails if any other module calls a file-cutting operation.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from hybridlog.catalog_rows import RecoveryEntry
from hybridlog.dictionary import StreamDictionary
from hybridlog.layout import (
    dictionary_path,
    kept_copy_path,
    quarantine_path,
    segment_path,
    sqlite_companions,
)
from hybridlog.segment import fsync_dir, write_file_durably, zeros_only
from hybridlog.types import RecoveryAction, StreamId

log = logging.getLogger(__name__)


def relative_name(data_dir: Path, path: Path) -> str:
    """How a kept file is named in ``recovery_log.kept_as``: relative to the store."""
    return str(path.relative_to(data_dir))


# --- segment files -------------------------------------------------------------------------------


def cut_tail(
    data_dir: Path,
    stream_id: StreamId,
    segment_no: int,
    position: int,
    *,
    found: str,
    action: str,
    first_offset: int | None = None,
) -> RecoveryEntry:
    """Save a segment's bytes from ``position`` to its end aside, then cut the segment there.

    The saved copy is durable before the cut (rule 1), the cut before the return (rule 2). A
    segment cut to nothing is removed (rule 3).
    """
    path = segment_path(data_dir, stream_id, segment_no)
    with path.open("rb") as f:
        f.seek(position)
        tail = f.read()
    if tail and not tail.strip(b"\0"):
        return _trim_zeros(data_dir, stream_id, segment_no, position, len(tail))
    kept = quarantine_path(data_dir, stream_id, segment_no, position)
    write_file_durably(kept, tail)
    if position == 0:
        path.unlink()
        fsync_dir(path.parent)
    else:
        with path.open("r+b") as f:
            f.truncate(position)
            os.fsync(f.fileno())
    log.warning("stream %d: cut %d bytes from %s at byte %d, kept in %s", stream_id, len(tail), path, position, kept)
    return RecoveryEntry(
        stream_id,
        found=found,
        action=action,
        segment_no=segment_no,
        start_byte=position,
        end_byte=position + len(tail),
        first_offset=first_offset,
        kept_as=relative_name(data_dir, kept),
    )


def _trim_zeros(data_dir: Path, stream_id: StreamId, segment_no: int, position: int, size: int) -> RecoveryEntry:
    """Cut a tail of zeros off a segment: space reserved ahead of the data by a writer that stopped
    without closing (``SegmentWriter.preallocate``). Zeros hold nothing, so nothing is kept."""
    path = segment_path(data_dir, stream_id, segment_no)
    with path.open("r+b") as f:
        f.truncate(position)
        os.fsync(f.fileno())
    if position == 0:
        path.unlink()
        fsync_dir(path.parent)
    log.info("stream %d: trimmed %d zero bytes reserved past the data of %s", stream_id, size, path)
    return RecoveryEntry(
        stream_id,
        found="zero bytes past the last record (space reserved ahead of the data)",
        action=RecoveryAction.TRIMMED,
        segment_no=segment_no,
        start_byte=position,
        end_byte=position + size,
    )


def trim_reserved_zeros(path: Path, end: int) -> None:
    """Cut the zeros past the committed ``end`` of a stream's last segment, when there is nothing
    else there: space its writer reserved ahead (``SegmentWriter.preallocate``) and did not give back
    because it stopped without closing. They hold nothing, so this is not a recovery action;
    anything else past ``end`` is left for recovery to judge (rule 2 for the cut)."""
    with path.open("r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size <= end or not zeros_only(f.fileno(), end, size):
            return
        f.truncate(end)
        os.fsync(f.fileno())
    log.info("trimmed %d zero bytes reserved past the data of %s", size - end, path)


def move_segment_aside(
    data_dir: Path, stream_id: StreamId, segment_no: int, *, found: str, action: str
) -> RecoveryEntry:
    """Move a whole segment file aside (renamed, not copied) so the stream no longer includes it
    (rule 3)."""
    path = segment_path(data_dir, stream_id, segment_no)
    size = path.stat().st_size
    kept = quarantine_path(data_dir, stream_id, segment_no, 0)
    path.replace(kept)
    fsync_dir(path.parent)
    log.warning("stream %d: moved segment %s aside to %s", stream_id, path, kept)
    return RecoveryEntry(
        stream_id,
        found=found,
        action=action,
        segment_no=segment_no,
        start_byte=0,
        end_byte=size,
        kept_as=relative_name(data_dir, kept),
    )


def remove_empty_segment(data_dir: Path, stream_id: StreamId, segment_no: int, *, action: str) -> RecoveryEntry:
    """Remove an empty segment file: a rotation created it and stopped before writing to it.

    It holds no bytes, and the next rotation must be able to create it again (rule 3).
    """
    path = segment_path(data_dir, stream_id, segment_no)
    path.unlink()
    fsync_dir(path.parent)
    log.warning("stream %d: removed empty segment file %s left by an interrupted rotation", stream_id, path)
    return RecoveryEntry(
        stream_id, found="empty segment file the catalog does not know", action=action, segment_no=segment_no
    )


# --- dictionary files ----------------------------------------------------------------------------


def reseal_dictionary(
    data_dir: Path, stream_id: StreamId, dictionary: StreamDictionary, *, action: str
) -> RecoveryEntry:
    """Replace a damaged dictionary file with the same dictionary, correctly sealed; the damaged file
    stays as ``<name>.quarantine`` (a hard link made before the new file is renamed over it: rule 4)."""
    path = dictionary_path(data_dir, stream_id, dictionary.number)
    kept = kept_copy_path(path)
    os.link(path, kept)
    write_file_durably(path, dictionary.file_bytes())
    return RecoveryEntry(
        stream_id,
        found=f"dictionary file {path.name} damaged; the records that need it verify with its content",
        action=action,
        kept_as=str(kept.relative_to(data_dir)),
    )


# --- the catalog file ----------------------------------------------------------------------------


def keep_catalog_aside(path: Path, kept: Path) -> None:
    """Keep the catalog at ``path`` aside as ``kept`` while it stays in place (rule 4), and move its
    WAL and shared memory with it (they must leave before a new file arrives under ``path``: SQLite
    would read them as the new file's). The caller has folded the WAL into the file first."""
    try:
        os.link(path, kept)
    except FileExistsError:
        pass  # a retry after a crash between this step and the rename
    except OSError:  # a file system without hard links: a copy keeps it just as well
        shutil.copyfile(path, kept)
    for source, target in zip(sqlite_companions(path), sqlite_companions(kept), strict=True):
        if source.exists():
            source.replace(target)


def put_catalog_in_place(building: Path, path: Path) -> None:
    """The swap: one rename of the complete catalog ``building`` over ``path``, then the directory
    fsync that makes it durable (rule 3). The caller has fsynced ``building``'s bytes."""
    building.replace(path)
    fsync_dir(path.parent)
