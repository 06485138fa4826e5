//! Vendor health: what each vendor answered, second by second, and the circuit breaker that
//! ejects a failing vendor and probes it back.
//!
//! Owns each vendor's per-second [`Window`] (read by the console's plots) and the breaker's state
//! machine:
//!
//! - **closed**: the vendor takes its share. When the window holds at least `min_calls` answers
//!   and errors plus timeouts reach `error_percent` of them, it opens.
//! - **open** (ejected): the router gives the vendor nothing new. After `open_s` it turns
//!   half-open.
//! - **half-open**: up to `probes` deliveries at a time go to the vendor. `probes` successes in a
//!   row close it; a failure opens it again for twice as long (up to `max_open_s`).
//!
//! A vendor's `rejected` and `invalid-recipient` answers count as successes here: the vendor
//! answered, and the fault was the request's. Plugin traps do not count against the vendor (they
//! count against the plugin version, which is what a canary is judged on).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::clock::now_ms;
use crate::config::HealthConfig;
use crate::telemetry::events;
pub use crate::window::{Bucket, CallTally, HISTORY_S, Window};

/// The breaker's state, as shown to operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

#[derive(Debug)]
struct Breaker {
    state: BreakerState,
    /// When the breaker last opened, and for how long.
    opened_at: Instant,
    open_for: Duration,
    /// Deliveries sent while half-open and not yet answered.
    probes_in_flight: u64,
    /// Successes in a row while half-open.
    probe_successes: u64,
    /// Times the breaker opened since the host started.
    trips: u64,
    /// The window is judged from this second on: a restored vendor starts with a clean slate.
    judged_since: u64,
    /// When the state last changed (ms since the epoch).
    changed_at_ms: u64,
}

#[derive(Debug)]
struct VendorHealth {
    window: Window,
    breaker: Breaker,
}

/// One vendor's health, as the API and `/metrics` show it.
#[derive(Debug, Clone, Serialize)]
pub struct VendorHealthView {
    pub vendor: String,
    pub breaker: BreakerState,
    /// When the breaker last changed state (ms since the epoch).
    pub breaker_changed_at_ms: u64,
    pub trips: u64,
    /// The sliding window's totals.
    pub window: Bucket,
    pub error_percent: f64,
    pub mean_latency_ms: f64,
}

/// Every vendor's health and breaker.
#[derive(Debug)]
pub struct Health {
    config: HealthConfig,
    vendors: HashMap<String, Mutex<VendorHealth>>,
}

fn now_s() -> u64 {
    now_ms() / 1000
}

impl Health {
    /// Health for `vendors`, all closed.
    pub fn new<'a>(config: &HealthConfig, vendors: impl IntoIterator<Item = &'a String>) -> Self {
        let start = Instant::now();
        let vendors = vendors
            .into_iter()
            .map(|name| {
                let health = VendorHealth {
                    window: Window::default(),
                    breaker: Breaker {
                        state: BreakerState::Closed,
                        opened_at: start,
                        open_for: Duration::from_secs(config.open_s),
                        probes_in_flight: 0,
                        probe_successes: 0,
                        trips: 0,
                        judged_since: 0,
                        changed_at_ms: now_ms(),
                    },
                };
                (name.clone(), Mutex::new(health))
            })
            .collect();
        Self {
            config: config.clone(),
            vendors,
        }
    }

    fn vendor(&self, vendor: &str) -> Option<std::sync::MutexGuard<'_, VendorHealth>> {
        self.vendors
            .get(vendor)
            .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Counts one call's answers and moves the vendor's breaker.
    pub fn record(&self, vendor: &str, tally: &CallTally) {
        let Some(mut health) = self.vendor(vendor) else {
            return;
        };
        let now = now_s();
        health.window.record(now, tally);
        let config = &self.config;
        let failures = tally.errors + tally.timeouts;
        let health = &mut *health;
        let breaker = &mut health.breaker;
        match breaker.state {
            BreakerState::Closed => {
                let window = health
                    .window
                    .total(now, config.window_s, breaker.judged_since);
                if window.deliveries() >= config.min_calls
                    && window.error_percent() >= config.error_percent as f64
                {
                    breaker.trips += 1;
                    breaker.open_for = Duration::from_secs(config.open_s);
                    Self::open(breaker);
                    events::VendorEjected {
                        vendor,
                        error_percent: window.error_percent(),
                        deliveries: window.deliveries(),
                        open_for: breaker.open_for,
                    }
                    .emit();
                }
            }
            BreakerState::HalfOpen => {
                breaker.probes_in_flight =
                    breaker.probes_in_flight.saturating_sub(tally.ok + failures);
                if failures > 0 {
                    breaker.open_for = (breaker.open_for * 2)
                        .min(Duration::from_secs(config.max_open_s.max(config.open_s)));
                    breaker.trips += 1;
                    Self::open(breaker);
                    events::VendorProbeFailed {
                        vendor,
                        open_for: breaker.open_for,
                    }
                    .emit();
                } else {
                    breaker.probe_successes += tally.ok;
                    if breaker.probe_successes >= u64::from(config.probes) {
                        breaker.state = BreakerState::Closed;
                        breaker.changed_at_ms = now_ms();
                        // Judge the vendor afresh: the outage's errors are behind it.
                        breaker.judged_since = now + 1;
                        events::VendorRestored { vendor }.emit();
                    }
                }
            }
            BreakerState::Open => {}
        }
    }

    fn open(breaker: &mut Breaker) {
        breaker.state = BreakerState::Open;
        breaker.opened_at = Instant::now();
        breaker.probes_in_flight = 0;
        breaker.probe_successes = 0;
        breaker.changed_at_ms = now_ms();
    }

    /// Turns an open breaker half-open once its time is up; returns the state.
    fn current(vendor: &str, breaker: &mut Breaker) -> BreakerState {
        if breaker.state == BreakerState::Open && breaker.opened_at.elapsed() >= breaker.open_for {
            breaker.state = BreakerState::HalfOpen;
            breaker.changed_at_ms = now_ms();
            events::VendorProbing { vendor }.emit();
        }
        breaker.state
    }

    /// The vendor's breaker state (an unknown vendor counts as closed).
    pub fn state(&self, vendor: &str) -> BreakerState {
        match self.vendor(vendor) {
            Some(mut health) => Self::current(vendor, &mut health.breaker),
            None => BreakerState::Closed,
        }
    }

    /// True when the vendor may take a new delivery: closed, or half-open with a probe free.
    pub fn admits(&self, vendor: &str) -> bool {
        let Some(mut health) = self.vendor(vendor) else {
            return true;
        };
        let probes = u64::from(self.config.probes);
        let breaker = &mut health.breaker;
        match Self::current(vendor, breaker) {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen => breaker.probes_in_flight < probes,
        }
    }

    /// Notes a delivery sent to `vendor`: a probe while half-open.
    pub fn take(&self, vendor: &str) {
        if let Some(mut health) = self.vendor(vendor)
            && health.breaker.state == BreakerState::HalfOpen
        {
            health.breaker.probes_in_flight += 1;
        }
    }

    /// Every vendor's health, by name.
    pub fn views(&self) -> Vec<VendorHealthView> {
        let now = now_s();
        let mut views: Vec<_> = self
            .vendors
            .iter()
            .map(|(name, health)| {
                let mut health = health.lock().unwrap_or_else(|p| p.into_inner());
                let breaker = Self::current(name, &mut health.breaker);
                let window = health.window.total(now, self.config.window_s, 0);
                VendorHealthView {
                    vendor: name.clone(),
                    breaker,
                    breaker_changed_at_ms: health.breaker.changed_at_ms,
                    trips: health.breaker.trips,
                    error_percent: window.error_percent(),
                    mean_latency_ms: window.mean_latency_ms(),
                    window,
                }
            })
            .collect();
        views.sort_by(|a, b| a.vendor.cmp(&b.vendor));
        views
    }

    /// A vendor's last `seconds` seconds, one bucket each, for plots.
    pub fn series(&self, vendor: &str, seconds: u64) -> Option<Vec<Bucket>> {
        self.vendor(vendor)
            .map(|health| health.window.series(now_s(), seconds))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> HealthConfig {
        HealthConfig {
            window_s: 10,
            min_calls: 10,
            error_percent: 50,
            open_s: 1,
            max_open_s: 4,
            probes: 2,
        }
    }

    fn tally(ok: u64, errors: u64) -> CallTally {
        CallTally {
            ok,
            errors,
            timeouts: 0,
            latency: Duration::from_millis(10),
        }
    }

    #[test]
    fn few_errors_or_too_few_answers_keep_the_vendor_in() {
        let vendors = ["a".to_string()];
        let health = Health::new(&config(), &vendors);
        health.record("a", &tally(0, 9));
        assert_eq!(health.state("a"), BreakerState::Closed, "under min_calls");
        health.record("a", &tally(20, 0));
        assert_eq!(health.state("a"), BreakerState::Closed, "9 of 29 failed");
        assert!(health.admits("a"));
    }

    #[test]
    fn errors_over_the_threshold_eject_then_probes_restore() {
        let vendors = ["a".to_string()];
        let health = Health::new(&config(), &vendors);
        health.record("a", &tally(5, 5));
        assert_eq!(health.state("a"), BreakerState::Open);
        assert!(!health.admits("a"));
        std::thread::sleep(Duration::from_millis(1100));
        assert!(health.admits("a"), "half-open after open_s");
        assert_eq!(health.state("a"), BreakerState::HalfOpen);
        health.take("a");
        health.take("a");
        assert!(!health.admits("a"), "only `probes` deliveries at a time");
        health.record("a", &tally(1, 0));
        assert_eq!(
            health.state("a"),
            BreakerState::HalfOpen,
            "one success of two"
        );
        health.record("a", &tally(1, 0));
        assert_eq!(health.state("a"), BreakerState::Closed);
        // The outage's errors are not held against the restored vendor.
        health.record("a", &tally(0, 1));
        assert_eq!(health.state("a"), BreakerState::Closed);
    }

    #[test]
    fn a_failed_probe_ejects_again_for_longer() {
        let vendors = ["a".to_string()];
        let health = Health::new(&config(), &vendors);
        health.record("a", &tally(0, 10));
        std::thread::sleep(Duration::from_millis(1100));
        assert!(health.admits("a"));
        health.take("a");
        health.record("a", &tally(0, 1));
        assert_eq!(health.state("a"), BreakerState::Open);
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(
            health.state("a"),
            BreakerState::Open,
            "the second wait is twice the first"
        );
        let views = health.views();
        assert_eq!(views[0].trips, 2);
    }
}
