-- 0003_global_order: a store-wide order over every record. Documented in docs/schema.md.
--
-- `records` is rebuilt as a rowid table keyed by `global_position` (1, 2, 3, ...); the pair
-- (stream_id, offset) stays unique and indexed. Records already in the catalog are numbered in
-- (timestamp_ns, stream_id, offset) order: timestamps never decrease within a stream, so every
-- stream keeps its own order. `global_order` holds the high-water mark: the last position ever
-- given out, so a position cut away by a repair is never given to another record.

ALTER TABLE records RENAME TO records_schema2;

CREATE TABLE records (
    global_position INTEGER PRIMARY KEY CHECK (global_position >= 1),
    stream_id       INTEGER NOT NULL,
    offset          INTEGER NOT NULL,
    segment_no      INTEGER NOT NULL,
    position        INTEGER NOT NULL,
    length          INTEGER NOT NULL,
    kind            INTEGER NOT NULL,
    timestamp_ns    INTEGER NOT NULL
) STRICT;

INSERT INTO records (global_position, stream_id, offset, segment_no, position, length, kind, timestamp_ns)
SELECT row_number() OVER (ORDER BY timestamp_ns, stream_id, offset),
       stream_id, offset, segment_no, position, length, kind, timestamp_ns
FROM records_schema2;

DROP TABLE records_schema2;

CREATE UNIQUE INDEX records_by_stream_offset ON records (stream_id, offset);

CREATE TABLE global_order (
    singleton     INTEGER PRIMARY KEY CHECK (singleton = 1),
    last_position INTEGER NOT NULL CHECK (last_position >= 0)
) STRICT;

INSERT INTO global_order (singleton, last_position) VALUES (1, (SELECT count(*) FROM records));
