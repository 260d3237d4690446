"""The store's Merkle tree (``hybridlog/tree.py``): it equals RFC 6962's root over the leaves the
segments give, after appends, rotation, compression, a catalog rebuild, re-indexing and repairs,
and after writers SIGKILLed at every step of the write path; signed heads, receipts and the
checks against a head catch a restored backup (tail cut), a rewritten history, a reordered pair
of records and a repair that cut records; a receipt verifies offline with the standard library
alone."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

import hybridlog.merkle as merkle
import hybridlog.tree as tree_module
from hybridlog import CheckpointPolicy, CompressionKind, FindingKind, RepairKind, Storage
from hybridlog.errors import AppendOutcomeUnknown, HeadNotExtended, IntegrityError, InvalidArgument, ProofError
from hybridlog.layout import segment_path
from hybridlog.note import generate_key, note_text, open_note
from hybridlog.receipts import verify_receipt
from hybridlog.record import HASH_FIELD
from hybridlog.segment import write_file_durably
from hybridlog.testing.damage import delete_catalog, edit_catalog, flip_byte, index_entry
from hybridlog.testing.harness import ACK, KillPlan, acknowledge, arm_from_environment, kill_self, run_until_killed
from hybridlog.tree import GAP_LEAF, HeadSigner, leaves_from_segments
from hybridlog.tree_head import TreeHead, decode_leaf, parse_tree_head

THIS_FILE = Path(__file__).resolve()
ORIGIN = "hybridlog.example/tree-test"


def segment_leaves(store: Storage) -> list[bytes]:
    """Every leaf hash the segments give, by a verified read in global order."""
    return list(leaves_from_segments(store, 1, None))


def assert_tree_matches_segments(store: Storage) -> list[bytes]:
    leaves = segment_leaves(store)
    assert store.tree.size() == len(leaves) == store.last_global_position()
    assert store.tree.root() == merkle.root(leaves)
    return leaves


def fill(store: Storage, rng: random.Random, batches: int, streams: tuple[int, ...] = (1, 2, 3)) -> None:
    for n in range(batches):
        store.append(rng.choice(streams), [rng.randbytes(rng.randint(1, 300)) for _ in range(rng.randint(1, 12))])
        if n % 17 == 0:
            at = store.next_offset(1)
            store.create_checkpoint(1, at, store.latest_chain_hash(1), at)


@pytest.fixture
def signer(tmp_path: Path) -> HeadSigner:
    skey, _ = generate_key(ORIGIN)
    key_file = tmp_path / "keys" / "head.key"  # outside the store
    key_file.parent.mkdir()
    key_file.write_text(skey)
    return HeadSigner(key_file)


def test_the_tree_is_rfc6962s_over_the_segments_leaves_through_rotation_compression_and_rebuilds(
    store_dir: Path,
) -> None:
    rng = random.Random(14)
    with Storage(store_dir, max_segment_size=4096, compression=CompressionKind.ZSTD) as store:
        fill(store, rng, 120)
        leaves = assert_tree_matches_segments(store)
        for size in (1, 2, 3, 16, 17, 255, 256, 257, len(leaves)):
            assert store.tree.root(size) == merkle.root(leaves[:size])
            old = max(1, size // 3)
            assert store.prove_consistency(old, size).proof == merkle.consistency_proof(leaves[:size], old)
        for offset in (0, 1, store.next_offset(2) - 1):
            proof = store.prove_inclusion(2, offset)
            assert proof.proof == merkle.inclusion_proof(leaves, proof.index)
            entry = decode_leaf(proof.entry)
            assert (entry.stream_id, entry.offset) == (2, offset)
        root = store.tree.root()
    delete_catalog(store_dir)
    with Storage(store_dir) as store:  # a catalog rebuilt from the segments: the same tree, from scratch
        assert store.tree.root(len(leaves)) == root
        store.rebuild_index(2)  # a re-index deletes and re-inserts the stream's rows: stale, recomputed
        assert store.tree.root(len(leaves)) == root
        assert_tree_matches_segments(store)


def test_the_append_path_keeps_the_tree_without_reading_the_segments(store_dir: Path) -> None:
    with Storage(store_dir) as store:
        store.append(1, [b"a", b"b"])
        store.append(2, [b"c"])
        catalog = store._writable_catalog()
        assert catalog.tree_state()[:2] == (3, None)  # kept in the appends' own transactions

        def no_segment_reads(group: int, root: bytes) -> bytes:
            raise AssertionError(f"the root read the leaves of group {group} from the segments")

        assert catalog.tree_reader(no_segment_reads).root(3) == merkle.root(segment_leaves(store))


def test_gaps_get_the_gap_leaf_and_a_cut_changes_the_root(store_dir: Path, signer: HeadSigner) -> None:
    policy = CheckpointPolicy.explicit()
    with Storage(store_dir, checkpoint_policy=policy) as store:
        store.append(1, [b"one", b"two"])  # positions 1, 2
        store.append(2, [b"other"])  # 3
        store.append(1, [b"three"])  # 4
        store.append(1, [b"four"])  # 5
        head = parse_tree_head(note_text(store.tree.sign(signer)))
        receipt = store.tree.receipt(1, 2)
        third = store.offset_index(1).lookup(2)
        assert third is not None
    flip_byte(segment_path(store_dir, 1, third.segment_no), third.position + third.length - 20)
    with Storage(store_dir, checkpoint_policy=policy) as store:
        assert store.repair(truncate=True).after.ok  # type: ignore[union-attr]
        leaves = assert_tree_matches_segments(store)
        assert leaves[3:5] == [GAP_LEAF, GAP_LEAF]  # positions 4 and 5 were cut
        with pytest.raises(HeadNotExtended):
            store.tree.check_against(head)
        with pytest.raises(HeadNotExtended):
            store.tree.sign(signer)  # no second history under the same key
        with pytest.raises(HeadNotExtended):
            store.tree.check_receipt(receipt.text(), [signer.key.verifier])
        with pytest.raises(InvalidArgument):
            store.tree.receipt(1, 2)


def test_receipts_are_pending_until_a_head_covers_them_then_verify_offline(store_dir: Path, signer: HeadSigner) -> None:
    with Storage(store_dir) as store:
        store.append(7, [b"first", b"second"])
        pending = store.tree.receipt(7, 1)
        assert not pending.complete
        with pytest.raises(ProofError, match="no signed head"):
            pending.text()
        store.tree.sign(signer)
        store.append(7, [b"third"])
        receipt = store.tree.receipt(7, 1)
        assert receipt.complete
        assert (receipt.entry, receipt.index) == (pending.entry, pending.index)
        checked = verify_receipt(receipt.text(), [signer.key.verifier], origin=ORIGIN)
        assert decode_leaf(checked.entry).offset == 1
        assert checked.head.size == 2  # the head signed before the third record
        store.tree.check_receipt(receipt.text(), [signer.key.verifier])  # and the store still extends it
        assert not store.tree.receipt(7, 2).complete  # the newer record waits for the next head
        text = receipt.text()
    # Offline, where apsw, blake3, zstandard, click and cryptography cannot be imported.
    script = (
        "import sys\n"
        "for name in ('apsw', 'blake3', 'zstandard', 'click', 'cryptography'): sys.modules[name] = None\n"
        "from hybridlog.receipts import verify_receipt\n"
        "from hybridlog.tree_head import decode_leaf\n"
        "checked = verify_receipt(sys.stdin.read(), [sys.argv[1]])\n"
        "print(checked.index, checked.head.size, decode_leaf(checked.entry).stream_id)\n"
    )
    vkey = str(signer.key.verifier)
    done = subprocess.run(
        [sys.executable, "-c", script, vkey], input=text, capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.split() == ["1", "2", "7"]
    tampered = text.replace(text.split("\n")[3], text.split("\n")[4], 1)  # a proof hash swapped
    failed = subprocess.run(
        [sys.executable, "-c", script, vkey], input=tampered, capture_output=True, text=True, check=False, timeout=60
    )
    assert failed.returncode != 0
    assert "ProofError" in failed.stderr


def test_a_restored_backup_is_caught_and_cannot_be_signed(tmp_path: Path, signer: HeadSigner) -> None:
    store_dir, backup = tmp_path / "store", tmp_path / "backup"
    rng = random.Random(3)
    with Storage(store_dir) as store:
        fill(store, rng, 10)
        store.tree.sign(signer)
    shutil.copytree(store_dir, backup)
    with Storage(store_dir) as store:
        fill(store, rng, 10)
        later = parse_tree_head(note_text(store.tree.sign(signer)))
    shutil.rmtree(store_dir)
    shutil.copytree(backup, store_dir)  # the tail cut: the store as it was before the last appends
    with Storage(store_dir) as store:
        with pytest.raises(HeadNotExtended, match="fewer"):
            store.tree.check_against(later)
        with pytest.raises(HeadNotExtended):
            store.tree.sign(signer)
        fill(store, rng, 30)  # even grown past the signed size, it is another history
        with pytest.raises(HeadNotExtended):
            store.tree.check_against(later)
        with pytest.raises(HeadNotExtended):
            store.tree.sign(signer)


def _write(store_dir: Path, events: list[tuple[int, bytes]]) -> None:
    with Storage(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        for stream_id, payload in events:
            store.append(stream_id, [payload])


def test_a_rewritten_history_and_a_reordered_pair_are_caught_against_a_head(tmp_path: Path, signer: HeadSigner) -> None:
    events = [(1 + i % 2, f"event {i}".encode()) for i in range(12)]
    original = tmp_path / "original"
    _write(original, events)
    with Storage(original) as store:
        head = parse_tree_head(note_text(store.tree.sign(signer)))
        assert store.tree.check_against(head) == head.size
    rewritten = [*events]
    rewritten[5] = (rewritten[5][0], b"event 5, changed")
    reordered = [*events]
    reordered[6], reordered[7] = reordered[7], reordered[6]
    for name, history in (("rewritten", rewritten), ("reordered", reordered)):
        forged = tmp_path / name
        _write(forged, history)  # a store with a freshly computed, valid chain: it verifies on its own
        with Storage(forged) as store:
            assert store.check().ok
            with pytest.raises(HeadNotExtended, match="rewritten or reordered"):
                store.tree.check_against(head)


def test_the_signer_keeps_its_last_head_beside_the_key_and_refuses_a_forged_one(
    store_dir: Path, signer: HeadSigner
) -> None:
    with Storage(store_dir) as store:
        store.append(1, [b"x"])
        first = store.tree.sign(signer)
        assert open_note(signer.state_path.read_text(), [signer.key.verifier]).text == note_text(first)
        assert store.tree.signed_heads() == [first]
        assert store.tree.sign(signer) == first  # the same head again: same size and root
        store.append(1, [b"y"])
        second = parse_tree_head(note_text(store.tree.sign(signer)))
        assert second.size == 2
        signer.state_path.write_text(first.replace("\n1\n", "\n9\n"))  # the remembered head edited
        with pytest.raises(ProofError):
            store.tree.sign(signer)
        other = HeadSigner(signer.key_file, origin="another.example/log")
        signer.state_path.write_text(first)
        with pytest.raises(ProofError, match=r"origin|heads of"):
            store.tree.sign(other)


def test_positions_of_an_unknown_outcome_are_not_called_gaps_before_the_reopen_settles_them(
    store_dir: Path, signer: HeadSigner
) -> None:
    with Storage(store_dir) as store:
        store.append(1, [b"a"])  # position 1
        catalog = store._writable_catalog()
        catalog.conn.set_commit_hook(lambda: True)  # the COMMIT is turned into a rollback
        try:
            with pytest.raises(AppendOutcomeUnknown):
                store.append(1, [b"b", b"c"])  # positions 2, 3: written, not committed
        finally:
            catalog.conn.set_commit_hook(None)
        store.append(2, [b"d"])  # position 4
        assert store.tree.size() == 1  # the tree waits before position 2 instead of calling it a gap
        early = parse_tree_head(note_text(store.tree.sign(signer)))
    with Storage(store_dir) as store:  # recovery adopts positions 2 and 3 from the segment
        leaves = assert_tree_matches_segments(store)
        assert GAP_LEAF not in leaves[:4]  # 2 and 3 are records, not gaps
        assert store.tree.check_against(early) == len(leaves)
        store.tree.sign(signer)


def test_check_finds_a_damaged_tile_and_repair_recomputes_the_tree(store_dir: Path) -> None:
    with Storage(store_dir) as store:
        fill(store, random.Random(5), 40)
        size, root = store.tree.size(), store.tree.root()
        assert store.check().ok
    changed = edit_catalog(store_dir, "UPDATE merkle_tiles SET hashes = zeroblob(length(hashes)) WHERE level = 1")
    assert changed >= 1
    with Storage(store_dir, read_only=True) as reader:
        found = reader.check().findings
        assert [f.problem for f in found] == [FindingKind.TREE_MISMATCH]
        with pytest.raises(IntegrityError, match="do not hash to the catalog's Merkle tree"):
            reader.prove_consistency(5)  # a proof never comes from a tree the segments disagree with
    with Storage(store_dir) as store:
        report = store.check()
        assert [step.repair for step in report.plan()] == [RepairKind.REBUILD_TREE]
        repaired = store.repair()
        assert repaired.after is not None
        assert repaired.after.ok
        assert store.tree.root(size) == root
        assert_tree_matches_segments(store)


def test_proofs_take_a_groups_leaves_from_its_frames_and_refuse_frames_the_tree_disagrees_with(
    store_dir: Path,
) -> None:
    with Storage(store_dir, checkpoint_policy=CheckpointPolicy.explicit()) as store:
        for n in range(40):  # positions 1 to 40: two complete groups of sixteen, eight on the edge
            store.append(1, [b"event %d" % n])
        leaves = assert_tree_matches_segments(store)
        verified_read = AssertionError("a proof read the segments verified")
        with (
            mock.patch("hybridlog.tree.leaves_from_segments", side_effect=verified_read),
            mock.patch("hybridlog.tree.StoreTree.leaf", side_effect=verified_read),
        ):
            for offset in range(40):
                assert store.prove_inclusion(1, offset).proof == merkle.inclusion_proof(leaves, offset)
            for old in range(1, 41):
                assert store.prove_consistency(old).proof == merkle.consistency_proof(leaves, old)
    for offset in (3, 37):  # stored hashes changed: record 3 in group 0, record 37 on the edge
        segment_no, position, _ = index_entry(store_dir, 1, offset)
        flip_byte(segment_path(store_dir, 1, segment_no), position + HASH_FIELD)
    with Storage(store_dir) as store:
        with pytest.raises(IntegrityError):  # the frames disagree; the verified read names the damage
            store.prove_consistency(5)
        with pytest.raises(IntegrityError):
            store.prove_inclusion(1, 37)  # its frame's entry does not prove: read verified
        assert store.prove_consistency(20).proof == merkle.consistency_proof(leaves, 20)  # group 1 is intact


def test_bad_arguments_are_typed_errors(store_dir: Path) -> None:
    with Storage(store_dir) as store:
        store.append(1, [b"x", b"y"])
        for call in (
            lambda: store.prove_inclusion(1, 5),
            lambda: store.prove_inclusion(1, 0, size=3),
            lambda: store.prove_consistency(0),
            lambda: store.prove_consistency(3),
            lambda: store.prove_consistency(1, size=-1),
            lambda: store.tree.root(9),
        ):
            with pytest.raises(InvalidArgument):
                call()
        with pytest.raises(HeadNotExtended):
            store.tree.check_against(TreeHead(ORIGIN, 2, bytes(32)))


# --- crashes ---------------------------------------------------------------------------------------

CRASH_ROUNDS = 12


def child_write(store_dir: Path, seed: int, round_no: int) -> None:
    arm_from_environment()
    rng = random.Random(seed * 1000 + round_no)
    compression = CompressionKind.ZSTD if round_no % 2 else CompressionKind.NONE
    with Storage(store_dir, max_segment_size=4096, compression=compression) as store:
        print("ready", flush=True)
        for n in range(1000):
            stream_id = rng.choice((1, 2, 3))
            store.append(stream_id, [rng.randbytes(rng.randint(1, 200)) for _ in range(rng.randint(1, 6))])
            acknowledge(f"ack {n}")


def test_every_crash_leaves_a_tree_that_extends_every_head_signed_before_it(
    store_dir: Path, signer: HeadSigner
) -> None:
    rng = random.Random(1414)
    plans = [KillPlan(step, rng.randint(1, 4)) for step in ("batch-framed", "segment-written", "catalog-committed")]
    plans += [KillPlan.choose(rng, 1, 8) for _ in range(CRASH_ROUNDS - len(plans))] + [KillPlan(ACK, 3)]
    for round_no, plan in enumerate(plans):
        lines = run_until_killed(THIS_FILE, "write", str(store_dir), "14", str(round_no), plan=plan)
        assert lines[0] == "ready"
        with Storage(store_dir) as store:
            assert_tree_matches_segments(store)
            signed = parse_tree_head(note_text(store.tree.sign(signer)))  # refused unless it extends the last
            assert store.tree.check_against(signed) == signed.size


def child_sign_killed_before_the_store_keeps_the_head(store_dir: Path, key_file: Path) -> None:
    """Append, sign, append, then sign again and die (SIGKILL) after the signer kept the new head
    beside its key and before the store wrote it to ``heads/``."""
    signer = HeadSigner(key_file)
    with Storage(store_dir) as store:
        store.append(1, [b"first %d" % n for n in range(20)])
        print(store.tree.sign(signer).replace("\n", "|"), flush=True)
        store.append(2, [b"second %d" % n for n in range(7)])
        keep_beside_the_key = write_file_durably

        def write(path: Path, data: bytes) -> None:
            if path.parent.name == "heads":
                kill_self()
            keep_beside_the_key(path, data)

        with mock.patch.object(tree_module, "write_file_durably", write):
            store.tree.sign(signer)


def test_a_signer_killed_before_the_store_kept_its_head_refuses_nothing_valid(
    store_dir: Path, signer: HeadSigner
) -> None:
    lines = run_until_killed(THIS_FILE, "sign-killed", str(store_dir), str(signer.key_file), plan=None)
    first = parse_tree_head(note_text(lines[0].replace("|", "\n")))
    last = signer.last_head()  # the signer's state was written first: it holds the second head
    assert last is not None
    assert (first.size, last.size) == (20, 27)
    with Storage(store_dir) as store:
        assert [parse_tree_head(note_text(h)) for h in store.tree.signed_heads()] == [first]  # not yet the second
        assert store.tree.check_against(last) == 27  # what it covers was durable before it was signed
        store.append(1, [b"third"])
        again = parse_tree_head(note_text(store.tree.sign(signer)))  # extends the last head: signed
        assert again.size == 28
        assert [parse_tree_head(note_text(h)) for h in store.tree.signed_heads()] == [again]
        receipt = store.tree.receipt(2, 6)
        assert receipt.complete


if __name__ == "__main__":
    command, directory, *rest = sys.argv[1:]
    if command == "write":
        child_write(Path(directory), int(rest[0]), int(rest[1]))
    else:
        assert command == "sign-killed"
        child_sign_killed_before_the_store_keeps_the_head(Path(directory), Path(rest[0]))
