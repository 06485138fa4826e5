//! The `[history]` table of the host's config, and the choice of backend it resolves to. Owns the
//! defaults and the checks of those fields; never opens a store by itself except through
//! [`HistorySettings::open`], and never prints a database password (see [`redact_url`]).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::store::{HistoryError, HistoryStore};

/// The `[history]` table of the host's config.
///
/// ```toml
/// [history]
/// backend = "sqlite"            # or "postgres", or "off"
/// path = "data/history.sqlite3" # sqlite only
/// url = { env = "SWITCHBOARD_HISTORY_URL" } # postgres only; or written out, or { file = … }
/// tls_ca_file = "db-ca.pem"     # postgres with sslmode=require only, optional
/// bucket_s = 60
/// retention_hours = 168
/// recent_failures = 1000
/// ```
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistorySettings {
    /// `sqlite` (a local file, for one host; the default), `postgres` (shared by a fleet of
    /// hosts) or `off` (no history is kept).
    pub backend: HistoryBackend,
    /// The SQLite file. Relative paths resolve against the config file (the host does that);
    /// the directory is created when missing.
    pub path: PathBuf,
    /// PostgreSQL connection URL for the `postgres` backend, e.g.
    /// `postgres://user:password@host:5432/database?sslmode=require`. A URL with a password is
    /// a secret: give it as `{ env = "VAR" }` or `{ file = "PATH" }`. With `sslmode=require`
    /// the connection is TLS and the server's certificate is verified (against the system's
    /// roots and `tls_ca_file`); otherwise it is plain TCP.
    pub url: UrlSetting,
    /// A PEM file of CA certificates trusted for the database's TLS certificate, besides the
    /// system's roots. Relative paths resolve against the config file (the host does that).
    pub tls_ca_file: Option<PathBuf>,
    /// Width of one time bucket, in seconds: the finest resolution `switchboard history` shows.
    pub bucket_s: u64,
    /// How long buckets are kept, in hours.
    pub retention_hours: u64,
    /// How many failed sends (any outcome but `delivered`) are kept one by one, with their
    /// idempotency key; 0 keeps none.
    pub recent_failures: u32,
}

/// `history.url`: written out, or a secret read from the environment or a file.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum UrlSetting {
    /// The URL itself.
    Plain(String),
    /// Where to read it.
    Secret(UrlSecret),
}

/// Where a secret `history.url` is read from: `{ env = "VAR" }` or `{ file = "PATH" }`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum UrlSecret {
    /// An environment variable.
    Env(String),
    /// A file holding the URL (a trailing newline is dropped). Relative paths resolve against
    /// the config file (the host does that).
    File(PathBuf),
}

impl From<&str> for UrlSetting {
    fn from(url: &str) -> Self {
        UrlSetting::Plain(url.to_string())
    }
}

impl From<String> for UrlSetting {
    fn from(url: String) -> Self {
        UrlSetting::Plain(url)
    }
}

impl fmt::Debug for UrlSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UrlSetting::Plain(url) => write!(f, "{:?}", redact_url(url)),
            UrlSetting::Secret(UrlSecret::Env(var)) => write!(f, "Env({var})"),
            UrlSetting::Secret(UrlSecret::File(path)) => write!(f, "File({})", path.display()),
        }
    }
}

impl UrlSetting {
    /// The URL, read from its environment variable or file when it is a secret.
    pub fn read(&self) -> Result<String, HistoryError> {
        let invalid = |reason: String| HistoryError::Config {
            field: "url",
            reason,
        };
        match self {
            UrlSetting::Plain(url) => Ok(url.clone()),
            UrlSetting::Secret(UrlSecret::Env(var)) => std::env::var(var).map_err(|_| {
                invalid(format!(
                    "names environment variable `{var}`, which is not set"
                ))
            }),
            UrlSetting::Secret(UrlSecret::File(path)) => std::fs::read_to_string(path)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|e| {
                    invalid(format!(
                        "names {}, which cannot be read: {e}",
                        path.display()
                    ))
                }),
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, UrlSetting::Plain(url) if url.trim().is_empty())
    }
}

/// Which store keeps the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HistoryBackend {
    /// A SQLite file on local disk.
    Sqlite,
    /// A PostgreSQL database.
    Postgres,
    /// No history.
    Off,
}

impl Default for HistorySettings {
    fn default() -> Self {
        Self {
            backend: HistoryBackend::Sqlite,
            path: PathBuf::from("data/history.sqlite3"),
            url: UrlSetting::Plain(String::new()),
            tls_ca_file: None,
            // A minute is the resolution an operator reads an outage at.
            bucket_s: 60,
            // A week, the same as the dedup store's default (Kafka's default log retention).
            retention_hours: 168,
            recent_failures: 1000,
        }
    }
}

impl HistorySettings {
    /// Checks the fields together. The error names the field, so the host can point at its line.
    pub fn validate(&self) -> Result<(), HistoryError> {
        let invalid =
            |field: &'static str, reason: String| Err(HistoryError::Config { field, reason });
        if self.bucket_s == 0 || self.bucket_s > 86_400 {
            return invalid(
                "bucket_s",
                format!("must be between 1 and 86400 seconds, not {}", self.bucket_s),
            );
        }
        if self.retention_hours == 0 {
            return invalid("retention_hours", "must be at least 1 hour".into());
        }
        if self.retention_hours.saturating_mul(3600) < self.bucket_s {
            return invalid(
                "retention_hours",
                "must cover at least one bucket (bucket_s)".into(),
            );
        }
        match self.backend {
            HistoryBackend::Postgres if self.url.is_empty() => {
                invalid("url", "is required when backend = \"postgres\"".into())
            }
            HistoryBackend::Sqlite if self.path.as_os_str().is_empty() => {
                invalid("path", "is required when backend = \"sqlite\"".into())
            }
            _ => Ok(()),
        }
    }

    /// Checks what lies outside the table without connecting: the URL (read from its secret
    /// source) parses, and the CA file reads and goes with `sslmode=require`. A start calls it
    /// at load, so such a fault is reported as the config's.
    pub fn check_sources(&self) -> Result<(), HistoryError> {
        if self.backend == HistoryBackend::Postgres {
            let url = self.url.read()?;
            crate::postgres::connection_settings(&url, self.tls_ca_file.as_deref())?;
        }
        Ok(())
    }

    /// The store these settings name, or `None` when history is `off`. Reads a secret URL.
    pub fn store_config(&self) -> Result<Option<HistoryConfig>, HistoryError> {
        Ok(match self.backend {
            HistoryBackend::Sqlite => Some(HistoryConfig::Sqlite {
                path: self.path.clone(),
            }),
            HistoryBackend::Postgres => Some(HistoryConfig::Postgres {
                url: self.url.read()?,
                tls_ca_file: self.tls_ca_file.clone(),
            }),
            HistoryBackend::Off => None,
        })
    }

    /// Bucket width, retention and how many failed sends to keep.
    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            bucket: Duration::from_secs(self.bucket_s),
            retention: Duration::from_secs(self.retention_hours.saturating_mul(3600)),
            recent_failures: self.recent_failures,
        }
    }

    /// Validates, then opens the configured store (creating its schema), or returns `None` when
    /// history is `off`.
    pub async fn open(&self) -> Result<Option<HistoryStore>, HistoryError> {
        self.validate()?;
        match self.store_config()? {
            Some(config) => Ok(Some(
                HistoryStore::open(&config, self.store_options()).await?,
            )),
            None => Ok(None),
        }
    }
}

impl fmt::Debug for HistorySettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HistorySettings")
            .field("backend", &self.backend)
            .field("path", &self.path)
            .field("url", &self.url)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("bucket_s", &self.bucket_s)
            .field("retention_hours", &self.retention_hours)
            .field("recent_failures", &self.recent_failures)
            .finish()
    }
}

/// Where the history is kept. Deserialises from a table tagged by `backend`:
/// `{ backend = "sqlite", path = "…" }` or `{ backend = "postgres", url = "…" }`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase", deny_unknown_fields)]
pub enum HistoryConfig {
    /// A SQLite file; its directory is created when missing.
    Sqlite {
        /// The database file.
        path: PathBuf,
    },
    /// A PostgreSQL database, shared by every host that writes to it.
    Postgres {
        /// Connection URL, `postgres://user:password@host:port/database`. Options such as
        /// `connect_timeout` (seconds; 5 when absent) and `sslmode=require` (TLS, the server's
        /// certificate verified) may follow after `?`.
        url: String,
        /// CA certificates (PEM) trusted for the server's TLS certificate, besides the
        /// system's roots.
        #[serde(default)]
        tls_ca_file: Option<PathBuf>,
    },
}

impl fmt::Debug for HistoryConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite { path } => f.debug_struct("Sqlite").field("path", path).finish(),
            Self::Postgres { url, tls_ca_file } => f
                .debug_struct("Postgres")
                .field("url", &redact_url(url))
                .field("tls_ca_file", tls_ca_file)
                .finish(),
        }
    }
}

/// How the store buckets and keeps what it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// Width of a time bucket. Changing it between runs is safe: old buckets keep their width,
    /// and queries sum whatever buckets start inside the window.
    pub bucket: Duration,
    /// Buckets and failed sends older than this are deleted by [`HistoryStore::prune`].
    pub retention: Duration,
    /// How many failed sends are kept one by one; 0 keeps none.
    pub recent_failures: u32,
}

impl Default for StoreOptions {
    fn default() -> Self {
        HistorySettings::default().store_options()
    }
}

impl StoreOptions {
    /// The bucket width in milliseconds, at least 1.
    pub(crate) fn bucket_ms(&self) -> i64 {
        i64::try_from(self.bucket.as_millis())
            .unwrap_or(i64::MAX)
            .max(1)
    }

    /// The retention in milliseconds.
    pub(crate) fn retention_ms(&self) -> i64 {
        i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX)
    }
}

/// The URL with its password replaced by `***`, for logs and `Debug`.
pub fn redact_url(url: &str) -> String {
    redact_password_parameters(&redact_userinfo(url))
}

/// `password=…` in a query string or a `key=value` connection string, as `password=***`.
fn redact_password_parameters(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("password=") {
        let starts_a_parameter = at == 0 || matches!(rest.as_bytes()[at - 1], b'?' | b'&' | b' ');
        let value_start = at + "password=".len();
        out.push_str(&rest[..value_start]);
        rest = &rest[value_start..];
        if starts_a_parameter {
            let value_end = rest.find(['&', ' ']).unwrap_or(rest.len());
            out.push_str("***");
            rest = &rest[value_end..];
        }
    }
    out.push_str(rest);
    out
}

/// `scheme://user:password@host` as `scheme://user:***@host`.
fn redact_userinfo(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let authority_start = scheme_end + 3;
    let rest = &url[authority_start..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let Some(colon) = authority[..at].find(':') else {
        return url.to_owned();
    };
    format!(
        "{}{}:***{}",
        &url[..authority_start],
        &authority[..colon],
        &rest[at..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_debug_output() {
        let settings = HistorySettings {
            backend: HistoryBackend::Postgres,
            url: "postgres://sb:s3cret@db:5432/history?connect_timeout=2".into(),
            ..HistorySettings::default()
        };
        let printed = format!("{settings:?} {:?}", settings.store_config().unwrap());
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(printed.contains("postgres://sb:***@db:5432/history?connect_timeout=2"));
        assert_eq!(redact_url("postgres://db/x"), "postgres://db/x");
        assert_eq!(
            redact_url("postgres://db/x?user=sb&password=s3cret&sslmode=require"),
            "postgres://db/x?user=sb&password=***&sslmode=require"
        );
        assert_eq!(
            redact_url("host=db user=sb password=s3cret dbname=h"),
            "host=db user=sb password=*** dbname=h"
        );
        assert_eq!(redact_url("postgres://user@db/x"), "postgres://user@db/x");
    }

    #[test]
    fn settings_default_to_sqlite_and_check_their_fields() {
        let settings = HistorySettings::default();
        assert_eq!(settings.validate().map_err(|e| e.to_string()), Ok(()));
        assert_eq!(
            settings.store_config().unwrap(),
            Some(HistoryConfig::Sqlite {
                path: "data/history.sqlite3".into()
            })
        );
        assert_eq!(settings.store_options().bucket, Duration::from_secs(60));
        assert_eq!(
            settings.store_options().retention,
            Duration::from_secs(168 * 3600)
        );

        let postgres_without_url = HistorySettings {
            backend: HistoryBackend::Postgres,
            ..HistorySettings::default()
        };
        let error = postgres_without_url.validate().unwrap_err();
        assert!(
            matches!(error, HistoryError::Config { field: "url", .. }),
            "{error}"
        );

        let zero_bucket = HistorySettings {
            bucket_s: 0,
            ..HistorySettings::default()
        };
        assert!(matches!(
            zero_bucket.validate(),
            Err(HistoryError::Config {
                field: "bucket_s",
                ..
            })
        ));

        let off = HistorySettings {
            backend: HistoryBackend::Off,
            ..HistorySettings::default()
        };
        assert_eq!(off.store_config().unwrap(), None);
    }

    #[test]
    fn backend_config_deserialises_from_a_tagged_table() {
        let config: HistoryConfig =
            toml::from_str("backend = \"postgres\"\nurl = \"postgres://db/h\"").unwrap();
        assert_eq!(
            config,
            HistoryConfig::Postgres {
                url: "postgres://db/h".into(),
                tls_ca_file: None,
            }
        );
        let unknown_field =
            toml::from_str::<HistoryConfig>("backend = \"sqlite\"\npath = \"h.db\"\nx = 1");
        assert!(unknown_field.is_err());

        let settings: HistorySettings =
            toml::from_str("backend = \"off\"\nbucket_s = 300").unwrap();
        assert_eq!(settings.backend, HistoryBackend::Off);
        assert_eq!(settings.bucket_s, 300);
        assert_eq!(settings.retention_hours, 168);
        assert!(toml::from_str::<HistorySettings>("bucket = 300").is_err());
        assert!(toml::from_str::<HistorySettings>("backend = \"mysql\"").is_err());
    }

    #[test]
    fn a_url_can_come_from_a_file_or_the_environment_and_never_prints() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("history-url");
        std::fs::write(&file, "postgres://sb:from-file@db/h\n").unwrap();
        let settings: HistorySettings = toml::from_str(&format!(
            "backend = \"postgres\"\nurl = {{ file = {:?} }}",
            file.display().to_string()
        ))
        .unwrap();
        assert_eq!(settings.validate().map_err(|e| e.to_string()), Ok(()));
        assert_eq!(
            settings.store_config().unwrap(),
            Some(HistoryConfig::Postgres {
                url: "postgres://sb:from-file@db/h".into(),
                tls_ca_file: None,
            })
        );
        let printed = format!("{settings:?} {:?}", settings.store_config().unwrap());
        assert!(!printed.contains("from-file"), "{printed}");

        let from_env: HistorySettings = toml::from_str(
            "backend = \"postgres\"\nurl = { env = \"SWITCHBOARD_TEST_HISTORY_URL_NEVER_SET\" }",
        )
        .unwrap();
        let error = from_env.store_config().unwrap_err().to_string();
        assert!(
            error.contains("history.url")
                && error.contains("SWITCHBOARD_TEST_HISTORY_URL_NEVER_SET"),
            "{error}"
        );
        assert!(
            toml::from_str::<HistorySettings>("url = { vault = \"x\" }").is_err(),
            "an unknown source is refused"
        );
    }
}
