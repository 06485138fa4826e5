//! KakaoTalk Bizmessage Alimtalk through NHN Cloud, API v2.3 (template substitution send).
//!
//! Auth: the `X-Secret-Key` header, filled in by the host from the secret named by
//! `secret_key_secret`. The appkey is part of the path.
//!
//! A batch is grouped by template code: each group of up to 1000 recipients is one
//! `POST /alimtalk/v2.3/appkeys/{appkey}/messages`, and the groups are sent concurrently. NHN
//! answers HTTP 200 for most failures and puts them in the body: a failed `header` fails every
//! recipient of that request, a negative `resultCode` in `message.sendResults` fails that one
//! recipient. The mapping of codes to outcomes is in docs/vendors/alimtalk-nhn.md; what the two
//! NHN adapters share is in the `nhn-cloud` crate.
//!
//! Config keys: `appkey`, `sender_key` (required); `endpoint`, `secret_key_secret` (optional).

use nhn_cloud::{Groups, MAX_RECIPIENTS, Reply, WithoutCode};
use serde_json::{Map, Value, json};
use switchboard_sdk::classify::Classifier;
use switchboard_sdk::content::{self, TemplateContent};
use switchboard_sdk::{Adapter, Config, Delivery, Outcome, PluginInfo, PluginInfoExt};

const DEFAULT_ENDPOINT: &str = "https://api-alimtalk.cloud.toast.com";

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
        // Template code → the batch indexes that use it, in batch order.
        let mut groups = Groups::new(batch.len());
        let mut entries: Vec<Option<Value>> = vec![None; batch.len()];
        for (i, delivery) in batch.iter().enumerate() {
            let template: TemplateContent = match content::parse(&delivery.content) {
                Ok(t) => t,
                Err(why) => {
                    groups.settle(i, Outcome::rejected("INVALID_CONTENT", why));
                    continue;
                }
            };
            // NHN refuses the whole request for one blank recipientNo; keeping it out of the
            // request spares the rest of the group.
            if delivery.recipient.trim().is_empty() {
                groups.settle(i, Outcome::invalid_recipient("empty recipient number"));
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
            entries[i] = Some(Value::Object(recipient));
            groups.add(template.template, i);
        }
        let requests = groups
            .groups
            .iter()
            .map(|(code, indexes)| {
                let recipients: Vec<&Value> = indexes
                    .iter()
                    .filter_map(|&i| entries[i].as_ref())
                    .collect();
                self.send_request(code, &recipients)
            })
            .collect();
        groups.send(requests, &REPLY)
    }
}

impl Alimtalk {
    fn send_request(
        &self,
        template_code: &str,
        recipients: &[&Value],
    ) -> switchboard_sdk::http::Request {
        let body = json!({
            "senderKey": self.sender_key,
            "templateCode": template_code,
            "recipientList": recipients,
        });
        nhn_cloud::send_request(
            format!(
                "{}/alimtalk/v2.3/appkeys/{}/messages",
                self.endpoint, self.appkey
            ),
            &self.secret_key_secret,
            &body,
        )
    }
}

/// Alimtalk's reply. Failure codes are negative; those listed here are the ones this adapter
/// distinguishes, and every other one is a rejection carrying the code, since NHN uses negative
/// codes for request errors that a retry cannot fix (validation, template, sender profile,
/// credentials).
const REPLY: Reply = Reply {
    codes: Classifier::new()
        .success_when(nhn_cloud::header_ok)
        .error_code("/header/resultCode")
        .error_message("/header/resultMessage")
        // -9999 system error, -7000 the request to Kakao failed: both on the vendors' side.
        .retry_codes(&["-9999", "-7000"])
        // -5000 / -4019: the recipient number is invalid.
        .invalid_recipient_codes(&["-5000", "-4019"]),
    results: "/message/sendResults",
    request_id: "/message/requestId",
    without_code: WithoutCode::Retry,
};

switchboard_sdk::export_adapter!(Alimtalk);
