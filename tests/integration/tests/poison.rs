//! Bad records never stall a lane: a record too large for the DLQ producer among valid requests
//! is stored truncated, with its origin, and every valid request behind it is delivered.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use switchboard::demo::demo_envelope;
use switchboard::kafka::EmbeddedKafka;
use switchboard_integration_tests::{FcmFixture, headers_of, wait_until};

const WAIT: Duration = Duration::from_secs(60);

/// A producer that may write records far above librdkafka's default 1 MB limit, as an outside
/// producer configured for large records would.
fn large_record_producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.max.bytes", "8000000")
        .set("linger.ms", "5")
        .create()
        .unwrap()
}

/// Every DLQ record's headers, by name.
fn dlq_headers(brokers: &str, topic: &str, expected: usize) -> Vec<Vec<(String, String)>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "poison-dlq-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut records = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while records.len() < expected && std::time::Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        records.push(headers_of(&message.unwrap()));
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_too_large_for_the_dlq_never_stalls_the_lane() {
    let topic = "poison-requests";
    let cluster = EmbeddedKafka::start(1, &[topic.to_string()], 1).unwrap();
    let brokers = cluster.bootstrap_servers().to_string();
    let fixture = FcmFixture::start(|_| {}).await;
    let config = fixture.host_config(&brokers, topic, "g-poison");
    let host = switchboard::start(config.clone()).await.unwrap();

    // One partition, so every valid request after the bad record is behind it.
    let producer = large_record_producer(&brokers);
    let oversize = "x".repeat(2 << 20);
    for i in 0..400u64 {
        let value = match i {
            100 => oversize.clone(),
            200 => "\u{0}not json".to_string(),
            _ => demo_envelope(i),
        };
        producer
            .send(
                FutureRecord::to(topic)
                    .key(&format!("k{i}"))
                    .payload(&value),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let stats = fixture.sim.stats.clone();
    let counters = host.counters.clone();
    assert!(
        wait_until(WAIT, || stats.snapshot().delivered >= 398).await,
        "valid requests behind the bad record were not delivered: {:?} {:?}",
        stats.snapshot(),
        counters.snapshot()
    );
    assert!(
        wait_until(WAIT, || counters.snapshot().dead_lettered >= 2).await,
        "{:?}",
        counters.snapshot()
    );
    let dlq = dlq_headers(&brokers, &config.kafka.dlq_topic, 2);
    assert_eq!(dlq.len(), 2, "{dlq:?}");
    let header = |record: &Vec<(String, String)>, name: &str| {
        record
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let truncated = dlq
        .iter()
        .find(|r| header(r, "sb-truncated").is_some())
        .expect("the oversize record is in the DLQ, truncated");
    assert_eq!(
        header(truncated, "sb-original-bytes").as_deref(),
        Some("2097152")
    );
    assert_eq!(
        header(truncated, "sb-origin-offset").as_deref(),
        Some("100")
    );
    assert_eq!(
        header(truncated, "sb-reason-class").as_deref(),
        Some("undecodable")
    );
    let stopping = tokio::time::timeout(Duration::from_secs(30), host.stop()).await;
    assert!(
        matches!(stopping, Ok(Ok(()))),
        "the host did not stop: {stopping:?}"
    );
    assert_eq!(stats.snapshot().duplicates, 0);
}
