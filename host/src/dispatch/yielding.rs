//! Bulk lanes yield to realtime: while realtime requests wait too long between being produced
//! and their call, the bulk lane's calls at once shrink, and grow back when realtime is fast.
//!
//! Why: a fixed bulk concurrency is either too high for realtime during a backlog drain (the
//! broker and the cores are busy serving the drain) or too low for the drain when realtime is
//! quiet (`switchboard-lab isolation`: ads at 4 calls met the realtime target at 0.65 of the
//! drain, at 8 it drained at full speed and missed it). The controller is AIMD, as TCP's
//! congestion control: halve on pressure, so it acts within a few tenths of a second; add one
//! per tick when clear, so it probes back without overshooting.
//!
//! Owns the realtime wait signal and the bulk lanes' permits it holds back. Never holds a call
//! back itself: it only takes lane permits, which calls wait for, and gives them back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How often the controller looks at the signal.
const TICK: Duration = Duration::from_millis(100);
/// The fewest calls a yielding lane keeps, so a backlog always drains.
const FLOOR: usize = 1;

/// The worst wait of realtime requests (produced → call) since the controller last looked.
#[derive(Debug, Default)]
pub struct RealtimeWait {
    worst_ms: AtomicU64,
    /// Realtime calls since the controller last looked.
    calls: AtomicU64,
}

impl RealtimeWait {
    /// Notes a realtime call whose longest-waiting first try waited `waited_ms`.
    pub fn note(&self, waited_ms: u64) {
        self.worst_ms.fetch_max(waited_ms, Ordering::Relaxed);
        self.calls.fetch_add(1, Ordering::Relaxed);
    }

    /// The worst wait since the last take, or `None` without realtime calls; starts over.
    fn take(&self) -> Option<u64> {
        let calls = self.calls.swap(0, Ordering::Relaxed);
        let worst = self.worst_ms.swap(0, Ordering::Relaxed);
        (calls > 0).then_some(worst)
    }
}

/// The next number of calls at once, from `current` (at most `max`), given the worst realtime
/// wait of the last tick against `target_ms`.
pub fn next_limit(current: usize, max: usize, worst_ms: Option<u64>, target_ms: u64) -> usize {
    match worst_ms {
        Some(worst) if worst > target_ms => (current / 2).max(FLOOR),
        Some(worst) if worst > target_ms / 2 => current,
        _ => (current + 1).min(max),
    }
}

/// Keeps `lane`'s calls at once at the limit [`next_limit`] gives, until the lane is dropped,
/// by holding back `max - limit` of its permits.
///
/// Why held and not forgotten: under a backlog every permit is taken and a released one goes
/// straight to a waiting call (the semaphore is fair), so there is never a free permit to
/// forget. Asking for permits puts the controller in the same queue: it gets the next one
/// released, ahead of calls that queue after it.
pub async fn yield_to_realtime(
    wait: Arc<RealtimeWait>,
    lane: Weak<Semaphore>,
    max: usize,
    target_ms: u64,
) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (granted_tx, mut granted) = tokio::sync::mpsc::unbounded_channel();
    let mut held: Vec<OwnedSemaphorePermit> = Vec::new();
    // Permits asked for and not granted yet.
    let mut asked = 0usize;
    let mut limit = max;
    loop {
        tick.tick().await;
        let Some(lane) = lane.upgrade() else {
            return;
        };
        while let Ok(permit) = granted.try_recv() {
            asked -= 1;
            held.push(permit);
        }
        limit = next_limit(limit, max, wait.take(), target_ms);
        let hold = max - limit;
        // Too many held or asked for: let go of held ones (asked ones that come later are
        // let go as they arrive, next ticks).
        while held.len() > hold {
            held.pop();
        }
        let short = hold.saturating_sub(held.len() + asked);
        for _ in 0..short {
            asked += 1;
            let lane = lane.clone();
            let granted_tx = granted_tx.clone();
            tokio::spawn(async move {
                if let Ok(permit) = lane.acquire_owned().await {
                    let _ = granted_tx.send(permit);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_on_pressure_holds_near_the_target_and_grows_back_by_one() {
        assert_eq!(next_limit(8, 8, Some(90), 40), 4);
        assert_eq!(next_limit(1, 8, Some(90), 40), 1, "never below one call");
        assert_eq!(
            next_limit(4, 8, Some(30), 40),
            4,
            "between half and the target: hold"
        );
        assert_eq!(next_limit(4, 8, Some(10), 40), 5);
        assert_eq!(next_limit(4, 8, None, 40), 5, "no realtime: grow back");
        assert_eq!(next_limit(8, 8, None, 40), 8);
    }

    #[tokio::test(start_paused = true)]
    async fn the_lane_is_held_to_fewer_calls_even_while_every_permit_is_taken() {
        let lane = Arc::new(Semaphore::new(8));
        let wait = Arc::new(RealtimeWait::default());
        let busy = lane
            .clone()
            .acquire_many_owned(8)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(yield_to_realtime(
            wait.clone(),
            Arc::downgrade(&lane),
            8,
            40,
        ));
        wait.note(200);
        tokio::time::sleep(TICK / 2).await;
        // Limit 4: the controller waits for four permits; the calls' end hands them to it.
        drop(busy);
        tokio::time::sleep(TICK).await;
        // The next tick was quiet (limit 5): of the four it got, it holds three.
        assert_eq!(lane.available_permits(), 5, "three held back of eight");
        for _ in 0..10 {
            tokio::time::sleep(TICK).await;
        }
        assert_eq!(lane.available_permits(), 8, "back to the configured calls");
    }
}
