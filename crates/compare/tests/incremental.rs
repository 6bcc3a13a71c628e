//! The one-shot compare's incremental batch side on real MariaDB: after a run over every window,
//! the next recomputes only the windows over rows added since (and the re-read margin), and its
//! result equals a full recomputation each time: after new rows in old windows (a raw row that
//! arrived late), after a late event the aggregator recorded, after nothing changed, with
//! `--full`, while another run holds the lock, after the raw table was emptied and refilled (ids
//! went backwards; then other rows at the same ids), and after a transaction that had taken its
//! id before 25,000 others committed after them.

use std::collections::BTreeMap;

use common::window::WindowSpec;
use compare::{
    accuracy::{Agg, Key},
    batch::{self, Scope, REREAD_IDS},
    incremental::{self, BatchMode},
};
use testkit::TestDb;

const GROUP: &str = "agg";
const PAIRS: i64 = 5;
/// Updates per pair, 100 ms apart: 2,000 s, 200 windows of 10 s per pair.
const STEPS: i64 = 20_000;
/// 2024-08-05 12:00:00 UTC.
const T0: i64 = 1_722_859_200_000_000;

fn spec() -> WindowSpec {
    WindowSpec::tumbling(10_000_000)
}

fn time(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .unwrap()
        .format("%Y-%m-%d %H:%M:%S%.6f")
        .to_string()
}

/// Raw rows `(pair, time µs, rate, partition, offset)`, inserted in this order (ids follow it).
async fn insert_raw(db: &TestDb, rows: &[(i64, i64, f64, i32, i64)]) {
    for chunk in rows.chunks(1000) {
        let values: Vec<String> = chunk
            .iter()
            .map(|(p, t, r, part, off)| {
                format!("('C{p}', 'USD', {r}, '{}', {part}, {off})", time(*t))
            })
            .collect();
        sqlx::query(&format!(
            "INSERT INTO raw_coin_data (asset_id_base, asset_id_quote, rate, `time`, kafka_partition, kafka_offset) \
             VALUES {}",
            values.join(",")
        ))
        .execute(&db.pool)
        .await
        .unwrap();
    }
}

/// Every pair's updates, interleaved by time as a live pipeline stores them.
fn updates() -> Vec<(i64, i64, f64, i32, i64)> {
    let mut rows = Vec::new();
    for step in 0..STEPS {
        for p in 0..PAIRS {
            let rate = 100.0 * (p + 1) as f64 + (step % 97) as f64 / 10.0;
            rows.push((p, T0 + step * 100_000, rate, p as i32, step));
        }
    }
    rows
}

async fn full(db: &TestDb) -> BTreeMap<Key, Agg> {
    batch::compute(
        &mut db.pool.acquire().await.unwrap(),
        spec(),
        GROUP,
        &Scope::default(),
    )
    .await
    .unwrap()
    .windows
}

async fn run(db: &TestDb, force_full: bool) -> (BTreeMap<Key, Agg>, BatchMode) {
    let (b, mode) = incremental::batch(&db.pool, spec(), GROUP, &Scope::default(), force_full)
        .await
        .unwrap();
    (b.windows, mode)
}

fn assert_same(got: &BTreeMap<Key, Agg>, want: &BTreeMap<Key, Agg>, when: &str) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{when}: the same windows"
    );
    for (k, w) in want {
        let g = &got[k];
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
        assert!(
            g.count == w.count && close(g.sum, w.sum) && g.min == w.min && g.max == w.max,
            "{when}: window {k:?}: {g:?} != {w:?}"
        );
    }
}

fn recomputed(mode: BatchMode) -> usize {
    match mode {
        BatchMode::Incremental { recomputed, .. } => recomputed,
        BatchMode::Full => panic!("expected an incremental run"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_run_recomputes_only_what_changed_and_equals_a_full_recomputation() {
    let db = TestDb::new().await;
    let all = updates();
    insert_raw(&db, &all).await;
    let windows = (PAIRS * STEPS / 100) as usize;

    // First run: nothing stored yet.
    let (got, mode) = run(&db, false).await;
    assert_eq!(mode, BatchMode::Full);
    assert_eq!(got.len(), windows);
    assert_same(&got, &full(&db).await, "first run");

    // Nothing new: only the windows of the last REREAD_IDS rows are read again.
    let (got, mode) = run(&db, false).await;
    let margin_windows = (REREAD_IDS / PAIRS / 100 + 1) * PAIRS;
    assert!(
        (1..=margin_windows as usize + PAIRS as usize).contains(&recomputed(mode)),
        "{mode:?}, margin {margin_windows}"
    );
    assert_same(&got, &full(&db).await, "no change");

    // A raw row arriving late in the first window of C0 (new id, old time), and 20,000 ids of
    // new updates after it: the old window is recomputed because of its row's id, not its time.
    let late_raw = [(0, T0 + 50_001, 999.0, 0, 1_000_000)];
    insert_raw(&db, &late_raw).await;
    let more: Vec<_> = (STEPS..STEPS + REREAD_IDS / PAIRS)
        .flat_map(|step| (0..PAIRS).map(move |p| (p, T0 + step * 100_000, 50.0, p as i32, step)))
        .collect();
    insert_raw(&db, &more).await;
    let (got, mode) = run(&db, false).await;
    let first = ("C0".to_string(), "USD".to_string(), T0);
    assert_eq!(got[&first].count, 101, "the late raw row counts");
    assert_eq!(got[&first].max, 999.0);
    assert!(
        recomputed(mode) < got.len() / 2,
        "{mode:?} of {}",
        got.len()
    );
    assert_same(&got, &full(&db).await, "late raw row and new updates");

    // The aggregator recorded an early update of C1 as late (not applied): it leaves its window.
    // Then 20,000 ids of new updates, so that its raw row is far below the margin.
    let (part, offset) = (1, 35);
    let t = T0 + offset * 100_000;
    sqlx::query(
        "INSERT INTO late_events (consumer_group, topic, kafka_partition, kafka_offset, window_us, \
         slide_us, asset_id_base, asset_id_quote, rate, `time`, watermark, windows_missed, applied) \
         SELECT ?, 't', kafka_partition, kafka_offset, ?, ?, asset_id_base, asset_id_quote, rate, \
                `time`, ?, 1, FALSE \
         FROM raw_coin_data WHERE asset_id_base = 'C1' AND kafka_partition = ? AND kafka_offset = ?",
    )
    .bind(GROUP)
    .bind(spec().size_us)
    .bind(spec().slide_us)
    .bind(time(t + 60_000_000))
    .bind(part)
    .bind(offset)
    .execute(&db.pool)
    .await
    .unwrap();
    let step0 = STEPS + REREAD_IDS / PAIRS;
    let more: Vec<_> = (step0..step0 + REREAD_IDS / PAIRS)
        .flat_map(|step| (0..PAIRS).map(move |p| (p, T0 + step * 100_000, 60.0, p as i32, step)))
        .collect();
    insert_raw(&db, &more).await;
    let (got, mode) = run(&db, false).await;
    let third = ("C1".to_string(), "USD".to_string(), T0);
    assert_eq!(
        got[&third].count, 99,
        "the late event is left out: {:?}",
        got[&third]
    );
    assert!(recomputed(mode) < got.len() / 2, "{mode:?}");
    assert_same(&got, &full(&db).await, "a late event recorded");

    // Another compare holds the lock on the stored windows: this run computes directly.
    {
        use sqlx::{ConnectOptions, Connection};
        let mut other = db.connect_options().connect().await.unwrap();
        let got: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT GET_LOCK({}, 0)",
            incremental::LOCK_NAME_SQL
        ))
        .bind(GROUP)
        .fetch_one(&mut other)
        .await
        .unwrap();
        assert_eq!(got, Some(1));
        let (got, mode) = run(&db, false).await;
        assert_eq!(mode, BatchMode::Full, "the lock is held elsewhere");
        assert_same(&got, &full(&db).await, "lock held elsewhere");
        other.close().await.unwrap();
    }

    // --full: everything recomputed and stored afresh; the next run is incremental again.
    let (got, mode) = run(&db, true).await;
    assert_eq!(mode, BatchMode::Full);
    assert_same(&got, &full(&db).await, "--full");
    assert!(matches!(
        run(&db, false).await.1,
        BatchMode::Incremental { .. }
    ));

    // The raw table emptied and refilled with fewer rows: ids went backwards, so all again.
    sqlx::query("TRUNCATE TABLE raw_coin_data")
        .execute(&db.pool)
        .await
        .unwrap();
    insert_raw(&db, &all[..1000]).await;
    let (got, mode) = run(&db, false).await;
    assert_eq!(mode, BatchMode::Full);
    assert_same(&got, &full(&db).await, "refilled table");

    // Emptied and refilled again with more rows, other rates: the ids did not go backwards and
    // most rows are not new, but the row at the marked id is another one.
    sqlx::query("TRUNCATE TABLE raw_coin_data")
        .execute(&db.pool)
        .await
        .unwrap();
    let other: Vec<_> = all[..1500]
        .iter()
        .map(|&(p, t, r, part, off)| (p, t, r + 1.0, part, off))
        .collect();
    insert_raw(&db, &other).await;
    let (got, mode) = run(&db, false).await;
    assert_eq!(mode, BatchMode::Full, "other rows at the marked id");
    assert_same(&got, &full(&db).await, "refilled with more rows");
}

/// A raw consumer's transaction takes its id, then 25,000 rows with higher ids commit before it
/// does: the run after it commits still finds it (it reads again from the mark taken 10 s before
/// the previous run, not a fixed number of ids).
#[tokio::test(flavor = "multi_thread")]
async fn a_row_committed_after_many_higher_ids_is_still_found() {
    use sqlx::{Connection, Executor};
    let db = TestDb::new().await;
    let all = updates();
    insert_raw(&db, &all).await;
    assert_eq!(run(&db, false).await.1, BatchMode::Full);
    tokio::time::sleep(batch::REREAD_MARGIN + std::time::Duration::from_secs(1)).await;

    // Takes its id now (an old window of C0), commits later.
    let mut slow = db.pool.acquire().await.unwrap();
    let mut tx = slow.begin().await.unwrap();
    tx.execute(
        format!(
            "INSERT INTO raw_coin_data (asset_id_base, asset_id_quote, rate, `time`) \
             VALUES ('C0', 'USD', 999.0, '{}')",
            time(T0 + 50_001)
        )
        .as_str(),
    )
    .await
    .unwrap();
    let more: Vec<_> = (STEPS..STEPS + 25_000 / PAIRS)
        .flat_map(|step| (0..PAIRS).map(move |p| (p, T0 + step * 100_000, 50.0, p as i32, step)))
        .collect();
    insert_raw(&db, &more).await;
    let (got, mode) = run(&db, false).await;
    recomputed(mode);
    let first = ("C0".to_string(), "USD".to_string(), T0);
    assert_eq!(got[&first].count, 100, "not committed yet");
    tx.commit().await.unwrap();
    drop(slow);

    let (got, mode) = run(&db, false).await;
    recomputed(mode);
    assert_eq!(got[&first].count, 101, "the late-committed row counts");
    assert_eq!(got[&first].max, 999.0);
    assert_same(&got, &full(&db).await, "a row committed after higher ids");
}
