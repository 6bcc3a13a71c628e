//! testkit: each test gets its own freshly migrated database and its own topics and consumer
//! groups on the real servers, and leaves nothing behind, so tests run in parallel. A
//! dev-dependency of the other crates only: nothing of it is built into a service.
//!
//! Servers come from `scripts/infra.sh up`:
//! - `COINSTREAM_TEST_MYSQL_URL` (default `mysql://coinstream_test:coinstream_test@127.0.0.1:3306`):
//!   an account allowed to create and drop databases named `cstest_*`.
//! - `COINSTREAM_TEST_READER_MYSQL_URL` (default: the same server as account
//!   `coinstream_reader:coinstream_reader`): an account that may only read (`SELECT`) the `cstest_*`
//!   databases, for what must work read-only (the dashboard).
//! - `KAFKA_BOOTSTRAP_SERVERS` (default `127.0.0.1:9092`).
//!
//! Set `COINSTREAM_TEST_KEEP=1` to keep a test's database after it, for debugging.
//!
//! [`services`] runs the service binaries as processes (logs, signals, waiting with a bound);
//! [`broker`] starts a private broker for tests that restart it; [`prometheus`] a private
//! Prometheus server that scrapes the services; [`mariadb`] a private MariaDB server set up the
//! test's way (TLS with the test's certificates).

pub mod broker;
pub mod mariadb;
pub mod prometheus;
pub mod proxy;
pub mod services;

use std::{str::FromStr, time::Duration};

use rdkafka::{
    consumer::{Consumer, StreamConsumer},
    producer::{FutureProducer, FutureRecord},
    ClientConfig, Message, Offset, TopicPartitionList,
};
use sqlx::{
    mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions},
    ConnectOptions, Connection, Executor,
};

use common::kafka::{ensure_topics, TopicSpec};

const DEFAULT_TEST_MYSQL_URL: &str = "mysql://coinstream_test:coinstream_test@127.0.0.1:3306";

fn keep() -> bool {
    std::env::var("COINSTREAM_TEST_KEEP").is_ok_and(|v| v == "1")
}

/// A short random suffix for unique names.
pub fn unique_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// The server URL (no database) the kit uses for test databases.
pub fn test_mysql_url() -> String {
    std::env::var("COINSTREAM_TEST_MYSQL_URL").unwrap_or_else(|_| DEFAULT_TEST_MYSQL_URL.to_owned())
}

/// The broker the kit uses.
pub fn test_bootstrap_servers() -> String {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// A freshly created and migrated database, dropped when this value is dropped.
#[derive(Debug)]
pub struct TestDb {
    /// Pool on the test database.
    pub pool: MySqlPool,
    /// Database name (`cstest_<random>`).
    pub name: String,
    server_url: String,
}

impl TestDb {
    /// Creates `cstest_<random>` and applies the migrations.
    pub async fn new() -> Self {
        Self::create(true).await
    }

    /// Creates `cstest_<random>` without applying migrations.
    pub async fn empty() -> Self {
        Self::create(false).await
    }

    async fn create(migrate: bool) -> Self {
        let server_url = test_mysql_url();
        let name = format!("cstest_{}", unique_suffix());
        let mut admin = MySqlConnectOptions::from_str(&server_url)
            .expect("COINSTREAM_TEST_MYSQL_URL is not a mysql:// URL")
            .connect()
            .await
            .unwrap_or_else(|e| {
                panic!("cannot reach the test MySQL server ({e}); run `scripts/infra.sh up` first")
            });
        admin
            .execute(format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4").as_str())
            .await
            .expect("CREATE DATABASE for the test");
        let _ = admin.close().await;
        let pool = MySqlPoolOptions::new()
            .max_connections(8)
            .connect_with(Self::options_for(&server_url, &name))
            .await
            .expect("connecting to the test database");
        if migrate {
            common::db::migrate(&pool, &name)
                .await
                .expect("migrations apply");
        }
        TestDb {
            pool,
            name,
            server_url,
        }
    }

    fn options_for(server_url: &str, name: &str) -> MySqlConnectOptions {
        MySqlConnectOptions::from_str(server_url)
            .expect("COINSTREAM_TEST_MYSQL_URL is not a mysql:// URL")
            .database(name)
            .timezone(Some("+00:00".to_owned()))
    }

    /// Connection options for the test database (same account as the kit).
    pub fn connect_options(&self) -> MySqlConnectOptions {
        Self::options_for(&self.server_url, &self.name)
    }

    /// `DATABASE_URL` for a service process under test.
    pub fn database_url(&self) -> String {
        format!("{}/{}", self.server_url.trim_end_matches('/'), self.name)
    }

    /// `DATABASE_URL` of this database for the read-only account (`SELECT` only).
    pub fn reader_database_url(&self) -> String {
        let server = std::env::var("COINSTREAM_TEST_READER_MYSQL_URL").unwrap_or_else(|_| {
            let host = self
                .server_url
                .rsplit_once('@')
                .map_or("127.0.0.1:3306", |(_, h)| h);
            format!("mysql://coinstream_reader:coinstream_reader@{host}")
        });
        format!("{}/{}", server.trim_end_matches('/'), self.name)
    }

    /// Kills every session on this database, as a failover would (the kit's own pool reconnects);
    /// returns how many.
    pub async fn kill_sessions(&self) -> usize {
        let mut admin = self
            .connect_options()
            .database("")
            .connect()
            .await
            .expect("an admin connection");
        let killed = kill_sessions_on(&mut admin, &self.name).await;
        let _ = admin.close().await;
        killed
    }
}

/// Kills the sessions on database `name` but `conn`'s own; returns how many.
async fn kill_sessions_on(conn: &mut sqlx::MySqlConnection, name: &str) -> usize {
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT CAST(id AS SIGNED) FROM information_schema.processlist WHERE db = ? AND id <> CONNECTION_ID()",
    )
    .bind(name)
    .fetch_all(&mut *conn)
    .await
    .unwrap_or_default();
    let mut killed = 0;
    for id in ids {
        if conn.execute(format!("KILL {id}").as_str()).await.is_ok() {
            killed += 1;
        }
    }
    killed
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if keep() {
            eprintln!("keeping test database {}", self.name);
            return;
        }
        let url = self.server_url.clone();
        let name = self.name.clone();
        // Drop runs inside or outside a runtime; a thread with its own runtime works in both.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut c) = MySqlConnectOptions::from_str(&url)
                    .expect("test URL")
                    .connect()
                    .await
                {
                    // A test that failed may have left a transaction open (its locks would
                    // make the DROP wait forever): end the database's sessions first.
                    kill_sessions_on(&mut c, &name).await;
                    let _ = c
                        .execute(format!("DROP DATABASE IF EXISTS `{name}`").as_str())
                        .await;
                    let _ = c.close().await;
                }
            });
        })
        .join();
    }
}

/// A consumer (`bin`) of `topic` in `group`, with a session timeout of 6 s (a dead member's
/// partitions move soon).
pub fn consumer_command(
    bin: &str,
    db: &TestDb,
    kafka: &TestKafka,
    topic: &str,
    group: &str,
) -> std::process::Command {
    let mut cmd = service_command(bin, db, &kafka.bootstrap_servers);
    cmd.args([
        "--topic",
        topic,
        "--group",
        group,
        "--session-timeout",
        "6s",
    ]);
    cmd
}

/// A command running service binary `bin` against the test database and broker.
pub fn service_command(bin: &str, db: &TestDb, bootstrap_servers: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(bin);
    cmd.env("DATABASE_URL", db.database_url())
        .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap_servers)
        .env("RUST_LOG", "info")
        .env("LOG_FORMAT", "pretty")
        .env("STATS_INTERVAL", "2s")
        .env_remove("COINAPI_KEY");
    cmd
}

/// Topics and consumer groups with names no other test uses. Topics are not deleted afterwards:
/// names never repeat, and deleting topics while other tests produce has crashed the test broker
/// (Tansu 0.6.0), so the kit keeps to the operations the broker is known to handle.
#[derive(Debug)]
pub struct TestKafka {
    pub bootstrap_servers: String,
    suffix: String,
}

impl TestKafka {
    pub fn new() -> Self {
        Self::on(&test_bootstrap_servers())
    }

    /// Unique names on the broker at `bootstrap_servers` (a [`broker::PrivateBroker`]).
    pub fn on(bootstrap_servers: &str) -> Self {
        TestKafka {
            bootstrap_servers: bootstrap_servers.to_owned(),
            suffix: unique_suffix(),
        }
    }

    /// `test-<base>-<suffix>`: the name for this test's copy of topic `base`.
    pub fn topic_name(&self, base: &str) -> String {
        format!("test-{base}-{}", self.suffix)
    }

    /// A consumer group name unique to this test.
    pub fn group(&self, base: &str) -> String {
        format!("test-{base}-{}", self.suffix)
    }

    /// Creates this test's topic `base` with `partitions` partitions and returns its name.
    pub async fn create_topic(&self, base: &str, partitions: i32) -> String {
        let name = self.topic_name(base);
        ensure_topics(
            &common::kafka::plain(&self.bootstrap_servers),
            &[TopicSpec::new(&name, partitions, 1)],
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|e| {
            panic!("cannot create topic {name} ({e}); run `scripts/infra.sh up` first")
        });
        name
    }
}

/// One message read back from a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

impl TestKafka {
    /// Every message currently in `topic` (up to each partition's high watermark), in partition
    /// and offset order. Reads by assignment, so no consumer group or rebalance is involved.
    pub async fn read_all(&self, topic: &str) -> Vec<TopicRecord> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap_servers)
            .set("group.id", format!("test-reader-{}", unique_suffix()))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create()
            .expect("reader consumer");
        let timeout = Duration::from_secs(10);
        let metadata = consumer
            .fetch_metadata(Some(topic), timeout)
            .expect("topic metadata");
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        let mut tpl = TopicPartitionList::new();
        let mut highs = std::collections::HashMap::new();
        for p in partitions {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, timeout)
                .expect("watermarks");
            if high > low {
                tpl.add_partition_offset(topic, p, Offset::Offset(low))
                    .expect("tpl");
                highs.insert(p, high);
            }
        }
        let mut out = Vec::new();
        if highs.is_empty() {
            return out;
        }
        consumer.assign(&tpl).expect("assign");
        let mut done = std::collections::HashSet::new();
        while done.len() < highs.len() {
            let msg = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
                .await
                .expect("reading the topic back stalled for 30 s")
                .expect("consume");
            if msg.offset() >= highs[&msg.partition()] {
                continue;
            }
            out.push(TopicRecord {
                partition: msg.partition(),
                offset: msg.offset(),
                key: msg.key().map(<[u8]>::to_vec),
                payload: msg.payload().map(<[u8]>::to_vec),
            });
            if msg.offset() + 1 >= highs[&msg.partition()] {
                done.insert(msg.partition());
            }
        }
        out.sort_by_key(|r| (r.partition, r.offset));
        out
    }
}

impl TestKafka {
    /// Publishes `(key, payload)` messages in order and waits until every one is acknowledged.
    pub async fn produce(&self, topic: &str, messages: &[(String, Vec<u8>)]) {
        self.produce_to(topic, None, messages).await;
    }

    /// Like [`TestKafka::produce`], but message `i` goes to partition `i % partitions` whatever
    /// its key: every partition gets messages.
    pub async fn produce_spread(
        &self,
        topic: &str,
        partitions: i32,
        messages: &[(String, Vec<u8>)],
    ) {
        self.produce_to(topic, Some(partitions), messages).await;
    }

    async fn produce_to(&self, topic: &str, spread: Option<i32>, messages: &[(String, Vec<u8>)]) {
        let records: Vec<(Option<&[u8]>, &[u8])> = messages
            .iter()
            .map(|(k, p)| (Some(k.as_bytes()), p.as_slice()))
            .collect();
        self.produce_records(topic, spread, &records).await;
    }

    /// Publishes records whose keys and payloads may be any bytes (or no key), in order, and
    /// waits until every one is acknowledged; with `spread`, record `i` goes to partition
    /// `i % spread`.
    pub async fn produce_records(
        &self,
        topic: &str,
        spread: Option<i32>,
        records: &[(Option<&[u8]>, &[u8])],
    ) {
        let producer: FutureProducer = common::kafka::producer_config(&self.bootstrap_servers)
            .set("message.max.bytes", "2000000")
            .create()
            .expect("test producer");
        let mut pending = Vec::with_capacity(records.len().min(5_000));
        for (i, (key, payload)) in records.iter().enumerate() {
            let mut record = FutureRecord::<[u8], [u8]>::to(topic).payload(*payload);
            if let Some(k) = key {
                record = record.key(*k);
            }
            if let Some(n) = spread {
                record = record.partition(i as i32 % n);
            }
            let delivery = producer
                .send_result(record)
                .map_err(|(e, _)| e)
                .expect("enqueue test message");
            pending.push(delivery);
            if pending.len() >= 5_000 {
                for d in pending.drain(..) {
                    d.await
                        .expect("delivery future")
                        .map_err(|(e, _)| e)
                        .expect("delivered");
                }
            }
        }
        for d in pending {
            d.await
                .expect("delivery future")
                .map_err(|(e, _)| e)
                .expect("delivered");
        }
    }
}

impl Default for TestKafka {
    fn default() -> Self {
        Self::new()
    }
}
