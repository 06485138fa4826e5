//! [`HistoryStore`]: one handle over the SQLite and PostgreSQL backends, with the error type both
//! report. Owns the choice of backend and the bucket arithmetic handed to it; never blocks the
//! async runtime (SQLite work runs on the blocking pool).

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{HistoryConfig, StoreOptions};
use crate::model::{self, BucketRow, HistoryQuery, SendRecord, VendorSummary};
use crate::postgres::PostgresHistory;
use crate::sqlite::SqliteHistory;

/// Why the history could not be opened, written or read.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// A field of the `[history]` table is wrong.
    #[error("history.{field} {reason}")]
    Config {
        /// The field, as written in the config file.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The directory of the SQLite file could not be created.
    #[error("cannot create the directory {path} for the history store: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// SQLite failed.
    #[error("history store {path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// The SQLite error.
        source: rusqlite::Error,
    },
    /// PostgreSQL failed: connecting, creating the schema, writing or reading.
    #[error("history database: {}", postgres_detail(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// The store holds a value this version cannot read (e.g. an outcome class written by a
    /// newer version).
    #[error("history store holds an unreadable row: {0}")]
    Corrupt(String),
    /// The blocking task that ran a SQLite operation panicked or was cancelled.
    #[error("history store task ended abnormally: {0}")]
    Task(String),
}

/// tokio-postgres prints a bare "db error"; the server's message is in the source.
fn postgres_detail(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => match std::error::Error::source(error) {
            Some(source) => format!("{error}: {source}"),
            None => error.to_string(),
        },
    }
}

/// The send history: SQLite or PostgreSQL. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct HistoryStore {
    backend: Arc<Backend>,
    options: StoreOptions,
}

enum Backend {
    Sqlite(SqliteHistory),
    Postgres(Box<PostgresHistory>),
}

impl HistoryStore {
    /// Opens (and for SQLite creates) the store and creates its tables and indexes if they do
    /// not exist. Running it again, or from several hosts at once, changes nothing.
    pub async fn open(config: &HistoryConfig, options: StoreOptions) -> Result<Self, HistoryError> {
        let backend = match config {
            HistoryConfig::Sqlite { path } => {
                Backend::Sqlite(SqliteHistory::open(path.clone()).await?)
            }
            HistoryConfig::Postgres { url, tls_ca_file } => Backend::Postgres(Box::new(
                PostgresHistory::open(url, tls_ca_file.as_deref()).await?,
            )),
        };
        Ok(Self {
            backend: Arc::new(backend),
            options,
        })
    }

    /// The bucket width, retention and failed-send limit this store was opened with.
    pub fn options(&self) -> StoreOptions {
        self.options
    }

    /// Adds a batch of sends, in one transaction: the counts of each bucket are upserted (added
    /// to what is stored), and failed sends are appended to the recent failures, which are then
    /// trimmed to [`StoreOptions::recent_failures`]. Callers on the delivery path use
    /// [`crate::HistoryWriter`] instead, which batches and never waits.
    pub async fn record(&self, batch: &[SendRecord]) -> Result<(), HistoryError> {
        if batch.is_empty() {
            return Ok(());
        }
        let deltas = model::aggregate(batch, self.options.bucket_ms());
        let keep = self.options.recent_failures;
        let failures = model::failures(batch, keep);
        match self.backend.as_ref() {
            Backend::Sqlite(store) => store.record(deltas, failures, keep).await,
            Backend::Postgres(store) => store.note(store.record(&deltas, &failures, keep).await),
        }
    }

    /// The stored buckets that start inside the query's window, by bucket start, then vendor,
    /// plugin version, channel and outcome.
    pub async fn buckets(&self, query: &HistoryQuery) -> Result<Vec<BucketRow>, HistoryError> {
        let window = query.window(self.options.bucket_ms());
        match self.backend.as_ref() {
            Backend::Sqlite(store) => store.buckets(window, query.vendor.clone()).await,
            Backend::Postgres(store) => {
                store.note(store.buckets(window, query.vendor.as_deref()).await)
            }
        }
    }

    /// Per-vendor totals over the query's window, by vendor.
    pub async fn summary(&self, query: &HistoryQuery) -> Result<Vec<VendorSummary>, HistoryError> {
        let window = query.window(self.options.bucket_ms());
        let totals = match self.backend.as_ref() {
            Backend::Sqlite(store) => store.outcome_totals(window, query.vendor.clone()).await?,
            Backend::Postgres(store) => {
                store.note(store.outcome_totals(window, query.vendor.as_deref()).await)?
            }
        };
        Ok(model::summarise(totals))
    }

    /// The latest failed sends (any outcome but `delivered`) inside the query's window, newest
    /// first, at most `limit`.
    pub async fn recent_failures(
        &self,
        query: &HistoryQuery,
        limit: u32,
    ) -> Result<Vec<SendRecord>, HistoryError> {
        let window = query.window(self.options.bucket_ms());
        match self.backend.as_ref() {
            Backend::Sqlite(store) => {
                store
                    .recent_failures(window, query.vendor.clone(), limit)
                    .await
            }
            Backend::Postgres(store) => store.note(
                store
                    .recent_failures(window, query.vendor.as_deref(), limit)
                    .await,
            ),
        }
    }

    /// Deletes buckets that started, and failed sends that happened, more than the retention
    /// before `now_ms`. Returns how many rows went. [`crate::HistoryWriter`] calls it on its own.
    pub async fn prune(&self, now_ms: i64) -> Result<u64, HistoryError> {
        let cutoff_ms = now_ms.saturating_sub(self.options.retention_ms());
        match self.backend.as_ref() {
            Backend::Sqlite(store) => store.prune(cutoff_ms).await,
            Backend::Postgres(store) => store.note(store.prune(cutoff_ms).await),
        }
    }
}

impl std::fmt::Debug for HistoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let backend = match self.backend.as_ref() {
            Backend::Sqlite(store) => format!("sqlite {}", store.path().display()),
            Backend::Postgres(store) => format!("postgres {}", store.redacted_url()),
        };
        f.debug_struct("HistoryStore")
            .field("backend", &backend)
            .field("options", &self.options)
            .finish()
    }
}
