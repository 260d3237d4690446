-- 0004_gaps: ranges of a stream's offsets that repair isolated or cut. Documented in docs/schema.md.
--
-- A gap is written by repair (and rebuilt from the stream's repair markers, see
-- hybridlog/markers.py). `isolated`: the records are damaged and stay where they are; reads resume
-- at (resume_segment_no, resume_byte), the first record after them, whose stored link to the
-- damaged record before it is `link_hash`. `cut`: the records were moved to quarantine; the
-- stream's cut marker at `next_offset` links past them (resume_* and link_hash are NULL).

INSERT INTO record_kinds (kind, name) VALUES (2, 'repair');

CREATE TABLE gaps (
    stream_id         INTEGER NOT NULL,
    first_offset      INTEGER NOT NULL CHECK (first_offset >= 0),
    next_offset       INTEGER NOT NULL CHECK (next_offset > first_offset),
    action            TEXT NOT NULL CHECK (action IN ('isolated', 'cut')),
    segment_no        INTEGER NOT NULL,
    start_byte        INTEGER NOT NULL,
    resume_segment_no INTEGER,
    resume_byte       INTEGER,
    link_hash         BLOB CHECK (link_hash IS NULL OR length(link_hash) = 32),
    PRIMARY KEY (stream_id, first_offset)
) STRICT, WITHOUT ROWID;
