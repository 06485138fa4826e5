//! The render-time series of `/metrics`: read when a scrape comes, from the parts of the host
//! that already count them (the host's [`Counters`], the memory [`Budget`], the router's weights
//! and breakers, each plugin's call and capability counters). Nothing on the delivery path
//! updates a second copy of them.
//!
//! It lives beside the admin API, not in telemetry, because reading these parts means knowing
//! them: telemetry records and imports nothing above it. [`crate::telemetry::metrics`] documents
//! every series; `tests/operator_surface.rs` checks the tables against `/metrics`.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::lane::budget::Budget;
use crate::plugin::registry::Registry;
use crate::route::Router;
use crate::route::health::BreakerState;
use crate::telemetry::Counters;
use crate::telemetry::metrics::RenderTime;

/// What the render-time series are read from.
pub struct HostParts {
    pub counters: Arc<Counters>,
    pub plugins: Arc<Registry>,
    pub router: Arc<Router>,
    pub budget: Arc<Budget>,
}

impl std::fmt::Debug for HostParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostParts").finish_non_exhaustive()
    }
}

/// One labelled counter series family.
fn counters<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: &[(L, u64)],
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in rows {
        ConstCounter::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

/// One labelled gauge series family.
fn gauges<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: &[(L, i64)],
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in rows {
        ConstGauge::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

/// One unlabelled counter.
fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> std::fmt::Result {
    ConstCounter::new(value).encode(encoder.encode_descriptor(
        name,
        help,
        None,
        MetricType::Counter,
    )?)
}

/// One unlabelled gauge.
fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: i64,
) -> std::fmt::Result {
    ConstGauge::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

type Label<'a> = [(&'static str, &'a str); 1];
type Labels2<'a> = [(&'static str, &'a str); 2];

fn as_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Collector for HostParts {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let e = &mut encoder;
        self.encode_counters(e)?;
        self.encode_lanes(e)?;
        self.encode_routes(e)?;
        self.encode_plugins(e)
    }
}

impl RenderTime for HostParts {
    /// Every version the registry holds: active, canary, previous and staged, per plugin.
    fn live_versions(&self) -> std::collections::HashSet<(String, String)> {
        let mut live = std::collections::HashSet::new();
        for plugin in self.plugins.views() {
            let versions = std::iter::once(&plugin.active)
                .chain(plugin.canary.as_ref().map(|c| &c.version))
                .chain(&plugin.previous)
                .chain(&plugin.staged);
            for version in versions {
                live.insert((plugin.name.clone(), version.id.clone()));
            }
        }
        live
    }
}

impl HostParts {
    fn encode_counters(&self, e: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let c = self.counters.snapshot();
        counter(
            e,
            "records_consumed",
            "Records read from Kafka, requests and retries.",
            c.records_consumed,
        )?;
        let reason = |r| [("reason", r)];
        counters::<Label<'_>>(
            e,
            "records_refused",
            "Records dead-lettered without a delivery, by reason: undecodable (not a valid \
             envelope), expired (expires_at passed), unknown_channel.",
            &[
                (reason("undecodable"), c.records_undecodable),
                (reason("expired"), c.records_expired),
                (reason("unknown_channel"), c.records_unknown_channel),
            ],
        )?;
        let outcome = |o| [("outcome", o)];
        counters::<Label<'_>>(
            e,
            "deliveries",
            "Deliveries settled for good, by outcome: delivered, rejected, invalid_recipient, \
             failed (given up: attempts exhausted, expired, or a plugin fault that never cleared).",
            &[
                (outcome("delivered"), c.deliveries_delivered),
                (outcome("rejected"), c.deliveries_rejected),
                (outcome("invalid_recipient"), c.deliveries_invalid_recipient),
                (outcome("failed"), c.deliveries_failed),
            ],
        )?;
        counter(
            e,
            "deliveries_skipped_done",
            "Deliveries skipped because the dedup store knew them as done.",
            c.deliveries_skipped_done,
        )?;
        counter(
            e,
            "retries",
            "Retries scheduled on the retry topic.",
            c.retries,
        )?;
        counter(
            e,
            "fallbacks",
            "Permanently failed deliveries re-sent on their channel's fallback channel.",
            c.deliveries_fallen_back,
        )?;
        counter(
            e,
            "failovers",
            "Retried deliveries routed to another vendor of their channel than their last try's.",
            c.deliveries_failed_over,
        )?;
        counter(
            e,
            "dead_lettered",
            "DLQ writes: deliveries and records.",
            c.dead_lettered,
        )?;
        counter(
            e,
            "deliveries_unsettled",
            "Deliveries and records neither the retry topic nor the DLQ would take for good: \
             left unfinished, so their offsets stay uncommitted and they are read again later.",
            c.deliveries_unsettled,
        )?;
        counter(
            e,
            "dead_letters_truncated",
            "DLQ records stored with only a prefix of a value too large for the topic; the \
             whole record stays at its origin coordinates.",
            c.dead_letters_truncated,
        )?;
        counter(
            e,
            "outbox_writes_refused",
            "Writes to the retry topic or the DLQ refused for good (too large, unknown topic, \
             not authorised); never retried.",
            c.outbox_refused,
        )?;
        counter(
            e,
            "dedup_errors",
            "Dedup look-ups or marks the store answered with an error (the delivery went ahead: at \
             least once). An outage is not counted here: delivery waits for the store, and \
             switchboard_dependency_up shows it.",
            c.dedup_errors,
        )?;
        let stream = |s| [("stream", s)];
        counters::<Label<'_>>(
            e,
            "result_records_published",
            "Records the result topics acknowledged (stream = results, invalidations).",
            &[
                (stream("results"), c.results_published),
                (stream("invalidations"), c.invalidations_published),
            ],
        )?;
        counters::<Label<'_>>(
            e,
            "result_records_failed",
            "Records that never reached a result topic: its queue was full or Kafka did not \
             acknowledge them in time. The deliveries are unaffected.",
            &[
                (stream("results"), c.results_failed),
                (stream("invalidations"), c.invalidations_failed),
            ],
        )
    }

    fn encode_lanes(&self, e: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let lanes = self.budget.snapshot();
        let rows = |value: &dyn Fn(&crate::lane::budget::LaneBudget) -> i64| {
            lanes
                .iter()
                .map(|l| ([("lane", l.class.as_str())], value(l)))
                .collect::<Vec<_>>()
        };
        gauges(
            e,
            "lane_inflight_records",
            "Records admitted into the lane and not yet finished (queued, in a call, or waiting \
             for the retry topic or the DLQ).",
            &rows(&|l| as_i64(l.records)),
        )?;
        gauges(
            e,
            "lane_inflight_bytes",
            "Bytes the lane's admitted records hold against its memory budget.",
            &rows(&|l| as_i64(l.used_bytes)),
        )?;
        gauges(
            e,
            "lane_budget_limit_bytes",
            "The lane's memory budget; at it, the lane pauses partitions.",
            &rows(&|l| as_i64(l.limit_bytes)),
        )?;
        gauges(
            e,
            "lane_paused_partitions",
            "Partitions paused now because the lane (or the host) is over its budget, their \
             records held until it falls below the low-water mark.",
            &rows(&|l| as_i64(l.paused_partitions)),
        )?;
        let pauses: Vec<_> = lanes
            .iter()
            .map(|l| ([("lane", l.class.as_str())], l.pauses))
            .collect();
        counters(
            e,
            "lane_pauses",
            "Times the lane paused a partition for its budget.",
            &pauses,
        )?;
        gauge(
            e,
            "budget_inflight_bytes",
            "Bytes all lanes hold against the host's budget.",
            as_i64(self.budget.used_total()),
        )?;
        gauge(
            e,
            "budget_limit_bytes",
            "The host's budget for its own work (budget.total_mb less librdkafka's prefetch \
             share).",
            as_i64(self.budget.limit_total()),
        )
    }

    fn encode_routes(&self, e: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let views = self.router.health().views();
        let states: Vec<_> = views
            .iter()
            .map(|v| {
                let state = match v.breaker {
                    BreakerState::Closed => 0,
                    BreakerState::HalfOpen => 1,
                    BreakerState::Open => 2,
                };
                ([("vendor", v.vendor.as_str())], state)
            })
            .collect();
        gauges(
            e,
            "vendor_breaker_state",
            "The vendor's circuit breaker: 0 closed (takes its share), 1 half-open (probing \
             with a few deliveries), 2 open (ejected: gets nothing new).",
            &states,
        )?;
        let trips: Vec<_> = views
            .iter()
            .map(|v| ([("vendor", v.vendor.as_str())], v.trips))
            .collect();
        counters(
            e,
            "vendor_breaker_trips",
            "Times the vendor's breaker opened.",
            &trips,
        )?;
        let mut weights: Vec<(String, String, u32)> = Vec::new();
        for channel in self.router.channel_names() {
            for (vendor, weight) in self.router.weights(&channel).unwrap_or_default() {
                weights.push((channel.clone(), vendor, weight));
            }
        }
        let rows: Vec<(Labels2<'_>, i64)> = weights
            .iter()
            .map(|(channel, vendor, weight)| {
                (
                    [("channel", channel.as_str()), ("vendor", vendor.as_str())],
                    i64::from(*weight),
                )
            })
            .collect();
        gauges(
            e,
            "route_weight",
            "The vendor's weight in the channel now (the config's, or as an operator set it).",
            &rows,
        )
    }

    fn encode_plugins(&self, e: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        struct PluginTotals {
            name: String,
            calls: u64,
            traps: u64,
            timeouts: u64,
            host_busy: u64,
            denied_hosts: u64,
            denied_secrets: u64,
            denied_downgrades: u64,
            denied_addresses: u64,
            denied_requests: u64,
            over_transfer: u64,
            scrubbed_secrets: u64,
            dropped_logs: u64,
        }
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        let plugins: Vec<PluginTotals> = self
            .plugins
            .slots()
            .map(|slot| {
                let lineup = slot.lineup();
                let mut versions: Vec<&Arc<crate::plugin::registry::Version>> =
                    std::iter::once(&lineup.active)
                        .chain(lineup.canary.as_ref().map(|c| &c.version))
                        .chain(&lineup.previous)
                        .chain(&lineup.staged)
                        .collect();
                versions.sort_by(|a, b| a.id.cmp(&b.id));
                versions.dedup_by(|a, b| a.id == b.id);
                let sum = |f: &dyn Fn(&crate::plugin::CallCounters) -> u64| {
                    versions.iter().map(|v| f(&v.plugin.counters)).sum()
                };
                let caps = slot.capability_counters();
                PluginTotals {
                    name: slot.name.clone(),
                    calls: sum(&|c| load(&c.calls)),
                    traps: sum(&|c| load(&c.traps)),
                    timeouts: sum(&|c| load(&c.timeouts)),
                    host_busy: sum(&|c| load(&c.host_busy)),
                    denied_hosts: load(&caps.denied_hosts),
                    denied_secrets: load(&caps.denied_secrets),
                    denied_downgrades: load(&caps.denied_downgrades),
                    denied_addresses: load(&caps.denied_addresses),
                    denied_requests: load(&caps.denied_requests),
                    over_transfer: load(&caps.over_transfer),
                    scrubbed_secrets: load(&caps.scrubbed_secrets),
                    dropped_logs: load(&caps.dropped_logs),
                }
            })
            .collect();
        let rows = |value: &dyn Fn(&PluginTotals) -> u64| {
            plugins
                .iter()
                .map(|p| ([("plugin", p.name.as_str())], value(p)))
                .collect::<Vec<_>>()
        };
        counters(
            e,
            "plugin_calls",
            "Plugin calls (one per batch), summed over the plugin's loaded versions (active, \
             canary, previous and staged).",
            &rows(&|p| p.calls),
        )?;
        counters(
            e,
            "plugin_traps",
            "Plugin calls that trapped, summed over the plugin's loaded versions.",
            &rows(&|p| p.traps),
        )?;
        counters(
            e,
            "plugin_timeouts",
            "Plugin calls that passed their deadline, summed over the plugin's loaded versions.",
            &rows(&|p| p.timeouts),
        )?;
        counters(
            e,
            "plugin_denied_hosts",
            "HTTP requests the plugin made to hosts it was not granted.",
            &rows(&|p| p.denied_hosts),
        )?;
        counters(
            e,
            "plugin_denied_secrets",
            "Secret placeholders or signatures the plugin named without owning the secret.",
            &rows(&|p| p.denied_secrets),
        )?;
        /// A counter's name, its help, and how to read it from a plugin's totals.
        type Counter<'a> = (&'a str, &'a str, &'a dyn Fn(&PluginTotals) -> u64);
        let sandbox: [Counter<'_>; 7] = [
            (
                "plugin_host_busy",
                "Plugin calls the host could not run for want of an instance slot \
                 (runtime.max_instances); never counted against the vendor.",
                &|p| p.host_busy,
            ),
            (
                "plugin_denied_downgrades",
                "Redirects from https to plain http refused: the grant does not name plain http.",
                &|p| p.denied_downgrades,
            ),
            (
                "plugin_denied_addresses",
                "Requests to a granted name that resolved only to non-public addresses.",
                &|p| p.denied_addresses,
            ),
            (
                "plugin_denied_requests",
                "Requests refused past a call's bounds.requests_per_call.",
                &|p| p.denied_requests,
            ),
            (
                "plugin_over_transfer",
                "Requests failed because their call spent bounds.transfer_bytes_per_call.",
                &|p| p.over_transfer,
            ),
            (
                "plugin_scrubbed_secrets",
                "Occurrences of a filled secret value scrubbed from a vendor's answer.",
                &|p| p.scrubbed_secrets,
            ),
            (
                "plugin_dropped_logs",
                "Plugin log lines dropped past bounds.log_lines_per_s or bounds.log_bytes_per_s.",
                &|p| p.dropped_logs,
            ),
        ];
        for (name, help, value) in sandbox {
            counters(e, name, help, &rows(value))?;
        }
        Ok(())
    }
}
