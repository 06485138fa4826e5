//! The self-contained demo: the real host on embedded defaults (in-process Kafka), the bundled
//! FCM plugin, and the FCM simulator on loopback. It produces N requests, waits until each one
//! reached a final outcome, and reports what the simulator counted.
//!
//! Every figure in the summary is counted: `delivered` and `duplicates` by the simulator,
//! `dlq` by the host (deliveries that ended without delivery), `lost` is what is left.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;

use crate::config::{Config, PluginConfig, SecretSource};

/// What the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Requests to produce (one recipient each).
    pub messages: u64,
    /// Where the bundled plugin components are (`fcm.wasm`).
    pub plugin_dir: PathBuf,
    /// Simulated vendor latency.
    pub vendor_latency: Duration,
    /// Give up waiting after this long.
    pub timeout: Duration,
    /// Print progress to stderr once a second.
    pub progress: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            messages: 20_000,
            plugin_dir: PathBuf::from("build/plugins"),
            vendor_latency: Duration::from_millis(5),
            timeout: Duration::from_secs(600),
            progress: true,
        }
    }
}

/// The demo's one-line result.
#[derive(Debug, Clone, Serialize)]
pub struct DemoSummary {
    pub scenario: &'static str,
    pub requested: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub dlq: u64,
    pub elapsed_ms: u64,
    pub rate_per_s: u64,
}

const PROJECT: &str = "switchboard-demo";
const CLIENT_EMAIL: &str = "switchboard@switchboard-demo.iam.gserviceaccount.com";
const TOPIC: &str = "notifications";

/// The host config the demo runs: embedded Kafka, and the FCM plugin pointed at the simulator.
pub fn demo_config(
    plugin_dir: &std::path::Path,
    fcm_url: &str,
    fcm_addr: std::net::SocketAddr,
    private_key_pem: &str,
) -> Config {
    let mut config = Config::default();
    config.kafka.topics = vec![TOPIC.to_string()];
    // Each demo run (and each test using this config) remembers done deliveries on its own.
    config.dedup.data_dir = fresh_data_dir();
    config.plugins.insert(
        "fcm".into(),
        PluginConfig {
            path: plugin_dir.join("fcm.wasm"),
            allowed_hosts: vec![fcm_addr.to_string()],
            timeout_ms: 10_000,
            memory_mb: 32,
            max_batch: 100,
            concurrency: 32,
            config: [
                ("project_id", PROJECT.to_string()),
                ("client_email", CLIENT_EMAIL.to_string()),
                ("token_uri", format!("{fcm_url}/token")),
                ("endpoint", fcm_url.to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            secrets: [(
                "service_account_key".to_string(),
                SecretSource::Value(private_key_pem.to_string()),
            )]
            .into_iter()
            .collect(),
        },
    );
    config.channels.insert(
        "push-android".into(),
        [("fcm".to_string(), 100)].into_iter().collect(),
    );
    config
}

/// A new directory under the system temp dir for one run's dedup store.
pub fn fresh_data_dir() -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!("switchboard-dedup-{}-{nanos}", std::process::id()))
}

/// One demo request to one Android device.
pub fn demo_envelope(i: u64) -> String {
    serde_json::json!({
        "id": format!("demo-{i}"),
        "channel": "push-android",
        "priority": if i.is_multiple_of(10) { "realtime" } else { "batch" },
        "recipients": [{"to": format!("device-{i}")}],
        "content": {"title": "Your order", "body": format!("Order {i} is on its way"), "data": {"order": i}},
    })
    .to_string()
}

/// Produces `count` records made by `make` to `topic`, with an idempotent producer.
pub async fn produce(
    brokers: &str,
    topic: &str,
    count: u64,
    make: impl Fn(u64) -> (String, String),
) -> anyhow::Result<()> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .context("creating the producer")?;
    let mut pending = Vec::with_capacity(1000);
    for i in 0..count {
        let (key, value) = make(i);
        let producer = producer.clone();
        let topic = topic.to_string();
        pending.push(async move {
            producer
                .send(
                    FutureRecord::to(&topic).key(&key).payload(&value),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| anyhow::anyhow!("produce failed: {e}"))
        });
        if pending.len() == 1000 {
            for result in futures::future::join_all(std::mem::take(&mut pending)).await {
                result?;
            }
        }
    }
    for result in futures::future::join_all(pending).await {
        result?;
    }
    Ok(())
}

/// Runs the demo end to end.
pub async fn run(options: DemoOptions) -> anyhow::Result<DemoSummary> {
    let fcm_wasm = options.plugin_dir.join("fcm.wasm");
    anyhow::ensure!(
        fcm_wasm.exists(),
        "{} is missing: build the plugins first (`make plugins`)",
        fcm_wasm.display()
    );
    let account = vendorsim::ServiceAccount::generate(CLIENT_EMAIL)?;
    let mut sim_config = vendorsim::fcm::FcmConfig::new(PROJECT, &account);
    sim_config.faults.latency = vendorsim::Latency {
        mean: options.vendor_latency,
        jitter: options.vendor_latency / 2,
    };
    let sim = vendorsim::fcm::start(sim_config).await?;
    let config = demo_config(
        &options.plugin_dir,
        &sim.url(),
        sim.addr,
        &account.private_key_pem,
    );
    let host = crate::host::start(config).await?;
    let say = |line: String| {
        if options.progress {
            eprintln!("[demo] {line}");
        }
    };
    say(format!(
        "host running; kafka at {}, fcm simulator at {}",
        host.bootstrap_servers,
        sim.url()
    ));

    let started = Instant::now();
    let requested = options.messages;
    let brokers = host.bootstrap_servers.clone();
    let producing = tokio::spawn(async move {
        produce(&brokers, TOPIC, requested, |i| {
            (format!("device-{i}"), demo_envelope(i))
        })
        .await
    });

    let mut last_report = Instant::now();
    loop {
        let host_counts = host.counters.snapshot();
        let finished = host_counts.deliveries_final();
        if finished >= requested {
            break;
        }
        if started.elapsed() > options.timeout {
            say(format!(
                "timed out after {:?} with {finished}/{requested} finished",
                options.timeout
            ));
            break;
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            let sim_counts = sim.stats.snapshot();
            let secs = started.elapsed().as_secs_f64().max(0.001);
            say(format!(
                "consumed {} records, delivered {}/{requested} ({:.0}/s), retries {}",
                host_counts.records_consumed,
                sim_counts.delivered,
                sim_counts.delivered as f64 / secs,
                host_counts.retries
            ));
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    producing.await.context("producer task panicked")??;
    let host_counts = host.counters.snapshot();
    host.stop().await?;

    let sim_counts = sim.stats.snapshot();
    let dlq = host_counts.deliveries_rejected
        + host_counts.deliveries_invalid_recipient
        + host_counts.deliveries_failed
        + host_counts.records_undecodable
        + host_counts.records_unknown_channel
        + host_counts.records_expired;
    say(format!(
        "done: {} delivered in {:.1}s",
        sim_counts.delivered,
        elapsed.as_secs_f64()
    ));
    Ok(DemoSummary {
        scenario: "demo",
        requested,
        delivered: sim_counts.delivered,
        lost: requested.saturating_sub(sim_counts.delivered + dlq),
        duplicates: sim_counts.duplicates,
        dlq,
        elapsed_ms: elapsed.as_millis() as u64,
        rate_per_s: (sim_counts.delivered as f64 / elapsed.as_secs_f64().max(0.001)) as u64,
    })
}
