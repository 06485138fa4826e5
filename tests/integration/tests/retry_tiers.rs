//! Retries due soon never wait behind retries due later. A vendor's Retry-After can put a retry
//! a minute out; a retry written after it into the same partition, due in a tenth of a second,
//! used to wait that minute, because the retry consumer pauses a partition on its head record
//! until the head is due. Retry tiers keep every topic's records in the order they come due.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use switchboard::demo::produce;
use switchboard_integration_tests::{batch_request, host_config_in, misbehave_plugin, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_due_soon_does_not_wait_behind_one_due_later() {
    let work = tempfile::tempdir().unwrap();
    let mut config = host_config_in(work.path());
    // One partition per topic: both retries land in the same partition of the retry topic.
    config.kafka.new_topic_partitions = 1;
    // Two vendors on two channels: a vendor's Retry-After holds every call to it, and the
    // second request must not be held by the first one's.
    for (plugin, channel) in [("slow-vendor", "slow"), ("quick-vendor", "quick")] {
        config.plugins.insert(plugin.into(), misbehave_plugin());
        config
            .channels
            .insert(channel.into(), BTreeMap::from([(plugin.into(), 1)]));
    }
    let host = switchboard::start(config).await.unwrap();
    let counters = host.counters.clone();

    // First a retry due in 50 s (a Retry-After of 50 s)…
    produce(&host.bootstrap_servers, "notifications", 1, |_| {
        batch_request("later", "slow", "retry-once:50000")
    })
    .await
    .unwrap();
    let written = wait_until(Duration::from_secs(30), || counters.snapshot().retries >= 1).await;
    assert!(written, "{:?}", counters.snapshot());
    // …then one due in 100 ms, written behind it.
    produce(&host.bootstrap_servers, "notifications", 1, |_| {
        batch_request("soon", "quick", "retry-once:100")
    })
    .await
    .unwrap();
    // Well before the first is due, the second must be delivered.
    let delivered = wait_until(Duration::from_secs(30), || {
        counters.snapshot().deliveries_delivered >= 1
    })
    .await;
    let seen = counters.snapshot();
    host.stop().await.unwrap();
    assert!(
        delivered,
        "the retry due in 100 ms waited behind the one due in 50 s: {seen:?}"
    );
    assert_eq!(seen.deliveries_delivered, 1, "{seen:?}");
    assert_eq!(seen.retries, 2, "{seen:?}");
}
