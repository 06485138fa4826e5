//! A hostile "vendor" for the sandbox tests: it answers slowly on purpose, or reflects what it
//! was sent. Not a real service; it exists to show that the host's deadlines and secret
//! placeholders hold against a vendor endpoint that misbehaves.
//!
//! - `/echo` (any method): 200 at once, with a JSON body of the request's method, path and
//!   headers, as a debugging endpoint that reflects requests would answer;
//! - `/stall` (any method): reads the request and never answers, not even the status line;
//! - `/redirect?to=URL&status=CODE` (any method): answers CODE (307 unless given) with
//!   `Location: URL`, as a vendor endpoint taken over, or a misconfigured proxy, would;
//! - `/big?bytes=N` (any method): 200 with a body of N bytes;
//! - any other path (e.g. `/trickle`, or an adapter's real request path): 200 and its headers at
//!   once, then a body that never ends: `{"trickle":"` and one `x` every `byte_interval`.
//!
//! Counts: every echo answered is an accepted delivery (`stats.delivered`); every trickle and
//! stall begun is counted as refused under `trickle` and `stall`. Faults (latency, outages,
//! rate limits) apply before any route, answered 503 / 429 with Retry-After.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use hyper::body::Frame;
use serde_json::{Value, json};

use crate::{FaultState, Faults, Injected, RunningSim, SimStats, Transport};

/// How the slow-loris server behaves.
#[derive(Debug, Clone)]
pub struct SlowlorisConfig {
    /// Time between two bytes of a trickling body.
    pub byte_interval: Duration,
    pub faults: Faults,
    /// Serve TLS (a generated certificate for `localhost`, HTTP/2 only) instead of plain HTTP.
    pub tls: bool,
}

impl SlowlorisConfig {
    /// One byte every 200 ms, no other faults.
    pub fn new() -> Self {
        Self {
            byte_interval: Duration::from_millis(200),
            faults: Faults::default(),
            tls: false,
        }
    }
}

impl Default for SlowlorisConfig {
    fn default() -> Self {
        Self::new()
    }
}

struct SlowlorisState {
    config: SlowlorisConfig,
    stats: Arc<SimStats>,
    echoes: AtomicU64,
    faults: OnceLock<Arc<FaultState>>,
}

/// Starts the slow-loris server on a loopback port.
pub async fn start(config: SlowlorisConfig) -> anyhow::Result<RunningSim> {
    let stats = Arc::new(SimStats::default());
    let state = Arc::new(SlowlorisState {
        config,
        stats: stats.clone(),
        echoes: AtomicU64::new(0),
        faults: OnceLock::new(),
    });
    let router = axum::Router::new()
        .route("/_sim/stats", get(stats_handler))
        .route("/echo", any(echo))
        .route("/stall", any(stall))
        .route("/redirect", any(redirect))
        .route("/big", any(big))
        .fallback(trickle)
        .with_state(state.clone());
    let faults = state.config.faults.clone();
    let transport = if state.config.tls {
        Transport::TlsH2Only
    } else {
        Transport::Plain
    };
    let running = crate::serve(router, stats, faults, transport).await?;
    let _ = state.faults.set(running.faults.clone());
    Ok(running)
}

async fn stats_handler(State(state): State<Arc<SlowlorisState>>) -> Json<crate::StatsSnapshot> {
    Json(state.stats.snapshot())
}

/// The injected fault's answer, if one applies to this request.
async fn injected(state: &SlowlorisState) -> Option<Response> {
    let faults = state.faults.get()?;
    faults.delay().await;
    match faults.check()? {
        Injected::Unavailable => {
            state.stats.refuse("unavailable");
            Some((StatusCode::SERVICE_UNAVAILABLE, "unavailable").into_response())
        }
        Injected::RateLimited { retry_after_s } => {
            state.stats.refuse("rate_limited");
            let mut response = (StatusCode::TOO_MANY_REQUESTS, "rate limited").into_response();
            if let Ok(value) = retry_after_s.to_string().parse() {
                response.headers_mut().insert("retry-after", value);
            }
            Some(response)
        }
    }
}

async fn echo(State(state): State<Arc<SlowlorisState>>, request: Request) -> Response {
    if let Some(response) = injected(&state).await {
        return response;
    }
    let headers: serde_json::Map<String, Value> = request
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_string(),
                String::from_utf8_lossy(value.as_bytes())
                    .into_owned()
                    .into(),
            )
        })
        .collect();
    // A distinct body per echo, so each one counts as a delivery and none as a duplicate.
    let n = state.echoes.fetch_add(1, Ordering::Relaxed);
    state.stats.accept("echo", &n.to_le_bytes());
    Json(json!({
        "method": request.method().as_str(),
        "path": request.uri().path(),
        "headers": headers,
    }))
    .into_response()
}

/// The value of `name` in a query string, undecoded but for `%3A` and `%2F`, enough for a URL.
fn query_value(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| value.replace("%3A", ":").replace("%2F", "/"))
    })
}

async fn redirect(request: Request) -> Response {
    let query = request.uri().query().unwrap_or("");
    let Some(to) = query_value(query, "to") else {
        return (StatusCode::BAD_REQUEST, "no `to`").into_response();
    };
    let status = query_value(query, "status")
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::TEMPORARY_REDIRECT);
    (status, [("location", to)], "").into_response()
}

async fn big(request: Request) -> Response {
    let bytes = request
        .uri()
        .query()
        .and_then(|q| query_value(q, "bytes"))
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    (StatusCode::OK, vec![b'b'; bytes]).into_response()
}

async fn stall(State(state): State<Arc<SlowlorisState>>) -> Response {
    if let Some(response) = injected(&state).await {
        return response;
    }
    state.stats.refuse("stall");
    // The connection task is dropped when the client goes away or the server stops.
    std::future::pending::<()>().await;
    StatusCode::GATEWAY_TIMEOUT.into_response()
}

async fn trickle(State(state): State<Arc<SlowlorisState>>) -> Response {
    if let Some(response) = injected(&state).await {
        return response;
    }
    state.stats.refuse("trickle");
    let mut interval =
        tokio::time::interval(state.config.byte_interval.max(Duration::from_millis(1)));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let body = Trickle {
        head: Some(Bytes::from_static(br#"{"trickle":""#)),
        interval,
    };
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        Body::new(body),
    )
        .into_response()
}

/// A response body that never ends: its head at once, then one byte per tick.
struct Trickle {
    head: Option<Bytes>,
    interval: tokio::time::Interval,
}

impl hyper::body::Body for Trickle {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(head) = self.head.take() {
            // The first tick of an interval is immediate; use it up so the next byte waits.
            let _ = self.interval.poll_tick(cx);
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        match self.interval.poll_tick(cx) {
            Poll::Ready(_) => Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x"))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn trickle_sends_headers_then_a_body_that_does_not_end() {
        let sim = start(SlowlorisConfig {
            byte_interval: Duration::from_millis(20),
            ..SlowlorisConfig::new()
        })
        .await
        .unwrap();
        let mut stream = tokio::net::TcpStream::connect(sim.addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(b"GET /trickle HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut received = Vec::new();
        let mut buf = [0u8; 256];
        let _ = tokio::time::timeout(Duration::from_millis(300), async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => received.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        let text = String::from_utf8_lossy(&received);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        // About 15 ticks in 300 ms; far fewer than a whole body, and still going.
        let xs = text.matches('x').count();
        assert!((3..=40).contains(&xs), "{xs} bytes trickled: {text}");
        assert_eq!(sim.stats.snapshot().refused.get("trickle"), Some(&1));
    }

    #[tokio::test]
    async fn echo_reflects_request_headers() {
        let sim = start(SlowlorisConfig::new()).await.unwrap();
        let mut stream = tokio::net::TcpStream::connect(sim.addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(
                b"GET /echo HTTP/1.1\r\nhost: x\r\nx-token: abc\r\nconnection: close\r\n\r\n",
            )
            .await
            .unwrap();
        let mut received = Vec::new();
        stream.read_to_end(&mut received).await.unwrap();
        let text = String::from_utf8_lossy(&received);
        assert!(text.contains(r#""x-token":"abc""#), "{text}");
        assert_eq!(sim.stats.snapshot().delivered, 1);
    }
}
