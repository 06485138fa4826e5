//! The SQLite backend: one connection to a local file, used from the blocking thread pool so the
//! async runtime never waits on disk. Owns the SQLite schema and statements; never runs SQLite on
//! an async worker thread.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::{Connection, params};

use crate::model::{self, BucketDelta, BucketRow, OutcomeClass, OutcomeTotal, SendRecord, Window};
use crate::store::HistoryError;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS history_buckets (
    bucket_start_ms INTEGER NOT NULL,
    vendor          TEXT    NOT NULL,
    plugin_version  TEXT    NOT NULL,
    channel         TEXT    NOT NULL,
    outcome         TEXT    NOT NULL,
    count           INTEGER NOT NULL,
    latency_sum_ms  INTEGER NOT NULL,
    latency_max_ms  INTEGER NOT NULL,
    PRIMARY KEY (bucket_start_ms, vendor, plugin_version, channel, outcome)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS history_buckets_by_vendor
    ON history_buckets (vendor, bucket_start_ms);
CREATE TABLE IF NOT EXISTS history_failures (
    id             INTEGER PRIMARY KEY,
    at_ms          INTEGER NOT NULL,
    channel        TEXT    NOT NULL,
    vendor         TEXT    NOT NULL,
    plugin_version TEXT    NOT NULL,
    outcome        TEXT    NOT NULL,
    latency_ms     INTEGER NOT NULL,
    key            TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS history_failures_by_time ON history_failures (at_ms);
";

const UPSERT_BUCKET: &str = "
INSERT INTO history_buckets
    (bucket_start_ms, vendor, plugin_version, channel, outcome, count, latency_sum_ms, latency_max_ms)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
ON CONFLICT (bucket_start_ms, vendor, plugin_version, channel, outcome) DO UPDATE SET
    count = count + excluded.count,
    latency_sum_ms = latency_sum_ms + excluded.latency_sum_ms,
    latency_max_ms = MAX(latency_max_ms, excluded.latency_max_ms)";

const INSERT_FAILURE: &str = "
INSERT INTO history_failures (at_ms, channel, vendor, plugin_version, outcome, latency_ms, key)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

/// Keeps the newest `?1` failures: everything at or below the id `?1` places from the top goes.
const TRIM_FAILURES: &str = "
DELETE FROM history_failures
WHERE id <= (SELECT id FROM history_failures ORDER BY id DESC LIMIT 1 OFFSET ?1)";

pub(crate) struct SqliteHistory {
    path: PathBuf,
    /// One connection: SQLite takes one writer at a time anyway, and the writer task is the only
    /// frequent caller. Shared with the blocking closures, hence the `Arc`.
    connection: Arc<Mutex<Connection>>,
}

impl SqliteHistory {
    pub(crate) async fn open(path: PathBuf) -> Result<Self, HistoryError> {
        let opened_path = path.clone();
        let connection = tokio::task::spawn_blocking(move || open_blocking(&opened_path))
            .await
            .map_err(|error| HistoryError::Task(error.to_string()))??;
        Ok(Self {
            path,
            connection: Arc::new(Mutex::new(connection)),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `work` on the blocking pool with the connection.
    async fn run<T, F>(&self, work: F) -> Result<T, HistoryError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let connection = Arc::clone(&self.connection);
        let result = tokio::task::spawn_blocking(move || {
            // A panic while the lock was held leaves no half-done transaction behind (rusqlite
            // rolls back on drop), so the connection is still good to use.
            let mut connection = connection.lock().unwrap_or_else(PoisonError::into_inner);
            work(&mut connection)
        })
        .await
        .map_err(|error| HistoryError::Task(error.to_string()))?;
        result.map_err(|source| self.error(source))
    }

    fn error(&self, source: rusqlite::Error) -> HistoryError {
        match source {
            rusqlite::Error::FromSqlConversionFailure(_, _, cause) => {
                HistoryError::Corrupt(cause.to_string())
            }
            source => HistoryError::Sqlite {
                path: self.path.clone(),
                source,
            },
        }
    }

    pub(crate) async fn record(
        &self,
        deltas: Vec<BucketDelta>,
        failures: Vec<SendRecord>,
        keep_failures: u32,
    ) -> Result<(), HistoryError> {
        self.run(move |connection| {
            let transaction = connection.transaction()?;
            {
                let mut upsert = transaction.prepare(UPSERT_BUCKET)?;
                for delta in &deltas {
                    upsert.execute(params![
                        delta.bucket_start_ms,
                        delta.vendor,
                        delta.plugin_version,
                        delta.channel,
                        delta.outcome.as_str(),
                        delta.count,
                        delta.latency_sum_ms,
                        delta.latency_max_ms,
                    ])?;
                }
                if !failures.is_empty() {
                    let mut insert = transaction.prepare(INSERT_FAILURE)?;
                    for failure in &failures {
                        insert.execute(params![
                            failure.at_ms,
                            failure.channel,
                            failure.vendor,
                            failure.plugin_version,
                            failure.outcome.as_str(),
                            i64::try_from(failure.latency_ms).unwrap_or(i64::MAX),
                            failure.key,
                        ])?;
                    }
                    transaction.execute(TRIM_FAILURES, params![keep_failures])?;
                }
            }
            transaction.commit()
        })
        .await
    }

    pub(crate) async fn buckets(
        &self,
        window: Window,
        vendor: Option<String>,
    ) -> Result<Vec<BucketRow>, HistoryError> {
        self.run(move |connection| {
            let mut statement = connection.prepare(
                "SELECT bucket_start_ms, vendor, plugin_version, channel, outcome,
                        count, latency_sum_ms, latency_max_ms
                 FROM history_buckets
                 WHERE bucket_start_ms >= ?1 AND bucket_start_ms < ?2
                   AND (?3 IS NULL OR vendor = ?3)
                 ORDER BY bucket_start_ms, vendor, plugin_version, channel, outcome",
            )?;
            let rows =
                statement.query_map(params![window.from_ms, window.until_ms, vendor], |row| {
                    Ok(BucketRow {
                        bucket_start_ms: row.get(0)?,
                        vendor: row.get(1)?,
                        plugin_version: row.get(2)?,
                        channel: row.get(3)?,
                        outcome: outcome_column(row, 4)?,
                        count: model::as_count(row.get(5)?),
                        latency_sum_ms: model::as_count(row.get(6)?),
                        latency_max_ms: model::as_count(row.get(7)?),
                    })
                })?;
            rows.collect()
        })
        .await
    }

    pub(crate) async fn outcome_totals(
        &self,
        window: Window,
        vendor: Option<String>,
    ) -> Result<Vec<OutcomeTotal>, HistoryError> {
        self.run(move |connection| {
            let mut statement = connection.prepare(
                "SELECT vendor, channel, outcome,
                        SUM(count), SUM(latency_sum_ms), MAX(latency_max_ms)
                 FROM history_buckets
                 WHERE bucket_start_ms >= ?1 AND bucket_start_ms < ?2
                   AND (?3 IS NULL OR vendor = ?3)
                 GROUP BY vendor, channel, outcome
                 ORDER BY vendor, channel, outcome",
            )?;
            let rows =
                statement.query_map(params![window.from_ms, window.until_ms, vendor], |row| {
                    Ok(OutcomeTotal {
                        vendor: row.get(0)?,
                        channel: row.get(1)?,
                        outcome: outcome_column(row, 2)?,
                        count: model::as_count(row.get(3)?),
                        latency_sum_ms: model::as_count(row.get(4)?),
                        latency_max_ms: model::as_count(row.get(5)?),
                    })
                })?;
            rows.collect()
        })
        .await
    }

    pub(crate) async fn recent_failures(
        &self,
        window: Window,
        vendor: Option<String>,
        limit: u32,
    ) -> Result<Vec<SendRecord>, HistoryError> {
        self.run(move |connection| {
            let mut statement = connection.prepare(
                "SELECT at_ms, channel, vendor, plugin_version, outcome, latency_ms, key
                 FROM history_failures
                 WHERE at_ms >= ?1 AND at_ms < ?2 AND (?3 IS NULL OR vendor = ?3)
                 ORDER BY at_ms DESC, id DESC
                 LIMIT ?4",
            )?;
            let rows = statement.query_map(
                params![window.from_ms, window.until_ms, vendor, limit],
                |row| {
                    Ok(SendRecord {
                        at_ms: row.get(0)?,
                        channel: row.get(1)?,
                        vendor: row.get(2)?,
                        plugin_version: row.get(3)?,
                        outcome: outcome_column(row, 4)?,
                        latency_ms: model::as_count(row.get(5)?),
                        key: row.get(6)?,
                    })
                },
            )?;
            rows.collect()
        })
        .await
    }

    pub(crate) async fn prune(&self, cutoff_ms: i64) -> Result<u64, HistoryError> {
        self.run(move |connection| {
            let transaction = connection.transaction()?;
            let buckets = transaction.execute(
                "DELETE FROM history_buckets WHERE bucket_start_ms < ?1",
                params![cutoff_ms],
            )?;
            let failures = transaction.execute(
                "DELETE FROM history_failures WHERE at_ms < ?1",
                params![cutoff_ms],
            )?;
            transaction.commit()?;
            Ok((buckets + failures) as u64)
        })
        .await
    }
}

fn open_blocking(path: &Path) -> Result<Connection, HistoryError> {
    let sqlite_error = |source| HistoryError::Sqlite {
        path: path.to_owned(),
        source,
    };
    if let Some(directory) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(directory).map_err(|source| HistoryError::CreateDir {
            path: directory.to_owned(),
            source,
        })?;
    }
    let connection = Connection::open(path).map_err(sqlite_error)?;
    // WAL lets `switchboard history` read while the host writes. `synchronous = NORMAL` may lose
    // the last flushes on power loss, never corrupts the file; history is not the source of truth.
    connection
        .pragma_update(None, "journal_mode", "WAL")
        .map_err(sqlite_error)?;
    connection
        .pragma_update(None, "synchronous", "NORMAL")
        .map_err(sqlite_error)?;
    connection
        .busy_timeout(std::time::Duration::from_secs(5))
        .map_err(sqlite_error)?;
    connection.execute_batch(SCHEMA).map_err(sqlite_error)?;
    Ok(connection)
}

fn outcome_column(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<OutcomeClass> {
    let name: String = row.get(index)?;
    name.parse().map_err(|reason: String| {
        rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, reason.into())
    })
}
