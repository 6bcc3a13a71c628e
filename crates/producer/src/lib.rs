//! producer: fetches exchange rates (CoinAPI REST, a built-in simulator, or a file replay) and
//! publishes them to topic `raw_coin_data`, keyed `BASE/QUOTE` so one pair stays on one partition,
//! in order. Every delivery is checked; a message that cannot be delivered stops the producer with
//! an error rather than being dropped.

pub mod coinapi;
pub mod poller;
pub mod publisher;
pub mod replay;
pub mod settings;
pub mod simulate;
pub mod ws;

use std::{
    io::BufRead,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use anyhow::Context;
use chrono::Utc;
use common::{
    metrics as m,
    observe::Health,
    stats::{Counters, Details, ProducerFigures, StatsRecorder},
};
use tokio_util::sync::CancellationToken;

pub use settings::{Settings, Source};

use crate::{
    coinapi::CoinApiClient,
    poller::{Poller, PollerConfig},
    publisher::Publisher,
    simulate::{SimConfig, Simulator},
};

/// How long shutdown waits for outstanding deliveries.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// Running totals of a producer run.
#[derive(Debug, Default, Clone)]
struct Totals {
    /// Updates fetched, generated or read.
    produced: u64,
    unchanged: u64,
    malformed: u64,
    failed_requests: u64,
    skipped: u64,
    quota_remaining: Option<i64>,
    reconnects: u64,
    /// When the source loop started (for the run's wall-clock rate).
    started: Option<Instant>,
}

/// Reports the producer's figures: a statistics line, the metrics, the readiness, and a
/// `service_stats` row when MySQL is there (the producer does not need it otherwise).
#[derive(Debug, Clone)]
struct Reporter {
    /// Set once MySQL is reachable (connected in the background).
    recorder: Arc<OnceLock<StatsRecorder>>,
    runtime: tokio::runtime::Handle,
    health: Arc<Health>,
}

impl Reporter {
    /// For the blocking sources (simulate, replay), which run on a blocking thread.
    fn report(&self, totals: &Totals, publisher: &Publisher, last: bool) {
        self.runtime
            .block_on(self.report_async(totals, publisher, last));
    }

    /// The loop turned: liveness, readiness and metrics (cheap; call it every few hundred
    /// updates or seconds).
    fn observe(&self, totals: &Totals, publisher: &Publisher) {
        self.health.turn();
        let failing = publisher.failing();
        self.health.set_ready(if failing == 0 {
            Ok(())
        } else {
            Err(format!(
                "{failing} messages wait to be re-sent after failed deliveries"
            ))
        });
        m::set_total(&m::UPDATES_PRODUCED, totals.produced);
        m::set_total(
            &m::DELIVERIES.with_label_values(&["delivered"]),
            publisher.delivered(),
        );
        m::set_total(
            &m::DELIVERIES.with_label_values(&["failed"]),
            publisher.failed(),
        );
    }

    async fn report_async(&self, totals: &Totals, publisher: &Publisher, last: bool) {
        self.observe(totals, publisher);
        let counters = Counters {
            events_in: totals.produced,
            events_out: publisher.delivered(),
            dead_letters: totals.malformed,
            details: Details {
                producer: Some(ProducerFigures {
                    unchanged: totals.unchanged,
                    malformed: totals.malformed,
                    failed_requests: totals.failed_requests,
                    retried_deliveries: publisher.retried(),
                    sent: publisher.sent(),
                    quota_remaining: totals.quota_remaining,
                    reconnects: totals.reconnects,
                }),
                ..Details::default()
            },
            ..Counters::default()
        };
        let usage = match self.recorder.get() {
            Some(recorder) => recorder.record_or_warn(&counters).await,
            None => common::stats::process_usage(),
        };
        let elapsed = totals
            .started
            .map(|s| s.elapsed().as_secs_f64())
            .unwrap_or(0.0);
        tracing::info!(
            produced = totals.produced,
            sent = publisher.sent(),
            delivered = publisher.delivered(),
            retried = publisher.retried(),
            unchanged = totals.unchanged,
            malformed = totals.malformed,
            failed_requests = totals.failed_requests,
            quota_remaining = ?totals.quota_remaining,
            reconnects = totals.reconnects,
            cpu_seconds = usage.cpu_seconds,
            peak_rss_mb = usage.peak_rss_bytes as f64 / 1_048_576.0,
            elapsed_seconds = elapsed,
            delivered_per_second = if elapsed > 0.0 { (publisher.delivered() as f64 / elapsed).round() } else { 0.0 },
            "{}",
            if last { "producer finished" } else { "producer statistics" }
        );
    }
}

/// Connects MySQL in the background for the statistics rows; the producer does not wait for it.
/// A bad `DATABASE_URL` is still a configuration error at start-up.
fn connect_statistics(
    mysql: &common::config::MySqlArgs,
) -> anyhow::Result<Arc<OnceLock<StatsRecorder>>> {
    mysql.connect_options()?;
    let cell = Arc::new(OnceLock::new());
    let (set, mysql) = (cell.clone(), mysql.clone());
    tokio::spawn(async move {
        match common::db::connect_and_migrate(&mysql).await {
            Ok(pool) => {
                let _ = set.set(StatsRecorder::new(pool, "producer"));
            }
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                "no MySQL: statistics go to the log and the metrics only"
            ),
        }
    });
    Ok(cell)
}

/// Runs the producer until its source is exhausted or it is asked to stop.
pub async fn run(settings: Settings, ctx: common::Context) -> anyhow::Result<()> {
    let shutdown = ctx.shutdown.clone();
    let (source, defaulted) = settings.resolve_source()?;
    match (source, defaulted) {
        (Source::Simulate, true) => tracing::info!(
            "COINAPI_KEY is not set: using the built-in simulator (set COINAPI_KEY or --source to change)"
        ),
        _ => tracing::info!(source = ?source, "producer starting"),
    }
    settings.kafka.ensure_topics(&[&settings.topic]).await?;
    let reporter = Reporter {
        recorder: connect_statistics(&settings.mysql)?,
        runtime: tokio::runtime::Handle::current(),
        health: ctx.health.clone(),
    };
    let publisher = Publisher::with_config(&settings.kafka.producer_config()?, &settings.topic)?;
    reporter.health.set_ready(Ok(()));
    let statistics = reporter.recorder.clone();
    let result = match source {
        Source::Coinapi => run_coinapi(&settings, publisher, reporter, shutdown).await,
        Source::CoinapiWs => run_coinapi_ws(&settings, publisher, reporter, shutdown).await,
        Source::Simulate => {
            let pairs = match settings.pair_count {
                Some(n) => simulate::generate_pairs(n as usize),
                None => settings.pairs.clone(),
            };
            let config = SimConfig {
                pairs,
                seed: settings.seed.unwrap_or_else(rand::random),
                jitter: settings.jitter,
                late_fraction: settings.late_fraction,
                late_by: settings.late_by,
                duplicate_fraction: settings.duplicate_fraction,
            };
            tracing::info!(pairs = config.pairs.len(), seed = config.seed, rate = settings.rate, count = ?settings.count, "simulating");
            let run = SimRun {
                rate: settings.rate,
                count: settings.count,
                stats_every: settings.stats_interval,
                event_interval: settings.event_interval,
                event_start: settings.event_start,
            };
            tokio::task::spawn_blocking(move || {
                run_simulate(&config, &run, publisher, reporter, shutdown)
            })
            .await?
        }
        Source::Replay => {
            let file = settings.file.clone().expect("checked by resolve_source");
            let (speed, every) = (settings.speed, settings.stats_interval);
            tokio::task::spawn_blocking(move || {
                run_replay(&file, speed, every, publisher, reporter, shutdown)
            })
            .await?
        }
    };
    if let Some(recorder) = statistics.get() {
        recorder.close().await;
    }
    result
}

async fn run_coinapi(
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
    let mut totals = Totals {
        started: Some(Instant::now()),
        ..Totals::default()
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

/// The WebSocket source's totals as the producer's, reported every `every`.
struct WsReporter {
    reporter: Reporter,
    totals: Totals,
    every: Duration,
    last: Instant,
}

impl ws::Observer for WsReporter {
    async fn tick(&mut self, t: &ws::WsTotals, publisher: &Publisher) {
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

async fn run_coinapi_ws(
    settings: &Settings,
    mut publisher: Publisher,
    reporter: Reporter,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut source = ws::WsSource::new(ws::WsConfig {
        url: settings.coinapi_ws_url.clone(),
        key: settings.key().cloned().expect("checked by resolve_source"),
        pairs: settings.pairs.clone(),
        backoff_initial: settings.backoff_initial,
        backoff_max: settings.backoff_max,
    });
    tracing::info!(pairs = settings.pairs.len(), url = %settings.coinapi_ws_url, "subscribing to CoinAPI exchange rates over WebSocket");
    let mut observer = WsReporter {
        reporter,
        totals: Totals {
            started: Some(Instant::now()),
            ..Totals::default()
        },
        every: settings.stats_interval,
        last: Instant::now(),
    };
    let outcome = source.run(&mut publisher, &shutdown, &mut observer).await;
    let flushed = tokio::task::block_in_place(|| publisher.flush(FLUSH_TIMEOUT));
    ws::Observer::tick(&mut observer, &source.totals, &publisher).await;
    observer
        .reporter
        .report_async(&observer.totals, &publisher, true)
        .await;
    outcome?;
    flushed.context("flushing at shutdown")?;
    Ok(())
}

/// Pacing of a simulated run.
#[derive(Debug, Clone)]
struct SimRun {
    rate: f64,
    count: Option<u64>,
    stats_every: Duration,
    event_interval: Option<Duration>,
    event_start: Option<chrono::DateTime<Utc>>,
}

fn run_simulate(
    config: &SimConfig,
    run: &SimRun,
    mut publisher: Publisher,
    reporter: Reporter,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (rate, count, stats_every) = (run.rate, run.count, run.stats_every);
    let mut sim = Simulator::new(config);
    let mut totals = Totals {
        started: Some(Instant::now()),
        ..Totals::default()
    };
    let start = Instant::now();
    let mut next_report = start + stats_every;
    let per_event = (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate));
    // Simulated event time ends "now" for a counted run.
    let event_step = run
        .event_interval
        .map(|d| chrono::Duration::from_std(d).unwrap_or_default());
    let event_origin = match (run.event_start, event_step, count) {
        (Some(start), _, _) => start,
        (None, Some(step), Some(n)) => Utc::now() - step * n.min(i32::MAX as u64) as i32,
        _ => Utc::now(),
    };
    while count.is_none_or(|c| totals.produced < c) && !shutdown.is_cancelled() {
        if let Some(step) = per_event {
            let due = start + step.mul_f64(totals.produced as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        let wall = Utc::now();
        let now = match event_step {
            Some(step) => event_origin + step * totals.produced.min(i32::MAX as u64) as i32,
            None => wall,
        };
        sim.generate_at(now, wall);
        totals.produced += 1;
        while let Some(u) = sim.pop_ready(now) {
            publisher.send(&u)?;
        }
        if totals.produced % 1024 == 0 || per_event.is_some() {
            publisher.check()?;
            if totals.produced % 256 == 0 {
                reporter.observe(&totals, &publisher);
            }
            if Instant::now() >= next_report {
                reporter.report(&totals, &publisher, false);
                next_report += stats_every;
            }
        }
    }
    for u in sim.drain() {
        publisher.send(&u)?;
    }
    let flushed = publisher.flush(FLUSH_TIMEOUT);
    reporter.report(&totals, &publisher, true);
    flushed.context("flushing at shutdown")?;
    Ok(())
}

fn run_replay(
    file: &std::path::Path,
    speed: Option<f64>,
    stats_every: Duration,
    mut publisher: Publisher,
    reporter: Reporter,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let reader: Box<dyn BufRead> = if file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(file)
            .with_context(|| format!("opening REPLAY_FILE {}", file.display()))?;
        Box::new(std::io::BufReader::new(f))
    };
    let mut pacer = replay::Pacer::new(speed);
    let mut totals = Totals {
        started: Some(Instant::now()),
        ..Totals::default()
    };
    let mut lines = 0u64;
    let mut next_report = Instant::now() + stats_every;
    for (i, line) in reader.lines().enumerate() {
        if shutdown.is_cancelled() {
            break;
        }
        let line = line.with_context(|| format!("reading {} at line {}", file.display(), i + 1))?;
        lines += 1;
        if line.trim().is_empty() {
            continue;
        }
        match replay::parse_line(&line, Utc::now()) {
            Ok(updates) => {
                for u in updates {
                    let wait = pacer.wait_for(u.time, Instant::now());
                    if !wait.is_zero() {
                        std::thread::sleep(wait);
                    }
                    publisher.send(&u)?;
                    totals.produced += 1;
                }
            }
            Err(e) => {
                totals.malformed += 1;
                tracing::warn!(line = i + 1, error = %e, text = %coinapi::excerpt(line.as_bytes()), "bad replay line skipped");
            }
        }
        publisher.check()?;
        if i % 256 == 0 {
            reporter.observe(&totals, &publisher);
        }
        if Instant::now() >= next_report {
            reporter.report(&totals, &publisher, false);
            next_report += stats_every;
        }
    }
    let flushed = publisher.flush(FLUSH_TIMEOUT);
    tracing::info!(
        lines,
        published = publisher.sent(),
        bad_lines = totals.malformed,
        "replay summary"
    );
    reporter.report(&totals, &publisher, true);
    flushed.context("flushing at shutdown")?;
    Ok(())
}
