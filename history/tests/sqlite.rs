//! The SQLite backend, each test on a fresh file in a temporary directory.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod common;

use switchboard_history::{HistoryConfig, HistoryStore};

async fn fresh_store(directory: &tempfile::TempDir) -> HistoryStore {
    // A directory that does not exist yet: opening creates it.
    let path = directory.path().join("nested").join("history.sqlite3");
    HistoryStore::open(&HistoryConfig::Sqlite { path }, common::OPTIONS)
        .await
        .unwrap()
}

#[tokio::test]
async fn buckets_count_and_accumulate_across_flushes() {
    let directory = tempfile::tempdir().unwrap();
    common::buckets_count_and_accumulate_across_flushes(&fresh_store(&directory).await).await;
}

#[tokio::test]
async fn vendor_and_since_filter_the_buckets() {
    let directory = tempfile::tempdir().unwrap();
    common::vendor_and_since_filter_the_buckets(&fresh_store(&directory).await).await;
}

#[tokio::test]
async fn retention_deletes_old_buckets() {
    let directory = tempfile::tempdir().unwrap();
    common::retention_deletes_old_buckets(&fresh_store(&directory).await).await;
}

#[tokio::test]
async fn recent_failures_keep_the_newest() {
    let directory = tempfile::tempdir().unwrap();
    common::recent_failures_keep_the_newest(&fresh_store(&directory).await).await;
}

#[tokio::test]
async fn writer_flushes_by_count_and_by_interval() {
    let directory = tempfile::tempdir().unwrap();
    common::writer_flushes_by_count_and_by_interval(&fresh_store(&directory).await).await;
}

#[tokio::test]
async fn a_full_queue_drops_instead_of_waiting() {
    let directory = tempfile::tempdir().unwrap();
    common::a_full_queue_drops_instead_of_waiting(&fresh_store(&directory).await).await;
}

/// Opening an existing store again keeps its data: the schema is created only when missing.
#[tokio::test]
async fn reopening_keeps_the_history() {
    let directory = tempfile::tempdir().unwrap();
    let first = fresh_store(&directory).await;
    common::buckets_count_and_accumulate_across_flushes(&first).await;
    drop(first);
    let again = fresh_store(&directory).await;
    let rows = again
        .buckets(&switchboard_history::HistoryQuery {
            vendor: None,
            since: std::time::Duration::from_secs(3600),
            until_ms: Some(1_778_313_600_000 + 3_600_000),
        })
        .await
        .unwrap();
    assert_eq!(rows.iter().map(|r| r.count).sum::<u64>(), 5);
}
