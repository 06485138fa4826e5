//! The fleet's control plane: one set of levers for every host.
//!
//! Operators' live changes (weights, the active version of a plugin, a canary, an uploaded
//! component) are written by whichever host's admin API takes them to a compacted, single
//! partition control topic, and the API answers once the broker acknowledged the record and
//! this host applied it. Every host reads the topic from its beginning without a consumer group
//! and applies each record in order ([`apply`]), so the fleet converges on the same state; a
//! host that starts, restarts or returns reads it to its end before it consumes a request. The
//! config file stays the baseline the topic overrides.
//!
//! Component bytes travel in the control topic itself, in chunks ([`record`]): every host
//! already reaches Kafka, so a version reaches every host without a store of its own to run,
//! secure and keep reachable, and it is ordered with the change that activates it. Each host
//! checks the SHA-256 before it loads a version.
//!
//! Each host reports what it applied to a fleet topic, and reads everyone's ([`fleet`]): the
//! fleet view, and the canary judged over the answers of every host.
//!
//! Owns the control and fleet topics and the write path of every lever. Must never change the
//! router or the registry except by applying a record read from the control topic, so that what
//! this host runs is what the topic says.

pub mod apply;
pub mod fleet;
pub mod record;
pub mod topic;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use apply::Applier;
use fleet::{FleetView, HostReport, Reporter, Reports};
use record::{CanaryDesire, CanaryEnded, Key, Origin, PluginDesire, WeightsDesire};
use topic::{Reader, Writer};

use crate::clock::now_ms;
use crate::config::Config;
use crate::plugin::registry::{Lineup, Registry, SwapError, Version, VersionSource};
use crate::route::{Router, WeightError};
use crate::telemetry::events;

/// How long an API call waits for its own change to apply on this host.
const APPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// How many records before the fleet topic's end a host starts reading reports from: a few
/// reports of every live host, whether or not the broker compacted the topic.
const REPORTS_BACK: i64 = 5000;
/// How often canaries are judged over the fleet.
const JUDGE_EVERY: Duration = Duration::from_millis(500);
/// How long a failed read waits before it is tried again.
const READ_RETRY: Duration = Duration::from_secs(1);

/// Why a change through the control plane did not take effect.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Swap(#[from] SwapError),
    #[error(transparent)]
    Weight(#[from] WeightError),
    #[error("the control topic did not take the change: {0:#}")]
    Write(anyhow::Error),
    #[error(
        "the change is on the control topic (offset {offset}) but was not applied on this host within {waited_s} s; the fleet applies it as each host catches up"
    )]
    NotApplied { offset: i64, waited_s: u64 },
    #[error(
        "the change is on the control topic (offset {offset}), and this host refused it: {reason}"
    )]
    RefusedHere { offset: i64, reason: String },
}

/// This host's part in the fleet's control plane.
pub struct ControlPlane {
    host: String,
    topic: String,
    fleet_topic: String,
    writer: Writer,
    applier: Arc<Applier>,
    registry: Arc<Registry>,
    router: Arc<Router>,
    reporter: Arc<Reporter>,
    reports: Reports,
    expiry_ms: u64,
}

/// The default host id: the machine's host name and the process id, and a number from the
/// second host on when one process runs several (as tests and the lab do).
pub fn default_host_id() -> String {
    static HOSTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|n| n.trim().to_string())
        .unwrap_or_default();
    let name = if name.is_empty() { "host" } else { &name };
    let pid = std::process::id();
    match HOSTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) {
        0 => format!("{name}-{pid}"),
        n => format!("{name}-{pid}-{}", n + 1),
    }
}

impl ControlPlane {
    /// Creates the control and fleet topics when missing, reads the control topic to its end
    /// and applies it (this host consumes nothing before), then keeps applying, reporting and
    /// judging canaries until `shutdown`. Returns the control plane and its tasks.
    pub async fn start(
        config: &Config,
        brokers: &str,
        properties: &BTreeMap<String, String>,
        reporter: Arc<Reporter>,
        shutdown: &watch::Receiver<bool>,
    ) -> anyhow::Result<(Arc<Self>, Vec<JoinHandle<()>>)> {
        let control = &config.control;
        crate::kafka::ensure_topics_with(
            brokers,
            &[&control.topic, &control.fleet_topic],
            1,
            properties,
            &[("cleanup.policy", "compact")],
        )
        .await
        .context("making sure of the control plane's topics")?;
        let applier = Arc::new(Applier::new(
            reporter.router.clone(),
            reporter.registry.clone(),
        ));
        let reader = Reader::open(brokers, properties, &control.topic, None)?;
        converge(
            &reader,
            &applier,
            &control.topic,
            control.converge_timeout_s,
        )
        .await?;
        let plane = Arc::new(Self {
            host: reporter.host.clone(),
            topic: control.topic.clone(),
            fleet_topic: control.fleet_topic.clone(),
            writer: Writer::new(brokers, properties)?,
            applier: applier.clone(),
            registry: reporter.registry.clone(),
            router: reporter.router.clone(),
            reporter,
            reports: Reports::default(),
            expiry_ms: control.host_expiry_s * 1000,
        });
        let reports = Reader::open(
            brokers,
            properties,
            &control.fleet_topic,
            Some(REPORTS_BACK),
        )?;
        let every = Duration::from_millis(control.report_interval_ms);
        let tasks = vec![
            tokio::spawn(keep_applying(reader, applier, shutdown.clone())),
            tokio::spawn(
                plane
                    .clone()
                    .keep_reading_reports(reports, shutdown.clone()),
            ),
            tokio::spawn(plane.clone().keep_reporting(every, shutdown.clone())),
            tokio::spawn(
                plane
                    .clone()
                    .keep_judging(config.canary.clone(), shutdown.clone()),
            ),
        ];
        Ok((plane, tasks))
    }

    /// This host's id in the fleet.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The offset after the last control record applied here.
    pub fn applied(&self) -> i64 {
        self.applier.applied()
    }

    /// Every live host: this one, fresh, and the others' latest reports.
    pub fn view(&self) -> FleetView {
        let own = self
            .reporter
            .report(self.applier.applied(), self.applier.refusals());
        fleet::view(
            true,
            own,
            self.reports.live_others(&self.host, self.expiry_ms),
        )
    }

    fn origin(&self) -> Origin {
        Origin {
            host: self.host.clone(),
            at_ms: now_ms(),
        }
    }

    /// Writes a record to the control topic and waits until this host applied it.
    async fn change(&self, key: Key, value: Option<Vec<u8>>) -> Result<i64, ControlError> {
        let offset = self
            .writer
            .write(&self.topic, &key.render(), value.as_deref())
            .await
            .map_err(ControlError::Write)?;
        if !self.applier.wait_applied(offset, APPLY_TIMEOUT).await {
            return Err(ControlError::NotApplied {
                offset,
                waited_s: APPLY_TIMEOUT.as_secs(),
            });
        }
        if let Some(refusal) = self
            .applier
            .refusals()
            .into_iter()
            .find(|r| r.offset == offset)
        {
            return Err(ControlError::RefusedHere {
                offset,
                reason: refusal.reason,
            });
        }
        Ok(offset)
    }

    /// Sets the weights of the vendors in `changes` on every host; returns them in force here.
    pub async fn set_weights(
        &self,
        channel: &str,
        changes: &BTreeMap<String, u32>,
    ) -> Result<BTreeMap<String, u32>, ControlError> {
        let weights = self.router.preview_weights(channel, changes)?;
        let desire = WeightsDesire {
            weights: Some(weights),
            origin: self.origin(),
        };
        let value = serde_json::to_vec(&desire).unwrap_or_default();
        self.change(Key::Weights(channel.to_string()), Some(value))
            .await?;
        Ok(self.router.weights(channel).unwrap_or_default())
    }

    /// Puts `channel` back on the config file's weights on every host.
    pub async fn reset_weights(&self, channel: &str) -> Result<(), ControlError> {
        if !self.router.knows(channel) {
            return Err(WeightError::UnknownChannel(channel.to_string()).into());
        }
        let desire = WeightsDesire {
            weights: None,
            origin: self.origin(),
        };
        let value = serde_json::to_vec(&desire).unwrap_or_default();
        self.change(Key::Weights(channel.to_string()), Some(value))
            .await?;
        Ok(())
    }

    /// Loads `bytes` here (refused as a local upload would be), puts the component on the
    /// control topic, and, when `activate`, makes it active on every host.
    pub async fn upload(
        &self,
        name: &str,
        bytes: &[u8],
        activate: bool,
    ) -> Result<Arc<Version>, ControlError> {
        let version = self
            .registry
            .stage(name, bytes, VersionSource::Upload)
            .await?;
        for (key, value) in record::component_records(name, &version.id, bytes, self.origin()) {
            self.writer
                .write(&self.topic, &key, Some(&value))
                .await
                .map_err(ControlError::Write)?;
        }
        if activate {
            return self.activate(name, &version.id).await;
        }
        Ok(version)
    }

    fn lineup(&self, name: &str) -> Result<Arc<Lineup>, SwapError> {
        self.registry
            .slot(name)
            .map(|slot| slot.lineup())
            .ok_or_else(|| SwapError::UnknownPlugin(name.to_string()))
    }

    /// The id of the version an operator named: loaded here, or on the control topic.
    fn resolve(&self, name: &str, lineup: &Lineup, named: &str) -> Result<String, SwapError> {
        if let Some(version) = lineup.find_named(named) {
            return Ok(version.id.clone());
        }
        if self.applier.has_component(name, named) {
            return Ok(named.to_string());
        }
        Err(SwapError::UnknownVersion {
            plugin: name.to_string(),
            id: named.to_string(),
        })
    }

    async fn desire(&self, name: &str, desire: PluginDesire) -> Result<(), ControlError> {
        let value = serde_json::to_vec(&desire).unwrap_or_default();
        self.change(Key::Plugin(name.to_string()), Some(value))
            .await?;
        Ok(())
    }

    /// The version `id` of `name` as loaded here after a change.
    fn loaded(&self, name: &str, id: &str) -> Result<Arc<Version>, ControlError> {
        self.lineup(name)?.find(id).ok_or_else(|| {
            SwapError::UnknownVersion {
                plugin: name.to_string(),
                id: id.to_string(),
            }
            .into()
        })
    }

    /// Makes version `named` of `name` active on every host.
    pub async fn activate(&self, name: &str, named: &str) -> Result<Arc<Version>, ControlError> {
        let lineup = self.lineup(name)?;
        let id = self.resolve(name, &lineup, named)?;
        let current = current_canary(&lineup);
        let promoted = current.as_ref().is_some_and(|c| c.id == id);
        self.desire(
            name,
            PluginDesire {
                active: id.clone(),
                canary: current.filter(|c| c.id != id),
                ended: promoted.then(|| CanaryEnded {
                    how: "promoted".into(),
                    reason: "activated".into(),
                }),
                origin: self.origin(),
            },
        )
        .await?;
        self.loaded(name, &id)
    }

    /// Ends `name`'s canary on every host, or, without one, makes the previous version active
    /// on every host.
    pub async fn rollback(&self, name: &str) -> Result<Arc<Version>, ControlError> {
        let lineup = self.lineup(name)?;
        let (active, ended) = if lineup.canary.is_some() {
            let ended = CanaryEnded {
                how: "rolled-back".into(),
                reason: "rolled back by an operator".into(),
            };
            (lineup.active.id.clone(), Some(ended))
        } else {
            let back = lineup
                .previous
                .last()
                .ok_or_else(|| SwapError::NothingToRollBack(name.to_string()))?;
            (back.id.clone(), None)
        };
        self.desire(
            name,
            PluginDesire {
                active: active.clone(),
                canary: None,
                ended,
                origin: self.origin(),
            },
        )
        .await?;
        self.loaded(name, &active)
    }

    /// Sends `percent` of `name`'s calls to version `named` on every host; 0 ends the canary.
    pub async fn set_canary(
        &self,
        name: &str,
        named: &str,
        percent: u8,
    ) -> Result<(), ControlError> {
        let lineup = self.lineup(name)?;
        let canary = if percent == 0 {
            None
        } else {
            if percent > 99 {
                return Err(SwapError::BadPercent(percent).into());
            }
            let id = self.resolve(name, &lineup, named)?;
            if id == lineup.active.id {
                return Err(SwapError::AlreadyActive {
                    plugin: name.to_string(),
                    id,
                }
                .into());
            }
            Some(CanaryDesire { id, percent })
        };
        let ended = canary.is_none().then(|| CanaryEnded {
            how: "rolled-back".into(),
            reason: "ended by an operator".into(),
        });
        self.desire(
            name,
            PluginDesire {
                active: lineup.active.id.clone(),
                canary,
                ended,
                origin: self.origin(),
            },
        )
        .await
    }

    async fn keep_reading_reports(
        self: Arc<Self>,
        reader: Reader,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let read = tokio::select! {
                // Shutdown first: a branch picked at random could go on working after it.
                biased;
                _ = shutdown.wait_for(|stop| *stop) => return,
                read = reader.next() => read,
            };
            match read {
                Ok(read) => {
                    let host = read.key.as_deref().and_then(|k| k.strip_prefix("host/"));
                    match (host, read.value) {
                        (Some(host), None) => self.reports.forget(host),
                        (Some(_), Some(value)) => {
                            match serde_json::from_slice::<HostReport>(&value) {
                                Ok(report) => self.reports.receive(report),
                                Err(error) => {
                                    tracing::warn!(offset = read.offset, %error, "an undecodable fleet report; skipped")
                                }
                            }
                        }
                        (None, _) => tracing::warn!(
                            offset = read.offset,
                            "a fleet record without a host key; skipped"
                        ),
                    }
                }
                Err(error) => {
                    tracing::warn!(error = %format!("{error:#}"), "reading the fleet topic");
                    tokio::time::sleep(READ_RETRY).await;
                }
            }
        }
    }

    async fn keep_reporting(self: Arc<Self>, every: Duration, mut shutdown: watch::Receiver<bool>) {
        let key = format!("host/{}", self.host);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                // Shutdown first: an unbiased select picks at random among ready branches, and
                // with the broker gone each report written after the stop took 10 s or more.
                biased;
                _ = shutdown.wait_for(|stop| *stop) => break,
                _ = tick.tick() => {}
            }
            let report = self
                .reporter
                .report(self.applier.applied(), self.applier.refusals());
            let value = serde_json::to_vec(&report).unwrap_or_default();
            if let Err(error) = self
                .writer
                .write(&self.fleet_topic, &key, Some(&value))
                .await
            {
                tracing::warn!(error = %format!("{error:#}"), "writing this host's fleet report");
            }
        }
        // Leaving: a tombstone takes this host off every fleet view at once.
        if let Err(error) = self.writer.write(&self.fleet_topic, &key, None).await {
            tracing::warn!(error = %format!("{error:#}"), "removing this host from the fleet view");
        }
    }

    async fn keep_judging(
        self: Arc<Self>,
        config: crate::config::CanaryConfig,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(JUDGE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                // Shutdown first: a branch picked at random could go on working after it.
                biased;
                _ = shutdown.wait_for(|stop| *stop) => return,
                _ = tick.tick() => {}
            }
            let others = self.reports.live_others(&self.host, self.expiry_ms);
            for verdict in fleet::judge_over_fleet(&self.registry, &config, &others) {
                let desire = PluginDesire {
                    active: verdict.active,
                    canary: None,
                    ended: Some(CanaryEnded {
                        how: "rolled-back".into(),
                        reason: verdict.reason,
                    }),
                    origin: self.origin(),
                };
                if let Err(error) = self.desire(&verdict.plugin, desire).await {
                    tracing::warn!(plugin = %verdict.plugin, %error, "rolling back a canary on the fleet");
                }
            }
        }
    }
}

/// The canary `lineup` runs, as a desire.
fn current_canary(lineup: &Lineup) -> Option<CanaryDesire> {
    lineup.canary.as_ref().map(|c| CanaryDesire {
        id: c.version.id.clone(),
        percent: c.percent,
    })
}

/// Reads the control topic to the end it had at start and applies every record; refuses to
/// go on when that takes longer than `timeout_s`.
async fn converge(
    reader: &Reader,
    applier: &Applier,
    topic: &str,
    timeout_s: u64,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let end = reader.end()?;
    let deadline = started + Duration::from_secs(timeout_s);
    while applier.applied() < end {
        let read = tokio::time::timeout_at(deadline.into(), reader.next())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "read only {} of the {end} records of the control topic `{topic}` in {timeout_s} s \
                     (control.converge_timeout_s); the host does not consume before it has the fleet's desired state",
                    applier.applied()
                )
            })??;
        applier.apply(read).await;
    }
    events::ControlConverged {
        records: end,
        elapsed_ms: started.elapsed().as_millis() as u64,
    }
    .emit();
    Ok(())
}

/// Applies every record written to the control topic after start, until `shutdown`.
async fn keep_applying(reader: Reader, applier: Arc<Applier>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let read = tokio::select! {
            // Shutdown first: a branch picked at random could go on working after it.
            biased;
            _ = shutdown.wait_for(|stop| *stop) => return,
            read = reader.next() => read,
        };
        match read {
            Ok(read) => applier.apply(read).await,
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "reading the control topic");
                tokio::time::sleep(READ_RETRY).await;
            }
        }
    }
}
