//! Exponential backoff with full jitter, floored by the vendor's Retry-After.

use std::time::Duration;

use rand::Rng;

/// The longest a Retry-After may hold a vendor; a vendor asking for longer is treated as down
/// for this long, and its deliveries go on through the retry topic.
pub const MAX_HOLD: Duration = Duration::from_secs(60);

/// How long to wait before the next try of a delivery.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    base: Duration,
    max: Duration,
}

impl Backoff {
    /// Backoff starting at `base` and doubling up to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max: max.max(base),
        }
    }

    /// The wait after failed attempt number `attempt` (1-based): a uniformly random time up to
    /// `base * 2^(attempt-1)` (capped at `max`), so that retries of one outage spread out, and
    /// never less than `retry_after`, itself capped at the larger of `max` and the vendor hold.
    pub fn delay(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Duration {
        let exponent = attempt.saturating_sub(1).min(30);
        let ceiling = self.base.saturating_mul(1u32 << exponent).min(self.max);
        let jittered = Duration::from_millis(rng.gen_range(0..=ceiling.as_millis() as u64));
        // Half the ceiling at least, so a retry never comes back at once.
        let floor = ceiling / 2;
        // A vendor's Retry-After is honoured up to the longest the vendor itself is held: a
        // vendor asking for hours is treated as down for that long, and the retry may then
        // fail over, instead of passing `give_up_after` at once or holding its retry partition.
        let retry_after = retry_after.unwrap_or_default().min(self.max.max(MAX_HOLD));
        jittered.max(floor).max(retry_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn delay_grows_stays_capped_and_honours_retry_after() {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for attempt in 1..=20 {
            let ceiling = Duration::from_millis(100 * (1u64 << (attempt - 1).min(20)))
                .min(Duration::from_secs(2));
            let d = backoff.delay(attempt, None, &mut rng);
            assert!(d <= ceiling && d >= ceiling / 2, "attempt {attempt}: {d:?}");
        }
        let d = backoff.delay(1, Some(Duration::from_secs(30)), &mut rng);
        assert_eq!(d, Duration::from_secs(30));
    }

    #[test]
    fn a_far_retry_after_is_honoured_only_up_to_the_vendor_hold() {
        // A vendor that answers "Retry-After: 7200" must not push the retry past
        // `give_up_after` (a dead letter at once) nor block the retry partition for hours:
        // the retry comes back after the vendor hold and may fail over.
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let d = backoff.delay(1, Some(Duration::from_secs(7200)), &mut rng);
        assert_eq!(d, MAX_HOLD);
    }
}
