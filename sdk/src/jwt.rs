//! JSON Web Tokens signed through the host's [`crate::secrets::sign`].

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::secrets::{self, Algorithm};

/// Builds and signs a compact JWT: `base64url(header).base64url(claims).base64url(signature)`.
///
/// `extra_header` adds fields such as `kid` to `{"alg", "typ"}`; `key` names the plugin's secret.
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
pub fn now_unix_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
