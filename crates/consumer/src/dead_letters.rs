//! `dead_letters`: messages a service could not use, kept whole (key and payload byte for byte)
//! with where they came from and why. A message is logged once, when it is found, and written in
//! the same transaction as the offsets that move past it, so it is neither lost nor kept twice (a
//! replay collapses on the unique key). The row itself can never be refused: key and payload are
//! `LONGBLOB`s, the error text is bounded ([`MAX_ERROR_CHARS`]), and letters are written in
//! statements bounded in bytes (a large message alone), under MySQL's `max_allowed_packet`.

use chrono::{DateTime, NaiveDateTime, Utc};
use clap::Args;
use sqlx::{MySqlConnection, MySqlPool};

use common::{model::parse_time, ModelError};

use crate::metrics as m;

/// Longest error text kept (characters); longer text is cut with a marker.
pub const MAX_ERROR_CHARS: usize = 1024;
/// Most bytes of keys and payloads in one INSERT; a larger letter goes alone.
const STATEMENT_BYTES: usize = 1 << 20;

/// Why a message is a dead letter: one of a few words (the `reason` column and metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Not a message of the topic's shape: not JSON, a field missing or of the wrong type.
    Malformed,
    /// Parsed, but a value is outside the accepted range (README, "Accepted values").
    Invalid,
    /// The database refused the row it made, for this row's data (found by splitting the batch).
    Rejected,
}

impl Reason {
    pub const ALL: [Reason; 3] = [Reason::Malformed, Reason::Invalid, Reason::Rejected];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::Invalid => "invalid",
            Reason::Rejected => "rejected",
        }
    }
}

/// Why a message cannot be used, as a service's parser says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Reason,
    pub error: String,
}

impl Refusal {
    pub fn new(reason: Reason, error: impl Into<String>) -> Self {
        Refusal {
            reason,
            error: error.into(),
        }
    }
}

impl From<ModelError> for Refusal {
    fn from(e: ModelError) -> Self {
        let reason = match e {
            ModelError::InvalidField { .. } => Reason::Invalid,
            ModelError::Json { .. } | ModelError::MissingField { .. } => Reason::Malformed,
        };
        Refusal::new(reason, e.to_string())
    }
}

/// A message kept in `dead_letters`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// The message's timestamp (milliseconds since the epoch), when the broker gave one.
    pub published_ms: Option<i64>,
    pub reason: Reason,
    /// Bounded to [`MAX_ERROR_CHARS`].
    pub error: String,
}

/// Where a message was read, and what it was.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
    pub published_ms: Option<i64>,
}

impl DeadLetter {
    /// Keeps a message that cannot be used and logs it (WARN, with topic, partition, offset,
    /// reason and the error).
    pub fn found(source: Source<'_>, refusal: Refusal) -> Self {
        let error = bounded(refusal.error);
        let Source {
            topic,
            partition,
            offset,
            ..
        } = source;
        let reason = refusal.reason.as_str();
        tracing::warn!(topic, partition, offset, reason, %error, "message kept in dead_letters");
        DeadLetter {
            partition,
            offset,
            key: source.key.map(<[u8]>::to_vec),
            payload: source.payload.to_vec(),
            published_ms: source.published_ms,
            reason: refusal.reason,
            error,
        }
    }

    fn size(&self) -> usize {
        self.payload.len() + self.key.as_ref().map_or(0, Vec::len)
    }
}

/// `error` cut to [`MAX_ERROR_CHARS`] characters (on a character boundary).
pub fn bounded(error: String) -> String {
    match error.char_indices().nth(MAX_ERROR_CHARS) {
        None => error,
        Some((cut, _)) => format!("{}… (cut)", &error[..cut]),
    }
}

/// Counts written letters in the metrics, by reason.
pub fn count(letters: &[&DeadLetter]) {
    for d in letters {
        m::DEAD_LETTERS
            .with_label_values(&[d.reason.as_str()])
            .inc();
    }
}

/// Writes dead letters of `service` (group `group`) read from `topic` in the open transaction of
/// `conn`. A letter already kept for the same source stays as it is.
pub async fn insert(
    conn: &mut MySqlConnection,
    service: &str,
    group: &str,
    topic: &str,
    letters: &[&DeadLetter],
) -> Result<(), sqlx::Error> {
    let mut rest = letters;
    while !rest.is_empty() {
        let mut n = 0;
        let mut bytes = 0;
        while n < rest.len() && n < 500 && (n == 0 || bytes + rest[n].size() <= STATEMENT_BYTES) {
            bytes += rest[n].size();
            n += 1;
        }
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        let values = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(",");
        let sql = format!(
            "INSERT INTO dead_letters (service, consumer_group, topic, kafka_partition, kafka_offset, reason, \
             message_key, payload, published_at, error) VALUES {values} ON DUPLICATE KEY UPDATE id = id"
        );
        let mut q = sqlx::query(&sql);
        for d in chunk {
            let published = d
                .published_ms
                .and_then(DateTime::<Utc>::from_timestamp_millis)
                .map(|t| t.naive_utc());
            q = q
                .bind(service)
                .bind(group)
                .bind(topic)
                .bind(d.partition)
                .bind(d.offset)
                .bind(d.reason.as_str())
                .bind(d.key.as_deref())
                .bind(d.payload.as_slice())
                .bind(published)
                .bind(d.error.as_str());
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Listing and replaying a service's dead letters (instead of consuming).
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Dead letters")]
pub struct ReplayArgs {
    /// Apply this service's dead letters (of its group) again, after a fix, instead of consuming;
    /// then exit. Each letter that now succeeds is applied once and marked replayed; one refused
    /// again stays, with its attempts counted and the latest error.
    #[arg(long = "replay-dead-letters", group = "dead_letter_command")]
    pub replay: bool,
    /// List this service's dead letters (of its group) not replayed yet, then exit.
    #[arg(long = "list-dead-letters", group = "dead_letter_command")]
    pub list: bool,
    /// With --replay-dead-letters or --list-dead-letters: only letters recorded at or after this
    /// time (RFC 3339, e.g. 2026-12-06T10:00:00Z).
    #[arg(long = "since", value_name = "TIME", value_parser = parse_since, requires = "dead_letter_command")]
    pub since: Option<DateTime<Utc>>,
    /// With --replay-dead-letters or --list-dead-letters: only the letter with this id.
    #[arg(long = "id", value_name = "ID", requires = "dead_letter_command")]
    pub id: Option<i64>,
}

fn parse_since(s: &str) -> Result<DateTime<Utc>, String> {
    parse_time(s).ok_or_else(|| "expected an RFC 3339 time such as 2026-12-06T10:00:00Z".into())
}

impl ReplayArgs {
    /// Whether a dead-letter command was asked for (the service does not consume then).
    pub fn any(&self) -> bool {
        self.replay || self.list
    }
}

/// A dead letter as stored.
#[derive(Debug, Clone)]
pub struct Stored {
    pub id: i64,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub published_ms: Option<i64>,
    pub reason: String,
    pub error: String,
    pub recorded_at: NaiveDateTime,
    pub attempts: i32,
}

type StoredRow = (
    i64,
    String,
    i32,
    i64,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Option<NaiveDateTime>,
    String,
    String,
    NaiveDateTime,
    i32,
);

/// Up to 500 letters of `service` and `group` (or of no group: rows older than groups) not
/// replayed yet, selected by `args`, with ids above `after`, in id order.
pub async fn pending(
    pool: &MySqlPool,
    service: &str,
    group: &str,
    args: &ReplayArgs,
    after: i64,
) -> Result<Vec<Stored>, sqlx::Error> {
    let rows: Vec<StoredRow> = sqlx::query_as(
        "SELECT id, topic, kafka_partition, kafka_offset, message_key, payload, published_at, reason, error, \
         recorded_at, replay_attempts FROM dead_letters \
         WHERE service = ? AND consumer_group IN (?, '') AND replayed_at IS NULL AND id > ? \
         AND (? IS NULL OR recorded_at >= ?) AND (? IS NULL OR id = ?) ORDER BY id LIMIT 500",
    )
    .bind(service)
    .bind(group)
    .bind(after)
    .bind(args.since.map(|t| t.naive_utc()))
    .bind(args.since.map(|t| t.naive_utc()))
    .bind(args.id)
    .bind(args.id)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Stored {
            id: r.0,
            topic: r.1,
            partition: r.2,
            offset: r.3,
            key: r.4,
            payload: r.5.unwrap_or_default(),
            published_ms: r.6.map(|t| t.and_utc().timestamp_millis()),
            reason: r.7,
            error: r.8,
            recorded_at: r.9,
            attempts: r.10,
        })
        .collect())
}

/// Marks letter `id` replayed in the open transaction of `conn`; false when it already was (a
/// concurrent replay, or an earlier attempt whose COMMIT reply was lost).
pub async fn mark_replayed(conn: &mut MySqlConnection, id: i64) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE dead_letters SET replayed_at = UTC_TIMESTAMP(6), replay_attempts = replay_attempts + 1, \
         replay_error = NULL WHERE id = ? AND replayed_at IS NULL",
    )
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Records that replaying letter `id` failed again, with why.
pub async fn failed_again(pool: &MySqlPool, id: i64, error: &str) -> Result<(), sqlx::Error> {
    tracing::warn!(id, error, "dead letter refused again: kept");
    sqlx::query(
        "UPDATE dead_letters SET replay_attempts = replay_attempts + 1, replay_error = ? WHERE id = ?",
    )
    .bind(bounded(error.to_owned()))
    .bind(id)
    .execute(pool)
    .await?;
    Ok(())
}

/// What a replay did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplayOutcome {
    /// Letters applied by this replay.
    pub applied: u64,
    /// Letters refused again (kept).
    pub failed: u64,
    /// Letters another replay had marked meanwhile.
    pub already: u64,
    /// Letters applied but late for their windows (the aggregator's: kept in late_events).
    pub late: u64,
}

impl ReplayOutcome {
    /// Logs the outcome (and prints it to stdout, for an operator at a terminal).
    pub fn finish(&self, service: &str) -> anyhow::Result<()> {
        let line = format!(
            "{service}: dead letters replayed: {} applied ({} of them late for their windows), {} refused again (kept), {} already replayed",
            self.applied, self.late, self.failed, self.already
        );
        tracing::info!(
            applied = self.applied,
            late = self.late,
            failed = self.failed,
            already = self.already,
            "dead-letter replay done"
        );
        println!("{line}");
        Ok(())
    }
}

/// Prints the service's letters not replayed yet, selected by `args`, as a table on stdout.
pub async fn list(
    pool: &MySqlPool,
    service: &str,
    group: &str,
    args: &ReplayArgs,
) -> anyhow::Result<()> {
    let mut table = comfy_table::Table::new();
    table.set_header([
        "id",
        "recorded (UTC)",
        "topic",
        "partition",
        "offset",
        "reason",
        "attempts",
        "bytes",
        "error",
    ]);
    let mut after = 0;
    let mut n = 0;
    loop {
        let page = pending(pool, service, group, args, after).await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for d in page {
            n += 1;
            let excerpt: String = d.error.chars().take(100).collect();
            table.add_row([
                d.id.to_string(),
                d.recorded_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                d.topic,
                d.partition.to_string(),
                d.offset.to_string(),
                d.reason,
                d.attempts.to_string(),
                d.payload.len().to_string(),
                excerpt,
            ]);
        }
    }
    println!("{table}\n{n} dead letters of {service} (group {group}) not replayed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text_is_bounded_on_a_character_boundary() {
        let short = "x".repeat(MAX_ERROR_CHARS);
        assert_eq!(bounded(short.clone()), short);
        let long = "é".repeat(MAX_ERROR_CHARS + 10);
        let cut = bounded(long);
        assert!(cut.ends_with("… (cut)"));
        assert_eq!(
            cut.chars().count(),
            MAX_ERROR_CHARS + "… (cut)".chars().count()
        );
    }

    #[test]
    fn the_metrics_know_every_reason() {
        let names: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names, crate::metrics::DEAD_LETTER_REASONS);
    }

    #[test]
    fn model_errors_map_to_reasons() {
        let bad = common::RateUpdate::from_json(b"not json").unwrap_err();
        assert_eq!(Refusal::from(bad).reason, Reason::Malformed);
        let missing =
            common::RateUpdate::from_json(br#"{"time":"2024-08-05T13:35:34Z"}"#).unwrap_err();
        assert_eq!(Refusal::from(missing).reason, Reason::Malformed);
        let range = common::RateUpdate::from_json(
            br#"{"time":"2024-08-05T13:35:34Z","asset_id_base":"BTC","asset_id_quote":"USD","rate":1.7e308}"#,
        )
        .unwrap_err();
        let r = Refusal::from(range);
        assert_eq!(r.reason, Reason::Invalid);
        assert!(r.error.contains("rate"), "{}", r.error);
    }
}
