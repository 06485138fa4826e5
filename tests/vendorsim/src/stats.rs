//! Exact counts of what a simulator accepted, refused and saw twice.

use std::collections::{BTreeMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use serde::Serialize;

/// A simulator's counts. Deliveries are identified by recipient and message body, so a retry of
/// an already accepted message counts as a duplicate, as the recipient would see it twice.
#[derive(Debug, Default)]
pub struct SimStats {
    accepted: AtomicU64,
    duplicates: AtomicU64,
    token_requests: AtomicU64,
    auth_failures: AtomicU64,
    seen: Mutex<HashSet<u64>>,
    refused: Mutex<BTreeMap<String, u64>>,
    /// Recipients whose first acceptance is logged with its time (latency and order checks).
    arrivals_prefix: OnceLock<String>,
    arrivals: Mutex<Vec<(String, Instant)>>,
    /// For the same recipients: when the request that delivered them first reached the handler.
    entries: Mutex<std::collections::HashMap<String, Instant>>,
    in_flight: AtomicU64,
    peak_in_flight: AtomicU64,
}

/// A request being served; counted in flight until dropped.
pub struct InFlight<'a>(&'a SimStats);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A copy of the counts at one moment.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Distinct deliveries accepted.
    pub delivered: u64,
    /// Accepted deliveries that had been accepted before.
    pub duplicates: u64,
    /// Access-token or provider-token requests served.
    pub token_requests: u64,
    /// Requests refused for bad credentials.
    pub auth_failures: u64,
    /// Deliveries refused, by the vendor's error code.
    pub refused: BTreeMap<String, u64>,
}

impl SimStats {
    /// Counts an accepted delivery of `body` to `recipient`; true when it is new.
    pub fn accept(&self, recipient: &str, body: &[u8]) -> bool {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        recipient.hash(&mut hasher);
        body.hash(&mut hasher);
        let fresh = self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(hasher.finish());
        if fresh {
            self.accepted.fetch_add(1, Ordering::Relaxed);
            if let Some(prefix) = self.arrivals_prefix.get()
                && recipient.starts_with(prefix.as_str())
            {
                self.arrivals
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((recipient.to_string(), Instant::now()));
            }
        } else {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        }
        fresh
    }

    /// From now on, logs the first acceptance of every recipient starting with `prefix`, in the
    /// order accepted. Only one prefix per simulator; a second call is ignored.
    pub fn log_arrivals(&self, prefix: &str) {
        let _ = self.arrivals_prefix.set(prefix.to_string());
    }

    /// The logged acceptances, in order: recipient and when.
    pub fn arrivals(&self) -> Vec<(String, Instant)> {
        self.arrivals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Counts a refused delivery under the vendor's error code.
    pub fn refuse(&self, code: &str) {
        *self
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(code.to_string())
            .or_default() += 1;
    }

    /// Notes when a request for `recipient` reached the handler (before the simulated latency),
    /// for recipients logged by [`Self::log_arrivals`]; the first request per recipient counts.
    pub fn note_entry(&self, recipient: &str, at: Instant) {
        if let Some(prefix) = self.arrivals_prefix.get()
            && recipient.starts_with(prefix.as_str())
        {
            self.entries
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(recipient.to_string())
                .or_insert(at);
        }
    }

    /// When each logged recipient's first request reached the handler.
    pub fn entries(&self) -> std::collections::HashMap<String, Instant> {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Counts a request in flight until the guard is dropped, and keeps the most seen at once
    /// (the lab runs its bare client at the concurrency the host reached).
    pub fn request_started(&self) -> InFlight<'_> {
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_in_flight.fetch_max(now, Ordering::Relaxed);
        InFlight(self)
    }

    /// The most requests in flight at once so far.
    pub fn peak_in_flight(&self) -> u64 {
        self.peak_in_flight.load(Ordering::Relaxed)
    }

    /// Counts a token request.
    pub fn token_request(&self) {
        self.token_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request refused for its credentials.
    pub fn auth_failure(&self) {
        self.auth_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts now.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            delivered: self.accepted.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            token_requests: self.token_requests.load(Ordering::Relaxed),
            auth_failures: self.auth_failures.load(Ordering::Relaxed),
            refused: self
                .refused
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}
