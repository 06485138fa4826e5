//! The admin API's routes and JSON shapes.
//!
//! Owns how each request maps onto the [`Router`](crate::route::Router) and the
//! [`Registry`](crate::plugin::registry::Registry), how their refusals map onto HTTP statuses,
//! and the body limits. Every error is `{"error": "<message>"}`; every refused mutation is
//! logged once ([`events::AdminRequestRefused`]), successful ones by the part that changed.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, Version as HttpVersion, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::{Deserialize, Serialize};

use super::AdminState;
use super::auth;
use super::error::{ApiError, Refusal};
use crate::control::fleet::FleetView;
use crate::lane::budget::LaneBudget;
use crate::plugin::registry::{PluginView, SwapError, Version, VersionSource};
use crate::route::WeightError;
use crate::route::health::{Bucket, VendorHealthView};
use crate::telemetry::CountersSnapshot;
use crate::telemetry::events;

/// The web console, served at `/`.
const CONSOLE_HTML: &str = include_str!("console.html");

/// uPlot, the charting library the console draws its plots with (`vendor/README.md` says which
/// version and where it came from). Compiled in and served by the host itself, not a CDN, so
/// the console keeps its charts on a host without internet access.
const UPLOT_JS: &str = include_str!("vendor/uplot.iife.min.js");
/// uPlot's own styles (legend, cursor, the placing of axes), served next to it.
const UPLOT_CSS: &str = include_str!("vendor/uplot.min.css");

/// How long a browser may keep the vendored assets without asking again. They change only with
/// the binary, so a day spares a re-download on every page load; after an upgrade that brings
/// another uPlot, a browser may use the old one for up to that day (a hard reload fetches it).
const ASSET_CACHE_CONTROL: &str = "public, max-age=86400";

/// Seconds of per-second history a series request gets when it names none.
const DEFAULT_SERIES_S: u64 = 300;

type Shared = Arc<AdminState>;

/// Every route of the admin API over `state`.
pub fn routes(state: Shared) -> axum::Router {
    let upload_limit = DefaultBodyLimit::max(state.max_upload_bytes);
    axum::Router::new()
        .route("/", get(console))
        .route("/assets/uplot.min.js", get(uplot_js))
        .route("/assets/uplot.min.css", get(uplot_css))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/channels", get(channels))
        .route(
            "/v1/channels/{channel}/weights",
            get(get_weights).put(put_weights).delete(reset_weights),
        )
        .route("/v1/vendors", get(vendors))
        .route("/v1/fleet", get(fleet))
        .route("/v1/vendors/{vendor}/series", get(series))
        .route("/v1/plugins", get(plugins))
        .route("/v1/plugins/{name}", post(upload).layer(upload_limit))
        .route("/v1/plugins/{name}/activate", post(activate))
        .route("/v1/plugins/{name}/rollback", post(rollback))
        .route(
            "/v1/plugins/{name}/canary",
            put(set_canary).delete(end_canary),
        )
        .fallback(not_found)
        // Layers run outside in: refusals are logged, then the token is checked, then the
        // route's body limit applies (JSON bodies by default, uploads their own).
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .layer(middleware::from_fn(log_refusals))
        .with_state(state)
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// Logs every refused mutation once, whoever refused it (auth, a limit, the router, the
/// registry), and closes its HTTP/1 connection.
async fn log_refusals(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let http1 = request.version() < HttpVersion::HTTP_2;
    let mut response = next.run(request).await;
    if auth::is_mutation(&method) && !response.status().is_success() {
        // A refused request's body may be left unread (refused before it was read, or over its
        // limit), and then the server drops the connection. Saying so keeps a client from
        // sending its next request on a connection about to close.
        if http1 {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        let reason = response
            .extensions()
            .get::<Refusal>()
            .map_or_else(|| response.status().to_string(), |r| r.0.clone());
        events::AdminRequestRefused {
            method: method.as_str(),
            path: &path,
            status: response.status().as_u16(),
            reason: &reason,
        }
        .emit();
    }
    response
}

/// A JSON body read within `admin.max_body_kb`, whatever its content type (so `curl -d` works).
fn json_body<T: serde::de::DeserializeOwned>(
    state: &AdminState,
    body: Result<Bytes, BytesRejection>,
    shape: &str,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request body is over the {} KiB limit (admin.max_body_kb)",
                    state.max_body_bytes >> 10
                ),
            )
        } else {
            ApiError::new(rejection.status(), rejection.body_text())
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|error| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the body must be {shape}: {error}"),
        )
    })
}

async fn not_found(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no such endpoint: {} {}",
            request.method(),
            request.uri().path()
        ),
    )
}

async fn console() -> Html<&'static str> {
    Html(CONSOLE_HTML)
}

/// `GET /assets/uplot.min.js`: the console's charting library. A read, so open like the page.
async fn uplot_js() -> Response {
    asset("text/javascript; charset=utf-8", UPLOT_JS)
}

/// `GET /assets/uplot.min.css`: the charting library's styles (legend, cursor, axes layout).
async fn uplot_css() -> Response {
    asset("text/css; charset=utf-8", UPLOT_CSS)
}

/// A file compiled into the binary, with its content type and [`ASSET_CACHE_CONTROL`].
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, ASSET_CACHE_CONTROL),
        ],
        body,
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok"
}

/// 200 with `{"ready": true}`, or 503 with every reason it is not (see [`super::readiness`]).
async fn readyz(State(state): State<Shared>) -> Response {
    let reply = state.readiness.check();
    let status = match reply.ready {
        true => StatusCode::OK,
        false => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, Json(reply)).into_response()
}

async fn metrics(State(state): State<Shared>) -> Response {
    (
        // OpenMetrics text (it ends in `# EOF`); Prometheus asks for it and parses it.
        [(
            header::CONTENT_TYPE,
            crate::telemetry::metrics::CONTENT_TYPE,
        )],
        (state.metrics)(),
    )
        .into_response()
}

/// One channel's weights: those in force and the config file's.
#[derive(Debug, Serialize)]
pub struct ChannelWeights {
    pub weights: BTreeMap<String, u32>,
    pub baseline: BTreeMap<String, u32>,
}

fn channel_weights(state: &AdminState, channel: &str) -> Option<ChannelWeights> {
    Some(ChannelWeights {
        weights: state.router.weights(channel)?,
        baseline: state.router.baseline(channel)?,
    })
}

fn all_channels(state: &AdminState) -> BTreeMap<String, ChannelWeights> {
    state
        .router
        .channel_names()
        .into_iter()
        .filter_map(|name| channel_weights(state, &name).map(|w| (name, w)))
        .collect()
}

/// `GET /v1/status`: everything the console shows, in one read.
#[derive(Debug, Serialize)]
pub struct StatusReply {
    pub counters: CountersSnapshot,
    /// Each lane's share of the memory budget.
    pub lanes: Vec<LaneBudget>,
    pub channels: BTreeMap<String, ChannelWeights>,
    pub vendors: Vec<VendorHealthView>,
    pub plugins: Vec<PluginView>,
}

async fn status(State(state): State<Shared>) -> Json<StatusReply> {
    Json(StatusReply {
        counters: state.counters.snapshot(),
        lanes: state.budget.snapshot(),
        channels: all_channels(&state),
        vendors: state.router.health().views(),
        plugins: state.registry.views(),
    })
}

async fn channels(State(state): State<Shared>) -> Json<BTreeMap<String, ChannelWeights>> {
    Json(all_channels(&state))
}

/// `GET|PUT|DELETE /v1/channels/{channel}/weights`.
#[derive(Debug, Serialize)]
pub struct WeightsReply {
    pub channel: String,
    #[serde(flatten)]
    pub weights: ChannelWeights,
}

fn weights_reply(state: &AdminState, channel: String) -> ApiResult<WeightsReply> {
    let weights = channel_weights(state, &channel)
        .ok_or_else(|| ApiError::from(WeightError::UnknownChannel(channel.clone())))?;
    Ok(Json(WeightsReply { channel, weights }))
}

async fn get_weights(
    State(state): State<Shared>,
    Path(channel): Path<String>,
) -> ApiResult<WeightsReply> {
    weights_reply(&state, channel)
}

async fn put_weights(
    State(state): State<Shared>,
    Path(channel): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<WeightsReply> {
    if !state.router.knows(&channel) {
        return Err(WeightError::UnknownChannel(channel).into());
    }
    let changes: BTreeMap<String, u32> = json_body(
        &state,
        body,
        r#"an object of vendor → weight, e.g. {"sms-twilio": 70, "sms-nhn": 30}"#,
    )?;
    if changes.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the body names no vendor; send e.g. {\"sms-twilio\": 70}",
        ));
    }
    match &state.control {
        Some(control) => {
            control.set_weights(&channel, &changes).await?;
        }
        None => {
            state.router.set_weights(&channel, &changes)?;
        }
    }
    weights_reply(&state, channel)
}

async fn reset_weights(
    State(state): State<Shared>,
    Path(channel): Path<String>,
) -> ApiResult<WeightsReply> {
    match &state.control {
        Some(control) => control.reset_weights(&channel).await?,
        None => {
            state.router.reset_weights(&channel)?;
        }
    }
    weights_reply(&state, channel)
}

/// Every live host of the fleet: this one, and, with the control plane on, every other host
/// that reported within `control.host_expiry_s`.
async fn fleet(State(state): State<Shared>) -> Json<FleetView> {
    match &state.control {
        Some(control) => Json(control.view()),
        None => Json(crate::control::fleet::view(
            false,
            state.reporter.report(0, Vec::new()),
            Vec::new(),
        )),
    }
}

async fn vendors(State(state): State<Shared>) -> Json<Vec<VendorHealthView>> {
    Json(state.router.health().views())
}

#[derive(Debug, Deserialize)]
struct SeriesQuery {
    seconds: Option<u64>,
}

async fn series(
    State(state): State<Shared>,
    Path(vendor): Path<String>,
    Query(query): Query<SeriesQuery>,
) -> ApiResult<Vec<Bucket>> {
    // At least one second (an empty range has no meaning), at most the history kept.
    let seconds = query
        .seconds
        .unwrap_or(DEFAULT_SERIES_S)
        .clamp(1, crate::route::health::HISTORY_S as u64);
    let buckets = state
        .router
        .health()
        .series(&vendor, seconds)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no vendor `{vendor}` is configured"),
            )
        })?;
    Ok(Json(buckets))
}

async fn plugins(State(state): State<Shared>) -> Json<Vec<PluginView>> {
    Json(state.registry.views())
}

/// A version after an upload, an activation or a rollback.
#[derive(Debug, Serialize, Deserialize)]
pub struct VersionReply {
    pub plugin: String,
    /// The version id: the first 16 hex digits of the component's SHA-256.
    pub id: String,
    /// The version the plugin gives in `describe`.
    pub version: String,
    /// Whether it is the active version now.
    pub active: bool,
}

fn version_reply(state: &AdminState, plugin: &str, version: &Version) -> Json<VersionReply> {
    let active = state
        .registry
        .slot(plugin)
        .is_some_and(|slot| slot.active().id == version.id);
    Json(VersionReply {
        plugin: plugin.to_string(),
        id: version.id.clone(),
        version: version.plugin.info.version.clone(),
        active,
    })
}

#[derive(Debug, Deserialize)]
struct UploadQuery {
    activate: Option<bool>,
}

async fn upload(
    State(state): State<Shared>,
    Path(name): Path<String>,
    Query(query): Query<UploadQuery>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<VersionReply> {
    // A misspelt name is named as such, even when the body is also over the limit.
    if state.registry.slot(&name).is_none() {
        return Err(SwapError::UnknownPlugin(name).into());
    }
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the component is over the {} MiB upload limit (admin.max_upload_mb)",
                    state.max_upload_bytes >> 20
                ),
            )
        } else {
            ApiError::new(rejection.status(), rejection.body_text())
        }
    })?;
    if bytes.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the body is empty; send the component's bytes",
        ));
    }
    if let Some(control) = &state.control {
        let activate = query.activate.unwrap_or(true);
        let version = control.upload(&name, &bytes, activate).await?;
        return Ok(version_reply(&state, &name, &version));
    }
    let version = if query.activate.unwrap_or(true) {
        state
            .registry
            .upload(&name, &bytes, VersionSource::Upload)
            .await?
    } else {
        let version = state
            .registry
            .stage(&name, &bytes, VersionSource::Upload)
            .await?;
        events::PluginStaged {
            plugin: &name,
            version: &version.plugin.info.version,
            id: &version.id,
        }
        .emit();
        version
    };
    Ok(version_reply(&state, &name, &version))
}

#[derive(Debug, Deserialize)]
struct ActivateBody {
    id: String,
}

async fn activate(
    State(state): State<Shared>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<VersionReply> {
    let body: ActivateBody = json_body(&state, body, r#"{"id": "<version id>"}"#)?;
    let version = match &state.control {
        Some(control) => control.activate(&name, &body.id).await?,
        None => state.registry.activate(&name, &body.id).await?,
    };
    Ok(version_reply(&state, &name, &version))
}

async fn rollback(
    State(state): State<Shared>,
    Path(name): Path<String>,
) -> ApiResult<VersionReply> {
    let version = match &state.control {
        Some(control) => control.rollback(&name).await?,
        None => state.registry.rollback(&name).await?,
    };
    Ok(version_reply(&state, &name, &version))
}

#[derive(Debug, Deserialize)]
struct CanaryBody {
    version: String,
    percent: u8,
}

/// The plugin's versions after a canary change.
fn plugin_view(state: &AdminState, name: &str) -> ApiResult<PluginView> {
    state
        .registry
        .views()
        .into_iter()
        .find(|view| view.name == name)
        .map(Json)
        .ok_or_else(|| SwapError::UnknownPlugin(name.to_string()).into())
}

async fn set_canary(
    State(state): State<Shared>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<PluginView> {
    let body: CanaryBody = json_body(
        &state,
        body,
        r#"{"version": "<version id>", "percent": 1..=99 (0 ends the canary)}"#,
    )?;
    match &state.control {
        Some(control) => {
            control
                .set_canary(&name, &body.version, body.percent)
                .await?
        }
        None => {
            state
                .registry
                .set_canary(&name, &body.version, body.percent)
                .await?;
        }
    }
    plugin_view(&state, &name)
}

async fn end_canary(
    State(state): State<Shared>,
    Path(name): Path<String>,
) -> ApiResult<PluginView> {
    // The id is not looked at when the share is 0.
    match &state.control {
        Some(control) => control.set_canary(&name, "", 0).await?,
        None => {
            state.registry.set_canary(&name, "", 0).await?;
        }
    }
    plugin_view(&state, &name)
}
