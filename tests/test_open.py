"""Opening a store when something is in the way: every refusal is a typed error, and nothing changes.

Contracts tested here, each with the damage done for real:

* a catalog that another process keeps locked (``locking_mode=EXCLUSIVE``, or a transaction that
  blocks the migration an old catalog needs) is waited for up to ``busy_timeout``, then refused
  with ``CatalogBusy``; it is never moved aside and rebuilt, so global positions stay as they were;
* a catalog this user may not read or write (a child process at uid 65534) gives
  ``CatalogPermissionDenied``, never a rebuild;
* deleting or replacing ``LOCK`` under a live writer process does not let a second writer in
  (``StorageLocked``: the store directory itself is locked too), and the first writer stops
  writing (``LockLost``) and can still close;
* opening on a full disk (a real, full tmpfs) gives ``StorageIOError`` naming ENOSPC, holds no lock
  afterwards, and the same process opens the store once space is freed;
* a store path that is a file, a ``LOCK`` that is a directory, and a segment this user may not read
  give typed errors (the ``hybridlog`` command prints one line, exit 1), and change nothing.

The child processes run this file as a script (see ``child_main`` at the bottom); the ones that
must lack permissions drop to uid/gid 65534 first (the tests run as root).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import apsw
import pytest
from click.testing import CliRunner

from hybridlog import (
    CatalogBusy,
    CatalogIOError,
    InvalidConfiguration,
    LockLost,
    Storage,
    StorageError,
    StorageIOError,
    StorageLocked,
)
from hybridlog.cli import cli
from hybridlog.testing import harness
from hybridlog.testing.damage import genesis_events
from hybridlog.testing.harness import CHILD_TIMEOUT, read_line

THIS_FILE = Path(__file__).resolve()
FIXTURE = Path(__file__).parent / "fixtures" / "schema2_store"
NOBODY = 65534
SHORT_WAIT = 0.2  # seconds: busy_timeout for the tests that wait for a locked catalog


# --- helpers -----------------------------------------------------------------------------------------


def make_store(path: Path) -> None:
    """A store with two streams whose appends interleave, so a rebuild would renumber positions."""
    with Storage(path, max_segment_size=4096) as store:
        for i in range(30):
            store.append(i % 2, [f"event {i} ".encode() * 20])


def positions(path: Path) -> list[tuple[int, int, int]]:
    """(global position, stream, offset) of every record, read through a reader."""
    with Storage(path, read_only=True) as store:
        return [(g.global_position, g.record.stream_id, g.record.offset) for g in store.read_global(1, 1 << 30)]


@dataclass(frozen=True)
class CatalogState:
    inode: int
    content: bytes
    aside: list[str]


def catalog_state(store: Path) -> CatalogState:
    """What must not change: the catalog file itself, and no ``catalog.db.*`` file moved aside."""
    catalog = store / "catalog.db"
    return CatalogState(
        catalog.stat().st_ino,
        catalog.read_bytes(),
        sorted(p.name for p in store.iterdir() if p.name.startswith("catalog.db.")),
    )


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stderr


def assert_one_line_error(code: int, stderr: str, *words: str) -> None:
    assert code == 1, stderr
    assert stderr.startswith("Error: "), stderr
    assert stderr.count("\n") == 1, stderr
    assert "Traceback" not in stderr
    for word in words:
        assert word in stderr, stderr


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory uid 65534 can reach (pytest's tmp_path is under a root-only directory)."""
    path = Path(tempfile.mkdtemp(prefix="hybridlog-open-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB tmpfs, unmounted afterwards."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "--lazy", str(mount_point)], check=True)


def fill_to_the_brim(directory: Path) -> Path:
    """Write a file until the file system has not one byte left; returns it (delete it to free space)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for chunk in (1 << 16, 4096, 1):
            try:
                while True:
                    os.write(fd, bytes(chunk))
            except OSError as full:
                if full.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)
    return filler


def spawn(*args: str) -> subprocess.Popen[str]:
    return harness.spawn(THIS_FILE, *args, stdin=subprocess.PIPE)


def run_child(*args: str) -> dict[str, object]:
    """Run a child to the end; its one line of JSON."""
    child = spawn(*args)
    out, err = child.communicate(timeout=CHILD_TIMEOUT)
    assert child.returncode == 0, err
    answer: dict[str, object] = json.loads(out)
    return answer


@contextmanager
def catalog_holder(store: Path, how: str) -> Iterator[subprocess.Popen[str]]:
    """A child process holding ``store``'s catalog locked (``how``) until the block ends."""
    child = spawn("hold-catalog", str(store / "catalog.db"), how)
    try:
        assert read_line(child) == "holding"
        yield child
    finally:
        if child.poll() is None:
            child.communicate(timeout=CHILD_TIMEOUT)  # closing its stdin tells it to let go


def give_to_nobody(store: Path) -> None:
    for root, dirs, files in os.walk(store):
        for name in [*dirs, *files]:
            os.chown(Path(root) / name, NOBODY, NOBODY)
    os.chown(store, NOBODY, NOBODY)


# --- (1) a busy or unreadable catalog is never rebuilt ------------------------------------------------


@pytest.mark.parametrize("how", ["apsw-exclusive", "sqlite3-exclusive"])
def test_a_catalog_locked_by_another_process_is_waited_for_then_refused(store_dir: Path, how: str) -> None:
    """Another process holds the catalog in exclusive locking mode: CatalogBusy, nothing rebuilt."""
    make_store(store_dir)
    before_positions = positions(store_dir)
    before = catalog_state(store_dir)
    with catalog_holder(store_dir, how):
        with pytest.raises(CatalogBusy) as caught:
            Storage(store_dir, busy_timeout=SHORT_WAIT)
        assert str(store_dir / "catalog.db") in str(caught.value)
        assert "busy" in str(caught.value)
        with pytest.raises(CatalogBusy):
            Storage(store_dir, read_only=True, busy_timeout=SHORT_WAIT)
        assert catalog_state(store_dir) == before
        # The lock was released with the refusal: only the other process is in the way.
        with pytest.raises(CatalogBusy):
            Storage(store_dir, busy_timeout=0)
        code, stderr = run_cli("checkpoint", str(store_dir))  # the default wait, then one line
        assert_one_line_error(code, stderr, "is busy", "catalog.db")
        assert catalog_state(store_dir) == before
    assert positions(store_dir) == before_positions
    with Storage(store_dir) as store:
        assert store.recovery_results() == []
        store.append(0, [b"after"])
    assert positions(store_dir)[: len(before_positions)] == before_positions


def test_an_old_catalog_whose_migration_is_blocked_is_not_rebuilt(store_dir: Path) -> None:
    """A schema-2 catalog needs a write to migrate; another process's open write transaction blocks
    it: CatalogBusy after the wait, the catalog left at schema 2, not rebuilt."""
    shutil.copytree(FIXTURE, store_dir)
    undisturbed = store_dir.parent / "undisturbed"
    shutil.copytree(FIXTURE, undisturbed)
    Storage(undisturbed).close()  # migrated with nobody in the way
    before = catalog_state(store_dir)
    with catalog_holder(store_dir, "write-transaction"):
        with pytest.raises(CatalogBusy):
            Storage(store_dir, busy_timeout=SHORT_WAIT)
        assert catalog_state(store_dir) == before
    with Storage(store_dir) as store:
        assert store.schema_version() > 2  # migrated once nobody is in the way
        assert store.recovery_results() == []
    assert positions(store_dir) == positions(undisturbed)
    assert catalog_state(store_dir).aside == []


@pytest.mark.parametrize("bad", [-1, True, "5", float("nan"), 3601])
def test_busy_timeout_is_checked(store_dir: Path, bad: object) -> None:
    with pytest.raises(InvalidConfiguration, match="busy_timeout"):
        Storage(store_dir, busy_timeout=bad)  # type: ignore[arg-type]
    assert not store_dir.exists()


@pytest.mark.parametrize("mode", [0o600, 0o644], ids=["unreadable", "read-only"])
def test_a_catalog_this_user_may_not_use_is_refused_not_rebuilt(shared_dir: Path, mode: int) -> None:
    """The catalog belongs to root; a writer (and, when it is unreadable, a reader) at uid 65534 gets
    CatalogPermissionDenied, and the catalog is left as it was."""
    store = shared_dir / "store"
    make_store(store)
    before_positions = positions(store)
    give_to_nobody(store)
    os.chown(store / "catalog.db", 0, 0)
    (store / "catalog.db").chmod(mode)
    before = catalog_state(store)
    answer = run_child("as-nobody-open", str(store))
    assert answer["writer"] == ["CatalogPermissionDenied", "CatalogIOError", "StorageIOError"], answer
    assert "permission denied" in str(answer["writer_message"])
    assert str(store / "catalog.db") in str(answer["writer_message"])
    if mode == 0o600:
        assert answer["reader"] == ["CatalogPermissionDenied", "CatalogIOError", "StorageIOError"], answer
    assert answer["cli"] == 1, answer
    assert "permission denied" in str(answer["cli_stderr"]), answer
    assert catalog_state(store) == before
    assert positions(store) == before_positions


# --- (2) deleting LOCK under a live writer ------------------------------------------------------------


@pytest.mark.parametrize("damage", ["deleted", "replaced"])
def test_a_deleted_lock_file_lets_no_second_writer_in(store_dir: Path, damage: str) -> None:
    """A writer process runs; LOCK is deleted (or replaced by a new file). A second writer still gets
    StorageLocked; the first one's next appends raise LockLost and write nothing; it closes cleanly."""
    writer = spawn("writer", str(store_dir))
    assert harness.read_line(writer) == f"ready {writer.pid}"
    lock = store_dir / "LOCK"
    lock.unlink()
    if damage == "replaced":
        lock.write_text("")
    with pytest.raises(StorageLocked):
        Storage(store_dir)
    assert lock.exists() == (damage == "replaced")  # the refused writer created nothing
    code, stderr = run_cli("checkpoint", str(store_dir))
    assert_one_line_error(code, stderr, "locked for writing")

    assert writer.stdin is not None
    for _ in range(2):  # and it stays fenced
        writer.stdin.write("append\n")
        writer.stdin.flush()
        answer = json.loads(read_line(writer))
        assert answer["error"] == "LockLost", answer
        assert damage in answer["message"]
    writer.stdin.write("close\n")
    writer.stdin.flush()
    assert json.loads(read_line(writer)) == {"closed": True}
    writer.communicate(timeout=CHILD_TIMEOUT)
    assert writer.returncode == 0

    with Storage(store_dir) as store:  # the writer is gone: the store opens, holding only the first batch
        assert genesis_events(store, 0) == [b"first"]
        assert store.recovery_results() == []
        store.append(0, [b"second"])
        assert genesis_events(store, 0) == [b"first", b"second"]


def test_a_writer_in_the_same_process_is_refused_after_lock_is_deleted(store_dir: Path) -> None:
    with Storage(store_dir) as first:
        first.append(0, [b"a"])
        (store_dir / "LOCK").unlink()
        with pytest.raises(StorageLocked):
            Storage(store_dir)
        with pytest.raises(LockLost):
            first.append(0, [b"b"])
        assert genesis_events(first, 0) == [b"a"]  # reads still work
    with Storage(store_dir) as again:
        assert genesis_events(again, 0) == [b"a"]


# --- (11) a full disk at open -------------------------------------------------------------------------


@pytest.mark.parametrize("lock_file", ["empty", "with a pid"])
def test_opening_on_a_full_disk_fails_typed_and_keeps_no_lock(small_disk: Path, lock_file: str) -> None:
    """The disk is full: the open fails with StorageIOError naming ENOSPC, changes nothing, and once
    space is freed the same process opens the store. ``LOCK`` is empty after a clean close (writing
    the pid fails); a killed writer leaves its pid (the lock is taken, opening the catalog fails)."""
    store = small_disk / "store"
    make_store(store)
    before_positions = positions(store)
    Storage(store).close()  # the last connection removes catalog.db-wal and -shm: opening must create them
    if lock_file == "with a pid":
        (store / "LOCK").write_text("12345\n")
    before = catalog_state(store)
    filler = fill_to_the_brim(small_disk)
    with pytest.raises(StorageIOError) as caught:
        Storage(store)
    assert "ENOSPC" in str(caught.value)
    assert isinstance(caught.value, CatalogIOError) == (lock_file == "with a pid")
    assert catalog_state(store) == before
    code, stderr = run_cli("checkpoint", str(store))
    assert_one_line_error(code, stderr, "ENOSPC")
    with pytest.raises(StorageIOError):
        Storage(store)  # again: not StorageLocked, nothing was left locked

    filler.unlink()
    with Storage(store) as opened:
        opened.append(0, [b"after"])
    assert positions(store)[: len(before_positions)] == before_positions
    assert catalog_state(store).aside == []


# --- (8) paths that are not what they should be -------------------------------------------------------


def test_a_store_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store"
    path.write_bytes(b"not a store")
    for read_only in (False, True):
        with pytest.raises(StorageIOError, match="not a directory"):
            Storage(path, read_only=read_only)
    assert path.read_bytes() == b"not a store"


def test_a_lock_that_is_a_directory_is_refused_and_nothing_stays_locked(store_dir: Path) -> None:
    make_store(store_dir)
    before = catalog_state(store_dir)
    (store_dir / "LOCK").unlink()
    (store_dir / "LOCK").mkdir()
    with pytest.raises(StorageIOError, match="EISDIR") as caught:
        Storage(store_dir)
    assert not isinstance(caught.value, StorageLocked)
    code, stderr = run_cli("checkpoint", str(store_dir))
    assert_one_line_error(code, stderr, "EISDIR", "LOCK")
    assert (store_dir / "LOCK").is_dir()
    assert catalog_state(store_dir) == before
    (store_dir / "LOCK").rmdir()
    with Storage(store_dir) as store:  # the directory lock was let go with the refusal
        assert len(genesis_events(store, 0)) == 15


def test_a_segment_the_writer_may_not_read_gives_typed_errors(shared_dir: Path) -> None:
    """Stream 0's first segment belongs to root (mode 600); a writer at uid 65534 opens the store, and
    reading stream 0 gives StorageIOError (exit 1, one line), never a raw PermissionError."""
    store = shared_dir / "store"
    make_store(store)
    give_to_nobody(store)
    first = sorted((store / "streams" / f"{0:020d}").glob("*.seg"))[0]
    os.chown(first, 0, 0)
    first.chmod(0o600)
    before = first.read_bytes()
    answer = run_child("as-nobody-read", str(store))
    for call in ("read_from_genesis", "read_from", "read_global"):
        assert answer[call] == "StorageIOError", answer
    assert "EACCES" in str(answer["message"])
    assert str(first) in str(answer["message"])
    assert answer["stream 1"] == 15  # other streams keep working
    assert answer["cli"] == 1, answer
    assert "EACCES" in str(answer["cli_stderr"]), answer
    assert first.read_bytes() == before
    assert catalog_state(store).aside == []


# --- the children -------------------------------------------------------------------------------------


def child_hold_catalog(catalog: Path, how: str) -> None:
    """Hold ``catalog`` locked until stdin closes."""
    if how == "apsw-exclusive":
        conn = apsw.Connection(str(catalog))
        conn.pragma("locking_mode", "exclusive")
        conn.execute("BEGIN EXCLUSIVE; COMMIT")  # exclusive mode keeps the lock after the commit
    elif how == "sqlite3-exclusive":
        import sqlite3

        lite = sqlite3.connect(catalog, isolation_level=None)
        lite.execute("PRAGMA locking_mode=EXCLUSIVE")
        lite.execute("BEGIN EXCLUSIVE")
        lite.execute("COMMIT")
    elif how == "write-transaction":
        conn = apsw.Connection(str(catalog))
        conn.execute("BEGIN IMMEDIATE")
    else:
        raise SystemExit(f"unknown way to hold {how}")
    print("holding", flush=True)
    sys.stdin.read()


def become_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def error_names(error: BaseException) -> list[str]:
    return [c.__name__ for c in type(error).__mro__ if issubclass(c, StorageIOError)]


def child_as_nobody_open(store: Path) -> None:
    become_nobody()
    answer: dict[str, object] = {}
    for role, read_only in (("writer", False), ("reader", True)):
        try:
            Storage(store, read_only=read_only, busy_timeout=0).close()
            answer[role] = None
        except StorageError as e:
            answer[role], answer[f"{role}_message"] = error_names(e), str(e)
    result = CliRunner().invoke(cli, ["checkpoint", str(store)])
    answer["cli"], answer["cli_stderr"] = result.exit_code, result.stderr
    print(json.dumps(answer), flush=True)


def child_as_nobody_read(store: Path) -> None:
    become_nobody()
    answer: dict[str, object] = {}
    with Storage(store) as opened:
        calls: dict[str, Callable[[], object]] = {
            "read_from_genesis": lambda: opened.read_from_genesis(0, 0, 1 << 20),
            "read_from": lambda: opened.read_from(0, 3, 1 << 20),
            "read_global": lambda: opened.read_global(1, 1 << 20),
        }
        for name, call in calls.items():
            try:
                call()
                answer[name] = None
            except StorageIOError as e:  # anything else (PermissionError) fails the child
                answer[name], answer["message"] = type(e).__name__, str(e)
        answer["stream 1"] = len(genesis_events(opened, 1))
    result = CliRunner().invoke(cli, ["read", str(store), "--stream", "0"])
    answer["cli"], answer["cli_stderr"] = result.exit_code, result.stderr
    print(json.dumps(answer), flush=True)


def child_writer(store: Path) -> None:
    """Open a writer, append one batch, then obey stdin: ``append`` (report what happened), ``close``."""
    opened = Storage(store)
    opened.append(0, [b"first"])
    print(f"ready {os.getpid()}", flush=True)
    for line in sys.stdin:
        if line.strip() == "append":
            try:
                opened.append(0, [b"after the lock was lost"])
                print(json.dumps({"error": None}), flush=True)
            except StorageError as e:
                print(json.dumps({"error": type(e).__name__, "message": str(e)}), flush=True)
        elif line.strip() == "close":
            opened.close()
            print(json.dumps({"closed": True}), flush=True)
            return


def child_main(argv: list[str]) -> int:
    command, path, *rest = argv
    if command == "hold-catalog":
        child_hold_catalog(Path(path), *rest)
    elif command == "as-nobody-open":
        child_as_nobody_open(Path(path))
    elif command == "as-nobody-read":
        child_as_nobody_read(Path(path))
    elif command == "writer":
        child_writer(Path(path))
    else:
        raise SystemExit(f"unknown command {command}")
    return 0


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
