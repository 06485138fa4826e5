//! A plugin's lineup: its active version, its canary, the versions a rollback goes back to and
//! the versions loaded but never active, at one moment. Replaced whole on every change, so a
//! call takes one consistent lineup.
//!
//! Owns the versions and the transitions between lineups (activate, roll back, start and end a
//! canary, trim what is kept), each a pure function from one lineup to the next; never loads a
//! component, keeps a file or logs (the registry does, around them).

use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::clock::now_ms;
use crate::plugin::LoadedPlugin;
use crate::window::{Bucket, CallTally, Window};

use super::VersionView;

/// Versions kept to roll back to, and loaded-but-inactive versions kept to activate, per
/// plugin. Each holds its compiled code in memory; older ones are let go (their component files
/// stay in the state directory).
pub const KEPT_PREVIOUS: usize = 5;
pub const KEPT_STAGED: usize = 5;

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
    /// Read from the fleet's control topic: another host's upload, or this one's.
    Fleet,
}

impl VersionSource {
    pub fn as_str(self) -> &'static str {
        match self {
            VersionSource::Config => "config",
            VersionSource::Upload => "upload",
            VersionSource::Watched => "watched",
            VersionSource::Restored => "restored",
            VersionSource::Fleet => "fleet",
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
    pub(super) window: Mutex<Window>,
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

    pub fn view(&self) -> VersionView {
        VersionView {
            id: self.id.clone(),
            version: self.plugin.info.version.clone(),
            source: self.source,
            loaded_at_ms: self.loaded_at_ms,
        }
    }
}

/// What a lineup needs of a version: its id, and the version its `describe` gives.
pub trait Versioned {
    fn id(&self) -> &str;
    fn described(&self) -> &str;
}

impl Versioned for Version {
    fn id(&self) -> &str {
        &self.id
    }

    fn described(&self) -> &str {
        &self.plugin.info.version
    }
}

/// A canary: another version taking `percent` of the plugin's calls.
pub struct Canary<V = Version> {
    pub version: Arc<V>,
    pub percent: u8,
    /// When it started (ms since the epoch): both versions are compared from then on.
    pub started_at_ms: u64,
}

impl<V> Clone for Canary<V> {
    fn clone(&self) -> Self {
        Self {
            version: self.version.clone(),
            percent: self.percent,
            started_at_ms: self.started_at_ms,
        }
    }
}

/// A plugin's versions at one moment.
pub struct Lineup<V = Version> {
    pub active: Arc<V>,
    pub canary: Option<Canary<V>>,
    /// Versions that were active before, most recent last: what a rollback goes back to.
    pub previous: Vec<Arc<V>>,
    /// Loaded but never active, or rolled back from.
    pub staged: Vec<Arc<V>>,
}

impl<V> Clone for Lineup<V> {
    fn clone(&self) -> Self {
        Self {
            active: self.active.clone(),
            canary: self.canary.clone(),
            previous: self.previous.clone(),
            staged: self.staged.clone(),
        }
    }
}

impl<V: Versioned> Lineup<V> {
    /// A lineup of one version, active.
    pub fn new(active: Arc<V>) -> Self {
        Self {
            active,
            canary: None,
            previous: Vec::new(),
            staged: Vec::new(),
        }
    }

    fn all(&self) -> impl Iterator<Item = &Arc<V>> {
        std::iter::once(&self.active)
            .chain(self.canary.as_ref().map(|c| &c.version))
            .chain(&self.previous)
            .chain(&self.staged)
    }

    /// The loaded version with id `id`.
    pub fn find(&self, id: &str) -> Option<Arc<V>> {
        self.all().find(|v| v.id() == id).cloned()
    }

    /// A version an operator named: by id, or by the version its `describe` gives when exactly
    /// one loaded version has it.
    pub fn find_named(&self, name: &str) -> Option<Arc<V>> {
        if let Some(version) = self.find(name) {
            return Some(version);
        }
        let mut described = self.all().filter(|v| v.described() == name);
        match (described.next(), described.next()) {
            (Some(version), None) => Some(version.clone()),
            _ => None,
        }
    }

    /// The same lineup without version `id` among the previous, the staged and the canary.
    pub fn without(&self, id: &str) -> Self {
        let mut next = self.clone();
        next.previous.retain(|v| v.id() != id);
        next.staged.retain(|v| v.id() != id);
        if next.canary.as_ref().is_some_and(|c| c.version.id() == id) {
            next.canary = None;
        }
        next
    }

    /// `version` loaded beside the others, not active.
    pub fn staging(&self, version: Arc<V>) -> Self {
        let mut next = self.clone();
        next.staged.push(version);
        next
    }

    /// `version` active, the active one first among the previous.
    pub fn activating(&self, version: &Arc<V>) -> Self {
        let mut next = self.without(version.id());
        next.previous.push(self.active.clone());
        next.active = version.clone();
        next
    }

    /// The most recent previous version active again, the one rolled back from staged (to go
    /// forward again); `None` with no previous version.
    pub fn rolling_back(&self) -> Option<Self> {
        let mut next = self.clone();
        let back = next.previous.pop()?;
        next.staged.push(self.active.clone());
        next.active = back;
        Some(next)
    }

    /// `version` taking `percent` of the calls from `started_at_ms`; a canary it replaces is
    /// staged.
    pub fn with_canary(&self, version: &Arc<V>, percent: u8, started_at_ms: u64) -> Self {
        let mut next = self.without(version.id());
        if let Some(old) = &self.canary
            && old.version.id() != version.id()
        {
            next.staged.push(old.version.clone());
        }
        next.canary = Some(Canary {
            version: version.clone(),
            percent,
            started_at_ms,
        });
        next
    }

    /// The canary ended, its version staged; `None` without a canary.
    pub fn ending_canary(&self) -> Option<Self> {
        let canary = self.canary.as_ref()?;
        let mut next = self.clone();
        next.canary = None;
        next.staged.push(canary.version.clone());
        Some(next)
    }

    /// The lineup with only the most recent [`KEPT_PREVIOUS`] previous and [`KEPT_STAGED`]
    /// staged versions.
    pub fn trimmed(mut self) -> Self {
        for (list, keep) in [
            (&mut self.previous, KEPT_PREVIOUS),
            (&mut self.staged, KEPT_STAGED),
        ] {
            let excess = list.len().saturating_sub(keep);
            list.drain(..excess);
        }
        self
    }
}

/// Whether call number `call` (from 0) of a plugin goes to its canary of `percent`: exactly
/// `percent` of every 100 calls, spread out rather than in a run.
pub fn canary_turn(call: u64, percent: u8) -> bool {
    let percent = u64::from(percent);
    (call + 1) * percent / 100 > call * percent / 100
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq)]
    struct V(&'static str, &'static str);

    impl Versioned for V {
        fn id(&self) -> &str {
            self.0
        }

        fn described(&self) -> &str {
            self.1
        }
    }

    fn ids(versions: &[Arc<V>]) -> Vec<&str> {
        versions.iter().map(|v| v.0).collect()
    }

    #[test]
    fn activating_keeps_the_old_active_to_roll_back_to_and_rolling_back_stages_the_new()
    -> Result<(), &'static str> {
        let a = Arc::new(V("a", "1.0"));
        let b = Arc::new(V("b", "1.1"));
        let lineup = Lineup::new(a.clone()).staging(b.clone()).activating(&b);
        assert_eq!(lineup.active.0, "b");
        assert_eq!(ids(&lineup.previous), ["a"]);
        assert!(
            lineup.staged.is_empty(),
            "an activated version leaves the staged"
        );
        let back = lineup.rolling_back().ok_or("no previous version")?;
        assert_eq!(back.active.0, "a");
        assert_eq!(ids(&back.staged), ["b"]);
        assert!(back.rolling_back().is_none(), "nothing before a");
        Ok(())
    }

    #[test]
    fn a_canary_replaced_is_staged_and_an_ended_one_too() -> Result<(), &'static str> {
        let a = Arc::new(V("a", "1.0"));
        let b = Arc::new(V("b", "1.1"));
        let c = Arc::new(V("c", "1.2"));
        let lineup = Lineup::new(a).with_canary(&b, 10, 5);
        let lineup = lineup.with_canary(&c, 20, 6);
        let canary = lineup.canary.as_ref().ok_or("no canary")?;
        assert_eq!(
            (canary.version.0, canary.percent, canary.started_at_ms),
            ("c", 20, 6)
        );
        assert_eq!(ids(&lineup.staged), ["b"]);
        let ended = lineup.ending_canary().ok_or("no canary to end")?;
        assert!(ended.canary.is_none());
        assert_eq!(ids(&ended.staged), ["b", "c"]);
        assert!(ended.ending_canary().is_none());
        Ok(())
    }

    #[test]
    fn a_version_is_named_by_id_or_by_a_describe_version_only_it_has() {
        let lineup = Lineup::new(Arc::new(V("a", "1.0")))
            .staging(Arc::new(V("b", "1.1")))
            .staging(Arc::new(V("c", "1.1")));
        assert_eq!(lineup.find_named("b").map(|v| v.0), Some("b"));
        assert_eq!(lineup.find_named("1.0").map(|v| v.0), Some("a"));
        assert!(lineup.find_named("1.1").is_none(), "two versions say 1.1");
        assert!(lineup.find_named("2.0").is_none());
    }

    #[test]
    fn only_the_most_recent_previous_and_staged_versions_are_kept() {
        let mut lineup = Lineup::new(Arc::new(V("active", "")));
        for _ in 0..KEPT_PREVIOUS + 2 {
            lineup.previous.push(Arc::new(V("old", "")));
            lineup.staged.push(Arc::new(V("staged", "")));
        }
        lineup.previous.push(Arc::new(V("newest", "")));
        let kept = lineup.trimmed();
        assert_eq!(kept.previous.len(), KEPT_PREVIOUS);
        assert_eq!(kept.staged.len(), KEPT_STAGED);
        assert_eq!(kept.previous.last().map(|v| v.0), Some("newest"));
    }

    #[test]
    fn a_canary_takes_exactly_its_share_spread_out() {
        for percent in [1u8, 10, 25, 50, 99] {
            let turns: Vec<bool> = (0..100).map(|n| canary_turn(n, percent)).collect();
            assert_eq!(turns.iter().filter(|t| **t).count(), usize::from(percent));
        }
        let tenth: Vec<u64> = (0..100).filter(|n| canary_turn(*n, 10)).collect();
        assert_eq!(tenth, [9, 19, 29, 39, 49, 59, 69, 79, 89, 99]);
    }
}
