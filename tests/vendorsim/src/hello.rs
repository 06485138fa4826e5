//! "Hello", a made-up SMS vendor with the simplest API we could think of: the vendor that
//! `switchboard plugin new` scaffolds an adapter for, and that the example plugin talks to.
//!
//! - `POST /v1/messages` with header `x-api-key` and JSON `{"to": "+E.164", "text": "…"}`.
//! - 200 `{"id": "hello-N"}`; 401 `{"error": "unauthorized"}`; 400 `{"error": "invalid_number"}`
//!   (To not E.164) or `{"error": "bad_request", "message"}` (shape); 429 with Retry-After
//!   (faults); 503 `{"error": "unavailable"}` (faults).
//! - Triggers by number: `+1555429…` answers 429, `+1555503…` answers 503.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::{FaultState, Faults, Injected, RunningSim, SimStats, Transport};

/// How the Hello simulator behaves.
#[derive(Debug, Clone)]
pub struct HelloConfig {
    /// The API key it accepts.
    pub api_key: String,
    pub faults: Faults,
}

impl HelloConfig {
    /// A well-behaved Hello account with `api_key`.
    pub fn new(api_key: &str) -> Self {
        Self {
            api_key: api_key.to_string(),
            faults: Faults::default(),
        }
    }
}

struct HelloState {
    config: HelloConfig,
    stats: Arc<SimStats>,
    next_id: AtomicU64,
    faults: OnceLock<Arc<FaultState>>,
}

/// Starts the Hello simulator on a loopback port.
pub async fn start(config: HelloConfig) -> anyhow::Result<RunningSim> {
    let stats = Arc::new(SimStats::default());
    let state = Arc::new(HelloState {
        config,
        stats: stats.clone(),
        next_id: AtomicU64::new(1),
        faults: OnceLock::new(),
    });
    let router = axum::Router::new()
        .route("/v1/messages", post(send))
        .route("/_sim/stats", get(stats_handler))
        .with_state(state.clone());
    let faults = state.config.faults.clone();
    let running = crate::serve(router, stats, faults, Transport::Plain).await?;
    let _ = state.faults.set(running.faults.clone());
    Ok(running)
}

async fn stats_handler(State(state): State<Arc<HelloState>>) -> Json<crate::StatsSnapshot> {
    Json(state.stats.snapshot())
}

fn answer(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

fn too_many(retry_after_s: u64) -> Response {
    let mut response = answer(
        StatusCode::TOO_MANY_REQUESTS,
        json!({"error": "rate_limited"}),
    );
    if let Ok(value) = retry_after_s.to_string().parse() {
        response.headers_mut().insert("retry-after", value);
    }
    response
}

fn is_e164(number: &str) -> bool {
    number.strip_prefix('+').is_some_and(|digits| {
        (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
    })
}

async fn send(
    State(state): State<Arc<HelloState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(faults) = state.faults.get() {
        faults.delay().await;
        match faults.check() {
            Some(Injected::Unavailable) => {
                state.stats.refuse("unavailable");
                return answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"error": "unavailable"}),
                );
            }
            Some(Injected::RateLimited { retry_after_s }) => {
                state.stats.refuse("rate_limited");
                return too_many(retry_after_s);
            }
            None => {}
        }
    }
    let key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    if key != Some(state.config.api_key.as_str()) {
        state.stats.auth_failure();
        return answer(StatusCode::UNAUTHORIZED, json!({"error": "unauthorized"}));
    }
    let Ok(message) = serde_json::from_slice::<Value>(&body) else {
        state.stats.refuse("bad_request");
        return answer(
            StatusCode::BAD_REQUEST,
            json!({"error": "bad_request", "message": "body is not JSON"}),
        );
    };
    let (Some(to), Some(text)) = (
        message.get("to").and_then(Value::as_str),
        message.get("text").and_then(Value::as_str),
    ) else {
        state.stats.refuse("bad_request");
        return answer(
            StatusCode::BAD_REQUEST,
            json!({"error": "bad_request", "message": "`to` and `text` are required strings"}),
        );
    };
    if !is_e164(to) {
        state.stats.refuse("invalid_number");
        return answer(StatusCode::BAD_REQUEST, json!({"error": "invalid_number"}));
    }
    if to.starts_with("+1555429") {
        state.stats.refuse("rate_limited");
        return too_many(1);
    }
    if to.starts_with("+1555503") {
        state.stats.refuse("unavailable");
        return answer(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "unavailable"}),
        );
    }
    state.stats.accept(to, text.as_bytes());
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    answer(StatusCode::OK, json!({"id": format!("hello-{id}")}))
}
