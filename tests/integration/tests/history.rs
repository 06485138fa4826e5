//! The host records every settled outcome in the send history: the real host, the mock Kafka
//! cluster, the FCM simulator and the FCM component, and the SQLite store read back the way
//! `switchboard history` reads it.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use switchboard::demo::produce;
use switchboard::kafka::EmbeddedKafka;
use switchboard_history::{HistoryQuery, OutcomeClass, render_text};
use switchboard_integration_tests::{FcmFixture, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_settled_outcome_is_counted_per_vendor() {
    let topic = "history-e2e";
    let cluster = EmbeddedKafka::start(1, &[topic.to_string()], 3).unwrap();
    let brokers = cluster.bootstrap_servers().to_string();
    let fixture = FcmFixture::start(|_| {}).await;
    let work = tempfile::tempdir().unwrap();
    let mut config = fixture.host_config(&brokers, topic, "g-history");
    config.history.path = work.path().join("history.sqlite3");
    const GOOD: u64 = 120;
    // `sim-unregistered-` recipients are answered UNREGISTERED by the simulator: invalid-recipient.
    const GONE: u64 = 30;
    produce(&brokers, topic, GOOD + GONE, |i| {
        let to = if i < GOOD {
            format!("device-{i}")
        } else {
            format!("sim-unregistered-{i}")
        };
        let value = serde_json::json!({
            "id": format!("h-{i}"),
            "channel": "push-android",
            "recipients": [{"to": to}],
            "content": {"title": "t", "body": "b"},
        });
        (format!("k{i}"), value.to_string())
    })
    .await
    .unwrap();
    let host = switchboard::start(config.clone()).await.unwrap();
    let counters = host.counters.clone();
    assert!(
        wait_until(Duration::from_secs(60), || counters
            .snapshot()
            .deliveries_final()
            >= GOOD + GONE)
        .await,
        "{:?}",
        counters.snapshot()
    );
    // Stopping flushes the writer.
    host.stop().await.unwrap();

    let store = config.history_settings().open().await.unwrap().unwrap();
    let query = HistoryQuery::last(Duration::from_secs(3600)).for_vendor("fcm");
    let summary = store.summary(&query).await.unwrap();
    assert_eq!(summary.len(), 1, "{summary:?}");
    let fcm = &summary[0];
    assert_eq!(fcm.vendor, "fcm");
    assert_eq!(fcm.channel, "push-android");
    assert_eq!(fcm.counts.get(OutcomeClass::Delivered), GOOD);
    assert_eq!(fcm.counts.get(OutcomeClass::InvalidRecipient), GONE);
    // Another vendor's view is empty.
    let other = HistoryQuery::last(Duration::from_secs(3600)).for_vendor("sms-nhn");
    assert!(store.summary(&other).await.unwrap().is_empty());
    // What `switchboard history` prints names the vendor and the counts.
    let report = store.report(&query, 5).await.unwrap();
    let text = render_text(&report);
    assert!(
        text.contains("fcm") && text.contains(&GOOD.to_string()),
        "{text}"
    );
}
