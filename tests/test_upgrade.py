"""A store of record frame format 1 (catalog schema 5) stays readable, verifiable and appendable,
and its catalog upgrades in place (``tests/fixtures/format1_store``, described record by record in
``format1_store.json``; see ``tests/fixtures/README.md``).

* A writer open upgrades the catalog to the newest schema; every record reads back with the hash,
  payload, kind and global position it had; verification passes; no segment or dictionary file
  changes by a single byte (old segments are never rewritten).
* Appends continue every stream's chain, at global positions above every old one.
* A read-only open of the un-upgraded store reads every stream (and changes nothing).
* After the upgrade and appends, a catalog rebuilt from the segments gives the records appended
  since the upgrade exactly their positions, and no position is ever given out twice.

Every test works on a copy of the fixture in ``tmp_path``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import apsw
import pytest
from click.testing import CliRunner

from hybridlog import (
    CatalogError,
    CheckpointPolicy,
    CompressionKind,
    GlobalRecord,
    Record,
    RecordKind,
    RecoveryAction,
    Storage,
    merkle,
    verify_store,
)
from hybridlog.catalog import CATALOG_PAGE_SIZE
from hybridlog.catalog_rows import SCHEMA_VERSION
from hybridlog.cli import cli
from hybridlog.layout import CATALOG_FILE
from hybridlog.testing.clocks import ManualClock
from hybridlog.testing.damage import delete_catalog, genesis_records
from hybridlog.tree import leaves_from_segments

FIXTURES = Path(__file__).resolve().parent / "fixtures"
FIXTURE = FIXTURES / "format1_store"
DESCRIPTION = json.loads((FIXTURES / "format1_store.json").read_text())
FORMAT1_SCHEMA = 5
AFTER_FIXTURE_NS = 1_800_000_000_000_000_000
"""Later than every timestamp in the fixture (its clock stopped at START_NS + 500 s)."""

Placement = tuple[int, int]
"""(stream_id, offset)"""


@dataclass(frozen=True)
class Described:
    """One record as ``format1_store.json`` describes it."""

    stream_id: int
    offset: int
    global_position: int
    kind: str
    timestamp_ns: int
    hash: str
    payload_sha256: str


DESCRIBED = [Described(**r) for r in DESCRIPTION["records"]]
OLD_MARK: int = DESCRIPTION["last_global_position"]
STREAMS = sorted({d.stream_id for d in DESCRIBED})


def described_stream(stream_id: int) -> list[Described]:
    """The described records of one stream, in offset order."""
    return sorted((d for d in DESCRIBED if d.stream_id == stream_id), key=lambda d: d.offset)


def as_described(record: Record, global_position: int) -> Described:
    """What a record read back says, in the description's terms."""
    return Described(
        stream_id=record.stream_id,
        offset=record.offset,
        global_position=global_position,
        kind=record.kind.name.lower(),
        timestamp_ns=record.timestamp_ns,
        hash=record.hash.hex(),
        payload_sha256=hashlib.sha256(record.payload).hexdigest(),
    )


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A copy of the format-1 fixture store (never open the fixture itself: a writer upgrades it)."""
    target = tmp_path / "store"
    shutil.copytree(FIXTURE, target)
    return target


def data_files(store: Path) -> dict[Path, bytes]:
    """Every segment, dictionary and quarantine file of the store, by path relative to it."""
    return {
        p.relative_to(store): p.read_bytes()
        for p in sorted((store / "streams").rglob("*"))
        if p.is_file() and p.suffix in {".seg", ".zdict", ".quarantine"}
    }


def digests(files: dict[Path, bytes]) -> dict[Path, str]:
    """SHA-256 of each file, for messages that name the file that changed."""
    return {p: hashlib.sha256(data).hexdigest() for p, data in files.items()}


def user_version(store: Path) -> int:
    """The catalog's ``PRAGMA user_version``, read straight from the file (SQLite, read-only)."""
    conn = apsw.Connection(str(store / CATALOG_FILE), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        version = conn.pragma("user_version")
        assert isinstance(version, int)
        return version
    finally:
        conn.close()


def all_positions(store: Storage) -> dict[Placement, int]:
    """Every record's global position, through ``read_global``."""
    return {(g.record.stream_id, g.record.offset): g.global_position for g in store.read_global(1, max_bytes=1 << 30)}


def assert_reads_as_described(store: Storage, *, with_positions: bool = True) -> None:
    """Every described record reads back, verified from genesis, with its hash, payload, kind and
    time; with ``with_positions``, ``read_global`` returns them all with their positions, in order."""
    for sid in STREAMS:
        expected = described_stream(sid)
        got = genesis_records(store, sid)[: len(expected)]
        assert [as_described(r, 0) for r in got] == [
            Described(**{**d.__dict__, "global_position": 0}) for d in expected
        ], f"stream {sid}"
    if with_positions:
        old = [g for g in store.read_global(1, max_bytes=1 << 30) if g.global_position <= OLD_MARK]
        assert [as_described(g.record, g.global_position) for g in old] == DESCRIBED


def verify_cli(store: Path) -> dict[str, object]:
    """``hybridlog verify STORE --json``: asserts exit code 0 and returns the report."""
    result = CliRunner().invoke(cli, ["verify", str(store), "--json"])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    report = json.loads(result.stdout)
    assert isinstance(report, dict)
    return report


def test_the_fixture_is_what_its_readme_says(store: Path) -> None:
    """Guards the fixture: interleaved streams, a multi-segment stream, a dictionary, checkpoints
    of both kinds, a repair marker with the positions it cut left unused, a clean catalog."""
    assert not list(FIXTURE.glob(f"{CATALOG_FILE}-*")), "the fixture's catalog has side files"
    assert user_version(store) == DESCRIPTION["schema_version"] == FORMAT1_SCHEMA
    files = data_files(store)
    assert sum(1 for p in files if p.parts[1].endswith("1") and p.suffix == ".seg") == 7
    assert [p.name for p in files if p.suffix == ".zdict"] == ["00000000000000000068.zdict"]
    assert [p.suffix for p in files].count(".quarantine") == 1
    kinds = {d.kind for d in DESCRIBED}
    assert kinds == {"event", "checkpoint", "repair"}
    by_position = [d.stream_id for d in sorted(DESCRIBED, key=lambda d: d.global_position)]
    switches = sum(1 for a, b in itertools.pairwise(by_position) if a != b)
    assert switches > 50, "the streams' positions interleave"
    positions = sorted(d.global_position for d in DESCRIBED)
    assert positions[-1] == OLD_MARK
    assert len(positions) == OLD_MARK - 3  # the three positions of the cut records are not reused


def test_the_newest_schema_is_newer_than_the_fixture() -> None:
    """Record format 2 comes with a new catalog schema, so opening the fixture has something to upgrade."""
    assert SCHEMA_VERSION > FORMAT1_SCHEMA


def test_a_writer_open_upgrades_the_catalog_and_keeps_every_record(store: Path) -> None:
    before = data_files(store)
    with Storage(store, checkpoint_policy=CheckpointPolicy.explicit()) as writer:
        assert writer.schema_version() == SCHEMA_VERSION
        assert writer.last_global_position() == OLD_MARK
        assert [writer.next_offset(sid) for sid in STREAMS] == [
            DESCRIPTION["next_offsets"][str(sid)] for sid in STREAMS
        ]
        assert_reads_as_described(writer)
        for d in DESCRIBED:
            assert writer.global_position_of(d.stream_id, d.offset) == d.global_position
        # upgraded in place, not rebuilt from the segments
        assert not any(e.action == RecoveryAction.REBUILT_CATALOG for e in writer.recovery_log())
        assert not list(store.glob(f"{CATALOG_FILE}.*.aside"))
        report = verify_store(writer)
        assert report.ok, report.as_dict()
        assert report.records == len(DESCRIBED)
        assert writer.check().ok
    assert user_version(store) == SCHEMA_VERSION
    cli_report = verify_cli(store)
    assert cli_report["ok"] is True
    assert cli_report["records_verified"] == len(DESCRIBED)
    assert digests(data_files(store)) == digests(before)  # not a byte of a segment or dictionary changed


def test_the_upgraded_store_gets_its_merkle_tree_and_proofs_over_the_format1_records(store: Path) -> None:
    with Storage(store) as writer:  # format-1 frames: proofs read their leaves verified, not from headers
        leaves = list(leaves_from_segments(writer, 1, None))
        assert writer.tree.size() == len(leaves) == OLD_MARK
        assert writer.tree.root() == merkle.root(leaves)
        for d in DESCRIBED[:: max(1, len(DESCRIBED) // 20)]:
            proof = writer.prove_inclusion(d.stream_id, d.offset)
            assert (proof.index, proof.proof) == (d.global_position - 1, merkle.inclusion_proof(leaves, proof.index))
        for old in (1, 5, 16, 17, OLD_MARK - 1):
            assert writer.prove_consistency(old).proof == merkle.consistency_proof(leaves, old)


def test_appends_after_the_upgrade_continue_every_chain_above_every_old_position(store: Path) -> None:
    before = data_files(store)
    clock = ManualClock(AFTER_FIXTURE_NS)
    with Storage(
        store, checkpoint_policy=CheckpointPolicy.explicit(), compression=CompressionKind.ZSTD, clock=clock
    ) as writer:
        appended: dict[Placement, bytes] = {}
        for round_ in range(2):
            for sid in STREAMS:
                payloads = [f"after the upgrade: stream {sid} round {round_} ".encode() * (1 + 40 * (sid == 3))]
                next_offset, _ = writer.append(sid, payloads)
                appended[sid, next_offset - 1] = payloads[0]
        new_positions = {p: writer.global_position_of(*p) for p in appended}
        assert all(pos is not None and pos > OLD_MARK for pos in new_positions.values()), new_positions
        assert len(set(new_positions.values())) == len(appended)
        assert writer.last_global_position() == max(p for p in new_positions.values() if p is not None)
        for sid in STREAMS:
            old = described_stream(sid)
            records = genesis_records(writer, sid)
            first_new = records[len(old)]
            assert first_new.offset == old[-1].offset + 1
            assert first_new.prev_hash.hex() == old[-1].hash  # the chain goes on from the last old record
            assert [r.payload for r in records[len(old) :]] == [appended[sid, r.offset] for r in records[len(old) :]]
        tail = writer.read_global(OLD_MARK + 1)
        assert [(g.record.stream_id, g.record.offset) for g in tail] == list(appended)  # in commit order
        assert all(g.record.kind is RecordKind.EVENT for g in tail)
        assert_reads_as_described(writer)
        report = verify_store(writer)
        assert report.ok, report.as_dict()
        assert report.records == len(DESCRIBED) + len(appended)
    assert verify_cli(store)["ok"] is True
    after = data_files(store)
    for path, data in before.items():  # appended to at most: old bytes never rewritten
        assert after[path][: len(data)] == data, path
    with Storage(store, read_only=True) as reader:
        assert all_positions(reader) == {
            **{(d.stream_id, d.offset): d.global_position for d in DESCRIBED},
            **new_positions,
        }


def test_a_read_only_open_reads_the_unupgraded_store(store: Path) -> None:
    """A reader does not migrate: the catalog stays at schema 5, per-stream reads work; the global
    order either reads as described or asks for the upgrade (``docs/schema.md``)."""
    catalog_before = (store / CATALOG_FILE).read_bytes()
    before = data_files(store)
    with Storage(store, read_only=True) as reader:
        assert reader.schema_version() == FORMAT1_SCHEMA
        assert reader.stream_ids() == STREAMS
        assert_reads_as_described(reader, with_positions=False)
        for sid in STREAMS:
            assert reader.next_offset(sid) == DESCRIPTION["next_offsets"][str(sid)]
            assert reader.latest_chain_hash(sid) == bytes.fromhex(described_stream(sid)[-1].hash)
        refused: CatalogError | None = None
        got: list[GlobalRecord] = []
        try:
            got = reader.read_global(1, max_bytes=1 << 30)
        except CatalogError as e:
            refused = e
        if refused is None:
            assert [as_described(g.record, g.global_position) for g in got] == DESCRIBED
        else:
            assert refused.hint is not None
            assert "hybridlog migrate" in refused.hint
    assert (store / CATALOG_FILE).read_bytes() == catalog_before
    assert user_version(store) == FORMAT1_SCHEMA
    assert digests(data_files(store)) == digests(before)


def test_a_rebuild_after_the_upgrade_keeps_the_positions_of_new_records(store: Path) -> None:
    """Records written after the upgrade carry their positions in their frames: deleting the catalog
    and rebuilding it from the segments gives them exactly those; nothing is given out twice."""
    clock = ManualClock(AFTER_FIXTURE_NS)
    policy = CheckpointPolicy.every(3, on_close=False)
    with Storage(store, checkpoint_policy=policy, clock=clock) as writer:
        for i in range(3):
            for sid in reversed(STREAMS):  # another order than the streams' ids
                clock.now -= 1_000_000_000  # and a clock that steps back: time order != commit order
                writer.append(sid, [f"new {sid}.{i}.{j}".encode() for j in range(1 + (sid + i) % 3)])
        before = all_positions(writer)
        mark = writer.last_global_position()
    new = {p: pos for p, pos in before.items() if pos > OLD_MARK}
    assert len(new) > 12  # events and policy checkpoints
    delete_catalog(store)
    with Storage(store, checkpoint_policy=policy, clock=clock) as writer:
        assert writer.schema_version() == SCHEMA_VERSION
        after = all_positions(writer)
        assert set(after) == set(before)
        assert {p: after[p] for p in new} == new  # exactly the positions they were given
        old_after = [after[d.stream_id, d.offset] for d in DESCRIBED]
        assert len(set(after.values())) == len(after)  # no position twice
        assert all(pos <= OLD_MARK for pos in old_after)  # old records stay below the new ones
        for sid in STREAMS:  # and in stream order
            stream_positions = [after[p] for p in sorted(p for p in after if p[0] == sid)]
            assert stream_positions == sorted(stream_positions), f"stream {sid}"
        assert_reads_as_described(writer, with_positions=False)
        report = verify_store(writer)
        assert report.ok, report.as_dict()
        assert report.records == len(before)
        assert writer.last_global_position() >= mark
        next_offset, _ = writer.append(STREAMS[0], [b"after the rebuild"])
        position = writer.global_position_of(STREAMS[0], next_offset - 1)
        assert position is not None
        assert position > mark
        assert position > max(before.values())
    assert verify_cli(store)["ok"] is True


def test_new_catalogs_have_small_pages_and_an_upgraded_one_keeps_its_own(tmp_path: Path, store: Path) -> None:
    """A catalog this version creates (new, or rebuilt from the segments) has CATALOG_PAGE_SIZE
    pages; an older catalog upgraded in place keeps the page size it was made with."""
    new = tmp_path / "new"
    with Storage(new) as fresh:
        fresh.append(1, [b"x"])
    assert catalog_page_size(new) == CATALOG_PAGE_SIZE
    store_dir = store
    assert catalog_page_size(store_dir) == 4096  # SQLite's default, when the fixture was written
    with Storage(store_dir) as upgraded:
        assert upgraded.schema_version() == SCHEMA_VERSION
    assert catalog_page_size(store_dir) == 4096
    with Storage(store_dir) as upgraded:
        upgraded.rebuild_catalog()
    assert catalog_page_size(store_dir) == CATALOG_PAGE_SIZE


def catalog_page_size(store_dir: Path) -> int:
    conn = apsw.Connection(str(store_dir / CATALOG_FILE), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return int(conn.pragma("page_size"))
    finally:
        conn.close()
