//! The ceiling of `throughput`: a bare reqwest client sending the FCM adapter's requests to the
//! same simulator, at the same latency and concurrency, with nothing else: no Kafka, no dedup,
//! no routing, no WebAssembly. What it spends per request is the least a delivery can cost.
//!
//! It uses the host's own HTTP client settings (`switchboard::host::http_client`), builds each
//! body with `serde_json` as the adapter does, and reads and parses each reply, so the only
//! difference from a delivery is everything around the HTTP call.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject as _;
use serde_json::{Value, json};
use switchboard_integration_tests::{FCM_EMAIL, FCM_PROJECT, FcmFixture};

const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// What the bare client did.
pub struct CeilingRun {
    pub rate_per_s: f64,
    pub cpu_per_request: Duration,
    /// The part of that CPU spent in the kernel, from 0 to 1.
    pub system_share: f64,
    /// CPU of the simulator's threads per request, over the same window.
    pub vendor_cpu_per_request: Duration,
}

/// A service-account JWT signed with `ring`, as the host signs the adapter's.
fn assertion(fixture: &FcmFixture, token_uri: &str) -> anyhow::Result<String> {
    let key = match PrivateKeyDer::from_pem_slice(fixture.account.private_key_pem.as_bytes())
        .context("reading the service account's key")?
    {
        PrivateKeyDer::Pkcs8(der) => {
            ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
                .map_err(|e| anyhow::anyhow!("the service account's key: {e}"))?
        }
        _ => anyhow::bail!("the service account's key is not PKCS#8"),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let header = URL_SAFE_NO_PAD.encode(json!({"alg": "RS256", "typ": "JWT"}).to_string());
    let claims = URL_SAFE_NO_PAD.encode(
        json!({"iss": FCM_EMAIL, "scope": SCOPE, "aud": token_uri, "iat": now, "exp": now + 3600})
            .to_string(),
    );
    let signed = format!("{header}.{claims}");
    let mut signature = vec![0; key.public().modulus_len()];
    key.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        signed.as_bytes(),
        &mut signature,
    )
    .map_err(|e| anyhow::anyhow!("signing the JWT: {e}"))?;
    Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature)))
}

async fn access_token(client: &reqwest::Client, fixture: &FcmFixture) -> anyhow::Result<String> {
    let token_uri = format!("{}/token", fixture.sim.url());
    let reply: Value = client
        .post(&token_uri)
        .form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", &assertion(fixture, &token_uri)?),
        ])
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    reply
        .get("access_token")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("the token reply has no access_token: {reply}"))
}

/// The FCM adapter's request body for the lab's record `i` (`throughput::envelope`).
fn message(i: u64) -> Value {
    json!({"message": {
        "token": format!("tp-{i}"),
        "notification": {"title": "Your order", "body": format!("Order {i} is on its way")},
        "data": {"order": i.to_string()},
        "android": {"priority": "normal"},
    }})
}

/// Sends `requests` messages with `concurrency` in flight; the rate and the CPU per request of
/// this process less `others` (the simulator's and the cluster's threads).
pub async fn run(
    fixture: &FcmFixture,
    requests: u64,
    concurrency: u64,
    others: &crate::cpu::Others,
) -> anyhow::Result<CeilingRun> {
    let client = switchboard::host::http_client(&[])?;
    let token = Arc::new(access_token(&client, fixture).await?);
    let url = Arc::new(format!(
        "{}/v1/projects/{FCM_PROJECT}/messages:send",
        fixture.sim.url()
    ));
    let next = Arc::new(AtomicU64::new(0));
    let cpu_before = others.sample();
    let started = Instant::now();
    let senders = (0..concurrency.max(1)).map(|_| {
        let (client, token, url, next) = (client.clone(), token.clone(), url.clone(), next.clone());
        tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    return anyhow::Ok(());
                }
                let reply = client
                    .post(url.as_str())
                    .bearer_auth(token.as_str())
                    .json(&message(i))
                    .send()
                    .await?;
                let status = reply.status();
                let body: Value = serde_json::from_slice(&reply.bytes().await?)?;
                anyhow::ensure!(status.is_success(), "the vendor refused {i}: {body}");
            }
        })
    });
    for sender in futures::future::join_all(senders).await {
        sender??;
    }
    let elapsed = started.elapsed();
    let cpu_after = others.sample();
    let per_request = |cpu: Duration| cpu / u32::try_from(requests.max(1)).unwrap_or(u32::MAX);
    Ok(CeilingRun {
        rate_per_s: requests as f64 / elapsed.as_secs_f64().max(1e-9),
        cpu_per_request: per_request(cpu_before.own_cpu_until(&cpu_after)),
        system_share: cpu_before.own_system_share_until(&cpu_after),
        vendor_cpu_per_request: per_request(cpu_before.named_cpu_until(&cpu_after)),
    })
}
