//! The host side of the plugin's imports: `http`, `secrets`, `cache` and `log`, plus a WASI
//! context that grants nothing. One [`PluginState`] lives in each call's fresh `Store`; what must
//! outlive a call (the HTTP pool, the cache, parsed keys) lives in the shared [`Capabilities`].
//! [`CallCapabilities`] does the work of every import, for a component's `Store` and for an
//! adapter linked natively (`native.rs`) alike, so both go through the same checks.
//!
//! It also keeps what each call's requests came to ([`ExchangeTally`]): answered, sent without
//! an answer, or never sent (the connection could not be made). Only a request that reached the
//! vendor can have been acted on, so only such a request keeps a retry on the same vendor.
//!
//! Must never: let a plugin reach a host it was not granted, hand it a secret value, or let one
//! plugin's cache or secrets be seen by another.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::signing::Signer256;
use crate::config::PluginBounds;
use crate::contract::bindings::{cache, http, log, secrets};
use crate::secrets::PluginSecrets;
/// Cache bounds per plugin, so a plugin cannot grow host memory through the cache.
const MAX_CACHE_ENTRIES: usize = 4096;
const MAX_CACHE_VALUE_BYTES: usize = 64 * 1024;
const MAX_CACHE_KEY_BYTES: usize = 256;
/// All of one plugin's cache, keys and values together.
const MAX_CACHE_TOTAL_BYTES: usize = 16 * 1024 * 1024;
/// Longest log line a plugin may emit.
const MAX_LOG_BYTES: usize = 4096;

/// A host a plugin may reach: a host name, optionally with a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    host: String,
    port: Option<u16>,
    /// Written `http://host[:port]`: a redirect from https may step down to plain http here.
    plain_http: bool,
}

impl AllowedHost {
    /// Parses `host`, `host:port`, or either after `http://` (which also lets a redirect from
    /// https step down to plain http on this host) or `https://`.
    pub fn parse(s: &str) -> Self {
        let (s, plain_http) = match s.split_once("://") {
            Some((scheme, rest)) => (
                rest.trim_end_matches('/'),
                scheme.eq_ignore_ascii_case("http"),
            ),
            None => (s, false),
        };
        let (host, port) = match s.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                (host, port.parse().ok())
            }
            _ => (s, None),
        };
        Self {
            // An IPv6 address is granted in brackets, as a URL writes it.
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_ascii_lowercase(),
            port,
            plain_http,
        }
    }

    fn permits(&self, host: &str, port: u16) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.host.eq_ignore_ascii_case(host) && self.port.is_none_or(|p| p == port)
    }
}

/// Counters of what plugins were refused, for metrics and tests.
#[derive(Debug, Default)]
pub struct CapabilityCounters {
    /// HTTP requests to hosts the plugin was not granted.
    pub denied_hosts: AtomicU64,
    /// Placeholders or signatures naming a secret the plugin does not own.
    pub denied_secrets: AtomicU64,
    /// Redirects from https to plain http on a host whose grant does not name plain http.
    pub denied_downgrades: AtomicU64,
    /// Requests to a granted name that resolved only to non-public addresses.
    pub denied_addresses: AtomicU64,
    /// Requests past a call's `bounds.requests_per_call`.
    pub denied_requests: AtomicU64,
    /// Requests that failed because their call spent `bounds.transfer_bytes_per_call`.
    pub over_transfer: AtomicU64,
    /// Occurrences of a filled secret value scrubbed from a vendor's answer.
    pub scrubbed_secrets: AtomicU64,
    /// Log lines dropped past `bounds.log_lines_per_s` or `bounds.log_bytes_per_s`.
    pub dropped_logs: AtomicU64,
}

/// What a plugin's calls share of its bounds: its requests in flight and its log budget. One per
/// plugin, over all its versions and both lanes.
#[derive(Debug)]
pub struct PluginQuotas {
    /// Every request in flight holds one of these.
    pub(super) in_flight: tokio::sync::Semaphore,
    /// A bulk lane's request also holds one of these first: bulk may fill three quarters of
    /// `in_flight`, so a realtime request finds a slot at once instead of queueing behind every
    /// bulk request waiting for one (the semaphore is fair, first come first served).
    pub(super) bulk_in_flight: tokio::sync::Semaphore,
    log: Mutex<LogBudget>,
}

impl PluginQuotas {
    /// Quotas sized by `bounds`.
    pub fn new(bounds: &PluginBounds) -> Arc<Self> {
        Arc::new(Self::sized(bounds))
    }

    fn sized(bounds: &PluginBounds) -> Self {
        let in_flight = bounds.requests_in_flight as usize;
        Self {
            in_flight: tokio::sync::Semaphore::new(in_flight),
            bulk_in_flight: tokio::sync::Semaphore::new((in_flight * 3 / 4).max(1)),
            log: Mutex::new(LogBudget::full(bounds)),
        }
    }
}

impl Default for PluginQuotas {
    fn default() -> Self {
        Self::sized(&PluginBounds::default())
    }
}

/// A token bucket of log lines and bytes per second, with the drops not yet reported.
#[derive(Debug)]
struct LogBudget {
    lines: f64,
    bytes: f64,
    refilled: Instant,
    dropped_unreported: u64,
    reported: Instant,
}

/// What the log budget says of one line.
enum LogVerdict {
    /// Emit it; `dropped` lines before it went unreported.
    Emit { dropped: u64 },
    /// Drop it; report `dropped` lines now (once a second at most).
    Drop { report: Option<u64> },
}

impl LogBudget {
    fn full(bounds: &PluginBounds) -> Self {
        let now = Instant::now();
        Self {
            lines: f64::from(bounds.log_lines_per_s),
            bytes: bounds.log_bytes_per_s as f64,
            refilled: now,
            dropped_unreported: 0,
            reported: now,
        }
    }

    fn admit(&mut self, bytes: usize, bounds: &PluginBounds) -> LogVerdict {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        let (max_lines, max_bytes) = (
            f64::from(bounds.log_lines_per_s),
            bounds.log_bytes_per_s as f64,
        );
        self.lines = (self.lines + elapsed * max_lines).min(max_lines);
        self.bytes = (self.bytes + elapsed * max_bytes).min(max_bytes);
        if self.lines >= 1.0 && self.bytes >= bytes as f64 {
            self.lines -= 1.0;
            self.bytes -= bytes as f64;
            return LogVerdict::Emit {
                dropped: std::mem::take(&mut self.dropped_unreported),
            };
        }
        self.dropped_unreported += 1;
        if now.duration_since(self.reported) >= Duration::from_secs(1) {
            self.reported = now;
            return LogVerdict::Drop {
                report: Some(std::mem::take(&mut self.dropped_unreported)),
            };
        }
        LogVerdict::Drop { report: None }
    }
}

/// The plugin-scoped cache. Shared by every version of one plugin, so tokens survive a swap.
#[derive(Debug, Default)]
pub struct PluginCache {
    entries: Mutex<HashMap<String, (Vec<u8>, Instant)>>,
}

fn cache_bytes(entries: &HashMap<String, (Vec<u8>, Instant)>) -> usize {
    entries.iter().map(|(k, (v, _))| k.len() + v.len()).sum()
}

impl PluginCache {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(key)
            .filter(|(_, expires)| *expires > Instant::now())
            .map(|(v, _)| v.clone())
    }

    /// Stores a value, or drops the set when it is out of bounds: a plugin must not be able to
    /// grow host memory through its cache (keys, values, entries and total are all capped).
    fn set(&self, key: String, value: Vec<u8>, ttl: Duration) {
        if key.len() > MAX_CACHE_KEY_BYTES {
            tracing::warn!(
                key_bytes = key.len(),
                "plugin cache key over {MAX_CACHE_KEY_BYTES} bytes ignored"
            );
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if ttl.is_zero() || value.len() > MAX_CACHE_VALUE_BYTES {
            entries.remove(&key);
            return;
        }
        let full = |entries: &HashMap<String, (Vec<u8>, Instant)>| {
            (entries.len() >= MAX_CACHE_ENTRIES && !entries.contains_key(&key))
                || cache_bytes(entries) + key.len() + value.len() > MAX_CACHE_TOTAL_BYTES
        };
        if full(&entries) {
            let now = Instant::now();
            entries.retain(|_, (_, expires)| *expires > now);
            if full(&entries) {
                return;
            }
        }
        entries.insert(key, (value, Instant::now() + ttl));
    }
}

/// What one plugin may use, shared by all its calls.
pub struct Capabilities {
    /// The plugin's configured name, for logs.
    pub plugin: String,
    /// The plugin version from `describe`, for logs; empty until described.
    pub version: String,
    pub allowed_hosts: Vec<AllowedHost>,
    pub secrets: PluginSecrets,
    pub cache: Arc<PluginCache>,
    pub client: reqwest::Client,
    pub counters: Arc<CapabilityCounters>,
    bounds: PluginBounds,
    quotas: Arc<PluginQuotas>,
    signer: Signer256,
    /// Offline tests: answers requests from a script instead of the network.
    script: Option<Arc<dyn ExchangeScript>>,
    /// Recording tests: sees every live exchange.
    recorder: Option<Arc<dyn ExchangeRecorder>>,
    /// The realtime lane's calls: their requests are not held to the bulk share of the
    /// requests in flight.
    realtime: bool,
}

/// Answers a plugin's requests without a network, for offline tests. It sees each request as
/// the plugin made it: header placeholders unfilled, so no secret value is ever in a script.
pub trait ExchangeScript: Send + Sync {
    /// The answer to `request`.
    fn answer(&self, request: &http::Request) -> Result<http::Response, http::HttpError>;
}

/// Sees every live exchange, for recording offline tests. The request is as the plugin made
/// it (placeholders unfilled).
pub trait ExchangeRecorder: Send + Sync {
    /// One exchange that got an answer.
    fn record(&self, request: &http::Request, response: &http::Response);
}

impl Capabilities {
    /// Capabilities for plugin `plugin`.
    pub fn new(
        plugin: String,
        allowed_hosts: Vec<AllowedHost>,
        secrets: PluginSecrets,
        cache: Arc<PluginCache>,
        client: reqwest::Client,
        counters: Arc<CapabilityCounters>,
    ) -> Self {
        Self {
            plugin,
            version: String::new(),
            allowed_hosts,
            secrets,
            cache,
            client,
            counters,
            bounds: PluginBounds::default(),
            quotas: Arc::default(),
            signer: Signer256::default(),
            script: None,
            recorder: None,
            realtime: false,
        }
    }

    /// The same capabilities under `bounds`, sharing `quotas` with the plugin's other versions.
    pub fn with_bounds(mut self, bounds: PluginBounds, quotas: Arc<PluginQuotas>) -> Self {
        self.bounds = bounds;
        self.quotas = quotas;
        self
    }

    /// The same capabilities (secrets, cache, counters, allow-list, quotas) for the realtime
    /// lane's calls, over `client`: the realtime lane's own when it has threads of its own
    /// (their connections are driven by those threads), else the same one. Parsed signing keys
    /// are not carried over; they are parsed again on first use.
    pub fn for_realtime(&self, client: reqwest::Client) -> Self {
        Self {
            plugin: self.plugin.clone(),
            version: self.version.clone(),
            allowed_hosts: self.allowed_hosts.clone(),
            secrets: self.secrets.clone(),
            cache: self.cache.clone(),
            client,
            counters: self.counters.clone(),
            bounds: self.bounds,
            quotas: self.quotas.clone(),
            signer: Signer256::default(),
            script: self.script.clone(),
            recorder: self.recorder.clone(),
            realtime: true,
        }
    }

    /// Answers every request from `script`; nothing goes to the network.
    pub fn with_script(mut self, script: Arc<dyn ExchangeScript>) -> Self {
        self.script = Some(script);
        self
    }

    /// Shows every live exchange to `recorder`.
    pub fn with_recorder(mut self, recorder: Arc<dyn ExchangeRecorder>) -> Self {
        self.recorder = Some(recorder);
        self
    }

    pub(super) fn permits(&self, url: &reqwest::Url) -> bool {
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return false;
        };
        self.allowed_hosts.iter().any(|a| a.permits(host, port))
    }

    /// True when a grant for `url`'s host is written `http://…`: plain http was granted.
    pub(super) fn permits_plain_http(&self, url: &reqwest::Url) -> bool {
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return false;
        };
        self.allowed_hosts
            .iter()
            .any(|a| a.plain_http && a.permits(host, port))
    }

    pub(super) fn bounds(&self) -> PluginBounds {
        self.bounds
    }

    pub(super) fn quotas(&self) -> &PluginQuotas {
        &self.quotas
    }

    /// Whether these are the realtime lane's capabilities.
    pub(super) fn is_realtime(&self) -> bool {
        self.realtime
    }

    pub(super) fn script(&self) -> Option<&Arc<dyn ExchangeScript>> {
        self.script.as_ref()
    }

    pub(super) fn recorder(&self) -> Option<&Arc<dyn ExchangeRecorder>> {
        self.recorder.as_ref()
    }
}

/// What one call's HTTP requests came to, as far as the vendor is concerned: whether it may have
/// acted on them decides where the call's retries may go (`route::retry_pinning`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExchangeTally {
    /// Requests whose whole response the plugin got.
    pub answered: u32,
    /// Requests that reached the vendor, or may have, without the plugin getting the answer:
    /// sent and then timed out, cut off mid-response, or still in flight when the call ended
    /// (a trap or the deadline). The vendor may have acted on each of them.
    pub unanswered: u32,
    /// Requests that never reached the vendor: the name did not resolve, or the connection was
    /// refused, timed out or failed its TLS handshake. The vendor cannot have acted on them.
    pub never_sent: u32,
}

impl ExchangeTally {
    /// True when a request of the call reached the vendor, or may have.
    pub fn reached_vendor(&self) -> bool {
        self.answered > 0 || self.unanswered > 0
    }
}

/// The live counts behind a call's [`ExchangeTally`]. A request is counted as started before it
/// goes to the transport, and as answered or never sent once that is known; whatever started
/// and is neither is unanswered. So a request cut off by a trap or the deadline, whose future is
/// dropped before it ends, counts as unanswered without any code running for it.
#[derive(Debug, Default)]
pub(super) struct ExchangeCounts {
    started: AtomicU32,
    answered: AtomicU32,
    never_sent: AtomicU32,
    /// Requests the call asked for, sent or not: the call's request limit.
    requested: AtomicU32,
    /// Body bytes the call sent and received: its transfer budget.
    transferred: AtomicU64,
}

impl ExchangeCounts {
    pub(super) fn start(&self) {
        self.started.fetch_add(1, Ordering::SeqCst);
    }

    /// Takes one of the call's `limit` requests; false when none is left.
    pub(super) fn take_request(&self, limit: u32) -> bool {
        self.requested.fetch_add(1, Ordering::Relaxed) < limit
    }

    /// Takes `bytes` of the call's transfer `budget`; false when they do not fit.
    pub(super) fn take_transfer(&self, bytes: u64, budget: u64) -> bool {
        self.transferred.fetch_add(bytes, Ordering::Relaxed) + bytes <= budget
    }

    /// Counts how a started request ended; `vendor_answered` when a hop of it was answered (a
    /// redirect) before it failed. A `Denied` failure comes from an offline script or a
    /// refused hop or address: that hop never left the host either.
    pub(super) fn end<T>(&self, result: &Result<T, http::HttpError>, vendor_answered: bool) {
        let counter = match result {
            Ok(_) => &self.answered,
            Err(http::HttpError::Connect(_) | http::HttpError::Denied(_)) if vendor_answered => {
                &self.answered
            }
            Err(http::HttpError::Connect(_) | http::HttpError::Denied(_)) => &self.never_sent,
            // Sent, and then no whole answer: it stays counted as unanswered.
            Err(http::HttpError::Timeout | http::HttpError::Protocol(_)) => return,
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }

    fn tally(&self) -> ExchangeTally {
        // `started` is read last: every request already counted as ended was started before,
        // so the difference never goes below zero while requests are still ending.
        let answered = self.answered.load(Ordering::SeqCst);
        let never_sent = self.never_sent.load(Ordering::SeqCst);
        let started = self.started.load(Ordering::SeqCst);
        ExchangeTally {
            answered,
            unanswered: started.saturating_sub(answered.saturating_add(never_sent)),
            never_sent,
        }
    }
}

/// What one call may use: the plugin's capabilities, with the call's deadline. Every import of
/// the world is a method here; the component's host traits and the native backend both call
/// these, so the allow-list, the secret placeholders, signing and the cache bounds exist once.
#[derive(Clone)]
pub(crate) struct CallCapabilities {
    pub(super) caps: Arc<Capabilities>,
    /// When the whole call must be over; HTTP requests get only what is left.
    pub(super) deadline: Instant,
    /// What this call's requests came to. Shared by the clones of one call, so the caller can
    /// read it after the call is over, however it ended.
    pub(super) exchanges: Arc<ExchangeCounts>,
}

impl CallCapabilities {
    pub(crate) fn new(caps: Arc<Capabilities>, deadline: Instant) -> Self {
        Self {
            caps,
            deadline,
            exchanges: Arc::default(),
        }
    }

    /// What this call's requests came to so far.
    pub(crate) fn exchanges(&self) -> ExchangeTally {
        self.exchanges.tally()
    }

    pub(crate) fn sign(&self, key: &str, alg: &str, data: &[u8]) -> Result<Vec<u8>, String> {
        let result = self.caps.signer.sign(&self.caps.secrets, key, alg, data);
        if result.is_err() && self.caps.secrets.get(key).is_none() {
            self.caps
                .counters
                .denied_secrets
                .fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    pub(crate) fn cache_get(&self, key: &str) -> Option<Vec<u8>> {
        self.caps.cache.get(key)
    }

    pub(crate) fn cache_set(&self, key: String, value: Vec<u8>, ttl_ms: u64) {
        self.caps
            .cache
            .set(key, value, Duration::from_millis(ttl_ms))
    }

    pub(crate) fn log(&self, level: log::Level, mut message: String) {
        if message.len() > MAX_LOG_BYTES {
            let mut cut = MAX_LOG_BYTES;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        let (plugin, version) = (&self.caps.plugin, &self.caps.version);
        let verdict = self
            .caps
            .quotas
            .log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(message.len(), &self.caps.bounds);
        let (emit, unreported) = match verdict {
            LogVerdict::Emit { dropped } => (true, dropped),
            LogVerdict::Drop { report } => (false, report.unwrap_or(0)),
        };
        if unreported > 0 {
            tracing::warn!(
                plugin,
                version,
                dropped = unreported,
                "plugin log lines dropped over bounds.log_lines_per_s or bounds.log_bytes_per_s"
            );
        }
        if !emit {
            self.caps
                .counters
                .dropped_logs
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        match level {
            log::Level::Trace => tracing::trace!(plugin, version, "{message}"),
            log::Level::Debug => tracing::debug!(plugin, version, "{message}"),
            log::Level::Info => tracing::info!(plugin, version, "{message}"),
            log::Level::Warn => tracing::warn!(plugin, version, "{message}"),
            log::Level::Error => tracing::error!(plugin, version, "{message}"),
        }
    }
}

/// The state of one call's `Store`.
pub struct PluginState {
    wasi: WasiCtx,
    table: ResourceTable,
    /// Memory cap for this call.
    pub limits: super::limiter::CallLimiter,
    call: CallCapabilities,
}

impl PluginState {
    /// State for one call that must finish by `deadline`.
    pub fn new(
        caps: Arc<Capabilities>,
        limits: super::limiter::CallLimiter,
        deadline: Instant,
    ) -> Self {
        Self::for_call(CallCapabilities::new(caps, deadline), limits)
    }

    /// State for the call `call`, whose clones see what its requests came to.
    pub(crate) fn for_call(call: CallCapabilities, limits: super::limiter::CallLimiter) -> Self {
        // Nothing is granted: no preopened directories, no environment, no arguments, no
        // inherited stdio, no sockets and no name lookups. Clocks and random stay, as WASI has them.
        let wasi = WasiCtx::builder()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        Self {
            wasi,
            table: ResourceTable::new(),
            limits,
            call,
        }
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl http::Host for PluginState {
    async fn send(&mut self, request: http::Request) -> Result<http::Response, http::HttpError> {
        self.call.send(request).await
    }

    async fn send_all(
        &mut self,
        requests: Vec<http::Request>,
    ) -> Vec<Result<http::Response, http::HttpError>> {
        self.call.send_all(requests).await
    }
}

impl secrets::Host for PluginState {
    async fn sign(&mut self, key: String, alg: String, data: Vec<u8>) -> Result<Vec<u8>, String> {
        self.call.sign(&key, &alg, &data)
    }
}

impl cache::Host for PluginState {
    async fn get(&mut self, key: String) -> Option<Vec<u8>> {
        self.call.cache_get(&key)
    }

    async fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: u64) {
        self.call.cache_set(key, value, ttl_ms)
    }
}

impl log::Host for PluginState {
    async fn log(&mut self, level: log::Level, message: String) {
        self.call.log(level, message)
    }
}

impl crate::contract::bindings::switchboard::adapter::types::Host for PluginState {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_hosts_match_host_and_optional_port() {
        let any_port = AllowedHost::parse("127.0.0.1");
        let one_port = AllowedHost::parse("fcm.googleapis.com:443");
        assert!(any_port.permits("127.0.0.1", 8080));
        assert!(one_port.permits("FCM.googleapis.com", 443));
        assert!(!one_port.permits("fcm.googleapis.com", 8443));
        assert!(!one_port.permits("evil.example", 443));
    }

    #[test]
    fn cache_refuses_long_keys_and_bounds_its_total() {
        let cache = PluginCache::default();
        cache.set(
            "k".repeat(MAX_CACHE_KEY_BYTES + 1),
            b"v".to_vec(),
            Duration::from_secs(60),
        );
        assert!(cache.entries.lock().map(|e| e.is_empty()).unwrap_or(false));
        let value = vec![0u8; MAX_CACHE_VALUE_BYTES];
        for i in 0..1000 {
            cache.set(format!("k{i}"), value.clone(), Duration::from_secs(60));
        }
        let total = cache
            .entries
            .lock()
            .map(|e| cache_bytes(&e))
            .unwrap_or(usize::MAX);
        assert!(total <= MAX_CACHE_TOTAL_BYTES, "{total}");
    }

    /// A listener whose accept queue is full: the kernel drops further SYNs, so a connection
    /// to it is neither made nor refused, as with a vendor behind a black-holed route. The
    /// returned stream is the one connection that fills the queue; keep it alive.
    fn black_hole() -> std::io::Result<(tokio::net::TcpListener, std::net::TcpStream)> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))?;
        // A backlog of 0 queues one connection; the next SYNs are dropped.
        let listener = socket.listen(0)?;
        let filler =
            std::net::TcpStream::connect_timeout(&listener.local_addr()?, Duration::from_secs(1))?;
        Ok((listener, filler))
    }

    /// A vendor that reads each request and answers it with `reply`, or never when `None`.
    async fn vendor(reply: Option<&'static [u8]>) -> std::io::Result<std::net::SocketAddr> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = stream.read(&mut buf).await;
                    match reply {
                        Some(reply) => {
                            let _ = stream.write_all(reply).await;
                        }
                        None => std::future::pending().await,
                    }
                });
            }
        });
        Ok(addr)
    }

    fn post_to(addr: std::net::SocketAddr) -> http::Request {
        http::Request {
            method: "POST".into(),
            url: format!("http://{addr}/send"),
            headers: Vec::new(),
            body: b"{}".to_vec(),
        }
    }

    fn call_to(addr: std::net::SocketAddr, client: reqwest::Client) -> CallCapabilities {
        let caps = Capabilities::new(
            "p".into(),
            vec![AllowedHost::parse(&addr.to_string())],
            PluginSecrets::default(),
            Arc::default(),
            client,
            Arc::default(),
        );
        CallCapabilities::new(Arc::new(caps), Instant::now() + Duration::from_secs(10))
    }

    fn tally(answered: u32, unanswered: u32, never_sent: u32) -> ExchangeTally {
        ExchangeTally {
            answered,
            unanswered,
            never_sent,
        }
    }

    #[tokio::test]
    async fn a_connect_timeout_is_a_connect_error_and_never_reached_the_vendor()
    -> anyhow::Result<()> {
        let (listener, _filler) = black_hole()?;
        let addr = listener.local_addr()?;
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(200))
            .build()?;
        let call = call_to(addr, client);
        let result = call.send(post_to(addr)).await;
        assert!(
            matches!(result, Err(http::HttpError::Connect(_))),
            "{result:?}"
        );
        assert_eq!(call.exchanges(), tally(0, 0, 1), "nothing was sent");
        Ok(())
    }

    #[tokio::test]
    async fn requests_count_as_answered_unanswered_or_never_sent() -> anyhow::Result<()> {
        let answering = vendor(Some(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")).await?;
        let silent = vendor(None).await?;
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            listener.local_addr()?
        };
        let caps = Arc::new(Capabilities::new(
            "p".into(),
            [answering, silent, closed]
                .iter()
                .map(|a| AllowedHost::parse(&a.to_string()))
                .collect(),
            PluginSecrets::default(),
            Arc::default(),
            reqwest::Client::new(),
            Arc::default(),
        ));
        // A short deadline, so the silent vendor's request times out within the test.
        let call = CallCapabilities::new(caps, Instant::now() + Duration::from_millis(500));
        let results = call
            .send_all(vec![post_to(answering), post_to(closed), post_to(silent)])
            .await;
        assert!(
            matches!(results[0], Ok(ref r) if r.status == 200),
            "{results:?}"
        );
        assert!(
            matches!(results[1], Err(http::HttpError::Connect(_))),
            "{results:?}"
        );
        assert!(
            matches!(results[2], Err(http::HttpError::Timeout)),
            "{results:?}"
        );
        assert_eq!(call.exchanges(), tally(1, 1, 1));
        // Refused before it left the host: not counted at all.
        let denied = call.send(post_to("127.0.0.1:9".parse()?)).await;
        assert!(
            matches!(denied, Err(http::HttpError::Denied(_))),
            "{denied:?}"
        );
        assert_eq!(call.exchanges(), tally(1, 1, 1));
        Ok(())
    }

    /// Bulk lanes fill the plugin's requests in flight during a backlog drain. A realtime request
    /// must still find a slot at once, not queue behind every bulk request waiting for one.
    #[tokio::test]
    async fn realtime_finds_a_request_slot_while_bulk_holds_the_rest() -> anyhow::Result<()> {
        let answering = vendor(Some(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")).await?;
        let silent = vendor(None).await?;
        let bounds = PluginBounds {
            requests_in_flight: 4,
            ..PluginBounds::default()
        };
        let bulk = Arc::new(
            Capabilities::new(
                "p".into(),
                [answering, silent]
                    .iter()
                    .map(|a| AllowedHost::parse(&a.to_string()))
                    .collect(),
                PluginSecrets::default(),
                Arc::default(),
                reqwest::Client::new(),
                Arc::default(),
            )
            .with_bounds(bounds, PluginQuotas::new(&bounds)),
        );
        let realtime = Arc::new(bulk.for_realtime(reqwest::Client::new()));
        // Eight bulk requests to a vendor that never answers: as many as may go out hold their
        // slots for the whole deadline, the rest wait for one.
        let bulk_call =
            CallCapabilities::new(bulk.clone(), Instant::now() + Duration::from_secs(5));
        let stuck = tokio::spawn(async move {
            bulk_call
                .send_all((0..8).map(|_| post_to(silent)).collect())
                .await
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let realtime_call =
            CallCapabilities::new(realtime, Instant::now() + Duration::from_secs(1));
        let answered = realtime_call.send(post_to(answering)).await;
        assert!(
            matches!(answered, Ok(ref r) if r.status == 200),
            "realtime waited behind bulk: {answered:?}"
        );
        stuck.abort();
        Ok(())
    }

    #[tokio::test]
    async fn a_request_cut_off_in_flight_counts_as_unanswered() -> anyhow::Result<()> {
        let silent = vendor(None).await?;
        let call = call_to(silent, reqwest::Client::new());
        // As when a trap or the call's deadline drops the call while its request is out.
        let cut_off = tokio::time::timeout(Duration::from_millis(300), call.send(post_to(silent)));
        assert!(cut_off.await.is_err(), "the silent vendor never answers");
        assert_eq!(call.exchanges(), tally(0, 1, 0));
        Ok(())
    }

    #[test]
    fn cache_entries_expire_and_zero_ttl_removes() {
        let cache = PluginCache::default();
        cache.set("a".into(), b"1".to_vec(), Duration::from_secs(60));
        assert_eq!(cache.get("a"), Some(b"1".to_vec()));
        cache.set("a".into(), Vec::new(), Duration::ZERO);
        assert_eq!(cache.get("a"), None);
    }
}
