//! What each host of the fleet is doing, from any host: every host writes a report of what it
//! applied to the fleet topic every `control.report_interval_ms` and reads everyone's; the
//! fleet view lists the hosts heard from within `control.host_expiry_s`, and marks those behind
//! the desired state.
//!
//! Owns the report's shape, the reports received, and the canary judgement over the fleet's
//! reports. Never applies a change: a canary judged worse is rolled back by writing the
//! rollback to the control topic, which every host, this one included, applies.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::apply::Refusal;
use crate::clock::now_ms;
use crate::config::CanaryConfig;
use crate::plugin::registry::Registry;
use crate::plugin::registry::canary::judge;
use crate::route::Router;
use crate::telemetry::metrics::Metrics;
use crate::window::Bucket;

/// One host's report of what it applied and how it is doing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HostReport {
    pub host: String,
    /// When the report was made, by the host's clock (ms since the epoch).
    pub at_ms: u64,
    pub started_at_ms: u64,
    /// The control-topic offset after the last record this host applied.
    pub applied_offset: i64,
    /// Where its admin API listens, if it does.
    pub admin: Option<String>,
    pub plugins: Vec<PluginReport>,
    /// Each vendor's breaker: `closed`, `open` or `half-open`.
    pub breakers: BTreeMap<String, String>,
    /// Each consumer's lag in records (`realtime`, `batch`, `ads`, `mixed`, `retry`).
    pub lanes_lag: BTreeMap<String, i64>,
    /// Control records this host could not apply, most recent last.
    pub refusals: Vec<Refusal>,
}

/// A plugin's versions on one host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PluginReport {
    pub name: String,
    /// The active version's id and the version its `describe` gives.
    pub active: String,
    pub active_version: String,
    pub canary: Option<CanaryReport>,
}

/// A canary on one host, with both versions' answers since it started there.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CanaryReport {
    pub id: String,
    pub percent: u8,
    pub canary_window: Bucket,
    pub active_window: Bucket,
}

/// Makes this host's report from its live parts.
pub struct Reporter {
    pub host: String,
    pub started_at_ms: u64,
    pub registry: Arc<Registry>,
    pub router: Arc<Router>,
    pub metrics: Arc<Metrics>,
    /// The consumers this host runs, by their metrics name.
    pub sources: Vec<&'static str>,
    pub canary: CanaryConfig,
    pub admin: Mutex<Option<String>>,
}

impl Reporter {
    /// This host's report now.
    pub fn report(&self, applied_offset: i64, refusals: Vec<Refusal>) -> HostReport {
        let plugins = self
            .registry
            .slots()
            .map(|slot| {
                let lineup = slot.lineup();
                let canary = lineup.canary.as_ref().map(|canary| {
                    let since = canary.started_at_ms / 1000;
                    CanaryReport {
                        id: canary.version.id.clone(),
                        percent: canary.percent,
                        canary_window: canary.version.totals(self.canary.window_s, since),
                        active_window: lineup.active.totals(self.canary.window_s, since),
                    }
                });
                PluginReport {
                    name: slot.name.clone(),
                    active: lineup.active.id.clone(),
                    active_version: lineup.active.plugin.info.version.clone(),
                    canary,
                }
            })
            .collect();
        let breakers = self
            .router
            .health()
            .views()
            .into_iter()
            .map(|v| (v.vendor, v.breaker.as_str().to_string()))
            .collect();
        let lanes_lag = self
            .sources
            .iter()
            .map(|source| (source.to_string(), self.metrics.consumer_lag(source).get()))
            .collect();
        HostReport {
            host: self.host.clone(),
            at_ms: now_ms(),
            started_at_ms: self.started_at_ms,
            applied_offset,
            admin: self.admin.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            plugins,
            breakers,
            lanes_lag,
            refusals,
        }
    }
}

/// One host in the fleet view.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostView {
    #[serde(flatten)]
    pub report: HostReport,
    /// How long ago this host made the report, by this host's clock.
    pub age_ms: u64,
    /// Behind the desired state: it has not applied every control record yet.
    pub lagging: bool,
    /// The host that answered.
    pub this_host: bool,
}

/// Every live host, as one host sees them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetView {
    /// Whether the control plane runs (`control.enabled`); without it, only this host is listed.
    pub control: bool,
    /// The control-topic offset after the last change any host applied: the desired state.
    pub desired_offset: i64,
    pub hosts: Vec<HostView>,
}

/// The reports received from the fleet topic, by host.
#[derive(Default)]
pub struct Reports {
    by_host: Mutex<HashMap<String, HostReport>>,
}

impl Reports {
    /// Keeps `report` as its host's latest.
    pub fn receive(&self, report: HostReport) {
        let mut by_host = self.by_host.lock().unwrap_or_else(|p| p.into_inner());
        by_host.insert(report.host.clone(), report);
    }

    /// Forgets `host`: it left the fleet.
    pub fn forget(&self, host: &str) {
        let mut by_host = self.by_host.lock().unwrap_or_else(|p| p.into_inner());
        by_host.remove(host);
    }

    /// The other hosts' reports made within `expiry_ms`.
    pub fn live_others(&self, this_host: &str, expiry_ms: u64) -> Vec<HostReport> {
        let now = now_ms();
        let by_host = self.by_host.lock().unwrap_or_else(|p| p.into_inner());
        let mut live: Vec<HostReport> = by_host
            .values()
            .filter(|r| r.host != this_host && now.saturating_sub(r.at_ms) <= expiry_ms)
            .cloned()
            .collect();
        live.sort_by(|a, b| a.host.cmp(&b.host));
        live
    }
}

/// The fleet view from this host's fresh report and the others' latest.
pub fn view(control: bool, own: HostReport, others: Vec<HostReport>) -> FleetView {
    let desired_offset = others
        .iter()
        .map(|r| r.applied_offset)
        .chain([own.applied_offset])
        .max()
        .unwrap_or(0);
    let now = now_ms();
    let this_host = own.host.clone();
    let hosts = std::iter::once(own)
        .chain(others)
        .map(|report| HostView {
            age_ms: now.saturating_sub(report.at_ms),
            lagging: report.applied_offset < desired_offset,
            this_host: report.host == this_host,
            report,
        })
        .collect();
    FleetView {
        control,
        desired_offset,
        hosts,
    }
}

/// A canary this host should roll back on the fleet's figures, and why.
pub struct FleetVerdict {
    pub plugin: String,
    pub active: String,
    pub reason: String,
}

/// Judges every canary of this host on the answers of every live host running the same canary
/// against the same active version: this host's windows plus the others' reported ones.
pub fn judge_over_fleet(
    registry: &Registry,
    config: &CanaryConfig,
    others: &[HostReport],
) -> Vec<FleetVerdict> {
    let mut verdicts = Vec::new();
    for slot in registry.slots() {
        let lineup = slot.lineup();
        let Some(canary) = &lineup.canary else {
            continue;
        };
        let since = canary.started_at_ms / 1000;
        let mut theirs = canary.version.totals(config.window_s, since);
        let mut ours = lineup.active.totals(config.window_s, since);
        let mut hosts = 1;
        for report in others {
            let same = report.plugins.iter().find(|p| {
                p.name == slot.name
                    && p.active == lineup.active.id
                    && p.canary.as_ref().is_some_and(|c| c.id == canary.version.id)
            });
            if let Some(canary) = same.and_then(|p| p.canary.as_ref()) {
                theirs.add(&canary.canary_window);
                ours.add(&canary.active_window);
                hosts += 1;
            }
        }
        if let Some(reason) = judge(&theirs, &ours, config) {
            verdicts.push(FleetVerdict {
                plugin: slot.name.clone(),
                active: lineup.active.id.clone(),
                reason: format!("{reason}, over {hosts} host(s)"),
            });
        }
    }
    verdicts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(host: &str, applied_offset: i64, age_ms: u64) -> HostReport {
        HostReport {
            host: host.into(),
            at_ms: now_ms() - age_ms,
            started_at_ms: 0,
            applied_offset,
            admin: None,
            plugins: Vec::new(),
            breakers: BTreeMap::new(),
            lanes_lag: BTreeMap::new(),
            refusals: Vec::new(),
        }
    }

    #[test]
    fn a_host_behind_the_furthest_is_lagging() {
        let view = view(
            true,
            report("a", 7, 0),
            vec![report("b", 9, 10), report("c", 9, 10)],
        );
        assert_eq!(view.desired_offset, 9);
        let lagging: Vec<(&str, bool, bool)> = view
            .hosts
            .iter()
            .map(|h| (h.report.host.as_str(), h.lagging, h.this_host))
            .collect();
        assert_eq!(
            lagging,
            [("a", true, true), ("b", false, false), ("c", false, false)]
        );
    }

    #[test]
    fn silent_and_departed_hosts_leave_the_view() {
        let reports = Reports::default();
        reports.receive(report("a", 1, 0));
        reports.receive(report("b", 1, 0));
        reports.receive(report("silent", 1, 60_000));
        reports.receive(report("gone", 1, 0));
        reports.forget("gone");
        let live: Vec<String> = reports
            .live_others("a", 15_000)
            .into_iter()
            .map(|r| r.host)
            .collect();
        assert_eq!(live, ["b"]);
    }
}
