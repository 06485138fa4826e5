//! Fault injection shared by every simulator: latency, outage windows (every request answered
//! 503, or connections refused), and a rate limit answered with 429 and Retry-After. Per-code
//! error rates are each simulator's own, since the codes are.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::Latency;

/// What an outage does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutageMode {
    /// Every request is answered with the vendor's 503.
    Unavailable,
    /// The listening socket is closed: connections are refused.
    Refuse,
}

/// An outage from `after` (since the simulator started) for `lasting`.
#[derive(Debug, Clone, Copy)]
pub struct OutageWindow {
    pub after: Duration,
    pub lasting: Duration,
    pub mode: OutageMode,
}

/// A rate limit: at most `per_second` requests a second; the rest get 429 with Retry-After.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    pub per_second: u32,
    pub retry_after_s: u64,
}

/// The faults a simulator injects besides its per-code error rates.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    pub latency: Latency,
    pub outages: Vec<OutageWindow>,
    pub rate_limit: Option<RateLimit>,
}

/// What a request meets before the simulator looks at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injected {
    /// Answer with the vendor's 503.
    Unavailable,
    /// Answer with the vendor's 429 and this Retry-After.
    RateLimited { retry_after_s: u64 },
}

/// The running state of [`Faults`].
#[derive(Debug)]
pub struct FaultState {
    faults: Faults,
    started: Instant,
    /// Token bucket: (tokens, last refill).
    bucket: Mutex<(f64, Instant)>,
    /// An outage switched on by hand (tests, the lab), on top of the windows.
    manual: Mutex<Option<OutageMode>>,
}

impl FaultState {
    pub fn new(faults: Faults) -> Self {
        let tokens = faults.rate_limit.map_or(0.0, |r| f64::from(r.per_second));
        Self {
            faults,
            started: Instant::now(),
            bucket: Mutex::new((tokens, Instant::now())),
            manual: Mutex::new(None),
        }
    }

    /// Waits the simulated latency.
    pub async fn delay(&self) {
        self.faults.latency.wait().await;
    }

    /// Switches an outage on (`Some`) or off (`None`) now, regardless of the windows.
    pub fn set_outage(&self, mode: Option<OutageMode>) {
        *self.manual.lock().unwrap_or_else(|p| p.into_inner()) = mode;
    }

    /// The outage in force now, if any.
    pub fn outage_now(&self) -> Option<OutageMode> {
        if let Some(mode) = *self.manual.lock().unwrap_or_else(|p| p.into_inner()) {
            return Some(mode);
        }
        let since = self.started.elapsed();
        self.faults
            .outages
            .iter()
            .find(|w| since >= w.after && since < w.after + w.lasting)
            .map(|w| w.mode)
    }

    /// The fault a request meets now, if any: an outage, then the rate limit.
    pub fn check(&self) -> Option<Injected> {
        if self.outage_now().is_some() {
            return Some(Injected::Unavailable);
        }
        let limit = self.faults.rate_limit?;
        let mut bucket = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(bucket.1).as_secs_f64() * f64::from(limit.per_second);
        bucket.0 = (bucket.0 + refill).min(f64::from(limit.per_second));
        bucket.1 = now;
        if bucket.0 >= 1.0 {
            bucket.0 -= 1.0;
            None
        } else {
            Some(Injected::RateLimited {
                retry_after_s: limit.retry_after_s,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_answers_429_past_the_budget() {
        let state = FaultState::new(Faults {
            rate_limit: Some(RateLimit {
                per_second: 3,
                retry_after_s: 2,
            }),
            ..Default::default()
        });
        let answers: Vec<_> = (0..5).map(|_| state.check()).collect();
        assert_eq!(answers.iter().filter(|a| a.is_none()).count(), 3);
        assert_eq!(answers[4], Some(Injected::RateLimited { retry_after_s: 2 }));
    }

    #[test]
    fn outage_windows_and_manual_outages() {
        let state = FaultState::new(Faults {
            outages: vec![OutageWindow {
                after: Duration::ZERO,
                lasting: Duration::from_secs(3600),
                mode: OutageMode::Unavailable,
            }],
            ..Default::default()
        });
        assert_eq!(state.check(), Some(Injected::Unavailable));
        let state = FaultState::new(Faults::default());
        assert_eq!(state.check(), None);
        state.set_outage(Some(OutageMode::Refuse));
        assert_eq!(state.outage_now(), Some(OutageMode::Refuse));
    }
}
