//! Which Kafka a lab scenario runs on: librdkafka's in-process mock cluster (`embedded`), or a
//! real Kafka-protocol broker (`real`: the one `make services` starts, or `--brokers`).
//!
//! A real broker keeps its topics between runs, so a run on it names its topics and groups
//! under a prefix of its own; on the mock cluster, names are as written.

use std::time::Duration;

use switchboard::kafka::EmbeddedKafka;

/// The `--broker` flag of the scenarios that run on either.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BrokerKind {
    Embedded,
    Real,
}

impl BrokerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BrokerKind::Embedded => "embedded",
            BrokerKind::Real => "real",
        }
    }
}

/// The flags that choose a scenario's Kafka, for the scenarios that take them as one group.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaChoice {
    /// The Kafka to run on: the in-process mock cluster, or a real broker in its own process.
    #[arg(long, value_enum, default_value_t = BrokerKind::Embedded)]
    pub broker: BrokerKind,
    /// The real broker's address (else SWITCHBOARD_TEST_KAFKA, else 127.0.0.1:19092).
    #[arg(long)]
    pub brokers: Option<String>,
}

/// Where the real broker is when `--brokers` is not given.
pub fn default_real_brokers() -> String {
    std::env::var("SWITCHBOARD_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:19092".to_string())
}

/// The Kafka of one lab run.
pub struct LabKafka {
    pub brokers: String,
    /// Empty on the mock cluster.
    prefix: String,
    /// Kept alive for the run on the mock cluster.
    _cluster: Option<EmbeddedKafka>,
}

impl LabKafka {
    /// Kafka for `scenario`, with `topics` (as [`LabKafka::topic`] names them) made with
    /// `partitions` each. On the mock cluster, also the topics a host on the default config
    /// writes to; on a real broker, the host creates its own.
    pub async fn start(
        kind: BrokerKind,
        brokers: Option<String>,
        scenario: &str,
        topics: &[&str],
        partitions: i32,
    ) -> anyhow::Result<Self> {
        match kind {
            BrokerKind::Embedded => {
                let names = switchboard_integration_tests::cluster_topics(topics);
                let cluster = EmbeddedKafka::start(1, &names, partitions)?;
                Ok(Self {
                    brokers: cluster.bootstrap_servers().to_string(),
                    prefix: String::new(),
                    _cluster: Some(cluster),
                })
            }
            BrokerKind::Real => {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or(Duration::ZERO)
                    .as_nanos();
                let kafka = Self {
                    brokers: brokers.unwrap_or_else(default_real_brokers),
                    prefix: format!("lab-{scenario}-{}-{nanos}.", std::process::id()),
                    _cluster: None,
                };
                let names: Vec<String> = topics.iter().map(|t| kafka.topic(t)).collect();
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                switchboard::kafka::ensure_topics(
                    &kafka.brokers,
                    &names,
                    partitions,
                    &Default::default(),
                )
                .await?;
                Ok(kafka)
            }
        }
    }

    /// A topic's (or group's) name in this run.
    pub fn topic(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Puts `config`'s consumer group and the topics its host writes to under this run's
    /// names.
    pub fn configure(&self, config: &mut switchboard::Config) {
        let kafka = &mut config.kafka;
        for name in [
            &mut kafka.group_id,
            &mut kafka.retry_topic,
            &mut kafka.dlq_topic,
            &mut kafka.results_topic,
            &mut kafka.invalidations_topic,
        ] {
            *name = self.topic(name);
        }
    }
}
