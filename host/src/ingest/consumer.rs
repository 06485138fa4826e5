//! The Kafka consumers: one for the request topics, one for the retry topic. Each reads records,
//! turns them into deliveries, hands those to the dispatcher, and stores the completed watermark
//! of each partition as the offset to commit.
//!
//! At least once: `enable.auto.offset.store=false`, and an offset is stored only when every
//! record below it is finished. librdkafka commits the stored offsets once per
//! `commit_interval_ms`, never per message. A record that is not a usable request goes to the DLQ
//! with a reason and never stops the consumer. On a rebalance, revoked partitions drain their
//! in-flight records (bounded by `rebalance_drain_ms`) and commit before they are given up.
//!
//! The retry consumer pauses a partition whose next record is not yet due, and resumes it at the
//! due time. The records stay in Kafka, not in memory, while they wait.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use super::envelope::Envelope;
use super::watermark::OffsetWatermark;
use crate::config::{DispatchConfig, KafkaConfig};
use crate::dedup::DedupStore;
use crate::dispatch::{Dispatcher, Job};
use crate::plugin::Delivery;
use crate::retry::{DeadLetterReason, Origin, Outbox, ReasonClass, RetryRecord, now_ms};
use crate::route::ChannelRouter;
use crate::telemetry::{Counters, events};

/// Which records a consumer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Notification requests (envelopes) from the configured topics.
    Requests,
    /// Deliveries waiting for another try, from the retry topic.
    Retries,
}

/// Drains revoked partitions before they go, and forgets their watermarks after.
pub struct IngestContext {
    book: Arc<OffsetBook>,
    drain: Duration,
}

impl ClientContext for IngestContext {}

impl ConsumerContext for IngestContext {
    fn pre_rebalance(&self, base: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        // Let the in-flight records of the revoked partitions finish, so their offsets are
        // committed here and the next owner does not deliver them again. This runs on the
        // consumer's polling task; the records finish on other tasks.
        let deadline = Instant::now() + self.drain;
        while self.book.open_in(tpl) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let open = self.book.open_in(tpl);
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

type IngestConsumer = StreamConsumer<IngestContext>;

/// The watermarks of the partitions this consumer reads, and the consumer to store them in.
pub struct OffsetBook {
    marks: Mutex<HashMap<(String, i32), OffsetWatermark>>,
    consumer: std::sync::OnceLock<Weak<IngestConsumer>>,
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
        let Some(consumer) = self.consumer.get().and_then(Weak::upgrade) else {
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

    fn open_in(&self, tpl: &TopicPartitionList) -> usize {
        let marks = self.lock();
        tpl.elements()
            .iter()
            .filter_map(|e| marks.get(&(e.topic().to_string(), e.partition())))
            .map(OffsetWatermark::open_count)
            .sum()
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
    /// One delivery of this record reached a final outcome, or was handed to the retry topic.
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

/// The deliveries of one record, on their way to the dispatcher.
struct Arrival {
    deliveries: Vec<Delivery>,
    /// A DLQ replay: skip only what was delivered, not what was dead-lettered.
    replayed: bool,
    channel: Arc<str>,
    origin: Arc<Origin>,
    first_seen_ms: u64,
    ticket: Arc<RecordTicket>,
}

/// What a consumed record turns into.
enum Accepted {
    /// Deliveries to send.
    Deliver(Arrival),
    /// A record that will not be delivered: to the DLQ as it is.
    DeadLetter {
        key: String,
        value: Vec<u8>,
        origin: Origin,
        class: ReasonClass,
        reason: String,
        first_seen_ms: u64,
        ticket: Arc<RecordTicket>,
    },
    /// A retry record that is not due yet: wait for it without holding it.
    NotDue {
        topic: String,
        partition: i32,
        offset: i64,
        due_at_ms: u64,
    },
}

/// A running consumer.
pub struct Ingest {
    consumer: Arc<IngestConsumer>,
    book: Arc<OffsetBook>,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    dedup: Option<Arc<DedupStore>>,
    outbox: Arc<Outbox>,
    source: Source,
}

/// What every consumer of one host shares.
pub struct IngestShared {
    pub dedup: Option<Arc<DedupStore>>,
    pub outbox: Arc<Outbox>,
}

impl Ingest {
    /// Creates a consumer of `source` and subscribes it.
    pub fn connect(
        kafka: &KafkaConfig,
        dispatch: &DispatchConfig,
        brokers: &str,
        shared: &IngestShared,
        source: Source,
    ) -> anyhow::Result<Self> {
        let book = Arc::new(OffsetBook::new());
        let (group, topics) = match source {
            Source::Requests => (kafka.group_id.clone(), kafka.topics.clone()),
            // A group of its own, so a rebalance of one consumer never stalls the other.
            Source::Retries => (
                format!("{}.retry", kafka.group_id),
                vec![kafka.retry_topic.clone()],
            ),
        };
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", brokers)
            .set("group.id", &group)
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
        if source == Source::Retries {
            // The retry topic may come into being with the first retry; look for it every few
            // seconds rather than at librdkafka's default of five minutes.
            client.set("topic.metadata.refresh.interval.ms", "3000");
        }
        for (k, v) in &kafka.properties {
            client.set(k, v);
        }
        let context = IngestContext {
            book: book.clone(),
            drain: Duration::from_millis(kafka.rebalance_drain_ms),
        };
        let consumer: IngestConsumer = client
            .create_with_context(context)
            .with_context(|| format!("creating the Kafka consumer for {brokers}"))?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&names)
            .with_context(|| format!("subscribing to {names:?}"))?;
        let consumer = Arc::new(consumer);
        let _ = book.consumer.set(Arc::downgrade(&consumer));
        Ok(Self {
            consumer,
            book,
            in_flight: Arc::new(Semaphore::new(dispatch.max_in_flight_records)),
            max_in_flight: dispatch.max_in_flight_records,
            dedup: shared.dedup.clone(),
            outbox: shared.outbox.clone(),
            source,
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
            let message = match message {
                Ok(message) => message,
                Err(e) => {
                    events::ConsumeFailed { error: &e }.emit();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // The borrowed message cannot live across an await; take what is needed.
            let accepted = self.accept(&message, permit, router, counters, max_record_bytes);
            drop(message);
            match accepted {
                Accepted::Deliver(arrival) => {
                    self.dispatch(arrival, router, dispatcher, counters).await;
                }
                Accepted::DeadLetter {
                    key,
                    value,
                    origin,
                    class,
                    reason,
                    first_seen_ms,
                    ticket,
                } => {
                    let why = DeadLetterReason {
                        class,
                        reason: &reason,
                        vendor_code: None,
                        plugin: None,
                        attempts: 0,
                        first_seen_ms,
                    };
                    self.outbox.dead_letter(&key, &value, &origin, &why).await;
                    counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    ticket.complete();
                }
                Accepted::NotDue {
                    topic,
                    partition,
                    offset,
                    due_at_ms,
                } => self.wait_for_due(&topic, partition, offset, due_at_ms),
            }
        }
        self.drain_and_commit(drain).await;
        Ok(())
    }

    fn ticket(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        deliveries: usize,
        permit: OwnedSemaphorePermit,
    ) -> Arc<RecordTicket> {
        self.book.open(topic, partition, offset);
        Arc::new(RecordTicket {
            topic: topic.to_string(),
            partition,
            offset,
            remaining: AtomicUsize::new(deliveries),
            book: self.book.clone(),
            _permit: permit,
        })
    }

    /// Decodes a record into what to do with it.
    fn accept(
        &self,
        message: &BorrowedMessage<'_>,
        permit: OwnedSemaphorePermit,
        router: &ChannelRouter,
        counters: &Counters,
        max_record_bytes: usize,
    ) -> Accepted {
        let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
        let origin = Origin {
            topic: topic.to_string(),
            partition,
            offset,
        };
        let seen_at = message
            .timestamp()
            .to_millis()
            .map_or_else(now_ms, |ms| ms.max(0) as u64);
        let refuse =
            |class: ReasonClass, reason: String, counter: &std::sync::atomic::AtomicU64, permit| {
                counter.fetch_add(1, Ordering::Relaxed);
                events::RecordRefused {
                    topic,
                    partition,
                    offset,
                    reason: &reason,
                }
                .emit();
                Accepted::DeadLetter {
                    key: message
                        .key()
                        .map(|k| String::from_utf8_lossy(k).into_owned())
                        .unwrap_or_default(),
                    value: message.payload().unwrap_or_default().to_vec(),
                    origin: origin.clone(),
                    class,
                    reason,
                    first_seen_ms: seen_at,
                    ticket: self.ticket(topic, partition, offset, 1, permit),
                }
            };
        if self.source == Source::Retries {
            let record: RetryRecord = match message.payload().map(serde_json::from_slice) {
                Some(Ok(record)) => record,
                Some(Err(e)) => {
                    return refuse(
                        ReasonClass::Undecodable,
                        format!("not a retry record: {e}"),
                        &counters.records_undecodable,
                        permit,
                    );
                }
                None => {
                    return refuse(
                        ReasonClass::Undecodable,
                        "retry record has no value".into(),
                        &counters.records_undecodable,
                        permit,
                    );
                }
            };
            if record.due_at_ms > now_ms() {
                return Accepted::NotDue {
                    topic: topic.to_string(),
                    partition,
                    offset,
                    due_at_ms: record.due_at_ms,
                };
            }
            counters.records_consumed.fetch_add(1, Ordering::Relaxed);
            return Accepted::Deliver(Arrival {
                deliveries: vec![record.delivery()],
                replayed: record.replayed,
                channel: record.channel.as_str().into(),
                first_seen_ms: record.first_seen_ms,
                origin: Arc::new(record.origin),
                ticket: self.ticket(topic, partition, offset, 1, permit),
            });
        }

        counters.records_consumed.fetch_add(1, Ordering::Relaxed);
        let envelope = match Envelope::decode(message.payload(), max_record_bytes) {
            Ok(envelope) => envelope,
            Err(error) => {
                return refuse(
                    ReasonClass::Undecodable,
                    error.to_string(),
                    &counters.records_undecodable,
                    permit,
                );
            }
        };
        if envelope.is_expired(time::OffsetDateTime::now_utc()) {
            return refuse(
                ReasonClass::Expired,
                "expired".into(),
                &counters.records_expired,
                permit,
            );
        }
        if !router.knows(&envelope.channel) {
            let reason = format!("unknown channel `{}`", envelope.channel);
            return refuse(
                ReasonClass::UnknownChannel,
                reason,
                &counters.records_unknown_channel,
                permit,
            );
        }
        let deliveries: Vec<Delivery> = envelope.deliveries().collect();
        Accepted::Deliver(Arrival {
            ticket: self.ticket(topic, partition, offset, deliveries.len(), permit),
            deliveries,
            replayed: false,
            channel: envelope.channel.as_str().into(),
            origin: Arc::new(origin),
            first_seen_ms: seen_at,
        })
    }

    /// Pauses the partition at `offset` and resumes it when the record there is due.
    fn wait_for_due(&self, topic: &str, partition: i32, offset: i64, due_at_ms: u64) {
        let mut tpl = TopicPartitionList::new();
        if tpl
            .add_partition(topic, partition)
            .set_offset(Offset::Offset(offset))
            .is_err()
        {
            return;
        }
        if let Err(e) = self.consumer.pause(&tpl) {
            tracing::warn!(error = %e, topic, partition, "pausing a retry partition failed");
        }
        // Rewind to the record, so it is read again once the partition resumes; what was
        // fetched after it is dropped by the seek.
        if let Err(e) = self
            .consumer
            .seek_partitions(tpl.clone(), Duration::from_secs(5))
        {
            tracing::warn!(error = %e, topic, partition, "rewinding a retry partition failed");
        }
        let wait = Duration::from_millis(due_at_ms.saturating_sub(now_ms()));
        let consumer = Arc::downgrade(&self.consumer);
        crate::retry::after(wait, move || {
            if let Some(consumer) = consumer.upgrade()
                && let Err(e) = consumer.resume(&tpl)
            {
                // Revoked meanwhile: the new owner reads the record.
                tracing::debug!(error = %e, "resuming a retry partition failed");
            }
        });
    }

    /// Skips the recipients the dedup store knows as done (a redelivered or replayed request),
    /// and hands the rest to the dispatcher.
    async fn dispatch(
        &self,
        arrival: Arrival,
        router: &ChannelRouter,
        dispatcher: &Dispatcher,
        counters: &Counters,
    ) {
        let Arrival {
            deliveries,
            replayed,
            channel,
            origin,
            first_seen_ms,
            ticket,
        } = arrival;
        let done = match &self.dedup {
            None => vec![false; deliveries.len()],
            Some(dedup) => {
                // Each delivery is looked up as delivered and, unless replayed, as dead.
                let per_delivery = if replayed { 1 } else { 2 };
                let mut keys = Vec::with_capacity(deliveries.len() * per_delivery);
                for d in &deliveries {
                    keys.push(d.key.clone());
                    if !replayed {
                        keys.push(crate::dedup::dead_key(&d.key));
                    }
                }
                let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
                match dedup.seen(&refs).await {
                    Ok(seen) => seen
                        .chunks(per_delivery)
                        .map(|c| c.iter().any(|s| *s))
                        .collect(),
                    Err(error) => {
                        // Unanswered means "not known as done": sending again is at least once.
                        counters.dedup_errors.fetch_add(1, Ordering::Relaxed);
                        events::DedupFailed { error: &error }.emit();
                        vec![false; deliveries.len()]
                    }
                }
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
            let plugin = router.pick(&channel).unwrap_or_default();
            let job = Job::new(
                delivery,
                ticket.clone(),
                channel.clone(),
                origin.clone(),
                first_seen_ms,
            );
            dispatcher.submit(&plugin, job).await;
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
            Ok(Ok(())) => tracing::info!(source = ?self.source, "final offsets committed"),
            // Nothing stored since the last commit is not a failure.
            Ok(Err(rdkafka::error::KafkaError::ConsumerCommit(
                rdkafka::types::RDKafkaErrorCode::NoOffset,
            ))) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "final commit failed"),
            Err(e) => tracing::warn!(error = %e, "final commit task failed"),
        }
    }
}
