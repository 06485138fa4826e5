//! The result topics and the metrics through the real host: the demo's simulated vendors and
//! bundled plugins, the mock Kafka cluster, and an ordinary Kafka consumer reading what the host
//! published. Pushes to Android and iOS, some to tokens the vendors no longer know, some the
//! vendor refuses, some that need two retries: every settled outcome is on the results topic as
//! often as the host counted it, every invalid token is on the invalidations topic (APNs's with
//! the time it died), and `/metrics` shows the same numbers.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use serde_json::Value;
use switchboard::demo::{DemoVendors, produce};
use switchboard::kafka::EmbeddedKafka;
use switchboard_integration_tests::{cluster_topics, plugin_dir, wait_until};

const WAIT: Duration = Duration::from_secs(90);
const RESULTS: &str = "it.results";
const INVALIDATIONS: &str = "it.invalid-recipients";

/// What request `i` of the run is: its channel, recipient, and what the vendor will answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    AndroidGood,
    /// FCM answers `UNREGISTERED`.
    AndroidGone,
    /// FCM answers 400 `INVALID_ARGUMENT`.
    AndroidRejected,
    /// FCM answers 503 twice, then accepts.
    AndroidFlaky,
    IosGood,
    /// APNs answers 410 `Unregistered` with a timestamp.
    IosGone,
}

const REQUESTS: u64 = 300;

fn kind(i: u64) -> Kind {
    match i % 30 {
        0 | 10 | 20 => Kind::AndroidGone,
        5 => Kind::AndroidRejected,
        15 => Kind::AndroidFlaky,
        1 | 11 | 21 | 25 => Kind::IosGone,
        n if n.is_multiple_of(2) => Kind::AndroidGood,
        _ => Kind::IosGood,
    }
}

fn request(i: u64) -> (String, String) {
    let (channel, to) = match kind(i) {
        Kind::AndroidGood => ("push-android", format!("device-{i}")),
        Kind::AndroidGone => ("push-android", format!("sim-unregistered-{i}")),
        Kind::AndroidRejected => ("push-android", format!("sim-invalid_argument-{i}")),
        Kind::AndroidFlaky => ("push-android", format!("sim-flaky2-{i}")),
        Kind::IosGood => ("push-ios", vendorsim::apns::device_token("ab", i)),
        Kind::IosGone => ("push-ios", vendorsim::apns::device_token("00000410", i)),
    };
    let envelope = serde_json::json!({
        "id": format!("r-{i}"),
        "channel": channel,
        "priority": if i.is_multiple_of(3) { "realtime" } else { "batch" },
        "recipients": [{"to": to}],
        "content": {"title": "Your order", "body": format!("Order {i}")},
    });
    (format!("k{i}"), envelope.to_string())
}

fn count(kind_of: Kind) -> u64 {
    (0..REQUESTS).filter(|i| kind(*i) == kind_of).count() as u64
}

/// The value of the sample of `name` whose labels include every pair of `labels`, summed over
/// the samples that match (e.g. over plugin versions).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|line| {
            labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// Reads `topics` from the start until `enough` holds for what was read, or `timeout` passes.
async fn read_all(
    brokers: &str,
    topics: &[&str],
    timeout: Duration,
    enough: impl Fn(&BTreeMap<String, Vec<Value>>) -> bool,
) -> BTreeMap<String, Vec<Value>> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "it-results-reader")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(topics).unwrap();
    let mut read: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let deadline = Instant::now() + timeout;
    while !enough(&read) && Instant::now() < deadline {
        let Ok(Ok(message)) =
            tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await
        else {
            continue;
        };
        let value: Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
        let key = String::from_utf8(message.key().unwrap().to_vec()).unwrap();
        // Results are keyed by the delivery key, invalidations by the recipient.
        let field = match message.topic() {
            RESULTS => "key",
            _ => "recipient",
        };
        assert_eq!(value[field], key.as_str(), "{value}");
        read.entry(message.topic().to_string())
            .or_default()
            .push(value);
    }
    read
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_and_invalidations_match_the_counters_and_the_metrics() {
    let topic = "results-e2e";
    let started_ms = switchboard::clock::now_ms();
    let vendors = DemoVendors::start(Duration::from_millis(1)).await.unwrap();
    let mut config = vendors.host_config(&plugin_dir()).unwrap();
    config.kafka.results_topic = RESULTS.into();
    config.kafka.invalidations_topic = INVALIDATIONS.into();
    let topics = cluster_topics(&[topic, RESULTS, INVALIDATIONS]);
    let cluster = EmbeddedKafka::start(1, &topics, 3).unwrap();
    let brokers = cluster.bootstrap_servers().to_string();
    config.kafka.brokers = Some(brokers.clone());
    config.kafka.topics = vec![topic.to_string()];
    config.kafka.group_id = "g-results".into();
    config.kafka.commit_interval_ms = 200;
    // The flaky tokens come back quickly.
    config.dispatch.retry_base_ms = 50;
    config.dispatch.retry_max_ms = 200;
    let host = switchboard::start(config).await.unwrap();

    produce(&brokers, topic, REQUESTS, request).await.unwrap();
    let (delivered, gone, rejected, flaky) = (
        count(Kind::AndroidGood) + count(Kind::AndroidFlaky) + count(Kind::IosGood),
        count(Kind::AndroidGone) + count(Kind::IosGone),
        count(Kind::AndroidRejected),
        count(Kind::AndroidFlaky),
    );
    assert!(gone > 0 && rejected > 0 && flaky > 0 && count(Kind::IosGone) > 0);
    let counters = host.counters.clone();
    assert!(
        wait_until(WAIT, || {
            let c = counters.snapshot();
            c.deliveries_final() >= REQUESTS
                && c.results_published + c.results_failed >= c.deliveries_final() + c.retries
                && c.invalidations_published + c.invalidations_failed
                    >= c.deliveries_invalid_recipient
        })
        .await,
        "{:?}",
        counters.snapshot()
    );
    // Every record has let go of its budget once its deliveries are settled.
    assert!(
        wait_until(WAIT, || host
            .budget
            .snapshot()
            .iter()
            .all(|lane| lane.records == 0 && lane.used_bytes == 0))
        .await,
        "{:?}",
        host.budget.snapshot()
    );
    let c = counters.snapshot();
    assert_eq!(c.deliveries_delivered, delivered, "{c:?}");
    assert_eq!(c.deliveries_invalid_recipient, gone, "{c:?}");
    assert_eq!(c.deliveries_rejected, rejected, "{c:?}");
    assert_eq!(c.deliveries_failed, 0, "{c:?}");
    assert_eq!(c.retries, 2 * flaky, "{c:?}");
    assert_eq!((c.results_failed, c.invalidations_failed), (0, 0), "{c:?}");
    assert_eq!(c.results_published, c.deliveries_final() + c.retries);
    assert_eq!(c.invalidations_published, c.deliveries_invalid_recipient);

    // What an application reading the topics sees.
    let expected_results = c.results_published as usize;
    let expected_invalid = c.invalidations_published as usize;
    let read = read_all(&brokers, &[RESULTS, INVALIDATIONS], WAIT, |read| {
        read.get(RESULTS).map_or(0, Vec::len) >= expected_results
            && read.get(INVALIDATIONS).map_or(0, Vec::len) >= expected_invalid
    })
    .await;
    let results = read.get(RESULTS).cloned().unwrap_or_default();
    let invalidations = read.get(INVALIDATIONS).cloned().unwrap_or_default();
    assert_eq!(results.len(), expected_results);
    assert_eq!(invalidations.len(), expected_invalid);

    // At least once: count each (key, attempt, outcome) once.
    let distinct: BTreeSet<(String, u64, String)> = results
        .iter()
        .map(|r| {
            (
                r["key"].as_str().unwrap().to_string(),
                r["attempt"].as_u64().unwrap(),
                r["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut per_outcome: BTreeMap<&str, u64> = BTreeMap::new();
    for (_, _, outcome) in &distinct {
        *per_outcome.entry(outcome.as_str()).or_default() += 1;
    }
    let of = |outcome: &str| per_outcome.get(outcome).copied().unwrap_or(0);
    assert_eq!(of("delivered"), c.deliveries_delivered, "{per_outcome:?}");
    assert_eq!(of("rejected"), c.deliveries_rejected, "{per_outcome:?}");
    assert_eq!(
        of("invalid_recipient"),
        c.deliveries_invalid_recipient,
        "{per_outcome:?}"
    );
    assert_eq!(of("failed"), c.deliveries_failed, "{per_outcome:?}");
    assert_eq!(of("retry"), c.retries, "{per_outcome:?}");
    assert_eq!(
        per_outcome.values().sum::<u64>(),
        results.len() as u64,
        "no other outcome, and no result twice"
    );

    // Each result names its vendor, and the vendors' own counts agree.
    let per_vendor = vendors.per_vendor();
    for vendor in ["fcm", "apns"] {
        let delivered_by = results
            .iter()
            .filter(|r| r["outcome"] == "delivered" && r["vendor"] == vendor)
            .count() as u64;
        assert_eq!(delivered_by, per_vendor[vendor].delivered, "{vendor}");
    }
    let now_ms = switchboard::clock::now_ms();
    for r in &results {
        let at = r["at_ms"].as_u64().unwrap();
        assert!((started_ms..=now_ms).contains(&at), "{r}");
        assert!(r["latency_ms"].is_u64(), "{r}");
        assert!(!r["plugin_version"].as_str().unwrap().is_empty(), "{r}");
        match r["outcome"].as_str().unwrap() {
            "delivered" => {
                assert!(!r["vendor_message_id"].as_str().unwrap().is_empty(), "{r}");
                assert!(r.get("reason").is_none(), "{r}");
            }
            "rejected" => {
                assert_eq!(r["code"], "INVALID_ARGUMENT", "{r}");
                assert_eq!(r["channel"], "push-android", "{r}");
            }
            "retry" => {
                assert_eq!(r["channel"], "push-android", "{r}");
                assert!((1..=2).contains(&r["attempt"].as_u64().unwrap()), "{r}");
                assert!(r["reason"].as_str().unwrap().contains("UNAVAILABLE"), "{r}");
            }
            "invalid_recipient" => assert!(r["reason"].is_string(), "{r}"),
            other => panic!("unexpected outcome {other}: {r}"),
        }
    }

    // Every invalid token, once, with the vendor that found it; APNs's carry when it died.
    let gone_tokens: BTreeSet<String> = (0..REQUESTS)
        .filter(|i| matches!(kind(*i), Kind::AndroidGone | Kind::IosGone))
        .map(|i| {
            let (_, envelope) = request(i);
            let envelope: Value = serde_json::from_str(&envelope).unwrap();
            envelope["recipients"][0]["to"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let invalid_tokens: BTreeSet<String> = invalidations
        .iter()
        .map(|r| r["recipient"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(invalid_tokens, gone_tokens);
    let mut apns_invalid = 0;
    for r in &invalidations {
        let key = r["key"].as_str().unwrap();
        assert!(key.starts_with("r-"), "{r}");
        assert!(r["reason"].is_string() && r["at_ms"].is_u64(), "{r}");
        match r["vendor"].as_str().unwrap() {
            "apns" => {
                apns_invalid += 1;
                assert_eq!(r["channel"], "push-ios", "{r}");
                let since = r["invalid_since_ms"].as_u64().unwrap_or(0);
                assert!((started_ms..=now_ms).contains(&since), "{r}");
            }
            "fcm" => {
                assert_eq!(r["channel"], "push-android", "{r}");
                assert!(r.get("invalid_since_ms").is_none(), "{r}");
            }
            other => panic!("unexpected vendor {other}: {r}"),
        }
    }
    assert_eq!(apns_invalid, count(Kind::IosGone));

    // `/metrics` tells the same story.
    let text = host.metrics.render();
    let value = |name: &str, labels: &[(&str, &str)]| {
        sample(&text, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in\n{text}"))
    };
    let outcomes = "switchboard_vendor_outcomes_total";
    for vendor in ["fcm", "apns"] {
        assert_eq!(
            value(outcomes, &[("vendor", vendor), ("outcome", "delivered")]),
            per_vendor[vendor].delivered as f64,
            "{vendor}"
        );
    }
    assert_eq!(
        value(
            outcomes,
            &[("vendor", "apns"), ("outcome", "invalid_recipient")]
        ),
        count(Kind::IosGone) as f64
    );
    assert_eq!(
        value(outcomes, &[("vendor", "fcm"), ("outcome", "retry")]),
        c.retries as f64
    );
    assert_eq!(
        value(outcomes, &[("vendor", "fcm"), ("outcome", "rejected")]),
        rejected as f64
    );
    assert_eq!(
        sample(&text, outcomes, &[("outcome", "trap")]),
        None,
        "no trap, so no series"
    );
    // Every version label names the loaded version.
    let fcm_id = host.registry.slot("fcm").unwrap().active().id.clone();
    assert!(
        text.contains("vendor=\"fcm\",version=\"") && text.contains(&fcm_id),
        "{text}"
    );
    // One histogram sample per call, and the plugin's own call counter agrees.
    assert_eq!(
        value(
            "switchboard_vendor_call_duration_seconds_count",
            &[("vendor", "fcm")]
        ),
        value("switchboard_plugin_calls_total", &[("plugin", "fcm")])
    );
    assert_eq!(
        value(
            "switchboard_route_weight",
            &[("channel", "push-android"), ("vendor", "fcm")]
        ),
        100.0
    );
    assert_eq!(
        value(
            "switchboard_route_weight",
            &[("channel", "sms"), ("vendor", "sms-twilio")]
        ),
        50.0
    );
    for vendor in ["fcm", "apns", "sms-nhn"] {
        assert_eq!(
            value("switchboard_vendor_breaker_state", &[("vendor", vendor)]),
            0.0
        );
        assert_eq!(
            value(
                "switchboard_vendor_breaker_trips_total",
                &[("vendor", vendor)]
            ),
            0.0
        );
    }
    for (outcome, n) in [
        ("delivered", c.deliveries_delivered),
        ("invalid_recipient", c.deliveries_invalid_recipient),
        ("rejected", c.deliveries_rejected),
    ] {
        assert_eq!(
            value("switchboard_deliveries_total", &[("outcome", outcome)]),
            n as f64
        );
    }
    assert_eq!(value("switchboard_retries_total", &[]), c.retries as f64);
    assert_eq!(
        value(
            "switchboard_result_records_published_total",
            &[("stream", "results")]
        ),
        c.results_published as f64
    );
    assert_eq!(
        value(
            "switchboard_result_records_published_total",
            &[("stream", "invalidations")]
        ),
        c.invalidations_published as f64
    );
    assert_eq!(
        value("switchboard_records_consumed_total", &[]),
        c.records_consumed as f64
    );
    assert_eq!(
        value("switchboard_plugin_traps_total", &[("plugin", "apns")]),
        0.0
    );
    assert_eq!(
        value(
            "switchboard_plugin_denied_hosts_total",
            &[("plugin", "fcm")]
        ),
        0.0
    );
    for lane in ["realtime", "batch", "ads"] {
        assert_eq!(
            value("switchboard_lane_inflight_records", &[("lane", lane)]),
            0.0
        );
        assert_eq!(
            value("switchboard_lane_paused_partitions", &[("lane", lane)]),
            0.0
        );
        let limit = host.budget.snapshot()[["realtime", "batch", "ads"]
            .iter()
            .position(|l| *l == lane)
            .unwrap()]
        .limit_bytes;
        assert_eq!(
            value("switchboard_lane_budget_limit_bytes", &[("lane", lane)]),
            limit as f64
        );
    }
    // The consumers' lag series exist (their values come every 5 s from librdkafka).
    for source in ["mixed", "retry"] {
        value("switchboard_consumer_lag_records", &[("source", source)]);
    }
    assert!(text.trim_end().ends_with("# EOF"), "{text}");

    host.stop().await.unwrap();
}
