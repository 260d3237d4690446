-- 0006_batches: the offset index, the global order and the time index get ONE row per batch
-- instead of one per record; record frame format 2 (global positions in the frames). Documented
-- in docs/schema.md.
--
-- A `batches` row is a run of consecutive records of one stream written together: in one segment,
-- back to back, with consecutive global positions and one timestamp. `frame_ends` holds, for each
-- record, where its frame ends, counted in bytes from the batch's first frame (`position`), as a
-- little-endian u32; `kinds` is NULL when every record is an event, else one byte per record.
-- The records of an older catalog become one-record rows (a rebuild of the catalog groups them
-- by batch). Records keep their global positions; the high-water mark stays where it was.

CREATE TABLE batches (
    global_position INTEGER PRIMARY KEY CHECK (global_position >= 1),
    stream_id       INTEGER NOT NULL,
    first_offset    INTEGER NOT NULL,
    record_count    INTEGER NOT NULL CHECK (record_count >= 1),
    segment_no      INTEGER NOT NULL,
    position        INTEGER NOT NULL,
    frame_ends      BLOB NOT NULL CHECK (length(frame_ends) = 4 * record_count),
    kinds           BLOB CHECK (kinds IS NULL OR length(kinds) = record_count),
    timestamp_ns    INTEGER NOT NULL
) STRICT;

INSERT INTO batches (global_position, stream_id, first_offset, record_count, segment_no, position, frame_ends,
                     kinds, timestamp_ns)
SELECT global_position, stream_id, offset, 1, segment_no, position,
       unhex(printf('%02X%02X%02X%02X', length & 255, (length >> 8) & 255, (length >> 16) & 255,
                    (length >> 24) & 255)),
       CASE WHEN kind = 0 THEN NULL ELSE unhex(printf('%02X', kind)) END,
       timestamp_ns
FROM records ORDER BY global_position;

DROP TABLE records;

CREATE UNIQUE INDEX batches_by_stream_offset ON batches (stream_id, first_offset);

-- The frame format new records are written in (format-1 records stay as they are, and are read).
UPDATE store_info SET value = '2' WHERE key = 'record_format_version';
