-- Dead letters are kept whole and are operable.
-- - Key and payload up to the broker's largest message (LONGBLOB; a VARBINARY(1024) key rejected
--   a 2,000-byte key, which stopped the batch holding it for good). The error text is bounded by
--   the services (1,024 characters), so the row itself can never be refused.
-- - `reason`: why the message is here, one of a few words (a metrics label and a dashboard
--   column): malformed (not a rate update), invalid (parsed, but outside the accepted range),
--   rejected (the database refused the row it made).
-- - Replay after a fix (`--replay-dead-letters`): `replayed_at` is set in the transaction that
--   applied the letter (so it is applied once); a letter that still fails keeps `replayed_at` NULL
--   and counts its attempts with the latest error.
ALTER TABLE dead_letters
    MODIFY message_key LONGBLOB NULL,
    MODIFY payload LONGBLOB NULL,
    ADD COLUMN reason VARCHAR(32) NOT NULL DEFAULT 'malformed' AFTER kafka_offset,
    ADD COLUMN replayed_at DATETIME(6) NULL COMMENT 'when a replay applied it, UTC',
    ADD COLUMN replay_attempts INT NOT NULL DEFAULT 0,
    ADD COLUMN replay_error TEXT NULL COMMENT 'why the latest replay failed',
    ADD KEY ix_dead_letters_pending (service, replayed_at, id);
