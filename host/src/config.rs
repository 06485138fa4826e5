//! The host's configuration: one TOML file, every field documented here for operators.
//!
//! Owns parsing (unknown keys are errors that name the line), defaults, and validation that
//! crosses fields (a channel naming an unknown plugin). Relative paths resolve against the
//! directory of the config file. It never opens plugins or connects anywhere.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::pem::PemObject as _;
use serde::Deserialize;

/// Why a configuration could not be used. Each message names the file and the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}{}: {field}: {message}", line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Invalid {
        path: PathBuf,
        /// The line the field is on, when the file is at hand.
        line: Option<usize>,
        field: String,
        message: String,
    },
}

impl ConfigError {
    /// The same error with the line of its field in the config file's `text`.
    pub fn with_line_in(self, text: &str) -> ConfigError {
        match self {
            ConfigError::Invalid {
                path,
                field,
                message,
                ..
            } => ConfigError::Invalid {
                path,
                line: line_of(text, &field),
                field,
                message,
            },
            other => other,
        }
    }
}

/// The 1-based line of the dotted `field` (`channels.sms.sms-acme`, `plugins.fcm.path`) in TOML
/// `text`: the key's line inside its table, or the table's header when the key is not there.
/// A plain text search, not a parser: the file has already parsed, and a wrong guess only costs
/// the line number in an error message.
pub fn line_of(text: &str, field: &str) -> Option<usize> {
    let parts: Vec<&str> = field.split('.').collect();
    let lines: Vec<&str> = text.lines().collect();
    let is_header = |line: &str, table: &str| {
        let t = line.trim();
        t.starts_with('[') && t.trim_matches(|c| c == '[' || c == ']').trim() == table
    };
    let key_at = |line: &str, key: &str| {
        let t = line.trim_start();
        let t = t
            .strip_prefix('"')
            .and_then(|r| r.strip_prefix(key))
            .and_then(|r| r.strip_prefix('"'))
            .or_else(|| t.strip_prefix(key));
        t.is_some_and(|rest| {
            rest.trim_start().starts_with('=') || rest.trim_start().starts_with('.')
        })
    };
    // Longest table prefix first: `[plugins.fcm.secrets]` before `[plugins.fcm]`.
    for split in (1..=parts.len()).rev() {
        let table = parts[..split].join(".");
        let Some(header) = lines.iter().position(|l| is_header(l, &table)) else {
            continue;
        };
        let Some(key) = parts.get(split) else {
            return Some(header + 1);
        };
        // A quoted key may hold dots itself: `"enable.auto.commit"` in `[kafka.properties]`.
        let whole_key = parts[split..].join(".");
        let section_end = lines[header + 1..]
            .iter()
            .position(|l| l.trim_start().starts_with('['))
            .map_or(lines.len(), |i| header + 1 + i);
        let in_section = |key: &str| (header + 1..section_end).find(|i| key_at(lines[*i], key));
        return Some(
            in_section(&whole_key)
                .or_else(|| in_section(key))
                .map_or(header + 1, |i| i + 1),
        );
    }
    None
}

/// The whole host configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Kafka connection, topics and offsets.
    #[serde(default)]
    pub kafka: KafkaConfig,
    /// Batching, concurrency and in-process retries.
    #[serde(default)]
    pub dispatch: DispatchConfig,
    /// One lane per traffic class (realtime, batch, ads): topics, concurrency, budget, ordering.
    #[serde(default)]
    pub lanes: LanesConfig,
    /// The one memory budget over fetched, queued, in-flight and retry work.
    #[serde(default)]
    pub budget: BudgetConfig,
    /// The WebAssembly runtime shared by all plugins.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// The HTTP client plugins' requests go through.
    #[serde(default)]
    pub http: HttpConfig,
    /// Which deliveries are already done, so redelivered requests skip them.
    #[serde(default)]
    pub dedup: DedupConfig,
    /// Send history: per-vendor outcome counts by time bucket, for `switchboard history`.
    #[serde(default)]
    pub history: switchboard_history::HistorySettings,
    /// Vendor adapters by name, e.g. `[plugins.fcm]`.
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginConfig>,
    /// Channel name → plugin name → weight, e.g. `[channels.sms] sms-twilio = 50`.
    /// Each delivery of a channel goes to one of its plugins, in proportion to the weights.
    #[serde(default)]
    pub channels: BTreeMap<String, BTreeMap<String, u32>>,
    /// Vendor health over a sliding window, and the circuit breaker that ejects a failing vendor.
    #[serde(default)]
    pub health: HealthConfig,
    /// Canary versions of a plugin, and when one is rolled back automatically.
    #[serde(default)]
    pub canary: CanaryConfig,
    /// Channel → the channel a permanently failed delivery is re-sent on, e.g.
    /// `[fallback.alimtalk] channel = "sms"`.
    #[serde(default)]
    pub fallback: BTreeMap<String, FallbackConfig>,
    /// The admin API, the web console and `/metrics`.
    #[serde(default)]
    pub admin: AdminConfig,
    /// The fleet's control plane: operators' live changes travel through a Kafka topic every
    /// host reads, so a change made on any host reaches all of them.
    #[serde(default)]
    pub control: ControlConfig,
    /// Where operators' live changes are kept across restarts: weights set through the API and
    /// the active plugin versions. The config file stays the baseline; the state overrides it.
    /// Defaults to `data/state`, relative to the config file.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Where the config was read from; relative paths resolve against its directory.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// Kafka settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, e.g. `"kafka-1:9092,kafka-2:9092"`. When absent, the host starts
    /// librdkafka's in-process mock cluster and logs its address, so a fresh machine needs nothing.
    pub brokers: Option<String>,
    /// Consumer group. Hosts in one group share the topics' partitions.
    pub group_id: String,
    /// Topics holding notification requests of any class: each record goes to the lane its
    /// `priority` field names. A lane's own topics (`lanes.<class>.topics`) isolate better; see
    /// docs/ARCHITECTURE.md. May be empty when every lane has topics of its own.
    pub topics: Vec<String>,
    /// How often stored offsets (the completed watermark) are committed, in milliseconds.
    /// Commits are per interval, never per message.
    pub commit_interval_ms: u64,
    /// The consumer's session timeout, in milliseconds.
    pub session_timeout_ms: u64,
    /// Partitions of each topic the host creates: all of them on the embedded cluster, and the
    /// retry, DLQ and result topics on a real one when they do not exist yet.
    pub new_topic_partitions: i32,
    /// Extra librdkafka properties, passed through as they are (e.g. `security.protocol`) to
    /// every Kafka client: consumers, producers, the admin client and the DLQ replay reader.
    /// Properties the host sets itself for at-least-once delivery, or that another field owns,
    /// are refused (see [`HOST_OWNED_KAFKA_PROPERTIES`]). A secret (`sasl.password`, a key
    /// password) may be given as `{ env = "VAR" }` or `{ file = "PATH" }`, as plugin secrets
    /// are; [`Config::kafka_properties`] reads it when the clients are made.
    pub properties: BTreeMap<String, MaybeSecret>,
    /// Where `retry` outcomes wait for their due time: this topic for the last second, and one
    /// topic per tier of `retry_tiers_s` (`NAME.10s`, …) for longer waits.
    pub retry_topic: String,
    /// The fixed delays of the retry tiers, in seconds, rising. A retry due in `d` goes to the
    /// tier of the longest delay at most `d`, and hops down the tiers as its time nears, so
    /// every tier's topic holds records in the order they come due: a retry due soon never
    /// waits behind one due later. Empty keeps every retry in `retry_topic`.
    pub retry_tiers_s: Vec<u64>,
    /// Where every settled delivery's result is published (JSON); empty turns it off.
    pub results_topic: String,
    /// Where every `invalid-recipient` is published (JSON), so apps can remove dead tokens and
    /// numbers; empty turns it off.
    pub invalidations_topic: String,
    /// Where deliveries and records that will not be delivered go, with reason headers.
    pub dlq_topic: String,
    /// On a rebalance, how long revoked partitions may take to finish their in-flight records
    /// before their offsets are committed, in milliseconds. Must stay below the session timeout.
    pub rebalance_drain_ms: u64,
}

impl KafkaConfig {
    /// The retry topics and the fixed delay of each, in milliseconds: `retry_topic` (0, for
    /// retries due within the shortest tier) and one per tier, `retry_topic.{N}s`.
    pub fn retry_topics(&self) -> Vec<(String, u64)> {
        std::iter::once((self.retry_topic.clone(), 0))
            .chain(
                self.retry_tiers_s
                    .iter()
                    .map(|s| (format!("{}.{s}s", self.retry_topic), s * 1000)),
            )
            .collect()
    }

    /// Every topic the host writes to: the retry topic and its tiers, the DLQ, and the result
    /// topics that are on.
    pub fn output_topics(&self) -> Vec<String> {
        let retry_topics = self.retry_topics().into_iter().map(|(topic, _)| topic);
        retry_topics
            .chain(
                [
                    &self.dlq_topic,
                    &self.results_topic,
                    &self.invalidations_topic,
                ]
                .into_iter()
                .cloned(),
            )
            .filter(|t| !t.is_empty())
            .collect()
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: None,
            group_id: "switchboard".into(),
            topics: vec!["notifications".into()],
            // librdkafka's own default is 5 s; 1 s keeps redelivery after a crash small.
            commit_interval_ms: 1000,
            session_timeout_ms: 30_000,
            new_topic_partitions: 4,
            properties: BTreeMap::new(),
            retry_topic: "switchboard.retry".into(),
            retry_tiers_s: vec![1, 10, 60, 600],
            results_topic: "switchboard.results".into(),
            invalidations_topic: "switchboard.invalid-recipients".into(),
            dlq_topic: "switchboard.dlq".into(),
            rebalance_drain_ms: 10_000,
        }
    }
}

/// librdkafka properties the host sets itself, or that another field owns, with why; refused in
/// `[kafka.properties]`, which is applied after the host's own settings and would otherwise
/// silently override them.
///
/// Left to operators, on purpose: `isolation.level` (the host's producers are not
/// transactional; `read_uncommitted` only lets it also see requests of an uncommitted or aborted
/// transaction, it never makes it skip a committed one) and `enable.gapless.guarantee` (it only
/// makes the idempotent producer stricter).
pub const HOST_OWNED_KAFKA_PROPERTIES: &[(&str, &str)] = &[
    (
        "enable.auto.offset.store",
        "the host stores a record's offset only once all its deliveries are settled (at-least-once)",
    ),
    (
        "enable.auto.commit",
        "the host commits the offsets it stored every kafka.commit_interval_ms",
    ),
    (
        "auto.commit.enable",
        "the host commits the offsets it stored every kafka.commit_interval_ms",
    ),
    (
        "auto.commit.interval.ms",
        "set kafka.commit_interval_ms instead",
    ),
    (
        "auto.offset.reset",
        "a new group, or one whose offsets expired, must start at the earliest record, or requests are skipped",
    ),
    (
        "acks",
        "a retry or DLQ write counts as done only once every in-sync replica holds it (acks=all)",
    ),
    (
        "request.required.acks",
        "a retry or DLQ write counts as done only once every in-sync replica holds it (acks=all)",
    ),
    (
        "enable.idempotence",
        "the retry/DLQ producer is idempotent, so a retried write never lands twice",
    ),
    ("group.id", "set kafka.group_id instead"),
    ("bootstrap.servers", "set kafka.brokers instead"),
    ("metadata.broker.list", "set kafka.brokers instead"),
    (
        "session.timeout.ms",
        "set kafka.session_timeout_ms instead, which is checked against kafka.rebalance_drain_ms",
    ),
];

/// librdkafka's default `message.max.bytes`: the largest record the retry/DLQ producer sends
/// unless `[kafka.properties]` raises it.
pub const LIBRDKAFKA_MESSAGE_MAX_BYTES: usize = 1_000_000;

/// Room kept beside a refused record's value when it is written whole to the DLQ: its key, the
/// reason headers and Kafka's record framing. Reasons are short; 64 KiB leaves a wide margin.
pub const DLQ_HEADER_ALLOWANCE_BYTES: usize = 64 * 1024;

/// Batching, concurrency and retries.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatchConfig {
    /// How long a partial batch waits for more deliveries before it is sent, in milliseconds.
    /// The default for the batch and ads lanes; realtime does not linger unless told to.
    pub batch_linger_ms: u64,
    /// Tries per delivery before it is given up as failed.
    pub retry_max_attempts: u32,
    /// First backoff after a `retry` outcome, in milliseconds; doubles each try, with jitter.
    pub retry_base_ms: u64,
    /// Longest backoff between two tries, in milliseconds.
    pub retry_max_ms: u64,
    /// Largest record value accepted, in bytes; larger records are counted as undecodable.
    ///
    /// A refused request is written whole to the DLQ, so this plus
    /// [`DLQ_HEADER_ALLOWANCE_BYTES`] must fit the producer's `message.max.bytes`
    /// (librdkafka's default is 1,000,000 bytes; raise it in `[kafka.properties]`, and the
    /// topics' `max.message.bytes` on the brokers, to accept larger records). The default,
    /// 900 KiB, fits librdkafka's and Kafka's default limits as they are.
    pub max_record_bytes: usize,
    /// A delivery still not done this many seconds after its request was first seen goes to the
    /// DLQ with reason `expired` instead of being retried again.
    pub give_up_after_s: u64,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            batch_linger_ms: 5,
            retry_max_attempts: 5,
            retry_base_ms: 200,
            retry_max_ms: 30_000,
            // 900 KiB + the 64 KiB header allowance stays under librdkafka's default
            // `message.max.bytes` (1,000,000): a valid request always fits the DLQ.
            max_record_bytes: 900 * 1024,
            // A notification an hour late is rarely still wanted; operators of batch traffic
            // raise it.
            give_up_after_s: 3600,
        }
    }
}

/// A traffic class. Each has its own lane: consumers, topics, concurrency and budget.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum TrafficClass {
    /// User-facing pushes that must not wait (an order is on its way).
    Realtime,
    /// Scheduled and transactional bulk (receipts, digests).
    Batch,
    /// Campaigns: the largest volume and the least urgent.
    Ads,
}

impl TrafficClass {
    /// Every class, realtime first.
    pub const ALL: [TrafficClass; 3] = [
        TrafficClass::Realtime,
        TrafficClass::Batch,
        TrafficClass::Ads,
    ];

    /// The class's name in config, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            TrafficClass::Realtime => "realtime",
            TrafficClass::Batch => "batch",
            TrafficClass::Ads => "ads",
        }
    }

    /// A dense index, for per-class arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl From<crate::contract::Priority> for TrafficClass {
    fn from(priority: crate::contract::Priority) -> Self {
        match priority {
            crate::contract::Priority::Realtime => TrafficClass::Realtime,
            crate::contract::Priority::Batch => TrafficClass::Batch,
            crate::contract::Priority::Ads => TrafficClass::Ads,
        }
    }
}

/// The three lanes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LanesConfig {
    pub realtime: LaneConfig,
    pub batch: LaneConfig,
    pub ads: LaneConfig,
}

impl LanesConfig {
    /// The lane of `class`.
    pub fn get(&self, class: TrafficClass) -> &LaneConfig {
        match class {
            TrafficClass::Realtime => &self.realtime,
            TrafficClass::Batch => &self.batch,
            TrafficClass::Ads => &self.ads,
        }
    }
}

/// One lane. Unset fields take the class's default (see the methods).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LaneConfig {
    /// Topics only this lane reads, with a consumer (and consumer group) of its own. Every record
    /// in them belongs to this lane, whatever its `priority` field says.
    pub topics: Vec<String>,
    /// Plugin calls this lane may have running at once, over all vendors.
    pub concurrency: Option<usize>,
    /// Bytes of work this lane may hold, in MiB. Past it, the lane's partitions are paused.
    pub budget_mb: Option<u64>,
    /// `key`: records with the same Kafka key run one after another, different keys at once.
    /// `none`: every record at once. Offsets are correct either way.
    pub ordering: Ordering,
    /// How long a partial batch waits for more, in milliseconds.
    pub linger_ms: Option<u64>,
    /// The longest a fetch waits at the broker for records (librdkafka `fetch.wait.max.ms`):
    /// realtime 10, the others librdkafka's 500. A broker answers as soon as records arrive, but
    /// not every broker does, and realtime cannot afford to find out.
    pub fetch_wait_max_ms: Option<u64>,
    /// Batch and ads only: when realtime requests waited longer than this between being
    /// produced and their call (the worst of a tenth of a second), beyond the least such wait
    /// of the last few minutes, this lane's calls at once are halved, down to 1; they grow back
    /// by one a tenth of a second while realtime waits less than half of it. Ads 40, batch 0;
    /// 0 turns it off.
    pub yield_to_realtime_ms: Option<u64>,
}

impl LaneConfig {
    /// The realtime wait past which this lane gives up calls (see the field); 0 for realtime.
    pub fn yield_to_realtime_ms(&self, class: TrafficClass) -> u64 {
        match class {
            TrafficClass::Realtime => 0,
            TrafficClass::Batch => self.yield_to_realtime_ms.unwrap_or(0),
            TrafficClass::Ads => self.yield_to_realtime_ms.unwrap_or(40),
        }
    }

    /// Calls at once: realtime 64, batch 16, ads 8. Each call carries up to `max_batch`
    /// deliveries, so 8 calls of 100 keep 800 in flight, which covers a 20 ms vendor at 40,000
    /// a second. More bulk calls than that add no throughput on a busy host, only queueing that
    /// realtime then waits behind (measured by `switchboard-lab isolation`: ads at 32 calls gave
    /// realtime a p99 of 237 ms and drained ads slower than at 8 calls, with a p99 of 43 ms).
    pub fn concurrency(&self, class: TrafficClass) -> usize {
        self.concurrency.unwrap_or(match class {
            TrafficClass::Realtime => 64,
            TrafficClass::Batch => 16,
            TrafficClass::Ads => 8,
        })
    }

    /// The lane's budget in bytes: realtime 32 MiB (it is never deep), batch and ads 96 MiB.
    pub fn budget_bytes(&self, class: TrafficClass) -> usize {
        let mb = self.budget_mb.unwrap_or(match class {
            TrafficClass::Realtime => 32,
            TrafficClass::Batch | TrafficClass::Ads => 96,
        });
        (mb as usize) << 20
    }

    /// The fetch wait: 10 ms for realtime, librdkafka's 500 ms for the others.
    pub fn fetch_wait_max_ms(&self, class: TrafficClass) -> u64 {
        self.fetch_wait_max_ms.unwrap_or(match class {
            TrafficClass::Realtime => 10,
            _ => 500,
        })
    }

    /// Linger: none for realtime, `dispatch.batch_linger_ms` for the others.
    pub fn linger_ms(&self, class: TrafficClass, dispatch: &DispatchConfig) -> u64 {
        self.linger_ms.unwrap_or(match class {
            TrafficClass::Realtime => 0,
            _ => dispatch.batch_linger_ms,
        })
    }
}

/// Order of records within a partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    /// Per Kafka key: the same key in order, different keys concurrently.
    #[default]
    Key,
    /// No order: every record at once.
    None,
}

/// The memory budget. Everything the host holds for records is counted against it: librdkafka's
/// prefetch queues are sized from it, and the host's own work (decoded records, queued and
/// in-flight deliveries, retries waiting for the retry topic) is charged to it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetConfig {
    /// The whole budget, in MiB.
    pub total_mb: u64,
    /// A paused lane resumes when its use falls below this share of its budget, in percent.
    pub low_water_percent: u64,
    /// The share of the total given to librdkafka's prefetch queues, in percent, split evenly
    /// over the consumers.
    pub fetch_percent: u64,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            // Under half of a 512 MiB container, leaving room for the runtime and the plugins.
            total_mb: 256,
            low_water_percent: 75,
            // 5 % of 256 MiB over three consumers is about 4 MiB of prefetch each, 2 MiB a
            // fetch. Larger fetches drained bulk no faster and kept the broker busy assembling
            // them while realtime waited (`switchboard-lab isolation`: realtime p99 164 ms at
            // 20 %, 94 ms at 5 %, ads at 16.2k/s and 15.4k/s).
            fetch_percent: 5,
        }
    }
}

/// The shared WebAssembly runtime.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Instances that may exist at once across all plugins (pooling allocator slots).
    pub max_instances: u32,
    /// Epoch tick, in milliseconds: how often a running guest yields so deadlines can fire.
    pub epoch_tick_ms: u64,
    /// KiB of each instance slot's linear memory (and table) kept mapped when its instance
    /// ends, and zeroed with `memset` instead of handed back to the kernel. Every call runs in a
    /// fresh instance, so without it each call faults in and zeroes its heap page by page again.
    /// Costs up to this much resident memory per slot that has run a call; 0 hands everything
    /// back.
    pub memory_keep_resident_kib: usize,
    /// Threads of the realtime lane's own async runtime: its consumer, batching, plugin calls
    /// and HTTP connections run there, so bulk work queued on the shared threads never delays
    /// them. 0 runs realtime on the shared threads.
    pub realtime_threads: usize,
    /// The nice value (0–19) of the `switchboard` binary's shared threads, which run the bulk
    /// lanes, settlement and the admin API, while the realtime lane's threads stay at the
    /// default 0: on a busy machine the kernel then runs realtime work first. Applies when
    /// `realtime_threads` is above 0. 0 keeps every thread at the same priority.
    pub bulk_nice: i32,
    /// Keep each plugin's compiled machine code in `artifact_cache_dir`, so the next load of the
    /// same component (a restart, a reload) takes milliseconds instead of compiling it again for
    /// seconds. `false` compiles on every load.
    pub artifact_cache: bool,
    /// Directory of the compiled artifacts; relative paths resolve against the config file. It
    /// need not be trusted: an artifact is loaded only when its tag verifies under
    /// `artifact_key_file`, and is otherwise deleted and compiled again. It may be shared by
    /// hosts that share the key file.
    pub artifact_cache_dir: PathBuf,
    /// The host's secret key for the artifacts' tags: 32 random bytes, made with mode 0600 when
    /// the file is missing. Relative paths resolve against the config file. It must lie outside
    /// `artifact_cache_dir`, and be writable and readable by the host alone: whoever holds it can
    /// have the host run machine code of their choosing.
    pub artifact_key_file: PathBuf,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            max_instances: 256,
            epoch_tick_ms: 5,
            memory_keep_resident_kib: 1024,
            realtime_threads: 1,
            bulk_nice: 10,
            artifact_cache: true,
            artifact_cache_dir: PathBuf::from("data/artifacts"),
            artifact_key_file: PathBuf::from("data/artifact-key"),
        }
    }
}

/// Where the dedup store keeps done deliveries.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DedupConfig {
    /// `embedded` (a compact store on local disk, for one host), `redis` (shared by a fleet of
    /// hosts) or `off` (no dedup: a redelivered request is sent again).
    pub backend: DedupBackend,
    /// Directory of the embedded store; relative paths resolve against the config file.
    pub data_dir: PathBuf,
    /// How long a done delivery is remembered, in hours. Set it to the topic's retention: a
    /// record older than that can no longer be redelivered.
    pub retention_hours: u64,
    /// Redis URL for the `redis` backend: `redis://` or, with TLS, `rediss://`. A password in
    /// it makes the URL a secret: give it as `{ env = "VAR" }` or `{ file = "PATH" }`.
    pub redis_url: MaybeSecret,
    /// A PEM file of CA certificates trusted for a `rediss://` server instead of the system's
    /// roots; relative paths resolve against the config file.
    pub redis_tls_ca_file: Option<PathBuf>,
    /// Key prefix in Redis.
    pub redis_prefix: String,
    /// SETs per time bucket in Redis. Keep (deliveries per bucket / shards) under 512, Redis's
    /// `set-max-intset-entries`, so each SET stays a compact intset.
    pub redis_shards: u64,
    /// Longest wait for a connection to Redis, handshake included, in milliseconds.
    pub redis_connect_timeout_ms: u64,
    /// Longest wait for Redis's answer to one look-up or mark, in milliseconds. Past it Redis
    /// counts as down: delivery waits (partitions pause) until a probe finds it answering again.
    pub redis_response_timeout_ms: u64,
    /// How often a Redis marked down is probed, in milliseconds.
    pub redis_probe_interval_ms: u64,
}

/// The dedup backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DedupBackend {
    Embedded,
    Redis,
    Off,
}

impl Default for DedupConfig {
    fn default() -> Self {
        Self {
            backend: DedupBackend::Embedded,
            data_dir: PathBuf::from("data/dedup"),
            // Kafka's default log retention is 7 days.
            retention_hours: 168,
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_tls_ca_file: None,
            redis_prefix: "switchboard:dedup".into(),
            redis_shards: 16_384,
            redis_connect_timeout_ms: DEFAULT_REDIS_CONNECT_TIMEOUT.as_millis() as u64,
            redis_response_timeout_ms: DEFAULT_REDIS_RESPONSE_TIMEOUT.as_millis() as u64,
            redis_probe_interval_ms: DEFAULT_REDIS_PROBE_INTERVAL.as_millis() as u64,
        }
    }
}

/// How long a connection to Redis may take, its handshake included. Redis on the same network
/// answers in milliseconds; 2 s rides out a slow TCP handshake or one lost SYN (Linux resends
/// it after 1 s) without holding records long when Redis is truly gone.
pub const DEFAULT_REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long one lookup or mark (one pipeline) may wait for Redis's answer. A pipeline of a
/// large batch takes a few milliseconds; 1 s is far beyond a healthy Redis (a slow command or a
/// fork for a snapshot included) and short enough that a hung one is noticed quickly.
pub const DEFAULT_REDIS_RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);

/// How often a store marked down looks for Redis again. Each probe costs one connection
/// attempt; twice a second keeps the pause after Redis returns under half a second.
pub const DEFAULT_REDIS_PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// The outbound HTTP client.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// PEM files of extra root certificates to trust besides the built-in web roots, e.g. a
    /// vendor sandbox's or a corporate proxy's CA.
    pub extra_root_certs: Vec<PathBuf>,
    /// Host names a plugin may reach although they resolve to a loopback, private, link-local
    /// or otherwise non-public address, e.g. a vendor gateway inside the operator's network.
    /// Every other granted name must resolve to public addresses only, so a name whose DNS
    /// answer changes cannot take a plugin into the host's own network (SECURITY.md). A grant
    /// of an IP address, or of `localhost`, names the address itself and needs no entry here.
    pub private_names: Vec<String>,
}

/// One vendor adapter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// The component file (`.wasm`).
    pub path: PathBuf,
    /// Hosts the plugin may reach: `host` (any port) or `host:port`.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Deadline for a whole call (guest CPU and its HTTP), in milliseconds.
    #[serde(default = "PluginConfig::default_timeout_ms")]
    pub timeout_ms: u64,
    /// Cap on the guest's linear memory, in MiB.
    #[serde(default = "PluginConfig::default_memory_mb")]
    pub memory_mb: u64,
    /// Upper bound on deliveries per call; the plugin's own `max-batch` may lower it.
    #[serde(default = "PluginConfig::default_max_batch")]
    pub max_batch: u32,
    /// Calls to this vendor that may run at once, over all lanes. A quarter of them (at least
    /// one) is kept for the realtime lane, so bulk traffic never takes every slot.
    #[serde(default = "PluginConfig::default_concurrency")]
    pub concurrency: usize,
    /// Deliveries per second this vendor accepts (a token bucket over all lanes); unset means
    /// no limit. A quarter of the bucket is kept for realtime.
    #[serde(default)]
    pub rate_per_s: Option<f64>,
    /// Deliveries the bucket may send at once after a quiet spell; defaults to one second's worth.
    #[serde(default)]
    pub burst: Option<u32>,
    /// Passed to the plugin's `init`, as string pairs.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Secrets the plugin may use by name, through `sign` and `{{secret:NAME}}` placeholders.
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretSource>,
    /// What one call, and the plugin as a whole, may make the host do besides CPU and memory:
    /// HTTP requests, bytes transferred, log lines.
    #[serde(default)]
    pub bounds: PluginBounds,
}

/// What a plugin's calls may make the host do, beyond its deadline and memory cap. Each bound
/// has a counter (`/metrics`, `plugin_*`) and a clear outcome when it is reached; the defaults
/// are far above what the bundled adapters need for a batch of 500.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginBounds {
    /// HTTP requests one call may make, `send` and `send_all` together. Past it a request is
    /// refused (`denied`, "request limit") without being sent.
    pub requests_per_call: u32,
    /// Requests of one call in flight at once: `send-all` sends this many at a time.
    pub requests_in_flight_per_call: u32,
    /// Requests of the plugin in flight at once, over all its calls; a request waits for a
    /// slot within its call's deadline. Bulk lanes may hold three quarters of them, so a
    /// realtime request finds a slot while a backlog drains.
    pub requests_in_flight: u32,
    /// Bytes one call may send and receive over HTTP (request and response bodies). Past it the
    /// request fails with a protocol error naming the budget.
    pub transfer_bytes_per_call: u64,
    /// Log lines the plugin may emit per second (also the burst); the rest are dropped and
    /// counted, with one warning per second saying how many.
    pub log_lines_per_s: u32,
    /// Log bytes the plugin may emit per second (also the burst).
    pub log_bytes_per_s: u64,
}

impl Default for PluginBounds {
    fn default() -> Self {
        Self {
            requests_per_call: 1000,
            requests_in_flight_per_call: 64,
            requests_in_flight: 512,
            transfer_bytes_per_call: 64 << 20,
            log_lines_per_s: 200,
            log_bytes_per_s: 256 << 10,
        }
    }
}

impl PluginConfig {
    const fn default_timeout_ms() -> u64 {
        10_000
    }
    const fn default_memory_mb() -> u64 {
        64
    }
    const fn default_max_batch() -> u32 {
        100
    }
    const fn default_concurrency() -> usize {
        32
    }
}

/// Vendor health: what each vendor answered over a sliding window, and when its circuit
/// breaker ejects it. An ejected vendor gets no new deliveries; its share goes to the healthy
/// vendors of its channel until probes restore it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// The sliding window the error rate is taken over, in seconds.
    pub window_s: u64,
    /// Answers the window must hold before the breaker judges a vendor, so a handful of
    /// errors at low traffic cannot eject it.
    pub min_calls: u64,
    /// The share of errors and timeouts in the window that ejects a vendor, in percent.
    pub error_percent: u64,
    /// How long an ejected vendor waits before it is probed, in seconds. Doubles each time a
    /// probe fails, up to `max_open_s`.
    pub open_s: u64,
    /// The longest wait between probes, in seconds.
    pub max_open_s: u64,
    /// Deliveries let through at once while half-open; this many successes in a row restore
    /// the vendor, and one failure ejects it again.
    pub probes: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            // A whole outage is seen once its errors outnumber the window's earlier successes:
            // about half the window. With 10 s, `switchboard-lab outage` saw the ejection
            // 5.1 s after the outage began; 5 s halves that.
            window_s: 5,
            min_calls: 20,
            error_percent: 50,
            open_s: 5,
            max_open_s: 60,
            probes: 3,
        }
    }
}

/// Canary versions: `PUT /v1/plugins/{name}/canary` sends a share of a plugin's calls to another
/// version; it is rolled back automatically when it does worse than the stable version.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CanaryConfig {
    /// How many percentage points the canary's error rate may exceed the stable version's
    /// before it is rolled back.
    pub margin_percent: u64,
    /// Deliveries the canary must have answered before it is judged.
    pub min_calls: u64,
    /// The window both versions' error rates are taken over, in seconds.
    pub window_s: u64,
}

impl Default for CanaryConfig {
    fn default() -> Self {
        Self {
            margin_percent: 10,
            min_calls: 50,
            window_s: 30,
        }
    }
}

/// The fleet's control plane (`docs/ARCHITECTURE.md`, "The fleet"): weights, plugin versions
/// and canaries set through any host's admin API are written to a compacted control topic that
/// every host reads from its beginning, and each host reports what it applied to a fleet topic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// `true` or `false`; when absent, on when `kafka.brokers` is set and off on the embedded
    /// test cluster (which deletes older records, so it cannot keep the desired state).
    pub enabled: Option<bool>,
    /// The compacted topic holding the desired state, created at start with one partition.
    pub topic: String,
    /// The compacted topic each host reports its applied state to, created at start.
    pub fleet_topic: String,
    /// This host's name in the fleet; when absent, the machine's host name and the process id.
    pub host_id: Option<String>,
    /// How often this host reports what it applied, in milliseconds.
    pub report_interval_ms: u64,
    /// A host not heard from for this long drops out of the fleet view, in seconds.
    pub host_expiry_s: u64,
    /// How long a starting host may take to read the control topic to its end before it
    /// refuses to start, in seconds. It consumes no request before it has.
    pub converge_timeout_s: u64,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            enabled: None,
            topic: "switchboard.control".into(),
            fleet_topic: "switchboard.fleet".into(),
            host_id: None,
            report_interval_ms: 1000,
            host_expiry_s: 15,
            converge_timeout_s: 60,
        }
    }
}

impl ControlConfig {
    /// Whether the control plane runs, given whether Kafka brokers are configured.
    pub fn is_on(&self, brokers_configured: bool) -> bool {
        self.enabled.unwrap_or(brokers_configured)
    }
}

/// A fallback channel: a delivery that fails permanently on its channel is re-sent on another,
/// e.g. an Alimtalk message to someone who is not a KakaoTalk user goes out as SMS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackConfig {
    /// The channel the delivery is re-sent on.
    pub channel: String,
    /// Which permanent outcomes fall back: `rejected`, `invalid-recipient` or both.
    #[serde(default = "FallbackConfig::default_on")]
    pub on: Vec<FallbackOn>,
    /// Template code → the text sent on the fallback channel, with `#{name}` filled in from the
    /// template's params (Kakao's placeholder syntax). A template not listed here is sent as its
    /// params' values, joined by spaces, after the template code.
    #[serde(default)]
    pub templates: BTreeMap<String, String>,
}

impl FallbackConfig {
    fn default_on() -> Vec<FallbackOn> {
        vec![FallbackOn::Rejected, FallbackOn::InvalidRecipient]
    }
}

/// An outcome that sends a delivery to its fallback channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FallbackOn {
    Rejected,
    InvalidRecipient,
}

/// The admin API (weights, plugin versions, canaries), the web console and `/metrics`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Where it listens, e.g. `127.0.0.1:8088`; empty turns the admin API off. Port 0 picks a
    /// free port, which the host logs.
    pub listen: String,
    /// The bearer token mutations must carry. When unset, `SWITCHBOARD_ADMIN_TOKEN` is read;
    /// when that is unset too, mutations are refused (reads stay open).
    pub token: Option<SecretSource>,
    /// Largest plugin upload, in MiB.
    pub max_upload_mb: u64,
    /// Largest JSON request body, in KiB.
    pub max_body_kb: u64,
    /// A directory watched for new plugin versions: `NAME.wasm` (or `NAME@anything.wasm`)
    /// dropped there is loaded and activated as plugin NAME. Write the file elsewhere and
    /// rename it in, so a half-written file is never read.
    pub watch_dir: Option<PathBuf>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8088".into(),
            token: None,
            max_upload_mb: 64,
            max_body_kb: 64,
            watch_dir: None,
        }
    }
}

/// A value that may be a secret: written out, or read from the environment or a file. Used by
/// `[kafka.properties]` and `dedup.redis_url` (`history.url` has the history crate's own
/// `UrlSetting`, of the same form).
#[derive(Clone, Deserialize)]
#[serde(untagged)]
pub enum MaybeSecret {
    Plain(String),
    Secret(SecretSource),
}

impl std::fmt::Debug for MaybeSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // A URL written out may carry a password: print it redacted.
            MaybeSecret::Plain(value) => write!(f, "{:?}", switchboard_history::redact_url(value)),
            MaybeSecret::Secret(source) => write!(f, "{source:?}"),
        }
    }
}

impl From<&str> for MaybeSecret {
    fn from(value: &str) -> Self {
        MaybeSecret::Plain(value.to_string())
    }
}

impl From<String> for MaybeSecret {
    fn from(value: String) -> Self {
        MaybeSecret::Plain(value)
    }
}

/// Where a secret's value comes from. Values are never logged.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum SecretSource {
    /// Inline in the config (for development).
    Value(String),
    /// An environment variable.
    Env(String),
    /// A file; relative paths resolve against the config file's directory.
    File(PathBuf),
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::Value(_) => write!(f, "Value(<redacted>)"),
            SecretSource::Env(name) => write!(f, "Env({name})"),
            SecretSource::File(path) => write!(f, "File({})", path.display()),
        }
    }
}

impl Config {
    /// The state directory (`state_dir`), resolved against the config file's directory.
    pub fn state_dir(&self) -> PathBuf {
        let dir = self
            .state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("data/state"));
        self.resolve(&dir)
    }

    /// Reads and parses the config at `path`, unchecked, with its text (for line numbers).
    fn read(path: &Path) -> Result<(Config, String), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Config::parse(&text, path)?;
        config.source = Some(path.to_path_buf());
        Ok((config, text))
    }

    /// Reads and parses the config at `path`, then lists every problem `load` would stop at:
    /// values, references between sections, files and secrets, each with its line. `Err` when
    /// the file does not read or parse (nothing more can be checked then).
    pub fn check_file(path: &Path) -> Result<(Config, Vec<ConfigError>), ConfigError> {
        let (config, text) = Config::read(path)?;
        let problems = config
            .problems()
            .into_iter()
            .chain(config.file_and_env_problems())
            .map(|problem| problem.with_line_in(&text))
            .collect();
        Ok((config, problems))
    }

    /// Reads, parses and validates the config at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let (config, text) = Config::read(path)?;
        let with_line = |error: ConfigError| error.with_line_in(&text);
        config.validate().map_err(with_line)?;
        config.check_files_and_env().map_err(with_line)?;
        Ok(config)
    }

    /// Checks what lives outside the file: plugin components exist, and secrets from the
    /// environment are set. Done at load so `run` fails at once, naming the field.
    fn check_files_and_env(&self) -> Result<(), ConfigError> {
        match self.file_and_env_problems().into_iter().next() {
            Some(problem) => Err(problem),
            None => Ok(()),
        }
    }

    /// Every problem [`Config::check_files_and_env`] would stop at.
    fn file_and_env_problems(&self) -> Vec<ConfigError> {
        let mut problems = Vec::new();
        let invalid = |field: String, message: String| self.invalid_field(&field, message);
        for (name, plugin) in &self.plugins {
            let path = self.resolve(&plugin.path);
            if !path.is_file() {
                problems.push(invalid(
                    format!("plugins.{name}.path"),
                    format!("plugin file {} does not exist", path.display()),
                ));
            }
            for (secret, source) in &plugin.secrets {
                if let SecretSource::Env(var) = source
                    && std::env::var_os(var).is_none()
                {
                    problems.push(invalid(
                        format!("plugins.{name}.secrets.{secret}"),
                        format!("environment variable `{var}` is not set"),
                    ));
                }
            }
        }
        // Secrets are read now, and the stores' URLs and CA files checked, so that a fault of
        // the config stops the start naming its line, and is never taken for an outage.
        if self.dedup.backend == DedupBackend::Redis
            && let Err(problem) = self.check_redis_sources()
        {
            problems.push(problem);
        }
        if let Err(error) = self.history_settings().check_sources() {
            problems.push(match error {
                switchboard_history::HistoryError::Config { field, reason } => {
                    invalid(format!("history.{field}"), reason)
                }
                other => invalid("history".into(), other.to_string()),
            });
        }
        // Each property on its own, so every unreadable secret is named.
        for (name, property) in &self.kafka.properties {
            if let Err(problem) =
                self.read_maybe_secret(&format!("kafka.properties.{name}"), property)
            {
                problems.push(problem);
            }
        }
        problems
    }

    /// `dedup.redis_url` reads and parses, and `dedup.redis_tls_ca_file` reads, holds
    /// certificates and goes with a `rediss://` URL. Connects to nothing.
    fn check_redis_sources(&self) -> Result<(), ConfigError> {
        let invalid = |field: &str, message: String| self.invalid_field(field, message);
        let url = self.redis_url()?;
        // Parsing makes no connection; the error names no part of the URL.
        redis::Client::open(url.as_str())
            .map_err(|e| invalid("dedup.redis_url", format!("is not a Redis URL: {e}")))?;
        if let Some(path) = &self.dedup.redis_tls_ca_file {
            let path = self.resolve(path);
            let pem = std::fs::read(&path).map_err(|e| {
                invalid(
                    "dedup.redis_tls_ca_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let certificates = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    invalid(
                        "dedup.redis_tls_ca_file",
                        format!("{}: not a PEM file of certificates: {e}", path.display()),
                    )
                })?;
            if certificates.is_empty() {
                return Err(invalid(
                    "dedup.redis_tls_ca_file",
                    format!("{}: holds no certificate", path.display()),
                ));
            }
            if !url.starts_with("rediss://") {
                return Err(invalid(
                    "dedup.redis_tls_ca_file",
                    "is set, but dedup.redis_url is not a rediss:// URL: the connection would \
                     be plain TCP and the CA file unused"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    /// Parses TOML text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// The history settings with their paths (SQLite file, URL file, CA file) resolved against
    /// the config file's directory.
    pub fn history_settings(&self) -> switchboard_history::HistorySettings {
        let mut settings = self.history.clone();
        settings.path = self.resolve(&settings.path);
        settings.tls_ca_file = settings.tls_ca_file.map(|path| self.resolve(&path));
        if let switchboard_history::UrlSetting::Secret(switchboard_history::UrlSecret::File(path)) =
            &mut settings.url
        {
            *path = self.resolve(path);
        }
        settings
    }

    /// `[kafka.properties]` as librdkafka takes them, with each secret read from its
    /// environment variable or file (relative paths against the config file's directory). The
    /// error names the property, never a value.
    pub fn kafka_properties(&self) -> Result<BTreeMap<String, String>, ConfigError> {
        self.kafka
            .properties
            .iter()
            .map(|(name, property)| {
                let value =
                    self.read_maybe_secret(&format!("kafka.properties.{name}"), property)?;
                Ok((name.clone(), value))
            })
            .collect()
    }

    /// `dedup.redis_url`, read from its environment variable or file when it is a secret.
    pub fn redis_url(&self) -> Result<String, ConfigError> {
        self.read_maybe_secret("dedup.redis_url", &self.dedup.redis_url)
    }

    /// An error of `field` in this config's file; the line is added where the text is at hand.
    fn invalid_field(&self, field: &str, message: String) -> ConfigError {
        ConfigError::Invalid {
            path: self
                .source
                .clone()
                .unwrap_or_else(|| PathBuf::from("<inline>")),
            line: None,
            field: field.to_string(),
            message,
        }
    }

    /// The value of `setting`, read from its environment variable or file (relative paths
    /// against the config file's directory) when it is a secret. The error names `field`,
    /// never a value.
    fn read_maybe_secret(&self, field: &str, setting: &MaybeSecret) -> Result<String, ConfigError> {
        let invalid = |message: String| self.invalid_field(field, message);
        Ok(match setting {
            MaybeSecret::Plain(value) | MaybeSecret::Secret(SecretSource::Value(value)) => {
                value.clone()
            }
            MaybeSecret::Secret(SecretSource::Env(var)) => std::env::var(var)
                .map_err(|_| invalid(format!("environment variable `{var}` is not set")))?,
            MaybeSecret::Secret(SecretSource::File(path)) => {
                let path = self.resolve(path);
                std::fs::read_to_string(&path)
                    .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                    .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?
            }
        })
    }

    /// Resolves a path from the config against the config file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        match self.source.as_deref().and_then(Path::parent) {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_path_buf(),
        }
    }

    /// The first cycle in the fallback graph, as the channels along it with the first repeated
    /// at the end (`alimtalk → sms → alimtalk`). Each channel has at most one fallback, so a
    /// walk from each channel either ends or comes back to a channel it already passed.
    fn fallback_cycle(&self) -> Option<Vec<&str>> {
        for start in self.fallback.keys() {
            let mut path: Vec<&str> = vec![start];
            let mut next = self.fallback.get(start).map(|f| f.channel.as_str());
            while let Some(channel) = next {
                if let Some(at) = path.iter().position(|c| *c == channel) {
                    let mut cycle = path.split_off(at);
                    cycle.push(channel);
                    return Some(cycle);
                }
                path.push(channel);
                next = self.fallback.get(channel).map(|f| f.channel.as_str());
            }
        }
        None
    }

    /// A refused request is written whole to the DLQ: the largest accepted record plus its
    /// headers must fit the producer's `message.max.bytes`, or the DLQ write itself fails.
    fn check_record_fits_the_dlq(
        &self,
        invalid: &dyn Fn(String, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let set = self
            .kafka
            .properties
            .iter()
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("message.max.bytes"));
        let (limit, whose) = match set {
            Some((name, MaybeSecret::Plain(value))) => match value.trim().parse::<usize>() {
                Ok(limit) => (limit, "set in [kafka.properties]"),
                Err(_) => {
                    return Err(invalid(
                        format!("kafka.properties.{name}"),
                        format!("`{value}` is not a number of bytes"),
                    ));
                }
            },
            Some((name, MaybeSecret::Secret(_))) => {
                return Err(invalid(
                    format!("kafka.properties.{name}"),
                    "a size is not a secret: write the number of bytes".to_string(),
                ));
            }
            None => (LIBRDKAFKA_MESSAGE_MAX_BYTES, "librdkafka's default"),
        };
        let needed = self
            .dispatch
            .max_record_bytes
            .saturating_add(DLQ_HEADER_ALLOWANCE_BYTES);
        if needed > limit {
            return Err(invalid(
                "dispatch.max_record_bytes".into(),
                format!(
                    "{} bytes plus {DLQ_HEADER_ALLOWANCE_BYTES} for the DLQ record's key and headers exceed the producer's message.max.bytes ({limit}, {whose}), so a refused record could not be dead-lettered: lower dispatch.max_record_bytes to at most {}, or raise \"message.max.bytes\" in [kafka.properties] to at least {needed} (and the topics' max.message.bytes on the brokers)",
                    self.dispatch.max_record_bytes,
                    limit.saturating_sub(DLQ_HEADER_ALLOWANCE_BYTES),
                ),
            ));
        }
        Ok(())
    }

    /// Checks what parsing cannot: references between sections and values out of range.
    /// Stops at the first problem; [`Config::problems`] lists them all.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.problems().into_iter().next() {
            Some(problem) => Err(problem),
            None => Ok(()),
        }
    }

    /// Every problem [`Config::validate`] would refuse the config for, in the file's order of
    /// sections, each naming its field.
    pub fn problems(&self) -> Vec<ConfigError> {
        let mut problems = Vec::new();
        let invalid = |field: String, message: String| ConfigError::Invalid {
            line: None,
            path: self
                .source
                .clone()
                .unwrap_or_else(|| PathBuf::from("<inline>")),
            field,
            message,
        };
        if self.kafka.topics.is_empty()
            && TrafficClass::ALL
                .iter()
                .all(|c| self.lanes.get(*c).topics.is_empty())
        {
            problems.push(invalid(
                "kafka.topics".into(),
                "names no topic, and no lane has topics of its own".into(),
            ));
        }
        let mut seen = std::collections::HashMap::new();
        let owned = self
            .kafka
            .topics
            .iter()
            .map(|t| ("kafka.topics".to_string(), t));
        let laned = TrafficClass::ALL.iter().flat_map(|c| {
            self.lanes
                .get(*c)
                .topics
                .iter()
                .map(move |t| (format!("lanes.{}.topics", c.as_str()), t))
        });
        for (field, topic) in owned.chain(laned) {
            if let Some(first) = seen.insert(topic.clone(), field.clone()) {
                problems.push(invalid(
                    field,
                    format!("topic `{topic}` is already read by {first}; a topic feeds one lane"),
                ));
            }
        }
        for (field, value) in [
            (
                "dedup.redis_connect_timeout_ms",
                self.dedup.redis_connect_timeout_ms,
            ),
            (
                "dedup.redis_response_timeout_ms",
                self.dedup.redis_response_timeout_ms,
            ),
            (
                "dedup.redis_probe_interval_ms",
                self.dedup.redis_probe_interval_ms,
            ),
        ] {
            if value == 0 {
                problems.push(invalid(
                    field.into(),
                    "must be above 0: without it a hung Redis would stall delivery".into(),
                ));
            }
        }
        for class in TrafficClass::ALL {
            let lane = self.lanes.get(class);
            let field = |f: &str| format!("lanes.{}.{f}", class.as_str());
            if lane.concurrency == Some(0) {
                problems.push(invalid(field("concurrency"), "must be at least 1".into()));
            }
            if lane.budget_mb == Some(0) {
                problems.push(invalid(field("budget_mb"), "must be at least 1".into()));
            }
        }
        if self.budget.total_mb < 16 {
            problems.push(invalid(
                "budget.total_mb".into(),
                "must be at least 16 (MiB)".into(),
            ));
        }
        if !(10..=95).contains(&self.budget.low_water_percent) {
            problems.push(invalid(
                "budget.low_water_percent".into(),
                "must be 10..=95".into(),
            ));
        }
        if !(1..=50).contains(&self.budget.fetch_percent) {
            problems.push(invalid(
                "budget.fetch_percent".into(),
                "must be 1..=50".into(),
            ));
        }
        if self.kafka.rebalance_drain_ms >= self.kafka.session_timeout_ms {
            problems.push(invalid(
                "kafka.rebalance_drain_ms".into(),
                format!(
                    "{} ms must be below kafka.session_timeout_ms ({} ms), or the group evicts this host while it drains",
                    self.kafka.rebalance_drain_ms, self.kafka.session_timeout_ms
                ),
            ));
        }
        for name in self.kafka.properties.keys() {
            if let Some((_, why)) = HOST_OWNED_KAFKA_PROPERTIES
                .iter()
                .find(|(owned, _)| name.trim().eq_ignore_ascii_case(owned))
            {
                problems.push(invalid(
                    format!("kafka.properties.{name}"),
                    format!("`{name}` cannot be set here: {why}"),
                ));
            }
        }
        if let Err(problem) = self.check_record_fits_the_dlq(&invalid) {
            problems.push(problem);
        }
        if self.kafka.retry_tiers_s.contains(&0)
            || self.kafka.retry_tiers_s.windows(2).any(|w| w[0] >= w[1])
        {
            problems.push(invalid(
                "kafka.retry_tiers_s".into(),
                "must be rising delays in seconds, each above 0, e.g. [1, 10, 60, 600]".into(),
            ));
        }
        let retry_topics: Vec<String> = self
            .kafka
            .retry_topics()
            .into_iter()
            .map(|(topic, _)| topic)
            .collect();
        for special in retry_topics.iter().chain([&self.kafka.dlq_topic]) {
            if self.kafka.topics.contains(special)
                || TrafficClass::ALL
                    .iter()
                    .any(|c| self.lanes.get(*c).topics.contains(special))
            {
                problems.push(invalid(
                    "kafka.topics".into(),
                    format!(
                        "`{special}` is the retry or DLQ topic and cannot also be a request topic"
                    ),
                ));
            }
        }
        if let Err(switchboard_history::HistoryError::Config { field, reason }) =
            self.history.validate()
        {
            problems.push(invalid(format!("history.{field}"), reason));
        }
        if self.runtime.artifact_cache
            && self
                .resolve(&self.runtime.artifact_key_file)
                .starts_with(self.resolve(&self.runtime.artifact_cache_dir))
        {
            problems.push(invalid(
                "runtime.artifact_key_file".into(),
                "must lie outside runtime.artifact_cache_dir: the key is the host's secret, the cache directory is not".into(),
            ));
        }
        if !(0..=19).contains(&self.runtime.bulk_nice) {
            problems.push(invalid(
                "runtime.bulk_nice".into(),
                "must be 0..=19: the host only lowers its shared threads' priority".into(),
            ));
        }
        if self.dispatch.retry_max_attempts == 0 {
            problems.push(invalid(
                "dispatch.retry_max_attempts".into(),
                "must be at least 1".into(),
            ));
        }
        for (name, plugin) in &self.plugins {
            let field = |f: &str| format!("plugins.{name}.{f}");
            if plugin.timeout_ms == 0 {
                problems.push(invalid(field("timeout_ms"), "must be above 0".into()));
            }
            if plugin.memory_mb == 0 || plugin.memory_mb > 4096 {
                problems.push(invalid(field("memory_mb"), "must be 1..=4096".into()));
            }
            if let Some(rate) = plugin.rate_per_s
                && !(rate.is_finite() && rate > 0.0)
            {
                problems.push(invalid(
                    field("rate_per_s"),
                    "must be a positive number of deliveries per second".into(),
                ));
            }
            if plugin.burst == Some(0) {
                problems.push(invalid(field("burst"), "must be at least 1".into()));
            }
            if plugin.max_batch == 0 || plugin.concurrency == 0 {
                problems.push(invalid(
                    field("max_batch/concurrency"),
                    "must be at least 1".into(),
                ));
            }
            let bounds = &plugin.bounds;
            for (bound, value) in [
                ("requests_per_call", u64::from(bounds.requests_per_call)),
                (
                    "requests_in_flight_per_call",
                    u64::from(bounds.requests_in_flight_per_call),
                ),
                ("requests_in_flight", u64::from(bounds.requests_in_flight)),
                ("transfer_bytes_per_call", bounds.transfer_bytes_per_call),
                ("log_lines_per_s", u64::from(bounds.log_lines_per_s)),
                ("log_bytes_per_s", bounds.log_bytes_per_s),
            ] {
                if value == 0 {
                    problems.push(invalid(
                        field(&format!("bounds.{bound}")),
                        "must be at least 1".into(),
                    ));
                }
            }
        }
        for (channel, weights) in &self.channels {
            if weights.is_empty() {
                problems.push(invalid(
                    format!("channels.{channel}"),
                    "names no plugin".into(),
                ));
            }
            for vendor in weights.keys() {
                if !self.plugins.contains_key(vendor) {
                    problems.push(invalid(
                        format!("channels.{channel}.{vendor}"),
                        format!("no plugin `{vendor}` is configured under [plugins]"),
                    ));
                }
            }
            if weights.values().all(|w| *w == 0) {
                problems.push(invalid(
                    format!("channels.{channel}"),
                    "every weight is 0".into(),
                ));
            }
        }
        for (channel, fallback) in &self.fallback {
            for (field, name) in [("", channel), (".channel", &fallback.channel)] {
                if !self.channels.contains_key(name) {
                    problems.push(invalid(
                        format!("fallback.{channel}{field}"),
                        format!("no channel `{name}` is configured under [channels]"),
                    ));
                }
            }
            if fallback.channel == *channel {
                problems.push(invalid(
                    format!("fallback.{channel}.channel"),
                    "a channel cannot fall back to itself".into(),
                ));
            }
        }
        if let Some(cycle) = self.fallback_cycle() {
            problems.push(invalid(
                format!("fallback.{}.channel", cycle[0]),
                format!(
                    "fallback channels form a cycle ({}): a delivery would be re-sent around it forever",
                    cycle.join(" → ")
                ),
            ));
        }
        let health = &self.health;
        if health.window_s == 0 || health.window_s > 600 {
            problems.push(invalid("health.window_s".into(), "must be 1..=600".into()));
        }
        if !(1..=100).contains(&health.error_percent) {
            problems.push(invalid(
                "health.error_percent".into(),
                "must be 1..=100".into(),
            ));
        }
        if health.open_s == 0 || health.max_open_s < health.open_s || health.probes == 0 {
            problems.push(invalid(
                "health.open_s/max_open_s/probes".into(),
                "open_s and probes must be at least 1, and max_open_s at least open_s".into(),
            ));
        }
        if self.canary.window_s == 0 || self.canary.window_s > 600 {
            problems.push(invalid("canary.window_s".into(), "must be 1..=600".into()));
        }
        if self
            .lanes
            .realtime
            .yield_to_realtime_ms
            .is_some_and(|ms| ms > 0)
        {
            problems.push(invalid(
                "lanes.realtime.yield_to_realtime_ms".into(),
                "only the batch and ads lanes yield to realtime; remove it from [lanes.realtime]"
                    .into(),
            ));
        }
        let control = &self.control;
        if control.topic.is_empty()
            || control.fleet_topic.is_empty()
            || control.topic == control.fleet_topic
        {
            problems.push(invalid(
                "control.topic/fleet_topic".into(),
                "must both be set, and differ".into(),
            ));
        }
        let mut taken = self.kafka.output_topics();
        taken.extend(self.kafka.topics.iter().cloned());
        for class in TrafficClass::ALL {
            taken.extend(self.lanes.get(class).topics.iter().cloned());
        }
        for topic in [&control.topic, &control.fleet_topic] {
            if taken.contains(topic) {
                problems.push(invalid(
                    "control.topic".into(),
                    format!("`{topic}` is already a request or output topic"),
                ));
            }
        }
        if control.report_interval_ms < 100
            || control.host_expiry_s * 1000 < 3 * control.report_interval_ms
        {
            problems.push(invalid(
                "control.report_interval_ms/host_expiry_s".into(),
                "report_interval_ms must be at least 100, and host_expiry_s at least three reports long".into(),
            ));
        }
        if control.converge_timeout_s == 0 {
            problems.push(invalid(
                "control.converge_timeout_s".into(),
                "must be at least 1".into(),
            ));
        }
        problems
    }
}

#[cfg(test)]
mod example_fields;

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [plugins.fcm]
        path = "fcm.wasm"
        allowed_hosts = ["fcm.googleapis.com"]

        [channels.push-android]
        fcm = 100
    "#;

    #[test]
    fn minimal_config_takes_defaults() -> anyhow::Result<()> {
        let config = Config::parse(MINIMAL, Path::new("t.toml"))?;
        config.validate()?;
        assert!(config.kafka.brokers.is_none());
        assert_eq!(config.kafka.topics, vec!["notifications".to_string()]);
        assert_eq!(config.plugins["fcm"].timeout_ms, 10_000);
        Ok(())
    }

    #[test]
    fn unknown_key_names_the_key_and_line() {
        let text = "[kafka]\ngroup_id = \"g\"\nbrokrs = \"x\"\n";
        let err = Config::parse(text, Path::new("t.toml"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("brokrs"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn channel_with_unknown_plugin_is_refused() -> anyhow::Result<()> {
        let config = Config::parse("[channels.sms]\nsms-acme = 10\n", Path::new("t.toml"))?;
        let err = config
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("channels.sms.sms-acme"), "{err}");
        Ok(())
    }

    #[test]
    fn cross_field_errors_name_the_line() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let wasm = dir.path().join("fcm.wasm");
        std::fs::write(&wasm, b"\0asm")?;
        let write = |text: &str| -> anyhow::Result<PathBuf> {
            let path = dir.path().join("switchboard.toml");
            std::fs::write(&path, text)?;
            Ok(path)
        };
        let base =
            "[plugins.fcm]\npath = \"fcm.wasm\"\n\n[channels.sms]\nfcm = 50\nsms-acme = 50\n";
        let err = Config::load(&write(base)?)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("line 6") && err.contains("channels.sms.sms-acme"),
            "{err}"
        );

        let missing = "[plugins.fcm]\npath = \"nope.wasm\"\n";
        let err = Config::load(&write(missing)?)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("line 2") && err.contains("does not exist"),
            "{err}"
        );

        let env = "[plugins.fcm]\npath = \"fcm.wasm\"\n[plugins.fcm.secrets]\nkey = { env = \"SWITCHBOARD_TEST_SURELY_UNSET\" }\n";
        let err = Config::load(&write(env)?)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("line 4") && err.contains("SWITCHBOARD_TEST_SURELY_UNSET"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn the_documented_example_config_is_valid() -> anyhow::Result<()> {
        let text = include_str!("../../examples/switchboard.toml");
        let config = Config::parse(text, Path::new("examples/switchboard.toml"))?;
        config.validate()?;
        assert_eq!(config.plugins["fcm"].concurrency, 32);
        assert!(matches!(
            config.plugins["fcm"].secrets.get("service_account_key"),
            Some(SecretSource::Env(_))
        ));
        Ok(())
    }

    #[test]
    fn the_artifact_key_must_lie_outside_the_artifact_cache() -> anyhow::Result<()> {
        let defaults = Config::parse(MINIMAL, Path::new("t.toml"))?;
        assert!(defaults.runtime.artifact_cache);
        assert_eq!(
            defaults.runtime.artifact_cache_dir,
            PathBuf::from("data/artifacts")
        );
        let text = format!(
            "[runtime]\nartifact_cache_dir = \"cache\"\nartifact_key_file = \"cache/key\"\n{MINIMAL}"
        );
        let err = Config::parse(&text, Path::new("t.toml"))?
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("runtime.artifact_key_file"), "{err}");
        let off = text.replace("[runtime]\n", "[runtime]\nartifact_cache = false\n");
        Config::parse(&off, Path::new("t.toml"))?.validate()?;
        Ok(())
    }

    /// `MINIMAL` plus channels `a`, `b`, `c` and the given `[fallback.X] channel = "Y"` edges.
    fn with_fallbacks(edges: &[(&str, &str)]) -> String {
        let mut text = format!(
            "{MINIMAL}\n[channels.a]\nfcm = 1\n[channels.b]\nfcm = 1\n[channels.c]\nfcm = 1\n"
        );
        for (from, to) in edges {
            text.push_str(&format!("[fallback.{from}]\nchannel = \"{to}\"\n"));
        }
        text
    }

    fn validation_error(text: &str) -> anyhow::Result<String> {
        Ok(Config::parse(text, Path::new("t.toml"))?
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default())
    }

    #[test]
    fn fallback_cycles_of_any_length_are_refused_naming_the_cycle() -> anyhow::Result<()> {
        let err = validation_error(&with_fallbacks(&[("a", "b"), ("b", "a")]))?;
        assert!(
            err.contains("fallback.a.channel") && err.contains("a → b → a"),
            "{err}"
        );
        let err = validation_error(&with_fallbacks(&[("a", "b"), ("b", "c"), ("c", "a")]))?;
        assert!(
            err.contains("fallback.a.channel") && err.contains("a → b → c → a"),
            "{err}"
        );
        // A chain that ends is fine, and so are two chains into one channel.
        Config::parse(
            &with_fallbacks(&[("a", "b"), ("b", "c")]),
            Path::new("t.toml"),
        )?
        .validate()?;
        Config::parse(
            &with_fallbacks(&[("a", "c"), ("b", "c")]),
            Path::new("t.toml"),
        )?
        .validate()?;
        Ok(())
    }

    #[test]
    fn fallback_cycle_errors_name_the_line() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("fcm.wasm"), b"\0asm")?;
        let path = dir.path().join("switchboard.toml");
        let text = with_fallbacks(&[("b", "c"), ("c", "b")]);
        std::fs::write(&path, &text)?;
        let err = Config::load(&path)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        let expected = text
            .lines()
            .position(|l| l.trim() == "[fallback.b]")
            .map_or(0, |i| i + 2);
        assert!(
            err.contains(&format!("line {expected}")) && err.contains("b → c → b"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn kafka_secrets_come_from_the_environment_or_a_file_and_are_never_shown() -> anyhow::Result<()>
    {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("fcm.wasm"), b"\0asm")?;
        std::fs::write(dir.path().join("key-password"), "k3y-pa55word\n")?;
        // A variable every test run has (setting one of our own would need `unsafe`).
        let var = "HOME";
        let home = std::env::var(var)?;
        let path = dir.path().join("switchboard.toml");
        let text = format!(
            "[kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.password\" = {{ env = \"{var}\" }}\n\"ssl.key.password\" = {{ file = \"key-password\" }}\n{MINIMAL}"
        );
        std::fs::write(&path, &text)?;
        let config = Config::load(&path)?;
        let properties = config.kafka_properties()?;
        assert_eq!(properties["sasl.password"], home);
        assert_eq!(properties["ssl.key.password"], "k3y-pa55word");
        assert_eq!(properties["security.protocol"], "SASL_SSL");
        let shown = format!("{config:?}");
        assert!(!shown.contains("k3y-pa55"), "{shown}");
        assert!(shown.contains("Env(HOME)"), "{shown}");

        // A variable that is not set stops the load, naming the property and its line.
        let missing = text.replace("\"HOME\"", "\"SB_TEST_KAFKA_PASSWORD_NEVER_SET\"");
        std::fs::write(&path, &missing)?;
        let err = Config::load(&path)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("kafka.properties.sasl.password") && err.contains("line 3"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn kafka_properties_that_weaken_delivery_or_belong_to_other_fields_are_refused()
    -> anyhow::Result<()> {
        for (property, value) in [
            ("enable.auto.commit", "false"),
            ("auto.commit.enable", "false"),
            ("enable.auto.offset.store", "true"),
            ("acks", "1"),
            ("request.required.acks", "0"),
            ("enable.idempotence", "false"),
            ("auto.offset.reset", "latest"),
            ("group.id", "other"),
            ("bootstrap.servers", "elsewhere:9092"),
            ("metadata.broker.list", "elsewhere:9092"),
            ("session.timeout.ms", "5000"),
            ("auto.commit.interval.ms", "60000"),
        ] {
            let text = format!("[kafka.properties]\n\"{property}\" = \"{value}\"\n{MINIMAL}");
            let err = validation_error(&text)?;
            assert!(
                err.contains(&format!("kafka.properties.{property}")),
                "{property}: {err}"
            );
        }
        // Properties the host does not own still pass through.
        let fine = format!("[kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n{MINIMAL}");
        Config::parse(&fine, Path::new("t.toml"))?.validate()?;
        Ok(())
    }

    #[test]
    fn refused_kafka_properties_name_their_line() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("fcm.wasm"), b"\0asm")?;
        let path = dir.path().join("switchboard.toml");
        let text = format!(
            "[kafka.properties]\n\"security.protocol\" = \"SSL\"\n\"enable.auto.offset.store\" = \"true\"\n{MINIMAL}"
        );
        std::fs::write(&path, &text)?;
        let err = Config::load(&path)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("line 3") && err.contains("kafka.properties.enable.auto.offset.store"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn max_record_bytes_must_fit_the_producers_message_max_bytes() -> anyhow::Result<()> {
        // The defaults fit librdkafka's default `message.max.bytes` with the header allowance.
        let defaults = Config::parse(MINIMAL, Path::new("t.toml"))?;
        assert!(
            defaults.dispatch.max_record_bytes + DLQ_HEADER_ALLOWANCE_BYTES
                <= LIBRDKAFKA_MESSAGE_MAX_BYTES,
            "default max_record_bytes {} does not fit",
            defaults.dispatch.max_record_bytes
        );
        defaults.validate()?;

        let one_mib = format!("[dispatch]\nmax_record_bytes = 1048576\n{MINIMAL}");
        let err = validation_error(&one_mib)?;
        assert!(
            err.contains("dispatch.max_record_bytes") && err.contains("message.max.bytes"),
            "{err}"
        );
        let raised = format!(
            "[kafka.properties]\n\"message.max.bytes\" = \"2000000\"\n[dispatch]\nmax_record_bytes = 1048576\n{MINIMAL}"
        );
        Config::parse(&raised, Path::new("t.toml"))?.validate()?;
        let lowered = format!("[kafka.properties]\n\"message.max.bytes\" = \"500000\"\n{MINIMAL}");
        let err = validation_error(&lowered)?;
        assert!(err.contains("message.max.bytes"), "{err}");
        let garbled = format!("[kafka.properties]\n\"message.max.bytes\" = \"lots\"\n{MINIMAL}");
        let err = validation_error(&garbled)?;
        assert!(err.contains("kafka.properties.message.max.bytes"), "{err}");
        Ok(())
    }

    #[test]
    fn bulk_nice_only_lowers_priority() -> anyhow::Result<()> {
        for refused in ["-1", "20"] {
            let text = format!("[runtime]\nbulk_nice = {refused}\n{MINIMAL}");
            let err = validation_error(&text)?;
            assert!(err.contains("runtime.bulk_nice"), "{err}");
        }
        let text = format!("[runtime]\nbulk_nice = 0\n{MINIMAL}");
        Config::parse(&text, Path::new("t.toml"))?.validate()?;
        Ok(())
    }

    #[test]
    fn secret_values_are_redacted_in_debug_output() {
        let s = format!("{:?}", SecretSource::Value("hunter2".into()));
        assert!(!s.contains("hunter2"));
        let written_out = MaybeSecret::from("rediss://:hunter2@cache:6380/");
        let s = format!("{written_out:?}");
        assert!(
            !s.contains("hunter2") && s.contains("rediss://:***@cache:6380/"),
            "{s}"
        );
    }

    #[test]
    fn the_redis_url_is_read_from_a_file_beside_the_config() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("redis-url"), "rediss://:pw@cache:6380/\n")?;
        let path = dir.path().join("switchboard.toml");
        let mut config = Config::parse(
            "[dedup]\nbackend = \"redis\"\nredis_url = { file = \"redis-url\" }\n",
            &path,
        )?;
        config.source = Some(path);
        assert_eq!(config.redis_url()?, "rediss://:pw@cache:6380/");

        let missing = Config::parse(
            "[dedup]\nbackend = \"redis\"\nredis_url = { env = \"SWITCHBOARD_TEST_NEVER_SET_URL\" }\n",
            Path::new("x.toml"),
        )?;
        let Err(error) = missing.redis_url() else {
            anyhow::bail!("a URL from an unset variable was read");
        };
        let error = error.to_string();
        assert!(
            error.contains("dedup.redis_url") && error.contains("SWITCHBOARD_TEST_NEVER_SET_URL"),
            "{error}"
        );
        Ok(())
    }
}
