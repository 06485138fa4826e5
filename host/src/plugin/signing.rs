//! The `secrets.sign` capability: RS256, ES256 and HS256 with keys the plugin never sees.
//! Parsed keys are kept per plugin version, because parsing an RSA key costs more than signing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use hmac::Mac;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::signature::{SignatureEncoding, Signer};

use crate::secrets::PluginSecrets;

enum ParsedKey {
    Rsa(Box<rsa::pkcs1v15::SigningKey<sha2::Sha256>>),
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
                ParsedKey::Rsa(signing_key) => Ok(signing_key.sign(data).to_vec()),
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
            "RS256" => rsa::RsaPrivateKey::from_pkcs8_pem(&pem)
                .or_else(|_| rsa::RsaPrivateKey::from_pkcs1_pem(&pem))
                .map(|k| ParsedKey::Rsa(Box::new(rsa::pkcs1v15::SigningKey::new(k))))
                .map_err(|_| format!("secret `{key}` is not a PEM RSA private key"))?,
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
