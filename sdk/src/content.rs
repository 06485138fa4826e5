//! Typed views of a delivery's `content` JSON, one per kind of channel.

use serde::Deserialize;

/// Push content: `{title, body, data}`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PushContent {
    /// Notification title.
    #[serde(default)]
    pub title: Option<String>,
    /// Notification body.
    #[serde(default)]
    pub body: Option<String>,
    /// App data delivered with the notification.
    #[serde(default)]
    pub data: serde_json::Map<String, serde_json::Value>,
}

/// Template content: `{template, params}` (Alimtalk and other template channels).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TemplateContent {
    /// The vendor's template code.
    pub template: String,
    /// Values for the template's parameters.
    #[serde(default)]
    pub params: serde_json::Map<String, serde_json::Value>,
}

/// SMS content: `{body}`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SmsContent {
    /// The text to send.
    pub body: String,
}

/// Parses a delivery's content as `T`, with an error that says what is wrong.
pub fn parse<'a, T: Deserialize<'a>>(content: &'a str) -> Result<T, String> {
    serde_json::from_str(content).map_err(|e| format!("content does not match the channel: {e}"))
}

/// Flattens a data map into string values, as push vendors require: strings stay as they are,
/// everything else becomes its JSON text.
pub fn string_values(
    data: &serde_json::Map<String, serde_json::Value>,
) -> serde_json::Map<String, serde_json::Value> {
    data.iter()
        .map(|(k, v)| {
            let s = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), serde_json::Value::String(s))
        })
        .collect()
}
