//! `broker-restart`: a real broker killed with SIGKILL while the host delivers from it, and
//! started again on the same storage (sqlite), a chosen number of times; then it counts what
//! the simulator received. The lab runs a broker of its own, so the kill touches nothing else.
//!
//! What the promise allows: nothing lost (what the broker acknowledged before the kill is
//! still there after it), and duplicates only from deliveries whose dedup mark or commit the
//! outage caught in flight.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use serde_json::json;
use switchboard::demo::{demo_envelope, produce};
use switchboard::settle::Outbox;
use switchboard_integration_tests::FcmFixture;

use crate::broker::{BrokerKind, LabKafka};
use crate::crash::dlq_records;

const TOPIC: &str = "notifications";
const PARTITIONS: i32 = 6;

pub struct BrokerRestartOptions {
    pub restarts: u32,
    pub messages: u64,
    pub vendor_latency_ms: u64,
    /// How long the broker stays down each time.
    pub down: Duration,
    /// The broker binary (nisshi).
    pub broker_bin: PathBuf,
    pub timeout: Duration,
}

/// The broker binary when none is given: where `make broker` puts it.
pub fn default_broker_bin() -> PathBuf {
    std::env::var_os("SWITCHBOARD_TEST_BROKER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/switchboard-tools/bin/nisshi")
        })
}

/// The sum of `group`'s committed offsets over `topic`'s partitions (those with none count 0),
/// read with a client that asks for offsets without joining the group.
fn committed_total(brokers: &str, group: &str, topic: &str) -> anyhow::Result<i64> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let mut asked = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        asked.add_partition(topic, partition);
    }
    let committed = consumer.committed_offsets(asked, Duration::from_secs(2))?;
    Ok(committed
        .elements()
        .iter()
        .filter_map(|e| e.offset().to_raw())
        .filter(|offset| *offset > 0)
        .sum())
}

/// A broker process of the lab's own.
struct BrokerProcess {
    child: Child,
}

impl BrokerProcess {
    fn start(bin: &Path, dir: &Path, address: &str) -> anyhow::Result<Self> {
        let url = format!("tcp://{address}");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("broker.log"))?;
        let child = Command::new(bin)
            .current_dir(dir)
            .args(["broker", "--storage-engine", "sqlite://broker.db"])
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting the broker {}", bin.display()))?;
        for _ in 0..100 {
            if std::net::TcpStream::connect(address).is_ok() {
                return Ok(Self { child });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        anyhow::bail!(
            "the broker did not listen on {address}; see {}",
            dir.display()
        )
    }

    fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn run(options: BrokerRestartOptions) -> anyhow::Result<serde_json::Value> {
    let BrokerRestartOptions {
        restarts,
        messages,
        vendor_latency_ms,
        down,
        broker_bin,
        timeout,
    } = options;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let work = std::env::temp_dir().join(format!(
        "switchboard-lab-broker-restart-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&work)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let address = format!("127.0.0.1:{port}");
    let mut broker = Some(BrokerProcess::start(&broker_bin, &work, &address)?);
    let kafka = LabKafka::start(
        BrokerKind::Real,
        Some(address.clone()),
        "broker-restart",
        &[TOPIC],
        PARTITIONS,
    )
    .await?;
    let topic = kafka.topic(TOPIC);
    let latency = Duration::from_millis(vendor_latency_ms);
    let fixture = FcmFixture::start(|c| {
        c.faults.latency.mean = latency;
        c.faults.latency.jitter = latency / 2;
    })
    .await;
    let stats = fixture.sim.stats.clone();
    let mut config = fixture.host_config(&address, &topic, "switchboard-lab-broker-restart");
    kafka.configure(&mut config);
    config.dedup.data_dir = work.join("dedup");
    eprintln!(
        "[broker-restart] broker at {address} (storage and log in {}), {messages} requests, {restarts} restarts",
        work.display()
    );

    let started = Instant::now();
    let host = switchboard::start(config.clone()).await?;
    // The longest time the delivered count stood still between the first delivery and the
    // last: what an outage of the broker costs the traffic, prefetched records included.
    let longest_stall_ms = Arc::new(AtomicU64::new(0));
    let watching = tokio::spawn({
        let stats = stats.clone();
        let longest_stall_ms = longest_stall_ms.clone();
        async move {
            let mut last = 0;
            let mut since = Instant::now();
            loop {
                let delivered = stats.snapshot().delivered;
                if delivered != last {
                    if last > 0 {
                        longest_stall_ms
                            .fetch_max(since.elapsed().as_millis() as u64, Ordering::Relaxed);
                    }
                    last = delivered;
                    since = Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    let producing = tokio::spawn({
        let (brokers, topic) = (address.clone(), topic.clone());
        async move {
            produce(&brokers, &topic, messages, |i| {
                (format!("device-{i}"), demo_envelope(i))
            })
            .await
        }
    });

    // Kill at evenly spaced shares of the requests delivered.
    let points: Vec<u64> = (1..=u64::from(restarts))
        .map(|k| messages * k / (u64::from(restarts) + 1))
        .collect();
    let mut deliveries_ms = Vec::new();
    let mut commits_ms = Vec::new();
    let mut last_report = Instant::now();
    for point in &points {
        while stats.snapshot().delivered < *point {
            anyhow::ensure!(
                started.elapsed() < timeout,
                "timed out before the kill at {point}"
            );
            if last_report.elapsed() >= Duration::from_secs(1) {
                eprintln!(
                    "[broker-restart] delivered {}/{messages}",
                    stats.snapshot().delivered
                );
                last_report = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if let Some(running) = broker.take() {
            running.kill()?;
        }
        let at_kill = stats.snapshot().delivered;
        eprintln!("[broker-restart] broker killed at {at_kill} delivered");
        tokio::time::sleep(down).await;
        broker = Some(BrokerProcess::start(&broker_bin, &work, &address)?);
        let back = Instant::now();
        // Deliveries go on from records fetched before the kill, so the first delivery after
        // the restart says little; a commit past the first one the restarted broker reports
        // says the host talks to the broker again. (A commit from before the kill can only
        // be the baseline, never the figure.)
        let mut first_delivery = None;
        let mut baseline = None;
        loop {
            if first_delivery.is_none() && stats.snapshot().delivered > at_kill {
                first_delivery = Some(back.elapsed());
            }
            let committed = {
                let (address, group, topic) = (
                    address.clone(),
                    config.kafka.group_id.clone(),
                    topic.clone(),
                );
                tokio::task::spawn_blocking(move || committed_total(&address, &group, &topic))
                    .await
                    .context("reading committed offsets panicked")?
                    .ok()
            };
            match (baseline, committed) {
                (None, Some(now)) => baseline = Some(now),
                (Some(before), Some(now)) if now > before => break,
                _ => {}
            }
            anyhow::ensure!(
                back.elapsed() < timeout,
                "the host committed nothing within {timeout:?} of the broker's restart"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        commits_ms.push(back.elapsed().as_millis() as u64);
        deliveries_ms.push(first_delivery.unwrap_or_else(|| back.elapsed()).as_millis() as u64);
    }
    producing.await.context("producer task panicked")??;

    let outbox = Outbox::connect(
        &address,
        &config.kafka.retry_topic,
        &config.kafka.dlq_topic,
        &Default::default(),
    )?;
    let waiting_since = Instant::now();
    let mut dlq = 0;
    while stats.snapshot().delivered + dlq < messages && waiting_since.elapsed() < timeout {
        if last_report.elapsed() >= Duration::from_secs(2) {
            dlq = dlq_records(&kafka, &outbox).await?;
            eprintln!(
                "[broker-restart] delivered {}/{messages}, dlq {dlq}",
                stats.snapshot().delivered
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    watching.abort();
    let longest_stall_ms = longest_stall_ms.load(Ordering::Relaxed);
    host.stop().await?;
    let dlq = dlq_records(&kafka, &outbox).await?;
    drop(outbox);
    drop(broker);
    let seen = stats.snapshot();
    let lost = messages.saturating_sub(seen.delivered + dlq);
    if lost == 0 {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        eprintln!("[broker-restart] kept {} for a look", work.display());
    }
    Ok(json!({
        "scenario": "broker-restart",
        "broker": "real",
        "restarts": restarts,
        "down_ms": down.as_millis() as u64,
        "requested": messages,
        "delivered_unique": seen.delivered,
        "lost": lost,
        "duplicate_sends": seen.duplicates,
        "dlq": dlq,
        "first_delivery_after_restart_ms": deliveries_ms,
        "first_commit_after_restart_ms": commits_ms,
        "longest_delivery_stall_ms": longest_stall_ms,
        "elapsed_ms": elapsed.as_millis() as u64,
    }))
}
