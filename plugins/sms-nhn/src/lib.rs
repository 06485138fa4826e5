//! SMS through NHN Cloud, API v3.0 (`sender/sms`).
//!
//! Auth: the `X-Secret-Key` header, filled in by the host from the secret named by
//! `secret_key_secret`. The appkey is part of the path.
//!
//! A batch is grouped by message text: each group of up to 1000 recipients is one
//! `POST /sms/v3.0/appKeys/{appKey}/sender/sms`, and the groups are sent concurrently. NHN
//! answers HTTP 200 for most failures and puts them in the body: a failed `header` fails every
//! recipient of that request, a negative `resultCode` in `body.data.sendResultList` fails that
//! one recipient. The mapping of codes to outcomes is in docs/vendors/sms-nhn.md; what the two NHN
//! adapters share is in the `nhn-cloud` crate.
//!
//! Config keys: `appkey`, `send_no` (required); `endpoint`, `secret_key_secret` (optional).

use nhn_cloud::{Groups, MAX_RECIPIENTS, Reply, WithoutCode};
use serde_json::{Value, json};
use switchboard_sdk::classify::Classifier;
use switchboard_sdk::content::{self, SmsContent};
use switchboard_sdk::{Adapter, Config, Delivery, Outcome, PluginInfo, PluginInfoExt};

const DEFAULT_ENDPOINT: &str = "https://api-sms.cloud.toast.com";

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
        // Message text → the batch indexes that send it, in batch order.
        let mut groups = Groups::new(batch.len());
        for (i, delivery) in batch.iter().enumerate() {
            let sms: SmsContent = match content::parse(&delivery.content) {
                Ok(sms) => sms,
                Err(why) => {
                    groups.settle(i, Outcome::rejected("INVALID_CONTENT", why));
                    continue;
                }
            };
            if delivery.recipient.trim().is_empty() {
                groups.settle(i, Outcome::invalid_recipient("empty recipient number"));
                continue;
            }
            groups.add(sms.body, i);
        }
        let requests = groups
            .groups
            .iter()
            .map(|(body, indexes)| {
                let recipients: Vec<&str> = indexes
                    .iter()
                    .map(|&i| batch[i].recipient.as_str())
                    .collect();
                self.send_request(body, &recipients)
            })
            .collect();
        groups.send(requests, &REPLY)
    }
}

impl NhnSms {
    fn send_request(&self, text: &str, recipients: &[&str]) -> switchboard_sdk::http::Request {
        let recipient_list: Vec<Value> = recipients
            .iter()
            .map(|no| json!({ "recipientNo": no }))
            .collect();
        let body = json!({
            "body": text,
            "sendNo": self.send_no,
            "recipientList": recipient_list,
        });
        nhn_cloud::send_request(
            format!(
                "{}/sms/v3.0/appKeys/{}/sender/sms",
                self.endpoint, self.appkey
            ),
            &self.secret_key_secret,
            &body,
        )
    }
}

/// SMS's reply. Failure codes are negative; those listed here are the ones this adapter
/// distinguishes, and every other one is a rejection carrying the code, since NHN uses negative
/// codes for request errors that a retry cannot fix (validation, unregistered sender number,
/// credentials, opted-out recipients).
const REPLY: Reply = Reply {
    codes: Classifier::new()
        .success_when(nhn_cloud::header_ok)
        .error_code("/header/resultCode")
        .error_message("/header/resultMessage")
        // -9999 system error, -2021 the message could not be queued: both on NHN's side.
        .retry_codes(&["-9999", "-2021"])
        // -2018 empty, -2019 invalid recipient number.
        .invalid_recipient_codes(&["-2018", "-2019"]),
    results: "/body/data/sendResultList",
    request_id: "/body/data/requestId",
    // The guide marks a recipient's resultCode as nullable; a result without one was accepted
    // with the request.
    without_code: WithoutCode::Accepted,
};

switchboard_sdk::export_adapter!(NhnSms);
