//! An adapter for "hello", a made-up SMS vendor: the smallest complete Switchboard plugin.
//!
//! Hello's API is one endpoint, `POST {endpoint}/v1/messages` with the JSON body
//! `{"to": NUMBER, "text": TEXT}` and the API key in the `x-api-key` header. It answers:
//!
//! | Hello's reply | outcome |
//! | --- | --- |
//! | 200 `{"id": ID}` | `delivered(ID)` |
//! | 429, with `Retry-After` in seconds | `retry`, no sooner than Retry-After |
//! | 400 `{"error": "invalid_number"}` | `invalid-recipient` |
//! | other 4xx `{"error": CODE}` | `rejected(CODE)`, or `rejected(HTTP_<status>)` without a body |
//! | 5xx | `retry` |
//! | no answer (timeout, connection refused, host not granted) | `retry` |
//! | content that is not `{body}` | `rejected(INVALID_CONTENT)`, no request |
//!
//! Config keys: `endpoint` (optional, default `https://api.hello.example`). Secrets: `api_key`,
//! which the host puts in the `x-api-key` header; the adapter never sees it.

use serde_json::json;
use switchboard_sdk::classify::Classifier;
use switchboard_sdk::content::{self, SmsContent};
use switchboard_sdk::http::{self, Request, Response};
use switchboard_sdk::{Adapter, Config, Delivery, Outcome, PluginInfo, PluginInfoExt, secrets};

const DEFAULT_ENDPOINT: &str = "https://api.hello.example";

/// Hello's replies, described once. 429 and 5xx are retried and other 4xx rejected without being
/// listed here; see `switchboard_sdk::classify::Classifier` for the rules.
const REPLY: Classifier = Classifier::new()
    .message_id("/id")
    .error_code("/error")
    .invalid_recipient_codes(&["invalid_number"]);

struct Hello {
    messages_url: String,
}

impl Adapter for Hello {
    fn describe() -> PluginInfo {
        PluginInfo::new("hello-vendor", env!("CARGO_PKG_VERSION"), "sms")
            // Hello has no batch API, so a batch is this many requests in flight at once.
            .max_batch(20)
            .wants_host("api.hello.example")
    }

    fn init(config: Config) -> Result<Self, String> {
        let endpoint = config.get_or("endpoint", DEFAULT_ENDPOINT);
        Ok(Hello {
            messages_url: format!("{}/v1/messages", endpoint.trim_end_matches('/')),
        })
    }

    fn deliver(&self, batch: Vec<Delivery>) -> Vec<Outcome> {
        // Content that does not parse is rejected here; the rest is sent all at once.
        let mut outcomes: Vec<Option<Outcome>> = vec![None; batch.len()];
        let mut requests = Vec::with_capacity(batch.len());
        let mut sent = Vec::with_capacity(batch.len());
        for (i, delivery) in batch.iter().enumerate() {
            match content::parse::<SmsContent>(&delivery.content) {
                Ok(sms) => {
                    requests.push(self.message_request(&delivery.recipient, &sms.body));
                    sent.push(i);
                }
                Err(why) => outcomes[i] = Some(Outcome::rejected("INVALID_CONTENT", why)),
            }
        }
        for (i, result) in sent.into_iter().zip(http::send_all(requests)) {
            outcomes[i] = Some(match result {
                Ok(response) => outcome(&response),
                // No answer: Hello may not have the message, so try again later.
                Err(error) => Outcome::retry(format!("http {error}"), None),
            });
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::retry("no outcome", None)))
            .collect()
    }
}

impl Hello {
    fn message_request(&self, to: &str, text: &str) -> Request {
        Request::post(self.messages_url.clone())
            .header("x-api-key", secrets::placeholder("api_key"))
            .json(&json!({ "to": to, "text": text }))
    }
}

/// Hello's reply as an outcome. A plain function of the response, so it is unit-tested natively.
fn outcome(response: &Response) -> Outcome {
    REPLY.classify(response).into()
}

switchboard_sdk::export_adapter!(Hello);

// Run with the native target: `cargo test --target "$(rustc -vV | sed -n 's/^host: //p')"`.
#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, headers: &[(&str, &str)], body: &str) -> Response {
        Response {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn replies_map_to_outcomes() {
        let cases = [
            (
                reply(200, &[], r#"{"id":"m-1"}"#),
                Outcome::delivered("m-1"),
            ),
            (
                reply(429, &[("Retry-After", "7")], ""),
                Outcome::retry("HTTP 429", Some(7000)),
            ),
            (
                reply(400, &[], r#"{"error":"invalid_number"}"#),
                Outcome::invalid_recipient("invalid_number: HTTP 400"),
            ),
            (
                reply(403, &[], r#"{"error":"sender_blocked"}"#),
                Outcome::rejected("sender_blocked", "HTTP 403"),
            ),
            (
                reply(404, &[], "not found"),
                Outcome::rejected("HTTP_404", "HTTP 404"),
            ),
            (reply(502, &[], ""), Outcome::retry("HTTP 502", None)),
        ];
        for (response, expected) in cases {
            assert_eq!(outcome(&response), expected, "HTTP {}", response.status);
        }
    }

    #[test]
    fn an_accepted_message_without_an_id_is_retried() {
        assert!(matches!(outcome(&reply(200, &[], "{}")), Outcome::Retry(_)));
    }
}
