"""How a store's ``catalog.db`` is opened: the one home of choosing the file a store works with.

A reader opens the file at the path, and remembers which file it was (its identity): a rebuild in
another process renames a new catalog over it, and ``Storage`` follows by opening the new one. A
writer (holding ``LOCK``) opens the catalog, or creates it for a new store, or rebuilds it from the
segments when it is proven unusable; what opening then recovers is ``recovery.py``'s
(``Storage._open`` runs it). A rebuild asked for later (``replace_catalog``) moves the open
catalog aside for the new one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from hybridlog.catalog import Catalog
from hybridlog.catalog_rebuild import rebuild_catalog
from hybridlog.errors import CatalogUnusable, StorageIOError
from hybridlog.layout import CATALOG_FILE, stream_ids_on_disk
from hybridlog.recovery import ReconcileResult
from hybridlog.segment import fsync_dir

log = logging.getLogger(__name__)


def file_identity(path: Path) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the file at ``path``; None if there is none."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def open_reader_catalog(data_dir: Path, busy_timeout_ms: int) -> tuple[Catalog, tuple[int, int]] | None:
    """A reader's catalog and its file's identity; None while the store has no catalog yet."""
    path = data_dir / CATALOG_FILE
    for _attempt in range(3):
        identity = file_identity(path)
        if identity is None:
            return None
        catalog = Catalog(path, read_only=True, busy_timeout_ms=busy_timeout_ms)
        if file_identity(path) != identity:
            catalog.close()  # replaced while we opened it: open the new one
        elif catalog.schema_version() == 0:
            catalog.close()  # a writer is creating it right now: not a catalog yet, look again later
            return None
        else:
            return catalog, identity
    return None


def open_or_rebuild_catalog(
    data_dir: Path, now: Callable[[], int], busy_timeout_ms: int
) -> tuple[Catalog, list[ReconcileResult]]:
    """A writer's catalog, migrated; rebuilt from the segments if it is missing or unusable (with
    what the rebuild did).

    Unusable means proven so (not a database, failing ``quick_check``): a catalog that is
    busy (CatalogBusy, after ``busy_timeout``), unreadable (CatalogPermissionDenied) or on a
    failing disk (CatalogIOError) raises, and is left exactly as it is.
    """
    path = data_dir / CATALOG_FILE
    problem: str | None = None
    if not path.exists():
        if not stream_ids_on_disk(data_dir):
            catalog = Catalog.create(path)  # a new store
            fsync_dir(data_dir)
            return catalog, []
        problem = "catalog file missing"
    else:
        try:
            catalog = Catalog(path, read_only=False, busy_timeout_ms=busy_timeout_ms)
        except CatalogUnusable as e:
            problem = f"catalog unusable: {e.message}"
        else:
            try:
                health = catalog.health_problem()
            except BaseException:
                catalog.close()
                raise
            if health is None:
                return catalog, []
            catalog.close()
            problem = f"catalog failed quick_check: {health}"
    log.warning("store %s: %s; rebuilding the catalog from the segments", data_dir, problem)
    return rebuild_catalog(data_dir, now, found=problem)


def replace_catalog(
    data_dir: Path, now: Callable[[], int], *, found: str, retiring: Catalog | None
) -> tuple[Catalog, list[ReconcileResult]]:
    """A catalog built from every stream's segments, renamed over the ``retiring`` one (readers
    keep reading the old file until then); ``retiring`` is closed either way."""
    try:
        return rebuild_catalog(data_dir, now, found=found, retiring=retiring)
    except BaseException as e:
        if retiring is not None:
            retiring.close()
        if isinstance(e, OSError):
            raise StorageIOError(f"cannot rebuild the catalog of {data_dir}: {e}") from e
        raise
