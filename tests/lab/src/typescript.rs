//! `typescript`: what an adapter written in TypeScript costs next to the same adapter in Rust.
//!
//! - The runtime: a fresh instance, `init` and `deliver` per call, for the Rust test guest
//!   (`misbehave`) and the TypeScript one (`hostile_ts`), both answering `ok` with no I/O, so
//!   only the engine is measured; and per delivery in a batch of 100.
//! - The pipeline: the same SMS backlog delivered to the Twilio simulator, once through the Rust
//!   adapter (`plugins/sms-twilio`) and once through the TypeScript one (`examples/twilio-ts`),
//!   each in a consumer group of its own; the ratio of the two rates.
//!
//! Everything shares this process's two cores, so the ratios mean more than the rates.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;
use switchboard::config::{PluginConfig, SecretSource};
use switchboard::demo::produce;
use switchboard::kafka::EmbeddedKafka;

const TOPIC: &str = "lab.typescript";
const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";

pub struct TypeScriptOptions {
    pub messages: u64,
    pub calls: u64,
    pub rust_guest: PathBuf,
    pub ts_guest: PathBuf,
    pub rust_adapter: PathBuf,
    pub ts_adapter: PathBuf,
    pub vendor_latency_ms: u64,
    /// The batch lane's linger: how long a partial batch waits for more deliveries.
    pub linger_ms: u64,
}

/// A pipeline run's figures.
struct PipelineRun {
    rate_per_s: f64,
    deliveries_per_call: f64,
}

fn size_of(path: &Path) -> anyhow::Result<u64> {
    Ok(std::fs::metadata(path)
        .with_context(|| {
            format!(
                "{} (make guests guests-ts plugins example-ts)",
                path.display()
            )
        })?
        .len())
}

pub async fn run(options: TypeScriptOptions) -> anyhow::Result<serde_json::Value> {
    for path in [
        &options.rust_guest,
        &options.ts_guest,
        &options.rust_adapter,
        &options.ts_adapter,
    ] {
        size_of(path)?;
    }
    let rust_runtime = crate::runtime_cost(&options.rust_guest, options.calls).await?;
    eprintln!("[typescript] rust runtime: {rust_runtime}");
    let ts_runtime = crate::runtime_cost(&options.ts_guest, options.calls).await?;
    eprintln!("[typescript] ts runtime: {ts_runtime}");

    let latency = Duration::from_millis(options.vendor_latency_ms);
    let cluster = backlog(options.messages).await?;
    let settings = (latency, options.linger_ms);
    let rust = pipeline(
        &cluster,
        &options.rust_adapter,
        options.messages,
        settings,
        "rust",
    )
    .await?;
    let ts = pipeline(
        &cluster,
        &options.ts_adapter,
        options.messages,
        settings,
        "ts",
    )
    .await?;
    let (rust_rate, ts_rate) = (rust.rate_per_s, ts.rate_per_s);

    let field = |line: &serde_json::Value, key: &str| line[key].as_f64().unwrap_or(f64::NAN);
    let ratio = |a: f64, b: f64| (a / b * 100.0).round() / 100.0;
    Ok(json!({
        "scenario": "typescript",
        "ts_component_bytes": size_of(&options.ts_adapter)?,
        "rust_component_bytes": size_of(&options.rust_adapter)?,
        "calls": options.calls,
        "rust_per_call_us_p50": field(&rust_runtime, "per_call_us_p50"),
        "ts_per_call_us_p50": field(&ts_runtime, "per_call_us_p50"),
        "rust_per_call_us_p99": field(&rust_runtime, "per_call_us_p99"),
        "ts_per_call_us_p99": field(&ts_runtime, "per_call_us_p99"),
        "per_call_ratio": ratio(field(&ts_runtime, "per_call_us_p50"), field(&rust_runtime, "per_call_us_p50")),
        "rust_per_delivery_us_in_batch": field(&rust_runtime, "per_delivery_us_in_batch"),
        "ts_per_delivery_us_in_batch": field(&ts_runtime, "per_delivery_us_in_batch"),
        "messages": options.messages,
        "vendor_latency_ms": options.vendor_latency_ms,
        "rust_rate_per_s": rust_rate.round(),
        "ts_rate_per_s": ts_rate.round(),
        "ts_rate_ratio": ratio(ts_rate, rust_rate),
        "batch_linger_ms": options.linger_ms,
        "rust_deliveries_per_call": (rust.deliveries_per_call * 10.0).round() / 10.0,
        "ts_deliveries_per_call": (ts.deliveries_per_call * 10.0).round() / 10.0,
    }))
}

fn envelope(i: u64) -> String {
    json!({
        "id": format!("ts-{i}"),
        "channel": "sms",
        "priority": "batch",
        "recipients": [{"to": format!("+8210{i:08}")}],
        "content": {"body": format!("Your code is {:06}", i % 1_000_000)},
    })
    .to_string()
}

async fn backlog(messages: u64) -> anyhow::Result<EmbeddedKafka> {
    let partitions = crate::lanes::partitions_for(messages);
    let cluster = EmbeddedKafka::start(1, &[TOPIC.to_string()], partitions)?;
    produce(cluster.bootstrap_servers(), TOPIC, messages, |i| {
        (format!("k{i}"), envelope(i))
    })
    .await?;
    crate::lanes::check_nothing_dropped(cluster.bootstrap_servers(), TOPIC, partitions)?;
    Ok(cluster)
}

/// Delivers the backlog through the adapter at `wasm`; the rate from the first delivery the
/// simulator accepts to the last.
async fn pipeline(
    cluster: &EmbeddedKafka,
    wasm: &Path,
    messages: u64,
    (latency, linger_ms): (Duration, u64),
    label: &str,
) -> anyhow::Result<PipelineRun> {
    let mut twilio =
        vendorsim::twilio::TwilioConfig::new(ACCOUNT, "f0e1d2c3b4a5968778695a4b3c2d1e0f");
    twilio.faults.latency = vendorsim::Latency::fixed(latency);
    let basic = twilio.basic_auth();
    let sim = vendorsim::twilio::start(twilio).await?;
    let work = tempfile::tempdir()?;
    let mut config = switchboard::Config::default();
    config.dedup.data_dir = work.path().join("dedup");
    config.history.path = work.path().join("history.sqlite3");
    config.runtime.artifact_cache_dir = work.path().join("artifacts");
    config.runtime.artifact_key_file = work.path().join("artifact-key");
    config.kafka.brokers = Some(cluster.bootstrap_servers().to_string());
    config.kafka.topics = vec![TOPIC.to_string()];
    config.kafka.group_id = format!("lab-typescript-{label}");
    config.kafka.commit_interval_ms = 1000;
    config.lanes.batch.linger_ms = Some(linger_ms);
    config.plugins.insert(
        "sms".into(),
        PluginConfig {
            path: wasm.to_path_buf(),
            allowed_hosts: vec![sim.addr.to_string()],
            timeout_ms: 10_000,
            memory_mb: 64,
            max_batch: 100,
            concurrency: 32,
            rate_per_s: None,
            burst: None,
            config: [
                ("endpoint".to_string(), sim.url()),
                ("account_sid".to_string(), ACCOUNT.to_string()),
                (
                    "from".to_string(),
                    vendorsim::twilio::MAGIC_FROM.to_string(),
                ),
            ]
            .into(),
            secrets: [("basic_auth".to_string(), SecretSource::Value(basic))].into(),
            bounds: Default::default(),
        },
    );
    config
        .channels
        .insert("sms".into(), [("sms".to_string(), 100)].into());
    let host = switchboard::start(config).await?;
    let stats = sim.stats.clone();
    let (first_at, first_count) =
        crate::throughput::until_delivered(&stats, messages, label, |delivered| {
            format!("[typescript] {label}: {delivered}/{messages} delivered")
        })
        .await?;
    let elapsed = first_at.elapsed();
    let calls = crate::throughput::plugin_calls(&host);
    host.stop().await?;
    let snapshot = stats.snapshot();
    anyhow::ensure!(
        snapshot.duplicates == 0,
        "[{label}] {} duplicates",
        snapshot.duplicates
    );
    let rate = (messages - first_count) as f64 / elapsed.as_secs_f64().max(1e-9);
    eprintln!("[typescript] {label}: {rate:.0}/s, {calls} calls");
    Ok(PipelineRun {
        rate_per_s: rate,
        deliveries_per_call: messages as f64 / calls.max(1) as f64,
    })
}
