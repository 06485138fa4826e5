//! `isolation` and `backlog`: the host as a child process (so its resident memory is its own)
//! against the lab's mock Kafka cluster and FCM simulator.
//!
//! - `isolation`: a deep ads backlog drains through the ads lane while realtime requests arrive
//!   at a steady rate on the realtime lane's topic; measures each realtime request from the
//!   moment it is produced to the moment the vendor accepts it.
//! - `backlog`: a deep backlog on one topic, drained from the start; measures the drain rate and
//!   the host's peak memory, which must not grow with the backlog.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use switchboard::demo::produce;
use switchboard::kafka::EmbeddedKafka;
use switchboard_integration_tests::FcmFixture;

use crate::crash::{HostProcess, fcm_component, fcm_plugin_toml, host_binary, toml_string};

const RETRY_TOPIC: &str = "switchboard.retry";
const DLQ_TOPIC: &str = "switchboard.dlq";
/// Records per partition on the embedded cluster. librdkafka's mock cluster keeps at most
/// 5 MiB (and 100,000 records) per partition and silently deletes the oldest beyond that, so a
/// deep backlog needs enough partitions to be kept whole: 15,000 records of about 260 bytes is
/// under 4 MiB.
const RECORDS_PER_PARTITION: u64 = 15_000;

/// Partitions for a backlog of `records`: at least 12, and enough for the mock cluster to keep
/// every record.
pub(crate) fn partitions_for(records: u64) -> i32 {
    (records.div_ceil(RECORDS_PER_PARTITION) as i32).max(12)
}

/// Fails when the cluster deleted any record of `topic` (a partition whose log no longer starts
/// at offset 0): a lab run on a truncated backlog would measure the wrong thing.
pub(crate) fn check_nothing_dropped(
    brokers: &str,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<()> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "switchboard-lab-watermarks")
        .create()
        .context("creating the watermark reader")?;
    for partition in 0..partitions {
        let (low, _) = consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .with_context(|| format!("reading the watermarks of {topic}/{partition}"))?;
        anyhow::ensure!(
            low == 0,
            "{topic}/{partition} starts at offset {low}: the cluster deleted records"
        );
    }
    Ok(())
}

/// A request of about 250 bytes, like the demo's.
fn envelope(id: &str, priority: &str) -> String {
    json!({
        "id": id,
        "channel": "push-android",
        "priority": priority,
        "recipients": [{"to": id}],
        "content": {"title": "Your order", "body": format!("Order {id} is on its way"), "data": {"order": id}},
    })
    .to_string()
}

/// Produces `count` requests in slices, printing progress.
async fn produce_backlog(
    brokers: &str,
    topic: &str,
    count: u64,
    prefix: &str,
    priority: &str,
) -> anyhow::Result<()> {
    const SLICE: u64 = 100_000;
    let started = Instant::now();
    let mut done = 0;
    while done < count {
        let n = SLICE.min(count - done);
        produce(brokers, topic, n, |i| {
            let id = format!("{prefix}{}", done + i);
            (id.clone(), envelope(&id, priority))
        })
        .await?;
        done += n;
        eprintln!(
            "[backlog] produced {done}/{count} ({:.0}/s)",
            done as f64 / started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// What goes into the host's config besides the plugin.
struct HostSetup<'a> {
    brokers: &'a str,
    group: &'a str,
    /// `[kafka] topics`: the mixed topics.
    mixed_topics: &'a [&'a str],
    /// `[lanes.*]` tables, as TOML.
    lanes_toml: String,
    concurrency: u64,
    /// Put before the retry and DLQ topics' names: a real broker keeps them between runs.
    topic_prefix: &'a str,
    /// More TOML, whole tables, appended to the config.
    extra_toml: &'a str,
}

/// Writes the host's config (and the service-account key) into `dir`; returns its path.
fn write_config(
    dir: &Path,
    setup: &HostSetup<'_>,
    fixture: &FcmFixture,
    fcm_wasm: &Path,
) -> anyhow::Result<PathBuf> {
    let plugin = fcm_plugin_toml(dir, fixture, fcm_wasm, 100, setup.concurrency)?;
    let topics: Vec<String> = setup.mixed_topics.iter().map(|t| toml_string(t)).collect();
    let text = format!(
        r#"# Written by `switchboard-lab`.
[kafka]
brokers = {brokers}
group_id = {group}
topics = [{topics}]
retry_topic = {retry}
dlq_topic = {dlq}

[dedup]
backend = "embedded"
data_dir = "dedup"

# Any free port: a lab host is not administered, and the next run's host must not collide.
[admin]
listen = "127.0.0.1:0"

{lanes}

{plugin}

{extra}"#,
        brokers = toml_string(setup.brokers),
        group = toml_string(setup.group),
        topics = topics.join(", "),
        retry = toml_string(&format!("{}{RETRY_TOPIC}", setup.topic_prefix)),
        dlq = toml_string(&format!("{}{DLQ_TOPIC}", setup.topic_prefix)),
        lanes = setup.lanes_toml,
        extra = setup.extra_toml,
    );
    let path = dir.join("switchboard.toml");
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn work_dir(scenario: &str) -> anyhow::Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(1);
    let dir = std::env::temp_dir().join(format!(
        "switchboard-lab-{scenario}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Waits until `condition` holds, checking the host is alive; false after `timeout`.
async fn wait_for(
    host: &mut HostProcess,
    timeout: Duration,
    mut condition: impl FnMut() -> bool,
) -> anyhow::Result<bool> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return Ok(true);
        }
        host.check_alive()?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(condition())
}

/// What `isolation` runs.
pub struct IsolationOptions {
    pub backlog: u64,
    pub realtime_rate: u64,
    pub duration: Duration,
    pub plugin_dir: PathBuf,
    pub vendor_latency_ms: u64,
    /// Extra TOML for `[lanes.ads]`, e.g. `concurrency = 8`.
    pub ads_lane: String,
    /// More settings for the realtime lane, as TOML lines.
    pub realtime_lane: String,
    /// The mock cluster in this process, or a real broker in a process of its own.
    pub broker: crate::broker::BrokerKind,
    pub brokers: Option<String>,
    /// More host config, as whole TOML tables (e.g. `[runtime]` with `bulk_nice = 0`).
    pub host_toml: String,
    /// Partitions of each topic; `None` sizes them for the backlog.
    pub partitions: Option<i32>,
}

pub async fn isolation(options: IsolationOptions) -> anyhow::Result<serde_json::Value> {
    let fcm_wasm = fcm_component(&options.plugin_dir)?;
    let binary = host_binary()?;
    let partitions = options
        .partitions
        .unwrap_or_else(|| partitions_for(options.backlog));
    let kafka = crate::broker::LabKafka::start(
        options.broker,
        options.brokers.clone(),
        "isolation",
        &["lab.ads", "lab.realtime"],
        partitions,
    )
    .await?;
    let (ads, realtime) = (kafka.topic("lab.ads"), kafka.topic("lab.realtime"));
    let (ads, realtime) = (ads.as_str(), realtime.as_str());
    let group = kafka.topic("switchboard-lab-isolation");
    let prefix = kafka.topic("");
    let brokers = kafka.brokers.clone();
    let latency = Duration::from_millis(options.vendor_latency_ms);
    let fixture =
        FcmFixture::start(|c| c.faults.latency = vendorsim::Latency::fixed(latency)).await;
    let stats = fixture.sim.stats.clone();
    stats.log_arrivals("rt-");

    produce_backlog(&brokers, ads, options.backlog, "ad-", "ads").await?;
    check_nothing_dropped(&brokers, ads, partitions)?;
    let work = work_dir("isolation")?;
    let setup = HostSetup {
        brokers: &brokers,
        group: &group,
        mixed_topics: &[],
        lanes_toml: format!(
            "[lanes.ads]\ntopics = [{}]\n{}\n\n[lanes.realtime]\ntopics = [{}]\n{}\n",
            toml_string(ads),
            options.ads_lane,
            toml_string(realtime),
            options.realtime_lane
        ),
        concurrency: 64,
        topic_prefix: &prefix,
        extra_toml: &options.host_toml,
    };
    let config = write_config(&work, &setup, &fixture, &fcm_wasm)?;
    let log = work.join("host.log");
    eprintln!(
        "[isolation] host log: {}; config: {}",
        log.display(),
        config.display()
    );
    let mut host = HostProcess::spawn(&binary, &config, &log)?;
    anyhow::ensure!(
        wait_for(&mut host, Duration::from_secs(120), || stats
            .snapshot()
            .delivered
            > 0)
        .await?,
        "the host delivered nothing in 120 s; see {}",
        log.display()
    );
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "true")
        // Each realtime request goes out at once: its latency starts when it is produced.
        .set("linger.ms", "0")
        .create()
        .context("creating the realtime producer")?;
    // A consumer of the lab's own reads the realtime topic as the host's realtime lane does
    // (10 ms fetch wait): when a record becomes readable is the broker's share of its latency.
    let watch = RealtimeWatch::start(&brokers, realtime)?;
    // The realtime lane joins its own consumer group; measure only once it is reading, or the
    // first requests would time the group join instead of the lane.
    let warm_up = "rt-warm-up";
    producer
        .send(
            FutureRecord::to(realtime)
                .key(warm_up)
                .payload(&envelope(warm_up, "realtime")),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("producing the warm-up request: {e}"))?;
    anyhow::ensure!(
        wait_for(&mut host, Duration::from_secs(120), || !stats
            .arrivals()
            .is_empty())
        .await?,
        "the realtime lane delivered nothing in 120 s; see {}",
        log.display()
    );
    anyhow::ensure!(
        wait_for(&mut host, Duration::from_secs(120), || watch.seen(warm_up)).await?,
        "the lab's realtime watcher read nothing in 120 s"
    );
    let warm_ups = stats.arrivals().len() as u64;
    let ads_at_start = stats.snapshot().delivered - warm_ups;
    let ads_started = Instant::now();
    let mut sent_at: HashMap<String, Instant> = HashMap::new();
    let interval = Duration::from_secs_f64(1.0 / options.realtime_rate.max(1) as f64);
    let mut ticker = tokio::time::interval(interval);
    let until = Instant::now() + options.duration;
    let mut pending = Vec::new();
    let mut i = 0u64;
    let mut next_report = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        ticker.tick().await;
        let id = format!("rt-{i}");
        i += 1;
        sent_at.insert(id.clone(), Instant::now());
        let producer = producer.clone();
        let value = envelope(&id, "realtime");
        let topic = realtime.to_string();
        pending.push(tokio::spawn(async move {
            producer
                .send(
                    FutureRecord::to(&topic).key(&id).payload(&value),
                    Duration::from_secs(30),
                )
                .await
                .map(|_| ())
                .map_err(|(e, _)| anyhow::anyhow!("producing {id}: {e}"))
        }));
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(10);
            host.check_alive()?;
            eprintln!(
                "[isolation] realtime sent {i}, accepted {}; ads delivered {}",
                stats.arrivals().len() as u64 - warm_ups,
                stats.snapshot().delivered - stats.arrivals().len() as u64
            );
        }
    }
    for send in pending {
        send.await??;
    }
    let realtime_sent = sent_at.len() as u64;
    wait_for(&mut host, Duration::from_secs(30), || {
        stats.arrivals().len() as u64 >= realtime_sent + warm_ups
    })
    .await?;
    let ads_elapsed = ads_started.elapsed();
    let arrivals = stats.arrivals();
    let snapshot = stats.snapshot();
    let rss_peak_mb = host.peak_rss_mib();
    host.terminate(Duration::from_secs(30)).await?;

    let mut latencies = Histogram::<u64>::new(3)?;
    // SWITCHBOARD_LAB_TRACE prints each realtime request slower than its value in ms (100 when
    // it is not a number), with its parts.
    let trace = std::env::var("SWITCHBOARD_LAB_TRACE")
        .ok()
        .map(|ms| Duration::from_millis(ms.parse().unwrap_or(100)));
    let readable = watch.stop();
    let entries = stats.entries();
    // Each realtime request's latency in three parts: produced → readable from the broker,
    // readable → at the vendor's handler (the host's share), at the handler → accepted (the
    // simulated latency and the simulator's own wait for a core).
    let mut parts = [(); 3].map(|()| Histogram::<u64>::new(3));
    for (recipient, at) in &arrivals {
        if let Some(sent) = sent_at.get(recipient) {
            let latency = at.duration_since(*sent);
            latencies.record(latency.as_micros() as u64)?;
            let spans = match (readable.get(recipient), entries.get(recipient)) {
                (Some(readable), Some(entered)) => Some([
                    readable.saturating_duration_since(*sent),
                    entered.saturating_duration_since(*readable),
                    at.saturating_duration_since(*entered),
                ]),
                _ => None,
            };
            for (part, span) in parts.iter_mut().zip(spans.iter().flatten()) {
                if let Ok(part) = part {
                    part.record(span.as_micros() as u64)?;
                }
            }
            if trace.is_some_and(|over| latency > over) {
                let [broker_ms, host_ms, vendor_ms] = spans
                    .map(|spans| spans.map(|span| span.as_millis().to_string()))
                    .unwrap_or_else(|| ["?".into(), "?".into(), "?".into()]);
                eprintln!(
                    "[isolation] slow: {recipient} sent at +{} ms took {} ms (broker {broker_ms}, host {host_ms}, vendor {vendor_ms})",
                    sent.duration_since(ads_started).as_millis(),
                    latency.as_millis(),
                );
            }
        }
    }
    let realtime_delivered = arrivals.len() as u64 - warm_ups;
    let ads_delivered = snapshot.delivered - realtime_delivered - warm_ups - ads_at_start;
    let ms = |us: u64| (us as f64 / 100.0).round() / 10.0;
    let [broker, in_host, vendor] = parts;
    let (broker, in_host, vendor) = (broker?, in_host?, vendor?);
    eprintln!(
        "[isolation] realtime latency parts (p50 / p99 ms): broker {} / {}, host {} / {}, vendor {} / {} ({} requests timed in parts)",
        ms(broker.value_at_quantile(0.5)),
        ms(broker.value_at_quantile(0.99)),
        ms(in_host.value_at_quantile(0.5)),
        ms(in_host.value_at_quantile(0.99)),
        ms(vendor.value_at_quantile(0.5)),
        ms(vendor.value_at_quantile(0.99)),
        broker.len()
    );
    Ok(json!({
        "scenario": "isolation",
        "broker": options.broker.as_str(),
        "broker_p50_ms": ms(broker.value_at_quantile(0.5)),
        "broker_p99_ms": ms(broker.value_at_quantile(0.99)),
        "host_p50_ms": ms(in_host.value_at_quantile(0.5)),
        "host_p99_ms": ms(in_host.value_at_quantile(0.99)),
        "vendor_p50_ms": ms(vendor.value_at_quantile(0.5)),
        "vendor_p99_ms": ms(vendor.value_at_quantile(0.99)),
        "backlog": options.backlog,
        "partitions": partitions,
        "realtime_sent": realtime_sent,
        "realtime_delivered": realtime_delivered,
        "realtime_p50_ms": ms(latencies.value_at_quantile(0.5)),
        "realtime_p99_ms": ms(latencies.value_at_quantile(0.99)),
        "realtime_max_ms": ms(latencies.max()),
        "ads_delivered_meanwhile": ads_delivered,
        "ads_rate_per_s": (ads_delivered as f64 / ads_elapsed.as_secs_f64()).round(),
        "duplicates": snapshot.duplicates,
        "rss_peak_mb": rss_peak_mb,
        "vendor_latency_ms": options.vendor_latency_ms,
        "lost": realtime_sent - realtime_delivered,
    }))
}

/// A consumer of the lab's own on the realtime topic, noting when each record became readable.
struct RealtimeWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    readable: std::sync::Arc<std::sync::Mutex<HashMap<String, Instant>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RealtimeWatch {
    fn start(brokers: &str, topic: &str) -> anyhow::Result<Self> {
        use rdkafka::Message as _;
        use rdkafka::consumer::{BaseConsumer, Consumer as _};
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "switchboard-lab-realtime-watch")
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .create()
            .context("creating the realtime watcher")?;
        consumer.subscribe(&[topic])?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readable = std::sync::Arc::new(std::sync::Mutex::new(HashMap::new()));
        let (stopping, noted) = (stop.clone(), readable.clone());
        let thread = std::thread::Builder::new()
            .name("lab-rt-watch".into())
            .spawn(move || {
                while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                    let Some(Ok(message)) = consumer.poll(Duration::from_millis(50)) else {
                        continue;
                    };
                    let at = Instant::now();
                    if let Some(key) = message.key().and_then(|k| std::str::from_utf8(k).ok()) {
                        noted
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .entry(key.to_string())
                            .or_insert(at);
                    }
                }
            })?;
        Ok(Self {
            stop,
            readable,
            thread: Some(thread),
        })
    }

    fn seen(&self, key: &str) -> bool {
        self.readable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(key)
    }

    /// Stops reading; when each key became readable.
    fn stop(mut self) -> HashMap<String, Instant> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        std::mem::take(&mut *self.readable.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// What `backlog` runs.
pub struct BacklogOptions {
    pub records: u64,
    pub plugin_dir: PathBuf,
    pub vendor_latency_ms: u64,
    pub timeout: Duration,
}

pub async fn backlog(options: BacklogOptions) -> anyhow::Result<serde_json::Value> {
    let topic = "lab.backlog";
    let fcm_wasm = fcm_component(&options.plugin_dir)?;
    let binary = host_binary()?;
    let topics = switchboard_integration_tests::cluster_topics(&[topic]);
    let partitions = partitions_for(options.records);
    let cluster = EmbeddedKafka::start(1, &topics, partitions)?;
    let brokers = cluster.bootstrap_servers().to_string();
    let latency = Duration::from_millis(options.vendor_latency_ms);
    let fixture =
        FcmFixture::start(|c| c.faults.latency = vendorsim::Latency::fixed(latency)).await;
    let stats = fixture.sim.stats.clone();
    produce_backlog(&brokers, topic, options.records, "b-", "batch").await?;
    check_nothing_dropped(&brokers, topic, partitions)?;

    let work = work_dir("backlog")?;
    let setup = HostSetup {
        brokers: &brokers,
        group: "switchboard-lab-backlog",
        mixed_topics: &[topic],
        lanes_toml: String::new(),
        concurrency: 64,
        topic_prefix: "",
        extra_toml: "",
    };
    let config = write_config(&work, &setup, &fixture, &fcm_wasm)?;
    let log = work.join("host.log");
    eprintln!("[backlog] host log: {}", log.display());
    let mut host = HostProcess::spawn(&binary, &config, &log)?;
    anyhow::ensure!(
        wait_for(&mut host, Duration::from_secs(120), || stats
            .snapshot()
            .delivered
            > 0)
        .await?,
        "the host delivered nothing in 120 s; see {}",
        log.display()
    );
    let started = Instant::now();
    let first = stats.snapshot().delivered;
    let deadline = started + options.timeout;
    let mut rss_samples = Vec::new();
    loop {
        let delivered = stats.snapshot().delivered;
        rss_samples.push((delivered, host.peak_rss_mib()));
        if delivered >= options.records || Instant::now() >= deadline {
            break;
        }
        host.check_alive()?;
        if rss_samples.len().is_multiple_of(10) {
            eprintln!(
                "[backlog] delivered {delivered}/{} ({:.0}/s), host peak rss {} MiB",
                options.records,
                (delivered - first) as f64 / started.elapsed().as_secs_f64(),
                host.peak_rss_mib()
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let elapsed = started.elapsed();
    let snapshot = stats.snapshot();
    let rss_peak_mb = host.peak_rss_mib();
    // The peak at a quarter of the drain against the peak at the end: flat memory means the
    // backlog's depth does not show in it.
    let quarter = rss_samples
        .iter()
        .find(|(d, _)| *d >= options.records / 4)
        .map_or(0, |(_, rss)| *rss);
    host.terminate(Duration::from_secs(30)).await?;
    Ok(json!({
        "scenario": "backlog",
        "records": options.records,
        "partitions": partitions,
        "delivered": snapshot.delivered,
        "duplicates": snapshot.duplicates,
        "lost": options.records.saturating_sub(snapshot.delivered),
        "drain_rate_per_s": ((snapshot.delivered - first) as f64 / elapsed.as_secs_f64()).round(),
        "rss_peak_mb": rss_peak_mb,
        "rss_peak_mb_at_quarter": quarter,
        "vendor_latency_ms": options.vendor_latency_ms,
    }))
}
