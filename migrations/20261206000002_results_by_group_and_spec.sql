-- Results keyed by aggregator group and window spec: one aggregator computes several specs
-- (`--windows 1m,5m,1h/1m`), and several groups may run on one database; no group or spec ever
-- touches another's rows. Valid on MySQL 8.0+ and MariaDB 10.11+.

-- The specs each group runs with (one row per spec), replacing stream_agg_spec (one per group).
CREATE TABLE IF NOT EXISTS stream_agg_specs (
    consumer_group  VARCHAR(255) NOT NULL,
    window_us       BIGINT       NOT NULL,
    slide_us        BIGINT       NOT NULL,
    watermark_us    BIGINT       NOT NULL,
    mode            VARCHAR(16)  NOT NULL,
    updated_at      DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (consumer_group, window_us, slide_us)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

INSERT INTO stream_agg_specs (consumer_group, window_us, slide_us, watermark_us, mode, updated_at)
SELECT consumer_group, window_us, slide_us, watermark_us, mode, updated_at FROM stream_agg_spec
ON DUPLICATE KEY UPDATE watermark_us = VALUES(watermark_us);

-- Existing rows carried no group: each becomes the group whose recorded spec has its length (the
-- most recently recorded when several do); rows no recorded spec explains keep group '' and are
-- taken as tumbling windows of their length.
ALTER TABLE stream_agg
    ADD COLUMN consumer_group VARCHAR(255) NOT NULL DEFAULT '' FIRST,
    ADD COLUMN window_us BIGINT NOT NULL DEFAULT 0 AFTER consumer_group,
    ADD COLUMN slide_us BIGINT NOT NULL DEFAULT 0 AFTER window_us;

ALTER TABLE coin_update_count
    ADD COLUMN consumer_group VARCHAR(255) NOT NULL DEFAULT '' FIRST,
    ADD COLUMN window_us BIGINT NOT NULL DEFAULT 0 AFTER consumer_group,
    ADD COLUMN slide_us BIGINT NOT NULL DEFAULT 0 AFTER window_us;

UPDATE stream_agg s
JOIN stream_agg_spec g
  ON g.window_us = TIMESTAMPDIFF(MICROSECOND, s.start_time, s.end_time)
 AND NOT EXISTS (SELECT 1 FROM stream_agg_spec h WHERE h.window_us = g.window_us
                 AND (h.updated_at > g.updated_at
                      OR (h.updated_at = g.updated_at AND h.consumer_group > g.consumer_group)))
SET s.consumer_group = g.consumer_group, s.window_us = g.window_us, s.slide_us = g.slide_us;

UPDATE coin_update_count s
JOIN stream_agg_spec g
  ON g.window_us = TIMESTAMPDIFF(MICROSECOND, s.start_time, s.end_time)
 AND NOT EXISTS (SELECT 1 FROM stream_agg_spec h WHERE h.window_us = g.window_us
                 AND (h.updated_at > g.updated_at
                      OR (h.updated_at = g.updated_at AND h.consumer_group > g.consumer_group)))
SET s.consumer_group = g.consumer_group, s.window_us = g.window_us, s.slide_us = g.slide_us;

UPDATE stream_agg SET window_us = TIMESTAMPDIFF(MICROSECOND, start_time, end_time),
    slide_us = TIMESTAMPDIFF(MICROSECOND, start_time, end_time) WHERE window_us = 0;
UPDATE coin_update_count SET window_us = TIMESTAMPDIFF(MICROSECOND, start_time, end_time),
    slide_us = TIMESTAMPDIFF(MICROSECOND, start_time, end_time) WHERE window_us = 0;

ALTER TABLE stream_agg DROP PRIMARY KEY,
    ADD PRIMARY KEY (consumer_group, window_us, slide_us, asset_id_base, asset_id_quote, start_time);
ALTER TABLE coin_update_count DROP PRIMARY KEY,
    ADD PRIMARY KEY (consumer_group, window_us, slide_us, asset_id_base, asset_id_quote, start_time);

-- Lateness is per spec: an update late for `1m` may be on time for `1h`. One row per update and
-- spec it was late for; existing rows belong to the spec their group recorded.
ALTER TABLE late_events
    ADD COLUMN window_us BIGINT NOT NULL DEFAULT 0 AFTER kafka_offset,
    ADD COLUMN slide_us BIGINT NOT NULL DEFAULT 0 AFTER window_us;
UPDATE late_events l JOIN stream_agg_spec g ON g.consumer_group = l.consumer_group
SET l.window_us = g.window_us, l.slide_us = g.slide_us;
ALTER TABLE late_events DROP INDEX uq_late_source,
    ADD UNIQUE KEY uq_late_source (consumer_group, topic, kafka_partition, kafka_offset, window_us, slide_us),
    ADD KEY ix_late_group_spec (consumer_group, window_us, slide_us, id);

-- A report reads the figures of its own group's services only.
ALTER TABLE service_stats
    ADD COLUMN consumer_group VARCHAR(255) NULL AFTER instance,
    ADD KEY ix_service_stats_group (consumer_group, service, recorded_at);

DROP TABLE IF EXISTS stream_agg_spec;
