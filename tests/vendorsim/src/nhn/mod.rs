//! NHN Cloud Notification, simulated: KakaoTalk Bizmessage Alimtalk API v2.3 ([`alimtalk`]) and
//! SMS API v3.0 ([`sms`]). Each runs on its own port; this module holds what they share: the
//! reply envelope, credential checks, the request log and the trigger numbers.
//!
//! NHN answers HTTP 200 for almost every failure and reports it in the body:
//! `{"header": {"isSuccessful": false, "resultCode": <negative>, "resultMessage": ..}}` for the
//! whole request, or a negative `resultCode` in one recipient's send result.
//!
//! Deterministic triggers, chosen by a recipient number (`recipientNo`) in the request:
//! - `0109990DDDD…`: that recipient's send result carries `resultCode` `-DDDD`, e.g.
//!   `01099905000` gets -5000 (Alimtalk: invalid recipient number);
//! - `0109991DDDD…`: the whole request is answered HTTP 200 with `header.resultCode` `-DDDD` and
//!   `isSuccessful` false, e.g. `01099919999` gets -9999 (system error);
//! - `0109992SSS…`: the whole request is answered with HTTP status `SSS` (and `Retry-After` for
//!   429 and 503), e.g. `0109992503`; a 2xx status comes with an empty body, as from a proxy
//!   that answered in NHN's place.
//!
//! Besides these, each simulator has random per-code `error_rates` (applied per recipient) and
//! the shared [`Faults`](crate::Faults): an outage answers HTTP 503 and the rate limit HTTP 429,
//! both with `Retry-After` and NHN's error header.
//!
//! Helper endpoints on both: `GET /_sim/stats` (the counts) and `GET /_sim/requests` (the send
//! requests received, as [`LoggedRequest`]s).

pub mod alimtalk;
pub mod sms;

pub use alimtalk::{AlimtalkCode, AlimtalkConfig, start_alimtalk};
pub use sms::{SmsCode, SmsConfig, start_sms};

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};

use crate::{FaultState, Injected, SimStats};

/// The send requests a simulator received, so tests can check how a batch was split.
#[derive(Debug, Default)]
pub struct RequestLog {
    requests: Mutex<Vec<LoggedRequest>>,
}

/// One send request as the simulator saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoggedRequest {
    /// The template code (Alimtalk) or the message text (SMS); empty when the body did not say.
    pub group: String,
    /// Entries in `recipientList`.
    pub recipients: usize,
}

impl RequestLog {
    /// Send requests received so far, whatever their answer.
    pub fn count(&self) -> usize {
        self.lock().len()
    }

    /// The send requests received so far, in arrival order.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.lock().clone()
    }

    fn record(&self, request: LoggedRequest) {
        self.lock().push(request);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<LoggedRequest>> {
        self.requests.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a recipient number asks the simulator to do; see the module header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// This recipient's result code.
    Recipient(i64),
    /// The whole request's header result code.
    Request(i64),
    /// The whole request's HTTP status.
    Http(u16),
}

fn trigger(recipient_no: &str) -> Option<Trigger> {
    let digits = |s: &str, n: usize| -> Option<u64> {
        let head = s.get(..n)?;
        if !head.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        head.parse().ok()
    };
    if let Some(rest) = recipient_no.strip_prefix("0109990") {
        return digits(rest, 4).map(|d| Trigger::Recipient(-(d as i64)));
    }
    if let Some(rest) = recipient_no.strip_prefix("0109991") {
        return digits(rest, 4).map(|d| Trigger::Request(-(d as i64)));
    }
    if let Some(rest) = recipient_no.strip_prefix("0109992") {
        return digits(rest, 3)
            .and_then(|s| u16::try_from(s).ok())
            .filter(|s| (100..600).contains(s))
            .map(Trigger::Http);
    }
    None
}

/// The first request-wide trigger among the recipient numbers, if any.
fn request_trigger<'a>(recipient_nos: impl IntoIterator<Item = &'a str>) -> Option<Trigger> {
    recipient_nos
        .into_iter()
        .filter_map(trigger)
        .find(|t| matches!(t, Trigger::Request(_) | Trigger::Http(_)))
}

/// NHN's result header.
fn header(code: i64, message: &str) -> Value {
    json!({
        "isSuccessful": code >= 0,
        "resultCode": code,
        "resultMessage": message,
    })
}

/// A failure of the whole request, as NHN answers it: HTTP 200 and only the header.
fn header_failure(code: i64, message: &str) -> Response {
    (
        StatusCode::OK,
        Json(json!({ "header": header(code, message) })),
    )
        .into_response()
}

/// An answer of another status than NHN's usual 200: an empty 2xx, or an error with NHN's header (-9999 system error for server-side statuses, -9997 for a
/// request NHN could not take), and `Retry-After` where the status asks for patience.
fn http_failure(status: u16, retry_after_s: u64) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status.is_success() {
        return status.into_response();
    }
    let message = status.canonical_reason().unwrap_or("HTTP error");
    let code = if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        -9999
    } else {
        -9997
    };
    let mut response = (status, Json(json!({ "header": header(code, message) }))).into_response();
    if matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) && let Ok(value) = retry_after_s.to_string().parse()
    {
        response.headers_mut().insert("retry-after", value);
    }
    response
}

/// The answer to an injected fault.
fn injected_response(injected: Injected, retry_after_s: u64) -> Response {
    match injected {
        Injected::Unavailable => http_failure(503, retry_after_s),
        Injected::RateLimited { retry_after_s } => http_failure(429, retry_after_s),
    }
}

/// NHN accepts only JSON bodies (`application/json`, with or without a charset).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

fn secret_key(headers: &HeaderMap) -> Option<&str> {
    headers.get("x-secret-key").and_then(|v| v.to_str().ok())
}

/// Counts `recipients` deliveries refused under `code`.
fn refuse_all(stats: &SimStats, code: &str, recipients: usize) {
    for _ in 0..recipients.max(1) {
        stats.refuse(code);
    }
}

/// The number of recipients a body names, for counting refusals of requests that are not read
/// any further.
fn recipient_count(body: &[u8]) -> usize {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("recipientList")?.as_array().map(Vec::len))
        .unwrap_or(1)
}

/// A request id in NHN's shape: the time, then a sequence.
fn request_id(counter: &AtomicU64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("{now}sim{:08}", counter.fetch_add(1, Ordering::Relaxed))
}

/// A recipient number NHN can route: digits (hyphens allowed), an optional leading `+`, 9 to 15
/// digits long.
fn valid_number(recipient_no: &str) -> bool {
    let digits: String = recipient_no
        .strip_prefix('+')
        .unwrap_or(recipient_no)
        .chars()
        .filter(|c| *c != '-')
        .collect();
    (9..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Picks a random failure code by the configured per-code rates.
fn random_failure<C: Copy>(rates: &[(C, f64)]) -> Option<C> {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    rates
        .iter()
        .find(|(_, rate)| rng.r#gen::<f64>() < *rate)
        .map(|(code, _)| *code)
}

/// Waits the simulated latency and checks the injected faults.
async fn faults(state: &std::sync::OnceLock<std::sync::Arc<FaultState>>) -> Option<Injected> {
    let faults = state.get()?;
    faults.delay().await;
    faults.check()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triggers_are_read_from_the_recipient_number() {
        assert_eq!(trigger("01099905000"), Some(Trigger::Recipient(-5000)));
        assert_eq!(trigger("010999020171"), Some(Trigger::Recipient(-2017)));
        assert_eq!(trigger("01099919999"), Some(Trigger::Request(-9999)));
        assert_eq!(trigger("0109992503"), Some(Trigger::Http(503)));
        assert_eq!(trigger("0109992200"), Some(Trigger::Http(200)));
        assert_eq!(trigger("0109992999"), None);
        assert_eq!(trigger("010999"), None);
        assert_eq!(trigger("01012345678"), None);
        assert_eq!(
            request_trigger(["01012345678", "01099905000", "0109992429"]),
            Some(Trigger::Http(429))
        );
    }

    #[test]
    fn recipient_numbers_are_checked() {
        assert!(valid_number("01012345678"));
        assert!(valid_number("010-1234-5678"));
        assert!(valid_number("+821012345678"));
        assert!(!valid_number("0101234"));
        assert!(!valid_number("01012345678901234"));
        assert!(!valid_number("010-ABCD-5678"));
    }

    #[test]
    fn content_type_must_be_json() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "content-type",
            "application/json;charset=UTF-8".parse().unwrap(),
        );
        assert!(is_json(&headers));
        headers.insert("content-type", "text/plain".parse().unwrap());
        assert!(!is_json(&headers));
    }
}
