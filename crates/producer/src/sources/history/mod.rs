//! CoinAPI history: `--source coinapi-history` publishes one update per period of a past range
//! and exits; the live sources (`coinapi`, `coinapi-ws`) use it at start to fill the gap since
//! each pair's last update on the topic ([`backfill`], `--backfill-max`).
//!
//! Pages of `--history-limit` periods are requested in time order, each starting at the end of
//! the previous page's last period, within the quota rules of the REST source: 401 stops; 403/429
//! wait (until `X-RateLimit-Reset` when given, else with backoff) and ask again; 5xx and
//! transport errors retry with backoff up to `--max-retries`, then stop with an error naming
//! where (a gap is never skipped silently); 550 means no data for the rest of that pair's range
//! (WARN). Progress (periods done of total, requests, credits, time left) is logged every few
//! seconds. The key is never logged.

pub mod api;
pub mod tail;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use clap::Args;
use common::{backoff::Backoff, config::parse_duration, Pair};
use tokio_util::sync::CancellationToken;

use crate::{
    publisher::{PublishError, Publisher},
    sources::rest::client::{CoinApiClient, Failure},
    Settings, FLUSH_TIMEOUT,
};
use api::{Outcome, Period};

/// History and gap-fill settings.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "CoinAPI history")]
pub struct HistoryArgs {
    /// `--source coinapi-history`: the start of the range (RFC 3339).
    #[arg(long = "since", env = "HISTORY_SINCE", value_name = "HISTORY_SINCE", value_parser = parse_instant)]
    pub since: Option<DateTime<Utc>>,
    /// `--source coinapi-history`: the end of the range (RFC 3339); default now.
    #[arg(long = "until", env = "HISTORY_UNTIL", value_name = "HISTORY_UNTIL", value_parser = parse_instant)]
    pub until: Option<DateTime<Utc>>,
    /// The history period: one update per period, at its close (1SEC, 10SEC, 1MIN, 1HRS, 1DAY).
    #[arg(
        long = "period",
        env = "HISTORY_PERIOD",
        value_name = "HISTORY_PERIOD",
        default_value = "1SEC"
    )]
    pub period: Period,
    /// Periods per history request (every 100 cost one request of the quota).
    #[arg(long = "history-limit", env = "HISTORY_LIMIT", value_name = "HISTORY_LIMIT", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub limit: u32,
    /// Live sources: at start, fill the gap since each pair's last update on the topic from
    /// CoinAPI's history, at most this far back (0: off). One hour of 1SEC periods costs 36
    /// requests per pair.
    #[arg(long = "backfill-max", env = "BACKFILL_MAX", value_name = "BACKFILL_MAX", default_value = "1h", value_parser = parse_duration)]
    pub backfill_max: Duration,
}

fn parse_instant(s: &str) -> Result<DateTime<Utc>, String> {
    common::model::parse_time(s)
        .ok_or_else(|| "expected an RFC 3339 time such as 2024-08-05T13:00:00Z".into())
}

/// Why a history run stops.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("CoinAPI rejected the API key (HTTP 401: {0}); check COINAPI_KEY")]
    InvalidKey(String),
    #[error("CoinAPI history of {pair} from {from} could not be fetched ({why}); nothing after it was published: run again with --since {from}")]
    Failed {
        pair: Pair,
        from: String,
        why: String,
    },
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error("stopped by a signal before the history of {pair} from {from}: run again with --since {from} for it and the pairs after it")]
    Stopped { pair: Pair, from: String },
}

fn stopped(pair: Pair, from: DateTime<Utc>) -> HistoryError {
    HistoryError::Stopped {
        pair,
        from: common::model::format_time(from),
    }
}

/// Progress of a history run, logged every few seconds.
#[derive(Debug)]
pub struct Progress {
    /// Periods of the whole run, and covered so far.
    total: f64,
    done: f64,
    pub requests: u64,
    pub credits: u64,
    pub published: u64,
    pub skipped_items: u64,
    started: Instant,
    logged: Instant,
}

impl Progress {
    pub fn new(total_periods: f64) -> Self {
        Progress {
            total: total_periods.max(1.0),
            done: 0.0,
            requests: 0,
            credits: 0,
            published: 0,
            skipped_items: 0,
            started: Instant::now(),
            logged: Instant::now(),
        }
    }

    fn advance(&mut self, periods: f64) {
        self.done += periods;
        if self.logged.elapsed() >= Duration::from_secs(5) {
            self.log("history progress");
            self.logged = Instant::now();
        }
    }

    pub fn log(&self, what: &str) {
        let fraction = (self.done / self.total).min(1.0);
        let elapsed = self.started.elapsed().as_secs_f64();
        let left = (fraction > 0.0).then(|| elapsed / fraction * (1.0 - fraction));
        tracing::info!(
            periods_done = self.done.round() as u64,
            periods_total = self.total.round() as u64,
            percent = format!("{:.1}", fraction * 100.0),
            requests = self.requests,
            credits = self.credits,
            published = self.published,
            periods_without_close = self.skipped_items,
            seconds_left = left.map(|s| s.round() as u64),
            "{what}"
        );
    }
}

/// Fetches history pages and publishes their updates.
#[derive(Debug)]
pub struct History {
    client: CoinApiClient,
    period: Period,
    limit: u32,
    max_retries: u32,
    backoff: (Duration, Duration),
    /// Wait out rate limits however long (a history run); else give up after `max_retries`
    /// (the gap fill, which must not hold the live source back for long).
    patient: bool,
}

impl History {
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        let key = settings.key().cloned().expect("checked by resolve_source");
        Ok(History {
            client: CoinApiClient::new(&settings.coinapi_base_url, key, settings.http_timeout)?,
            period: settings.history.period.clone(),
            limit: settings.history.limit,
            max_retries: settings.max_retries,
            backoff: (settings.backoff_initial, settings.backoff_max),
            patient: true,
        })
    }

    /// Periods in `[from, to)`.
    pub fn periods(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
        let span = (to - from).num_milliseconds().max(0) as f64 / 1000.0;
        span / self.period.length.as_secs_f64()
    }

    /// Publishes one update per period of `pair` in `[from, to)` whose close is after `after`,
    /// page by page, in time order.
    pub async fn fill(
        &self,
        pair: Pair,
        (from, to): (DateTime<Utc>, DateTime<Utc>),
        after: Option<DateTime<Utc>>,
        publisher: &mut Publisher,
        progress: &mut Progress,
        shutdown: &CancellationToken,
    ) -> Result<(), HistoryError> {
        let mut start = from;
        while start < to {
            if shutdown.is_cancelled() {
                return Err(stopped(pair, start));
            }
            let page = match self.page(pair, start, to, progress, shutdown).await? {
                Some(page) => page,
                None => return Ok(()), // no data for the rest of the range
            };
            for u in page
                .updates
                .iter()
                .filter(|u| after.is_none_or(|a| u.time > a))
            {
                publisher.send(u)?;
                progress.published += 1;
            }
            publisher.check()?;
            progress.skipped_items += page.bad.len() as u64;
            for bad in &page.bad {
                tracing::warn!(pair = %pair, item = %bad, "history period without a close; skipped");
            }
            let next = page.last_end.filter(|e| *e > start);
            let covered_to = next.unwrap_or(to).min(to);
            progress.advance(self.periods(start, covered_to));
            match next {
                // A full page: more may follow from the end of its last period.
                Some(next) if page.items >= self.limit as usize => start = next,
                _ => return Ok(()),
            }
        }
        Ok(())
    }

    /// One page from `start`, asked again after rate limits and transient errors; `None` when
    /// CoinAPI has no data for the range (550).
    async fn page(
        &self,
        pair: Pair,
        start: DateTime<Utc>,
        to: DateTime<Utc>,
        progress: &mut Progress,
        shutdown: &CancellationToken,
    ) -> Result<Option<api::Page>, HistoryError> {
        let path = api::path(pair, &self.period, start, to, self.limit);
        let mut transient = Backoff::new(self.backoff.0, self.backoff.1);
        let mut limited = Backoff::new(self.backoff.0, self.backoff.1);
        let mut attempts = 0;
        let failed = |why: String| HistoryError::Failed {
            pair,
            from: common::model::format_time(start),
            why,
        };
        loop {
            let (response, quota) = self.client.get(&path).await;
            progress.requests += 1;
            let outcome = match response {
                Ok((status, body)) => api::classify(pair, status, &body, Utc::now()),
                Err(e) => Outcome::Failed(Failure::Transient(e)),
            };
            let wait = match outcome {
                Outcome::Page(page) => {
                    progress.credits += api::credits(page.items);
                    return Ok(Some(page));
                }
                Outcome::Malformed { error, excerpt } => {
                    return Err(failed(format!("malformed response: {error}: {excerpt}")))
                }
                Outcome::Failed(Failure::InvalidKey(m)) => return Err(HistoryError::InvalidKey(m)),
                Outcome::Failed(Failure::NoData(m)) => {
                    progress.credits += 1;
                    tracing::warn!(pair = %pair, from = %common::model::format_time(start), message = %m, "CoinAPI has no history for the rest of this range (550)");
                    return Ok(None);
                }
                Outcome::Failed(Failure::Rejected { status, message }) => {
                    return Err(failed(format!("HTTP {status}: {message}")))
                }
                Outcome::Failed(Failure::RateLimited { status, message }) => {
                    attempts += u32::from(!self.patient);
                    if attempts > self.max_retries {
                        return Err(failed(format!("HTTP {status}: {message}")));
                    }
                    let until_reset = quota.reset.and_then(|r| (r - Utc::now()).to_std().ok());
                    let wait = until_reset.unwrap_or_else(|| limited.next_delay());
                    tracing::warn!(pair = %pair, status, %message, remaining = ?quota.remaining, wait = ?wait, "CoinAPI rate limit on history; waiting before asking again");
                    wait
                }
                Outcome::Failed(Failure::Transient(m)) => {
                    attempts += 1;
                    if attempts > self.max_retries {
                        return Err(failed(m));
                    }
                    let wait = transient.next_delay();
                    tracing::warn!(pair = %pair, error = %m, attempt = attempts, wait = ?wait, "CoinAPI history request failed; retrying");
                    wait
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => return Err(stopped(pair, start)),
            }
        }
    }
}

/// `--source coinapi-history`: every pair's periods in `[--since, --until)`, then exit.
pub async fn run(
    settings: &Settings,
    mut publisher: Publisher,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let since = settings.history.since.ok_or_else(|| {
        common::ConfigError::new(
            "HISTORY_SINCE",
            "required for --source coinapi-history (--since 2024-08-05T00:00:00Z)",
        )
    })?;
    let until = settings.history.until.unwrap_or_else(Utc::now);
    if until <= since {
        return Err(
            common::ConfigError::new("HISTORY_UNTIL", "must be after HISTORY_SINCE").into(),
        );
    }
    let history = History::new(settings)?;
    let total = history.periods(since, until) * settings.pairs.len() as f64;
    let mut progress = Progress::new(total);
    tracing::info!(pairs = settings.pairs.len(), since = %since, until = %until, period = %settings.history.period.id, periods = total.round() as u64, "fetching CoinAPI history");
    let mut outcome = Ok(());
    for &pair in &settings.pairs {
        outcome = history
            .fill(
                pair,
                (since, until),
                None,
                &mut publisher,
                &mut progress,
                &shutdown,
            )
            .await;
        if outcome.is_err() {
            break;
        }
    }
    let flushed = tokio::task::block_in_place(|| publisher.flush(FLUSH_TIMEOUT));
    progress.log("history done");
    outcome?;
    flushed?;
    Ok(())
}

/// Live sources, at start: for each pair whose last update on the topic is older than
/// `stale_after`, the history from it to now (at most `--backfill-max` back) is published first.
/// A pair with no update on the topic has no gap to fill.
pub async fn backfill(
    settings: &Settings,
    publisher: &mut Publisher,
    stale_after: Duration,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let max = settings.history.backfill_max;
    if max.is_zero() {
        return Ok(());
    }
    // A blocking read of the topic's tail (librdkafka polls), off the async workers.
    let last = tokio::task::block_in_place(|| {
        tail::last_times(&settings.kafka, &settings.topic, &settings.pairs)
    })?;
    let now = Utc::now();
    let floor = now - max;
    let history = History {
        patient: false,
        ..History::new(settings)?
    };
    let mut gaps = Vec::new();
    for &pair in &settings.pairs {
        match last.get(&pair) {
            Some(&t) if now - t > chrono::Duration::from_std(stale_after).unwrap_or_default() => {
                gaps.push((pair, t, t.max(floor)));
            }
            Some(_) => {}
            None => {
                tracing::info!(pair = %pair, "no update of this pair on the topic: no gap to fill")
            }
        }
    }
    if gaps.is_empty() {
        return Ok(());
    }
    let total: f64 = gaps
        .iter()
        .map(|(_, _, from)| history.periods(*from, now))
        .sum();
    let mut progress = Progress::new(total);
    for (pair, last, from) in gaps {
        tracing::info!(pair = %pair, last_update = %last, from = %from, to = %now, "filling the gap since the pair's last update on the topic from CoinAPI's history");
        if last < floor {
            tracing::warn!(pair = %pair, last_update = %last, backfill_max = ?max, "the gap is longer than BACKFILL_MAX: its start stays empty");
        }
        let filled = history
            .fill(
                pair,
                (from, now),
                Some(last),
                publisher,
                &mut progress,
                shutdown,
            )
            .await;
        match filled {
            Ok(()) => {}
            Err(
                e @ (HistoryError::InvalidKey(_)
                | HistoryError::Publish(_)
                | HistoryError::Stopped { .. }),
            ) => return Err(e.into()),
            // Live updates go on; the gap stays, said loudly with how to fill it.
            Err(e) => tracing::error!(
                pair = %pair, error = %e,
                fill_with = %format!("producer --source coinapi-history --pairs {pair} --since {} --until {}", common::model::format_time(from), common::model::format_time(now)),
                "the gap was not filled; going on with live updates"
            ),
        }
    }
    progress.log("gap fill done");
    Ok(())
}
