//! Apple Push Notification service: the HTTP/2 provider API with token-based auth.
//!
//! Auth: a provider token, an ES256 JWT `{alg, kid: key_id}` `{iss: team_id, iat}` signed by
//! the host with the `.p8` key in secret `key_secret`. Apple refuses tokens older than an hour
//! and tokens replaced more often than every 20 minutes, so one token is kept in the cache for
//! 40 minutes and minted in `init`. Each delivery is one `POST /3/device/{token}`; a batch is
//! sent concurrently over the host's pooled HTTP/2 connection.
//!
//! Content: `{title, body, data}`, plus the optional `collapse_id` and `push_type` (`alert` or
//! `background`). `data` keys become custom top-level payload keys beside `aps`.
//!
//! Config keys: `team_id`, `key_id`, `topic` (required); `endpoint`, `key_secret`, `ttl_s`.

use serde_json::{Map, Value, json};
use switchboard_sdk::cache::{self, CachedToken};
use switchboard_sdk::content::{self, PushContent};
use switchboard_sdk::http::{self, Request, Response};
use switchboard_sdk::secrets::Algorithm;
use switchboard_sdk::{
    Adapter, Config, Delivery, Outcome, PluginInfo, PluginInfoExt, Priority, jwt, log,
    retry_after_ms,
};

const DEFAULT_ENDPOINT: &str = "https://api.push.apple.com";
const PROVIDER_TOKEN_KEY: &str = "apns-provider-token";
/// Apple accepts a token for an hour and wants it replaced no more than once every 20 minutes:
/// a token good for 60 minutes, refreshed 20 minutes early, is replaced every 40 minutes.
const PROVIDER_TOKEN: CachedToken = CachedToken::new(PROVIDER_TOKEN_KEY, 20 * 60 * 1000);
const PROVIDER_TOKEN_LIFETIME_MS: u64 = 60 * 60 * 1000;
/// How long APNs keeps trying an offline device by default: a day, after which a push about an
/// order or a chat is stale.
const DEFAULT_TTL_S: u64 = 24 * 60 * 60;

struct Apns {
    team_id: String,
    key_id: String,
    topic: String,
    endpoint: String,
    key_secret: String,
    ttl_s: u64,
}

impl Adapter for Apns {
    fn describe() -> PluginInfo {
        PluginInfo::new("apns", env!("CARGO_PKG_VERSION"), "push-ios")
            .max_batch(100)
            .wants_host("api.push.apple.com")
            .wants_host("api.sandbox.push.apple.com")
    }

    fn init(config: Config) -> Result<Self, String> {
        let ttl_s = match config.get("ttl_s") {
            Some(value) => value
                .trim()
                .parse()
                .map_err(|_| format!("config key `ttl_s` is not a number of seconds: {value}"))?,
            None => DEFAULT_TTL_S,
        };
        let apns = Apns {
            team_id: config.require("team_id")?.to_string(),
            key_id: config.require("key_id")?.to_string(),
            topic: config.require("topic")?.to_string(),
            endpoint: config
                .get_or("endpoint", DEFAULT_ENDPOINT)
                .trim_end_matches('/')
                .to_string(),
            key_secret: config.get_or("key_secret", "apns_key").to_string(),
            ttl_s,
        };
        // The host runs `init` once at load, before any traffic: minting the token here means
        // concurrent first calls find it cached instead of each minting one, which APNs would
        // answer with TooManyProviderTokenUpdates. Later instances hit the cache. A signing
        // failure only logs: `deliver` tries again, and reports it per delivery.
        if let Err(why) = PROVIDER_TOKEN.get_or_refresh(|| apns.mint_provider_token()) {
            log::warn(&format!("could not sign a provider token at init: {why}"));
        }
        Ok(apns)
    }

    fn deliver(&self, batch: Vec<Delivery>) -> Vec<Outcome> {
        let token = match PROVIDER_TOKEN.get_or_refresh(|| self.mint_provider_token()) {
            Ok(token) => token,
            Err(why) => {
                log::warn(&format!("no provider token: {why}"));
                return batch
                    .iter()
                    .map(|_| Outcome::retry(format!("provider token: {why}"), None))
                    .collect();
            }
        };
        let expiration = match self.ttl_s {
            // 0 tells APNs to try once and not store the notification.
            0 => 0,
            ttl => jwt::now_unix_s().saturating_add(ttl),
        };

        // Deliveries whose content does not parse are rejected without a request.
        let mut outcomes: Vec<Option<Outcome>> = vec![None; batch.len()];
        let mut requests = Vec::with_capacity(batch.len());
        let mut sent = Vec::with_capacity(batch.len());
        for (i, delivery) in batch.iter().enumerate() {
            let id = apns_id(&delivery.key);
            match self.push_request(delivery, &token, expiration, &id) {
                Ok(request) => {
                    requests.push(request);
                    sent.push((i, id));
                }
                Err(why) => outcomes[i] = Some(Outcome::rejected("INVALID_CONTENT", why)),
            }
        }

        let mut token_refused = false;
        for ((i, id), result) in sent.into_iter().zip(http::send_all(requests)) {
            let outcome = match result {
                Ok(response) => classify(&response, &id),
                // A request that never got an answer may be retried; a denied host is a grant
                // the operator has to fix, and until then retrying keeps the delivery.
                Err(error) => Classified::Outcome(Outcome::retry(format!("http {error}"), None)),
            };
            if let Classified::ProviderTokenRefused(_) = &outcome {
                token_refused = true;
            }
            outcomes[i] = Some(outcome.into());
        }
        // Only drop the token this call used: a concurrent call may already have replaced it,
        // and replacing that one too would be the kind of churn APNs refuses.
        if token_refused && cache::get(PROVIDER_TOKEN_KEY).as_deref() == Some(token.as_bytes()) {
            PROVIDER_TOKEN.invalidate();
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::retry("no outcome", None)))
            .collect()
    }
}

impl Apns {
    fn mint_provider_token(&self) -> Result<(String, u64), String> {
        let claims = json!({ "iss": self.team_id, "iat": jwt::now_unix_s() });
        let token = jwt::sign(
            Algorithm::Es256,
            &self.key_secret,
            &[("kid", &self.key_id)],
            &claims,
        )?;
        Ok((token, PROVIDER_TOKEN_LIFETIME_MS))
    }

    fn push_request(
        &self,
        delivery: &Delivery,
        token: &str,
        expiration: u64,
        id: &str,
    ) -> Result<Request, String> {
        let push: PushContent = content::parse(&delivery.content)?;
        let extras: Value = content::parse(&delivery.content)?;
        let optional_text = |name: &str| -> Result<Option<&str>, String> {
            match extras.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.as_str())),
                Some(_) => Err(format!("content field `{name}` must be a string")),
            }
        };
        let collapse_id = optional_text("collapse_id")?;
        let has_alert = push.title.is_some() || push.body.is_some();
        // Content without a title or body is data for the app: a background push.
        let push_type = match optional_text("push_type")? {
            Some(t @ ("alert" | "background")) => t,
            Some(other) => {
                return Err(format!(
                    "push_type `{other}` is not supported (alert, background)"
                ));
            }
            None if has_alert => "alert",
            None => "background",
        };

        let mut aps = Map::new();
        match push_type {
            "alert" => {
                let mut alert = Map::new();
                if let Some(title) = push.title {
                    alert.insert("title".into(), title.into());
                }
                if let Some(body) = push.body {
                    alert.insert("body".into(), body.into());
                }
                aps.insert("alert".into(), alert.into());
            }
            _ => {
                if has_alert {
                    return Err("a background push carries no title or body".into());
                }
                aps.insert("content-available".into(), 1.into());
            }
        }
        let mut payload = Map::new();
        payload.insert("aps".into(), aps.into());
        for (key, value) in push.data {
            if key == "aps" {
                return Err("data key `aps` is reserved by APNs".into());
            }
            payload.insert(key, value);
        }

        // Realtime alerts are sent at once; the rest may wait for the device's power state.
        // Apple does not allow priority 10 for background pushes.
        let priority = match (push_type, delivery.priority) {
            ("alert", Priority::Realtime) => "10",
            _ => "5",
        };
        let mut request =
            Request::post(format!("{}/3/device/{}", self.endpoint, delivery.recipient))
                .header("authorization", format!("bearer {token}"))
                .header("apns-topic", self.topic.clone())
                .header("apns-push-type", push_type)
                .header("apns-priority", priority)
                .header("apns-expiration", expiration.to_string())
                .header("apns-id", id);
        if let Some(collapse_id) = collapse_id {
            request = request.header("apns-collapse-id", collapse_id);
        }
        Ok(request.json(&Value::Object(payload)))
    }
}

/// The `apns-id` of a delivery: a UUID derived from its idempotency key, so every try of one
/// delivery carries the same id and APNs (and the device's logs) can tell a retry from a new
/// notification. It is a version-8 UUID (RFC 9562, vendor-specific bits) from two FNV-1a
/// hashes with different offsets, each finished with the splitmix64 mixer so every input bit
/// moves every output bit. Written here because a hashing crate would add more to the component
/// than these lines.
fn apns_id(key: &str) -> String {
    fn fnv1a(offset: u64, bytes: &[u8]) -> u64 {
        let hash = bytes.iter().fold(offset, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        let mut z = hash.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    let high = fnv1a(0xcbf2_9ce4_8422_2325, key.as_bytes());
    let low = fnv1a(0x6c62_272e_07bb_0142, key.as_bytes());
    let mut bits = (u128::from(high) << 64) | u128::from(low);
    bits = (bits & !(0xf << 76)) | (0x8 << 76); // version 8
    bits = (bits & !(0x3 << 62)) | (0x2 << 62); // RFC 9562 variant
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// An outcome, or the one case the adapter acts on itself: APNs refused our provider token.
enum Classified {
    Outcome(Outcome),
    ProviderTokenRefused(Outcome),
}

impl From<Classified> for Outcome {
    fn from(c: Classified) -> Outcome {
        match c {
            Classified::Outcome(o) | Classified::ProviderTokenRefused(o) => o,
        }
    }
}

/// Maps an APNs reply to an outcome by its status and `reason`. The table is in
/// docs/vendors/apns.md.
fn classify(response: &Response, sent_id: &str) -> Classified {
    if response.status == 200 {
        // APNs echoes the apns-id it was given; the one sent stands in if a proxy dropped it.
        let id = response.header("apns-id").unwrap_or(sent_id);
        return Classified::Outcome(Outcome::delivered(id));
    }
    let body = response.json().unwrap_or(Value::Null);
    let reason = body
        .get("reason")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let retry_after = retry_after_ms(response.header("retry-after"));
    let outcome = match (response.status, reason.as_str()) {
        (410, _) => {
            let since = match body.get("timestamp").and_then(Value::as_u64) {
                Some(ms) => format!(" (no longer valid since {ms} ms after the epoch)"),
                None => String::new(),
            };
            Outcome::invalid_recipient(format!("{}{since}", non_empty(&reason, "Unregistered")))
        }
        // A stale token is replaced and the delivery tried again. An invalid one is replaced
        // too, so a key the operator has since fixed takes effect at once; until then the
        // delivery is kept rather than dead-lettered for a fault that is not its own.
        (403, "ExpiredProviderToken" | "InvalidProviderToken") => {
            return Classified::ProviderTokenRefused(Outcome::retry(
                format!("provider token refused: {reason}"),
                None,
            ));
        }
        (429, _) => Outcome::retry(non_empty(&reason, "TooManyRequests"), retry_after),
        (500..=599, _) => Outcome::retry(non_empty(&reason, "ServiceUnavailable"), retry_after),
        (status, _) if reason.is_empty() => {
            Outcome::rejected(format!("HTTP_{status}"), "APNs gave no reason")
        }
        (status, _) => Outcome::rejected(reason.as_str(), format!("APNs answered {status}")),
    };
    Classified::Outcome(outcome)
}

fn non_empty(reason: &str, fallback: &str) -> String {
    if reason.is_empty() { fallback } else { reason }.to_string()
}

switchboard_sdk::export_adapter!(Apns);

#[cfg(test)]
mod tests {
    use super::apns_id;

    #[test]
    fn apns_ids_are_stable_uuids() {
        let id = apns_id("req-8f2c/0");
        assert_eq!(id, apns_id("req-8f2c/0"));
        assert_ne!(id, apns_id("req-8f2c/1"));
        let groups: Vec<&str> = id.split('-').collect();
        assert_eq!(
            groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(groups[2].starts_with('8'));
        assert!(matches!(groups[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'));
        assert_eq!(id, id.to_ascii_lowercase());
    }
}
