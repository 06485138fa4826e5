//! The host's producers and the threads that serve their delivery reports: [`PolledProducer`]
//! (what rdkafka's `ThreadedProducer` is) and [`AwaitedProducer`] (what its `FutureProducer`
//! is), polled so that they do not spin.
//!
//! Owns one polling thread per producer. Must never poll with a timeout that rounds down to zero
//! while time is left, and never keep a producer alive for long after its owner dropped it.
//!
//! Why not rdkafka's own: their thread polls in calls of 100 ms, and each call ends in a busy
//! loop. rdkafka 0.39 hands librdkafka the time left in whole milliseconds, truncated, so the
//! call's last partial millisecond is `rd_kafka_queue_poll(…, 0)` over and over until its
//! deadline passes: about 1 % of a core per producer, idle or busy. The host has three (the
//! outbox, the result topics, the control plane); in the throughput lab their threads took
//! 1.7 µs per delivery, 3 % of the host's CPU, and an idle host spent 2 % of a core on them.
//! A call of [`POLL_SPAN`] still ends in that partial millisecond, but ten times less often; a
//! report is served as soon as it arrives either way, since a call returns to its loop after
//! each event.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message as _, OwnedMessage, Timestamp, ToBytes};
use rdkafka::producer::future_producer::{Delivery, OwnedDeliveryResult};
use rdkafka::producer::{BaseProducer, BaseRecord, FutureRecord, ProducerContext};
use rdkafka::{ClientContext, config::FromClientConfigAndContext};
use tokio::sync::oneshot;

/// How long one poll of a producer's thread lasts (it returns earlier only at its end): the
/// busy partial millisecond that ends it comes once per span, and a dropped producer lives on
/// for at most one span.
pub const POLL_SPAN: Duration = Duration::from_secs(1);

/// A producer with a thread of its own that serves its delivery reports. Derefs to rdkafka's
/// [`BaseProducer`] for sending, flushing and its context.
pub struct PolledProducer<C: ProducerContext + 'static> {
    producer: Arc<BaseProducer<C>>,
    stop: Arc<AtomicBool>,
}

impl<C: ProducerContext + 'static> PolledProducer<C> {
    /// A producer from `config` with `context`, polled by a thread named `thread_name`.
    pub fn create(config: &ClientConfig, context: C, thread_name: &str) -> anyhow::Result<Self> {
        let producer = Arc::new(BaseProducer::from_config_and_context(config, context)?);
        let stop = Arc::new(AtomicBool::new(false));
        let (polled, stopped) = (producer.clone(), stop.clone());
        std::thread::Builder::new()
            .name(thread_name.to_string())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    polled.poll(POLL_SPAN);
                }
                // The last reference may be this one: the producer is dropped (purged, its
                // reports served) here, not on the owner's thread.
            })
            .with_context(|| format!("starting the producer's polling thread `{thread_name}`"))?;
        Ok(Self { producer, stop })
    }
}

impl<C: ProducerContext + 'static> std::ops::Deref for PolledProducer<C> {
    type Target = BaseProducer<C>;

    fn deref(&self) -> &BaseProducer<C> {
        &self.producer
    }
}

impl<C: ProducerContext + 'static> Drop for PolledProducer<C> {
    /// Tells the thread to stop after its current poll, without waiting for it: waiting would
    /// hold every host's shutdown for up to a [`POLL_SPAN`] per producer.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Hands each record's delivery report to whoever awaits it.
pub struct Awaited;

impl ClientContext for Awaited {}

impl ProducerContext for Awaited {
    type DeliveryOpaque = Box<oneshot::Sender<OwnedDeliveryResult>>;

    fn delivery(&self, result: &DeliveryResult<'_>, report_to: Self::DeliveryOpaque) {
        let owned = match result {
            Ok(message) => Ok(Delivery {
                partition: message.partition(),
                offset: message.offset(),
                timestamp: message.timestamp(),
            }),
            Err((error, message)) => Err((error.clone(), message.detach())),
        };
        // The sender may have stopped waiting (a write abandoned at shutdown): nobody to tell.
        let _ = report_to.send(owned);
    }
}

/// A producer whose sends return once the broker acknowledged the record, or refused it.
#[derive(Clone)]
pub struct AwaitedProducer {
    inner: Arc<PolledProducer<Awaited>>,
}

impl AwaitedProducer {
    /// A producer from `config`, polled by a thread named `thread_name`.
    pub fn create(config: &ClientConfig, thread_name: &str) -> anyhow::Result<Self> {
        Ok(Self {
            inner: Arc::new(PolledProducer::create(config, Awaited, thread_name)?),
        })
    }

    /// Sends `record` and waits for its delivery report. While librdkafka's queue is full it
    /// tries again every 100 ms for up to `queue_timeout`, as rdkafka's `FutureProducer` does.
    pub async fn send<K, P>(
        &self,
        record: FutureRecord<'_, K, P>,
        queue_timeout: Duration,
    ) -> OwnedDeliveryResult
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let started = Instant::now();
        let (report_to, report) = oneshot::channel();
        let (topic, partition) = (record.topic, record.partition);
        let mut record = BaseRecord {
            partition,
            payload: record.payload,
            key: record.key,
            timestamp: record.timestamp,
            headers: record.headers,
            ..BaseRecord::with_opaque_to(topic, Box::new(report_to))
        };
        loop {
            match self.inner.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), again))
                    if started.elapsed() < queue_timeout =>
                {
                    record = again;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err((error, refused)) => return Err((error, unsent(refused))),
            }
        }
        // This handle keeps the producer, so its report comes: delivered, refused, or purged.
        match report.await {
            Ok(result) => result,
            Err(_) => {
                let message = OwnedMessage::new(
                    None,
                    None,
                    topic.to_string(),
                    Timestamp::NotAvailable,
                    partition.unwrap_or(-1),
                    0,
                    None,
                );
                Err((KafkaError::Canceled, message))
            }
        }
    }
}

/// A record librdkafka would not take, as the message the caller gets back.
fn unsent<K, P, D>(record: BaseRecord<'_, K, P, D>) -> OwnedMessage
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
    D: rdkafka::util::IntoOpaque,
{
    OwnedMessage::new(
        record.payload.map(|p| p.to_bytes().to_vec()),
        record.key.map(|k| k.to_bytes().to_vec()),
        record.topic.to_string(),
        record
            .timestamp
            .map_or(Timestamp::NotAvailable, Timestamp::CreateTime),
        record.partition.unwrap_or(-1),
        0,
        record.headers,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::EmbeddedKafka;

    /// CPU time of this process's thread named `name` so far, from `/proc` (the scheduler's
    /// count in nanoseconds: `stat` counts in 10 ms ticks, too coarse for a few milliseconds).
    fn thread_cpu(name: &str) -> anyhow::Result<Duration> {
        for task in std::fs::read_dir("/proc/self/task")? {
            let task = task?.path();
            if std::fs::read_to_string(task.join("comm"))?.trim_end() != name {
                continue;
            }
            let schedstat = std::fs::read_to_string(task.join("schedstat"))
                .context("reading the thread's schedstat")?;
            let on_cpu_ns = schedstat
                .split_whitespace()
                .next()
                .context("an empty schedstat")?
                .parse()?;
            return Ok(Duration::from_nanos(on_cpu_ns));
        }
        anyhow::bail!("no thread named {name}")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_producer_does_not_spin_and_a_busy_one_is_answered() -> anyhow::Result<()> {
        let cluster = EmbeddedKafka::start(1, &["polled".to_string()], 1)?;
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", cluster.bootstrap_servers());
        let producer = AwaitedProducer::create(&config, "polled-idle")?;
        let delivery = producer
            .send(
                FutureRecord::to("polled").key("k").payload("v"),
                Duration::from_secs(5),
            )
            .await
            .map_err(|(e, _)| e)?;
        assert_eq!(delivery.offset, 0);
        // Idle for 3 s: polled as rdkafka's own thread polls (100 ms a call), the thread spins
        // through the last partial millisecond of each call, 20 ms or more of CPU in 3 s; at
        // most one such millisecond a second is 3 ms.
        let before = thread_cpu("polled-idle")?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let spent = thread_cpu("polled-idle")?.saturating_sub(before);
        assert!(
            spent < Duration::from_millis(10),
            "the idle polling thread used {spent:?} of CPU in 3 s"
        );
        // Still served promptly after the idle stretch.
        let second = tokio::time::timeout(
            Duration::from_secs(5),
            producer.send(
                FutureRecord::to("polled").key("k").payload("w"),
                Duration::from_secs(5),
            ),
        )
        .await?
        .map_err(|(e, _)| e)?;
        assert_eq!(second.offset, 1);
        Ok(())
    }
}
