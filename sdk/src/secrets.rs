//! Secrets: the plugin names them, the host holds them.
//!
//! A plugin never receives secret material. It signs through [`sign`] and puts
//! [`placeholder`]s in header values, which the host fills in as it sends.

use crate::bindings::switchboard::adapter::secrets as wit;

/// A signature algorithm the host offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (Google service accounts).
    Rs256,
    /// ECDSA P-256 with SHA-256, as the 64-byte `r || s` form (APNs provider tokens).
    Es256,
    /// HMAC with SHA-256.
    Hs256,
}

impl Algorithm {
    /// The JOSE name of the algorithm.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Rs256 => "RS256",
            Algorithm::Es256 => "ES256",
            Algorithm::Hs256 => "HS256",
        }
    }
}

/// Signs `data` with this plugin's secret `key`.
pub fn sign(key: &str, alg: Algorithm, data: &[u8]) -> Result<Vec<u8>, String> {
    wit::sign(key, alg.as_str(), data)
}

/// The placeholder for secret `name` in a header value: `{{secret:name}}`.
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
