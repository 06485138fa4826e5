//! The plugin runtime: one wasmtime `Engine` (pooling allocator, epoch interruption, a ticker
//! thread), one `InstancePre` per loaded plugin, and a fresh `Store` for every call.
//!
//! A trap poisons an instance, so no instance is reused after a fault and no state leaks between
//! calls. Each call is bounded by the plugin's wall deadline (guest CPU and host I/O together) and
//! memory cap. A trapping, hanging or greedy plugin costs its own call, never the host.
//!
//! A [`LoadedPlugin`] can also be an adapter crate linked natively (`native.rs`): no sandbox, the
//! same capabilities, deadline and counters. It exists to measure what the sandbox costs.

pub mod artifacts;
pub mod capabilities;
pub mod layout;
mod limiter;
mod native;
mod outbound;
pub mod registry;
pub mod resolver;
mod signing;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, ComponentExportIndex, Linker};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};

use crate::contract::bindings::{self, AdapterPre};
use crate::contract::{Delivery, Outcome, PluginInfo, RetryInfo, SharedDelivery};
use artifacts::ArtifactCache;
use capabilities::{CallCapabilities, Capabilities, ExchangeTally, PluginState};
pub use native::NativePlugins;
pub use switchboard_sdk::native::NativeAdapter;

use crate::config::RuntimeConfig;

/// Why a plugin could not be loaded. The messages name the plugin and the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("plugin `{plugin}`: cannot read {path}: {source}")]
    Read {
        plugin: String,
        path: String,
        source: std::io::Error,
    },
    #[error("plugin `{plugin}`: not a valid WebAssembly component: {reason}")]
    NotAComponent { plugin: String, reason: String },
    #[error("plugin `{plugin}`: does not fit the switchboard:adapter@0.1.0 world: {reason}")]
    WrongWorld { plugin: String, reason: String },
    #[error("plugin `{plugin}`: `describe` failed: {reason}")]
    Describe { plugin: String, reason: String },
    #[error("plugin `{plugin}`: `init` refused the config: {reason}")]
    Init { plugin: String, reason: String },
}

/// Why one call did not produce outcomes. The caller turns every kind into `retry` outcomes.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("plugin trapped: {0}")]
    Trap(String),
    #[error("plugin call passed its {0:?} deadline")]
    Timeout(Duration),
    #[error("plugin `init` failed: {0}")]
    Init(String),
    /// The host, not the plugin, could not run the call: no instance slot came free within the
    /// call's deadline. Never counted against the vendor's health.
    #[error("host busy: {0}")]
    HostBusy(String),
}

/// Counters of call faults, and call durations, per plugin.
#[derive(Debug, Default)]
pub struct CallCounters {
    pub calls: AtomicU64,
    pub traps: AtomicU64,
    pub timeouts: AtomicU64,
    /// Calls the host could not run for want of an instance slot (`CallError::HostBusy`).
    pub host_busy: AtomicU64,
    /// Durations of calls that returned outcomes, in microseconds.
    durations: std::sync::Mutex<Option<hdrhistogram::Histogram<u64>>>,
}

impl CallCounters {
    fn record_duration(&self, elapsed: Duration) {
        let mut durations = self.durations.lock().unwrap_or_else(|p| p.into_inner());
        // Three significant figures up to an hour: a few tens of KiB per plugin.
        if durations.is_none() {
            *durations = hdrhistogram::Histogram::new_with_max(3_600_000_000, 3).ok();
        }
        if let Some(histogram) = durations.as_mut() {
            histogram.saturating_record(elapsed.as_micros() as u64);
        }
    }

    /// The duration of a call at quantile `q` (0.5, 0.99), over every call so far.
    pub fn duration_at(&self, q: f64) -> Option<Duration> {
        let durations = self.durations.lock().unwrap_or_else(|p| p.into_inner());
        durations
            .as_ref()
            .filter(|h| !h.is_empty())
            .map(|h| Duration::from_micros(h.value_at_quantile(q)))
    }
}

/// Limits of one plugin's calls.
#[derive(Debug, Clone, Copy)]
pub struct PluginLimits {
    /// Wall deadline for a whole call.
    pub timeout: Duration,
    /// Cap on linear memory, in bytes.
    pub memory_bytes: usize,
}

/// The shared engine and the linker every plugin is checked against.
pub struct PluginRuntime {
    engine: Engine,
    linker: Linker<PluginState>,
    /// The largest memory cap the pool can give; a plugin asking for more is clamped to it.
    max_memory_bytes: usize,
    /// What the pool keeps resident of an instance's memory between calls: a component whose
    /// stack fills it is warned of at load ([`layout::stack_warning`]).
    keep_resident_bytes: usize,
    /// One permit per component instance the pool holds: a call waits here for a slot (within
    /// its deadline) instead of failing to instantiate when every slot is taken.
    slots: Arc<tokio::sync::Semaphore>,
    ticker_stop: Arc<AtomicBool>,
    /// Compiled components on disk; `None` compiles on every load.
    artifacts: Option<Arc<ArtifactCache>>,
}

impl Drop for PluginRuntime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

impl PluginRuntime {
    /// Builds the engine, starts its epoch ticker, and links the host capabilities.
    /// `max_memory_bytes` bounds every plugin's memory cap (the pool's slot size).
    pub fn new(config: &RuntimeConfig, max_memory_bytes: usize) -> anyhow::Result<Self> {
        let mut pool = PoolingAllocationConfig::default();
        let instances = config.max_instances.max(1);
        // Each component may take only its share of the pool's core instances, memories and
        // tables, and `slots` admits at most `instances` components at once: so the pool never
        // runs out under one plugin's greed, and a component that needs more than its share is
        // refused at load, not at a neighbour's call.
        pool.total_component_instances(instances)
            .total_core_instances(instances * limiter::CORE_INSTANCES_PER_COMPONENT)
            .max_core_instances_per_component(limiter::CORE_INSTANCES_PER_COMPONENT)
            .total_memories(instances * limiter::MEMORIES_PER_COMPONENT)
            .max_memories_per_component(limiter::MEMORIES_PER_COMPONENT)
            .total_tables(instances * limiter::TABLES_PER_COMPONENT)
            .max_tables_per_component(limiter::TABLES_PER_COMPONENT)
            .total_stacks(instances)
            .max_memory_size(max_memory_bytes);
        // Each call runs in a fresh instance; memory kept resident is zeroed with `memset` when
        // the instance ends, where the rest is handed back with `madvise` and faulted in again,
        // page by page, by the next call (config.rs). Not `pagemap_scan`, though it resets only
        // the pages a call wrote and saved about 3 % of the host's CPU per delivery: in this
        // wasmtime it resets only pages present in memory, so a written page that is swapped
        // out or being migrated at that moment keeps its contents for the next instance
        // (wasmtime#14357). Every call must start from clean memory (SECURITY.md). What is kept
        // is counted from the start of linear memory, where a Rust guest's stack lies; the
        // bundled adapters link with a small one so that their heap lies inside what is kept
        // (`.cargo/config.toml`).
        let keep_resident = config.memory_keep_resident_kib.saturating_mul(1024);
        pool.linear_memory_keep_resident(keep_resident)
            .table_keep_resident(keep_resident);
        let mut wasm_config = wasmtime::Config::new();
        wasm_config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&wasm_config)?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        bindings::Adapter::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let tick = Duration::from_millis(config.epoch_tick_ms.max(1));
        let (stop, ticking_engine) = (ticker_stop.clone(), engine.weak());
        std::thread::Builder::new()
            .name("epoch-ticker".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    match ticking_engine.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })?;
        Ok(Self {
            engine,
            linker,
            max_memory_bytes,
            keep_resident_bytes: keep_resident,
            slots: Arc::new(tokio::sync::Semaphore::new(instances as usize)),
            ticker_stop,
            artifacts: None,
        })
    }

    /// Loads components through `cache`: a component compiled before is deserialized from its
    /// verified artifact instead of compiled again.
    pub fn with_artifact_cache(mut self, cache: Arc<ArtifactCache>) -> Self {
        self.artifacts = Some(cache);
        self
    }

    /// The artifact cache loads go through, if any: its stats tell hits from compiles.
    pub fn artifact_cache(&self) -> Option<&Arc<ArtifactCache>> {
        self.artifacts.as_ref()
    }

    /// Compiles the component at `path`, checks it against the world, and runs `describe` and
    /// `init` off the hot path. A plugin that fails any step is refused with the reason.
    pub async fn load_file(
        &self,
        name: &str,
        path: &Path,
        caps: Capabilities,
        limits: PluginLimits,
        init_config: Vec<(String, String)>,
    ) -> Result<LoadedPlugin, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            plugin: name.to_string(),
            path: path.display().to_string(),
            source,
        })?;
        self.load_bytes(name, &bytes, caps, limits, init_config)
            .await
    }

    /// As [`PluginRuntime::load_file`], from the component's bytes.
    pub async fn load_bytes(
        &self,
        name: &str,
        bytes: &[u8],
        mut caps: Capabilities,
        mut limits: PluginLimits,
        init_config: Vec<(String, String)>,
    ) -> Result<LoadedPlugin, LoadError> {
        let plugin = name.to_string();
        limits.memory_bytes = limits.memory_bytes.min(self.max_memory_bytes);
        let pre = self.compile(&plugin, bytes).await?;
        // Loaded all the same: a large stack costs the host CPU on every call, not safety.
        // (`plugin check` prints the same warning itself.)
        if let Some(stack) = layout::stack_first_bytes(bytes)
            && let Some(warning) = layout::stack_warning(stack, self.keep_resident_bytes as u64)
        {
            tracing::warn!(plugin = %plugin, stack_kib = stack / 1024, "{warning}");
        }
        let deliver = pre
            .instance_pre()
            .component()
            .get_export_index(None, "deliver")
            .ok_or_else(|| LoadError::WrongWorld {
                plugin: plugin.clone(),
                reason: "no `deliver` export".into(),
            })?;
        let info = self
            .describe(&plugin, &pre, caps.client.clone(), limits)
            .await?;
        caps.version = info.version.clone();
        let engine = self.engine.clone();
        let loaded = LoadedPlugin {
            name: plugin.clone(),
            info,
            backend: Backend::Component {
                engine: engine.clone(),
                pre: pre.clone(),
                deliver,
                slots: self.slots.clone(),
            },
            caps: Arc::new(caps),
            limits,
            init_config,
            counters: Arc::new(CallCounters::default()),
        };
        // Running init once here refuses a bad config at load time, not on the first delivery.
        let mut store = new_store(&engine, loaded.caps.clone(), limits);
        let init = async {
            let _slot = self.slots.acquire().await;
            let adapter = pre.instantiate_async(&mut store).await?;
            adapter.call_init(&mut store, &loaded.init_config).await
        };
        match tokio::time::timeout(limits.timeout, init).await {
            Ok(Ok(Ok(()))) => Ok(loaded),
            Ok(Ok(Err(reason))) => Err(LoadError::Init { plugin, reason }),
            Ok(Err(trap)) => Err(LoadError::Init {
                plugin,
                reason: format!("trapped: {trap:#}"),
            }),
            Err(_) => Err(LoadError::Init {
                plugin,
                reason: format!("no answer within {:?}", limits.timeout),
            }),
        }
    }

    /// Compiles a component (or loads its artifact) and checks it against the world. Cranelift
    /// compilation is CPU work of up to seconds, and the artifact is file I/O, so either runs off
    /// the async workers.
    async fn compile(
        &self,
        plugin: &str,
        bytes: &[u8],
    ) -> Result<AdapterPre<PluginState>, LoadError> {
        let not_a_component = |reason: String| LoadError::NotAComponent {
            plugin: plugin.to_string(),
            reason,
        };
        let engine = self.engine.clone();
        let owned = bytes.to_vec();
        let (cache, name) = (self.artifacts.clone(), plugin.to_string());
        let component = tokio::task::spawn_blocking(move || match cache {
            Some(cache) => cache.load_or_compile(&engine, &name, &owned),
            None => Component::new(&engine, &owned).map_err(anyhow::Error::from),
        })
        .await
        .map_err(|e| not_a_component(e.to_string()))?
        .map_err(|e| not_a_component(format!("{e:#}")))?;
        let wrong_world = |e: wasmtime::Error| LoadError::WrongWorld {
            plugin: plugin.to_string(),
            reason: format!("{e:#}"),
        };
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(wrong_world)?;
        AdapterPre::new(instance_pre).map_err(wrong_world)
    }

    /// Runs `describe` on a fresh instance that is granted nothing.
    async fn describe(
        &self,
        plugin: &str,
        pre: &AdapterPre<PluginState>,
        client: reqwest::Client,
        limits: PluginLimits,
    ) -> Result<PluginInfo, LoadError> {
        let caps = Arc::new(Capabilities::new(
            plugin.to_string(),
            Vec::new(),
            Default::default(),
            Default::default(),
            client,
            Default::default(),
        ));
        let mut store = self.store(caps, limits);
        let describe = async {
            let _slot = self.slots.acquire().await;
            let adapter = pre.instantiate_async(&mut store).await?;
            adapter.call_describe(&mut store).await
        };
        let failed = |reason: String| LoadError::Describe {
            plugin: plugin.to_string(),
            reason,
        };
        tokio::time::timeout(limits.timeout, describe)
            .await
            .map_err(|_| failed(format!("no answer within {:?}", limits.timeout)))?
            .map_err(|e| failed(format!("{e:#}")))
    }

    fn store(&self, caps: Arc<Capabilities>, limits: PluginLimits) -> Store<PluginState> {
        new_store(&self.engine, caps, limits)
    }
}

fn new_store(engine: &Engine, caps: Arc<Capabilities>, limits: PluginLimits) -> Store<PluginState> {
    let deadline = Instant::now() + limits.timeout;
    store_for_call(engine, CallCapabilities::new(caps, deadline), limits)
}

/// A fresh `Store` whose imports are served by `call`.
fn store_for_call(
    engine: &Engine,
    call: CallCapabilities,
    limits: PluginLimits,
) -> Store<PluginState> {
    let store_limits = limiter::CallLimiter::new(limits.memory_bytes);
    let mut store = Store::new(engine, PluginState::for_call(call, store_limits));
    store.limiter(|state| &mut state.limits);
    // Yield to the executor at every epoch tick, so a guest spinning on CPU neither blocks a
    // worker thread nor outlives the call's deadline (the timeout fires at the yield).
    store.epoch_deadline_async_yield_and_update(1);
    store
}

/// A plugin version, compiled, described and initialised, ready for calls.
pub struct LoadedPlugin {
    /// The name it is configured under.
    pub name: String,
    /// What the plugin said of itself in `describe`.
    pub info: PluginInfo,
    backend: Backend,
    caps: Arc<Capabilities>,
    limits: PluginLimits,
    init_config: Vec<(String, String)>,
    /// Calls, traps and timeouts.
    pub counters: Arc<CallCounters>,
}

/// What runs a plugin's calls.
#[derive(Clone)]
enum Backend {
    /// A WebAssembly component: a fresh instance for every call.
    Component {
        engine: Engine,
        pre: AdapterPre<PluginState>,
        /// Where `deliver` is among the component's exports, looked up once at load.
        deliver: ComponentExportIndex,
        /// The runtime's instance slots.
        slots: Arc<tokio::sync::Semaphore>,
    },
    /// An adapter crate linked into the host, for measuring the sandbox (see `native.rs`).
    Native(NativeAdapter),
}

impl LoadedPlugin {
    /// The batch size used for this plugin: its own `max-batch`, capped by the operator's.
    pub fn max_batch(&self, configured: u32) -> usize {
        self.info.max_batch.clamp(1, configured.max(1)) as usize
    }

    /// The plugin's capability counters (denied hosts and secrets).
    pub fn capability_counters(&self) -> &capabilities::CapabilityCounters {
        &self.caps.counters
    }

    /// True when the plugin is an adapter linked natively rather than a component.
    pub fn is_native(&self) -> bool {
        matches!(self.backend, Backend::Native(_))
    }

    /// The same compiled plugin with other capabilities (offline tests give each case its own
    /// script and a fresh cache). `init` is not run again here; it runs on every call anyway.
    pub fn with_capabilities(&self, mut caps: Capabilities) -> LoadedPlugin {
        caps.version = self.info.version.clone();
        LoadedPlugin {
            name: self.name.clone(),
            info: self.info.clone(),
            backend: self.backend.clone(),
            caps: Arc::new(caps),
            limits: self.limits,
            init_config: self.init_config.clone(),
            counters: Arc::new(CallCounters::default()),
        }
    }

    /// The same plugin version for the realtime lane's calls, sharing its cache, counters,
    /// quotas and compiled code, sending its HTTP through `client`.
    pub fn for_realtime(&self, client: reqwest::Client) -> LoadedPlugin {
        LoadedPlugin {
            name: self.name.clone(),
            info: self.info.clone(),
            backend: self.backend.clone(),
            caps: Arc::new(self.caps.for_realtime(client)),
            limits: self.limits,
            init_config: self.init_config.clone(),
            counters: self.counters.clone(),
        }
    }

    /// Runs `deliver` on a fresh instance (`init` first, as on every fresh instance). Returns
    /// one outcome per delivery; a plugin that returns too few gets `retry` for the rest, and
    /// extra outcomes are dropped.
    pub async fn deliver(&self, batch: &[Delivery]) -> Result<Vec<Outcome>, CallError> {
        let shared: Vec<SharedDelivery> = batch.iter().map(SharedDelivery::from).collect();
        self.deliver_reporting(&shared).await.outcomes
    }

    /// As [`LoadedPlugin::deliver`], for deliveries that share their request's content, with
    /// what the call's HTTP requests came to, however the call ended.
    pub async fn deliver_reporting(&self, batch: &[SharedDelivery]) -> CallReport {
        self.counters.calls.fetch_add(1, Ordering::Relaxed);
        // A component call first waits for an instance slot, for as long as its deadline; the
        // deadline of the call itself starts once it has one. Waiting out the deadline is the
        // host's failure, never the vendor's.
        let _slot = match &self.backend {
            Backend::Component { slots, .. } => {
                match tokio::time::timeout(self.limits.timeout, slots.clone().acquire_owned()).await
                {
                    Ok(Ok(slot)) => Some(slot),
                    _ => {
                        self.counters.host_busy.fetch_add(1, Ordering::Relaxed);
                        return CallReport {
                            outcomes: Err(CallError::HostBusy(format!(
                                "no instance slot came free within {:?} (runtime.max_instances)",
                                self.limits.timeout
                            ))),
                            exchanges: ExchangeTally::default(),
                        };
                    }
                }
            }
            Backend::Native(_) => None,
        };
        let started = Instant::now();
        // Made here rather than inside the call, so what its requests came to can still be read
        // when a trap or the deadline cuts the call off.
        let capabilities = CallCapabilities::new(self.caps.clone(), started + self.limits.timeout);
        let call = async {
            match &self.backend {
                Backend::Component {
                    engine,
                    pre,
                    deliver,
                    ..
                } => {
                    self.call_component(engine, pre, deliver, capabilities.clone(), batch)
                        .await
                }
                Backend::Native(adapter) => {
                    native::call_deliver(*adapter, capabilities.clone(), &self.init_config, batch)
                        .await
                }
            }
        };
        let outcomes = match tokio::time::timeout(self.limits.timeout, call).await {
            Ok(Ok(outcomes)) => {
                self.counters.record_duration(started.elapsed());
                Ok(fit_outcomes(outcomes, batch.len()))
            }
            Ok(Err(error)) => {
                match error {
                    CallError::Trap(_) => self.counters.traps.fetch_add(1, Ordering::Relaxed),
                    CallError::HostBusy(_) => {
                        self.counters.host_busy.fetch_add(1, Ordering::Relaxed)
                    }
                    CallError::Timeout(_) | CallError::Init(_) => 0,
                };
                Err(error)
            }
            Err(_) => {
                self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                Err(CallError::Timeout(self.limits.timeout))
            }
        };
        CallReport {
            outcomes,
            exchanges: capabilities.exchanges(),
        }
    }

    /// One call on a fresh component instance: instantiate, `init`, `deliver`.
    async fn call_component(
        &self,
        engine: &Engine,
        pre: &AdapterPre<PluginState>,
        deliver: &ComponentExportIndex,
        capabilities: CallCapabilities,
        batch: &[SharedDelivery],
    ) -> Result<Vec<Outcome>, CallError> {
        let mut store = store_for_call(engine, capabilities, self.limits);
        let call = async {
            let instance = pre.instance_pre().instantiate_async(&mut store).await?;
            let adapter = bindings::Adapter::new(&mut store, &instance)?;
            if let Err(reason) = adapter.call_init(&mut store, &self.init_config).await? {
                return Ok(Err(CallError::Init(reason)));
            }
            // `deliver` through a typed function of the host's own record, so the shared
            // content is copied once per delivery into the guest's memory and nowhere else
            // (the generated binding would need an owned `String` per delivery).
            let typed = instance
                .get_typed_func::<(&[SharedDelivery],), (Vec<Outcome>,)>(&mut store, deliver)?;
            let (outcomes,) = typed.call_async(&mut store, (batch,)).await?;
            Ok::<_, wasmtime::Error>(Ok(outcomes))
        };
        match call.await {
            Ok(outcomes) => outcomes,
            // The pool had no slot although the slots said it had: the host's accounting, not
            // the plugin's fault.
            Err(error) if error.is::<wasmtime::PoolConcurrencyLimitError>() => {
                Err(CallError::HostBusy(format!("{error:#}")))
            }
            Err(trap) => Err(CallError::Trap(format!("{trap:#}"))),
        }
    }
}

/// What one call came to.
#[derive(Debug)]
pub struct CallReport {
    /// One outcome per delivery, in order; or why the call produced none.
    pub outcomes: Result<Vec<Outcome>, CallError>,
    /// What the call's HTTP requests came to, those cut off by a trap or the deadline included.
    /// Whether the vendor may have acted on the call decides where its retries may go
    /// ([`crate::route::retry_pinning`]).
    pub exchanges: ExchangeTally,
}

/// The most bytes of a plugin's `reason` strings the host keeps.
pub const MAX_REASON_BYTES: usize = 1024;
/// The most bytes of a vendor code the host keeps.
pub const MAX_CODE_BYTES: usize = 256;
/// The most bytes of a vendor message id the host keeps: ids are short, but some adapters
/// return a small JSON document as the id.
pub const MAX_MESSAGE_ID_BYTES: usize = 4096;

fn cap_outcome_text(outcome: &mut Outcome) {
    use crate::text::cap_in_place;
    match outcome {
        Outcome::Delivered(id) => cap_in_place(id, MAX_MESSAGE_ID_BYTES),
        Outcome::Retry(info) => cap_in_place(&mut info.reason, MAX_REASON_BYTES),
        Outcome::Rejected(rejection) => {
            cap_in_place(&mut rejection.code, MAX_CODE_BYTES);
            cap_in_place(&mut rejection.reason, MAX_REASON_BYTES);
        }
        Outcome::InvalidRecipient(reason) => cap_in_place(reason, MAX_REASON_BYTES),
    }
}

fn fit_outcomes(mut outcomes: Vec<Outcome>, expected: usize) -> Vec<Outcome> {
    if outcomes.len() != expected {
        tracing::warn!(
            expected,
            returned = outcomes.len(),
            "plugin returned the wrong number of outcomes"
        );
    }
    outcomes.truncate(expected);
    // A plugin that returned millions of outcomes must not leave their capacity behind.
    outcomes.shrink_to_fit();
    // A plugin's strings become DLQ headers, retry records, results and log fields: cut them
    // here, once, so no plugin can make any of those grow without bound.
    for outcome in &mut outcomes {
        cap_outcome_text(outcome);
    }
    while outcomes.len() < expected {
        outcomes.push(Outcome::Retry(RetryInfo {
            reason: "plugin returned no outcome for this delivery".into(),
            after_ms: None,
        }));
    }
    outcomes
}

/// What `plugin check` reports: the component fits the world, and what `describe` returned.
pub async fn check_component(path: &Path) -> Result<PluginInfo, LoadError> {
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let limits = PluginLimits {
        timeout: Duration::from_secs(5),
        memory_bytes: 256 << 20,
    };
    let runtime =
        PluginRuntime::new(&RuntimeConfig::default(), limits.memory_bytes).map_err(|e| {
            LoadError::NotAComponent {
                plugin: name.clone(),
                reason: format!("runtime: {e:#}"),
            }
        })?;
    let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
        plugin: name.clone(),
        path: path.display().to_string(),
        source,
    })?;
    let pre = runtime.compile(&name, &bytes).await?;
    runtime
        .describe(&name, &pre, reqwest::Client::new(), limits)
        .await
}
