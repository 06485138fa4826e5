//! The host against a real Kafka-protocol broker (`make services` starts one on loopback, with
//! sqlite storage): the mock cluster answers many things differently (it has no admin API,
//! keeps about 5 MiB per partition and refuses commits during a rebalance), so the parts that
//! at-least-once rests on run here as well. Delivery once with offsets that outlive the host,
//! the DLQ, the retry tiers, and a plugin swapped mid-stream.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use switchboard::demo::{demo_envelope, produce};
use switchboard::plugin::registry::VersionSource;
use switchboard_integration_tests::{
    FcmFixture, RealBroker, batch_request, misbehave_plugin, plugin_path, read_topic,
    relabelled_component, wait_until,
};

/// Longer than on the mock cluster: a real group's first join waits for the broker's
/// initial-rebalance delay, and a fresh topic's metadata takes a refresh to reach the consumer.
const WAIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_delivered_once_and_offsets_outlive_the_host() {
    let broker = RealBroker::with_topics("once", &["requests"], 3).await;
    let topic = broker.topic("requests");
    let fixture = FcmFixture::start(|_| {}).await;
    let mut config = fixture.host_config(&broker.brokers, &topic, "unused");
    broker.configure(&mut config, "g");
    let stats = fixture.sim.stats.clone();

    let first = switchboard::start(config.clone()).await.unwrap();
    produce(&broker.brokers, &topic, 500, |i| {
        (format!("device-{i}"), demo_envelope(i))
    })
    .await
    .unwrap();
    assert!(
        wait_until(WAIT, || stats.snapshot().delivered >= 500).await,
        "{:?}",
        stats.snapshot()
    );
    first.stop().await.unwrap();

    // A second host in the same group starts where the first committed.
    let second = switchboard::start(config).await.unwrap();
    produce(&broker.brokers, &topic, 200, |i| {
        (format!("device-{}", 500 + i), demo_envelope(500 + i))
    })
    .await
    .unwrap();
    assert!(
        wait_until(WAIT, || stats.snapshot().delivered >= 700).await,
        "{:?}",
        stats.snapshot()
    );
    // Give a wrongly rewound consumer time to show itself before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let consumed = second.counters.snapshot().records_consumed;
    second.stop().await.unwrap();
    assert_eq!(stats.snapshot().delivered, 700);
    assert_eq!(stats.snapshot().duplicates, 0);
    assert_eq!(
        consumed, 200,
        "the second host read again what the first had committed"
    );
}

/// A host deployed before its request topic exists (a fresh cluster, producers not yet out)
/// must start reading it soon after the topic is created, not at librdkafka's default
/// metadata refresh of five minutes, which held such a host idle that long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_topic_created_after_the_host_started_is_read_within_seconds() {
    let broker = RealBroker::with_topics("late-topic", &[], 2).await;
    let topic = broker.topic("requests");
    let fixture = FcmFixture::start(|_| {}).await;
    let mut config = fixture.host_config(&broker.brokers, &topic, "unused");
    broker.configure(&mut config, "g");
    let host = switchboard::start(config).await.unwrap();
    // Let the consumer join and find the topic missing before it exists.
    tokio::time::sleep(Duration::from_secs(5)).await;
    switchboard::kafka::ensure_topics(&broker.brokers, &[&topic], 2, &Default::default())
        .await
        .unwrap();
    produce(&broker.brokers, &topic, 20, |i| {
        (format!("device-{i}"), demo_envelope(i))
    })
    .await
    .unwrap();
    let stats = fixture.sim.stats.clone();
    // Well under the five minutes of the default refresh, with room for a slow machine.
    assert!(
        wait_until(Duration::from_secs(60), || stats.snapshot().delivered >= 20).await,
        "{:?}",
        stats.snapshot()
    );
    host.stop().await.unwrap();
    assert_eq!(stats.snapshot().duplicates, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_reach_the_dlq_of_a_real_broker_and_the_rest_flows() {
    let broker = RealBroker::with_topics("dlq", &["requests"], 2).await;
    let topic = broker.topic("requests");
    let fixture = FcmFixture::start(|_| {}).await;
    let mut config = fixture.host_config(&broker.brokers, &topic, "unused");
    broker.configure(&mut config, "g");
    let host = switchboard::start(config.clone()).await.unwrap();
    // On one key, so the bad ones sit between good ones in one partition.
    produce(&broker.brokers, &topic, 30, |i| {
        let value = match i {
            10 => "{this is not json".to_string(),
            20 => r#"{"id":"x","channel":"carrier-pigeon","recipients":[{"to":"a"}],"content":{}}"#
                .to_string(),
            _ => demo_envelope(i),
        };
        ("same-key".to_string(), value)
    })
    .await
    .unwrap();
    let stats = fixture.sim.stats.clone();
    let counters = host.counters.clone();
    assert!(
        wait_until(WAIT, || {
            stats.snapshot().delivered >= 28 && counters.snapshot().dead_lettered >= 2
        })
        .await,
        "{:?} {:?}",
        stats.snapshot(),
        counters.snapshot()
    );
    host.stop().await.unwrap();
    let dlq = read_topic(&broker.brokers, &config.kafka.dlq_topic);
    let classes: HashMap<String, &HashMap<String, String>> = dlq
        .iter()
        .map(|(h, _)| (h["sb-reason-class"].clone(), h))
        .collect();
    assert_eq!(dlq.len(), 2, "{dlq:?}");
    assert_eq!(classes["undecodable"]["sb-origin-topic"], topic);
    assert!(classes.contains_key("unknown-channel"), "{classes:?}");
    assert_eq!(stats.snapshot().delivered, 28);
    assert_eq!(stats.snapshot().duplicates, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_wait_in_the_tier_topics_the_host_creates_on_a_real_broker() {
    let broker = RealBroker::with_topics("tiers", &["requests"], 1).await;
    let topic = broker.topic("requests");
    let work = tempfile::tempdir().unwrap();
    let mut config = switchboard_integration_tests::host_config_in(work.path());
    broker.configure(&mut config, "g");
    config.kafka.topics = vec![topic.clone()];
    config.kafka.commit_interval_ms = 200;
    config.plugins.insert("vendor".into(), misbehave_plugin());
    config
        .channels
        .insert("push".into(), BTreeMap::from([("vendor".into(), 1)]));
    let host = switchboard::start(config.clone()).await.unwrap();
    // Due in 2.5 s: it waits in `…retry.1s` (created by the host through the admin API, which
    // the mock cluster lacks), twice (one hop per second of the wait the tier covers), then in
    // the base retry topic for the last half second, and is delivered.
    produce(&broker.brokers, &topic, 1, |_| {
        batch_request("r", "push", "retry-once:2500")
    })
    .await
    .unwrap();
    let counters = host.counters.clone();
    assert!(
        wait_until(WAIT, || counters.snapshot().deliveries_delivered >= 1).await,
        "{:?}",
        counters.snapshot()
    );
    host.stop().await.unwrap();
    let tier = format!("{}.1s", config.kafka.retry_topic);
    let waited = read_topic(&broker.brokers, &tier);
    assert_eq!(waited.len(), 2, "{tier} held {waited:?}");
    let seen = counters.snapshot();
    assert_eq!(seen.retries, 1, "{seen:?}");
    assert_eq!(seen.deliveries_delivered, 1, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_swapped_mid_stream_delivers_the_rest() {
    let broker = RealBroker::with_topics("swap", &["requests"], 2).await;
    let topic = broker.topic("requests");
    let fixture = FcmFixture::start(|_| {}).await;
    let mut config = fixture.host_config(&broker.brokers, &topic, "unused");
    broker.configure(&mut config, "g");
    let host = switchboard::start(config).await.unwrap();
    produce(&broker.brokers, &topic, 300, |i| {
        (format!("device-{i}"), demo_envelope(i))
    })
    .await
    .unwrap();
    let fcm = std::fs::read(plugin_path("fcm")).unwrap();
    let second = relabelled_component(&fcm, "second");
    let swapped = host
        .registry
        .upload("fcm", &second, VersionSource::Upload)
        .await
        .unwrap();
    produce(&broker.brokers, &topic, 300, |i| {
        (format!("device-{}", 300 + i), demo_envelope(300 + i))
    })
    .await
    .unwrap();
    let stats = fixture.sim.stats.clone();
    assert!(
        wait_until(WAIT, || stats.snapshot().delivered >= 600).await,
        "{:?}",
        stats.snapshot()
    );
    host.stop().await.unwrap();
    let calls = swapped
        .plugin
        .counters
        .calls
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(calls > 0, "the new version served no call");
    assert_eq!(stats.snapshot().delivered, 600);
    assert_eq!(stats.snapshot().duplicates, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_cannot_create_its_dlq_refuses_to_start_and_names_it() {
    let broker = RealBroker::with_topics("refuse", &["requests"], 1).await;
    let topic = broker.topic("requests");
    let fixture = FcmFixture::start(|_| {}).await;
    let mut config = fixture.host_config(&broker.brokers, &topic, "unused");
    broker.configure(&mut config, "g");
    // A name Kafka refuses (topic names are [a-zA-Z0-9._-]), so neither the admin API nor
    // auto-creation can make it: as a broker that denies CREATE would answer.
    config.kafka.dlq_topic = "no such dlq!".into();
    let started = switchboard::start(config).await;
    let Err(error) = started else {
        panic!("the host started without a DLQ it can write");
    };
    let message = format!("{error:#}");
    assert!(message.contains("no such dlq!"), "{message}");
    assert!(message.contains("CREATE"), "{message}");
}
