//! Records that will not be delivered (undecodable, oversize, expired, for an unknown channel)
//! on their way to the DLQ, and retry records on their way to their next retry tier, written
//! while the consumer keeps polling.
//!
//! Must never stop the consumer for a bad record, and never finish one before the DLQ holds it.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use crate::offsets::RecordTicket;
use crate::settle::{DeadLetterReason, Origin, Outbox, ReasonClass, RetryRecord};
use crate::telemetry::{Counters, events};

/// A record that will not be delivered, on its way to the DLQ as it is.
pub(super) struct Refused {
    pub(super) key: String,
    pub(super) value: Vec<u8>,
    pub(super) origin: Origin,
    pub(super) class: ReasonClass,
    pub(super) reason: String,
    pub(super) first_seen_ms: u64,
    pub(super) ticket: Arc<RecordTicket>,
}

/// A retry record on its way to its next retry tier.
pub(super) struct Rehop {
    pub(super) record: RetryRecord,
    pub(super) ticket: Arc<RecordTicket>,
}

/// Bytes of refused records on their way to the DLQ at once, per consumer: enough for the
/// producer to batch thousands of small records, and a bound on what a flood of large ones
/// holds in memory.
pub(super) const REFUSED_IN_FLIGHT_BYTES: usize = 8 << 20;

/// Writes refused records to the DLQ, and retry records to their next tier, while the consumer
/// keeps polling. Each write runs on a task of its own and the producer batches them, so a
/// backlog of bad records drains at the producer's rate, not one acknowledgement at a time; the
/// bytes in flight are bounded.
pub(super) struct RefusedRecords {
    pub(super) outbox: Arc<Outbox>,
    pub(super) counters: Arc<Counters>,
    pub(super) in_flight: Arc<tokio::sync::Semaphore>,
}

impl RefusedRecords {
    /// Starts the write of `refused`; waits only while the bytes in flight are at their bound.
    pub(super) async fn write(&self, refused: Refused) {
        let cost = refused.value.len().clamp(1, REFUSED_IN_FLIGHT_BYTES) as u32;
        let Ok(permit) = self.in_flight.clone().acquire_many_owned(cost).await else {
            return;
        };
        let (outbox, counters) = (self.outbox.clone(), self.counters.clone());
        tokio::spawn(async move {
            let why = DeadLetterReason {
                class: refused.class,
                reason: &refused.reason,
                vendor_code: None,
                plugin: None,
                attempts: 0,
                first_seen_ms: refused.first_seen_ms,
            };
            match outbox
                .dead_letter(&refused.key, &refused.value, &refused.origin, &why)
                .await
            {
                Ok(()) => {
                    counters.dead_lettered.fetch_add(1, Relaxed);
                    refused.ticket.complete();
                }
                Err(error) => {
                    // Never finished: the record stays below the committed offset.
                    counters.deliveries_unsettled.fetch_add(1, Relaxed);
                    events::DeliveryUnsettled {
                        key: &refused.key,
                        error: &error,
                    }
                    .emit();
                }
            }
            drop(permit);
        });
    }

    /// Starts the write of `rehop` to the retry tier its remaining wait fits; the record is
    /// finished once Kafka has the copy.
    pub(super) async fn rehop(&self, mut rehop: Rehop) {
        let cost = rehop.record.content.len().clamp(1, REFUSED_IN_FLIGHT_BYTES) as u32;
        let Ok(permit) = self.in_flight.clone().acquire_many_owned(cost).await else {
            return;
        };
        let (outbox, counters) = (self.outbox.clone(), self.counters.clone());
        tokio::spawn(async move {
            match outbox.retry(&mut rehop.record).await {
                Ok(()) => rehop.ticket.complete(),
                Err(error) => {
                    // Never finished: the record stays below the committed offset.
                    counters.deliveries_unsettled.fetch_add(1, Relaxed);
                    events::DeliveryUnsettled {
                        key: &rehop.record.key,
                        error: &error,
                    }
                    .emit();
                }
            }
            drop(permit);
        });
    }
}
