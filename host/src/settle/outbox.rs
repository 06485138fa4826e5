//! The outbox: the retry topic and the dead-letter queue (DLQ), written through one idempotent
//! producer, and the result topics on a producer of their own.
//!
//! A `retry` outcome is written to the retry topic as one [`RetryRecord`], with the time it is
//! due. The retry consumer delivers it again once that time comes. Deliveries that cannot be
//! delivered go to the DLQ with reason headers: rejected outcomes, exhausted or expired retries,
//! plugin faults that never cleared, and records that are not a usable request.
//!
//! The source record's offset may advance only after the write is acknowledged: the caller
//! awaits [`Outbox::retry`] or [`Outbox::dead_letter`] before it finishes the delivery. Neither
//! call gives up, so a Kafka outage holds offsets back instead of dropping deliveries.
//!
//! The result topics ([`super::results`]) are never awaited: results are informational and
//! must not hold a delivery back.

use std::sync::Arc;
use std::sync::atomic::Ordering as AtomicOrdering;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use serde::{Deserialize, Serialize};

use crate::clock::now_ms;
use crate::contract::{Priority, SharedDelivery};
use crate::kafka::AwaitedProducer;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::{Counters, events};

/// Header names on retry and DLQ records.
pub mod headers {
    pub const ORIGIN_TOPIC: &str = "sb-origin-topic";
    pub const ORIGIN_PARTITION: &str = "sb-origin-partition";
    pub const ORIGIN_OFFSET: &str = "sb-origin-offset";
    pub const REASON_CLASS: &str = "sb-reason-class";
    pub const REASON: &str = "sb-reason";
    pub const VENDOR_CODE: &str = "sb-vendor-code";
    pub const PLUGIN: &str = "sb-plugin";
    pub const PLUGIN_VERSION: &str = "sb-plugin-version";
    pub const ATTEMPTS: &str = "sb-attempts";
    pub const FIRST_SEEN: &str = "sb-first-seen-ms";
    pub const DEAD_AT: &str = "sb-dead-at-ms";
    /// Present when the DLQ record holds only a prefix of the original value.
    pub const TRUNCATED: &str = "sb-truncated";
    /// The original value's size in bytes, on a truncated DLQ record.
    pub const ORIGINAL_BYTES: &str = "sb-original-bytes";
    /// The SHA-256 (hex) of the original value, on a truncated DLQ record.
    pub const ORIGINAL_SHA256: &str = "sb-original-sha256";
}

/// Why a delivery or record ended up in the DLQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ReasonClass {
    /// The vendor refused the delivery for good.
    Rejected,
    /// `give_up_after` passed, or the request's `expires_at`.
    Expired,
    /// `retry_max_attempts` tries all asked for a retry.
    AttemptsExhausted,
    /// The plugin trapped, timed out or failed `init` on every try.
    PluginFault,
    /// The record is not a usable request.
    Undecodable,
    /// The request names a channel no plugin serves.
    UnknownChannel,
}

impl ReasonClass {
    /// Every class, in the order the metrics list them.
    pub const ALL: [ReasonClass; 6] = [
        ReasonClass::Rejected,
        ReasonClass::Expired,
        ReasonClass::AttemptsExhausted,
        ReasonClass::PluginFault,
        ReasonClass::Undecodable,
        ReasonClass::UnknownChannel,
    ];

    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            ReasonClass::Rejected => "rejected",
            ReasonClass::Expired => "expired",
            ReasonClass::AttemptsExhausted => "attempts-exhausted",
            ReasonClass::PluginFault => "plugin-fault",
            ReasonClass::Undecodable => "undecodable",
            ReasonClass::UnknownChannel => "unknown-channel",
        }
    }
}

/// Where a delivery's request was first read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// One delivery waiting for another try (the retry topic), or dead-lettered (the DLQ). It keeps
/// the idempotency key, so the dedup store recognises it wherever it goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryRecord {
    pub key: String,
    pub channel: String,
    pub recipient: String,
    /// The channel content as JSON text.
    pub content: String,
    pub priority: WirePriority,
    /// The attempt this record will be, when delivered.
    pub attempt: u32,
    /// Not to be delivered before this (ms since the Unix epoch).
    pub due_at_ms: u64,
    /// When the request was first seen.
    pub first_seen_ms: u64,
    pub origin: Origin,
    /// Why the last try did not deliver.
    pub last_reason: String,
    /// Whether the last failure was a plugin fault rather than a vendor's answer.
    #[serde(default)]
    pub last_was_plugin_fault: bool,
    /// Sent back from the DLQ by an operator: skipped only if delivered, not if dead-lettered.
    #[serde(default)]
    pub replayed: bool,
    /// Where the last try went, so the next one can fail over (or stay, after a timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<crate::route::RouteHint>,
    /// When the record's retry tier lets it go (ms since the Unix epoch): then it is delivered
    /// if due, or written to the tier its remaining wait fits. Absent in the base retry topic
    /// (and in records written before tiers existed): the record waits for `due_at_ms` there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hop_due_ms: Option<u64>,
}

/// `Priority` as it is written in records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WirePriority {
    Realtime,
    Batch,
    Ads,
}

impl From<Priority> for WirePriority {
    fn from(p: Priority) -> Self {
        match p {
            Priority::Realtime => WirePriority::Realtime,
            Priority::Batch => WirePriority::Batch,
            Priority::Ads => WirePriority::Ads,
        }
    }
}

impl From<WirePriority> for Priority {
    fn from(p: WirePriority) -> Self {
        match p {
            WirePriority::Realtime => Priority::Realtime,
            WirePriority::Batch => Priority::Batch,
            WirePriority::Ads => Priority::Ads,
        }
    }
}

impl RetryRecord {
    /// The delivery this record stands for.
    pub fn delivery(&self) -> SharedDelivery {
        SharedDelivery {
            key: self.key.clone(),
            recipient: self.recipient.clone(),
            content: self.content.as_str().into(),
            priority: self.priority.into(),
            attempt: self.attempt,
        }
    }
}

/// What goes into a DLQ record's headers besides the origin.
#[derive(Debug, Clone)]
pub struct DeadLetterReason<'a> {
    pub class: ReasonClass,
    pub reason: &'a str,
    pub vendor_code: Option<&'a str>,
    pub plugin: Option<(&'a str, &'a str)>,
    pub attempts: u32,
    pub first_seen_ms: u64,
}

/// The name of the retry/DLQ producer's polling thread.
const OUTBOX_THREAD: &str = "outbox-poll";

/// The producer of retry and DLQ records, and of the result topics when they are on.
pub struct Outbox {
    /// Replaced after a fatal error of the idempotent producer.
    producer: std::sync::Mutex<AwaitedProducer>,
    /// What a replacement producer is created from.
    config: ClientConfig,
    retry_topic: String,
    /// The retry topics with their fixed delays in milliseconds, rising; the first is
    /// `retry_topic` with 0.
    retry_tiers: Vec<(String, u64)>,
    dlq_topic: String,
    results: Option<super::results::ResultsPublisher>,
    /// Turns true at shutdown: writes still retrying give up.
    abandon: tokio::sync::watch::Sender<bool>,
    /// Where truncated and refused writes are counted.
    counters: Arc<Counters>,
    /// Where dead letters are counted by reason class.
    metrics: Option<Arc<Metrics>>,
}

impl Outbox {
    /// An idempotent producer to `brokers`.
    pub fn connect(
        brokers: &str,
        retry_topic: &str,
        dlq_topic: &str,
        properties: &std::collections::BTreeMap<String, String>,
    ) -> anyhow::Result<Self> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            // Idempotence: a retried produce never writes a record twice.
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5");
        for (k, v) in properties {
            config.set(k, v);
        }
        let producer = AwaitedProducer::create(&config, OUTBOX_THREAD)
            .with_context(|| format!("creating the retry/DLQ producer for {brokers}"))?;
        Ok(Self {
            producer: std::sync::Mutex::new(producer),
            config,
            retry_topic: retry_topic.to_string(),
            retry_tiers: vec![(retry_topic.to_string(), 0)],
            dlq_topic: dlq_topic.to_string(),
            results: None,
            abandon: tokio::sync::watch::channel(false).0,
            counters: Arc::default(),
            metrics: None,
        })
    }

    /// Writes retries to `tiers` (topic and fixed delay in milliseconds, as
    /// [`crate::config::KafkaConfig::retry_topics`] gives them) from now on.
    pub fn with_retry_tiers(mut self, mut tiers: Vec<(String, u64)>) -> Self {
        tiers.sort_by_key(|(_, delay)| *delay);
        if tiers.first().is_some_and(|(_, delay)| *delay == 0) {
            self.retry_tiers = tiers;
        }
        self
    }

    /// Where a retry due at `due_at_ms` waits, seen at `now`: the tier of the longest delay
    /// that does not pass its due time, and when that tier lets it go (`None` in the base
    /// topic, which holds it until it is due).
    pub fn retry_hop(&self, due_at_ms: u64, now: u64) -> (&str, Option<u64>) {
        let remaining = due_at_ms.saturating_sub(now);
        match self
            .retry_tiers
            .iter()
            .rev()
            .find(|(_, delay)| *delay > 0 && *delay <= remaining)
        {
            Some((topic, delay)) => (topic, Some(now + delay)),
            None => (&self.retry_tiers[0].0, None),
        }
    }

    /// Counts truncated and refused writes in `counters` from now on.
    pub fn with_counters(mut self, counters: Arc<Counters>) -> Self {
        self.counters = counters;
        self
    }

    /// Counts dead letters by reason class in `metrics` from now on; every class shows from the
    /// start, at 0, so an alert on one has a series to watch.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        metrics.declare_dead_letter_reasons(ReasonClass::ALL.map(ReasonClass::as_str));
        self.metrics = Some(metrics);
        self
    }

    /// Publishes settled results through `results` from now on (`None` keeps them off).
    pub fn with_results(mut self, results: Option<super::results::ResultsPublisher>) -> Self {
        self.results = results;
        self
    }

    /// Enqueues a settled result, made only when the results topic is on. Never waits.
    pub fn publish_result(&self, make: impl FnOnce() -> super::results::ResultRecord) {
        if let Some(results) = self.results.as_ref().filter(|r| r.publishes_results()) {
            results.result(&make());
        }
    }

    /// Enqueues an invalid recipient, made only when the invalidations topic is on. Never waits.
    pub fn publish_invalidation(&self, make: impl FnOnce() -> super::results::Invalidation) {
        if let Some(results) = self
            .results
            .as_ref()
            .filter(|r| r.publishes_invalidations())
        {
            results.invalidation(&make());
        }
    }

    /// Waits up to `timeout` for queued results to be acknowledged; for shutdown. Blocks.
    pub fn flush_results(&self, timeout: Duration) {
        if let Some(results) = &self.results {
            results.flush(timeout);
        }
    }

    /// The retry topic's name.
    pub fn retry_topic(&self) -> &str {
        &self.retry_topic
    }

    /// The DLQ's name.
    pub fn dlq_topic(&self) -> &str {
        &self.dlq_topic
    }
}

impl Outbox {
    /// Writes `record` to the retry tier its wait fits (or the base retry topic), setting its
    /// `hop_due_ms` for that tier; returns once Kafka acknowledged it.
    pub async fn retry(&self, record: &mut RetryRecord) -> Result<(), OutboxError> {
        let (topic, hop_due_ms) = self.retry_hop(record.due_at_ms, now_ms());
        record.hop_due_ms = hop_due_ms;
        let value = serde_json::to_vec(&*record).unwrap_or_default();
        let headers = origin_headers(&record.origin)
            .insert(header(headers::ATTEMPTS, &record.attempt.to_string()))
            .insert(header(
                headers::FIRST_SEEN,
                &record.first_seen_ms.to_string(),
            ));
        self.send(topic, &record.key, &value, &headers).await
    }

    /// Writes a DLQ record; returns once Kafka acknowledged it. `value` is the delivery's
    /// [`RetryRecord`] as JSON, or the raw record for records that are not a usable request.
    ///
    /// A value the producer or the broker refuses as too large is stored truncated instead,
    /// with its original size and SHA-256 in headers beside the origin coordinates, so the
    /// whole record can still be found in its origin topic.
    pub async fn dead_letter(
        &self,
        key: &str,
        value: &[u8],
        origin: &Origin,
        why: &DeadLetterReason<'_>,
    ) -> Result<(), OutboxError> {
        let written = self.write_dead_letter(key, value, origin, why).await;
        if let (Ok(()), Some(metrics)) = (&written, &self.metrics) {
            metrics.record_dead_letter(why.class.as_str());
        }
        written
    }

    async fn write_dead_letter(
        &self,
        key: &str,
        value: &[u8],
        origin: &Origin,
        why: &DeadLetterReason<'_>,
    ) -> Result<(), OutboxError> {
        let mut headers = origin_headers(origin)
            .insert(header(headers::REASON_CLASS, why.class.as_str()))
            .insert(header(
                headers::REASON,
                &crate::text::cap(why.reason, HEADER_REASON_BYTES),
            ))
            .insert(header(headers::ATTEMPTS, &why.attempts.to_string()))
            .insert(header(headers::FIRST_SEEN, &why.first_seen_ms.to_string()))
            .insert(header(headers::DEAD_AT, &now_ms().to_string()));
        if let Some(code) = why.vendor_code {
            headers = headers.insert(header(
                headers::VENDOR_CODE,
                &crate::text::cap(code, HEADER_CODE_BYTES),
            ));
        }
        if let Some((plugin, version)) = why.plugin {
            headers = headers
                .insert(header(headers::PLUGIN, plugin))
                .insert(header(headers::PLUGIN_VERSION, version));
        }
        let key = crate::text::cap(key, MAX_KEY_BYTES);
        match self.send(&self.dlq_topic, &key, value, &headers).await {
            Err(OutboxError::Refused {
                failure: WriteFailure::TooLarge,
                ..
            }) => {}
            other => return other,
        }
        // Too large for the producer or the broker: keep a prefix that identifies it, then
        // nothing but the headers if even that is refused.
        let truncated = truncated_headers(headers, value);
        let prefix = &value[..value.len().min(TRUNCATED_VALUE_BYTES)];
        let counted = |result: Result<(), OutboxError>| {
            if result.is_ok() {
                self.counters
                    .dead_letters_truncated
                    .fetch_add(1, AtomicOrdering::Relaxed);
                events::DeadLetterTruncated {
                    topic: &self.dlq_topic,
                    origin: (&origin.topic, origin.partition, origin.offset),
                    original_bytes: value.len(),
                }
                .emit();
            }
            result
        };
        match self.send(&self.dlq_topic, &key, prefix, &truncated).await {
            Err(OutboxError::Refused {
                failure: WriteFailure::TooLarge,
                ..
            }) => counted(self.send(&self.dlq_topic, &key, &[], &truncated).await),
            other => counted(other),
        }
    }

    /// Writes a record back to `topic` as it was (a request returning from the DLQ).
    pub async fn republish(&self, topic: &str, key: &str, value: &[u8]) -> Result<(), OutboxError> {
        self.send(topic, key, value, &OwnedHeaders::new()).await
    }

    /// Ends every write still retrying a transient failure, now and from here on: shutdown
    /// after its drain, so no task outlives the host retrying a write to a cluster that is
    /// gone. What such a write carried is not lost: its record was never finished, so its
    /// offset was not committed and the next owner reads it again.
    pub fn abandon_retries(&self) {
        let _ = self.abandon.send(true);
    }

    /// Sends one record: retries transient failures with backoff, and returns at once on a
    /// permanent one, which no number of tries would change.
    async fn send(
        &self,
        topic: &str,
        key: &str,
        value: &[u8],
        headers: &OwnedHeaders,
    ) -> Result<(), OutboxError> {
        let mut pause = Duration::from_millis(100);
        let mut abandoned = self.abandon.subscribe();
        loop {
            if *abandoned.borrow_and_update() {
                return Err(OutboxError::Abandoned {
                    topic: topic.to_string(),
                });
            }
            let producer = self.producer();
            let record = FutureRecord::to(topic)
                .key(key)
                .payload(value)
                .headers(headers.clone());
            let sent = tokio::select! {
                sent = producer.send(record, Duration::from_secs(30)) => sent,
                _ = abandoned.wait_for(|a| *a) => continue,
            };
            let error = match sent {
                Ok(_) => return Ok(()),
                Err((error, _)) => error,
            };
            let failure = classify(&error);
            match failure {
                WriteFailure::Transient => {}
                WriteFailure::Fatal => {
                    // An idempotent producer that hit a fatal error refuses everything from
                    // then on: a new one picks up where it left off (the write is retried).
                    self.replace_producer();
                }
                WriteFailure::TooLarge | WriteFailure::Permanent => {
                    self.counters
                        .outbox_refused
                        .fetch_add(1, AtomicOrdering::Relaxed);
                    events::OutboxWriteRefused {
                        topic,
                        bytes: value.len(),
                        error: &error,
                    }
                    .emit();
                    return Err(OutboxError::Refused {
                        topic: topic.to_string(),
                        failure,
                        error: error.to_string(),
                    });
                }
            }
            tracing::error!(event = "outbox_write_failed", topic, error = %error, "retrying the write");
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = abandoned.wait_for(|a| *a) => {}
            }
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    fn producer(&self) -> AwaitedProducer {
        self.producer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn replace_producer(&self) {
        match AwaitedProducer::create(&self.config, OUTBOX_THREAD) {
            Ok(fresh) => {
                *self.producer.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
                tracing::warn!(
                    event = "outbox_producer_replaced",
                    "the retry/DLQ producer hit a fatal error and was replaced"
                );
            }
            Err(error) => {
                tracing::error!(event = "outbox_producer_replace_failed", error = %error, "a new retry/DLQ producer could not be created");
            }
        }
    }
}

/// The most bytes of a reason kept in a DLQ header: a plugin's reason (itself capped at
/// [`crate::plugin::MAX_REASON_BYTES`]) with room for what the host adds to it.
pub const HEADER_REASON_BYTES: usize = 2048;

/// The most bytes of a vendor code kept in a DLQ header.
pub const HEADER_CODE_BYTES: usize = 256;

/// The most bytes of a record key kept on a DLQ record (keys come from producers).
const MAX_KEY_BYTES: usize = 4096;

/// How much of a value too large for the DLQ is kept: enough to recognise the record, well
/// under any broker's message size limit.
pub const TRUNCATED_VALUE_BYTES: usize = 16 * 1024;

/// `headers` plus what tells a truncated DLQ record apart and finds its original.
fn truncated_headers(headers: OwnedHeaders, value: &[u8]) -> OwnedHeaders {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(value);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    headers
        .insert(header(headers::TRUNCATED, "true"))
        .insert(header(headers::ORIGINAL_BYTES, &value.len().to_string()))
        .insert(header(headers::ORIGINAL_SHA256, &hex))
}

/// What a failed write means for the next try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteFailure {
    /// The cluster may take it later: a broker down, a full queue, a timeout.
    Transient,
    /// The record is larger than the producer or the broker accepts.
    TooLarge,
    /// The topic does not exist (auto-creation off), the host may not write to it, or the
    /// record is refused as invalid: trying again changes nothing.
    Permanent,
    /// The idempotent producer itself failed for good and must be replaced.
    Fatal,
}

/// Sorts a producer error into what to do about it.
pub fn classify(error: &rdkafka::error::KafkaError) -> WriteFailure {
    use rdkafka::error::KafkaError;
    let code = match error {
        KafkaError::MessageProduction(code) => *code,
        KafkaError::ClientCreation(_) | KafkaError::ClientConfig(..) => {
            return WriteFailure::Permanent;
        }
        _ => {
            return error
                .rdkafka_error_code()
                .map_or(WriteFailure::Transient, classify_code);
        }
    };
    classify_code(code)
}

fn classify_code(code: rdkafka::types::RDKafkaErrorCode) -> WriteFailure {
    use rdkafka::types::RDKafkaErrorCode as Code;
    match code {
        Code::MessageSizeTooLarge | Code::MessageBatchTooLarge => WriteFailure::TooLarge,
        Code::UnknownTopic
        | Code::UnknownTopicOrPartition
        | Code::UnknownTopicId
        | Code::InvalidTopic
        | Code::TopicAuthorizationFailed
        | Code::ClusterAuthorizationFailed
        | Code::SaslAuthenticationFailed
        | Code::Authentication
        | Code::InvalidRecord
        | Code::UnsupportedForMessageFormat
        | Code::InvalidRequiredAcks
        | Code::BadMessage => WriteFailure::Permanent,
        Code::Fatal | Code::OutOfOrderSequenceNumber | Code::ProducerFenced => WriteFailure::Fatal,
        _ => WriteFailure::Transient,
    }
}

/// Why a write to the retry topic or the DLQ did not land.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OutboxError {
    /// Refused for good: the caller must not finish the delivery as if it were stored.
    #[error("writing to `{topic}` was refused ({failure:?}): {error}")]
    Refused {
        topic: String,
        failure: WriteFailure,
        error: String,
    },
    /// Shutdown ended the write while it was still retrying a transient failure.
    #[error("writing to `{topic}` was abandoned at shutdown")]
    Abandoned { topic: String },
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a [u8]> {
    Header {
        key,
        value: Some(value.as_bytes()),
    }
}

fn origin_headers(origin: &Origin) -> OwnedHeaders {
    OwnedHeaders::new()
        .insert(header(headers::ORIGIN_TOPIC, &origin.topic))
        .insert(header(
            headers::ORIGIN_PARTITION,
            &origin.partition.to_string(),
        ))
        .insert(header(headers::ORIGIN_OFFSET, &origin.offset.to_string()))
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_retry_waits_in_the_longest_tier_its_due_time_covers() -> anyhow::Result<()> {
        let outbox = Outbox::connect("127.0.0.1:9", "r", "d", &Default::default())?
            .with_retry_tiers(vec![
                ("r".into(), 0),
                ("r.60s".into(), 60_000),
                ("r.1s".into(), 1_000),
                ("r.10s".into(), 10_000),
            ]);
        let now = 1_000_000;
        assert_eq!(outbox.retry_hop(now + 200, now), ("r", None));
        assert_eq!(outbox.retry_hop(now, now), ("r", None));
        assert_eq!(
            outbox.retry_hop(now + 1_000, now),
            ("r.1s", Some(now + 1_000))
        );
        assert_eq!(
            outbox.retry_hop(now + 45_000, now),
            ("r.10s", Some(now + 10_000))
        );
        assert_eq!(
            outbox.retry_hop(now + 7_200_000, now),
            ("r.60s", Some(now + 60_000))
        );
        // Already past due: the base topic, which delivers it at once.
        assert_eq!(outbox.retry_hop(now - 5, now), ("r", None));
        Ok(())
    }

    use super::*;
    use std::sync::Arc;

    /// The records of `topic` (one partition) as (headers, value), read from the start.
    /// A record read back: its headers as (name, value), and its value.
    type ReadRecord = (Vec<(String, String)>, Vec<u8>);

    fn read_all(brokers: &str, topic: &str, expected: usize) -> anyhow::Result<Vec<ReadRecord>> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::message::{Headers, Message};
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "outbox-test-reader")
            .create()?;
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, rdkafka::Offset::Beginning)?;
        consumer.assign(&tpl)?;
        let mut records = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while records.len() < expected && std::time::Instant::now() < deadline {
            let Some(message) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let message = message?;
            let headers = message
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            let value = String::from_utf8_lossy(h.value.unwrap_or_default());
                            (h.key.to_string(), value.into_owned())
                        })
                        .collect()
                })
                .unwrap_or_default();
            records.push((headers, message.payload().unwrap_or_default().to_vec()));
        }
        Ok(records)
    }

    fn why(reason: &str) -> DeadLetterReason<'_> {
        DeadLetterReason {
            class: ReasonClass::Undecodable,
            reason,
            vendor_code: None,
            plugin: None,
            attempts: 0,
            first_seen_ms: 1,
        }
    }

    fn origin() -> Origin {
        Origin {
            topic: "requests".into(),
            partition: 3,
            offset: 77,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_letter_too_large_for_the_producer_is_stored_truncated_and_never_retried()
    -> anyhow::Result<()> {
        let cluster = crate::kafka::EmbeddedKafka::start(1, &["retry".into(), "dlq".into()], 1)?;
        let brokers = cluster.bootstrap_servers().to_string();
        let properties = [("message.max.bytes".to_string(), "50000".to_string())].into();
        let counters = Arc::new(Counters::default());
        let outbox =
            Outbox::connect(&brokers, "retry", "dlq", &properties)?.with_counters(counters.clone());
        let value = vec![b'x'; 200_000];
        let long_reason = "r".repeat(100_000);
        let written = tokio::time::timeout(
            Duration::from_secs(20),
            outbox.dead_letter("key-1", &value, &origin(), &why(&long_reason)),
        )
        .await;
        assert!(
            matches!(written, Ok(Ok(()))),
            "the write never came back: {written:?}"
        );
        assert_eq!(counters.snapshot().dead_letters_truncated, 1);
        let records = read_all(&brokers, "dlq", 1)?;
        assert_eq!(records.len(), 1);
        let (headers, stored) = &records[0];
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        assert_eq!(stored.len(), TRUNCATED_VALUE_BYTES);
        assert_eq!(header(headers::TRUNCATED), "true");
        assert_eq!(header(headers::ORIGINAL_BYTES), "200000");
        assert_eq!(header(headers::ORIGIN_OFFSET), "77");
        assert_eq!(header(headers::ORIGIN_PARTITION), "3");
        assert_eq!(header(headers::ORIGINAL_SHA256).len(), 64);
        assert!(header(headers::REASON).len() <= HEADER_REASON_BYTES);
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_the_broker_refuses_for_good_returns_at_once_and_shutdown_ends_the_rest()
    -> anyhow::Result<()> {
        use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
        let cluster = rdkafka::mocking::MockCluster::new(1)?;
        cluster.create_topic("dlq", 1, 1)?;
        let brokers = cluster.bootstrap_servers();
        let outbox = Outbox::connect(&brokers, "retry", "dlq", &Default::default())?;
        // Not authorised to write: no number of tries changes that.
        cluster.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 50],
        );
        let written = tokio::time::timeout(
            Duration::from_secs(20),
            outbox.dead_letter("key-2", b"{}", &origin(), &why("bad")),
        )
        .await;
        assert!(
            matches!(
                written,
                Ok(Err(OutboxError::Refused {
                    failure: WriteFailure::Permanent,
                    ..
                }))
            ),
            "{written:?}"
        );

        // A broker that is down is a transient failure: retried until shutdown abandons it.
        let cluster = rdkafka::mocking::MockCluster::new(1)?;
        cluster.create_topic("dlq", 1, 1)?;
        let outbox = Outbox::connect(
            &cluster.bootstrap_servers(),
            "retry",
            "dlq",
            &Default::default(),
        )?;
        cluster.broker_down(1)?;
        let outbox = Arc::new(outbox);
        let pending = tokio::spawn({
            let outbox = outbox.clone();
            async move {
                outbox
                    .dead_letter("key-3", b"{}", &origin(), &why("bad"))
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        if pending.is_finished() {
            anyhow::bail!("a transient failure must be retried: {:?}", pending.await);
        }
        outbox.abandon_retries();
        let ended = tokio::time::timeout(Duration::from_secs(10), pending).await;
        assert!(
            matches!(ended, Ok(Ok(Err(OutboxError::Abandoned { .. })))),
            "{ended:?}"
        );
        Ok(())
    }

    #[test]
    fn producer_errors_are_sorted_into_what_to_do_next() {
        use rdkafka::error::KafkaError;
        use rdkafka::types::RDKafkaErrorCode as Code;
        let of = |code| classify(&KafkaError::MessageProduction(code));
        assert_eq!(of(Code::MessageSizeTooLarge), WriteFailure::TooLarge);
        assert_eq!(of(Code::UnknownTopicOrPartition), WriteFailure::Permanent);
        assert_eq!(of(Code::UnknownTopic), WriteFailure::Permanent);
        assert_eq!(of(Code::TopicAuthorizationFailed), WriteFailure::Permanent);
        assert_eq!(of(Code::Fatal), WriteFailure::Fatal);
        assert_eq!(of(Code::QueueFull), WriteFailure::Transient);
        assert_eq!(of(Code::MessageTimedOut), WriteFailure::Transient);
        assert_eq!(of(Code::NotEnoughReplicas), WriteFailure::Transient);
    }

    #[test]
    fn retry_records_round_trip_and_keep_the_key() -> anyhow::Result<()> {
        let record = RetryRecord {
            key: "req-1/7".into(),
            channel: "sms".into(),
            recipient: "+8210".into(),
            content: r#"{"body":"hi"}"#.into(),
            priority: WirePriority::Realtime,
            attempt: 2,
            due_at_ms: 10,
            first_seen_ms: 5,
            origin: Origin {
                topic: "t".into(),
                partition: 1,
                offset: 42,
            },
            last_reason: "503".into(),
            route: Some(crate::route::RouteHint {
                vendor: "sms-acme".into(),
                timed_out: true,
            }),
            last_was_plugin_fault: false,
            replayed: false,
            hop_due_ms: None,
        };
        let text = serde_json::to_string(&record)?;
        let back: RetryRecord = serde_json::from_str(&text)?;
        assert_eq!(back, record);
        assert_eq!(back.delivery().key, "req-1/7");
        assert_eq!(back.delivery().attempt, 2);
        Ok(())
    }
}
