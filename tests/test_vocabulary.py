"""The vocabularies of ``hybridlog.types`` are stored in the catalog and printed: their values never change.

Every value is written out here by hand, so changing one, or adding one without saying what it
stores, fails. The store tests read what repair wrote with plain SQL and what the CLI printed with
``--json`` and as text, and find exactly those strings; the library reads them back as members,
and a value it does not know (another version's) as the plain string, without failing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import apsw
import pytest
from click.testing import CliRunner

from hybridlog import (
    CheckpointPolicy,
    FindingKind,
    MarkerAction,
    RecoveryAction,
    RepairKind,
    RepairStep,
    Storage,
    StreamId,
)
from hybridlog.catalog import Catalog
from hybridlog.cli import cli
from hybridlog.layout import CATALOG_FILE, segment_path
from hybridlog.record import HEADER_SIZE
from hybridlog.testing.clocks import make_clock
from hybridlog.testing.damage import edit_catalog, flip_byte, index_entry
from hybridlog.types import Vocabulary, known

ROOT = Path(__file__).resolve().parent.parent
STREAM = 1

STORED: dict[type[Vocabulary], dict[str, str]] = {
    RecoveryAction: {
        "ADOPTED": "adopted",
        "QUARANTINED": "quarantined",
        "REMOVED_EMPTY": "removed_empty",
        "TRIMMED": "trimmed",
        "REINDEXED": "reindexed",
        "TRUNCATED": "truncated",
        "ISOLATED": "isolated",
        "MARKED_CUT": "marked_cut",
        "RESEALED_DICTIONARY": "resealed_dictionary",
        "REBUILT_CATALOG": "rebuilt_catalog",
    },
    MarkerAction: {"ISOLATED": "isolated", "CUT": "cut"},
    FindingKind: {
        "CATALOG_MISSING": "catalog_missing",
        "CATALOG_UNUSABLE": "catalog_unusable",
        "CATALOG_BEHIND": "catalog_behind",
        "CATALOG_AHEAD": "catalog_ahead",
        "CATALOG_MISMATCH": "catalog_mismatch",
        "TORN_TAIL": "torn_tail",
        "MISSING_SEGMENT": "missing_segment",
        "DAMAGED_RECORD": "damaged_record",
        "MISSING_DICTIONARY": "missing_dictionary",
        "DAMAGED_DICTIONARY": "damaged_dictionary",
        "FOREIGN_FILE": "foreign_file",
        "ISOLATED_RECORDS": "isolated_records",
        "TREE_MISMATCH": "tree_mismatch",
    },
    RepairKind: {
        "REBUILD_CATALOG": "rebuild_catalog",
        "ISOLATE": "isolate",
        "TRUNCATE": "truncate",
        "REINDEX": "reindex",
        "REBUILD_TREE": "rebuild_tree",
    },
}
MEMBERS = [member for vocabulary in STORED for member in vocabulary]


@pytest.mark.parametrize("vocabulary", list(STORED), ids=lambda v: v.__name__)
def test_every_value_is_the_string_stored_and_printed(vocabulary: type[Vocabulary]) -> None:
    assert {member.name: member.value for member in vocabulary} == STORED[vocabulary]


@pytest.mark.parametrize("member", MEMBERS, ids=repr)
def test_a_member_reads_as_its_string_everywhere(member: Vocabulary) -> None:
    """Formatting, repr, JSON and equality give what the plain string gave before the enums."""
    value = STORED[type(member)][member.name]
    assert member == value
    assert hash(member) == hash(value)
    assert (str(member), f"{member}", "%s" % member) == (value, value, value)  # noqa: UP031
    assert repr(member) == repr(value)
    assert json.dumps({"v": member}) == json.dumps({"v": value})
    assert type(member)(value) is member


def test_a_repair_steps_repr_is_unchanged() -> None:
    assert repr(RepairStep(RepairKind.REINDEX, StreamId(STREAM), "why")) == (
        f"RepairStep(repair='reindex', stream_id={STREAM}, reason='why', effect='', effects=None)"
    )


def test_the_schema_docs_and_migrations_name_every_value() -> None:
    """``docs/schema.md`` lists every recovery action; the ``gaps`` table's CHECK allows every marker action."""
    schema = (ROOT / "docs" / "schema.md").read_text()
    row = next(line for line in schema.splitlines() if line.startswith("| `action` | TEXT | `adopted`"))
    assert set(re.findall(r"`([a-z_]+)`", row.split("| TEXT |")[1])) == set(RecoveryAction)
    gaps = (ROOT / "migrations" / "0004_gaps.sql").read_text()
    check = re.search(r"CHECK \(action IN \(([^)]*)\)\)", gaps)
    assert check is not None
    assert set(re.findall(r"'([a-z_]+)'", check.group(1))) == set(MarkerAction)


def test_known_keeps_a_value_it_does_not_know() -> None:
    assert known(RecoveryAction, "adopted") is RecoveryAction.ADOPTED
    unknown = known(RecoveryAction, "defragmented")
    assert unknown == "defragmented"
    assert type(unknown) is str


# --- what a store holds and the CLI prints ---------------------------------------------------------


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout


def build(path: Path) -> None:
    """Stream ``STREAM``: three batches of two events, no checkpoints; offsets are the events."""
    with Storage(path, checkpoint_policy=CheckpointPolicy.explicit(), clock=make_clock()) as store:
        for batch in ([b"a0", b"a1"], [b"a2", b"a3"], [b"a4", b"a5"]):
            store.append(STREAM, batch)


def sql(path: Path, query: str, bindings: tuple[int, ...] = ()) -> list[tuple[object, ...]]:
    """A query on the catalog with plain apsw: what a user's SQL sees."""
    conn = apsw.Connection(str(path / CATALOG_FILE), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return [tuple(row) for row in conn.execute(query, bindings)]
    finally:
        conn.close()


def record_at(path: Path, offset: int) -> tuple[Path, int, int]:
    """(segment file, byte position, frame length) of the record of ``STREAM`` at ``offset``."""
    segment_no, position, length = index_entry(path, STREAM, offset)
    return segment_path(path, STREAM, segment_no), position, length


def damage_offset_2(path: Path) -> None:
    segment, position, _ = record_at(path, 2)
    flip_byte(segment, position + HEADER_SIZE)


def add_torn_tail(path: Path) -> None:
    """Append the first half of a copy of the last record: a write a crash cut short before the
    catalog commit, which the next writer cuts off and quarantines."""
    segment, position, length = record_at(path, 5)
    data = segment.read_bytes()
    segment.write_bytes(data + data[position : position + length // 2])


@pytest.mark.parametrize(
    ("how", "repair", "actions", "gap"),
    [
        ((), "isolate", ["isolated", "reindexed"], "isolated"),
        (("--truncate",), "truncate", ["truncated", "marked_cut", "reindexed"], "cut"),
    ],
    ids=["isolate", "truncate"],
)
def test_check_and_repair_print_and_store_the_values(
    tmp_path: Path, how: tuple[str, ...], repair: str, actions: list[str], gap: str
) -> None:
    path = tmp_path / "store"
    build(path)
    damage_offset_2(path)

    code, out = run("check", str(path), "--json")
    assert code != 0
    report = json.loads(out)
    assert [(f["problem"], f["repair"]) for f in report["findings"]] == [
        ("damaged_record", "isolate"),
        ("catalog_ahead", "reindex"),  # the catalog knows records past the damage
    ]
    code, out = run("check", str(path))
    assert f"stream {STREAM}: damaged_record:" in out
    assert "-> repair: isolate" in out

    code, out = run("repair", str(path), "--yes", "--json", *how)
    assert code == 0, out
    repaired = json.loads(out)
    assert [s["repair"] for s in repaired["plan"]] == [s["repair"] for s in repaired["applied"]] == [repair]
    assert [a["action"] for a in repaired["actions"]] == actions

    assert sql(path, "SELECT action, typeof(action) FROM recovery_log ORDER BY entry_id") == [
        (a, "text") for a in actions
    ]
    assert sql(path, "SELECT action, typeof(action) FROM gaps") == [(gap, "text")]

    with Storage(path, read_only=True) as store:
        read_back = [e.action for e in store.recovery_log()]
        assert read_back == actions
        assert all(type(a) is RecoveryAction for a in read_back)
        assert [f.problem for f in store.check().findings] == (["isolated_records"] if gap == "isolated" else [])
    catalog = Catalog(path / CATALOG_FILE, read_only=True)
    try:
        assert [(g.action, type(g.action)) for g in catalog.gaps(StreamId(STREAM))] == [(gap, MarkerAction)]
    finally:
        catalog.close()


def test_an_action_this_code_does_not_know_is_read_back_as_it_is(tmp_path: Path) -> None:
    """An older or newer hybridlog may have logged an action this one does not know: the log still reads,
    and any action but adopting, quarantining or removing an empty segment may have left positions unused."""
    path = tmp_path / "store"
    build(path)
    add_torn_tail(path)
    with Storage(path):
        pass
    assert sql(path, "SELECT action FROM recovery_log") == [("quarantined",)]
    catalog = Catalog(path / CATALOG_FILE, read_only=True)
    try:
        assert not catalog.positions_may_be_unused()
    finally:
        catalog.close()

    edit_catalog(
        path,
        "INSERT INTO recovery_log (at_ns, stream_id, found, action) VALUES (?, ?, ?, ?)",
        (1, STREAM, "a newer hybridlog did this", "defragmented"),
    )
    with Storage(path, read_only=True) as store:
        quarantined, unknown = (e.action for e in store.recovery_log())
    assert quarantined is RecoveryAction.QUARANTINED
    assert unknown == "defragmented"
    assert type(unknown) is str
    catalog = Catalog(path / CATALOG_FILE, read_only=True)
    try:
        assert catalog.positions_may_be_unused()
    finally:
        catalog.close()
