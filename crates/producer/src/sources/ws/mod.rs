//! CoinAPI's exchange rates over WebSocket ([`source`]: hello, heartbeats, reconnects;
//! [`protocol`]: the frames), reported as the producer's figures.

pub mod protocol;
pub mod source;

use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::{
    publisher::Publisher,
    report::{Reporter, SourceFigures},
    Settings, FLUSH_TIMEOUT,
};
pub use source::{Observer, WsConfig, WsFigures, WsSource};

/// The WebSocket source's totals as the producer's, reported every `every`.
struct WsReporter {
    reporter: Reporter,
    totals: SourceFigures,
    every: Duration,
    last: Instant,
}

impl Observer for WsReporter {
    async fn tick(&mut self, t: &WsFigures, publisher: &Publisher) {
        self.totals.produced = t.received;
        self.totals.unchanged = t.unchanged;
        self.totals.malformed = t.malformed;
        self.totals.reconnects = t.reconnects;
        if self.last.elapsed() >= self.every {
            self.last = Instant::now();
            self.reporter
                .report_async(&self.totals, publisher, false)
                .await;
        } else {
            self.reporter.observe(&self.totals, publisher);
        }
    }
}

/// Takes CoinAPI's pushed feed until shutdown.
pub async fn run(
    settings: &Settings,
    mut publisher: Publisher,
    reporter: Reporter,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut source = WsSource::new(WsConfig {
        url: settings.coinapi_ws_url.clone(),
        key: settings.key().cloned().expect("checked by resolve_source"),
        pairs: settings.pairs.clone(),
        backoff_initial: settings.backoff_initial,
        backoff_max: settings.backoff_max,
    });
    // The gap since each pair's last update on the topic, from CoinAPI's REST history, first.
    super::history::backfill(settings, &mut publisher, settings.interval, &shutdown).await?;
    tracing::info!(pairs = settings.pairs.len(), url = %settings.coinapi_ws_url, "subscribing to CoinAPI exchange rates over WebSocket");
    let mut observer = WsReporter {
        reporter,
        totals: SourceFigures {
            started: Some(Instant::now()),
            ..SourceFigures::default()
        },
        every: settings.stats_interval,
        last: Instant::now(),
    };
    let outcome = source.run(&mut publisher, &shutdown, &mut observer).await;
    let flushed = tokio::task::block_in_place(|| publisher.flush(FLUSH_TIMEOUT));
    Observer::tick(&mut observer, &source.totals, &publisher).await;
    observer
        .reporter
        .report_async(&observer.totals, &publisher, true)
        .await;
    outcome?;
    flushed.context("flushing at shutdown")?;
    Ok(())
}
