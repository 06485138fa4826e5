//! Twilio Programmable Messaging (REST API 2010-04-01), simulated.
//!
//! - `POST /2010-04-01/Accounts/{AccountSid}/Messages.json`: HTTP Basic credentials
//!   (`AccountSid:AuthToken`) are verified, and the path's AccountSid must be the authenticated
//!   one (else 401 `20003`). The form body is checked as Twilio does: `To` (21604 if missing),
//!   `From` or `MessagingServiceSid` (21603), `Body` unless `MediaUrl` (21602), a body of at most
//!   1600 characters (21617), `To` in E.164 (21211), `From` one of the account's senders (21212
//!   if it is no sender at all, 21606 if it is not the account's), a known Messaging Service
//!   (20404), `To` ≠ `From` (21266). Answers 201 with the message resource (`sid` "SM" + 32 hex,
//!   status `queued`, or `accepted` through a Messaging Service) or Twilio's error body
//!   `{code, message, more_info, status}`.
//! - `GET /2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json`: a recent message (the last
//!   [`MESSAGE_LOG`]), already settled: `delivered`, or `failed` with its 30xxx `error_code`.
//! - `GET /_sim/stats`: the counts, as JSON; `GET /_sim/requests`: the recent authenticated
//!   create requests (the last [`REQUEST_LOG`]), each `{account_sid, params: [[name, value]..]}`
//!   in arrival order, so tests can assert the exact form fields.
//!
//! Faults: a latency distribution, outages (503 with code 20503), the rate limit (429 with code
//! 20429 and Retry-After), a rate per error code, and deterministic triggers by `To`:
//! - Twilio's own magic numbers: `+15005550001` → 21211, `+15005550002` → 21612,
//!   `+15005550003` → 21408, `+15005550004` → 21610, `+15005550009` → 21614; and as `From`:
//!   `+15005550001` → 21212, `+15005550007` → 21606, `+15005550008` → 21611, `+15005550006`
//!   always valid;
//! - `+999<code>…`, where `<code>` is the five digits of any [`TwilioError`] but 20003 (which is
//!   only ever earned with wrong credentials), e.g. `+99921610123`;
//! - `+998<n>…`: 503 on the first `n` tries of that number, then accepted.
//!
//! Delivery-time failures (30xxx, e.g. 30001 queue overflow) are not API errors at Twilio: the
//! message is created (201) and fails later, which the sender learns from a status callback or a
//! fetch. The simulator does the same: 201, the fetch shows `failed` with the code, and the
//! message is counted as refused under that code, never as delivered.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::Rng;
use serde_json::{Value, json};

use crate::form::parse_form;
use crate::{Faults, Injected, RunningSim, SimStats, Transport};

/// Twilio's magic sender number that is always valid.
pub const MAGIC_FROM: &str = "+15005550006";
/// Twilio's limit on `Body`, in characters.
pub const MAX_BODY_CHARS: usize = 1600;
/// How many recent messages `GET …/Messages/{Sid}.json` can find.
pub const MESSAGE_LOG: usize = 10_000;
/// How many recent create requests `GET /_sim/requests` returns.
pub const REQUEST_LOG: usize = 1_000;

/// A Twilio error code, with the HTTP status Twilio answers it with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TwilioError {
    /// 20003, 401: credentials refused.
    Authenticate,
    /// 20404, 404: no such resource (here: an unknown Messaging Service or message).
    NotFound,
    /// 20429, 429: too many concurrent requests.
    TooManyRequests,
    /// 20500, 500.
    Internal,
    /// 20503, 503.
    ServiceUnavailable,
    /// 21211: `To` is not a valid phone number.
    InvalidTo,
    /// 21212: `From` is not a phone number, short code or alphanumeric sender ID.
    InvalidFrom,
    /// 21266: `To` and `From` are the same number.
    ToEqualsFrom,
    /// 21408: sending to the `To` number's region is not enabled.
    RegionNotEnabled,
    /// 21602: no `Body` (and no `MediaUrl`).
    MissingBody,
    /// 21603: neither `From` nor `MessagingServiceSid`.
    MissingFrom,
    /// 21604: no `To`.
    MissingTo,
    /// 21606: `From` is not an SMS-capable number of this account.
    FromNotOwned,
    /// 21610: the recipient replied STOP.
    Unsubscribed,
    /// 21611: the `From` sender's queue is full.
    FromQueueFull,
    /// 21612: `To` cannot be reached from `From`.
    CannotRoute,
    /// 21614: `To` is not a mobile number.
    NotMobile,
    /// 21617: `Body` is longer than 1600 characters.
    BodyTooLong,
    /// 30001, at delivery time: queue overflow.
    QueueOverflow,
    /// 30003, at delivery time: the handset is unreachable.
    Unreachable,
}

impl TwilioError {
    /// Every code, in numeric order.
    pub const ALL: [TwilioError; 20] = [
        TwilioError::Authenticate,
        TwilioError::NotFound,
        TwilioError::TooManyRequests,
        TwilioError::Internal,
        TwilioError::ServiceUnavailable,
        TwilioError::InvalidTo,
        TwilioError::InvalidFrom,
        TwilioError::ToEqualsFrom,
        TwilioError::RegionNotEnabled,
        TwilioError::MissingBody,
        TwilioError::MissingFrom,
        TwilioError::MissingTo,
        TwilioError::FromNotOwned,
        TwilioError::Unsubscribed,
        TwilioError::FromQueueFull,
        TwilioError::CannotRoute,
        TwilioError::NotMobile,
        TwilioError::BodyTooLong,
        TwilioError::QueueOverflow,
        TwilioError::Unreachable,
    ];

    /// Twilio's numeric error code.
    pub fn code(self) -> u32 {
        match self {
            TwilioError::Authenticate => 20003,
            TwilioError::NotFound => 20404,
            TwilioError::TooManyRequests => 20429,
            TwilioError::Internal => 20500,
            TwilioError::ServiceUnavailable => 20503,
            TwilioError::InvalidTo => 21211,
            TwilioError::InvalidFrom => 21212,
            TwilioError::ToEqualsFrom => 21266,
            TwilioError::RegionNotEnabled => 21408,
            TwilioError::MissingBody => 21602,
            TwilioError::MissingFrom => 21603,
            TwilioError::MissingTo => 21604,
            TwilioError::FromNotOwned => 21606,
            TwilioError::Unsubscribed => 21610,
            TwilioError::FromQueueFull => 21611,
            TwilioError::CannotRoute => 21612,
            TwilioError::NotMobile => 21614,
            TwilioError::BodyTooLong => 21617,
            TwilioError::QueueOverflow => 30001,
            TwilioError::Unreachable => 30003,
        }
    }

    /// The code for `code`, if the simulator knows it.
    pub fn from_code(code: u32) -> Option<TwilioError> {
        TwilioError::ALL.into_iter().find(|e| e.code() == code)
    }

    /// True for failures Twilio reports after it accepted the message (30xxx), never in the
    /// reply to the create request.
    pub fn at_delivery(self) -> bool {
        self.code() >= 30000
    }

    fn http_status(self) -> StatusCode {
        match self {
            TwilioError::Authenticate => StatusCode::UNAUTHORIZED,
            TwilioError::NotFound => StatusCode::NOT_FOUND,
            TwilioError::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            TwilioError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            TwilioError::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// Twilio's message for the code, without the request's values.
    fn default_message(self) -> &'static str {
        match self {
            TwilioError::Authenticate => "Authenticate",
            TwilioError::NotFound => "The requested resource was not found",
            TwilioError::TooManyRequests => "Too Many Requests",
            TwilioError::Internal => "An internal server error has occurred",
            TwilioError::ServiceUnavailable => "Service Unavailable",
            TwilioError::InvalidTo => "The 'To' number is not a valid phone number.",
            TwilioError::InvalidFrom => {
                "The 'From' number is not a valid phone number, shortcode, or alphanumeric sender ID."
            }
            TwilioError::ToEqualsFrom => "'To' and 'From' number cannot be the same",
            TwilioError::RegionNotEnabled => {
                "Permission to send an SMS has not been enabled for the region indicated by the 'To' number"
            }
            TwilioError::MissingBody => "Message body is required.",
            TwilioError::MissingFrom => "A 'From' phone number is required.",
            TwilioError::MissingTo => "A 'To' phone number is required.",
            TwilioError::FromNotOwned => {
                "The From phone number is not a valid, SMS-capable inbound phone number or short code for your account."
            }
            TwilioError::Unsubscribed => "Attempt to send to unsubscribed recipient",
            TwilioError::FromQueueFull => {
                "This 'From' number has exceeded the maximum number of queued messages"
            }
            TwilioError::CannotRoute => {
                "The 'To' phone number is not currently reachable using the 'From' phone number via SMS."
            }
            TwilioError::NotMobile => "'To' number is not a valid mobile number",
            TwilioError::BodyTooLong => {
                "The concatenated message body exceeds the 1600 character limit."
            }
            TwilioError::QueueOverflow => "Queue overflow",
            TwilioError::Unreachable => "Unreachable destination handset",
        }
    }

    /// Twilio's magic `To` numbers (test credentials).
    fn magic_to(to: &str) -> Option<TwilioError> {
        match to {
            "+15005550001" => Some(TwilioError::InvalidTo),
            "+15005550002" => Some(TwilioError::CannotRoute),
            "+15005550003" => Some(TwilioError::RegionNotEnabled),
            "+15005550004" => Some(TwilioError::Unsubscribed),
            "+15005550009" => Some(TwilioError::NotMobile),
            _ => None,
        }
    }

    /// Twilio's magic `From` numbers (test credentials).
    fn magic_from(from: &str) -> Option<TwilioError> {
        match from {
            "+15005550001" => Some(TwilioError::InvalidFrom),
            "+15005550007" => Some(TwilioError::FromNotOwned),
            "+15005550008" => Some(TwilioError::FromQueueFull),
            _ => None,
        }
    }

    /// The `+999<code>…` trigger.
    fn from_trigger(to: &str) -> Option<TwilioError> {
        let digits = to.strip_prefix("+999")?.get(..5)?;
        let error = TwilioError::from_code(digits.parse().ok()?)?;
        (error != TwilioError::Authenticate).then_some(error)
    }
}

/// How the Twilio simulator behaves.
#[derive(Debug, Clone)]
pub struct TwilioConfig {
    /// The account: `AC` + 32 hex at Twilio; any string here.
    pub account_sid: String,
    /// The account's auth token, the Basic-auth password.
    pub auth_token: String,
    /// Senders the account owns: E.164 numbers, short codes, alphanumeric sender IDs.
    pub from_numbers: Vec<String>,
    /// Messaging Service SIDs (`MG…`) of the account.
    pub messaging_services: Vec<String>,
    /// Latency, outage windows and the rate limit.
    pub faults: Faults,
    /// Random faults: each code with its probability per message.
    pub error_rates: Vec<(TwilioError, f64)>,
    /// Seconds sent in `Retry-After` with 429 and 503.
    pub retry_after_s: u64,
}

impl TwilioConfig {
    /// A well-behaved Twilio account that owns Twilio's always-valid magic number
    /// [`MAGIC_FROM`] and no Messaging Service.
    pub fn new(account_sid: &str, auth_token: &str) -> Self {
        Self {
            account_sid: account_sid.to_string(),
            auth_token: auth_token.to_string(),
            from_numbers: vec![MAGIC_FROM.to_string()],
            messaging_services: Vec::new(),
            faults: Faults::default(),
            error_rates: Vec::new(),
            retry_after_s: 1,
        }
    }

    /// `base64("AccountSid:AuthToken")`: the value of the plugin's Basic-auth secret.
    pub fn basic_auth(&self) -> String {
        STANDARD.encode(format!("{}:{}", self.account_sid, self.auth_token))
    }
}

/// Recent messages and requests, bounded so a long lab run does not grow the simulator.
#[derive(Default)]
struct Logs {
    messages: HashMap<String, Value>,
    message_order: VecDeque<String>,
    requests: VecDeque<Value>,
}

impl Logs {
    fn record_message(&mut self, sid: String, message: Value) {
        if self.message_order.len() == MESSAGE_LOG
            && let Some(oldest) = self.message_order.pop_front()
        {
            self.messages.remove(&oldest);
        }
        self.message_order.push_back(sid.clone());
        self.messages.insert(sid, message);
    }

    fn record_request(&mut self, request: Value) {
        if self.requests.len() == REQUEST_LOG {
            self.requests.pop_front();
        }
        self.requests.push_back(request);
    }
}

struct TwilioState {
    config: TwilioConfig,
    logs: Mutex<Logs>,
    /// Tries per `+998<n>` number, to fail the first n.
    flaky_attempts: Mutex<HashMap<String, u32>>,
    stats: Arc<SimStats>,
    faults: OnceLock<Arc<crate::FaultState>>,
}

impl TwilioState {
    async fn delay(&self) {
        if let Some(faults) = self.faults.get() {
            faults.delay().await;
        }
    }

    fn injected(&self) -> Option<Injected> {
        self.faults.get().and_then(|f| f.check())
    }

    fn logs(&self) -> std::sync::MutexGuard<'_, Logs> {
        self.logs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks the Basic credentials and that `account` is the authenticated account.
    fn authenticated(&self, headers: &HeaderMap, account: &str) -> bool {
        let Some((user, password)) = basic_credentials(headers) else {
            return false;
        };
        user == self.config.account_sid
            && password == self.config.auth_token
            && account == self.config.account_sid
    }
}

/// Starts the Twilio simulator on a loopback port.
pub async fn start(config: TwilioConfig) -> anyhow::Result<RunningSim> {
    let stats = Arc::new(SimStats::default());
    let state = Arc::new(TwilioState {
        config,
        logs: Mutex::new(Logs::default()),
        flaky_attempts: Mutex::new(HashMap::new()),
        stats: stats.clone(),
        faults: OnceLock::new(),
    });
    let router = axum::Router::new()
        .route("/2010-04-01/Accounts/{account}/Messages.json", post(create))
        .route(
            "/2010-04-01/Accounts/{account}/Messages/{message}",
            get(fetch),
        )
        .route("/_sim/stats", get(stats_handler))
        .route("/_sim/requests", get(requests_handler))
        .with_state(state.clone());
    let faults = state.config.faults.clone();
    let running = crate::serve(router, stats, faults, Transport::Plain).await?;
    let _ = state.faults.set(running.faults.clone());
    Ok(running)
}

async fn stats_handler(State(state): State<Arc<TwilioState>>) -> Json<crate::StatsSnapshot> {
    Json(state.stats.snapshot())
}

async fn requests_handler(State(state): State<Arc<TwilioState>>) -> Json<Value> {
    Json(Value::Array(
        state.logs().requests.iter().cloned().collect(),
    ))
}

/// Twilio's error reply: `{code, message, more_info, status}`, with Retry-After on 429 and 503.
fn twilio_error(error: TwilioError, message: &str, retry_after_s: u64) -> Response {
    let status = error.http_status();
    let body = json!({
        "code": error.code(),
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{}", error.code()),
        "status": status.as_u16(),
    });
    let mut response = (status, Json(body)).into_response();
    if matches!(
        error,
        TwilioError::TooManyRequests | TwilioError::ServiceUnavailable
    ) && let Ok(value) = retry_after_s.to_string().parse()
    {
        response.headers_mut().insert("retry-after", value);
    }
    response
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get("authorization")?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// E.164 as Twilio reads it: `+`, then 8 to 15 digits, not starting with 0.
fn is_e164(number: &str) -> bool {
    number.strip_prefix('+').is_some_and(|digits| {
        (8..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0')
    })
}

/// Something Twilio could send from: an E.164 number, a short code (5–6 digits), or an
/// alphanumeric sender ID (up to 11 letters, digits and spaces, at least one letter).
fn is_sender(from: &str) -> bool {
    let short_code = (5..=6).contains(&from.len()) && from.bytes().all(|b| b.is_ascii_digit());
    let alphanumeric = (1..=11).contains(&from.len())
        && from.bytes().all(|b| b.is_ascii_alphanumeric() || b == b' ')
        && from.bytes().any(|b| b.is_ascii_alphabetic());
    is_e164(from) || short_code || alphanumeric
}

/// SMS segments: 160 GSM characters in one, 153 per part when concatenated; 70 and 67 for
/// UCS-2. ASCII stands in for the GSM alphabet.
fn segments(body: &str) -> usize {
    let chars = body.chars().count();
    let (single, part) = if body.is_ascii() {
        (160, 153)
    } else {
        (70, 67)
    };
    if chars <= single {
        1
    } else {
        chars.div_ceil(part)
    }
}

/// RFC 2822 date in GMT, as Twilio writes `date_created`: "Tue, 26 Jul 2016 12:50:07 +0000".
fn rfc2822(unix_s: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix_s / 86_400;
    let secs = unix_s % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut out = String::with_capacity(31);
    let _ = write!(
        out,
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        DAYS[(days % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    );
    out
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A create request's fields, checked.
struct MessageRequest {
    to: String,
    from: Option<String>,
    service: Option<String>,
    body: String,
    media: usize,
}

/// Checks the form as Twilio does; the error carries the message Twilio would answer with.
fn check_request(
    config: &TwilioConfig,
    form: &[(String, String)],
) -> Result<MessageRequest, (TwilioError, String)> {
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    let media = form
        .iter()
        .filter(|(k, v)| k == "MediaUrl" && !v.is_empty())
        .count();
    let fail = |error: TwilioError| Err((error, error.default_message().to_string()));
    let Some(to) = field("To") else {
        return fail(TwilioError::MissingTo);
    };
    let from = field("From");
    let service = field("MessagingServiceSid");
    if from.is_none() && service.is_none() {
        return fail(TwilioError::MissingFrom);
    }
    let body = field("Body").unwrap_or_default();
    if body.is_empty() && media == 0 {
        return fail(TwilioError::MissingBody);
    }
    if body.chars().count() > MAX_BODY_CHARS {
        return fail(TwilioError::BodyTooLong);
    }
    if !is_e164(&to) {
        return Err((
            TwilioError::InvalidTo,
            format!("The 'To' number {to} is not a valid phone number."),
        ));
    }
    if let Some(from) = &from {
        if let Some(error) = TwilioError::magic_from(from) {
            return fail(error);
        }
        if !config.from_numbers.contains(from) {
            return Err(if is_sender(from) {
                (
                    TwilioError::FromNotOwned,
                    format!(
                        "The From phone number {from} is not a valid, SMS-capable inbound phone number or short code for your account."
                    ),
                )
            } else {
                (
                    TwilioError::InvalidFrom,
                    format!(
                        "The 'From' number {from} is not a valid phone number, shortcode, or alphanumeric sender ID."
                    ),
                )
            });
        }
        if *from == to {
            return fail(TwilioError::ToEqualsFrom);
        }
    } else if let Some(service) = &service
        && !config.messaging_services.contains(service)
    {
        return Err((
            TwilioError::NotFound,
            format!("The requested resource MessagingService {service} was not found"),
        ));
    }
    Ok(MessageRequest {
        to,
        from,
        service,
        body,
        media,
    })
}

/// The error a checked request meets on its way: a trigger by `To`, or a random rate.
fn injected_fault(state: &TwilioState, to: &str) -> Option<TwilioError> {
    if let Some(error) = TwilioError::magic_to(to).or_else(|| TwilioError::from_trigger(to)) {
        return Some(error);
    }
    if let Some(rest) = to.strip_prefix("+998")
        && let Some(failures) = rest.get(..1).and_then(|n| n.parse::<u32>().ok())
    {
        let mut attempts = state
            .flaky_attempts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let tries = attempts.entry(to.to_string()).or_default();
        *tries += 1;
        if *tries <= failures {
            return Some(TwilioError::ServiceUnavailable);
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

async fn create(
    State(state): State<Arc<TwilioState>>,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    state.delay().await;
    let retry_after = state.config.retry_after_s;
    match state.injected() {
        Some(Injected::Unavailable) => {
            let error = TwilioError::ServiceUnavailable;
            state.stats.refuse(&error.code().to_string());
            return twilio_error(error, error.default_message(), retry_after);
        }
        Some(Injected::RateLimited { retry_after_s }) => {
            let error = TwilioError::TooManyRequests;
            state.stats.refuse(&error.code().to_string());
            return twilio_error(error, error.default_message(), retry_after_s);
        }
        None => {}
    }
    if !state.authenticated(&headers, &account) {
        state.stats.auth_failure();
        let error = TwilioError::Authenticate;
        return twilio_error(error, error.default_message(), retry_after);
    }
    let form = parse_form(&body);
    state.logs().record_request(json!({
        "account_sid": account,
        "params": form.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
    }));
    let request = match check_request(&state.config, &form) {
        Ok(request) => request,
        Err((error, message)) => {
            state.stats.refuse(&error.code().to_string());
            return twilio_error(error, &message, retry_after);
        }
    };
    let fault = injected_fault(&state, &request.to);
    if let Some(error) = fault.filter(|e| !e.at_delivery()) {
        state.stats.refuse(&error.code().to_string());
        return twilio_error(error, error.default_message(), retry_after);
    }

    let sid = format!("SM{:032x}", rand::thread_rng().r#gen::<u128>());
    let now = rfc2822(now_s());
    // Through a Messaging Service the sender is picked later: Twilio answers `accepted` with no
    // `from` yet, and counts no segments.
    let (initial_status, segments) = match request.service {
        Some(_) => ("accepted", 0),
        None => ("queued", segments(&request.body)),
    };
    let mut message = json!({
        "account_sid": account,
        "api_version": "2010-04-01",
        "body": request.body,
        "date_created": now,
        "date_updated": now,
        "date_sent": null,
        "direction": "outbound-api",
        "error_code": null,
        "error_message": null,
        "from": request.from,
        "messaging_service_sid": request.service,
        "num_media": request.media.to_string(),
        "num_segments": segments.to_string(),
        "price": null,
        "price_unit": "USD",
        "sid": sid,
        "status": initial_status,
        "subresource_uris": {
            "media": format!("/2010-04-01/Accounts/{account}/Messages/{sid}/Media.json"),
        },
        "to": request.to,
        "uri": format!("/2010-04-01/Accounts/{account}/Messages/{sid}.json"),
    });
    let reply = message.clone();

    // The message is settled at once: what a later fetch or status callback would report.
    match fault {
        Some(error) => {
            state.stats.refuse(&error.code().to_string());
            message["status"] = json!("failed");
            message["error_code"] = json!(error.code());
            message["error_message"] = json!(error.default_message());
        }
        None => {
            let sender = request.from.or(request.service).unwrap_or_default();
            let mut canonical = sender.into_bytes();
            canonical.push(b'\n');
            canonical.extend_from_slice(request.body.as_bytes());
            state.stats.accept(&request.to, &canonical);
            message["status"] = json!("delivered");
            message["date_sent"] = json!(now);
        }
    }
    state.logs().record_message(sid, message);
    (StatusCode::CREATED, Json(reply)).into_response()
}

async fn fetch(
    State(state): State<Arc<TwilioState>>,
    Path((account, message)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    state.delay().await;
    if !state.authenticated(&headers, &account) {
        state.stats.auth_failure();
        let error = TwilioError::Authenticate;
        return twilio_error(error, error.default_message(), state.config.retry_after_s);
    }
    let sid = message.strip_suffix(".json").unwrap_or(&message);
    match state.logs().messages.get(sid) {
        Some(found) => Json(found.clone()).into_response(),
        None => twilio_error(
            TwilioError::NotFound,
            &format!(
                "The requested resource /2010-04-01/Accounts/{account}/Messages/{sid}.json was not found"
            ),
            state.config.retry_after_s,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_values_are_decoded_in_order() {
        let form = parse_form("To=%2B821012345678&Body=a+b%26c&MediaUrl=x&MediaUrl=y&Flag");
        assert_eq!(
            form,
            vec![
                ("To".to_string(), "+821012345678".to_string()),
                ("Body".to_string(), "a b&c".to_string()),
                ("MediaUrl".to_string(), "x".to_string()),
                ("MediaUrl".to_string(), "y".to_string()),
                ("Flag".to_string(), String::new()),
            ]
        );
        assert_eq!(crate::form::url_decode("%E2%9C%93%"), "✓%");
        assert_eq!(crate::form::url_decode("%zz"), "%zz");
    }

    #[test]
    fn numbers_and_senders_are_checked() {
        assert!(is_e164("+821012345678"));
        assert!(is_e164("+15005550006"));
        assert!(!is_e164("821012345678"));
        assert!(!is_e164("+1234567"));
        assert!(!is_e164("+1234567890123456"));
        assert!(!is_e164("+0123456789"));
        assert!(!is_e164("+8210-1234-5678"));
        assert!(is_sender("+15005550006"));
        assert!(is_sender("12345"));
        assert!(is_sender("Switchboard"));
        assert!(!is_sender("not a sender id"));
        assert!(!is_sender("1234"));
    }

    #[test]
    fn triggers_map_to_codes() {
        assert_eq!(
            TwilioError::from_trigger("+99921610123"),
            Some(TwilioError::Unsubscribed)
        );
        assert_eq!(
            TwilioError::from_trigger("+99930001000"),
            Some(TwilioError::QueueOverflow)
        );
        assert_eq!(TwilioError::from_trigger("+99920003000"), None);
        assert_eq!(TwilioError::from_trigger("+99912345000"), None);
        assert_eq!(TwilioError::from_trigger("+821012345678"), None);
        assert_eq!(
            TwilioError::magic_to("+15005550004"),
            Some(TwilioError::Unsubscribed)
        );
        assert!(TwilioError::QueueOverflow.at_delivery());
        assert!(!TwilioError::Unsubscribed.at_delivery());
    }

    #[test]
    fn requests_are_checked_in_twilio_order() {
        let config = TwilioConfig::new("AC1", "token");
        let form = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let code = |pairs: &[(&str, &str)]| {
            check_request(&config, &form(pairs))
                .err()
                .map(|(e, _)| e.code())
        };
        let long = "x".repeat(MAX_BODY_CHARS + 1);
        assert_eq!(code(&[("From", MAGIC_FROM), ("Body", "b")]), Some(21604));
        assert_eq!(code(&[("To", "+821012345678"), ("Body", "b")]), Some(21603));
        assert_eq!(
            code(&[("To", "+821012345678"), ("From", MAGIC_FROM)]),
            Some(21602)
        );
        assert_eq!(
            code(&[
                ("To", "+821012345678"),
                ("From", MAGIC_FROM),
                ("Body", &long)
            ]),
            Some(21617)
        );
        assert_eq!(
            code(&[("To", "0101234"), ("From", MAGIC_FROM), ("Body", "b")]),
            Some(21211)
        );
        assert_eq!(
            code(&[
                ("To", "+821012345678"),
                ("From", "+14155550100"),
                ("Body", "b")
            ]),
            Some(21606)
        );
        assert_eq!(
            code(&[
                ("To", "+821012345678"),
                ("From", "not a sender id"),
                ("Body", "b")
            ]),
            Some(21212)
        );
        assert_eq!(
            code(&[("To", MAGIC_FROM), ("From", MAGIC_FROM), ("Body", "b")]),
            Some(21266)
        );
        assert_eq!(
            code(&[
                ("To", "+821012345678"),
                ("MessagingServiceSid", "MG1"),
                ("Body", "b")
            ]),
            Some(20404)
        );
        // A message with media needs no body.
        assert_eq!(
            code(&[
                ("To", "+821012345678"),
                ("From", MAGIC_FROM),
                ("MediaUrl", "https://x/y.png")
            ]),
            None
        );
    }

    #[test]
    fn segments_and_dates_look_like_twilio() {
        assert_eq!(segments("hi"), 1);
        assert_eq!(segments(&"a".repeat(160)), 1);
        assert_eq!(segments(&"a".repeat(161)), 2);
        assert_eq!(segments(&"가".repeat(71)), 2);
        assert_eq!(rfc2822(1_469_537_407), "Tue, 26 Jul 2016 12:50:07 +0000");
        assert_eq!(rfc2822(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc2822(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
    }

    #[test]
    fn basic_credentials_are_decoded() {
        let config = TwilioConfig::new("AC1", "tok:en");
        let mut headers = HeaderMap::new();
        let value = format!("Basic {}", config.basic_auth());
        headers.insert("authorization", value.parse().unwrap());
        assert_eq!(
            basic_credentials(&headers),
            Some(("AC1".to_string(), "tok:en".to_string()))
        );
        headers.insert("authorization", "Bearer x".parse().unwrap());
        assert_eq!(basic_credentials(&headers), None);
    }
}
