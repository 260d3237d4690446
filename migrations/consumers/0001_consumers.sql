-- consumers/0001_consumers: named consumers and the last global position each acknowledged.
--
-- This is the schema of `consumers.db`, a small database beside the catalog, not of the catalog:
-- consumers write it from any process (read-only stores included), and a catalog rebuild must not
-- lose it. Documented in docs/schema.md.

CREATE TABLE consumers (
    name            TEXT PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 200),
    stream_id       INTEGER CHECK (stream_id IS NULL OR stream_id >= 0),
    position        INTEGER NOT NULL DEFAULT 0 CHECK (position >= 0),
    acked_stream_id INTEGER,
    acked_offset    INTEGER,
    created_at_ns   INTEGER NOT NULL,
    updated_at_ns   INTEGER NOT NULL,
    CHECK ((acked_stream_id IS NULL) = (acked_offset IS NULL))
) STRICT;
