//! raw-consumer: stores every rate update from topic `raw_coin_data` in MySQL table
//! `raw_coin_data`, effectively once (see `common::ingest`): batched multi-row inserts, one
//! transaction per batch holding the rows, the dead letters and the offsets. A replayed or
//! duplicated update (same pair and time) collapses on the table's unique key.

use std::fmt::Write as _;

use clap::Parser;
use common::{
    config::{non_empty, KafkaArgs, MySqlArgs, TelemetryArgs},
    model::push_sql_datetime,
    observe::ObserveArgs,
    retention::Prune,
    Context, RateUpdate,
};
use consumer::{
    dead_letters::Refusal,
    ingest::{IngestArgs, Meta, Service, Sink, Statements},
};

/// Settings of the raw consumer.
#[derive(Debug, Parser)]
#[command(
    name = "raw-consumer",
    version,
    about = "Stores raw rate updates from Kafka in MySQL"
)]
pub struct Settings {
    /// Topic to read rate updates from.
    #[arg(long = "topic", env = "RAW_TOPIC", value_name = "RAW_TOPIC", default_value = "raw_coin_data", value_parser = non_empty)]
    pub topic: String,
    /// Kafka consumer group.
    #[arg(long = "group", env = "RAW_CONSUMER_GROUP", value_name = "RAW_CONSUMER_GROUP", default_value = "raw-consumer", value_parser = non_empty)]
    pub group: String,
    #[command(flatten)]
    pub ingest: IngestArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub mysql: MySqlArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    #[command(flatten)]
    pub observe: ObserveArgs,
}

/// A parsed update and where it was read.
#[derive(Debug, Clone, PartialEq)]
pub struct RawRow {
    pub update: RateUpdate,
    pub meta: Meta,
}

/// Rows per INSERT statement (one transaction may hold several).
const ROWS_PER_STATEMENT: usize = 2000;

/// Writes rate updates into `raw_coin_data`.
#[derive(Debug, Default)]
pub struct RawSink;

impl RawSink {
    /// The multi-row INSERT for `rows`. Built as text, not with placeholders: every value is a
    /// validated type (asset ids are ASCII letters, digits, `_` and `-`; numbers and times are
    /// formatted here), so nothing needs escaping, and the text protocol skips a prepare round
    /// trip for statements whose shape changes with the row count.
    pub fn insert_sql(rows: &[&RawRow]) -> String {
        let mut sql = String::with_capacity(160 + rows.len() * 120);
        sql.push_str(
            "INSERT INTO raw_coin_data \
             (asset_id_base, asset_id_quote, rate, `time`, received_at, kafka_partition, kafka_offset) VALUES ",
        );
        for (i, r) in rows.iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            let u = &r.update;
            // `{:e}` is the shortest exact representation, read by MySQL as a DOUBLE literal.
            let _ = write!(sql, "('{}','{}',{:e},", u.pair.base, u.pair.quote, u.rate);
            push_sql_datetime(&mut sql, u.time);
            sql.push(',');
            match u.received_at {
                Some(t) => push_sql_datetime(&mut sql, t),
                None => sql.push_str("NULL"),
            }
            let _ = write!(sql, ",{},{})", r.meta.partition, r.meta.offset);
        }
        // A duplicate (same pair and time) keeps the first stored row unchanged.
        sql.push_str(" ON DUPLICATE KEY UPDATE id = id");
        sql
    }
}

impl Sink for RawSink {
    type Row = RawRow;
    const TABLE: &'static str = "raw_coin_data";

    /// Rows whose event time is older than the retention.
    fn retained(&self) -> Vec<Prune> {
        vec![Prune::new("raw_coin_data", "time")]
    }

    fn parse(&self, meta: Meta, payload: &[u8]) -> Result<RawRow, Refusal> {
        let update = RateUpdate::from_json(payload)?;
        update.check_published(meta.published_ms)?;
        Ok(RawRow { update, meta })
    }

    fn statements(&self, rows: &[&RawRow]) -> Statements {
        Statements {
            sql: rows
                .chunks(ROWS_PER_STATEMENT)
                .map(Self::insert_sql)
                .collect(),
            rows: rows.len() as u64,
        }
    }
}

/// Runs the raw consumer until it is asked to stop (or drained, `--exit-idle`).
pub async fn run(settings: Settings, ctx: Context) -> anyhow::Result<()> {
    let service = Service {
        name: "raw-consumer",
        topic: &settings.topic,
        group: &settings.group,
        kafka: &settings.kafka,
        mysql: &settings.mysql,
    };
    consumer::ingest::serve(RawSink, service, &settings.ingest, ctx).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_sql_is_exact_for_awkward_values() {
        let u = RateUpdate::from_json(br#"{"time":"2024-08-05T13:35:34.3741337Z","asset_id_base":"btc","asset_id_quote":"USD","rate":0.1}"#).unwrap();
        let row = RawRow {
            update: u,
            meta: Meta {
                partition: 2,
                offset: 41,
                published_ms: None,
            },
        };
        let sql = RawSink::insert_sql(&[&row, &row]);
        assert!(
            sql.contains("('BTC','USD',1e-1,'2024-08-05 13:35:34.374133',NULL,2,41),('BTC'"),
            "{sql}"
        );
        assert!(sql.ends_with("ON DUPLICATE KEY UPDATE id = id"));
        let big = RawRow {
            update: RateUpdate {
                rate: 1.2345678901234567e300,
                ..u
            },
            meta: row.meta,
        };
        assert!(RawSink::insert_sql(&[&big]).contains(",1.2345678901234567e300,"));
    }

    #[test]
    fn parse_errors_become_dead_letters_with_a_reason() {
        use consumer::dead_letters::Reason;
        let meta = Meta {
            partition: 0,
            offset: 0,
            published_ms: Some(1_722_864_934_000),
        };
        let err = RawSink.parse(meta, b"{\"rate\":1}").unwrap_err();
        assert_eq!(err.reason, Reason::Malformed);
        assert!(err.error.contains("time"), "{}", err.error);
        let huge = br#"{"time":"2024-08-05T13:35:34Z","asset_id_base":"BTC","asset_id_quote":"USD","rate":1.7e308}"#;
        let err = RawSink.parse(meta, huge).unwrap_err();
        assert_eq!(err.reason, Reason::Invalid);
        assert!(err.error.contains("rate"), "{}", err.error);
        // Published 2024-08-05T13:35:34Z: an event time a day later is a clock gone wrong.
        let ahead = br#"{"time":"2024-08-06T13:35:34Z","asset_id_base":"BTC","asset_id_quote":"USD","rate":1}"#;
        let err = RawSink.parse(meta, ahead).unwrap_err();
        assert_eq!(err.reason, Reason::Invalid);
        assert!(err.error.contains("published"), "{}", err.error);
        let ok = br#"{"time":"2024-08-05T13:35:30Z","asset_id_base":"BTC","asset_id_quote":"USD","rate":1}"#;
        assert!(RawSink.parse(meta, ok).is_ok());
    }
}

#[cfg(test)]
mod flags {
    /// Every flag and variable is unique and well formed (clap's own checks, which a release build
    /// skips): the settings shared by every service must not clash with this one's own.
    #[test]
    fn the_settings_are_well_formed() {
        <super::Settings as clap::CommandFactory>::command().debug_assert();
    }
}
