"""The store's Merkle tree in the catalog: ``MerkleTiles``, mixed into ``Catalog``.

The tree is RFC 6962's over one leaf per global position (``tree_head.py`` defines the leaf
entries; ``merkle.py`` the hashing). Leaves come in groups of sixteen (group ``g``: leaves
``16g .. 16g + 15``). The catalog keeps (migration 0008):

- ``merkle_tiles`` level ``L`` >= 1: for every ``j``, the hash of the complete subtree over leaves
  ``j * 16**L .. (j + 1) * 16**L - 1``, sixteen hashes to a row (``tile``);
- ``merkle_tree.edge``: the leaf hashes of the last, incomplete group (fewer than sixteen).

Appending a leaf adds its hash to the edge; when the edge holds sixteen, their root becomes the next
hash of level 1, and so on up, as a full row of a level becomes the next hash of the level above.
So an append hashes each leaf once and, amortised, one more node per leaf, and rewrites the
``merkle_tree`` row and the last row of level 1 (now and then of a level above).

Any subtree a proof or a root needs is a perfect subtree of height ``h`` (or a run of them along
the tree's right edge): the root of at most ``2**(h % 4)`` consecutive hashes of level ``h // 4``,
all in one row. At level 0 those are leaf hashes, which the catalog no longer holds once their group
is complete: the reader is given them (``LeafGroup``: the caller computes them from the segments)
and checks them against the level-1 hash the catalog keeps for the group.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import apsw

import hybridlog.merkle as merkle
from hybridlog.errors import CatalogMismatch, IntegrityError
from hybridlog.native import speedups

TILE_HEIGHT = 4
TILE_WIDTH = 1 << TILE_HEIGHT
HASH = merkle.HASH_SIZE

LeafGroup = Callable[[int, bytes], bytes]
"""``(g, root)``: the sixteen leaf hashes of complete group ``g``, laid end to end, computed from
the segments; ``root`` is their root as the catalog keeps it (level 1), which they must hash to."""


def row_root(row: bytes) -> bytes:
    """``merkle.root`` over the hashes laid end to end in a tile row (compiled where it is built)."""
    if speedups is not None:
        root: bytes = speedups.merkle_root(row)
        return root
    return merkle.root([row[i : i + HASH] for i in range(0, len(row), HASH)])


class TreeState(NamedTuple):
    """The ``merkle_tree`` row."""

    size: int
    """The leaves the tree holds (global positions 1 .. size)."""
    stale_from: int | None
    """The lowest position whose leaf may be out of date (None: the tree agrees with the rows)."""
    edge: bytes
    """The leaf hashes of the last ``size % 16`` leaves, laid end to end."""


class MerkleTiles:
    """The ``merkle_tree`` and ``merkle_tiles`` queries of ``Catalog``."""

    conn: apsw.Connection

    def tree_state(self) -> TreeState:
        """The ``merkle_tree`` row (CatalogMismatch if it is missing or its edge is not the size's)."""
        row = self.conn.execute("SELECT size, stale_from, edge FROM merkle_tree WHERE singleton = 1").fetchone()
        if row is None:
            raise CatalogMismatch("the catalog has no merkle_tree row")
        state = TreeState(int(row[0]), None if row[1] is None else int(row[1]), bytes(row[2]))
        if len(state.edge) != state.size % TILE_WIDTH * HASH:
            raise CatalogMismatch(f"merkle_tree holds {len(state.edge) // HASH} edge hashes for size {state.size}")
        return state

    def last_record_position(self) -> int:
        """The global position of the last record the catalog holds (0: none)."""
        row = self.conn.execute(
            "SELECT global_position + record_count - 1 FROM batches ORDER BY global_position DESC LIMIT 1"
        ).fetchone()
        return 0 if row is None else int(row[0])

    def _row(self, level: int, tile: int) -> bytes:
        row = self.conn.execute(
            "SELECT hashes FROM merkle_tiles WHERE level = ? AND tile = ?", (level, tile)
        ).fetchone()
        return b"" if row is None else bytes(row[0])

    def _put_rows(self, rows: Sequence[tuple[int, int, bytes]]) -> None:
        """Write (level, tile, hashes) rows, each new or replacing the row there."""
        self.conn.executemany(
            "INSERT INTO merkle_tiles (level, tile, hashes) VALUES (?, ?, ?)"
            " ON CONFLICT (level, tile) DO UPDATE SET hashes = excluded.hashes",
            rows,
        )

    def append_leaves(self, state: TreeState, leaf_hashes: Sequence[bytes]) -> None:
        """Append ``leaf_hashes`` to the tree in ``state`` (read by the caller in the same
        transaction), inside the caller's transaction."""
        level0 = state.edge + b"".join(leaf_hashes)
        complete = len(level0) // (TILE_WIDTH * HASH) * TILE_WIDTH * HASH
        carry = [row_root(level0[at : at + TILE_WIDTH * HASH]) for at in range(0, complete, TILE_WIDTH * HASH)]
        writes: list[tuple[int, int, bytes]] = []
        level, count = 1, state.size // TILE_WIDTH  # count: hashes the level holds before this append
        while carry:
            tile, used = divmod(count, TILE_WIDTH)
            row = self._row(level, tile) if used else b""
            if len(row) != used * HASH:
                raise CatalogMismatch(
                    f"merkle_tiles level {level} row {tile} holds {len(row) // HASH} hashes, not {used}"
                )
            full: list[bytes] = []
            at = 0
            while at < len(carry):
                take = min(TILE_WIDTH - used, len(carry) - at)
                row += b"".join(carry[at : at + take])
                at += take
                writes.append((level, tile, row))
                if used + take == TILE_WIDTH:
                    full.append(row_root(row))
                    tile, used, row = tile + 1, 0, b""
                else:
                    used += take
            carry, level, count = full, level + 1, count // TILE_WIDTH
        if writes:
            self._put_rows(writes)
        self.conn.execute(
            "UPDATE merkle_tree SET size = ?, edge = ? WHERE singleton = 1",
            (state.size + len(leaf_hashes), level0[complete:]),
        )

    def truncate_tree(self, size: int) -> int:
        """Cut the tree back to its first ``size`` leaves rounded down to a complete group (the
        catalog keeps no leaf hash of complete groups to make an edge from) and mark it up to date,
        inside the caller's transaction; returns the size it now has (the caller appends the leaves
        after it)."""
        size -= size % TILE_WIDTH
        level, count = 1, size // TILE_WIDTH
        while True:
            tile, used = divmod(count, TILE_WIDTH)
            self.conn.execute("DELETE FROM merkle_tiles WHERE level = ? AND tile > ?", (level, tile))
            if used:
                self._put_rows([(level, tile, self._row(level, tile)[: used * HASH])])
            else:
                self.conn.execute("DELETE FROM merkle_tiles WHERE level = ? AND tile = ?", (level, tile))
            if count == 0:
                self.conn.execute("DELETE FROM merkle_tiles WHERE level > ?", (level,))
                break
            level, count = level + 1, count // TILE_WIDTH
        self.conn.execute("UPDATE merkle_tree SET size = ?, stale_from = NULL, edge = x'' WHERE singleton = 1", (size,))
        return size

    def tree_reader(self, leaf_group: LeafGroup) -> TreeReader:
        """Roots and proofs over the tree as the catalog holds it now (read in the caller's transaction)."""
        return TreeReader(self, self.tree_state(), leaf_group)


class TreeReader:
    """Roots and proofs over one state of the tree (``MerkleTiles.tree_reader``)."""

    def __init__(self, tiles: MerkleTiles, state: TreeState, leaf_group: LeafGroup) -> None:
        self._tiles = tiles
        self._state = state
        self._leaf_group = leaf_group
        self._groups: dict[int, bytes] = {}  # leaf hashes of complete groups, as the segments gave them

    @property
    def size(self) -> int:
        """The leaves the tree holds."""
        return self._state.size

    def _group(self, group: int) -> bytes:
        """The leaf hashes of a group: the edge, or a complete group's from the segments (checked
        against the hash the catalog keeps for it)."""
        if group == self._state.size // TILE_WIDTH:
            return self._state.edge
        if group not in self._groups:
            kept = self._hashes(1, group, 1)
            hashes = self._leaf_group(group, kept)
            if len(hashes) != TILE_WIDTH * HASH or row_root(hashes) != kept:
                first = group * TILE_WIDTH + 1
                raise IntegrityError(
                    f"the segments' records at global positions {first} to {first + TILE_WIDTH - 1} do not hash"
                    " to the catalog's Merkle tree (run `hybridlog check`)"
                )
            self._groups[group] = hashes
        return self._groups[group]

    def _hashes(self, level: int, first: int, count: int) -> bytes:
        """Hashes ``first .. first + count - 1`` of a level (all in one row), laid end to end."""
        tile, at = divmod(first, TILE_WIDTH)
        row = self._group(tile) if level == 0 else self._tiles._row(level, tile)
        if len(row) < (at + count) * HASH:
            raise CatalogMismatch(f"merkle level {level} row {tile} is missing hashes the tree holds")
        return row[at * HASH : (at + count) * HASH]

    def subtree_hash(self, lo: int, hi: int) -> bytes:
        """The hash of the subtree over leaves ``lo .. hi - 1``: a perfect subtree (``hi - lo`` a
        power of two, ``lo`` a multiple of it), or any range, as the runs of perfect subtrees RFC
        6962 splits it into."""
        width = hi - lo
        if width <= 0:
            return merkle.EMPTY_ROOT
        if width & (width - 1) == 0 and lo % width == 0:
            height = width.bit_length() - 1
            level, below = divmod(height, TILE_HEIGHT)
            stride = TILE_WIDTH**level
            return row_root(self._hashes(level, lo // stride, 1 << below))
        k = merkle.split_point(width)
        return merkle.node_hash(self.subtree_hash(lo, lo + k), self.subtree_hash(lo + k, hi))

    def root(self, size: int) -> bytes:
        """The root of the tree's first ``size`` leaves."""
        return self.subtree_hash(0, size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """The proof that leaf ``index`` is in the tree's first ``size`` leaves."""
        return merkle.inclusion_path(index, size, self.subtree_hash)

    def consistency_proof(self, old_size: int, size: int) -> list[bytes]:
        """The proof that the tree's first ``old_size`` leaves are a prefix of its first ``size``."""
        return merkle.consistency_path(old_size, size, self.subtree_hash)
