//! The one-shot run: both sides read in one snapshot, the settlement, the report assembled,
//! printed, and stored in `comparison_runs`.

use std::collections::BTreeMap;

use common::{config::ConfigError, window::WindowSpec};

use crate::{
    accuracy::{self, Agg, Key, StreamWindow},
    batch::{incremental, queries, queries::Snapshot, Scope},
    cli::{Command, Format, Settings, SourceArgs},
    report::{assemble, Report, Sides},
    serve,
    settle::{self, Settlement},
};

/// The settlement of both sides read in the snapshot `conn`: the groups' offsets, then the
/// windows that would fail checked for raw rows the aggregator has not read.
pub async fn settlement(
    conn: &mut sqlx::MySqlConnection,
    source: &SourceArgs,
    spec: WindowSpec,
    (stream, batch): (&BTreeMap<Key, StreamWindow>, &BTreeMap<Key, Agg>),
) -> anyhow::Result<Settlement> {
    let mut settlement = settle::read(conn, &source.raw_group, &source.group).await?;
    if settlement.aggregator_behind() {
        let candidates = accuracy::failing(stream, batch, spec.size_us, &settlement);
        settle::check_unread(conn, spec, &mut settlement, candidates).await?;
    }
    Ok(settlement)
}

/// Builds the report of a scope from the database: everything it judges by is read in one
/// consistent snapshot. The batch side is incremental where it can be ([`incremental`]); `full`
/// recomputes everything.
pub async fn build_report(
    pool: &sqlx::MySqlPool,
    source: &SourceArgs,
    full: bool,
) -> anyhow::Result<Report> {
    let Some(spec) = source.spec(&mut *pool.acquire().await?).await? else {
        return Err(ConfigError::new(
            "AGGREGATOR_GROUP",
            format!(
                "no window spec recorded for group {:?}: run the aggregator first or pass --window",
                source.group
            ),
        )
        .into());
    };
    let scope = source.scope();
    let lock = if scope == Scope::default() {
        incremental::Lock::try_acquire(pool, &source.group).await?
    } else {
        None
    };
    let report = read_report(pool, source, spec, full, lock.as_ref()).await;
    if let Some(lock) = lock {
        lock.release().await;
    }
    report
}

/// [`build_report`] once the lock (if any) is held: the snapshot, then what the batch side stores.
async fn read_report(
    pool: &sqlx::MySqlPool,
    source: &SourceArgs,
    spec: WindowSpec,
    full: bool,
    lock: Option<&incremental::Lock>,
) -> anyhow::Result<Report> {
    let scope = source.scope();
    let mut snap = Snapshot::begin(pool).await?;
    let conn = snap.conn();
    let (batch, batch_mode, update) =
        incremental::batch_in(conn, spec, &source.group, &scope, full, lock).await?;
    let stream = queries::stream(conn, &scope).await?;
    let counts = queries::update_counts(conn, &scope).await?;
    let settlement = settlement(conn, source, spec, (&stream, &batch.windows)).await?;
    let services = queries::services(conn).await?;
    let batch_latency_ms = queries::batch_latency(conn, batch.seconds).await?;
    snap.end().await?;
    if let (Some(lock), Some(update)) = (lock, update) {
        incremental::store(pool, spec, lock, update).await?;
    }
    Ok(Report {
        batch_mode,
        ..assemble(Sides {
            group: &source.group,
            spec,
            stream: &stream,
            batch: &batch,
            counts: &counts,
            settlement: &settlement,
            services,
            batch_latency_ms,
        })
    })
}

/// Stores the run in `comparison_runs`.
pub async fn store(pool: &sqlx::MySqlPool, r: &Report) -> anyhow::Result<()> {
    let a = &r.accuracy;
    sqlx::query(
        "INSERT INTO comparison_runs (run_at, consumer_group, window_us, slide_us, windows_compared, mismatches, \
         missing, extra, open_windows, passed, batch_seconds, report) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(r.run_at.naive_utc())
    .bind(&r.group)
    .bind(r.spec.size_us)
    .bind(r.spec.slide_us)
    .bind(a.windows_compared as i64)
    .bind(a.mismatches as i64)
    .bind(a.missing as i64)
    .bind(a.extra as i64)
    .bind(a.open as i64)
    .bind(a.passed && r.update_count_mismatches == 0)
    .bind(r.batch_seconds)
    .bind(r.to_json())
    .execute(pool)
    .await?;
    Ok(())
}

/// Runs one comparison (a signal stops it at once: nothing is written until the report is ready),
/// or serves the dashboard.
pub async fn run(settings: Settings, ctx: common::Context) -> anyhow::Result<()> {
    if let Some(Command::Serve(serve)) = settings.command {
        return serve::run(serve, ctx).await;
    }
    let pool = common::prepare(&settings.mysql, None).await?;
    let report = build_report(&pool, &settings.source, settings.report.full).await?;
    store(&pool, &report).await?;
    pool.close().await;
    let out = &settings.report;
    let text = match out.format {
        Format::Table => report.to_table(),
        Format::Json => report.to_json(),
        Format::Markdown => report.to_markdown(),
        Format::Html => report.to_html(),
    };
    match &out.output {
        Some(path) => std::fs::write(path, text)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?,
        None => print!("{text}"),
    }
    if let Some(path) = &out.html {
        std::fs::write(path, report.to_html())
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
        tracing::info!(path = %path.display(), "HTML report written");
    }
    let passed = report.accuracy.passed && report.update_count_mismatches == 0;
    if out.fail_on_mismatch && report.accuracy.compared_nothing() {
        anyhow::bail!(
            "accuracy check failed: nothing was compared ({} batch windows, none matched a stream window; {} pending): is --group {:?} the aggregator's group, and has it written?",
            report.accuracy.windows_compared,
            report.accuracy.pending,
            settings.source.group
        );
    }
    if out.fail_on_mismatch && !passed {
        anyhow::bail!(
            "accuracy check failed: {} mismatching, {} missing, {} extra windows, {} update-count mismatches{}",
            report.accuracy.mismatches,
            report.accuracy.missing,
            report.accuracy.extra,
            report.update_count_mismatches,
            report
                .accuracy
                .worst
                .first()
                .map(|d| format!("; worst: {}/{} window starting {} µs: {}", d.base, d.quote, d.start_us, d.what))
                .unwrap_or_default()
        );
    }
    Ok(())
}
