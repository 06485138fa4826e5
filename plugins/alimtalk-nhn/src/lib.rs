//! KakaoTalk Bizmessage Alimtalk through NHN Cloud, API v2.3 (template substitution send).
//!
//! Auth: the `X-Secret-Key` header, filled in by the host from the secret named by
//! `secret_key_secret`. The appkey is part of the path.
//!
//! A batch is grouped by template code: each group of up to 1000 recipients is one
//! `POST /alimtalk/v2.3/appkeys/{appkey}/messages`, and the groups are sent concurrently. NHN
//! answers HTTP 200 for most failures and puts them in the body: a failed `header` fails every
//! recipient of that request, a negative `resultCode` in `message.sendResults` fails that one
//! recipient. The mapping of codes to outcomes is in docs/vendors/alimtalk-nhn.md.
//!
//! Config keys: `appkey`, `sender_key` (required); `endpoint`, `secret_key_secret` (optional).

use serde_json::{Map, Value, json};
use switchboard_sdk::classify::{self, Classifier, Verdict};
use switchboard_sdk::content::{self, TemplateContent};
use switchboard_sdk::http::{self, Request, Response};
use switchboard_sdk::{
    Adapter, Config, Delivery, Outcome, PluginInfo, PluginInfoExt, retry_after_ms, secrets,
};

const DEFAULT_ENDPOINT: &str = "https://api-alimtalk.cloud.toast.com";
/// NHN's limit on `recipientList` in one send request.
const MAX_RECIPIENTS: usize = 1000;

struct Alimtalk {
    appkey: String,
    sender_key: String,
    endpoint: String,
    secret_key_secret: String,
}

impl Adapter for Alimtalk {
    fn describe() -> PluginInfo {
        PluginInfo::new("alimtalk-nhn", env!("CARGO_PKG_VERSION"), "alimtalk")
            .max_batch(MAX_RECIPIENTS as u32)
            .wants_host("api-alimtalk.cloud.toast.com")
            .wants_host("kakaotalk-bizmessage.api.nhncloudservice.com")
    }

    fn init(config: Config) -> Result<Self, String> {
        Ok(Alimtalk {
            appkey: config.require("appkey")?.to_string(),
            sender_key: config.require("sender_key")?.to_string(),
            endpoint: config
                .get_or("endpoint", DEFAULT_ENDPOINT)
                .trim_end_matches('/')
                .to_string(),
            secret_key_secret: config.get_or("secret_key_secret", "secret_key").to_string(),
        })
    }

    fn deliver(&self, batch: Vec<Delivery>) -> Vec<Outcome> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; batch.len()];
        // Template code → the batch indexes and recipient entries that use it, in batch order.
        let mut groups: Vec<(String, Vec<usize>, Vec<Value>)> = Vec::new();
        for (i, delivery) in batch.iter().enumerate() {
            let template: TemplateContent = match content::parse(&delivery.content) {
                Ok(t) => t,
                Err(why) => {
                    outcomes[i] = Some(Outcome::rejected("INVALID_CONTENT", why));
                    continue;
                }
            };
            // NHN refuses the whole request for one blank recipientNo; keeping it out of the
            // request spares the rest of the group.
            if delivery.recipient.trim().is_empty() {
                outcomes[i] = Some(Outcome::invalid_recipient("empty recipient number"));
                continue;
            }
            let mut recipient = Map::new();
            recipient.insert("recipientNo".into(), delivery.recipient.clone().into());
            if !template.params.is_empty() {
                recipient.insert(
                    "templateParameter".into(),
                    content::string_values(&template.params).into(),
                );
            }
            let slot = match groups.iter().position(|(code, indexes, _)| {
                *code == template.template && indexes.len() < MAX_RECIPIENTS
            }) {
                Some(slot) => slot,
                None => {
                    groups.push((template.template.clone(), Vec::new(), Vec::new()));
                    groups.len() - 1
                }
            };
            groups[slot].1.push(i);
            groups[slot].2.push(Value::Object(recipient));
        }

        let requests = groups
            .iter()
            .map(|(code, _, recipients)| self.send_request(code, recipients))
            .collect();
        for ((_, indexes, _), result) in groups.iter().zip(http::send_all(requests)) {
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

impl Alimtalk {
    fn send_request(&self, template_code: &str, recipients: &[Value]) -> Request {
        let body = json!({
            "senderKey": self.sender_key,
            "templateCode": template_code,
            "recipientList": recipients,
        });
        Request::post(format!(
            "{}/alimtalk/v2.3/appkeys/{}/messages",
            self.endpoint, self.appkey
        ))
        .header(
            "X-Secret-Key",
            secrets::placeholder(&self.secret_key_secret),
        )
        // The charset is spelled out as NHN's guide does; template parameters are often Korean.
        .header("Content-Type", "application/json;charset=UTF-8")
        .body(body.to_string())
    }
}

/// NHN's reply header decides a request that has no per-recipient results. Failure codes are
/// negative; those listed here are the ones this adapter distinguishes, and every other one is a
/// rejection carrying the code, since NHN uses negative codes for request errors that a retry
/// cannot fix (validation, template, sender profile, credentials).
const REPLY: Classifier = Classifier::new()
    .success_when(header_ok)
    .error_code("/header/resultCode")
    .error_message("/header/resultMessage")
    // -9999 system error, -7000 the request to Kakao failed: both on the vendors' side.
    .retry_codes(&["-9999", "-7000"])
    // -5000 / -4019: the recipient number is invalid.
    .invalid_recipient_codes(&["-5000", "-4019"]);

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
    // Per-recipient results are the more precise answer, also when the header reports that
    // every recipient failed (-1031).
    if let Some(body) = response.json()
        && let Some(results) = body
            .pointer("/message/sendResults")
            .and_then(Value::as_array)
        && !results.is_empty()
    {
        let request_id = body
            .pointer("/message/requestId")
            .and_then(Value::as_str)
            .unwrap_or("");
        let retry_after = retry_after_ms(response.header("retry-after"));
        return per_recipient(results, recipients, request_id, retry_after);
    }
    match REPLY.classify(response) {
        Verdict::Successful(_) => {
            vec![Outcome::retry("success reply without sendResults", None); recipients]
        }
        verdict => vec![verdict.into(); recipients],
    }
}

/// One outcome per recipient from the reply's `sendResults`, matched by `recipientSeq`.
fn per_recipient(
    results: &[Value],
    recipients: usize,
    request_id: &str,
    retry_after: Option<u64>,
) -> Vec<Outcome> {
    classify::by_sequence(
        results,
        recipients,
        "recipientSeq",
        |result, seq| match result.get("resultCode").and_then(Value::as_i64) {
            Some(0) => Outcome::delivered(format!("{request_id}/{seq}")),
            Some(code) => REPLY
                .verdict_for_code(&code.to_string(), &result_message(result), retry_after)
                .into(),
            None => Outcome::retry("send result without resultCode", None),
        },
    )
}

fn result_message(value: &Value) -> String {
    value
        .get("resultMessage")
        .and_then(Value::as_str)
        .unwrap_or("no resultMessage")
        .to_string()
}

switchboard_sdk::export_adapter!(Alimtalk);
