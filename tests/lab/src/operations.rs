//! `outage`, `hotswap` and `canary`: what operators rely on during an incident and a release,
//! measured on the real host in this process with embedded Kafka and the vendor simulators.
//!
//! - `outage`: steady SMS traffic split 50/50 between two vendors while one answers 503, then
//!   refuses connections. How soon its breaker ejects it, how soon probes restore it, how many
//!   retries failed over, and that nothing was lost or sent twice (across both vendors).
//! - `hotswap`: a backlog drained while the FCM plugin is swapped back and forth between two
//!   versions; how long each activation took (compile or cache hit, `describe`, `init`, swap).
//! - `canary`: a version that fails 30 % of deliveries takes a share of calls and is rolled back
//!   automatically; how long that took.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use switchboard::demo::{DemoVendors, produce};
use switchboard::kafka::EmbeddedKafka;
use switchboard::plugin::registry::VersionSource;
use switchboard::route::health::BreakerState;
use switchboard_integration_tests::{FcmFixture, relabelled_component};
use vendorsim::OutageMode;

/// Produces `make(i)` records at `rate_per_s` for `duration`, in 10 ms ticks; returns how many.
async fn produce_steady(
    brokers: String,
    topic: &'static str,
    rate_per_s: u64,
    duration: Duration,
    make: impl Fn(u64) -> (String, String),
) -> anyhow::Result<u64> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "2")
        .create()
        .context("creating the steady producer")?;
    let started = Instant::now();
    let mut sent = 0u64;
    let mut pending = Vec::new();
    while started.elapsed() < duration {
        let due = (started.elapsed().as_secs_f64() * rate_per_s as f64) as u64;
        for i in sent..due {
            let (key, value) = make(i);
            let producer = producer.clone();
            pending.push(tokio::spawn(async move {
                producer
                    .send(
                        FutureRecord::to(topic).key(&key).payload(&value),
                        Duration::from_secs(30),
                    )
                    .await
                    .map(|_| ())
                    .map_err(|(e, _)| anyhow::anyhow!("producing {key}: {e}"))
            }));
        }
        sent = sent.max(due);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for send in pending {
        send.await??;
    }
    Ok(sent)
}

/// Options of `outage`.
pub struct OutageOptions {
    pub vendor: String,
    pub down_s: u64,
    pub rate: u64,
    pub plugin_dir: std::path::PathBuf,
}

fn sms_request(i: u64) -> (String, String) {
    let to = format!("+82107{i:07}");
    let envelope = json!({
        "id": format!("outage-{i}"),
        "channel": "sms",
        "priority": "batch",
        "recipients": [{"to": to}],
        "content": {"body": format!("Your code is {i}")},
    });
    (to, envelope.to_string())
}

fn recipients(sim: &vendorsim::RunningSim) -> BTreeSet<String> {
    sim.stats.arrivals().into_iter().map(|(to, _)| to).collect()
}

pub async fn outage(options: OutageOptions) -> anyhow::Result<serde_json::Value> {
    const TOPIC: &str = "lab.outage";
    let (warm_up, recovery) = (Duration::from_secs(5), Duration::from_secs(20));
    let down = Duration::from_secs(options.down_s);
    let cluster = EmbeddedKafka::start(1, &[TOPIC.to_string()], 4)?;
    let brokers = cluster.bootstrap_servers().to_string();
    let vendors = DemoVendors::start(Duration::from_millis(5)).await?;
    let (down_sim, other_sim) = match options.vendor.as_str() {
        "sms-twilio" => (&vendors.sms_twilio, &vendors.sms_nhn),
        "sms-nhn" => (&vendors.sms_nhn, &vendors.sms_twilio),
        other => anyhow::bail!("--vendor must be sms-twilio or sms-nhn, not `{other}`"),
    };
    down_sim.stats.log_arrivals("+");
    other_sim.stats.log_arrivals("+");
    let mut config = vendors.host_config(&options.plugin_dir)?;
    config.kafka.brokers = Some(brokers.clone());
    config.kafka.topics = vec![TOPIC.to_string()];
    config.kafka.group_id = "lab-outage".into();
    let host = switchboard::start(config).await?;

    let total = options.rate * (warm_up + down + recovery).as_secs();
    let producer = tokio::spawn(produce_steady(
        brokers.clone(),
        TOPIC,
        options.rate,
        warm_up + down + recovery,
        sms_request,
    ));
    tokio::time::sleep(warm_up).await;
    eprintln!(
        "[outage] {} answers 503 for {} s, then refuses connections for {} s",
        options.vendor,
        options.down_s / 2,
        options.down_s - options.down_s / 2
    );
    down_sim.faults.set_outage(Some(OutageMode::Unavailable));
    let outage_started = Instant::now();
    let mut refusing = false;
    let mut ejected_after = None;
    let mut outage_ended = None;
    let mut restored_after = None;
    let health = host.router.health().clone();
    let deadline = outage_started + down + recovery + Duration::from_secs(60);
    while Instant::now() < deadline {
        let state = health.state(&options.vendor);
        let elapsed = outage_started.elapsed();
        if !refusing && elapsed >= down / 2 {
            refusing = true;
            down_sim.faults.set_outage(Some(OutageMode::Refuse));
        }
        if outage_ended.is_none() && elapsed >= down {
            down_sim.faults.set_outage(None);
            outage_ended = Some(Instant::now());
            eprintln!("[outage] {} is back", options.vendor);
        }
        if ejected_after.is_none() && state != BreakerState::Closed {
            ejected_after = Some(elapsed);
            eprintln!("[outage] ejected after {} ms", elapsed.as_millis());
        }
        if let Some(ended) = outage_ended
            && ejected_after.is_some()
            && state == BreakerState::Closed
        {
            restored_after = Some(ended.elapsed());
            eprintln!(
                "[outage] restored {} ms after the outage ended",
                ended.elapsed().as_millis()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let produced = producer.await??;
    let delivered = || recipients(down_sim).union(&recipients(other_sim)).count() as u64;
    let drain_deadline = Instant::now() + Duration::from_secs(180);
    while delivered() < produced && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let counters = host.counters.snapshot();
    host.stop().await?;
    let (a, b) = (recipients(down_sim), recipients(other_sim));
    let both = a.intersection(&b).count() as u64;
    let union = a.union(&b).count() as u64;
    let sim_duplicates: u64 = vendors.per_vendor().values().map(|s| s.duplicates).sum();
    Ok(json!({
        "scenario": "outage",
        "vendor": options.vendor,
        "down_s": options.down_s,
        "rate_per_s": options.rate,
        "sent": produced,
        "planned": total,
        "lost": produced.saturating_sub(union),
        "duplicates": both + sim_duplicates,
        "ejected_after_ms": ejected_after.map(|d| d.as_millis() as u64),
        "restored_after_ms": restored_after.map(|d| d.as_millis() as u64),
        "failed_over": counters.deliveries_failed_over,
        "delivered_by_down_vendor": a.len(),
        "delivered_by_other_vendor": b.len(),
        "dead_lettered": counters.dead_lettered,
    }))
}

/// Options of `hotswap`.
pub struct HotswapOptions {
    pub swaps: u32,
    pub messages: u64,
    pub plugin_dir: std::path::PathBuf,
}

fn push_request(i: u64) -> (String, String) {
    let envelope = json!({
        "id": format!("swap-{i}"),
        "channel": "push-android",
        "priority": "batch",
        "recipients": [{"to": format!("swap-{i}")}],
        "content": {"title": "Your order", "body": format!("Order {i} is on its way")},
    });
    (format!("k{i}"), envelope.to_string())
}

pub async fn hotswap(options: HotswapOptions) -> anyhow::Result<serde_json::Value> {
    const TOPIC: &str = "lab.hotswap";
    let partitions = crate::lanes::partitions_for(options.messages);
    let cluster = EmbeddedKafka::start(1, &[TOPIC.to_string()], partitions)?;
    let brokers = cluster.bootstrap_servers().to_string();
    produce(&brokers, TOPIC, options.messages, push_request).await?;
    crate::lanes::check_nothing_dropped(&brokers, TOPIC, partitions)?;
    let fixture = FcmFixture::start(|c| {
        c.faults.latency = vendorsim::Latency::fixed(Duration::from_millis(5));
    })
    .await;
    let config = fixture.host_config(&brokers, TOPIC, "lab-hotswap");
    let component = std::fs::read(options.plugin_dir.join("fcm.wasm"))
        .with_context(|| format!("reading fcm.wasm from {}", options.plugin_dir.display()))?;
    // Every swap activates a version never loaded before, so each one is compiled, described
    // and initialised: the full cost of an activation, not a switch back to a loaded version.
    let version_for = |swap: u32| relabelled_component(&component, &format!("swap-{swap}"));
    let host = switchboard::start(config).await?;
    let slot = host.registry.slot("fcm").context("no fcm plugin")?.clone();
    let delivered = || fixture.sim.stats.snapshot().delivered;
    // Spread the swaps over the drain: one each time another share of the backlog is done.
    let mut activate = Histogram::<u64>::new(3)?;
    let mut calls_by_version = std::collections::BTreeMap::new();
    let mut swapped = 0;
    let deadline = Instant::now() + Duration::from_secs(900);
    while delivered() < options.messages {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {} delivered",
            delivered(),
            options.messages
        );
        let due = (u64::from(swapped) + 1) * options.messages / (u64::from(options.swaps) + 1);
        if swapped < options.swaps && delivered() >= due {
            swapped += 1;
            let bytes = version_for(swapped);
            let started = Instant::now();
            let version = host
                .registry
                .upload("fcm", &bytes, VersionSource::Upload)
                .await?;
            let took = started.elapsed();
            activate.record(took.as_micros() as u64)?;
            calls_by_version.insert(version.id.clone(), version.plugin.clone());
            eprintln!(
                "[hotswap] swap {swapped}: {} active after {:.1} ms, {} delivered",
                version.id,
                took.as_secs_f64() * 1000.0,
                delivered()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Whatever is still in flight finishes before the counts are read.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let active = slot.active().id.clone();
    host.stop().await?;
    let stats = fixture.sim.stats.snapshot();
    let calls: serde_json::Map<String, serde_json::Value> = calls_by_version
        .iter()
        .map(|(id, plugin)| {
            (
                id.clone(),
                json!(
                    plugin
                        .counters
                        .calls
                        .load(std::sync::atomic::Ordering::Relaxed)
                ),
            )
        })
        .collect();
    Ok(json!({
        "scenario": "hotswap",
        "swaps": swapped,
        "messages": options.messages,
        "lost": options.messages.saturating_sub(stats.delivered),
        "duplicates": stats.duplicates,
        "activate_ms_p50": activate.value_at_quantile(0.5) as f64 / 1000.0,
        "activate_ms_p99": activate.value_at_quantile(0.99) as f64 / 1000.0,
        "active_at_end": active,
        "calls_by_version": calls,
    }))
}

/// Options of `canary`.
pub struct CanaryOptions {
    pub percent: u8,
    pub rate: u64,
    pub duration_s: u64,
    pub guest_dir: std::path::PathBuf,
}

pub async fn canary(options: CanaryOptions) -> anyhow::Result<serde_json::Value> {
    const TOPIC: &str = "lab.canary";
    let cluster = EmbeddedKafka::start(1, &[TOPIC.to_string()], 4)?;
    let brokers = cluster.bootstrap_servers().to_string();
    let fixture = FcmFixture::start(|c| {
        c.faults.latency = vendorsim::Latency::fixed(Duration::from_millis(5));
    })
    .await;
    let mut config = fixture.host_config(&brokers, TOPIC, "lab-canary");
    // Smaller batches: more calls, so the canary's share of calls is a share of traffic.
    config
        .plugins
        .entry("fcm".into())
        .and_modify(|p| p.max_batch = 20);
    config.dispatch.retry_base_ms = 100;
    let host = switchboard::start(config).await?;
    let flaky = std::fs::read(options.guest_dir.join("flaky_fcm.wasm")).with_context(|| {
        format!(
            "reading flaky_fcm.wasm from {} (make guests)",
            options.guest_dir.display()
        )
    })?;
    let canary = host
        .registry
        .stage("fcm", &flaky, VersionSource::Upload)
        .await?;
    let run_for = Duration::from_secs(options.duration_s);
    let producer = tokio::spawn(produce_steady(
        brokers.clone(),
        TOPIC,
        options.rate,
        run_for,
        push_request,
    ));
    // Traffic first, so both versions are judged on live calls.
    tokio::time::sleep(Duration::from_secs(3)).await;
    host.registry
        .set_canary("fcm", &canary.id, options.percent)
        .await?;
    eprintln!(
        "[canary] {} takes {} % of calls",
        canary.plugin.info.version, options.percent
    );
    let slot = host.registry.slot("fcm").context("no fcm plugin")?.clone();
    let started = Instant::now();
    let mut ended = None;
    while started.elapsed() < run_for {
        if let Some(end) = slot.last_canary_end() {
            eprintln!(
                "[canary] {} after {} ms: {}",
                end.how, end.after_ms, end.reason
            );
            ended = Some(end);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let canary_totals = canary.totals(600, 0);
    let produced = producer.await??;
    let deadline = Instant::now() + Duration::from_secs(120);
    while fixture.sim.stats.snapshot().delivered < produced && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    host.stop().await?;
    let stats = fixture.sim.stats.snapshot();
    Ok(json!({
        "scenario": "canary",
        "percent": options.percent,
        "canary_version": canary.plugin.info.version,
        "rolled_back": ended.as_ref().is_some_and(|e| e.how == "rolled-back"),
        "rolled_back_after_ms": ended.as_ref().map(|e| e.after_ms),
        "reason": ended.map(|e| e.reason),
        "canary_deliveries": canary_totals.deliveries(),
        "canary_error_percent": canary_totals.error_percent(),
        "sent": produced,
        "lost": produced.saturating_sub(stats.delivered),
        "duplicates": stats.duplicates,
    }))
}
