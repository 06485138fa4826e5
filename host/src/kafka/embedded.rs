//! The embedded Kafka: librdkafka's in-process mock cluster, used when no brokers are configured.
//!
//! The mock cluster handle is not `Send`, so a dedicated thread owns it for its whole life; the
//! handle returned here only carries the bootstrap address and a way to stop it.

use std::sync::mpsc;

use anyhow::Context as _;
use rdkafka::mocking::MockCluster;

/// A running mock cluster. Dropping it stops the cluster.
pub struct EmbeddedKafka {
    bootstrap: String,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EmbeddedKafka {
    /// Starts a mock cluster of `brokers` brokers with `topics` created, each with `partitions`,
    /// and the topics a host on the default config writes to (its retry tiers, DLQ and result
    /// topics): the mock cluster has no admin API, so a host cannot create them there at once.
    pub fn start(brokers: i32, topics: &[String], partitions: i32) -> anyhow::Result<Self> {
        let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<String>>();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let mut topics = topics.to_vec();
        for topic in crate::config::KafkaConfig::default().output_topics() {
            if !topics.contains(&topic) {
                topics.push(topic);
            }
        }
        let thread = std::thread::Builder::new()
            .name("embedded-kafka".into())
            .spawn(move || {
                let cluster = match MockCluster::new(brokers) {
                    Ok(cluster) => cluster,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e).context("starting the mock Kafka cluster"));
                        return;
                    }
                };
                for topic in &topics {
                    if let Err(e) = cluster.create_topic(topic, partitions, 1) {
                        let _ = ready_tx
                            .send(Err(e).with_context(|| format!("creating topic `{topic}`")));
                        return;
                    }
                }
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                // Either a stop message or the handle being dropped ends the cluster.
                let _ = stop_rx.recv();
                drop(cluster);
            })
            .context("spawning the embedded Kafka thread")?;
        let bootstrap = ready_rx
            .recv()
            .context("the embedded Kafka thread ended before it was ready")??;
        Ok(Self {
            bootstrap,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The bootstrap address producers and consumers connect to.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }
}

impl Drop for EmbeddedKafka {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
