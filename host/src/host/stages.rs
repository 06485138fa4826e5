//! One constructor per stage of the pipeline, in the order [`super::start_with`] calls them:
//! the broker, the plugins, the route, dedup, settle, dispatch, the lanes and ingest, then what
//! operators reach (canaries, the watched directory, the admin API). Each takes what it needs
//! and returns what the stages after it use.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::StartOptions;
use super::http::{extra_root_pems, http_client_with};
use super::realtime::RealtimeThreads;
use crate::config::{Config, DedupBackend, TrafficClass};
use crate::control::ControlPlane;
use crate::control::fleet::Reporter;
use crate::dedup::{DedupStore, EmbeddedDedup, RedisDedup};
use crate::dispatch::{Dispatcher, PluginLane, QueuesEnded};
use crate::ingest::consumer::{Ingest, IngestShared, Source};
use crate::kafka::EmbeddedKafka;
use crate::lane::Budget;
use crate::plugin::artifacts::ArtifactCache;
use crate::plugin::capabilities::{AllowedHost, PluginQuotas};
use crate::plugin::registry::{PluginSpec, Registry};
use crate::plugin::{NativePlugins, PluginLimits, PluginRuntime};
use crate::route::Router;
use crate::route::health::Health;
use crate::secrets::PluginSecrets;
use crate::settle::{Outbox, Records};
use crate::telemetry::Counters;
use crate::telemetry::metrics::Metrics;

/// The broker every Kafka client of the host talks to.
pub struct Broker {
    /// The bootstrap address (the embedded cluster's when none was configured).
    pub brokers: String,
    /// `[kafka.properties]` with its secrets read, for every Kafka client the host makes.
    pub properties: BTreeMap<String, String>,
    /// Kept alive for as long as the host runs, and stopped after it.
    pub embedded: Option<EmbeddedKafka>,
}

/// The configured broker, or, when none is configured, the embedded cluster made with every
/// topic.
pub fn open_broker(config: &Config) -> anyhow::Result<Broker> {
    let properties = config.kafka_properties()?;
    let Some(brokers) = &config.kafka.brokers else {
        let mut topics = config.kafka.topics.clone();
        for class in TrafficClass::ALL {
            topics.extend(config.lanes.get(class).topics.iter().cloned());
        }
        topics.extend(config.kafka.output_topics());
        let cluster = EmbeddedKafka::start(3, &topics, config.kafka.new_topic_partitions)?;
        let brokers = cluster.bootstrap_servers().to_string();
        tracing::info!(bootstrap = %brokers, "no kafka.brokers configured: started the embedded mock cluster");
        return Ok(Broker {
            brokers,
            properties,
            embedded: Some(cluster),
        });
    };
    Ok(Broker {
        brokers: brokers.clone(),
        properties,
        embedded: None,
    })
}

/// Makes sure of the topics the host writes to, on a configured broker (the embedded cluster
/// was made with them). Before anything reads or writes: a host that cannot write its DLQ or
/// retry topics would hold every record it cannot settle, so it refuses to start instead.
pub async fn ensure_output_topics(config: &Config, broker: &Broker) -> anyhow::Result<()> {
    if broker.embedded.is_some() {
        return Ok(());
    }
    let topics = config.kafka.output_topics();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    crate::kafka::ensure_topics(
        &broker.brokers,
        &names,
        config.kafka.new_topic_partitions,
        &broker.properties,
    )
    .await
    .context("the retry, DLQ and result topics")
}

/// The plugin runtime and every configured plugin's versions.
pub struct Plugins {
    /// Outlives every call: calls hold the engine, and its ticker stops with it.
    pub runtime: Arc<PluginRuntime>,
    /// The precompiled-artifact cache the plugins were loaded through, when it is on.
    pub artifacts: Option<Arc<ArtifactCache>>,
    pub registry: Arc<Registry>,
    /// The realtime lane's threads, whose HTTP pool the plugins' realtime calls use.
    pub realtime: RealtimeThreads,
}

/// Builds the runtime and loads every configured plugin (restoring the versions active before a
/// restart).
pub async fn load_plugins(config: &Config, options: &StartOptions) -> anyhow::Result<Plugins> {
    let max_memory = config
        .plugins
        .values()
        .map(|p| (p.memory_mb as usize) << 20)
        .max()
        .unwrap_or(64 << 20);
    let mut runtime = PluginRuntime::new(&config.runtime, max_memory)?;
    let artifacts = open_artifact_cache(config);
    if let Some(cache) = &artifacts {
        runtime = runtime.with_artifact_cache(cache.clone());
    }
    let runtime = Arc::new(runtime);
    let private_names = &config.http.private_names;
    let client = http_client_with(&extra_root_pems(config)?, private_names)?;
    let realtime = RealtimeThreads::start(config.runtime.realtime_threads)?;
    // The realtime lane's HTTP pool of its own: a pooled connection is driven by the threads
    // that opened it.
    let realtime_client = match realtime.own() {
        true => Some(http_client_with(&extra_root_pems(config)?, private_names)?),
        false => None,
    };
    let registry = load_registry(
        config,
        runtime.clone(),
        &client,
        realtime_client,
        &options.native_plugins,
    )
    .await?;
    if let Some(cache) = &artifacts {
        let stats = cache.stats();
        tracing::info!(
            hits = stats.hits,
            misses = stats.misses,
            rejected = stats.rejected,
            dir = %cache.dir().display(),
            "plugins loaded through the artifact cache"
        );
    }
    Ok(Plugins {
        runtime,
        artifacts,
        registry: Arc::new(registry),
        realtime,
    })
}

/// Every vendor's health and the router over it, with the weights kept across restarts.
pub fn route(config: &Config) -> (Arc<Health>, Arc<Router>) {
    let health = Arc::new(Health::new(&config.health, config.plugins.keys()));
    let router = Arc::new(Router::new(
        &config.channels,
        health.clone(),
        Some(crate::state::weights_file(&config.state_dir())),
    ));
    (health, router)
}

/// The outbox (retry topic, DLQ, result topics) and the send history, when it is on.
pub async fn open_settle(
    config: &Config,
    broker: &Broker,
    counters: &Arc<Counters>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<(Arc<Outbox>, Option<switchboard_history::HistoryWriter>)> {
    let results = crate::settle::results::ResultsPublisher::connect(
        &broker.brokers,
        &config.kafka.results_topic,
        &config.kafka.invalidations_topic,
        &broker.properties,
        counters.clone(),
    )?;
    let outbox = Outbox::connect(
        &broker.brokers,
        &config.kafka.retry_topic,
        &config.kafka.dlq_topic,
        &broker.properties,
    )?
    .with_retry_tiers(config.kafka.retry_topics())
    .with_counters(counters.clone())
    .with_metrics(metrics.clone())
    .with_results(results);
    let history = open_history(config).await?;
    Ok((Arc::new(outbox), history))
}

/// One batching queue per plugin and lane, settling into `records`.
pub fn start_dispatch(
    config: &Config,
    plugins: &Plugins,
    records: Records,
) -> (Arc<Dispatcher>, QueuesEnded) {
    let lanes = plugins
        .registry
        .slots()
        .map(|slot| {
            let plugin = &config.plugins[&slot.name];
            PluginLane {
                slot: slot.clone(),
                concurrency: plugin.concurrency,
                rate_per_s: plugin.rate_per_s,
                burst: plugin.burst,
            }
        })
        .collect();
    let (dispatcher, ended) = Dispatcher::start(
        lanes,
        &config.dispatch,
        &config.lanes,
        records,
        &plugins.realtime.handle(),
    );
    (Arc::new(dispatcher), ended)
}

/// The memory budget of the lanes, and each consumer's share of librdkafka's prefetch:
/// the prefetch queues take `fetch_percent` of the total, split over the consumers; the host's
/// own work gets the rest.
/// This host's report for the fleet view, and, when the control plane is on, the control plane
/// and its tasks, started once this host has applied the control topic to its end.
pub async fn start_control(
    config: &Config,
    broker: &Broker,
    registry: &Arc<Registry>,
    router: &Arc<Router>,
    metrics: &Arc<Metrics>,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<(
    Arc<Reporter>,
    Option<(Arc<ControlPlane>, Vec<JoinHandle<()>>)>,
)> {
    let control = &config.control;
    let reporter = Arc::new(Reporter {
        host: control
            .host_id
            .clone()
            .unwrap_or_else(crate::control::default_host_id),
        started_at_ms: crate::clock::now_ms(),
        registry: registry.clone(),
        router: router.clone(),
        metrics: metrics.clone(),
        sources: crate::ingest::consumer::Source::all(&config.kafka, &config.lanes)
            .into_iter()
            .map(|source| source.as_str())
            .collect(),
        canary: config.canary.clone(),
        admin: std::sync::Mutex::new(None),
    });
    if !control.is_on(config.kafka.brokers.is_some()) {
        return Ok((reporter, None));
    }
    let started = ControlPlane::start(
        config,
        &broker.brokers,
        &broker.properties,
        reporter.clone(),
        shutdown,
    )
    .await?;
    tracing::info!(
        host = %reporter.host,
        topic = %control.topic,
        applied = started.0.applied(),
        "control plane on: applied the fleet's desired state"
    );
    Ok((reporter, Some(started)))
}

pub fn lane_budget(config: &Config, consumers: usize) -> (Arc<Budget>, usize) {
    let total = (config.budget.total_mb as usize) << 20;
    let prefetch_total = total / 100 * config.budget.fetch_percent as usize;
    let budget = Arc::new(Budget::new(
        &config.budget,
        &config.lanes,
        total - prefetch_total,
    ));
    (budget, prefetch_total / consumers.max(1))
}

/// One consumer per source, each consuming until `shutdown`; the realtime lane's on its own
/// threads.
pub fn start_consumers(
    config: &Config,
    broker: &Broker,
    shared: &IngestShared,
    shutdown: &watch::Receiver<bool>,
    realtime: &RealtimeThreads,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<anyhow::Result<()>>>> {
    let mut consumers = Vec::new();
    for source in Source::all(&config.kafka, &config.lanes) {
        let ingest = Ingest::connect(
            &config.kafka,
            &config.lanes,
            &broker.brokers,
            &broker.properties,
            shared,
            source,
        )?;
        let shutdown = shutdown.clone();
        let run = async move { ingest.run(shutdown, super::DRAIN_TIMEOUT).await };
        consumers.push(match source {
            Source::Lane(TrafficClass::Realtime) => realtime.handle().spawn(run),
            _ => tokio::spawn(run),
        });
    }
    Ok(consumers)
}

/// The artifact cache `[runtime]` configures, or `None` when it is off or cannot be opened (then
/// every load compiles, as without it; the reason is logged).
fn open_artifact_cache(config: &Config) -> Option<Arc<ArtifactCache>> {
    if !config.runtime.artifact_cache {
        return None;
    }
    let dir = config.resolve(&config.runtime.artifact_cache_dir);
    let key_file = config.resolve(&config.runtime.artifact_key_file);
    match ArtifactCache::open(&dir, &key_file) {
        Ok(cache) => Some(Arc::new(cache)),
        Err(error) => {
            crate::telemetry::events::ArtifactCacheUnavailable {
                dir: &dir,
                key_file: &key_file,
                error: &error,
            }
            .emit();
            None
        }
    }
}

/// Loads the configured plugins into a registry over `runtime`, each with its first version
/// (the config file's component, or a linked native adapter), then restores the versions that
/// were active before a restart.
async fn load_registry(
    config: &Config,
    runtime: Arc<PluginRuntime>,
    client: &reqwest::Client,
    realtime_client: Option<reqwest::Client>,
    native: &NativePlugins,
) -> anyhow::Result<Registry> {
    if let Some(unknown) = native.names().find(|n| !config.plugins.contains_key(*n)) {
        anyhow::bail!("native plugin `{unknown}` is not configured under [plugins]");
    }
    let mut registry = Registry::new(
        runtime.clone(),
        client.clone(),
        realtime_client,
        Some(config.state_dir()),
        config.canary.clone(),
    );
    for (name, plugin) in &config.plugins {
        let spec = PluginSpec {
            name: name.clone(),
            allowed_hosts: plugin
                .allowed_hosts
                .iter()
                .map(|h| AllowedHost::parse(h))
                .collect(),
            secrets: PluginSecrets::load(config, name)?,
            limits: PluginLimits {
                timeout: Duration::from_millis(plugin.timeout_ms),
                memory_bytes: (plugin.memory_mb as usize) << 20,
            },
            init_config: plugin
                .config
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            max_batch: plugin.max_batch,
            capability_counters: Default::default(),
            bounds: plugin.bounds,
            quotas: PluginQuotas::new(&plugin.bounds),
        };
        let caps = spec.capabilities(client.clone());
        let (loaded, bytes) = match native.get(name) {
            Some(adapter) => {
                let loaded = runtime
                    .load_native_adapter(name, adapter, caps, spec.limits, spec.init_config.clone())
                    .await?;
                (loaded, None)
            }
            None => {
                let path: PathBuf = config.resolve(&plugin.path);
                let bytes = std::fs::read(&path).with_context(|| {
                    format!("plugins.{name}.path: cannot read {}", path.display())
                })?;
                let loaded = runtime
                    .load_bytes(name, &bytes, caps, spec.limits, spec.init_config.clone())
                    .await?;
                (loaded, Some(bytes))
            }
        };
        tracing::info!(
            plugin = %name,
            version = %loaded.info.version,
            channel = %loaded.info.channel,
            max_batch = loaded.info.max_batch,
            native = loaded.is_native(),
            "plugin loaded"
        );
        registry.add(spec, loaded, bytes.as_deref());
    }
    registry.restore().await;
    Ok(registry)
}

/// Opens the configured send-history store and starts its writer; `None` when history is off.
async fn open_history(
    config: &Config,
) -> anyhow::Result<Option<switchboard_history::HistoryWriter>> {
    let settings = config.history_settings();
    let store = settings
        .open()
        .await
        .context("history: opening the send-history store")?;
    Ok(store.map(|store| switchboard_history::HistoryWriter::start(store, Default::default())))
}

/// Opens the configured dedup store; a Redis store reports whether it answers on `metrics`.
pub async fn open_dedup(
    config: &Config,
    metrics: &Metrics,
) -> anyhow::Result<Option<Arc<DedupStore>>> {
    let dedup = &config.dedup;
    let retention = Duration::from_secs(dedup.retention_hours.max(1) * 3600);
    let store = match dedup.backend {
        DedupBackend::Off => return Ok(None),
        DedupBackend::Embedded => {
            let dir = config.resolve(&dedup.data_dir);
            let store = EmbeddedDedup::open(&dir, retention)?;
            tracing::info!(dir = %dir.display(), keys = store.len(), "embedded dedup store open");
            DedupStore::Embedded(store)
        }
        DedupBackend::Redis => {
            let url = config.redis_url()?;
            let tls_roots = match &dedup.redis_tls_ca_file {
                Some(path) => {
                    let path = config.resolve(path);
                    Some(std::fs::read(&path).with_context(|| {
                        format!("dedup.redis_tls_ca_file: reading {}", path.display())
                    })?)
                }
                None => None,
            };
            let timeouts = crate::dedup::RedisTimeouts {
                connect: Duration::from_millis(dedup.redis_connect_timeout_ms),
                response: Duration::from_millis(dedup.redis_response_timeout_ms),
                probe_interval: Duration::from_millis(dedup.redis_probe_interval_ms),
            };
            let store = RedisDedup::connect_with(
                &url,
                tls_roots,
                &dedup.redis_prefix,
                retention,
                dedup.redis_shards,
                timeouts,
                metrics.dependency_up("redis"),
            )
            .await
            // The URL may carry a password: only its redacted form is ever printed.
            .with_context(|| {
                format!(
                    "dedup.redis_url: connecting to {}",
                    switchboard_history::redact_url(&url)
                )
            })?;
            DedupStore::Redis(store)
        }
    };
    Ok(Some(Arc::new(store)))
}
