//! Scenarios both backends must pass, run by tests/sqlite.rs and tests/postgres.rs, each on an
//! empty store opened with [`OPTIONS`].

use std::time::{Duration, Instant};

use switchboard_history::{
    BucketRow, HistoryQuery, HistoryStore, HistoryWriter, OutcomeClass, SendRecord, StoreOptions,
    WriterOptions, WriterStats, now_ms,
};

/// One-minute buckets, two hours of retention, the last three failed sends.
pub const OPTIONS: StoreOptions = StoreOptions {
    bucket: Duration::from_secs(60),
    retention: Duration::from_secs(2 * 3600),
    recent_failures: 3,
};

/// 2026-05-09 08:00:00 UTC, the start of a bucket.
const BASE: i64 = 1_778_313_600_000;
const MINUTE: i64 = 60_000;

fn send(at_ms: i64, vendor: &str, outcome: OutcomeClass, latency_ms: u64) -> SendRecord {
    SendRecord {
        at_ms,
        channel: "sms".into(),
        vendor: vendor.into(),
        plugin_version: "1.4.0".into(),
        outcome,
        latency_ms,
        key: format!("req-{at_ms}/{latency_ms}"),
    }
}

fn row(
    minute: i64,
    vendor: &str,
    outcome: OutcomeClass,
    count: u64,
    sum: u64,
    max: u64,
) -> BucketRow {
    BucketRow {
        bucket_start_ms: BASE + minute * MINUTE,
        vendor: vendor.into(),
        plugin_version: "1.4.0".into(),
        channel: "sms".into(),
        outcome,
        count,
        latency_sum_ms: sum,
        latency_max_ms: max,
    }
}

/// The hour after BASE, for one vendor or all.
fn first_hour(vendor: Option<&str>) -> HistoryQuery {
    HistoryQuery {
        vendor: vendor.map(str::to_owned),
        since: Duration::from_secs(3600),
        until_ms: Some(BASE + 60 * MINUTE),
    }
}

/// Sends land in the bucket their time falls in, and a second flush adds to the rows the first
/// one wrote instead of replacing them.
pub async fn buckets_count_and_accumulate_across_flushes(store: &HistoryStore) {
    use OutcomeClass::{Delivered, Retry};
    store
        .record(&[
            send(BASE + 1_000, "sms-nhn", Delivered, 10),
            send(BASE + MINUTE - 1, "sms-nhn", Delivered, 30),
            send(BASE + MINUTE, "sms-nhn", Delivered, 5),
            send(BASE + 2_000, "sms-nhn", Retry, 700),
        ])
        .await
        .unwrap();
    store
        .record(&[send(BASE + 30_000, "sms-nhn", Delivered, 50)])
        .await
        .unwrap();

    assert_eq!(
        store.buckets(&first_hour(None)).await.unwrap(),
        vec![
            row(0, "sms-nhn", Delivered, 3, 90, 50),
            row(0, "sms-nhn", Retry, 1, 700, 700),
            row(1, "sms-nhn", Delivered, 1, 5, 5),
        ]
    );
    let summary = store.summary(&first_hour(None)).await.unwrap();
    assert_eq!(summary.len(), 1);
    let nhn = &summary[0];
    assert_eq!(
        (nhn.vendor.as_str(), nhn.channel.as_str()),
        ("sms-nhn", "sms")
    );
    assert_eq!(nhn.total, 5);
    assert_eq!((nhn.counts.delivered, nhn.counts.retry), (4, 1));
    assert!(
        (nhn.success_rate - 0.8).abs() < 1e-9,
        "{}",
        nhn.success_rate
    );
    assert!(
        (nhn.mean_latency_ms - 159.0).abs() < 1e-9,
        "{}",
        nhn.mean_latency_ms
    );
    assert_eq!(nhn.max_latency_ms, 700);
}

/// The vendor filter keeps one vendor; the window starts at the bucket holding `until - since`
/// and ends before `until`.
pub async fn vendor_and_since_filter_the_buckets(store: &HistoryStore) {
    use OutcomeClass::{Delivered, Rejected};
    store
        .record(&[
            send(BASE + 10 * MINUTE, "sms-nhn", Delivered, 20),
            send(BASE + 10 * MINUTE, "sms-twilio", Delivered, 40),
            send(BASE + 43 * MINUTE + 59_999, "sms-nhn", Delivered, 1),
            send(BASE + 44 * MINUTE + 10_000, "sms-nhn", Delivered, 2),
            send(BASE + 50 * MINUTE, "sms-twilio", Rejected, 60),
            send(BASE + 60 * MINUTE, "sms-twilio", Delivered, 3),
        ])
        .await
        .unwrap();

    let twilio = store
        .buckets(&first_hour(Some("sms-twilio")))
        .await
        .unwrap();
    assert_eq!(
        twilio,
        vec![
            row(10, "sms-twilio", Delivered, 1, 40, 40),
            row(50, "sms-twilio", Rejected, 1, 60, 60),
        ]
    );
    let summary = store
        .summary(&first_hour(Some("sms-twilio")))
        .await
        .unwrap();
    assert_eq!(summary.len(), 1);
    assert_eq!(
        (summary[0].vendor.as_str(), summary[0].total),
        ("sms-twilio", 2)
    );
    assert_eq!(summary[0].counts.rejected, 1);

    // 15m30s back from BASE+60m is BASE+44m30s: the window starts at its bucket, BASE+44m.
    let last_quarter = HistoryQuery {
        since: Duration::from_secs(15 * 60 + 30),
        ..first_hour(None)
    };
    assert_eq!(
        store.buckets(&last_quarter).await.unwrap(),
        vec![
            row(44, "sms-nhn", Delivered, 1, 2, 2),
            row(50, "sms-twilio", Rejected, 1, 60, 60),
        ]
    );
    let per_vendor: Vec<(String, u64)> = store
        .summary(&last_quarter)
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.vendor, s.total))
        .collect();
    assert_eq!(
        per_vendor,
        vec![("sms-nhn".to_owned(), 1), ("sms-twilio".to_owned(), 1)]
    );
    let nobody = store.buckets(&first_hour(Some("apns"))).await.unwrap();
    assert!(nobody.is_empty(), "{nobody:?}");
}

/// Pruning deletes buckets and failed sends older than the retention, and keeps the rest.
pub async fn retention_deletes_old_buckets(store: &HistoryStore) {
    use OutcomeClass::{Delivered, Retry};
    let now = now_ms();
    let old = now - 3 * 3600 * 1000;
    let recent = now - 10 * MINUTE;
    store
        .record(&[
            send(old, "sms-nhn", Delivered, 1),
            send(old, "sms-nhn", Retry, 2),
            send(recent, "sms-nhn", Delivered, 3),
            send(recent, "sms-nhn", Retry, 4),
        ])
        .await
        .unwrap();
    let day = HistoryQuery::last(Duration::from_secs(24 * 3600));
    assert_eq!(store.buckets(&day).await.unwrap().len(), 4);

    // Two bucket rows and one failed send are past the two hours of retention.
    assert_eq!(store.prune(now).await.unwrap(), 3);
    let left = store.buckets(&day).await.unwrap();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(
        left.iter()
            .all(|r| r.bucket_start_ms > now - 2 * 3600 * 1000)
    );
    let failures = store.recent_failures(&day, 10).await.unwrap();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].at_ms, recent);
    assert_eq!(store.prune(now).await.unwrap(), 0);
}

/// Only failed sends are kept one by one, only the newest `recent_failures` of them, and with
/// everything needed to find them again (the key).
pub async fn recent_failures_keep_the_newest(store: &HistoryStore) {
    use OutcomeClass::{DeadLettered, Delivered, Failed, InvalidRecipient, Rejected, Retry};
    store
        .record(&[
            send(BASE + 1_000, "sms-nhn", Retry, 1),
            send(BASE + 2_000, "sms-nhn", Rejected, 2),
            send(BASE + 3_000, "sms-nhn", Delivered, 3),
        ])
        .await
        .unwrap();
    store
        .record(&[
            send(BASE + 4_000, "sms-twilio", InvalidRecipient, 4),
            send(BASE + 5_000, "sms-nhn", DeadLettered, 5),
            send(BASE + 6_000, "sms-nhn", Failed, 6),
            send(BASE + 7_000, "sms-nhn", Delivered, 7),
        ])
        .await
        .unwrap();
    let all = store.recent_failures(&first_hour(None), 10).await.unwrap();
    let kept: Vec<(&str, OutcomeClass, &str)> = all
        .iter()
        .map(|f| (f.vendor.as_str(), f.outcome, f.key.as_str()))
        .collect();
    assert_eq!(
        kept,
        vec![
            (
                "sms-nhn",
                Failed,
                format!("req-{}/6", BASE + 6_000).as_str()
            ),
            (
                "sms-nhn",
                DeadLettered,
                format!("req-{}/5", BASE + 5_000).as_str()
            ),
            (
                "sms-twilio",
                InvalidRecipient,
                format!("req-{}/4", BASE + 4_000).as_str()
            ),
        ]
    );
    let nhn = store
        .recent_failures(&first_hour(Some("sms-nhn")), 1)
        .await
        .unwrap();
    assert_eq!(nhn.len(), 1);
    assert_eq!(nhn[0], send(BASE + 6_000, "sms-nhn", Failed, 6));
}

/// Waits until the store holds `total` sends of the last hour, or fails after 10 s.
async fn wait_for_total(store: &HistoryStore, total: u64) {
    let started = Instant::now();
    loop {
        let stored: u64 = store
            .summary(&HistoryQuery::last(Duration::from_secs(3600)))
            .await
            .unwrap()
            .iter()
            .map(|s| s.total)
            .sum();
        if stored == total {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the store holds {stored} sends, expected {total}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn stored_total(store: &HistoryStore) -> u64 {
    store
        .summary(&HistoryQuery::last(Duration::from_secs(3600)))
        .await
        .unwrap()
        .iter()
        .map(|s| s.total)
        .sum()
}

/// The writer flushes when `flush_records` are waiting and when `flush_interval` passes, and
/// each flush adds to the same bucket rows.
pub async fn writer_flushes_by_count_and_by_interval(store: &HistoryStore) {
    let at = now_ms();
    let delivered = |i: u64| send(at, "sms-nhn", OutcomeClass::Delivered, i);

    // A flush interval of an hour: only the count can make these five appear.
    let by_count = HistoryWriter::start(
        store.clone(),
        WriterOptions {
            capacity: 1000,
            flush_records: 5,
            flush_interval: Duration::from_secs(3600),
            prune_interval: Duration::from_secs(3600),
        },
    );
    let sender = by_count.sender();
    assert_eq!(sender.submit_all((0..5).map(delivered)), 5);
    wait_for_total(store, 5).await;
    assert_eq!(sender.submit_all((5..7).map(delivered)), 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        stored_total(store).await,
        5,
        "two sends are below the count and the interval"
    );
    // Shutting down flushes what is queued.
    assert_eq!(
        by_count.shutdown().await,
        WriterStats {
            written: 7,
            dropped: 0,
            failed: 0
        }
    );
    assert_eq!(stored_total(store).await, 7);

    // A count no test reaches: only the interval can make these three appear.
    let by_interval = HistoryWriter::start(
        store.clone(),
        WriterOptions {
            capacity: 1000,
            flush_records: 1_000_000,
            flush_interval: Duration::from_millis(50),
            prune_interval: Duration::from_secs(3600),
        },
    );
    assert_eq!(by_interval.sender().submit_all((7..10).map(delivered)), 3);
    wait_for_total(store, 10).await;
    by_interval.shutdown().await;

    // Three flushes, one row.
    let rows = store
        .buckets(&HistoryQuery::last(Duration::from_secs(3600)))
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (
            rows[0].count,
            rows[0].latency_sum_ms,
            rows[0].latency_max_ms
        ),
        (10, 45, 9)
    );
}

/// A full queue refuses records at once and counts them; the delivery path never waits. The
/// test runs on one thread, so the writer task cannot drain the queue while records go in: if
/// `submit` waited for room, this would hang.
pub async fn a_full_queue_drops_instead_of_waiting(store: &HistoryStore) {
    let writer = HistoryWriter::start(
        store.clone(),
        WriterOptions {
            capacity: 4,
            flush_records: 1000,
            flush_interval: Duration::from_secs(3600),
            prune_interval: Duration::from_secs(3600),
        },
    );
    let sender = writer.sender();
    let at = now_ms();
    let started = Instant::now();
    let accepted: Vec<bool> = (0..10)
        .map(|i| sender.submit(send(at, "sms-nhn", OutcomeClass::Delivered, i)))
        .collect();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(accepted, [[true; 4].as_slice(), &[false; 6]].concat());
    assert_eq!(sender.dropped(), 6);

    let stats = writer.shutdown().await;
    assert_eq!(
        stats,
        WriterStats {
            written: 4,
            dropped: 6,
            failed: 0
        }
    );
    assert_eq!(stored_total(store).await, 4);
    // After shutdown, records are refused and counted too.
    assert!(!sender.submit(send(at, "sms-nhn", OutcomeClass::Delivered, 99)));
    assert_eq!(sender.dropped(), 7);
}
