-- Every compare run, with its verdict and its full report (JSON).
CREATE TABLE IF NOT EXISTS comparison_runs (
    id                BIGINT       NOT NULL AUTO_INCREMENT,
    run_at            DATETIME(6)  NOT NULL,
    consumer_group    VARCHAR(255) NOT NULL COMMENT 'aggregator group whose spec was used',
    window_us         BIGINT       NOT NULL,
    slide_us          BIGINT       NOT NULL,
    windows_compared  BIGINT       NOT NULL,
    mismatches        BIGINT       NOT NULL,
    missing           BIGINT       NOT NULL,
    extra             BIGINT       NOT NULL,
    open_windows      BIGINT       NOT NULL,
    passed            BOOLEAN      NOT NULL,
    batch_seconds     DOUBLE       NOT NULL,
    report            LONGTEXT     NOT NULL COMMENT 'the JSON report',
    PRIMARY KEY (id),
    KEY ix_comparison_runs_at (run_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
