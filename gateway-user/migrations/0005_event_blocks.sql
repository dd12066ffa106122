-- Events are stored in blocks: one row per session per recorder batch (one transaction),
-- holding that batch's events of the session in order, as a JSON array of
-- {"seq","at","kind","hash","data"} objects (gateway-user/src/store/block.rs). One insert per
-- block instead of a row and an index entry per event. `seq` is the block's first event,
-- `events` how many it holds. Rows of `events` recorded before this migration are still read.
CREATE TABLE event_blocks (
    session_id TEXT NOT NULL,
    seq        BIGINT NOT NULL,
    events     BIGINT NOT NULL,
    data       TEXT NOT NULL,
    PRIMARY KEY (session_id, seq)
);
