//! CoinAPI REST polling: every `--interval` a round of requests for the configured pairs
//! ([`poller`]) through the HTTP client ([`client`]), within the quota rules.

pub mod client;
pub mod poller;

use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::history;
use crate::{
    publisher::Publisher,
    report::{Reporter, SourceFigures},
    Settings, FLUSH_TIMEOUT,
};
use client::CoinApiClient;
use poller::{Poller, PollerConfig};

/// Polls CoinAPI until shutdown.
pub async fn run(
    settings: &Settings,
    mut publisher: Publisher,
    reporter: Reporter,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let key = settings.key().cloned().expect("checked by resolve_source");
    let client = CoinApiClient::new(&settings.coinapi_base_url, key, settings.http_timeout)?;
    let mut poller = Poller::new(
        client,
        &settings.pairs,
        PollerConfig {
            max_retries: settings.max_retries,
            backoff_initial: settings.backoff_initial,
            backoff_max: settings.backoff_max,
        },
    );
    tracing::info!(
        pairs = settings.pairs.len(),
        requests_per_round = poller.plan().len(),
        interval = ?settings.interval,
        base_url = %settings.coinapi_base_url,
        "polling CoinAPI"
    );
    // The gap since each pair's last update on the topic, from CoinAPI's history, first.
    history::backfill(settings, &mut publisher, settings.interval, &shutdown).await?;
    let mut totals = SourceFigures {
        started: Some(Instant::now()),
        ..SourceFigures::default()
    };
    let mut ticker = tokio::time::interval(settings.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heartbeat = tokio::time::interval(Duration::from_secs(5));
    let outcome = loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = heartbeat.tick() => {
                reporter.observe(&totals, &publisher);
                continue;
            }
            _ = shutdown.cancelled() => break Ok(()),
        }
        let round = match poller.poll_round(&mut publisher, &shutdown).await {
            Ok(r) => r,
            Err(e) => break Err(anyhow::Error::new(e)),
        };
        totals.produced += round.published + round.unchanged;
        totals.unchanged += round.unchanged;
        totals.malformed += round.malformed;
        totals.failed_requests += round.failed_requests;
        totals.skipped += round.skipped.len() as u64;
        if round.quota.remaining.is_some() {
            totals.quota_remaining = round.quota.remaining;
        }
        tracing::info!(
            published = round.published,
            unchanged = round.unchanged,
            skipped = round.skipped.len(),
            malformed = round.malformed,
            failed_requests = round.failed_requests,
            delivered_total = publisher.delivered(),
            quota_remaining = ?round.quota.remaining,
            "poll round"
        );
        reporter.report_async(&totals, &publisher, false).await;
    };
    // Flushing blocks (librdkafka waits for acknowledgements); keep it off the async workers.
    let flushed = tokio::task::block_in_place(|| publisher.flush(FLUSH_TIMEOUT));
    reporter.report_async(&totals, &publisher, true).await;
    outcome?;
    flushed.context("flushing at shutdown")?;
    Ok(())
}
