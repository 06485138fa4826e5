//! Vendor outages and permanent failures, end to end through the real host, the mock Kafka
//! cluster and the vendor simulators: an SMS vendor in an outage is ejected and its retries fail
//! over to the other SMS vendor without a message sent twice; an Alimtalk delivery to someone who
//! is not a KakaoTalk user falls back to SMS with the template's text.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use switchboard::demo::{DemoVendors, produce};
use switchboard::kafka::EmbeddedKafka;
use switchboard::route::health::BreakerState;
use switchboard_integration_tests::{plugin_dir, wait_until};
use vendorsim::OutageMode;

const WAIT: Duration = Duration::from_secs(90);

fn sms_request(i: u64) -> (String, String) {
    let to = format!("+82106{i:07}");
    let envelope = serde_json::json!({
        "id": format!("outage-{i}"),
        "channel": "sms",
        "priority": "batch",
        "recipients": [{"to": to}],
        "content": {"body": format!("Order {i} is on its way")},
    });
    (to, envelope.to_string())
}

fn recipients(sim: &vendorsim::RunningSim) -> BTreeSet<String> {
    sim.stats.arrivals().into_iter().map(|(to, _)| to).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_ejects_the_vendor_and_retries_fail_over_without_double_sends() {
    let topic = "failover";
    let cluster = EmbeddedKafka::start(1, &[topic.to_string()], 2).unwrap();
    let brokers = cluster.bootstrap_servers().to_string();
    let vendors = DemoVendors::start(Duration::from_millis(1)).await.unwrap();
    vendors.sms_twilio.stats.log_arrivals("+");
    vendors.sms_nhn.stats.log_arrivals("+");
    let mut config = vendors.host_config(&plugin_dir()).unwrap();
    config.kafka.brokers = Some(brokers.clone());
    config.kafka.topics = vec![topic.to_string()];
    config.kafka.group_id = "g-failover".into();
    config.dispatch.retry_base_ms = 50;
    config.dispatch.retry_max_ms = 500;
    config.health.window_s = 5;
    config.health.min_calls = 10;
    config.health.open_s = 1;
    config.health.max_open_s = 2;
    for plugin in config.plugins.values_mut() {
        plugin.max_batch = 10;
    }
    vendors
        .sms_twilio
        .faults
        .set_outage(Some(OutageMode::Unavailable));
    let host = switchboard::start(config).await.unwrap();

    // During the outage: everything reaches the recipients, all of it through sms-nhn.
    const DURING: u64 = 400;
    produce(&brokers, topic, DURING, sms_request).await.unwrap();
    let delivered = || {
        let (a, b) = (
            recipients(&vendors.sms_twilio),
            recipients(&vendors.sms_nhn),
        );
        a.union(&b).count() as u64
    };
    assert!(
        wait_until(WAIT, || delivered() >= DURING).await,
        "{:?}",
        vendors.per_vendor()
    );
    let twilio = host
        .router
        .health()
        .views()
        .into_iter()
        .find(|v| v.vendor == "sms-twilio")
        .unwrap();
    assert!(twilio.trips >= 1, "sms-twilio was ejected: {twilio:?}");
    assert_eq!(vendors.sms_twilio.stats.snapshot().delivered, 0);
    let counters = host.counters.snapshot();
    assert!(
        counters.deliveries_failed_over > 0,
        "retries went to sms-nhn: {counters:?}"
    );

    // After the outage: probes restore sms-twilio, and it takes its share again.
    vendors.sms_twilio.faults.set_outage(None);
    // Probes ride on traffic: sent while sms-twilio is still ejected (up to `max_open_s`), all
    // 800 could go to sms-nhn before a probe is let through, and the breaker would stay open.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    produce(&brokers, topic, 2 * DURING, |i| sms_request(DURING + i))
        .await
        .unwrap();
    assert!(
        wait_until(WAIT, || delivered() >= 3 * DURING).await,
        "{:?}",
        vendors.per_vendor()
    );
    assert_eq!(
        host.router.health().state("sms-twilio"),
        BreakerState::Closed
    );
    assert!(
        vendors.sms_twilio.stats.snapshot().delivered > 0,
        "restored"
    );
    host.stop().await.unwrap();

    let (twilio, nhn) = (
        recipients(&vendors.sms_twilio),
        recipients(&vendors.sms_nhn),
    );
    assert_eq!(
        twilio.intersection(&nhn).count(),
        0,
        "no recipient got the message from both vendors"
    );
    for (vendor, stats) in vendors.per_vendor() {
        assert_eq!(stats.duplicates, 0, "{vendor}");
    }
    assert_eq!(counters.dead_lettered, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alimtalk_miss_falls_back_to_sms_with_the_template_text() {
    let topic = "fallback";
    let cluster = EmbeddedKafka::start(1, &[topic.to_string()], 1).unwrap();
    let brokers = cluster.bootstrap_servers().to_string();
    let number = |i: u64| format!("0105000{i:04}");
    let not_kakao: Vec<String> = [1, 3].into_iter().map(number).collect();
    let vendors = DemoVendors::start_with(Duration::from_millis(1), &not_kakao)
        .await
        .unwrap();
    let mut config = vendors.host_config(&plugin_dir()).unwrap();
    config.kafka.brokers = Some(brokers.clone());
    config.kafka.topics = vec![topic.to_string()];
    config.kafka.group_id = "g-fallback".into();
    // Domestic numbers: the fallback SMS goes through the Korean vendor only.
    config.channels.insert(
        "sms".into(),
        BTreeMap::from([("sms-twilio".into(), 0), ("sms-nhn".into(), 100)]),
    );
    config.fallback.insert(
        "alimtalk".into(),
        switchboard::config::FallbackConfig {
            channel: "sms".into(),
            on: vec![switchboard::config::FallbackOn::Rejected],
            templates: BTreeMap::from([(
                "ORDER_SHIPPED".into(),
                "#{name}, order #{order} has shipped.".into(),
            )]),
        },
    );
    let host = switchboard::start(config).await.unwrap();

    produce(&brokers, topic, 4, |i| {
        let envelope = serde_json::json!({
            "id": format!("kakao-{i}"),
            "channel": "alimtalk",
            "priority": "realtime",
            "recipients": [{"to": number(i)}],
            "content": {"template": "ORDER_SHIPPED", "params": {"name": "Kim", "order": format!("A-{i}")}},
        });
        (number(i), envelope.to_string())
    })
    .await
    .unwrap();
    assert!(
        wait_until(WAIT, || {
            let per_vendor = vendors.per_vendor();
            per_vendor["alimtalk-nhn"].delivered >= 2 && per_vendor["sms-nhn"].delivered >= 2
        })
        .await,
        "{:?}",
        vendors.per_vendor()
    );
    // Nothing more comes: the two Kakao users got Alimtalk only.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counters = host.counters.snapshot();
    host.stop().await.unwrap();

    let per_vendor = vendors.per_vendor();
    assert_eq!(per_vendor["alimtalk-nhn"].delivered, 2);
    assert_eq!(per_vendor["alimtalk-nhn"].refused.get("-3018"), Some(&2));
    assert_eq!(per_vendor["sms-nhn"].delivered, 2);
    let texts: BTreeSet<String> = vendors
        .sms_nhn_requests
        .requests()
        .into_iter()
        .map(|r| r.group)
        .collect();
    assert_eq!(
        texts,
        BTreeSet::from([
            "Kim, order A-1 has shipped.".to_string(),
            "Kim, order A-3 has shipped.".to_string()
        ])
    );
    assert_eq!(counters.deliveries_fallen_back, 2);
    assert_eq!(
        counters.dead_lettered, 0,
        "a fallen-back delivery is not dead"
    );
}
