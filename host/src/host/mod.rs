//! Wires the stages into a running host, in the order a record meets them, and owns start-up
//! order and graceful shutdown: stop consuming, drain what is in flight, commit.
//!
//! [`start_with`] reads as the pipeline: the broker, the plugins, the route, dedup, settle,
//! dispatch, the lanes, ingest; one constructor per stage ([`stages`]). Shutdown is signalled
//! once (a watch channel every consumer and background task listens to), and the end of the
//! batching queues is awaited through the drop of their senders, as mini-redis does, not polled.

mod http;
mod realtime;
mod stages;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;

use crate::admin::collector::HostParts;
use crate::config::Config;
use crate::dispatch::{Dispatcher, QueuesEnded};
use crate::ingest::consumer::IngestShared;
use crate::kafka::EmbeddedKafka;
use crate::lane::Budget;
use crate::plugin::artifacts::ArtifactCache;
use crate::plugin::registry::Registry;
use crate::plugin::{NativePlugins, PluginRuntime};
use crate::route::Router;
use crate::settle::{Outbox, Records};
use crate::telemetry::Counters;
use crate::telemetry::metrics::Metrics;
pub use http::{http_client, http_client_with};
use realtime::RealtimeThreads;
pub use realtime::{SHARED_THREAD_NAME, shared_runtime};

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
    /// The fleet's control plane, when it is on (`control.enabled`).
    pub control: Option<Arc<crate::control::ControlPlane>>,
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

/// What an embedding program adds to a config when it starts a host with [`start_with`].
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Configured plugins served by an adapter linked into the program instead of their
    /// component file, e.g. to measure what the sandbox costs. Each name must be configured.
    pub native_plugins: NativePlugins,
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
    let counters = Arc::new(Counters::default());
    let metrics = Arc::new(Metrics::new());

    let broker = stages::open_broker(&config)?;
    let plugins = stages::load_plugins(&config, &options).await?;
    let (health, router) = stages::route(&config);
    stages::ensure_output_topics(&config, &broker).await?;
    let dedup = stages::open_dedup(&config, &metrics).await?;
    let (outbox, history) = stages::open_settle(&config, &broker, &counters, &metrics).await?;
    let records = Records {
        counters: counters.clone(),
        dedup: dedup.clone(),
        outbox: outbox.clone(),
        history: history.as_ref().map(|writer| writer.sender()),
        health,
        fallback: config.fallback.clone(),
        metrics: metrics.clone(),
    };
    let (dispatcher, queues_ended) = stages::start_dispatch(&config, &plugins, records);
    let consumer_count = crate::ingest::consumer::Source::all(&config.kafka, &config.lanes).len();
    let (budget, prefetch_bytes) = stages::lane_budget(&config, consumer_count);
    let shared = IngestShared {
        dedup,
        outbox: outbox.clone(),
        budget: budget.clone(),
        router: router.clone(),
        dispatcher: dispatcher.clone(),
        counters: counters.clone(),
        metrics: metrics.clone(),
        prefetch_bytes,
        max_record_bytes: config.dispatch.max_record_bytes,
    };
    metrics.observe(Arc::new(HostParts {
        counters: counters.clone(),
        plugins: plugins.registry.clone(),
        router: router.clone(),
        budget: budget.clone(),
    }));

    let (shutdown, shutdown_rx) = watch::channel(false);
    // Before any consumer: a host reads the fleet's desired state to its end first.
    let (reporter, control) = stages::start_control(
        &config,
        &broker,
        &plugins.registry,
        &router,
        &metrics,
        &shutdown_rx,
    )
    .await?;
    let (control, control_tasks) = match control {
        Some((plane, tasks)) => (Some(plane), Some(tasks)),
        None => (None, None),
    };
    let readiness = Arc::new(crate::admin::readiness::Readiness::new(
        shutdown_rx.clone(),
        metrics.clone(),
    ));
    let operators = Operators::start(
        &config,
        &plugins.registry,
        control_tasks,
        &shutdown_rx,
        admin_listener.map(|listener| {
            let state = crate::admin::AdminState::new(
                &config.admin,
                crate::admin::HostHandles {
                    router: router.clone(),
                    registry: plugins.registry.clone(),
                    counters: counters.clone(),
                    budget: budget.clone(),
                    control: control.clone(),
                    reporter: reporter.clone(),
                },
                admin_token,
                crate::admin::metrics_renderer(metrics.clone()),
                readiness.clone(),
            );
            (listener, state)
        }),
    )?;
    let consumers =
        stages::start_consumers(&config, &broker, &shared, &shutdown_rx, &plugins.realtime)?;
    drop(shared);
    // Last, so that every thread made for the realtime lane (its runtime, its consumer's
    // librdkafka threads) was made from a thread still at the default priority.
    if plugins.realtime.own() && config.runtime.bulk_nice > 0 {
        let lowered = realtime::lower_shared_priority(config.runtime.bulk_nice);
        tracing::info!(
            threads = lowered,
            nice = config.runtime.bulk_nice,
            "lowered the shared threads' priority below the realtime lane's"
        );
    }
    if let Some(addr) = operators.admin_addr {
        *reporter.admin.lock().unwrap_or_else(|p| p.into_inner()) = Some(addr.to_string());
    }
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
    let admin_addr = operators.admin_addr;
    let stopping = Stopping {
        consumers,
        outbox,
        operators,
        dispatcher,
        queues_ended,
        runtime: plugins.runtime,
        history,
    };
    Ok(RunningHost {
        counters,
        bootstrap_servers: broker.brokers,
        registry: plugins.registry,
        router,
        budget,
        artifacts: plugins.artifacts,
        metrics,
        control,
        admin_addr,
        shutdown,
        task: tokio::spawn(stopping.after_consumers()),
        _realtime: plugins.realtime,
        _embedded: broker.embedded,
    })
}

/// What operators reach while the host runs: canary judgement, the watched directory and the
/// admin API. The admin API outlives the drain, so `/readyz` can say "draining" while records
/// finish; it stops on `admin_stop`.
struct Operators {
    /// The canary judge: this host's own, or, with the control plane on, its tasks (applying
    /// the control topic, reporting, judging canaries over the fleet).
    canaries: Vec<tokio::task::JoinHandle<()>>,
    watcher: Option<tokio::task::JoinHandle<()>>,
    admin: Option<tokio::task::JoinHandle<()>>,
    admin_addr: Option<std::net::SocketAddr>,
    admin_stop: watch::Sender<bool>,
}

impl Operators {
    fn start(
        config: &Config,
        registry: &Arc<Registry>,
        control_tasks: Option<Vec<tokio::task::JoinHandle<()>>>,
        shutdown: &watch::Receiver<bool>,
        admin: Option<(tokio::net::TcpListener, crate::admin::AdminState)>,
    ) -> anyhow::Result<Self> {
        // With the control plane on, canaries are judged over the fleet and rolled back through
        // the control topic; judging them here as well would roll back this host alone.
        let canaries = control_tasks.unwrap_or_else(|| {
            vec![tokio::spawn(registry.clone().watch_canaries(
                Duration::from_millis(500),
                shutdown.clone(),
            ))]
        });
        let watcher = config.admin.watch_dir.as_ref().map(|dir| {
            let dir = config.resolve(dir);
            tracing::info!(dir = %dir.display(), "watching for new plugin versions");
            tokio::spawn(
                registry
                    .clone()
                    .watch_dir(dir, Duration::from_secs(1), shutdown.clone()),
            )
        });
        let (admin_stop, admin_stop_rx) = watch::channel(false);
        let (admin_addr, admin) = match admin {
            Some((listener, state)) => {
                let mutations = if state.token.is_some() { "on" } else { "off" };
                let (addr, task) = crate::admin::spawn(listener, state, admin_stop_rx)?;
                tracing::info!(%addr, mutations, "admin API listening");
                (Some(addr), Some(task))
            }
            None => (None, None),
        };
        Ok(Self {
            canaries,
            watcher,
            admin,
            admin_addr,
            admin_stop,
        })
    }

    /// Waits for the background tasks (they stop on the shutdown signal), then stops the admin
    /// API.
    async fn stop(self) {
        for task in self.canaries {
            let _ = task.await;
        }
        if let Some(watcher) = self.watcher {
            let _ = watcher.await;
        }
        let _ = self.admin_stop.send(true);
        if let Some(admin) = self.admin {
            crate::admin::join(admin).await;
        }
    }
}

/// What a host lets go of, in order, once its consumers have drained and committed.
struct Stopping {
    consumers: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    outbox: Arc<Outbox>,
    operators: Operators,
    dispatcher: Arc<Dispatcher>,
    queues_ended: QueuesEnded,
    runtime: Arc<PluginRuntime>,
    history: Option<switchboard_history::HistoryWriter>,
}

impl Stopping {
    /// Runs until the consumers end (on the shutdown signal, after their drain and commit),
    /// then stops the rest; returns the first consumer's failure, if any.
    async fn after_consumers(self) -> anyhow::Result<()> {
        let mut result = Ok(());
        for consumer in self.consumers {
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
        self.outbox.abandon_retries();
        self.operators.stop().await;
        // The runtime outlives every call: calls hold the engine, and the ticker stops with it.
        drop(self.dispatcher);
        drop(self.runtime);
        // The batching queues end once the dispatcher is gone, each on its own thread pool, and
        // with them their hold on the outbox. Waiting for that keeps the producers from
        // outliving this task, and so the embedded cluster, which stops right after.
        let _ = tokio::time::timeout(OUTBOX_RELEASE_TIMEOUT, self.queues_ended.wait()).await;
        // Results still queued go out before the producer is dropped (which discards them).
        let outbox = self.outbox;
        let flushing = tokio::task::spawn_blocking(move || {
            outbox.flush_results(RESULTS_FLUSH_TIMEOUT);
        });
        let _ = flushing.await;
        if let Some(history) = self.history {
            let written = history.shutdown().await;
            tracing::info!(
                written = written.written,
                dropped = written.dropped,
                "send history flushed"
            );
        }
        result
    }
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
