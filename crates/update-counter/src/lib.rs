//! update-counter: keeps per-window update counts in table `coin_update_count` from the stream
//! aggregator's topic `aggregated_data`, one row per (aggregator group, window spec, pair,
//! window): groups and specs never touch each other's rows. Messages from before groups were
//! recorded count under group '' as tumbling windows of their length.
//!
//! The upsert never lets an older or smaller emission overwrite a newer one: a window's count only
//! grows, so the row keeps the largest count seen and `is_final` once set stays set. Replays and
//! out-of-order deliveries are therefore harmless. Offsets, dead letters, reconnects and shutdown
//! are `common::ingest`'s, shared with raw-consumer.

use std::{collections::HashMap, fmt::Write as _};

use clap::Parser;
use common::{
    config::{non_empty, KafkaArgs, MySqlArgs, TelemetryArgs},
    model::push_sql_datetime,
    observe::ObserveArgs,
    retention::Prune,
    window::{WindowBounds, WindowResult, WindowSpec},
    AssetId, Context,
};
use consumer::{
    dead_letters::Refusal,
    ingest::{IngestArgs, Meta, Service, Sink, Statements},
};

/// Settings of the update counter.
#[derive(Debug, Parser)]
#[command(
    name = "update-counter",
    version,
    about = "Keeps per-window update counts in MySQL"
)]
pub struct Settings {
    /// Topic with the aggregator's window results.
    #[arg(long = "topic", env = "AGG_TOPIC", value_name = "AGG_TOPIC", default_value = "aggregated_data", value_parser = non_empty)]
    pub topic: String,
    /// Kafka consumer group.
    #[arg(long = "group", env = "UPDATE_COUNTER_GROUP", value_name = "UPDATE_COUNTER_GROUP", default_value = "update-counter", value_parser = non_empty)]
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

/// The part of a window result the counter keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowCount {
    /// The aggregator group that computed the window.
    pub group: String,
    pub spec: WindowSpec,
    pub base: AssetId,
    pub quote: AssetId,
    pub window: WindowBounds,
    pub update_count: u64,
    pub is_final: bool,
}

impl WindowCount {
    /// Combines two emissions of one window: the larger count, final once either is.
    pub fn merge(&mut self, other: &WindowCount) {
        self.update_count = self.update_count.max(other.update_count);
        self.is_final |= other.is_final;
    }
}

/// Upserts window counts into `coin_update_count`.
#[derive(Debug, Default)]
pub struct CountSink;

/// The upsert: never lower a count, never clear `is_final`; `updated_at` moves only on change.
const UPSERT: &str = "INSERT INTO coin_update_count \
    (consumer_group, window_us, slide_us, start_time, end_time, asset_id_base, asset_id_quote, update_count, is_final, updated_at) VALUES ";
const ON_DUPLICATE: &str = " ON DUPLICATE KEY UPDATE \
    updated_at = IF(VALUES(update_count) > update_count OR (VALUES(is_final) AND NOT is_final), VALUES(updated_at), updated_at), \
    update_count = GREATEST(update_count, VALUES(update_count)), \
    is_final = is_final OR VALUES(is_final)";

impl Sink for CountSink {
    type Row = WindowCount;
    const TABLE: &'static str = "coin_update_count";

    /// Rows whose window ended is older than the retention.
    fn retained(&self) -> Vec<Prune> {
        vec![Prune::new("coin_update_count", "end_time")]
    }

    fn parse(&self, _meta: Meta, payload: &[u8]) -> Result<WindowCount, Refusal> {
        let w = WindowResult::from_json(payload)?;
        Ok(WindowCount {
            group: w.group.to_string(),
            spec: w.spec,
            base: w.base,
            quote: w.quote,
            window: w.window,
            update_count: w.update_count,
            is_final: w.is_final,
        })
    }

    fn statements(&self, rows: &[&WindowCount]) -> Statements {
        // Many emissions of one window in a batch become one row.
        type Key<'a> = (&'a str, WindowSpec, AssetId, AssetId, WindowBounds);
        let mut merged: HashMap<Key<'_>, WindowCount> = HashMap::new();
        for r in rows {
            merged
                .entry((&r.group, r.spec, r.base, r.quote, r.window))
                .and_modify(|m| m.merge(r))
                .or_insert_with(|| (*r).clone());
        }
        let merged: Vec<WindowCount> = merged.into_values().collect();
        Statements {
            sql: merged.chunks(1000).map(upsert_sql).collect(),
            rows: merged.len() as u64,
        }
    }
}

/// The upsert of `counts` as text: asset ids are validated (letters, digits, `_`, `-`), times
/// and numbers formatted here, the group written as a hex literal, so nothing needs escaping.
fn upsert_sql(counts: &[WindowCount]) -> String {
    let mut sql = String::with_capacity(UPSERT.len() + ON_DUPLICATE.len() + counts.len() * 110);
    sql.push_str(UPSERT);
    for (i, c) in counts.iter().enumerate() {
        sql.push_str(if i == 0 { "(" } else { ",(" });
        push_sql_hex(&mut sql, c.group.as_bytes());
        let _ = write!(sql, ",{},{},", c.spec.size_us, c.spec.slide_us);
        push_sql_datetime(&mut sql, c.window.start);
        sql.push(',');
        push_sql_datetime(&mut sql, c.window.end);
        let _ = write!(
            sql,
            ",'{}','{}',{},{},UTC_TIMESTAMP(6))",
            c.base,
            c.quote,
            c.update_count,
            if c.is_final { "TRUE" } else { "FALSE" }
        );
    }
    sql.push_str(ON_DUPLICATE);
    sql
}

/// `bytes` as a hex string literal (`X'..'`, valid for any bytes in MySQL and MariaDB).
fn push_sql_hex(sql: &mut String, bytes: &[u8]) {
    sql.push_str("X'");
    for b in bytes {
        let _ = write!(sql, "{b:02x}");
    }
    sql.push('\'');
}

/// Runs the update counter until it is asked to stop (or drained, `--exit-idle`).
pub async fn run(settings: Settings, ctx: Context) -> anyhow::Result<()> {
    let service = Service {
        name: "update-counter",
        topic: &settings.topic,
        group: &settings.group,
        kafka: &settings.kafka,
        mysql: &settings.mysql,
    };
    consumer::ingest::serve(CountSink, service, &settings.ingest, ctx).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(start: &str, n: u64, is_final: bool) -> WindowCount {
        let t = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().to_utc();
        WindowCount {
            group: "agg's".into(),
            spec: WindowSpec::tumbling(60_000_000),
            base: "BTC".parse().unwrap(),
            quote: "USD".parse().unwrap(),
            window: WindowBounds {
                start: t(start),
                end: t(start) + chrono::Duration::minutes(1),
            },
            update_count: n,
            is_final,
        }
    }

    #[test]
    fn emissions_of_one_window_merge_into_one_row() {
        let a = count("2024-08-05T13:35:00Z", 3, false);
        let b = count("2024-08-05T13:35:00Z", 5, true);
        let c = count("2024-08-05T13:36:00.25Z", 1, false);
        let s = CountSink.statements(&[&a, &b, &c]);
        assert_eq!(s.rows, 2);
        assert_eq!(s.sql.len(), 1);
        let sql = &s.sql[0];
        assert!(
            sql.contains("(X'6167672773',60000000,60000000,'2024-08-05 13:35:00.000000','2024-08-05 13:36:00.000000','BTC','USD',5,TRUE,UTC_TIMESTAMP(6))"),
            "{sql}"
        );
        assert!(sql.contains("'2024-08-05 13:36:00.250000'"), "{sql}");
        assert!(sql.ends_with(ON_DUPLICATE));
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
