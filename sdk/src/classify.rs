//! Turning a vendor's reply into a [`Verdict`], and a verdict into an [`Outcome`].
//!
//! Many vendors answer HTTP 200 and put the failure in the body (`{"isSuccessful": false,
//! "resultCode": -1001}`). A status check alone would count those as delivered. This module
//! reads both, in the spirit of Vector's `RetryLogic`:
//!
//! - [`by_status`]: the status alone. 2xx succeeds; 408, 429 and 5xx are retried, no sooner than
//!   the `Retry-After` the vendor sent; every other status is not retried.
//! - [`Classifier`]: the status and the JSON body, described once per adapter as JSON Pointers
//!   (RFC 6901): where the message id is, what says "success", where the error code and message
//!   are, and which codes mean "retry" or "bad recipient".
//!
//! A [`Verdict`] converts into an [`Outcome`] with `From`, so an adapter only matches on the
//! verdicts it treats specially.
//!
//! ```
//! use switchboard_sdk::classify::{Classifier, Verdict};
//! use switchboard_sdk::http::Response;
//! use switchboard_sdk::Outcome;
//!
//! const REPLY: Classifier = Classifier::new()
//!     .message_id("/messageId")
//!     .success_flag("/isSuccessful")
//!     .error_code("/resultCode")
//!     .error_message("/resultMessage")
//!     .retry_codes(&["-9999"])
//!     .invalid_recipient_codes(&["-2019"]);
//!
//! // HTTP 200, but the body says the number is invalid.
//! let response = Response {
//!     status: 200,
//!     headers: vec![],
//!     body: br#"{"isSuccessful":false,"resultCode":-2019,"resultMessage":"bad number"}"#.to_vec(),
//! };
//! let outcome = Outcome::from(REPLY.classify(&response));
//! assert_eq!(outcome, Outcome::invalid_recipient("-2019: bad number"));
//! ```

use serde_json::Value;

use crate::Outcome;
use crate::http::Response;
use crate::retry_after_ms;

/// What a vendor's reply means for one delivery: the SDK's form of Vector's
/// `Successful / Retry(reason) / DontRetry(reason)`, with the recipient case split out because
/// the host treats it differently (a cleanup event rather than a dead letter).
///
/// ```
/// use switchboard_sdk::classify::Verdict;
/// use switchboard_sdk::Outcome;
///
/// let verdict = Verdict::Retry { reason: "HTTP 503".into(), after_ms: Some(2000) };
/// assert_eq!(Outcome::from(verdict), Outcome::retry("HTTP 503", Some(2000)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The vendor accepted the request; the vendor's message id, or empty when the classifier
    /// was not told where to find one.
    Successful(String),
    /// A transient failure: send again later, no sooner than `after_ms` if given.
    Retry {
        /// Why, for logs and the retry record.
        reason: String,
        /// The vendor's `Retry-After`, in milliseconds.
        after_ms: Option<u64>,
    },
    /// A permanent failure: sending the same request again cannot succeed.
    DontRetry {
        /// The vendor's error code, or `HTTP_<status>` when it gave none.
        code: String,
        /// The vendor's message.
        reason: String,
    },
    /// The recipient does not exist at the vendor (an invalid number, an unregistered token).
    InvalidRecipient(String),
}

impl Verdict {
    /// True for [`Verdict::Successful`].
    ///
    /// ```
    /// use switchboard_sdk::classify::Verdict;
    ///
    /// assert!(Verdict::Successful("m-1".into()).is_successful());
    /// assert!(!Verdict::InvalidRecipient("gone".into()).is_successful());
    /// ```
    pub fn is_successful(&self) -> bool {
        matches!(self, Verdict::Successful(_))
    }
}

impl From<Verdict> for Outcome {
    /// `Successful` → `delivered`, `Retry` → `retry`, `DontRetry` → `rejected`,
    /// `InvalidRecipient` → `invalid-recipient`.
    fn from(verdict: Verdict) -> Outcome {
        match verdict {
            Verdict::Successful(id) => Outcome::delivered(id),
            Verdict::Retry { reason, after_ms } => Outcome::retry(reason, after_ms),
            Verdict::DontRetry { code, reason } => Outcome::rejected(code, reason),
            Verdict::InvalidRecipient(reason) => Outcome::invalid_recipient(reason),
        }
    }
}

/// True for the statuses that say "try again": 408 (request timeout), 429 (too many requests)
/// and every 5xx.
///
/// ```
/// use switchboard_sdk::classify::retryable_status;
///
/// assert!(retryable_status(429) && retryable_status(503) && retryable_status(408));
/// assert!(!retryable_status(400) && !retryable_status(200));
/// ```
pub fn retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500..=599)
}

/// Classifies a reply by its status alone: 2xx is `Successful` (with an empty message id), 408,
/// 429 and 5xx are `Retry` with the `Retry-After` (in seconds) as `after_ms`, and every other
/// status is `DontRetry` with the code `HTTP_<status>`.
///
/// ```
/// use switchboard_sdk::classify::{by_status, Verdict};
/// use switchboard_sdk::http::Response;
///
/// let limited = Response { status: 429, headers: vec![("retry-after".into(), "3".into())], body: vec![] };
/// assert_eq!(by_status(&limited), Verdict::Retry { reason: "HTTP 429".into(), after_ms: Some(3000) });
///
/// let forbidden = Response { status: 403, headers: vec![], body: vec![] };
/// assert_eq!(by_status(&forbidden),
///            Verdict::DontRetry { code: "HTTP_403".into(), reason: "HTTP 403".into() });
/// ```
pub fn by_status(response: &Response) -> Verdict {
    let status = response.status;
    if response.is_success() {
        Verdict::Successful(String::new())
    } else if retryable_status(status) {
        Verdict::Retry {
            reason: format!("HTTP {status}"),
            after_ms: retry_after_ms(response.header("retry-after")),
        }
    } else {
        Verdict::DontRetry {
            code: format!("HTTP_{status}"),
            reason: format!("HTTP {status}"),
        }
    }
}

/// How a 2xx body says whether the request succeeded.
#[derive(Debug, Clone, Copy)]
enum SuccessCheck {
    /// The value at this pointer must be JSON `true`.
    Flag(&'static str),
    /// The vendor's rule, as a function of the whole body.
    Predicate(fn(&Value) -> bool),
}

/// A description of a vendor's replies, applied to each response with [`Classifier::classify`].
///
/// Build it once as a `const`; every part is optional. Paths are JSON Pointers (`/header/code`,
/// `/results/0/id`). The rules, in order:
///
/// 1. 408, 429 and 5xx: `Retry`, with `after_ms` from `Retry-After`.
/// 2. Any other non-2xx: the body's error code, through [`verdict_for_code`](Self::verdict_for_code)
///    (so a listed retry or recipient code still counts), or `DontRetry("HTTP_<status>")` when the
///    body has no code.
/// 3. 2xx when no [`success_flag`](Self::success_flag), [`success_when`](Self::success_when) or
///    [`message_id`](Self::message_id) is set: `Successful`.
/// 4. 2xx whose body is not JSON: `Retry`. The vendor may have sent nothing; retrying keeps the
///    delivery.
/// 5. 2xx whose body fails the success check: the error code through `verdict_for_code`, or
///    `Retry` when the body gives no code.
/// 6. 2xx that passes: `Successful(id)` with the id at `message_id`; `Retry` if the id is
///    missing, since an acceptance without an id may not be one.
///
/// ```
/// use switchboard_sdk::classify::{Classifier, Verdict};
/// use switchboard_sdk::http::Response;
///
/// const REPLY: Classifier = Classifier::new()
///     .message_id("/id")
///     .error_code("/error")
///     .invalid_recipient_codes(&["invalid_number"]);
///
/// let reply = |status, body: &str| Response { status, headers: vec![], body: body.into() };
/// assert_eq!(REPLY.classify(&reply(200, r#"{"id":"m-1"}"#)), Verdict::Successful("m-1".into()));
/// assert_eq!(REPLY.classify(&reply(400, r#"{"error":"invalid_number"}"#)),
///            Verdict::InvalidRecipient("invalid_number: HTTP 400".into()));
/// assert_eq!(REPLY.classify(&reply(403, r#"{"error":"blocked"}"#)),
///            Verdict::DontRetry { code: "blocked".into(), reason: "HTTP 403".into() });
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Classifier {
    message_id: Option<&'static str>,
    success: Option<SuccessCheck>,
    error_code: Option<&'static str>,
    error_message: Option<&'static str>,
    retry_codes: &'static [&'static str],
    invalid_recipient_codes: &'static [&'static str],
}

impl Default for Classifier {
    fn default() -> Self {
        Self::new()
    }
}

impl Classifier {
    /// A classifier that reads no body: the same as [`by_status`] until told more.
    ///
    /// ```
    /// use switchboard_sdk::classify::{Classifier, Verdict};
    /// use switchboard_sdk::http::Response;
    ///
    /// let ok = Response { status: 202, headers: vec![], body: b"queued".to_vec() };
    /// assert_eq!(Classifier::new().classify(&ok), Verdict::Successful(String::new()));
    /// ```
    pub const fn new() -> Self {
        Classifier {
            message_id: None,
            success: None,
            error_code: None,
            error_message: None,
            retry_codes: &[],
            invalid_recipient_codes: &[],
        }
    }

    /// Where a 2xx body holds the vendor's message id. Strings and numbers are accepted.
    ///
    /// ```
    /// use switchboard_sdk::classify::{Classifier, Verdict};
    /// use switchboard_sdk::http::Response;
    ///
    /// const REPLY: Classifier = Classifier::new().message_id("/data/requestId");
    /// let ok = Response { status: 200, headers: vec![], body: br#"{"data":{"requestId":42}}"#.to_vec() };
    /// assert_eq!(REPLY.classify(&ok), Verdict::Successful("42".into()));
    /// ```
    pub const fn message_id(mut self, pointer: &'static str) -> Self {
        self.message_id = Some(pointer);
        self
    }

    /// Where a 2xx body holds a success flag: the request succeeded only if the value there is
    /// JSON `true`.
    ///
    /// ```
    /// use switchboard_sdk::classify::{Classifier, Verdict};
    /// use switchboard_sdk::http::Response;
    ///
    /// const REPLY: Classifier = Classifier::new()
    ///     .success_flag("/header/isSuccessful")
    ///     .error_code("/header/resultCode")
    ///     .error_message("/header/resultMessage");
    /// let body = br#"{"header":{"isSuccessful":false,"resultCode":-1001,"resultMessage":"bad key"}}"#;
    /// let response = Response { status: 200, headers: vec![], body: body.to_vec() };
    /// assert_eq!(REPLY.classify(&response),
    ///            Verdict::DontRetry { code: "-1001".into(), reason: "bad key".into() });
    /// ```
    pub const fn success_flag(mut self, pointer: &'static str) -> Self {
        self.success = Some(SuccessCheck::Flag(pointer));
        self
    }

    /// The vendor's own success rule, for bodies a flag cannot describe. Replaces a
    /// [`success_flag`](Self::success_flag).
    ///
    /// ```
    /// use serde_json::Value;
    /// use switchboard_sdk::classify::{Classifier, Verdict};
    /// use switchboard_sdk::http::Response;
    ///
    /// // Success is `"code": "0000"`.
    /// fn accepted(body: &Value) -> bool {
    ///     body.get("code").and_then(Value::as_str) == Some("0000")
    /// }
    /// const REPLY: Classifier = Classifier::new().success_when(accepted).error_code("/code");
    ///
    /// let response = Response { status: 200, headers: vec![], body: br#"{"code":"3001"}"#.to_vec() };
    /// assert!(matches!(REPLY.classify(&response), Verdict::DontRetry { code, .. } if code == "3001"));
    /// ```
    pub const fn success_when(mut self, check: fn(&Value) -> bool) -> Self {
        self.success = Some(SuccessCheck::Predicate(check));
        self
    }

    /// Where a body holds the vendor's error code (on any status). Strings and numbers are
    /// accepted; numbers become their decimal text (`-1001`).
    ///
    /// ```
    /// use switchboard_sdk::classify::{Classifier, Verdict};
    /// use switchboard_sdk::http::Response;
    ///
    /// const REPLY: Classifier = Classifier::new().error_code("/code").error_message("/message");
    /// let body = br#"{"code":21610,"message":"unsubscribed recipient"}"#;
    /// let response = Response { status: 400, headers: vec![], body: body.to_vec() };
    /// assert_eq!(REPLY.classify(&response),
    ///            Verdict::DontRetry { code: "21610".into(), reason: "unsubscribed recipient".into() });
    /// ```
    pub const fn error_code(mut self, pointer: &'static str) -> Self {
        self.error_code = Some(pointer);
        self
    }

    /// Where a body holds the vendor's error message, which becomes the reason. Without one the
    /// reason is the HTTP status (`HTTP 400`).
    ///
    /// ```
    /// use switchboard_sdk::classify::{Classifier, Verdict};
    /// use switchboard_sdk::http::Response;
    ///
    /// const REPLY: Classifier = Classifier::new().error_code("/error/status").error_message("/error/message");
    /// let body = br#"{"error":{"status":"INVALID_ARGUMENT","message":"bad token"}}"#;
    /// let response = Response { status: 400, headers: vec![], body: body.to_vec() };
    /// assert_eq!(REPLY.classify(&response),
    ///            Verdict::DontRetry { code: "INVALID_ARGUMENT".into(), reason: "bad token".into() });
    /// ```
    pub const fn error_message(mut self, pointer: &'static str) -> Self {
        self.error_message = Some(pointer);
        self
    }

    /// Error codes that mean "try again later" (the vendor's system error, a full queue).
    ///
    /// ```
    /// use switchboard_sdk::classify::{Classifier, Verdict};
    /// use switchboard_sdk::http::Response;
    ///
    /// const REPLY: Classifier = Classifier::new().error_code("/code").retry_codes(&["21611"]);
    /// let response = Response { status: 400, headers: vec![], body: br#"{"code":21611}"#.to_vec() };
    /// assert!(matches!(REPLY.classify(&response), Verdict::Retry { .. }));
    /// ```
    pub const fn retry_codes(mut self, codes: &'static [&'static str]) -> Self {
        self.retry_codes = codes;
        self
    }

    /// Error codes that mean the recipient does not exist (an invalid number, an unregistered
    /// device token).
    ///
    /// ```
    /// use switchboard_sdk::classify::{Classifier, Verdict};
    /// use switchboard_sdk::http::Response;
    ///
    /// const REPLY: Classifier = Classifier::new().error_code("/code").invalid_recipient_codes(&["21211"]);
    /// let response = Response { status: 400, headers: vec![], body: br#"{"code":21211}"#.to_vec() };
    /// assert!(matches!(REPLY.classify(&response), Verdict::InvalidRecipient(_)));
    /// ```
    pub const fn invalid_recipient_codes(mut self, codes: &'static [&'static str]) -> Self {
        self.invalid_recipient_codes = codes;
        self
    }

    /// Classifies one reply by the rules in the type's documentation.
    ///
    /// ```
    /// use switchboard_sdk::classify::{Classifier, Verdict};
    /// use switchboard_sdk::http::Response;
    ///
    /// const REPLY: Classifier = Classifier::new().message_id("/id");
    /// let unavailable = Response {
    ///     status: 503,
    ///     headers: vec![("Retry-After".into(), "10".into())],
    ///     body: b"<html>down</html>".to_vec(),
    /// };
    /// assert_eq!(REPLY.classify(&unavailable),
    ///            Verdict::Retry { reason: "HTTP 503".into(), after_ms: Some(10_000) });
    /// ```
    pub fn classify(&self, response: &Response) -> Verdict {
        let status = response.status;
        let after_ms = retry_after_ms(response.header("retry-after"));
        let body = response.json();
        let code = body.as_ref().and_then(|b| text_at(b, self.error_code));
        let message = body.as_ref().and_then(|b| text_at(b, self.error_message));

        if retryable_status(status) {
            return Verdict::Retry {
                reason: describe(status, code.as_deref(), message.as_deref()),
                after_ms,
            };
        }
        if !response.is_success() {
            return match code {
                Some(code) => self.verdict_for_code(&code, &or_status(message, status), after_ms),
                None => Verdict::DontRetry {
                    code: format!("HTTP_{status}"),
                    reason: describe(status, None, message.as_deref()),
                },
            };
        }
        if self.success.is_none() && self.message_id.is_none() {
            return Verdict::Successful(String::new());
        }
        let Some(body) = body else {
            return Verdict::Retry {
                reason: format!("unreadable reply (HTTP {status}): the body is not JSON"),
                after_ms,
            };
        };
        let succeeded = match self.success {
            None => true,
            Some(SuccessCheck::Flag(pointer)) => body.pointer(pointer) == Some(&Value::Bool(true)),
            Some(SuccessCheck::Predicate(check)) => check(&body),
        };
        if !succeeded {
            return match code {
                Some(code) => self.verdict_for_code(&code, &or_status(message, status), after_ms),
                None => Verdict::Retry {
                    reason: format!("HTTP {status} reports a failure without an error code"),
                    after_ms,
                },
            };
        }
        match self.message_id {
            None => Verdict::Successful(String::new()),
            Some(pointer) => match text_at(&body, Some(pointer)) {
                Some(id) if !id.is_empty() => Verdict::Successful(id),
                _ => Verdict::Retry {
                    reason: format!(
                        "HTTP {status} success reply without a message id at {pointer}"
                    ),
                    after_ms: None,
                },
            },
        }
    }

    /// The verdict for one vendor error code: `Retry` for a [retry code](Self::retry_codes),
    /// `InvalidRecipient` for a [recipient code](Self::invalid_recipient_codes), otherwise
    /// `DontRetry` carrying the code. Use it for per-recipient codes inside a batch reply.
    ///
    /// ```
    /// use switchboard_sdk::classify::{Classifier, Verdict};
    ///
    /// const CODES: Classifier = Classifier::new().retry_codes(&["-9999"]).invalid_recipient_codes(&["-2019"]);
    /// assert_eq!(CODES.verdict_for_code("-9999", "system error", Some(1000)),
    ///            Verdict::Retry { reason: "-9999: system error".into(), after_ms: Some(1000) });
    /// assert_eq!(CODES.verdict_for_code("-2019", "invalid number", None),
    ///            Verdict::InvalidRecipient("-2019: invalid number".into()));
    /// assert_eq!(CODES.verdict_for_code("-1001", "bad secret key", None),
    ///            Verdict::DontRetry { code: "-1001".into(), reason: "bad secret key".into() });
    /// ```
    pub fn verdict_for_code(&self, code: &str, message: &str, after_ms: Option<u64>) -> Verdict {
        if self.retry_codes.contains(&code) {
            Verdict::Retry {
                reason: format!("{code}: {message}"),
                after_ms,
            }
        } else if self.invalid_recipient_codes.contains(&code) {
            Verdict::InvalidRecipient(format!("{code}: {message}"))
        } else {
            Verdict::DontRetry {
                code: code.to_string(),
                reason: message.to_string(),
            }
        }
    }
}

/// The text of the string or number at `pointer`, if the classifier has that pointer.
fn text_at(body: &Value, pointer: Option<&str>) -> Option<String> {
    match body.pointer(pointer?)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The vendor's message, or the status when it sent none.
fn or_status(message: Option<String>, status: u16) -> String {
    message.unwrap_or_else(|| format!("HTTP {status}"))
}

/// `HTTP 503`, `HTTP 503: -9999`, `HTTP 503: -9999: system error` or `HTTP 503: system error`.
fn describe(status: u16, code: Option<&str>, message: Option<&str>) -> String {
    let mut reason = format!("HTTP {status}");
    for part in [code, message].into_iter().flatten() {
        reason.push_str(": ");
        reason.push_str(part);
    }
    reason
}

/// Spreads per-recipient results over a request's recipients, for vendors that answer a batch
/// with a list of results carrying a 1-based sequence number (NHN's `recipientSeq`).
///
/// Each result goes to the recipient its `seq_field` names, or to its position in the list when
/// the sequence is missing or out of range. `outcome` turns one result into an outcome; it is
/// given the result and the recipient's 1-based sequence. A recipient with no result gets
/// `retry`, since the vendor never said what became of it.
///
/// ```
/// use serde_json::json;
/// use switchboard_sdk::Outcome;
/// use switchboard_sdk::classify::by_sequence;
///
/// let results = [json!({"recipientSeq": 2, "resultCode": 0})];
/// let outcomes = by_sequence(&results, 2, "recipientSeq", |_, seq| {
///     Outcome::delivered(format!("req/{seq}"))
/// });
/// assert_eq!(outcomes[1], Outcome::delivered("req/2"));
/// assert!(matches!(outcomes[0], Outcome::Retry(_)));
/// ```
pub fn by_sequence(
    results: &[Value],
    recipients: usize,
    seq_field: &str,
    outcome: impl Fn(&Value, u64) -> Outcome,
) -> Vec<Outcome> {
    let mut outcomes: Vec<Option<Outcome>> = vec![None; recipients];
    for (position, result) in results.iter().enumerate() {
        let seq = result.get(seq_field).and_then(Value::as_u64);
        let index = match seq {
            Some(seq) if seq >= 1 && (seq as usize) <= recipients => seq as usize - 1,
            _ => position,
        };
        if let Some(slot) = outcomes.get_mut(index) {
            *slot = Some(outcome(result, index as u64 + 1));
        }
    }
    outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Outcome::retry("no result for this recipient", None)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, body: &str) -> Response {
        Response {
            status,
            headers: vec![("Retry-After".into(), "2".into())],
            body: body.as_bytes().to_vec(),
        }
    }

    const NHN_LIKE: Classifier = Classifier::new()
        .success_flag("/header/isSuccessful")
        .error_code("/header/resultCode")
        .error_message("/header/resultMessage")
        .retry_codes(&["-9999"])
        .invalid_recipient_codes(&["-5000"]);

    #[test]
    fn a_2xx_that_reports_a_failure_is_not_delivered() {
        let body = r#"{"header":{"isSuccessful":false,"resultCode":-9999,"resultMessage":"x"}}"#;
        assert_eq!(
            NHN_LIKE.classify(&reply(200, body)),
            Verdict::Retry {
                reason: "-9999: x".into(),
                after_ms: Some(2000)
            }
        );
    }

    #[test]
    fn a_2xx_without_a_readable_body_is_retried_when_the_body_matters() {
        assert!(matches!(
            NHN_LIKE.classify(&reply(200, "")),
            Verdict::Retry { .. }
        ));
        assert!(matches!(
            NHN_LIKE.classify(&reply(200, r#"{"header":{}}"#)),
            Verdict::Retry { .. }
        ));
        assert!(Classifier::new().classify(&reply(200, "")).is_successful());
    }

    #[test]
    fn other_statuses_use_the_body_code_or_the_status() {
        let body = r#"{"header":{"isSuccessful":false,"resultCode":-5000,"resultMessage":"no"}}"#;
        assert_eq!(
            NHN_LIKE.classify(&reply(400, body)),
            Verdict::InvalidRecipient("-5000: no".into())
        );
        assert_eq!(
            NHN_LIKE.classify(&reply(404, "not found")),
            Verdict::DontRetry {
                code: "HTTP_404".into(),
                reason: "HTTP 404".into()
            }
        );
        assert!(matches!(
            NHN_LIKE.classify(&reply(302, "")),
            Verdict::DontRetry { code, .. } if code == "HTTP_302"
        ));
    }

    #[test]
    fn retryable_statuses_win_over_the_body() {
        let body = r#"{"header":{"isSuccessful":true,"resultCode":0}}"#;
        assert_eq!(
            NHN_LIKE.classify(&reply(503, body)),
            Verdict::Retry {
                reason: "HTTP 503: 0".into(),
                after_ms: Some(2000)
            }
        );
    }

    #[test]
    fn a_missing_message_id_is_retried() {
        let classifier = Classifier::new().message_id("/id");
        assert!(matches!(
            classifier.classify(&reply(200, "{}")),
            Verdict::Retry { after_ms: None, .. }
        ));
        assert!(matches!(
            classifier.classify(&reply(200, r#"{"id":""}"#)),
            Verdict::Retry { .. }
        ));
    }
}
