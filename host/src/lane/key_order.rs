//! Key order: with `ordering = "key"`, a record waits until the previous record with the same
//! Kafka key in its partition is finished; different keys run at once.
//!
//! Owns the queues of waiting records; never dispatches by itself (the released record goes
//! back to the consumer's admission through a channel).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::Arrival;
use crate::offsets::RecordTicket;

/// Records waiting for the record before them with the same key to finish. A key is present
/// while a record of it is in flight; its queue holds the ones behind it, in offset order.
pub struct KeyOrder {
    waiting: Mutex<HashMap<u64, VecDeque<Arrival>>>,
    /// The next record of a key whose previous one finished, for the consumer to dispatch.
    next: mpsc::UnboundedSender<Arrival>,
}

impl KeyOrder {
    /// An empty order; the next record of a key comes out of `next` once the one before it
    /// finished.
    pub fn new(next: mpsc::UnboundedSender<Arrival>) -> Self {
        Self {
            waiting: Mutex::new(HashMap::new()),
            next,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, VecDeque<Arrival>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lets `arrival` go now, or queues it behind its key's record in flight.
    pub fn enter(self: &Arc<Self>, key: u64, arrival: Arrival) -> Option<Arrival> {
        let order = Arc::downgrade(self);
        arrival.ticket.on_finish(move || {
            if let Some(order) = order.upgrade() {
                order.release(key);
            }
        });
        let mut waiting = self.lock();
        match waiting.get_mut(&key) {
            Some(queue) => {
                queue.push_back(arrival);
                None
            }
            None => {
                waiting.insert(key, VecDeque::new());
                Some(arrival)
            }
        }
    }

    /// The record in flight for `key` finished: the next one goes.
    fn release(&self, key: u64) {
        let next = {
            let mut waiting = self.lock();
            match waiting.get_mut(&key).and_then(VecDeque::pop_front) {
                Some(next) => Some(next),
                None => {
                    waiting.remove(&key);
                    None
                }
            }
        };
        if let Some(next) = next {
            // The receiver lives as long as the consumer; after it, nothing is dispatched.
            let _ = self.next.send(next);
        }
    }

    /// Drops the waiting records whose ticket matches `revoked`; returns how many.
    pub fn drop_where(&self, revoked: impl Fn(&RecordTicket) -> bool) -> usize {
        let mut waiting = self.lock();
        let mut dropped = 0;
        for queue in waiting.values_mut() {
            let before = queue.len();
            queue.retain(|arrival| !revoked(&arrival.ticket));
            dropped += before - queue.len();
        }
        dropped
    }

    /// Records waiting behind another of their key.
    pub fn waiting(&self) -> usize {
        self.lock().values().map(VecDeque::len).sum()
    }
}
