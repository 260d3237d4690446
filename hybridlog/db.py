"""SQLite through apsw: the one home of opening a database, its schema ladder and its driver errors.

A store has two SQLite files, ``catalog.db`` (``catalog.py``) and ``consumers.db``
(``consumers.py``). Both are opened by ``connect`` (the pragmas, each with its reason), both climb
the one ``PRAGMA user_version`` ladder in ``migrate`` (ordered SQL files: ``migrations/`` for the
catalog, ``migrations/consumers/`` for consumers), and an ``apsw.Error`` becomes a hybridlog error
here: ``catalog_open_error`` says what an error while opening the catalog means for it, and
``sqlite_errors`` translates every other driver error, with ``raise ... from``.
"""

from __future__ import annotations

import errno
import importlib.resources
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import apsw

from hybridlog.errors import (
    CatalogBusy,
    CatalogError,
    CatalogIOError,
    CatalogPermissionDenied,
    CatalogUnusable,
    StorageError,
)
from hybridlog.layout import sqlite_companions

DEFAULT_BUSY_TIMEOUT_MS = 5000
"""How long opening the catalog waits for another process's lock before raising CatalogBusy."""

# --- the schema ladder ---------------------------------------------------------------------------

Migration = tuple[int, str, str]
"""(version, file name, SQL) of one step of a schema ladder."""

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def migrations_dir() -> Path:
    """Where the schema SQL lives: inside the installed package, or at the top of a checkout."""
    packaged = importlib.resources.files("hybridlog").joinpath("migrations")
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "migrations"


def load_migrations(directory: Path) -> list[Migration]:
    """(version, file name, SQL) for every migration in ``directory``, in order; versions must be 1, 2, 3, ..."""
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if match is None:
            raise CatalogError(f"migration file {path} is not named NNNN_name.sql")
        found.append((int(match.group(1)), path.name, path.read_text(encoding="utf-8")))
    if [v for v, _, _ in found] != list(range(1, len(found) + 1)):
        raise CatalogError(f"migrations in {directory} are not numbered 0001, 0002, ...")
    return found


def catalog_migrations() -> list[Migration]:
    """The schema of ``catalog.db``, in order."""
    return load_migrations(migrations_dir())


def consumer_migrations() -> list[Migration]:
    """The schema of ``consumers.db``, in order."""
    return load_migrations(migrations_dir() / "consumers")


@contextmanager
def write_transaction(conn: apsw.Connection) -> Iterator[None]:
    """One write transaction that holds SQLite's write lock from its start, so what it reads
    cannot change before it writes (two processes writing one database take turns)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def migrate(conn: apsw.Connection, migrations: list[Migration], too_new: Callable[[int], StorageError]) -> None:
    """Apply the steps of ``migrations`` the database lacks, each in its own transaction.

    A database whose ``user_version`` is past the last step was written by a newer hybridlog:
    ``too_new(version)`` is raised and nothing is changed.
    """
    for version, _name, sql in migrations:
        with write_transaction(conn):  # the version is read under the write lock: one process applies each step
            found = int(conn.pragma("user_version"))
            if found > len(migrations):
                raise too_new(found)
            if found < version:
                conn.execute(sql)
                conn.pragma("user_version", version)


# --- opening -------------------------------------------------------------------------------------


def connect(
    path: Path,
    *,
    read_only: bool,
    busy_timeout_ms: int,
    durable_commits: bool,
    what: str,
    page_size: int | None = None,
    prepare: Callable[[apsw.Connection], None],
    error: Callable[[apsw.Error, apsw.Connection | None], StorageError],
) -> apsw.Connection:
    """An open connection to the SQLite file at ``path`` (``what``: its name in messages), made
    ready by ``prepare`` (a migration, or a version check); an SQLite error on the way is raised
    as ``error(e, the connection if there is one yet)``, and the connection is closed."""
    flags = apsw.SQLITE_OPEN_READONLY if read_only else apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
    conn: apsw.Connection | None = None
    try:
        conn = apsw.Connection(str(path), flags=flags)
        # Wait for a writer's WAL checkpoint (or another process's lock) instead of failing with
        # SQLITE_BUSY at once; after the wait the caller's error says busy, never damaged.
        conn.set_busy_timeout(busy_timeout_ms)
        if not read_only:
            if conn.readonly("main"):  # SQLite falls back to read-only when it may not write
                raise apsw.ReadOnlyError(f"the {what} file is not writable")
            if page_size is not None:  # takes effect only on a new, empty file: before WAL mode
                conn.pragma("page_size", page_size)
            # Readers (in other processes too) keep reading while a writer commits.
            conn.pragma("journal_mode", "wal")
            # FULL: a commit is on disk when it returns (consumer positions exist nowhere else).
            # NORMAL: commits skip the fsync (the catalog: the segment fsync is the durability
            # point, and the catalog is rebuilt from the segments if a power loss takes its last commits).
            conn.pragma("synchronous", "full" if durable_commits else "normal")
        prepare(conn)
    except apsw.Error as e:
        translated = error(e, conn)
        if conn is not None:
            conn.close()
        raise translated from e
    except BaseException:
        if conn is not None:
            conn.close()
        raise
    return conn


# --- driver errors -------------------------------------------------------------------------------

_BUSY = (apsw.BusyError, apsw.LockedError)
"""SQLite errors that mean another connection holds a lock: no verdict on the catalog."""
_OS_LEVEL = (apsw.CantOpenError, apsw.PermissionsError, apsw.ReadOnlyError, apsw.FullError, apsw.IOError)
"""SQLite errors that mean the operating system refused: no verdict on the catalog either."""
NO_VERDICT = (*_BUSY, *_OS_LEVEL)
"""SQLite errors that say nothing about a database's contents."""


def catalog_open_error(
    error: apsw.Error, conn: apsw.Connection | None, path: Path, *, read_only: bool, busy_timeout_ms: int
) -> CatalogError:
    """What an SQLite error while opening (or checking) the catalog at ``path`` says about it. Only
    proof that the file is not a usable catalog gives CatalogUnusable (which a writer answers with
    a rebuild): a busy file, a permission denied, a full disk or an I/O error says nothing about
    its contents."""
    if isinstance(error, _BUSY):
        return CatalogBusy(path, waited_s=busy_timeout_ms / 1000, detail=str(error))
    if isinstance(error, _OS_LEVEL):
        denied = _denied(path, read_only=read_only)
        if denied is not None:
            return CatalogPermissionDenied(denied, needs="read" if read_only else "read and write", detail=str(error))
        code = conn.system_errno if conn is not None else 0
        if isinstance(error, apsw.FullError) and not code:
            code = errno.ENOSPC
        why = f" [{errno.errorcode.get(code, code)}: {os.strerror(code)}]" if code else ""
        return CatalogIOError(f"cannot open catalog {path}: {error}{why}", path=path)
    return CatalogUnusable(
        f"cannot open catalog {path}: {error}",
        hint=f"a writer rebuilds it from the segments: run `hybridlog repair {path.parent}`",
    )


def _denied(path: Path, *, read_only: bool) -> Path | None:
    """The database file, companion or directory this process may not use as it needs, if any."""
    mode = os.R_OK if read_only else os.R_OK | os.W_OK
    for candidate in (path, *sqlite_companions(path)):
        if os.path.lexists(candidate) and not os.access(candidate, mode, effective_ids=True):
            return candidate
    if not read_only and not os.access(path.parent, os.W_OK | os.X_OK, effective_ids=True):
        return path.parent  # where SQLite creates the -wal and -shm files
    return None


@contextmanager
def sqlite_errors(message: str, *, error: type[StorageError] = CatalogError, hint: str | None = None) -> Iterator[None]:
    """An SQLite error in the block is raised as ``error(f"{message}: {e}", hint=hint)``; hybridlog's
    own errors pass through."""
    try:
        yield
    except apsw.Error as e:
        raise error(f"{message}: {e}", hint=hint) from e
