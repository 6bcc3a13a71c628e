-- compare serve reads the windows that changed since its last look by this index (never a full
-- scan per refresh). Valid on MySQL 8.0+ and MariaDB 10.11+.
ALTER TABLE stream_agg ADD INDEX ix_stream_agg_updated (updated_at);
