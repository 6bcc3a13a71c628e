//! The built-in simulator ([`model`]: pure, seeded): paced or as fast as possible, in wall-clock
//! or simulated event time.

pub mod model;

use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::{
    publisher::Publisher,
    report::{Reporter, SourceFigures},
    Settings, FLUSH_TIMEOUT,
};
use model::{SimConfig, Simulator};

/// Simulates until the count is reached or shutdown, on a blocking thread.
pub async fn run(
    settings: &Settings,
    publisher: Publisher,
    reporter: Reporter,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let pairs = match settings.pair_count {
        Some(n) => model::generate_pairs(n as usize),
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
    tokio::task::spawn_blocking(move || simulate(&config, &run, publisher, reporter, shutdown))
        .await?
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

fn simulate(
    config: &SimConfig,
    run: &SimRun,
    mut publisher: Publisher,
    reporter: Reporter,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (rate, count, stats_every) = (run.rate, run.count, run.stats_every);
    let mut sim = Simulator::new(config);
    let mut totals = SourceFigures {
        started: Some(Instant::now()),
        ..SourceFigures::default()
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
        while let Some(mut u) = sim.pop_ready(now) {
            // Received when released, as an update a feed delivers late: the hold is the
            // network's, not the pipeline's.
            u.received_at = Some(wall);
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
    for mut u in sim.drain() {
        u.received_at = Some(Utc::now());
        publisher.send(&u)?;
    }
    let flushed = publisher.flush(FLUSH_TIMEOUT);
    reporter.report(&totals, &publisher, true);
    flushed.context("flushing at shutdown")?;
    Ok(())
}
