//! `mock-kafka`: runs librdkafka's in-memory mock cluster as a broker for benchmarks.
//!
//! It prints `KAFKA_BOOTSTRAP_SERVERS=<address>` on stdout once ready and serves until killed.
//! The mock does not implement CreateTopics, so topics are created here (`--topic name:partitions`).
//! It keeps nothing across restarts and is not a correctness reference (see `../shared/KAFKA.md`):
//! use it to measure our own processes without the test broker being the bottleneck.
//!
//! The mock normally keeps only 5 MB (or 100,000 message sets) per partition and silently drops
//! older data; `--retain-all` lifts that for every topic so a pre-filled benchmark topic keeps all
//! its messages (in this process's memory).

use std::{
    ffi::{c_char, c_int, CStr, CString},
    io::Write,
};

use clap::Parser;
use rdkafka_sys as rd;

#[derive(Debug, Parser)]
#[command(name = "mock-kafka", about = "librdkafka mock cluster for benchmarks")]
struct Args {
    /// Topic to create, as name:partitions; repeatable.
    #[arg(long = "topic", value_parser = parse_topic)]
    topics: Vec<(String, i32)>,
    /// Number of mock brokers.
    #[arg(long, default_value_t = 1)]
    brokers: i32,
    /// Keep every message (the mock's default keeps 5 MB per partition).
    #[arg(long)]
    retain_all: bool,
}

#[allow(unsafe_code)]
extern "C" {
    /// `csrc/mock_retention.c`.
    fn coinstream_mock_set_retention(
        mcluster: *mut rd::RDKafkaMockCluster,
        topic: *const c_char,
        max_bytes: usize,
        max_message_sets: usize,
    ) -> c_int;
}

fn parse_topic(s: &str) -> Result<(String, i32), String> {
    let (name, parts) = s.split_once(':').unwrap_or((s, "3"));
    let parts: i32 = parts
        .parse()
        .map_err(|_| format!("bad partition count in {s:?}"))?;
    if name.is_empty() || parts < 1 {
        return Err(format!("expected name:partitions, got {s:?}"));
    }
    Ok((name.to_owned(), parts))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // SAFETY: plain librdkafka C API use: the handle and cluster live until the process ends
    // (it only ends when killed), every pointer passed is valid for the call.
    #[allow(unsafe_code)]
    unsafe {
        let mut errstr = [0 as c_char; 512];
        let rk = rd::rd_kafka_new(
            rd::rd_kafka_type_t::RD_KAFKA_PRODUCER,
            rd::rd_kafka_conf_new(),
            errstr.as_mut_ptr(),
            errstr.len(),
        );
        anyhow::ensure!(
            !rk.is_null(),
            "creating the mock's client: {}",
            CStr::from_ptr(errstr.as_ptr()).to_string_lossy()
        );
        let cluster = rd::rd_kafka_mock_cluster_new(rk, args.brokers);
        anyhow::ensure!(!cluster.is_null(), "creating the mock cluster failed");
        for (name, partitions) in &args.topics {
            let c_name = CString::new(name.as_str())?;
            let err = rd::rd_kafka_mock_topic_create(cluster, c_name.as_ptr(), *partitions, 1);
            anyhow::ensure!(
                err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR,
                "creating topic {name}: {err:?}"
            );
            if args.retain_all {
                let n =
                    coinstream_mock_set_retention(cluster, c_name.as_ptr(), usize::MAX, usize::MAX);
                anyhow::ensure!(n == *partitions, "setting retention of {name} failed");
            }
        }
        let bootstrap = CStr::from_ptr(rd::rd_kafka_mock_cluster_bootstraps(cluster));
        println!("KAFKA_BOOTSTRAP_SERVERS={}", bootstrap.to_string_lossy());
    }
    std::io::stdout().flush()?;
    loop {
        std::thread::park();
    }
}
