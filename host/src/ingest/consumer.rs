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
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};

use super::envelope::Envelope;
use super::lag::STATISTICS_INTERVAL_MS;
use super::rebalance::{HeldRecords, IngestConsumer, IngestContext};
use super::refused::{REFUSED_IN_FLIGHT_BYTES, Refused, RefusedRecords, Rehop};
use crate::clock::now_ms;
use crate::config::{KafkaConfig, LanesConfig, Ordering as RecordOrdering, TrafficClass};
use crate::contract::SharedDelivery;
use crate::dedup::DedupStore;
use crate::dispatch::Dispatcher;
use crate::lane::{Admission, Arrival, Budget, KeyOrder};
use crate::offsets::{OffsetBook, OffsetSink, RecordTicket};
use crate::route::Router;
use crate::settle::{Origin, Outbox, ReasonClass, RetryRecord};
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
        // Look for the subscribed topics every few seconds rather than at librdkafka's default
        // of five minutes: the retry topic may come into being with the first retry, and a
        // request topic may be created after the host started (a host deployed before its
        // producers sat idle for those five minutes), or gain partitions. A metadata request
        // every few seconds is nothing to a broker. `kafka.properties` may set another.
        client.set("topic.metadata.refresh.interval.ms", "3000");
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

    /// Consumes until `shutdown` turns true, then drains in-flight records for up to `drain`,
    /// commits the watermark and leaves the group, waiting at most [`CLOSE_TIMEOUT`] for the
    /// broker.
    pub async fn run(
        self,
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
        self.drain(drain).await;
        tasks.abort_all();
        commit_and_close(self.consumer, self.source).await;
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
        // Weak, like every other hold on the consumer but the run's own: the stop closes the
        // consumer where its last reference goes, and that must be the closing thread.
        let (admission, held, consumer) = (
            self.admission.clone(),
            self.held.clone(),
            Arc::downgrade(&self.consumer),
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
            if let Some(consumer) = consumer.upgrade()
                && let Err(e) = consumer.resume(&tpl)
            {
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

    /// Waits, up to `drain`, for the records in flight to finish.
    async fn drain(&self, drain: Duration) {
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
    }
}

/// How long a stopping consumer waits for its final commit and its leave from the group.
///
/// librdkafka bounds neither the way a stop needs: a synchronous commit waits a whole session
/// timeout for a coordinator that is gone (and was seen to wait without end), and the close
/// that leaves the group waits as long again. A stop must not hang on a broker that is gone.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Commits the watermark and closes the consumer (leaving its group) on a thread of its own,
/// and waits for both up to [`CLOSE_TIMEOUT`]. Past that the thread is left to finish alone:
/// what it did not commit is consumed again after a restart, and the group hands this host's
/// partitions on once its session times out.
///
/// A thread, not `spawn_blocking`: a blocking task that never returns would hold up the
/// runtime's shutdown, and the close (the consumer's drop) polls librdkafka in a loop that
/// must not run on an async worker.
async fn commit_and_close(consumer: Arc<IngestConsumer>, source: Source) {
    let deadline = tokio::time::Instant::now() + CLOSE_TIMEOUT;
    let (committed_tx, committed_rx) = tokio::sync::oneshot::channel();
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
    let closing = std::thread::Builder::new()
        .name("consumer-close".into())
        .spawn(move || {
            let _ = committed_tx.send(consumer.commit_consumer_state(CommitMode::Sync));
            // The last reference: dropping it closes the consumer and leaves the group.
            drop(consumer);
            let _ = closed_tx.send(());
        });
    if let Err(error) = closing {
        tracing::warn!(%error, ?source, "no thread to commit and close the consumer on");
        return;
    }
    match tokio::time::timeout_at(deadline, committed_rx).await {
        Ok(Ok(Ok(()))) => tracing::info!(?source, "final offsets committed"),
        // Nothing stored since the last commit is not a failure.
        Ok(Ok(Err(rdkafka::error::KafkaError::ConsumerCommit(
            rdkafka::types::RDKafkaErrorCode::NoOffset,
        )))) => {}
        Ok(Ok(Err(error))) => tracing::warn!(%error, ?source, "final commit failed"),
        Ok(Err(_)) => tracing::warn!(?source, "the final commit's thread ended without a result"),
        Err(_) => {
            tracing::warn!(
                ?source,
                timeout_s = CLOSE_TIMEOUT.as_secs(),
                "the broker did not answer the final commit in time; records after the last \
                 commit will be consumed again after restart"
            );
            return;
        }
    }
    if tokio::time::timeout_at(deadline, closed_rx).await.is_err() {
        tracing::warn!(
            ?source,
            timeout_s = CLOSE_TIMEOUT.as_secs(),
            "leaving the consumer group did not finish in time; the group reassigns this \
             host's partitions once its session times out"
        );
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

    #[tokio::test]
    async fn finished_background_tasks_are_reaped_as_new_ones_start() {
        let mut tasks = HoldTasks::default();
        for _ in 0..1000 {
            tasks.spawn(async {});
            tokio::task::yield_now().await;
        }
        assert!(tasks.len() <= 2, "{} finished tasks kept", tasks.len());
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
