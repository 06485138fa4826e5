//! The Kafka consumer: reads records, decodes envelopes, hands deliveries to the dispatcher, and
//! stores the completed watermark of each partition as the offset to commit.
//!
//! At least once: `enable.auto.offset.store=false`, and an offset is stored only when every
//! record below it is finished. librdkafka commits the stored offsets once per
//! `commit_interval_ms`, never per message. A bad record is counted, logged with its
//! coordinates, and finished; it never stops the consumer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use super::envelope::Envelope;
use super::watermark::OffsetWatermark;
use crate::config::{DispatchConfig, KafkaConfig};
use crate::dedup::DedupStore;
use crate::dispatch::{Dispatcher, Job};
use crate::route::ChannelRouter;
use crate::telemetry::{Counters, events};

/// Logs rebalances and forgets the watermarks of partitions this host no longer owns.
pub struct IngestContext {
    book: Arc<OffsetBook>,
}

impl ClientContext for IngestContext {}

impl ConsumerContext for IngestContext {
    fn post_rebalance(
        &self,
        _base: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
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

type IngestConsumer = StreamConsumer<IngestContext>;

/// The watermarks of the partitions this host consumes, and the consumer to store them in.
pub struct OffsetBook {
    marks: Mutex<HashMap<(String, i32), OffsetWatermark>>,
    consumer: std::sync::OnceLock<std::sync::Weak<IngestConsumer>>,
}

impl OffsetBook {
    fn new() -> Self {
        Self {
            marks: Mutex::new(HashMap::new()),
            consumer: std::sync::OnceLock::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, i32), OffsetWatermark>> {
        self.marks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn open(&self, topic: &str, partition: i32, offset: i64) {
        self.lock()
            .entry((topic.to_string(), partition))
            .or_default()
            .open(offset);
    }

    fn finish(&self, topic: &str, partition: i32, offset: i64) {
        let advanced = {
            let mut marks = self.lock();
            let Some(mark) = marks.get_mut(&(topic.to_string(), partition)) else {
                // The partition was revoked while the record was in flight; its new owner
                // consumes it again from the last commit.
                return;
            };
            mark.finish(offset);
            mark.advance()
        };
        if let Some(next) = advanced {
            self.store(topic, partition, next);
        }
    }

    fn store(&self, topic: &str, partition: i32, next_offset: i64) {
        let Some(consumer) = self.consumer.get().and_then(std::sync::Weak::upgrade) else {
            return;
        };
        let mut tpl = TopicPartitionList::new();
        if tpl
            .add_partition_offset(topic, partition, Offset::Offset(next_offset))
            .is_ok()
            && let Err(e) = consumer.store_offsets(&tpl)
        {
            events::OffsetStoreFailed {
                topic,
                partition,
                offset: next_offset,
                error: &e,
            }
            .emit();
        }
    }

    fn forget(&self, tpl: &TopicPartitionList) {
        let mut marks = self.lock();
        for e in tpl.elements() {
            marks.remove(&(e.topic().to_string(), e.partition()));
        }
    }

    /// Records consumed and not yet finished, over all partitions.
    pub fn open_records(&self) -> usize {
        self.lock().values().map(OffsetWatermark::open_count).sum()
    }
}

/// One consumed record, shared by its deliveries. The record is finished (and its offset may be
/// committed) only when every delivery called [`RecordTicket::complete`]; merely dropping the
/// ticket, as on shutdown, never finishes it, so an unfinished record is consumed again.
pub struct RecordTicket {
    topic: String,
    partition: i32,
    offset: i64,
    remaining: AtomicUsize,
    book: Arc<OffsetBook>,
    /// Holds a place in `max_in_flight_records` until the last delivery lets go of the ticket.
    _permit: OwnedSemaphorePermit,
}

impl RecordTicket {
    /// One delivery of this record reached a final outcome.
    pub fn complete(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.book.finish(&self.topic, self.partition, self.offset);
        }
    }

    /// Where the record came from, for logs.
    pub fn coordinates(&self) -> (&str, i32, i64) {
        (&self.topic, self.partition, self.offset)
    }
}

/// The running consumer of the host's topics.
pub struct Ingest {
    consumer: Arc<IngestConsumer>,
    book: Arc<OffsetBook>,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    dedup: Option<Arc<DedupStore>>,
}

impl Ingest {
    /// Creates the consumer and subscribes to the configured topics.
    pub fn connect(
        kafka: &KafkaConfig,
        dispatch: &DispatchConfig,
        brokers: &str,
        dedup: Option<Arc<DedupStore>>,
    ) -> anyhow::Result<Self> {
        let book = Arc::new(OffsetBook::new());
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", brokers)
            .set("group.id", &kafka.group_id)
            .set("enable.auto.commit", "true")
            .set(
                "auto.commit.interval.ms",
                kafka.commit_interval_ms.to_string(),
            )
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", kafka.session_timeout_ms.to_string())
            // Bounds what librdkafka prefetches, so a backlog cannot grow host memory.
            .set("queued.max.messages.kbytes", "16384");
        for (k, v) in &kafka.properties {
            client.set(k, v);
        }
        let consumer: IngestConsumer = client
            .create_with_context(IngestContext { book: book.clone() })
            .with_context(|| format!("creating the Kafka consumer for {brokers}"))?;
        let topics: Vec<&str> = kafka.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .with_context(|| format!("subscribing to {topics:?}"))?;
        let consumer = Arc::new(consumer);
        let _ = book.consumer.set(Arc::downgrade(&consumer));
        Ok(Self {
            consumer,
            book,
            in_flight: Arc::new(Semaphore::new(dispatch.max_in_flight_records)),
            max_in_flight: dispatch.max_in_flight_records,
            dedup,
        })
    }

    /// Consumes until `shutdown` turns true, then drains in-flight records for up to `drain` and
    /// commits the watermark synchronously.
    pub async fn run(
        &self,
        router: &ChannelRouter,
        dispatcher: &Dispatcher,
        counters: &Counters,
        max_record_bytes: usize,
        mut shutdown: watch::Receiver<bool>,
        drain: Duration,
    ) -> anyhow::Result<()> {
        loop {
            let permit = tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => break,
                permit = self.in_flight.clone().acquire_owned() => permit.context("in-flight limit closed")?,
            };
            let message = tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => break,
                message = self.consumer.recv() => message,
            };
            match message {
                Ok(message) => {
                    // The borrowed message cannot live across an await; take what is needed.
                    let accepted =
                        self.accept(&message, permit, router, counters, max_record_bytes);
                    drop(message);
                    if let Some((envelope, ticket)) = accepted {
                        self.dispatch(envelope, ticket, router, dispatcher, counters)
                            .await;
                    }
                }
                Err(e) => {
                    events::ConsumeFailed { error: &e }.emit();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        self.drain_and_commit(drain).await;
        Ok(())
    }

    /// Opens the record and decodes it. A record that will not be delivered is finished here;
    /// a deliverable one comes back with its ticket.
    fn accept(
        &self,
        message: &BorrowedMessage<'_>,
        permit: OwnedSemaphorePermit,
        router: &ChannelRouter,
        counters: &Counters,
        max_record_bytes: usize,
    ) -> Option<(Envelope, Arc<RecordTicket>)> {
        let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
        counters.records_consumed.fetch_add(1, Ordering::Relaxed);
        self.book.open(topic, partition, offset);
        let finish_now = || self.book.finish(topic, partition, offset);

        let envelope = match Envelope::decode(message.payload(), max_record_bytes) {
            Ok(envelope) => envelope,
            Err(error) => {
                counters.records_undecodable.fetch_add(1, Ordering::Relaxed);
                events::RecordRefused {
                    topic,
                    partition,
                    offset,
                    reason: &error,
                }
                .emit();
                finish_now();
                return None;
            }
        };
        if envelope.is_expired(time::OffsetDateTime::now_utc()) {
            counters.records_expired.fetch_add(1, Ordering::Relaxed);
            events::RecordRefused {
                topic,
                partition,
                offset,
                reason: &"expired",
            }
            .emit();
            finish_now();
            return None;
        }
        if !router.knows(&envelope.channel) {
            counters
                .records_unknown_channel
                .fetch_add(1, Ordering::Relaxed);
            let reason = format!("unknown channel `{}`", envelope.channel);
            events::RecordRefused {
                topic,
                partition,
                offset,
                reason: &reason,
            }
            .emit();
            finish_now();
            return None;
        }
        let ticket = Arc::new(RecordTicket {
            topic: topic.to_string(),
            partition,
            offset,
            remaining: AtomicUsize::new(envelope.recipients.len()),
            book: self.book.clone(),
            _permit: permit,
        });
        Some((envelope, ticket))
    }

    /// Skips the recipients the dedup store knows as done (a redelivered or replayed request),
    /// and hands the rest to the dispatcher.
    async fn dispatch(
        &self,
        envelope: Envelope,
        ticket: Arc<RecordTicket>,
        router: &ChannelRouter,
        dispatcher: &Dispatcher,
        counters: &Counters,
    ) {
        let deliveries: Vec<_> = envelope.deliveries().collect();
        let done = match &self.dedup {
            None => vec![false; deliveries.len()],
            Some(dedup) => {
                let keys: Vec<&str> = deliveries.iter().map(|d| d.key.as_str()).collect();
                dedup.seen(&keys).await.unwrap_or_else(|error| {
                    // Unanswered means "not known as done": sending again is at least once.
                    counters.dedup_errors.fetch_add(1, Ordering::Relaxed);
                    events::DedupFailed { error: &error }.emit();
                    vec![false; keys.len()]
                })
            }
        };
        for (delivery, done) in deliveries.into_iter().zip(done) {
            if done {
                counters
                    .deliveries_skipped_done
                    .fetch_add(1, Ordering::Relaxed);
                ticket.complete();
                continue;
            }
            let plugin = router.pick(&envelope.channel).unwrap_or_default();
            dispatcher.submit(&plugin, Job::new(delivery, ticket.clone()));
        }
    }

    async fn drain_and_commit(&self, drain: Duration) {
        let all = u32::try_from(self.max_in_flight).unwrap_or(u32::MAX);
        let drained = tokio::time::timeout(drain, self.in_flight.acquire_many(all)).await;
        if drained.is_err() {
            tracing::warn!(
                open_records = self.book.open_records(),
                "drain timed out; unfinished records will be consumed again after restart"
            );
        }
        let consumer = self.consumer.clone();
        // A synchronous commit blocks on the broker; keep it off the async workers.
        let committed =
            tokio::task::spawn_blocking(move || consumer.commit_consumer_state(CommitMode::Sync))
                .await;
        match committed {
            Ok(Ok(())) => tracing::info!("final offsets committed"),
            // Nothing stored since the last commit is not a failure.
            Ok(Err(rdkafka::error::KafkaError::ConsumerCommit(
                rdkafka::types::RDKafkaErrorCode::NoOffset,
            ))) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "final commit failed"),
            Err(e) => tracing::warn!(error = %e, "final commit task failed"),
        }
    }
}
