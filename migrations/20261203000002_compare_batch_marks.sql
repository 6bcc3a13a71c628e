-- The one-shot compare's marks, a short history per aggregator group and window spec: the
-- raw_coin_data and late_events ids a run had read up to, when (database time, UTC), and a hash of
-- the row at each id. A run reads again from the mark taken 10 s before the previous run (ids
-- are taken in one order and committed in another); a changed row at a marked id (a table emptied
-- and refilled) makes it recompute everything. Replaces compare_batch_checkpoint (one mark).
CREATE TABLE IF NOT EXISTS compare_batch_marks (
    consumer_group  VARCHAR(255) NOT NULL,
    window_us       BIGINT       NOT NULL,
    slide_us        BIGINT       NOT NULL,
    taken_at        DATETIME(6)  NOT NULL COMMENT 'when the ids were read (database time), UTC',
    raw_id          BIGINT       NOT NULL COMMENT 'MAX(raw_coin_data.id) then',
    late_id         BIGINT       NOT NULL COMMENT 'MAX(late_events.id) then',
    raw_fp          CHAR(40)     NULL     COMMENT 'SHA1 of the raw_coin_data row at raw_id',
    late_fp         CHAR(40)     NULL     COMMENT 'SHA1 of the late_events row at late_id',
    PRIMARY KEY (consumer_group, window_us, slide_us, taken_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

DROP TABLE IF EXISTS compare_batch_checkpoint;
