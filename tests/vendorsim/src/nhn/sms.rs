//! SMS API v3.0 (NHN Cloud), simulated.
//!
//! `POST /sms/v3.0/appKeys/{appKey}/sender/sms` is checked in the order NHN would: injected
//! faults (503/429), the appkey in the path and the `X-Secret-Key` header (both -1000, see
//! below), the content type (-9996), the JSON body (-9997), the request-wide triggers, the
//! recipient list (-2001 empty, -2016 more than 1000), the body (-2014 empty, -2023 characters
//! EUC-KR cannot carry, -2015 longer than 90 EUC-KR bytes) and the sender number (-2312 not
//! registered). All of these fail the whole request: HTTP 200, `header.isSuccessful` false.
//!
//! Then each recipient gets its own send result: a trigger number's code, -2018 for an empty
//! number, -2019 for a number NHN cannot route, a random code from `error_rates`, or 0
//! (accepted, counted with the sender number and body as the message).
//!
//! NHN's published result codes have no code for a wrong secret key; the simulator answers it
//! with -1000 (invalid appkey), the code NHN documents for the request's credentials.
//!
//! The 90-byte limit is NHN's standard SMS size. EUC-KR length is approximated: ASCII is one
//! byte, every other character of the Basic Multilingual Plane two (Hangul is two bytes in
//! EUC-KR), and characters beyond it (emoji) cannot be sent at all.
//!
//! Triggers and helper endpoints are described in [`super`].

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::{LoggedRequest, RequestLog, Trigger};
use crate::{FaultState, Faults, RunningSim, SimStats, Transport};

/// NHN's limit on `recipientList`.
const MAX_RECIPIENTS: usize = 1000;
/// NHN's standard SMS body size, in EUC-KR bytes.
const MAX_BODY_BYTES: usize = 90;

/// An NHN SMS result code the simulator answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SmsCode {
    InvalidAppkey,
    RecipientListEmpty,
    BodyEmpty,
    BodyTooLong,
    TooManyRecipients,
    RecipientNoEmpty,
    RecipientNoInvalid,
    QueueInsertFailed,
    UnacceptableCharacters,
    SendNoNotRegistered,
    SendNoBlocked,
    RecipientRefused,
    NotJson,
    InvalidJson,
    SystemError,
}

impl SmsCode {
    /// Every code, in code order.
    pub const ALL: [SmsCode; 15] = [
        SmsCode::InvalidAppkey,
        SmsCode::RecipientListEmpty,
        SmsCode::BodyEmpty,
        SmsCode::BodyTooLong,
        SmsCode::TooManyRecipients,
        SmsCode::RecipientNoEmpty,
        SmsCode::RecipientNoInvalid,
        SmsCode::QueueInsertFailed,
        SmsCode::UnacceptableCharacters,
        SmsCode::SendNoNotRegistered,
        SmsCode::SendNoBlocked,
        SmsCode::RecipientRefused,
        SmsCode::NotJson,
        SmsCode::InvalidJson,
        SmsCode::SystemError,
    ];

    /// The `resultCode` NHN uses for it.
    pub fn code(self) -> i64 {
        match self {
            SmsCode::InvalidAppkey => -1000,
            SmsCode::RecipientListEmpty => -2001,
            SmsCode::BodyEmpty => -2014,
            SmsCode::BodyTooLong => -2015,
            SmsCode::TooManyRecipients => -2016,
            SmsCode::RecipientNoEmpty => -2018,
            SmsCode::RecipientNoInvalid => -2019,
            SmsCode::QueueInsertFailed => -2021,
            SmsCode::UnacceptableCharacters => -2023,
            SmsCode::SendNoNotRegistered => -2312,
            SmsCode::SendNoBlocked => -2313,
            SmsCode::RecipientRefused => -6001,
            SmsCode::NotJson => -9996,
            SmsCode::InvalidJson => -9997,
            SmsCode::SystemError => -9999,
        }
    }

    /// NHN's `resultMessage` for it.
    pub fn message(self) -> &'static str {
        match self {
            SmsCode::InvalidAppkey => "Invalid appKey.",
            SmsCode::RecipientListEmpty => "RecipientList can not be null.",
            // NHN's own wording for an empty title or body.
            SmsCode::BodyEmpty => "The recipient can not be empty.",
            SmsCode::BodyTooLong => "Title or Body exceed maximum byte.",
            SmsCode::TooManyRecipients => "The max recipient size is 1000.",
            SmsCode::RecipientNoEmpty => "RecipientNo can not be empty.",
            SmsCode::RecipientNoInvalid => "RecipientNo is invalid.",
            SmsCode::QueueInsertFailed => "System error. Failed insert queue.",
            SmsCode::UnacceptableCharacters => "Unacceptable characters in title and body.",
            SmsCode::SendNoNotRegistered => "Not regist sendno.",
            SmsCode::SendNoBlocked => "This sendno is blocked.",
            SmsCode::RecipientRefused => "Recipient Number is refused.",
            SmsCode::NotJson => "Only application/json Content-type is supported.",
            SmsCode::InvalidJson => "Invalid API parameters.",
            SmsCode::SystemError => "System error. Please inquire at support@toast.com.",
        }
    }

    /// The code with this `resultCode`, if the simulator knows it.
    pub fn from_code(code: i64) -> Option<SmsCode> {
        SmsCode::ALL.into_iter().find(|c| c.code() == code)
    }
}

/// NHN's message for any code, including trigger codes the simulator has no name for.
fn message_for(code: i64) -> &'static str {
    SmsCode::from_code(code).map_or("Simulated failure.", SmsCode::message)
}

/// How the SMS simulator behaves.
#[derive(Debug, Clone)]
pub struct SmsConfig {
    /// The appkey in the request path.
    pub appkey: String,
    /// The `X-Secret-Key` header value.
    pub secret_key: String,
    /// Registered sender numbers (`sendNo`).
    pub send_nos: Vec<String>,
    /// Latency, outage windows and the rate limit.
    pub faults: Faults,
    /// Random faults: each code with its probability per recipient.
    pub error_rates: Vec<(SmsCode, f64)>,
    /// Seconds sent in `Retry-After` with 429 and 503.
    pub retry_after_s: u64,
    /// Every send request received; keep a clone to read it while the simulator runs.
    pub requests: Arc<RequestLog>,
}

impl SmsConfig {
    /// A well-behaved SMS service with one registered sender number.
    pub fn new(appkey: &str, secret_key: &str, send_no: &str) -> Self {
        Self {
            appkey: appkey.to_string(),
            secret_key: secret_key.to_string(),
            send_nos: vec![send_no.to_string()],
            faults: Faults::default(),
            error_rates: Vec::new(),
            retry_after_s: 1,
            requests: Arc::new(RequestLog::default()),
        }
    }
}

struct SmsState {
    config: SmsConfig,
    stats: Arc<SimStats>,
    faults: OnceLock<Arc<FaultState>>,
    next_id: AtomicU64,
}

/// Starts the SMS simulator on a loopback port.
pub async fn start(config: SmsConfig) -> anyhow::Result<RunningSim> {
    let stats = Arc::new(SimStats::default());
    let faults = config.faults.clone();
    let state = Arc::new(SmsState {
        config,
        stats: stats.clone(),
        faults: OnceLock::new(),
        next_id: AtomicU64::new(1),
    });
    let router = axum::Router::new()
        .route("/sms/v3.0/appKeys/{appkey}/sender/sms", post(send))
        .route("/_sim/stats", get(stats_handler))
        .route("/_sim/requests", get(requests_handler))
        .with_state(state.clone());
    let running = crate::serve(router, stats, faults, Transport::Plain).await?;
    let _ = state.faults.set(running.faults.clone());
    Ok(running)
}

/// [`start`], under the name the crate root re-exports.
pub async fn start_sms(config: SmsConfig) -> anyhow::Result<RunningSim> {
    start(config).await
}

async fn stats_handler(State(state): State<Arc<SmsState>>) -> Json<crate::StatsSnapshot> {
    Json(state.stats.snapshot())
}

async fn requests_handler(State(state): State<Arc<SmsState>>) -> Json<Vec<LoggedRequest>> {
    Json(state.config.requests.requests())
}

/// A request refused as a whole: counted for each of its recipients, answered with the header.
fn refuse(state: &SmsState, code: i64, message: &str, recipients: usize) -> Response {
    super::refuse_all(&state.stats, &code.to_string(), recipients);
    super::header_failure(code, message)
}

fn refuse_with(state: &SmsState, code: SmsCode, recipients: usize) -> Response {
    refuse(state, code.code(), code.message(), recipients)
}

/// The number a recipient entry sends to: `recipientNo`, or `internationalRecipientNo` when
/// there is none.
fn recipient_no(recipient: &Value) -> &str {
    ["recipientNo", "internationalRecipientNo"]
        .into_iter()
        .filter_map(|field| recipient.get(field)?.as_str())
        .find(|no| !no.trim().is_empty())
        .unwrap_or("")
}

async fn send(
    State(state): State<Arc<SmsState>>,
    Path(appkey): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let recipients = super::recipient_count(&body);
    state.config.requests.record(LoggedRequest {
        group: parsed
            .as_ref()
            .and_then(|b| b.get("body")?.as_str())
            .unwrap_or("")
            .to_string(),
        recipients,
    });

    if let Some(injected) = super::faults(&state.faults).await {
        let status = match injected {
            crate::Injected::Unavailable => "HTTP_503",
            crate::Injected::RateLimited { .. } => "HTTP_429",
        };
        super::refuse_all(&state.stats, status, recipients);
        return super::injected_response(injected, state.config.retry_after_s);
    }
    if appkey != state.config.appkey {
        state.stats.auth_failure();
        return refuse_with(&state, SmsCode::InvalidAppkey, recipients);
    }
    if super::secret_key(&headers) != Some(state.config.secret_key.as_str()) {
        state.stats.auth_failure();
        return refuse(
            &state,
            SmsCode::InvalidAppkey.code(),
            "Invalid secretKey.",
            recipients,
        );
    }
    if !super::is_json(&headers) {
        return refuse_with(&state, SmsCode::NotJson, recipients);
    }
    let Some(request) = parsed else {
        return refuse_with(&state, SmsCode::InvalidJson, recipients);
    };

    let list = match request.get("recipientList") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => list.clone(),
        Some(_) => return refuse_with(&state, SmsCode::InvalidJson, recipients),
    };
    match super::request_trigger(list.iter().map(recipient_no)) {
        Some(Trigger::Request(code)) => return refuse(&state, code, message_for(code), recipients),
        Some(Trigger::Http(status)) => {
            super::refuse_all(&state.stats, &format!("HTTP_{status}"), recipients);
            return super::http_failure(status, state.config.retry_after_s);
        }
        Some(Trigger::Recipient(_)) | None => {}
    }
    if let Err(code) = validate(&state.config, &request, &list) {
        return refuse_with(&state, code, recipients);
    }
    let text = request.get("body").and_then(Value::as_str).unwrap_or("");
    let send_no = request.get("sendNo").and_then(Value::as_str).unwrap_or("");

    let mut send_results = Vec::with_capacity(list.len());
    let mut failures = 0;
    for (i, recipient) in list.iter().enumerate() {
        let number = recipient_no(recipient);
        let failure = match super::trigger(number) {
            Some(Trigger::Recipient(code)) => Some(code),
            _ if number.trim().is_empty() => Some(SmsCode::RecipientNoEmpty.code()),
            _ if !super::valid_number(number) => Some(SmsCode::RecipientNoInvalid.code()),
            _ => super::random_failure(&state.config.error_rates).map(SmsCode::code),
        };
        let (code, message) = match failure {
            Some(code) => {
                failures += 1;
                state.stats.refuse(&code.to_string());
                (code, message_for(code))
            }
            None => {
                let canonical = serde_json::to_vec(&json!({"sendNo": send_no, "body": text}))
                    .unwrap_or_default();
                state.stats.accept(number, &canonical);
                (0, "SUCCESS")
            }
        };
        send_results.push(json!({
            "recipientNo": number,
            "resultCode": code,
            "resultMessage": message,
            "recipientSeq": i + 1,
            "recipientGroupingKey": recipient.get("recipientGroupingKey").cloned().unwrap_or(Value::Null),
        }));
    }
    // statusCode: 1 requesting, 2 requested, 3 request failed.
    let status_code = if failures == list.len() { "3" } else { "2" };
    Json(json!({
        "header": super::header(0, "SUCCESS"),
        "body": {
            "data": {
                "requestId": super::request_id(&state.next_id),
                "statusCode": status_code,
                "senderGroupingKey": request.get("senderGroupingKey").cloned().unwrap_or(Value::Null),
                "sendResultList": send_results,
            },
        },
    }))
    .into_response()
}

/// The request-wide checks; the error is the code NHN answers with.
fn validate(config: &SmsConfig, request: &Value, list: &[Value]) -> Result<(), SmsCode> {
    if list.is_empty() {
        return Err(SmsCode::RecipientListEmpty);
    }
    if list.len() > MAX_RECIPIENTS {
        return Err(SmsCode::TooManyRecipients);
    }
    if list.iter().any(|r| !r.is_object()) {
        return Err(SmsCode::InvalidJson);
    }
    let text = match request.get("body") {
        None | Some(Value::Null) => "",
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(SmsCode::InvalidJson),
    };
    if text.trim().is_empty() {
        return Err(SmsCode::BodyEmpty);
    }
    match euc_kr_len(text) {
        None => return Err(SmsCode::UnacceptableCharacters),
        Some(len) if len > MAX_BODY_BYTES => return Err(SmsCode::BodyTooLong),
        Some(_) => {}
    }
    let send_no = request.get("sendNo").and_then(Value::as_str).unwrap_or("");
    if !config.send_nos.iter().any(|n| n == send_no) {
        return Err(SmsCode::SendNoNotRegistered);
    }
    Ok(())
}

/// The approximate length of `text` in EUC-KR, or `None` when it holds a character EUC-KR has
/// no code for (see the module header).
fn euc_kr_len(text: &str) -> Option<usize> {
    text.chars().try_fold(0usize, |len, c| match c as u32 {
        0..=0x7f => Some(len + 1),
        0x80..=0xffff => Some(len + 2),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: &str, send_no: &str) -> Value {
        json!({"body": body, "sendNo": send_no, "recipientList": [{"recipientNo": "01012345678"}]})
    }

    fn check(config: &SmsConfig, request: &Value) -> Result<(), SmsCode> {
        let list = request
            .get("recipientList")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        validate(config, request, &list)
    }

    #[test]
    fn request_wide_checks_answer_nhn_codes() {
        let config = SmsConfig::new("app", "secret", "15446859");
        assert_eq!(check(&config, &request("hello", "15446859")), Ok(()));
        assert_eq!(
            check(&config, &request("hello", "0200000000")),
            Err(SmsCode::SendNoNotRegistered)
        );
        assert_eq!(
            check(&config, &request(" ", "15446859")),
            Err(SmsCode::BodyEmpty)
        );
        assert_eq!(
            check(&config, &request(&"a".repeat(91), "15446859")),
            Err(SmsCode::BodyTooLong)
        );
        assert_eq!(
            check(&config, &request("배송이 시작되었습니다 🚚", "15446859")),
            Err(SmsCode::UnacceptableCharacters)
        );
        let mut empty = request("hello", "15446859");
        empty["recipientList"] = json!([]);
        assert_eq!(check(&config, &empty), Err(SmsCode::RecipientListEmpty));
        let many: Vec<Value> = (0..1001)
            .map(|i| json!({"recipientNo": format!("0101000{i:04}")}))
            .collect();
        let mut too_many = request("hello", "15446859");
        too_many["recipientList"] = json!(many);
        assert_eq!(check(&config, &too_many), Err(SmsCode::TooManyRecipients));
    }

    #[test]
    fn hangul_counts_two_bytes() {
        assert_eq!(euc_kr_len("abc"), Some(3));
        assert_eq!(euc_kr_len("배송"), Some(4));
        assert_eq!(euc_kr_len("🚚"), None);
        // 45 Hangul syllables fill an SMS exactly.
        assert_eq!(euc_kr_len(&"가".repeat(45)), Some(MAX_BODY_BYTES));
    }

    #[test]
    fn international_numbers_are_used_when_there_is_no_domestic_one() {
        assert_eq!(
            recipient_no(&json!({"internationalRecipientNo": "821012345678"})),
            "821012345678"
        );
        assert_eq!(
            recipient_no(&json!({"recipientNo": "01012345678"})),
            "01012345678"
        );
        assert_eq!(recipient_no(&json!({})), "");
    }

    #[test]
    fn codes_round_trip() {
        for code in SmsCode::ALL {
            assert_eq!(SmsCode::from_code(code.code()), Some(code));
        }
    }
}
