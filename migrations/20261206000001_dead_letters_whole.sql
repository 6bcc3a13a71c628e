-- Dead letters are kept whole and are operable.
-- - Key and payload up to the broker's largest message (LONGBLOB; a VARBINARY(1024) key rejected
--   a 2,000-byte key, which stopped the batch holding it for good). The error text is bounded by
--   the services (1,024 characters), so the row itself can never be refused.
-- - `reason`: why the message is here, one of a few words (a metrics label and a dashboard
--   column): malformed (not a message of the topic's shape), invalid (parsed, but outside the
--   accepted range), rejected (the database refused the row it made).
-- - `consumer_group`: two groups of one service (two aggregators on one topic) keep and replay
--   their own letters; rows from before this migration have ''.
-- - `published_at`: the message's timestamp (Kafka), which the accepted range of `time` is
--   checked against, so a replay judges the letter as the first reading did.
-- - Replay after a fix (`--replay-dead-letters`): `replayed_at` is set in the transaction that
--   applied the letter (so it is applied once); a letter that still fails keeps `replayed_at` NULL
--   and counts its attempts with the latest error.
ALTER TABLE dead_letters
    MODIFY message_key LONGBLOB NULL,
    MODIFY payload LONGBLOB NULL,
    ADD COLUMN consumer_group VARCHAR(255) NOT NULL DEFAULT '' AFTER service,
    ADD COLUMN reason VARCHAR(32) NOT NULL DEFAULT 'malformed' AFTER kafka_offset,
    ADD COLUMN published_at DATETIME(6) NULL COMMENT 'the message timestamp (Kafka), UTC' AFTER payload,
    ADD COLUMN replayed_at DATETIME(6) NULL COMMENT 'when a replay applied it, UTC',
    ADD COLUMN replay_attempts INT NOT NULL DEFAULT 0,
    ADD COLUMN replay_error TEXT NULL COMMENT 'why the latest replay failed',
    DROP INDEX uq_dead_letter_source,
    ADD UNIQUE KEY uq_dead_letter_source (service, consumer_group, topic, kafka_partition, kafka_offset),
    ADD KEY ix_dead_letters_pending (service, consumer_group, replayed_at, id),
    ADD KEY ix_dead_letters_recorded (recorded_at);
