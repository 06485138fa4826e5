//! The self-contained demo: the real host on embedded defaults (in-process Kafka), the five
//! bundled plugins, and a simulator for each vendor on loopback (APNs over TLS and HTTP/2). It produces N requests, waits until each one
//! reached a final outcome, and reports what the simulator counted.
//!
//! Every figure in the summary is counted: `delivered` and `duplicates` by the simulator,
//! `dlq` by the host (deliveries that ended without delivery), `lost` is what is left.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;

use crate::config::{Config, PluginConfig, SecretSource};
/// Kept here too, where the tests and the lab have always found it.
pub use crate::kafka::produce;

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
    /// Deliveries each vendor's simulator accepted.
    pub per_vendor: BTreeMap<&'static str, u64>,
}

const PROJECT: &str = "switchboard-demo";
const CLIENT_EMAIL: &str = "switchboard@switchboard-demo.iam.gserviceaccount.com";
const TOPIC: &str = "notifications";

/// A host config with embedded Kafka and only the FCM plugin, pointed at an FCM simulator: the
/// base of the demo's config, and what the FCM end-to-end tests run.
pub fn demo_config(
    plugin_dir: &std::path::Path,
    fcm_url: &str,
    fcm_addr: std::net::SocketAddr,
    private_key_pem: &str,
) -> Config {
    let mut config = Config::default();
    config.kafka.topics = vec![TOPIC.to_string()];
    // Each demo run (and each test using this config) remembers done deliveries on its own.
    let data = fresh_data_dir();
    config.dedup.data_dir = data.join("dedup");
    config.history.path = data.join("history.sqlite3");
    config.state_dir = Some(data.join("state"));
    // Any free port: tests run many hosts at once, and the demo's console is not the point.
    config.admin.listen = "127.0.0.1:0".into();
    config.runtime.artifact_cache_dir = data.join("artifacts");
    config.runtime.artifact_key_file = data.join("artifact-key");
    config.plugins.insert(
        "fcm".into(),
        PluginConfig {
            path: plugin_dir.join("fcm.wasm"),
            allowed_hosts: vec![fcm_addr.to_string()],
            timeout_ms: 10_000,
            memory_mb: 32,
            max_batch: 100,
            concurrency: 32,
            rate_per_s: None,
            burst: None,
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
            bounds: Default::default(),
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

/// The simulated vendors of the demo, with the credentials the plugins use against them.
pub struct DemoVendors {
    pub fcm: vendorsim::RunningSim,
    pub apns: vendorsim::RunningSim,
    pub alimtalk: vendorsim::RunningSim,
    pub sms_twilio: vendorsim::RunningSim,
    pub sms_nhn: vendorsim::RunningSim,
    /// Every send request the NHN SMS simulator received (its text and recipient count).
    pub sms_nhn_requests: std::sync::Arc<vendorsim::nhn::RequestLog>,
    account: vendorsim::ServiceAccount,
    apns_key: vendorsim::apns::ApnsKey,
    twilio_basic_auth: String,
    /// Holds the APNs simulator's CA certificate and the dedup store of this run.
    work_dir: PathBuf,
}

const APNS_TOPIC: &str = "com.example.switchboard.demo";
const NHN_APPKEY: &str = "demo-appkey";
const NHN_SECRET: &str = "demo-nhn-secret-key";
const ALIMTALK_SENDER: &str = "demo-sender-key";
const ALIMTALK_TEMPLATE: &str = "ORDER_SHIPPED";
const SMS_SEND_NO: &str = "15880000";
const TWILIO_SID: &str = "ACdemo00000000000000000000000000";

impl DemoVendors {
    /// Starts every simulator with `latency` (and half of it as jitter).
    pub async fn start(latency: Duration) -> anyhow::Result<Self> {
        Self::start_with(latency, &[]).await
    }

    /// As [`DemoVendors::start`], with `not_kakao_users`: numbers the Alimtalk simulator answers
    /// with -3018 (not a KakaoTalk user), for the fallback to SMS.
    pub async fn start_with(latency: Duration, not_kakao_users: &[String]) -> anyhow::Result<Self> {
        let faults = vendorsim::Faults {
            latency: vendorsim::Latency {
                mean: latency,
                jitter: latency / 2,
            },
            ..Default::default()
        };
        let account = vendorsim::ServiceAccount::generate(CLIENT_EMAIL)?;
        let mut fcm = vendorsim::fcm::FcmConfig::new(PROJECT, &account);
        fcm.faults = faults.clone();
        let apns_key = vendorsim::apns::ApnsKey::generate("DEMOTEAM01", "DEMOKEY001")?;
        let mut apns = vendorsim::apns::ApnsConfig::new(APNS_TOPIC, &apns_key);
        apns.faults = faults.clone();
        let mut alimtalk =
            vendorsim::nhn::AlimtalkConfig::new(NHN_APPKEY, NHN_SECRET, ALIMTALK_SENDER)
                .template(ALIMTALK_TEMPLATE, &["name", "order"]);
        alimtalk.faults = faults.clone();
        alimtalk.not_kakao_users = not_kakao_users.iter().cloned().collect();
        let mut sms_nhn = vendorsim::nhn::SmsConfig::new(NHN_APPKEY, NHN_SECRET, SMS_SEND_NO);
        sms_nhn.faults = faults.clone();
        let sms_nhn_requests = sms_nhn.requests.clone();
        let twilio_token: String = format!("{:032x}", rand::random::<u128>());
        let mut twilio = vendorsim::twilio::TwilioConfig::new(TWILIO_SID, &twilio_token);
        twilio.faults = faults;
        let twilio_basic_auth = twilio.basic_auth();
        let work_dir = fresh_data_dir();
        std::fs::create_dir_all(&work_dir)
            .with_context(|| format!("creating {}", work_dir.display()))?;
        Ok(Self {
            fcm: vendorsim::fcm::start(fcm).await?,
            apns: vendorsim::apns::start(apns).await?,
            alimtalk: vendorsim::nhn::start_alimtalk(alimtalk).await?,
            sms_twilio: vendorsim::twilio::start(twilio).await?,
            sms_nhn: vendorsim::nhn::start_sms(sms_nhn).await?,
            sms_nhn_requests,
            account,
            apns_key,
            twilio_basic_auth,
            work_dir,
        })
    }

    /// The host config: embedded Kafka, the five bundled plugins, each pointed at its simulator,
    /// and the four channels, SMS split 50/50 between two vendors.
    pub fn host_config(&self, plugin_dir: &Path) -> anyhow::Result<Config> {
        let mut config = demo_config(
            plugin_dir,
            &self.fcm.url(),
            self.fcm.addr,
            &self.account.private_key_pem,
        );
        config.dedup.data_dir = self.work_dir.join("dedup");
        config.history.path = self.work_dir.join("history.sqlite3");
        config.state_dir = Some(self.work_dir.join("state"));
        config.runtime.artifact_cache_dir = self.work_dir.join("artifacts");
        config.runtime.artifact_key_file = self.work_dir.join("artifact-key");
        let ca_file = self.work_dir.join("apns-ca.pem");
        std::fs::write(&ca_file, self.apns.ca_pem.clone().unwrap_or_default())
            .with_context(|| format!("writing {}", ca_file.display()))?;
        config.http.extra_root_certs = vec![ca_file];
        let plugin = |name: &str,
                      sim: &vendorsim::RunningSim,
                      keys: &[(&str, String)],
                      secrets: &[(&str, String)]| {
            PluginConfig {
                path: plugin_dir.join(format!("{name}.wasm")),
                allowed_hosts: vec![match sim.ca_pem {
                    Some(_) => format!("localhost:{}", sim.addr.port()),
                    None => sim.addr.to_string(),
                }],
                timeout_ms: 10_000,
                memory_mb: 32,
                max_batch: 100,
                concurrency: 32,
                rate_per_s: None,
                burst: None,
                config: keys
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect(),
                secrets: secrets
                    .iter()
                    .map(|(k, v)| (k.to_string(), SecretSource::Value(v.clone())))
                    .collect(),
                bounds: Default::default(),
            }
        };
        config.plugins.insert(
            "apns".into(),
            plugin(
                "apns",
                &self.apns,
                &[
                    ("team_id", self.apns_key.team_id.clone()),
                    ("key_id", self.apns_key.key_id.clone()),
                    ("topic", APNS_TOPIC.into()),
                    ("endpoint", self.apns.url()),
                ],
                &[("apns_key", self.apns_key.private_key_pem.clone())],
            ),
        );
        let nhn_secret = [("secret_key", NHN_SECRET.to_string())];
        config.plugins.insert(
            "alimtalk-nhn".into(),
            plugin(
                "alimtalk-nhn",
                &self.alimtalk,
                &[
                    ("appkey", NHN_APPKEY.into()),
                    ("sender_key", ALIMTALK_SENDER.into()),
                    ("endpoint", self.alimtalk.url()),
                ],
                &nhn_secret,
            ),
        );
        config.plugins.insert(
            "sms-nhn".into(),
            plugin(
                "sms-nhn",
                &self.sms_nhn,
                &[
                    ("appkey", NHN_APPKEY.into()),
                    ("send_no", SMS_SEND_NO.into()),
                    ("endpoint", self.sms_nhn.url()),
                ],
                &nhn_secret,
            ),
        );
        config.plugins.insert(
            "sms-twilio".into(),
            plugin(
                "sms-twilio",
                &self.sms_twilio,
                &[
                    ("account_sid", TWILIO_SID.into()),
                    ("from", vendorsim::twilio::MAGIC_FROM.into()),
                    ("endpoint", self.sms_twilio.url()),
                ],
                &[("basic_auth", self.twilio_basic_auth.clone())],
            ),
        );
        for (channel, weights) in [
            ("push-ios", vec![("apns", 100)]),
            ("alimtalk", vec![("alimtalk-nhn", 100)]),
            ("sms", vec![("sms-twilio", 50), ("sms-nhn", 50)]),
        ] {
            config.channels.insert(
                channel.into(),
                weights
                    .into_iter()
                    .map(|(v, w)| (v.to_string(), w))
                    .collect(),
            );
        }
        Ok(config)
    }

    /// Every secret value the demo hands the host, for output scrubbing checks.
    pub fn secret_values(&self) -> Vec<String> {
        vec![
            self.account.private_key_pem.clone(),
            self.apns_key.private_key_pem.clone(),
            NHN_SECRET.to_string(),
            self.twilio_basic_auth.clone(),
        ]
    }

    /// Each vendor simulator's counts, by plugin name.
    pub fn per_vendor(&self) -> BTreeMap<&'static str, vendorsim::StatsSnapshot> {
        BTreeMap::from([
            ("fcm", self.fcm.stats.snapshot()),
            ("apns", self.apns.stats.snapshot()),
            ("alimtalk-nhn", self.alimtalk.stats.snapshot()),
            ("sms-twilio", self.sms_twilio.stats.snapshot()),
            ("sms-nhn", self.sms_nhn.stats.snapshot()),
        ])
    }
}

impl Drop for DemoVendors {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.work_dir);
    }
}

/// Demo request `i`: the channels take turns, so every vendor gets a quarter (SMS's quarter is
/// split between its two vendors by weight).
pub fn demo_request(i: u64) -> (String, String) {
    let (channel, to, content) = match i % 4 {
        0 => (
            "push-android",
            format!("device-{i}"),
            serde_json::json!({"title": "Your order", "body": format!("Order {i} is on its way"), "data": {"order": i}}),
        ),
        1 => (
            "push-ios",
            vendorsim::apns::device_token("ab", i),
            serde_json::json!({"title": "Your order", "body": format!("Order {i} is on its way"), "data": {"order": i}}),
        ),
        2 => (
            "alimtalk",
            format!("0105{:07}", i % 10_000_000),
            serde_json::json!({"template": ALIMTALK_TEMPLATE, "params": {"name": "Kim", "order": i.to_string()}}),
        ),
        _ => (
            "sms",
            format!("+82105{:07}", i % 10_000_000),
            serde_json::json!({"body": format!("Order {i} is on its way")}),
        ),
    };
    let envelope = serde_json::json!({
        "id": format!("demo-{i}"),
        "channel": channel,
        "priority": if i.is_multiple_of(10) { "realtime" } else { "batch" },
        "recipients": [{"to": to}],
        "content": content,
    });
    (to, envelope.to_string())
}

/// Runs the demo end to end.
pub async fn run(options: DemoOptions) -> anyhow::Result<DemoSummary> {
    for plugin in ["fcm", "apns", "alimtalk-nhn", "sms-twilio", "sms-nhn"] {
        let wasm = options.plugin_dir.join(format!("{plugin}.wasm"));
        anyhow::ensure!(
            wasm.exists(),
            "{} is missing: build the plugins first (`make plugins`)",
            wasm.display()
        );
    }
    let vendors = DemoVendors::start(options.vendor_latency).await?;
    let config = vendors.host_config(&options.plugin_dir)?;
    let host = crate::host::start(config).await?;
    let say = |line: String| {
        if options.progress {
            eprintln!("[demo] {line}");
        }
    };
    say(format!("host running; kafka at {}", host.bootstrap_servers));

    let started = Instant::now();
    let requested = options.messages;
    let brokers = host.bootstrap_servers.clone();
    let producing =
        tokio::spawn(async move { produce(&brokers, TOPIC, requested, demo_request).await });

    let delivered = |vendors: &DemoVendors| {
        vendors
            .per_vendor()
            .values()
            .map(|s| s.delivered)
            .sum::<u64>()
    };
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
            let secs = started.elapsed().as_secs_f64().max(0.001);
            let done = delivered(&vendors);
            say(format!(
                "consumed {} records, delivered {done}/{requested} ({:.0}/s), retries {}",
                host_counts.records_consumed,
                done as f64 / secs,
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

    let per_vendor = vendors.per_vendor();
    let delivered = per_vendor.values().map(|s| s.delivered).sum::<u64>();
    let duplicates = per_vendor.values().map(|s| s.duplicates).sum::<u64>();
    let dlq = host_counts.dead_lettered;
    say(format!(
        "done: {delivered} delivered in {:.1}s",
        elapsed.as_secs_f64()
    ));
    Ok(DemoSummary {
        scenario: "demo",
        requested,
        delivered,
        lost: requested.saturating_sub(delivered + dlq),
        duplicates,
        dlq,
        elapsed_ms: elapsed.as_millis() as u64,
        rate_per_s: (delivered as f64 / elapsed.as_secs_f64().max(0.001)) as u64,
        per_vendor: per_vendor
            .into_iter()
            .map(|(k, v)| (k, v.delivered))
            .collect(),
    })
}
