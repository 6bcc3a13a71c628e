//! Exit statuses of the services, one meaning each (README, "Exit statuses"):
//!
//! | status | meaning |
//! |---|---|
//! | 0 | stopped on a signal, or drained (`--exit-idle`) |
//! | 1 | an error (logged with its causes) |
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

/// Why a service stopped on its own with a status other than 0, 1 or 2.
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
}

impl Stopped {
    /// The process exit status for this stop.
    pub fn status(&self) -> u8 {
        match self {
            Stopped::NotDrained { .. } => NOT_DRAINED,
            Stopped::OffsetsAhead { .. } => OFFSETS_AHEAD,
        }
    }
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
    }
}
