//! The per-second window: what calls came to, second by second, over the last ten minutes.
//!
//! On the ground floor: the router keeps one per vendor (its breaker judges on it), the registry
//! one per plugin version (a canary is judged on it), and the console plots both. It imports
//! nothing of the host.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Seconds of per-second history kept: ten minutes, for the console's plots.
pub const HISTORY_S: usize = 600;

/// Answers in one second.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Bucket {
    /// The second (since the Unix epoch) this bucket counts.
    pub second: u64,
    /// Deliveries the vendor answered (delivered, rejected, invalid recipient).
    pub ok: u64,
    /// Deliveries that failed in a way worth retrying, or trapped the plugin.
    pub errors: u64,
    /// Deliveries whose call passed its deadline, or whose request was sent and got no answer
    /// in time. A connection that could not be made (even by timing out) counts as an error.
    pub timeouts: u64,
    /// Calls finished, and the sum and maximum of their durations.
    pub calls: u64,
    pub latency_ms_sum: u64,
    pub latency_ms_max: u64,
}

impl Bucket {
    /// Adds `other`'s counts to this bucket's (its second stays).
    pub fn add(&mut self, other: &Bucket) {
        self.ok += other.ok;
        self.errors += other.errors;
        self.timeouts += other.timeouts;
        self.calls += other.calls;
        self.latency_ms_sum += other.latency_ms_sum;
        self.latency_ms_max = self.latency_ms_max.max(other.latency_ms_max);
    }

    /// Deliveries answered, failed or timed out.
    pub fn deliveries(&self) -> u64 {
        self.ok + self.errors + self.timeouts
    }

    /// Errors and timeouts as a percentage of deliveries (0 when there were none).
    pub fn error_percent(&self) -> f64 {
        match self.deliveries() {
            0 => 0.0,
            n => (self.errors + self.timeouts) as f64 * 100.0 / n as f64,
        }
    }

    /// Mean call duration in milliseconds.
    pub fn mean_latency_ms(&self) -> f64 {
        match self.calls {
            0 => 0.0,
            n => self.latency_ms_sum as f64 / n as f64,
        }
    }
}

/// What one call came to, for a window.
#[derive(Debug, Default, Clone, Copy)]
pub struct CallTally {
    pub ok: u64,
    pub errors: u64,
    pub timeouts: u64,
    pub latency: Duration,
}

/// Per-second buckets over the last [`HISTORY_S`] seconds.
#[derive(Debug)]
pub struct Window {
    buckets: Vec<Bucket>,
}

impl Default for Window {
    fn default() -> Self {
        Self {
            buckets: vec![Bucket::default(); HISTORY_S],
        }
    }
}

impl Window {
    /// Adds one call's tally to the bucket of `second`.
    pub fn record(&mut self, second: u64, tally: &CallTally) {
        let slot = &mut self.buckets[second as usize % HISTORY_S];
        if slot.second != second {
            *slot = Bucket {
                second,
                ..Bucket::default()
            };
        }
        let latency_ms = tally.latency.as_millis() as u64;
        slot.add(&Bucket {
            second,
            ok: tally.ok,
            errors: tally.errors,
            timeouts: tally.timeouts,
            calls: 1,
            latency_ms_sum: latency_ms,
            latency_ms_max: latency_ms,
        });
    }

    /// The sum of the last `seconds` seconds up to `now` (inclusive), counting only seconds at
    /// or after `since`.
    pub fn total(&self, now: u64, seconds: u64, since: u64) -> Bucket {
        let from = now.saturating_sub(seconds.saturating_sub(1)).max(since);
        let mut total = Bucket {
            second: now,
            ..Bucket::default()
        };
        for bucket in &self.buckets {
            if bucket.second >= from
                && bucket.second <= now
                && bucket.deliveries() + bucket.calls > 0
            {
                total.add(bucket);
            }
        }
        total
    }

    /// One bucket per second of the last `seconds` seconds, oldest first (empty seconds too).
    pub fn series(&self, now: u64, seconds: u64) -> Vec<Bucket> {
        let seconds = seconds.min(HISTORY_S as u64);
        (now.saturating_sub(seconds - 1)..=now)
            .map(|second| {
                let bucket = self.buckets[second as usize % HISTORY_S];
                if bucket.second == second {
                    bucket
                } else {
                    Bucket {
                        second,
                        ..Bucket::default()
                    }
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(ok: u64, errors: u64) -> CallTally {
        CallTally {
            ok,
            errors,
            ..CallTally::default()
        }
    }

    #[test]
    fn the_window_sums_seconds_and_forgets_old_ones() {
        let mut window = Window::default();
        window.record(1000, &tally(3, 1));
        window.record(1005, &tally(2, 0));
        window.record(1005 + HISTORY_S as u64, &tally(7, 0));
        let total = window.total(1009, 10, 0);
        assert_eq!(
            (total.ok, total.errors, total.calls),
            (3, 1, 1),
            "1005 was overwritten"
        );
        let total = window.total(1009, 5, 0);
        assert_eq!(total.deliveries(), 0, "1000 is outside the last 5 s");
        assert_eq!(window.series(1009, 3).len(), 3);
    }
}
