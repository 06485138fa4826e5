//! The PostgreSQL backend, for a fleet of hosts writing one history. Owns the PostgreSQL schema,
//! statements and the one connection (re-opened when it drops); never logs or returns the URL's
//! password.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};
use tokio_postgres::config::SslMode;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::redact_url;
use crate::model::{self, BucketDelta, BucketRow, OutcomeClass, OutcomeTotal, SendRecord, Window};
use crate::store::HistoryError;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS history_buckets (
    bucket_start_ms BIGINT NOT NULL,
    vendor          TEXT   NOT NULL,
    plugin_version  TEXT   NOT NULL,
    channel         TEXT   NOT NULL,
    outcome         TEXT   NOT NULL,
    count           BIGINT NOT NULL,
    latency_sum_ms  BIGINT NOT NULL,
    latency_max_ms  BIGINT NOT NULL,
    PRIMARY KEY (bucket_start_ms, vendor, plugin_version, channel, outcome)
);
CREATE INDEX IF NOT EXISTS history_buckets_by_vendor
    ON history_buckets (vendor, bucket_start_ms);
CREATE TABLE IF NOT EXISTS history_failures (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at_ms          BIGINT NOT NULL,
    channel        TEXT   NOT NULL,
    vendor         TEXT   NOT NULL,
    plugin_version TEXT   NOT NULL,
    outcome        TEXT   NOT NULL,
    latency_ms     BIGINT NOT NULL,
    key            TEXT   NOT NULL
);
CREATE INDEX IF NOT EXISTS history_failures_by_time ON history_failures (at_ms);
";

/// Serialises schema creation between hosts starting at once: concurrent `CREATE TABLE IF NOT
/// EXISTS` can still collide in the catalog. Any constant works; this one spells "swbd-his".
const SCHEMA_LOCK: i64 = 0x7377_6264_2d68_6973;

/// One statement per flush, whatever the number of rows: the arrays are unnested server-side.
const UPSERT_BUCKETS: &str = "
INSERT INTO history_buckets
    (bucket_start_ms, vendor, plugin_version, channel, outcome, count, latency_sum_ms, latency_max_ms)
SELECT * FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[],
                     $6::BIGINT[], $7::BIGINT[], $8::BIGINT[])
ON CONFLICT (bucket_start_ms, vendor, plugin_version, channel, outcome) DO UPDATE SET
    count = history_buckets.count + EXCLUDED.count,
    latency_sum_ms = history_buckets.latency_sum_ms + EXCLUDED.latency_sum_ms,
    latency_max_ms = GREATEST(history_buckets.latency_max_ms, EXCLUDED.latency_max_ms)";

const INSERT_FAILURES: &str = "
INSERT INTO history_failures (at_ms, channel, vendor, plugin_version, outcome, latency_ms, key)
SELECT * FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[],
                     $6::BIGINT[], $7::TEXT[])";

/// Keeps the newest `$1` failures of all hosts.
const TRIM_FAILURES: &str = "
DELETE FROM history_failures
WHERE id <= (SELECT id FROM history_failures ORDER BY id DESC LIMIT 1 OFFSET $1)";

/// The TLS client for `sslmode=require`: the system's CA roots and those in `ca_file`, on ring
/// (the one crypto provider in the tree). A system without roots is fine when `ca_file` names
/// the one that signed the server's certificate.
fn tls_client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, HistoryError> {
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable system certificates are skipped: one broken file must not stop the history.
    let (_, _) = roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(path) = ca_file {
        let tls_error = |reason: String| HistoryError::Config {
            field: "tls_ca_file",
            reason,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| {
                tls_error(format!(
                    "{}: not a PEM file of certificates: {e}",
                    path.display()
                ))
            })?;
        if certs.is_empty() {
            return Err(tls_error(format!(
                "{}: holds no certificate",
                path.display()
            )));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| tls_error(format!("{}: {e}", path.display())))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HistoryError::Config {
            field: "url",
            reason: format!("TLS set-up failed: {e}"),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The parsed URL and, with `sslmode=require`, the TLS connector. Every fault here is the
/// config's, and says which field: a URL that does not parse, a CA file that does not read, or
/// a CA file with a URL that would not use it.
pub(crate) fn connection_settings(
    url: &str,
    tls_ca_file: Option<&Path>,
) -> Result<(tokio_postgres::Config, Option<MakeRustlsConnect>), HistoryError> {
    let config: tokio_postgres::Config = url.parse().map_err(|e| HistoryError::Config {
        field: "url",
        reason: format!("does not parse as a PostgreSQL URL: {e}"),
    })?;
    // Only `require` turns TLS on. With tokio-postgres's default, `prefer`, a connector would
    // try TLS first and fail on a server whose certificate nobody asked us to check, where
    // libpq's `prefer` would have connected unverified; plain TCP keeps that case working.
    let tls = match config.get_ssl_mode() {
        SslMode::Require => Some(MakeRustlsConnect::new(tls_client_config(tls_ca_file)?)),
        _ if tls_ca_file.is_some() => {
            return Err(HistoryError::Config {
                field: "tls_ca_file",
                reason: "is set, but the URL does not say sslmode=require: the connection \
                         would be plain TCP and the CA file unused"
                    .into(),
            });
        }
        _ => None,
    };
    Ok((config, tls))
}

pub(crate) struct PostgresHistory {
    config: tokio_postgres::Config,
    /// Set when the URL says `sslmode=require`: every connection is TLS, the server verified.
    tls: Option<MakeRustlsConnect>,
    redacted_url: String,
    /// The connection, or `None` after it was lost; the next operation reconnects. Behind a
    /// mutex because a transaction needs the client to itself.
    client: Mutex<Option<Client>>,
    /// Set when an operation failed on the database. The client may not say it is closed yet
    /// (its connection task learns of the close on its own schedule), so the next operation
    /// reconnects on this alone.
    lost: std::sync::atomic::AtomicBool,
}

impl PostgresHistory {
    pub(crate) async fn open(url: &str, tls_ca_file: Option<&Path>) -> Result<Self, HistoryError> {
        let (mut config, tls) = connection_settings(url, tls_ca_file)?;
        if config.get_connect_timeout().is_none() {
            // A database that does not answer must not hold the writer for the OS's TCP timeout.
            config.connect_timeout(Duration::from_secs(5));
        }
        if config.get_application_name().is_none() {
            // So a DBA can tell these sessions apart in pg_stat_activity.
            config.application_name("switchboard-history");
        }
        let store = Self {
            config,
            tls,
            redacted_url: redact_url(url),
            client: Mutex::new(None),
            lost: std::sync::atomic::AtomicBool::new(false),
        };
        let mut client = store.connect().await?;
        let transaction = client.transaction().await?;
        transaction
            .execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .await?;
        transaction.batch_execute(SCHEMA).await?;
        transaction.commit().await?;
        *store.client.lock().await = Some(client);
        Ok(store)
    }

    pub(crate) fn redacted_url(&self) -> &str {
        &self.redacted_url
    }

    async fn connect(&self) -> Result<Client, HistoryError> {
        let client = match &self.tls {
            Some(tls) => {
                let (client, connection) = self.config.connect(tls.clone()).await?;
                self.watch(connection);
                client
            }
            None => {
                let (client, connection) = self.config.connect(NoTls).await?;
                self.watch(connection);
                client
            }
        };
        Ok(client)
    }

    /// Runs a connection's task, and says so when the database closes it.
    fn watch<S, T>(&self, connection: tokio_postgres::Connection<S, T>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        T: tokio_postgres::tls::TlsStream + Unpin + Send + 'static,
    {
        let url = self.redacted_url.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!(
                    event = "history_connection_lost",
                    url = %url,
                    error = %error,
                    "history database connection closed; the next write reconnects"
                );
            }
        });
    }

    /// Passes `result` through; after any database error the next operation starts on a fresh
    /// connection. A terminated session first answers with a server error (57P01), and only
    /// later reports itself closed, so waiting for `is_closed` would fail the next write too.
    /// Reconnecting after an ordinary error costs one connect, and errors are rare.
    pub(crate) fn note<T>(&self, result: Result<T, HistoryError>) -> Result<T, HistoryError> {
        if let Err(HistoryError::Postgres(_)) = &result {
            self.lost.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        result
    }

    /// The connection, reconnecting first when there is none or it was closed.
    async fn client(&self) -> Result<MappedMutexGuard<'_, Client>, HistoryError> {
        let mut slot = self.client.lock().await;
        let lost = self.lost.swap(false, std::sync::atomic::Ordering::Relaxed);
        let client = match slot.take() {
            Some(client) if !client.is_closed() && !lost => client,
            _ => self.connect().await?,
        };
        Ok(MutexGuard::map(slot, |slot| slot.insert(client)))
    }

    pub(crate) async fn record(
        &self,
        deltas: &[BucketDelta],
        failures: &[SendRecord],
        keep_failures: u32,
    ) -> Result<(), HistoryError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;

        let bucket_starts: Vec<i64> = deltas.iter().map(|d| d.bucket_start_ms).collect();
        let vendors: Vec<&str> = deltas.iter().map(|d| d.vendor.as_str()).collect();
        let versions: Vec<&str> = deltas.iter().map(|d| d.plugin_version.as_str()).collect();
        let channels: Vec<&str> = deltas.iter().map(|d| d.channel.as_str()).collect();
        let outcomes: Vec<&str> = deltas.iter().map(|d| d.outcome.as_str()).collect();
        let counts: Vec<i64> = deltas.iter().map(|d| d.count).collect();
        let latency_sums: Vec<i64> = deltas.iter().map(|d| d.latency_sum_ms).collect();
        let latency_maxes: Vec<i64> = deltas.iter().map(|d| d.latency_max_ms).collect();
        let bucket_params: [&(dyn ToSql + Sync); 8] = [
            &bucket_starts,
            &vendors,
            &versions,
            &channels,
            &outcomes,
            &counts,
            &latency_sums,
            &latency_maxes,
        ];
        transaction.execute(UPSERT_BUCKETS, &bucket_params).await?;

        if !failures.is_empty() {
            let at: Vec<i64> = failures.iter().map(|f| f.at_ms).collect();
            let channels: Vec<&str> = failures.iter().map(|f| f.channel.as_str()).collect();
            let vendors: Vec<&str> = failures.iter().map(|f| f.vendor.as_str()).collect();
            let versions: Vec<&str> = failures.iter().map(|f| f.plugin_version.as_str()).collect();
            let outcomes: Vec<&str> = failures.iter().map(|f| f.outcome.as_str()).collect();
            let latencies: Vec<i64> = failures
                .iter()
                .map(|f| i64::try_from(f.latency_ms).unwrap_or(i64::MAX))
                .collect();
            let keys: Vec<&str> = failures.iter().map(|f| f.key.as_str()).collect();
            let failure_params: [&(dyn ToSql + Sync); 7] = [
                &at, &channels, &vendors, &versions, &outcomes, &latencies, &keys,
            ];
            transaction
                .execute(INSERT_FAILURES, &failure_params)
                .await?;
            transaction
                .execute(TRIM_FAILURES, &[&i64::from(keep_failures)])
                .await?;
        }
        transaction.commit().await?;
        Ok(())
    }

    pub(crate) async fn buckets(
        &self,
        window: Window,
        vendor: Option<&str>,
    ) -> Result<Vec<BucketRow>, HistoryError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT bucket_start_ms, vendor, plugin_version, channel, outcome,
                        count, latency_sum_ms, latency_max_ms
                 FROM history_buckets
                 WHERE bucket_start_ms >= $1 AND bucket_start_ms < $2
                   AND ($3::TEXT IS NULL OR vendor = $3)
                 ORDER BY bucket_start_ms, vendor, plugin_version, channel, outcome",
                &[&window.from_ms, &window.until_ms, &vendor],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(BucketRow {
                    bucket_start_ms: row.try_get(0)?,
                    vendor: row.try_get(1)?,
                    plugin_version: row.try_get(2)?,
                    channel: row.try_get(3)?,
                    outcome: outcome_column(row, 4)?,
                    count: model::as_count(row.try_get(5)?),
                    latency_sum_ms: model::as_count(row.try_get(6)?),
                    latency_max_ms: model::as_count(row.try_get(7)?),
                })
            })
            .collect()
    }

    pub(crate) async fn outcome_totals(
        &self,
        window: Window,
        vendor: Option<&str>,
    ) -> Result<Vec<OutcomeTotal>, HistoryError> {
        let client = self.client().await?;
        // SUM over BIGINT is NUMERIC in PostgreSQL; the casts bring it back to BIGINT.
        let rows = client
            .query(
                "SELECT vendor, channel, outcome,
                        SUM(count)::BIGINT, SUM(latency_sum_ms)::BIGINT, MAX(latency_max_ms)
                 FROM history_buckets
                 WHERE bucket_start_ms >= $1 AND bucket_start_ms < $2
                   AND ($3::TEXT IS NULL OR vendor = $3)
                 GROUP BY vendor, channel, outcome
                 ORDER BY vendor, channel, outcome",
                &[&window.from_ms, &window.until_ms, &vendor],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(OutcomeTotal {
                    vendor: row.try_get(0)?,
                    channel: row.try_get(1)?,
                    outcome: outcome_column(row, 2)?,
                    count: model::as_count(row.try_get(3)?),
                    latency_sum_ms: model::as_count(row.try_get(4)?),
                    latency_max_ms: model::as_count(row.try_get(5)?),
                })
            })
            .collect()
    }

    pub(crate) async fn recent_failures(
        &self,
        window: Window,
        vendor: Option<&str>,
        limit: u32,
    ) -> Result<Vec<SendRecord>, HistoryError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT at_ms, channel, vendor, plugin_version, outcome, latency_ms, key
                 FROM history_failures
                 WHERE at_ms >= $1 AND at_ms < $2 AND ($3::TEXT IS NULL OR vendor = $3)
                 ORDER BY at_ms DESC, id DESC
                 LIMIT $4",
                &[
                    &window.from_ms,
                    &window.until_ms,
                    &vendor,
                    &i64::from(limit),
                ],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(SendRecord {
                    at_ms: row.try_get(0)?,
                    channel: row.try_get(1)?,
                    vendor: row.try_get(2)?,
                    plugin_version: row.try_get(3)?,
                    outcome: outcome_column(row, 4)?,
                    latency_ms: model::as_count(row.try_get(5)?),
                    key: row.try_get(6)?,
                })
            })
            .collect()
    }

    pub(crate) async fn prune(&self, cutoff_ms: i64) -> Result<u64, HistoryError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        let buckets = transaction
            .execute(
                "DELETE FROM history_buckets WHERE bucket_start_ms < $1",
                &[&cutoff_ms],
            )
            .await?;
        let failures = transaction
            .execute(
                "DELETE FROM history_failures WHERE at_ms < $1",
                &[&cutoff_ms],
            )
            .await?;
        transaction.commit().await?;
        Ok(buckets + failures)
    }
}

fn outcome_column(row: &Row, index: usize) -> Result<OutcomeClass, HistoryError> {
    let name: String = row.try_get(index)?;
    name.parse().map_err(HistoryError::Corrupt)
}
