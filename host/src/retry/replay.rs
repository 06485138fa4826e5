//! `switchboard dlq replay`: sends dead-lettered deliveries back to their lane.
//!
//! A delivery record (a [`RetryRecord`]) goes to the retry topic, due now and with a fresh
//! `first_seen`, so `give_up_after` counts from the replay. It keeps its idempotency key, so the
//! dedup store still skips a recipient that was delivered meanwhile: a replay never sends a
//! delivered recipient again. A whole request that was dead-lettered before it was expanded
//! (unknown channel, expired) goes back to its origin topic as it was. Undecodable records
//! cannot be replayed and are only counted.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Serialize;

use super::{Outbox, ReasonClass, RetryRecord, headers, now_ms};

/// Which DLQ records to replay.
#[derive(Debug, Clone)]
pub struct ReplayFilter {
    /// Only records with this reason class; `None` for all.
    pub reason: Option<ReasonClass>,
    /// Only records dead-lettered at or after this time (ms since the epoch).
    pub since_ms: u64,
    /// Count what would be replayed, but write nothing.
    pub dry_run: bool,
}

/// What a replay did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ReplaySummary {
    /// DLQ records read.
    pub scanned: u64,
    /// Deliveries sent to the retry topic.
    pub to_retry_topic: u64,
    /// Whole requests sent back to their origin topic.
    pub to_origin_topic: u64,
    /// Records that matched but cannot be replayed (undecodable).
    pub not_replayable: u64,
}

fn header_value<'a>(
    message: &'a rdkafka::message::BorrowedMessage<'a>,
    name: &str,
) -> Option<&'a str> {
    message
        .headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// Parses `90s`, `30m`, `2h`, `7d` (or plain seconds).
pub fn parse_age(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number
        .parse()
        .with_context(|| format!("`{text}` is not a duration like 90s, 30m, 2h or 7d"))?;
    let seconds = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        other => anyhow::bail!("unknown unit `{other}` in `{text}`: use s, m, h or d"),
    };
    Ok(Duration::from_secs(seconds))
}

/// The DLQ reader's client settings: `[kafka.properties]` (a secured cluster needs its
/// `security.protocol`, SASL and TLS settings to be read at all), then the reader's own, which
/// win: a throwaway group that never commits.
fn dlq_reader_config(brokers: &str, properties: &BTreeMap<String, String>) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (key, value) in properties {
        config.set(key, value);
    }
    config
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("switchboard-dlq-replay-{}-{}", std::process::id(), now_ms()),
        )
        .set("enable.auto.commit", "false");
    config
}

/// Replays the DLQ records matching `filter`, reading the DLQ up to its end at the start.
/// `properties` are `[kafka.properties]`, as the host's own clients take them.
pub async fn replay(
    brokers: &str,
    dlq_topic: &str,
    properties: &BTreeMap<String, String>,
    outbox: &Outbox,
    filter: &ReplayFilter,
) -> anyhow::Result<ReplaySummary> {
    let consumer: BaseConsumer = dlq_reader_config(brokers, properties)
        .create()
        .context("creating the DLQ reader")?;
    let metadata = consumer
        .fetch_metadata(Some(dlq_topic), Duration::from_secs(10))
        .with_context(|| format!("reading the metadata of {dlq_topic}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut ends: HashMap<i32, i64> = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for partition in &partitions {
        let (low, high) =
            consumer.fetch_watermarks(dlq_topic, *partition, Duration::from_secs(10))?;
        if high > low {
            ends.insert(*partition, high);
            tpl.add_partition_offset(dlq_topic, *partition, Offset::Beginning)?;
        }
    }
    let mut summary = ReplaySummary::default();
    if ends.is_empty() {
        return Ok(summary);
    }
    consumer.assign(&tpl)?;
    let mut idle_polls = 0;
    while !ends.is_empty() {
        let Some(result) = consumer.poll(Duration::from_millis(500)) else {
            idle_polls += 1;
            anyhow::ensure!(idle_polls < 60, "the DLQ stopped answering before its end");
            continue;
        };
        idle_polls = 0;
        let message = result.context("reading the DLQ")?;
        if let Some(end) = ends.get(&message.partition())
            && message.offset() + 1 >= *end
        {
            ends.remove(&message.partition());
        }
        summary.scanned += 1;
        let class = header_value(&message, headers::REASON_CLASS).unwrap_or("");
        let dead_at: u64 = header_value(&message, headers::DEAD_AT)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if filter.reason.is_some_and(|r| r.as_str() != class) || dead_at < filter.since_ms {
            continue;
        }
        let payload = message.payload().unwrap_or_default();
        if header_value(&message, headers::TRUNCATED).is_some() {
            // Only a prefix is here; the whole record is at its origin coordinates.
            summary.not_replayable += 1;
        } else if let Ok(mut record) = serde_json::from_slice::<RetryRecord>(payload) {
            summary.to_retry_topic += 1;
            if !filter.dry_run {
                record.due_at_ms = now_ms();
                record.first_seen_ms = now_ms();
                record.replayed = true;
                outbox
                    .retry(&mut record)
                    .await
                    .with_context(|| format!("replaying `{}` to the retry topic", record.key))?;
            }
        } else if matches!(class, "unknown-channel" | "expired")
            && let Some(topic) = header_value(&message, headers::ORIGIN_TOPIC)
        {
            summary.to_origin_topic += 1;
            if !filter.dry_run {
                let key = message
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .unwrap_or_default();
                outbox
                    .republish(topic, &key, payload)
                    .await
                    .with_context(|| format!("replaying `{key}` to `{topic}`"))?;
            }
        } else {
            summary.not_replayable += 1;
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dlq_reader_takes_the_kafka_properties() {
        let properties = BTreeMap::from([
            ("security.protocol".to_string(), "SASL_SSL".to_string()),
            ("sasl.mechanism".to_string(), "SCRAM-SHA-512".to_string()),
            // Refused by config validation; if one got here, the reader's own setting still wins.
            ("enable.auto.commit".to_string(), "true".to_string()),
        ]);
        let config = dlq_reader_config("kafka-1:9093", &properties);
        assert_eq!(config.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(config.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(config.get("bootstrap.servers"), Some("kafka-1:9093"));
        assert_eq!(config.get("enable.auto.commit"), Some("false"));
        assert!(
            config
                .get("group.id")
                .is_some_and(|g| g.starts_with("switchboard-dlq-replay-"))
        );
    }

    #[test]
    fn ages_parse_with_units() -> anyhow::Result<()> {
        assert_eq!(parse_age("90s")?, Duration::from_secs(90));
        assert_eq!(parse_age("30m")?, Duration::from_secs(1800));
        assert_eq!(parse_age("2h")?, Duration::from_secs(7200));
        assert_eq!(parse_age("7d")?, Duration::from_secs(604_800));
        assert_eq!(parse_age("15")?, Duration::from_secs(15));
        assert!(parse_age("1w").is_err());
        assert!(parse_age("soon").is_err());
        Ok(())
    }
}
