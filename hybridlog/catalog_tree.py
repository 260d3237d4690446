"""The store's Merkle tree in the catalog: ``MerkleTiles``, mixed into ``Catalog``.

The tree is RFC 6962's over one leaf per global position (``tree_head.py`` defines the leaf
entries; ``merkle.py`` the hashing). The catalog keeps the hashes of the tree's complete subtrees
at heights 0, 4, 8, ... in ``merkle_tiles`` (migration 0007): level ``L`` holds, for every ``j``,
the hash of leaves ``j * 16**L .. (j + 1) * 16**L - 1`` once they are all in the tree, sixteen
hashes to a row. Appending a leaf writes its hash into the last row of level 0; when a row fills,
the hash of its sixteen becomes the next hash of the level above. So an append hashes each leaf
once and, amortised, one more node per leaf, and writes a row or two.

Any subtree a proof or a root needs is a perfect subtree of height ``h`` (or a run of them along
the tree's right edge): it is the root of at most ``2**(h % 4)`` consecutive hashes of level
``h // 4``, all in one row, so it costs one row read and at most 7 node hashes.
"""

from __future__ import annotations

from collections.abc import Sequence

import apsw

import hybridlog.merkle as merkle
from hybridlog.errors import CatalogMismatch
from hybridlog.native import speedups

TILE_HEIGHT = 4
TILE_WIDTH = 1 << TILE_HEIGHT
HASH = merkle.HASH_SIZE


def row_root(row: bytes) -> bytes:
    """``merkle.root`` over the hashes laid end to end in a tile row (compiled where it is built)."""
    if speedups is not None:
        root: bytes = speedups.merkle_root(row)
        return root
    return merkle.root([row[i : i + HASH] for i in range(0, len(row), HASH)])


class MerkleTiles:
    """The ``merkle_tree`` and ``merkle_tiles`` queries of ``Catalog``."""

    conn: apsw.Connection

    def tree_state(self) -> tuple[int, int | None]:
        """(size, stale_from): the leaves the tree holds, and the lowest position whose leaf may be
        out of date (None: the tree agrees with the catalog's rows)."""
        row = self.conn.execute("SELECT size, stale_from FROM merkle_tree WHERE singleton = 1").fetchone()
        if row is None:
            raise CatalogMismatch("the catalog has no merkle_tree row")
        return int(row[0]), None if row[1] is None else int(row[1])

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

    def append_leaves(self, size: int, leaf_hashes: Sequence[bytes]) -> None:
        """Append ``leaf_hashes`` to the tree of ``size`` leaves (the caller read ``tree_state`` in
        the same transaction), inside the caller's transaction."""
        carry: list[bytes] = list(leaf_hashes)
        writes: list[tuple[int, int, bytes]] = []
        level, count = 0, size  # count: hashes the level holds before this append
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
        self._put_rows(writes)
        self.conn.execute("UPDATE merkle_tree SET size = size + ? WHERE singleton = 1", (len(leaf_hashes),))

    def truncate_tree(self, size: int) -> None:
        """Cut the tree back to its first ``size`` leaves and mark it up to date (the caller then
        appends the leaves from ``size + 1`` on), inside the caller's transaction."""
        level, count = 0, size
        while True:
            tile, used = divmod(count, TILE_WIDTH)
            self.conn.execute("DELETE FROM merkle_tiles WHERE level = ? AND tile > ?", (level, tile))
            if used:
                row = self._row(level, tile)
                self._put_rows([(level, tile, row[: used * HASH])])
            else:
                self.conn.execute("DELETE FROM merkle_tiles WHERE level = ? AND tile = ?", (level, tile))
            if count == 0:
                self.conn.execute("DELETE FROM merkle_tiles WHERE level > ?", (level,))
                break
            level, count = level + 1, count // TILE_WIDTH
        self.conn.execute("UPDATE merkle_tree SET size = ?, stale_from = NULL WHERE singleton = 1", (size,))

    # --- reading the tree ------------------------------------------------------------------------

    def _hashes(self, level: int, first: int, count: int) -> bytes:
        """Hashes ``first .. first + count - 1`` of a level (all in one row), laid end to end."""
        tile, at = divmod(first, TILE_WIDTH)
        row = self._row(level, tile)
        if len(row) < (at + count) * HASH:
            raise CatalogMismatch(f"merkle_tiles level {level} row {tile} is missing hashes the tree holds")
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

    def tree_root(self, size: int) -> bytes:
        """The root of the tree's first ``size`` leaves."""
        return self.subtree_hash(0, size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """The proof that leaf ``index`` is in the tree's first ``size`` leaves."""
        return merkle.inclusion_path(index, size, self.subtree_hash)

    def consistency_proof(self, old_size: int, size: int) -> list[bytes]:
        """The proof that the tree's first ``old_size`` leaves are a prefix of its first ``size``."""
        return merkle.consistency_path(old_size, size, self.subtree_hash)
