//! Writes records to a topic with an idempotent producer: the demo's load, and the tests' and
//! the lab's. The host itself never produces requests; its writes go through the outbox.

use std::time::Duration;

use anyhow::Context as _;
use rdkafka::ClientConfig;
use rdkafka::producer::FutureRecord;

use super::AwaitedProducer;

/// Records in flight at once. Each wave's records spread over the topic's partitions, and a
/// partition's share of a wave becomes one record batch, so the window sets the batch size: at
/// 1,000 over 134 partitions the lab's 2M backlog was ~2,000 batches of 7 per partition. The mock
/// cluster finds a fetch's offset by walking a partition's batches one by one (librdkafka's
/// `rd_kafka_mock_msgset_find`), so its one thread then spent seconds at a time on the ads
/// drain's fetches while realtime's waited. Kafka indexes offsets; wide waves keep the mock's
/// walks short as well.
const IN_FLIGHT: usize = 20_000;

/// Produces `count` records made by `make` to `topic`, with an idempotent producer.
pub async fn produce(
    brokers: &str,
    topic: &str,
    count: u64,
    make: impl Fn(u64) -> (String, String),
) -> anyhow::Result<()> {
    let config = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .clone();
    let producer =
        AwaitedProducer::create(&config, "load-poll").context("creating the producer")?;
    let mut pending = Vec::with_capacity(IN_FLIGHT);
    for i in 0..count {
        let (key, value) = make(i);
        let producer = producer.clone();
        let topic = topic.to_string();
        pending.push(async move {
            producer
                .send(
                    FutureRecord::to(&topic).key(&key).payload(&value),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| anyhow::anyhow!("produce failed: {e}"))
        });
        if pending.len() == IN_FLIGHT {
            for result in futures::future::join_all(std::mem::take(&mut pending)).await {
                result?;
            }
        }
    }
    for result in futures::future::join_all(pending).await {
        result?;
    }
    Ok(())
}
