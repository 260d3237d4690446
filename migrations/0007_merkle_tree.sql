-- 0007_merkle_tree: the store's Merkle tree (RFC 6962, SHA-256) over every record in global order,
-- leaf index = global position - 1. Documented in docs/schema.md and docs/proofs.md.
--
-- `merkle_tree` is one row: `size`, the leaves the tree holds (positions 1..size), and
-- `stale_from`, the lowest position whose leaf may no longer be what the catalog's rows say
-- (NULL: none). The tree is kept in the append's own transaction; a change to `batches` at or
-- below its size (recovery adopting or re-indexing a batch, a repair cutting records, a rebuild)
-- marks it stale from there, by the triggers below, and the writer recomputes it from that
-- position out of the segments before it serves a proof or signs a head.
--
-- `merkle_tiles` holds the tree's node hashes at heights 0, 4, 8, ... (tile height 4): level L
-- holds the hash of every complete subtree of 16^L leaves, 16 to a row (`tile`), as 32-byte hashes
-- laid end to end in `hashes`; the last row of a level may hold fewer.

CREATE TABLE merkle_tree (
    singleton  INTEGER PRIMARY KEY CHECK (singleton = 1),
    size       INTEGER NOT NULL CHECK (size >= 0),
    stale_from INTEGER CHECK (stale_from IS NULL OR stale_from >= 1)
) STRICT;

INSERT INTO merkle_tree (singleton, size, stale_from) VALUES (1, 0, NULL);

CREATE TABLE merkle_tiles (
    level  INTEGER NOT NULL CHECK (level >= 0),
    tile   INTEGER NOT NULL CHECK (tile >= 0),
    hashes BLOB NOT NULL CHECK (length(hashes) BETWEEN 32 AND 512 AND length(hashes) % 32 = 0),
    PRIMARY KEY (level, tile)
) STRICT, WITHOUT ROWID;

CREATE TRIGGER merkle_stale_on_insert AFTER INSERT ON batches
WHEN new.global_position <= (SELECT size FROM merkle_tree WHERE singleton = 1)
BEGIN
    UPDATE merkle_tree SET stale_from = min(coalesce(stale_from, new.global_position), new.global_position)
    WHERE singleton = 1;
END;

CREATE TRIGGER merkle_stale_on_delete AFTER DELETE ON batches
WHEN old.global_position <= (SELECT size FROM merkle_tree WHERE singleton = 1)
BEGIN
    UPDATE merkle_tree SET stale_from = min(coalesce(stale_from, old.global_position), old.global_position)
    WHERE singleton = 1;
END;

CREATE TRIGGER merkle_stale_on_update AFTER UPDATE ON batches
WHEN old.global_position <= (SELECT size FROM merkle_tree WHERE singleton = 1)
  OR new.global_position <= (SELECT size FROM merkle_tree WHERE singleton = 1)
BEGIN
    UPDATE merkle_tree
    SET stale_from = min(coalesce(stale_from, old.global_position), old.global_position, new.global_position)
    WHERE singleton = 1;
END;
