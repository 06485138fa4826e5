//! Per-vendor limits, shared by every lane that calls the vendor: how many calls run at once, how
//! many deliveries per second go out (a token bucket), and a hold on every call while the vendor
//! has asked us to wait (a Retry-After).
//!
//! Realtime keeps a reserve of both: bulk lanes may take at most three quarters of the call
//! slots, and may not draw the bucket below a quarter of its burst. A flood of ads therefore slows
//! realtime by at most one call's worth, never by the depth of the ads backlog.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::TrafficClass;
use crate::settle::backoff::MAX_HOLD;

/// A token bucket over deliveries, with a reserve only realtime may spend.
#[derive(Debug)]
pub struct TokenBucket {
    rate_per_s: f64,
    burst: f64,
    reserve: f64,
    state: Mutex<BucketState>,
}

#[derive(Debug)]
struct BucketState {
    /// Tokens now; negative after a batch larger than what was there (a debt paid by waiting).
    level: f64,
    refilled_at: Instant,
}

impl TokenBucket {
    /// `rate_per_s` tokens a second, holding at most `burst`; starts full.
    pub fn new(rate_per_s: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate_per_s,
            burst,
            reserve: burst / 4.0,
            state: Mutex::new(BucketState {
                level: burst,
                refilled_at: Instant::now(),
            }),
        }
    }

    /// Takes `n` tokens, waiting until they are there. A batch larger than the burst waits for a
    /// full bucket and leaves a debt, so the long-run rate holds for any batch size.
    pub async fn take(&self, n: usize, class: TrafficClass) {
        let need = (n as f64).min(self.burst);
        // Bulk leaves the reserve alone, unless its batch could never fit beside it.
        let floor = match class {
            TrafficClass::Realtime => 0.0,
            _ => self.reserve.min(self.burst - need),
        };
        loop {
            let wait = {
                let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                let earned = now.duration_since(state.refilled_at).as_secs_f64() * self.rate_per_s;
                state.level = (state.level + earned).min(self.burst);
                state.refilled_at = now;
                if state.level - need >= floor {
                    state.level -= n as f64;
                    return;
                }
                (floor + need - state.level) / self.rate_per_s
            };
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
        }
    }
}

/// The limits of one vendor (one plugin).
#[derive(Debug)]
pub struct VendorGate {
    /// Every call holds one of these.
    calls: Arc<Semaphore>,
    /// Bulk calls also hold one of these: fewer than `calls`, so realtime always finds a slot.
    bulk_calls: Arc<Semaphore>,
    bucket: Option<TokenBucket>,
    /// No call starts before this instant (the vendor's Retry-After).
    hold_until: Mutex<Option<Instant>>,
}

/// A call slot, given back when dropped.
#[derive(Debug)]
pub struct CallPermit {
    _call: OwnedSemaphorePermit,
    _bulk: Option<OwnedSemaphorePermit>,
}

impl VendorGate {
    /// `concurrency` calls at once (a quarter, at least one, kept for realtime when there are two
    /// or more), and at most `rate_per_s` deliveries a second when set.
    pub fn new(concurrency: usize, rate_per_s: Option<f64>, burst: Option<u32>) -> Self {
        let concurrency = concurrency.max(1);
        let reserved = if concurrency >= 2 {
            (concurrency / 4).max(1)
        } else {
            0
        };
        let bucket = rate_per_s.map(|rate| {
            let burst = burst.unwrap_or(rate.ceil().clamp(1.0, f64::from(u32::MAX)) as u32);
            TokenBucket::new(rate, burst)
        });
        Self {
            calls: Arc::new(Semaphore::new(concurrency)),
            bulk_calls: Arc::new(Semaphore::new(concurrency - reserved)),
            bucket,
            hold_until: Mutex::new(None),
        }
    }

    /// Waits for a call slot, the end of any hold, and tokens for `deliveries`.
    pub async fn admit(&self, class: TrafficClass, deliveries: usize) -> CallPermit {
        let bulk = match class {
            TrafficClass::Realtime => None,
            // The semaphores are never closed.
            _ => self.bulk_calls.clone().acquire_owned().await.ok(),
        };
        let call = loop {
            if let Ok(permit) = self.calls.clone().acquire_owned().await {
                break permit;
            }
        };
        self.wait_out_hold().await;
        if let Some(bucket) = &self.bucket {
            bucket.take(deliveries, class).await;
        }
        CallPermit {
            _call: call,
            _bulk: bulk,
        }
    }

    async fn wait_out_hold(&self) {
        loop {
            let until = *self.hold_until.lock().unwrap_or_else(|p| p.into_inner());
            match until {
                Some(until) if until > Instant::now() => tokio::time::sleep_until(until).await,
                _ => return,
            }
        }
    }

    /// The vendor asked to wait `after` (a 429 or 503 with Retry-After): no call to it starts
    /// before then, from any lane. A later hold extends an earlier one, never shortens it.
    pub fn hold_for(&self, after: Duration) {
        let until = Instant::now() + after.min(MAX_HOLD);
        let mut hold = self.hold_until.lock().unwrap_or_else(|p| p.into_inner());
        if hold.is_none_or(|current| current < until) {
            *hold = Some(until);
        }
    }

    /// Calls that may start now without waiting for a slot.
    pub fn free_calls(&self) -> usize {
        self.calls.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_bucket_spends_its_burst_then_keeps_the_rate() {
        let bucket = TokenBucket::new(10.0, 10);
        let start = Instant::now();
        bucket.take(10, TrafficClass::Realtime).await;
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "the burst is there at once"
        );
        bucket.take(1, TrafficClass::Realtime).await;
        let first = start.elapsed();
        assert!(
            first >= Duration::from_millis(100) && first < Duration::from_millis(110),
            "{first:?}"
        );
        for _ in 0..20 {
            bucket.take(1, TrafficClass::Realtime).await;
        }
        // 21 tokens after the burst at 10/s: 2.1 s.
        let all = start.elapsed();
        assert!(
            all >= Duration::from_millis(2100) && all < Duration::from_millis(2150),
            "{all:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_larger_than_the_burst_leaves_a_debt() {
        let bucket = TokenBucket::new(100.0, 50);
        let start = Instant::now();
        bucket.take(150, TrafficClass::Batch).await;
        // The next delivery waits for the 100-token debt (1 s) and its own token.
        bucket.take(1, TrafficClass::Realtime).await;
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(1010) && waited < Duration::from_millis(1030),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn bulk_leaves_the_reserve_to_realtime() {
        let bucket = Arc::new(TokenBucket::new(1.0, 8));
        // Bulk may draw the bucket to its reserve (2 of 8), no further.
        bucket.take(6, TrafficClass::Ads).await;
        let ads = tokio::spawn({
            let bucket = bucket.clone();
            async move { bucket.take(1, TrafficClass::Ads).await }
        });
        tokio::task::yield_now().await;
        assert!(!ads.is_finished(), "bulk took from the reserve");
        let start = Instant::now();
        bucket.take(2, TrafficClass::Realtime).await;
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "realtime found its reserve"
        );
        ads.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn bulk_cannot_take_the_last_call_slots() -> anyhow::Result<()> {
        let gate = Arc::new(VendorGate::new(4, None, None));
        let mut bulk = Vec::new();
        for _ in 0..3 {
            bulk.push(gate.admit(TrafficClass::Ads, 1).await);
        }
        let fourth = tokio::spawn({
            let gate = gate.clone();
            async move { gate.admit(TrafficClass::Batch, 1).await }
        });
        tokio::task::yield_now().await;
        assert!(
            !fourth.is_finished(),
            "a fourth bulk call got the reserved slot"
        );
        let realtime = gate.admit(TrafficClass::Realtime, 1).await;
        assert_eq!(gate.free_calls(), 0);
        drop(realtime);
        drop(bulk);
        let permit = fourth.await?;
        drop(permit);
        assert_eq!(gate.free_calls(), 4);
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_holds_every_lane() {
        let gate = VendorGate::new(8, None, None);
        gate.hold_for(Duration::from_secs(2));
        gate.hold_for(Duration::from_secs(1)); // shorter: does not shorten the hold
        let start = Instant::now();
        let _rt = gate.admit(TrafficClass::Realtime, 1).await;
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        gate.hold_for(Duration::from_secs(3600));
        let start = Instant::now();
        let _ads = gate.admit(TrafficClass::Ads, 1).await;
        assert_eq!(start.elapsed(), MAX_HOLD, "capped");
    }
}
