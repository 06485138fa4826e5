//! The plugin registry: every configured plugin's versions, which one is active, the canary,
//! and how a new version becomes active without a restart (hot swap).
//!
//! - A new version (uploaded through the admin API, dropped into the watched directory, or
//!   restored at start) is compiled, `describe`d and `init`ed off the hot path by
//!   [`PluginRuntime::load_bytes`]. A version that fails a step, or serves another channel, is
//!   refused with the reason and the active version stays.
//! - Activation swaps one pointer ([`ArcSwap`]): the next call takes the new version, and calls
//!   in flight hold an `Arc` of the old one and finish on it.
//! - A canary takes an exact share of the plugin's calls, spread evenly. Every second the
//!   registry compares its error rate with the active version's over the same window, and rolls
//!   it back when it is worse by more than the configured margin.
//! - The active versions and their component files are kept in the state directory, so a
//!   restart comes back on the versions operators chose, unless the config file itself changed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use super::capabilities::{
    AllowedHost, Capabilities, CapabilityCounters, PluginCache, PluginQuotas,
};
use super::{LoadError, LoadedPlugin, PluginLimits, PluginRuntime};
use crate::config::{CanaryConfig, PluginBounds};
use crate::retry::now_ms;
use crate::route::health::{Bucket, CallTally, Window};
use crate::secrets::PluginSecrets;
use crate::state;
use crate::telemetry::events;

/// Versions kept to roll back to, and loaded-but-inactive versions kept to activate, per
/// plugin. Each holds its compiled code in memory; older ones are let go (their component files
/// stay in the state directory).
const KEPT_PREVIOUS: usize = 5;
const KEPT_STAGED: usize = 5;

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

/// Where a version came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VersionSource {
    /// The config file's component.
    Config,
    /// `POST /v1/plugins/{name}`.
    Upload,
    /// A file dropped into the watched directory.
    Watched,
    /// The version active before a restart.
    Restored,
}

impl VersionSource {
    pub fn as_str(self) -> &'static str {
        match self {
            VersionSource::Config => "config",
            VersionSource::Upload => "upload",
            VersionSource::Watched => "watched",
            VersionSource::Restored => "restored",
        }
    }
}

/// One loaded version of a plugin.
pub struct Version {
    /// The first 16 hex digits of the component's SHA-256 (`native` for a linked adapter).
    pub id: String,
    /// The version for the shared lanes.
    pub plugin: Arc<LoadedPlugin>,
    /// The same version with the realtime lane's HTTP client.
    pub realtime: Arc<LoadedPlugin>,
    pub source: VersionSource,
    pub loaded_at_ms: u64,
    /// What this version's calls came to, second by second (a canary is judged on it).
    window: Mutex<Window>,
}

impl std::fmt::Debug for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Version")
            .field("id", &self.id)
            .field("version", &self.plugin.info.version)
            .field("source", &self.source)
            .finish()
    }
}

impl Version {
    /// Counts one call of this version.
    pub fn record(&self, tally: &CallTally) {
        self.window
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(now_ms() / 1000, tally);
    }

    /// This version's totals over the last `seconds`, from `since` (seconds since the epoch).
    pub fn totals(&self, seconds: u64, since: u64) -> Bucket {
        self.window
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .total(now_ms() / 1000, seconds, since)
    }

    fn view(&self) -> VersionView {
        VersionView {
            id: self.id.clone(),
            version: self.plugin.info.version.clone(),
            source: self.source,
            loaded_at_ms: self.loaded_at_ms,
        }
    }
}

/// A canary: another version taking `percent` of the plugin's calls.
#[derive(Clone)]
pub struct Canary {
    pub version: Arc<Version>,
    pub percent: u8,
    /// When it started (ms since the epoch): both versions are compared from then on.
    pub started_at_ms: u64,
}

/// A plugin's versions at one moment. Replaced whole on every change.
#[derive(Clone)]
pub struct Lineup {
    pub active: Arc<Version>,
    pub canary: Option<Canary>,
    /// Versions that were active before, most recent last: what a rollback goes back to.
    pub previous: Vec<Arc<Version>>,
    /// Loaded but never active, or rolled back from.
    pub staged: Vec<Arc<Version>>,
}

impl Lineup {
    fn find(&self, id: &str) -> Option<Arc<Version>> {
        std::iter::once(&self.active)
            .chain(self.canary.as_ref().map(|c| &c.version))
            .chain(&self.previous)
            .chain(&self.staged)
            .find(|v| v.id == id)
            .cloned()
    }

    /// A version an operator named: by id, or by the version its `describe` gives when exactly
    /// one loaded version has it.
    fn find_named(&self, name: &str) -> Option<Arc<Version>> {
        if let Some(version) = self.find(name) {
            return Some(version);
        }
        let mut described = std::iter::once(&self.active)
            .chain(self.canary.as_ref().map(|c| &c.version))
            .chain(&self.previous)
            .chain(&self.staged)
            .filter(|v| v.plugin.info.version == name);
        match (described.next(), described.next()) {
            (Some(version), None) => Some(version.clone()),
            _ => None,
        }
    }

    /// As [`Lineup::find_named`], refusing a name no loaded version of `plugin` answers to.
    fn named(&self, plugin: &str, name: &str) -> Result<Arc<Version>, SwapError> {
        self.find_named(name)
            .ok_or_else(|| SwapError::UnknownVersion {
                plugin: plugin.to_string(),
                id: name.to_string(),
            })
    }

    fn without(&self, id: &str) -> Lineup {
        let mut next = self.clone();
        next.previous.retain(|v| v.id != id);
        next.staged.retain(|v| v.id != id);
        if next.canary.as_ref().is_some_and(|c| c.version.id == id) {
            next.canary = None;
        }
        next
    }
}

/// How a canary ended, for operators.
#[derive(Debug, Clone, Serialize)]
pub struct CanaryEnd {
    pub id: String,
    /// `rolled-back` (automatically or by an operator) or `promoted`.
    pub how: String,
    pub reason: String,
    pub at_ms: u64,
    /// How long the canary ran.
    pub after_ms: u64,
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
    fn replace(&self, mut lineup: Lineup) {
        for (list, keep) in [
            (&mut lineup.previous, KEPT_PREVIOUS),
            (&mut lineup.staged, KEPT_STAGED),
        ] {
            let excess = list.len().saturating_sub(keep);
            list.drain(..excess);
        }
        self.lineup.store(Arc::new(lineup));
    }

    /// The version for the next call: the canary for its share of calls, else the active one.
    pub fn choose(&self) -> Arc<Version> {
        let lineup = self.lineup.load();
        if let Some(canary) = &lineup.canary {
            let n = self.calls.fetch_add(1, Ordering::Relaxed);
            let percent = u64::from(canary.percent);
            // Exactly `percent` of every 100 calls, spread out rather than in a run.
            if (n + 1) * percent / 100 > n * percent / 100 {
                return canary.version.clone();
            }
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

/// Kept in `plugins.json`: a plugin's active version, and the config version it replaced.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct KeptActive {
    active: String,
    config: String,
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
            lineup: ArcSwap::from_pointee(Lineup {
                active: version,
                canary: None,
                previous: Vec::new(),
                staged: Vec::new(),
            }),
            calls: AtomicU64::new(0),
            config_id: id,
            last_canary_end: Mutex::new(None),
        };
        self.slots.insert(slot.name.clone(), Arc::new(slot));
    }

    fn version(&self, id: String, loaded: LoadedPlugin, source: VersionSource) -> Arc<Version> {
        let plugin = Arc::new(loaded);
        let realtime = match &self.realtime_client {
            Some(client) => Arc::new(plugin.with_http_client(client.clone())),
            None => plugin.clone(),
        };
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

    /// Loads `bytes` as a version of plugin `name` without activating it: compiled, described
    /// and initialised off the hot path, and checked to serve the plugin's channel. A version
    /// already loaded is returned as it is.
    pub async fn stage(
        &self,
        name: &str,
        bytes: &[u8],
        source: VersionSource,
    ) -> Result<Arc<Version>, SwapError> {
        let _change = self.changes.lock().await;
        self.stage_locked(name, bytes, source).await
    }

    async fn stage_locked(
        &self,
        name: &str,
        bytes: &[u8],
        source: VersionSource,
    ) -> Result<Arc<Version>, SwapError> {
        let slot = self.known(name)?;
        let id = version_id(bytes);
        if let Some(version) = slot.lineup().find(&id) {
            return Ok(version);
        }
        let spec = &slot.spec;
        let loaded = self
            .runtime
            .load_bytes(
                name,
                bytes,
                spec.capabilities(self.client.clone()),
                spec.limits,
                spec.init_config.clone(),
            )
            .await?;
        if loaded.info.channel != slot.channel {
            return Err(SwapError::WrongChannel {
                plugin: name.to_string(),
                channel: loaded.info.channel.clone(),
                expected: slot.channel.clone(),
            });
        }
        if let Some(dir) = &self.state_dir {
            let path = state::versions_dir(dir, name).join(format!("{id}.wasm"));
            state::write_atomically(&path, bytes)
                .map_err(|source| SwapError::Store { path, source })?;
        }
        let version = self.version(id, loaded, source);
        let mut lineup = (*slot.lineup()).clone();
        lineup.staged.push(version.clone());
        slot.replace(lineup);
        Ok(version)
    }

    /// Loads `bytes` and makes it the active version of `name`. On any failure the active
    /// version stays, and the refusal is logged.
    pub async fn upload(
        &self,
        name: &str,
        bytes: &[u8],
        source: VersionSource,
    ) -> Result<Arc<Version>, SwapError> {
        let _change = self.changes.lock().await;
        let result = match self.stage_locked(name, bytes, source).await {
            Ok(version) => self.activate_locked(name, &version.id, source),
            Err(error) => Err(error),
        };
        if let Err(error) = &result {
            events::PluginRefused {
                plugin: name,
                source: source.as_str(),
                reason: error,
            }
            .emit();
        }
        result
    }

    /// Makes a loaded version of `name` active.
    pub async fn activate(&self, name: &str, id: &str) -> Result<Arc<Version>, SwapError> {
        let _change = self.changes.lock().await;
        self.activate_locked(name, id, VersionSource::Upload)
    }

    fn activate_locked(
        &self,
        name: &str,
        id: &str,
        source: VersionSource,
    ) -> Result<Arc<Version>, SwapError> {
        let slot = self.known(name)?;
        let lineup = slot.lineup();
        let version = lineup.named(name, id)?;
        let id = version.id.as_str();
        if lineup.active.id == id {
            return Ok(version.clone());
        }
        if lineup.canary.as_ref().is_some_and(|c| c.version.id == id) {
            self.note_canary_end(slot, lineup.canary.as_ref(), "promoted", "activated");
        }
        let mut next = lineup.without(id);
        next.previous.push(lineup.active.clone());
        next.active = version.clone();
        slot.replace(next);
        events::PluginActivated {
            plugin: name,
            version: &version.plugin.info.version,
            id,
            previous_id: &lineup.active.id,
            source: source.as_str(),
        }
        .emit();
        self.keep();
        Ok(version)
    }

    /// Rolls `name` back: ends its canary if it has one, else makes the previous version
    /// active again (the version rolled back from stays loaded, to go forward again).
    pub async fn rollback(&self, name: &str) -> Result<Arc<Version>, SwapError> {
        let _change = self.changes.lock().await;
        let slot = self.known(name)?;
        let lineup = slot.lineup();
        if lineup.canary.is_some() {
            self.end_canary(slot, "rolled-back", "rolled back by an operator");
            return Ok(lineup.active.clone());
        }
        let mut next = (*lineup).clone();
        let back = next
            .previous
            .pop()
            .ok_or_else(|| SwapError::NothingToRollBack(name.to_string()))?;
        next.staged.push(lineup.active.clone());
        next.active = back.clone();
        slot.replace(next);
        events::PluginActivated {
            plugin: name,
            version: &back.plugin.info.version,
            id: &back.id,
            previous_id: &lineup.active.id,
            source: "rollback",
        }
        .emit();
        self.keep();
        Ok(back)
    }

    /// Sends `percent` of `name`'s calls to loaded version `id`; 0 ends the canary.
    pub async fn set_canary(
        &self,
        name: &str,
        id: &str,
        percent: u8,
    ) -> Result<Option<Arc<Version>>, SwapError> {
        let _change = self.changes.lock().await;
        let slot = self.known(name)?;
        if percent == 0 {
            self.end_canary(slot, "rolled-back", "ended by an operator");
            return Ok(None);
        }
        if percent > 99 {
            return Err(SwapError::BadPercent(percent));
        }
        let lineup = slot.lineup();
        let version = lineup.named(name, id)?;
        let id = version.id.as_str();
        if lineup.active.id == id {
            return Err(SwapError::AlreadyActive {
                plugin: name.to_string(),
                id: id.to_string(),
            });
        }
        let mut next = lineup.without(id);
        if let Some(old) = &lineup.canary
            && old.version.id != id
        {
            next.staged.push(old.version.clone());
        }
        next.canary = Some(Canary {
            version: version.clone(),
            percent,
            started_at_ms: now_ms(),
        });
        slot.replace(next);
        events::CanaryStarted {
            plugin: name,
            id,
            percent,
        }
        .emit();
        Ok(Some(version))
    }

    /// Ends `slot`'s canary, if any; its version stays loaded.
    fn end_canary(&self, slot: &Slot, how: &str, reason: &str) {
        let lineup = slot.lineup();
        let Some(canary) = &lineup.canary else {
            return;
        };
        let mut next = (*lineup).clone();
        next.canary = None;
        next.staged.push(canary.version.clone());
        slot.replace(next);
        self.note_canary_end(slot, Some(canary), how, reason);
    }

    fn note_canary_end(&self, slot: &Slot, canary: Option<&Canary>, how: &str, reason: &str) {
        let Some(canary) = canary else {
            return;
        };
        let at_ms = now_ms();
        events::CanaryEnded {
            plugin: &slot.name,
            id: &canary.version.id,
            how,
            reason,
        }
        .emit();
        *slot
            .last_canary_end
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(CanaryEnd {
            id: canary.version.id.clone(),
            how: how.to_string(),
            reason: reason.to_string(),
            at_ms,
            after_ms: at_ms.saturating_sub(canary.started_at_ms),
        });
    }

    /// Compares every canary with its active version once; rolls back those doing worse than
    /// the margin allows. Returns the plugins rolled back.
    pub async fn judge_canaries(&self) -> Vec<String> {
        let mut rolled_back = Vec::new();
        for slot in self.slots.values() {
            let lineup = slot.lineup();
            let Some(canary) = &lineup.canary else {
                continue;
            };
            let config = &self.canary;
            let theirs = canary
                .version
                .totals(config.window_s, canary.started_at_ms / 1000);
            if theirs.deliveries() < config.min_calls {
                continue;
            }
            let ours = lineup
                .active
                .totals(config.window_s, canary.started_at_ms / 1000);
            let margin = config.margin_percent as f64;
            if theirs.error_percent() > ours.error_percent() + margin {
                let reason = format!(
                    "canary failed {:.1} % of {} deliveries against {:.1} % of {} on the active version (margin {margin} points)",
                    theirs.error_percent(),
                    theirs.deliveries(),
                    ours.error_percent(),
                    ours.deliveries(),
                );
                let _change = self.changes.lock().await;
                // Still the same canary: an operator may have changed it meanwhile.
                if slot
                    .lineup()
                    .canary
                    .as_ref()
                    .is_some_and(|c| c.version.id == canary.version.id)
                {
                    self.end_canary(slot, "rolled-back", &reason);
                    rolled_back.push(slot.name.clone());
                }
            }
        }
        rolled_back
    }

    /// Judges canaries every `every` until `stop` is set.
    pub async fn watch_canaries(
        self: Arc<Self>,
        every: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => return,
            }
            self.judge_canaries().await;
        }
    }

    /// Writes every plugin's active version to the state directory.
    fn keep(&self) {
        let Some(dir) = &self.state_dir else {
            return;
        };
        let kept: BTreeMap<&str, KeptActive> = self
            .slots
            .values()
            .map(|slot| {
                let kept = KeptActive {
                    active: slot.active().id.clone(),
                    config: slot.config_id.clone(),
                };
                (slot.name.as_str(), kept)
            })
            .collect();
        let path = state::plugins_file(dir);
        let text = serde_json::to_vec_pretty(&kept).unwrap_or_default();
        if let Err(error) = state::write_atomically(&path, &text) {
            tracing::warn!(path = %path.display(), %error, "could not keep the active plugin versions");
        }
    }

    /// Activates the versions that were active before the restart, unless the config file's
    /// component changed since (then the config wins). Failures are logged; the config's
    /// version stays.
    pub async fn restore(&self) {
        let Some(dir) = &self.state_dir else {
            return;
        };
        let path = state::plugins_file(dir);
        let kept: BTreeMap<String, KeptActive> = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(kept) => kept,
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "kept plugin versions unreadable; using the config's");
                    return;
                }
            },
            Err(_) => return,
        };
        for (name, kept) in kept {
            let Some(slot) = self.slots.get(&name) else {
                continue;
            };
            if kept.config != slot.config_id || kept.active == slot.config_id {
                continue;
            }
            let file = state::versions_dir(dir, &name).join(format!("{}.wasm", kept.active));
            let restored = match std::fs::read(&file) {
                Ok(bytes) => self.upload(&name, &bytes, VersionSource::Restored).await,
                Err(error) => {
                    tracing::warn!(plugin = %name, path = %file.display(), %error, "kept plugin version missing; using the config's");
                    continue;
                }
            };
            if let Ok(version) = restored {
                tracing::info!(plugin = %name, id = %version.id, "restored the version active before the restart");
            }
        }
    }

    /// Polls `dir` every `every` for new versions until `stop` is set: `NAME.wasm` or
    /// `NAME@anything.wasm` is activated as plugin NAME once its size and modification time
    /// held still for one poll. Each file is tried once per change.
    pub async fn watch_dir(
        self: Arc<Self>,
        dir: PathBuf,
        every: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        // Polling, not inotify: it behaves the same on every filesystem (network mounts and
        // container volumes included), and a second's delay is nothing for a release.
        let mut seen: BTreeMap<PathBuf, (u64, std::time::SystemTime, bool)> = BTreeMap::new();
        loop {
            for (path, name, size, modified) in wasm_files(&dir) {
                let entry = seen.entry(path.clone()).or_insert((size, modified, false));
                if (entry.0, entry.1) != (size, modified) {
                    *entry = (size, modified, false);
                    continue;
                }
                if entry.2 {
                    continue;
                }
                entry.2 = true;
                match std::fs::read(&path) {
                    Ok(bytes) => {
                        if let Ok(version) =
                            self.upload(&name, &bytes, VersionSource::Watched).await
                        {
                            tracing::info!(plugin = %name, id = %version.id, file = %path.display(), "version from the watched directory is active");
                        }
                    }
                    Err(error) => {
                        tracing::warn!(file = %path.display(), %error, "cannot read a watched plugin file");
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

/// The `.wasm` files in `dir`: (path, plugin name, size, modified).
fn wasm_files(dir: &Path) -> Vec<(PathBuf, String, u64, std::time::SystemTime)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let path = entry.path();
            if path.extension()? != "wasm" {
                return None;
            }
            let stem = path.file_stem()?.to_str()?;
            let name = stem.split('@').next()?.to_string();
            let meta = entry.metadata().ok()?;
            Some((path, name, meta.len(), meta.modified().ok()?))
        })
        .collect()
}
