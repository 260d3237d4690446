"""Names in a store that hybridlog did not make: reported and left alone, never fatal.

Contracts tested here:

* a directory under ``streams/`` whose name is 20 digits but a number above the largest stream id
  (2**63-1) is a foreign entry like any other name: ``Storage(dir)`` (writer and reader),
  ``check()``, ``rebuild_catalog()``, and ``hybridlog check / repair / rebuild-index / verify``
  work, report it (``check``) and leave it and its contents byte for byte as they were;
* a file in a stream directory named like a segment or a dictionary, but with a number out of range
  (a segment number above 2**63-1, a dictionary number above ``record.MAX_DICTIONARY_NO``), is a
  foreign file of that stream: reported by ``check``, never read, never moved, and the stream
  keeps working (appends, reads, verify);
* a name at the top of a store that no part of hybridlog makes is a foreign file of the store:
  reported by ``check`` (layout.foreign_store_entries), needs no repair, left alone.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from click.testing import CliRunner

from hybridlog import FindingKind, Storage
from hybridlog.cli import cli
from hybridlog.layout import (
    MAX_SEGMENT_NO,
    STREAMS_DIR,
    parse_dictionary_name,
    parse_segment_name,
    parse_stream_dir_name,
    stream_path,
)
from hybridlog.record import MAX_DICTIONARY_NO
from hybridlog.testing.damage import genesis_events
from hybridlog.types import MAX_STREAM_ID

TOO_BIG = "99999999999999999999"  # 20 digits, above 2**64 too


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` and the bytes of every file (None for a directory)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def make_store(path: Path) -> list[bytes]:
    with Storage(path) as store:
        store.append(1, [b"one", b"two"])
        store.append(2, [b"three"])
        return genesis_events(store, 1)


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_parsers_refuse_numbers_out_of_range() -> None:
    assert parse_stream_dir_name(f"{MAX_STREAM_ID:020d}") == MAX_STREAM_ID
    assert parse_stream_dir_name(f"{MAX_STREAM_ID + 1:020d}") is None
    assert parse_stream_dir_name(TOO_BIG) is None
    assert parse_segment_name(f"{MAX_SEGMENT_NO:020d}.seg") == MAX_SEGMENT_NO
    assert parse_segment_name(f"{MAX_SEGMENT_NO + 1:020d}.seg") is None
    assert parse_segment_name(f"{TOO_BIG}.seg") is None
    assert parse_dictionary_name(f"{MAX_DICTIONARY_NO:020d}.zdict") == MAX_DICTIONARY_NO
    assert parse_dictionary_name(f"{MAX_DICTIONARY_NO + 1:020d}.zdict") is None


def test_a_stream_directory_above_the_largest_stream_id_is_reported_and_left_alone(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    events = make_store(store_dir)
    # A copy of a real stream directory under an out-of-range number: it holds a valid segment.
    stray = store_dir / STREAMS_DIR / TOO_BIG
    shutil.copytree(stream_path(store_dir, 1), stray)
    before = snapshot(stray)

    with Storage(store_dir) as store:  # the writer's open-time recovery
        assert genesis_events(store, 1) == events
        assert store.damaged_streams() == {}
        report = store.check()
        assert [(f.stream_id, f.problem, f.repair) for f in report.findings] == [(None, FindingKind.FOREIGN_FILE, None)]
        assert TOO_BIG in report.findings[0].message
        assert report.ok
        store.append(1, [b"after"])
        store.rebuild_catalog()
        assert genesis_events(store, 1) == [*events, b"after"]
        assert sorted(store.stream_ids()) == [1, 2]
    with Storage(store_dir, read_only=True) as reader:
        assert genesis_events(reader, 1) == [*events, b"after"]
        assert reader.check().ok

    for command in (["check"], ["repair", "--yes"], ["rebuild-index"], ["verify"], ["stats"]):
        code, out, err = run(*command, str(store_dir))
        assert code == 0, (command, out, err)
        assert "Traceback" not in out + err
    code, out, _ = run("check", str(store_dir))
    assert f"{STREAMS_DIR}/{TOO_BIG}" in out
    assert snapshot(stray) == before


def test_segment_and_dictionary_names_out_of_range_are_foreign_files(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    events = make_store(store_dir)
    directory = stream_path(store_dir, 1)
    names = [f"{TOO_BIG}.seg", f"{MAX_SEGMENT_NO + 1:020d}.seg", f"{MAX_DICTIONARY_NO + 1:020d}.zdict"]
    for name in names:
        (directory / name).write_bytes(b"not ours")
    before = snapshot(directory)

    with Storage(store_dir) as store:
        assert store.damaged_streams() == {}
        assert genesis_events(store, 1) == events
        store.append(1, [b"after"])
        report = store.check()
        assert report.ok
        assert sorted(f.message for f in report.findings if f.problem == FindingKind.FOREIGN_FILE) == sorted(
            f"file {name} is not a segment, dictionary or quarantine file" for name in names
        )
    for command in (["check"], ["repair", "--yes"], ["rebuild-index"], ["verify"]):
        code, out, err = run(*command, str(store_dir))
        assert code == 0, (command, out, err)
    with Storage(store_dir, read_only=True) as reader:
        assert genesis_events(reader, 1) == [*events, b"after"]
    after = snapshot(directory)
    assert {name: after[name] for name in names} == {name: before[name] for name in names}


def test_names_at_the_top_of_a_store_that_no_part_of_it_makes_are_reported_and_left_alone(tmp_path: Path) -> None:
    """A file or directory beside ``catalog.db`` that hybridlog did not make (a note, a backup) is
    a foreign file: ``check`` names it, needs no repair, and nothing touches it. What hybridlog
    makes there (the catalog and its companions, a catalog a rebuild kept aside, ``consumers.db``,
    ``LOCK``, ``streams/``) is never reported."""
    store_dir = tmp_path / "store"
    events = make_store(store_dir)
    with Storage(store_dir) as store:
        store.register_consumer("reader", None)  # makes consumers.db
        store.rebuild_catalog()  # keeps the old catalog aside as catalog.db.<time>.aside
        assert store.check().findings == []
    (store_dir / "notes.txt").write_text("backup taken on Monday\n")
    (store_dir / "catalog.db.bak").write_bytes(b"not ours")
    (store_dir / "old").mkdir()
    before = snapshot(store_dir)

    with Storage(store_dir, read_only=True) as reader:
        report = reader.check()
    assert [(f.stream_id, f.problem, f.repair) for f in report.findings] == [(None, FindingKind.FOREIGN_FILE, None)] * 3
    assert [f.message.split(" ")[0] for f in report.findings] == ["catalog.db.bak", "notes.txt", "old"]
    assert report.ok
    code, out, _ = run("check", str(store_dir))
    assert code == 0
    assert "notes.txt is not part of a store" in out
    assert run("repair", str(store_dir), "--yes")[0] == 0
    with Storage(store_dir) as store:
        assert genesis_events(store, 1) == events
    after = snapshot(store_dir)
    assert {k: v for k, v in after.items() if k in ("notes.txt", "catalog.db.bak", "old")} == {
        k: v for k, v in before.items() if k in ("notes.txt", "catalog.db.bak", "old")
    }
