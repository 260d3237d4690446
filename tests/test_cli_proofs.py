"""The Merkle tree's commands end to end: ``key generate``, ``sign``, ``prove``, ``receipt``,
``verify-receipt`` and ``verify --against``, with their exit codes (3 when a proof, head or receipt
does not check out, or the store no longer extends a head)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import hybridlog.merkle as merkle
from hybridlog import Storage
from hybridlog.cli import EXIT_DAMAGE, EXIT_ERROR, EXIT_OK, EXIT_USAGE, cli
from hybridlog.tree import leaves_from_segments

ORIGIN = "hybridlog.example/cli"


def run(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), input=stdin)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def signed_store(tmp_path: Path) -> tuple[Path, Path, str]:
    """A store with two streams, a key outside it and one head signed: (store, key file, vkey)."""
    store, key = tmp_path / "store", tmp_path / "keys" / "log.key"
    key.parent.mkdir()
    with Storage(store) as s:
        for i in range(6):
            s.append(1 + i % 2, [f"event {i}".encode()])
    code, vkey, _ = run("key", "generate", ORIGIN, "--out", str(key))
    assert code == EXIT_OK
    assert key.stat().st_mode & 0o777 == 0o600
    code, head, _ = run("sign", str(store), "--key", str(key))
    assert code == EXIT_OK
    assert head.startswith(f"{ORIGIN}\n")
    (tmp_path / "head").write_text(head)
    return store, key, vkey.strip()


def test_key_generate_never_overwrites(tmp_path: Path) -> None:
    key = tmp_path / "k"
    assert run("key", "generate", ORIGIN, "--out", str(key))[0] == EXIT_OK
    before = key.read_text()
    code, _, err = run("key", "generate", ORIGIN, "--out", str(key))
    assert code == EXIT_ERROR
    assert "never overwritten" in err
    assert key.read_text() == before
    assert run("key", "generate", "bad name", "--out", str(tmp_path / "k2"))[0] == EXIT_DAMAGE


def test_prove_prints_proofs_that_verify(signed_store: tuple[Path, Path, str]) -> None:
    store, _, _ = signed_store
    code, out, _ = run("prove", str(store), "--stream", "2", "--offset", "1")
    assert code == EXIT_OK
    found = json.loads(out)
    assert (found["proof"], found["stream_id"], found["offset"]) == ("inclusion", 2, 1)
    entry, hashes = bytes.fromhex(found["leaf_entry"]), [bytes.fromhex(h) for h in found["hashes"]]
    root = bytes.fromhex(found["root"])
    merkle.verify_inclusion(merkle.leaf_hash(entry), found["leaf_index"], found["tree_size"], hashes, root)
    code, out, _ = run("prove", str(store), "--old-size", "2", "--size", "5")
    consistency = json.loads(out)
    merkle.verify_consistency(
        2,
        5,
        [bytes.fromhex(h) for h in consistency["hashes"]],
        bytes.fromhex(consistency["old_root"]),
        bytes.fromhex(consistency["root"]),
    )
    with Storage(store, read_only=True) as reader:
        assert bytes.fromhex(consistency["root"]) == merkle.root(list(leaves_from_segments(reader, 1, 5)))
    assert run("prove", str(store))[0] == EXIT_USAGE
    assert run("prove", str(store), "--stream", "1")[0] == EXIT_USAGE
    assert run("prove", str(store), "--stream", "1", "--offset", "99")[0] == EXIT_ERROR


def test_receipts_verify_offline_and_fail_once_the_store_is_cut(
    signed_store: tuple[Path, Path, str], tmp_path: Path
) -> None:
    store, key, vkey = signed_store
    backup = tmp_path / "backup"
    shutil.copytree(store, backup)
    code, receipt, _ = run("receipt", str(store), "1", "2")
    assert code == EXIT_OK
    (tmp_path / "receipt").write_text(receipt)
    code, out, _ = run("verify-receipt", str(tmp_path / "receipt"), "--vkey", vkey, "--json")
    assert code == EXIT_OK
    checked = json.loads(out)
    assert (checked["stream_id"], checked["offset"], checked["origin"]) == (1, 2, ORIGIN)
    code, out, _ = run("verify-receipt", "-", "--vkey", vkey, "--store", str(store), stdin=receipt)
    assert code == EXIT_OK
    assert out.startswith("ok: stream 1 offset 2")
    code, _, err = run("verify-receipt", "-", "--vkey", vkey, stdin=receipt.replace("index 4", "index 3"))
    assert code == EXIT_DAMAGE
    assert "inclusion proof" in err
    other = tmp_path / "other.key"
    _, other_vkey, _ = run("key", "generate", ORIGIN, "--out", str(other))
    assert run("verify-receipt", "-", "--vkey", other_vkey.strip(), stdin=receipt)[0] == EXIT_DAMAGE
    assert run("verify-receipt", "-", stdin=receipt)[0] == EXIT_USAGE

    with Storage(store) as s:  # the store grows and a newer head is signed
        s.append(3, [b"later"])
    code, later_head, _ = run("sign", str(store), "--key", str(key))
    assert code == EXIT_OK
    (tmp_path / "later-head").write_text(later_head)
    code, out, _ = run("verify", str(store), "--against", str(tmp_path / "later-head"), "--vkey", vkey)
    assert code == EXIT_OK
    assert out.startswith("tree: extends")

    shutil.rmtree(store)
    shutil.copytree(backup, store)  # restored from the backup: the tail is cut
    code, out, _ = run("verify", str(store), "--against", str(tmp_path / "later-head"), "--vkey", vkey)
    assert code == EXIT_DAMAGE
    assert "DOES NOT EXTEND" in out
    code, out, _ = run("verify", str(store), "--against", str(tmp_path / "later-head"), "--json")
    assert code == EXIT_DAMAGE
    assert json.loads(out)["against"].startswith("DOES NOT EXTEND")
    code, _, err = run("sign", str(store), "--key", str(key))
    assert code == EXIT_DAMAGE  # the signer refuses a second history
    assert "does not extend" in err
    # the old receipt's head is the backup's: it still holds; the later head's is gone
    assert run("verify-receipt", "-", "--vkey", vkey, "--store", str(store), stdin=receipt)[0] == EXIT_OK
    with Storage(store) as s:
        s.append(1, [b"another history"])
    assert run("verify", str(store), "--against", str(tmp_path / "later-head"))[0] == EXIT_DAMAGE
    code, _, err = run("verify", str(store), "--against", str(tmp_path / "head"), "--vkey", other_vkey.strip())
    assert code == EXIT_DAMAGE
    assert "no signature" in err
