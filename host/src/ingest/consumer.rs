//! The Kafka consumers: one per lane with topics of its own, one for the mixed request topics
//! (each record goes to the lane its `priority` names), and one for the retry topic. Each reads
//! records, turns them into deliveries, hands those to the dispatcher, and stores the completed
//! watermark of each partition as the offset to commit.
//!
//! Memory: a record is charged to its lane's [`Budget`] when admitted. A record whose lane (or
//! the host) is over budget is held, its partition paused, until the lane falls below its
//! low-water mark; then the held records are admitted in order and the partition resumes. The
//! consumer keeps polling meanwhile, so the group never sees it as stuck, and librdkafka's
//! prefetch queue is sized from the same budget.
//!
//! Order: with `ordering = "key"`, a record waits in [`KeyOrder`] until the previous record with
//! the same Kafka key in its partition is finished; different keys run at once.
//!
//! At least once: `enable.auto.offset.store=false`, and an offset is stored only when every
//! record below it is finished. librdkafka commits the stored offsets once per
//! `commit_interval_ms`, never per message. A record that is not a usable request goes to the DLQ
//! with a reason and never stops the consumer. On a rebalance, revoked partitions drain their
//! in-flight records (bounded by `rebalance_drain_ms`) and commit before they are given up.
//!
//! The retry consumer pauses a partition whose next record is not yet due, and resumes it at the
//! due time. The records stay in Kafka, not in memory, while they wait.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash as _, Hasher as _};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};

use super::envelope::Envelope;
use crate::clock::now_ms;
use crate::config::{KafkaConfig, LanesConfig, Ordering as RecordOrdering, TrafficClass};
use crate::contract::SharedDelivery;
use crate::dedup::DedupStore;
use crate::dispatch::Dispatcher;
use crate::lane::{Admission, Arrival, Budget, KeyOrder};
use crate::offsets::{OffsetBook, OffsetSink, RecordTicket};
use crate::route::Router;
use crate::settle::{DeadLetterReason, Origin, Outbox, ReasonClass, RetryRecord};
use crate::telemetry::{Counters, events};

/// Which records a consumer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Notification requests from `kafka.topics`, each in the lane its `priority` names.
    Mixed,
    /// Notification requests from a lane's own topics: all in that lane.
    Lane(TrafficClass),
    /// Deliveries waiting for another try, from the retry topic.
    Retries,
}

impl Source {
    /// The consumer group and topics of this source.
    fn group_and_topics(self, kafka: &KafkaConfig, lanes: &LanesConfig) -> (String, Vec<String>) {
        match self {
            Source::Mixed => (kafka.group_id.clone(), kafka.topics.clone()),
            // Groups of their own, so a rebalance of one consumer never stalls another.
            Source::Lane(class) => (
                format!("{}.{}", kafka.group_id, class.as_str()),
                lanes.get(class).topics.clone(),
            ),
            // Every retry tier: one group, each partition paused on its own head record.
            Source::Retries => (
                format!("{}.retry", kafka.group_id),
                kafka
                    .retry_topics()
                    .into_iter()
                    .map(|(topic, _)| topic)
                    .collect(),
            ),
        }
    }

    /// The source's name in metrics: the lane of a lane's own topics, `mixed`, or `retry`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Mixed => "mixed",
            Source::Lane(class) => class.as_str(),
            Source::Retries => "retry",
        }
    }

    /// The sources a host with this config runs.
    pub fn all(kafka: &KafkaConfig, lanes: &LanesConfig) -> Vec<Source> {
        let mut sources = Vec::new();
        if !kafka.topics.is_empty() {
            sources.push(Source::Mixed);
        }
        for class in TrafficClass::ALL {
            if !lanes.get(class).topics.is_empty() {
                sources.push(Source::Lane(class));
            }
        }
        sources.push(Source::Retries);
        sources
    }
}

/// How often librdkafka reports the statistics the consumer lag is read from, in milliseconds.
const STATISTICS_INTERVAL_MS: &str = "5000";

/// Drains revoked partitions before they go, and forgets their watermarks after. Keeps the
/// consumer's lag from librdkafka's statistics.
pub struct IngestContext {
    book: Arc<OffsetBook>,
    drain: Duration,
    /// Records held for the budget: those of a revoked partition are dropped, never sent.
    held: Arc<Mutex<HeldRecords>>,
    /// Records waiting behind their key: those of a revoked partition are dropped too.
    order: Arc<KeyOrder>,
    /// Set once the consumer is closing after its own drain: a revoke then only commits, so
    /// shutdown never waits for a second drain.
    closing: std::sync::atomic::AtomicBool,
    /// Records behind the end of the assigned partitions: `switchboard_consumer_lag_records`.
    lag: prometheus_client::metrics::gauge::Gauge,
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
    fn drop_unsent(&self, tpl: &TopicPartitionList) -> usize {
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
    fn drain_revoked(&self, tpl: &TopicPartitionList, dropped: usize) -> usize {
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

/// The part of librdkafka's statistics JSON the lag is summed from.
#[derive(serde::Deserialize)]
struct LagStatistics {
    #[serde(default)]
    topics: HashMap<String, LagTopic>,
}

#[derive(serde::Deserialize)]
struct LagTopic {
    #[serde(default)]
    partitions: HashMap<String, LagPartition>,
}

#[derive(serde::Deserialize)]
struct LagPartition {
    partition: i32,
    /// Assigned to this consumer.
    #[serde(default)]
    desired: bool,
    /// -1 while unknown (no committed offset or high watermark yet).
    #[serde(default = "unknown_lag")]
    consumer_lag: i64,
}

fn unknown_lag() -> i64 {
    -1
}

impl LagStatistics {
    /// The lag summed over the assigned partitions whose lag is known. Partition -1 is
    /// librdkafka's internal "unassigned" partition, not a real one.
    fn lag(&self) -> i64 {
        self.topics
            .values()
            .flat_map(|t| t.partitions.values())
            .filter(|p| p.partition >= 0 && p.desired && p.consumer_lag >= 0)
            .map(|p| p.consumer_lag)
            .sum()
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

type IngestConsumer = StreamConsumer<IngestContext>;

/// What a consumed record turns into.
enum Accepted {
    /// Deliveries to send.
    Deliver(Arrival),
    /// A record that will not be delivered: to the DLQ as it is.
    DeadLetter(Refused),
    /// A retry record its tier let go before it is due: written to the tier its remaining wait
    /// fits, then finished here.
    Rehop(Rehop),
    /// A retry record that is not due yet: wait for it without holding it.
    NotDue {
        topic: String,
        partition: i32,
        offset: i64,
        due_at_ms: u64,
    },
}

/// A record that will not be delivered, on its way to the DLQ as it is.
struct Refused {
    key: String,
    value: Vec<u8>,
    origin: Origin,
    class: ReasonClass,
    reason: String,
    first_seen_ms: u64,
    ticket: Arc<RecordTicket>,
}

/// A retry record on its way to its next retry tier.
struct Rehop {
    record: RetryRecord,
    ticket: Arc<RecordTicket>,
}

/// Bytes of refused records on their way to the DLQ at once, per consumer: enough for the
/// producer to batch thousands of small records, and a bound on what a flood of large ones
/// holds in memory.
const REFUSED_IN_FLIGHT_BYTES: usize = 8 << 20;

/// Writes refused records to the DLQ, and retry records to their next tier, while the consumer
/// keeps polling. Each write runs on a task of its own and the producer batches them, so a
/// backlog of bad records drains at the producer's rate, not one acknowledgement at a time; the
/// bytes in flight are bounded.
struct RefusedRecords {
    outbox: Arc<Outbox>,
    counters: Arc<Counters>,
    in_flight: Arc<tokio::sync::Semaphore>,
}

impl RefusedRecords {
    /// Starts the write of `refused`; waits only while the bytes in flight are at their bound.
    async fn write(&self, refused: Refused) {
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
    async fn rehop(&self, mut rehop: Rehop) {
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

/// The consumer's own background tasks (admitting a paused partition's held records, handing
/// on the next record of a key). Finished ones are reaped whenever one starts, so a long run
/// of budget pauses leaves no finished task behind.
#[derive(Default)]
struct HoldTasks(tokio::task::JoinSet<()>);

impl HoldTasks {
    fn spawn(&mut self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        while self.0.try_join_next().is_some() {}
        self.0.spawn(task);
    }

    /// Tasks started and not yet reaped.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.len()
    }

    fn abort_all(&mut self) {
        self.0.abort_all();
    }
}

/// Records held for the budget, in offset order, by (topic, partition).
type HeldRecords = HashMap<(String, i32), VecDeque<Arrival>>;

/// A running consumer.
pub struct Ingest {
    consumer: Arc<IngestConsumer>,
    book: Arc<OffsetBook>,
    source: Source,
    admission: Arc<Admission>,
    /// Where the next record of a key comes out once the one before it finished.
    released: Mutex<Option<mpsc::UnboundedReceiver<Arrival>>>,
    /// Lane ordering, by class.
    ordering: [RecordOrdering; 3],
    /// Records of partitions paused for the budget, in offset order, by partition.
    held: Arc<Mutex<HeldRecords>>,
    /// Where refused records go to the DLQ without holding up the poll loop.
    refused: RefusedRecords,
    max_record_bytes: usize,
}

/// What every consumer of one host shares.
pub struct IngestShared {
    pub dedup: Option<Arc<DedupStore>>,
    pub outbox: Arc<Outbox>,
    pub budget: Arc<Budget>,
    pub router: Arc<Router>,
    pub dispatcher: Arc<Dispatcher>,
    pub counters: Arc<Counters>,
    /// Where each consumer's lag is shown.
    pub metrics: Arc<crate::telemetry::metrics::Metrics>,
    /// librdkafka's prefetch queue of each consumer, in bytes.
    pub prefetch_bytes: usize,
    pub max_record_bytes: usize,
}

/// librdkafka's fetch sizes for a prefetch queue of `prefetch_bytes`: the queue cap, one fetch
/// (at most half the queue, and never below `message.max.bytes`' default so any record fits),
/// half a fetch per partition, and the per-partition minimum count (lowered from 100,000 so the
/// byte cap is what binds).
fn fetch_properties(prefetch_bytes: usize) -> [(&'static str, String); 4] {
    let queue_kb = (prefetch_bytes / 1024).max(1024);
    let fetch = (prefetch_bytes / 2).clamp(1_048_576, 52_428_800);
    [
        ("queued.max.messages.kbytes", queue_kb.to_string()),
        ("fetch.max.bytes", fetch.to_string()),
        // librdkafka's 1 MiB per partition would make one hot partition fetch in small steps.
        (
            "max.partition.fetch.bytes",
            (fetch / 2).max(1_048_576).to_string(),
        ),
        ("queued.min.messages", "10000".to_string()),
    ]
}

impl Ingest {
    /// Creates a consumer of `source` and subscribes it.
    pub fn connect(
        kafka: &KafkaConfig,
        lanes: &LanesConfig,
        brokers: &str,
        properties: &std::collections::BTreeMap<String, String>,
        shared: &IngestShared,
        source: Source,
    ) -> anyhow::Result<Self> {
        let book = Arc::new(OffsetBook::new());
        let (group, topics) = source.group_and_topics(kafka, lanes);
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
            .set("session.timeout.ms", kafka.session_timeout_ms.to_string());
        // Bounds what librdkafka prefetches, so a backlog cannot grow host memory.
        for (key, value) in fetch_properties(shared.prefetch_bytes) {
            client.set(key, value);
        }
        let fetch_wait = match source {
            Source::Lane(class) => lanes.get(class).fetch_wait_max_ms(class),
            // Mixed topics carry realtime too; retries are due at a given time.
            Source::Mixed | Source::Retries => {
                lanes.realtime.fetch_wait_max_ms(TrafficClass::Realtime)
            }
        };
        client.set("fetch.wait.max.ms", fetch_wait.to_string());
        // For the consumer lag (see `IngestContext::stats_raw`).
        client.set("statistics.interval.ms", STATISTICS_INTERVAL_MS);
        if source == Source::Retries {
            // The retry topic may come into being with the first retry; look for it every few
            // seconds rather than at librdkafka's default of five minutes.
            client.set("topic.metadata.refresh.interval.ms", "3000");
        }
        for (k, v) in properties {
            client.set(k, v);
        }
        let (next, released) = mpsc::unbounded_channel();
        let order = Arc::new(KeyOrder::new(next));
        let held: Arc<Mutex<HeldRecords>> = Arc::new(Mutex::new(HashMap::new()));
        let context = IngestContext {
            book: book.clone(),
            drain: Duration::from_millis(kafka.rebalance_drain_ms),
            held: held.clone(),
            order: order.clone(),
            closing: std::sync::atomic::AtomicBool::new(false),
            lag: shared.metrics.consumer_lag(source.as_str()),
        };
        let consumer: IngestConsumer = client
            .create_with_context(context)
            .with_context(|| format!("creating the Kafka consumer for {brokers}"))?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&names)
            .with_context(|| format!("subscribing to {names:?}"))?;
        let consumer = Arc::new(consumer);
        book.store_in(Arc::downgrade(&consumer) as Weak<dyn OffsetSink>);
        let ordering = match source {
            // Retries come back in due order, not offset order: there is no order to keep.
            Source::Retries => [RecordOrdering::None; 3],
            _ => TrafficClass::ALL.map(|c| lanes.get(c).ordering),
        };
        Ok(Self {
            consumer,
            book,
            source,
            admission: Arc::new(Admission {
                budget: shared.budget.clone(),
                order,
                dedup: shared.dedup.clone(),
                router: shared.router.clone(),
                dispatcher: shared.dispatcher.clone(),
                counters: shared.counters.clone(),
            }),
            released: Mutex::new(Some(released)),
            ordering,
            held,
            refused: RefusedRecords {
                outbox: shared.outbox.clone(),
                counters: shared.counters.clone(),
                in_flight: Arc::new(tokio::sync::Semaphore::new(REFUSED_IN_FLIGHT_BYTES)),
            },
            max_record_bytes: shared.max_record_bytes,
        })
    }

    /// Consumes until `shutdown` turns true, then drains in-flight records for up to `drain` and
    /// commits the watermark synchronously.
    pub async fn run(
        &self,
        mut shutdown: watch::Receiver<bool>,
        drain: Duration,
    ) -> anyhow::Result<()> {
        let mut tasks = HoldTasks::default();
        if let Some(mut released) = self
            .released
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let admission = self.admission.clone();
            tasks.spawn(async move {
                while let Some(next) = released.recv().await {
                    admission.dispatch_or_spawn(next).await;
                }
            });
        }
        let counters = self.admission.counters.clone();
        loop {
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
            let accepted = self.accept(&message, &counters);
            drop(message);
            match accepted {
                Accepted::Deliver(arrival) => self.admit_or_hold(arrival, &mut tasks).await,
                Accepted::DeadLetter(refused) => self.refused.write(refused).await,
                Accepted::Rehop(rehop) => self.refused.rehop(rehop).await,
                Accepted::NotDue {
                    topic,
                    partition,
                    offset,
                    due_at_ms,
                } => self.wait_for_due(&topic, partition, offset, due_at_ms),
            }
        }
        self.drain_and_commit(drain).await;
        tasks.abort_all();
        Ok(())
    }

    /// Admits `arrival`, unless its lane is over budget, the dedup store is down, or its
    /// partition already holds records: then the partition is paused and the record held until
    /// the lane is below low water and the store answers again.
    async fn admit_or_hold(&self, arrival: Arrival, tasks: &mut HoldTasks) {
        let partition = {
            let (topic, partition) = arrival.ticket.partition();
            (topic.to_string(), partition)
        };
        let class = arrival.class;
        let admit_now = {
            let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(queue) = held.get_mut(&partition) {
                // Behind records already held: keeps the partition's order.
                queue.push_back(arrival);
                return;
            }
            if self.admission.budget.is_over(class) || !self.admission.dedup_available() {
                held.insert(partition.clone(), VecDeque::from([arrival]));
                None
            } else {
                Some(arrival)
            }
        };
        if let Some(arrival) = admit_now {
            self.admission.admit(arrival).await;
            return;
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&partition.0, partition.1);
        if let Err(e) = self.consumer.pause(&tpl) {
            tracing::warn!(error = %e, topic = %partition.0, partition = partition.1, "pausing a partition over budget failed");
        }
        let paused = self.admission.budget.paused(class);
        events::LanePaused {
            lane: class.as_str(),
            topic: &partition.0,
            partition: partition.1,
            used_bytes: self.admission.budget.used(class),
        }
        .emit();
        let (admission, held, consumer) = (
            self.admission.clone(),
            self.held.clone(),
            self.consumer.clone(),
        );
        tasks.spawn(async move {
            admission.budget.wait_below_low_water(class).await;
            if let Some(dedup) = &admission.dedup {
                dedup.wait_available().await;
            }
            loop {
                let batch: Vec<Arrival> = {
                    let mut held = held.lock().unwrap_or_else(|p| p.into_inner());
                    match held.get_mut(&partition) {
                        Some(queue) if !queue.is_empty() => queue.drain(..).collect(),
                        _ => {
                            held.remove(&partition);
                            break;
                        }
                    }
                };
                for arrival in batch {
                    admission.admit(arrival).await;
                }
            }
            if let Err(e) = consumer.resume(&tpl) {
                // Revoked meanwhile: the new owner reads on from the last commit.
                tracing::debug!(error = %e, "resuming a partition failed");
            }
            drop(paused);
        });
    }

    fn ticket(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        deliveries: usize,
    ) -> Arc<RecordTicket> {
        RecordTicket::open(&self.book, topic, partition, offset, deliveries)
    }

    /// The lane of a request: its consumer's, or the one its `priority` names.
    fn class_of(&self, priority: crate::contract::Priority) -> TrafficClass {
        match self.source {
            Source::Lane(class) => class,
            Source::Mixed | Source::Retries => priority.into(),
        }
    }

    /// The key-order slot of a record in `class`, or `None` when the lane does not keep order or
    /// the record has no key.
    fn order_key(&self, class: TrafficClass, message: &BorrowedMessage<'_>) -> Option<u64> {
        if self.ordering[class.index()] != RecordOrdering::Key {
            return None;
        }
        let key = message.key()?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (message.topic(), message.partition(), key).hash(&mut hasher);
        Some(hasher.finish())
    }

    /// Decodes a record into what to do with it.
    fn accept(&self, message: &BorrowedMessage<'_>, counters: &Counters) -> Accepted {
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
            |class: ReasonClass, reason: String, counter: &std::sync::atomic::AtomicU64| {
                counter.fetch_add(1, Relaxed);
                events::RecordRefused {
                    topic,
                    partition,
                    offset,
                    reason: &reason,
                }
                .emit();
                Accepted::DeadLetter(Refused {
                    key: message
                        .key()
                        .map(|k| String::from_utf8_lossy(k).into_owned())
                        .unwrap_or_default(),
                    value: message.payload().unwrap_or_default().to_vec(),
                    origin: origin.clone(),
                    class,
                    reason,
                    first_seen_ms: seen_at,
                    ticket: self.ticket(topic, partition, offset, 1),
                })
            };
        if self.source == Source::Retries {
            let record: RetryRecord = match message.payload().map(serde_json::from_slice) {
                Some(Ok(record)) => record,
                Some(Err(e)) => {
                    return refuse(
                        ReasonClass::Undecodable,
                        format!("not a retry record: {e}"),
                        &counters.records_undecodable,
                    );
                }
                None => {
                    return refuse(
                        ReasonClass::Undecodable,
                        "retry record has no value".into(),
                        &counters.records_undecodable,
                    );
                }
            };
            let now = now_ms();
            // A tier lets its records go after its fixed delay, so its partitions hold them in
            // the order they come due, and waiting on the head record never holds back a
            // sooner one. The base retry topic (no hop) holds each record until it is due.
            let hop_due_ms = record.hop_due_ms.unwrap_or(record.due_at_ms);
            if hop_due_ms > now {
                return Accepted::NotDue {
                    topic: topic.to_string(),
                    partition,
                    offset,
                    due_at_ms: hop_due_ms,
                };
            }
            if record.due_at_ms > now {
                return Accepted::Rehop(Rehop {
                    record,
                    ticket: self.ticket(topic, partition, offset, 1),
                });
            }
            counters.records_consumed.fetch_add(1, Relaxed);
            let delivery = record.delivery();
            return Accepted::Deliver(Arrival {
                route: record.route.clone(),
                class: self.class_of(delivery.priority),
                deliveries: vec![delivery],
                replayed: record.replayed,
                channel: record.channel.as_str().into(),
                order_key: None,
                first_seen_ms: record.first_seen_ms,
                origin: Arc::new(record.origin),
                ticket: self.ticket(topic, partition, offset, 1),
            });
        }

        counters.records_consumed.fetch_add(1, Relaxed);
        let envelope = match Envelope::decode(message.payload(), self.max_record_bytes) {
            Ok(envelope) => envelope,
            Err(error) => {
                return refuse(
                    ReasonClass::Undecodable,
                    error.to_string(),
                    &counters.records_undecodable,
                );
            }
        };
        if envelope.is_expired(time::OffsetDateTime::now_utc()) {
            return refuse(
                ReasonClass::Expired,
                "expired".into(),
                &counters.records_expired,
            );
        }
        if !self.admission.router.knows(&envelope.channel) {
            let reason = format!("unknown channel `{}`", envelope.channel);
            return refuse(
                ReasonClass::UnknownChannel,
                reason,
                &counters.records_unknown_channel,
            );
        }
        let class = self.class_of(envelope.priority);
        let deliveries: Vec<SharedDelivery> = envelope.deliveries().collect();
        Accepted::Deliver(Arrival {
            route: None,
            ticket: self.ticket(topic, partition, offset, deliveries.len()),
            deliveries,
            replayed: false,
            channel: envelope.channel.as_str().into(),
            class,
            order_key: self.order_key(class, message),
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
        resume_after(wait, move || {
            if let Some(consumer) = consumer.upgrade()
                && let Err(e) = consumer.resume(&tpl)
            {
                // Revoked meanwhile: the new owner reads the record.
                tracing::debug!(error = %e, "resuming a retry partition failed");
            }
        });
    }

    async fn drain_and_commit(&self, drain: Duration) {
        // The close after this commits in its revoke callback without a second drain.
        self.consumer.context().closing.store(true, Relaxed);
        let deadline = tokio::time::Instant::now() + drain;
        while self.book.open_records() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if self.book.open_records() > 0 {
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

/// Runs `resume` once `wait` has passed, on the tokio timer: how a paused retry partition
/// comes back at its record's due time.
fn resume_after(
    wait: Duration,
    resume: impl FnOnce() + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::time::sleep(wait).await;
        resume();
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[tokio::test]
    async fn finished_background_tasks_are_reaped_as_new_ones_start() {
        let mut tasks = HoldTasks::default();
        for _ in 0..1000 {
            tasks.spawn(async {});
            tokio::task::yield_now().await;
        }
        assert!(tasks.len() <= 2, "{} finished tasks kept", tasks.len());
    }

    #[test]
    fn the_lag_sums_assigned_partitions_with_a_known_lag() -> anyhow::Result<()> {
        // Trimmed from a librdkafka statistics report: the fields besides these are ignored.
        let report = serde_json::json!({
            "name": "rdkafka#consumer-1",
            "type": "consumer",
            "brokers": {"localhost:9092/1": {"rtt": {"avg": 1}}},
            "topics": {
                "notifications": {
                    "topic": "notifications",
                    "partitions": {
                        "0": {"partition": 0, "desired": true, "consumer_lag": 120, "hi_offset": 500},
                        "1": {"partition": 1, "desired": true, "consumer_lag": 30},
                        // Not known yet: no committed offset.
                        "2": {"partition": 2, "desired": true, "consumer_lag": -1},
                        // Revoked: no longer this consumer's.
                        "3": {"partition": 3, "desired": false, "consumer_lag": 7000},
                        // librdkafka's internal unassigned partition.
                        "-1": {"partition": -1, "desired": false, "consumer_lag": -1}
                    }
                },
                "switchboard.retry": {
                    "partitions": {"0": {"partition": 0, "desired": true, "consumer_lag": 5}}
                }
            }
        });
        let statistics: LagStatistics = serde_json::from_value(report)?;
        assert_eq!(statistics.lag(), 155);
        let empty: LagStatistics = serde_json::from_str(r#"{"name": "c", "topics": {}}"#)?;
        assert_eq!(empty.lag(), 0);
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_lag_gauge_follows_librdkafkas_own_statistics() -> anyhow::Result<()> {
        let topic = "lag".to_string();
        let cluster = crate::kafka::EmbeddedKafka::start(1, std::slice::from_ref(&topic), 1)?;
        let brokers = cluster.bootstrap_servers().to_string();
        crate::kafka::produce(&brokers, &topic, 10, |i| (i.to_string(), "{}".into())).await?;
        let metrics = crate::telemetry::metrics::Metrics::new();
        let context = IngestContext {
            lag: metrics.consumer_lag("mixed"),
            ..context(Duration::from_millis(10))
        };
        let consumer: BaseConsumer<IngestContext> = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", "g-lag")
            .set("enable.auto.commit", "false")
            .set("statistics.interval.ms", "100")
            .create_with_context(context)?;
        // Three records committed, seven behind.
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Offset(3))?;
        consumer.assign(&tpl)?;
        consumer.commit(&tpl, CommitMode::Sync)?;
        let lag = metrics.consumer_lag("mixed");
        let deadline = Instant::now() + Duration::from_secs(20);
        while lag.get() != 7 && Instant::now() < deadline {
            // Polling serves the statistics callback; the records read are never committed.
            let _ = consumer.poll(Duration::from_millis(50));
        }
        assert_eq!(lag.get(), 7, "{}", metrics.render());
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_resumes_exactly_at_its_backoff_and_not_before_retry_after() {
        let backoff = crate::settle::backoff::Backoff::new(
            Duration::from_millis(200),
            Duration::from_secs(30),
        );
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1);
        for (attempt, retry_after) in [(1, None), (4, None), (2, Some(Duration::from_secs(5)))] {
            let wait = backoff.delay(attempt, retry_after, &mut rng);
            if let Some(floor) = retry_after {
                assert!(wait >= floor, "{wait:?} is before Retry-After {floor:?}");
            }
            let resumed = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flag = resumed.clone();
            let task = resume_after(wait, move || {
                flag.store(true, std::sync::atomic::Ordering::SeqCst)
            });
            tokio::time::advance(wait - Duration::from_millis(1)).await;
            tokio::task::yield_now().await;
            assert!(
                !resumed.load(std::sync::atomic::Ordering::SeqCst),
                "attempt {attempt}: resumed early"
            );
            tokio::time::advance(Duration::from_millis(1)).await;
            let _ = task.await;
            assert!(
                resumed.load(std::sync::atomic::Ordering::SeqCst),
                "attempt {attempt}: not resumed at {wait:?}"
            );
        }
    }
}
