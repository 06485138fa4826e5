//! JSON Web Tokens signed through the host's [`crate::secrets::sign`], and the wall clock that
//! token claims and request timestamps read.
//!
//! ```no_run
//! use switchboard_sdk::jwt;
//! use switchboard_sdk::secrets::Algorithm;
//!
//! // A Google service-account assertion, exchanged for an access token.
//! let iat = jwt::now_unix_s();
//! let claims = serde_json::json!({
//!     "iss": "sender@project.iam.gserviceaccount.com",
//!     "scope": "https://www.googleapis.com/auth/firebase.messaging",
//!     "aud": "https://oauth2.googleapis.com/token",
//!     "iat": iat,
//!     "exp": iat + 3600,
//! });
//! let assertion = jwt::sign(Algorithm::Rs256, "service_account_key", &[], &claims)?;
//! # let _ = assertion;
//! # Ok::<(), String>(())
//! ```

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::secrets::{self, Algorithm};

/// Builds and signs a compact JWT: `base64url(header).base64url(claims).base64url(signature)`.
///
/// `extra_header` adds fields such as `kid` to `{"alg", "typ"}`; `key` names the plugin's secret.
///
/// ```no_run
/// use switchboard_sdk::jwt;
/// use switchboard_sdk::secrets::Algorithm;
///
/// // An APNs provider token: ES256 with the key id in the header.
/// let token = jwt::sign(
///     Algorithm::Es256,
///     "apns_key",
///     &[("kid", "ABC123DEFG")],
///     &serde_json::json!({ "iss": "DEF123GHIJ", "iat": jwt::now_unix_s() }),
/// )?;
/// assert_eq!(token.split('.').count(), 3);
/// # Ok::<(), String>(())
/// ```
pub fn sign(
    alg: Algorithm,
    key: &str,
    extra_header: &[(&str, &str)],
    claims: &serde_json::Value,
) -> Result<String, String> {
    let mut header = serde_json::Map::new();
    header.insert("alg".into(), alg.as_str().into());
    header.insert("typ".into(), "JWT".into());
    for (name, value) in extra_header {
        header.insert((*name).into(), (*value).into());
    }
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::Value::Object(header).to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = secrets::sign(key, alg, signing_input.as_bytes())?;
    Ok(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature)
    ))
}

/// Seconds since the Unix epoch, from the WASI wall clock.
///
/// ```
/// let iat = switchboard_sdk::jwt::now_unix_s();
/// let claims = serde_json::json!({ "iat": iat, "exp": iat + 3600 });
/// assert!(claims["exp"].as_u64() > claims["iat"].as_u64());
/// ```
pub fn now_unix_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch, from the WASI wall clock (request timestamps such as
/// NCP's `x-ncp-apigw-timestamp`).
///
/// ```
/// use switchboard_sdk::jwt;
///
/// assert!(jwt::now_unix_ms() / 1000 >= jwt::now_unix_s() - 1);
/// ```
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
