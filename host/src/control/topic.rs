//! The control plane's Kafka clients: a writer that answers once the broker acknowledged a
//! record, and a reader of a whole single-partition topic from its beginning, without a
//! consumer group (every host reads everything; nobody commits).
//!
//! Owns the client settings and the read position. Never decodes a record's value: the
//! applier and the fleet view do.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::producer::FutureRecord;
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};

use crate::kafka::AwaitedProducer;

/// How long a write may wait for the broker's acknowledgement: librdkafka's
/// `message.timeout.ms` for this producer, whose default (300 s) would hold an admin call, and a
/// stopping host's leave from the fleet view, for five minutes while the broker is down.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a watermark request may take.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(5);

/// One record read from a control-plane topic.
pub struct Read {
    pub offset: i64,
    pub key: Option<String>,
    /// `None` for a tombstone.
    pub value: Option<Vec<u8>>,
}

fn base_config(brokers: &str, properties: &BTreeMap<String, String>) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (k, v) in properties {
        config.set(k, v);
    }
    config
}

/// Writes control and report records, one at a time, acknowledged by every in-sync replica.
#[derive(Clone)]
pub struct Writer {
    producer: AwaitedProducer,
}

impl Writer {
    pub fn new(brokers: &str, properties: &BTreeMap<String, String>) -> anyhow::Result<Self> {
        let config = base_config(brokers, properties)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "0")
            .set("message.timeout.ms", WRITE_TIMEOUT.as_millis().to_string())
            .clone();
        let producer = AwaitedProducer::create(&config, "control-poll")
            .context("creating the control plane's producer")?;
        Ok(Self { producer })
    }

    /// Writes `value` (`None`: a tombstone) under `key` to partition 0 of `topic`; returns its
    /// offset once the broker acknowledged it.
    pub async fn write(&self, topic: &str, key: &str, value: Option<&[u8]>) -> anyhow::Result<i64> {
        let mut record = FutureRecord::<str, [u8]>::to(topic).key(key).partition(0);
        if let Some(value) = value {
            record = record.payload(value);
        }
        // librdkafka times a message out only when it next scans its queues, which with the
        // broker down took up to about twice `message.timeout.ms`: the wait is bounded here too. A
        // record given up here may still be written later, as after any lost acknowledgement.
        let delivery =
            tokio::time::timeout(WRITE_TIMEOUT, self.producer.send(record, WRITE_TIMEOUT))
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                        "writing `{key}` to {topic}: not acknowledged within {WRITE_TIMEOUT:?}"
                    )
                })?
                .map_err(|(e, _)| anyhow::anyhow!("writing `{key}` to {topic}: {e}"))?;
        Ok(delivery.offset)
    }
}

/// Reads partition 0 of a topic from `start` onwards, without a consumer group.
pub struct Reader {
    consumer: StreamConsumer,
    topic: String,
}

impl Reader {
    /// A reader of `topic` positioned at `start` records before its end (`None`: from the
    /// beginning).
    pub fn open(
        brokers: &str,
        properties: &BTreeMap<String, String>,
        topic: &str,
        from_end: Option<i64>,
    ) -> anyhow::Result<Self> {
        let consumer: StreamConsumer = base_config(brokers, properties)
            // No group is joined (the partition is assigned, not subscribed) and nothing is
            // committed; librdkafka still wants a group id for a consumer.
            .set("group.id", "switchboard-control-reader")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .context("creating the control plane's reader")?;
        let start = match from_end {
            None => Offset::Beginning,
            Some(back) => {
                let (low, high) = consumer
                    .fetch_watermarks(topic, 0, WATERMARK_TIMEOUT)
                    .with_context(|| format!("reading the end of {topic}"))?;
                Offset::Offset((high - back).max(low))
            }
        };
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(topic, 0, start)
            .context("positioning the control plane's reader")?;
        consumer
            .assign(&assignment)
            .with_context(|| format!("assigning {topic}"))?;
        Ok(Self {
            consumer,
            topic: topic.to_string(),
        })
    }

    /// The offset the next record written to the topic will get.
    pub fn end(&self) -> anyhow::Result<i64> {
        let (_, high) = self
            .consumer
            .fetch_watermarks(&self.topic, 0, WATERMARK_TIMEOUT)
            .with_context(|| format!("reading the end of {}", self.topic))?;
        Ok(high)
    }

    /// The next record; waits for one to be written.
    pub async fn next(&self) -> anyhow::Result<Read> {
        let message = self
            .consumer
            .recv()
            .await
            .with_context(|| format!("reading {}", self.topic))?;
        Ok(Read {
            offset: message.offset(),
            key: message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            value: message.payload().map(<[u8]>::to_vec),
        })
    }
}
