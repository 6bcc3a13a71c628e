//! The one-shot run: both sides of every spec compared read in one snapshot, the settlement,
//! the report assembled (a section per spec), printed, and stored in `comparison_runs` (a row
//! per spec).

use std::collections::BTreeMap;

use crate::{
    accuracy::{self, Agg, Key, StreamWindow},
    batch::{
        incremental::{self, BatchMode, Update},
        queries::{self, CountCheck, RecordedSpec, Snapshot},
        Batch, Scope,
    },
    cli::{Command, Format, Settings, SourceArgs},
    report::{assemble, Report, Sides, SpecReport},
    serve, services,
    settle::{self, Settlement},
};

/// The settlement of one spec's sides read in the snapshot `conn`: the groups' offsets and the
/// spec's watermark, then the windows that would fail checked for raw rows the aggregator has
/// not read.
pub async fn settlement(
    conn: &mut sqlx::MySqlConnection,
    source: &SourceArgs,
    recorded: RecordedSpec,
    (stream, batch): (&BTreeMap<Key, StreamWindow>, &BTreeMap<Key, Agg>),
) -> anyhow::Result<Settlement> {
    let mut settlement = settle::read(conn, &source.raw_group, &source.group, recorded).await?;
    if settlement.aggregator_behind() {
        let spec = recorded.spec;
        let candidates = accuracy::failing(stream, batch, spec.size_us, &settlement);
        settle::check_unread(conn, spec, &mut settlement, candidates).await?;
    }
    Ok(settlement)
}

/// Builds the report of a scope from the database: a section per spec of the group (or the one
/// `--window` names), everything it judges by read in one consistent snapshot. The batch side is
/// incremental where it can be ([`incremental`]); `full` recomputes everything.
pub async fn build_report(
    pool: &sqlx::MySqlPool,
    source: &SourceArgs,
    full: bool,
) -> anyhow::Result<Report> {
    let specs = source.specs(&mut *pool.acquire().await?).await?;
    let lock = if source.scope() == Scope::default() {
        incremental::Lock::try_acquire(pool, &source.group).await?
    } else {
        None
    };
    let report = read_report(pool, source, &specs, full, lock.as_ref()).await;
    if let Some(lock) = lock {
        lock.release().await;
    }
    report
}

/// What one spec's section is made of, as read in the snapshot.
struct SpecRead {
    spec: common::window::WindowSpec,
    batch: Batch,
    batch_mode: BatchMode,
    update: Option<Update>,
    stream: BTreeMap<Key, StreamWindow>,
    counts: BTreeMap<Key, CountCheck>,
    settlement: Settlement,
    batch_latency_ms: Option<[f64; 4]>,
}

/// One spec's sides and figures, read in the snapshot `conn`.
async fn read_spec(
    conn: &mut sqlx::MySqlConnection,
    source: &SourceArgs,
    recorded: RecordedSpec,
    full: bool,
    lock: Option<&incremental::Lock>,
) -> anyhow::Result<SpecRead> {
    let (scope, spec, group) = (source.scope(), recorded.spec, source.group.as_str());
    let (batch, batch_mode, update) =
        incremental::batch_in(conn, spec, group, &scope, full, lock).await?;
    let stream = queries::stream(conn, group, spec, &scope).await?;
    let counts = queries::update_counts(conn, group, spec, &scope).await?;
    let settlement = settlement(conn, source, recorded, (&stream, &batch.windows)).await?;
    let batch_latency_ms = queries::batch_latency(conn, batch.seconds).await?;
    Ok(SpecRead {
        spec,
        batch,
        batch_mode,
        update,
        stream,
        counts,
        settlement,
        batch_latency_ms,
    })
}

/// [`build_report`] once the lock (if any) is held: the snapshot, then what the batch side stores.
async fn read_report(
    pool: &sqlx::MySqlPool,
    source: &SourceArgs,
    specs: &[RecordedSpec],
    full: bool,
    lock: Option<&incremental::Lock>,
) -> anyhow::Result<Report> {
    let mut snap = Snapshot::begin(pool).await?;
    let conn = snap.conn();
    let services = services::read(conn, &source.run()).await?;
    let mut reads = Vec::with_capacity(specs.len());
    for recorded in specs {
        reads.push(read_spec(conn, source, *recorded, full, lock).await?);
    }
    snap.end().await?;
    let mut sections = Vec::with_capacity(reads.len());
    for r in reads {
        if let (Some(lock), Some(update)) = (lock, r.update) {
            incremental::store(pool, r.spec, lock, update).await?;
        }
        sections.push(SpecReport {
            batch_mode: r.batch_mode,
            ..assemble(Sides {
                group: &source.group,
                spec: r.spec,
                stream: &r.stream,
                batch: &r.batch,
                counts: &r.counts,
                settlement: &r.settlement,
                services: services.clone(),
                batch_latency_ms: r.batch_latency_ms,
            })
        });
    }
    Ok(Report::new(&source.group, sections))
}

/// Stores the run in `comparison_runs`: a row per spec, with its section as the report.
pub async fn store(pool: &sqlx::MySqlPool, r: &Report) -> anyhow::Result<()> {
    for s in &r.sections {
        let a = &s.accuracy;
        sqlx::query(
            "INSERT INTO comparison_runs (run_at, consumer_group, window_us, slide_us, windows_compared, mismatches, \
             missing, extra, open_windows, passed, batch_seconds, report) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(r.run_at.naive_utc())
        .bind(&r.group)
        .bind(s.spec.size_us)
        .bind(s.spec.slide_us)
        .bind(a.windows_compared as i64)
        .bind(a.mismatches as i64)
        .bind(a.missing as i64)
        .bind(a.extra as i64)
        .bind(a.open as i64)
        .bind(s.passed())
        .bind(s.batch_seconds)
        .bind(s.to_json())
        .execute(pool)
        .await?;
    }
    Ok(())
}

/// Why `--fail-on-mismatch` fails the run, if it does: the first section that compared nothing
/// or did not pass, named by its spec.
pub fn failure(report: &Report) -> Option<String> {
    if let Some(s) = report
        .sections
        .iter()
        .find(|s| s.accuracy.compared_nothing())
    {
        return Some(format!(
            "accuracy check failed for window {}: nothing was compared ({} batch windows, none matched a stream window; {} pending): is --group {:?} the aggregator's group, and has it written?",
            s.label, s.accuracy.windows_compared, s.accuracy.pending, report.group
        ));
    }
    let s = report.sections.iter().find(|s| !s.passed())?;
    let worst = s
        .accuracy
        .worst
        .first()
        .map(|d| {
            format!(
                "; worst: {}/{} window starting {} µs: {}",
                d.base, d.quote, d.start_us, d.what
            )
        })
        .unwrap_or_default();
    Some(format!(
        "accuracy check failed for window {}: {} mismatching, {} missing, {} extra windows, {} update-count mismatches{worst}",
        s.label,
        s.accuracy.mismatches,
        s.accuracy.missing,
        s.accuracy.extra,
        s.update_count_mismatches,
    ))
}

/// With `--retention` and no `--since`: only windows that start inside the retention, whose raw
/// updates and stream rows no service has pruned (every service keeps the same `RETENTION`).
fn retained_scope(settings: &Settings) -> SourceArgs {
    let mut source = settings.source.clone();
    let retention = settings.retention.retention;
    if !retention.is_zero() && source.since.is_none() {
        // A minute inside the cutoff: the services' clocks and passes run a little apart.
        source.since = Some(chrono::Utc::now() - retention + chrono::Duration::minutes(1));
        tracing::info!(since = ?source.since, "retention: comparing the windows inside it");
    }
    source
}

/// `--retention`: this run's own tables (its reports, its batch windows and marks) pruned for the
/// group, one pass after the report.
async fn prune(pool: &sqlx::MySqlPool, settings: &Settings, ctx: &common::Context) {
    use common::retention::{self, Prune};
    let r = &settings.retention;
    if r.retention.is_zero() {
        return;
    }
    let group = &settings.source.group;
    let jobs = [
        Prune::new("comparison_runs", "run_at").scoped("consumer_group", group.as_str()),
        Prune::new("compare_batch_windows", "start_us")
            .micros()
            .scoped("consumer_group", group.as_str()),
        Prune::new("compare_batch_marks", "taken_at").scoped("consumer_group", group.as_str()),
    ];
    let cutoff = chrono::Utc::now() - r.retention;
    let pruning = retention::pruning_pool(pool);
    if let Err(e) = retention::pass(&pruning, &jobs, cutoff, &ctx.shutdown).await {
        tracing::warn!(error = %e, "retention: pruning compare's tables failed; the next run tries again");
    }
    pruning.close().await;
}

/// Runs one comparison (a signal stops it at once: nothing is written until the report is ready),
/// or serves the dashboard.
pub async fn run(settings: Settings, ctx: common::Context) -> anyhow::Result<()> {
    if let Some(Command::Serve(serve)) = settings.command {
        return serve::run(serve, ctx).await;
    }
    let pool = common::prepare(&settings.mysql, None).await?;
    let source = retained_scope(&settings);
    let report = build_report(&pool, &source, settings.report.full).await?;
    store(&pool, &report).await?;
    prune(&pool, &settings, &ctx).await;
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
    match failure(&report) {
        Some(why) if out.fail_on_mismatch => anyhow::bail!(why),
        _ => Ok(()),
    }
}
