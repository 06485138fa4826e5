//! The consumer lag, from librdkafka's own statistics: the records behind the end of the
//! partitions a consumer is assigned, summed every few seconds into
//! `switchboard_consumer_lag_records`.

use std::collections::HashMap;

/// How often librdkafka reports the statistics the consumer lag is read from, in milliseconds.
pub(super) const STATISTICS_INTERVAL_MS: &str = "5000";

/// The part of librdkafka's statistics JSON the lag is summed from.
#[derive(serde::Deserialize)]
pub(super) struct LagStatistics {
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
    pub(super) fn lag(&self) -> i64 {
        self.topics
            .values()
            .flat_map(|t| t.partitions.values())
            .filter(|p| p.partition >= 0 && p.desired && p.consumer_lag >= 0)
            .map(|p| p.consumer_lag)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};

    use super::*;
    use std::sync::Arc;

    use crate::ingest::rebalance::IngestContext;
    use crate::lane::KeyOrder;
    use crate::offsets::OffsetBook;

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
        let (next, _released) = tokio::sync::mpsc::unbounded_channel();
        let context = IngestContext {
            book: Arc::new(OffsetBook::new()),
            drain: Duration::from_millis(10),
            held: Arc::default(),
            order: Arc::new(KeyOrder::new(next)),
            closing: std::sync::atomic::AtomicBool::new(false),
            lag: metrics.consumer_lag("mixed"),
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
}
