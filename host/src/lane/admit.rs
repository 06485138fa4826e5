//! Admission into a lane: charges the record to its lane's budget, keeps key order, skips the
//! recipients the dedup store knows as done, picks each delivery's vendor, and hands the rest
//! to the dispatcher.
//!
//! Owns that order of steps; the rules of each step live in their own rooms (the budget here in
//! [`super::budget`], the look-up in [`crate::dedup`], the pick in [`crate::route`]).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use super::budget::Budget;
use super::{Arrival, KeyOrder};
use crate::dedup::{self, DedupStore};
use crate::dispatch::{Dispatcher, Job};
use crate::route::Router;
use crate::telemetry::Counters;

/// Admits records: charges the budget, keeps key order, skips what is done, and hands the rest
/// to the dispatcher.
pub struct Admission {
    pub budget: Arc<Budget>,
    pub order: Arc<KeyOrder>,
    pub dedup: Option<Arc<DedupStore>>,
    pub router: Arc<Router>,
    pub dispatcher: Arc<Dispatcher>,
    pub counters: Arc<Counters>,
}

impl Admission {
    /// False while the dedup store is down: consumption pauses rather than sending without
    /// knowing what is done, or piling records up in memory behind the look-up.
    pub fn dedup_available(&self) -> bool {
        self.dedup.as_ref().is_none_or(|dedup| dedup.is_available())
    }

    pub async fn admit(self: &Arc<Self>, arrival: Arrival) {
        arrival
            .ticket
            .hold(self.budget.charge(arrival.class, arrival.cost()));
        let arrival = match arrival.order_key {
            Some(key) => match self.order.enter(key, arrival) {
                Some(arrival) => arrival,
                None => return,
            },
            None => arrival,
        };
        self.dispatch_or_spawn(arrival).await;
    }

    /// Dispatches `arrival` here, or on a task of its own when the dedup look-up goes over
    /// the network: the consumer loop must never wait one round trip per record.
    pub async fn dispatch_or_spawn(self: &Arc<Self>, arrival: Arrival) {
        if matches!(self.dedup.as_deref(), Some(DedupStore::Redis(_))) {
            let admission = self.clone();
            tokio::spawn(async move { admission.dispatch(arrival).await });
        } else {
            self.dispatch(arrival).await;
        }
    }

    /// Skips the recipients the dedup store knows as done (a redelivered or replayed request),
    /// and hands the rest to the dispatcher.
    async fn dispatch(&self, arrival: Arrival) {
        let Arrival {
            deliveries,
            replayed,
            channel,
            class,
            origin,
            first_seen_ms,
            ticket,
            route,
            ..
        } = arrival;
        let counters = &self.counters;
        let done = dedup::done_among(self.dedup.as_deref(), &deliveries, replayed, counters).await;
        for (delivery, done) in deliveries.into_iter().zip(done) {
            if done {
                counters.deliveries_skipped_done.fetch_add(1, Relaxed);
                ticket.complete();
                continue;
            }
            let plugin = self
                .router
                .pick(&channel, route.as_ref())
                .unwrap_or_default();
            if route.as_ref().is_some_and(|r| r.vendor != plugin) {
                counters.deliveries_failed_over.fetch_add(1, Relaxed);
            }
            let job = Job::new(
                delivery,
                class,
                ticket.clone(),
                channel.clone(),
                origin.clone(),
                first_seen_ms,
            )
            .retried_after(route.clone());
            self.dispatcher.submit(&plugin, job).await;
        }
    }
}
