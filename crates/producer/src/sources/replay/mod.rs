//! A file replay ([`parse`]: CoinAPI bodies or our own messages, one per line), paced by event
//! time at `--speed` or as fast as possible.

pub mod parse;

use std::{
    io::BufRead,
    time::{Duration, Instant},
};

use anyhow::Context;
use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::{
    publisher::Publisher,
    report::{Reporter, SourceFigures},
    sources::rest::client::excerpt,
    Settings, FLUSH_TIMEOUT,
};

/// Replays the file until its end or shutdown, on a blocking thread.
pub async fn run(
    settings: &Settings,
    publisher: Publisher,
    reporter: Reporter,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let file = settings.file.clone().expect("checked by resolve_source");
    let (speed, every) = (settings.speed, settings.stats_interval);
    tokio::task::spawn_blocking(move || replay(&file, speed, every, publisher, reporter, shutdown))
        .await?
}

fn replay(
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
    let mut pacer = parse::Pacer::new(speed);
    let mut totals = SourceFigures {
        started: Some(Instant::now()),
        ..SourceFigures::default()
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
        match parse::parse_line(&line, Utc::now()) {
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
                tracing::warn!(line = i + 1, error = %e, text = %excerpt(line.as_bytes()), "bad replay line skipped");
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
