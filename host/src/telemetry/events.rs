//! One struct per observable happening. Each `emit` writes the log line with the same fields
//! every time, so operators can alert on them. Secret values never appear in any field.

use std::time::Duration;

/// A record that will not be delivered: undecodable, expired, or for an unknown channel.
pub struct RecordRefused<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub reason: &'a dyn std::fmt::Display,
}

impl RecordRefused<'_> {
    pub fn emit(self) {
        tracing::warn!(
            event = "record_refused",
            topic = self.topic,
            partition = self.partition,
            offset = self.offset,
            reason = %self.reason,
            "record skipped"
        );
    }
}

/// Reading from Kafka failed; the consumer keeps going.
pub struct ConsumeFailed<'a> {
    pub error: &'a rdkafka::error::KafkaError,
}

impl ConsumeFailed<'_> {
    pub fn emit(self) {
        tracing::warn!(event = "consume_failed", error = %self.error, "kafka consume error");
    }
}

/// Storing a partition's watermark failed (usually: the partition was just revoked).
pub struct OffsetStoreFailed<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub error: &'a rdkafka::error::KafkaError,
}

impl OffsetStoreFailed<'_> {
    pub fn emit(self) {
        tracing::debug!(
            event = "offset_store_failed",
            topic = self.topic,
            partition = self.partition,
            offset = self.offset,
            error = %self.error,
            "offset not stored"
        );
    }
}

/// A write to the retry topic or the DLQ was refused for good (too large, no such topic, not
/// authorised): it is not tried again, and the record it belongs to stays unfinished.
pub struct OutboxWriteRefused<'a> {
    pub topic: &'a str,
    pub bytes: usize,
    pub error: &'a rdkafka::error::KafkaError,
}

impl OutboxWriteRefused<'_> {
    pub fn emit(self) {
        tracing::error!(
            event = "outbox_write_refused",
            topic = self.topic,
            bytes = self.bytes,
            error = %self.error,
            "write refused for good; not retried"
        );
    }
}

/// A DLQ record was stored with only a prefix of its value: the whole value did not fit.
pub struct DeadLetterTruncated<'a> {
    pub topic: &'a str,
    /// Where the whole record is: its topic, partition and offset.
    pub origin: (&'a str, i32, i64),
    pub original_bytes: usize,
}

impl DeadLetterTruncated<'_> {
    pub fn emit(self) {
        tracing::warn!(
            event = "dead_letter_truncated",
            topic = self.topic,
            origin_topic = self.origin.0,
            origin_partition = self.origin.1,
            origin_offset = self.origin.2,
            original_bytes = self.original_bytes,
            "DLQ record stored truncated; the whole record is at its origin"
        );
    }
}

/// A record's delivery could not be made durable anywhere (the retry topic and the DLQ both
/// refused it): the record stays unfinished, so its offset is not committed past it.
pub struct DeliveryUnsettled<'a> {
    pub key: &'a str,
    pub error: &'a dyn std::fmt::Display,
}

impl DeliveryUnsettled<'_> {
    pub fn emit(self) {
        tracing::error!(
            event = "delivery_unsettled",
            key = self.key,
            error = %self.error,
            "delivery left unfinished: its record is read again after a restart or rebalance"
        );
    }
}

/// A plugin call produced no outcomes (trap, deadline, init failure).
pub struct PluginCallFailed<'a> {
    pub plugin: &'a str,
    pub version: &'a str,
    pub batch: usize,
    pub elapsed: Duration,
    pub error: &'a dyn std::fmt::Display,
}

impl PluginCallFailed<'_> {
    pub fn emit(self) {
        tracing::warn!(
            event = "plugin_call_failed",
            plugin = self.plugin,
            version = self.version,
            batch = self.batch,
            elapsed_ms = self.elapsed.as_millis() as u64,
            error = %self.error,
            "plugin call failed; deliveries will be retried"
        );
    }
}

/// The vendor refused a delivery for good.
pub struct DeliveryRejected<'a> {
    pub key: &'a str,
    pub plugin: &'a str,
    pub code: &'a str,
    pub reason: &'a str,
}

impl DeliveryRejected<'_> {
    pub fn emit(self) {
        tracing::info!(
            event = "delivery_rejected",
            key = self.key,
            plugin = self.plugin,
            code = self.code,
            reason = self.reason,
            "delivery rejected"
        );
    }
}

/// The vendor no longer knows the recipient.
pub struct RecipientInvalid<'a> {
    pub key: &'a str,
    pub plugin: &'a str,
    pub reason: &'a str,
}

impl RecipientInvalid<'_> {
    pub fn emit(self) {
        tracing::info!(
            event = "recipient_invalid",
            key = self.key,
            plugin = self.plugin,
            reason = self.reason,
            "recipient invalid"
        );
    }
}

/// A delivery will not be tried again: it goes to the DLQ.
pub struct DeliveryGivenUp<'a> {
    pub key: &'a str,
    pub attempts: u32,
    pub reason: &'a str,
    /// The DLQ reason class.
    pub class: &'a str,
}

impl DeliveryGivenUp<'_> {
    pub fn emit(self) {
        tracing::warn!(
            event = "delivery_given_up",
            key = self.key,
            attempts = self.attempts,
            class = self.class,
            reason = self.reason,
            "delivery given up; dead-lettered"
        );
    }
}

/// The dedup store did not answer a lookup or a mark.
pub struct DedupFailed<'a> {
    pub error: &'a dyn std::fmt::Display,
}

impl DedupFailed<'_> {
    pub fn emit(self) {
        tracing::error!(event = "dedup_failed", error = %self.error, "dedup store failed");
    }
}

/// A lane went over its budget: one of its partitions is paused until the lane drains to its
/// low-water mark.
pub struct LanePaused<'a> {
    pub lane: &'a str,
    pub topic: &'a str,
    pub partition: i32,
    pub used_bytes: usize,
}

impl LanePaused<'_> {
    pub fn emit(self) {
        tracing::debug!(
            event = "lane_paused",
            lane = self.lane,
            topic = self.topic,
            partition = self.partition,
            used_bytes = self.used_bytes,
            "lane over budget: partition paused"
        );
    }
}

/// A vendor's breaker opened: its errors and timeouts passed the threshold, and it gets no new
/// deliveries until probes restore it.
pub struct VendorEjected<'a> {
    pub vendor: &'a str,
    pub error_percent: f64,
    pub deliveries: u64,
    pub open_for: Duration,
}

impl VendorEjected<'_> {
    pub fn emit(self) {
        tracing::warn!(
            event = "vendor_ejected",
            vendor = self.vendor,
            error_percent = self.error_percent,
            deliveries = self.deliveries,
            open_for_ms = self.open_for.as_millis() as u64,
            "vendor ejected: its share goes to the other vendors of its channels"
        );
    }
}

/// An ejected vendor's wait is over: a few deliveries probe it.
pub struct VendorProbing<'a> {
    pub vendor: &'a str,
}

impl VendorProbing<'_> {
    pub fn emit(self) {
        tracing::info!(
            event = "vendor_probing",
            vendor = self.vendor,
            "probing an ejected vendor"
        );
    }
}

/// A probe failed: the vendor stays ejected, for longer.
pub struct VendorProbeFailed<'a> {
    pub vendor: &'a str,
    pub open_for: Duration,
}

impl VendorProbeFailed<'_> {
    pub fn emit(self) {
        tracing::warn!(
            event = "vendor_probe_failed",
            vendor = self.vendor,
            open_for_ms = self.open_for.as_millis() as u64,
            "probe failed: vendor stays ejected"
        );
    }
}

/// Probes succeeded: the vendor takes its share again.
pub struct VendorRestored<'a> {
    pub vendor: &'a str,
}

impl VendorRestored<'_> {
    pub fn emit(self) {
        tracing::info!(
            event = "vendor_restored",
            vendor = self.vendor,
            "vendor restored"
        );
    }
}

/// An operator changed a channel's weights.
pub struct WeightsChanged<'a> {
    pub channel: &'a str,
    pub weights: &'a std::collections::BTreeMap<String, u32>,
}

impl WeightsChanged<'_> {
    pub fn emit(self) {
        tracing::info!(
            event = "weights_changed",
            channel = self.channel,
            weights = ?self.weights,
            "channel weights changed"
        );
    }
}

/// A plugin version became active (uploaded, dropped in the watched directory, rolled back to,
/// or restored at start).
pub struct PluginActivated<'a> {
    pub plugin: &'a str,
    pub version: &'a str,
    pub id: &'a str,
    pub previous_id: &'a str,
    pub source: &'a str,
}

impl PluginActivated<'_> {
    pub fn emit(self) {
        tracing::info!(
            event = "plugin_activated",
            plugin = self.plugin,
            version = self.version,
            id = self.id,
            previous_id = self.previous_id,
            source = self.source,
            "plugin version activated"
        );
    }
}

/// A plugin version was loaded through the admin API without being activated.
pub struct PluginStaged<'a> {
    pub plugin: &'a str,
    pub version: &'a str,
    pub id: &'a str,
}

impl PluginStaged<'_> {
    pub fn emit(self) {
        tracing::info!(
            event = "plugin_staged",
            plugin = self.plugin,
            version = self.version,
            id = self.id,
            "plugin version staged; the active version stays"
        );
    }
}

/// The admin API refused a mutation: no or a wrong token, a body over its limit, or a change
/// the router or the registry refused. Never carries the token.
pub struct AdminRequestRefused<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub reason: &'a str,
}

impl AdminRequestRefused<'_> {
    pub fn emit(self) {
        tracing::warn!(
            event = "admin_request_refused",
            method = self.method,
            path = self.path,
            status = self.status,
            reason = self.reason,
            "admin request refused"
        );
    }
}

/// A new plugin version was refused; the active one stays.
pub struct PluginRefused<'a> {
    pub plugin: &'a str,
    pub source: &'a str,
    pub reason: &'a dyn std::fmt::Display,
}

impl PluginRefused<'_> {
    pub fn emit(self) {
        tracing::warn!(
            event = "plugin_refused",
            plugin = self.plugin,
            source = self.source,
            reason = %self.reason,
            "plugin version refused; the active version stays"
        );
    }
}

/// A canary version started taking a share of a plugin's calls.
pub struct CanaryStarted<'a> {
    pub plugin: &'a str,
    pub id: &'a str,
    pub percent: u8,
}

impl CanaryStarted<'_> {
    pub fn emit(self) {
        tracing::info!(
            event = "canary_started",
            plugin = self.plugin,
            id = self.id,
            percent = self.percent,
            "canary started"
        );
    }
}

/// A canary ended: rolled back (by an operator or automatically) or promoted.
pub struct CanaryEnded<'a> {
    pub plugin: &'a str,
    pub id: &'a str,
    pub how: &'a str,
    pub reason: &'a str,
}

impl CanaryEnded<'_> {
    pub fn emit(self) {
        tracing::warn!(
            event = "canary_ended",
            plugin = self.plugin,
            id = self.id,
            how = self.how,
            reason = self.reason,
            "canary ended"
        );
    }
}

/// A precompiled plugin artifact was refused: its tag was missing or did not verify under this
/// host's key, it could not be read, or wasmtime refused it. It was deleted, and the component
/// is compiled again.
pub struct ArtifactRejected<'a> {
    pub plugin: &'a str,
    pub path: &'a std::path::Path,
    pub reason: &'a str,
}

impl ArtifactRejected<'_> {
    pub fn emit(self) {
        tracing::warn!(
            event = "artifact_rejected",
            plugin = self.plugin,
            path = %self.path.display(),
            reason = self.reason,
            "precompiled artifact rejected; compiling the component again"
        );
    }
}

/// A delivery that failed permanently was re-sent on its fallback channel.
pub struct DeliveryFellBack<'a> {
    pub key: &'a str,
    pub from: &'a str,
    pub to: &'a str,
    pub reason: &'a str,
}

impl DeliveryFellBack<'_> {
    pub fn emit(self) {
        tracing::info!(
            event = "delivery_fell_back",
            key = self.key,
            from = self.from,
            to = self.to,
            reason = self.reason,
            "delivery re-sent on its fallback channel"
        );
    }
}

/// A compiled plugin could not be written to the artifact cache. The plugin loaded; its next
/// load compiles again.
pub struct ArtifactWriteFailed<'a> {
    pub plugin: &'a str,
    pub path: &'a std::path::Path,
    pub error: &'a anyhow::Error,
}

impl ArtifactWriteFailed<'_> {
    pub fn emit(self) {
        tracing::warn!(
            event = "artifact_write_failed",
            plugin = self.plugin,
            path = %self.path.display(),
            error = %format!("{:#}", self.error),
            "could not write the precompiled artifact"
        );
    }
}

/// The artifact cache is configured but cannot be used (usually its key file); every plugin
/// load compiles.
pub struct ArtifactCacheUnavailable<'a> {
    pub dir: &'a std::path::Path,
    pub key_file: &'a std::path::Path,
    pub error: &'a anyhow::Error,
}

impl ArtifactCacheUnavailable<'_> {
    pub fn emit(self) {
        tracing::warn!(
            event = "artifact_cache_unavailable",
            dir = %self.dir.display(),
            key_file = %self.key_file.display(),
            error = %format!("{:#}", self.error),
            "artifact cache off: every plugin load compiles"
        );
    }
}

/// A dependency stopped answering: a call to it was refused, lost its connection, or passed its
/// timeout. What needs it waits (with it, consumption) until a probe reaches it again. Logged
/// once per outage.
pub struct DependencyDown<'a> {
    /// `redis`: the Redis dedup store.
    pub dependency: &'a str,
    pub error: &'a dyn std::fmt::Display,
}

impl DependencyDown<'_> {
    pub fn emit(self) {
        tracing::error!(
            event = "dependency_down",
            dependency = self.dependency,
            error = %self.error,
            "dependency unavailable: delivery waits for it"
        );
    }
}

/// A dependency that was down answered a probe: what waited for it goes on.
pub struct DependencyRestored<'a> {
    pub dependency: &'a str,
    /// From the first unanswered call to the probe that answered.
    pub down_for: Duration,
}

impl DependencyRestored<'_> {
    pub fn emit(self) {
        tracing::info!(
            event = "dependency_restored",
            dependency = self.dependency,
            down_for_ms = self.down_for.as_millis() as u64,
            "dependency restored: delivery resumes"
        );
    }
}

/// A record of the fleet's control topic could not be applied on this host: its state stays as
/// it was for that lever, and the refusal is reported to the fleet.
pub struct ControlRefused<'a> {
    pub offset: i64,
    pub key: &'a str,
    pub reason: &'a str,
}

impl ControlRefused<'_> {
    pub fn emit(self) {
        tracing::error!(
            event = "control_refused",
            offset = self.offset,
            key = self.key,
            reason = self.reason,
            "a fleet change could not be applied on this host"
        );
    }
}

/// A starting host read the fleet's control topic to its end and applied it.
pub struct ControlConverged {
    pub records: i64,
    pub elapsed_ms: u64,
}

impl ControlConverged {
    pub fn emit(self) {
        tracing::info!(
            event = "control_converged",
            records = self.records,
            elapsed_ms = self.elapsed_ms,
            "applied the fleet's desired state"
        );
    }
}
