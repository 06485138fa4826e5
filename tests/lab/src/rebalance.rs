//! `rebalance`: two hosts in one consumer group, in this process, sharing the Redis dedup
//! store. Host B joins while host A is delivering, then A leaves gracefully while B is; the
//! simulator counts what arrived. A rebalance drains the revoked partitions' in-flight records
//! and commits before giving them up, so the promise is exact here: nothing lost, nothing sent
//! twice.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;
use switchboard::RunningHost;
use switchboard::config::DedupBackend;
use switchboard::demo::{demo_envelope, produce};
use switchboard::telemetry::{Counters, CountersSnapshot};
use switchboard_integration_tests::FcmFixture;
use tokio::task::JoinHandle;

use crate::broker::{BrokerKind, LabKafka};

const TOPIC: &str = "notifications";
const PARTITIONS: i32 = 6;
const GROUP: &str = "switchboard-lab-rebalance";

/// What the scenario runs.
pub struct RebalanceOptions {
    /// Requests to produce, one recipient each.
    pub messages: u64,
    /// Where `fcm.wasm` is.
    pub plugin_dir: PathBuf,
    /// Mean simulated vendor latency; the jitter is half of it.
    pub vendor_latency_ms: u64,
    /// Requests produced per second. Paced rather than all at once, so the run lasts long enough
    /// for both rebalances to happen while records are in flight.
    pub rate: u64,
    /// The Redis both hosts share (from `--redis` or SWITCHBOARD_TEST_REDIS).
    pub redis: Option<String>,
    /// Give up waiting for the last request after this long.
    pub timeout: Duration,
    /// The mock cluster or a real broker.
    pub broker: BrokerKind,
    /// The real broker's address, when not the default.
    pub brokers: Option<String>,
}

/// Deliveries that ended in the DLQ, as the host counted them.
fn dead_lettered(c: &CountersSnapshot) -> u64 {
    c.deliveries_rejected
        + c.deliveries_invalid_recipient
        + c.deliveries_failed
        + c.records_undecodable
        + c.records_unknown_channel
        + c.records_expired
}

/// Produces `total` demo requests at `rate` a second, one slice a second. Each slice is its own
/// task: `produce` sets up a producer per call, and overlapping the calls keeps that set-up time
/// from slowing the rate.
async fn produce_paced(
    brokers: String,
    topic: String,
    total: u64,
    rate: u64,
) -> anyhow::Result<()> {
    let slice = rate.max(1);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut slices = Vec::new();
    let mut from = 0;
    while from < total {
        tick.tick().await;
        let count = slice.min(total - from);
        let (brokers, topic) = (brokers.clone(), topic.clone());
        slices.push(tokio::spawn(async move {
            produce(&brokers, &topic, count, |i| {
                let n = from + i;
                (format!("device-{n}"), demo_envelope(n))
            })
            .await
        }));
        from += count;
    }
    for slice in slices {
        slice.await.context("producer task panicked")??;
    }
    Ok(())
}

/// Fails with a message naming SWITCHBOARD_TEST_REDIS when Redis does not answer PING.
async fn check_redis(url: &str) -> anyhow::Result<()> {
    let hint = || {
        format!(
            "Redis at {url} is not reachable: start it with `make services` (which sets SWITCHBOARD_TEST_REDIS=redis://127.0.0.1:6390) or point SWITCHBOARD_TEST_REDIS / --redis at one"
        )
    };
    let ping = async {
        let client = redis::Client::open(url)?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map(|_| ())
    };
    tokio::time::timeout(Duration::from_secs(5), ping)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within 5 s"))
        .and_then(|r| r.map_err(anyhow::Error::from))
        .with_context(hint)
}

/// Deletes the keys this run wrote under `prefix`.
pub(crate) async fn remove_prefix(url: &str, prefix: &str) -> anyhow::Result<()> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut cursor: u64 = 0;
    loop {
        let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(10_000)
            .query_async(&mut conn)
            .await?;
        if !found.is_empty() {
            let () = redis::cmd("UNLINK")
                .arg(&found)
                .query_async(&mut conn)
                .await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

pub async fn run(options: RebalanceOptions) -> anyhow::Result<serde_json::Value> {
    let RebalanceOptions {
        messages,
        plugin_dir,
        vendor_latency_ms,
        rate,
        redis,
        timeout,
        broker,
        brokers,
    } = options;
    let redis_url = redis.context(
        "no Redis given: set SWITCHBOARD_TEST_REDIS (`make services` starts one on redis://127.0.0.1:6390) or pass --redis",
    )?;
    check_redis(&redis_url).await?;
    let fcm_wasm = crate::crash::fcm_component(&plugin_dir)?;

    let kafka = LabKafka::start(broker, brokers, "rebalance", &[TOPIC], PARTITIONS).await?;
    let brokers = kafka.brokers.clone();
    let topic = kafka.topic(TOPIC);
    let latency = Duration::from_millis(vendor_latency_ms);
    let fixture = FcmFixture::start(|c| {
        c.faults.latency.mean = latency;
        c.faults.latency.jitter = latency / 2;
    })
    .await;
    let stats = fixture.sim.stats.clone();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let prefix = format!("switchboard-lab:rebalance:{}:{nanos}", std::process::id());
    let mut config = fixture.host_config(&brokers, &topic, GROUP);
    kafka.configure(&mut config);
    config.dedup.backend = DedupBackend::Redis;
    config.dedup.redis_url = redis_url.clone();
    config.dedup.redis_prefix = prefix.clone();
    // librdkafka's mock cluster holds every rebalance of a non-empty group open for the session
    // timeout less a second before it elects a leader; 6 s keeps each stall short.
    config.kafka.session_timeout_ms = 6000;
    config.kafka.rebalance_drain_ms = 3000;
    if let Some(fcm) = config.plugins.get_mut("fcm") {
        fcm.path = fcm_wasm;
    }
    eprintln!(
        "[rebalance] kafka at {brokers}, fcm simulator at {}, redis {redis_url} under {prefix}",
        fixture.sim.url()
    );

    let started = Instant::now();
    let host_a = switchboard::start(config.clone()).await?;
    let a_counters = host_a.counters.clone();
    let producing = tokio::spawn(produce_paced(
        brokers.clone(),
        topic.clone(),
        messages,
        rate,
    ));

    let mut host_a = Some(host_a);
    let mut joining_b: Option<JoinHandle<anyhow::Result<RunningHost>>> = None;
    let mut host_b: Option<RunningHost> = None;
    let mut b_counters: Option<Arc<Counters>> = None;
    let mut stopping_a: Option<JoinHandle<anyhow::Result<()>>> = None;
    let mut last_report = Instant::now();
    loop {
        let delivered = stats.snapshot().delivered;
        let b_now = b_counters
            .as_ref()
            .map(|c| c.snapshot())
            .unwrap_or_default();
        let dlq = dead_lettered(&a_counters.snapshot()) + dead_lettered(&b_now);
        if delivered + dlq >= messages {
            break;
        }
        // B starts on its own task (loading the plugin takes a while), so A keeps being
        // watched meanwhile.
        if joining_b.is_none() && host_b.is_none() && delivered >= messages / 3 {
            eprintln!("[rebalance] delivered {delivered}: host B joins");
            joining_b = Some(tokio::spawn(switchboard::start(config.clone())));
        }
        if joining_b.as_ref().is_some_and(JoinHandle::is_finished)
            && let Some(joining) = joining_b.take()
        {
            let b = joining.await.context("starting host B panicked")??;
            b_counters = Some(b.counters.clone());
            host_b = Some(b);
        }
        // A leaves only once B consumes, so the two rebalances stay apart.
        if delivered >= messages * 2 / 3
            && b_now.records_consumed > 0
            && let Some(a) = host_a.take()
        {
            eprintln!("[rebalance] delivered {delivered}: host A leaves");
            // Stopping drains A's in-flight records; B keeps delivering meanwhile.
            stopping_a = Some(tokio::spawn(a.stop()));
        }
        if started.elapsed() > timeout {
            eprintln!(
                "[rebalance] timed out after {timeout:?}: {delivered}/{messages} delivered, dlq {dlq}"
            );
            break;
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            let s = stats.snapshot();
            eprintln!(
                "[rebalance] delivered {}/{messages}, duplicates {}, consumed by A {}, by B {}",
                s.delivered,
                s.duplicates,
                a_counters.snapshot().records_consumed,
                b_now.records_consumed
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    producing.await.context("producer task panicked")??;
    if let Some(stopping) = stopping_a {
        stopping.await.context("stopping host A panicked")??;
    }
    if let Some(a) = host_a {
        a.stop().await?;
    }
    if let Some(joining) = joining_b {
        host_b = Some(joining.await.context("starting host B panicked")??);
    }
    if let Some(b) = host_b {
        b_counters = Some(b.counters.clone());
        b.stop().await?;
    }
    let a_final = a_counters.snapshot();
    let b_final = b_counters.map(|c| c.snapshot()).unwrap_or_default();
    let dlq = dead_lettered(&a_final) + dead_lettered(&b_final);
    let seen = stats.snapshot();
    eprintln!(
        "[rebalance] host A consumed {} records, host B {}; skipped as done: A {}, B {}",
        a_final.records_consumed,
        b_final.records_consumed,
        a_final.deliveries_skipped_done,
        b_final.deliveries_skipped_done
    );
    if let Err(e) = remove_prefix(&redis_url, &prefix).await {
        eprintln!("[rebalance] could not remove the run's Redis keys under {prefix}: {e:#}");
    }
    drop(kafka);
    Ok(json!({
        "scenario": "rebalance",
        "broker": broker.as_str(),
        "requested": messages,
        "delivered_unique": seen.delivered,
        "lost": messages.saturating_sub(seen.delivered + dlq),
        "duplicate_sends": seen.duplicates,
        "dlq": dlq,
        "records_consumed_a": a_final.records_consumed,
        "records_consumed_b": b_final.records_consumed,
        "elapsed_ms": elapsed.as_millis() as u64,
    }))
}
