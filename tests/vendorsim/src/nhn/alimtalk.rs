//! KakaoTalk Bizmessage Alimtalk API v2.3 (NHN Cloud), simulated.
//!
//! `POST /alimtalk/v2.3/appkeys/{appkey}/messages` (template substitution send) is checked in
//! the order NHN would: injected faults (503/429), the appkey in the path (-1000), the
//! `X-Secret-Key` header (-1001), the content type (-9996), the JSON body (-9997), the
//! request-wide triggers, field validation (-2002 null, -2001 blank, -2000 too long, -2004
//! `recipientList` outside 1..=1000), the sender key (-2017) and the template code (-3003). All of
//! these fail the whole request: HTTP 200, `header.isSuccessful` false.
//!
//! Then each recipient gets its own send result: a trigger number's code, -5000 for a number NHN
//! cannot route, -3004 when a parameter the template needs is missing or not a string, a random
//! code from `error_rates`, or 0 (accepted, counted with the template code and parameters as the
//! message). When every recipient failed, the header says -1031.
//!
//! Triggers and helper endpoints are described in [`super`].

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};

use super::{LoggedRequest, RequestLog, Trigger};
use crate::{FaultState, Faults, RunningSim, SimStats, Transport};

/// NHN's limit on `recipientList`.
const MAX_RECIPIENTS: usize = 1000;
/// NHN's limit on `templateCode`.
const MAX_TEMPLATE_CODE: usize = 20;
/// NHN's limit on `recipientNo`.
const MAX_RECIPIENT_NO: usize = 15;

/// A KakaoTalk Bizmessage result code the simulator answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlimtalkCode {
    InvalidAppkey,
    InvalidSecretKey,
    SenderBlocked,
    AllRecipientsFailed,
    FieldTooLong,
    FieldBlank,
    FieldNull,
    FieldOutOfRange,
    NoSenderProfile,
    TemplateNotFound,
    TemplateParameter,
    TemplateNotApproved,
    /// -3018: Kakao cannot deliver to this number (not a KakaoTalk user, or it blocked the sender).
    NotKakaoUser,
    InvalidRecipientNumber,
    InvalidRecipientNo,
    VendorApiFailed,
    NotJson,
    ClientError,
    SystemError,
}

impl AlimtalkCode {
    /// Every code, in code order.
    pub const ALL: [AlimtalkCode; 19] = [
        AlimtalkCode::InvalidAppkey,
        AlimtalkCode::InvalidSecretKey,
        AlimtalkCode::SenderBlocked,
        AlimtalkCode::AllRecipientsFailed,
        AlimtalkCode::FieldTooLong,
        AlimtalkCode::FieldBlank,
        AlimtalkCode::FieldNull,
        AlimtalkCode::FieldOutOfRange,
        AlimtalkCode::NoSenderProfile,
        AlimtalkCode::TemplateNotFound,
        AlimtalkCode::TemplateParameter,
        AlimtalkCode::TemplateNotApproved,
        AlimtalkCode::NotKakaoUser,
        AlimtalkCode::InvalidRecipientNumber,
        AlimtalkCode::InvalidRecipientNo,
        AlimtalkCode::VendorApiFailed,
        AlimtalkCode::NotJson,
        AlimtalkCode::ClientError,
        AlimtalkCode::SystemError,
    ];

    /// The `resultCode` NHN uses for it.
    pub fn code(self) -> i64 {
        match self {
            AlimtalkCode::InvalidAppkey => -1000,
            AlimtalkCode::InvalidSecretKey => -1001,
            AlimtalkCode::SenderBlocked => -1027,
            AlimtalkCode::AllRecipientsFailed => -1031,
            AlimtalkCode::FieldTooLong => -2000,
            AlimtalkCode::FieldBlank => -2001,
            AlimtalkCode::FieldNull => -2002,
            AlimtalkCode::FieldOutOfRange => -2004,
            AlimtalkCode::NoSenderProfile => -2017,
            AlimtalkCode::TemplateNotFound => -3003,
            AlimtalkCode::TemplateParameter => -3004,
            AlimtalkCode::TemplateNotApproved => -3005,
            AlimtalkCode::NotKakaoUser => -3018,
            AlimtalkCode::InvalidRecipientNumber => -4019,
            AlimtalkCode::InvalidRecipientNo => -5000,
            AlimtalkCode::VendorApiFailed => -7000,
            AlimtalkCode::NotJson => -9996,
            AlimtalkCode::ClientError => -9997,
            AlimtalkCode::SystemError => -9999,
        }
    }

    /// NHN's `resultMessage` for it (field names filled in where NHN's message has a slot).
    pub fn message(self) -> &'static str {
        match self {
            AlimtalkCode::InvalidAppkey => "Invalid appKey.",
            AlimtalkCode::InvalidSecretKey => "Invalid secretKey.",
            AlimtalkCode::SenderBlocked => "The sender is blocked status.",
            AlimtalkCode::AllRecipientsFailed => "All of receivers are failed to send.",
            AlimtalkCode::FieldTooLong => "The field must be at less than or equal to its limit.",
            AlimtalkCode::FieldBlank => "The field must not be blank.",
            AlimtalkCode::FieldNull => "The field must not be null.",
            AlimtalkCode::FieldOutOfRange => "The field must be between its limits.",
            AlimtalkCode::NoSenderProfile => "Not exist plus friend.",
            AlimtalkCode::TemplateNotFound => "Template does not exist.",
            AlimtalkCode::TemplateParameter => "Please check template parameter.",
            AlimtalkCode::TemplateNotApproved => "Please check template status.",
            AlimtalkCode::NotKakaoUser => {
                "Message cannot be sent (the recipient is not a KakaoTalk user)."
            }
            AlimtalkCode::InvalidRecipientNumber => "Invalid recipient number.",
            AlimtalkCode::InvalidRecipientNo => "RecipientNo is invalid.",
            AlimtalkCode::VendorApiFailed => "Vender request API is failed.",
            AlimtalkCode::NotJson => "Only application/json Content-type is supported.",
            AlimtalkCode::ClientError => "Client Error.",
            AlimtalkCode::SystemError => "System error. Please inquire at support@toast.com.",
        }
    }

    /// The code with this `resultCode`, if the simulator knows it.
    pub fn from_code(code: i64) -> Option<AlimtalkCode> {
        AlimtalkCode::ALL.into_iter().find(|c| c.code() == code)
    }
}

/// NHN's message for any code, including trigger codes the simulator has no name for.
fn message_for(code: i64) -> &'static str {
    AlimtalkCode::from_code(code).map_or("Simulated failure.", AlimtalkCode::message)
}

/// How the Alimtalk simulator behaves.
#[derive(Debug, Clone)]
pub struct AlimtalkConfig {
    /// The appkey in the request path.
    pub appkey: String,
    /// The `X-Secret-Key` header value.
    pub secret_key: String,
    /// The one registered sender profile's key.
    pub sender_key: String,
    /// Approved templates: template code → the names of its `#{parameters}`.
    pub templates: BTreeMap<String, Vec<String>>,
    /// Latency, outage windows and the rate limit.
    pub faults: Faults,
    /// Random faults: each code with its probability per recipient.
    pub error_rates: Vec<(AlimtalkCode, f64)>,
    /// Seconds sent in `Retry-After` with 429 and 503.
    pub retry_after_s: u64,
    /// Every send request received; keep a clone to read it while the simulator runs.
    pub requests: Arc<RequestLog>,
    /// Numbers of people who do not use KakaoTalk: each gets -3018 (the message cannot be
    /// sent), as Kakao answers for them. What a fallback to SMS is for.
    pub not_kakao_users: std::collections::BTreeSet<String>,
}

impl AlimtalkConfig {
    /// A well-behaved Alimtalk service with one sender profile and no templates yet.
    pub fn new(appkey: &str, secret_key: &str, sender_key: &str) -> Self {
        Self {
            appkey: appkey.to_string(),
            secret_key: secret_key.to_string(),
            sender_key: sender_key.to_string(),
            templates: BTreeMap::new(),
            faults: Faults::default(),
            error_rates: Vec::new(),
            retry_after_s: 1,
            requests: Arc::new(RequestLog::default()),
            not_kakao_users: Default::default(),
        }
    }

    /// Registers an approved template with the parameters it substitutes.
    pub fn template(mut self, code: &str, params: &[&str]) -> Self {
        self.templates.insert(
            code.to_string(),
            params.iter().map(|p| p.to_string()).collect(),
        );
        self
    }
}

struct AlimtalkState {
    config: AlimtalkConfig,
    stats: Arc<SimStats>,
    faults: OnceLock<Arc<FaultState>>,
    next_id: AtomicU64,
}

/// Starts the Alimtalk simulator on a loopback port.
pub async fn start(config: AlimtalkConfig) -> anyhow::Result<RunningSim> {
    let stats = Arc::new(SimStats::default());
    let faults = config.faults.clone();
    let state = Arc::new(AlimtalkState {
        config,
        stats: stats.clone(),
        faults: OnceLock::new(),
        next_id: AtomicU64::new(1),
    });
    let router = axum::Router::new()
        .route("/alimtalk/v2.3/appkeys/{appkey}/messages", post(send))
        .route("/_sim/stats", get(stats_handler))
        .route("/_sim/requests", get(requests_handler))
        .with_state(state.clone());
    let running = crate::serve(router, stats, faults, Transport::Plain).await?;
    let _ = state.faults.set(running.faults.clone());
    Ok(running)
}

/// [`start`], under the name the crate root re-exports.
pub async fn start_alimtalk(config: AlimtalkConfig) -> anyhow::Result<RunningSim> {
    start(config).await
}

async fn stats_handler(State(state): State<Arc<AlimtalkState>>) -> Json<crate::StatsSnapshot> {
    Json(state.stats.snapshot())
}

async fn requests_handler(State(state): State<Arc<AlimtalkState>>) -> Json<Vec<LoggedRequest>> {
    Json(state.config.requests.requests())
}

/// A request refused as a whole: counted for each of its recipients, answered with the header.
fn refuse(state: &AlimtalkState, code: i64, message: &str, recipients: usize) -> Response {
    super::refuse_all(&state.stats, &code.to_string(), recipients);
    super::header_failure(code, message)
}

async fn send(
    State(state): State<Arc<AlimtalkState>>,
    Path(appkey): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let recipients = super::recipient_count(&body);
    state.config.requests.record(LoggedRequest {
        group: parsed
            .as_ref()
            .and_then(|b| b.get("templateCode")?.as_str())
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
        let code = AlimtalkCode::InvalidAppkey;
        return refuse(&state, code.code(), code.message(), recipients);
    }
    if super::secret_key(&headers) != Some(state.config.secret_key.as_str()) {
        state.stats.auth_failure();
        let code = AlimtalkCode::InvalidSecretKey;
        return refuse(&state, code.code(), code.message(), recipients);
    }
    if !super::is_json(&headers) {
        let code = AlimtalkCode::NotJson;
        return refuse(&state, code.code(), code.message(), recipients);
    }
    let Some(request) = parsed else {
        let code = AlimtalkCode::ClientError;
        return refuse(&state, code.code(), code.message(), recipients);
    };

    let recipient_nos = request
        .get("recipientList")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| r.get("recipientNo")?.as_str());
    match super::request_trigger(recipient_nos) {
        Some(Trigger::Request(code)) => return refuse(&state, code, message_for(code), recipients),
        Some(Trigger::Http(status)) => {
            super::refuse_all(&state.stats, &format!("HTTP_{status}"), recipients);
            return super::http_failure(status, state.config.retry_after_s);
        }
        Some(Trigger::Recipient(_)) | None => {}
    }

    let valid = match validate(&state.config, &request) {
        Ok(valid) => valid,
        Err((code, message)) => return refuse(&state, code, &message, recipients),
    };

    let required = state
        .config
        .templates
        .get(valid.template_code)
        .cloned()
        .unwrap_or_default();
    let mut send_results = Vec::with_capacity(valid.recipients.len());
    let mut failures = 0;
    for (i, recipient) in valid.recipients.iter().enumerate() {
        let recipient_no = recipient
            .get("recipientNo")
            .and_then(Value::as_str)
            .unwrap_or("");
        let params = recipient
            .get("templateParameter")
            .and_then(Value::as_object);
        let failure = match super::trigger(recipient_no) {
            Some(Trigger::Recipient(code)) => Some(code),
            _ if !super::valid_number(recipient_no) => {
                Some(AlimtalkCode::InvalidRecipientNo.code())
            }
            _ if state.config.not_kakao_users.contains(recipient_no) => {
                Some(AlimtalkCode::NotKakaoUser.code())
            }
            _ if !parameters_fit(&required, params) => Some(AlimtalkCode::TemplateParameter.code()),
            _ => super::random_failure(&state.config.error_rates).map(AlimtalkCode::code),
        };
        let (code, message) = match failure {
            Some(code) => {
                failures += 1;
                state.stats.refuse(&code.to_string());
                (code, message_for(code))
            }
            None => {
                let canonical = canonical_message(
                    valid.sender_key,
                    valid.template_code,
                    params.cloned().unwrap_or_default(),
                );
                state.stats.accept(recipient_no, &canonical);
                (0, "SUCCESS")
            }
        };
        send_results.push(json!({
            "recipientSeq": i + 1,
            "recipientNo": recipient_no,
            "resultCode": code,
            "resultMessage": message,
            "recipientGroupingKey": recipient.get("recipientGroupingKey").cloned().unwrap_or(Value::Null),
        }));
    }
    let header = if failures == valid.recipients.len() {
        let code = AlimtalkCode::AllRecipientsFailed;
        super::header(code.code(), code.message())
    } else {
        super::header(0, "SUCCESS")
    };
    Json(json!({
        "header": header,
        "message": {
            "requestId": super::request_id(&state.next_id),
            "senderGroupingKey": request.get("senderGroupingKey").cloned().unwrap_or(Value::Null),
            "sendResults": send_results,
        },
    }))
    .into_response()
}

/// The parts of a request that passed the request-wide checks.
struct ValidRequest<'a> {
    sender_key: &'a str,
    template_code: &'a str,
    recipients: &'a [Value],
}

/// The request-wide checks; the error is the code and `resultMessage` NHN answers with.
fn validate<'a>(
    config: &AlimtalkConfig,
    request: &'a Value,
) -> Result<ValidRequest<'a>, (i64, String)> {
    let sender_key = required_text(request, "senderKey", usize::MAX)?;
    let template_code = required_text(request, "templateCode", MAX_TEMPLATE_CODE)?;
    let recipients = match request.get("recipientList") {
        None | Some(Value::Null) => return Err(null_field("recipientList")),
        Some(Value::Array(list)) if (1..=MAX_RECIPIENTS).contains(&list.len()) => list,
        Some(Value::Array(_)) => {
            return Err((
                AlimtalkCode::FieldOutOfRange.code(),
                format!("The 'recipientList' must be between 1 and {MAX_RECIPIENTS}."),
            ));
        }
        Some(_) => return Err(client_error()),
    };
    for recipient in recipients {
        if !recipient.is_object() {
            return Err(client_error());
        }
        required_text(recipient, "recipientNo", MAX_RECIPIENT_NO)?;
        if !matches!(
            recipient.get("templateParameter"),
            None | Some(Value::Null) | Some(Value::Object(_))
        ) {
            return Err(client_error());
        }
    }
    if sender_key != config.sender_key {
        let code = AlimtalkCode::NoSenderProfile;
        return Err((code.code(), code.message().to_string()));
    }
    if !config.templates.contains_key(template_code) {
        let code = AlimtalkCode::TemplateNotFound;
        return Err((code.code(), code.message().to_string()));
    }
    Ok(ValidRequest {
        sender_key,
        template_code,
        recipients,
    })
}

/// A string field that must be present, not blank and at most `max` characters.
fn required_text<'a>(object: &'a Value, field: &str, max: usize) -> Result<&'a str, (i64, String)> {
    match object.get(field) {
        None | Some(Value::Null) => Err(null_field(field)),
        Some(Value::String(s)) if s.trim().is_empty() => Err((
            AlimtalkCode::FieldBlank.code(),
            format!("The '{field}' must not be blank."),
        )),
        Some(Value::String(s)) if s.chars().count() > max => Err((
            AlimtalkCode::FieldTooLong.code(),
            format!("The '{field}' must be at less than or equal to {max}."),
        )),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(client_error()),
    }
}

fn null_field(field: &str) -> (i64, String) {
    (
        AlimtalkCode::FieldNull.code(),
        format!("The '{field}' must not be null."),
    )
}

fn client_error() -> (i64, String) {
    let code = AlimtalkCode::ClientError;
    (code.code(), code.message().to_string())
}

/// True when every parameter the template needs is there and every given value is a string
/// (`templateParameter` is `{String: String}`).
fn parameters_fit(required: &[String], params: Option<&Map<String, Value>>) -> bool {
    let empty = Map::new();
    let params = params.unwrap_or(&empty);
    params.values().all(Value::is_string) && required.iter().all(|p| params.contains_key(p))
}

/// What the recipient would see: the sender, the template and its filled-in parameters, with
/// the parameters in key order so that the same message always has the same bytes.
fn canonical_message(sender_key: &str, template_code: &str, params: Map<String, Value>) -> Vec<u8> {
    let params: BTreeMap<String, Value> = params.into_iter().collect();
    serde_json::to_vec(&json!({
        "senderKey": sender_key,
        "templateCode": template_code,
        "templateParameter": params,
    }))
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AlimtalkConfig {
        AlimtalkConfig::new("app", "secret", "sender").template("T1", &["name"])
    }

    fn request(recipients: Value) -> Value {
        json!({"senderKey": "sender", "templateCode": "T1", "recipientList": recipients})
    }

    #[test]
    fn request_wide_checks_answer_nhn_codes() {
        let config = config();
        let code = |r: &Value| validate(&config, r).err().map(|(code, _)| code);
        assert_eq!(
            code(&request(json!([{"recipientNo": "01012345678"}]))),
            None
        );
        assert_eq!(code(&request(json!([]))), Some(-2004));
        let many: Vec<Value> = (0..1001)
            .map(|i| json!({"recipientNo": format!("0101000{i:04}")}))
            .collect();
        assert_eq!(code(&request(json!(many))), Some(-2004));
        assert_eq!(code(&request(json!([{"recipientNo": " "}]))), Some(-2001));
        assert_eq!(code(&request(json!([{}]))), Some(-2002));
        assert_eq!(
            code(&request(json!([{"recipientNo": "0101234567890123"}]))),
            Some(-2000)
        );
        let mut unknown_sender = request(json!([{"recipientNo": "01012345678"}]));
        unknown_sender["senderKey"] = json!("other");
        assert_eq!(code(&unknown_sender), Some(-2017));
        let mut unknown_template = request(json!([{"recipientNo": "01012345678"}]));
        unknown_template["templateCode"] = json!("T9");
        assert_eq!(code(&unknown_template), Some(-3003));
        assert_eq!(code(&json!({"templateCode": "T1"})), Some(-2002));
    }

    #[test]
    fn template_parameters_must_be_complete_strings() {
        let required = vec!["name".to_string()];
        let params = |v: Value| v.as_object().cloned();
        assert!(parameters_fit(
            &required,
            params(json!({"name": "Kim"})).as_ref()
        ));
        assert!(!parameters_fit(
            &required,
            params(json!({"other": "x"})).as_ref()
        ));
        assert!(!parameters_fit(
            &required,
            params(json!({"name": 5})).as_ref()
        ));
        assert!(!parameters_fit(&required, None));
        assert!(parameters_fit(&[], None));
    }

    #[test]
    fn canonical_messages_ignore_parameter_order() {
        let a = json!({"a": "1", "b": "2"})
            .as_object()
            .cloned()
            .unwrap_or_default();
        let b = json!({"b": "2", "a": "1"})
            .as_object()
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            canonical_message("s", "T1", a),
            canonical_message("s", "T1", b)
        );
    }

    #[test]
    fn codes_round_trip() {
        for code in AlimtalkCode::ALL {
            assert_eq!(AlimtalkCode::from_code(code.code()), Some(code));
        }
    }
}
