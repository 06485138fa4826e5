//! Outbound HTTP, performed by the host.
//!
//! The host sends only to hosts the operator granted the plugin, pools connections (HTTP/2 where
//! the vendor speaks it), and cuts every request off at the call's deadline. Header values may
//! hold `{{secret:NAME}}` placeholders, filled in by the host as it sends.
//!
//! Build a [`Request`] with its builder methods, send it with [`send`] or [`send_all`], and read
//! the [`Response`] with [`Response::json`] and [`Response::header`]; [`crate::classify`] turns a
//! response into an outcome.
//!
//! ```no_run
//! use switchboard_sdk::http::{self, Request};
//!
//! let request = Request::post("https://api.acme.example/v1/messages")
//!     .header("x-api-key", switchboard_sdk::secrets::placeholder("api_key"))
//!     .json(&serde_json::json!({ "to": "+15550100", "text": "hi" }));
//! match http::send(request) {
//!     Ok(response) if response.is_success() => {}
//!     Ok(response) => eprintln!("refused with {}", response.status),
//!     Err(error) => eprintln!("not sent: {error}"),
//! }
//! ```

/// Why a request got no response: `Denied` (the host is not granted, or a placeholder names a
/// secret the plugin does not own), `Timeout` (the call's deadline passed), `Connect` or
/// `Protocol`. It implements `Display`.
///
/// ```
/// use switchboard_sdk::http::HttpError;
/// use switchboard_sdk::Outcome;
///
/// // Every transport error is worth a retry: a denied host is the operator's to fix, and until
/// // then retrying keeps the delivery rather than dropping it.
/// fn transport_outcome(error: HttpError) -> Outcome {
///     Outcome::retry(format!("http {error}"), None)
/// }
/// assert!(matches!(transport_outcome(HttpError::Timeout), Outcome::Retry(_)));
/// ```
#[doc(inline)]
pub use crate::bindings::switchboard::adapter::http::HttpError;

/// An outbound request: `method`, absolute `url`, `headers` (values may hold
/// `{{secret:NAME}}`) and `body`. Build it with [`Request::post`] and the other builder methods.
///
/// ```
/// use switchboard_sdk::http::Request;
///
/// let request = Request::post("https://api.acme.example/v1/messages")
///     .basic_auth_secret("acme_basic")
///     .form(&[("to", "+15550100"), ("text", "hi")]);
/// assert_eq!(request.headers.len(), 2);
/// ```
#[doc(inline)]
pub use crate::bindings::switchboard::adapter::http::Request;

/// A vendor's reply: `status`, `headers` and the whole `body` (at most 8 MiB).
///
/// ```
/// use switchboard_sdk::http::Response;
///
/// let response = Response { status: 200, headers: vec![], body: br#"{"sid":"SM1"}"#.to_vec() };
/// assert_eq!(response.json().unwrap()["sid"], "SM1");
/// ```
#[doc(inline)]
pub use crate::bindings::switchboard::adapter::http::Response;

/// Sends one request and waits for the whole response.
///
/// An `Err` means no response arrived: the host is not granted ([`HttpError::Denied`]), the
/// call's deadline passed, or the connection failed. Adapters usually answer it with a retry.
///
/// ```no_run
/// use switchboard_sdk::http::{self, Request};
/// use switchboard_sdk::Outcome;
///
/// let outcome = match http::send(Request::get("https://api.acme.example/v1/health")) {
///     Ok(response) if response.is_success() => Outcome::delivered("ok"),
///     Ok(response) => Outcome::rejected(format!("HTTP_{}", response.status), "unhealthy"),
///     Err(error) => Outcome::retry(format!("http {error}"), None),
/// };
/// # let _ = outcome;
/// ```
pub fn send(request: Request) -> Result<Response, HttpError> {
    crate::imports::send(request)
}

/// Sends all requests concurrently; results come back in request order.
///
/// This is how an adapter without a batch API delivers a batch: one request per delivery, all in
/// flight at once, within the one call deadline.
///
/// ```no_run
/// use switchboard_sdk::http::{self, Request};
///
/// let requests = ["+15550100", "+15550101"]
///     .iter()
///     .map(|to| {
///         Request::post("https://api.acme.example/v1/messages")
///             .json(&serde_json::json!({ "to": to, "text": "hi" }))
///     })
///     .collect();
/// for result in http::send_all(requests) {
///     println!("{:?}", result.map(|response| response.status));
/// }
/// ```
pub fn send_all(requests: Vec<Request>) -> Vec<Result<Response, HttpError>> {
    crate::imports::send_all(requests)
}

impl Request {
    /// Starts a request with `method` to `url`, no headers and no body.
    ///
    /// ```
    /// use switchboard_sdk::http::Request;
    ///
    /// let request = Request::new("PUT", "https://api.acme.example/v1/contacts/7");
    /// assert_eq!(request.method, "PUT");
    /// assert!(request.headers.is_empty() && request.body.is_empty());
    /// ```
    pub fn new(method: &str, url: impl Into<String>) -> Self {
        Request {
            method: method.to_string(),
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A `POST` to `url`.
    ///
    /// ```
    /// use switchboard_sdk::http::Request;
    ///
    /// assert_eq!(Request::post("https://api.acme.example/v1/messages").method, "POST");
    /// ```
    pub fn post(url: impl Into<String>) -> Self {
        Self::new("POST", url)
    }

    /// A `GET` of `url`.
    ///
    /// ```
    /// use switchboard_sdk::http::Request;
    ///
    /// let request = Request::get("https://api.acme.example/v1/messages/42");
    /// assert_eq!((request.method.as_str(), request.url.as_str()),
    ///            ("GET", "https://api.acme.example/v1/messages/42"));
    /// ```
    pub fn get(url: impl Into<String>) -> Self {
        Self::new("GET", url)
    }

    /// Adds a header. The value may hold `{{secret:NAME}}` placeholders.
    ///
    /// ```
    /// use switchboard_sdk::http::Request;
    /// use switchboard_sdk::secrets;
    ///
    /// let request = Request::post("https://api.acme.example/v1/messages")
    ///     .header("x-api-key", secrets::placeholder("api_key"))
    ///     .header("accept", "application/json");
    /// assert_eq!(request.headers[0], ("x-api-key".into(), "{{secret:api_key}}".into()));
    /// ```
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    /// Sets the body as it is, for content types the other builders do not cover; set the
    /// `content-type` header yourself.
    ///
    /// ```
    /// use switchboard_sdk::http::Request;
    ///
    /// let body = serde_json::json!({ "body": "안녕하세요" });
    /// let request = Request::post("https://api-sms.example/send")
    ///     .header("Content-Type", "application/json;charset=UTF-8")
    ///     .body(body.to_string());
    /// assert_eq!(request.body, body.to_string().into_bytes());
    /// ```
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Sets a JSON body and its content type.
    ///
    /// ```
    /// use switchboard_sdk::http::Request;
    ///
    /// let request = Request::post("https://api.acme.example/v1/messages")
    ///     .json(&serde_json::json!({ "to": "+15550100" }));
    /// assert_eq!(request.body, br#"{"to":"+15550100"}"#);
    /// assert!(request.headers.contains(&("content-type".into(), "application/json".into())));
    /// ```
    pub fn json(mut self, body: &serde_json::Value) -> Self {
        self.body = body.to_string().into_bytes();
        self.header("content-type", "application/json")
    }

    /// Sets a JSON body written straight from any `Serialize` value, such as a struct of fields
    /// borrowed from the delivery, and its content type. Cheaper per request than [`Self::json`],
    /// which needs a `serde_json::Value` built first: that is a tree of owned strings and maps,
    /// allocated and copied for every delivery. Fails only for values JSON cannot hold, such as a
    /// map whose keys are not strings.
    ///
    /// ```
    /// use switchboard_sdk::http::Request;
    ///
    /// #[derive(serde::Serialize)]
    /// struct Send<'a> { to: &'a str }
    ///
    /// let request = Request::post("https://api.acme.example/v1/messages")
    ///     .json_from(&Send { to: "+15550100" })?;
    /// assert_eq!(request.body, br#"{"to":"+15550100"}"#);
    /// assert!(request.headers.contains(&("content-type".into(), "application/json".into())));
    /// # Ok::<(), String>(())
    /// ```
    pub fn json_from<T: serde::Serialize + ?Sized>(mut self, body: &T) -> Result<Self, String> {
        self.body = serde_json::to_vec(body).map_err(|e| format!("JSON body: {e}"))?;
        Ok(self.header("content-type", "application/json"))
    }

    /// Sets an `application/x-www-form-urlencoded` body from key/value pairs.
    ///
    /// ```
    /// use switchboard_sdk::http::Request;
    ///
    /// let request = Request::post("https://api.acme.example/v1/messages")
    ///     .form(&[("To", "+15550100"), ("Body", "hi there")]);
    /// assert_eq!(request.body, b"To=%2B15550100&Body=hi+there");
    /// ```
    pub fn form(mut self, fields: &[(&str, &str)]) -> Self {
        self.body = form_urlencode(fields).into_bytes();
        self.header("content-type", "application/x-www-form-urlencoded")
    }

    /// HTTP Basic auth with the credentials kept in secret `secret_name`: adds
    /// `authorization: Basic {{secret:NAME}}`. The secret holds the ready `base64("user:password")`
    /// (see [`crate::auth::basic_placeholder`]).
    ///
    /// ```
    /// use switchboard_sdk::http::Request;
    ///
    /// let request = Request::post("https://api.twilio.com/2010-04-01/Accounts/AC1/Messages.json")
    ///     .basic_auth_secret("basic_auth");
    /// assert_eq!(request.headers[0],
    ///            ("authorization".into(), "Basic {{secret:basic_auth}}".into()));
    /// ```
    pub fn basic_auth_secret(self, secret_name: &str) -> Self {
        self.header("authorization", crate::auth::basic_placeholder(secret_name))
    }

    /// Bearer auth with a token kept in secret `secret_name`: adds
    /// `authorization: Bearer {{secret:NAME}}`.
    ///
    /// ```
    /// use switchboard_sdk::http::Request;
    ///
    /// let request = Request::post("https://api.acme.example/v1/messages")
    ///     .bearer_auth_secret("api_token");
    /// assert_eq!(request.headers[0],
    ///            ("authorization".into(), "Bearer {{secret:api_token}}".into()));
    /// ```
    pub fn bearer_auth_secret(self, secret_name: &str) -> Self {
        self.header(
            "authorization",
            crate::auth::bearer_placeholder(secret_name),
        )
    }

    /// Bearer auth with a token the plugin holds itself, such as an OAuth access token it
    /// fetched and keeps in [`crate::cache`]: adds `authorization: Bearer {token}`.
    ///
    /// ```
    /// use switchboard_sdk::http::Request;
    ///
    /// let request = Request::post("https://fcm.googleapis.com/v1/projects/p/messages:send")
    ///     .bearer_auth("ya29.token");
    /// assert_eq!(request.headers[0], ("authorization".into(), "Bearer ya29.token".into()));
    /// ```
    pub fn bearer_auth(self, token: &str) -> Self {
        self.header("authorization", format!("Bearer {token}"))
    }

    /// Signs the request the way NAVER Cloud Platform's API Gateway wants (SENS and the other NCP
    /// APIs), at the current time: adds `x-ncp-apigw-timestamp`, `x-ncp-iam-access-key` and
    /// `x-ncp-apigw-signature-v2`. `access_key` is the access key id; `secret_key` names the
    /// secret holding the NCP secret key, which the host signs with. Call it last, once the
    /// method and URL are final. See [`crate::auth::sign_ncp_at`].
    ///
    /// ```no_run
    /// use switchboard_sdk::http::{self, Request};
    ///
    /// let request = Request::post("https://sens.apigw.ntruss.com/sms/v2/services/svc/messages")
    ///     .json(&serde_json::json!({ "type": "SMS", "from": "0212345678", "content": "hi",
    ///                                "messages": [{ "to": "01012345678" }] }))
    ///     .sign_ncp("AKID", "ncp_secret_key")?;
    /// let response = http::send(request);
    /// # let _ = response;
    /// # Ok::<(), String>(())
    /// ```
    pub fn sign_ncp(self, access_key: &str, secret_key: &str) -> Result<Self, String> {
        crate::auth::sign_ncp_at(self, access_key, secret_key, crate::jwt::now_unix_ms())
    }
}

impl Response {
    /// The first header called `name`, compared without case.
    ///
    /// ```
    /// use switchboard_sdk::http::Response;
    ///
    /// let response = Response {
    ///     status: 429,
    ///     headers: vec![("Retry-After".into(), "30".into())],
    ///     body: Vec::new(),
    /// };
    /// assert_eq!(response.header("retry-after"), Some("30"));
    /// assert_eq!(response.header("x-request-id"), None);
    /// ```
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON, or `None` when it is not JSON.
    ///
    /// ```
    /// use switchboard_sdk::http::Response;
    ///
    /// let response = Response { status: 200, headers: vec![], body: br#"{"id":"m-1"}"#.to_vec() };
    /// assert_eq!(response.json().unwrap()["id"], "m-1");
    /// let page = Response { status: 502, headers: vec![], body: b"<html>".to_vec() };
    /// assert!(page.json().is_none());
    /// ```
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The body parsed as `T`, or `None` when it does not parse as one. `T` may borrow from the
    /// body (`&str` fields, or `Cow<str>` for strings that may hold escapes), so reading one field
    /// of a reply copies nothing else, where [`Self::json`] builds the whole reply as owned
    /// values.
    ///
    /// ```
    /// use std::borrow::Cow;
    /// use switchboard_sdk::http::Response;
    ///
    /// #[derive(serde::Deserialize)]
    /// struct Sent<'a> { #[serde(borrow)] id: Cow<'a, str> }
    ///
    /// let response = Response { status: 200, headers: vec![], body: br#"{"id":"m-1","n":2}"#.to_vec() };
    /// assert_eq!(response.json_as::<Sent>().unwrap().id, "m-1");
    /// assert!(response.json_as::<Sent>().is_some());
    /// let page = Response { status: 502, headers: vec![], body: b"<html>".to_vec() };
    /// assert!(page.json_as::<Sent>().is_none());
    /// ```
    pub fn json_as<'a, T: serde::Deserialize<'a>>(&'a self) -> Option<T> {
        serde_json::from_slice(&self.body).ok()
    }

    /// True for 2xx statuses.
    ///
    /// ```
    /// use switchboard_sdk::http::Response;
    ///
    /// let accepted = Response { status: 202, headers: vec![], body: vec![] };
    /// let refused = Response { status: 400, headers: vec![], body: vec![] };
    /// assert!(accepted.is_success() && !refused.is_success());
    /// ```
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Encodes key/value pairs as `application/x-www-form-urlencoded`.
///
/// ```
/// use switchboard_sdk::http::form_urlencode;
///
/// assert_eq!(form_urlencode(&[("To", "+8210 1234"), ("Body", "a&b=c")]),
///            "To=%2B8210+1234&Body=a%26b%3Dc");
/// ```
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

    #[test]
    fn auth_builders_add_one_authorization_header() {
        let request = Request::get("https://x.example/").basic_auth_secret("creds");
        assert_eq!(
            request.headers,
            vec![("authorization".into(), "Basic {{secret:creds}}".into())]
        );
    }
}
