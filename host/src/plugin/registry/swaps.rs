//! The changes operators make to a plugin's versions: stage, upload, activate, roll back, start
//! and end a canary, and the restore at start of the versions kept across a restart.
//!
//! One change at a time (each compiles, so it is awaited under the registry's lock). A refused
//! change leaves the active version as it was; an accepted one replaces the lineup whole (see
//! [`super::lineup`]) and keeps the active versions ([`super::kept`]).

use std::sync::Arc;

use super::kept::{self, KeptActive};
use super::lineup::Canary;
use super::{CanaryEnd, Registry, Slot, SwapError, Version, VersionSource, named, version_id};
use crate::clock::now_ms;
use crate::state;
use crate::telemetry::events;

impl Registry {
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
        slot.replace(slot.lineup().staging(version.clone()));
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
        let version = named(&lineup, name, id)?;
        let id = version.id.as_str();
        if lineup.active.id == id {
            return Ok(version.clone());
        }
        if lineup.canary.as_ref().is_some_and(|c| c.version.id == id) {
            self.note_canary_end(slot, lineup.canary.as_ref(), "promoted", "activated");
        }
        slot.replace(lineup.activating(&version));
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
        let next = lineup
            .rolling_back()
            .ok_or_else(|| SwapError::NothingToRollBack(name.to_string()))?;
        let back = next.active.clone();
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
        let version = named(&lineup, name, id)?;
        let id = version.id.as_str();
        if lineup.active.id == id {
            return Err(SwapError::AlreadyActive {
                plugin: name.to_string(),
                id: id.to_string(),
            });
        }
        slot.replace(lineup.with_canary(&version, percent, now_ms()));
        events::CanaryStarted {
            plugin: name,
            id,
            percent,
        }
        .emit();
        Ok(Some(version))
    }

    /// Ends `name`'s canary, if any, saying `how` (`rolled-back`, `promoted`) and why.
    pub async fn end_canary_because(
        &self,
        name: &str,
        how: &str,
        reason: &str,
    ) -> Result<(), SwapError> {
        let _change = self.changes.lock().await;
        let slot = self.known(name)?;
        self.end_canary(slot, how, reason);
        Ok(())
    }

    /// Ends `slot`'s canary, if any; its version stays loaded.
    pub(super) fn end_canary(&self, slot: &Slot, how: &str, reason: &str) {
        let lineup = slot.lineup();
        let Some(next) = lineup.ending_canary() else {
            return;
        };
        slot.replace(next);
        self.note_canary_end(slot, lineup.canary.as_ref(), how, reason);
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

    /// Writes every plugin's active version to the state directory.
    fn keep(&self) {
        let Some(dir) = &self.state_dir else {
            return;
        };
        let actives = self.slots.values().map(|slot| {
            let active = KeptActive {
                active: slot.active().id.clone(),
                config: slot.config_id.clone(),
            };
            (slot.name.clone(), active)
        });
        kept::write(dir, actives.collect());
    }

    /// Activates the versions that were active before the restart, unless the config file's
    /// component changed since (then the config wins). Failures are logged; the config's
    /// version stays.
    pub async fn restore(&self) {
        let Some(dir) = &self.state_dir else {
            return;
        };
        for (name, active) in kept::read(dir) {
            let Some(slot) = self.slots.get(&name) else {
                continue;
            };
            if !active.restores_over(&slot.config_id) {
                continue;
            }
            let file = kept::component_file(dir, &name, &active.active);
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
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use switchboard_sdk::{Adapter, Config, Delivery, Outcome, PluginInfo, PluginInfoExt};

    use super::*;
    use crate::config::{CanaryConfig, PluginBounds, RuntimeConfig};
    use crate::plugin::capabilities::PluginQuotas;
    use crate::plugin::registry::PluginSpec;
    use crate::plugin::{PluginLimits, PluginRuntime};

    /// An adapter that delivers everything: the swaps only need versions to move around.
    struct Echo;

    impl Adapter for Echo {
        fn describe() -> PluginInfo {
            PluginInfo::new("echo", "1.0.0", "push")
        }

        fn init(_config: Config) -> Result<Self, String> {
            Ok(Echo)
        }

        fn deliver(&self, batch: Vec<Delivery>) -> Vec<Outcome> {
            batch.iter().map(|_| Outcome::delivered("")).collect()
        }
    }

    fn spec() -> PluginSpec {
        let bounds = PluginBounds::default();
        PluginSpec {
            name: "echo".into(),
            allowed_hosts: Vec::new(),
            secrets: Default::default(),
            limits: PluginLimits {
                timeout: Duration::from_secs(5),
                memory_bytes: 16 << 20,
            },
            init_config: Vec::new(),
            max_batch: 100,
            capability_counters: Default::default(),
            bounds,
            quotas: PluginQuotas::new(&bounds),
        }
    }

    /// A registry with plugin `echo` (version `config`), keeping its state in `dir`.
    async fn registry(dir: &std::path::Path) -> anyhow::Result<Registry> {
        let runtime = Arc::new(PluginRuntime::new(&RuntimeConfig::default(), 16 << 20)?);
        let client = reqwest::Client::new();
        let mut registry = Registry::new(
            runtime.clone(),
            client.clone(),
            None,
            Some(dir.to_path_buf()),
            CanaryConfig::default(),
        );
        let spec = spec();
        let loaded = runtime
            .load_native::<Echo>("echo", spec.capabilities(client), spec.limits, Vec::new())
            .await?;
        registry.add(spec, loaded, Some(&b"config"[..]));
        Ok(registry)
    }

    /// Stages another version of `echo` under the id of `bytes`, as an upload would, without
    /// compiling a component.
    async fn stage(registry: &Registry, bytes: &[u8]) -> anyhow::Result<Arc<Version>> {
        let slot = registry.known("echo")?;
        let loaded = registry
            .runtime
            .load_native::<Echo>(
                "echo",
                slot.spec.capabilities(registry.client.clone()),
                slot.spec.limits,
                Vec::new(),
            )
            .await?;
        let version = registry.version(version_id(bytes), loaded, VersionSource::Upload);
        slot.replace(slot.lineup().staging(version.clone()));
        Ok(version)
    }

    #[tokio::test]
    async fn activating_keeps_the_choice_and_a_rollback_goes_back() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let registry = registry(dir.path()).await?;
        let config_id = version_id(b"config");
        let next = stage(&registry, b"next").await?;
        registry.activate("echo", &next.id).await?;
        let kept = kept::read(dir.path());
        assert_eq!(kept["echo"].active, next.id, "kept across a restart");
        assert_eq!(kept["echo"].config, config_id);
        let back = registry.rollback("echo").await?;
        assert_eq!(back.id, config_id);
        assert_eq!(kept::read(dir.path())["echo"].active, config_id);
        let lineup = registry.known("echo")?.lineup();
        assert_eq!(
            lineup.staged.len(),
            1,
            "the version rolled back from stays loaded"
        );
        assert!(matches!(
            registry.rollback("echo").await,
            Err(SwapError::NothingToRollBack(_))
        ));
        Ok(())
    }

    #[tokio::test]
    async fn refused_changes_leave_the_active_version() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let registry = registry(dir.path()).await?;
        let active = registry.known("echo")?.active().id.clone();
        let staged = stage(&registry, b"staged").await?;
        assert!(matches!(
            registry.activate("nope", &staged.id).await,
            Err(SwapError::UnknownPlugin(_))
        ));
        assert!(matches!(
            registry.activate("echo", "no-such-version").await,
            Err(SwapError::UnknownVersion { .. })
        ));
        assert!(matches!(
            registry.set_canary("echo", &staged.id, 100).await,
            Err(SwapError::BadPercent(100))
        ));
        assert!(matches!(
            registry.set_canary("echo", &active, 10).await,
            Err(SwapError::AlreadyActive { .. })
        ));
        assert_eq!(registry.known("echo")?.active().id, active);
        assert!(
            kept::read(dir.path()).is_empty(),
            "nothing changed, nothing kept"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_canary_activated_is_promoted_and_one_ended_is_noted() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let registry = registry(dir.path()).await?;
        let slot = registry.known("echo")?.clone();
        let first = stage(&registry, b"first").await?;
        registry.set_canary("echo", &first.id, 10).await?;
        assert_eq!(slot.lineup().canary.as_ref().map(|c| c.percent), Some(10));
        registry.set_canary("echo", &first.id, 0).await?;
        assert!(slot.lineup().canary.is_none());
        assert_eq!(
            slot.last_canary_end().map(|e| e.how),
            Some("rolled-back".into())
        );
        let second = stage(&registry, b"second").await?;
        registry.set_canary("echo", &second.id, 25).await?;
        registry.activate("echo", &second.id).await?;
        assert_eq!(slot.active().id, second.id);
        assert!(slot.lineup().canary.is_none());
        assert_eq!(
            slot.last_canary_end().map(|e| e.how),
            Some("promoted".into())
        );
        Ok(())
    }
}
