-- compare's batch side as of its last run over every window, per aggregator group and window
-- spec, and the raw_coin_data and late_events ids it had read up to: the next one-shot compare
-- recomputes only the windows that rows added since then fall in.
CREATE TABLE IF NOT EXISTS compare_batch_windows (
    consumer_group  VARCHAR(255) NOT NULL,
    window_us       BIGINT       NOT NULL,
    slide_us        BIGINT       NOT NULL,
    asset_id_base   VARCHAR(16)  NOT NULL,
    asset_id_quote  VARCHAR(16)  NOT NULL,
    start_us        BIGINT       NOT NULL,
    update_count    BIGINT       NOT NULL,
    sum_rate        DOUBLE       NOT NULL,
    min_rate        DOUBLE       NOT NULL,
    max_rate        DOUBLE       NOT NULL,
    PRIMARY KEY (consumer_group, window_us, slide_us, asset_id_base, asset_id_quote, start_us)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE IF NOT EXISTS compare_batch_checkpoint (
    consumer_group  VARCHAR(255) NOT NULL,
    window_us       BIGINT       NOT NULL,
    slide_us        BIGINT       NOT NULL,
    raw_id          BIGINT       NOT NULL COMMENT 'MAX(raw_coin_data.id) when the stored windows were computed',
    late_id         BIGINT       NOT NULL COMMENT 'MAX(late_events.id) then',
    updated_at      DATETIME(6)  NOT NULL,
    PRIMARY KEY (consumer_group, window_us, slide_us)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
