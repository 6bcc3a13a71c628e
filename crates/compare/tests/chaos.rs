//! Chaos, on a private broker and MariaDB: the producer at 300 updates/s (jitter, duplicates,
//! late events) for 65 s, with raw-consumer, two stream-aggregators and update-counter, while
//! faults are injected every few seconds: consumers SIGKILLed and restarted at once (both
//! aggregators at once too), the broker restarted, the services' MySQL connections killed. Every
//! consumer runs with `--exit-idle` from the start (one that drains during a stall is started
//! again); once the producer is done, every consumer drains and exits 0 within 120 s, and:
//! - `raw_coin_data` holds exactly the distinct updates on the topic (first occurrence wins);
//! - compare passes window by window (`--fail-on-mismatch`);
//! - `coin_update_count` equals `stream_agg`'s counts for every window.
//!
//! Seeded: `COINSTREAM_CHAOS_SEED` (else from the clock); the seed and every fault are printed.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Child, Command},
    time::{Duration, Instant},
};

use common::RateUpdate;
use rand::{rngs::SmallRng, seq::SliceRandom, Rng, SeedableRng};
use testkit::{
    broker::PrivateBroker,
    services::{kill, log_dir, log_to, pipeline_command, service_binary, tail, wait_for},
    TestDb, TestKafka,
};

const RATE: u32 = 300;
const SECONDS: u32 = 65;

/// The services of one run and where their logs go.
struct Run<'a> {
    db: &'a TestDb,
    kafka: &'a TestKafka,
    raw: String,
    agg: String,
    logs: PathBuf,
    seed: u64,
}

impl Run<'_> {
    fn cmd(&self, service: &str, extra: &[&str]) -> Command {
        let mut c = pipeline_command(service, self.db, self.kafka, (&self.raw, &self.agg));
        // The test broker (Tansu 0.6.0) loses its storage for good when an idempotent producer
        // it saw before a restart produces again (a panic on the unknown producer epoch; README,
        // Known limitations). Without idempotence a retried send may be stored twice: the
        // pipeline deduplicates on (pair, time), which this test checks.
        c.env("KAFKA_PRODUCER_PROPERTIES", "enable.idempotence=false");
        if service == "stream-aggregator" {
            c.args(["--flush-interval", "200ms"]);
        }
        if service == "producer" {
            let seed = self.seed.to_string();
            let count = (RATE * SECONDS).to_string();
            c.args(["--source", "simulate", "--pair-count", "6", "--seed", &seed])
                .args(["--rate", &RATE.to_string(), "--count", &count])
                .args(["--jitter", "300ms", "--duplicate-fraction", "0.02"])
                .args(["--late-fraction", "0.01", "--late-by", "30s"]);
        }
        c.args(extra);
        c
    }

    /// Starts `service` (instance `name`, whose log it appends to).
    fn start(&self, service: &str, name: &str, extra: &[&str]) -> Child {
        self.cmd(service, extra)
            .stderr(log_to(&self.logs, name))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"))
    }

    fn log(&self, name: &str) -> String {
        tail(&self.logs.join(format!("{name}.log")), 40)
    }
}

/// A running consumer instance.
struct Instance {
    name: &'static str,
    service: &'static str,
    child: Child,
}

impl Instance {
    /// Drain settings: the counter waits longer, so that it reads the aggregator's last results
    /// (written when the aggregator drains).
    fn args(service: &str) -> &'static [&'static str] {
        match service {
            "update-counter" => &["--exit-idle", "30s"],
            _ => &["--exit-idle", "10s"],
        }
    }

    fn start(run: &Run<'_>, name: &'static str, service: &'static str) -> Self {
        Instance {
            name,
            service,
            child: run.start(service, name, Self::args(service)),
        }
    }

    /// Starts the instance again at once (SIGKILLed first when it runs).
    fn restart(&mut self, run: &Run<'_>) {
        kill(&mut self.child);
        self.child = run.start(self.service, self.name, Self::args(self.service));
    }
}

/// The faults the run injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    KillRawConsumer,
    KillOneAggregator,
    KillBothAggregators,
    KillUpdateCounter,
    RestartBroker,
    KillDatabaseConnections,
}

const FAULTS: [Fault; 6] = [
    Fault::KillRawConsumer,
    Fault::KillOneAggregator,
    Fault::KillBothAggregators,
    Fault::KillUpdateCounter,
    Fault::RestartBroker,
    Fault::KillDatabaseConnections,
];

/// Every kind of fault once in a random order, then random ones (the broker restarted at most
/// twice more), one every 2-5 s.
fn schedule(rng: &mut SmallRng) -> Vec<(Duration, Fault)> {
    let mut kinds = FAULTS.to_vec();
    kinds.shuffle(rng);
    let mut at = Duration::from_secs(3);
    let mut out = Vec::new();
    let mut broker_restarts = 0;
    while at < Duration::from_secs(u64::from(SECONDS) - 5) {
        let fault = kinds.pop().unwrap_or_else(|| loop {
            let f = FAULTS[rng.random_range(0..FAULTS.len())];
            if f != Fault::RestartBroker || broker_restarts < 2 {
                break f;
            }
        });
        if fault == Fault::RestartBroker {
            broker_restarts += 1;
        }
        out.push((at, fault));
        at += Duration::from_millis(rng.random_range(2_000..5_000));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn chaos_every_consumer_drains_and_the_data_is_exact() {
    let seed = std::env::var("COINSTREAM_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| chrono::Utc::now().timestamp_micros() as u64);
    println!("chaos seed: {seed} (COINSTREAM_CHAOS_SEED={seed} repeats this run)");
    let mut broker = PrivateBroker::start().await;
    let db = TestDb::new().await;
    let kafka = TestKafka::on(&broker.bootstrap_servers);
    let run = Run {
        db: &db,
        kafka: &kafka,
        raw: kafka.create_topic("raw", 3).await,
        agg: kafka.create_topic("agg", 3).await,
        logs: log_dir("chaos"),
        seed,
    };
    println!("logs: {}", run.logs.display());
    let mut rng = SmallRng::seed_from_u64(seed);
    let (mut instances, faults) = chaos(&run, &mut broker, &mut rng).await;
    println!("faults injected: {}", faults.len());
    drain(&run, &mut instances).await;
    check_raw_table(&run).await;
    check_compare(&run).await;
    check_update_counts(&run).await;
}

/// The chaos phase: services running, faults injected on schedule until the producer is done.
/// Returns the consumers, still running (draining).
async fn chaos(
    run: &Run<'_>,
    broker: &mut PrivateBroker,
    rng: &mut SmallRng,
) -> (Vec<Instance>, Vec<Fault>) {
    let mut instances = vec![
        Instance::start(run, "raw-consumer", "raw-consumer"),
        Instance::start(run, "aggregator-a", "stream-aggregator"),
        Instance::start(run, "aggregator-b", "stream-aggregator"),
        Instance::start(run, "update-counter", "update-counter"),
    ];
    let mut producer = run.start("producer", "producer", &[]);
    let started = Instant::now();
    let mut injected = Vec::new();
    for (at, fault) in schedule(rng) {
        tokio::time::sleep(at.saturating_sub(started.elapsed())).await;
        check_running(run, &mut instances);
        println!("{:>6.1} s  {fault:?}", started.elapsed().as_secs_f64());
        inject(run, broker, &mut instances, fault, rng).await;
        injected.push(fault);
    }
    let status = wait_for(&mut producer, Duration::from_secs(120)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "the producer finished ({status:?}):\n{}",
        run.log("producer")
    );
    check_running(run, &mut instances);
    (instances, injected)
}

/// Fails on an instance that exited with an error; starts again one that drained (exit 0) while
/// the producer still runs (a stall longer than its idle period).
fn check_running(run: &Run<'_>, instances: &mut [Instance]) {
    for i in instances {
        match i.child.try_wait().unwrap() {
            None => {}
            Some(status) if status.success() => {
                println!("          {} drained during a stall: started again", i.name);
                i.restart(run);
            }
            Some(status) => panic!("{} failed ({status}):\n{}", i.name, run.log(i.name)),
        }
    }
}

async fn inject(
    run: &Run<'_>,
    broker: &mut PrivateBroker,
    instances: &mut [Instance],
    fault: Fault,
    rng: &mut SmallRng,
) {
    match fault {
        Fault::KillRawConsumer => instances[0].restart(run),
        Fault::KillOneAggregator => instances[rng.random_range(1..=2)].restart(run),
        Fault::KillBothAggregators => {
            kill(&mut instances[1].child);
            kill(&mut instances[2].child);
            instances[1].restart(run);
            instances[2].restart(run);
        }
        Fault::KillUpdateCounter => instances[3].restart(run),
        Fault::RestartBroker => broker.restart().await,
        Fault::KillDatabaseConnections => {
            let killed = run.db.kill_sessions().await;
            println!("          killed {killed} MySQL connections");
        }
    }
}

/// Every consumer drains and exits 0 within 120 s of the producer's end.
async fn drain(run: &Run<'_>, instances: &mut [Instance]) {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(120);
    for i in instances {
        let left = deadline.saturating_duration_since(Instant::now());
        let status = wait_for(&mut i.child, left).await;
        assert!(
            status.is_some_and(|s| s.success()),
            "{} drained within 120 s ({status:?}):\n{}",
            i.name,
            run.log(i.name)
        );
        println!(
            "{:>10} drained, exit 0, {:.1} s after the producer",
            i.name,
            started.elapsed().as_secs_f64()
        );
    }
}

type RawKey = (String, String, i64);

/// `raw_coin_data` = the distinct updates on the topic, each with its first occurrence's rate.
async fn check_raw_table(run: &Run<'_>) {
    let mut want: BTreeMap<RawKey, u64> = BTreeMap::new();
    let records = run.kafka.read_all(&run.raw).await;
    assert!(
        records.len() >= (RATE * SECONDS) as usize,
        "{} on the topic",
        records.len()
    );
    for r in records {
        let u = RateUpdate::from_json(r.payload.as_deref().unwrap_or_default())
            .expect("the producer writes valid updates");
        let key = (
            u.pair.base.to_string(),
            u.pair.quote.to_string(),
            u.time.timestamp_micros(),
        );
        want.entry(key).or_insert(u.rate.to_bits());
    }
    let rows: Vec<(String, String, chrono::NaiveDateTime, f64)> =
        sqlx::query_as("SELECT asset_id_base, asset_id_quote, `time`, rate FROM raw_coin_data")
            .fetch_all(&run.db.pool)
            .await
            .unwrap();
    let n = rows.len();
    let got: BTreeMap<RawKey, u64> = rows
        .into_iter()
        .map(|(b, q, t, r)| ((b, q, t.and_utc().timestamp_micros()), r.to_bits()))
        .collect();
    assert_eq!(n, want.len(), "one row per distinct update");
    let differ: Vec<_> = want
        .iter()
        .filter(|(k, v)| got.get(*k) != Some(v))
        .take(3)
        .collect();
    assert!(differ.is_empty(), "rows differ from the topic: {differ:?}");
    println!("raw_coin_data: {n} rows = the distinct updates on the topic");
}

/// compare passes window by window.
async fn check_compare(run: &Run<'_>) {
    let out = Command::new(service_binary("compare"))
        .env("DATABASE_URL", run.db.database_url())
        .env("RAW_CONSUMER_GROUP", run.kafka.group("raw"))
        .args([
            "--group",
            &run.kafka.group("agg"),
            "--format",
            "json",
            "--fail-on-mismatch",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    assert!(out.status.success(), "compare failed: {stderr}\n{json}");
    assert_eq!(json["passed"], true, "{json}");
    let sections = json["sections"].as_array().unwrap();
    assert_eq!(sections.len(), 1, "the aggregator's one spec: {json}");
    let json = &sections[0];
    let a = &json["accuracy"];
    assert_eq!(a["passed"], true, "{a}");
    assert!(a["matched"].as_u64().unwrap_or(0) >= 6 * 5, "{a}");
    assert_eq!(
        (&a["missing"], &a["extra"], &a["mismatches"]),
        (&0.into(), &0.into(), &0.into()),
        "{a}"
    );
    assert_eq!(json["update_count_mismatches"], 0, "{json}");
    let late: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM late_events")
        .fetch_one(&run.db.pool)
        .await
        .unwrap();
    assert!(late > 0, "late events reached the aggregator");
    println!(
        "compare: {} windows matched, 0 missing, extra or mismatching; {late} late events",
        a["matched"]
    );
}

/// `coin_update_count` holds `stream_agg`'s count and finality for every window.
async fn check_update_counts(run: &Run<'_>) {
    let (windows, differing): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), CAST(COALESCE(SUM(c.update_count IS NULL OR c.update_count <> s.update_count \
                OR c.is_final <> s.is_final), 0) AS SIGNED) \
         FROM stream_agg s LEFT JOIN coin_update_count c ON c.asset_id_base = s.asset_id_base \
              AND c.asset_id_quote = s.asset_id_quote AND c.start_time = s.start_time AND c.end_time = s.end_time",
    )
    .fetch_one(&run.db.pool)
    .await
    .unwrap();
    let extra: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM coin_update_count c LEFT JOIN stream_agg s ON c.asset_id_base = s.asset_id_base \
              AND c.asset_id_quote = s.asset_id_quote AND c.start_time = s.start_time AND c.end_time = s.end_time \
         WHERE s.update_count IS NULL",
    )
    .fetch_one(&run.db.pool)
    .await
    .unwrap();
    assert!(windows > 0);
    assert_eq!((differing, extra), (0, 0), "of {windows} windows");
    println!("coin_update_count: {windows} windows, each equal to stream_agg's");
}
