//! What NHN Cloud's messaging APIs (Alimtalk v2.3, SMS v3.0) share, for the adapters of both:
//!
//! - a send request: `POST` JSON with the `X-Secret-Key` header (filled in by the host from
//!   the plugin's secret) and up to [`MAX_RECIPIENTS`] recipients;
//! - a batch grouped by what one request can carry (a template code, a message text), each
//!   group sent concurrently, each recipient's outcome put back at its place in the batch;
//! - the reply: HTTP 200 for most failures, with a `header` whose negative `resultCode` fails
//!   the whole request, and per-recipient results (matched by `recipientSeq`) whose negative
//!   `resultCode` fails that one recipient.
//!
//! What differs per product (paths, field names, which codes mean what) stays in each adapter:
//! a [`Reply`] describes it.

use serde_json::Value;
use switchboard_sdk::classify::{self, Classifier, Verdict};
use switchboard_sdk::http::{self, Request, Response};
use switchboard_sdk::{Outcome, retry_after_ms, secrets};

/// NHN's limit on `recipientList` in one send request.
pub const MAX_RECIPIENTS: usize = 1000;

/// How one NHN product's reply reads.
pub struct Reply {
    /// The header's codes: which are retried, which mean an invalid recipient. Every other
    /// negative code is a rejection carrying the code.
    pub codes: Classifier,
    /// Where the per-recipient results are (a JSON pointer).
    pub results: &'static str,
    /// Where the request id is, for each delivered recipient's message id.
    pub request_id: &'static str,
    /// What a per-recipient result without a `resultCode` means.
    pub without_code: WithoutCode,
}

/// What a per-recipient result without a `resultCode` means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WithoutCode {
    /// Accepted with the request (the SMS guide marks the code as nullable).
    Accepted,
    /// Unknown: tried again.
    Retry,
}

/// NHN's success rule: `isSuccessful` true and a result code that is not negative.
pub fn header_ok(body: &Value) -> bool {
    body.pointer("/header/isSuccessful")
        .and_then(Value::as_bool)
        == Some(true)
        && body
            .pointer("/header/resultCode")
            .and_then(Value::as_i64)
            .is_some_and(|c| c >= 0)
}

/// A send request of `body` to `url`, authenticated with the secret named `secret_key_secret`.
pub fn send_request(url: String, secret_key_secret: &str, body: &Value) -> Request {
    Request::post(url)
        .header("X-Secret-Key", secrets::placeholder(secret_key_secret))
        // The charset is spelled out as NHN's guide does; contents are often Korean.
        .header("Content-Type", "application/json;charset=UTF-8")
        .body(body.to_string())
}

/// A batch grouped by what one request can carry, in batch order.
pub struct Groups<K> {
    /// Each group's key and the batch indexes in it (at most [`MAX_RECIPIENTS`]).
    pub groups: Vec<(K, Vec<usize>)>,
    /// Outcomes decided without a request (bad content, no recipient), by batch index.
    outcomes: Vec<Option<Outcome>>,
}

impl<K: PartialEq> Groups<K> {
    /// Groups for a batch of `len` deliveries, none placed yet.
    pub fn new(len: usize) -> Self {
        Self {
            groups: Vec::new(),
            outcomes: vec![None; len],
        }
    }

    /// Puts delivery `index` in the first group of `key` with room, or a new one.
    pub fn add(&mut self, key: K, index: usize) {
        match self
            .groups
            .iter_mut()
            .find(|(k, indexes)| *k == key && indexes.len() < MAX_RECIPIENTS)
        {
            Some((_, indexes)) => indexes.push(index),
            None => self.groups.push((key, vec![index])),
        }
    }

    /// Settles delivery `index` without a request.
    pub fn settle(&mut self, index: usize, outcome: Outcome) {
        self.outcomes[index] = Some(outcome);
    }

    /// Sends `requests` (one per group, in group order) at once and returns one outcome per
    /// delivery of the batch, in batch order.
    pub fn send(mut self, requests: Vec<Request>, reply: &Reply) -> Vec<Outcome> {
        for ((_, indexes), result) in self.groups.iter().zip(http::send_all(requests)) {
            let group_outcomes = match result {
                Ok(response) => classify_reply(&response, indexes.len(), reply),
                // A request that never got an answer may be retried; a denied host is a grant
                // the operator has to fix, and until then retrying keeps the delivery.
                Err(error) => vec![Outcome::retry(format!("http {error}"), None); indexes.len()],
            };
            for (&i, outcome) in indexes.iter().zip(group_outcomes) {
                self.outcomes[i] = Some(outcome);
            }
        }
        self.outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::retry("no outcome", None)))
            .collect()
    }
}

/// One outcome per recipient of a send request, in request order.
pub fn classify_reply(response: &Response, recipients: usize, reply: &Reply) -> Vec<Outcome> {
    // 408, 429 and 5xx: NHN did not take the request, whatever the body says.
    if let verdict @ Verdict::Retry { .. } = classify::by_status(response) {
        return vec![verdict.into(); recipients];
    }
    // Per-recipient results are the more precise answer whenever the reply has them, also when
    // the header reports that every recipient failed.
    if let Some(body) = response.json()
        && let Some(results) = body.pointer(reply.results).and_then(Value::as_array)
        && !results.is_empty()
    {
        let request_id = body
            .pointer(reply.request_id)
            .and_then(Value::as_str)
            .unwrap_or("");
        let retry_after = retry_after_ms(response.header("retry-after"));
        return per_recipient(results, recipients, request_id, retry_after, reply);
    }
    match reply.codes.classify(response) {
        Verdict::Successful(_) => {
            vec![Outcome::retry("success reply without per-recipient results", None); recipients]
        }
        verdict => vec![verdict.into(); recipients],
    }
}

/// One outcome per recipient from the reply's results, matched by `recipientSeq`.
fn per_recipient(
    results: &[Value],
    recipients: usize,
    request_id: &str,
    retry_after: Option<u64>,
    reply: &Reply,
) -> Vec<Outcome> {
    classify::by_sequence(results, recipients, "recipientSeq", |result, seq| {
        let code = match (
            result.get("resultCode").and_then(Value::as_i64),
            reply.without_code,
        ) {
            (Some(code), _) => code,
            (None, WithoutCode::Accepted) => 0,
            (None, WithoutCode::Retry) => {
                return Outcome::retry("send result without resultCode", None);
            }
        };
        match code {
            0 => Outcome::delivered(format!("{request_id}/{seq}")),
            code => reply
                .codes
                .verdict_for_code(&code.to_string(), &result_message(result), retry_after)
                .into(),
        }
    })
}

fn result_message(value: &Value) -> String {
    value
        .get("resultMessage")
        .and_then(Value::as_str)
        .unwrap_or("no resultMessage")
        .to_string()
}
