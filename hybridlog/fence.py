"""The fence: a store whose streams another writer host has taken over refuses appends.

Writers take streams over through the object store (``tiering.py``): each manifest carries its
uploader's writer epoch, and a host that takes a store over publishes, for every stream, a
manifest with a higher epoch before it writes (``Tiering.claim``). The old writer learns of it
when its uploader next reads a manifest of a higher epoch: the uploader then writes the store's
``FENCED`` file (durably, with the reason) before it raises WriterFenced, and from the next group
commit on the store's writer refuses every append with that WriterFenced (one ``stat`` a group).
A claim by this store with a still higher epoch removes the file (taking the store back).

The file lives at the top of the store, so an uploader in another process (``hybridlog tier``
beside the writer) fences the writer too.
"""

from __future__ import annotations

from pathlib import Path

from hybridlog.errors import StorageIOError, WriterFenced, os_error_detail
from hybridlog.layout import FENCE_FILE
from hybridlog.segment import fsync_dir, write_file_durably


def fence_store(data_dir: Path, reason: str) -> None:
    """Make the store refuse appends from now on, saying ``reason``."""
    write_file_durably(data_dir / FENCE_FILE, reason.encode())


def unfence_store(data_dir: Path) -> None:
    """Let the store append again (its writer has taken its streams back)."""
    path = data_dir / FENCE_FILE
    if path.exists():
        path.unlink()
        fsync_dir(data_dir)


def fence_error(data_dir: Path) -> WriterFenced | None:
    """The WriterFenced the store's appends get, or None when it is not fenced."""
    path = data_dir / FENCE_FILE
    try:
        reason = path.read_text(encoding="utf-8", errors="replace").strip()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StorageIOError(f"cannot read {path}: {os_error_detail(e)}", path=path) from e
    return WriterFenced(f"this store is fenced: another writer took its streams over ({reason})")
