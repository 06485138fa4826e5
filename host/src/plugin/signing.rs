//! The `secrets.sign` capability: RS256, ES256 and HS256 with keys the plugin never sees.
//! Parsed keys are kept per plugin version, because parsing an RSA key costs more than signing.
//!
//! RS256 signs with `ring` (constant-time RSA, already in the tree through rustls), not the
//! `rsa` crate, whose private-key operations leak timing (RUSTSEC-2023-0071). ES256 signs with
//! RustCrypto's `p256`, which takes PKCS#8 keys with or without their public part (Apple's `.p8`
//! files and keys made by other tools alike).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use hmac::Mac;
use p256::ecdsa::signature::Signer as _;
use p256::pkcs8::DecodePrivateKey as _;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject as _;

use crate::secrets::PluginSecrets;

enum ParsedKey {
    Rsa(Box<ring::signature::RsaKeyPair>),
    P256(Box<p256::ecdsa::SigningKey>),
}

/// Signs with one plugin's secrets.
#[derive(Default)]
pub struct Signer256 {
    parsed: Mutex<HashMap<(String, &'static str), Arc<ParsedKey>>>,
}

impl Signer256 {
    /// Signs `data` with secret `key` using `alg`. Errors name the key, never its value.
    pub fn sign(
        &self,
        secrets: &PluginSecrets,
        key: &str,
        alg: &str,
        data: &[u8],
    ) -> Result<Vec<u8>, String> {
        let secret = secrets
            .get(key)
            .ok_or_else(|| format!("no secret `{key}` is granted to this plugin"))?;
        match alg {
            "HS256" => {
                let mut mac =
                    hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.expose().as_bytes())
                        .map_err(|_| format!("secret `{key}` cannot be an HMAC key"))?;
                mac.update(data);
                Ok(mac.finalize().into_bytes().to_vec())
            }
            "RS256" => match &*self.parsed_key(key, "RS256", secret.expose())? {
                ParsedKey::Rsa(key_pair) => sign_rs256(key_pair, data)
                    .map_err(|_| format!("secret `{key}` could not sign with RS256")),
                ParsedKey::P256(_) => Err(format!("secret `{key}` is not an RSA key")),
            },
            "ES256" => match &*self.parsed_key(key, "ES256", secret.expose())? {
                ParsedKey::P256(signing_key) => {
                    let signature: p256::ecdsa::Signature = signing_key.sign(data);
                    Ok(signature.to_bytes().to_vec())
                }
                ParsedKey::Rsa(_) => Err(format!("secret `{key}` is not a P-256 key")),
            },
            other => Err(format!(
                "unsupported algorithm `{other}` (RS256, ES256, HS256)"
            )),
        }
    }

    fn parsed_key(
        &self,
        key: &str,
        alg: &'static str,
        pem: &str,
    ) -> Result<Arc<ParsedKey>, String> {
        let cache_key = (key.to_string(), alg);
        if let Some(parsed) = self.lock().get(&cache_key) {
            return Ok(parsed.clone());
        }
        // Service-account JSON files escape newlines; accept the key as pasted from them.
        let pem = pem.replace("\\n", "\n");
        let parsed = match alg {
            "RS256" => parse_rsa_pem(&pem)
                .map(|k| ParsedKey::Rsa(Box::new(k)))
                .ok_or_else(|| format!("secret `{key}` is not a PEM RSA private key"))?,
            _ => p256::ecdsa::SigningKey::from_pkcs8_pem(&pem)
                .map(|k| ParsedKey::P256(Box::new(k)))
                .map_err(|_| format!("secret `{key}` is not a PEM P-256 private key"))?,
        };
        let parsed = Arc::new(parsed);
        self.lock().insert(cache_key, parsed.clone());
        Ok(parsed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, &'static str), Arc<ParsedKey>>> {
        // A panic while holding this lock leaves the map consistent (inserts are whole).
        self.parsed.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An RSA key from PEM: PKCS#8 (`BEGIN PRIVATE KEY`, as in service-account files) or PKCS#1
/// (`BEGIN RSA PRIVATE KEY`). `None` for anything else, or a key `ring` refuses (under 2048 bits).
fn parse_rsa_pem(pem: &str) -> Option<ring::signature::RsaKeyPair> {
    match PrivateKeyDer::from_pem_slice(pem.as_bytes()).ok()? {
        PrivateKeyDer::Pkcs8(der) => {
            ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).ok()
        }
        PrivateKeyDer::Pkcs1(der) => {
            ring::signature::RsaKeyPair::from_der(der.secret_pkcs1_der()).ok()
        }
        _ => None,
    }
}

/// RSASSA-PKCS1-v1_5 with SHA-256 (JWT's RS256).
fn sign_rs256(
    key_pair: &ring::signature::RsaKeyPair,
    data: &[u8],
) -> Result<Vec<u8>, ring::error::Unspecified> {
    let mut signature = vec![0; key_pair.public().modulus_len()];
    key_pair.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        data,
        &mut signature,
    )?;
    Ok(signature)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A service account's PKCS#8 key signs, and the signature verifies with the key's public
    /// half, as the vendor checks it; a PEM that holds no RSA key is refused.
    #[test]
    fn rs256_signs_with_a_pkcs8_key_and_verifies_with_its_public_half() -> anyhow::Result<()> {
        let account = vendorsim::ServiceAccount::generate("signer@example.test")?;
        let pkcs8 = parse_rsa_pem(&account.private_key_pem)
            .ok_or_else(|| anyhow::anyhow!("the PKCS#8 key was refused"))?;
        let signature =
            sign_rs256(&pkcs8, b"header.payload").map_err(|_| anyhow::anyhow!("signing failed"))?;
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            pkcs8.public().as_ref(),
        )
        .verify(b"header.payload", &signature)
        .map_err(|_| anyhow::anyhow!("the signature does not verify"))?;
        assert!(
            parse_rsa_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
                .is_none()
        );
        Ok(())
    }
}
