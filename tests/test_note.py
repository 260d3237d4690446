"""Signed notes, tree heads and receipts against the public vectors (``../shared/vectors/``): the
C2SP and Go signed-note examples, real sum.golang.org and Rekor v2 checkpoints (one with three
witness cosignatures), a derived cosignature and tlog-proof, and every Ed25519 case of RFC 8032
and Wycheproof; then keys made here, and tampering refused."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest

from hybridlog import ed25519, merkle, note
from hybridlog.errors import ProofError
from hybridlog.receipts import Receipt, parse_receipt, verify_receipt
from hybridlog.tree_head import TreeHead, parse_tree_head

Vectors = Callable[[str], Any]


def _vkey_from_der(name: str, der_b64: str, key_type: int = note.ED25519) -> str:
    public = base64.b64decode(der_b64)[-32:]  # an Ed25519 SubjectPublicKeyInfo ends with the raw key
    return str(note.VerifierKey(name, note.key_id(name, key_type, public), key_type, public))


def test_every_wycheproof_and_rfc8032_case(shared_vector: Vectors) -> None:
    cases = shared_vector("wycheproof_ed25519_test.json")
    checked = 0
    for group in cases["testGroups"]:
        public = bytes.fromhex(group["publicKey"]["pk"])
        for case in group["tests"]:
            valid = ed25519.verify(public, bytes.fromhex(case["msg"]), bytes.fromhex(case["sig"]))
            assert valid == (case["result"] == "valid"), (case["tcId"], case["comment"])
            checked += 1
    assert checked == cases["numberOfTests"] == 151
    by_id = {case["tcId"]: (group, case) for group in cases["testGroups"] for case in group["tests"]}
    for vector in shared_vector("ed25519_rfc8032.json")["vectors"]:
        group, case = by_id[vector["wycheproof_tcId"]]
        key = note.SignerKey("rfc8032", bytes.fromhex(vector["seed"]))
        assert key.verifier.public_key.hex() == group["publicKey"]["pk"]
        line = note.sign(bytes.fromhex(case["msg"]).decode("latin-1"), key)
        if case["msg"] and all(b < 0x80 for b in bytes.fromhex(case["msg"])):
            assert base64.b64decode(line.split()[-1])[4:].hex() == case["sig"]


def test_c2sp_and_go_examples(shared_vector: Vectors) -> None:
    vectors = shared_vector("signed_note.json")
    example = vectors["c2sp_example"]
    opened = note.open_note(example["note"], [example["vkey"]])
    assert opened.text == "This is an example message.\n"
    assert note.verify_note(example["note"], [example["vkey"]]) == ["example.com/foo"]
    # a text with a blank line of its own: split at the last blank line; its key is unpublished
    unverifiable = vectors["c2sp_unverifiable_example"]["note"]
    assert note.note_text(unverifiable).endswith("\ned è subito sera.\n")
    with pytest.raises(ProofError, match="no signature"):
        note.verify_note(unverifiable, [example["vkey"]])
    peter, enoch = vectors["go_peter_neumann"], vectors["go_enoch_root"]
    assert note.sign_note(peter["text"], peter["skey"]) == peter["signed_note"]  # Ed25519 is deterministic
    assert str(note.parse_signer_key(peter["skey"])) == peter["skey"]
    assert str(note.parse_signer_key(peter["skey"]).verifier) == peter["vkey"]
    assert note.verify_note(peter["signed_note"], [peter["vkey"]]) == ["PeterNeumann"]
    assert note.verify_note(enoch["signed_note"], [enoch["vkey"]]) == ["EnochRoot"]
    both = enoch["both_signatures_note"]
    assert note.verify_note(both, [peter["vkey"], enoch["vkey"]]) == ["PeterNeumann", "EnochRoot"]
    only = note.open_note(both, [enoch["vkey"]])
    assert [k.name for k in only.verified] == ["EnochRoot"]
    assert [s.name for s in only.unverified] == ["PeterNeumann"]
    for bad in vectors["bad_vkeys"]:
        with pytest.raises(ProofError):
            note.parse_verifier_key(bad["vkey"])


def test_real_sum_golang_org_checkpoints(shared_vector: Vectors) -> None:
    sumdb = shared_vector("checkpoints.json")["go_sumdb"]
    first, second = sumdb["checkpoints"]
    assert note.verify_note(first["note"], [sumdb["vkey"]]) == ["sum.golang.org"]
    head = parse_tree_head(note.note_text(first["note"]))
    assert (head.origin, head.size) == ("go.sum database tree", 15368405)
    with pytest.raises(ProofError, match="newline"):  # as published, its signature line lacks its newline
        note.verify_note(second["note"], [sumdb["vkey"]])
    assert note.verify_note(second["note"] + "\n", [sumdb["vkey"]]) == ["sum.golang.org"]
    spec = shared_vector("checkpoints.json")["tlog_checkpoint_spec_example"]
    parsed = parse_tree_head(note.note_text(spec["note"]))
    assert (parsed.origin, parsed.size, len(parsed.root)) == ("example.com/behind-the-sofa", 20852163, 32)
    assert parsed.text() == note.note_text(spec["note"])


def test_real_rekor_v2_entries_end_to_end(shared_vector: Vectors) -> None:
    rekor = shared_vector("checkpoints.json")["rekor_v2_staging"]
    vkey = _vkey_from_der(rekor["origin"], rekor["public_key_der_b64"])
    public = note.parse_verifier_key(vkey).public_key
    log_id = __import__("hashlib").sha256(rekor["origin"].encode() + b"\n\x01" + public).digest()
    assert base64.b64encode(log_id).decode() == rekor["trusted_root_log_id_b64"]
    for entry in rekor["entries"]:
        assert note.verify_note(entry["checkpoint"], [vkey]) == [rekor["origin"]]
        head = parse_tree_head(note.note_text(entry["checkpoint"]))
        assert head.size == entry["tree_size"]
        assert base64.b64encode(head.root).decode() == entry["root_hash_b64"]
        leaf = merkle.leaf_hash(base64.b64decode(entry["canonicalized_body_b64"]))
        proof = [base64.b64decode(p) for p in entry["proof_b64"]]
        merkle.verify_inclusion(leaf, entry["log_index"], head.size, proof, head.root)
        with pytest.raises(ProofError):
            merkle.verify_inclusion(leaf, entry["log_index"] - 1, head.size, proof, head.root)


def test_witness_cosignatures_on_a_real_checkpoint(shared_vector: Vectors) -> None:
    witnessed = shared_vector("checkpoints.json")["rekor_v2_staging_witnessed"]
    entry = witnessed["entry"]
    witnesses = [w["vkey"] for w in witnessed["witness_vkeys"]]
    names = note.verify_note(entry["checkpoint"], [witnessed["log_vkey"], *witnesses])
    assert sorted(names) == sorted([witnessed["origin"], *(w.split("+")[0] for w in witnesses)])
    assert note.verify_note(entry["checkpoint"], witnesses[:1]) == [witnesses[0].split("+")[0]]
    head = parse_tree_head(note.note_text(entry["checkpoint"]))
    leaf = merkle.leaf_hash(base64.b64decode(entry["canonicalized_body_b64"]))
    proof = [base64.b64decode(p) for p in entry["proof_b64"]]
    merkle.verify_inclusion(leaf, entry["log_index"], head.size, proof, head.root)
    assert len(proof) == 13
    assert head.size == 4026479
    # a cosignature moved to another checkpoint does not verify
    forged = entry["checkpoint"].replace("4026479", "4026478", 1)
    with pytest.raises(ProofError):
        note.verify_note(forged, witnesses)


def test_derived_cosignature_and_tlog_proof(shared_vector: Vectors) -> None:
    derived = shared_vector("derived_cosignature_tlogproof.json")
    cosig = derived["cosignature_v1"]
    names = note.verify_note(cosig["cosigned_checkpoint"], [cosig["vkey"]])
    assert names == [cosig["cosigner_name"]]
    witness = note.parse_verifier_key(cosig["vkey"])
    assert witness.public_key == ed25519_public(cosig["seed_hex"])
    proof = derived["tlog_proof"]
    vkey = _vkey_from_der("log2025-alpha1.rekor.sigstage.dev", proof["log_vkey_public_key_der_b64"])
    checked = verify_receipt(proof["text"], [vkey], origin="log2025-alpha1.rekor.sigstage.dev")
    assert (checked.index, checked.head.size, checked.signers) == (645, 646, ["log2025-alpha1.rekor.sigstage.dev"])
    receipt = parse_receipt(proof["text"])
    assert receipt.text() == proof["text"]  # parse and format round-trip byte for byte
    with pytest.raises(ProofError, match="origin"):
        verify_receipt(proof["text"], [vkey], origin="another.example/log")
    tampered = Receipt(receipt.entry + b" ", receipt.index, receipt.proof, receipt.checkpoint).text()
    with pytest.raises(ProofError):
        verify_receipt(tampered, [vkey])


def ed25519_public(seed_hex: str) -> bytes:
    return note.SignerKey("x", bytes.fromhex(seed_hex)).verifier.public_key


def test_generated_keys_sign_and_verify_and_tampering_is_refused() -> None:
    skey, vkey = note.generate_key("hybridlog.example/store")
    assert skey.startswith("PRIVATE+KEY+hybridlog.example/store+")
    assert vkey.startswith("hybridlog.example/store+")
    head = TreeHead("hybridlog.example/store", 3, bytes(range(32)))
    signed = note.sign_note(head.text(), skey)
    assert note.verify_note(signed, [vkey]) == ["hybridlog.example/store"]
    assert parse_tree_head(note.note_text(signed)) == head
    with pytest.raises(ProofError, match="does not verify"):
        note.verify_note(signed.replace("\n3\n", "\n4\n"), [vkey])
    _, other = note.generate_key("hybridlog.example/store")
    with pytest.raises(ProofError, match="no signature"):
        note.verify_note(signed, [other])
    assert "PRIVATE" not in repr(note.parse_signer_key(skey))
    for bad_text in ("no newline", "", "tab\tinside\n"):
        with pytest.raises(ProofError):
            note.sign_note(bad_text, skey)
    for bad_note in (signed.rstrip("\n"), signed.replace("\u2014", "-"), head.text(), signed + "trailing\n"):
        with pytest.raises(ProofError):
            note.verify_note(bad_note, [vkey])
    for bad_head in ("o\n01\n" + head.text().split("\n")[2] + "\n", "o\n1\nAAAA\n", "o\n1\n", "\n1\nAAAA\n"):
        with pytest.raises(ProofError):
            parse_tree_head(bad_head)
