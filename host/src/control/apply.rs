//! Applying the control topic on this host, record by record in the topic's order: weights to
//! the router, plugin versions and canaries to the registry, component chunks into the store a
//! version is loaded from.
//!
//! Owns the applied offset and this host's refusals. A record that cannot be applied (an
//! unknown key, a vendor this host's config lacks, a component whose SHA-256 does not match or
//! that does not load) is refused: the lever keeps its state on this host, the refusal is
//! logged and reported to the fleet, and the records after it are applied. Never writes to
//! Kafka.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::record::{Components, Key, Manifest, PluginDesire, WeightsDesire};
use super::topic::Read;
use crate::clock::now_ms;
use crate::plugin::registry::{Registry, VersionSource};
use crate::route::Router;
use crate::telemetry::events;

/// Refusals kept for the fleet view, most recent last.
const KEPT_REFUSALS: usize = 20;

/// A control record this host could not apply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Refusal {
    pub offset: i64,
    pub key: String,
    pub reason: String,
    pub at_ms: u64,
}

/// Applies control records to this host's router and registry.
pub struct Applier {
    router: Arc<Router>,
    registry: Arc<Registry>,
    components: Mutex<Components>,
    refusals: Mutex<VecDeque<Refusal>>,
    /// The offset after the last record applied: records before it are in force here.
    applied: watch::Sender<i64>,
}

impl Applier {
    pub fn new(router: Arc<Router>, registry: Arc<Registry>) -> Self {
        Self {
            router,
            registry,
            components: Mutex::new(Components::default()),
            refusals: Mutex::new(VecDeque::new()),
            applied: watch::Sender::new(0),
        }
    }

    /// The offset after the last record applied.
    pub fn applied(&self) -> i64 {
        *self.applied.borrow()
    }

    /// Waits until the record at `offset` is applied here; false if `timeout` passed first.
    pub async fn wait_applied(&self, offset: i64, timeout: std::time::Duration) -> bool {
        let mut applied = self.applied.subscribe();
        tokio::time::timeout(timeout, applied.wait_for(|next| *next > offset))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// This host's recent refusals, oldest first.
    pub fn refusals(&self) -> Vec<Refusal> {
        let refusals = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        refusals.iter().cloned().collect()
    }

    /// Whether version `id` of `plugin` is on the control topic, whole and checked.
    pub fn has_component(&self, plugin: &str, id: &str) -> bool {
        let components = self.components.lock().unwrap_or_else(|p| p.into_inner());
        components.has(plugin, id)
    }

    /// Applies one record, or refuses it; either way the records after it come next.
    pub async fn apply(&self, read: Read) {
        let key = read.key.clone().unwrap_or_default();
        if let Err(reason) = self.apply_one(&key, read.value).await {
            events::ControlRefused {
                offset: read.offset,
                key: &key,
                reason: &reason,
            }
            .emit();
            let mut refusals = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
            refusals.push_back(Refusal {
                offset: read.offset,
                key,
                reason,
                at_ms: now_ms(),
            });
            if refusals.len() > KEPT_REFUSALS {
                refusals.pop_front();
            }
        }
        self.applied.send_replace(read.offset + 1);
    }

    async fn apply_one(&self, key: &str, value: Option<Vec<u8>>) -> Result<(), String> {
        let parsed = Key::parse(key).ok_or("a key no Switchboard host writes")?;
        match (parsed, value) {
            (Key::Weights(channel), None) => self
                .router
                .reset_weights(&channel)
                .map(drop)
                .map_err(|e| e.to_string()),
            (Key::Weights(channel), Some(value)) => {
                let desire: WeightsDesire = decode(&value)?;
                let wanted = match desire.weights {
                    Some(weights) => weights,
                    None => self.router.baseline(&channel).ok_or_else(|| {
                        format!("no channel `{channel}` is configured on this host")
                    })?,
                };
                if self.router.weights(&channel).as_ref() == Some(&wanted) {
                    return Ok(());
                }
                self.router
                    .set_weights(&channel, &wanted)
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
            (Key::Plugin(_), None) => Ok(()),
            (Key::Plugin(name), Some(value)) => {
                let desire: PluginDesire = decode(&value)?;
                self.apply_plugin(&name, &desire).await
            }
            (Key::Manifest { plugin, id }, Some(value)) => {
                let manifest: Manifest = decode(&value)?;
                let mut components = self.components.lock().unwrap_or_else(|p| p.into_inner());
                components.manifest(&plugin, &id, &manifest);
                Ok(())
            }
            (Key::Chunk { plugin, id, index }, Some(value)) => {
                let mut components = self.components.lock().unwrap_or_else(|p| p.into_inner());
                components.chunk(&plugin, &id, index, value);
                Ok(())
            }
            // Component records are never deleted by a host; a tombstone there is someone
            // else's, and changes nothing here.
            (Key::Manifest { .. } | Key::Chunk { .. }, None) => Ok(()),
        }
    }

    /// Brings `name`'s versions to `desire`: loads what this host lacks from the control
    /// topic's components, ends a canary the desire ended, activates, starts a canary.
    async fn apply_plugin(&self, name: &str, desire: &PluginDesire) -> Result<(), String> {
        let registry = &self.registry;
        let slot = registry
            .slot(name)
            .ok_or_else(|| format!("no plugin `{name}` is configured on this host"))?;
        let wanted = std::iter::once(&desire.active).chain(desire.canary.as_ref().map(|c| &c.id));
        for id in wanted {
            if slot.lineup().find(id).is_some() {
                continue;
            }
            let bytes = {
                let components = self.components.lock().unwrap_or_else(|p| p.into_inner());
                components.get(name, id).map_err(|e| e.to_string())?
            };
            registry
                .stage(name, &bytes, VersionSource::Fleet)
                .await
                .map_err(|e| format!("version {id} did not load here: {e}"))?;
        }
        let lineup = slot.lineup();
        if desire.canary.is_none() && lineup.canary.is_some() {
            let (how, reason) = match &desire.ended {
                Some(ended) => (ended.how.as_str(), ended.reason.as_str()),
                None => ("rolled-back", "ended on the fleet"),
            };
            registry
                .end_canary_because(name, how, reason)
                .await
                .map_err(|e| e.to_string())?;
        }
        let lineup = slot.lineup();
        if lineup.active.id != desire.active {
            let back = lineup
                .previous
                .last()
                .is_some_and(|v| v.id == desire.active);
            let result = if back && lineup.canary.is_none() {
                registry.rollback(name).await
            } else {
                registry.activate(name, &desire.active).await
            };
            result.map_err(|e| e.to_string())?;
        }
        let lineup = slot.lineup();
        if let Some(want) = &desire.canary {
            let have = lineup
                .canary
                .as_ref()
                .map(|c| (c.version.id.as_str(), c.percent));
            if have != Some((want.id.as_str(), want.percent)) {
                registry
                    .set_canary(name, &want.id, want.percent)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }
}

fn decode<T: serde::de::DeserializeOwned>(value: &[u8]) -> Result<T, String> {
    serde_json::from_slice(value).map_err(|e| format!("undecodable value: {e}"))
}
