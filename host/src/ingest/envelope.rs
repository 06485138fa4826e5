//! The Kafka envelope: one JSON notification request per record, decoded and checked here.
//!
//! Owns the rules a record must meet before any vendor is called; never panics on input, and
//! every refusal says why, so the record can be counted and logged with its coordinates.

use serde::Deserialize;
use time::OffsetDateTime;

use std::sync::Arc;

use crate::contract::{Priority, SharedDelivery};

/// The most recipients one request may hold.
pub const MAX_RECIPIENTS: usize = 1000;

/// Why a record is not a usable request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("record has no value")]
    Empty,
    #[error("record is {size} bytes, over the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("record is not a valid envelope: {0}")]
    Malformed(String),
    #[error("envelope `id` is empty")]
    EmptyId,
    #[error("envelope has no recipients")]
    NoRecipients,
    #[error("envelope has {0} recipients, over the limit of {MAX_RECIPIENTS}")]
    TooManyRecipients(usize),
    #[error("envelope `content` must be a JSON object")]
    ContentNotObject,
    #[error("envelope `content` nests deeper than {MAX_CONTENT_DEPTH} levels")]
    ContentTooDeep,
}

/// The deepest nesting of objects and arrays a request's content may have: serde_json's own
/// limit, which refused deeper content while the host still built it into values.
pub const MAX_CONTENT_DEPTH: usize = 128;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum WirePriority {
    Realtime,
    Batch,
    Ads,
}

#[derive(Debug, Deserialize)]
struct WireRecipient {
    to: String,
}

#[derive(Debug, Deserialize)]
struct WireEnvelope<'a> {
    id: String,
    channel: String,
    #[serde(default = "default_priority")]
    priority: WirePriority,
    recipients: Vec<WireRecipient>,
    /// As the producer wrote it: checked as JSON while read, but not built into a tree of
    /// values only to be written out again for the plugin.
    #[serde(borrow)]
    content: &'a serde_json::value::RawValue,
    #[serde(default, with = "time::serde::rfc3339::option")]
    expires_at: Option<OffsetDateTime>,
}

/// Whether `json`, already read as valid JSON, nests objects and arrays deeper than `limit`.
/// By hand rather than by building values: it is one pass over the bytes, allocating nothing,
/// where serde_json reads a raw value without any depth limit.
fn nests_deeper_than(json: &str, limit: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for byte in json.bytes() {
        match (in_string, byte) {
            (true, _) if escaped => escaped = false,
            (true, b'\\') => escaped = true,
            (true, b'"') => in_string = false,
            (true, _) => {}
            (false, b'"') => in_string = true,
            (false, b'{' | b'[') => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            (false, b'}' | b']') => depth = depth.saturating_sub(1),
            (false, _) => {}
        }
    }
    false
}

/// Requests that do not say are batch traffic: only an explicit `realtime` jumps the queue.
fn default_priority() -> WirePriority {
    WirePriority::Batch
}

/// A decoded notification request.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub id: String,
    pub channel: String,
    pub priority: Priority,
    pub recipients: Vec<String>,
    /// The channel content as the record holds it (a JSON object), shared by every recipient's
    /// delivery.
    pub content: Arc<str>,
    pub expires_at: Option<OffsetDateTime>,
}

impl Envelope {
    /// Decodes and checks a record value.
    pub fn decode(value: Option<&[u8]>, max_bytes: usize) -> Result<Envelope, EnvelopeError> {
        let bytes = value.ok_or(EnvelopeError::Empty)?;
        if bytes.len() > max_bytes {
            return Err(EnvelopeError::TooLarge {
                size: bytes.len(),
                limit: max_bytes,
            });
        }
        let wire: WireEnvelope =
            serde_json::from_slice(bytes).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        if wire.id.trim().is_empty() {
            return Err(EnvelopeError::EmptyId);
        }
        if wire.recipients.is_empty() {
            return Err(EnvelopeError::NoRecipients);
        }
        if wire.recipients.len() > MAX_RECIPIENTS {
            return Err(EnvelopeError::TooManyRecipients(wire.recipients.len()));
        }
        // A raw value starts at its first character: an object starts with `{`.
        if !wire.content.get().starts_with('{') {
            return Err(EnvelopeError::ContentNotObject);
        }
        if nests_deeper_than(wire.content.get(), MAX_CONTENT_DEPTH) {
            return Err(EnvelopeError::ContentTooDeep);
        }
        Ok(Envelope {
            id: wire.id,
            channel: wire.channel,
            priority: match wire.priority {
                WirePriority::Realtime => Priority::Realtime,
                WirePriority::Batch => Priority::Batch,
                WirePriority::Ads => Priority::Ads,
            },
            recipients: wire.recipients.into_iter().map(|r| r.to).collect(),
            content: Arc::from(wire.content.get()),
            expires_at: wire.expires_at,
        })
    }

    /// True when the request's `expires_at` has passed.
    pub fn is_expired(&self, now: OffsetDateTime) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// The idempotency key of recipient `index`: the request id and the index.
    pub fn delivery_key(&self, index: usize) -> String {
        format!("{}/{}", self.id, index)
    }

    /// One delivery per recipient, first attempt, all sharing the request's one content.
    pub fn deliveries(&self) -> impl Iterator<Item = SharedDelivery> + '_ {
        self.recipients
            .iter()
            .enumerate()
            .map(|(i, to)| SharedDelivery {
                key: self.delivery_key(i),
                recipient: to.clone(),
                content: self.content.clone(),
                priority: self.priority,
                attempt: 1,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(s: &str) -> Result<Envelope, EnvelopeError> {
        Envelope::decode(Some(s.as_bytes()), 1 << 20)
    }

    #[test]
    fn brief_example_decodes() -> Result<(), EnvelopeError> {
        let env = decode(
            r#"{"id":"req-8f2c","channel":"sms","priority":"realtime",
                "recipients":[{"to":"+821012345678"},{"to":"+821087654321"}],
                "content":{"body":"Your order is on its way"},
                "expires_at":"2026-11-22T10:00:00Z"}"#,
        )?;
        assert_eq!(env.priority, Priority::Realtime);
        assert_eq!(env.recipients.len(), 2);
        assert_eq!(env.delivery_key(1), "req-8f2c/1");
        let keys: Vec<String> = env.deliveries().map(|d| d.key).collect();
        assert_eq!(keys, vec!["req-8f2c/0", "req-8f2c/1"]);
        Ok(())
    }

    #[test]
    fn bad_records_are_refused_with_reasons() {
        assert_eq!(Envelope::decode(None, 10).err(), Some(EnvelopeError::Empty));
        assert!(matches!(
            Envelope::decode(Some(&[b'x'; 11]), 10),
            Err(EnvelopeError::TooLarge {
                size: 11,
                limit: 10
            })
        ));
        assert!(matches!(
            decode("{not json"),
            Err(EnvelopeError::Malformed(_))
        ));
        assert!(matches!(
            decode(r#"{"id":"a","channel":"sms","priority":"urgent","recipients":[{"to":"1"}],"content":{}}"#),
            Err(EnvelopeError::Malformed(m)) if m.contains("urgent")
        ));
        assert_eq!(
            decode(r#"{"id":"a","channel":"sms","recipients":[],"content":{}}"#).err(),
            Some(EnvelopeError::NoRecipients)
        );
        assert_eq!(
            decode(r#"{"id":" ","channel":"sms","recipients":[{"to":"1"}],"content":{}}"#).err(),
            Some(EnvelopeError::EmptyId)
        );
        assert_eq!(
            decode(r#"{"id":"a","channel":"sms","recipients":[{"to":"1"}],"content":"x"}"#).err(),
            Some(EnvelopeError::ContentNotObject)
        );
        assert!(Envelope::decode(Some(&[0xff, 0xfe]), 10).is_err());
    }

    #[test]
    fn too_many_recipients_is_refused() {
        let recipients = vec![r#"{"to":"1"}"#; MAX_RECIPIENTS + 1].join(",");
        let text =
            format!(r#"{{"id":"a","channel":"sms","recipients":[{recipients}],"content":{{}}}}"#);
        assert_eq!(
            decode(&text).err(),
            Some(EnvelopeError::TooManyRecipients(MAX_RECIPIENTS + 1))
        );
    }

    #[test]
    fn content_reaches_the_plugin_as_the_record_holds_it() -> Result<(), EnvelopeError> {
        let content = r#"{ "body": "caf\u00e9",  "n": 1.50, "body": "twice" }"#;
        let record = format!(
            r#"{{"id":"a","channel":"sms","recipients":[{{"to":"1"}}],"content": {content} }}"#
        );
        assert_eq!(&*decode(&record)?.content, content);
        // Still read as JSON: a content that does not parse refuses the record.
        let broken = r#"{"id":"a","channel":"sms","recipients":[{"to":"1"}],"content":{"body":}}"#;
        assert!(matches!(decode(broken), Err(EnvelopeError::Malformed(_))));
        Ok(())
    }

    #[test]
    fn content_nested_past_the_json_depth_limit_is_refused_at_ingest() -> Result<(), EnvelopeError>
    {
        // What serde_json refused when content was built into values: passed through raw, it
        // would reach the plugins, whose own parsers differ in how deep they go.
        let nested = |depth: usize| {
            let content = format!(r#"{{"data":{}1{}}}"#, "[".repeat(depth), "]".repeat(depth));
            format!(
                r#"{{"id":"a","channel":"sms","recipients":[{{"to":"1"}}],"content":{content}}}"#
            )
        };
        assert!(matches!(
            decode(&nested(100_000)),
            Err(EnvelopeError::ContentTooDeep)
        ));
        // Brackets inside strings are text, not nesting.
        let in_text = format!(
            r#"{{"id":"a","channel":"sms","recipients":[{{"to":"1"}}],"content":{{"body":"{}\"["}}}}"#,
            "[".repeat(1000)
        );
        decode(&in_text)?;
        decode(&nested(MAX_CONTENT_DEPTH - 1))?;
        Ok(())
    }

    #[test]
    fn every_recipient_shares_the_one_content() -> Result<(), EnvelopeError> {
        // A 100 KiB content for 1,000 recipients is held once, not 1,000 times (100 MB).
        let body = "b".repeat(100 << 10);
        let recipients = vec![r#"{"to":"1"}"#; MAX_RECIPIENTS].join(",");
        let text = format!(
            r#"{{"id":"a","channel":"sms","recipients":[{recipients}],"content":{{"body":"{body}"}}}}"#
        );
        let env = Envelope::decode(Some(text.as_bytes()), 1 << 20)?;
        let deliveries: Vec<SharedDelivery> = env.deliveries().collect();
        assert_eq!(deliveries.len(), MAX_RECIPIENTS);
        assert!(
            deliveries
                .iter()
                .all(|d| Arc::ptr_eq(&d.content, &env.content)),
            "a recipient got a content copy of its own"
        );
        Ok(())
    }

    #[test]
    fn expiry_is_checked_against_now() -> Result<(), EnvelopeError> {
        let env = decode(
            r#"{"id":"a","channel":"sms","recipients":[{"to":"1"}],"content":{},"expires_at":"2020-01-01T00:00:00Z"}"#,
        )?;
        assert!(env.is_expired(OffsetDateTime::now_utc()));
        Ok(())
    }
}
