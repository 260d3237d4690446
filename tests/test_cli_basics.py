"""The command line as a new user meets it (issue 10).

Contracts tested here:

* a path that is not a store (missing, an empty directory, a directory of other files) is refused
  by every command that needs a store: exit 1, one line naming the path and saying how to create
  one; nothing is created. A store is a directory holding ``catalog.db``, ``streams/`` or ``LOCK``;
* ``init`` creates the store (missing parents too) or fails with one line; a second ``init`` says
  the store exists and changes nothing; a directory of other files is refused;
* ``repair --dry-run`` exits 3 when its plan is not empty (as ``check`` does) and 0 when it is;
* a reader that closes stdout early (``| head -1``) ends the command quietly with exit 141
  (real child processes and real pipes);
* Ctrl-C (a real SIGINT to a real child, sent at a point the child cannot have passed) exits 130
  with one line on stderr, in any command, at a prompt too;
* ``checkpoint --stream N`` refuses a stream that does not exist, writing nothing; counts are
  printed with correct plurals; a store locked by another writer names what to do on the command
  line, not the library's ``read_only=True``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cli_admin import DAMAGED, damage_payload, one_error_line, run, store_bytes, writer

from hybridlog import Storage
from hybridlog.cli import EXIT_BROKEN_PIPE, EXIT_DAMAGE, EXIT_ERROR, EXIT_INTERRUPTED, is_store
from hybridlog.layout import CATALOG_FILE, LOCK_FILE, STREAMS_DIR

GUARD = 60  # seconds a child may take to end after it was told to; only a hang reaches it

PIPE_FILLING_EVENTS = 5000
"""Events of 200 bytes: 1 MB of output, far more than a pipe (64 KiB) and Python's buffers hold, so
a child that prints them cannot have finished while its reader has taken only the first line."""


def tree(path: Path) -> list[str]:
    """Every path under ``path`` (and whether ``path`` exists at all)."""
    if not path.exists():
        return ["<missing>"]
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.fixture
def one_record_store(tmp_path: Path) -> Path:
    path = tmp_path / "one"
    with writer(path) as storage:
        storage.append(1, [b"only"])
    return path


@pytest.fixture
def big_store(tmp_path: Path) -> Path:
    """Stream 1 with PIPE_FILLING_EVENTS events, event i being ``i`` padded to 200 bytes."""
    path = tmp_path / "big"
    with writer(path) as storage:
        for first in range(0, PIPE_FILLING_EVENTS, 1000):
            storage.append(1, [str(i).encode().ljust(200, b".") for i in range(first, first + 1000)])
    return path


@pytest.fixture
def damaged_store(tmp_path: Path) -> Path:
    path = tmp_path / "damaged"
    with writer(path) as storage:
        storage.append(DAMAGED, [b"a0", b"a1"])
        storage.append(DAMAGED, [b"a2", b"a3"])
    damage_payload(path, DAMAGED, 2)
    return path


def child(*args: str, stdin: int = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    """``python -m hybridlog ARGS`` in a real child process, SIGINT at its default (as from a
    terminal: the test runner may have started us with SIGINT ignored, which a child inherits)."""
    return subprocess.Popen(
        [sys.executable, "-m", "hybridlog", *args],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Children a test starts; killed if still running when it is done."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


# --- what is a store -----------------------------------------------------------------------------------


NEEDS_A_STORE = [
    ["verify"],
    ["check"],
    ["read"],
    ["stats"],
    ["sql", "SELECT 1"],
    ["repair", "--dry-run"],
    ["rebuild-index"],
    ["checkpoint"],
    ["migrate", "--check"],
]


@pytest.mark.parametrize("args", NEEDS_A_STORE, ids=lambda a: a[0])
@pytest.mark.parametrize("where", ["missing", "empty", "other-files"])
def test_a_path_that_is_not_a_store_is_refused(tmp_path: Path, args: list[str], where: str) -> None:
    """A monitoring job pointed at the wrong path must fail, not report "ok"."""
    path = tmp_path / "target"
    if where != "missing":
        path.mkdir()
    if where == "other-files":
        (path / "notes.txt").write_text("not a store\n")
        (path / "data").mkdir()
    before = tree(path)
    code, out, err = run(args[0], str(path), *args[1:])
    assert code == EXIT_ERROR, (out, err)
    line = one_error_line(err)
    assert str(path) in line
    assert "hybridlog init" in line
    if where == "other-files":
        assert "is not a hybridlog store" in line
    else:
        assert line == f"Error: no store at {path} (create one with `hybridlog init {path}`)"
    assert tree(path) == before  # nothing created


def test_what_is_a_store(tmp_path: Path, damaged_store: Path) -> None:
    assert is_store(damaged_store)
    for name in (CATALOG_FILE, STREAMS_DIR, LOCK_FILE):  # any one of them makes a store
        path = tmp_path / f"with-{name}"
        path.mkdir()
        if name == STREAMS_DIR:
            (path / name).mkdir()
        else:
            (path / name).touch()
        assert is_store(path), name
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").touch()
    assert not is_store(tmp_path / "empty")
    assert not is_store(tmp_path / "file")
    assert not is_store(tmp_path / "missing")


# --- init ----------------------------------------------------------------------------------------------


def test_init_creates_the_store_and_its_parents(tmp_path: Path) -> None:
    store = tmp_path / "a" / "b" / "store"
    code, out, err = run("init", str(store))
    assert (code, out, err) == (0, "", f"initialised {store}\n")
    assert (store / CATALOG_FILE).is_file()
    assert (store / LOCK_FILE).is_file()
    assert is_store(store)
    code, out, err = run("verify", str(store))
    assert code == 0, err
    assert "ok: 0 records verified" in err + out


def test_init_in_an_empty_directory(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    assert run("init", str(store))[0] == 0
    assert (store / CATALOG_FILE).is_file()


def test_init_twice_says_the_store_exists_and_changes_nothing(one_record_store: Path) -> None:
    before = store_bytes(one_record_store)
    code, out, err = run("init", str(one_record_store))
    assert (code, out) == (0, "")
    assert one_error_line(err) == f"a store already exists at {one_record_store}; left as it is"
    assert store_bytes(one_record_store) == before


def test_init_that_cannot_create_the_directory_is_one_error_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    target = tmp_path / "file" / "store"
    code, _, err = run("init", str(target))
    assert code == EXIT_ERROR
    line = one_error_line(err)
    assert "cannot create store directory" in line
    assert str(target) in line
    assert (tmp_path / "file").read_text() == "x"


def test_init_refuses_a_directory_of_other_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine\n")
    before = tree(tmp_path)
    code, _, err = run("init", str(tmp_path))
    assert code == EXIT_ERROR
    assert "is not a hybridlog store" in one_error_line(err)
    assert tree(tmp_path) == before


# --- repair --dry-run ----------------------------------------------------------------------------------


def test_repair_dry_run_exits_like_check(damaged_store: Path, one_record_store: Path) -> None:
    before = store_bytes(damaged_store)
    assert run("check", str(damaged_store))[0] == EXIT_DAMAGE
    code, out, err = run("repair", str(damaged_store), "--dry-run")
    assert code == EXIT_DAMAGE
    assert out.startswith("repair plan:\n")
    assert "without --dry-run applies the plan" in one_error_line(err)
    assert store_bytes(damaged_store) == before
    assert run("check", str(one_record_store))[0] == 0
    assert run("repair", str(one_record_store), "--dry-run") == (0, "nothing to repair\n", "")


# --- stdout closed early -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "first"),
    [
        (["read", "--stream", "1"], b"0...."),
        (["read", "--stream", "1", "--records"], b'{"stream_id": 1, "offset": 0'),
        (["sql", "SELECT offset, payload FROM events", "--output", "csv"], b"offset,payload"),
    ],
    ids=["read", "read-records", "sql"],
)
def test_a_reader_that_stops_early_ends_the_command_quietly(
    big_store: Path, children: list[subprocess.Popen[bytes]], args: list[str], first: bytes
) -> None:
    """``hybridlog read STORE | head -1``: the reader takes one line and closes the pipe while the
    child still has most of its output to write; the child stops with no message and exit 141."""
    proc = child(args[0], str(big_store), *args[1:])
    children.append(proc)
    assert proc.stdout is not None
    assert proc.stderr is not None
    assert proc.stdout.readline().startswith(first)
    proc.stdout.close()
    assert proc.wait(timeout=GUARD) == EXIT_BROKEN_PIPE
    assert proc.stderr.read() == b""


# --- Ctrl-C --------------------------------------------------------------------------------------------


def test_ctrl_c_while_printing_exits_130_with_one_line(
    big_store: Path, children: list[subprocess.Popen[bytes]]
) -> None:
    """SIGINT after the first line: the child cannot have finished (its output fills the pipe)."""
    proc = child("read", str(big_store), "--stream", "1")
    children.append(proc)
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith(b"0....")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=GUARD)  # drains stdout so that the child can end
    assert proc.returncode == EXIT_INTERRUPTED
    assert err.decode().splitlines() == ["Error: interrupted"]


def test_ctrl_c_in_tail_exits_130_with_one_line(big_store: Path, children: list[subprocess.Popen[bytes]]) -> None:
    """``tail`` waits for records forever; SIGINT once it has printed the last one it found."""
    with Storage(big_store, read_only=True) as reader:
        last = reader.next_offset(1) - 1
    proc = child("tail", str(big_store), "--stream", "1", "--from-offset", str(last), "--records")
    children.append(proc)
    assert proc.stdout is not None
    assert json.loads(proc.stdout.readline())["offset"] == last
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=GUARD)
    assert proc.returncode == EXIT_INTERRUPTED
    assert err.decode().splitlines() == ["Error: interrupted"]


def test_ctrl_c_at_the_repair_prompt_exits_130_and_changes_nothing(
    damaged_store: Path, children: list[subprocess.Popen[bytes]]
) -> None:
    """SIGINT once the child has asked "apply this plan?" and waits for an answer."""
    before = store_bytes(damaged_store)
    proc = child("repair", str(damaged_store), stdin=subprocess.PIPE)
    children.append(proc)
    assert proc.stderr is not None
    seen = b""
    while b"apply this plan?" not in seen:
        chunk = os.read(proc.stderr.fileno(), 4096)
        assert chunk, f"the child ended before it asked: {seen!r}"
        seen += chunk
    proc.send_signal(signal.SIGINT)
    out, rest = proc.communicate(timeout=GUARD)
    assert proc.returncode == EXIT_INTERRUPTED
    assert b"repair plan:" in out
    assert (seen + rest).decode().splitlines()[-1] == "Error: interrupted"
    assert one_error_line((seen + rest).decode().split("\n", 1)[1]) == "Error: interrupted"
    assert store_bytes(damaged_store) == before


# --- checkpoint, plurals, the lock ---------------------------------------------------------------------


@pytest.mark.parametrize("streams", [["77"], ["1", "77"]])
def test_checkpoint_refuses_a_stream_that_does_not_exist(one_record_store: Path, streams: list[str]) -> None:
    before = store_bytes(one_record_store)
    code, out, err = run("checkpoint", str(one_record_store), *(a for s in streams for a in ("--stream", s)))
    assert (code, out) == (EXIT_ERROR, "")
    line = one_error_line(err)
    assert f"no stream 77 in {one_record_store}" in line
    assert "no checkpoint written" in line
    after = store_bytes(one_record_store)
    assert {k: v for k, v in after.items() if k != LOCK_FILE} == {k: v for k, v in before.items() if k != LOCK_FILE}
    assert (STREAMS_DIR + "/77") not in {str(p.relative_to(one_record_store)) for p in one_record_store.rglob("*")}


def test_counts_of_one_are_singular(one_record_store: Path) -> None:
    code, out, err = run("verify", str(one_record_store))
    assert code == 0, err
    assert "stream 1: ok, 1 record, head " in out
    assert "ok: 1 record verified" in out + err
    code, out, err = run("check", str(one_record_store))
    assert "ok: 1 stream, 1 record verified" in out + err
    code, out, _ = run("stats", str(one_record_store))
    assert out.splitlines()[-1].startswith("1 stream, 1 event, ")
    code, out, _ = run("rebuild-index", str(one_record_store), "--stream", "1")
    assert out.strip() == "stream 1: 1 record indexed"


def test_a_locked_store_says_what_to_do_on_the_command_line(one_record_store: Path) -> None:
    with writer(one_record_store):
        code, _, err = run("checkpoint", str(one_record_store))
    assert code == EXIT_ERROR
    line = one_error_line(err)
    assert f"process {os.getpid()}" in line
    assert "read_only" not in line
    assert "stop that process, or run this command once it has finished" in line
    assert "need no lock" in line
