//! # vendorsim
//!
//! Faithful vendor simulators on loopback, strict enough that an adapter which passes against
//! them would work against the real service, and exact in what they count.
//!
//! - [`fcm`]: Firebase Cloud Messaging HTTP v1 with its OAuth2 token endpoint; verifies the
//!   service-account JWT (RS256) and the bearer token, checks the message shape, answers with
//!   FCM's error bodies.
//!
//! Every simulator counts accepted deliveries and duplicates (the same message to the same
//! recipient accepted twice); the demo, the lab and the tests read those counts.

pub mod apns;
pub mod fcm;
pub mod nhn;
pub mod twilio;
mod keys;
mod stats;

pub use keys::ServiceAccount;
pub use stats::{SimStats, StatsSnapshot};

use std::net::SocketAddr;
use std::time::Duration;

use rand::Rng;

/// A simulator server on loopback. Dropping it stops the server.
pub struct RunningSim {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its counts.
    pub stats: std::sync::Arc<SimStats>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl RunningSim {
    /// The base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for RunningSim {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

async fn serve(
    router: axum::Router,
    stats: std::sync::Arc<SimStats>,
) -> anyhow::Result<RunningSim> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let shutdown = async {
            let _ = rx.await;
        };
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!(error = %e, "vendorsim server stopped");
        }
    });
    Ok(RunningSim {
        addr,
        stats,
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
