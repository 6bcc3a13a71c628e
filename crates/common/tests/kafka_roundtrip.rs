//! A rate update goes through the real broker and comes back equal; malformed JSON from the
//! broker gives the typed error.

use std::time::Duration;

use chrono::Utc;
use common::{
    kafka::{consumer_config, producer_config},
    ModelError, RateUpdate,
};
use rdkafka::{
    consumer::{CommitMode, Consumer, StreamConsumer},
    producer::{FutureProducer, FutureRecord},
    Message,
};
use testkit::TestKafka;

async fn send(producer: &FutureProducer, topic: &str, key: &str, payload: &[u8]) {
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(payload),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("delivery");
}

#[tokio::test]
async fn rate_update_round_trips_through_the_broker() {
    let kafka = TestKafka::new();
    let topic = kafka.create_topic("raw", 3).await;
    let producer: FutureProducer = producer_config(&kafka.bootstrap_servers).create().unwrap();

    let sent: Vec<RateUpdate> = ["BTC/USD", "ETH/EUR", "SOL/USD"]
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let now = Utc::now();
            RateUpdate::new(
                now,
                p.parse().unwrap(),
                100.0 + i as f64 + 0.123456789,
                Some(now),
            )
            .unwrap()
        })
        .collect();
    for u in &sent {
        send(&producer, &topic, &u.key(), u.to_json().as_bytes()).await;
    }
    send(&producer, &topic, "BTC/USD", b"{\"time\":\"not a time\"").await;

    let consumer: StreamConsumer =
        consumer_config(&kafka.bootstrap_servers, &kafka.group("roundtrip"))
            .create()
            .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut got = Vec::new();
    let mut errors = Vec::new();
    while got.len() + errors.len() < sent.len() + 1 {
        let msg = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("message within 30 s")
            .expect("consume");
        let key = std::str::from_utf8(msg.key().unwrap()).unwrap().to_owned();
        match RateUpdate::from_json(msg.payload().unwrap()) {
            Ok(u) => {
                assert_eq!(key, u.key(), "keyed by pair");
                got.push(u)
            }
            Err(e) => errors.push(e),
        }
        consumer.store_offset_from_message(&msg).unwrap();
    }
    consumer.commit_consumer_state(CommitMode::Sync).unwrap();

    got.sort_by_key(|u| u.key());
    let mut expected = sent.clone();
    expected.sort_by_key(|u| u.key());
    assert_eq!(got, expected);
    assert_eq!(errors.len(), 1);
    assert!(
        matches!(errors[0], ModelError::Json { .. }),
        "{:?}",
        errors[0]
    );
}
