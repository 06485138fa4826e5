//! Writes records to a topic with an idempotent producer: the demo's load, and the tests' and
//! the lab's. The host itself never produces requests; its writes go through the outbox.

use std::time::Duration;

use anyhow::Context as _;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Produces `count` records made by `make` to `topic`, with an idempotent producer.
pub async fn produce(
    brokers: &str,
    topic: &str,
    count: u64,
    make: impl Fn(u64) -> (String, String),
) -> anyhow::Result<()> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .context("creating the producer")?;
    let mut pending = Vec::with_capacity(1000);
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
        if pending.len() == 1000 {
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
