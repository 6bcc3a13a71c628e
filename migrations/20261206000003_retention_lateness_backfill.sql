-- Retention (--retention) prunes each group's old rows in small batches by time: an index per
-- pruned table whose rows are found by group and time (raw_coin_data has ix_raw_time,
-- service_stats ix_service_stats_group, dead_letters ix_dead_letters_recorded,
-- comparison_runs ix_comparison_runs_at, compare_batch_marks its primary key).
ALTER TABLE stream_agg ADD KEY ix_stream_agg_group_end (consumer_group, end_time);
ALTER TABLE coin_update_count ADD KEY ix_count_end (end_time);
ALTER TABLE late_events ADD KEY ix_late_group_recorded (consumer_group, recorded_at);
ALTER TABLE compare_batch_windows ADD KEY ix_batch_windows_group_start (consumer_group, start_us);

-- Allowed lateness (--allowed-lateness): a closed window changed by an update admitted within it
-- is written (and published) final again; `revision` counts those emissions (0: none).
ALTER TABLE stream_agg ADD COLUMN revision INT NOT NULL DEFAULT 0 AFTER is_final;

-- When a window's row was first written (not changed by later upserts; NULL for rows from
-- before): a row first written more than a minute after its window's end came from updates
-- after the fact (a gap filled from CoinAPI's history, a backlog caught up), which the dashboard
-- marks.
ALTER TABLE stream_agg ADD COLUMN created_at DATETIME(6) NULL AFTER updated_at;
