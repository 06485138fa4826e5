//! The retry topic and the dead-letter queue (DLQ).
//!
//! A `retry` outcome is written to the retry topic as one [`RetryRecord`], with the time it is
//! due. The retry consumer delivers it again once that time comes. Deliveries that cannot be
//! delivered go to the DLQ with reason headers: rejected outcomes, exhausted or expired retries,
//! plugin faults that never cleared, and records that are not a usable request.
//!
//! Both writes use one idempotent producer. The source record's offset may advance only after
//! the write is acknowledged: the caller awaits [`Outbox::retry`] or [`Outbox::dead_letter`]
//! before it finishes the delivery. Neither call gives up, so a Kafka outage holds offsets back
//! instead of dropping deliveries.
//!
//! The result topics ([`results`]) go out through the outbox too, on a producer of their own
//! that is never awaited: results are informational and must not hold a delivery back.

pub mod replay;
pub mod results;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};

use crate::plugin::{Delivery, Priority};

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
    pub fn delivery(&self) -> Delivery {
        Delivery {
            key: self.key.clone(),
            recipient: self.recipient.clone(),
            content: self.content.clone(),
            priority: self.priority.into(),
            attempt: self.attempt,
        }
    }
}

/// Runs `resume` once `wait` has passed, on the tokio timer: how a paused retry partition
/// comes back at its record's due time.
pub fn after(
    wait: Duration,
    resume: impl FnOnce() + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::time::sleep(wait).await;
        resume();
    })
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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

/// The producer of retry and DLQ records, and of the result topics when they are on.
pub struct Outbox {
    producer: FutureProducer,
    retry_topic: String,
    dlq_topic: String,
    results: Option<results::ResultsPublisher>,
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
        let producer = config
            .create()
            .with_context(|| format!("creating the retry/DLQ producer for {brokers}"))?;
        Ok(Self {
            producer,
            retry_topic: retry_topic.to_string(),
            dlq_topic: dlq_topic.to_string(),
            results: None,
        })
    }

    /// Publishes settled results through `results` from now on (`None` keeps them off).
    pub fn with_results(mut self, results: Option<results::ResultsPublisher>) -> Self {
        self.results = results;
        self
    }

    /// Enqueues a settled result, made only when the results topic is on. Never waits.
    pub fn publish_result(&self, make: impl FnOnce() -> results::ResultRecord) {
        if let Some(results) = self.results.as_ref().filter(|r| r.publishes_results()) {
            results.result(&make());
        }
    }

    /// Enqueues an invalid recipient, made only when the invalidations topic is on. Never waits.
    pub fn publish_invalidation(&self, make: impl FnOnce() -> results::Invalidation) {
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

/// Creates the retry, DLQ and result topics on `brokers` unless they exist, so the retry
/// consumer finds its topic at once instead of at the next metadata refresh (minutes).
pub async fn ensure_topics(
    brokers: &str,
    topics: &[&str],
    partitions: i32,
    properties: &std::collections::BTreeMap<String, String>,
) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (k, v) in properties {
        config.set(k, v);
    }
    let admin: AdminClient<DefaultClientContext> =
        config.create().context("creating the Kafka admin client")?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(-1)))
        .collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(5)))
        .request_timeout(Some(Duration::from_secs(5)));
    for result in admin
        .create_topics(&new, &options)
        .await
        .context("creating the retry, DLQ and result topics")?
    {
        match result {
            Ok(topic) => tracing::info!(topic, partitions, "topic created"),
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => anyhow::bail!("creating topic `{topic}`: {code}"),
        }
    }
    Ok(())
}

impl Outbox {
    /// Writes `record` to the retry topic; returns once Kafka acknowledged it.
    pub async fn retry(&self, record: &RetryRecord) {
        let value = serde_json::to_vec(record).unwrap_or_default();
        let headers = origin_headers(&record.origin)
            .insert(header(headers::ATTEMPTS, &record.attempt.to_string()))
            .insert(header(
                headers::FIRST_SEEN,
                &record.first_seen_ms.to_string(),
            ));
        self.send(&self.retry_topic, &record.key, &value, headers)
            .await;
    }

    /// Writes a DLQ record; returns once Kafka acknowledged it. `value` is the delivery's
    /// [`RetryRecord`] as JSON, or the raw record for records that are not a usable request.
    pub async fn dead_letter(
        &self,
        key: &str,
        value: &[u8],
        origin: &Origin,
        why: &DeadLetterReason<'_>,
    ) {
        let mut headers = origin_headers(origin)
            .insert(header(headers::REASON_CLASS, why.class.as_str()))
            .insert(header(headers::REASON, why.reason))
            .insert(header(headers::ATTEMPTS, &why.attempts.to_string()))
            .insert(header(headers::FIRST_SEEN, &why.first_seen_ms.to_string()))
            .insert(header(headers::DEAD_AT, &now_ms().to_string()));
        if let Some(code) = why.vendor_code {
            headers = headers.insert(header(headers::VENDOR_CODE, code));
        }
        if let Some((plugin, version)) = why.plugin {
            headers = headers
                .insert(header(headers::PLUGIN, plugin))
                .insert(header(headers::PLUGIN_VERSION, version));
        }
        self.send(&self.dlq_topic, key, value, headers).await;
    }

    /// Writes a record back to `topic` as it was (a request returning from the DLQ).
    pub async fn republish(&self, topic: &str, key: &str, value: &[u8]) {
        self.send(topic, key, value, OwnedHeaders::new()).await;
    }

    async fn send(&self, topic: &str, key: &str, value: &[u8], headers: OwnedHeaders) {
        let mut pause = Duration::from_millis(100);
        loop {
            let record = FutureRecord::to(topic)
                .key(key)
                .payload(value)
                .headers(headers.clone());
            match self.producer.send(record, Duration::from_secs(30)).await {
                Ok(_) => return,
                Err((error, _)) => {
                    tracing::error!(event = "outbox_write_failed", topic, error = %error, "retrying the write");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
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
    use super::*;
    use crate::dispatch::backoff::Backoff;
    use rand::SeedableRng;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_retry_resumes_exactly_at_its_backoff_and_not_before_retry_after() {
        let backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for (attempt, retry_after) in [(1, None), (4, None), (2, Some(Duration::from_secs(5)))] {
            let wait = backoff.delay(attempt, retry_after, &mut rng);
            if let Some(floor) = retry_after {
                assert!(wait >= floor, "{wait:?} is before Retry-After {floor:?}");
            }
            let resumed = Arc::new(AtomicBool::new(false));
            let flag = resumed.clone();
            let task = after(wait, move || flag.store(true, Ordering::SeqCst));
            tokio::time::advance(wait - Duration::from_millis(1)).await;
            tokio::task::yield_now().await;
            assert!(
                !resumed.load(Ordering::SeqCst),
                "attempt {attempt}: resumed early"
            );
            tokio::time::advance(Duration::from_millis(1)).await;
            let _ = task.await;
            assert!(
                resumed.load(Ordering::SeqCst),
                "attempt {attempt}: not resumed at {wait:?}"
            );
        }
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
        };
        let text = serde_json::to_string(&record)?;
        let back: RetryRecord = serde_json::from_str(&text)?;
        assert_eq!(back, record);
        assert_eq!(back.delivery().key, "req-1/7");
        assert_eq!(back.delivery().attempt, 2);
        Ok(())
    }
}
