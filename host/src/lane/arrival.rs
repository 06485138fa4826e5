//! An arrival: the deliveries of one consumed record, on their way through the lane to the
//! dispatcher, with what the record's later stages need (its lane, its key's order slot, its
//! origin, its ticket).
//!
//! Owns the shape and its memory cost; decides nothing.

use std::sync::Arc;

use super::budget::PER_DELIVERY_OVERHEAD;
use crate::config::TrafficClass;
use crate::contract::SharedDelivery;
use crate::offsets::RecordTicket;
use crate::route::RouteHint;
use crate::settle::Origin;

/// The deliveries of one record, on their way to the dispatcher.
pub struct Arrival {
    /// One per recipient, all sharing the request's content.
    pub deliveries: Vec<SharedDelivery>,
    /// A DLQ replay: skip only what was delivered, not what was dead-lettered.
    pub replayed: bool,
    pub channel: Arc<str>,
    pub class: TrafficClass,
    /// The record's Kafka key (hashed with its partition), when its lane keeps key order.
    pub order_key: Option<u64>,
    pub origin: Arc<Origin>,
    pub first_seen_ms: u64,
    pub ticket: Arc<RecordTicket>,
    /// Where a retried delivery went last.
    pub route: Option<RouteHint>,
}

impl Arrival {
    /// What the record costs in memory while the host holds it: its one content, and each
    /// recipient's key, address and bookkeeping.
    pub fn cost(&self) -> usize {
        let content = self.deliveries.first().map_or(0, |d| d.content.len());
        content
            + self
                .deliveries
                .iter()
                .map(|d| d.key.len() + d.recipient.len() + PER_DELIVERY_OVERHEAD)
                .sum::<usize>()
    }
}
