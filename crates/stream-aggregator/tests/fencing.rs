//! Ownership fencing on the real MariaDB: a flush still in flight at a former owner when a new
//! owner restores the partition must be refused, and the new owner's flushes must go through.
//! (Before the epochs, the late write of the former owner won and the new owner, fenced instead,
//! dropped the messages it had already read.)

use common::{window::WindowSpec, Pair};
use consumer::offsets::OffsetStore;
use stream_aggregator::{
    aggregator::to_result,
    engine::{Mode, PartitionEngine, Specs},
    store::{self, FlushOutcome, PartFlush},
};
use testkit::TestDb;

const GROUP: &str = "g";
const TOPIC: &str = "t";
const MIN: i64 = 60_000_000;

fn specs() -> Specs {
    Specs::one(WindowSpec::tumbling(MIN))
}

/// A flush of `engine` after applying `n` events at offsets `from..from + n`.
fn flush(
    engine: &mut PartitionEngine,
    (epoch, seen_seq): (i64, i64),
    base: Option<i64>,
    from: i64,
    n: i64,
) -> PartFlush {
    let pair: Pair = "BTC/USD".parse().unwrap();
    for i in from..from + n {
        engine.apply(pair, i * 1_000_000, 1.0 + i as f64);
    }
    let results = engine
        .take_emissions(Mode::Update)
        .iter()
        .map(|e| to_result(e, &GROUP.into()))
        .collect();
    PartFlush {
        partition: 0,
        epoch,
        base_offset: base,
        next_offset: from + n,
        specs: specs().list().to_vec(),
        lateness_us: MIN,
        snapshot: engine.snapshot(),
        results,
        late: Vec::new(),
        dead: Vec::new(),
        new_seen: engine.take_new_seen(),
        seen_seq,
        seen_cut: None,
        encoded: Vec::new(),
        unpublished: Vec::new(),
        replayed: Vec::new(),
    }
}

fn offsets() -> OffsetStore {
    OffsetStore::new(GROUP, TOPIC)
}

async fn restore(db: &TestDb) -> store::Restored {
    store::restore(&db.pool, &offsets(), 0, &specs(), MIN)
        .await
        .unwrap()
}

async fn write(db: &TestDb, f: &PartFlush) -> FlushOutcome {
    store::write_flush(&db.pool, &offsets(), "test", &mut [f.clone()])
        .await
        .unwrap()
}

async fn stored_offset(db: &TestDb) -> i64 {
    sqlx::query_scalar(
        "SELECT next_offset FROM kafka_offsets WHERE consumer_group = ? AND topic = ?",
    )
    .bind(GROUP)
    .bind(TOPIC)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_former_owners_late_write_is_refused_not_the_new_owners() {
    let db = TestDb::new().await;

    // Instance A owns partition 0 and commits offsets 0..10.
    let mut a = restore(&db).await;
    assert_eq!(a.next_offset, None);
    let first = flush(&mut a.engine, (a.epoch, a.seen_seq), None, 0, 10);
    assert!(matches!(write(&db, &first).await, FlushOutcome::Committed));

    // A builds its next flush (offsets 10..20) but it is still in flight when a rebalance gives
    // the partition to instance B, which restores from what MySQL holds.
    let a_late = flush(
        &mut a.engine,
        (a.epoch, first.written_seen_seq()),
        Some(10),
        10,
        10,
    );
    let mut b = restore(&db).await;
    assert!(b.epoch > a.epoch);
    assert_eq!(b.next_offset, Some(10));

    // A's write lands afterwards: refused, nothing of it written.
    match write(&db, &a_late).await {
        FlushOutcome::Fenced(ps) => assert_eq!(ps, vec![0]),
        FlushOutcome::Committed => panic!("the former owner's late write went through"),
    }
    assert_eq!(stored_offset(&db).await, 10);

    // B re-reads 10..20 itself and writes: accepted.
    let b_flush = flush(&mut b.engine, (b.epoch, b.seen_seq), Some(10), 10, 10);
    assert!(matches!(
        write(&db, &b_flush).await,
        FlushOutcome::Committed
    ));
    assert_eq!(stored_offset(&db).await, 20);
}

#[tokio::test]
async fn a_restore_waits_for_a_flush_in_progress_and_sees_what_it_committed() {
    let db = TestDb::new().await;
    let mut a = restore(&db).await;
    let f = flush(&mut a.engine, (a.epoch, a.seen_seq), None, 0, 5);
    assert!(matches!(write(&db, &f).await, FlushOutcome::Committed));
    // A flush transaction of A in progress: owner row locked, offsets moved, not committed yet.
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("SELECT epoch FROM aggregator_owner FOR UPDATE")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    sqlx::query("UPDATE kafka_offsets SET next_offset = 7")
        .execute(&mut *tx)
        .await
        .unwrap();
    let pool = db.pool.clone();
    let restoring = tokio::spawn(async move {
        store::restore(&pool, &offsets(), 0, &specs(), MIN)
            .await
            .unwrap()
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!restoring.is_finished(), "the restore waits for the flush");
    tx.commit().await.unwrap();
    let b = restoring.await.unwrap();
    assert_eq!(
        b.next_offset,
        Some(7),
        "the restore sees the flush's offsets"
    );
    assert!(b.epoch > a.epoch);
}
