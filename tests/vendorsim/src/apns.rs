//! Apple Push Notification service (the HTTP/2 provider API with token-based auth), simulated.
//!
//! Served over TLS with ALPN `h2` only, as APNs is: a client that cannot speak HTTP/2 does not
//! get a connection, and a request that arrives in any other version is refused with 505.
//!
//! - `POST /3/device/{token}`: verifies the provider token (ES256 JWT `{alg, kid}` `{iss, iat}`
//!   against the team's public key for `kid`), then the headers (`apns-topic`, `apns-push-type`,
//!   `apns-priority`, `apns-expiration`, `apns-id`, `apns-collapse-id`) and the payload (a JSON
//!   object with an `aps` dictionary, at most 4096 bytes, 5120 for VoIP). Answers 200 with the
//!   `apns-id` header (the request's, or a new one), or the status APNs uses with
//!   `{"reason": ...}`; 410 adds `timestamp` (ms since the epoch).
//! - Provider tokens: missing → 403 `MissingProviderToken`; bad signature, unknown `kid`, wrong
//!   `iss` → 403 `InvalidProviderToken`; `iat` older than an hour → 403 `ExpiredProviderToken`;
//!   a new token for a key within 20 minutes of the one in use → 429
//!   `TooManyProviderTokenUpdates` (counted under that code in `refused`). Each new token taken
//!   into use counts as a token request.
//! - `GET /_sim/stats`: the counts, as JSON. `GET /_sim/protocol`: `{http2_requests,
//!   other_requests}` for pushes, so a test can show the client spoke HTTP/2.
//!   `POST /_sim/expire-provider-tokens`: the tokens in use now answer `ExpiredProviderToken`,
//!   and the next new token is taken without `TooManyProviderTokenUpdates`.
//!
//! Faults: the shared [`Faults`] (503 `ServiceUnavailable`, 429 `TooManyRequests` with
//! Retry-After), a rate per [`ApnsError`], and deterministic triggers by device-token prefix
//! (tokens are 64 hex digits; [`device_token`] pads a prefix):
//!
//! | prefix | answer |
//! | --- | --- |
//! | `00000400` | 400 `BadDeviceToken` |
//! | `00000401` | 400 `DeviceTokenNotForTopic` |
//! | `00000402` | 400 `TopicDisallowed` |
//! | `00000410` | 410 `Unregistered` |
//! | `00000411` | 410 `ExpiredToken` |
//! | `00000429` | 429 `TooManyRequests` (with Retry-After) |
//! | `00000500` | 500 `InternalServerError` |
//! | `00000503` | 503 `ServiceUnavailable` (with Retry-After) |
//! | `00000504` | 503 `Shutdown` |
//! | `0000ff0N` | 503 `ServiceUnavailable` on the first N tries of that token, then accepted |
//!
//! Apple documents no reason for a payload that is not JSON or has no `aps` dictionary; the
//! simulator answers those with 400 `PayloadEmpty`, since nothing in them can be shown.
//!
//! Deliveries are counted by device token and `apns-id`, so a retry that carries the same
//! `apns-id` as an accepted notification is a duplicate (by the payload when there is no
//! `apns-id`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::ecdsa::signature::Verifier;
use p256::pkcs8::{DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use rand::Rng;
use serde::Serialize;
use serde_json::{Value, json};

use crate::{Faults, Injected, RunningSim, SimStats, Transport};

/// The largest payload APNs takes, and the larger one for VoIP pushes.
const MAX_PAYLOAD_BYTES: usize = 4096;
const MAX_VOIP_PAYLOAD_BYTES: usize = 5120;
const MAX_COLLAPSE_ID_BYTES: usize = 64;
const PUSH_TYPES: [&str; 11] = [
    "alert",
    "background",
    "location",
    "voip",
    "complication",
    "fileprovider",
    "mdm",
    "liveactivity",
    "pushtotalk",
    "widgets",
    "controls",
];
/// Headers APNs refuses to see twice.
const SINGLE_HEADERS: [&str; 7] = [
    "authorization",
    "apns-id",
    "apns-topic",
    "apns-push-type",
    "apns-priority",
    "apns-expiration",
    "apns-collapse-id",
];

/// An APNs error `reason`, with the HTTP status APNs answers it with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApnsError {
    BadCollapseId,
    BadDeviceToken,
    BadExpirationDate,
    BadMessageId,
    BadPriority,
    BadTopic,
    DeviceTokenNotForTopic,
    DuplicateHeaders,
    InvalidPushType,
    MissingDeviceToken,
    MissingTopic,
    PayloadEmpty,
    TopicDisallowed,
    ExpiredProviderToken,
    InvalidProviderToken,
    MissingProviderToken,
    BadPath,
    MethodNotAllowed,
    ExpiredToken,
    Unregistered,
    PayloadTooLarge,
    TooManyProviderTokenUpdates,
    TooManyRequests,
    InternalServerError,
    ServiceUnavailable,
    Shutdown,
}

impl ApnsError {
    /// The codes with a deterministic device-token trigger, in table order.
    pub const TRIGGERED: [ApnsError; 9] = [
        ApnsError::BadDeviceToken,
        ApnsError::DeviceTokenNotForTopic,
        ApnsError::TopicDisallowed,
        ApnsError::Unregistered,
        ApnsError::ExpiredToken,
        ApnsError::TooManyRequests,
        ApnsError::InternalServerError,
        ApnsError::ServiceUnavailable,
        ApnsError::Shutdown,
    ];

    /// The `reason` string APNs puts in the error body.
    pub fn reason(self) -> &'static str {
        match self {
            ApnsError::BadCollapseId => "BadCollapseId",
            ApnsError::BadDeviceToken => "BadDeviceToken",
            ApnsError::BadExpirationDate => "BadExpirationDate",
            ApnsError::BadMessageId => "BadMessageId",
            ApnsError::BadPriority => "BadPriority",
            ApnsError::BadTopic => "BadTopic",
            ApnsError::DeviceTokenNotForTopic => "DeviceTokenNotForTopic",
            ApnsError::DuplicateHeaders => "DuplicateHeaders",
            ApnsError::InvalidPushType => "InvalidPushType",
            ApnsError::MissingDeviceToken => "MissingDeviceToken",
            ApnsError::MissingTopic => "MissingTopic",
            ApnsError::PayloadEmpty => "PayloadEmpty",
            ApnsError::TopicDisallowed => "TopicDisallowed",
            ApnsError::ExpiredProviderToken => "ExpiredProviderToken",
            ApnsError::InvalidProviderToken => "InvalidProviderToken",
            ApnsError::MissingProviderToken => "MissingProviderToken",
            ApnsError::BadPath => "BadPath",
            ApnsError::MethodNotAllowed => "MethodNotAllowed",
            ApnsError::ExpiredToken => "ExpiredToken",
            ApnsError::Unregistered => "Unregistered",
            ApnsError::PayloadTooLarge => "PayloadTooLarge",
            ApnsError::TooManyProviderTokenUpdates => "TooManyProviderTokenUpdates",
            ApnsError::TooManyRequests => "TooManyRequests",
            ApnsError::InternalServerError => "InternalServerError",
            ApnsError::ServiceUnavailable => "ServiceUnavailable",
            ApnsError::Shutdown => "Shutdown",
        }
    }

    /// The HTTP status APNs answers this reason with.
    pub fn status(self) -> StatusCode {
        match self {
            ApnsError::BadCollapseId
            | ApnsError::BadDeviceToken
            | ApnsError::BadExpirationDate
            | ApnsError::BadMessageId
            | ApnsError::BadPriority
            | ApnsError::BadTopic
            | ApnsError::DeviceTokenNotForTopic
            | ApnsError::DuplicateHeaders
            | ApnsError::InvalidPushType
            | ApnsError::MissingDeviceToken
            | ApnsError::MissingTopic
            | ApnsError::PayloadEmpty
            | ApnsError::TopicDisallowed => StatusCode::BAD_REQUEST,
            ApnsError::ExpiredProviderToken
            | ApnsError::InvalidProviderToken
            | ApnsError::MissingProviderToken => StatusCode::FORBIDDEN,
            ApnsError::BadPath => StatusCode::NOT_FOUND,
            ApnsError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApnsError::ExpiredToken | ApnsError::Unregistered => StatusCode::GONE,
            ApnsError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApnsError::TooManyProviderTokenUpdates | ApnsError::TooManyRequests => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApnsError::InternalServerError => StatusCode::INTERNAL_SERVER_ERROR,
            ApnsError::ServiceUnavailable | ApnsError::Shutdown => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The device-token prefix that triggers this reason, if it has one.
    pub fn trigger_prefix(self) -> Option<&'static str> {
        Some(match self {
            ApnsError::BadDeviceToken => "00000400",
            ApnsError::DeviceTokenNotForTopic => "00000401",
            ApnsError::TopicDisallowed => "00000402",
            ApnsError::Unregistered => "00000410",
            ApnsError::ExpiredToken => "00000411",
            ApnsError::TooManyRequests => "00000429",
            ApnsError::InternalServerError => "00000500",
            ApnsError::ServiceUnavailable => "00000503",
            ApnsError::Shutdown => "00000504",
            _ => return None,
        })
    }

    fn from_prefix(token: &str) -> Option<ApnsError> {
        ApnsError::TRIGGERED
            .into_iter()
            .find(|e| e.trigger_prefix().is_some_and(|p| token.starts_with(p)))
    }

    /// 429 and 503 carry Retry-After, as the shared faults do.
    fn has_retry_after(self) -> bool {
        matches!(
            self,
            ApnsError::TooManyRequests | ApnsError::ServiceUnavailable
        )
    }
}

/// A 64-hex-digit device token that starts with `prefix` (hex digits) and ends with `n`.
pub fn device_token(prefix: &str, n: u64) -> String {
    let tail = format!("{n:016x}");
    let fill = 64usize.saturating_sub(prefix.len() + tail.len());
    format!("{prefix}{}{tail}", "0".repeat(fill))
}

/// An APNs signing key (a `.p8` key): the team, the key id and a P-256 key pair, made fresh for
/// each run so no key is ever committed.
#[derive(Clone)]
pub struct ApnsKey {
    pub team_id: String,
    pub key_id: String,
    /// PKCS#8 PEM, as in the `.p8` file Apple hands out.
    pub private_key_pem: String,
    /// SPKI PEM, which the simulator verifies provider tokens with.
    pub public_key_pem: String,
}

impl std::fmt::Debug for ApnsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApnsKey")
            .field("team_id", &self.team_id)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl ApnsKey {
    /// Generates a P-256 key `key_id` for team `team_id`.
    pub fn generate(team_id: &str, key_id: &str) -> anyhow::Result<Self> {
        let secret = p256::SecretKey::random(&mut rand::thread_rng());
        Ok(Self {
            team_id: team_id.to_string(),
            key_id: key_id.to_string(),
            private_key_pem: secret.to_pkcs8_pem(LineEnding::LF)?.to_string(),
            public_key_pem: secret.public_key().to_public_key_pem(LineEnding::LF)?,
        })
    }

    /// A provider token issued at `iat` (Unix seconds), signed as an APNs provider signs it:
    /// for clients written by hand in tests and the lab.
    pub fn provider_token(&self, iat: u64) -> anyhow::Result<String> {
        use p256::ecdsa::signature::Signer;
        use p256::pkcs8::DecodePrivateKey;
        let signing_key =
            p256::ecdsa::SigningKey::from_pkcs8_pem(&self.private_key_pem).map_err(|e| {
                anyhow::anyhow!("APNs key {} is not a P-256 PKCS#8 PEM: {e}", self.key_id)
            })?;
        let header =
            URL_SAFE_NO_PAD.encode(json!({"alg": "ES256", "kid": self.key_id}).to_string());
        let claims = URL_SAFE_NO_PAD.encode(json!({"iss": self.team_id, "iat": iat}).to_string());
        let input = format!("{header}.{claims}");
        let signature: p256::ecdsa::Signature = signing_key.sign(input.as_bytes());
        Ok(format!(
            "{input}.{}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        ))
    }
}

/// How the APNs simulator behaves.
#[derive(Debug, Clone)]
pub struct ApnsConfig {
    /// The team whose provider tokens are accepted (`iss`).
    pub team_id: String,
    /// The team's signing keys: key id (`kid`) and SPKI PEM.
    pub keys: Vec<(String, String)>,
    /// The app's bundle id: the `apns-topic` of alert and background pushes.
    pub topic: String,
    /// Latency, outage windows and the rate limit.
    pub faults: Faults,
    /// Random faults: each reason with its probability per notification.
    pub error_rates: Vec<(ApnsError, f64)>,
    /// Seconds sent in `Retry-After` with 429 `TooManyRequests` and 503 `ServiceUnavailable`.
    pub retry_after_s: u64,
    /// How soon after the token in use a new one may replace it (Apple: 20 minutes).
    pub min_token_update_interval: Duration,
    /// How old a token's `iat` may be (Apple: one hour).
    pub max_token_age: Duration,
}

impl ApnsConfig {
    /// A well-behaved APNs for app `topic` that accepts `key`.
    pub fn new(topic: &str, key: &ApnsKey) -> Self {
        Self {
            team_id: key.team_id.clone(),
            keys: vec![(key.key_id.clone(), key.public_key_pem.clone())],
            topic: topic.to_string(),
            faults: Faults::default(),
            error_rates: Vec::new(),
            retry_after_s: 1,
            min_token_update_interval: Duration::from_secs(20 * 60),
            max_token_age: Duration::from_secs(60 * 60),
        }
    }
}

/// The provider tokens of one signing key.
#[derive(Default)]
struct KeyTokens {
    /// The token in use and when it was taken into use.
    current: Option<(String, Instant)>,
    /// Tokens made stale by `/_sim/expire-provider-tokens`.
    expired: HashSet<String>,
}

/// Pushes by the HTTP version they arrived in.
#[derive(Debug, Default)]
struct ProtocolCounts {
    http2: AtomicU64,
    other: AtomicU64,
}

/// What `GET /_sim/protocol` answers.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct ProtocolSnapshot {
    /// Pushes that arrived over HTTP/2.
    pub http2_requests: u64,
    /// Pushes that arrived in any other version (refused with 505).
    pub other_requests: u64,
}

struct ApnsState {
    config: ApnsConfig,
    keys: HashMap<String, p256::ecdsa::VerifyingKey>,
    tokens: Mutex<HashMap<String, KeyTokens>>,
    /// Tries per `0000ff0N` token, to fail the first N.
    flaky_attempts: Mutex<HashMap<String, u32>>,
    protocol: ProtocolCounts,
    stats: Arc<SimStats>,
    faults: OnceLock<Arc<crate::FaultState>>,
}

/// Starts the APNs simulator on a loopback port, over TLS with HTTP/2 only.
pub async fn start(config: ApnsConfig) -> anyhow::Result<RunningSim> {
    let mut keys = HashMap::new();
    for (key_id, pem) in &config.keys {
        keys.insert(
            key_id.clone(),
            p256::ecdsa::VerifyingKey::from_public_key_pem(pem)
                .map_err(|e| anyhow::anyhow!("APNs key {key_id} is not a P-256 SPKI PEM: {e}"))?,
        );
    }
    let stats = Arc::new(SimStats::default());
    let state = Arc::new(ApnsState {
        config,
        keys,
        tokens: Mutex::new(HashMap::new()),
        flaky_attempts: Mutex::new(HashMap::new()),
        protocol: ProtocolCounts::default(),
        stats: stats.clone(),
        faults: OnceLock::new(),
    });
    let router = axum::Router::new()
        .route("/3/device/{token}", post(push))
        .route("/_sim/stats", get(stats_handler))
        .route("/_sim/protocol", get(protocol_handler))
        .route("/_sim/expire-provider-tokens", post(expire_tokens))
        .fallback(|| async { error_reply(ApnsError::BadPath, None, None) })
        .method_not_allowed_fallback(|| async {
            error_reply(ApnsError::MethodNotAllowed, None, None)
        })
        .with_state(state.clone());
    let faults = state.config.faults.clone();
    let running = crate::serve(router, stats, faults, Transport::TlsH2Only).await?;
    let _ = state.faults.set(running.faults.clone());
    Ok(running)
}

async fn stats_handler(State(state): State<Arc<ApnsState>>) -> Json<crate::StatsSnapshot> {
    Json(state.stats.snapshot())
}

async fn protocol_handler(State(state): State<Arc<ApnsState>>) -> Json<ProtocolSnapshot> {
    Json(ProtocolSnapshot {
        http2_requests: state.protocol.http2.load(Ordering::Relaxed),
        other_requests: state.protocol.other.load(Ordering::Relaxed),
    })
}

/// Makes every token in use stale, as when an hour has passed: they answer
/// `ExpiredProviderToken`, and the next new token is taken without a rate complaint.
async fn expire_tokens(State(state): State<Arc<ApnsState>>) -> StatusCode {
    let mut tokens = state.tokens.lock().unwrap_or_else(|p| p.into_inner());
    for key in tokens.values_mut() {
        if let Some((token, _)) = key.current.take() {
            key.expired.insert(token);
        }
    }
    StatusCode::NO_CONTENT
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// An APNs error reply: `{"reason"}` (plus `timestamp` for 410), with `apns-id` when known.
fn error_reply(error: ApnsError, apns_id: Option<&str>, retry_after_s: Option<u64>) -> Response {
    let body = if error.status() == StatusCode::GONE {
        json!({"reason": error.reason(), "timestamp": now_ms()})
    } else {
        json!({"reason": error.reason()})
    };
    let mut response = (error.status(), Json(body)).into_response();
    if let Some(id) = apns_id.and_then(|id| HeaderValue::from_str(id).ok()) {
        response.headers_mut().insert("apns-id", id);
    }
    if let Some(value) = retry_after_s.and_then(|s| HeaderValue::from_str(&s.to_string()).ok()) {
        response.headers_mut().insert("retry-after", value);
    }
    response
}

/// A provider token's `{kid}` header and `{iss, iat}` claims, once its signature is verified.
#[derive(Debug, PartialEq, Eq)]
struct ProviderToken {
    kid: String,
    iss: String,
    iat: u64,
}

/// Verifies an ES256 provider token against the team's keys. Any failure is
/// `InvalidProviderToken`, as APNs does not say which part was wrong.
fn verify_provider_token(
    keys: &HashMap<String, p256::ecdsa::VerifyingKey>,
    token: &str,
) -> Option<ProviderToken> {
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let decode = |part: &str| -> Option<Value> {
        URL_SAFE_NO_PAD
            .decode(part)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    };
    let header = decode(header)?;
    if header.get("alg").and_then(Value::as_str) != Some("ES256") {
        return None;
    }
    let kid = header.get("kid").and_then(Value::as_str)?;
    let key = keys.get(kid)?;
    let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
    let signature = p256::ecdsa::Signature::from_slice(&signature).ok()?;
    let signing_input = token.rsplit_once('.').map_or("", |(input, _)| input);
    key.verify(signing_input.as_bytes(), &signature).ok()?;
    let claims = decode(claims)?;
    Some(ProviderToken {
        kid: kid.to_string(),
        iss: claims.get("iss").and_then(Value::as_str)?.to_string(),
        iat: claims.get("iat").and_then(Value::as_u64)?,
    })
}

impl ApnsState {
    async fn delay(&self) {
        if let Some(faults) = self.faults.get() {
            faults.delay().await;
        }
    }

    fn injected(&self) -> Option<Injected> {
        self.faults.get().and_then(|f| f.check())
    }

    /// Checks the `authorization` header as APNs does; an error is the reason to refuse with.
    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApnsError> {
        let Some(value) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
            return Err(ApnsError::MissingProviderToken);
        };
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => return Err(ApnsError::MissingProviderToken),
        };
        if token.is_empty() {
            return Err(ApnsError::MissingProviderToken);
        }
        let claims =
            verify_provider_token(&self.keys, token).ok_or(ApnsError::InvalidProviderToken)?;
        let now_s = now_ms() / 1000;
        // A token from the future is not one this team's clock could have made.
        if claims.iss != self.config.team_id || claims.iat > now_s + 60 {
            return Err(ApnsError::InvalidProviderToken);
        }
        if now_s.saturating_sub(claims.iat) > self.config.max_token_age.as_secs() {
            return Err(ApnsError::ExpiredProviderToken);
        }
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let key = tokens.entry(claims.kid).or_default();
        if key.expired.contains(token) {
            return Err(ApnsError::ExpiredProviderToken);
        }
        match &key.current {
            Some((current, _)) if current == token => Ok(()),
            Some((_, since)) if since.elapsed() < self.config.min_token_update_interval => {
                Err(ApnsError::TooManyProviderTokenUpdates)
            }
            _ => {
                key.current = Some((token.to_string(), Instant::now()));
                self.stats.token_request();
                Ok(())
            }
        }
    }

    /// The fault this notification meets by its token's prefix or the random rates, if any.
    fn triggered(&self, token: &str) -> Option<ApnsError> {
        if let Some(error) = ApnsError::from_prefix(token) {
            return Some(error);
        }
        if let Some(rest) = token.strip_prefix("0000ff0")
            && let Some(failures) = rest.get(..1).and_then(|n| n.parse::<u32>().ok())
        {
            let mut attempts = self
                .flaky_attempts
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let tries = attempts.entry(token.to_string()).or_default();
            *tries += 1;
            if *tries <= failures {
                return Some(ApnsError::ServiceUnavailable);
            }
        }
        let mut rng = rand::thread_rng();
        self.config
            .error_rates
            .iter()
            .find(|(_, rate)| rng.r#gen::<f64>() < *rate)
            .map(|(error, _)| *error)
    }

    /// The topic a push of `push_type` must name: the bundle id, with the suffix APNs wants
    /// for the push types that have their own topic.
    fn expected_topic(&self, push_type: &str) -> String {
        let suffix = match push_type {
            "voip" => ".voip",
            "complication" => ".complication",
            "fileprovider" => ".pushkit.fileprovider",
            "liveactivity" => ".push-type.liveactivity",
            "pushtotalk" => ".voip-ptt",
            _ => "",
        };
        format!("{}{suffix}", self.config.topic)
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// True for the canonical 8-4-4-4-12 hex form of a UUID, in either case.
fn is_uuid(id: &str) -> bool {
    let groups: Vec<&str> = id.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn new_apns_id() -> String {
    let n: u128 = rand::thread_rng().r#gen();
    let hex = format!("{n:032X}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Checks the headers and payload of a push whose credentials passed; the error is the reason
/// APNs would refuse it with.
fn check_push(
    state: &ApnsState,
    token: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), ApnsError> {
    if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApnsError::BadDeviceToken);
    }
    let push_type = header(headers, "apns-push-type").unwrap_or("alert");
    if !PUSH_TYPES.contains(&push_type) {
        return Err(ApnsError::InvalidPushType);
    }
    match header(headers, "apns-topic") {
        None => return Err(ApnsError::MissingTopic),
        Some(topic) if topic.is_empty() || topic.contains(char::is_whitespace) => {
            return Err(ApnsError::BadTopic);
        }
        Some(topic) if topic != state.expected_topic(push_type) => {
            return Err(ApnsError::DeviceTokenNotForTopic);
        }
        Some(_) => {}
    }
    if let Some(priority) = headers.get("apns-priority") {
        match priority.to_str().ok() {
            Some("1" | "5") => {}
            // Apple: priority 10 is an error for a background notification.
            Some("10") if push_type != "background" => {}
            _ => return Err(ApnsError::BadPriority),
        }
    }
    if let Some(expiration) = headers.get("apns-expiration")
        && expiration
            .to_str()
            .ok()
            .and_then(|e| e.parse::<u64>().ok())
            .is_none()
    {
        return Err(ApnsError::BadExpirationDate);
    }
    if let Some(id) = headers.get("apns-id")
        && !id.to_str().is_ok_and(is_uuid)
    {
        return Err(ApnsError::BadMessageId);
    }
    if headers
        .get("apns-collapse-id")
        .is_some_and(|c| c.as_bytes().len() > MAX_COLLAPSE_ID_BYTES)
    {
        return Err(ApnsError::BadCollapseId);
    }
    let max_payload = if push_type == "voip" {
        MAX_VOIP_PAYLOAD_BYTES
    } else {
        MAX_PAYLOAD_BYTES
    };
    if body.len() > max_payload {
        return Err(ApnsError::PayloadTooLarge);
    }
    let payload: Value = serde_json::from_slice(body).map_err(|_| ApnsError::PayloadEmpty)?;
    if !payload.get("aps").is_some_and(Value::is_object) {
        return Err(ApnsError::PayloadEmpty);
    }
    Ok(())
}

async fn push(
    State(state): State<Arc<ApnsState>>,
    Path(token): Path<String>,
    version: Version,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if version != Version::HTTP_2 {
        state.protocol.other.fetch_add(1, Ordering::Relaxed);
        state.stats.refuse("HTTPVersionNotSupported");
        return StatusCode::HTTP_VERSION_NOT_SUPPORTED.into_response();
    }
    state.protocol.http2.fetch_add(1, Ordering::Relaxed);
    state.delay().await;
    // APNs echoes a valid `apns-id` on errors too, so the sender can match the reply.
    let request_id = header(&headers, "apns-id")
        .filter(|id| is_uuid(id))
        .map(str::to_string);
    let apns_id = request_id.clone().unwrap_or_else(new_apns_id);
    let refuse = |error: ApnsError, retry_after_s: Option<u64>| {
        state.stats.refuse(error.reason());
        error_reply(error, Some(&apns_id), retry_after_s)
    };
    match state.injected() {
        Some(Injected::Unavailable) => {
            return refuse(
                ApnsError::ServiceUnavailable,
                Some(state.config.retry_after_s),
            );
        }
        Some(Injected::RateLimited { retry_after_s }) => {
            return refuse(ApnsError::TooManyRequests, Some(retry_after_s));
        }
        None => {}
    }
    if SINGLE_HEADERS
        .iter()
        .any(|name| headers.get_all(*name).iter().count() > 1)
    {
        return refuse(ApnsError::DuplicateHeaders, None);
    }
    match state.authorize(&headers) {
        Ok(()) => {}
        Err(ApnsError::TooManyProviderTokenUpdates) => {
            return refuse(ApnsError::TooManyProviderTokenUpdates, None);
        }
        Err(error) => {
            state.stats.auth_failure();
            return error_reply(error, Some(&apns_id), None);
        }
    }
    if let Err(error) = check_push(&state, &token, &headers, &body) {
        return refuse(error, None);
    }
    if let Some(error) = state.triggered(&token) {
        let retry_after = error
            .has_retry_after()
            .then_some(state.config.retry_after_s);
        return refuse(error, retry_after);
    }
    // The same apns-id to the same device is the same notification seen twice.
    let identity = request_id.as_deref().map_or(&body[..], str::as_bytes);
    state.stats.accept(&token.to_ascii_lowercase(), identity);
    let mut response = StatusCode::OK.into_response();
    if let Ok(value) = HeaderValue::from_str(&apns_id) {
        response.headers_mut().insert("apns-id", value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    fn jwt(key: &ApnsKey, iss: &str, iat: u64) -> String {
        let key = ApnsKey {
            team_id: iss.to_string(),
            ..key.clone()
        };
        key.provider_token(iat).unwrap()
    }

    #[test]
    fn provider_tokens_are_verified_against_the_key_for_their_kid() {
        let key = ApnsKey::generate("TEAM123456", "KEY1234567").unwrap();
        let other = ApnsKey::generate("TEAM123456", "KEY1234567").unwrap();
        let keys = HashMap::from([(
            key.key_id.clone(),
            p256::ecdsa::VerifyingKey::from_public_key_pem(&key.public_key_pem).unwrap(),
        )]);
        let good = jwt(&key, "TEAM123456", 1_700_000_000);
        assert_eq!(
            verify_provider_token(&keys, &good),
            Some(ProviderToken {
                kid: "KEY1234567".into(),
                iss: "TEAM123456".into(),
                iat: 1_700_000_000,
            })
        );
        // Signed by another key under the same kid.
        assert_eq!(
            verify_provider_token(&keys, &jwt(&other, "TEAM123456", 1)),
            None
        );
        // A claim changed after signing.
        let (head, rest) = good.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let forged = URL_SAFE_NO_PAD.encode(json!({"iss": "OTHER", "iat": 1}).to_string());
        assert_eq!(
            verify_provider_token(&keys, &format!("{head}.{forged}.{sig}")),
            None
        );
        assert_eq!(verify_provider_token(&keys, "not.a.jwt"), None);
    }

    #[test]
    fn device_tokens_carry_their_trigger() {
        let token = device_token("00000410", 7);
        assert_eq!(token.len(), 64);
        assert!(token.ends_with("0000000000000007"));
        assert_eq!(
            ApnsError::from_prefix(&token),
            Some(ApnsError::Unregistered)
        );
        assert_eq!(ApnsError::from_prefix(&device_token("ab", 1)), None);
        for error in ApnsError::TRIGGERED {
            let prefix = error.trigger_prefix().unwrap();
            assert_eq!(
                ApnsError::from_prefix(&device_token(prefix, 1)),
                Some(error)
            );
        }
    }

    #[test]
    fn apns_ids_are_canonical_uuids() {
        assert!(is_uuid(&new_apns_id()));
        assert!(is_uuid("123e4567-e89b-12d3-a456-426655440000"));
        assert!(!is_uuid("123e4567e89b12d3a456426655440000"));
        assert!(!is_uuid("123e4567-e89b-12d3-a456-42665544000g"));
    }

    /// A client that cannot speak HTTP/2 gets no answer: ALPN offers only `h2`, and a
    /// connection without ALPN is served as HTTP/2, which an HTTP/1.1 request is not.
    #[tokio::test]
    async fn http1_clients_are_not_served() {
        use rustls::pki_types::pem::PemObject;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let key = ApnsKey::generate("TEAM123456", "KEY1234567").unwrap();
        let sim = start(ApnsConfig::new("com.example.app", &key))
            .await
            .unwrap();
        let ca = rustls::pki_types::CertificateDer::from_pem_slice(
            sim.ca_pem.as_deref().unwrap().as_bytes(),
        )
        .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).unwrap();
        let connect = |alpn: Vec<Vec<u8>>| {
            let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
            config.alpn_protocols = alpn;
            let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
            let addr = sim.addr;
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let name = rustls::pki_types::ServerName::try_from("localhost")
                    .map_err(std::io::Error::other)?;
                connector.connect(name, tcp).await
            }
        };
        assert!(connect(vec![b"http/1.1".to_vec()]).await.is_err());

        let mut tls = connect(Vec::new()).await.unwrap();
        let request = format!(
            "POST /3/device/{} HTTP/1.1\r\nhost: localhost\r\ncontent-length: 2\r\n\r\n{{}}",
            device_token("ab", 1)
        );
        tls.write_all(request.as_bytes()).await.unwrap();
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut reply)).await;
        assert!(!String::from_utf8_lossy(&reply).starts_with("HTTP/1.1"));
        assert_eq!(sim.stats.snapshot().delivered, 0);
    }
}
