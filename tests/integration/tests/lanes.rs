//! Lanes, the memory budget, key ordering and per-vendor limits, end to end: the real host, the
//! mock Kafka cluster, the FCM simulator and the FCM component. Assertions are on order and
//! progress (what had happened when something else happened), never on wall-clock time.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use switchboard::config::{Ordering, TrafficClass};
use switchboard::demo::produce;
use switchboard::kafka::EmbeddedKafka;
use switchboard_integration_tests::{FcmFixture, wait_until};
use vendorsim::Latency;

const WAIT: Duration = Duration::from_secs(90);

fn envelope(id: &str, priority: &str, body_bytes: usize) -> String {
    serde_json::json!({
        "id": id,
        "channel": "push-android",
        "priority": priority,
        "recipients": [{"to": id}],
        "content": {"title": "t", "body": "x".repeat(body_bytes)},
    })
    .to_string()
}

fn lane_pauses(host: &switchboard::RunningHost, class: TrafficClass) -> u64 {
    host.budget.snapshot()[class.index()].pauses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_is_delivered_while_the_ads_lane_is_paused_over_budget() {
    let (ads, realtime) = ("lanes-ads", "lanes-rt");
    let cluster = EmbeddedKafka::start(1, &[ads.to_string(), realtime.to_string()], 3).unwrap();
    let brokers = cluster.bootstrap_servers().to_string();
    let fixture = FcmFixture::start(|c| {
        c.faults.latency = Latency::fixed(Duration::from_millis(20));
    })
    .await;
    fixture.sim.stats.log_arrivals("rt-");
    let mut config = fixture.host_config(&brokers, "unused", "g-lanes");
    config.kafka.topics.clear();
    config.lanes.ads.topics = vec![ads.to_string()];
    config.lanes.realtime.topics = vec![realtime.to_string()];
    // A small, slow ads lane: 1 MiB of budget, one call of 10 at a time.
    config.lanes.ads.budget_mb = Some(1);
    config.lanes.ads.concurrency = Some(1);
    if let Some(fcm) = config.plugins.get_mut("fcm") {
        fcm.max_batch = 10;
    }

    const ADS: u64 = 6000;
    produce(&brokers, ads, ADS, |i| {
        (format!("ad-{i}"), envelope(&format!("ad-{i}"), "ads", 1000))
    })
    .await
    .unwrap();
    let host = switchboard::start(config).await.unwrap();
    let stats = fixture.sim.stats.clone();
    assert!(
        wait_until(WAIT, || lane_pauses(&host, TrafficClass::Ads) > 0).await,
        "the ads lane never went over its budget: {:?}",
        host.budget.snapshot()
    );

    const REALTIME: u64 = 50;
    produce(&brokers, realtime, REALTIME, |i| {
        (
            format!("rt-{i}"),
            envelope(&format!("rt-{i}"), "realtime", 100),
        )
    })
    .await
    .unwrap();
    assert!(
        wait_until(WAIT, || stats.arrivals().len() as u64 >= REALTIME).await,
        "realtime stuck: {:?}",
        stats.snapshot()
    );
    // Every realtime push was accepted while most of the ads backlog was still waiting.
    let delivered_when_realtime_done = stats.snapshot().delivered - REALTIME;
    eprintln!("ads delivered when realtime was done: {delivered_when_realtime_done} of {ADS}");
    assert!(
        delivered_when_realtime_done < ADS / 2,
        "realtime waited for the ads backlog: {delivered_when_realtime_done} ads were delivered first"
    );
    assert_eq!(lane_pauses(&host, TrafficClass::Realtime), 0);

    // The paused lane resumes below its low-water mark and drains everything, once.
    assert!(
        wait_until(WAIT, || stats.snapshot().delivered >= ADS + REALTIME).await,
        "{:?} {:?}",
        stats.snapshot(),
        host.budget.snapshot()
    );
    let pauses = lane_pauses(&host, TrafficClass::Ads);
    host.stop().await.unwrap();
    assert!(pauses > 1, "the ads lane paused only once: {pauses}");
    assert_eq!(stats.snapshot().delivered, ADS + REALTIME);
    assert_eq!(stats.snapshot().duplicates, 0);
}

/// Produces 10 keys × 30 records, interleaved, to one partition, and returns the order in which
/// the vendor accepted each key's records.
async fn arrival_order_per_key(ordering: Ordering, topic: &str) -> HashMap<String, Vec<u64>> {
    let cluster = EmbeddedKafka::start(1, &[topic.to_string()], 1).unwrap();
    let brokers = cluster.bootstrap_servers().to_string();
    let fixture = FcmFixture::start(|c| {
        // Jitter reorders whatever runs at once.
        c.faults.latency = Latency {
            mean: Duration::from_millis(10),
            jitter: Duration::from_millis(9),
        };
    })
    .await;
    fixture.sim.stats.log_arrivals("ord-");
    let mut config = fixture.host_config(&brokers, topic, &format!("g-{topic}"));
    config.lanes.batch.ordering = ordering;
    const KEYS: u64 = 10;
    const PER_KEY: u64 = 30;
    produce(&brokers, topic, KEYS * PER_KEY, |i| {
        let (key, seq) = (i % KEYS, i / KEYS);
        let id = format!("ord-k{key}-{seq}");
        (format!("k{key}"), envelope(&id, "batch", 20))
    })
    .await
    .unwrap();
    let host = switchboard::start(config).await.unwrap();
    let stats = fixture.sim.stats.clone();
    assert!(
        wait_until(WAIT, || stats.snapshot().delivered >= KEYS * PER_KEY).await,
        "{:?}",
        stats.snapshot()
    );
    host.stop().await.unwrap();
    let mut per_key: HashMap<String, Vec<u64>> = HashMap::new();
    for (recipient, _) in stats.arrivals() {
        let mut parts = recipient.trim_start_matches("ord-").split('-');
        let key = parts.next().unwrap().to_string();
        let seq: u64 = parts.next().unwrap().parse().unwrap();
        per_key.entry(key).or_default().push(seq);
    }
    assert_eq!(per_key.len() as u64, KEYS);
    per_key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_one_key_are_delivered_in_order_while_keys_run_at_once() {
    let per_key = arrival_order_per_key(Ordering::Key, "lanes-order-key").await;
    for (key, seqs) in &per_key {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "key {key} out of order: {seqs:?}"
        );
    }
    // The control: without key order, the same traffic arrives out of order. This is what
    // makes the check above able to fail.
    let unordered = arrival_order_per_key(Ordering::None, "lanes-order-none").await;
    let inversions: usize = unordered
        .values()
        .map(|seqs| seqs.windows(2).filter(|w| w[0] > w[1]).count())
        .sum();
    eprintln!("inversions without key order: {inversions}");
    assert!(inversions > 0, "the control never reordered: {unordered:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_slows_the_whole_vendor_and_the_rate_limit_avoids_429s() {
    // The vendor takes 20 requests a second and answers 429 with Retry-After: 1 beyond that.
    let limited = |c: &mut vendorsim::fcm::FcmConfig| {
        c.faults.rate_limit = Some(vendorsim::faults::RateLimit {
            per_second: 20,
            retry_after_s: 1,
        });
    };
    const RECORDS: u64 = 100;
    let run = |rate_per_s: Option<f64>, topic: &'static str| async move {
        let cluster = EmbeddedKafka::start(1, &[topic.to_string()], 3).unwrap();
        let brokers = cluster.bootstrap_servers().to_string();
        let fixture = FcmFixture::start(limited).await;
        let mut config = fixture.host_config(&brokers, topic, &format!("g-{topic}"));
        config.dispatch.retry_base_ms = 50;
        config.dispatch.retry_max_attempts = 50;
        if let Some(fcm) = config.plugins.get_mut("fcm") {
            fcm.max_batch = 1;
            fcm.concurrency = 4;
            fcm.rate_per_s = rate_per_s;
            fcm.burst = rate_per_s.map(|_| 1);
        }
        produce(&brokers, topic, RECORDS, |i| {
            (format!("r-{i}"), envelope(&format!("r-{i}"), "batch", 20))
        })
        .await
        .unwrap();
        let host = switchboard::start(config).await.unwrap();
        let stats = fixture.sim.stats.clone();
        assert!(
            wait_until(WAIT, || stats.snapshot().delivered >= RECORDS).await,
            "{:?}",
            stats.snapshot()
        );
        host.stop().await.unwrap();
        let seen = stats.snapshot();
        assert_eq!(seen.duplicates, 0);
        seen.refused.get("QUOTA_EXCEEDED").copied().unwrap_or(0)
    };
    // Without a configured rate, the host learns from the 429s: each Retry-After holds every
    // call to the vendor, so only the calls already in flight meet the limit. Without the
    // hold, every one of the 80 records over the first second's 20 would be refused at least
    // once, and their retries again.
    let refused_with_hold = run(None, "lanes-429-hold").await;
    eprintln!("429s with the Retry-After hold: {refused_with_hold}");
    assert!(
        refused_with_hold < 40,
        "{refused_with_hold} requests refused with 429"
    );
    // With the vendor's rate configured, the token bucket stays under it: no 429 at all.
    let refused_with_bucket = run(Some(15.0), "lanes-429-bucket").await;
    assert_eq!(refused_with_bucket, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_topic_routes_each_record_to_the_lane_its_priority_names() {
    let topic = "lanes-mixed";
    let cluster = EmbeddedKafka::start(1, &[topic.to_string()], 3).unwrap();
    let brokers = cluster.bootstrap_servers().to_string();
    let fixture = FcmFixture::start(|c| {
        c.faults.latency = Latency::fixed(Duration::from_millis(20));
    })
    .await;
    let mut config = fixture.host_config(&brokers, topic, "g-lanes-mixed");
    // Only the ads lane is small enough to fill: if ads records were charged anywhere else,
    // it would never pause.
    config.lanes.ads.budget_mb = Some(1);
    config.lanes.ads.concurrency = Some(1);
    if let Some(fcm) = config.plugins.get_mut("fcm") {
        fcm.max_batch = 10;
    }
    const EACH: u64 = 2000;
    produce(&brokers, topic, 2 * EACH, |i| {
        let (id, priority) = match i % 2 {
            0 => (format!("mx-ad-{i}"), "ads"),
            _ => (format!("mx-rt-{i}"), "realtime"),
        };
        (id.clone(), envelope(&id, priority, 1000))
    })
    .await
    .unwrap();
    let host = switchboard::start(config).await.unwrap();
    let stats = fixture.sim.stats.clone();
    assert!(
        wait_until(WAIT, || stats.snapshot().delivered >= 2 * EACH).await,
        "{:?} {:?}",
        stats.snapshot(),
        host.budget.snapshot()
    );
    let (ads, realtime) = (
        lane_pauses(&host, TrafficClass::Ads),
        lane_pauses(&host, TrafficClass::Realtime),
    );
    host.stop().await.unwrap();
    assert!(ads > 0, "ads records never filled the ads lane");
    assert_eq!(realtime, 0, "realtime records were charged to a full lane");
    assert_eq!(stats.snapshot().duplicates, 0);
}
