//! `switchboard dlq replay`: sends dead-lettered deliveries back to their lane.
//!
//! A delivery record (a [`RetryRecord`]) goes to the retry topic, due now and with a fresh
//! `first_seen`, so `give_up_after` counts from the replay. It keeps its idempotency key, so the
//! dedup store still skips a recipient that was delivered meanwhile: a replay never sends a
//! delivered recipient again. A whole request that was dead-lettered before it was expanded
//! (unknown channel, expired) goes back to its origin topic as it was. Undecodable records
//! cannot be replayed and are only counted.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

use super::inspect::{DlqScan, PROGRESS_EVERY};
use super::{Outbox, ReasonClass, RetryRecord, headers};
use crate::clock::now_ms;

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

/// Replays the DLQ records matching `filter`, reading the DLQ up to its end at the start.
/// `properties` are `[kafka.properties]`, as the host's own clients take them. `progress` is
/// told how far the read is (records read, records in the DLQ) every two seconds.
pub async fn replay(
    brokers: &str,
    dlq_topic: &str,
    properties: &BTreeMap<String, String>,
    outbox: &Outbox,
    filter: &ReplayFilter,
) -> anyhow::Result<ReplaySummary> {
    replay_with_progress(
        brokers,
        dlq_topic,
        properties,
        outbox,
        filter,
        PROGRESS_EVERY,
        &mut |_, _, _| {},
    )
    .await
}

/// As [`replay`], telling `progress` (records read, records in the DLQ, the summary so far)
/// how far it is every `every` ([`PROGRESS_EVERY`] on the command line).
pub async fn replay_with_progress(
    brokers: &str,
    dlq_topic: &str,
    properties: &BTreeMap<String, String>,
    outbox: &Outbox,
    filter: &ReplayFilter,
    every: Duration,
    progress: &mut dyn FnMut(u64, u64, &ReplaySummary),
) -> anyhow::Result<ReplaySummary> {
    let mut scan = DlqScan::open(brokers, dlq_topic, properties)?.with_progress_every(every);
    let mut summary = ReplaySummary::default();
    while let Some(record) = scan.next_record()? {
        if scan.progress_due() {
            progress(scan.read, scan.total, &summary);
        }
        summary.scanned += 1;
        let class = record.class();
        if filter.reason.is_some_and(|r| r.as_str() != class)
            || record.dead_at_ms() < filter.since_ms
        {
            continue;
        }
        if record.header(headers::TRUNCATED).is_some() {
            // Only a prefix is here; the whole record is at its origin coordinates.
            summary.not_replayable += 1;
        } else if let Ok(mut retry) = serde_json::from_slice::<RetryRecord>(&record.payload) {
            summary.to_retry_topic += 1;
            if !filter.dry_run {
                retry.due_at_ms = now_ms();
                retry.first_seen_ms = now_ms();
                retry.replayed = true;
                outbox
                    .retry(&mut retry)
                    .await
                    .with_context(|| format!("replaying `{}` to the retry topic", retry.key))?;
            }
        } else if matches!(class, "unknown-channel" | "expired")
            && let Some(topic) = record.header(headers::ORIGIN_TOPIC)
        {
            summary.to_origin_topic += 1;
            if !filter.dry_run {
                outbox
                    .republish(topic, &record.key, &record.payload)
                    .await
                    .with_context(|| format!("replaying `{}` to `{topic}`", record.key))?;
            }
        } else {
            summary.not_replayable += 1;
        }
    }
    Ok(summary)
}
