//! The plugin registry: every configured plugin's versions, which one is active, the canary,
//! and how a new version becomes active without a restart (hot swap). Four ideas, one file each:
//!
//! - [`lineup`]: a plugin's versions at one moment (active, canary, previous, staged) and the
//!   pure transitions between lineups. Activation swaps one pointer ([`ArcSwap`]): the next call
//!   takes the new lineup, and calls in flight hold an `Arc` of the old version and finish on it.
//! - [`swaps`]: the changes operators make (stage, upload, activate, roll back, canary): a new
//!   version is compiled, `describe`d and `init`ed off the hot path by
//!   [`PluginRuntime::load_bytes`]; a version that fails a step, or serves another channel, is
//!   refused with the reason and the active version stays. One change at a time.
//! - [`canary`]: the judgement: every second a canary's error rate is compared with the active
//!   version's over the same window, and the canary rolled back when it is worse by more than
//!   the configured margin.
//! - [`kept`]: the active versions and their component files in the state directory, so a
//!   restart comes back on the versions operators chose, unless the config file itself changed.
//!
//! Beside them, [`watch`]: new versions dropped into a watched directory.

pub mod canary;
pub mod kept;
pub mod lineup;
mod swaps;
mod watch;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::Serialize;
use sha2::Digest as _;

pub use canary::CanaryEnd;
pub use lineup::{Canary, Lineup, Version, VersionSource};

use super::capabilities::{
    AllowedHost, Capabilities, CapabilityCounters, PluginCache, PluginQuotas,
};
use super::{LoadError, LoadedPlugin, PluginLimits, PluginRuntime};
use crate::clock::now_ms;
use crate::config::{CanaryConfig, PluginBounds};
use crate::secrets::PluginSecrets;
use crate::window::Window;

/// How a configured plugin's versions are loaded: the same grants, secrets, limits and config
/// for every version.
#[derive(Debug, Clone)]
pub struct PluginSpec {
    pub name: String,
    pub allowed_hosts: Vec<AllowedHost>,
    pub secrets: PluginSecrets,
    pub limits: PluginLimits,
    pub init_config: Vec<(String, String)>,
    /// The operator's cap on deliveries per call.
    pub max_batch: u32,
    /// Denied hosts and secrets, over all versions.
    pub capability_counters: Arc<CapabilityCounters>,
    /// What each call, and the plugin as a whole, may make the host do.
    pub bounds: PluginBounds,
    /// The plugin's requests in flight and log budget, over all versions.
    pub quotas: Arc<PluginQuotas>,
}

impl PluginSpec {
    /// Fresh capabilities for a new version: its own cache, the plugin's grants and counters.
    pub fn capabilities(&self, client: reqwest::Client) -> Capabilities {
        Capabilities::new(
            self.name.clone(),
            self.allowed_hosts.clone(),
            self.secrets.clone(),
            Arc::new(PluginCache::default()),
            client,
            self.capability_counters.clone(),
        )
        .with_bounds(self.bounds, self.quotas.clone())
    }
}

/// One configured plugin: its spec and its versions.
pub struct Slot {
    pub name: String,
    /// The channel the plugin serves; every version must serve it.
    pub channel: String,
    spec: PluginSpec,
    lineup: ArcSwap<Lineup>,
    /// Calls chosen so far, to spread the canary's share evenly.
    calls: AtomicU64,
    /// The id of the config file's version, to tell at start whether the config changed.
    config_id: String,
    last_canary_end: Mutex<Option<CanaryEnd>>,
}

impl Slot {
    /// Makes `lineup` the plugin's versions, letting go of the oldest previous and staged
    /// versions beyond what is kept.
    fn replace(&self, lineup: Lineup) {
        self.lineup.store(Arc::new(lineup.trimmed()));
    }

    /// The version for the next call: the canary for its share of calls, else the active one.
    pub fn choose(&self) -> Arc<Version> {
        let lineup = self.lineup.load();
        if let Some(canary) = &lineup.canary
            && lineup::canary_turn(self.calls.fetch_add(1, Ordering::Relaxed), canary.percent)
        {
            return canary.version.clone();
        }
        lineup.active.clone()
    }

    /// The active version.
    pub fn active(&self) -> Arc<Version> {
        self.lineup.load().active.clone()
    }

    /// The versions now.
    pub fn lineup(&self) -> Arc<Lineup> {
        self.lineup.load_full()
    }

    /// Deliveries per call: the active version's `max-batch`, capped by the operator's.
    pub fn max_batch(&self) -> usize {
        self.active().plugin.max_batch(self.spec.max_batch)
    }

    /// Denied hosts and secrets over all versions.
    pub fn capability_counters(&self) -> &CapabilityCounters {
        &self.spec.capability_counters
    }

    /// How the last canary ended, if one did.
    pub fn last_canary_end(&self) -> Option<CanaryEnd> {
        self.last_canary_end
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn view(&self) -> PluginView {
        let lineup = self.lineup();
        PluginView {
            name: self.name.clone(),
            channel: self.channel.clone(),
            active: lineup.active.view(),
            canary: lineup.canary.as_ref().map(|c| CanaryView {
                version: c.version.view(),
                percent: c.percent,
                started_at_ms: c.started_at_ms,
            }),
            previous: lineup.previous.iter().rev().map(|v| v.view()).collect(),
            staged: lineup.staged.iter().map(|v| v.view()).collect(),
            last_canary_end: self.last_canary_end(),
        }
    }
}

/// A version as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct VersionView {
    pub id: String,
    /// The version the plugin gives in `describe`.
    pub version: String,
    pub source: VersionSource,
    pub loaded_at_ms: u64,
}

/// A canary as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CanaryView {
    pub version: VersionView,
    pub percent: u8,
    pub started_at_ms: u64,
}

/// A plugin as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PluginView {
    pub name: String,
    pub channel: String,
    pub active: VersionView,
    pub canary: Option<CanaryView>,
    /// What a rollback goes back to, most recent first.
    pub previous: Vec<VersionView>,
    pub staged: Vec<VersionView>,
    pub last_canary_end: Option<CanaryEnd>,
}

/// Why a version change was refused. The active version stays in every case.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    #[error("no plugin `{0}` is configured")]
    UnknownPlugin(String),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(
        "the new version of `{plugin}` serves channel `{channel}`, but `{plugin}` serves `{expected}`"
    )]
    WrongChannel {
        plugin: String,
        channel: String,
        expected: String,
    },
    #[error(
        "plugin `{plugin}` has no loaded version `{id}` (name one by its id, or by a version string only one loaded version has)"
    )]
    UnknownVersion { plugin: String, id: String },
    #[error("plugin `{0}` has no previous version to roll back to")]
    NothingToRollBack(String),
    #[error("a canary takes 1..=99 percent of calls, not {0}")]
    BadPercent(u8),
    #[error("version `{id}` is already the active version of `{plugin}`")]
    AlreadyActive { plugin: String, id: String },
    #[error("could not keep the component in {path}: {source}")]
    Store {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Every configured plugin's versions.
pub struct Registry {
    slots: BTreeMap<String, Arc<Slot>>,
    runtime: Arc<PluginRuntime>,
    client: reqwest::Client,
    /// The realtime lane's client, when it has threads of its own.
    realtime_client: Option<reqwest::Client>,
    state_dir: Option<PathBuf>,
    canary: CanaryConfig,
    /// One change at a time: a change compiles, so it is awaited under this lock.
    changes: tokio::sync::Mutex<()>,
}

/// The loaded version of `plugin` an operator named (see [`Lineup::find_named`]), or the
/// refusal that names what was asked for.
fn named(lineup: &Lineup, plugin: &str, name: &str) -> Result<Arc<Version>, SwapError> {
    lineup
        .find_named(name)
        .ok_or_else(|| SwapError::UnknownVersion {
            plugin: plugin.to_string(),
            id: name.to_string(),
        })
}

/// The version id of a component's bytes.
pub fn version_id(bytes: &[u8]) -> String {
    let digest = sha2::Sha256::digest(bytes);
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

impl Registry {
    /// An empty registry loading through `runtime`; `state_dir` keeps versions across restarts.
    pub fn new(
        runtime: Arc<PluginRuntime>,
        client: reqwest::Client,
        realtime_client: Option<reqwest::Client>,
        state_dir: Option<PathBuf>,
        canary: CanaryConfig,
    ) -> Self {
        Self {
            slots: BTreeMap::new(),
            runtime,
            client,
            realtime_client,
            state_dir,
            canary,
            changes: tokio::sync::Mutex::new(()),
        }
    }

    /// Adds a configured plugin with its first version, loaded from `bytes` (`None` for a
    /// linked native adapter).
    pub fn add(&mut self, spec: PluginSpec, loaded: LoadedPlugin, bytes: Option<&[u8]>) {
        let id = bytes.map_or_else(|| "native".to_string(), version_id);
        let version = self.version(id.clone(), loaded, VersionSource::Config);
        let slot = Slot {
            name: spec.name.clone(),
            channel: version.plugin.info.channel.clone(),
            spec,
            lineup: ArcSwap::from_pointee(Lineup::new(version)),
            calls: AtomicU64::new(0),
            config_id: id,
            last_canary_end: Mutex::new(None),
        };
        self.slots.insert(slot.name.clone(), Arc::new(slot));
    }

    fn version(&self, id: String, loaded: LoadedPlugin, source: VersionSource) -> Arc<Version> {
        let plugin = Arc::new(loaded);
        // Always a realtime copy of its own, so the realtime lane's requests are told apart
        // from bulk ones for the plugin's requests in flight (`outbound.rs`).
        let client = match &self.realtime_client {
            Some(client) => client.clone(),
            None => plugin.caps.client.clone(),
        };
        let realtime = Arc::new(plugin.for_realtime(client));
        Arc::new(Version {
            id,
            plugin,
            realtime,
            source,
            loaded_at_ms: now_ms(),
            window: Mutex::new(Window::default()),
        })
    }

    /// A configured plugin.
    pub fn slot(&self, name: &str) -> Option<&Arc<Slot>> {
        self.slots.get(name)
    }

    /// Every configured plugin, by name.
    pub fn slots(&self) -> impl Iterator<Item = &Arc<Slot>> {
        self.slots.values()
    }

    fn known(&self, name: &str) -> Result<&Arc<Slot>, SwapError> {
        self.slots
            .get(name)
            .ok_or_else(|| SwapError::UnknownPlugin(name.to_string()))
    }

    /// Every plugin's versions, as the API shows them.
    pub fn views(&self) -> Vec<PluginView> {
        self.slots.values().map(|s| s.view()).collect()
    }
}
