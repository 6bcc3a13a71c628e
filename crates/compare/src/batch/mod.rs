//! The batch side: windows recomputed from `raw_coin_data`, for every window or for a [`Scope`].
//!
//! How, so that 10 million rows take seconds and a handful of windows take milliseconds:
//! 1. MySQL aggregates per *slide bucket* (count, sum, min, max): per pair, a `GROUP BY` over its
//!    range of the covering index `(pair, time, rate)`, read from the index alone; one pair after
//!    the other, on the one connection of the run's snapshot.
//! 2. Windows are assembled from their buckets here ([`assemble`]: a sliding window is the union
//!    of `size / slide` buckets).
//! 3. Late events the aggregator recorded (same pair, time, partition and offset as the raw row)
//!    are taken out of exactly the windows they missed ([`exclusions`]): count and sum directly;
//!    a window whose min or max was such an event is recomputed from its rows.
//!
//! The result equals the single `GROUP BY` with a `late_events` join this replaces, up to the
//! order floating-point sums are added in (compared within 1e-9 relative).

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    time::Instant,
};

use chrono::{DateTime, Utc};
use common::{model::Pair, window::WindowSpec};
use sqlx::MySqlConnection;

mod assemble;
pub mod incremental;
pub mod queries;

pub use assemble::{assemble, exclude, exclusions, BucketKey, Late, Partial};

use crate::accuracy::{Agg, Key};

/// Microseconds since the epoch of a `DATETIME(6)` column, in SQL both servers accept.
pub fn us(col: &str) -> String {
    format!("TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', {col})")
}

/// Which windows: of one pair or all, starting in `[since, until)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    pub pair: Option<Pair>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

impl Scope {
    /// Whether a window (pair, start in µs) is in scope.
    pub fn contains(&self, base: &str, quote: &str, start_us: i64) -> bool {
        self.pair
            .is_none_or(|p| p.base.as_str() == base && p.quote.as_str() == quote)
            && self.since.is_none_or(|s| start_us >= s.timestamp_micros())
            && self.until.is_none_or(|u| start_us < u.timestamp_micros())
    }

    /// The event-time range whose events can fall in a window of scope: `[since, until + size)`.
    fn event_range(&self, spec: WindowSpec) -> (Option<i64>, Option<i64>) {
        (
            self.since.map(|s| s.timestamp_micros()),
            self.until
                .map(|u| u.timestamp_micros().saturating_add(spec.size_us)),
        )
    }

    /// `AND ...` conditions on a table aliased `t` with pair and `time` columns, and their binds.
    fn conditions(&self, spec: WindowSpec, t: &str) -> (String, Vec<Bind>) {
        let mut sql = String::new();
        let mut binds = Vec::new();
        if let Some(p) = self.pair {
            sql.push_str(&format!(
                " AND {t}.asset_id_base = ? AND {t}.asset_id_quote = ?"
            ));
            binds.push(Bind::Text(p.base.to_string()));
            binds.push(Bind::Text(p.quote.to_string()));
        }
        let (from, to) = self.event_range(spec);
        if let Some(from) = from.and_then(DateTime::from_timestamp_micros) {
            sql.push_str(&format!(" AND {t}.`time` >= ?"));
            binds.push(Bind::Time(from));
        }
        if let Some(to) = to.and_then(DateTime::from_timestamp_micros) {
            sql.push_str(&format!(" AND {t}.`time` < ?"));
            binds.push(Bind::Time(to));
        }
        (sql, binds)
    }
}

/// A value bound to a placeholder (never spliced into SQL text).
#[derive(Debug, Clone)]
pub(crate) enum Bind {
    Text(String),
    Int(i64),
    Time(DateTime<Utc>),
}

/// Binds `binds` in their order.
pub(crate) fn bind_all<'q, O>(
    mut q: sqlx::query::QueryAs<'q, sqlx::MySql, O, sqlx::mysql::MySqlArguments>,
    binds: &'q [Bind],
) -> sqlx::query::QueryAs<'q, sqlx::MySql, O, sqlx::mysql::MySqlArguments> {
    for b in binds {
        q = match b {
            Bind::Text(s) => q.bind(s.as_str()),
            Bind::Int(n) => q.bind(*n),
            Bind::Time(t) => q.bind(t.naive_utc()),
        };
    }
    q
}

/// The batch recomputation of a scope and how long it took.
#[derive(Debug, Default)]
pub struct Batch {
    pub windows: BTreeMap<Key, Agg>,
    pub seconds: f64,
    /// Raw rows read (each once).
    pub raw_rows: i64,
}

/// Recomputes the windows of `spec` in `scope` from `raw_coin_data`, leaving out what the
/// aggregator group `group` recorded as late for that spec (an update late for one spec may be on
/// time for another); every read on `conn` (a [`queries::Snapshot`]'s, so that the
/// raw rows and late events are of one moment).
pub async fn compute(
    conn: &mut MySqlConnection,
    spec: WindowSpec,
    group: &str,
    scope: &Scope,
) -> anyhow::Result<Batch> {
    let started = Instant::now();
    let buckets = buckets(conn, spec, scope).await?;
    let raw_rows = buckets.values().map(|p| p.count).sum();
    let mut windows = assemble(spec, &buckets);
    windows.retain(|(b, q, s), _| scope.contains(b, q, *s));
    let late = late_events(conn, spec, group, scope).await?;
    let excluded = exclusions(spec, &late);
    for key in exclude(&mut windows, &excluded) {
        let leave_out: HashSet<(i32, i64)> = excluded[&key]
            .iter()
            .map(|l| (l.partition, l.offset))
            .collect();
        match window_from_rows(conn, spec, &key, &leave_out).await? {
            Some(p) => windows.insert(key, p),
            None => windows.remove(&key),
        };
    }
    Ok(Batch {
        windows: windows.into_iter().map(|(k, p)| (k, p.agg())).collect(),
        seconds: started.elapsed().as_secs_f64(),
        raw_rows,
    })
}

/// Ids read again below the highest one read before: rows whose transaction took its id earlier
/// but committed later (the raw consumer's batches, several instances).
pub const REREAD_IDS: i64 = 20_000;

/// How long a transaction may hold ids it has not committed and still be read: what was read
/// this long ago is read again.
pub const REREAD_MARGIN: std::time::Duration = std::time::Duration::from_secs(10);

/// The window ranges to recompute for marked slide buckets `(base, quote, bucket)`: per pair, the
/// starts of every window over a marked bucket, merged where they touch, within the scope.
pub fn dirty_ranges(spec: WindowSpec, scope: &Scope, dirty: &BTreeSet<Key>) -> Vec<Scope> {
    let k = spec.windows_per_event();
    let mut by_pair: BTreeMap<(&str, &str), Vec<(i64, i64)>> = BTreeMap::new();
    for (b, q, bucket) in dirty {
        // Windows over bucket n start at (n - k + 1) .. n slides.
        let first = (bucket - k + 1) * spec.slide_us;
        let last = bucket * spec.slide_us;
        let ranges = by_pair.entry((b.as_str(), q.as_str())).or_default();
        match ranges.last_mut() {
            Some((_, end)) if first <= *end + spec.slide_us => *end = (*end).max(last),
            _ => ranges.push((first, last)),
        }
    }
    let mut out = Vec::new();
    for ((b, q), ranges) in by_pair {
        let Ok(pair) = format!("{b}/{q}").parse() else {
            continue;
        };
        for (first, last) in ranges {
            let mut since = DateTime::<Utc>::from_timestamp_micros(first);
            let mut until = DateTime::<Utc>::from_timestamp_micros(last + 1);
            if let (Some(s), Some(lo)) = (scope.since, since) {
                since = Some(s.max(lo));
            }
            if let (Some(u), Some(hi)) = (scope.until, until) {
                until = Some(u.min(hi));
            }
            if scope.pair.is_some_and(|p| p != pair) || since >= until {
                continue;
            }
            out.push(Scope {
                pair: Some(pair),
                since,
                until,
            });
        }
    }
    out
}

/// `TO_SECONDS('1970-01-01')`: seconds from year 0 to the epoch.
const EPOCH_TO_SECONDS: i64 = 62_167_219_200;

/// A row's slide bucket, `floor(time_us / slide_us)`, in SQL (of a table aliased `r`): through `TO_SECONDS` when the slide
/// is whole seconds (a third cheaper per row than the microsecond difference).
pub(crate) fn bucket_sql(spec: WindowSpec) -> String {
    if spec.slide_us % 1_000_000 == 0 {
        format!(
            "CAST((TO_SECONDS(r.`time`) - {EPOCH_TO_SECONDS}) DIV {} AS SIGNED)",
            spec.slide_us / 1_000_000
        )
    } else {
        format!("CAST({} DIV {} AS SIGNED)", us("r.`time`"), spec.slide_us)
    }
}

/// Per-bucket aggregates of the scope's raw rows: one `GROUP BY` per pair over its range of the
/// covering index `(pair, time, rate)` (index only, no table rows read).
async fn buckets(
    conn: &mut MySqlConnection,
    spec: WindowSpec,
    scope: &Scope,
) -> anyhow::Result<BTreeMap<BucketKey, Partial>> {
    let pairs: Vec<(String, String)> = match scope.pair {
        Some(p) => vec![(p.base.to_string(), p.quote.to_string())],
        None => {
            sqlx::query_as("SELECT DISTINCT asset_id_base, asset_id_quote FROM raw_coin_data")
                .fetch_all(&mut *conn)
                .await?
        }
    };
    let one_pair = Scope {
        pair: None,
        ..scope.clone()
    };
    let (conditions, binds) = one_pair.conditions(spec, "r");
    let sql = format!(
        "SELECT {b} AS b, COUNT(*), SUM(r.rate), MIN(r.rate), MAX(r.rate) FROM raw_coin_data r \
         WHERE r.asset_id_base = ? AND r.asset_id_quote = ?{conditions} GROUP BY b",
        b = bucket_sql(spec),
    );
    let mut out: BTreeMap<BucketKey, Partial> = BTreeMap::new();
    for (base, quote) in pairs {
        let mut all = vec![Bind::Text(base.clone()), Bind::Text(quote.clone())];
        all.extend(binds.iter().cloned());
        let rows = bind_all(sqlx::query_as::<_, (i64, i64, f64, f64, f64)>(&sql), &all)
            .fetch_all(&mut *conn)
            .await?;
        for (n, count, sum, min, max) in rows {
            let p = Partial {
                count,
                sum,
                min,
                max,
            };
            out.insert((base.clone(), quote.clone(), n), p);
        }
    }
    Ok(out)
}

/// Late events of `group` for `spec` in scope whose raw row is the event itself (same pair and
/// time, and the same partition and offset).
async fn late_events(
    conn: &mut MySqlConnection,
    spec: WindowSpec,
    group: &str,
    scope: &Scope,
) -> anyhow::Result<Vec<Late>> {
    let (conditions, binds) = scope.conditions(spec, "l");
    let sql = format!(
        "SELECT l.asset_id_base, l.asset_id_quote, CAST({t} AS SIGNED), r.rate, l.kafka_partition, \
                l.kafka_offset, l.applied, CAST({w} AS SIGNED) \
         FROM late_events l JOIN raw_coin_data r \
           ON r.asset_id_base = l.asset_id_base AND r.asset_id_quote = l.asset_id_quote \
          AND r.`time` = l.`time` AND r.kafka_partition = l.kafka_partition AND r.kafka_offset = l.kafka_offset \
         WHERE l.consumer_group = ? AND l.window_us = ? AND l.slide_us = ?{conditions}",
        t = us("l.`time`"),
        w = us("l.watermark"),
    );
    let mut all = vec![
        Bind::Text(group.to_owned()),
        Bind::Int(spec.size_us),
        Bind::Int(spec.slide_us),
    ];
    all.extend(binds);
    let rows: Vec<LateRow> = bind_all(sqlx::query_as(&sql), &all).fetch_all(conn).await?;
    Ok(rows
        .into_iter()
        .map(
            |(base, quote, time_us, rate, partition, offset, applied, watermark_us)| Late {
                base,
                quote,
                time_us,
                rate,
                partition,
                offset,
                applied,
                watermark_us,
            },
        )
        .collect())
}

/// `late_events` joined to its raw row: pair, time, rate, partition, offset, applied, watermark.
type LateRow = (String, String, i64, f64, i32, i64, bool, i64);

/// One window from its rows, leaving out `(partition, offset)`s; `None` when nothing is left.
async fn window_from_rows(
    conn: &mut MySqlConnection,
    spec: WindowSpec,
    (base, quote, start): &Key,
    leave_out: &HashSet<(i32, i64)>,
) -> anyhow::Result<Option<Partial>> {
    let (Some(from), Some(to)) = (
        DateTime::from_timestamp_micros(*start),
        DateTime::from_timestamp_micros(start + spec.size_us),
    ) else {
        return Ok(None);
    };
    let rows: Vec<(f64, Option<i32>, Option<i64>)> = sqlx::query_as(
        "SELECT rate, kafka_partition, kafka_offset FROM raw_coin_data \
         WHERE asset_id_base = ? AND asset_id_quote = ? AND `time` >= ? AND `time` < ?",
    )
    .bind(base)
    .bind(quote)
    .bind(from.naive_utc())
    .bind(to.naive_utc())
    .fetch_all(conn)
    .await?;
    let mut out: Option<Partial> = None;
    for (rate, p, o) in rows {
        if let (Some(p), Some(o)) = (p, o) {
            if leave_out.contains(&(p, o)) {
                continue;
            }
        }
        match &mut out {
            Some(w) => w.merge(&Partial::of(rate)),
            None => out = Some(Partial::of(rate)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn marked_buckets_become_merged_window_ranges() {
        let spec = WindowSpec::sliding(30, 10);
        let b = |n: i64| ("BTC".to_string(), "USD".to_string(), n);
        let dirty = BTreeSet::from([b(5), b(6), b(20), ("ETH".into(), "USD".into(), 1)]);
        let ranges = dirty_ranges(spec, &Scope::default(), &dirty);
        let got: Vec<(String, i64, i64)> = ranges
            .iter()
            .map(|s| {
                (
                    s.pair.unwrap().to_string(),
                    s.since.unwrap().timestamp_micros(),
                    s.until.unwrap().timestamp_micros(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("BTC/USD".into(), 30, 61),
                ("BTC/USD".into(), 180, 201),
                ("ETH/USD".into(), -10, 11)
            ]
        );
    }

    /// Reference: every window straight from events, excluded ones left out.
    fn direct(spec: WindowSpec, events: &[(i64, f64)], late: &[Late]) -> BTreeMap<Key, Partial> {
        let ex = exclusions(spec, late);
        let mut out: BTreeMap<Key, Partial> = BTreeMap::new();
        for (i, (t, rate)) in events.iter().enumerate() {
            for s in spec.starts(*t) {
                let key = ("BTC".to_string(), "USD".to_string(), s);
                let skip = ex
                    .get(&key)
                    .is_some_and(|v| v.iter().any(|l| l.offset == i as i64));
                if !skip {
                    out.entry(key)
                        .and_modify(|w| w.merge(&Partial::of(*rate)))
                        .or_insert(Partial::of(*rate));
                }
            }
        }
        out
    }

    fn via_buckets(
        spec: WindowSpec,
        events: &[(i64, f64)],
        late: &[Late],
    ) -> (BTreeMap<Key, Partial>, Vec<Key>) {
        let mut buckets: BTreeMap<BucketKey, Partial> = BTreeMap::new();
        for (t, rate) in events {
            buckets
                .entry(("BTC".into(), "USD".into(), t.div_euclid(spec.slide_us)))
                .and_modify(|w| w.merge(&Partial::of(*rate)))
                .or_insert(Partial::of(*rate));
        }
        let mut windows = assemble(spec, &buckets);
        let exact = exclude(&mut windows, &exclusions(spec, late));
        (windows, exact)
    }

    proptest! {
        #[test]
        fn buckets_and_exclusions_equal_the_direct_computation(
            slide in 1i64..5,
            k in 1i64..4,
            events in prop::collection::vec((0i64..200, 1u32..50), 1..80),
            late_picks in prop::collection::vec((any::<prop::sample::Index>(), any::<bool>(), 0i64..250), 0..10),
        ) {
            let spec = WindowSpec::sliding(slide * k * 10, slide * 10);
            let events: Vec<(i64, f64)> = events.into_iter().map(|(t, r)| (t, f64::from(r))).collect();
            let mut late: Vec<Late> = late_picks.iter().map(|(i, applied, wm)| {
                let i = i.index(events.len());
                Late { base: "BTC".into(), quote: "USD".into(), time_us: events[i].0, rate: events[i].1,
                       partition: 0, offset: i as i64, applied: *applied, watermark_us: *wm }
            }).collect();
            late.sort_by_key(|l| l.offset);
            late.dedup_by_key(|l| l.offset);
            let want = direct(spec, &events, &late);
            let (mut got, exact) = via_buckets(spec, &events, &late);
            // Windows to recompute exactly are recomputed (here: from the reference).
            for key in exact {
                match want.get(&key) {
                    Some(w) => { got.insert(key, *w); }
                    None => { got.remove(&key); }
                }
            }
            prop_assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
            for (key, w) in &want {
                let g = &got[key];
                prop_assert_eq!((g.count, g.min, g.max), (w.count, w.min, w.max), "{:?}", key);
                prop_assert!((g.sum - w.sum).abs() <= 1e-9 * w.sum.abs().max(1.0), "{:?}", key);
            }
        }
    }

    #[test]
    fn scope_bounds_windows_and_events() {
        let spec = WindowSpec::tumbling(60_000_000);
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let scope = Scope {
            pair: Some("BTC/USD".parse().unwrap()),
            since: Some(t("2024-01-01T00:01:00Z")),
            until: Some(t("2024-01-01T00:03:00Z")),
        };
        let s = t("2024-01-01T00:01:00Z").timestamp_micros();
        assert!(scope.contains("BTC", "USD", s));
        assert!(!scope.contains("ETH", "USD", s));
        assert!(!scope.contains("BTC", "USD", s - 1));
        assert!(!scope.contains("BTC", "USD", s + 120_000_000));
        let (sql, binds) = scope.conditions(spec, "r");
        assert_eq!(binds.len(), 4, "{sql}");
        assert!(
            !sql.contains("BTC"),
            "values are bound, never spliced: {sql}"
        );
        assert_eq!(
            scope.event_range(spec).1,
            Some(t("2024-01-01T00:04:00Z").timestamp_micros())
        );
    }
}
