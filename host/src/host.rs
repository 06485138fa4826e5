//! Wires the parts into a running host: Kafka (configured or embedded), the plugin runtime and
//! the loaded plugins, the dispatcher and the router. Owns start-up order and graceful shutdown:
//! stop consuming, drain what is in flight, commit.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;

use crate::config::{Config, DedupBackend};
use crate::dedup::{DedupStore, EmbeddedDedup, RedisDedup};
use crate::dispatch::{Dispatcher, PluginLane};
use crate::ingest::EmbeddedKafka;
use crate::ingest::budget::Budget;
use crate::ingest::consumer::{Ingest, IngestShared, Source};
use crate::plugin::artifacts::ArtifactCache;
use crate::plugin::capabilities::{AllowedHost, PluginQuotas};
use crate::plugin::registry::{PluginSpec, Registry};
use crate::plugin::{NativePlugins, PluginLimits, PluginRuntime};
use crate::retry::Outbox;
use crate::route::Router;
use crate::route::health::Health;
use crate::secrets::PluginSecrets;
use crate::telemetry::Counters;
use crate::telemetry::metrics::{HostParts, Metrics};

/// How long shutdown waits for the batching queues to let go of the outbox.
const OUTBOX_RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long shutdown waits for in-flight records before committing what is finished. With the
/// outbox release and the results flush below, a host stops within about 20 s of the signal
/// whatever its backlog (OPERATIONS.md); what it leaves unfinished is read again after restart.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long shutdown waits for queued results to be acknowledged.
const RESULTS_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// A host started by [`start`]. Stop it with [`RunningHost::stop`].
pub struct RunningHost {
    /// Live counters.
    pub counters: Arc<Counters>,
    /// The Kafka bootstrap address in use (the embedded cluster's when none was configured).
    pub bootstrap_servers: String,
    /// The plugins and their versions: hot swap, canaries, rollback.
    pub registry: Arc<Registry>,
    /// Channel → vendor choice: live weights, health and breakers.
    pub router: Arc<Router>,
    /// The memory budget, per lane and in total.
    pub budget: Arc<Budget>,
    /// The precompiled-artifact cache the plugins were loaded through, when it is on.
    pub artifacts: Option<Arc<ArtifactCache>>,
    /// The Prometheus metrics; `/metrics` serves [`Metrics::render`].
    pub metrics: Arc<Metrics>,
    /// Where the admin API listens; `None` when `admin.listen` is empty.
    pub admin_addr: Option<std::net::SocketAddr>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// The realtime lane's threads; stopped after the host task.
    _realtime: RealtimeThreads,
    /// Kept alive for as long as the host runs, and stopped after it.
    _embedded: Option<EmbeddedKafka>,
}

impl RunningHost {
    /// Stops consuming, drains in-flight work (bounded), commits, and returns.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        self.task.await.context("host task panicked")?
    }
}

/// The realtime lane's own async runtime ("separate thread pools per traffic class"): its
/// consumer, its batching queues, its plugin calls and its HTTP connections run on these
/// threads, so a run queue full of bulk work on the shared threads never delays a realtime
/// delivery. Shut down in the background on drop, since a runtime may not be dropped from
/// inside another.
struct RealtimeThreads(Option<tokio::runtime::Runtime>);

impl RealtimeThreads {
    fn start(threads: usize) -> anyhow::Result<Self> {
        if threads == 0 {
            return Ok(Self(None));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("switchboard-realtime")
            .enable_all()
            .build()
            .context("starting the realtime lane's threads")?;
        Ok(Self(Some(runtime)))
    }

    /// Where realtime work is spawned: its own runtime, or the shared one.
    fn handle(&self) -> tokio::runtime::Handle {
        match &self.0 {
            Some(runtime) => runtime.handle().clone(),
            None => tokio::runtime::Handle::current(),
        }
    }
}

impl Drop for RealtimeThreads {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// What an embedding program adds to a config when it starts a host with [`start_with`].
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Configured plugins served by an adapter linked into the program instead of their
    /// component file, e.g. to measure what the sandbox costs. Each name must be configured.
    pub native_plugins: NativePlugins,
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
async fn load_plugins(
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

/// The HTTP client every plugin's requests go through: pooled, and HTTP/2 wherever TLS ALPN
/// offers it (APNs accepts nothing else). `extra_root_pems` are CA certificates to trust besides
/// the built-in web roots.
pub fn http_client(extra_root_pems: &[String]) -> anyhow::Result<reqwest::Client> {
    http_client_with(extra_root_pems, &[])
}

/// As [`http_client`], letting `private_names` resolve to non-public addresses
/// (`http.private_names`). Every other name reaches public addresses only, and redirects are
/// never followed by the client: the plugin's request path follows them, checking each hop
/// against the plugin's grants (`plugin/outbound.rs`).
pub fn http_client_with(
    extra_root_pems: &[String],
    private_names: &[String],
) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .pool_idle_timeout(Duration::from_secs(90))
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(crate::plugin::resolver::PublicOnlyResolver::new(
            private_names,
        ));
    for pem in extra_root_pems {
        let cert = reqwest::Certificate::from_pem(pem.as_bytes())
            .context("an extra root certificate is not valid PEM")?;
        builder = builder.add_root_certificate(cert);
    }
    builder.build().context("building the HTTP client")
}

/// Reads the configured extra root certificates.
fn extra_root_pems(config: &Config) -> anyhow::Result<Vec<String>> {
    config
        .http
        .extra_root_certs
        .iter()
        .map(|path| {
            let path = config.resolve(path);
            std::fs::read_to_string(&path)
                .with_context(|| format!("http.extra_root_certs: cannot read {}", path.display()))
        })
        .collect()
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
async fn open_dedup(config: &Config, metrics: &Metrics) -> anyhow::Result<Option<Arc<DedupStore>>> {
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

/// Starts the host: Kafka (embedded when no brokers are configured), plugins, dispatch, and the
/// consumer. Returns once everything is running.
pub async fn start(config: Config) -> anyhow::Result<RunningHost> {
    start_with(config, StartOptions::default()).await
}

/// As [`start`], with what an embedding program adds to the config (see [`StartOptions`]).
pub async fn start_with(config: Config, options: StartOptions) -> anyhow::Result<RunningHost> {
    config.validate()?;
    // Before anything starts: a taken port or an unreadable token stops the start cleanly.
    let admin_listener = crate::admin::bind(&config.admin).await?;
    let admin_token = crate::admin::resolve_token(&config)?;
    // `[kafka.properties]` with its secrets read, for every Kafka client the host makes.
    let kafka_properties = config.kafka_properties()?;
    let (embedded, brokers) = match &config.kafka.brokers {
        Some(brokers) => (None, brokers.clone()),
        None => {
            let mut topics = config.kafka.topics.clone();
            for class in crate::config::TrafficClass::ALL {
                topics.extend(config.lanes.get(class).topics.iter().cloned());
            }
            topics.extend(config.kafka.output_topics());
            let cluster = EmbeddedKafka::start(3, &topics, config.kafka.new_topic_partitions)?;
            let bootstrap = cluster.bootstrap_servers().to_string();
            tracing::info!(bootstrap = %bootstrap, "no kafka.brokers configured: started the embedded mock cluster");
            (Some(cluster), bootstrap)
        }
    };

    let max_memory = config
        .plugins
        .values()
        .map(|p| (p.memory_mb as usize) << 20)
        .max()
        .unwrap_or(64 << 20);
    let mut runtime = PluginRuntime::new(&config.runtime, max_memory)?;
    let artifacts = open_artifact_cache(&config);
    if let Some(cache) = &artifacts {
        runtime = runtime.with_artifact_cache(cache.clone());
    }
    let runtime = Arc::new(runtime);
    let private_names = &config.http.private_names;
    let client = http_client_with(&extra_root_pems(&config)?, private_names)?;
    let realtime = RealtimeThreads::start(config.runtime.realtime_threads)?;
    // The realtime lane's HTTP pool of its own: a pooled connection is driven by the threads
    // that opened it.
    let realtime_client = match realtime.0 {
        Some(_) => Some(http_client_with(&extra_root_pems(&config)?, private_names)?),
        None => None,
    };
    let registry = Arc::new(
        load_plugins(
            &config,
            runtime.clone(),
            &client,
            realtime_client,
            &options.native_plugins,
        )
        .await?,
    );
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
    let lanes = registry
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
    let health = Arc::new(Health::new(&config.health, config.plugins.keys()));
    let router = Arc::new(Router::new(
        &config.channels,
        health.clone(),
        Some(crate::state::weights_file(&config.state_dir())),
    ));

    let counters = Arc::new(Counters::default());
    if embedded.is_none() {
        // Before anything reads or writes: a host that cannot write its DLQ or retry topics
        // would hold every record it cannot settle, so it refuses to start instead. (The
        // embedded cluster was made with them.)
        let topics = config.kafka.output_topics();
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        crate::retry::ensure_topics(
            &brokers,
            &names,
            config.kafka.new_topic_partitions,
            &kafka_properties,
        )
        .await
        .context("the retry, DLQ and result topics")?;
    }
    let metrics = Arc::new(Metrics::new());
    let dedup = open_dedup(&config, &metrics).await?;
    let results = crate::retry::results::ResultsPublisher::connect(
        &brokers,
        &config.kafka.results_topic,
        &config.kafka.invalidations_topic,
        &kafka_properties,
        counters.clone(),
    )?;
    let outbox = Arc::new(
        Outbox::connect(
            &brokers,
            &config.kafka.retry_topic,
            &config.kafka.dlq_topic,
            &kafka_properties,
        )?
        .with_retry_tiers(config.kafka.retry_topics())
        .with_counters(counters.clone())
        .with_metrics(metrics.clone())
        .with_results(results),
    );
    let history = open_history(&config).await?;
    let dispatcher = Arc::new(Dispatcher::start(
        lanes,
        &config.dispatch,
        &config.lanes,
        crate::dispatch::Records {
            counters: counters.clone(),
            dedup: dedup.clone(),
            outbox: outbox.clone(),
            history: history.as_ref().map(|writer| writer.sender()),
            health,
            fallback: config.fallback.clone(),
            metrics: metrics.clone(),
        },
        &realtime.handle(),
    ));
    // The budget: librdkafka's prefetch queues take `fetch_percent` of the total, split over the
    // consumers; the host's own work gets the rest.
    let sources = Source::all(&config.kafka, &config.lanes);
    let total = (config.budget.total_mb as usize) << 20;
    let prefetch_total = total / 100 * config.budget.fetch_percent as usize;
    let budget = Arc::new(Budget::new(
        &config.budget,
        &config.lanes,
        total - prefetch_total,
    ));
    metrics.observe(HostParts {
        counters: counters.clone(),
        plugins: registry.clone(),
        router: router.clone(),
        budget: budget.clone(),
    });
    let shared = IngestShared {
        dedup,
        outbox: outbox.clone(),
        budget: budget.clone(),
        router: router.clone(),
        dispatcher: dispatcher.clone(),
        counters: counters.clone(),
        metrics: metrics.clone(),
        prefetch_bytes: prefetch_total / sources.len(),
        max_record_bytes: config.dispatch.max_record_bytes,
    };
    let (shutdown, shutdown_rx) = watch::channel(false);
    let readiness = Arc::new(crate::admin::readiness::Readiness::new(
        shutdown_rx.clone(),
        metrics.clone(),
    ));
    // The admin API outlives the drain, so `/readyz` can say "draining" while records finish.
    let (admin_stop, admin_stop_rx) = watch::channel(false);
    let canaries = tokio::spawn(
        registry
            .clone()
            .watch_canaries(Duration::from_millis(500), shutdown_rx.clone()),
    );
    let watcher = config.admin.watch_dir.as_ref().map(|dir| {
        let dir = config.resolve(dir);
        tracing::info!(dir = %dir.display(), "watching for new plugin versions");
        tokio::spawn(
            registry
                .clone()
                .watch_dir(dir, Duration::from_secs(1), shutdown_rx.clone()),
        )
    });
    let (admin_addr, admin) = match admin_listener {
        Some(listener) => {
            let mutations = if admin_token.is_some() { "on" } else { "off" };
            let state = crate::admin::AdminState::new(
                &config.admin,
                crate::admin::HostHandles {
                    router: router.clone(),
                    registry: registry.clone(),
                    counters: counters.clone(),
                    budget: budget.clone(),
                },
                admin_token,
                crate::admin::metrics_renderer(metrics.clone()),
                readiness.clone(),
            );
            let (addr, task) = crate::admin::spawn(listener, state, admin_stop_rx)?;
            tracing::info!(%addr, mutations, "admin API listening");
            (Some(addr), Some(task))
        }
        None => (None, None),
    };
    let mut consumers = Vec::new();
    for source in sources {
        let ingest = Ingest::connect(
            &config.kafka,
            &config.lanes,
            &brokers,
            &kafka_properties,
            &shared,
            source,
        )?;
        let shutdown_rx = shutdown_rx.clone();
        let run = async move { ingest.run(shutdown_rx, DRAIN_TIMEOUT).await };
        consumers.push(match source {
            Source::Lane(crate::config::TrafficClass::Realtime) => realtime.handle().spawn(run),
            _ => tokio::spawn(run),
        });
    }
    drop(shared);
    readiness.mark_consuming();
    tracing::info!(
        topics = ?config.kafka.topics,
        realtime_topics = ?config.lanes.realtime.topics,
        batch_topics = ?config.lanes.batch.topics,
        ads_topics = ?config.lanes.ads.topics,
        budget_mb = config.budget.total_mb,
        retry_topic = %config.kafka.retry_topic,
        dlq_topic = %config.kafka.dlq_topic,
        group = %config.kafka.group_id,
        "consuming"
    );
    let task = tokio::spawn(async move {
        let mut result = Ok(());
        for consumer in consumers {
            let finished = consumer
                .await
                .context("consumer task panicked")
                .and_then(|r| r);
            if result.is_ok() {
                result = finished;
            }
        }
        // The drain is over: writes still retrying a transient failure give up, so nothing
        // outlives the host retrying; their records were never finished, so they are read
        // again after the restart.
        outbox.abandon_retries();
        let _ = canaries.await;
        if let Some(watcher) = watcher {
            let _ = watcher.await;
        }
        let _ = admin_stop.send(true);
        if let Some(admin) = admin {
            crate::admin::join(admin).await;
        }
        // The runtime outlives every call: calls hold the engine, and the ticker stops with it.
        drop(dispatcher);
        drop(runtime);
        // The batching queues end once the dispatcher is gone, each on its own thread pool; the
        // last of them lets go of the outbox. Waiting for that keeps the producers from
        // outliving this task, and so the embedded cluster, which stops right after.
        let waited = std::time::Instant::now();
        while Arc::strong_count(&outbox) > 1 && waited.elapsed() < OUTBOX_RELEASE_TIMEOUT {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Results still queued go out before the producer is dropped (which discards them).
        let flushing = tokio::task::spawn_blocking(move || {
            outbox.flush_results(RESULTS_FLUSH_TIMEOUT);
        });
        let _ = flushing.await;
        if let Some(history) = history {
            let written = history.shutdown().await;
            tracing::info!(
                written = written.written,
                dropped = written.dropped,
                "send history flushed"
            );
        }
        result
    });
    Ok(RunningHost {
        counters,
        bootstrap_servers: brokers,
        registry,
        router,
        budget,
        artifacts,
        metrics,
        admin_addr,
        shutdown,
        task,
        _realtime: realtime,
        _embedded: embedded,
    })
}

/// Runs the host until `shutdown` resolves, then stops it gracefully.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let host = start(config).await?;
    shutdown.await;
    tracing::info!("shutting down");
    host.stop().await
}
