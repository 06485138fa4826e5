//! Twilio Programmable Messaging (SMS), REST API version 2010-04-01.
//!
//! Each delivery is one `POST {endpoint}/2010-04-01/Accounts/{AccountSid}/Messages.json` with a
//! form body `To`, `From` (or `MessagingServiceSid`) and `Body`; a batch is sent concurrently.
//! Twilio has no batch send and no idempotency key on this resource.
//!
//! Auth is HTTP Basic. The host fills `{{secret:NAME}}` placeholders verbatim and cannot
//! base64-encode, so the secret named by `credentials_secret` holds the ready value
//! `base64("AccountSid:AuthToken")` (or of `"ApiKeySid:ApiKeySecret"`).
//!
//! Config keys: `account_sid`, and one of `from` or `messaging_service_sid` (required);
//! `endpoint`, `credentials_secret`. The outcome table is in docs/vendors/sms-twilio.md.

use serde_json::Value;
use switchboard_sdk::content::{self, SmsContent};
use switchboard_sdk::http::{self, HttpError, Request, Response};
use switchboard_sdk::{
    Adapter, Config, Delivery, Outcome, PluginInfo, PluginInfoExt, log, retry_after_ms,
};

const DEFAULT_ENDPOINT: &str = "https://api.twilio.com";
const DEFAULT_CREDENTIALS_SECRET: &str = "basic_auth";

/// Twilio error codes the adapter branches on; every other code is passed on as `rejected`.
mod code {
    /// Credentials refused (HTTP 401).
    pub const AUTHENTICATE: u64 = 20003;
    /// Too many concurrent requests (HTTP 429).
    pub const TOO_MANY_REQUESTS: u64 = 20429;
    /// The `To` number is not a valid phone number.
    pub const INVALID_TO: u64 = 21211;
    /// The `From` sender's queue holds its maximum; it drains at the sender's rate.
    pub const FROM_QUEUE_FULL: u64 = 21611;
    /// The `To` number is not a mobile number (a landline, for one).
    pub const NOT_MOBILE: u64 = 21614;
}

/// Who the message is sent as: one of the account's numbers or a Messaging Service, which picks
/// a sender from its pool. Twilio wants exactly one of the two.
enum Sender {
    From(String),
    Service(String),
}

struct Twilio {
    messages_url: String,
    sender: Sender,
    credentials_secret: String,
}

impl Adapter for Twilio {
    fn describe() -> PluginInfo {
        PluginInfo::new("sms-twilio", env!("CARGO_PKG_VERSION"), "sms")
            .max_batch(50)
            .wants_host("api.twilio.com")
    }

    fn init(config: Config) -> Result<Self, String> {
        let account_sid =
            non_empty(&config, "account_sid").ok_or("missing config key `account_sid`")?;
        let sender = match (
            non_empty(&config, "from"),
            non_empty(&config, "messaging_service_sid"),
        ) {
            (Some(from), None) => Sender::From(from.to_string()),
            (None, Some(service)) => Sender::Service(service.to_string()),
            (None, None) => {
                return Err("set one of the config keys `from` or `messaging_service_sid`".into());
            }
            // Twilio's reference says `From` must be empty when a Messaging Service is used.
            (Some(_), Some(_)) => {
                return Err("set only one of `from` and `messaging_service_sid`, not both".into());
            }
        };
        let endpoint = config
            .get_or("endpoint", DEFAULT_ENDPOINT)
            .trim_end_matches('/');
        Ok(Twilio {
            messages_url: format!("{endpoint}/2010-04-01/Accounts/{account_sid}/Messages.json"),
            sender,
            credentials_secret: config
                .get_or("credentials_secret", DEFAULT_CREDENTIALS_SECRET)
                .to_string(),
        })
    }

    fn deliver(&self, batch: Vec<Delivery>) -> Vec<Outcome> {
        // Deliveries whose content does not parse are rejected without a request.
        let mut outcomes: Vec<Option<Outcome>> = vec![None; batch.len()];
        let mut requests = Vec::with_capacity(batch.len());
        let mut sent_index = Vec::with_capacity(batch.len());
        for (i, delivery) in batch.iter().enumerate() {
            match self.message_request(delivery) {
                Ok(request) => {
                    requests.push(request);
                    sent_index.push(i);
                }
                Err(why) => outcomes[i] = Some(Outcome::rejected("INVALID_CONTENT", why)),
            }
        }

        let mut credentials_refused = false;
        for (i, result) in sent_index.into_iter().zip(http::send_all(requests)) {
            let outcome = match result {
                Ok(response) => {
                    let reply = Reply::read(&response);
                    credentials_refused |= reply.code == Some(code::AUTHENTICATE);
                    classify(&response, &reply)
                }
                Err(error) => transport_outcome(error),
            };
            outcomes[i] = Some(outcome);
        }
        // Once per call, not once per delivery: the operator has to fix the secret.
        if credentials_refused {
            log::log(
                log::Level::Error,
                &format!(
                    "Twilio refused the credentials (20003): check `account_sid` and the secret `{}`",
                    self.credentials_secret
                ),
            );
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::retry("no outcome", None)))
            .collect()
    }
}

impl Twilio {
    fn message_request(&self, delivery: &Delivery) -> Result<Request, String> {
        let sms: SmsContent = content::parse(&delivery.content)?;
        let sender = match &self.sender {
            Sender::From(from) => ("From", from.as_str()),
            Sender::Service(service) => ("MessagingServiceSid", service.as_str()),
        };
        Ok(Request::post(self.messages_url.clone())
            .basic_auth_secret(&self.credentials_secret)
            .header("accept", "application/json")
            .form(&[
                ("To", delivery.recipient.as_str()),
                sender,
                ("Body", sms.body.as_str()),
            ]))
    }
}

/// A config value, where an empty value counts as unset.
fn non_empty<'a>(config: &'a Config, key: &str) -> Option<&'a str> {
    config.get(key).map(str::trim).filter(|v| !v.is_empty())
}

/// The parts of a Twilio reply the adapter reads. Error bodies are
/// `{code, message, more_info, status}`; a reply that is not JSON (a proxy's error page) has
/// neither code nor message.
struct Reply {
    body: Value,
    code: Option<u64>,
    message: String,
}

impl Reply {
    fn read(response: &Response) -> Reply {
        let body = response.json().unwrap_or(Value::Null);
        // Twilio sends the code as a number; a string is accepted in case a proxy rewrote it.
        let code = body.get("code").and_then(|c| {
            c.as_u64()
                .or_else(|| c.as_str().and_then(|s| s.parse().ok()))
        });
        let message = body
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("no message")
            .to_string();
        Reply {
            body,
            code,
            message,
        }
    }

    /// `"21610: Attempt to send to unsubscribed recipient"`, or the HTTP status without a code.
    fn describe(&self, status: u16) -> String {
        match self.code {
            Some(code) => format!("{code}: {}", self.message),
            None => format!("HTTP {status}: {}", self.message),
        }
    }
}

/// Maps a Twilio reply to an outcome, by the Twilio error code where it decides and by the HTTP
/// status otherwise.
fn classify(response: &Response, reply: &Reply) -> Outcome {
    let status = response.status;
    if response.is_success() {
        return match reply.body.get("sid").and_then(Value::as_str) {
            Some(sid) if !sid.is_empty() => Outcome::delivered(sid),
            _ => Outcome::retry("success reply without a message sid", None),
        };
    }
    let retry_after = retry_after_ms(response.header("retry-after"));
    let why = reply.describe(status);
    match (status, reply.code) {
        (_, Some(code::INVALID_TO | code::NOT_MOBILE)) => Outcome::invalid_recipient(why),
        (429, _) | (_, Some(code::TOO_MANY_REQUESTS)) => Outcome::retry(why, retry_after),
        // Credentials are the operator's to fix, and no single delivery is at fault. Retrying
        // keeps every delivery: the router can fail over to another SMS vendor meanwhile, and
        // a corrected secret lets them through. Rejecting would dead-letter all SMS traffic.
        (401, _) | (_, Some(code::AUTHENTICATE)) => {
            Outcome::retry(format!("credentials refused: {why}"), None)
        }
        // The sender's queue drains at its send rate, so the same message succeeds later.
        (_, Some(code::FROM_QUEUE_FULL)) => Outcome::retry(why, retry_after),
        (500..=599, _) => Outcome::retry(why, retry_after),
        (400..=499, Some(code)) => Outcome::rejected(code.to_string(), reply.message.clone()),
        (400..=499, None) => Outcome::rejected(format!("HTTP_{status}"), why),
        // Twilio answers 2xx, 4xx or 5xx; anything else came from something in between, and a
        // later try may reach Twilio itself.
        _ => Outcome::retry(why, retry_after),
    }
}

/// A request that never got an answer may be retried; a denied host is a grant the operator has
/// to fix, and until then retrying keeps the delivery rather than dropping it.
fn transport_outcome(error: HttpError) -> Outcome {
    Outcome::retry(format!("http {error}"), None)
}

switchboard_sdk::export_adapter!(Twilio);
