//! Secrets: the plugin names them, the host holds them.
//!
//! A plugin never receives secret material. It signs through [`sign`] and puts
//! [`placeholder`]s in header values, which the host fills in verbatim as it sends.
//! [`crate::auth`] builds the usual vendor schemes (Basic, Bearer, NCP signatures) on these two.
//! A plugin can use only the secrets configured under its own `[plugins.NAME.secrets]`.
//!
//! ```
//! use switchboard_sdk::http::Request;
//! use switchboard_sdk::secrets;
//!
//! // NHN Cloud's secret key goes in a header; the host fills it in as it sends.
//! let request = Request::post("https://api-sms.cloud.toast.com/sms/v3.0/appKeys/A1/sender/sms")
//!     .header("X-Secret-Key", secrets::placeholder("secret_key"));
//! assert_eq!(request.headers[0].1, "{{secret:secret_key}}");
//! ```

/// A signature algorithm the host offers.
///
/// ```
/// use switchboard_sdk::secrets::Algorithm;
///
/// let alg = Algorithm::Es256;
/// assert_ne!(alg, Algorithm::Rs256);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (Google service accounts).
    Rs256,
    /// ECDSA P-256 with SHA-256, as the 64-byte `r || s` form (APNs provider tokens).
    Es256,
    /// HMAC with SHA-256, keyed with the secret's bytes as they are (NCP signatures, webhook
    /// signatures).
    Hs256,
}

impl Algorithm {
    /// The JOSE name of the algorithm.
    ///
    /// ```
    /// use switchboard_sdk::secrets::Algorithm;
    ///
    /// assert_eq!(Algorithm::Hs256.as_str(), "HS256");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Rs256 => "RS256",
            Algorithm::Es256 => "ES256",
            Algorithm::Hs256 => "HS256",
        }
    }
}

/// Signs `data` with this plugin's secret `key`.
///
/// An error names the problem (no such secret, not a key of that kind), never the secret's value.
///
/// ```no_run
/// use switchboard_sdk::secrets::{self, Algorithm};
///
/// let mac = secrets::sign("webhook_key", Algorithm::Hs256, b"payload")?;
/// assert_eq!(mac.len(), 32);
/// # Ok::<(), String>(())
/// ```
pub fn sign(key: &str, alg: Algorithm, data: &[u8]) -> Result<Vec<u8>, String> {
    crate::imports::sign(key, alg.as_str(), data)
}

/// The placeholder for secret `name` in a header value: `{{secret:name}}`.
///
/// ```
/// use switchboard_sdk::secrets;
///
/// assert_eq!(secrets::placeholder("api_key"), "{{secret:api_key}}");
/// ```
pub fn placeholder(name: &str) -> String {
    format!("{{{{secret:{name}}}}}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn placeholder_has_the_host_syntax() {
        assert_eq!(super::placeholder("api_key"), "{{secret:api_key}}");
    }
}
