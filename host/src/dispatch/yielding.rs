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
//! "Too long" is measured above the base wait, the least wait of the last few minutes, as LEDBAT
//! (RFC 6817) measures a background transfer's queueing delay above the path's base delay. The
//! wait runs from the record's timestamp, taken on the producer's clock, to the call on the
//! host's: a producer's linger or a clock offset between the two adds the same to every request
//! and is not queueing. Without the base, a producer whose clock ran 20 ms ahead would hold the
//! bulk lanes at one call for good.
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
/// The base wait is the least of this many slots of [`BASE_SLOT_TICKS`] ticks (a minute each),
/// so a minimum is remembered for four to five minutes: long enough to span a backlog's bursts,
/// short enough that a lasting change (a producer's new linger) is learned within minutes.
const BASE_SLOTS: usize = 5;
const BASE_SLOT_TICKS: u32 = 600;

/// The worst and the least wait of realtime requests (produced → call) since the controller last
/// looked.
#[derive(Debug)]
pub struct RealtimeWait {
    worst_ms: AtomicU64,
    least_ms: AtomicU64,
    /// Realtime calls since the controller last looked.
    calls: AtomicU64,
}

impl Default for RealtimeWait {
    fn default() -> Self {
        Self {
            worst_ms: AtomicU64::new(0),
            least_ms: AtomicU64::new(u64::MAX),
            calls: AtomicU64::new(0),
        }
    }
}

/// What one tick saw of realtime's waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TickWaits {
    worst_ms: u64,
    least_ms: u64,
}

impl RealtimeWait {
    /// Notes a realtime call whose longest-waiting first try waited `waited_ms`.
    pub fn note(&self, waited_ms: u64) {
        self.worst_ms.fetch_max(waited_ms, Ordering::Relaxed);
        self.least_ms.fetch_min(waited_ms, Ordering::Relaxed);
        self.calls.fetch_add(1, Ordering::Relaxed);
    }

    /// The waits since the last take, or `None` without realtime calls; starts over.
    fn take(&self) -> Option<TickWaits> {
        let calls = self.calls.swap(0, Ordering::Relaxed);
        let worst_ms = self.worst_ms.swap(0, Ordering::Relaxed);
        let least_ms = self.least_ms.swap(u64::MAX, Ordering::Relaxed);
        (calls > 0).then_some(TickWaits {
            worst_ms,
            least_ms: least_ms.min(worst_ms),
        })
    }
}

/// The least realtime wait of the last few minutes ([`BASE_SLOTS`]): what a request waits with
/// nothing queued in its way (the producer's linger, the clocks' offset, the broker's round trip).
#[derive(Debug, Default)]
struct BaseWait {
    /// The least wait of each slot, oldest first; `u64::MAX` for a slot without realtime calls.
    slots: std::collections::VecDeque<u64>,
    ticks_in_slot: u32,
}

impl BaseWait {
    /// Counts a tick, with its least wait when realtime made calls.
    fn note(&mut self, least_ms: Option<u64>) {
        if self.slots.is_empty() || self.ticks_in_slot >= BASE_SLOT_TICKS {
            self.slots.push_back(u64::MAX);
            self.ticks_in_slot = 0;
            if self.slots.len() > BASE_SLOTS {
                self.slots.pop_front();
            }
        }
        self.ticks_in_slot += 1;
        if let (Some(least), Some(slot)) = (least_ms, self.slots.back_mut()) {
            *slot = (*slot).min(least);
        }
    }

    /// The base wait; 0 while none is known, so that the wait counts whole.
    fn base_ms(&self) -> u64 {
        self.slots
            .iter()
            .copied()
            .min()
            .filter(|least| *least != u64::MAX)
            .unwrap_or(0)
    }
}

/// The next number of calls at once, from `current` (at most `max`), given the worst realtime
/// wait of the last tick above the base wait against `target_ms`.
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
    let mut base = BaseWait::default();
    loop {
        tick.tick().await;
        let Some(lane) = lane.upgrade() else {
            return;
        };
        while let Ok(permit) = granted.try_recv() {
            asked -= 1;
            held.push(permit);
        }
        let waits = wait.take();
        base.note(waits.map(|w| w.least_ms));
        let base_ms = base.base_ms();
        let over_base_ms = waits.map(|w| w.worst_ms.saturating_sub(base_ms));
        let next = next_limit(limit, max, over_base_ms, target_ms);
        if next != limit {
            tracing::debug!(
                calls = next,
                ?over_base_ms,
                base_ms,
                target_ms,
                "bulk lane calls at once"
            );
        }
        limit = next;
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
        // The first tick learns the base: a realtime request with nothing in its way.
        wait.note(2);
        tokio::time::sleep(TICK / 2).await;
        wait.note(200);
        tokio::time::sleep(TICK).await;
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

    /// A producer whose clock runs ahead of the host's, or that lingers before it sends, adds
    /// the same to every realtime wait: that is not queueing, and the lane keeps its calls.
    #[tokio::test(start_paused = true)]
    async fn a_constant_offset_in_realtime_s_wait_does_not_hold_the_lane_back() {
        let lane = Arc::new(Semaphore::new(8));
        let wait = Arc::new(RealtimeWait::default());
        tokio::spawn(yield_to_realtime(
            wait.clone(),
            Arc::downgrade(&lane),
            8,
            40,
        ));
        for _ in 0..30 {
            // 60 ms every time: 20 ms of linger and a clock 40 ms ahead, and no queue.
            wait.note(60);
            wait.note(62);
            tokio::time::sleep(TICK).await;
        }
        assert_eq!(lane.available_permits(), 8, "no permit held back");
        // Queueing on top of the same offset is still seen.
        for _ in 0..3 {
            wait.note(60);
            wait.note(160);
            tokio::time::sleep(TICK).await;
        }
        assert!(
            lane.available_permits() < 8,
            "the lane yields to a real queue"
        );
    }

    #[test]
    fn the_base_wait_is_the_least_of_the_last_minutes_and_forgets_older_ones() {
        let mut base = BaseWait::default();
        assert_eq!(base.base_ms(), 0, "unknown: the wait counts whole");
        base.note(Some(25));
        base.note(None);
        base.note(Some(3));
        assert_eq!(base.base_ms(), 3);
        // A window's worth of ticks at 30 ms: the minimum of 3 is forgotten.
        for _ in 0..BASE_SLOTS as u32 * BASE_SLOT_TICKS {
            base.note(Some(30));
        }
        assert_eq!(base.base_ms(), 30);
        // A window without realtime calls forgets everything.
        for _ in 0..BASE_SLOTS as u32 * BASE_SLOT_TICKS {
            base.note(None);
        }
        assert_eq!(base.base_ms(), 0);
    }
}
