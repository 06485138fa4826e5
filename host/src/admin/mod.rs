//! The admin API: what operators change and read while the host runs, over HTTP.
//!
//! Owns the HTTP surface of the control plane — live weights, plugin versions (upload, activate,
//! rollback, canary), vendor health, the web console page and `/metrics` — plus its bearer-token
//! auth, its body limits, and the `switchboard weights|plugins|vendors` client
//! ([`client`]). It decides nothing itself: every change goes through the [`Router`] or the
//! [`Registry`], which check it, keep it across restarts and log it.
//!
//! - [`api`]: the routes and their JSON shapes;
//! - [`auth`]: the token every mutation must carry, compared in constant time;
//! - [`error`]: the errors every route answers with;
//! - [`client`]: the operator CLI's HTTP client and its tables;
//! - [`collector`]: the series `/metrics` reads from the host's parts when it renders;
//! - [`readiness`]: what `/readyz` answers.

pub mod api;
pub mod auth;
pub mod client;
pub mod collector;
pub mod error;
pub mod readiness;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{AdminConfig, Config, SecretSource};
use crate::control::ControlPlane;
use crate::control::fleet::Reporter;
use crate::lane::budget::Budget;
use crate::plugin::registry::Registry;
use crate::route::Router;
use crate::secrets::SecretValue;
use crate::telemetry::Counters;

/// The environment variable read for the token when `admin.token` is not set.
pub const TOKEN_ENV: &str = "SWITCHBOARD_ADMIN_TOKEN";

/// How long a stopping host waits for admin requests in flight (an upload being compiled).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Renders the `/metrics` page (Prometheus text format).
pub type MetricsRenderer = Arc<dyn Fn() -> String + Send + Sync>;

/// What the admin API reads and changes: the host's parts, the token and the limits.
pub struct AdminState {
    pub router: Arc<Router>,
    pub registry: Arc<Registry>,
    pub counters: Arc<Counters>,
    pub budget: Arc<Budget>,
    /// The fleet's control plane, when it runs: every change then goes through it.
    pub control: Option<Arc<ControlPlane>>,
    /// This host's report, for the fleet view.
    pub reporter: Arc<Reporter>,
    /// The bearer token mutations must carry; `None` refuses every mutation. A [`SecretValue`],
    /// so it cannot reach a log line or a `Debug` print.
    pub token: Option<SecretValue>,
    /// Renders `/metrics`.
    pub metrics: MetricsRenderer,
    /// What `/readyz` answers.
    pub readiness: Arc<readiness::Readiness>,
    /// Largest plugin upload, in bytes.
    pub max_upload_bytes: usize,
    /// Largest JSON request body, in bytes.
    pub max_body_bytes: usize,
}

/// The host's parts the admin API reads and changes.
pub struct HostHandles {
    pub router: Arc<Router>,
    pub registry: Arc<Registry>,
    pub counters: Arc<Counters>,
    pub budget: Arc<Budget>,
    pub control: Option<Arc<ControlPlane>>,
    pub reporter: Arc<Reporter>,
}

impl AdminState {
    /// The state over a host's parts, with the limits of `config`.
    pub fn new(
        config: &AdminConfig,
        host: HostHandles,
        token: Option<SecretValue>,
        metrics: MetricsRenderer,
        readiness: Arc<readiness::Readiness>,
    ) -> Self {
        let HostHandles {
            router,
            registry,
            counters,
            budget,
            control,
            reporter,
        } = host;
        Self {
            router,
            registry,
            counters,
            budget,
            control,
            reporter,
            token,
            metrics,
            readiness,
            max_upload_bytes: usize::try_from(config.max_upload_mb.saturating_mul(1 << 20))
                .unwrap_or(usize::MAX),
            max_body_bytes: usize::try_from(config.max_body_kb.saturating_mul(1 << 10))
                .unwrap_or(usize::MAX),
        }
    }
}

/// The admin token: `admin.token` (a value, an environment variable or a file), else
/// `SWITCHBOARD_ADMIN_TOKEN`; `None` when neither is set (mutations are then refused). Errors
/// name the field, never the value.
pub fn resolve_token(config: &Config) -> anyhow::Result<Option<SecretValue>> {
    let value = match &config.admin.token {
        Some(SecretSource::Value(value)) => value.clone(),
        Some(SecretSource::Env(var)) => std::env::var(var)
            .with_context(|| format!("admin.token: environment variable `{var}` is not set"))?,
        Some(SecretSource::File(path)) => {
            let path = config.resolve(path);
            std::fs::read_to_string(&path)
                .with_context(|| format!("admin.token: cannot read {}", path.display()))?
        }
        None => match std::env::var(TOKEN_ENV) {
            Ok(value) if !value.trim().is_empty() => value,
            _ => return Ok(None),
        },
    };
    let value = value.trim();
    anyhow::ensure!(
        !value.is_empty(),
        "admin.token is empty: set a token, or remove the field to turn mutations off"
    );
    Ok(Some(SecretValue::new(value)))
}

/// Binds `admin.listen`; `None` when it is empty (the admin API is off).
pub async fn bind(config: &AdminConfig) -> anyhow::Result<Option<TcpListener>> {
    let listen = config.listen.trim();
    if listen.is_empty() {
        return Ok(None);
    }
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("admin.listen: cannot listen on `{listen}`"))?;
    Ok(Some(listener))
}

/// Serves the admin API on `listener` until `shutdown` turns true, then finishes the requests in
/// flight (bounded). The host turns `shutdown` only once its consumers have drained, so `/readyz`
/// answers "draining" meanwhile. Returns the bound address and the server's task.
pub fn spawn(
    listener: TcpListener,
    state: AdminState,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let addr = listener
        .local_addr()
        .context("admin.listen: reading the bound address")?;
    let app = api::routes(Arc::new(state));
    let task = tokio::spawn(async move {
        let stopping = async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        };
        let server = axum::serve(listener, app).with_graceful_shutdown(stopping);
        if let Err(error) = server.await {
            tracing::error!(%error, "admin API stopped");
        }
    });
    Ok((addr, task))
}

/// Waits for the admin server to finish after shutdown, at most [`SHUTDOWN_GRACE`].
pub async fn join(task: tokio::task::JoinHandle<()>) {
    if tokio::time::timeout(SHUTDOWN_GRACE, task).await.is_err() {
        tracing::warn!("admin API requests still in flight at shutdown were cut off");
    }
}

/// `/metrics` from the host's [`Metrics`](crate::telemetry::metrics::Metrics).
pub fn metrics_renderer(metrics: Arc<crate::telemetry::metrics::Metrics>) -> MetricsRenderer {
    Arc::new(move || metrics.render())
}
