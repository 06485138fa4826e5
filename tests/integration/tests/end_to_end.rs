//! End to end: the real host, the mock Kafka cluster, the FCM simulator and the FCM component.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use switchboard::demo::{demo_envelope, produce};
use switchboard::kafka::EmbeddedKafka;
use switchboard_integration_tests::{FcmFixture, wait_until};

const WAIT: Duration = Duration::from_secs(60);

fn kafka(topic: &str) -> EmbeddedKafka {
    EmbeddedKafka::start(1, &[topic.to_string()], 3).expect("embedded kafka")
}

async fn produce_demo(brokers: &str, topic: &str, from: u64, count: u64) {
    produce(brokers, topic, count, |i| {
        let n = from + i;
        (format!("device-{n}"), demo_envelope(n))
    })
    .await
    .expect("produce");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_delivered_exactly_once() {
    let topic = "e2e-once";
    let cluster = kafka(topic);
    let fixture = FcmFixture::start(|_| {}).await;
    let host =
        switchboard::start(fixture.host_config(cluster.bootstrap_servers(), topic, "g-once"))
            .await
            .unwrap();
    produce_demo(cluster.bootstrap_servers(), topic, 0, 1000).await;
    let stats = &fixture.sim.stats;
    assert!(
        wait_until(WAIT, || stats.snapshot().delivered >= 1000).await,
        "{:?}",
        stats.snapshot()
    );
    host.stop().await.unwrap();
    let seen = stats.snapshot();
    assert_eq!(seen.delivered, 1000);
    assert_eq!(seen.duplicates, 0);
    assert_eq!(seen.token_requests, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_record_is_skipped_and_the_ones_after_it_are_delivered() {
    let topic = "e2e-malformed";
    let cluster = kafka(topic);
    let brokers = cluster.bootstrap_servers().to_string();
    let fixture = FcmFixture::start(|_| {}).await;
    let host = switchboard::start(fixture.host_config(&brokers, topic, "g-malformed"))
        .await
        .unwrap();
    // All on one key, so they share a partition and the bad ones sit between good ones.
    produce(&brokers, topic, 30, |i| {
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
    let stats = &fixture.sim.stats;
    assert!(
        wait_until(WAIT, || stats.snapshot().delivered >= 28).await,
        "{:?}",
        stats.snapshot()
    );
    // Read after the stop: it drains, so outcomes the vendor already accepted are counted.
    let counters = host.counters.clone();
    host.stop().await.unwrap();
    let counts = counters.snapshot();
    assert_eq!(counts.records_undecodable, 1);
    assert_eq!(counts.records_unknown_channel, 1);
    assert_eq!(stats.snapshot().delivered, 28);
    assert_eq!(stats.snapshot().duplicates, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_host_delivers_nothing_again() {
    let topic = "e2e-restart";
    let cluster = kafka(topic);
    let brokers = cluster.bootstrap_servers().to_string();
    let fixture = FcmFixture::start(|_| {}).await;
    let stats = fixture.sim.stats.clone();

    let first = switchboard::start(fixture.host_config(&brokers, topic, "g-restart"))
        .await
        .unwrap();
    produce_demo(&brokers, topic, 0, 500).await;
    assert!(
        wait_until(WAIT, || stats.snapshot().delivered >= 500).await,
        "{:?}",
        stats.snapshot()
    );
    first.stop().await.unwrap();

    let second = switchboard::start(fixture.host_config(&brokers, topic, "g-restart"))
        .await
        .unwrap();
    produce_demo(&brokers, topic, 500, 200).await;
    assert!(
        wait_until(WAIT, || stats.snapshot().delivered >= 700).await,
        "{:?}",
        stats.snapshot()
    );
    // Give a wrongly rewound consumer time to show itself before counting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let consumed = second.counters.snapshot().records_consumed;
    second.stop().await.unwrap();
    assert_eq!(stats.snapshot().delivered, 700);
    assert_eq!(stats.snapshot().duplicates, 0);
    assert_eq!(consumed, 200, "the second host read only the new records");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_vendor_errors_are_retried_until_delivered() {
    let topic = "e2e-retry";
    let cluster = kafka(topic);
    let brokers = cluster.bootstrap_servers().to_string();
    let fixture = FcmFixture::start(|_| {}).await;
    let mut config = fixture.host_config(&brokers, topic, "g-retry");
    config.dispatch.retry_base_ms = 10;
    let host = switchboard::start(config).await.unwrap();
    produce(&brokers, topic, 20, |i| {
        let mut envelope: serde_json::Value = serde_json::from_str(&demo_envelope(i)).unwrap();
        // The simulator answers 503 to the first two tries of each of these tokens.
        envelope["recipients"][0]["to"] = format!("sim-flaky2-{i}").into();
        (format!("k{i}"), envelope.to_string())
    })
    .await
    .unwrap();
    let stats = &fixture.sim.stats;
    assert!(
        wait_until(WAIT, || stats.snapshot().delivered >= 20).await,
        "{:?}",
        stats.snapshot()
    );
    // Read after the stop: it drains, so outcomes the vendor already accepted are counted.
    let counters = host.counters.clone();
    host.stop().await.unwrap();
    let counts = counters.snapshot();
    assert_eq!(counts.retries, 40, "two retries per delivery");
    assert_eq!(stats.snapshot().refused.get("UNAVAILABLE"), Some(&40));
    assert_eq!(stats.snapshot().duplicates, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_a_topic_from_the_start_sends_nothing_again() {
    let topic = "e2e-replay";
    let cluster = kafka(topic);
    let brokers = cluster.bootstrap_servers().to_string();
    let fixture = FcmFixture::start(|_| {}).await;
    let stats = fixture.sim.stats.clone();
    let config = fixture.host_config(&brokers, topic, "g-replay-1");
    let first = switchboard::start(config.clone()).await.unwrap();
    produce_demo(&brokers, topic, 0, 300).await;
    assert!(
        wait_until(WAIT, || stats.snapshot().delivered >= 300).await,
        "{:?}",
        stats.snapshot()
    );
    first.stop().await.unwrap();

    // A new consumer group reads the topic from offset 0; the dedup store (same data dir)
    // knows every recipient as done.
    let mut replay = config;
    replay.kafka.group_id = "g-replay-2".into();
    let second = switchboard::start(replay).await.unwrap();
    let counters = second.counters.clone();
    assert!(
        wait_until(WAIT, || counters.snapshot().deliveries_skipped_done >= 300).await,
        "{:?}",
        counters.snapshot()
    );
    second.stop().await.unwrap();
    assert_eq!(counters.snapshot().records_consumed, 300);
    assert_eq!(stats.snapshot().delivered, 300);
    assert_eq!(stats.snapshot().duplicates, 0, "nothing was sent again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_second_half_fails_first_ends_with_all_delivered_once() {
    let topic = "e2e-half";
    let cluster = kafka(topic);
    let brokers = cluster.bootstrap_servers().to_string();
    let fixture = FcmFixture::start(|_| {}).await;
    let mut config = fixture.host_config(&brokers, topic, "g-half");
    config.dispatch.retry_base_ms = 10;
    let host = switchboard::start(config).await.unwrap();
    // Recipients 51–100 (indexes 50–99) fail their first attempt with 503.
    let recipients: Vec<_> = (0..100)
        .map(|i| {
            let to = if i >= 50 {
                format!("sim-flaky1-half-{i}")
            } else {
                format!("half-{i}")
            };
            serde_json::json!({ "to": to })
        })
        .collect();
    let envelope = serde_json::json!({
        "id": "half-request", "channel": "push-android", "priority": "realtime",
        "recipients": recipients, "content": {"title": "t", "body": "b"},
    })
    .to_string();
    produce(&brokers, topic, 1, |_| {
        ("half".to_string(), envelope.clone())
    })
    .await
    .unwrap();
    let stats = &fixture.sim.stats;
    assert!(
        wait_until(WAIT, || stats.snapshot().delivered >= 100).await,
        "{:?}",
        stats.snapshot()
    );
    // Read after the stop: it drains, so outcomes the vendor already accepted are counted.
    let counters = host.counters.clone();
    host.stop().await.unwrap();
    let counts = counters.snapshot();
    assert_eq!(stats.snapshot().delivered, 100);
    assert_eq!(stats.snapshot().duplicates, 0);
    assert_eq!(counts.retries, 50);
    assert_eq!(counts.deliveries_delivered, 100);
}

/// A host whose broker went away stops anyway, within its drain bound and a bounded final
/// commit: an operator's stop never waits on a broker that is gone. The host runs on its own
/// runtime on a thread of its own, so a stop that hangs (the host's or the runtime's, whose
/// drop waits for blocking threads) fails the test instead of hanging it.
#[test]
fn a_host_whose_broker_is_gone_still_stops_in_bounded_time() {
    let (done_tx, done_rx) = std::sync::mpsc::channel::<Duration>();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let stopped_in = runtime.block_on(async {
            let topic = "e2e-broker-gone";
            let cluster = kafka(topic);
            let brokers = cluster.bootstrap_servers().to_string();
            let fixture = FcmFixture::start(|_| {}).await;
            let host = switchboard::start(fixture.host_config(&brokers, topic, "g-broker-gone"))
                .await
                .unwrap();
            produce_demo(&brokers, topic, 0, 200).await;
            let stats = &fixture.sim.stats;
            assert!(
                wait_until(WAIT, || stats.snapshot().delivered >= 200).await,
                "{:?}",
                stats.snapshot()
            );
            // The broker goes before the final commit: nothing can answer it.
            drop(cluster);
            let started = std::time::Instant::now();
            host.stop().await.unwrap();
            started.elapsed()
        });
        drop(runtime);
        let _ = done_tx.send(stopped_in);
    });
    // The stop's bounds (the final commit and close, the queues, the results, the leave from
    // the fleet view) add up to about 30 s; unbounded, this took minutes. Room for a slow box.
    match done_rx.recv_timeout(Duration::from_secs(60)) {
        Ok(stopped_in) => eprintln!("stopped in {stopped_in:?} with the broker gone"),
        Err(_) => panic!("the host (or its runtime) did not stop within 60 s of losing its broker"),
    }
}
