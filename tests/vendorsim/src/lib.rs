//! # vendorsim
//!
//! Faithful vendor simulators on loopback, strict enough that an adapter which passes against
//! them would work against the real service, and exact in what they count.
//!
//! - [`fcm`]: Firebase Cloud Messaging HTTP v1 with its OAuth2 token endpoint; verifies the
//!   service-account JWT (RS256) and the bearer token, checks the message shape, answers with
//!   FCM's error bodies.
//! - [`apns`]: APNs over TLS with HTTP/2 only; verifies ES256 provider tokens (and refuses too
//!   frequent token updates), every `apns-*` header, the payload size; answers `{reason}`.
//! - [`nhn`]: NHN Cloud KakaoTalk Bizmessage Alimtalk v2.3 and SMS v3.0; checks `X-Secret-Key`,
//!   the appkey, sender profiles, templates and numbers; failures in the body with HTTP 200.
//! - [`twilio`]: the Twilio Messages API; checks Basic credentials and the form, answers with
//!   Twilio's error codes.
//! - [`hello`]: "Hello", a made-up SMS vendor with a minimal API, the one `switchboard plugin
//!   new` scaffolds an adapter for.
//! - [`faults`]: latency, outage windows (503 or refused connections) and rate limits, shared by
//!   all of them.
//!
//! Every simulator counts accepted deliveries and duplicates (the same message to the same
//! recipient accepted twice); the demo, the lab and the tests read those counts.

pub mod apns;
pub mod faults;
pub mod fcm;
mod form;
pub mod hello;
mod keys;
pub mod nhn;
pub mod slowloris;
mod stats;
pub mod twilio;

pub use faults::{FaultState, Faults, Injected, OutageMode, OutageWindow, RateLimit};
pub use keys::ServiceAccount;
pub use stats::{SimStats, StatsSnapshot};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

/// A simulator server on loopback. Dropping it stops the server.
pub struct RunningSim {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its counts.
    pub stats: Arc<SimStats>,
    /// Its faults; `set_outage` switches an outage on and off while it runs.
    pub faults: Arc<FaultState>,
    /// For TLS simulators: the PEM of the CA the client must trust.
    pub ca_pem: Option<String>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl RunningSim {
    /// The base URL, `http://127.0.0.1:PORT` (or `https://localhost:PORT` for TLS simulators).
    pub fn url(&self) -> String {
        match self.ca_pem {
            Some(_) => format!("https://localhost:{}", self.addr.port()),
            None => format!("http://{}", self.addr),
        }
    }
}

impl Drop for RunningSim {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// How a simulator speaks on its socket.
pub(crate) enum Transport {
    /// Cleartext HTTP/1.1 or HTTP/2.
    Plain,
    /// TLS with a generated certificate for `localhost`, ALPN `h2` only, as APNs.
    TlsH2Only,
}

fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    // Rebinding the same port after a `Refuse` outage must not wait out TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// A CA-less self-signed certificate for `localhost` and 127.0.0.1, and the TLS acceptor.
fn tls_acceptor() -> anyhow::Result<(tokio_rustls::TlsAcceptor, String)> {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    let cert_pem = certified.cert.pem();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.key_pair.serialize_der().into());
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(vec![certified.cert.der().clone()], key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok((tokio_rustls::TlsAcceptor::from(Arc::new(config)), cert_pem))
}

pub(crate) async fn serve(
    router: axum::Router,
    stats: Arc<SimStats>,
    faults: Faults,
    transport: Transport,
) -> anyhow::Result<RunningSim> {
    let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let addr = listener.local_addr()?;
    let faults = Arc::new(FaultState::new(faults));
    let (tls, ca_pem) = match transport {
        Transport::Plain => (None, None),
        Transport::TlsH2Only => {
            let (acceptor, pem) = tls_acceptor()?;
            (Some(acceptor), Some(pem))
        }
    };
    let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
    let loop_faults = faults.clone();
    tokio::spawn(async move {
        let mut listener = Some(listener);
        let mut connections: Vec<tokio::task::AbortHandle> = Vec::new();
        loop {
            // A `Refuse` outage closes the socket, so connects are refused, and cuts the open
            // connections, as a vendor going down does; the socket reopens after it.
            let refusing = loop_faults.outage_now() == Some(OutageMode::Refuse);
            if refusing {
                listener = None;
                for connection in connections.drain(..) {
                    connection.abort();
                }
            } else if listener.is_none() {
                match bind(addr) {
                    Ok(l) => listener = Some(l),
                    Err(e) => tracing::warn!(error = %e, "vendorsim could not rebind {addr}"),
                }
            }
            let Some(active) = listener.as_ref() else {
                tokio::select! {
                    _ = &mut rx => break,
                    _ = tokio::time::sleep(Duration::from_millis(20)) => continue,
                }
            };
            let accepted = tokio::select! {
                _ = &mut rx => break,
                accepted = active.accept() => accepted,
                _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
            };
            let Ok((stream, _)) = accepted else { continue };
            let _ = stream.set_nodelay(true);
            let service = hyper_util::service::TowerToHyperService::new(router.clone());
            let tls = tls.clone();
            connections.retain(|c| !c.is_finished());
            let connection = tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                let served = match tls {
                    None => {
                        builder
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await
                    }
                    Some(acceptor) => match acceptor.accept(stream).await {
                        Ok(tls_stream) => {
                            builder
                                .http2_only()
                                .serve_connection(hyper_util::rt::TokioIo::new(tls_stream), service)
                                .await
                        }
                        Err(e) => Err(e.into()),
                    },
                };
                if let Err(e) = served {
                    tracing::debug!(error = %e, "vendorsim connection ended with an error");
                }
            });
            connections.push(connection.abort_handle());
        }
    });
    Ok(RunningSim {
        addr,
        stats,
        faults,
        ca_pem,
        shutdown: Some(tx),
    })
}

/// Simulated response time: a base latency with uniform jitter around it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    /// The mean.
    pub mean: Duration,
    /// Up to this much more or less than the mean.
    pub jitter: Duration,
}

impl Latency {
    /// A fixed latency.
    pub const fn fixed(mean: Duration) -> Self {
        Self {
            mean,
            jitter: Duration::ZERO,
        }
    }

    async fn wait(&self) {
        if self.mean.is_zero() && self.jitter.is_zero() {
            return;
        }
        let jitter_ms = self.jitter.as_millis() as i64;
        let offset = if jitter_ms > 0 {
            rand::thread_rng().gen_range(-jitter_ms..=jitter_ms)
        } else {
            0
        };
        let ms = (self.mean.as_millis() as i64 + offset).max(0) as u64;
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}
