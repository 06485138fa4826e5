//! Where the test broker (nisshi, `make services`) answers otherwise than Apache Kafka, and
//! whether the host depends on it. Each difference its own notes list is shown here as seen,
//! next to what the host needs instead; `docs/OPERATIONS.md` quotes these tests.
//!
//! - Offset-commit metadata is not returned. The host commits offsets only, and reads back
//!   only offsets.
//! - ListOffsets by timestamp is listed as wrong; in the three cases here (before the first
//!   record, between two, past the last) it answers as Kafka does. The host never asks for
//!   offsets by time anyway (`dlq replay --since` filters on the `dead_at` header as it reads).
//! - Concurrent rebalances can fail a member with UNKNOWN_MEMBER_ID. librdkafka rejoins, and
//!   three hosts started at the same moment still deliver every request once.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use switchboard::config::DedupBackend;
use switchboard::demo::{demo_envelope, produce};
use switchboard_integration_tests::{FcmFixture, RealBroker, wait_until};

const WAIT: Duration = Duration::from_secs(120);

fn consumer(brokers: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap()
}

/// Ten records on partition 0, the i-th stamped `base + i` seconds.
async fn produce_stamped(brokers: &str, topic: &str, base_ms: i64) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    for i in 0..10i64 {
        let payload = format!("record-{i}");
        producer
            .send(
                FutureRecord::to(topic)
                    .partition(0)
                    .key("k")
                    .payload(&payload)
                    .timestamp(base_ms + i * 1000),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_metadata_is_dropped_but_the_offset_the_host_commits_comes_back() {
    let broker = RealBroker::with_topics("meta", &["t"], 1).await;
    let topic = broker.topic("t");
    produce_stamped(&broker.brokers, &topic, 1_700_000_000_000).await;
    let group = broker.topic("meta-group");
    let consumer = consumer(&broker.brokers, &group);
    let mut commit = TopicPartitionList::new();
    commit
        .add_partition_offset(&topic, 0, Offset::Offset(7))
        .unwrap();
    commit
        .find_partition(&topic, 0)
        .unwrap()
        .set_metadata("written-by-the-test");
    consumer.commit(&commit, CommitMode::Sync).unwrap();

    let mut asked = TopicPartitionList::new();
    asked.add_partition(&topic, 0);
    let committed = consumer
        .committed_offsets(asked, Duration::from_secs(10))
        .unwrap();
    let partition = committed.find_partition(&topic, 0).unwrap();
    assert_eq!(partition.offset(), Offset::Offset(7), "what the host needs");
    assert_eq!(
        partition.metadata(),
        "",
        "the broker now returns commit metadata: update docs/OPERATIONS.md"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_by_timestamp_answer_as_kafka_does_in_three_cases() {
    let broker = RealBroker::with_topics("times", &["t"], 1).await;
    let topic = broker.topic("t");
    let base_ms = 1_700_000_000_000;
    produce_stamped(&broker.brokers, &topic, base_ms).await;
    let consumer = consumer(&broker.brokers, &broker.topic("times-group"));
    // Kafka answers the first offset whose timestamp is at or after the one asked, and the end
    // of the partition past the last record.
    let cases = [
        (base_ms - 1_000, Offset::Offset(0)),
        (base_ms + 2_500, Offset::Offset(3)),
        (base_ms + 100_000, Offset::End),
    ];
    let mut differs = Vec::new();
    for (timestamp, kafka) in cases {
        let mut asked = TopicPartitionList::new();
        asked
            .add_partition_offset(&topic, 0, Offset::Offset(timestamp))
            .unwrap();
        let found = consumer
            .offsets_for_times(asked, Duration::from_secs(10))
            .map(|list| list.find_partition(&topic, 0).map(|p| p.offset()));
        eprintln!(
            "offsets_for_times(base {:+} ms) = {found:?}; Kafka answers {kafka:?}",
            timestamp - base_ms
        );
        if found.ok().flatten() != Some(kafka) {
            differs.push(timestamp - base_ms);
        }
    }
    assert!(
        differs.is_empty(),
        "the broker answers offsets by time otherwise than Kafka at {differs:?} ms from the \
         first record: docs/OPERATIONS.md says it agrees"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_joining_at_once_deliver_every_request_once() {
    let redis = std::env::var("SWITCHBOARD_TEST_REDIS").expect(
        "SWITCHBOARD_TEST_REDIS is not set: run the tests with `make test`, which starts Redis",
    );
    let broker = RealBroker::with_topics("joins", &["requests"], 6).await;
    let topic = broker.topic("requests");
    let fixture = FcmFixture::start(|_| {}).await;
    let mut config = fixture.host_config(&broker.brokers, &topic, "unused");
    broker.configure(&mut config, "g");
    config.dedup.backend = DedupBackend::Redis;
    config.dedup.redis_url = redis.into();
    config.dedup.redis_prefix = broker.topic("sbtest-joins");
    let stats = fixture.sim.stats.clone();

    // Requests wait in the topic, so the three joins race each other and the first fetches.
    produce(&broker.brokers, &topic, 1500, |i| {
        (format!("device-{i}"), demo_envelope(i))
    })
    .await
    .unwrap();
    let (a, b, c) = tokio::join!(
        switchboard::start(config.clone()),
        switchboard::start(config.clone()),
        switchboard::start(config.clone())
    );
    let hosts = [a.unwrap(), b.unwrap(), c.unwrap()];
    assert!(
        wait_until(WAIT, || stats.snapshot().delivered >= 1500).await,
        "{:?}",
        stats.snapshot()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let consumed: Vec<u64> = hosts
        .iter()
        .map(|h| h.counters.snapshot().records_consumed)
        .collect();
    for host in hosts {
        host.stop().await.unwrap();
    }
    eprintln!("records consumed by each host: {consumed:?}");
    assert_eq!(stats.snapshot().delivered, 1500);
    assert_eq!(stats.snapshot().duplicates, 0, "{consumed:?}");
}
