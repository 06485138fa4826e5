//! `retry-tiers`: retries due soon must not wait behind retries due later.
//!
//! The host runs twice in this process on an embedded cluster with one partition per topic:
//! once with every retry in the one retry topic (`retry_tiers_s = []`, how it was), once with
//! the default tiers. Each run first sends `later` requests whose vendor answers "come back in
//! `later_s` seconds", waits until they are all in the retry topic, then sends `soon` requests
//! whose vendor answers "come back in 200 ms". The figure is how long after they were sent the
//! `soon` requests were all delivered, against the same figure from the single-topic run.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;
use switchboard::config::PluginConfig;
use switchboard::demo::produce;
use switchboard_integration_tests::{host_config_in, misbehave_plugin, wait_until};

/// One run: how long after they were sent all the `soon` retries were delivered (`None` when
/// not within `later_s`, i.e. they waited for the `later` ones).
async fn one_run(tiers: Vec<u64>, later: u64, soon: u64, later_s: u64) -> anyhow::Result<Run> {
    let work = tempfile::tempdir()?;
    let mut config = host_config_in(work.path());
    config.kafka.new_topic_partitions = 1;
    config.kafka.retry_tiers_s = tiers;
    for (plugin, channel) in [("slow-vendor", "slow"), ("quick-vendor", "quick")] {
        config.plugins.insert(
            plugin.into(),
            PluginConfig {
                max_batch: 50,
                concurrency: 8,
                ..misbehave_plugin()
            },
        );
        config
            .channels
            .insert(channel.into(), BTreeMap::from([(plugin.into(), 1)]));
    }
    let host = switchboard::start(config).await?;
    let counters = host.counters.clone();
    let request = |id: String, channel: &str, recipient: String| {
        let envelope = json!({
            "id": id, "channel": channel, "priority": "batch",
            "recipients": [{"to": recipient}], "content": {},
        });
        (id, envelope.to_string())
    };
    produce(&host.bootstrap_servers, "notifications", later, |i| {
        request(
            format!("later-{i}"),
            "slow",
            format!("retry-once:{}", later_s * 1000),
        )
    })
    .await?;
    let written = wait_until(Duration::from_secs(60), || {
        counters.snapshot().retries >= later
    })
    .await;
    anyhow::ensure!(
        written,
        "the later retries were not written: {:?}",
        counters.snapshot()
    );
    let sent = Instant::now();
    produce(&host.bootstrap_servers, "notifications", soon, |i| {
        request(format!("soon-{i}"), "quick", "retry-once:200".into())
    })
    .await?;
    let delivered = wait_until(Duration::from_secs(later_s + 30), || {
        counters.snapshot().deliveries_delivered >= soon
    })
    .await;
    let soon_delivered_after = sent.elapsed();
    let seen = counters.snapshot();
    host.stop().await?;
    anyhow::ensure!(delivered, "the soon retries were not delivered: {seen:?}");
    Ok(Run {
        soon_delivered_after,
        later_delivered_first: seen.deliveries_delivered > soon,
    })
}

struct Run {
    soon_delivered_after: Duration,
    /// True when some `later` retry was delivered before the last `soon` one.
    later_delivered_first: bool,
}

/// Runs the scenario and returns its JSON line.
pub async fn run(later: u64, soon: u64, later_s: u64) -> anyhow::Result<serde_json::Value> {
    eprintln!(
        "[retry-tiers] one retry topic: {later} retries due in {later_s} s, then {soon} due in 200 ms"
    );
    let single = one_run(Vec::new(), later, soon, later_s).await?;
    eprintln!("[retry-tiers] tiered retry topics: the same");
    let tiered = one_run(vec![1, 10, 60, 600], later, soon, later_s).await?;
    let seconds = |d: Duration| (d.as_secs_f64() * 100.0).round() / 100.0;
    Ok(json!({
        "scenario": "retry-tiers",
        "later": later,
        "later_due_s": later_s,
        "soon": soon,
        "soon_due_ms": 200,
        "single_topic_soon_delivered_after_s": seconds(single.soon_delivered_after),
        "single_topic_later_first": single.later_delivered_first,
        "tiered_soon_delivered_after_s": seconds(tiered.soon_delivered_after),
        "tiered_later_first": tiered.later_delivered_first,
        "tiered_vs_single": (tiered.soon_delivered_after.as_secs_f64()
            / single.soon_delivered_after.as_secs_f64().max(0.001) * 1000.0).round() / 1000.0,
    }))
}
