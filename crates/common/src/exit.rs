//! Exit statuses of the services, one meaning each (README, "Exit statuses"):
//!
//! | status | meaning |
//! |---|---|
//! | 0 | stopped on a signal, or drained (`--exit-idle`) |
//! | 1 | an error (logged with its causes), a fatal Kafka error, or `--shutdown-timeout` passed with writes not committed (the offsets are named) |
//! | 2 | bad configuration (the message names the setting) |
//! | 3 | `--max-wait` passed before the topic was drained (the partitions still behind are named) |
//! | 4 | MySQL's offset of a partition is beyond the broker's log (topic recreated, broker data lost) |
//!
//! Statuses 3 and 4 are [`Stopped`] errors returned by a service's `run`; [`crate::run_service`]
//! maps them, like [`crate::ConfigError`] to 2.

use std::{fmt, time::Duration};

/// Exit status for bad configuration (clap uses the same one for usage errors).
pub const CONFIG: u8 = 2;
/// Exit status when the topic was not drained within `--max-wait`.
pub const NOT_DRAINED: u8 = 3;
/// Exit status when MySQL's offsets are ahead of the broker's log.
pub const OFFSETS_AHEAD: u8 = 4;

/// A partition and how far its stored offset is from the broker's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Behind {
    pub partition: i32,
    /// MySQL's next offset (`None`: never stored).
    pub stored: Option<i64>,
    /// The broker's high watermark.
    pub high: i64,
    /// Messages not yet applied.
    pub lag: i64,
}

impl fmt::Display for Behind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.stored {
            Some(s) => write!(
                f,
                "partition {} at {s} of {} ({} behind)",
                self.partition, self.high, self.lag
            ),
            None => write!(
                f,
                "partition {} not started, {} to read",
                self.partition, self.lag
            ),
        }
    }
}

/// A partition whose applied messages were not written when the service stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unwritten {
    pub partition: i32,
    /// MySQL's next offset (what is written), `None` when nothing is stored yet.
    pub stored: Option<i64>,
    /// The next offset this instance had read to.
    pub read: i64,
}

impl fmt::Display for Unwritten {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.stored {
            Some(s) => write!(
                f,
                "partition {} offsets {s} to {}",
                self.partition,
                self.read - 1
            ),
            None => write!(
                f,
                "partition {} offsets up to {}",
                self.partition,
                self.read - 1
            ),
        }
    }
}

/// Why a service stopped on its own with a status other than 0 or 2.
#[derive(Debug, thiserror::Error)]
pub enum Stopped {
    #[error("topic {topic} (group {group}) was not drained within MAX_WAIT ({waited:?}): {}", list(.behind))]
    NotDrained {
        topic: String,
        group: String,
        waited: Duration,
        behind: Vec<Behind>,
    },
    #[error(
        "MySQL's offset {stored} for partition {partition} of topic {topic} (group {group}) is beyond the \
         broker's log (high watermark {high}): the topic was deleted and recreated, or the broker lost \
         its data. Remedy: if the topic was refilled from the start, run once with \
         --on-offset-ahead reset-to-start (ON_OFFSET_AHEAD=reset-to-start) to read it from its first \
         offset; otherwise point KAFKA_BOOTSTRAP_SERVERS at the broker that holds the data"
    )]
    OffsetsAhead {
        topic: String,
        group: String,
        partition: i32,
        stored: i64,
        high: i64,
    },
    #[error(
        "SHUTDOWN_TIMEOUT ({waited:?}) passed with writes not committed{}: nothing is lost (their \
         offsets are not committed; the next run reads them again)",
        unwritten(.pending)
    )]
    ShutdownTimeout {
        waited: Duration,
        pending: Vec<Unwritten>,
    },
}

impl Stopped {
    /// The process exit status for this stop.
    pub fn status(&self) -> u8 {
        match self {
            Stopped::NotDrained { .. } => NOT_DRAINED,
            Stopped::OffsetsAhead { .. } => OFFSETS_AHEAD,
            Stopped::ShutdownTimeout { .. } => 1,
        }
    }
}

fn unwritten(pending: &[Unwritten]) -> String {
    if pending.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = pending.iter().map(Unwritten::to_string).collect();
    format!(" ({})", parts.join(", "))
}

fn list(behind: &[Behind]) -> String {
    if behind.is_empty() {
        return "the broker's watermarks could not be read".into();
    }
    behind
        .iter()
        .map(Behind::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_what_to_fix() {
        let e = Stopped::NotDrained {
            topic: "t".into(),
            group: "g".into(),
            waited: Duration::from_secs(5),
            behind: vec![
                Behind {
                    partition: 2,
                    stored: Some(10),
                    high: 15,
                    lag: 5,
                },
                Behind {
                    partition: 0,
                    stored: None,
                    high: 3,
                    lag: 3,
                },
            ],
        };
        assert_eq!(e.status(), 3);
        let text = e.to_string();
        assert!(
            text.contains("MAX_WAIT") && text.contains("partition 2 at 10 of 15 (5 behind)"),
            "{text}"
        );
        let e = Stopped::OffsetsAhead {
            topic: "t".into(),
            group: "g".into(),
            partition: 1,
            stored: 500,
            high: 20,
        };
        assert_eq!(e.status(), 4);
        let text = e.to_string();
        assert!(
            text.contains("500") && text.contains("20") && text.contains("reset-to-start"),
            "{text}"
        );
        let e = Stopped::ShutdownTimeout {
            waited: Duration::from_secs(30),
            pending: vec![Unwritten {
                partition: 0,
                stored: Some(1200),
                read: 1503,
            }],
        };
        assert_eq!(e.status(), 1);
        let text = e.to_string();
        assert!(
            text.contains("SHUTDOWN_TIMEOUT") && text.contains("partition 0 offsets 1200 to 1502"),
            "{text}"
        );
    }
}
