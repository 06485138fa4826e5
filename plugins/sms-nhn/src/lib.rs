//! SMS through NHN Cloud, API v3.0 (`sender/sms`).
//!
//! Auth: the `X-Secret-Key` header, filled in by the host from the secret named by
//! `secret_key_secret`. The appkey is part of the path.
//!
//! A batch is grouped by message text: each group of up to 1000 recipients is one
//! `POST /sms/v3.0/appKeys/{appKey}/sender/sms`, and the groups are sent concurrently. NHN
//! answers HTTP 200 for most failures and puts them in the body: a failed `header` fails every
//! recipient of that request, a negative `resultCode` in `body.data.sendResultList` fails that
//! one recipient. The mapping of codes to outcomes is in docs/vendors/sms-nhn.md.
//!
//! Config keys: `appkey`, `send_no` (required); `endpoint`, `secret_key_secret` (optional).

use serde_json::{Value, json};
use switchboard_sdk::classify::{self, Classifier, Verdict};
use switchboard_sdk::content::{self, SmsContent};
use switchboard_sdk::http::{self, Request, Response};
use switchboard_sdk::{
    Adapter, Config, Delivery, Outcome, PluginInfo, PluginInfoExt, retry_after_ms, secrets,
};

const DEFAULT_ENDPOINT: &str = "https://api-sms.cloud.toast.com";
/// NHN's limit on `recipientList` in one send request.
const MAX_RECIPIENTS: usize = 1000;

struct NhnSms {
    appkey: String,
    send_no: String,
    endpoint: String,
    secret_key_secret: String,
}

impl Adapter for NhnSms {
    fn describe() -> PluginInfo {
        PluginInfo::new("sms-nhn", env!("CARGO_PKG_VERSION"), "sms")
            .max_batch(MAX_RECIPIENTS as u32)
            .wants_host("api-sms.cloud.toast.com")
            .wants_host("sms.api.nhncloudservice.com")
    }

    fn init(config: Config) -> Result<Self, String> {
        Ok(NhnSms {
            appkey: config.require("appkey")?.to_string(),
            send_no: config.require("send_no")?.to_string(),
            endpoint: config
                .get_or("endpoint", DEFAULT_ENDPOINT)
                .trim_end_matches('/')
                .to_string(),
            secret_key_secret: config.get_or("secret_key_secret", "secret_key").to_string(),
        })
    }

    fn deliver(&self, batch: Vec<Delivery>) -> Vec<Outcome> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; batch.len()];
        // Message text → the batch indexes that send it, in batch order.
        let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
        for (i, delivery) in batch.iter().enumerate() {
            let sms: SmsContent = match content::parse(&delivery.content) {
                Ok(sms) => sms,
                Err(why) => {
                    outcomes[i] = Some(Outcome::rejected("INVALID_CONTENT", why));
                    continue;
                }
            };
            if delivery.recipient.trim().is_empty() {
                outcomes[i] = Some(Outcome::invalid_recipient("empty recipient number"));
                continue;
            }
            match groups
                .iter_mut()
                .find(|(body, indexes)| *body == sms.body && indexes.len() < MAX_RECIPIENTS)
            {
                Some((_, indexes)) => indexes.push(i),
                None => groups.push((sms.body, vec![i])),
            }
        }

        let requests = groups
            .iter()
            .map(|(body, indexes)| {
                let recipients: Vec<&str> = indexes
                    .iter()
                    .map(|&i| batch[i].recipient.as_str())
                    .collect();
                self.send_request(body, &recipients)
            })
            .collect();
        for ((_, indexes), result) in groups.iter().zip(http::send_all(requests)) {
            let group_outcomes = match result {
                Ok(response) => classify(&response, indexes.len()),
                // A request that never got an answer may be retried; a denied host is a grant
                // the operator has to fix, and until then retrying keeps the delivery.
                Err(error) => vec![Outcome::retry(format!("http {error}"), None); indexes.len()],
            };
            for (&i, outcome) in indexes.iter().zip(group_outcomes) {
                outcomes[i] = Some(outcome);
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::retry("no outcome", None)))
            .collect()
    }
}

impl NhnSms {
    fn send_request(&self, text: &str, recipients: &[&str]) -> Request {
        let recipient_list: Vec<Value> = recipients
            .iter()
            .map(|no| json!({ "recipientNo": no }))
            .collect();
        let body = json!({
            "body": text,
            "sendNo": self.send_no,
            "recipientList": recipient_list,
        });
        Request::post(format!(
            "{}/sms/v3.0/appKeys/{}/sender/sms",
            self.endpoint, self.appkey
        ))
        .header(
            "X-Secret-Key",
            secrets::placeholder(&self.secret_key_secret),
        )
        // The charset is spelled out as NHN's guide does; SMS bodies are often Korean.
        .header("Content-Type", "application/json;charset=UTF-8")
        .body(body.to_string())
    }
}

/// NHN's reply header decides a request that has no per-recipient results. Failure codes are
/// negative; those listed here are the ones this adapter distinguishes, and every other one is a
/// rejection carrying the code, since NHN uses negative codes for request errors that a retry
/// cannot fix (validation, unregistered sender number, credentials, opted-out recipients).
const REPLY: Classifier = Classifier::new()
    .success_when(header_ok)
    .error_code("/header/resultCode")
    .error_message("/header/resultMessage")
    // -9999 system error, -2021 the message could not be queued: both on NHN's side.
    .retry_codes(&["-9999", "-2021"])
    // -2018 empty, -2019 invalid recipient number.
    .invalid_recipient_codes(&["-2018", "-2019"]);

/// NHN's success rule: `isSuccessful` true and a result code that is not negative.
fn header_ok(body: &Value) -> bool {
    body.pointer("/header/isSuccessful")
        .and_then(Value::as_bool)
        == Some(true)
        && body
            .pointer("/header/resultCode")
            .and_then(Value::as_i64)
            .is_some_and(|c| c >= 0)
}

/// One outcome per recipient of a send request, in request order.
fn classify(response: &Response, recipients: usize) -> Vec<Outcome> {
    // 408, 429 and 5xx: NHN did not take the request, whatever the body says.
    if let verdict @ Verdict::Retry { .. } = classify::by_status(response) {
        return vec![verdict.into(); recipients];
    }
    // Per-recipient results are the more precise answer whenever the reply has them.
    if let Some(reply) = response.json()
        && let Some(results) = reply
            .pointer("/body/data/sendResultList")
            .and_then(Value::as_array)
        && !results.is_empty()
    {
        let request_id = reply
            .pointer("/body/data/requestId")
            .and_then(Value::as_str)
            .unwrap_or("");
        let retry_after = retry_after_ms(response.header("retry-after"));
        return per_recipient(results, recipients, request_id, retry_after);
    }
    match REPLY.classify(response) {
        Verdict::Successful(_) => {
            vec![Outcome::retry("success reply without sendResultList", None); recipients]
        }
        verdict => vec![verdict.into(); recipients],
    }
}

/// One outcome per recipient from the reply's per-recipient results, matched by `recipientSeq`.
fn per_recipient(
    results: &[Value],
    recipients: usize,
    request_id: &str,
    retry_after: Option<u64>,
) -> Vec<Outcome> {
    classify::by_sequence(results, recipients, "recipientSeq", |result, seq| {
        // The guide marks a recipient's resultCode as nullable; a result without one was
        // accepted with the request.
        match result
            .get("resultCode")
            .and_then(Value::as_i64)
            .unwrap_or(0)
        {
            0 => Outcome::delivered(format!("{request_id}/{seq}")),
            code => REPLY
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

switchboard_sdk::export_adapter!(NhnSms);
