//! Fallback channels: a delivery that failed permanently on its channel is re-sent on another,
//! e.g. Alimtalk to someone who is not a KakaoTalk user goes out as SMS.
//!
//! Owns turning the failed delivery's content into the fallback channel's content. The fallback
//! delivery gets its own idempotency key (`{key}~{channel}`), so it is deduplicated on its own:
//! a redelivered request re-sends neither the Alimtalk message nor its SMS twice. A fallback
//! delivery never falls back again ([`is_fallback_key`]): its permanent failure goes to the DLQ.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::config::{FallbackConfig, FallbackOn};
use crate::contract::Outcome;

/// The fallback delivery's idempotency key.
pub fn fallback_key(key: &str, channel: &str) -> String {
    format!("{key}~{channel}")
}

/// True when `key` was made by [`fallback_key`]: the delivery already came through a fallback
/// and must not fall back again, so every chain ends in the DLQ after one hop, even if a cycle
/// got past config validation. Delivery keys end in `/{index}` (`Envelope::delivery_key`), so a
/// `~` after the last `/` can only come from [`fallback_key`], whatever the request id holds
/// (a fallback channel named with a `/` would hide it; channel names are plain words).
pub fn is_fallback_key(key: &str) -> bool {
    key.rsplit('/')
        .next()
        .is_some_and(|last| last.contains('~'))
}

/// True when `outcome` sends a delivery of a channel with `fallback` to the fallback channel.
pub fn applies(fallback: &FallbackConfig, outcome: &Outcome) -> bool {
    let on = match outcome {
        Outcome::Rejected(_) => FallbackOn::Rejected,
        Outcome::InvalidRecipient(_) => FallbackOn::InvalidRecipient,
        Outcome::Delivered(_) | Outcome::Retry(_) => return false,
    };
    fallback.on.contains(&on)
}

/// The fallback channel's content (`{"body": text}`) for a delivery whose content was
/// `{"template": code, "params": {..}}`: the configured text for the template with each
/// `#{name}` replaced by its param. Content of another shape is sent as its `body` field, or
/// refused with the reason.
pub fn render(fallback: &FallbackConfig, content: &str) -> Result<String, String> {
    let value: Value =
        serde_json::from_str(content).map_err(|e| format!("content is not JSON: {e}"))?;
    let text = match value.get("template").and_then(Value::as_str) {
        Some(code) => {
            let params: BTreeMap<String, String> = value
                .get("params")
                .and_then(Value::as_object)
                .map(|params| {
                    params
                        .iter()
                        .map(|(k, v)| (k.clone(), scalar_text(v)))
                        .collect()
                })
                .unwrap_or_default();
            match fallback.templates.get(code) {
                Some(template) => fill(template, &params),
                None => std::iter::once(code.to_string())
                    .chain(params.into_values())
                    .collect::<Vec<_>>()
                    .join(" "),
            }
        }
        None => value
            .get("body")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or("content has neither `template` nor `body`")?,
    };
    Ok(serde_json::json!({ "body": text }).to_string())
}

fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Replaces each `#{name}` in `template` with its param; unknown names are left as they are.
fn fill(template: &str, params: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("#{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                let name = &after[..end];
                match params.get(name) {
                    Some(value) => out.push_str(value),
                    None => out.push_str(&rest[start..start + 2 + end + 1]),
                }
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::Rejection;

    fn fallback() -> FallbackConfig {
        FallbackConfig {
            channel: "sms".into(),
            on: vec![FallbackOn::Rejected, FallbackOn::InvalidRecipient],
            templates: BTreeMap::from([(
                "ORDER_SHIPPED".into(),
                "Order #{order} ships #{when}. #{missing}".into(),
            )]),
        }
    }

    #[test]
    fn templates_are_filled_from_params() -> Result<(), String> {
        let content = r#"{"template":"ORDER_SHIPPED","params":{"order":"A-1","when":3}}"#;
        assert_eq!(
            render(&fallback(), content)?,
            r#"{"body":"Order A-1 ships 3. #{missing}"}"#
        );
        let unknown = r#"{"template":"OTHER","params":{"a":"x","b":"y"}}"#;
        assert_eq!(render(&fallback(), unknown)?, r#"{"body":"OTHER x y"}"#);
        assert_eq!(render(&fallback(), r#"{"body":"hi"}"#)?, r#"{"body":"hi"}"#);
        assert!(render(&fallback(), "[1]").is_err());
        assert!(render(&fallback(), "not json").is_err());
        Ok(())
    }

    #[test]
    fn only_the_configured_permanent_outcomes_fall_back() {
        let mut config = fallback();
        let rejected = Outcome::Rejected(Rejection {
            code: "-3018".into(),
            reason: "not a KakaoTalk user".into(),
        });
        let invalid = Outcome::InvalidRecipient("gone".into());
        assert!(applies(&config, &rejected));
        assert!(applies(&config, &invalid));
        assert!(!applies(&config, &Outcome::Delivered("id".into())));
        config.on = vec![FallbackOn::InvalidRecipient];
        assert!(!applies(&config, &rejected));
        assert_eq!(fallback_key("req-1/0", "sms"), "req-1/0~sms");
    }

    #[test]
    fn fallback_keys_are_told_from_delivery_keys() {
        for (key, channel) in [
            ("req-1", "sms"),
            ("a~b/c", "sms"),
            ("x", "123"),
            ("o~1/2", "lms"),
        ] {
            let delivery = format!("{key}/0");
            assert!(!is_fallback_key(&delivery), "{delivery} is a delivery key");
            let fell_back = fallback_key(&delivery, channel);
            assert!(is_fallback_key(&fell_back), "{fell_back} is a fallback key");
        }
    }
}
