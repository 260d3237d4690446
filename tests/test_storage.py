"""Behaviour of the file-backed Storage that the backend contract does not cover.

Failure in the middle of the write path, catalog versions, limits, rotation bookkeeping,
threads, and the wheel carrying the migrations.
"""

from __future__ import annotations

import importlib.metadata
import itertools
import os
import subprocess
import sys
import threading
import tomllib
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path

import apsw
import blake3
import pytest

import hybridlog
from hybridlog import (
    MAX_EVENT_SIZE,
    CatalogError,
    CatalogTooNew,
    CatalogUnusable,
    CheckpointPolicy,
    CompressionKind,
    EventTooLarge,
    InvalidArgument,
    InvalidConfiguration,
    ReadOnlyStore,
    RecordFormatTooNew,
    RecordKind,
    RepairKind,
    RepairStep,
    Storage,
    StorageIOError,
    StoreClosed,
    StreamId,
)
from hybridlog.catalog import Catalog
from hybridlog.catalog_rows import SCHEMA_VERSION
from hybridlog.layout import CATALOG_FILE, segment_path
from hybridlog.record import FORMAT_VERSION
from hybridlog.segment import SegmentWriter
from hybridlog.testing.damage import active_segment, frame_batch, genesis_events, genesis_records

REPO = Path(__file__).resolve().parent.parent


def segment_sizes(store: Path, stream_id: int) -> list[int]:
    """The bytes of data in each segment file: without the zeros an fsync'd append reserves past them
    (these tests' records never end in a zero byte)."""
    directory = segment_path(store, stream_id, 0).parent
    return [len(p.read_bytes().rstrip(b"\0")) for p in sorted(directory.glob("*.seg"))]


def test_store_directory_is_created_on_first_write(store_dir: Path) -> None:
    with Storage(store_dir) as store:
        assert not store_dir.exists()
        assert store.read_from(1, 0, 100) == []
        assert store.latest_chain_hash(1) is None
        assert not store_dir.exists()
        store.append(1, [b"first"])
        assert (store_dir / CATALOG_FILE).exists()
        assert (store_dir / "LOCK").exists()


def test_failed_segment_write_leaves_no_partial_batch(
    store_dir: Path, clock: Callable[[], int], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Storage(store_dir, clock=clock, checkpoint_policy=CheckpointPolicy.explicit())
    offset, head = store.append_batch(1, [b"a" * 100], 0, None)
    size_before = segment_sizes(store_dir, 1)

    real_write_at = SegmentWriter.write_at

    def write_half_then_fail(self: SegmentWriter, position: int, data: bytes | bytearray | memoryview) -> None:
        real_write_at(self, position, bytes(data)[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(SegmentWriter, "write_at", write_half_then_fail)
    with pytest.raises(StorageIOError, match="No space left"):
        store.append_batch(1, [b"b" * 100, b"c" * 100], offset, head)
    monkeypatch.undo()

    assert segment_sizes(store_dir, 1) == size_before
    assert store.next_offset(1) == offset
    assert store.latest_chain_hash(1) == head
    store.append_batch(1, [b"d"], offset, head)
    assert genesis_events(store, 1) == [b"a" * 100, b"d"]
    store.close()
    with Storage(store_dir, read_only=True) as reader:
        assert genesis_events(reader, 1) == [b"a" * 100, b"d"]


def test_failed_catalog_commit_cuts_the_segment_back(
    store_dir: Path, clock: Callable[[], int], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Storage(store_dir, clock=clock, checkpoint_policy=CheckpointPolicy.explicit())
    offset, head = store.append_batch(1, [b"kept"], 0, None)
    size_before = segment_sizes(store_dir, 1)

    def refuse(*args: object, **kwargs: object) -> None:
        raise apsw.FullError("database or disk is full")

    monkeypatch.setattr(Catalog, "upsert_stream", refuse)
    with pytest.raises(CatalogError, match="batch not stored"):
        store.append_batch(1, [b"lost-1", b"lost-2"], offset, head)
    monkeypatch.undo()

    assert segment_sizes(store_dir, 1) == size_before
    assert store.append_batch(1, [b"next"], offset, head)[0] == offset + 1
    store.close()
    with Storage(store_dir) as reopened:
        assert genesis_events(reopened, 1) == [b"kept", b"next"]


def test_failed_commit_after_rotation_removes_the_new_segment(
    store_dir: Path, clock: Callable[[], int], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Storage(store_dir, clock=clock, max_segment_size=4096, checkpoint_policy=CheckpointPolicy.explicit())
    offset, head = store.append_batch(1, [b"x" * 3000], 0, None)

    def refuse(*args: object, **kwargs: object) -> None:
        raise apsw.IOError("disk I/O error")

    monkeypatch.setattr(Catalog, "upsert_stream", refuse)
    with pytest.raises(CatalogError):
        store.append_batch(1, [b"y" * 3000], offset, head)
    monkeypatch.undo()

    assert len(segment_sizes(store_dir, 1)) == 1
    assert store.segment_count(1) == 1
    assert store.completed_segments(1) == []
    store.append_batch(1, [b"z" * 3000], offset, head)
    assert store.segment_count(1) == 2
    store.close()
    with Storage(store_dir) as reopened:
        assert genesis_events(reopened, 1) == [b"x" * 3000, b"z" * 3000]


def test_rotation_seals_segments_with_their_digest(store_dir: Path, clock: Callable[[], int]) -> None:
    with Storage(store_dir, clock=clock, max_segment_size=4096, checkpoint_policy=CheckpointPolicy.explicit()) as s:
        offset, head = 0, None
        for i in range(20):
            offset, head = s.append_batch(3, [bytes([i]) * 700], offset, head)
        segments = s.segments(3)
        sealed = s.completed_segments(3)
        assert len(segments) == s.segment_count(3) > 3
        assert sealed == segments[:-1]
        for seg in sealed:
            assert seg.size_bytes <= 4096
            assert seg.digest == blake3.blake3(seg.path.read_bytes()).digest()
        for before, after in itertools.pairwise(segments):
            assert after.first_offset == before.next_offset
        assert s.latest_chain_hash(3) == head
    with Storage(store_dir) as reopened:
        assert reopened.latest_chain_hash(3) == head
        assert reopened.read_from(3, 17, 10**6) == [bytes([17]) * 700, bytes([18]) * 700, bytes([19]) * 700]


def test_batch_bigger_than_a_segment_gets_a_segment_of_its_own(store_dir: Path) -> None:
    with Storage(store_dir, max_segment_size=4096, checkpoint_policy=CheckpointPolicy.explicit()) as s:
        s.append(1, [b"small"])
        s.append(1, [b"big" * 3000])
        s.append(1, [b"after"])
        sizes = [seg.size_bytes for seg in s.segments(1)]
        assert len(sizes) == 3
        assert sizes[1] > 4096
        assert genesis_events(s, 1) == [b"small", b"big" * 3000, b"after"]


def test_event_size_limit(store_dir: Path) -> None:
    big = b"\x5a" * (16 * 1024 * 1024)
    with Storage(store_dir, compression=CompressionKind.ZSTD) as s:
        s.append(1, [big])
        assert s.read_from(1, 0, 1) == [big]
        with pytest.raises(EventTooLarge):
            s.append(1, [bytes(MAX_EVENT_SIZE + 1)])
        assert s.next_offset(1) == 1
        segment = s.segments(1)[0]
        assert segment.size_bytes < 1024 * 1024  # stored compressed


def test_catalog_newer_than_the_code_is_refused(store_dir: Path) -> None:
    with Storage(store_dir) as s:
        s.append(1, [b"x"])
    conn = apsw.Connection(str(store_dir / CATALOG_FILE))
    conn.pragma("user_version", SCHEMA_VERSION + 1)
    conn.close()
    with pytest.raises(CatalogTooNew, match="upgrade hybridlog"):
        Storage(store_dir)
    with pytest.raises(CatalogTooNew):
        Storage(store_dir, read_only=True)
    # the refused writer released its lock
    conn = apsw.Connection(str(store_dir / CATALOG_FILE))
    conn.pragma("user_version", SCHEMA_VERSION)
    conn.close()
    with Storage(store_dir) as s:
        assert genesis_events(s, 1) == [b"x"]


def _set_record_format(store_dir: Path, value: str | None) -> None:
    conn = apsw.Connection(str(store_dir / CATALOG_FILE))
    with conn:
        if value is None:
            conn.execute("DELETE FROM store_info WHERE key = 'record_format_version'")
        else:
            conn.execute("UPDATE store_info SET value = ? WHERE key = 'record_format_version'", (value,))
    conn.close()


def test_record_format_newer_than_the_code_is_refused(store_dir: Path) -> None:
    """``store_info.record_format_version`` is read on open: a newer record format is refused by
    writers and readers alike, the catalog is not rebuilt, and nothing is changed."""
    with Storage(store_dir) as s:
        s.append(1, [b"x"])
    _set_record_format(store_dir, str(FORMAT_VERSION + 1))
    catalog_before = (store_dir / CATALOG_FILE).read_bytes()
    with pytest.raises(RecordFormatTooNew, match="upgrade hybridlog") as refused:
        Storage(store_dir)
    assert (refused.value.found, refused.value.known) == (FORMAT_VERSION + 1, FORMAT_VERSION)
    with pytest.raises(CatalogTooNew):  # a store this code is too old for, like a newer schema
        Storage(store_dir, read_only=True)
    assert (store_dir / CATALOG_FILE).read_bytes() == catalog_before
    assert not list(store_dir.glob("*.aside"))
    # the refused writer released its lock
    _set_record_format(store_dir, str(FORMAT_VERSION))
    with Storage(store_dir) as s:
        assert genesis_events(s, 1) == [b"x"]


@pytest.mark.parametrize("value", [None, "0", "one"])
def test_catalog_without_a_known_record_format_is_unusable(store_dir: Path, value: str | None) -> None:
    """No record format, or one that never existed, is not a hybridlog catalog: a reader refuses it,
    a writer rebuilds it from the segments (which hold format 1 records)."""
    with Storage(store_dir) as s:
        s.append(1, [b"x"])
    _set_record_format(store_dir, value)
    with Storage(store_dir, read_only=True) as reader, pytest.raises(CatalogUnusable, match="record_format_version"):
        reader.stream_ids()
    with Storage(store_dir) as s:
        assert genesis_events(s, 1) == [b"x"]
    assert len(list(store_dir.glob("*.aside"))) == 1
    with Storage(store_dir, read_only=True) as reader:
        assert reader.sql("SELECT value FROM store_info WHERE key = 'record_format_version'").rows == [
            (str(FORMAT_VERSION),)
        ]


def test_migrations_apply_in_order_and_set_user_version(store_dir: Path) -> None:
    with Storage(store_dir) as s:
        s.append(1, [b"x"])
    conn = apsw.Connection(str(store_dir / CATALOG_FILE), flags=apsw.SQLITE_OPEN_READONLY)
    assert conn.pragma("user_version") == SCHEMA_VERSION
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
    assert {"streams", "segments", "batches", "checkpoints", "record_kinds", "store_info"} <= tables


def test_read_only_store_refuses_writes(store_dir: Path) -> None:
    with Storage(store_dir) as s:
        s.append(1, [b"x"])
    with Storage(store_dir, read_only=True) as r:
        with pytest.raises(ReadOnlyStore):
            r.append(1, [b"y"])
        with pytest.raises(ReadOnlyStore):
            r.create_checkpoint(1, 2, r.latest_chain_hash(1), 2)
        assert genesis_events(r, 1) == [b"x"]


def test_closed_store_refuses_use(store_dir: Path) -> None:
    s = Storage(store_dir)
    s.append(1, [b"x"])
    s.close()
    s.close()  # closing twice is harmless
    with pytest.raises(StoreClosed):
        s.append(1, [b"y"])
    with pytest.raises(StoreClosed):
        s.read_from(1, 0, 10)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_segment_size": 4095}, "at least 4096"),
        ({"max_segment_size": 1.5}, "must be an int"),
        ({"compression": "zstd"}, "CompressionKind"),
        ({"checkpoint_policy": 5}, "CheckpointPolicy"),
    ],
)
def test_bad_configuration_is_refused_before_touching_disk(
    store_dir: Path, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidConfiguration, match=message):
        Storage(store_dir, **kwargs)  # type: ignore[arg-type]
    assert not store_dir.exists()


def test_clock_that_returns_garbage_is_refused(store_dir: Path) -> None:
    with Storage(store_dir, clock=lambda: -1) as s:
        with pytest.raises(InvalidConfiguration, match="clock"):
            s.append(1, [b"x"])
        assert s.next_offset(1) == 0


@pytest.mark.parametrize(
    "plan",
    [
        ["junk"],
        "junk",
        b"junk",
        5,
        [None],
        [{"repair": RepairKind.REBUILD_CATALOG, "stream_id": None, "reason": "a dict"}],
        [RepairStep(RepairKind.REBUILD_CATALOG, None, "fine"), "junk"],  # the good first step is not applied either
        [RepairStep("burn", StreamId(1), "unknown repair")],  # type: ignore[arg-type]
        [RepairStep("reindex", None, "no stream")],  # type: ignore[arg-type]
        [RepairStep("truncate", StreamId(2**63), "stream id out of range")],  # type: ignore[arg-type]
        [RepairStep("reindex", True, "a bool")],  # type: ignore[arg-type]
    ],
    ids=repr,
)
def test_repair_refuses_a_plan_that_is_not_repair_steps(store_dir: Path, plan: object) -> None:
    """A plan is a list of RepairStep with known repairs and valid stream ids; anything else is
    InvalidArgument before any step is applied (the catalog is not rebuilt, nothing is logged)."""
    with Storage(store_dir) as store:
        store.append(1, [b"a", b"b"])
        catalog_before = (store_dir / CATALOG_FILE).stat().st_ino
        with pytest.raises(InvalidArgument):
            store.repair(plan)  # type: ignore[arg-type]
        assert (store_dir / CATALOG_FILE).stat().st_ino == catalog_before
        assert store.recovery_log() == []
        assert genesis_events(store, 1) == [b"a", b"b"]
        store.append(1, [b"c"])


def test_threads_share_one_store(store_dir: Path) -> None:
    errors: list[BaseException] = []
    with Storage(store_dir, checkpoint_policy=CheckpointPolicy.every(7)) as s:

        def worker(n: int) -> None:
            try:
                for i in range(40):
                    s.append(n % 3, [f"{n}:{i}".encode()], fsync=False)
                    s.read_from(n % 3, 0, 1000)
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        for stream in range(3):
            events = genesis_events(s, stream)
            assert len(events) == 80
            per_writer: dict[str, list[int]] = {}
            for event in events:
                writer, i = event.decode().split(":")
                per_writer.setdefault(writer, []).append(int(i))
            assert all(v == list(range(40)) for v in per_writer.values())
            kinds = [r.kind for r in genesis_records(s, stream)]
            assert kinds.count(RecordKind.CHECKPOINT) == 80 // 7


def test_index_views(store_dir: Path, clock: Callable[[], int]) -> None:
    with Storage(store_dir, clock=clock, checkpoint_policy=CheckpointPolicy.every(3)) as s:
        s.append(1, [b"a", b"b", b"c", b"d"])
        index = s.offset_index(1)
        assert len(index) == 5
        entry = index.lookup(4)
        assert entry is not None
        assert entry.kind is RecordKind.EVENT
        assert [e.offset for e in index.entries(2)] == [2, 3, 4]
        checkpoints = s.checkpoint_index(1)
        assert checkpoints.offsets() == [3]
        assert checkpoints.nearest_at_or_before(2) is None
        last = checkpoints.last()
        assert last is not None
        assert s.last_checkpoint(1) == (last.offset, last.hash)
        assert s.index_path(1) == store_dir / CATALOG_FILE


def test_flush_indexes_makes_the_catalog_self_contained(store_dir: Path) -> None:
    with Storage(store_dir) as s:
        s.append(1, [b"x"], fsync=False)
        s.flush_indexes()
        wal = store_dir / (CATALOG_FILE + "-wal")
        assert not wal.exists() or wal.stat().st_size == 0


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel hatchling builds from this checkout, built once for the tests that look inside it."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(out)],
        cwd=REPO,
        check=True,
        capture_output=True,
        env={**os.environ, "SOURCE_DATE_EPOCH": "1700000000"},
    )
    (built,) = out.glob("hybridlog-*.whl")
    return built


def test_wheel_ships_the_migrations(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(n for n in names if n.startswith("hybridlog/migrations/"))
    source = REPO / "migrations"  # the catalog's, and consumers.db's in migrations/consumers/
    assert shipped == sorted(f"hybridlog/migrations/{p.relative_to(source).as_posix()}" for p in source.rglob("*.sql"))
    assert "hybridlog/migrations/consumers/0001_consumers.sql" in shipped


def test_wheel_ships_py_typed_the_license_and_its_metadata(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata,) = (n for n in names if n.endswith(".dist-info/METADATA"))
        fields = archive.read(metadata).decode().split("\n\n")[0].splitlines()
    assert "hybridlog/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: MIT" in fields
    assert "Classifier: Typing :: Typed" in fields
    assert f"Version: {hybridlog.__version__}" in fields


def test_version_comes_from_the_package_metadata() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert hybridlog.__version__ == importlib.metadata.version("hybridlog") == pyproject["project"]["version"]


def test_reading_a_stream_streams_in_bounded_memory(store_dir: Path) -> None:
    """iter_records holds one record at a time: peak memory does not grow with the stream."""
    payload = b"p" * 4000
    with Storage(store_dir, max_segment_size=1 << 20, checkpoint_policy=CheckpointPolicy.every(100)) as s:
        for _ in range(40):
            s.append(1, [payload] * 250, fsync=False)  # 40 MB in ~40 segments
        tracemalloc.start()
        count = 0
        for record in s.iter_records(1, 0, anchored=False):
            count += record.kind is RecordKind.EVENT
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert count == 10_000
    assert peak < 4 * 1024 * 1024  # the read buffer and a few records, not the 40 MB stream


def test_seed_constructors_set_what_they_name(tmp_path: Path) -> None:
    policy = CheckpointPolicy.close_only()
    assert policy == CheckpointPolicy(every_records=None, on_close=True)
    made = [
        Storage.new(tmp_path / "a"),
        Storage.with_checkpoint_policy(tmp_path / "b", policy),
        Storage.with_max_segment_size(tmp_path / "c", policy, 8192),
        Storage.with_compression(tmp_path / "d", policy, CompressionKind.ZSTD),
    ]
    try:
        assert [s.checkpoint_policy() for s in made] == [CheckpointPolicy(), policy, policy, policy]
        assert [s.max_segment_size() for s in made] == [64 * 1024 * 1024, 64 * 1024 * 1024, 8192, 64 * 1024 * 1024]
        assert [s.default_compression() for s in made] == [CompressionKind.NONE] * 3 + [CompressionKind.ZSTD]
    finally:
        for s in made:
            s.close()


def _write_uncommitted_batch(store_dir: Path, stream_id: int, store: Storage, payloads: list[bytes]) -> None:
    """Append a complete framed batch to the stream's active segment behind the catalog's back."""
    head = store.latest_chain_hash(stream_id)
    assert head is not None
    out = bytearray()
    frame_batch(
        out,
        stream_id=stream_id,
        offset=store.next_offset(stream_id),
        global_position=store.last_global_position() + 1,
        prev=head,
        timestamp_ns=2_000_000_000_000_000_000,
        payloads=payloads,
        compression=CompressionKind.NONE,
    )
    with active_segment(store_dir, stream_id).open("r+b") as f:
        f.seek(store.segments(stream_id)[-1].size_bytes)  # where the writer would have written it
        f.write(out)


def test_recover_adopts_batches_written_behind_the_catalogs_back(store_dir: Path) -> None:
    with Storage(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        store.append(1, [b"committed"])
        _write_uncommitted_batch(store_dir, 1, store, [b"missed-1", b"missed-2"])
        assert genesis_events(store, 1) == [b"committed"]
        (result,) = store.recover()
        assert (result.stream_id, result.adopted_records, result.damage) == (1, 2, None)
        assert genesis_events(store, 1) == [b"committed", b"missed-1", b"missed-2"]
        assert store.recovery_results() == [result]
        # and the zeros the fsync'd append had reserved past its data, after the adopted batch
        assert [e.action for e in store.recovery_log(1)] == ["adopted", "trimmed"]
        assert store.recover() == []  # nothing left to do
        store.append(1, [b"after"])
        assert store.check().ok


def test_load_or_rebuild_index_rebuilds_only_when_the_catalog_disagrees(store_dir: Path) -> None:
    with Storage(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        store.append(1, [b"a", b"b"])
        assert len(store.load_or_rebuild_index(1)) == 2
        assert store.recovery_log(1) == []  # in step: nothing rebuilt
        _write_uncommitted_batch(store_dir, 1, store, [b"c"])
        index = store.load_or_rebuild_index(1)
        assert [e.offset for e in index.entries()] == [0, 1, 2]
        assert [e.action for e in store.recovery_log(1)] == ["reindexed"]
        assert genesis_events(store, 1) == [b"a", b"b", b"c"]


def test_rebuild_checkpoint_index_restores_deleted_rows(store_dir: Path) -> None:
    with Storage(store_dir, checkpoint_policy=CheckpointPolicy.every(2, on_close=False)) as store:
        store.append(1, [b"e"] * 7)
        before = list(store.checkpoint_index(1))
        assert [c.offset for c in before] == [2, 5, 8]
        conn = apsw.Connection(str(store_dir / CATALOG_FILE))
        conn.execute("DELETE FROM checkpoints WHERE stream_id = 1")
        conn.close()
        assert store.last_checkpoint(1) is None
        assert store.rebuild_checkpoint_index(1) == 3
        assert list(store.checkpoint_index(1)) == before


def test_repair_reports_each_result_once(store_dir: Path) -> None:
    with Storage(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        store.append(1, [b"a"])
        conn = apsw.Connection(str(store_dir / CATALOG_FILE))
        conn.execute("DELETE FROM batches WHERE stream_id = 1")
        conn.close()
        report = store.repair()
        assert [(s.repair, s.stream_id) for s in report.applied] == [("reindex", 1)]
        assert [r.stream_id for r in store.recovery_results()] == [1]
        assert report.after is not None
        assert report.after.ok
        store.append(2, [b"b"])
        store.repair([RepairStep(RepairKind.REBUILD_CATALOG, None, "asked for by the test")])
        assert [r.stream_id for r in store.recovery_results()] == [1, 1, 2]
        assert genesis_events(store, 1) == [b"a"]
