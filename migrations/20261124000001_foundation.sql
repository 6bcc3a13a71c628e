-- coinstream schema, valid on MySQL 8.0+ and MariaDB 10.11+.
-- Every timestamp is UTC in DATETIME(6) (sessions run with time_zone = '+00:00').
-- Table and column names of the original project are kept; its missing keys are added.

-- Every raw rate update, once: replays collapse on the unique key.
CREATE TABLE IF NOT EXISTS raw_coin_data (
    id              BIGINT       NOT NULL AUTO_INCREMENT,
    asset_id_base   VARCHAR(16)  NOT NULL,
    asset_id_quote  VARCHAR(16)  NOT NULL,
    rate            DOUBLE       NOT NULL,
    `time`          DATETIME(6)  NOT NULL COMMENT 'event time (CoinAPI), UTC',
    received_at     DATETIME(6)  NULL     COMMENT 'when the producer received it, UTC',
    ingested_at     DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6) COMMENT 'when the raw consumer stored it, UTC',
    kafka_partition INT          NULL,
    kafka_offset    BIGINT       NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uq_raw_pair_time (asset_id_base, asset_id_quote, `time`),
    KEY ix_raw_time (`time`)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- One row per (pair, window), upserted by the stream aggregator.
CREATE TABLE IF NOT EXISTS stream_agg (
    start_time      DATETIME(6)  NOT NULL,
    end_time        DATETIME(6)  NOT NULL,
    asset_id_base   VARCHAR(16)  NOT NULL,
    asset_id_quote  VARCHAR(16)  NOT NULL,
    update_count    BIGINT       NOT NULL,
    avg_rate        DOUBLE       NOT NULL,
    min_rate        DOUBLE       NOT NULL,
    max_rate        DOUBLE       NOT NULL,
    sum_rate        DOUBLE       NOT NULL,
    first_rate      DOUBLE       NOT NULL COMMENT 'rate of the earliest event (by event time)',
    last_rate       DOUBLE       NOT NULL COMMENT 'rate of the latest event (by event time)',
    last_event_time DATETIME(6)  NOT NULL,
    is_final        BOOLEAN      NOT NULL DEFAULT FALSE COMMENT 'the watermark passed end_time',
    updated_at      DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (asset_id_base, asset_id_quote, start_time, end_time),
    KEY ix_stream_agg_start (start_time)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- Per-window update counts, kept by the update counter from topic aggregated_data.
CREATE TABLE IF NOT EXISTS coin_update_count (
    start_time      DATETIME(6)  NOT NULL,
    end_time        DATETIME(6)  NOT NULL,
    asset_id_base   VARCHAR(16)  NOT NULL,
    asset_id_quote  VARCHAR(16)  NOT NULL,
    update_count    BIGINT       NOT NULL,
    is_final        BOOLEAN      NOT NULL DEFAULT FALSE,
    updated_at      DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (asset_id_base, asset_id_quote, start_time, end_time)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- Next offset to read per consumer group and partition, written in the same transaction as the
-- effect of the messages before it. Kafka's own group offsets are only advisory.
CREATE TABLE IF NOT EXISTS kafka_offsets (
    consumer_group  VARCHAR(255) NOT NULL,
    topic           VARCHAR(255) NOT NULL,
    kafka_partition INT          NOT NULL,
    next_offset     BIGINT       NOT NULL,
    updated_at      DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (consumer_group, topic, kafka_partition)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- Messages that could not be processed, kept with where they came from and why.
CREATE TABLE IF NOT EXISTS dead_letters (
    id              BIGINT        NOT NULL AUTO_INCREMENT,
    service         VARCHAR(64)   NOT NULL,
    topic           VARCHAR(255)  NOT NULL,
    kafka_partition INT           NOT NULL,
    kafka_offset    BIGINT        NOT NULL,
    message_key     VARBINARY(1024) NULL,
    payload         MEDIUMBLOB    NULL,
    error           TEXT          NOT NULL,
    recorded_at     DATETIME(6)   NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (id),
    UNIQUE KEY uq_dead_letter_source (service, topic, kafka_partition, kafka_offset)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- Periodic statistics of every service instance, read by compare.
CREATE TABLE IF NOT EXISTS service_stats (
    id              BIGINT       NOT NULL AUTO_INCREMENT,
    service         VARCHAR(64)  NOT NULL,
    instance        VARCHAR(128) NOT NULL COMMENT 'host:pid:start, unique per process',
    recorded_at     DATETIME(6)  NOT NULL,
    started_at      DATETIME(6)  NOT NULL,
    events_in       BIGINT       NOT NULL DEFAULT 0 COMMENT 'messages read or fetched',
    events_out      BIGINT       NOT NULL DEFAULT 0 COMMENT 'messages published or rows written',
    dead_letters    BIGINT       NOT NULL DEFAULT 0,
    late_events     BIGINT       NOT NULL DEFAULT 0,
    consumer_lag    BIGINT       NULL,
    cpu_seconds     DOUBLE       NOT NULL DEFAULT 0,
    peak_rss_bytes  BIGINT       NOT NULL DEFAULT 0,
    details         TEXT         NULL COMMENT 'service-specific figures as a JSON object',
    PRIMARY KEY (id),
    KEY ix_service_stats (service, recorded_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
