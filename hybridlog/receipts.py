"""Receipts: a record's inclusion in a signed tree head, as a C2SP ``tlog-proof`` text that anyone
checks offline (standard library only)::

    c2sp.org/tlog-proof@v1\\n
    extra <base64 of the leaf entry>\\n
    index <leaf index, ASCII decimal>\\n
    <one base64 hash per line: the inclusion proof, from the leaf's sibling up>\\n
    \\n
    <the signed checkpoint, verbatim>

For a hybridlog store the extra data is the record's leaf entry (``tree_head.py``): the verifier
hashes it into the leaf, so once the proof checks out the entry is authenticated too (stream,
offset, kind, timestamp and the record's chain hash, at global position index + 1). A receipt is
taken when an append returns (``Storage.receipt``: the leaf entry and its index) and completed
once a signed head covers the record (the proof and the head).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

import hybridlog.merkle as merkle
from hybridlog.errors import ProofError
from hybridlog.note import VerifierKey, open_note
from hybridlog.tree_head import TreeHead, parse_tree_head

HEADER = "c2sp.org/tlog-proof@v1"


@dataclass(frozen=True, slots=True)
class Receipt:
    """A record's leaf entry and index; with ``proof`` and ``checkpoint`` once a signed head
    covers it (both None before)."""

    entry: bytes
    index: int
    proof: tuple[bytes, ...] | None = None
    checkpoint: str | None = None

    @property
    def complete(self) -> bool:
        """Whether a signed head covers the record (the receipt can be exported)."""
        return self.checkpoint is not None

    def text(self) -> str:
        """The receipt as a ``tlog-proof`` text (ProofError while no signed head covers it)."""
        if self.proof is None or self.checkpoint is None:
            raise ProofError(
                f"no signed head covers leaf {self.index} yet", hint="sign a head (`hybridlog sign`) and ask again"
            )
        lines = [HEADER, f"extra {base64.b64encode(self.entry).decode()}", f"index {self.index}"]
        lines += [base64.b64encode(h).decode() for h in self.proof]
        return "\n".join(lines) + "\n\n" + self.checkpoint


@dataclass(frozen=True, slots=True)
class CheckedReceipt:
    """What a receipt proved: the signed head, the names of the keys that signed it, and the leaf
    entry at ``index``."""

    head: TreeHead
    signers: list[str]
    entry: bytes
    index: int


def parse_receipt(text: str) -> Receipt:
    """A receipt from its ``tlog-proof`` text; ProofError if it is not well formed."""
    head, blank, checkpoint = text.partition("\n\n")
    lines = head.split("\n")
    if not blank or not lines or lines[0] != HEADER:
        raise ProofError(f"not a {HEADER} text")
    at, entry = 1, b""
    if at < len(lines) and lines[at].startswith("extra "):
        entry = _decode64(lines[at][len("extra ") :], "the extra data")
        at += 1
    if at >= len(lines) or not lines[at].startswith("index "):
        raise ProofError("a tlog-proof names the leaf index")
    index_text = lines[at][len("index ") :]
    if not index_text.isascii() or not index_text.isdigit() or (index_text != "0" and index_text.startswith("0")):
        raise ProofError(f"a tlog-proof's index is not a decimal number: {index_text!r}")
    proof = tuple(_decode64(line, "a proof hash") for line in lines[at + 1 :])
    return Receipt(entry, int(index_text), proof, checkpoint)


def _decode64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ProofError(f"{what} is not base64: {text!r}") from e


def verify_receipt(
    text: str, vkeys: list[str] | list[VerifierKey], *, origin: str | None = None, entry: bytes | None = None
) -> CheckedReceipt:
    """Check a receipt offline: its checkpoint is signed by one of ``vkeys`` (and is ``origin``'s,
    when given), and its leaf (the receipt's extra data, or ``entry`` when the receipt carries
    none) is at its index in the tree the checkpoint names. ProofError if anything fails."""
    receipt = parse_receipt(text)
    assert receipt.checkpoint is not None
    assert receipt.proof is not None
    opened = open_note(receipt.checkpoint, vkeys)
    head = parse_tree_head(opened.text)
    if origin is not None and head.origin != origin:
        raise ProofError(f"the checkpoint's origin is {head.origin!r}, not {origin!r}")
    leaf = receipt.entry if entry is None else entry
    if not leaf and entry is None:
        raise ProofError("the receipt carries no leaf entry: pass the entry it proves")
    merkle.verify_inclusion(merkle.leaf_hash(leaf), receipt.index, head.size, receipt.proof, head.root)
    return CheckedReceipt(head, [key.name for key in opened.verified], leaf, receipt.index)
