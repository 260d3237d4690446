-- 0008_merkle_edge: level 0 of the Merkle tree leaves the catalog. Documented in docs/schema.md
-- and docs/proofs.md.
--
-- 0007 kept every leaf hash (32 bytes a record) in `merkle_tiles` level 0, in a WITHOUT ROWID
-- table whose 512-byte rows overflowed the catalog's 1 KiB pages: an append of 100 records wrote
-- some 20 more pages to the WAL. Now the catalog keeps the tree's hashes at heights 4, 8, ...
-- (levels 1, 2, ...: one hash per complete subtree of 16, 256, ... leaves) in a rowid table, where
-- a row of up to 512 bytes fits in its page, and only the leaf hashes after the last complete 16
-- (`merkle_tree.edge`, fewer than 16 hashes laid end to end) on the row an append updates anyway.
-- A proof that needs leaf hashes inside a complete group of 16 computes them from the segments.
--
-- The tree is derived data: it starts again empty here, and the writer recomputes it from the
-- segments before it serves a proof or signs a head (as for a store written before 0007).

DROP TABLE merkle_tiles;

CREATE TABLE merkle_tiles (
    level  INTEGER NOT NULL CHECK (level >= 1),
    tile   INTEGER NOT NULL CHECK (tile >= 0),
    hashes BLOB NOT NULL CHECK (length(hashes) BETWEEN 32 AND 512 AND length(hashes) % 32 = 0),
    PRIMARY KEY (level, tile)
) STRICT;

ALTER TABLE merkle_tree ADD COLUMN edge BLOB NOT NULL DEFAULT x'' CHECK (length(edge) < 512 AND length(edge) % 32 = 0);

UPDATE merkle_tree SET size = 0, stale_from = NULL, edge = x'' WHERE singleton = 1;
