//! Vendor authentication schemes built on secrets the host holds.
//!
//! The plugin names a secret; the host fills `{{secret:NAME}}` placeholders verbatim as it sends
//! and signs with the secret on request. This module turns those two primitives into the header
//! values vendors ask for:
//!
//! - HTTP Basic and Bearer through a placeholder ([`basic_placeholder`], [`bearer_placeholder`],
//!   and the [`Request`] methods [`basic_auth_secret`](Request::basic_auth_secret) and
//!   [`bearer_auth_secret`](Request::bearer_auth_secret));
//! - NAVER Cloud Platform API Gateway signatures (SENS and every other NCP API:
//!   [`ncp_string_to_sign`], [`ncp_signature`], [`sign_ncp_at`] and
//!   [`Request::sign_ncp`]).
//!
//! It never sees a secret value and must never ask for one.
//!
//! ```no_run
//! use switchboard_sdk::http::{self, Request};
//!
//! // Twilio: Basic auth, the secret holds base64("AccountSid:AuthToken").
//! let twilio = Request::post("https://api.twilio.com/2010-04-01/Accounts/AC1/Messages.json")
//!     .basic_auth_secret("twilio_basic")
//!     .form(&[("To", "+15550100"), ("From", "+15550199"), ("Body", "hi")]);
//!
//! // NCP SENS: three signed headers; the secret holds the NCP secret key.
//! let sens = Request::post("https://sens.apigw.ntruss.com/sms/v2/services/svc/messages")
//!     .json(&serde_json::json!({ "type": "SMS", "from": "0212345678", "content": "hi",
//!                                "messages": [{ "to": "01012345678" }] }))
//!     .sign_ncp("AKID", "ncp_secret_key")?;
//!
//! let results = http::send_all(vec![twilio, sens]);
//! # let _ = results;
//! # Ok::<(), String>(())
//! ```

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::http::Request;
use crate::secrets::{self, Algorithm};

/// The NCP header with the request time in milliseconds since the Unix epoch. NCP refuses a
/// request whose timestamp is more than five minutes away from its own clock.
///
/// ```
/// assert_eq!(switchboard_sdk::auth::NCP_TIMESTAMP_HEADER, "x-ncp-apigw-timestamp");
/// ```
pub const NCP_TIMESTAMP_HEADER: &str = "x-ncp-apigw-timestamp";
/// The NCP header with the access key id (not a secret: it names the key pair).
///
/// ```
/// assert_eq!(switchboard_sdk::auth::NCP_ACCESS_KEY_HEADER, "x-ncp-iam-access-key");
/// ```
pub const NCP_ACCESS_KEY_HEADER: &str = "x-ncp-iam-access-key";
/// The NCP header with the base64 HMAC-SHA256 signature.
///
/// ```
/// assert_eq!(switchboard_sdk::auth::NCP_SIGNATURE_HEADER, "x-ncp-apigw-signature-v2");
/// ```
pub const NCP_SIGNATURE_HEADER: &str = "x-ncp-apigw-signature-v2";

/// The `Authorization` value for HTTP Basic auth with the credentials in secret `secret_name`:
/// `Basic {{secret:NAME}}`.
///
/// The host fills the placeholder verbatim and cannot base64-encode, so the secret must hold the
/// ready value `base64("user:password")`, e.g. `QUMxMjM6dG9rZW4=` for `AC123:token`.
///
/// ```
/// use switchboard_sdk::auth;
///
/// assert_eq!(auth::basic_placeholder("twilio_basic"), "Basic {{secret:twilio_basic}}");
/// ```
pub fn basic_placeholder(secret_name: &str) -> String {
    format!("Basic {}", secrets::placeholder(secret_name))
}

/// The `Authorization` value for a bearer token kept in secret `secret_name`:
/// `Bearer {{secret:NAME}}`. For a token the plugin obtained itself (an OAuth access token),
/// use [`Request::bearer_auth`] instead.
///
/// ```
/// use switchboard_sdk::auth;
///
/// assert_eq!(auth::bearer_placeholder("api_token"), "Bearer {{secret:api_token}}");
/// ```
pub fn bearer_placeholder(secret_name: &str) -> String {
    format!("Bearer {}", secrets::placeholder(secret_name))
}

/// The request target of an absolute URL as it goes on the wire: the path and the query, without
/// scheme, authority or fragment. An empty path is `/`. Signature schemes sign this part.
///
/// ```
/// use switchboard_sdk::auth::request_target;
///
/// assert_eq!(
///     request_target("https://sens.apigw.ntruss.com/sms/v2/services/ncp:sms:kr:1:app/messages"),
///     "/sms/v2/services/ncp:sms:kr:1:app/messages"
/// );
/// assert_eq!(request_target("https://api.example.com/v1/list?page=2#top"), "/v1/list?page=2");
/// assert_eq!(request_target("https://api.example.com"), "/");
/// assert_eq!(request_target("https://api.example.com?x=1"), "/?x=1");
/// ```
pub fn request_target(url: &str) -> String {
    let without_fragment = url.split('#').next().unwrap_or(url);
    let after_scheme = match without_fragment.find("://") {
        Some(at) => &without_fragment[at + 3..],
        // Already a path (or something relative): nothing to strip.
        None => return with_leading_slash(without_fragment),
    };
    match after_scheme.find(['/', '?']) {
        Some(at) => with_leading_slash(&after_scheme[at..]),
        None => "/".to_string(),
    }
}

fn with_leading_slash(target: &str) -> String {
    if target.starts_with('/') {
        target.to_string()
    } else {
        format!("/{target}")
    }
}

/// The string NCP's API Gateway signs (signature v2):
/// `"{METHOD} {uri}\n{timestamp_ms}\n{access_key}"`, where `uri` is the request target (path and
/// query, see [`request_target`]) and `timestamp_ms` the value of the
/// [`NCP_TIMESTAMP_HEADER`].
///
/// ```
/// use switchboard_sdk::auth::ncp_string_to_sign;
///
/// assert_eq!(
///     ncp_string_to_sign("POST", "/sms/v2/services/svc/messages", 1_700_000_000_000, "AKID"),
///     "POST /sms/v2/services/svc/messages\n1700000000000\nAKID"
/// );
/// ```
pub fn ncp_string_to_sign(method: &str, uri: &str, timestamp_ms: u64, access_key: &str) -> String {
    format!("{method} {uri}\n{timestamp_ms}\n{access_key}")
}

/// The NCP signature v2: `base64(HMAC-SHA256(secret key, string to sign))`, signed by the host
/// with the secret `secret_key` (which holds the NCP secret key as text).
///
/// ```no_run
/// use switchboard_sdk::auth;
///
/// let signature = auth::ncp_signature(
///     "ncp_secret_key",
///     "POST",
///     "/sms/v2/services/svc/messages",
///     switchboard_sdk::jwt::now_unix_ms(),
///     "AKID",
/// )?;
/// assert!(signature.ends_with('='));
/// # Ok::<(), String>(())
/// ```
pub fn ncp_signature(
    secret_key: &str,
    method: &str,
    uri: &str,
    timestamp_ms: u64,
    access_key: &str,
) -> Result<String, String> {
    let message = ncp_string_to_sign(method, uri, timestamp_ms, access_key);
    let mac = secrets::sign(secret_key, Algorithm::Hs256, message.as_bytes())?;
    Ok(STANDARD.encode(mac))
}

/// Adds the three NCP headers to `request`, signed for `timestamp_ms`: the timestamp, the access
/// key and the signature over the request's method and target. `secret_key` names the secret
/// that holds the NCP secret key. Sign last: the signature covers the URL, so a later change to
/// it invalidates the request. [`Request::sign_ncp`] does the same at the current time.
///
/// ```no_run
/// use switchboard_sdk::auth;
/// use switchboard_sdk::http::Request;
///
/// let request = Request::post("https://sens.apigw.ntruss.com/sms/v2/services/svc/messages")
///     .json(&serde_json::json!({ "type": "SMS", "from": "0212345678", "content": "hi",
///                                "messages": [{ "to": "01012345678" }] }));
/// let request = auth::sign_ncp_at(request, "AKID", "ncp_secret_key", 1_700_000_000_000)?;
/// assert!(request.headers.iter().any(|(name, _)| name == auth::NCP_SIGNATURE_HEADER));
/// # Ok::<(), String>(())
/// ```
pub fn sign_ncp_at(
    request: Request,
    access_key: &str,
    secret_key: &str,
    timestamp_ms: u64,
) -> Result<Request, String> {
    let uri = request_target(&request.url);
    let signature = ncp_signature(secret_key, &request.method, &uri, timestamp_ms, access_key)?;
    Ok(request
        .header(NCP_TIMESTAMP_HEADER, timestamp_ms.to_string())
        .header(NCP_ACCESS_KEY_HEADER, access_key)
        .header(NCP_SIGNATURE_HEADER, signature))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_target_keeps_path_and_query_only() {
        assert_eq!(request_target("http://127.0.0.1:8080/a/b?c=d"), "/a/b?c=d");
        assert_eq!(request_target("http://127.0.0.1:8080"), "/");
        assert_eq!(request_target("/already/a/path"), "/already/a/path");
    }

    #[test]
    fn ncp_string_to_sign_matches_the_gateway_format() {
        // The layout from NCP's API Gateway guide: method, a space, the URI with its query, a
        // newline, the timestamp, a newline, the access key; no trailing newline.
        assert_eq!(
            ncp_string_to_sign(
                "GET",
                "/photos/puppy.jpg?query1=&query2",
                1_505_290_625_682,
                "K"
            ),
            "GET /photos/puppy.jpg?query1=&query2\n1505290625682\nK"
        );
    }
}
