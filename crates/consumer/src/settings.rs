//! Settings every consuming service shares: group membership, liveness, when to stop, how
//! often to report, the shutdown timeout.

use std::time::Duration;

use clap::{Args, ValueEnum};

use common::config::{hostname, non_empty, parse_duration};

/// What to do when MySQL's offset of a partition is beyond the broker's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOffsetAhead {
    /// Log an ERROR naming the partition and both offsets and exit with status 4.
    Fail,
    /// Log a WARN and read the partition again from its first offset (the log was refilled).
    ResetToStart,
}

/// Settings every consuming service shares: group membership, liveness, when to stop, how often
/// to report (the consumer runtime).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Consumer")]
pub struct ConsumerArgs {
    /// Exit 0 once drained: every partition's offset in MySQL at the broker's high watermark and
    /// nothing received for this long (tests, benchmarks, batch-style runs).
    #[arg(long = "exit-idle", env = "EXIT_IDLE", value_name = "EXIT_IDLE", value_parser = parse_duration)]
    pub exit_idle: Option<Duration>,
    /// With --exit-idle: exit with status 3, naming the partitions still behind, when not drained
    /// this long after the start.
    #[arg(long = "max-wait", env = "MAX_WAIT", value_name = "MAX_WAIT", requires = "exit_idle", value_parser = parse_duration)]
    pub max_wait: Option<Duration>,
    /// Log and store statistics this often.
    #[arg(long = "stats-interval", env = "STATS_INTERVAL", value_name = "STATS_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub stats_interval: Duration,
    /// Kafka consumer session timeout: how soon a dead instance's partitions move to another. The
    /// watchdog rejoins the group after two session timeouts without progress.
    #[arg(long = "session-timeout", env = "KAFKA_SESSION_TIMEOUT", value_name = "KAFKA_SESSION_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub session_timeout: Duration,
    /// Static group membership (`group.instance.id`): a restarted instance with the same id takes
    /// its partitions back without a rebalance. Unique per instance (`{hostname}` is replaced by
    /// the host name, e.g. a container's); unset: dynamic membership.
    #[arg(long = "group-instance-id", env = "KAFKA_GROUP_INSTANCE_ID", value_name = "KAFKA_GROUP_INSTANCE_ID", value_parser = non_empty)]
    pub group_instance_id: Option<String>,
    /// When MySQL's offset of a partition is beyond the broker's log (topic recreated, broker
    /// data lost): fail (exit 4) or reset-to-start (read the partition again from its start).
    #[arg(
        long = "on-offset-ahead",
        env = "ON_OFFSET_AHEAD",
        value_name = "ON_OFFSET_AHEAD",
        default_value = "fail",
        value_enum
    )]
    pub on_offset_ahead: OnOffsetAhead,
    /// After SIGTERM (or when drained), how long writes in flight and pending may take; past it
    /// the service exits 1 naming the offsets not written (not committed: the next run reads them
    /// again, nothing is lost).
    #[arg(long = "shutdown-timeout", env = "SHUTDOWN_TIMEOUT", value_name = "SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
}

impl ConsumerArgs {
    /// Sets the session timeout, a heartbeat at a quarter of it, and the static member id.
    pub fn apply(&self, config: &mut rdkafka::ClientConfig) {
        config
            .set(
                "session.timeout.ms",
                self.session_timeout.as_millis().to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                (self.session_timeout.as_millis() / 4).max(100).to_string(),
            );
        if let Some(id) = &self.group_instance_id {
            config.set("group.instance.id", id.replace("{hostname}", &hostname()));
        }
    }

    /// How long a partition may show no progress while it has messages waiting before the
    /// watchdog acts: two session timeouts.
    pub fn stall_after(&self) -> Duration {
        self.session_timeout * 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn consumer_settings_reach_the_client() {
        #[derive(Debug, Parser)]
        struct C {
            #[command(flatten)]
            consumer: ConsumerArgs,
        }
        let parse =
            |args: &[&str]| C::try_parse_from(std::iter::once("t").chain(args.iter().copied()));
        let c = parse(&[
            "--group-instance-id",
            "raw-{hostname}",
            "--session-timeout",
            "8s",
        ])
        .unwrap();
        let mut config = rdkafka::ClientConfig::new();
        c.consumer.apply(&mut config);
        assert_eq!(
            config.get("group.instance.id"),
            Some(format!("raw-{}", hostname()).as_str())
        );
        assert_eq!(config.get("session.timeout.ms"), Some("8000"));
        assert_eq!(config.get("heartbeat.interval.ms"), Some("2000"));
        assert_eq!(c.consumer.stall_after(), Duration::from_secs(16));
        let c = parse(&[]).unwrap();
        let mut config = rdkafka::ClientConfig::new();
        c.consumer.apply(&mut config);
        assert_eq!(
            config.get("group.instance.id"),
            None,
            "dynamic membership by default"
        );
        assert_eq!(c.consumer.on_offset_ahead, OnOffsetAhead::Fail);
        assert_eq!(c.consumer.shutdown_timeout, Duration::from_secs(30));
        let err = parse(&["--shutdown-timeout", "never"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("SHUTDOWN_TIMEOUT"), "{err}");
        let err = parse(&["--max-wait", "5s"]).unwrap_err().to_string();
        assert!(
            err.contains("exit-idle"),
            "--max-wait needs --exit-idle: {err}"
        );
        let err = parse(&["--on-offset-ahead", "skip"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("ON_OFFSET_AHEAD"), "{err}");
    }
}
