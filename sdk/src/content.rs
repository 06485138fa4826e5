//! Typed views of a delivery's `content` JSON, one per kind of channel.
//!
//! The producer writes the content; the adapter parses it with [`parse`] and answers content that
//! does not parse with `Outcome::rejected("INVALID_CONTENT", why)`, without calling the vendor.
//!
//! ```
//! use switchboard_sdk::content::{self, SmsContent};
//!
//! let sms: Result<SmsContent, String> = content::parse(r#"{"title":"not sms"}"#);
//! assert!(sms.unwrap_err().contains("missing field `body`"));
//! ```

use serde::Deserialize;

/// Push content: `{title, body, data}`.
///
/// ```
/// use switchboard_sdk::content::{self, PushContent};
///
/// let push: PushContent = content::parse(r#"{"title":"Hi","data":{"order":7}}"#)?;
/// assert_eq!(push.title.as_deref(), Some("Hi"));
/// assert_eq!(push.body, None);
/// assert_eq!(push.data["order"], 7);
/// # Ok::<(), String>(())
/// ```
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
///
/// ```
/// use switchboard_sdk::content::{self, TemplateContent};
///
/// let t: TemplateContent = content::parse(r#"{"template":"WELCOME","params":{"name":"Kim"}}"#)?;
/// assert_eq!(t.template, "WELCOME");
/// assert_eq!(t.params["name"], "Kim");
/// # Ok::<(), String>(())
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TemplateContent {
    /// The vendor's template code.
    pub template: String,
    /// Values for the template's parameters.
    #[serde(default)]
    pub params: serde_json::Map<String, serde_json::Value>,
}

/// SMS content: `{body}`.
///
/// ```
/// use switchboard_sdk::content::{self, SmsContent};
///
/// let sms: SmsContent = content::parse(r#"{"body":"Your code is 1234"}"#)?;
/// assert_eq!(sms.body, "Your code is 1234");
/// # Ok::<(), String>(())
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SmsContent {
    /// The text to send.
    pub body: String,
}

/// Parses a delivery's content as `T`, with an error that says what is wrong.
///
/// ```
/// use switchboard_sdk::content::{self, SmsContent};
/// use switchboard_sdk::Outcome;
///
/// let outcome = match content::parse::<SmsContent>(r#"{"text":"wrong field"}"#) {
///     Ok(_) => Outcome::delivered("sent"),
///     Err(why) => Outcome::rejected("INVALID_CONTENT", why),
/// };
/// assert!(matches!(outcome, Outcome::Rejected(r) if r.code == "INVALID_CONTENT"));
/// ```
pub fn parse<'a, T: Deserialize<'a>>(content: &'a str) -> Result<T, String> {
    serde_json::from_str(content).map_err(|e| format!("content does not match the channel: {e}"))
}

/// Flattens a data map into string values, as push vendors require: strings stay as they are,
/// everything else becomes its JSON text.
///
/// ```
/// use serde_json::json;
/// use switchboard_sdk::content::string_values;
///
/// let data = json!({ "order": 7, "name": "Kim", "tags": ["a"] });
/// let flat = string_values(data.as_object().unwrap());
/// assert_eq!(serde_json::Value::Object(flat),
///            json!({ "order": "7", "name": "Kim", "tags": "[\"a\"]" }));
/// ```
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

/// [`string_values`] without the copy: serializes `data` with every value as a string (strings as
/// they are, everything else as its JSON text), borrowing the keys and string values instead of
/// building a new map of owned ones for every delivery. For request bodies written with
/// [`crate::http::Request::json_from`].
///
/// ```
/// use serde_json::json;
/// use switchboard_sdk::content::StringValues;
///
/// let data = json!({ "order": 7, "name": "Kim", "tags": ["a"] });
/// let written = serde_json::to_value(StringValues(data.as_object().unwrap())).unwrap();
/// assert_eq!(written, json!({ "order": "7", "name": "Kim", "tags": "[\"a\"]" }));
/// assert!(StringValues(&serde_json::Map::new()).is_empty());
/// ```
#[derive(Debug, Clone, Copy)]
pub struct StringValues<'a>(pub &'a serde_json::Map<String, serde_json::Value>);

impl StringValues<'_> {
    /// True when there is no entry to write.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl serde::Serialize for StringValues<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in self.0 {
            match value {
                serde_json::Value::String(text) => map.serialize_entry(key, text)?,
                other => map.serialize_entry(key, &other.to_string())?,
            }
        }
        map.end()
    }
}
