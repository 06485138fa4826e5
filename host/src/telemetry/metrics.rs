//! Prometheus metrics: what `/metrics` serves, as OpenMetrics text. docs/OPERATIONS.md lists
//! every series.
//!
//! Two kinds of series, kept apart so the delivery path stays cheap:
//!
//! - Recorded as they happen: each plugin call's outcomes and duration per vendor and plugin
//!   version ([`Metrics::record_call`], one family lookup per outcome class per call); each
//!   consumer's lag, which its statistics callback sets every few seconds
//!   ([`Metrics::consumer_lag`]); and each dependency's up gauge, which the store that watches
//!   the dependency sets when it goes down or comes back ([`Metrics::dependency_up`]).
//! - Read when rendered, from what already counts them: the host's [`Counters`], the memory
//!   [`Budget`], the router's weights and the vendors' breakers, and each plugin's call and
//!   capability counters. Nothing on the delivery path updates a second copy of them.
//!
//! - The process's own: resident memory, CPU seconds, threads and open files, read from
//!   `/proc/self` when rendered, under the names every Prometheus client library uses
//!   (`process_*`, no prefix), so the dashboards made for them work unchanged.
//!
//! A scrape before the host is wired up ([`Metrics::observe`]) has the recorded series only.
//!
//! Label sets stay bounded: lanes, reason classes and outcomes are fixed lists, vendors are the
//! configured plugins, and a plugin version's series are removed once the registry has let go
//! of that version ([`Metrics::prune_versions`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric as _, LabelValueEncoder,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::ingest::budget::Budget;
use crate::route::Router;
use crate::route::health::BreakerState;
use crate::telemetry::Counters;

/// The `Content-Type` of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of the call-duration buckets, in seconds: 1 ms to 30 s, the longest a plugin
/// call is normally allowed.
const CALL_SECONDS_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Upper bounds of the end-to-end latency buckets, in seconds: 5 ms (a realtime push on a quiet
/// host) to an hour (a bulk backlog, or a delivery that waited in the retry topics).
const DELIVERY_LATENCY_BUCKETS: [f64; 17] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0,
    3600.0,
];

/// What one delivery of a call came to, as `switchboard_vendor_outcomes_total` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallOutcome {
    Delivered,
    Rejected,
    InvalidRecipient,
    /// The vendor answered with a transient error.
    Retry,
    /// The call passed its deadline, or one of its requests got no answer in time.
    Timeout,
    /// The call failed as a whole: the plugin trapped or its `init` failed.
    Trap,
}

impl CallOutcome {
    const ALL: [CallOutcome; 6] = [
        CallOutcome::Delivered,
        CallOutcome::Rejected,
        CallOutcome::InvalidRecipient,
        CallOutcome::Retry,
        CallOutcome::Timeout,
        CallOutcome::Trap,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CallOutcome::Delivered => "delivered",
            CallOutcome::Rejected => "rejected",
            CallOutcome::InvalidRecipient => "invalid_recipient",
            CallOutcome::Retry => "retry",
            CallOutcome::Timeout => "timeout",
            CallOutcome::Trap => "trap",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl EncodeLabelValue for CallOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// A plugin version: the vendor (the plugin's configured name), the version it gives in
/// `describe`, and the version id (the component's hash).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct VersionLabels {
    vendor: String,
    version: String,
    id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    vendor: String,
    version: String,
    id: String,
    outcome: CallOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SourceLabels {
    source: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DependencyLabels {
    dependency: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LaneLabels {
    lane: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    wasmtime: String,
}

/// The wasmtime the host embeds, for `switchboard_build_info` (kept in step with Cargo.toml's
/// pin by `build_info_names_the_pinned_wasmtime`).
const WASMTIME_VERSION: &str = "48.0.8";

/// What the render-time series are read from.
pub struct HostParts {
    pub counters: Arc<Counters>,
    pub plugins: Arc<crate::plugin::registry::Registry>,
    pub router: Arc<Router>,
    pub budget: Arc<Budget>,
}

/// The host's Prometheus registry.
pub struct Metrics {
    registry: Registry,
    outcomes: Family<OutcomeLabels, Counter>,
    call_seconds: Family<VersionLabels, Histogram, fn() -> Histogram>,
    consumer_lag: Family<SourceLabels, Gauge>,
    dependency_up: Family<DependencyLabels, Gauge>,
    /// The same gauges by name, for readiness (a `Family` cannot be listed).
    dependencies: Mutex<BTreeMap<String, Gauge>>,
    dead_letters: Family<ReasonLabels, Counter>,
    delivery_latency: Family<LaneLabels, Histogram, fn() -> Histogram>,
    /// Every plugin version with series, so a dropped one's can be removed (a `Family` cannot
    /// be listed).
    versions_seen: Mutex<std::collections::HashSet<VersionLabels>>,
    host: Arc<OnceLock<HostParts>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("observing", &self.host.get().is_some())
            .finish_non_exhaustive()
    }
}

fn call_histogram() -> Histogram {
    Histogram::new(CALL_SECONDS_BUCKETS)
}

fn latency_histogram() -> Histogram {
    Histogram::new(DELIVERY_LATENCY_BUCKETS)
}

impl Metrics {
    /// The recorded series, empty; [`Metrics::observe`] adds the render-time ones.
    pub fn new() -> Self {
        let mut root = Registry::default();
        root.register_collector(Box::new(super::process::ProcessCollector));
        let registry = root.sub_registry_with_prefix("switchboard");
        let outcomes = Family::<OutcomeLabels, Counter>::default();
        let call_seconds: Family<VersionLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(call_histogram);
        let consumer_lag = Family::<SourceLabels, Gauge>::default();
        let dependency_up = Family::<DependencyLabels, Gauge>::default();
        let dead_letters = Family::<ReasonLabels, Counter>::default();
        let delivery_latency: Family<LaneLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
                wasmtime: WASMTIME_VERSION.to_string(),
            })
            .set(1);
        registry.register(
            "build_info",
            "1, labelled with the host's version and the wasmtime it embeds",
            build_info,
        );
        registry.register(
            "vendor_outcomes",
            "Deliveries per vendor and plugin version (vendor, version = the plugin's describe \
             version, id = the version id) by outcome: delivered, rejected, invalid_recipient, \
             retry (the vendor asked for another try), timeout (the call or one of its requests \
             timed out), trap (the call failed as a whole: a trap or a failed init)",
            outcomes.clone(),
        );
        registry.register_with_unit(
            "vendor_call_duration",
            "Duration of each plugin call (a batch of deliveries), per vendor and plugin version",
            Unit::Seconds,
            call_seconds.clone(),
        );
        registry.register_with_unit(
            "delivery_latency",
            "End to end, per lane: from the request record's Kafka timestamp to the vendor's \
             answer that delivered it, retries included (lane = realtime, batch, ads)",
            Unit::Seconds,
            delivery_latency.clone(),
        );
        registry.register(
            "dead_letters",
            "Records written to the DLQ, by reason class: rejected, expired, \
             attempts-exhausted, plugin-fault, undecodable, unknown-channel (the sb-reason-class \
             header)",
            dead_letters.clone(),
        );
        registry.register(
            "consumer_lag_records",
            "Records behind the end of the partitions each consumer is assigned, summed from \
             librdkafka's statistics every 5 s (source = realtime, batch, ads: a lane's own \
             topics; mixed: kafka.topics; retry: the retry topic)",
            consumer_lag.clone(),
        );
        registry.register(
            "dependency_up",
            "Whether a dependency answers: 1 up, 0 down (a call to it was refused, lost or timed \
             out; delivery waits for it, and a probe looks for it until it answers). dependency = \
             redis: the Redis dedup store",
            dependency_up.clone(),
        );
        let host = Arc::new(OnceLock::new());
        registry.register_collector(Box::new(HostCollector { host: host.clone() }));
        Self {
            registry: root,
            outcomes,
            call_seconds,
            consumer_lag,
            dependency_up,
            dependencies: Mutex::default(),
            dead_letters,
            delivery_latency,
            versions_seen: Mutex::default(),
            host,
        }
    }

    /// Reads the render-time series from `parts` from now on. Only the first call counts.
    pub fn observe(&self, parts: HostParts) {
        let _ = self.host.set(parts);
    }

    /// Counts one plugin call of vendor `vendor`, version `version` (id `id`): its duration
    /// and the outcome of each of its deliveries.
    pub fn record_call(
        &self,
        vendor: &str,
        version: &str,
        id: &str,
        outcomes: impl IntoIterator<Item = CallOutcome>,
        duration: Duration,
    ) {
        let mut counts = [0u64; CallOutcome::ALL.len()];
        for outcome in outcomes {
            counts[outcome.index()] += 1;
        }
        let labels = VersionLabels {
            vendor: vendor.to_string(),
            version: version.to_string(),
            id: id.to_string(),
        };
        {
            let mut seen = lock(&self.versions_seen);
            if !seen.contains(&labels) {
                seen.insert(labels.clone());
            }
        }
        self.call_seconds
            .get_or_create(&labels)
            .observe(duration.as_secs_f64());
        let VersionLabels {
            vendor,
            version,
            id,
        } = labels;
        let mut labels = OutcomeLabels {
            vendor,
            version,
            id,
            outcome: CallOutcome::Delivered,
        };
        for outcome in CallOutcome::ALL {
            let n = counts[outcome.index()];
            if n > 0 {
                labels.outcome = outcome;
                self.outcomes.get_or_create(&labels).inc_by(n);
            }
        }
    }

    /// Counts one DLQ write of reason class `reason` (the `sb-reason-class` header's value).
    pub fn record_dead_letter(&self, reason: &str) {
        self.dead_letters
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Makes each of `reasons` a series at 0, so an alert on any of them has a series to watch.
    pub fn declare_dead_letter_reasons<'a>(&self, reasons: impl IntoIterator<Item = &'a str>) {
        for reason in reasons {
            drop(self.dead_letters.get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            }));
        }
    }

    /// Observes one delivery in lane `lane`, `latency` after its request record's timestamp.
    pub fn record_delivery_latency(&self, lane: &str, latency: Duration) {
        self.delivery_latency
            .get_or_create(&LaneLabels {
                lane: lane.to_string(),
            })
            .observe(latency.as_secs_f64());
    }

    /// Removes the series of every plugin version that is not in `live` (vendor, version id):
    /// versions the registry has let go of, so their label sets do not pile up with uploads.
    pub fn prune_versions(&self, live: &std::collections::HashSet<(String, String)>) {
        lock(&self.versions_seen).retain(|labels| {
            if live.contains(&(labels.vendor.clone(), labels.id.clone())) {
                return true;
            }
            self.call_seconds.remove(labels);
            for outcome in CallOutcome::ALL {
                self.outcomes.remove(&OutcomeLabels {
                    vendor: labels.vendor.clone(),
                    version: labels.version.clone(),
                    id: labels.id.clone(),
                    outcome,
                });
            }
            false
        });
    }

    /// The lag gauge of one consumer (`source`: realtime, batch, ads, mixed or retry), for its
    /// statistics callback to set.
    pub fn consumer_lag(&self, source: &str) -> Gauge {
        self.consumer_lag.get_or_create_owned(&SourceLabels {
            source: source.to_string(),
        })
    }

    /// The up gauge of one dependency (`redis`), for the store that watches it to set.
    pub fn dependency_up(&self, dependency: &str) -> Gauge {
        let gauge = self.dependency_up.get_or_create_owned(&DependencyLabels {
            dependency: dependency.to_string(),
        });
        lock(&self.dependencies).insert(dependency.to_string(), gauge.clone());
        gauge
    }

    /// The dependencies whose up gauge reads 0, by name.
    pub fn dependencies_down(&self) -> Vec<String> {
        lock(&self.dependencies)
            .iter()
            .filter(|(_, gauge)| gauge.get() == 0)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Every series, as OpenMetrics text (ends with `# EOF`).
    pub fn render(&self) -> String {
        if let Some(host) = self.host.get() {
            self.prune_versions(&host.live_versions());
        }
        let mut text = String::with_capacity(16 * 1024);
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            // Writing to a String does not fail; a failure is a bug in an encoder.
            tracing::warn!(%error, "rendering the metrics failed");
        }
        text
    }
}

/// A lock whose holder cannot leave it half-changed (each change is one insert or remove).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Encodes the render-time series.
struct HostCollector {
    host: Arc<OnceLock<HostParts>>,
}

impl std::fmt::Debug for HostCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostCollector").finish_non_exhaustive()
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

impl Collector for HostCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let Some(host) = self.host.get() else {
            return Ok(());
        };
        let e = &mut encoder;
        host.encode_counters(e)?;
        host.encode_lanes(e)?;
        host.encode_routes(e)?;
        host.encode_plugins(e)
    }
}

impl HostParts {
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
        let rows = |value: &dyn Fn(&crate::ingest::budget::LaneBudget) -> i64| {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the one sample of `name` whose labels include every pair of `labels`.
    fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        text.lines()
            .filter(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .find(|line| {
                labels
                    .iter()
                    .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
            })
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
    }

    #[test]
    fn a_dropped_versions_series_are_removed_and_the_live_ones_kept() {
        let metrics = Metrics::new();
        metrics.record_call(
            "fcm",
            "1.0.0",
            "old",
            [CallOutcome::Delivered],
            Duration::ZERO,
        );
        metrics.record_call("fcm", "1.1.0", "new", [CallOutcome::Trap], Duration::ZERO);
        let live = std::collections::HashSet::from([("fcm".to_string(), "new".to_string())]);
        metrics.prune_versions(&live);
        let text = metrics.render();
        assert!(!text.contains("id=\"old\""), "{text}");
        let new = [("id", "new"), ("outcome", "trap")];
        assert_eq!(
            sample(&text, "switchboard_vendor_outcomes_total", &new),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                "switchboard_vendor_call_duration_seconds_count",
                &[("id", "new")]
            ),
            Some(1.0)
        );
        // A version that comes back (a rollback to it) starts its series again.
        metrics.record_call(
            "fcm",
            "1.0.0",
            "old",
            [CallOutcome::Delivered],
            Duration::ZERO,
        );
        let old = [("id", "old"), ("outcome", "delivered")];
        let text = metrics.render();
        assert_eq!(
            sample(&text, "switchboard_vendor_outcomes_total", &old),
            Some(1.0)
        );
    }

    #[test]
    fn dead_letters_count_by_reason_and_latency_by_lane() {
        let metrics = Metrics::new();
        metrics.declare_dead_letter_reasons(["rejected", "expired"]);
        metrics.record_dead_letter("expired");
        metrics.record_delivery_latency("realtime", Duration::from_millis(3));
        metrics.record_delivery_latency("batch", Duration::from_secs(40));
        let text = metrics.render();
        let reason = |r: &str| sample(&text, "switchboard_dead_letters_total", &[("reason", r)]);
        assert_eq!(reason("rejected"), Some(0.0), "{text}");
        assert_eq!(reason("expired"), Some(1.0));
        let under = |lane: &str, le: &str| {
            sample(
                &text,
                "switchboard_delivery_latency_seconds_bucket",
                &[("lane", lane), ("le", le)],
            )
        };
        assert_eq!(under("realtime", "0.005"), Some(1.0), "{text}");
        assert_eq!(under("batch", "0.005"), Some(0.0));
        assert_eq!(
            sample(
                &text,
                "switchboard_delivery_latency_seconds_count",
                &[("lane", "batch")]
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                "switchboard_build_info",
                &[("wasmtime", WASMTIME_VERSION)]
            ),
            Some(1.0)
        );
    }

    #[test]
    fn build_info_names_the_pinned_wasmtime() -> anyhow::Result<()> {
        let manifest = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"),
        )?;
        let pin = format!("wasmtime = {{ version = \"={WASMTIME_VERSION}\"");
        assert!(manifest.contains(&pin), "Cargo.toml no longer pins {pin}");
        Ok(())
    }

    #[test]
    fn calls_are_counted_per_version_and_outcome() -> anyhow::Result<()> {
        let metrics = Metrics::new();
        use CallOutcome::*;
        metrics.record_call(
            "fcm",
            "1.0.0",
            "abc",
            [Delivered, Delivered, InvalidRecipient, Retry],
            Duration::from_millis(3),
        );
        metrics.record_call(
            "fcm",
            "1.0.0",
            "abc",
            [Delivered],
            Duration::from_millis(40),
        );
        metrics.record_call("fcm", "1.1.0", "def", [Trap; 3], Duration::from_secs(2));
        let text = metrics.render();
        let outcome = |id: &str, outcome: &str| {
            sample(
                &text,
                "switchboard_vendor_outcomes_total",
                &[("vendor", "fcm"), ("id", id), ("outcome", outcome)],
            )
        };
        assert_eq!(outcome("abc", "delivered"), Some(3.0), "{text}");
        assert_eq!(outcome("abc", "invalid_recipient"), Some(1.0));
        assert_eq!(outcome("abc", "retry"), Some(1.0));
        assert_eq!(
            outcome("abc", "trap"),
            None,
            "no series for what never happened"
        );
        assert_eq!(outcome("def", "trap"), Some(3.0));
        assert!(text.contains("version=\"1.1.0\""), "{text}");
        let calls = |id: &str| {
            sample(
                &text,
                "switchboard_vendor_call_duration_seconds_count",
                &[("id", id)],
            )
        };
        assert_eq!(calls("abc"), Some(2.0), "{text}");
        assert_eq!(calls("def"), Some(1.0));
        // 3 ms and 40 ms are both under 50 ms; only one is under 5 ms.
        let bucket = |le: &str| {
            sample(
                &text,
                "switchboard_vendor_call_duration_seconds_bucket",
                &[("id", "abc"), ("le", le)],
            )
        };
        assert_eq!(bucket("0.005"), Some(1.0), "{text}");
        assert_eq!(bucket("0.05"), Some(2.0));
        assert!(text.trim_end().ends_with("# EOF"));
        Ok(())
    }

    #[test]
    fn a_consumer_lag_gauge_is_shared_with_its_consumer() {
        let metrics = Metrics::new();
        let lag = metrics.consumer_lag("retry");
        lag.set(42);
        let text = metrics.render();
        assert_eq!(
            sample(
                &text,
                "switchboard_consumer_lag_records",
                &[("source", "retry")]
            ),
            Some(42.0),
            "{text}"
        );
    }
}
