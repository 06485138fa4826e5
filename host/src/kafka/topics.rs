//! The topics the host writes to (the retry tiers, the DLQ and the result topics), made sure
//! of at start: the host must never run with a DLQ or a retry topic it cannot write, because a
//! record it cannot settle holds its partition back for good.
//!
//! Owns: finding which topics are missing, creating them through the admin API with the
//! configured partitions, and, where the broker has no admin API (librdkafka's mock cluster),
//! through the broker's auto-creation. Must never start a host whose topics are still missing:
//! [`TopicsMissing`] names them and what the host's principal needs.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseProducer, Producer as _};
use rdkafka::types::RDKafkaErrorCode;

/// How long each broker request here may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Topics the host needs and could neither find nor create.
#[derive(Debug, thiserror::Error)]
#[error(
    "the topics {} do not exist and the host could not create them ({why}). Create them with \
     {partitions} partitions each, or grant the host's principal the CREATE operation on the \
     cluster (or on these topics); it needs DESCRIBE and WRITE on them too, and READ on the \
     retry topics. The host does not start without the topics it settles records into",
    .topics.join(", ")
)]
pub struct TopicsMissing {
    pub topics: Vec<String>,
    pub partitions: i32,
    /// What the broker answered, per topic or for the request.
    pub why: String,
}

/// Makes sure `topics` exist on `brokers`: those missing are created with `partitions`
/// partitions (the broker's default replication). Returns [`TopicsMissing`] for any that still
/// do not exist; any other error is the broker's or the connection's.
pub async fn ensure_topics(
    brokers: &str,
    topics: &[&str],
    partitions: i32,
    properties: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    ensure_topics_with(brokers, topics, partitions, properties, &[]).await
}

/// As [`ensure_topics`], creating the missing topics with `topic_config` (e.g.
/// `cleanup.policy=compact`). Topics that already exist keep their own settings.
pub async fn ensure_topics_with(
    brokers: &str,
    topics: &[&str],
    partitions: i32,
    properties: &BTreeMap<String, String>,
    topic_config: &[(&str, &str)],
) -> anyhow::Result<()> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (k, v) in properties {
        config.set(k, v);
    }
    let wanted: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
    let missing = missing_topics(config.clone(), wanted.clone()).await?;
    if missing.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = config
        .create()
        .map_err(|e| anyhow::anyhow!("creating the Kafka admin client: {e}"))?;
    let new: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|t| {
            topic_config.iter().fold(
                NewTopic::new(t, partitions, TopicReplication::Fixed(-1)),
                |topic, (k, v)| topic.set(k, v),
            )
        })
        .collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(REQUEST_TIMEOUT))
        .request_timeout(Some(REQUEST_TIMEOUT));
    let mut refusals = Vec::new();
    match admin.create_topics(&new, &options).await {
        Ok(results) => {
            for result in results {
                match result {
                    Ok(topic) => tracing::info!(topic, partitions, "topic created"),
                    Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((topic, code)) => refusals.push(format!("{topic}: {code}")),
                }
            }
        }
        // No admin API (the mock cluster answers none) or no answer in time.
        Err(e) => refusals.push(format!("the admin request failed: {e}")),
    }
    // Created topics take a moment to show in metadata; topics the admin API could not create
    // are asked for by name, which a broker with auto-creation on creates.
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    loop {
        let still = missing_topics_asking(config.clone(), missing.clone()).await?;
        if still.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let why = if refusals.is_empty() {
                "created, but not in the broker's metadata".to_string()
            } else {
                refusals.join("; ")
            };
            return Err(TopicsMissing {
                topics: still,
                partitions,
                why,
            }
            .into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Those of `wanted` that the broker's metadata does not list.
async fn missing_topics(config: ClientConfig, wanted: Vec<String>) -> anyhow::Result<Vec<String>> {
    tokio::task::spawn_blocking(move || {
        let producer: BaseProducer = config.create()?;
        let metadata = producer
            .client()
            .fetch_metadata(None, REQUEST_TIMEOUT)
            .map_err(|e| anyhow::anyhow!("reading the broker's metadata: {e}"))?;
        let present: BTreeSet<&str> = metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .map(|t| t.name())
            .collect();
        Ok(wanted
            .into_iter()
            .filter(|t| !present.contains(t.as_str()))
            .collect())
    })
    .await?
}

/// As [`missing_topics`], asking for each topic by name: a producer's request for a topic
/// creates it where the broker auto-creates topics.
async fn missing_topics_asking(
    config: ClientConfig,
    wanted: Vec<String>,
) -> anyhow::Result<Vec<String>> {
    tokio::task::spawn_blocking(move || {
        let producer: BaseProducer = config.create()?;
        let mut missing = Vec::new();
        for topic in wanted {
            let found = producer
                .client()
                .fetch_metadata(Some(&topic), REQUEST_TIMEOUT)
                .ok()
                .is_some_and(|m| {
                    m.topics().iter().any(|t| {
                        t.name() == topic && t.error().is_none() && !t.partitions().is_empty()
                    })
                });
            if !found {
                missing.push(topic);
            }
        }
        Ok(missing)
    })
    .await?
}
