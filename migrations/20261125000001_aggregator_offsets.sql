-- The stream aggregator's offsets move to kafka_offsets, the one table of next offsets for every
-- consuming service (the consumer runtime's watchdog and drained check read it for all of them).
-- Its flush still writes them in the transaction that holds its state, and checks them (locked)
-- to fence a former owner.
INSERT INTO kafka_offsets (consumer_group, topic, kafka_partition, next_offset, updated_at)
SELECT consumer_group, topic, kafka_partition, next_offset, updated_at FROM aggregator_state
ON DUPLICATE KEY UPDATE next_offset = GREATEST(kafka_offsets.next_offset, VALUES(next_offset)),
                        updated_at = VALUES(updated_at);

ALTER TABLE aggregator_state DROP COLUMN next_offset;
