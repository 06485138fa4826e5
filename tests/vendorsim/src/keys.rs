//! Test credentials made fresh for each run, so no key is ever committed.

use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};

/// A Google-style service account: the client email and an RSA key pair.
#[derive(Clone)]
pub struct ServiceAccount {
    pub client_email: String,
    /// PKCS#8 PEM, as in a service-account JSON file's `private_key`.
    pub private_key_pem: String,
    /// SPKI PEM, which the simulator verifies signatures with.
    pub public_key_pem: String,
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("client_email", &self.client_email)
            .finish_non_exhaustive()
    }
}

impl ServiceAccount {
    /// Generates a 2048-bit RSA service account for `client_email`.
    pub fn generate(client_email: &str) -> anyhow::Result<Self> {
        let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048)?;
        Ok(Self {
            client_email: client_email.to_string(),
            private_key_pem: key.to_pkcs8_pem(LineEnding::LF)?.to_string(),
            public_key_pem: key.to_public_key().to_public_key_pem(LineEnding::LF)?,
        })
    }
}
