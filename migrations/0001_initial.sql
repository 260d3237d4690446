-- 0001_initial: the first catalog schema. Every table is documented in docs/schema.md.
-- Applied once, in one transaction, by hybridlog/catalog.py; never edited after release.

CREATE TABLE store_info (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

INSERT INTO store_info (key, value) VALUES ('record_format_version', '1');

CREATE TABLE record_kinds (
    kind INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
) STRICT;

INSERT INTO record_kinds (kind, name) VALUES (0, 'event'), (1, 'checkpoint');

-- One row per stream: its head, as of the last committed batch.
CREATE TABLE streams (
    stream_id          INTEGER PRIMARY KEY CHECK (stream_id >= 0),
    next_offset        INTEGER NOT NULL CHECK (next_offset >= 0),
    record_count       INTEGER GENERATED ALWAYS AS (next_offset) VIRTUAL,
    chain_head         BLOB CHECK (chain_head IS NULL OR length(chain_head) = 32),
    event_count        INTEGER NOT NULL DEFAULT 0,
    checkpoint_count   INTEGER NOT NULL DEFAULT 0,
    stored_bytes       INTEGER NOT NULL DEFAULT 0,
    payload_bytes      INTEGER NOT NULL DEFAULT 0,
    first_timestamp_ns INTEGER,
    last_timestamp_ns  INTEGER,
    created_at_ns      INTEGER NOT NULL,
    updated_at_ns      INTEGER NOT NULL
) STRICT;

-- One row per segment file: streams/<stream_id>/<segment_no>.seg (both 20 digits, zero-padded).
CREATE TABLE segments (
    stream_id     INTEGER NOT NULL,
    segment_no    INTEGER NOT NULL CHECK (segment_no >= 0),
    first_offset  INTEGER NOT NULL,
    next_offset   INTEGER NOT NULL,
    last_offset   INTEGER GENERATED ALWAYS AS
                      (CASE WHEN next_offset > first_offset THEN next_offset - 1 END) VIRTUAL,
    record_count  INTEGER GENERATED ALWAYS AS (next_offset - first_offset) VIRTUAL,
    size_bytes    INTEGER NOT NULL,
    sealed        INTEGER NOT NULL DEFAULT 0 CHECK (sealed IN (0, 1)),
    digest        BLOB CHECK (digest IS NULL OR length(digest) = 32),
    created_at_ns INTEGER NOT NULL,
    sealed_at_ns  INTEGER,
    PRIMARY KEY (stream_id, segment_no)
) STRICT, WITHOUT ROWID;

-- The offset index: where every record is, one row per record.
CREATE TABLE records (
    stream_id    INTEGER NOT NULL,
    offset       INTEGER NOT NULL,
    segment_no   INTEGER NOT NULL,
    position     INTEGER NOT NULL,
    length       INTEGER NOT NULL,
    kind         INTEGER NOT NULL,
    timestamp_ns INTEGER NOT NULL,
    PRIMARY KEY (stream_id, offset)
) STRICT, WITHOUT ROWID;

-- Checkpoint records, mirrored: the anchors that verification starts from.
CREATE TABLE checkpoints (
    stream_id    INTEGER NOT NULL,
    offset       INTEGER NOT NULL,
    hash         BLOB NOT NULL CHECK (length(hash) = 32),
    timestamp_ns INTEGER NOT NULL,
    PRIMARY KEY (stream_id, offset)
) STRICT, WITHOUT ROWID;
