-- State of the stream aggregator, written in the same transaction as its stream_agg rows.

-- Per partition: the open windows and watermark (JSON), the next offset to read, the emissions of
-- the last flush not yet confirmed published (an outbox), and the window spec they were built with.
CREATE TABLE IF NOT EXISTS aggregator_state (
    consumer_group  VARCHAR(255) NOT NULL,
    topic           VARCHAR(255) NOT NULL,
    kafka_partition INT          NOT NULL,
    next_offset     BIGINT       NOT NULL,
    seen_seq        BIGINT       NOT NULL DEFAULT 0 COMMENT 'last aggregator_seen.seq written',
    state           LONGBLOB     NOT NULL COMMENT 'JSON: watermark, open windows, spec',
    unpublished     LONGBLOB     NULL     COMMENT 'JSON: emissions of the last flush, re-published after a crash',
    updated_at      DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (consumer_group, topic, kafka_partition)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- Append-only log of the (pair, event time) keys applied per flush, for exact duplicate detection
-- after a restart; rows whose windows have all closed are deleted.
CREATE TABLE IF NOT EXISTS aggregator_seen (
    consumer_group  VARCHAR(255) NOT NULL,
    topic           VARCHAR(255) NOT NULL,
    kafka_partition INT          NOT NULL,
    seq             BIGINT       NOT NULL,
    max_time_us     BIGINT       NOT NULL,
    times           LONGBLOB     NOT NULL COMMENT 'binary: per pair, delta-encoded microsecond times',
    PRIMARY KEY (consumer_group, topic, kafka_partition, seq)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- Events that missed at least one of their windows (the watermark had passed its end).
CREATE TABLE IF NOT EXISTS late_events (
    id              BIGINT       NOT NULL AUTO_INCREMENT,
    consumer_group  VARCHAR(255) NOT NULL,
    topic           VARCHAR(255) NOT NULL,
    kafka_partition INT          NOT NULL,
    kafka_offset    BIGINT       NOT NULL,
    asset_id_base   VARCHAR(16)  NOT NULL,
    asset_id_quote  VARCHAR(16)  NOT NULL,
    rate            DOUBLE       NOT NULL,
    `time`          DATETIME(6)  NOT NULL,
    watermark       DATETIME(6)  NOT NULL COMMENT 'the watermark the event missed',
    windows_missed  INT          NOT NULL,
    applied         BOOLEAN      NOT NULL COMMENT 'applied to its other, still open, windows',
    recorded_at     DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (id),
    UNIQUE KEY uq_late_source (consumer_group, topic, kafka_partition, kafka_offset),
    KEY ix_late_pair_time (asset_id_base, asset_id_quote, `time`)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- The window spec each aggregator group runs with, for compare's batch side.
CREATE TABLE IF NOT EXISTS stream_agg_spec (
    consumer_group  VARCHAR(255) NOT NULL,
    window_us       BIGINT       NOT NULL,
    slide_us        BIGINT       NOT NULL,
    watermark_us    BIGINT       NOT NULL,
    mode            VARCHAR(16)  NOT NULL,
    updated_at      DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (consumer_group)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
