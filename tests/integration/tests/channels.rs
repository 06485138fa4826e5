//! All four channels through the real host: the demo's vendors and config, static weights
//! honoured within ±2 %, and no secret value in any log line at any level.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use switchboard::demo::{DemoVendors, demo_request, produce};
use switchboard::kafka::EmbeddedKafka;
use switchboard_integration_tests::{CapturedLogs, plugin_dir, wait_until};

const WAIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_channels_deliver_weights_hold_and_no_secret_reaches_a_log() {
    let captured = CapturedLogs::install();

    let topic = "channels";
    let cluster = EmbeddedKafka::start(1, &[topic.to_string()], 4).unwrap();
    let brokers = cluster.bootstrap_servers().to_string();
    let vendors = DemoVendors::start(Duration::from_millis(1)).await.unwrap();
    let mut config = vendors.host_config(&plugin_dir()).unwrap();
    config.kafka.brokers = Some(brokers.clone());
    config.kafka.topics = vec![topic.to_string()];
    config.kafka.group_id = "g-channels".into();
    // 70/30 instead of the demo's 50/50, so the split is a real check of the weights.
    config.channels.insert(
        "sms".into(),
        [("sms-twilio".to_string(), 70), ("sms-nhn".to_string(), 30)]
            .into_iter()
            .collect(),
    );
    let host = switchboard::start(config).await.unwrap();

    // 40,000 requests: 10,000 per channel, and 10,000 SMS split by weight.
    let requested = 40_000;
    produce(&brokers, topic, requested, demo_request)
        .await
        .unwrap();
    let total = || {
        vendors
            .per_vendor()
            .values()
            .map(|s| s.delivered)
            .sum::<u64>()
    };
    assert!(
        wait_until(WAIT, || total() >= requested).await,
        "{:?}",
        vendors.per_vendor()
    );
    host.stop().await.unwrap();

    let per_vendor = vendors.per_vendor();
    for (vendor, stats) in &per_vendor {
        assert_eq!(stats.duplicates, 0, "{vendor}");
        assert!(stats.refused.is_empty(), "{vendor}: {:?}", stats.refused);
    }
    for vendor in ["fcm", "apns", "alimtalk-nhn"] {
        assert_eq!(per_vendor[vendor].delivered, 10_000, "{vendor}");
    }
    let (twilio, nhn) = (
        per_vendor["sms-twilio"].delivered,
        per_vendor["sms-nhn"].delivered,
    );
    assert_eq!(twilio + nhn, 10_000);
    assert!(
        (6_800..=7_200).contains(&twilio),
        "twilio {twilio} of 10,000 for weight 70"
    );
    assert!(
        (2_800..=3_200).contains(&nhn),
        "nhn {nhn} of 10,000 for weight 30"
    );

    let logs = captured.text();
    assert!(
        logs.len() > 10_000,
        "the capture saw the run ({} bytes)",
        logs.len()
    );
    for secret in vendors.secret_values() {
        assert!(!logs.contains(&secret), "a secret value reached the logs");
        // A PEM key could leak a line at a time; check every line of its body.
        for line in secret
            .lines()
            .filter(|l| l.len() >= 32 && !l.starts_with("-----"))
        {
            assert!(
                !logs.contains(line),
                "a line of a secret key reached the logs"
            );
        }
    }
}
