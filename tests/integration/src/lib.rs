//! Shared set-up for the end-to-end tests: where the built components are, the FCM simulator
//! with fresh credentials, plugin loading with chosen limits, and waiting on counts.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard::config::PluginBounds;
use switchboard::contract::{Delivery, Priority};
use switchboard::plugin::capabilities::{AllowedHost, Capabilities, PluginCache, PluginQuotas};
use switchboard::plugin::{LoadedPlugin, PluginLimits, PluginRuntime};
use switchboard::secrets::PluginSecrets;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn built(dir: &str, name: &str) -> PathBuf {
    let path = repo_root()
        .join("build")
        .join(dir)
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run `make plugins guests` (or `make test`) first",
        path.display()
    );
    path
}

/// A bundled plugin component, as `make plugins` builds it.
pub fn plugin_path(name: &str) -> PathBuf {
    built("plugins", name)
}

/// A test guest component, as `make guests` builds it.
pub fn guest_path(name: &str) -> PathBuf {
    built("guests", name)
}

/// The directory of the bundled plugins.
pub fn plugin_dir() -> PathBuf {
    repo_root().join("build/plugins")
}

/// What a test loads a plugin with.
pub struct LoadOptions {
    pub allowed_hosts: Vec<String>,
    pub secrets: Vec<(String, String)>,
    pub config: Vec<(String, String)>,
    pub timeout: Duration,
    pub memory_mb: usize,
    /// Extra CA certificates (PEM) the HTTP client trusts, e.g. a TLS simulator's.
    pub trust_pems: Vec<String>,
    /// Names that may resolve to non-public addresses (`http.private_names`).
    pub private_names: Vec<String>,
    /// What each call, and the plugin, may make the host do (`[plugins.NAME.bounds]`).
    pub bounds: PluginBounds,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            allowed_hosts: Vec::new(),
            secrets: Vec::new(),
            config: Vec::new(),
            timeout: Duration::from_secs(5),
            memory_mb: 32,
            trust_pems: Vec::new(),
            private_names: Vec::new(),
            bounds: PluginBounds::default(),
        }
    }
}

/// A runtime sized for tests.
pub fn runtime() -> PluginRuntime {
    PluginRuntime::new(&Default::default(), 64 << 20).expect("plugin runtime")
}

/// Loads the component at `path` as plugin `name`.
pub async fn load(
    runtime: &PluginRuntime,
    name: &str,
    path: &std::path::Path,
    options: LoadOptions,
) -> Result<LoadedPlugin, switchboard::plugin::LoadError> {
    let (caps, limits, config) = load_settings(name, options);
    runtime.load_file(name, path, caps, limits, config).await
}

/// What [`load`] gives the runtime for plugin `name`: its capabilities, limits and config. The
/// native-backend tests load an adapter linked into the test with the same settings.
pub fn load_settings(
    name: &str,
    options: LoadOptions,
) -> (Capabilities, PluginLimits, Vec<(String, String)>) {
    let caps = Capabilities::new(
        name.to_string(),
        options
            .allowed_hosts
            .iter()
            .map(|h| AllowedHost::parse(h))
            .collect(),
        PluginSecrets::from_values(options.secrets),
        Arc::new(PluginCache::default()),
        switchboard::host::http_client_with(&options.trust_pems, &options.private_names)
            .expect("http client"),
        Default::default(),
    )
    .with_bounds(options.bounds, PluginQuotas::new(&options.bounds));
    let limits = PluginLimits {
        timeout: options.timeout,
        memory_bytes: options.memory_mb << 20,
    };
    (caps, limits, options.config)
}

/// A first-attempt delivery.
pub fn delivery(key: &str, recipient: &str, content: &str) -> Delivery {
    Delivery {
        key: key.to_string(),
        recipient: recipient.to_string(),
        content: content.to_string(),
        priority: Priority::Realtime,
        attempt: 1,
    }
}

/// The FCM simulator with a fresh service account, and the plugin options that reach it.
pub struct FcmFixture {
    pub sim: vendorsim::RunningSim,
    pub account: vendorsim::ServiceAccount,
}

pub const FCM_PROJECT: &str = "switchboard-test";
pub const FCM_EMAIL: &str = "tests@switchboard-test.iam.gserviceaccount.com";

impl FcmFixture {
    /// Starts the simulator; `tune` adjusts its behaviour first.
    pub async fn start(tune: impl FnOnce(&mut vendorsim::fcm::FcmConfig)) -> Self {
        let account = vendorsim::ServiceAccount::generate(FCM_EMAIL).expect("service account");
        let mut config = vendorsim::fcm::FcmConfig::new(FCM_PROJECT, &account);
        tune(&mut config);
        let sim = vendorsim::fcm::start(config).await.expect("fcm simulator");
        Self { sim, account }
    }

    /// Load options for the FCM plugin against this simulator.
    pub fn load_options(&self) -> LoadOptions {
        let url = self.sim.url();
        LoadOptions {
            allowed_hosts: vec![self.sim.addr.to_string()],
            secrets: vec![(
                "service_account_key".into(),
                self.account.private_key_pem.clone(),
            )],
            config: vec![
                ("project_id".into(), FCM_PROJECT.into()),
                ("client_email".into(), FCM_EMAIL.into()),
                ("token_uri".into(), format!("{url}/token")),
                ("endpoint".into(), url),
            ],
            ..Default::default()
        }
    }

    /// A host config that delivers channel `push-android` through the FCM plugin to this
    /// simulator, consuming `topic` from `brokers` as group `group`.
    pub fn host_config(&self, brokers: &str, topic: &str, group: &str) -> switchboard::Config {
        let mut config = switchboard::demo::demo_config(
            &plugin_dir(),
            &self.sim.url(),
            self.sim.addr,
            &self.account.private_key_pem,
        );
        if let Some(fcm) = config.plugins.get_mut("fcm") {
            fcm.config.insert("project_id".into(), FCM_PROJECT.into());
            fcm.config.insert("client_email".into(), FCM_EMAIL.into());
        }
        config.kafka.brokers = Some(brokers.to_string());
        config.kafka.topics = vec![topic.to_string()];
        config.kafka.group_id = group.to_string();
        config.kafka.commit_interval_ms = 200;
        config
    }
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes; true if it held.
pub async fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    condition()
}

/// `n` as unsigned LEB128, the WebAssembly binary format's integers.
fn leb128(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Another version of a component: the same code with a custom section appended, so its bytes
/// (and its version id) differ while it behaves the same. What hot-swap tests and the lab swap.
pub fn relabelled_component(component: &[u8], label: &str) -> Vec<u8> {
    const NAME: &[u8] = b"switchboard-label";
    let mut payload = Vec::new();
    leb128(NAME.len(), &mut payload);
    payload.extend_from_slice(NAME);
    payload.extend_from_slice(label.as_bytes());
    let mut bytes = component.to_vec();
    // Section id 0: a custom section, which every reader skips.
    bytes.push(0);
    leb128(payload.len(), &mut bytes);
    bytes.extend_from_slice(&payload);
    bytes
}

/// Every log line of this process, at every level of every crate (the host's and its
/// dependencies': HTTP, TLS, Kafka), kept to search for what must never be logged.
#[derive(Clone, Default)]
pub struct CapturedLogs(Arc<std::sync::Mutex<Vec<u8>>>);

impl CapturedLogs {
    /// Installs the capture as the process's tracing subscriber. Once per test binary.
    pub fn install() -> Self {
        let captured = Self::default();
        let writer = captured.clone();
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .init();
        captured
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A Kafka record's headers as (name, value) pairs, values read as UTF-8 (lossily): what the
/// DLQ tests look at.
pub fn headers_of(message: &impl rdkafka::Message) -> Vec<(String, String)> {
    use rdkafka::message::Headers;
    message
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| {
                    let value = String::from_utf8_lossy(h.value.unwrap_or_default());
                    (h.key.to_string(), value.into_owned())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `component` with `count` more core instances of a module holding one memory of `pages`
/// 64 KiB pages (no memory at all for 0). They are appended after every other section, so no
/// index the component uses moves; the host instantiates them with the rest. Made by hand because a component that
/// needs many memories is exactly what an honest toolchain never produces.
pub fn with_extra_instances(component: &[u8], pages: u32, count: u32) -> Vec<u8> {
    let modules_before = core_modules(component);
    let leb = |n: u32, out: &mut Vec<u8>| leb128(n as usize, out);
    // (module (memory (export "m") PAGES)), or (module) for no pages.
    let mut module = b"\0asm\x01\0\0\0".to_vec();
    if pages > 0 {
        let mut memory = vec![1, 0];
        leb(pages, &mut memory);
        module.push(5);
        leb(memory.len() as u32, &mut module);
        module.extend(memory);
        module.extend([7, 5, 1, 1, b'm', 2, 0]);
    }
    let mut out = component.to_vec();
    out.push(1); // core module section
    leb(module.len() as u32, &mut out);
    out.extend(module);
    let mut instances = Vec::new();
    leb(count, &mut instances);
    for _ in 0..count {
        instances.push(0); // instantiate
        leb(modules_before, &mut instances);
        instances.push(0); // no arguments
    }
    out.push(2); // core instance section
    leb(instances.len() as u32, &mut out);
    out.extend(instances);
    out
}

/// How many core modules a component defines at its top level.
fn core_modules(component: &[u8]) -> u32 {
    let mut at = 8;
    let mut modules = 0;
    while at < component.len() {
        let id = component[at];
        at += 1;
        let (mut size, mut shift) = (0usize, 0);
        loop {
            let byte = component[at];
            at += 1;
            size |= usize::from(byte & 0x7f) << shift;
            shift += 7;
            if byte < 0x80 {
                break;
            }
        }
        modules += u32::from(id == 1);
        at += size;
    }
    modules
}

/// A host config whose state lives under `work` (dedup, history, artifacts), with the admin
/// listener off so that hosts in parallel tests never fight over its port.
pub fn host_config_in(work: &std::path::Path) -> switchboard::Config {
    let mut config = switchboard::Config::default();
    config.dedup.data_dir = work.join("dedup");
    config.history.path = work.join("history.sqlite3");
    config.runtime.artifact_cache_dir = work.join("artifacts");
    config.runtime.artifact_key_file = work.join("artifact-key");
    config.admin.listen = String::new();
    config
}

/// The `misbehave` test guest as a configured plugin, granted nothing.
pub fn misbehave_plugin() -> switchboard::config::PluginConfig {
    switchboard::config::PluginConfig {
        path: guest_path("misbehave"),
        allowed_hosts: Vec::new(),
        timeout_ms: 5_000,
        memory_mb: 32,
        max_batch: 10,
        concurrency: 4,
        rate_per_s: None,
        burst: None,
        config: Default::default(),
        secrets: Default::default(),
        bounds: Default::default(),
    }
}

/// `topics` and the topics a host on the default config writes to (every retry tier and the
/// DLQ), for a cluster made before the host starts ([`switchboard::kafka::EmbeddedKafka`]
/// adds them too).
pub fn cluster_topics(topics: &[&str]) -> Vec<String> {
    let kafka = switchboard::config::KafkaConfig::default();
    topics
        .iter()
        .map(|t| t.to_string())
        .chain(kafka.output_topics())
        .collect()
}

/// A request on `channel` in the batch lane, keyed by `id`, for one `recipient`, with empty
/// content: what the `misbehave` guest needs to act on its recipient's verb.
pub fn batch_request(id: &str, channel: &str, recipient: &str) -> (String, String) {
    let envelope = serde_json::json!({
        "id": id,
        "channel": channel,
        "priority": "batch",
        "recipients": [{"to": recipient}],
        "content": {},
    });
    (id.to_string(), envelope.to_string())
}

/// The built `switchboard` binary, next to the running test's `deps` directory.
pub fn switchboard_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test runs from a target directory")
        .join("switchboard");
    assert!(
        bin.exists(),
        "{} is missing: `cargo build --release -p switchboard` first",
        bin.display()
    );
    bin
}

/// Runs the built `switchboard` binary with `args` and waits for it.
pub fn run_switchboard(args: &[&str]) -> std::process::Output {
    std::process::Command::new(switchboard_bin())
        .args(args)
        .output()
        .expect("running switchboard")
}

/// The standard output of a command that must have succeeded; otherwise the test fails with
/// both of its outputs.
pub fn succeeded(output: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// A path as the UTF-8 argument a command takes.
pub fn path_arg(path: &std::path::Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

/// Every record of `topic` from the beginning, as far as its watermarks reached when asked:
/// its headers by name, and its value.
pub fn read_topic(
    brokers: &str,
    topic: &str,
) -> Vec<(std::collections::HashMap<String, String>, Vec<u8>)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "topic-reader")
        .create()
        .expect("a reader");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .expect("the topic's metadata");
    let mut tpl = TopicPartitionList::new();
    let mut remaining = 0;
    for p in metadata.topics()[0].partitions() {
        let (low, high) = consumer
            .fetch_watermarks(topic, p.id(), Duration::from_secs(5))
            .expect("the partition's watermarks");
        remaining += high - low;
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .expect("a partition to read");
    }
    consumer.assign(&tpl).expect("the partitions assigned");
    let mut records = Vec::new();
    // A fresh reader may wait on fetches from several partitions: poll until everything the
    // watermarks promise has arrived, within an overall bound.
    let deadline = Instant::now() + Duration::from_secs(30);
    while remaining > 0 && Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message.expect("a record");
        let headers = headers_of(&message).into_iter().collect();
        records.push((headers, message.payload().unwrap_or_default().to_vec()));
        remaining -= 1;
    }
    records
}

/// The real Kafka-protocol broker the tests share (`make services` starts it and sets
/// `SWITCHBOARD_TEST_KAFKA`). Its topics outlive a test run, so each test names its own under a
/// prefix of its own, output topics included.
pub struct RealBroker {
    pub brokers: String,
    prefix: String,
}

impl RealBroker {
    /// The broker, with `topics` (named under this test's prefix) created with `partitions`.
    pub async fn with_topics(test: &str, topics: &[&str], partitions: i32) -> Self {
        let brokers = std::env::var("SWITCHBOARD_TEST_KAFKA").expect(
            "SWITCHBOARD_TEST_KAFKA is not set: run the tests with `make test`, which starts the broker",
        );
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let broker = Self {
            brokers,
            prefix: format!("{test}-{}-{nanos}", std::process::id()),
        };
        let names: Vec<String> = topics.iter().map(|t| broker.topic(t)).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        switchboard::kafka::ensure_topics(&broker.brokers, &names, partitions, &Default::default())
            .await
            .expect("the test's topics created on the broker");
        broker
    }

    /// `name` under this test's prefix.
    pub fn topic(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }

    /// Points `config` at this broker, with its retry, DLQ and result topics under this test's
    /// prefix; `group` is the consumer group, also under the prefix.
    pub fn configure(&self, config: &mut switchboard::Config, group: &str) {
        let kafka = &mut config.kafka;
        kafka.brokers = Some(self.brokers.clone());
        kafka.group_id = self.topic(group);
        kafka.retry_topic = self.topic("retry");
        kafka.dlq_topic = self.topic("dlq");
        kafka.results_topic = self.topic("results");
        kafka.invalidations_topic = self.topic("invalid");
    }
}
