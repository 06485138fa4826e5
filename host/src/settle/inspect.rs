//! Reading the DLQ from outside a host: `switchboard dlq list` and `dlq show`, and the scan that
//! `dlq replay` walks with.
//!
//! Owns the read: a throwaway consumer (no group offsets) from the start of every partition to
//! the end it had when the scan began, each record with its headers; the filters by reason
//! class, age and key; the table `list` prints. It never writes: replay does, with what this
//! reads.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Serialize;

use super::{ReasonClass, headers};
use crate::clock::now_ms;

/// How often a long scan reports its progress on stderr.
/// How often a long scan tells the operator how far it is.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// One DLQ record as read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DlqRecord {
    pub partition: i32,
    pub offset: i64,
    /// The record's key: the delivery's idempotency key, or the original record's key.
    pub key: String,
    /// Every header whose value is text (all of the host's are).
    pub headers: BTreeMap<String, String>,
    #[serde(skip)]
    pub payload: Vec<u8>,
}

impl DlqRecord {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The reason class (`sb-reason-class`), or "" on a record the host did not write.
    pub fn class(&self) -> &str {
        self.header(headers::REASON_CLASS).unwrap_or("")
    }

    /// When it was dead-lettered (`sb-dead-at-ms`), ms since the epoch; 0 when unknown.
    pub fn dead_at_ms(&self) -> u64 {
        self.header(headers::DEAD_AT)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

/// The DLQ reader's client settings: `[kafka.properties]` (a secured cluster needs its
/// `security.protocol`, SASL and TLS settings to be read at all), then the reader's own, which
/// win: a throwaway group that never commits.
pub(super) fn dlq_reader_config(
    brokers: &str,
    properties: &BTreeMap<String, String>,
) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (key, value) in properties {
        config.set(key, value);
    }
    config
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("switchboard-dlq-reader-{}-{}", std::process::id(), now_ms()),
        )
        .set("enable.auto.commit", "false");
    config
}

/// A read of the whole DLQ, as it stood when the scan began.
pub struct DlqScan {
    consumer: BaseConsumer,
    /// Partitions not read to their end yet, with that end.
    ends: HashMap<i32, i64>,
    /// Records in the DLQ when the scan began (the sum of the partitions' spans).
    pub total: u64,
    /// Records read so far.
    pub read: u64,
    idle_polls: u32,
    last_progress: Instant,
    /// How often [`DlqScan::progress_due`] says yes.
    progress_every: Duration,
}

impl DlqScan {
    /// Starts reading `dlq_topic` from the beginning of each partition.
    pub fn open(
        brokers: &str,
        dlq_topic: &str,
        properties: &BTreeMap<String, String>,
    ) -> anyhow::Result<Self> {
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
        let mut ends = HashMap::new();
        let mut total = 0;
        let mut assignment = TopicPartitionList::new();
        for partition in partitions {
            let (low, high) = consumer
                .fetch_watermarks(dlq_topic, partition, Duration::from_secs(10))
                .with_context(|| format!("reading the offsets of {dlq_topic}/{partition}"))?;
            if high > low {
                ends.insert(partition, high);
                total += (high - low) as u64;
                assignment.add_partition_offset(dlq_topic, partition, Offset::Beginning)?;
            }
        }
        if !ends.is_empty() {
            consumer.assign(&assignment)?;
        }
        Ok(Self {
            consumer,
            ends,
            total,
            read: 0,
            idle_polls: 0,
            last_progress: Instant::now(),
            progress_every: PROGRESS_EVERY,
        })
    }

    /// Reports progress every `every` instead of every two seconds.
    pub fn with_progress_every(mut self, every: Duration) -> Self {
        self.progress_every = every;
        self
    }

    /// The next record, or `None` once every partition is read to the end it had at the start.
    pub fn next_record(&mut self) -> anyhow::Result<Option<DlqRecord>> {
        while !self.ends.is_empty() {
            let Some(result) = self.consumer.poll(Duration::from_millis(500)) else {
                self.idle_polls += 1;
                anyhow::ensure!(
                    self.idle_polls < 60,
                    "the DLQ stopped answering before its end ({} of {} records read)",
                    self.read,
                    self.total
                );
                continue;
            };
            self.idle_polls = 0;
            let message = result.context("reading the DLQ")?;
            if let Some(end) = self.ends.get(&message.partition())
                && message.offset() + 1 >= *end
            {
                self.ends.remove(&message.partition());
            }
            self.read += 1;
            let headers = message
                .headers()
                .map(|h| {
                    h.iter()
                        .filter_map(|h| {
                            let value = std::str::from_utf8(h.value?).ok()?;
                            Some((h.key.to_string(), value.to_string()))
                        })
                        .collect()
                })
                .unwrap_or_default();
            return Ok(Some(DlqRecord {
                partition: message.partition(),
                offset: message.offset(),
                key: message
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .unwrap_or_default(),
                headers,
                payload: message.payload().unwrap_or_default().to_vec(),
            }));
        }
        Ok(None)
    }

    /// `true` at most every two seconds: time to tell the operator how far the scan is.
    pub fn progress_due(&mut self) -> bool {
        if self.last_progress.elapsed() < self.progress_every {
            return false;
        }
        self.last_progress = Instant::now();
        true
    }
}

/// Which DLQ records `list` and `show` take.
#[derive(Debug, Clone, Default)]
pub struct DlqFilter {
    /// Only this reason class.
    pub reason: Option<ReasonClass>,
    /// Only records dead-lettered at or after this time (ms since the epoch).
    pub since_ms: u64,
    /// Only records with this key.
    pub key: Option<String>,
}

impl DlqFilter {
    /// Whether `record` passes.
    pub fn admits(&self, record: &DlqRecord) -> bool {
        self.reason.is_none_or(|r| r.as_str() == record.class())
            && record.dead_at_ms() >= self.since_ms
            && self.key.as_ref().is_none_or(|k| *k == record.key)
    }
}

/// One line of `dlq list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DlqLine {
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub dead_at_ms: u64,
    pub reason_class: String,
    pub reason: String,
    pub plugin: String,
    pub attempts: String,
}

impl From<&DlqRecord> for DlqLine {
    fn from(record: &DlqRecord) -> Self {
        let text = |name| record.header(name).unwrap_or("").to_string();
        DlqLine {
            partition: record.partition,
            offset: record.offset,
            key: record.key.clone(),
            dead_at_ms: record.dead_at_ms(),
            reason_class: record.class().to_string(),
            reason: text(headers::REASON),
            plugin: text(headers::PLUGIN),
            attempts: text(headers::ATTEMPTS),
        }
    }
}

/// What `list` found: the newest matching records (at most the limit), newest first, and
/// how many matched in all.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DlqListing {
    pub scanned: u64,
    pub matched: u64,
    pub records: Vec<DlqLine>,
}

/// Reads the whole DLQ and keeps the `limit` newest records `filter` admits. Progress goes to
/// `progress` every two seconds of a long scan.
pub fn list(
    scan: &mut DlqScan,
    filter: &DlqFilter,
    limit: usize,
    progress: &mut dyn FnMut(u64, u64),
) -> anyhow::Result<DlqListing> {
    let mut listing = DlqListing::default();
    let newest_first = |a: &DlqLine, b: &DlqLine| {
        b.dead_at_ms
            .cmp(&a.dead_at_ms)
            .then(a.partition.cmp(&b.partition))
            .then(b.offset.cmp(&a.offset))
    };
    while let Some(record) = scan.next_record()? {
        if scan.progress_due() {
            progress(scan.read, scan.total);
        }
        if !filter.admits(&record) {
            continue;
        }
        listing.matched += 1;
        listing.records.push(DlqLine::from(&record));
        // Bounded: a DLQ of millions keeps at most twice the limit in memory.
        if listing.records.len() >= limit.max(1) * 2 {
            listing.records.sort_by(newest_first);
            listing.records.truncate(limit);
        }
    }
    listing.records.sort_by(newest_first);
    listing.records.truncate(limit);
    listing.scanned = scan.read;
    Ok(listing)
}

/// Every record `filter` admits, whole: headers and value.
pub fn show(
    scan: &mut DlqScan,
    filter: &DlqFilter,
    progress: &mut dyn FnMut(u64, u64),
) -> anyhow::Result<Vec<DlqRecord>> {
    let mut found = Vec::new();
    while let Some(record) = scan.next_record()? {
        if scan.progress_due() {
            progress(scan.read, scan.total);
        }
        if filter.admits(&record) {
            found.push(record);
        }
    }
    Ok(found)
}

/// `ms` since the epoch as UTC RFC 3339, to the second.
pub fn utc(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "-".into())
}

/// The table `dlq list` prints.
pub fn render_listing(listing: &DlqListing) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20}  {:<18}  {:<12}  {:>8}  {:<28}  reason",
        "dead at (UTC)", "reason class", "plugin", "attempts", "key"
    );
    for line in &listing.records {
        let _ = writeln!(
            out,
            "{:<20}  {:<18}  {:<12}  {:>8}  {:<28}  {}",
            utc(line.dead_at_ms),
            line.reason_class,
            if line.plugin.is_empty() {
                "-"
            } else {
                &line.plugin
            },
            if line.attempts.is_empty() {
                "-"
            } else {
                &line.attempts
            },
            crate::text::cap(&line.key, 28),
            crate::text::cap(&line.reason, 80),
        );
    }
    let _ = writeln!(
        out,
        "{} of {} matching records shown ({} read); `dlq show KEY` prints one whole",
        listing.records.len(),
        listing.matched,
        listing.scanned
    );
    out
}

/// What `dlq show` prints for one record: its place, every header, and the value (JSON pretty
/// printed when it is JSON).
pub fn render_record(record: &DlqRecord) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "partition {} offset {}  key {}",
        record.partition, record.offset, record.key
    );
    for (name, value) in &record.headers {
        let _ = writeln!(out, "  {name}: {value}");
    }
    let value = match serde_json::from_slice::<serde_json::Value>(&record.payload) {
        Ok(json) => serde_json::to_string_pretty(&json).unwrap_or_default(),
        Err(_) => String::from_utf8_lossy(&record.payload).into_owned(),
    };
    let _ = writeln!(out, "{value}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: i64, class: &str, dead_at: u64, key: &str) -> DlqRecord {
        DlqRecord {
            partition: 0,
            offset,
            key: key.into(),
            headers: BTreeMap::from([
                (headers::REASON_CLASS.to_string(), class.to_string()),
                (headers::DEAD_AT.to_string(), dead_at.to_string()),
            ]),
            payload: b"{}".to_vec(),
        }
    }

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
                .is_some_and(|g| g.starts_with("switchboard-dlq-reader-"))
        );
    }

    #[test]
    fn filters_take_reason_age_and_key_together() {
        let old_rejected = record(1, "rejected", 1_000, "a");
        let new_expired = record(2, "expired", 9_000, "b");
        let by_reason = DlqFilter {
            reason: Some(ReasonClass::Rejected),
            ..Default::default()
        };
        assert!(by_reason.admits(&old_rejected));
        assert!(!by_reason.admits(&new_expired));
        let recent = DlqFilter {
            since_ms: 5_000,
            ..Default::default()
        };
        assert!(!recent.admits(&old_rejected));
        assert!(recent.admits(&new_expired));
        let by_key = DlqFilter {
            key: Some("b".into()),
            ..Default::default()
        };
        assert!(by_key.admits(&new_expired) && !by_key.admits(&old_rejected));
    }

    #[test]
    fn the_listing_shows_the_newest_first_and_counts_the_rest() {
        let listing = DlqListing {
            scanned: 3,
            matched: 3,
            records: vec![DlqLine::from(&record(
                7,
                "rejected",
                1_700_000_000_000,
                "k7",
            ))],
        };
        let table = render_listing(&listing);
        assert!(table.contains("2023-11-14T22:13:20Z"), "{table}");
        assert!(
            table.contains("1 of 3 matching records shown (3 read)"),
            "{table}"
        );
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
    }
}
