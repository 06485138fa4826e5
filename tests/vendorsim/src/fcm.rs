//! Firebase Cloud Messaging HTTP v1, simulated.
//!
//! - `POST /token`: the OAuth2 JWT-bearer grant. The assertion's RS256 signature is verified
//!   against the service account's public key, and its claims (`iss`, `scope`, `aud`, `iat`,
//!   `exp <= iat + 3600`) are checked as Google does. Answers `{access_token, expires_in}`.
//! - `POST /v1/projects/{project}/messages:send`: checks the bearer token, the project, and the
//!   message shape (one target, string-valued `data`, reserved keys, size); answers
//!   `{"name": "projects/P/messages/ID"}` or FCM's error body.
//! - `GET /_sim/stats`: the counts, as JSON; `POST /_sim/revoke-tokens`: forget issued tokens.
//!
//! Faults: a latency distribution, a rate per error code, and deterministic triggers by token
//! prefix — `sim-unregistered-…`, `sim-invalid_argument-…`, `sim-sender_id_mismatch-…`,
//! `sim-quota_exceeded-…`, `sim-internal-…`, `sim-unavailable-…`, `sim-third_party_auth_error-…`,
//! and `sim-flaky2-…` (503 on the first two tries of that token, then accepted).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::Rng;
use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier;
use serde_json::{Value, json};

use crate::{Faults, Injected, RunningSim, SimStats, Transport};

const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
const MAX_MESSAGE_BYTES: usize = 4096;

/// An FCM error code, with the HTTP status and gRPC status FCM answers it with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FcmError {
    InvalidArgument,
    Unregistered,
    SenderIdMismatch,
    QuotaExceeded,
    Internal,
    Unavailable,
    ThirdPartyAuthError,
}

impl FcmError {
    /// Every code, in table order.
    pub const ALL: [FcmError; 7] = [
        FcmError::InvalidArgument,
        FcmError::ThirdPartyAuthError,
        FcmError::SenderIdMismatch,
        FcmError::Unregistered,
        FcmError::QuotaExceeded,
        FcmError::Internal,
        FcmError::Unavailable,
    ];

    /// The `errorCode` FCM puts in the error details.
    pub fn code(self) -> &'static str {
        match self {
            FcmError::InvalidArgument => "INVALID_ARGUMENT",
            FcmError::Unregistered => "UNREGISTERED",
            FcmError::SenderIdMismatch => "SENDER_ID_MISMATCH",
            FcmError::QuotaExceeded => "QUOTA_EXCEEDED",
            FcmError::Internal => "INTERNAL",
            FcmError::Unavailable => "UNAVAILABLE",
            FcmError::ThirdPartyAuthError => "THIRD_PARTY_AUTH_ERROR",
        }
    }

    fn http_status(self) -> StatusCode {
        match self {
            FcmError::InvalidArgument => StatusCode::BAD_REQUEST,
            FcmError::ThirdPartyAuthError => StatusCode::UNAUTHORIZED,
            FcmError::SenderIdMismatch => StatusCode::FORBIDDEN,
            FcmError::Unregistered => StatusCode::NOT_FOUND,
            FcmError::QuotaExceeded => StatusCode::TOO_MANY_REQUESTS,
            FcmError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            FcmError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn grpc_status(self) -> &'static str {
        match self {
            FcmError::InvalidArgument => "INVALID_ARGUMENT",
            FcmError::ThirdPartyAuthError => "UNAUTHENTICATED",
            FcmError::SenderIdMismatch => "PERMISSION_DENIED",
            FcmError::Unregistered => "NOT_FOUND",
            FcmError::QuotaExceeded => "RESOURCE_EXHAUSTED",
            FcmError::Internal => "INTERNAL",
            FcmError::Unavailable => "UNAVAILABLE",
        }
    }

    fn from_prefix(token: &str) -> Option<FcmError> {
        let rest = token.strip_prefix("sim-")?;
        FcmError::ALL
            .into_iter()
            .find(|e| rest.starts_with(&format!("{}-", e.code().to_ascii_lowercase())))
    }
}

/// How the FCM simulator behaves.
#[derive(Debug, Clone)]
pub struct FcmConfig {
    pub project_id: String,
    pub client_email: String,
    /// SPKI PEM of the service account's key.
    pub public_key_pem: String,
    /// Latency, outage windows and the rate limit.
    pub faults: Faults,
    /// Random faults: each code with its probability per message.
    pub error_rates: Vec<(FcmError, f64)>,
    /// Lifetime of issued access tokens.
    pub token_lifetime: Duration,
    /// Seconds sent in `Retry-After` with 429 and 503.
    pub retry_after_s: u64,
}

impl FcmConfig {
    /// A well-behaved FCM for `project_id` and the service account.
    pub fn new(project_id: &str, account: &crate::ServiceAccount) -> Self {
        Self {
            project_id: project_id.to_string(),
            client_email: account.client_email.clone(),
            public_key_pem: account.public_key_pem.clone(),
            faults: Faults::default(),
            error_rates: Vec::new(),
            token_lifetime: Duration::from_secs(3600),
            retry_after_s: 1,
        }
    }
}

struct FcmState {
    config: FcmConfig,
    public_key: rsa::pkcs1v15::VerifyingKey<sha2::Sha256>,
    token_uri: OnceLock<String>,
    access_tokens: Mutex<HashMap<String, Instant>>,
    /// Tries per `sim-flakyN-` token, to fail the first N.
    flaky_attempts: Mutex<HashMap<String, u32>>,
    next_id: AtomicU64,
    stats: Arc<SimStats>,
    faults: OnceLock<Arc<crate::FaultState>>,
}

/// Starts the FCM simulator on a loopback port.
pub async fn start(config: FcmConfig) -> anyhow::Result<RunningSim> {
    let public_key = rsa::RsaPublicKey::from_public_key_pem(&config.public_key_pem)?;
    let stats = Arc::new(SimStats::default());
    let state = Arc::new(FcmState {
        config,
        public_key: rsa::pkcs1v15::VerifyingKey::new(public_key),
        token_uri: OnceLock::new(),
        access_tokens: Mutex::new(HashMap::new()),
        flaky_attempts: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
        stats: stats.clone(),
        faults: OnceLock::new(),
    });
    let router = axum::Router::new()
        .route("/token", post(token))
        .route("/v1/projects/{project}/messages:send", post(send))
        .route("/_sim/stats", get(stats_handler))
        .route("/_sim/revoke-tokens", post(revoke_tokens))
        .with_state(state.clone());
    let faults = state.config.faults.clone();
    let running = crate::serve(router, stats, faults, Transport::Plain).await?;
    let _ = state.token_uri.set(format!("{}/token", running.url()));
    let _ = state.faults.set(running.faults.clone());
    Ok(running)
}

async fn stats_handler(State(state): State<Arc<FcmState>>) -> Json<crate::StatsSnapshot> {
    Json(state.stats.snapshot())
}

/// Forgets every issued access token, as when Google revokes them; the next send gets 401.
async fn revoke_tokens(State(state): State<Arc<FcmState>>) -> StatusCode {
    state
        .access_tokens
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clear();
    StatusCode::NO_CONTENT
}

fn oauth_error(description: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": "invalid_grant", "error_description": description})),
    )
        .into_response()
}

fn parse_form(body: &str) -> HashMap<String, String> {
    crate::form::parse_form(body).into_iter().collect()
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Verifies an RS256 JWT and returns its claims.
fn verify_jwt(
    state: &FcmState,
    assertion: &str,
) -> Result<serde_json::Map<String, Value>, &'static str> {
    let mut parts = assertion.split('.');
    let (Some(header), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("assertion is not a compact JWT");
    };
    let header: Value = URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("JWT header is not base64url JSON")?;
    if header.get("alg").and_then(Value::as_str) != Some("RS256") {
        return Err("JWT alg must be RS256");
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| "JWT signature is not base64url")?;
    let signature = rsa::pkcs1v15::Signature::try_from(signature.as_slice())
        .map_err(|_| "Invalid JWT Signature.")?;
    let signing_input = assertion.rsplit_once('.').map_or("", |(input, _)| input);
    state
        .public_key
        .verify(signing_input.as_bytes(), &signature)
        .map_err(|_| "Invalid JWT Signature.")?;
    let claims: Value = URL_SAFE_NO_PAD
        .decode(claims)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("JWT claims are not base64url JSON")?;
    match claims {
        Value::Object(map) => Ok(map),
        _ => Err("JWT claims are not an object"),
    }
}

impl FcmState {
    async fn delay(&self) {
        if let Some(faults) = self.faults.get() {
            faults.delay().await;
        }
    }

    fn injected(&self) -> Option<Injected> {
        self.faults.get().and_then(|f| f.check())
    }
}

async fn token(State(state): State<Arc<FcmState>>, body: String) -> Response {
    state.delay().await;
    state.stats.token_request();
    let form = parse_form(&body);
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        state.stats.auth_failure();
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "unsupported_grant_type", "error_description": "Invalid grant_type"})),
        )
            .into_response();
    }
    let Some(assertion) = form.get("assertion") else {
        state.stats.auth_failure();
        return oauth_error("Missing required parameter: assertion");
    };
    let claims = match verify_jwt(&state, assertion) {
        Ok(claims) => claims,
        Err(why) => {
            state.stats.auth_failure();
            return oauth_error(why);
        }
    };
    let text = |k: &str| claims.get(k).and_then(Value::as_str).unwrap_or("");
    let num = |k: &str| claims.get(k).and_then(Value::as_u64);
    let now = now_s();
    let problem = if text("iss") != state.config.client_email {
        Some("Invalid JWT: iss does not match a service account")
    } else if !text("scope").split(' ').any(|s| s == SCOPE) {
        Some("Invalid JWT: scope does not include firebase.messaging")
    } else if Some(text("aud")) != state.token_uri.get().map(String::as_str) {
        Some("Invalid JWT: aud must be the token URI")
    } else {
        match (num("iat"), num("exp")) {
            (Some(iat), Some(exp)) if exp > iat + 3600 => {
                Some("Invalid JWT: exp is more than an hour after iat")
            }
            (Some(iat), Some(exp)) if exp <= now || iat > now + 300 => {
                Some("Invalid JWT: Token must be a short-lived token and in a reasonable timeframe")
            }
            (Some(_), Some(_)) => None,
            _ => Some("Invalid JWT: iat and exp are required"),
        }
    };
    if let Some(why) = problem {
        state.stats.auth_failure();
        return oauth_error(why);
    }
    let token: String = format!("ya29.sim-{:032x}", rand::thread_rng().r#gen::<u128>());
    state
        .access_tokens
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(token.clone(), Instant::now() + state.config.token_lifetime);
    Json(json!({
        "access_token": token,
        "expires_in": state.config.token_lifetime.as_secs(),
        "token_type": "Bearer",
    }))
    .into_response()
}

fn fcm_error(error: FcmError, message: &str, retry_after_s: u64) -> Response {
    let body = json!({"error": {
        "code": error.http_status().as_u16(),
        "message": message,
        "status": error.grpc_status(),
        "details": [{
            "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
            "errorCode": error.code(),
        }],
    }});
    let mut response = (error.http_status(), Json(body)).into_response();
    if matches!(error, FcmError::QuotaExceeded | FcmError::Unavailable)
        && let Ok(value) = retry_after_s.to_string().parse()
    {
        response.headers_mut().insert("retry-after", value);
    }
    response
}

fn unauthenticated(message: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({"error": {"code": 401, "message": message, "status": "UNAUTHENTICATED"}})),
    )
        .into_response()
}

/// Checks a message as FCM does; the error is the `message` FCM would answer with.
fn check_message(message: &Value) -> Result<&str, String> {
    let message = message
        .as_object()
        .ok_or("Invalid JSON payload received. `message` must be an object.")?;
    let targets: Vec<&str> = ["token", "topic", "condition"]
        .into_iter()
        .filter(|k| message.contains_key(*k))
        .collect();
    if targets.len() != 1 {
        return Err("Exactly one of token, topic or condition must be specified.".into());
    }
    for key in message.keys() {
        if ![
            "token",
            "topic",
            "condition",
            "name",
            "data",
            "notification",
            "android",
            "webpush",
            "apns",
            "fcm_options",
        ]
        .contains(&key.as_str())
        {
            return Err(format!(
                "Invalid JSON payload received. Unknown name \"{key}\" at 'message'"
            ));
        }
    }
    if let Some(data) = message.get("data") {
        let data = data
            .as_object()
            .ok_or("Invalid value at 'message.data': must be a map")?;
        for (k, v) in data {
            if !v.is_string() {
                return Err(format!(
                    "Invalid value at 'message.data[{k}].value' (TYPE_STRING)"
                ));
            }
            if ["from", "notification", "message_type"].contains(&k.as_str())
                || k.starts_with("google.")
                || k.starts_with("gcm.")
            {
                return Err(format!("Invalid data payload key: {k}"));
            }
        }
    }
    if let Some(notification) = message.get("notification") {
        let notification = notification
            .as_object()
            .ok_or("Invalid value at 'message.notification'")?;
        for (k, v) in notification {
            if !["title", "body", "image"].contains(&k.as_str()) || !v.is_string() {
                return Err(format!("Invalid value at 'message.notification.{k}'"));
            }
        }
    }
    if let Some(priority) = message.get("android").and_then(|a| a.get("priority"))
        && !matches!(
            priority.as_str(),
            Some("normal" | "high" | "NORMAL" | "HIGH")
        )
    {
        return Err("Invalid value at 'message.android.priority'".into());
    }
    match message.get("token").map(Value::as_str) {
        Some(Some(token)) if !token.is_empty() => Ok(token),
        Some(_) => Err("The registration token is not a valid FCM registration token".into()),
        None => Ok(""),
    }
}

async fn send(
    State(state): State<Arc<FcmState>>,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let _in_flight = state.stats.request_started();
    let entered = Instant::now();
    state.delay().await;
    let retry_after = state.config.retry_after_s;
    match state.injected() {
        Some(Injected::Unavailable) => {
            state.stats.refuse(FcmError::Unavailable.code());
            return fcm_error(
                FcmError::Unavailable,
                "The service is currently unavailable.",
                retry_after,
            );
        }
        Some(Injected::RateLimited { retry_after_s }) => {
            state.stats.refuse(FcmError::QuotaExceeded.code());
            return fcm_error(
                FcmError::QuotaExceeded,
                "Quota exceeded for sending messages.",
                retry_after_s,
            );
        }
        None => {}
    }
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let valid = bearer.is_some_and(|t| {
        state
            .access_tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(t)
            .is_some_and(|expires| *expires > Instant::now())
    });
    if !valid {
        state.stats.auth_failure();
        return unauthenticated(
            "Request had invalid authentication credentials. Expected OAuth 2 access token.",
        );
    }
    if project != state.config.project_id {
        state.stats.refuse(FcmError::SenderIdMismatch.code());
        return fcm_error(
            FcmError::SenderIdMismatch,
            "Permission 'cloudmessaging.messages.create' denied on resource",
            retry_after,
        );
    }
    if body.len() > MAX_MESSAGE_BYTES + 512 {
        state.stats.refuse(FcmError::InvalidArgument.code());
        return fcm_error(FcmError::InvalidArgument, "Message is too big", retry_after);
    }
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => {
            state.stats.refuse(FcmError::InvalidArgument.code());
            return fcm_error(
                FcmError::InvalidArgument,
                "Invalid JSON payload received.",
                retry_after,
            );
        }
    };
    let Some(message) = parsed.get("message") else {
        state.stats.refuse(FcmError::InvalidArgument.code());
        return fcm_error(
            FcmError::InvalidArgument,
            "Invalid JSON payload received. Missing `message`.",
            retry_after,
        );
    };
    let token = match check_message(message) {
        Ok(token) => token.to_string(),
        Err(why) => {
            state.stats.refuse(FcmError::InvalidArgument.code());
            return fcm_error(FcmError::InvalidArgument, &why, retry_after);
        }
    };
    if let Some(error) = injected_fault(&state, &token) {
        state.stats.refuse(error.code());
        return fcm_error(error, "Simulated failure", retry_after);
    }
    let canonical = serde_json::to_vec(message).unwrap_or_default();
    state.stats.note_entry(&token, entered);
    state.stats.accept(&token, &canonical);
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    Json(json!({"name": format!("projects/{project}/messages/{id}")})).into_response()
}

fn injected_fault(state: &FcmState, token: &str) -> Option<FcmError> {
    if let Some(error) = FcmError::from_prefix(token) {
        return Some(error);
    }
    if let Some(rest) = token.strip_prefix("sim-flaky")
        && let Some((n, _)) = rest.split_once('-')
        && let Ok(failures) = n.parse::<u32>()
    {
        let mut attempts = state
            .flaky_attempts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let tries = attempts.entry(token.to_string()).or_default();
        *tries += 1;
        if *tries <= failures {
            return Some(FcmError::Unavailable);
        }
    }
    let mut rng = rand::thread_rng();
    state
        .config
        .error_rates
        .iter()
        .find(|(_, rate)| rng.r#gen::<f64>() < *rate)
        .map(|(error, _)| *error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_shape_is_checked() {
        assert!(check_message(&json!({"token": "t", "data": {"a": "1"}})).is_ok());
        assert!(check_message(&json!({"token": "t", "topic": "x"})).is_err());
        assert!(check_message(&json!({"token": "t", "data": {"a": 1}})).is_err());
        assert!(check_message(&json!({"token": "t", "data": {"google.x": "1"}})).is_err());
        assert!(check_message(&json!({"token": "t", "bogus": 1})).is_err());
        assert!(check_message(&json!({"token": ""})).is_err());
    }

    #[test]
    fn fault_prefixes_map_to_codes() {
        assert_eq!(
            FcmError::from_prefix("sim-unregistered-1"),
            Some(FcmError::Unregistered)
        );
        assert_eq!(
            FcmError::from_prefix("sim-quota_exceeded-x"),
            Some(FcmError::QuotaExceeded)
        );
        assert_eq!(FcmError::from_prefix("device-1"), None);
    }

    #[test]
    fn form_values_are_decoded() {
        let form = parse_form("a=1%2B2&b=x+y");
        assert_eq!(form.get("a").map(String::as_str), Some("1+2"));
        assert_eq!(form.get("b").map(String::as_str), Some("x y"));
    }
}
