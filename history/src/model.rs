//! What the host records and what queries return, and the in-memory aggregation of a batch of
//! sends into bucket deltas. Owns the bucket arithmetic, so both backends bucket alike; never
//! touches a database.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The class of one send's outcome, as the host settled it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeClass {
    /// The vendor accepted the message.
    Delivered,
    /// The vendor answered with a transient error; the host will try again.
    Retry,
    /// The vendor refused the message for good; it went to the DLQ.
    Rejected,
    /// The token or number no longer exists at the vendor.
    InvalidRecipient,
    /// The host gave up (expired, out of attempts, a plugin fault that never cleared) and wrote
    /// the delivery to the DLQ.
    DeadLettered,
    /// The plugin call itself failed (trap, deadline, `init`), so the vendor's answer is unknown.
    Failed,
}

impl OutcomeClass {
    /// Every class, in the order tables show them.
    pub const ALL: [OutcomeClass; 6] = [
        Self::Delivered,
        Self::Retry,
        Self::Rejected,
        Self::InvalidRecipient,
        Self::DeadLettered,
        Self::Failed,
    ];

    /// The name stored in the database and printed in JSON.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Retry => "retry",
            Self::Rejected => "rejected",
            Self::InvalidRecipient => "invalid_recipient",
            Self::DeadLettered => "dead_lettered",
            Self::Failed => "failed",
        }
    }
}

impl fmt::Display for OutcomeClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OutcomeClass {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|class| class.as_str() == name)
            .ok_or_else(|| format!("unknown outcome class `{name}`"))
    }
}

/// One send, as the host settled it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendRecord {
    /// When the outcome was known, in milliseconds since the Unix epoch ([`crate::now_ms`]).
    pub at_ms: i64,
    /// The channel (`sms`, `push`, …).
    pub channel: String,
    /// The plugin that sent it (`sms-nhn`).
    pub vendor: String,
    /// The plugin's version, so a canary can be told apart from the version it replaces.
    pub plugin_version: String,
    /// What happened.
    pub outcome: OutcomeClass,
    /// Time spent in the plugin call that settled it, in milliseconds.
    pub latency_ms: u64,
    /// The delivery's idempotency key (`{request id}/{recipient index}`); kept only for failed
    /// sends.
    pub key: String,
}

/// Counts and latency of one (bucket, vendor, plugin version, channel, outcome) as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BucketRow {
    /// Start of the bucket, in milliseconds since the Unix epoch.
    pub bucket_start_ms: i64,
    /// The plugin.
    pub vendor: String,
    /// The plugin's version.
    pub plugin_version: String,
    /// The channel.
    pub channel: String,
    /// The outcome class counted.
    pub outcome: OutcomeClass,
    /// Sends with this outcome in the bucket.
    pub count: u64,
    /// Sum of their latencies, in milliseconds.
    pub latency_sum_ms: u64,
    /// The largest of their latencies, in milliseconds.
    pub latency_max_ms: u64,
}

/// Sends per outcome class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OutcomeCounts {
    /// [`OutcomeClass::Delivered`].
    pub delivered: u64,
    /// [`OutcomeClass::Retry`].
    pub retry: u64,
    /// [`OutcomeClass::Rejected`].
    pub rejected: u64,
    /// [`OutcomeClass::InvalidRecipient`].
    pub invalid_recipient: u64,
    /// [`OutcomeClass::DeadLettered`].
    pub dead_lettered: u64,
    /// [`OutcomeClass::Failed`].
    pub failed: u64,
}

impl OutcomeCounts {
    /// The count of one class.
    pub fn get(&self, outcome: OutcomeClass) -> u64 {
        match outcome {
            OutcomeClass::Delivered => self.delivered,
            OutcomeClass::Retry => self.retry,
            OutcomeClass::Rejected => self.rejected,
            OutcomeClass::InvalidRecipient => self.invalid_recipient,
            OutcomeClass::DeadLettered => self.dead_lettered,
            OutcomeClass::Failed => self.failed,
        }
    }

    /// Adds `count` sends of one class.
    pub fn add(&mut self, outcome: OutcomeClass, count: u64) {
        let slot = match outcome {
            OutcomeClass::Delivered => &mut self.delivered,
            OutcomeClass::Retry => &mut self.retry,
            OutcomeClass::Rejected => &mut self.rejected,
            OutcomeClass::InvalidRecipient => &mut self.invalid_recipient,
            OutcomeClass::DeadLettered => &mut self.dead_lettered,
            OutcomeClass::Failed => &mut self.failed,
        };
        *slot = slot.saturating_add(count);
    }

    /// All sends, whatever their class.
    pub fn total(&self) -> u64 {
        OutcomeClass::ALL
            .into_iter()
            .fold(0u64, |sum, class| sum.saturating_add(self.get(class)))
    }
}

/// One vendor's totals over a query window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VendorSummary {
    /// The plugin.
    pub vendor: String,
    /// Its channel.
    pub channel: String,
    /// All sends recorded in the window.
    pub total: u64,
    /// Sends per outcome class.
    pub counts: OutcomeCounts,
    /// `delivered / total`, from 0 to 1 (0 when there were no sends). Every attempt counts, so a
    /// send retried twice and then delivered counts as 2 retries and 1 delivery.
    pub success_rate: f64,
    /// Mean latency over all sends, in milliseconds.
    pub mean_latency_ms: f64,
    /// The largest latency, in milliseconds.
    pub max_latency_ms: u64,
}

/// Which buckets a query reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Only this vendor (plugin name); `None` for all.
    pub vendor: Option<String>,
    /// How far back from the end of the window to read. The window starts at the start of the
    /// bucket that holds `until - since`, so a partly covered first bucket is shown whole.
    pub since: Duration,
    /// End of the window (exclusive), in milliseconds since the Unix epoch; `None` for now.
    pub until_ms: Option<i64>,
}

impl HistoryQuery {
    /// Everything of the last `since`, up to now.
    pub fn last(since: Duration) -> Self {
        Self {
            vendor: None,
            since,
            until_ms: None,
        }
    }

    /// The same query, for one vendor.
    pub fn for_vendor(mut self, vendor: impl Into<String>) -> Self {
        self.vendor = Some(vendor.into());
        self
    }

    /// The window `[from_ms, until_ms)` for buckets of `bucket_ms`.
    pub(crate) fn window(&self, bucket_ms: i64) -> Window {
        let until_ms = self.until_ms.unwrap_or_else(crate::now_ms);
        let since_ms = i64::try_from(self.since.as_millis()).unwrap_or(i64::MAX);
        let from_ms = bucket_start(until_ms.saturating_sub(since_ms), bucket_ms);
        Window { from_ms, until_ms }
    }
}

/// A resolved query window, `[from_ms, until_ms)` on bucket starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    pub from_ms: i64,
    pub until_ms: i64,
}

/// The start of the bucket of width `bucket_ms` that holds `at_ms`.
pub(crate) fn bucket_start(at_ms: i64, bucket_ms: i64) -> i64 {
    at_ms - at_ms.rem_euclid(bucket_ms)
}

/// One row to add into the buckets table: the key and what this flush adds to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BucketDelta {
    pub bucket_start_ms: i64,
    pub vendor: String,
    pub plugin_version: String,
    pub channel: String,
    pub outcome: OutcomeClass,
    pub count: i64,
    pub latency_sum_ms: i64,
    pub latency_max_ms: i64,
}

/// Folds a batch of sends into one delta per bucket key, sorted by key. Sorted, so that two
/// hosts upserting into PostgreSQL at once lock rows in the same order and cannot deadlock.
pub(crate) fn aggregate(batch: &[SendRecord], bucket_ms: i64) -> Vec<BucketDelta> {
    type Key<'a> = (i64, &'a str, &'a str, &'a str, OutcomeClass);
    let mut sums: BTreeMap<Key<'_>, (i64, i64, i64)> = BTreeMap::new();
    for record in batch {
        let key = (
            bucket_start(record.at_ms, bucket_ms),
            record.vendor.as_str(),
            record.plugin_version.as_str(),
            record.channel.as_str(),
            record.outcome,
        );
        let latency = i64::try_from(record.latency_ms).unwrap_or(i64::MAX);
        let (count, latency_sum, latency_max) = sums.entry(key).or_default();
        *count += 1;
        *latency_sum = latency_sum.saturating_add(latency);
        *latency_max = (*latency_max).max(latency);
    }
    sums.into_iter()
        .map(
            |((bucket_start_ms, vendor, plugin_version, channel, outcome), (count, sum, max))| {
                BucketDelta {
                    bucket_start_ms,
                    vendor: vendor.to_owned(),
                    plugin_version: plugin_version.to_owned(),
                    channel: channel.to_owned(),
                    outcome,
                    count,
                    latency_sum_ms: sum,
                    latency_max_ms: max,
                }
            },
        )
        .collect()
}

/// The sends of a batch worth keeping one by one: every outcome but `delivered`, and only the
/// last `keep` of them, since the store trims to that many anyway. In an outage every send fails,
/// and writing a whole batch only to delete most of it would multiply the cost of a flush.
pub(crate) fn failures(batch: &[SendRecord], keep: u32) -> Vec<SendRecord> {
    let keep = usize::try_from(keep).unwrap_or(usize::MAX);
    let mut failed: Vec<&SendRecord> = batch
        .iter()
        .rev()
        .filter(|record| record.outcome != OutcomeClass::Delivered)
        .take(keep)
        .collect();
    failed.reverse();
    failed.into_iter().cloned().collect()
}

/// One (vendor, channel, outcome) total as a summary query returns it.
pub(crate) struct OutcomeTotal {
    pub vendor: String,
    pub channel: String,
    pub outcome: OutcomeClass,
    pub count: u64,
    pub latency_sum_ms: u64,
    pub latency_max_ms: u64,
}

/// Folds per-outcome totals, sorted by (vendor, channel), into one summary per vendor.
pub(crate) fn summarise(totals: Vec<OutcomeTotal>) -> Vec<VendorSummary> {
    let mut summaries: Vec<VendorSummary> = Vec::new();
    let mut latency_sums: Vec<u64> = Vec::new();
    for total in totals {
        let same_vendor = summaries
            .last()
            .is_some_and(|s| s.vendor == total.vendor && s.channel == total.channel);
        if !same_vendor {
            summaries.push(VendorSummary {
                vendor: total.vendor,
                channel: total.channel,
                total: 0,
                counts: OutcomeCounts::default(),
                success_rate: 0.0,
                mean_latency_ms: 0.0,
                max_latency_ms: 0,
            });
            latency_sums.push(0);
        }
        if let (Some(summary), Some(latency_sum)) = (summaries.last_mut(), latency_sums.last_mut())
        {
            summary.counts.add(total.outcome, total.count);
            summary.max_latency_ms = summary.max_latency_ms.max(total.latency_max_ms);
            *latency_sum = latency_sum.saturating_add(total.latency_sum_ms);
        }
    }
    for (summary, latency_sum) in summaries.iter_mut().zip(latency_sums) {
        summary.total = summary.counts.total();
        if summary.total > 0 {
            // Counts stay far below 2^53, where f64 would start rounding.
            summary.success_rate = summary.counts.delivered as f64 / summary.total as f64;
            summary.mean_latency_ms = latency_sum as f64 / summary.total as f64;
        }
    }
    summaries
}

/// A stored integer as a count: the schema only ever adds non-negative values.
pub(crate) fn as_count(stored: i64) -> u64 {
    u64::try_from(stored).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(at_ms: i64, vendor: &str, outcome: OutcomeClass, latency_ms: u64) -> SendRecord {
        SendRecord {
            at_ms,
            channel: "sms".into(),
            vendor: vendor.into(),
            plugin_version: "1.0.0".into(),
            outcome,
            latency_ms,
            key: format!("req-{at_ms}/0"),
        }
    }

    #[test]
    fn buckets_start_at_multiples_of_their_width_even_before_the_epoch() {
        assert_eq!(bucket_start(125_000, 60_000), 120_000);
        assert_eq!(bucket_start(120_000, 60_000), 120_000);
        assert_eq!(bucket_start(-1, 60_000), -60_000);
    }

    #[test]
    fn a_batch_folds_into_one_delta_per_bucket_vendor_and_outcome() {
        let batch = [
            send(60_001, "sms-nhn", OutcomeClass::Delivered, 10),
            send(119_999, "sms-nhn", OutcomeClass::Delivered, 30),
            send(120_000, "sms-nhn", OutcomeClass::Delivered, 5),
            send(61_000, "sms-nhn", OutcomeClass::Retry, 700),
            send(61_000, "sms-twilio", OutcomeClass::Delivered, 20),
        ];
        let deltas = aggregate(&batch, 60_000);
        let summary: Vec<_> = deltas
            .iter()
            .map(|d| {
                (
                    d.bucket_start_ms,
                    d.vendor.as_str(),
                    d.outcome,
                    d.count,
                    d.latency_sum_ms,
                    d.latency_max_ms,
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (60_000, "sms-nhn", OutcomeClass::Delivered, 2, 40, 30),
                (60_000, "sms-nhn", OutcomeClass::Retry, 1, 700, 700),
                (60_000, "sms-twilio", OutcomeClass::Delivered, 1, 20, 20),
                (120_000, "sms-nhn", OutcomeClass::Delivered, 1, 5, 5),
            ]
        );
        assert_eq!(failures(&batch, 10).len(), 1);
        assert!(failures(&batch, 0).is_empty());
    }

    #[test]
    fn a_batch_keeps_only_its_last_failures_in_order() {
        let batch = [
            send(1, "sms-nhn", OutcomeClass::Retry, 1),
            send(2, "sms-nhn", OutcomeClass::Rejected, 2),
            send(3, "sms-nhn", OutcomeClass::Delivered, 3),
            send(4, "sms-nhn", OutcomeClass::Failed, 4),
        ];
        let kept: Vec<i64> = failures(&batch, 2).iter().map(|f| f.at_ms).collect();
        assert_eq!(kept, vec![2, 4]);
    }

    #[test]
    fn the_window_starts_at_the_bucket_holding_its_start() {
        let query = HistoryQuery {
            vendor: None,
            since: Duration::from_secs(3600),
            until_ms: Some(10 * 3_600_000 + 30_000),
        };
        assert_eq!(
            query.window(60_000),
            Window {
                from_ms: 9 * 3_600_000,
                until_ms: 10 * 3_600_000 + 30_000
            }
        );
    }

    #[test]
    fn outcome_names_round_trip() {
        for class in OutcomeClass::ALL {
            assert_eq!(class.as_str().parse::<OutcomeClass>(), Ok(class));
        }
        assert!("lost".parse::<OutcomeClass>().is_err());
    }
}
