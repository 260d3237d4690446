"""RFC 6962 / RFC 9162 Merkle trees: hashing, proofs, and their verifiers (standard library only).

A tree over ``n`` entries is the Merkle Tree Hash of RFC 9162 section 2.1.1, with SHA-256:

* a leaf's hash is ``SHA-256(0x00 || entry)``;
* an inner node's hash is ``SHA-256(0x01 || left || right)``;
* the tree over ``n > 1`` leaves splits at ``k``, the largest power of two below ``n``: its hash is
  the node hash of the tree over the first ``k`` leaves and the tree over the other ``n - k``;
* the tree over no leaves hashes to ``SHA-256("")``.

The functions that build proofs take the leaf hashes as a list. The store's own tree builds the same
proofs from its tiles: ``inclusion_path`` and ``consistency_path`` take a function that gives the
hash of any subtree the proof needs, so both share one layout of a proof. The verifiers follow RFC
9162 sections 2.1.3.2 and 2.1.4.2 and raise ``ProofError`` on any proof that does not check out:
a wrong length or count of hashes, an index outside the tree, or a root that does not match.

This module and the other verifier modules (``ed25519``, ``note``, ``receipts``) import nothing
outside the standard library and ``hybridlog.errors``, so a proof can be checked where nothing else
of hybridlog's dependencies is installed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from hybridlog.errors import ProofError

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

SubtreeHash = Callable[[int, int], bytes]
"""The hash of the subtree over leaves ``lo .. hi - 1`` (``hi - lo`` a power of two, or ``hi`` the
tree's size)."""


def leaf_hash(entry: bytes) -> bytes:
    """The hash of a leaf whose entry is ``entry``."""
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The hash of an inner node over the subtrees hashing to ``left`` and ``right``."""
    return hashlib.sha256(b"\x01" + left + right).digest()


class CompactRange:
    """The roots of the perfect subtrees that make up the tree over the leaves appended so far,
    largest first (one per bit set in the size): all an appender keeps to compute roots, in
    O(log n) space; each append hashes one node per subtree it completes."""

    def __init__(self) -> None:
        self.size = 0
        self.hashes: list[bytes] = []

    def append(self, leaf: bytes) -> None:
        """Add the next leaf (its hash)."""
        merged, size = leaf, self.size
        while size & 1:  # the rightmost subtree is as big as what it now merges with
            merged = node_hash(self.hashes.pop(), merged)
            size >>= 1
        self.hashes.append(merged)
        self.size += 1

    def root(self) -> bytes:
        """The Merkle Tree Hash over the leaves appended so far."""
        if not self.hashes:
            return EMPTY_ROOT
        result = self.hashes[-1]
        for h in reversed(self.hashes[:-1]):  # the right edge: fold the smaller subtrees into the larger
            result = node_hash(h, result)
        return result


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """The Merkle Tree Hash over ``leaf_hashes`` (already hashed leaves, or the roots of equal
    perfect subtrees, which hash up the same way)."""
    hashes = CompactRange()
    for h in leaf_hashes:
        hashes.append(h)
    return hashes.root()


def split_point(n: int) -> int:
    """The largest power of two below ``n`` (``n >= 2``): where RFC 9162 splits a tree of ``n``."""
    return 1 << ((n - 1).bit_length() - 1)


# --- building proofs -----------------------------------------------------------------------------


def inclusion_path(index: int, size: int, subtree: SubtreeHash) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree of ``size`` (RFC 9162 section 2.1.3.1), with
    each sibling subtree's hash from ``subtree``."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of {size}")
    siblings: list[bytes] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = split_point(hi - lo)
        if index < lo + k:
            siblings.append(subtree(lo + k, hi))
            hi = lo + k
        else:
            siblings.append(subtree(lo, lo + k))
            lo += k
    return siblings[::-1]  # the path runs from the leaf up


def consistency_path(old_size: int, size: int, subtree: SubtreeHash) -> list[bytes]:
    """The proof that the tree of ``old_size`` is a prefix of the tree of ``size`` (RFC 9162
    section 2.1.4.1), with each subtree's hash from ``subtree``."""
    if not 0 < old_size <= size:
        raise ProofError(f"no consistency proof from size {old_size} to size {size}")
    siblings: list[bytes] = []
    lo, hi, m, whole = 0, size, old_size, True
    while hi - lo != m:
        k = split_point(hi - lo)
        if m <= k:
            siblings.append(subtree(lo + k, hi))
            hi = lo + k
        else:
            siblings.append(subtree(lo, lo + k))
            lo, m, whole = lo + k, m - k, False
    start = [] if whole else [subtree(lo, hi)]  # the old tree's own subtree, unless it is the old root
    return start + siblings[::-1]


def _list_subtree(leaf_hashes: Sequence[bytes]) -> SubtreeHash:
    return lambda lo, hi: root(leaf_hashes[lo:hi])


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """The inclusion proof of leaf ``index`` in the tree over ``leaf_hashes``."""
    return inclusion_path(index, len(leaf_hashes), _list_subtree(leaf_hashes))


def consistency_proof(leaf_hashes: Sequence[bytes], old_size: int) -> list[bytes]:
    """The proof that the tree over the first ``old_size`` leaves is a prefix of the tree over all."""
    return consistency_path(old_size, len(leaf_hashes), _list_subtree(leaf_hashes))


# --- verifying proofs ----------------------------------------------------------------------------


def _check_hashes(what: str, *hashes: bytes) -> None:
    for h in hashes:
        if not isinstance(h, bytes | bytearray) or len(h) != HASH_SIZE:
            raise ProofError(f"{what}: a hash is not {HASH_SIZE} bytes")


def _check_size(what: str, value: int) -> None:
    if type(value) is not int or value < 0:
        raise ProofError(f"{what} is not a non-negative int: {value!r}")


def root_from_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """The root that ``proof`` leads to from ``leaf`` at ``index`` in a tree of ``size``."""
    _check_size("the index", index)
    _check_size("the tree size", size)
    if index >= size:
        raise ProofError(f"leaf {index} is not in a tree of {size}")
    _check_hashes("inclusion proof", leaf, *proof)
    fn, sn, r = index, size - 1, bytes(leaf)
    for p in proof:
        if sn == 0:
            raise ProofError("the inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("the inclusion proof is shorter than the tree is deep")
    return r


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root_hash: bytes) -> None:
    """Check that ``leaf`` (a leaf hash) is leaf ``index`` of the tree of ``size`` hashing to
    ``root_hash``; ProofError if not."""
    _check_hashes("inclusion proof root", root_hash)
    if root_from_inclusion(leaf, index, size, proof) != root_hash:
        raise ProofError(f"the inclusion proof of leaf {index} does not lead to the root of the tree of {size}")


def verify_consistency(old_size: int, size: int, proof: Sequence[bytes], old_root: bytes, root_hash: bytes) -> None:
    """Check that the tree of ``old_size`` hashing to ``old_root`` is a prefix of the tree of
    ``size`` hashing to ``root_hash``; ProofError if not. A proof from size 0 means nothing and is
    refused, as transparency-dev/merkle does."""
    _check_size("the old size", old_size)
    _check_size("the new size", size)
    _check_hashes("consistency proof roots", old_root, root_hash)
    _check_hashes("consistency proof", *proof)
    if old_size == 0:
        raise ProofError("a consistency proof from an empty tree proves nothing")
    if old_size > size:
        raise ProofError(f"the old size {old_size} is above the new size {size}")
    if old_size == size:
        if proof:
            raise ProofError("a consistency proof between equal sizes must be empty")
        if old_root != root_hash:
            raise ProofError(f"two different roots for the same size {size}")
        return
    if not proof:
        raise ProofError("the consistency proof is empty")
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # the old tree is a whole subtree: its root starts the path
        path.insert(0, bytes(old_root))
    fn, sn = old_size - 1, size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("the consistency proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("the consistency proof is shorter than the tree is deep")
    if fr != old_root:
        raise ProofError(f"the consistency proof does not lead to the old root (size {old_size})")
    if sr != root_hash:
        raise ProofError(f"the consistency proof does not lead to the new root (size {size})")
