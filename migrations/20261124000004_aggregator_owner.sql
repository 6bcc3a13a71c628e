-- Ownership of a partition's aggregator state, for fencing. An instance that restores a partition
-- claims it by raising `epoch`; every flush checks, under the row lock, that the epoch is still the
-- one it claimed. So a write still in flight (or retrying) at a former owner after a rebalance is
-- refused, never the new owner's, which restored the state before that write and re-reads its
-- messages from Kafka.
CREATE TABLE IF NOT EXISTS aggregator_owner (
    consumer_group  VARCHAR(255) NOT NULL,
    topic           VARCHAR(255) NOT NULL,
    kafka_partition INT          NOT NULL,
    epoch           BIGINT       NOT NULL,
    claimed_at      DATETIME(6)  NOT NULL,
    PRIMARY KEY (consumer_group, topic, kafka_partition)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
