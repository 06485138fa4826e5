//! Firebase Cloud Messaging, HTTP v1 API.
//!
//! Auth: a service-account JWT (RS256, signed by the host with the key in secret `key_secret`) is
//! exchanged at the token URI for an OAuth2 access token, which is cached until five minutes
//! before it expires. Each delivery is one `messages:send` request; a batch is sent concurrently.
//!
//! Config keys: `project_id`, `client_email` (required); `token_uri`, `endpoint`, `key_secret`.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use switchboard_sdk::cache::CachedToken;
use switchboard_sdk::content::{self, PushContent, StringValues};
use switchboard_sdk::http::{self, HttpError, Request, Response};
use switchboard_sdk::secrets::Algorithm;
use switchboard_sdk::{
    Adapter, Config, Delivery, Outcome, PluginInfo, PluginInfoExt, Priority, jwt, log,
    retry_after_ms,
};

const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
const DEFAULT_ENDPOINT: &str = "https://fcm.googleapis.com";
/// Google issues access tokens for an hour; refreshing five minutes early keeps every request
/// clear of the expiry even with clock skew.
const ACCESS_TOKEN: CachedToken = CachedToken::new("fcm-access-token", 5 * 60 * 1000);

/// The FCM adapter. Public so that a host can also link it natively, through
/// `switchboard_sdk::native::NativeAdapter::of::<Fcm>()`.
pub struct Fcm {
    project_id: String,
    client_email: String,
    token_uri: String,
    endpoint: String,
    key_secret: String,
}

impl Adapter for Fcm {
    fn describe() -> PluginInfo {
        PluginInfo::new("fcm", env!("CARGO_PKG_VERSION"), "push-android")
            .max_batch(100)
            .wants_host("oauth2.googleapis.com")
            .wants_host("fcm.googleapis.com")
    }

    fn init(config: Config) -> Result<Self, String> {
        let fcm = Fcm {
            project_id: config.require("project_id")?.to_string(),
            client_email: config.require("client_email")?.to_string(),
            token_uri: config.get_or("token_uri", DEFAULT_TOKEN_URI).to_string(),
            endpoint: config
                .get_or("endpoint", DEFAULT_ENDPOINT)
                .trim_end_matches('/')
                .to_string(),
            key_secret: config
                .get_or("key_secret", "service_account_key")
                .to_string(),
        };
        // The host runs `init` once when it loads the plugin, before any traffic: fetching the
        // token here means concurrent first calls find it cached instead of each fetching one.
        // On later instances this is a cache hit. A vendor that is down at load time is not a
        // reason to refuse the plugin, so a failure only logs; `deliver` tries again.
        if let Err(why) = ACCESS_TOKEN.get_or_refresh(|| fcm.fetch_access_token()) {
            log::warn(&format!("could not fetch an access token at init: {why}"));
        }
        Ok(fcm)
    }

    fn deliver(&self, batch: Vec<Delivery>) -> Vec<Outcome> {
        let token = match ACCESS_TOKEN.get_or_refresh(|| self.fetch_access_token()) {
            Ok(token) => token,
            Err(why) => {
                log::warn(&format!("no access token: {why}"));
                return batch
                    .iter()
                    .map(|_| Outcome::retry(format!("access token: {why}"), None))
                    .collect();
            }
        };

        // Deliveries whose content does not parse are rejected without a request.
        let mut outcomes: Vec<Option<Outcome>> = vec![None; batch.len()];
        let mut requests = Vec::with_capacity(batch.len());
        let mut sent_index = Vec::with_capacity(batch.len());
        // The same for every request of the call: made once, copied per request.
        let url = format!(
            "{}/v1/projects/{}/messages:send",
            self.endpoint, self.project_id
        );
        let authorization = format!("Bearer {token}");
        for (i, delivery) in batch.iter().enumerate() {
            match message_request(delivery, &url, &authorization) {
                Ok(request) => {
                    requests.push(request);
                    sent_index.push(i);
                }
                Err(why) => outcomes[i] = Some(Outcome::rejected("INVALID_CONTENT", why)),
            }
        }

        let mut token_rejected = false;
        for (i, result) in sent_index.into_iter().zip(http::send_all(requests)) {
            let outcome = match result {
                Ok(response) => classify(&response),
                Err(error) => transport_outcome(error),
            };
            if let Classified::TokenRejected(_) = &outcome {
                token_rejected = true;
            }
            outcomes[i] = Some(outcome.into());
        }
        if token_rejected {
            ACCESS_TOKEN.invalidate();
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::retry("no outcome", None)))
            .collect()
    }
}

impl Fcm {
    fn fetch_access_token(&self) -> Result<(String, u64), String> {
        let iat = jwt::now_unix_s();
        let claims = json!({
            "iss": self.client_email,
            "scope": SCOPE,
            "aud": self.token_uri,
            "iat": iat,
            "exp": iat + 3600,
        });
        let assertion = jwt::sign(Algorithm::Rs256, &self.key_secret, &[], &claims)?;
        let request = Request::post(self.token_uri.clone()).form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", &assertion),
        ]);
        let response = http::send(request).map_err(|e| e.to_string())?;
        let body = response.json().unwrap_or(Value::Null);
        if !response.is_success() {
            return Err(format!(
                "token endpoint answered {}: {}",
                response.status,
                body.get("error_description")
                    .or_else(|| body.get("error"))
                    .and_then(Value::as_str)
                    .unwrap_or("no reason given")
            ));
        }
        let token = body
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or("token endpoint reply has no access_token")?;
        let expires_in_s = body
            .get("expires_in")
            .and_then(Value::as_u64)
            .unwrap_or(3600);
        Ok((token.to_string(), expires_in_s * 1000))
    }
}

/// The `messages:send` body, written straight from the delivery's parsed content: the fields
/// borrow from it, so no tree of owned JSON values is built per delivery (`Request::json_from`).
#[derive(Serialize)]
struct SendBody<'a> {
    message: Message<'a>,
}

#[derive(Serialize)]
struct Message<'a> {
    token: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    notification: Option<Notification<'a>>,
    #[serde(skip_serializing_if = "StringValues::is_empty")]
    data: StringValues<'a>,
    android: Android,
}

#[derive(Serialize)]
struct Notification<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a str>,
}

#[derive(Serialize)]
struct Android {
    priority: &'static str,
}

/// The one field of a success reply the adapter reads, borrowed from the reply.
#[derive(Deserialize)]
struct Sent<'a> {
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
}

fn message_request(delivery: &Delivery, url: &str, authorization: &str) -> Result<Request, String> {
    let push: PushContent = content::parse(&delivery.content)?;
    let notification = (push.title.is_some() || push.body.is_some()).then_some(Notification {
        title: push.title.as_deref(),
        body: push.body.as_deref(),
    });
    // Realtime pushes wake the device; batch and ads traffic may wait for it.
    let priority = match delivery.priority {
        Priority::Realtime => "high",
        Priority::Batch | Priority::Ads => "normal",
    };
    let body = SendBody {
        message: Message {
            token: &delivery.recipient,
            notification,
            data: StringValues(&push.data),
            android: Android { priority },
        },
    };
    Request::post(url)
        .header("authorization", authorization)
        .json_from(&body)
}

/// An outcome, or the one case the adapter acts on itself: our access token was refused.
enum Classified {
    Outcome(Outcome),
    TokenRejected(Outcome),
}

impl From<Classified> for Outcome {
    fn from(c: Classified) -> Outcome {
        match c {
            Classified::Outcome(o) | Classified::TokenRejected(o) => o,
        }
    }
}

/// Maps an FCM reply to an outcome, by the `errorCode` in the error details when present and by
/// the HTTP status otherwise. The table is in docs/PLUGINS.md.
fn classify(response: &Response) -> Classified {
    if response.is_success() {
        return Classified::Outcome(
            match response.json_as::<Sent>().and_then(|sent| sent.name) {
                Some(name) => Outcome::delivered(name),
                None => Outcome::retry("success reply without a message name", None),
            },
        );
    }
    let body = response.json().unwrap_or(Value::Null);
    let error = body.get("error").cloned().unwrap_or(Value::Null);
    let status = error.get("status").and_then(Value::as_str).unwrap_or("");
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("no message")
        .to_string();
    let error_code = error
        .get("details")
        .and_then(Value::as_array)
        .and_then(|details| {
            details
                .iter()
                .find_map(|d| d.get("errorCode").and_then(Value::as_str))
        })
        .unwrap_or(status)
        .to_string();
    let retry_after = retry_after_ms(response.header("retry-after"));
    let outcome = match (response.status, error_code.as_str()) {
        (_, "UNREGISTERED") | (404, _) => Outcome::invalid_recipient(message),
        (401, "THIRD_PARTY_AUTH_ERROR") => Outcome::rejected("THIRD_PARTY_AUTH_ERROR", message),
        (401, _) => {
            return Classified::TokenRejected(Outcome::retry(
                format!("access token refused: {message}"),
                None,
            ));
        }
        (403, code) => Outcome::rejected(non_empty(code, "SENDER_ID_MISMATCH"), message),
        (429, code) => Outcome::retry(
            format!("{}: {message}", non_empty(code, "QUOTA_EXCEEDED")),
            retry_after,
        ),
        (500..=599, code) => Outcome::retry(
            format!("{}: {message}", non_empty(code, "UNAVAILABLE")),
            retry_after,
        ),
        (400, code) => Outcome::rejected(non_empty(code, "INVALID_ARGUMENT"), message),
        (status, code) => Outcome::rejected(non_empty(code, &format!("HTTP_{status}")), message),
    };
    Classified::Outcome(outcome)
}

fn non_empty<'a>(code: &'a str, fallback: &'a str) -> &'a str {
    if code.is_empty() { fallback } else { code }
}

/// A request that never got an answer may be retried; a denied host is a grant the operator has
/// to fix, and until then retrying keeps the delivery rather than dropping it.
fn transport_outcome(error: HttpError) -> Classified {
    Classified::Outcome(Outcome::retry(format!("http {error}"), None))
}

#[cfg(feature = "export")]
switchboard_sdk::export_adapter!(Fcm);
