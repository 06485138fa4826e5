//! Produces notification requests to a Kafka topic, for trying a running host.
//!
//! ```sh
//! cargo run --release -p switchboard-example-producer -- --brokers 127.0.0.1:9092 --count 100
//! ```

use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

#[derive(Parser)]
#[command(about = "Produce Switchboard notification requests")]
struct Args {
    /// Kafka bootstrap servers (the host logs the embedded cluster's address at start).
    #[arg(long)]
    brokers: String,
    #[arg(long, default_value = "notifications")]
    topic: String,
    /// Requests to produce.
    #[arg(long, default_value_t = 10)]
    count: u64,
    #[arg(long, default_value = "push-android")]
    channel: String,
    /// `realtime`, `batch` or `ads`.
    #[arg(long, default_value = "realtime")]
    priority: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Idempotent: a retried send never writes the request twice.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("enable.idempotence", "true")
        .create()
        .context("creating the producer")?;
    for i in 0..args.count {
        let recipient = format!("example-device-{i}");
        let envelope = serde_json::json!({
            "id": format!("example-{}-{i}", std::process::id()),
            "channel": args.channel,
            "priority": args.priority,
            "recipients": [{"to": recipient}],
            "content": {"title": "Hello", "body": format!("Example notification {i}")},
        });
        let value = envelope.to_string();
        let record = FutureRecord::to(&args.topic)
            .key(&recipient)
            .payload(&value);
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| anyhow::anyhow!("produce failed: {e}"))?;
    }
    println!("produced {} requests to {}", args.count, args.topic);
    Ok(())
}
