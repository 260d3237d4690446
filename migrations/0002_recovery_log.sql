-- 0002_recovery_log: a record of every action recovery and repair took. Documented in docs/schema.md.

CREATE TABLE recovery_log (
    entry_id     INTEGER PRIMARY KEY,
    at_ns        INTEGER NOT NULL,
    stream_id    INTEGER,
    found        TEXT NOT NULL,
    action       TEXT NOT NULL,
    segment_no   INTEGER,
    start_byte   INTEGER,
    end_byte     INTEGER,
    first_offset INTEGER,
    next_offset  INTEGER,
    kept_as      TEXT,
    detail       TEXT
) STRICT;

CREATE INDEX recovery_log_by_stream ON recovery_log (stream_id, at_ns);
