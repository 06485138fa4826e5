//! Outbound HTTP, performed by the host.
//!
//! The host sends only to hosts the operator granted the plugin, pools connections (HTTP/2 where
//! the vendor speaks it), and cuts every request off at the call's deadline. Header values may
//! hold `{{secret:NAME}}` placeholders, filled in by the host as it sends.

use crate::bindings::switchboard::adapter::http as wit;
pub use crate::bindings::switchboard::adapter::http::{HttpError, Request, Response};

/// Sends one request and waits for the whole response.
pub fn send(request: Request) -> Result<Response, HttpError> {
    wit::send(&request)
}

/// Sends all requests concurrently; results come back in request order.
pub fn send_all(requests: Vec<Request>) -> Vec<Result<Response, HttpError>> {
    wit::send_all(&requests)
}

impl Request {
    /// Starts a request with `method` to `url`, no headers and no body.
    pub fn new(method: &str, url: impl Into<String>) -> Self {
        Request {
            method: method.to_string(),
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A `POST` to `url`.
    pub fn post(url: impl Into<String>) -> Self {
        Self::new("POST", url)
    }

    /// Adds a header. The value may hold `{{secret:NAME}}` placeholders.
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    /// Sets a JSON body and its content type.
    pub fn json(mut self, body: &serde_json::Value) -> Self {
        self.body = body.to_string().into_bytes();
        self.header("content-type", "application/json")
    }

    /// Sets an `application/x-www-form-urlencoded` body from key/value pairs.
    pub fn form(mut self, fields: &[(&str, &str)]) -> Self {
        self.body = form_urlencode(fields).into_bytes();
        self.header("content-type", "application/x-www-form-urlencoded")
    }
}

impl Response {
    /// The first header called `name`, compared without case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON, or `None` when it is not JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// True for 2xx statuses.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Encodes key/value pairs as `application/x-www-form-urlencoded`.
pub fn form_urlencode(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encodes everything but unreserved characters (RFC 3986), spaces as `+` as forms do.
/// Written here because a URL crate would add more to every plugin than this one function.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding_escapes_reserved_characters() {
        assert_eq!(
            form_urlencode(&[("To", "+8210 1234"), ("Body", "a&b=c")]),
            "To=%2B8210+1234&Body=a%26b%3Dc"
        );
    }
}
