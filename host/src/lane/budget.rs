//! The memory budget: bytes of work the host holds for records, per lane and in total.
//!
//! A record is charged when it is admitted for delivery (decoded, with every delivery it fans out
//! to) and released when its last delivery lets go of it: queued, batched, in flight, waiting for
//! the retry topic's acknowledgement. The consumer asks [`Budget::is_over`] before admitting; a
//! lane that is over pauses the partition and waits in [`Budget::wait_below_low_water`] before it
//! admits the held record and resumes.
//!
//! Must never block a release: releases happen on delivery paths, so they are atomic
//! subtractions plus a wake-up, nothing more.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use serde::Serialize;
use tokio::sync::Notify;

use crate::config::{BudgetConfig, LanesConfig, TrafficClass};

/// Charged per delivery besides its bytes: the job, the ticket share and the batch slot.
pub const PER_DELIVERY_OVERHEAD: usize = 256;

/// A limit and its use.
#[derive(Debug)]
struct Account {
    used: AtomicUsize,
    /// Records charged now (each admitted record is one charge).
    records: AtomicUsize,
    limit: usize,
    low_water: usize,
}

impl Account {
    fn new(limit: usize, low_water_percent: u64) -> Self {
        Self {
            used: AtomicUsize::new(0),
            records: AtomicUsize::new(0),
            limit,
            low_water: limit.saturating_mul(low_water_percent as usize) / 100,
        }
    }

    fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// The budget of every lane, and of the host.
#[derive(Debug)]
pub struct Budget {
    lanes: [Account; 3],
    total: Account,
    /// Times each lane went over and paused a partition.
    pauses: [AtomicU64; 3],
    /// Partitions each lane holds paused right now.
    paused_now: [AtomicUsize; 3],
    released: Notify,
}

/// What [`Budget::snapshot`] reports of one lane.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LaneBudget {
    pub class: TrafficClass,
    /// Records admitted and not yet let go of.
    pub records: usize,
    pub used_bytes: usize,
    pub limit_bytes: usize,
    pub pauses: u64,
    pub paused_partitions: usize,
}

impl Budget {
    /// The budget from config. `host_share` is the part of the total left for the host's own work
    /// once librdkafka's prefetch queues have theirs.
    pub fn new(config: &BudgetConfig, lanes: &LanesConfig, host_share: usize) -> Self {
        let low = config.low_water_percent;
        Self {
            lanes: TrafficClass::ALL.map(|c| Account::new(lanes.get(c).budget_bytes(c), low)),
            total: Account::new(host_share, low),
            pauses: Default::default(),
            paused_now: Default::default(),
            released: Notify::new(),
        }
    }

    /// Charges `bytes` to `class` and the total; released when the charge is dropped.
    pub fn charge(self: &Arc<Self>, class: TrafficClass, bytes: usize) -> Charge {
        let lane = &self.lanes[class.index()];
        lane.used.fetch_add(bytes, Ordering::Relaxed);
        lane.records.fetch_add(1, Ordering::Relaxed);
        self.total.used.fetch_add(bytes, Ordering::Relaxed);
        Charge {
            budget: self.clone(),
            class,
            bytes,
        }
    }

    /// True when `class` or the host is at or past its limit: admit nothing more for it.
    pub fn is_over(&self, class: TrafficClass) -> bool {
        let lane = &self.lanes[class.index()];
        lane.used() >= lane.limit || self.total.used() >= self.total.limit
    }

    fn is_below_low_water(&self, class: TrafficClass) -> bool {
        let lane = &self.lanes[class.index()];
        lane.used() <= lane.low_water && self.total.used() <= self.total.low_water
    }

    /// Waits until `class` and the host are both at or below their low-water marks. The gap
    /// between the limit and the low-water mark keeps a lane from pausing and resuming on every
    /// record.
    pub async fn wait_below_low_water(&self, class: TrafficClass) {
        loop {
            // Register before checking, so a release between the check and the wait is seen.
            let released = self.released.notified();
            if self.is_below_low_water(class) {
                return;
            }
            released.await;
        }
    }

    /// Counts a pause of one of `class`'s partitions; the returned guard counts the resume.
    pub fn paused(self: &Arc<Self>, class: TrafficClass) -> PauseGuard {
        self.pauses[class.index()].fetch_add(1, Ordering::Relaxed);
        self.paused_now[class.index()].fetch_add(1, Ordering::Relaxed);
        PauseGuard {
            budget: self.clone(),
            class,
        }
    }

    /// Bytes charged to `class` now.
    pub fn used(&self, class: TrafficClass) -> usize {
        self.lanes[class.index()].used()
    }

    /// Bytes charged to the host now.
    pub fn used_total(&self) -> usize {
        self.total.used()
    }

    /// The host's limit, in bytes.
    pub fn limit_total(&self) -> usize {
        self.total.limit
    }

    /// Every lane's use, limit and pauses.
    pub fn snapshot(&self) -> Vec<LaneBudget> {
        TrafficClass::ALL
            .iter()
            .map(|c| LaneBudget {
                class: *c,
                records: self.lanes[c.index()].records.load(Ordering::Relaxed),
                used_bytes: self.used(*c),
                limit_bytes: self.lanes[c.index()].limit,
                pauses: self.pauses[c.index()].load(Ordering::Relaxed),
                paused_partitions: self.paused_now[c.index()].load(Ordering::Relaxed),
            })
            .collect()
    }
}

/// Bytes held against the budget until dropped.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<Budget>,
    class: TrafficClass,
    bytes: usize,
}

impl Drop for Charge {
    fn drop(&mut self) {
        let budget = &self.budget;
        let lane = &budget.lanes[self.class.index()];
        lane.used.fetch_sub(self.bytes, Ordering::Relaxed);
        lane.records.fetch_sub(1, Ordering::Relaxed);
        budget.total.used.fetch_sub(self.bytes, Ordering::Relaxed);
        // Only a release that reaches a low-water mark can let a waiter go. The lane's or the
        // total's: a waiter of another lane may be held by the total alone, and it checks its
        // own condition again when woken.
        if lane.used() <= lane.low_water || budget.total.used() <= budget.total.low_water {
            budget.released.notify_waiters();
        }
    }
}

/// Counts one paused partition until dropped (resumed).
#[derive(Debug)]
pub struct PauseGuard {
    budget: Arc<Budget>,
    class: TrafficClass,
}

impl Drop for PauseGuard {
    fn drop(&mut self) {
        self.budget.paused_now[self.class.index()].fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LaneConfig;

    fn budget(lane_mb: u64, total_mb: usize) -> Arc<Budget> {
        let lane = LaneConfig {
            budget_mb: Some(lane_mb),
            ..Default::default()
        };
        let lanes = LanesConfig {
            realtime: lane.clone(),
            batch: lane.clone(),
            ads: lane,
        };
        let config = BudgetConfig {
            low_water_percent: 50,
            ..Default::default()
        };
        Arc::new(Budget::new(&config, &lanes, total_mb << 20))
    }

    #[test]
    fn a_lane_is_over_at_its_limit_and_others_are_not() {
        let budget = budget(1, 64);
        let charges: Vec<Charge> = (0..4)
            .map(|_| budget.charge(TrafficClass::Ads, 256 << 10))
            .collect();
        assert!(budget.is_over(TrafficClass::Ads));
        assert!(!budget.is_over(TrafficClass::Realtime));
        assert_eq!(budget.used(TrafficClass::Ads), 1 << 20);
        let records = |b: &Budget| b.snapshot()[TrafficClass::Ads.index()].records;
        assert_eq!(records(&budget), 4);
        drop(charges);
        assert_eq!(records(&budget), 0);
        assert_eq!(budget.used(TrafficClass::Ads), 0);
        assert_eq!(budget.used_total(), 0);
    }

    #[test]
    fn the_total_stops_every_lane() {
        let budget = budget(64, 2);
        let _big = budget.charge(TrafficClass::Batch, 2 << 20);
        assert!(budget.is_over(TrafficClass::Realtime), "the host is full");
    }

    #[tokio::test(start_paused = true)]
    async fn a_paused_lane_resumes_only_below_low_water() -> anyhow::Result<()> {
        let budget = budget(1, 64);
        let mut charges: Vec<Charge> = (0..8)
            .map(|_| budget.charge(TrafficClass::Ads, 128 << 10))
            .collect();
        assert!(budget.is_over(TrafficClass::Ads));
        let waiter = tokio::spawn({
            let budget = budget.clone();
            async move { budget.wait_below_low_water(TrafficClass::Ads).await }
        });
        // Below the limit but above the low-water mark (50 %): still waiting.
        charges.truncate(5);
        assert!(!budget.is_over(TrafficClass::Ads));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "resumed above the low-water mark");
        // 4 × 128 KiB = 512 KiB, the low-water mark: resumes.
        charges.truncate(4);
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter).await??;
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn a_lane_held_by_the_total_wakes_when_another_lane_releases() -> anyhow::Result<()> {
        // Lanes of 1 MiB, a total of 2 MiB, low water at half.
        let budget = budget(1, 2);
        let _stays = budget.charge(TrafficClass::Batch, 900 << 10);
        let goes = budget.charge(TrafficClass::Batch, 1200 << 10);
        assert!(budget.is_over(TrafficClass::Ads), "held by the total alone");
        let waiter = tokio::spawn({
            let budget = budget.clone();
            async move { budget.wait_below_low_water(TrafficClass::Ads).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        // Batch stays above its own low-water mark; the total falls below its.
        drop(goes);
        // Times out (an error) unless the batch release woke the ads waiter.
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter).await??;
        Ok(())
    }

    #[test]
    fn pauses_are_counted_until_resumed() {
        let budget = budget(1, 64);
        let guard = budget.paused(TrafficClass::Ads);
        let lane = |b: &Budget| b.snapshot()[TrafficClass::Ads.index()].clone();
        assert_eq!(lane(&budget).paused_partitions, 1);
        drop(guard);
        assert_eq!(lane(&budget).paused_partitions, 0);
        assert_eq!(lane(&budget).pauses, 1);
    }
}
