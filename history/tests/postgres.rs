//! The PostgreSQL backend against a real server: `make services` starts one on 127.0.0.1:5440
//! and sets SWITCHBOARD_TEST_POSTGRES. Each test works in a schema of its own, dropped at the end.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod common;

use switchboard_history::{HistoryConfig, HistoryStore};

fn postgres_url() -> String {
    std::env::var("SWITCHBOARD_TEST_POSTGRES").expect(
        "SWITCHBOARD_TEST_POSTGRES is not set: run `make services` (or `make test`), which starts \
         PostgreSQL on 127.0.0.1:5440 and sets it",
    )
}

/// A schema of the test's own in the test database, so tests running at once never see each
/// other's rows.
struct Scratch {
    schema: String,
}

impl Scratch {
    async fn create(test: &str) -> (HistoryStore, Scratch) {
        let scratch = Self::empty(test).await;
        let config = HistoryConfig::Postgres {
            url: scratch.url(),
            tls_ca_file: None,
        };
        let store = HistoryStore::open(&config, common::OPTIONS).await.unwrap();
        (store, scratch)
    }

    /// A new schema without tables.
    async fn empty(test: &str) -> Scratch {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let schema = format!("sbhist_{test}_{}_{nanos}", std::process::id());
        Self::execute(&format!("CREATE SCHEMA {schema}")).await;
        Scratch { schema }
    }

    /// The test database's URL, with the scratch schema first on the search path.
    fn url(&self) -> String {
        let base = postgres_url();
        let separator = if base.contains('?') { '&' } else { '?' };
        format!(
            "{base}{separator}options=-c%20search_path%3D{}",
            self.schema
        )
    }

    async fn execute(sql: &str) {
        let (client, connection) = tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|error| {
                panic!("cannot reach the test PostgreSQL (run `make services`): {error}")
            });
        let connection = tokio::spawn(connection);
        client.batch_execute(sql).await.unwrap();
        drop(client);
        let _ = connection.await;
    }

    async fn drop_schema(self) {
        Self::execute(&format!("DROP SCHEMA {} CASCADE", self.schema)).await;
    }
}

#[tokio::test]
async fn buckets_count_and_accumulate_across_flushes() {
    let (store, scratch) = Scratch::create("buckets").await;
    common::buckets_count_and_accumulate_across_flushes(&store).await;
    scratch.drop_schema().await;
}

#[tokio::test]
async fn vendor_and_since_filter_the_buckets() {
    let (store, scratch) = Scratch::create("filters").await;
    common::vendor_and_since_filter_the_buckets(&store).await;
    scratch.drop_schema().await;
}

#[tokio::test]
async fn retention_deletes_old_buckets() {
    let (store, scratch) = Scratch::create("retention").await;
    common::retention_deletes_old_buckets(&store).await;
    scratch.drop_schema().await;
}

#[tokio::test]
async fn recent_failures_keep_the_newest() {
    let (store, scratch) = Scratch::create("failures").await;
    common::recent_failures_keep_the_newest(&store).await;
    scratch.drop_schema().await;
}

#[tokio::test]
async fn writer_flushes_by_count_and_by_interval() {
    let (store, scratch) = Scratch::create("writer").await;
    common::writer_flushes_by_count_and_by_interval(&store).await;
    scratch.drop_schema().await;
}

#[tokio::test]
async fn a_full_queue_drops_instead_of_waiting() {
    let (store, scratch) = Scratch::create("full_queue").await;
    common::a_full_queue_drops_instead_of_waiting(&store).await;
    scratch.drop_schema().await;
}

/// Hosts starting together on an empty database each create the tables; none fails. (Without a
/// lock, concurrent `CREATE TABLE IF NOT EXISTS` collide in PostgreSQL's catalog.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn opening_concurrently_is_idempotent() {
    let scratch = Scratch::empty("concurrent_open").await;
    let config = HistoryConfig::Postgres {
        url: scratch.url(),
        tls_ca_file: None,
    };
    let mut opening = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let config = config.clone();
        opening.spawn(async move { HistoryStore::open(&config, common::OPTIONS).await.map(drop) });
    }
    while let Some(opened) = opening.join_next().await {
        opened.unwrap().unwrap();
    }
    scratch.drop_schema().await;
}

/// A connection the server drops is opened again by the next operation, so one lost connection
/// costs at most one flush.
#[tokio::test]
async fn a_dropped_connection_is_reopened() {
    let scratch = Scratch::empty("reconnect").await;
    let application = format!("{}_app", scratch.schema);
    let config = HistoryConfig::Postgres {
        url: format!("{}&application_name={application}", scratch.url()),
        tls_ca_file: None,
    };
    let store = HistoryStore::open(&config, common::OPTIONS).await.unwrap();
    Scratch::execute(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{application}'"
    ))
    .await;

    let sends = [switchboard_history::SendRecord {
        at_ms: switchboard_history::now_ms(),
        channel: "sms".into(),
        vendor: "sms-nhn".into(),
        plugin_version: "1.4.0".into(),
        outcome: switchboard_history::OutcomeClass::Delivered,
        latency_ms: 12,
        key: "req-1/0".into(),
    }];
    // The session is terminated asynchronously: whichever operation meets the dead connection
    // first fails, once, and the one after it must run on a fresh connection.
    let mut failed = 0;
    if store.record(&sends).await.is_err() {
        failed += 1;
        store.record(&sends).await.unwrap();
    }
    let query = switchboard_history::HistoryQuery::last(std::time::Duration::from_secs(3600));
    let summary = match store.summary(&query).await {
        Ok(summary) => summary,
        Err(_) => {
            failed += 1;
            store.summary(&query).await.unwrap()
        }
    };
    assert!(failed <= 1, "the dead connection cost {failed} operations");
    assert_eq!(summary.len(), 1);
    assert_eq!(summary[0].total, 1);
    scratch.drop_schema().await;
}
