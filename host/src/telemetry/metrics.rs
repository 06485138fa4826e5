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
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, LabelValueEncoder,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

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
    /// The render-time series, once the host is wired up.
    render_time: Arc<OnceLock<Arc<dyn RenderTime>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("observing", &self.render_time.get().is_some())
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
        let render_time = Arc::new(OnceLock::new());
        registry.register_collector(Box::new(Observed(Arc::clone(&render_time))));
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
            render_time,
        }
    }

    /// Reads the render-time series from `parts` from now on. Only the first call counts.
    pub fn observe(&self, parts: Arc<dyn RenderTime>) {
        let _ = self.render_time.set(parts);
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

    /// Lane `lane`'s delivery latency series: each delivery observes, in seconds, how long
    /// after its request record's timestamp the vendor took it. A handle, so a caller looks the
    /// series up once rather than per delivery.
    pub fn delivery_latency(&self, lane: &str) -> Histogram {
        self.delivery_latency
            .get_or_create(&LaneLabels {
                lane: lane.to_string(),
            })
            .clone()
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
        if let Some(parts) = self.render_time.get() {
            self.prune_versions(&parts.live_versions());
        }
        let mut text = String::with_capacity(16 * 1024);
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            // Writing to a String does not fail; a failure is a bug in an encoder.
            tracing::warn!(%error, "rendering the metrics failed");
        }
        text
    }
}

/// The series read when rendered, from the parts of the host that already count them. The
/// admin API provides them ([`crate::admin`]), since reading them means knowing those parts;
/// telemetry itself only records.
pub trait RenderTime: Collector {
    /// Every plugin version the host still holds, as (plugin, version id): a version not among
    /// them has its recorded series removed.
    fn live_versions(&self) -> std::collections::HashSet<(String, String)>;
}

/// Hands the encoder to the render-time parts once they are set.
#[derive(Debug)]
struct Observed(Arc<OnceLock<Arc<dyn RenderTime>>>);

impl Collector for Observed {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        match self.0.get() {
            Some(parts) => parts.encode(encoder),
            None => Ok(()),
        }
    }
}

/// A lock whose holder cannot leave it half-changed (each change is one insert or remove).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
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
        metrics.delivery_latency("realtime").observe(0.003);
        metrics.delivery_latency("batch").observe(40.0);
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
