//! The result topics: every settled delivery's result, and every invalid recipient, published
//! as JSON for the applications that sent the requests.
//!
//! - The results topic (`kafka.results_topic`) gets one [`ResultRecord`] per settled outcome,
//!   keyed by the delivery's idempotency key: `delivered`, `rejected`, `invalid_recipient`,
//!   `failed` (given up and dead-lettered), and `retry` for each retry scheduled.
//! - The invalidations topic (`kafka.invalidations_topic`) gets one [`Invalidation`] per
//!   `invalid-recipient`, keyed by the recipient, so applications can drop dead tokens and
//!   numbers.
//!
//! Results are informational: at least once, and never at the cost of a delivery. They go
//! through a producer of their own, so a full or failing results queue never delays the retry
//! and DLQ writes that deliveries wait on. [`ResultsPublisher`] only enqueues: it never waits for
//! Kafka, and what cannot be enqueued or is not acknowledged is counted as failed and dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::producer::{BaseRecord, Producer as _, ProducerContext};
use rdkafka::{ClientConfig, ClientContext};
use serde::{Deserialize, Serialize};

use crate::kafka::PolledProducer;
use crate::telemetry::Counters;

/// What became of a delivery, as the results topic names it (the send history's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResultOutcome {
    /// The vendor accepted it.
    Delivered,
    /// The vendor refused it for good: dead-lettered, or sent on to the fallback channel.
    Rejected,
    /// The recipient no longer exists at the vendor.
    InvalidRecipient,
    /// Given up (attempts exhausted, expired, a plugin fault that never cleared): dead-lettered.
    Failed,
    /// Another try is scheduled on the retry topic.
    Retry,
}

impl ResultOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ResultOutcome::Delivered => "delivered",
            ResultOutcome::Rejected => "rejected",
            ResultOutcome::InvalidRecipient => "invalid_recipient",
            ResultOutcome::Failed => "failed",
            ResultOutcome::Retry => "retry",
        }
    }
}

/// One settled outcome on the results topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultRecord {
    /// The delivery's idempotency key (also the record's Kafka key).
    pub key: String,
    pub channel: String,
    /// The plugin (vendor) that made the attempt.
    pub vendor: String,
    /// The version the plugin gives in `describe`.
    pub plugin_version: String,
    pub outcome: ResultOutcome,
    /// The attempt this outcome answers, 1 for the first.
    pub attempt: u32,
    /// When the outcome was settled (ms since the Unix epoch).
    pub at_ms: u64,
    /// How long the plugin call that produced it took.
    pub latency_ms: u64,
    /// The vendor's message id, for `delivered`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_message_id: Option<String>,
    /// The vendor's code for `rejected`; the DLQ reason class (`expired`, `attempts-exhausted`,
    /// `plugin-fault`) for `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The plugin's reason, for every outcome but `delivered`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Where a `rejected` or `invalid_recipient` delivery was sent on, when its channel has a
    /// fallback: the fallback channel and the fallback delivery's own key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_channel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_key: Option<String>,
}

/// One invalid recipient on the invalidations topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invalidation {
    /// The token or number (also the record's Kafka key).
    pub recipient: String,
    pub channel: String,
    pub vendor: String,
    /// The key of the delivery that found it invalid.
    pub key: String,
    pub reason: String,
    /// When the host settled it (ms since the Unix epoch).
    pub at_ms: u64,
    /// Since when the vendor says the recipient is invalid (ms since the epoch), when the plugin's
    /// reason says so: see [`invalid_since_ms`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_since_ms: Option<u64>,
}

/// The time an `invalid-recipient` reason names as the moment the recipient stopped being valid:
/// a reason ending in `(no longer valid since {ms} ms after the epoch)`, as the APNs plugin
/// writes for a 410 with a timestamp. docs/PLUGINS.md describes the convention.
pub fn invalid_since_ms(reason: &str) -> Option<u64> {
    const START: &str = "(no longer valid since ";
    const END: &str = " ms after the epoch)";
    let head = reason.trim_end().strip_suffix(END)?;
    let at = head.rfind(START)?;
    let digits = &head[at + START.len()..];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Which result topic a record went to, as the producer's delivery opaque.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Results = 0,
    Invalidations = 1,
}

/// Counts what the result topics acknowledged and what they did not.
struct ResultsContext {
    counters: Arc<Counters>,
}

impl ResultsContext {
    fn counts(&self, stream: Stream) -> (&AtomicU64, &AtomicU64) {
        let c = &self.counters;
        match stream {
            Stream::Results => (&c.results_published, &c.results_failed),
            Stream::Invalidations => (&c.invalidations_published, &c.invalidations_failed),
        }
    }

    fn failed(&self, stream: Stream, topic: &str, error: &dyn std::fmt::Display) {
        let (_, failed) = self.counts(stream);
        let n = failed.fetch_add(1, Ordering::Relaxed) + 1;
        // A broker outage fails every result: log the 1st, 2nd, 4th, 8th... not each one.
        if n.is_power_of_two() {
            tracing::warn!(
                event = "result_publish_failed",
                topic,
                failed_so_far = n,
                error = %error,
                "a result was not published (results are informational; the delivery is unaffected)"
            );
        }
    }
}

impl ClientContext for ResultsContext {}

impl ProducerContext for ResultsContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, opaque: usize) {
        let stream = match opaque {
            0 => Stream::Results,
            _ => Stream::Invalidations,
        };
        match result {
            Ok(_) => {
                self.counts(stream).0.fetch_add(1, Ordering::Relaxed);
            }
            Err((error, message)) => {
                use rdkafka::message::Message as _;
                self.failed(stream, message.topic(), error);
            }
        }
    }
}

/// The producer of the result topics. Enqueues and returns: librdkafka's own thread sends, and
/// the delivery callback counts.
pub struct ResultsPublisher {
    producer: PolledProducer<ResultsContext>,
    results_topic: Option<String>,
    invalidations_topic: Option<String>,
}

/// What librdkafka may hold for the result topics, in KiB: past it, results are dropped
/// (counted as failed) rather than grow the host's memory during a broker outage.
const QUEUE_KBYTES: &str = "65536";

/// Bytes reserved for one record's JSON: a `delivered` record with a vendor message id is
/// about 250.
const RECORD_CAPACITY: usize = 384;

impl ResultsPublisher {
    /// A producer to `brokers` for the topics that are not empty; `None` when both are.
    pub fn connect(
        brokers: &str,
        results_topic: &str,
        invalidations_topic: &str,
        properties: &std::collections::BTreeMap<String, String>,
        counters: Arc<Counters>,
    ) -> anyhow::Result<Option<Self>> {
        let named = |t: &str| (!t.is_empty()).then(|| t.to_string());
        let (results_topic, invalidations_topic) =
            (named(results_topic), named(invalidations_topic));
        if results_topic.is_none() && invalidations_topic.is_none() {
            return Ok(None);
        }
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("linger.ms", "20")
            .set("queue.buffering.max.kbytes", QUEUE_KBYTES);
        for (k, v) in properties {
            config.set(k, v);
        }
        let producer = PolledProducer::create(&config, ResultsContext { counters }, "results-poll")
            .with_context(|| format!("creating the results producer for {brokers}"))?;
        Ok(Some(Self {
            producer,
            results_topic,
            invalidations_topic,
        }))
    }

    /// True when results are published.
    pub fn publishes_results(&self) -> bool {
        self.results_topic.is_some()
    }

    /// True when invalid recipients are published.
    pub fn publishes_invalidations(&self) -> bool {
        self.invalidations_topic.is_some()
    }

    /// Enqueues `record` for the results topic, if it is on.
    pub fn result(&self, record: &ResultRecord) {
        if let Some(topic) = &self.results_topic {
            self.enqueue(Stream::Results, topic, &record.key, record);
        }
    }

    /// Enqueues `record` for the invalidations topic, if it is on.
    pub fn invalidation(&self, record: &Invalidation) {
        if let Some(topic) = &self.invalidations_topic {
            self.enqueue(Stream::Invalidations, topic, &record.recipient, record);
        }
    }

    fn enqueue(&self, stream: Stream, topic: &str, key: &str, record: &impl Serialize) {
        // Sized for a whole record: `to_vec` starts at 128 bytes and grows for most of them.
        let mut payload = Vec::with_capacity(RECORD_CAPACITY);
        if let Err(error) = serde_json::to_writer(&mut payload, record) {
            self.producer.context().failed(stream, topic, &error);
            return;
        }
        let message = BaseRecord::with_opaque_to(topic, stream as usize)
            .key(key)
            .payload(&payload);
        if let Err((error, _)) = self.producer.send(message) {
            self.producer.context().failed(stream, topic, &error);
        }
    }

    /// Waits up to `timeout` for what is queued to be acknowledged (at shutdown: dropping the
    /// producer discards what is still queued).
    pub fn flush(&self, timeout: Duration) {
        if let Err(error) = self.producer.flush(timeout) {
            tracing::warn!(%error, "results still queued at shutdown were not all published");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_apns_suffix_gives_the_time_the_token_died() {
        // What the APNs plugin writes for a 410 with a timestamp.
        let reason = "Unregistered (no longer valid since 1767225600123 ms after the epoch)";
        assert_eq!(invalid_since_ms(reason), Some(1_767_225_600_123));
        assert_eq!(
            invalid_since_ms("ExpiredToken (no longer valid since 5 ms after the epoch)\n"),
            Some(5)
        );
        // Without the suffix, or with something else in its place: no time.
        for reason in [
            "Unregistered",
            "UNREGISTERED",
            "",
            "(no longer valid since  ms after the epoch)",
            "(no longer valid since -5 ms after the epoch)",
            "(no longer valid since 12x ms after the epoch)",
            "(no longer valid since 99999999999999999999999 ms after the epoch)",
            "(no longer valid since 12 ms after the epoch) and more",
            "no longer valid since 12 ms after the epoch)",
        ] {
            assert_eq!(invalid_since_ms(reason), None, "{reason:?}");
        }
    }

    #[test]
    fn a_result_has_the_documented_shape() -> anyhow::Result<()> {
        let delivered = ResultRecord {
            key: "req-1/0".into(),
            channel: "push-android".into(),
            vendor: "fcm".into(),
            plugin_version: "1.2.0".into(),
            outcome: ResultOutcome::Delivered,
            attempt: 1,
            at_ms: 1000,
            latency_ms: 12,
            vendor_message_id: Some("projects/p/messages/9".into()),
            code: None,
            reason: None,
            fallback_channel: None,
            fallback_key: None,
        };
        assert_eq!(
            serde_json::to_value(&delivered)?,
            json!({
                "key": "req-1/0", "channel": "push-android", "vendor": "fcm",
                "plugin_version": "1.2.0", "outcome": "delivered", "attempt": 1,
                "at_ms": 1000, "latency_ms": 12, "vendor_message_id": "projects/p/messages/9",
            })
        );
        let rejected = ResultRecord {
            outcome: ResultOutcome::Rejected,
            vendor_message_id: None,
            code: Some("-2019".into()),
            reason: Some("not a KakaoTalk user".into()),
            fallback_channel: Some("sms".into()),
            fallback_key: Some("req-1/0~sms".into()),
            ..delivered.clone()
        };
        let value = serde_json::to_value(&rejected)?;
        assert_eq!(value["outcome"], "rejected");
        assert_eq!(value["code"], "-2019");
        assert_eq!(value["fallback_key"], "req-1/0~sms");
        assert!(value.get("vendor_message_id").is_none());
        for (outcome, name) in [
            (ResultOutcome::InvalidRecipient, "invalid_recipient"),
            (ResultOutcome::Failed, "failed"),
            (ResultOutcome::Retry, "retry"),
        ] {
            assert_eq!(serde_json::to_value(outcome)?, json!(name));
            assert_eq!(outcome.as_str(), name);
        }
        let back: ResultRecord = serde_json::from_value(value)?;
        assert_eq!(back, rejected);
        Ok(())
    }

    #[test]
    fn an_invalidation_has_the_documented_shape() -> anyhow::Result<()> {
        let record = Invalidation {
            recipient: "token-1".into(),
            channel: "push-ios".into(),
            vendor: "apns".into(),
            key: "req-2/3".into(),
            reason: "Unregistered (no longer valid since 77 ms after the epoch)".into(),
            at_ms: 2000,
            invalid_since_ms: Some(77),
        };
        assert_eq!(
            serde_json::to_value(&record)?,
            json!({
                "recipient": "token-1", "channel": "push-ios", "vendor": "apns",
                "key": "req-2/3",
                "reason": "Unregistered (no longer valid since 77 ms after the epoch)",
                "at_ms": 2000, "invalid_since_ms": 77,
            })
        );
        let without = Invalidation {
            invalid_since_ms: None,
            ..record
        };
        assert!(
            serde_json::to_value(&without)?
                .get("invalid_since_ms")
                .is_none()
        );
        Ok(())
    }
}
