//! The dedup rules, in one place: what a consumed delivery is looked up as, and what a finished
//! one is marked as.
//!
//! - A delivery that reached a final outcome is marked under its key; one that was
//!   dead-lettered, under [`dead_key`]. A redelivered request skips both.
//! - A DLQ replay (`replayed`) looks up only the delivered mark: what was dead-lettered is what
//!   the replay is for.
//! - An error the store answers with (not an outage: waiting would not change it) is counted and
//!   logged; the look-up then answers "not done" (sent at least once), and the mark is skipped
//!   (a redelivery could send again). An outage is waited out by the store itself.

use std::sync::atomic::Ordering::Relaxed;

use super::{DedupStore, dead_key};
use crate::contract::SharedDelivery;
use crate::telemetry::{Counters, events};

/// Which of `deliveries` are already done, in order. Without a store, none.
pub async fn done_among(
    store: Option<&DedupStore>,
    deliveries: &[SharedDelivery],
    replayed: bool,
    counters: &Counters,
) -> Vec<bool> {
    let Some(store) = store else {
        return vec![false; deliveries.len()];
    };
    // Each delivery is looked up as delivered and, unless replayed, as dead.
    let per_delivery = if replayed { 1 } else { 2 };
    let mut keys = Vec::with_capacity(deliveries.len() * per_delivery);
    for d in deliveries {
        keys.push(d.key.clone());
        if !replayed {
            keys.push(dead_key(&d.key));
        }
    }
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    // While the store is down this waits for it: a look-up never answers "not seen" for a key
    // it could not look up.
    match store.seen_waiting(&refs).await {
        Ok(seen) => seen
            .chunks(per_delivery)
            .map(|c| c.iter().any(|s| *s))
            .collect(),
        Err(error) => {
            counters.dedup_errors.fetch_add(1, Relaxed);
            events::DedupFailed { error: &error }.emit();
            vec![false; deliveries.len()]
        }
    }
}

/// Marks finished deliveries as done: each `(key, dead_lettered)`. Returns once the store has
/// them (waiting out an outage), or has answered with an error.
pub async fn mark_finished<'a>(
    store: Option<&DedupStore>,
    finished: impl Iterator<Item = (&'a str, bool)>,
    counters: &Counters,
) {
    let Some(store) = store else {
        return;
    };
    let keys: Vec<String> = finished
        .map(|(key, dead_lettered)| match dead_lettered {
            true => dead_key(key),
            false => key.to_string(),
        })
        .collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    // While the store is down this waits for it: a record's offset may pass its deliveries only
    // once they are known as done.
    if let Err(error) = store.mark_waiting(&keys).await {
        counters.dedup_errors.fetch_add(1, Relaxed);
        events::DedupFailed { error: &error }.emit();
    }
}
