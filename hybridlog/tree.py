"""The store's Merkle tree as users meet it: catching it up with the segments, proofs, receipts,
signed tree heads and checks against them (``docs/proofs.md``).

The append path keeps the tree in the catalog in the same transaction as the records it covers
(``framing.extend_tree``; the tiles are in ``catalog_tree.py``). When it cannot (a group whose
positions recovery has yet to settle, a tree recovery or repair marked stale, a store written
before the tree existed), ``catch_up`` computes the missing leaves from the segments by a
verified read in global order, before any proof is given or head signed. A position no record has
(one a repair cut, or a torn batch left) gets the gap leaf.

Signing (``HeadSigner``): the key lives outside the store, and beside it the signer keeps the last
head it signed. It signs a new head only when the store proves, by a consistency proof checked
against that remembered head, that its tree extends it; so a store restored from an old backup, or
repaired by cutting records, cannot get a second history signed under the same key. What a head
covers is made durable (segments fsynced, catalog checkpointed) before it is signed.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Protocol, cast

import hybridlog.merkle as merkle
from hybridlog.catalog import Catalog
from hybridlog.catalog_tree import TILE_WIDTH, TreeReader, row_root
from hybridlog.errors import HeadNotExtended, IntegrityError, InvalidArgument, ProofError, StorageError
from hybridlog.evicted import segment_file
from hybridlog.framing import KIND_BYTE
from hybridlog.layout import signed_head_path, signed_heads_on_disk
from hybridlog.note import SignerKey, VerifierKey, note_text, open_note, parse_signer_key, sign_note
from hybridlog.receipts import CheckedReceipt, Receipt, verify_receipt
from hybridlog.record import FORMAT_VERSION, HASH_FIELD, HEADER_SIZE, VERSION_BYTE
from hybridlog.repair import Finding
from hybridlog.segment import make_dirs_durably, write_file_durably
from hybridlog.tree_head import GAP_ENTRY, TreeHead, decode_leaf, leaf_entry, parse_tree_head
from hybridlog.types import FindingKind, GlobalPosition, GlobalRecord, Record, RepairKind, StreamId, check_stream_id
from hybridlog.writer import Writer

log = logging.getLogger(__name__)

GAP_LEAF = merkle.leaf_hash(GAP_ENTRY)
CATCH_UP_CHUNK = 65_536
"""Leaves computed per catalog transaction while catching up (bounds memory on a large store)."""
READ_BYTES = 8 << 20
GROUP_READ_BYTES = 64 << 10
"""Payload bytes read at a time for the sixteen leaves of one group (most groups fit in one read)."""


class TreeStore(Protocol):
    """What the tree needs of ``Storage``."""

    _lock: threading.RLock
    _writer: Writer

    @property
    def data_dir(self) -> Path:
        """The store's directory."""

    @property
    def read_only(self) -> bool:
        """Whether the store was opened for reading only."""

    def _writable_catalog(self) -> Catalog: ...

    def _readable_catalog(self, *, follow: bool = True) -> Catalog | None: ...

    def _read_global(self, start: int, limit: int, only: StreamId | None) -> list[GlobalRecord]: ...

    def _iter_records(self, sid: StreamId, from_offset: int, *, anchored: bool) -> Iterator[Record]: ...

    def global_position_of(self, stream_id: int, offset: int) -> GlobalPosition | None:
        """The record's global position (None: no such record)."""

    def flush_indexes(self) -> None:
        """fsync the active segments and checkpoint the catalog."""


@dataclass(frozen=True, slots=True)
class InclusionProof:
    """That the record's leaf ``entry`` is leaf ``index`` of the tree of ``size`` with ``root``."""

    stream_id: int
    offset: int
    index: int
    size: int
    entry: bytes
    proof: list[bytes]
    root: bytes


@dataclass(frozen=True, slots=True)
class ConsistencyProof:
    """That the tree of ``old_size`` (``old_root``) is a prefix of the tree of ``size`` (``root``)."""

    old_size: int
    size: int
    proof: list[bytes]
    old_root: bytes
    root: bytes


def record_leaf(record: Record) -> bytes:
    """A record's leaf entry."""
    return leaf_entry(int(record.kind), record.stream_id, record.offset, record.timestamp_ns, record.hash)


def leaves_from_segments(
    store: TreeStore, first: int, last: int | None, *, stop_at_gap: bool = False, read_bytes: int = READ_BYTES
) -> Iterator[bytes]:
    """The leaf hash of every position from ``first`` to ``last`` (None: the last record's), from
    a verified read of the segments in global order; gaps get the gap leaf (or, ``stop_at_gap``,
    end the leaves)."""
    position = first
    while last is None or position <= last:
        page = store._read_global(position, read_bytes, None)
        if not page:
            break
        for found in page:
            while position < found.global_position and (last is None or position <= last):
                if stop_at_gap:
                    return
                yield GAP_LEAF
                position += 1
            if last is not None and found.global_position > last:
                return
            yield merkle.leaf_hash(record_leaf(found.record))
            position += 1
    if last is not None and position <= last:
        raise IntegrityError(f"the segments hold no record at or after global position {position}, up to {last}")


def frame_entries(catalog: Catalog, data_dir: Path, first: int, last: int) -> list[bytes] | None:
    """The leaf entries of positions ``first`` to ``last`` (the gap entry where no record has the
    position), made from the record hashes the frames hold where the catalog says they are: no
    record is read whole or verified, so the caller must check them (against a root the tree
    keeps). None where a frame is not a format-2 frame or cannot be read (the caller then reads the
    records verified)."""
    entries: list[bytes] = []
    files: dict[tuple[int, int], int] = {}
    try:
        for position, sid, offset, segment_no, at, _, _, timestamp in catalog.index_rows_from_position(first):
            if position > last:
                break
            if position < first:
                continue
            entries += [GAP_ENTRY] * (position - first - len(entries))  # positions a repair left unused
            if (sid, segment_no) not in files:
                files[sid, segment_no] = os.open(segment_file(data_dir, sid, segment_no), os.O_RDONLY)
            header = os.pread(files[sid, segment_no], HEADER_SIZE, at)
            if len(header) < HEADER_SIZE or header[VERSION_BYTE] != FORMAT_VERSION:
                return None
            record_hash = header[HASH_FIELD : HASH_FIELD + 32]
            entries.append(leaf_entry(header[KIND_BYTE], sid, offset, timestamp, record_hash))
    except OSError:
        return None
    finally:
        for fd in files.values():
            os.close(fd)
    return entries + [GAP_ENTRY] * (last - first + 1 - len(entries))


class StoreTree:
    """The Merkle tree of one store (``Storage.tree``); every method takes the store's lock."""

    def __init__(self, store: TreeStore) -> None:
        self._store = store

    def catch_up(self) -> int:
        """Bring the tree up to the last record the catalog holds, recomputing from the segments
        what the append path could not keep; returns the tree's size."""
        with self._store._lock:
            catalog = self._store._writable_catalog()
            size, stale, _ = catalog.tree_state()
            last = catalog.last_record_position()
            if stale is None and size >= last:
                return size
            start = size
            if stale is not None:
                with catalog.transaction():
                    start = catalog.truncate_tree(min(size, stale - 1))
            log.info("the Merkle tree is recomputed from global position %d to %d", start + 1, last)
            chunk: list[bytes] = []
            # After a group whose outcome is unknown, a missing position may still be adopted by
            # the reopen's recovery: the tree then stops before it rather than call it a gap.
            unsettled = self._store._writer.fenced
            try:
                for leaf in leaves_from_segments(self._store, start + 1, last, stop_at_gap=unsettled):
                    chunk.append(leaf)
                    if len(chunk) == CATCH_UP_CHUNK:
                        start = self._append(catalog, start, chunk)
                        chunk = []
            except IntegrityError as e:
                log.warning("the Merkle tree stops at position %d: %s", start + len(chunk), e)
            if chunk:
                start = self._append(catalog, start, chunk)
            return start

    @staticmethod
    def _append(catalog: Catalog, size: int, hashes: list[bytes]) -> int:
        with catalog.transaction():
            catalog.append_leaves(catalog.tree_state(), hashes)
        return size + len(hashes)

    def _reader(self, catalog: Catalog) -> TreeReader:
        """Roots and proofs over the tree ``catalog`` holds; leaf hashes of complete groups of
        sixteen (``catalog_tree.LeafGroup``) from the record hashes in their frames when those hash
        to the root the catalog keeps for the group, else from a verified read of the segments."""

        def leaf_group(group: int, root: bytes) -> bytes:
            first = group * TILE_WIDTH + 1
            last = first + TILE_WIDTH - 1
            entries = frame_entries(catalog, self._store.data_dir, first, last)
            if entries is not None:
                hashes = b"".join(map(merkle.leaf_hash, entries))
                if row_root(hashes) == root:
                    return hashes
            return b"".join(leaves_from_segments(self._store, first, last, read_bytes=GROUP_READ_BYTES))

        return catalog.tree_reader(leaf_group)

    @contextmanager
    def _tree(self) -> Iterator[tuple[TreeReader, int, Catalog]]:
        """The tree's roots and proofs, its size and the catalog that holds it, under the store's
        lock: a writer's tree caught up first; a reader's as the catalog has it (one read
        transaction), provided it covers every record the catalog holds."""
        with self._store._lock:
            if not self._store.read_only:
                size = self.catch_up()
                writable = self._store._writable_catalog()
                yield self._reader(writable), size, writable
                return
            catalog = self._store._readable_catalog()
            if catalog is None:
                raise StorageError(f"store {self._store.data_dir} has no catalog yet")
            with catalog.conn:
                reader = self._reader(catalog)
                if catalog.tree_state().stale_from is not None or reader.size < catalog.last_record_position():
                    raise StorageError(
                        "the store's Merkle tree does not cover every record yet (a writer catches it up)",
                        hint="open the store for writing once (`hybridlog sign`, or any append) and ask again",
                    )
                yield reader, reader.size, catalog

    def size(self) -> int:
        """The number of leaves (global positions) the tree covers."""
        with self._tree() as (_, size, _):
            return size

    def root(self, size: int | None = None) -> bytes:
        """The root of the tree of ``size`` leaves (default: all)."""
        with self._tree() as (tree, top, _):
            return tree.root(top if size is None else _check_size(size, top))

    def head(self, origin: str) -> TreeHead:
        """The tree's head now (unsigned)."""
        with self._tree() as (tree, size, _):
            return TreeHead(origin, size, tree.root(size))

    def leaf(self, stream_id: int, offset: int) -> tuple[int, bytes]:
        """(leaf index, leaf entry) of a record, read and verified from its segment."""
        stream_id = check_stream_id(stream_id)
        if type(offset) is not int or offset < 0:
            raise InvalidArgument(f"offset must be a non-negative int, not {offset!r}")
        with self._store._lock:
            position = self._store.global_position_of(stream_id, offset)
            if position is None:
                raise InvalidArgument(f"stream {stream_id} has no record at offset {offset}")
            record = next(self._store._iter_records(stream_id, offset, anchored=True), None)
            if record is None or record.offset != offset:
                raise InvalidArgument(f"stream {stream_id} has no record at offset {offset}")
            return position - 1, record_leaf(record)

    def _frame_leaf(self, catalog: Catalog, stream_id: int, offset: int) -> tuple[int, bytes] | None:
        """(leaf index, leaf entry) of a record from its frame's header, not verified (None: no
        such record, or its frame cannot give it); only a proof checked against the tree may use it."""
        position = self._store.global_position_of(check_stream_id(stream_id), offset)
        if position is None:
            return None
        entries = frame_entries(catalog, self._store.data_dir, position, position)
        if entries is None or entries[0] == GAP_ENTRY:
            return None
        found = decode_leaf(entries[0])
        return (position - 1, entries[0]) if (found.stream_id, found.offset) == (stream_id, offset) else None

    def prove_inclusion(self, stream_id: int, offset: int, size: int | None = None) -> InclusionProof:
        """The proof that a record is in the tree of ``size`` leaves (default: the whole tree).

        The leaf entry comes from the record's frame when the proof then checks out against the
        tree (so nothing but the entry is trusted, and the proof shows it); otherwise the record is
        read verified from its checkpoint, which names damage to it (IntegrityError)."""
        with self._tree() as (tree, top, catalog):
            at = top if size is None else _check_size(size, top)
            fast = None
            if type(offset) is int and offset >= 0:
                fast = self._frame_leaf(catalog, stream_id, offset)
            index, entry = fast or self.leaf(stream_id, offset)
            if index >= at:
                raise InvalidArgument(f"the record is leaf {index}, not in a tree of {at}")
            proof, root = tree.inclusion_proof(index, at), tree.root(at)
            if fast is not None and merkle.root_from_inclusion(merkle.leaf_hash(entry), index, at, proof) != root:
                index, entry = self.leaf(stream_id, offset)
        merkle.verify_inclusion(merkle.leaf_hash(entry), index, at, proof, root)  # never hand out a bad proof
        return InclusionProof(stream_id, offset, index, at, entry, proof, root)

    def prove_consistency(self, old_size: int, size: int | None = None) -> ConsistencyProof:
        """The proof that the tree of ``old_size`` leaves is a prefix of the tree of ``size``."""
        with self._tree() as (tree, top, _):
            at = top if size is None else _check_size(size, top)
            if type(old_size) is not int or not 0 < old_size <= at:
                raise InvalidArgument(f"old size {old_size!r} is not in 1..{at}")
            proof = tree.consistency_proof(old_size, at)
            old_root, root = tree.root(old_size), tree.root(at)
        merkle.verify_consistency(old_size, at, proof, old_root, root)
        return ConsistencyProof(old_size, at, proof, old_root, root)

    # --- signed heads ----------------------------------------------------------------------------

    def sign(self, signer: HeadSigner) -> str:
        """Sign the tree's head now with ``signer`` (see ``HeadSigner.sign``), keep it in the
        store (``heads/<key id>.checkpoint``) and return it."""
        with self._store._lock:
            size = self.catch_up()
            self._store.flush_indexes()  # what the head covers is durable before it is signed
            tree = self._reader(self._store._writable_catalog())
            head = TreeHead(signer.origin, size, tree.root(size))
            signed = signer.sign(head, lambda old: tree.consistency_proof(old, size))
            path = signed_head_path(self._store.data_dir, signer.key.verifier.key_id)
            make_dirs_durably(path.parent)
            write_file_durably(path, signed.encode())
            return signed

    def signed_heads(self) -> list[str]:
        """The signed heads kept in the store, one per key that signed (as signed notes)."""
        return [path.read_text(encoding="utf-8") for path in signed_heads_on_disk(self._store.data_dir)]

    def receipt(self, stream_id: int, offset: int) -> Receipt:
        """A record's receipt: its leaf entry and index, and, when a head kept in the store covers
        it, the inclusion proof in that head's tree and the head (the largest such head)."""
        with self._tree() as (tree, top, _):
            index, entry = self.leaf(stream_id, offset)
            covering = [
                (head, signed)
                for signed in self.signed_heads()
                for head in [parse_tree_head(_unsigned_text(signed))]
                if index < head.size <= top
            ]
            if not covering:
                return Receipt(entry, index)
            head, signed = max(covering, key=lambda pair: pair[0].size)
            if tree.root(head.size) != head.root:
                raise HeadNotExtended(
                    f"the store's tree of {head.size} leaves is not the one the kept head signed",
                    old_size=head.size,
                    size=top,
                )
            proof = tree.inclusion_proof(index, head.size)
        merkle.verify_inclusion(merkle.leaf_hash(entry), index, head.size, proof, head.root)
        return Receipt(entry, index, tuple(proof), signed)

    def check_receipt(
        self, text: str, vkeys: list[str] | list[VerifierKey], *, origin: str | None = None
    ) -> CheckedReceipt:
        """Check a receipt offline (``receipts.verify_receipt``), then that this store still holds
        the tree its head signed (the tree the catalog keeps; ``check_against`` re-derives it
        from the segments): HeadNotExtended after a cut, a rewrite or a restored backup."""
        checked = verify_receipt(text, vkeys, origin=origin)
        with self._tree() as (tree, top, _):
            head = checked.head
            if top < head.size or tree.root(head.size) != head.root:
                raise HeadNotExtended(
                    f"the store no longer holds the tree of {head.size} leaves the receipt's head signed",
                    old_size=head.size,
                    size=top,
                )
        return checked

    def findings(self) -> list[Finding]:
        """What ``check`` reports of the tree: TREE_MISMATCH when the catalog's tree does not hash to
        the root of the leaves the segments give (a reader checks only a tree that covers every
        record; damage the segment walk found is reported by the check itself)."""
        with self._store._lock:
            try:
                with self._tree() as (tree, size, _):
                    kept = tree.root(size)
                hashes = merkle.CompactRange()
                for leaf in leaves_from_segments(self._store, 1, size):
                    hashes.append(leaf)
            except (StorageError, ProofError) as e:
                log.info("the Merkle tree was not checked: %s", e)
                return []
            if hashes.root() == kept:
                return []
            return [
                Finding(
                    None,
                    FindingKind.TREE_MISMATCH,
                    f"the catalog's Merkle tree of {size} leaves has root {kept.hex()}, the segments' leaves"
                    f" {hashes.root().hex()}",
                    RepairKind.REBUILD_TREE,
                )
            ]

    def rebuild(self) -> int:
        """Recompute the whole tree from the segments (``repair`` of a TREE_MISMATCH); its size."""
        with self._store._lock:
            catalog = self._store._writable_catalog()
            with catalog.transaction():
                catalog.truncate_tree(0)
            return self.catch_up()

    def check_against(self, head: TreeHead, *, progress: Callable[[int], None] | None = None) -> int:
        """Check that the store's history extends ``head``, from the segments alone (a verified read
        of every record in global order): they give at least ``head.size`` leaves, and the first
        ``head.size`` hash to its root. A writer also checks that the catalog's tree agrees. Returns
        the number of leaves the segments give; HeadNotExtended if the store was cut back,
        rewritten or reordered since the head was signed. Works on a read-only store."""
        hashes, at_head = merkle.CompactRange(), merkle.EMPTY_ROOT
        with self._store._lock:
            try:
                for leaf in leaves_from_segments(self._store, 1, None):
                    hashes.append(leaf)
                    if hashes.size == head.size:
                        at_head = hashes.root()
                    if progress is not None:
                        progress(1)
            except IntegrityError as e:
                raise HeadNotExtended(
                    f"the segments cannot give the leaves the head covers: {e}", old_size=head.size, size=hashes.size
                ) from e
            top = hashes.size
            if top < head.size:
                raise HeadNotExtended(
                    f"the store holds {top} records, fewer than the {head.size} the head covers (cut back?)",
                    old_size=head.size,
                    size=top,
                )
            if at_head != head.root:
                raise HeadNotExtended(
                    f"the store's first {head.size} records are not those the head covers (rewritten or reordered)",
                    old_size=head.size,
                    size=top,
                )
            if not self._store.read_only and self.catch_up() == top:
                tree = self._reader(self._store._writable_catalog())
                if tree.root(top) != hashes.root():
                    raise HeadNotExtended(
                        "the catalog's tree disagrees with the segments (run `hybridlog repair` to rebuild it)",
                        old_size=head.size,
                        size=top,
                    )
            return top


class ProvingStore:
    """``Storage``'s proofs: ``tree`` (receipts, signed heads, checks against a head) and the two
    proofs the engine's API names."""

    @cached_property
    def tree(self) -> StoreTree:
        """The store's Merkle tree (``StoreTree``)."""
        return StoreTree(cast(TreeStore, self))

    def prove_inclusion(self, stream_id: int, offset: int, size: int | None = None) -> InclusionProof:
        """The proof that a record is in the store's tree of ``size`` leaves (default: all of it)."""
        return self.tree.prove_inclusion(stream_id, offset, size)

    def prove_consistency(self, old_size: int, size: int | None = None) -> ConsistencyProof:
        """The proof that the store's tree of ``old_size`` leaves is a prefix of its tree of ``size``."""
        return self.tree.prove_consistency(old_size, size)


def _check_size(size: int, top: int) -> int:
    if type(size) is not int or not 0 <= size <= top:
        raise InvalidArgument(f"tree size {size!r} is not in 0..{top}")
    return size


def _unsigned_text(signed: str) -> str:
    """The text of a signed note the store wrote itself (its signature was checked when signed)."""
    return note_text(signed)


class HeadSigner:
    """Signs tree heads with a key kept outside the store, and refuses to sign one that does not
    extend the last it signed. That last head is kept beside the key (``<key file>.last-head``,
    a signed note), written durably before ``sign`` returns."""

    def __init__(self, key_file: str | Path, *, origin: str | None = None) -> None:
        self.key_file = Path(key_file)
        try:
            self.key: SignerKey = parse_signer_key(self.key_file.read_text(encoding="utf-8"))
        except OSError as e:
            raise StorageError(f"cannot read the signing key {self.key_file}: {e}") from e
        self.origin = origin or self.key.name
        self.state_path = self.key_file.with_name(self.key_file.name + ".last-head")

    def last_head(self) -> TreeHead | None:
        """The last head this key signed (None: none yet); ProofError if the file is not one."""
        try:
            signed = self.state_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StorageError(f"cannot read {self.state_path}: {e}") from e
        return parse_tree_head(open_note(signed, [self.key.verifier]).text)  # signed by this key, unchanged

    def sign(self, head: TreeHead, consistency: Callable[[int], list[bytes]]) -> str:
        """Sign ``head``, given the store's consistency proofs from older sizes to its size.

        HeadNotExtended unless it extends the last head this key signed (same origin; same size and
        root, or a larger size with a consistency proof from the last one)."""
        last = self.last_head()
        if last is not None:
            if last.origin != head.origin:
                raise ProofError(f"this key signs heads of {last.origin!r}, not {head.origin!r}")
            if head.size < last.size or (head.size == last.size and head.root != last.root):
                raise HeadNotExtended(
                    f"the tree of {head.size} leaves does not extend the last head signed ({last.size} leaves)",
                    old_size=last.size,
                    size=head.size,
                )
            if 0 < last.size < head.size:
                try:
                    merkle.verify_consistency(last.size, head.size, consistency(last.size), last.root, head.root)
                except ProofError as e:
                    raise HeadNotExtended(
                        f"the tree of {head.size} leaves does not extend the last head signed"
                        f" ({last.size} leaves): {e}",
                        old_size=last.size,
                        size=head.size,
                    ) from e
        signed = sign_note(head.text(), self.key)
        write_file_durably(self.state_path, signed.encode())  # remembered before anyone sees it
        return signed
