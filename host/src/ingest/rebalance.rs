//! Rebalances: what a consumer does as partitions are taken from it. The revoke callback drops
//! the revoked partitions' records no vendor has seen (held for the budget or waiting behind
//! their key), waits (bounded by `rebalance_drain_ms`) for the records in flight, and commits
//! before the partitions go; their watermarks are forgotten after.
//!
//! Owns the consumer's librdkafka context (which also keeps its lag, from [`super::lag`]);
//! never admits or dispatches a record.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::{ClientContext, TopicPartitionList};

use super::lag::LagStatistics;
use crate::lane::{Arrival, KeyOrder};
use crate::offsets::OffsetBook;

/// Records held for the budget, in offset order, by (topic, partition).
pub(super) type HeldRecords = HashMap<(String, i32), VecDeque<Arrival>>;

/// Drains revoked partitions before they go, and forgets their watermarks after. Keeps the
/// consumer's lag from librdkafka's statistics.
pub struct IngestContext {
    pub(super) book: Arc<OffsetBook>,
    pub(super) drain: Duration,
    /// Records held for the budget: those of a revoked partition are dropped, never sent.
    pub(super) held: Arc<Mutex<HeldRecords>>,
    /// Records waiting behind their key: those of a revoked partition are dropped too.
    pub(super) order: Arc<KeyOrder>,
    /// Set once the consumer is closing after its own drain: a revoke then only commits, so
    /// shutdown never waits for a second drain.
    pub(super) closing: std::sync::atomic::AtomicBool,
    /// Records behind the end of the assigned partitions: `switchboard_consumer_lag_records`.
    pub(super) lag: prometheus_client::metrics::gauge::Gauge,
}

impl ClientContext for IngestContext {
    // Only the lag is wanted: parsing just those fields is cheaper than rdkafka's full
    // `Statistics`, and does not break on fields a librdkafka release adds or drops.
    fn stats_raw(&self, statistics: &[u8]) {
        match serde_json::from_slice::<LagStatistics>(statistics) {
            Ok(statistics) => {
                self.lag.set(statistics.lag());
            }
            Err(error) => tracing::debug!(%error, "librdkafka statistics without a usable lag"),
        }
    }
}

impl IngestContext {
    /// Drops the records of the revoked partitions that were never handed to the dispatcher
    /// (held for the budget, or waiting behind their key): the next owner reads them again,
    /// and sending them now would only send them twice. Returns how many were dropped; their
    /// tickets stay open, so no offset passes them.
    pub(super) fn drop_unsent(&self, tpl: &TopicPartitionList) -> usize {
        let revoked: std::collections::HashSet<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        let mut dropped = 0;
        {
            let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            held.retain(|partition, queue| {
                let keep = !revoked.contains(partition);
                if !keep {
                    dropped += queue.len();
                }
                keep
            });
        }
        dropped += self.order.drop_where(|ticket| {
            let (topic, partition) = ticket.partition();
            revoked.contains(&(topic.to_string(), partition))
        });
        dropped
    }

    /// Waits, up to the drain time, until the revoked partitions hold nothing in flight but the
    /// `dropped` records that will never finish here. Returns the records still in flight.
    ///
    /// This runs inside librdkafka's rebalance callback, on the consumer's polling task. The
    /// records it waits for finish on other tasks, possibly of the same runtime (the realtime
    /// lane has one thread), so the wait hands this thread's other work to another thread
    /// first; sleeping here would freeze the very tasks the drain waits for.
    pub(super) fn drain_revoked(&self, tpl: &TopicPartitionList, dropped: usize) -> usize {
        let in_flight = || self.book.open_in(tpl).saturating_sub(dropped);
        if self.closing.load(Relaxed) || in_flight() == 0 {
            return in_flight();
        }
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if !multi_thread {
            // Nothing could finish while this thread waits: commit what is finished now.
            return in_flight();
        }
        let deadline = Instant::now() + self.drain;
        tokio::task::block_in_place(|| {
            while in_flight() > 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        in_flight()
    }
}

impl ConsumerContext for IngestContext {
    fn pre_rebalance(&self, base: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let dropped = self.drop_unsent(tpl);
        let open = self.drain_revoked(tpl, dropped);
        if open > 0 {
            tracing::warn!(
                open_records = open,
                "rebalance drain timed out; the next owner redelivers them"
            );
        }
        match base.commit_consumer_state(CommitMode::Sync) {
            Ok(())
            | Err(rdkafka::error::KafkaError::ConsumerCommit(
                rdkafka::types::RDKafkaErrorCode::NoOffset,
            )) => {}
            Err(e) => tracing::warn!(error = %e, "commit before giving up partitions failed"),
        }
    }

    fn post_rebalance(&self, _base: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = %describe_partitions(tpl), "partitions assigned");
            }
            Rebalance::Revoke(tpl) => {
                tracing::info!(partitions = %describe_partitions(tpl), "partitions revoked");
                self.book.forget(tpl);
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance failed"),
        }
    }
}

fn describe_partitions(tpl: &TopicPartitionList) -> String {
    tpl.elements()
        .iter()
        .map(|e| format!("{}/{}", e.topic(), e.partition()))
        .collect::<Vec<_>>()
        .join(",")
}

/// The consumer every source runs.
pub(super) type IngestConsumer = StreamConsumer<IngestContext>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TrafficClass;
    use crate::contract::SharedDelivery;
    use crate::offsets::RecordTicket;
    use crate::settle::Origin;
    use tokio::sync::mpsc;

    fn context(drain: Duration) -> IngestContext {
        let (next, _released) = mpsc::unbounded_channel();
        IngestContext {
            book: Arc::new(OffsetBook::new()),
            drain,
            held: Arc::new(Mutex::new(HashMap::new())),
            order: Arc::new(KeyOrder::new(next)),
            closing: std::sync::atomic::AtomicBool::new(false),
            lag: crate::telemetry::metrics::Metrics::new().consumer_lag("mixed"),
        }
    }

    fn partitions(list: &[(&str, i32)]) -> anyhow::Result<TopicPartitionList> {
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in list {
            tpl.add_partition(topic, *partition);
        }
        Ok(tpl)
    }

    /// A one-recipient record at `offset`, opened in `book`.
    fn arrival(book: &Arc<OffsetBook>, topic: &str, partition: i32, offset: i64) -> Arrival {
        let ticket = RecordTicket::open(book, topic, partition, offset, 1);
        Arrival {
            deliveries: vec![SharedDelivery {
                key: format!("r{offset}/0"),
                recipient: "token".into(),
                content: "{}".into(),
                priority: crate::contract::Priority::Ads,
                attempt: 1,
            }],
            replayed: false,
            channel: "push".into(),
            class: TrafficClass::Ads,
            order_key: None,
            origin: Arc::new(Origin {
                topic: topic.into(),
                partition,
                offset,
            }),
            first_seen_ms: 0,
            ticket,
            route: None,
        }
    }

    #[test]
    fn the_rebalance_drain_lets_records_finish_on_the_thread_it_waits_on() -> anyhow::Result<()> {
        // The realtime lane runs on one thread: its consumer's rebalance callback and the calls
        // that finish its records share it.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let context = Arc::new(context(Duration::from_secs(5)));
        context.book.open("t", 0, 10);
        let revoked = partitions(&[("t", 0)])?;
        let started = Instant::now();
        let left = runtime.block_on({
            let context = context.clone();
            async move {
                tokio::spawn(async move {
                    let finishing = context.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        finishing.book.finish("t", 0, 10);
                    });
                    context.drain_revoked(&revoked, 0)
                })
                .await
            }
        })?;
        assert_eq!(
            left, 0,
            "the record in flight never finished during the drain"
        );
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
        Ok(())
    }

    #[test]
    fn a_revoked_partition_drops_its_unsent_records_and_the_drain_does_not_wait_for_them()
    -> anyhow::Result<()> {
        let context = context(Duration::from_secs(5));
        let book = context.book.clone();
        {
            let mut held = context.held.lock().unwrap_or_else(|p| p.into_inner());
            held.insert(
                ("t".into(), 0),
                VecDeque::from([arrival(&book, "t", 0, 1), arrival(&book, "t", 0, 2)]),
            );
            held.insert(("t".into(), 1), VecDeque::from([arrival(&book, "t", 1, 1)]));
        }
        // A record of partition 0 waits behind its key's record, which is in flight (here, one
        // of partition 1: what the revoke drops must not depend on where that one came from).
        let in_flight = context.order.enter(7, arrival(&book, "t", 1, 9));
        assert!(in_flight.is_some(), "the first of its key goes at once");
        assert!(context.order.enter(7, arrival(&book, "t", 0, 4)).is_none());
        let revoked = partitions(&[("t", 0)])?;
        let dropped = context.drop_unsent(&revoked);
        assert_eq!(dropped, 3);
        let held = context.held.lock().unwrap_or_else(|p| p.into_inner());
        assert!(!held.contains_key(&("t".to_string(), 0)));
        assert_eq!(
            held[&("t".to_string(), 1)].len(),
            1,
            "another partition keeps its own"
        );
        drop(held);
        assert_eq!(context.order.waiting(), 0);
        let started = Instant::now();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let left = runtime.block_on(async { context.drain_revoked(&revoked, dropped) });
        assert_eq!(left, 0);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "waited for records never sent"
        );
        // They stay open: no offset of partition 0 may pass them.
        assert_eq!(book.open_in(&revoked), 3);
        Ok(())
    }

    #[test]
    fn a_closing_consumer_commits_on_revoke_without_a_second_drain() -> anyhow::Result<()> {
        let context = context(Duration::from_secs(5));
        context.book.open("t", 0, 1);
        context.closing.store(true, Relaxed);
        let started = Instant::now();
        let left = context.drain_revoked(&partitions(&[("t", 0)])?, 0);
        assert_eq!(left, 1);
        assert!(started.elapsed() < Duration::from_secs(1));
        Ok(())
    }
}
