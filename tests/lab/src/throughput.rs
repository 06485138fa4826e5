//! `throughput` and `partitions`: the whole pipeline (Kafka → lanes → FCM adapter → simulator →
//! dedup mark → offset) run in this process against a backlog, timed from the first delivery the
//! vendor accepts to the last. Kafka is librdkafka's mock cluster in this process, or with
//! `--broker real` a real broker in a process of its own, reached over loopback.
//!
//! - `throughput` runs it three ways on the same records: the pipeline with the FCM adapter as a
//!   WebAssembly component, the same pipeline with the same adapter crate compiled natively into
//!   this program (their ratio is what the sandbox costs), and a bare HTTP client sending the
//!   same requests to the same simulator (`ceiling.rs`). It also reads the records with a bare
//!   consumer that drops them. For each it counts the CPU of the host's own threads
//!   (`cpu.rs`): the simulator runs on a runtime of its own and the mock cluster's threads are
//!   known from its start, so neither is counted. The simulator's own CPU per request, counted
//!   over the same windows, gives `cpu_ratio_speed_adjusted`: the same ratio with the machine's
//!   speed in each window divided out. The kernel's share of each side's CPU is reported too:
//!   the bare client is mostly socket calls, so what a system call costs on the machine moves
//!   its figure, and the ratio, more than the host's.
//! - `partitions` runs the component pipeline on 1 partition and on 12, with key ordering and a
//!   key per record: concurrency comes from keys, not from partitions. The mock cluster keeps
//!   only 5 MiB per partition, so here the records are produced while the host runs, keeping at
//!   most 10,000 ahead of the vendor, the same way for both runs.
//!
//! Everything shares the machine's two cores (the cluster or broker, the simulator, the host), so
//! rates are comparable with each other rather than absolute; CPU per delivery is the host's
//! alone.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use serde_json::json;
use switchboard::demo::produce;
use switchboard::plugin::NativePlugins;
use switchboard::{StartOptions, start_with};
use switchboard_integration_tests::FcmFixture;

use crate::broker::{BrokerKind, KafkaChoice, LabKafka};
use crate::cpu::{Others, SideRuntime};

/// Names the simulator's runtime threads, so their CPU is not counted as the host's.
const SIM_THREADS: &str = "lab-vendor";

/// What a pipeline run is made of.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Adapter {
    Component,
    Native,
}

struct PipelineRun {
    rate_per_s: f64,
    call_p99_ms: f64,
    /// CPU of the host's threads per delivery, from the first delivery to the last.
    cpu_per_delivery: Duration,
    /// The part of that CPU spent in the kernel, from 0 to 1.
    system_share: f64,
    /// The most requests the simulator had in flight at once.
    peak_in_flight: u64,
    /// Deliveries per plugin call, over the run.
    deliveries_per_call: f64,
    /// CPU of the simulator's threads per request it answered, over the same window.
    vendor_cpu_per_request: Duration,
}

/// Starts the FCM simulator at `latency` on `side`, so that its work is on its own threads.
async fn simulator(side: &SideRuntime, latency: Duration) -> anyhow::Result<FcmFixture> {
    side.run(FcmFixture::start(move |c| {
        c.faults.latency = vendorsim::Latency::fixed(latency)
    }))
    .await
}

/// How the lab's requests are made: recipients per request, and over how many channels (each
/// with an FCM plugin of its own, so a batching queue and call slots of its own) they spread.
#[derive(Clone, Copy)]
struct Shape {
    recipients: u64,
    channels: u64,
}

impl Shape {
    const ONE: Shape = Shape {
        recipients: 1,
        channels: 1,
    };

    /// Requests that make `deliveries` deliveries.
    fn requests(self, deliveries: u64) -> u64 {
        deliveries.div_ceil(self.recipients.max(1))
    }
}

/// The channel of request `i`: `push-android` (plugin `fcm`), then `push-android-1` … .
fn channel_of(i: u64, shape: Shape) -> String {
    match i % shape.channels.max(1) {
        0 => "push-android".to_string(),
        c => format!("push-android-{c}"),
    }
}

fn envelope(i: u64) -> String {
    shaped_envelope(i, Shape::ONE)
}

fn shaped_envelope(i: u64, shape: Shape) -> String {
    let recipients: Vec<_> = match shape.recipients {
        0 | 1 => vec![json!({"to": format!("tp-{i}")})],
        n => (0..n)
            .map(|r| json!({"to": format!("tp-{i}-{r}")}))
            .collect(),
    };
    json!({
        "id": format!("tp-{i}"),
        "channel": channel_of(i, shape),
        "priority": "batch",
        "recipients": recipients,
        "content": {"title": "Your order", "body": format!("Order {i} is on its way"), "data": {"order": i}},
    })
    .to_string()
}

const TOPIC: &str = "lab.throughput";

/// A fresh Kafka with `messages` records on enough partitions to keep them, one key per record;
/// and the threads of this process that are not the host's.
async fn backlog(choice: &KafkaChoice, messages: u64) -> anyhow::Result<(LabKafka, Others)> {
    shaped_backlog(choice, messages, Shape::ONE).await
}

/// As [`backlog`], with `deliveries` made of requests of `shape`.
async fn shaped_backlog(
    choice: &KafkaChoice,
    deliveries: u64,
    shape: Shape,
) -> anyhow::Result<(LabKafka, Others)> {
    let messages = shape.requests(deliveries);
    let partitions = crate::lanes::partitions_for(messages);
    let (kafka, cluster_threads) = start_kafka(choice, partitions).await?;
    let started = Instant::now();
    let topic = kafka.topic(TOPIC);
    produce(&kafka.brokers, &topic, messages, |i| {
        (format!("k{i}"), shaped_envelope(i, shape))
    })
    .await?;
    crate::lanes::check_nothing_dropped(&kafka.brokers, &topic, partitions)?;
    eprintln!(
        "[throughput] produced {messages} records on {partitions} partitions in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok((kafka, cluster_threads))
}

/// Produces `messages` records to `topic` while the host runs, never more than `ahead` beyond
/// what the vendor accepted, so no partition outgrows what the mock cluster keeps.
async fn produce_paced(
    brokers: String,
    topic: String,
    messages: u64,
    ahead: u64,
    stats: std::sync::Arc<vendorsim::SimStats>,
) -> anyhow::Result<()> {
    // The host's own producer type: rdkafka's `FutureProducer` spins in its polling thread,
    // and this producer runs inside the window whose CPU is counted as the host's.
    let config = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .clone();
    let producer = switchboard::kafka::AwaitedProducer::create(&config, "lab-paced-poll")
        .context("creating the paced producer")?;
    const SLICE: u64 = 1000;
    let mut produced = 0;
    while produced < messages {
        if produced >= stats.snapshot().delivered + ahead {
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        }
        let sends = (produced..(produced + SLICE).min(messages)).map(|i| {
            let (key, value) = (format!("k{i}"), envelope(i));
            let (producer, topic) = (producer.clone(), &topic);
            async move {
                producer
                    .send(
                        rdkafka::producer::FutureRecord::to(topic)
                            .key(&key)
                            .payload(&value),
                        Duration::from_secs(30),
                    )
                    .await
                    .map(|_| ())
                    .map_err(|(e, _)| anyhow::anyhow!("producing {key}: {e}"))
            }
        });
        for sent in futures::future::join_all(sends).await {
            sent?;
        }
        produced = (produced + SLICE).min(messages);
    }
    Ok(())
}

/// Reads every record with a bare consumer; the rate from the first record to the last.
async fn consume_ceiling(kafka: &LabKafka, messages: u64) -> anyhow::Result<f64> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("group.id", kafka.topic("switchboard-lab-ceiling"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .context("creating the bare consumer")?;
    consumer.subscribe(&[&kafka.topic(TOPIC)])?;
    let mut first = None;
    for read in 0..messages {
        let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .context("the bare consumer stalled")??;
        drop(message);
        first.get_or_insert_with(Instant::now);
        if read > 0 && read.is_multiple_of(100_000) {
            eprintln!("[throughput] bare consumer read {read}");
        }
    }
    let elapsed = first.map_or(Duration::ZERO, |f| f.elapsed());
    Ok(messages.saturating_sub(1) as f64 / elapsed.as_secs_f64().max(1e-9))
}

/// One pipeline run: `messages` deliveries of requests of `shape`.
struct Spec<'a> {
    messages: u64,
    adapter: Adapter,
    vendor_latency: Duration,
    label: &'a str,
    /// Produce while the host runs (`partitions`) rather than before.
    paced: bool,
    shape: Shape,
}

/// Runs the host on the Kafka's backlog until the vendor accepted every record. `others` are
/// the threads that are not the host's besides the simulator's.
async fn pipeline(
    kafka: &LabKafka,
    spec: Spec<'_>,
    others: &Others,
) -> anyhow::Result<PipelineRun> {
    let Spec {
        messages,
        adapter,
        vendor_latency,
        label,
        paced,
        shape,
    } = spec;
    let side = SideRuntime::new(SIM_THREADS, 2)?;
    let fixture = simulator(&side, vendor_latency).await?;
    let others = others.clone().named(SIM_THREADS);
    let brokers = kafka.brokers.as_str();
    let topic = kafka.topic(TOPIC);
    let mut config = fixture.host_config(brokers, &topic, &format!("lab-{label}"));
    kafka.configure(&mut config);
    config.kafka.commit_interval_ms = 1000;
    // For comparing settings of the instance pool in one build: what memory a slot keeps mapped.
    if let Ok(kib) = std::env::var("SWITCHBOARD_LAB_KEEP_RESIDENT_KIB") {
        config.runtime.memory_keep_resident_kib = kib
            .parse()
            .context("SWITCHBOARD_LAB_KEEP_RESIDENT_KIB is not a number of KiB")?;
    }
    if let Ok(props) = std::env::var("SWITCHBOARD_LAB_KAFKA_PROPERTIES") {
        for pair in props.split(',').filter(|p| !p.is_empty()) {
            if let Some((k, v)) = pair.split_once('=') {
                config.kafka.properties.insert(k.to_string(), v.into());
            }
        }
    }
    for c in 1..shape.channels {
        let Some(fcm) = config.plugins.get("fcm").cloned() else {
            anyhow::bail!("the lab's host config has no `fcm` plugin");
        };
        config.plugins.insert(format!("fcm-{c}"), fcm);
        config.channels.insert(
            format!("push-android-{c}"),
            [(format!("fcm-{c}"), 100)].into_iter().collect(),
        );
    }
    let native_plugins = match adapter {
        Adapter::Component => NativePlugins::new(),
        Adapter::Native => NativePlugins::new().with::<fcm::Fcm>("fcm"),
    };
    let host = start_with(config, StartOptions { native_plugins }).await?;
    let stats = fixture.sim.stats.clone();
    let producer = paced.then(|| {
        tokio::spawn(produce_paced(
            brokers.to_string(),
            topic.clone(),
            messages,
            10_000,
            stats.clone(),
        ))
    });
    let first = until_delivered_sampling(&stats, messages, label, &others, |delivered| {
        format!(
            "[throughput] {label}: {delivered}/{messages} delivered, {} records read, {} bytes held",
            host.counters.snapshot().records_consumed,
            host.budget.used_total()
        )
    })
    .await?;
    let elapsed = first.at.elapsed();
    let cpu_at_last = others.sample();
    let call_p99 = host
        .registry
        .slots()
        .next()
        .and_then(|s| s.active().plugin.counters.duration_at(0.99))
        .unwrap_or_default();
    let calls = plugin_calls(&host);
    host.stop().await?;
    if let Some(producer) = producer {
        producer.await??;
    }
    let snapshot = stats.snapshot();
    anyhow::ensure!(
        snapshot.duplicates == 0,
        "[{label}] {} duplicates",
        snapshot.duplicates
    );
    let timed = messages - first.count;
    let rate = timed as f64 / elapsed.as_secs_f64().max(1e-9);
    let per_timed = |cpu: Duration| cpu / u32::try_from(timed.max(1)).unwrap_or(u32::MAX);
    let cpu_per_delivery = per_timed(first.cpu.own_cpu_until(&cpu_at_last));
    let vendor_cpu_per_request = per_timed(first.cpu.named_cpu_until(&cpu_at_last));
    eprintln!(
        "[throughput] {label}: {rate:.0}/s, call p99 {call_p99:?}, host CPU {cpu_per_delivery:?} \
         per delivery (simulator and cluster {:?} in all; simulator {vendor_cpu_per_request:?} \
         per request), {} in flight at most, {calls} calls",
        first.cpu.others_cpu_until(&cpu_at_last),
        stats.peak_in_flight()
    );
    Ok(PipelineRun {
        rate_per_s: rate,
        call_p99_ms: call_p99.as_secs_f64() * 1000.0,
        cpu_per_delivery,
        system_share: first.cpu.own_system_share_until(&cpu_at_last),
        peak_in_flight: stats.peak_in_flight(),
        deliveries_per_call: messages as f64 / calls.max(1) as f64,
        vendor_cpu_per_request,
    })
}

/// `own` CPU in units of the simulator's CPU per request over the same window: the machine's
/// speed in that window divided out.
fn in_vendor_requests(own: Duration, vendor_per_request: Duration) -> f64 {
    own.as_secs_f64() / vendor_per_request.as_secs_f64().max(1e-9)
}

/// Calls of every plugin's active version so far.
pub(crate) fn plugin_calls(host: &switchboard::RunningHost) -> u64 {
    host.registry
        .slots()
        .map(|slot| {
            slot.active()
                .plugin
                .counters
                .calls
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum()
}

/// A fresh Kafka with `TOPIC` on `partitions`, and the threads of this process that are not the
/// host's: the mock cluster's, or none when the broker runs in a process of its own.
async fn start_kafka(choice: &KafkaChoice, partitions: i32) -> anyhow::Result<(LabKafka, Others)> {
    let before = crate::cpu::thread_ids();
    let kafka = LabKafka::start(
        choice.broker,
        choice.brokers.clone(),
        "throughput",
        &[TOPIC],
        partitions,
    )
    .await?;
    let others = match choice.broker {
        BrokerKind::Embedded => Others::default().born_since(&before),
        BrokerKind::Real => Others::default(),
    };
    Ok((kafka, others))
}

/// The first delivery the vendor accepted: when, how many had been by then, and the CPU counts.
pub(crate) struct FirstDelivery {
    pub at: Instant,
    pub count: u64,
    pub cpu: crate::cpu::Sample,
}

/// As [`until_delivered`], sampling the CPU of the process and of `others` at the first delivery.
pub(crate) async fn until_delivered_sampling(
    stats: &vendorsim::SimStats,
    messages: u64,
    label: &str,
    others: &Others,
    report: impl Fn(u64) -> String,
) -> anyhow::Result<FirstDelivery> {
    let deadline = Instant::now() + Duration::from_secs(1800);
    let mut first = None;
    let mut next_report = Instant::now() + Duration::from_secs(10);
    loop {
        let delivered = stats.snapshot().delivered;
        if delivered > 0 && first.is_none() {
            first = Some(FirstDelivery {
                at: Instant::now(),
                count: delivered,
                cpu: others.sample(),
            });
        }
        if delivered >= messages {
            return Ok(first.unwrap_or(FirstDelivery {
                at: Instant::now(),
                count: 0,
                cpu: others.sample(),
            }));
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "[{label}] only {delivered} of {messages} delivered"
        );
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(10);
            eprintln!("{}", report(delivered));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until the simulator has accepted `messages` deliveries, printing `report` every 10 s;
/// when the first was accepted, and how many had been by then. Gives up after 30 minutes.
pub(crate) async fn until_delivered(
    stats: &vendorsim::SimStats,
    messages: u64,
    label: &str,
    report: impl Fn(u64) -> String,
) -> anyhow::Result<(Instant, u64)> {
    let first =
        until_delivered_sampling(stats, messages, label, &Others::default(), report).await?;
    Ok((first.at, first.count))
}

fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

/// What `throughput` and `partitions` run.
pub struct ThroughputOptions {
    pub messages: u64,
    pub plugin_dir: PathBuf,
    pub vendor_latency_ms: u64,
    pub kafka: KafkaChoice,
}

fn check_plugin(plugin_dir: &std::path::Path) -> anyhow::Result<()> {
    // The host config the fixture writes reads `fcm.wasm` from the bundled plugin directory.
    let wasm = plugin_dir.join("fcm.wasm");
    anyhow::ensure!(
        wasm.exists(),
        "{} is missing: build the plugins first (`make plugins`)",
        wasm.display()
    );
    Ok(())
}

pub async fn throughput(
    options: ThroughputOptions,
    rounds: u32,
) -> anyhow::Result<serde_json::Value> {
    check_plugin(&options.plugin_dir)?;
    let latency = Duration::from_millis(options.vendor_latency_ms);
    let messages = options.messages;
    let (kafka, cluster_threads) = backlog(&options.kafka, messages).await?;
    let consume_ceiling_rate = consume_ceiling(&kafka, messages).await?;
    eprintln!("[throughput] bare consumer: {consume_ceiling_rate:.0}/s");
    let mut runs = Vec::new();
    for round in 1..=rounds.max(1) {
        eprintln!("[throughput] round {round} of {}", rounds.max(1));
        runs.push(throughput_round(&kafka, &cluster_threads, messages, latency, round).await?);
    }
    let us = |d: Duration| (d.as_secs_f64() * 1e7).round() / 10.0;
    let ratio = |a: f64, b: f64| (a / b.max(1e-9) * 100.0).round() / 100.0;
    let share = |s: f64| (s * 100.0).round() / 100.0;
    let cpu_ratio = |r: &Round| {
        ratio(
            r.wasm.cpu_per_delivery.as_secs_f64(),
            r.ceiling.cpu_per_request.as_secs_f64(),
        )
    };
    // The machine's speed moves by ±15 % from one phase to the next, and the host's CPU per
    // delivery with it. The simulator answers the same requests in both phases, so its CPU per
    // request, counted over the same window, is a speedometer: dividing each side by it leaves
    // a ratio that moves by about ±2 % within a run where the plain one moves by ±15 %. Between
    // runs it still drifts (1.58 to 1.77 over four runs of one build), mostly on the bare
    // client's side, so compare runs by their component figures, and the ratio over many.
    let speed_adjusted = |r: &Round| {
        ratio(
            in_vendor_requests(r.wasm.cpu_per_delivery, r.wasm.vendor_cpu_per_request),
            in_vendor_requests(r.ceiling.cpu_per_request, r.ceiling.vendor_cpu_per_request),
        )
    };
    let adjusted_by_round: Vec<f64> = runs.iter().map(speed_adjusted).collect();
    let adjusted_median = {
        let mut sorted = adjusted_by_round.clone();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    };
    let by_round: Vec<f64> = runs.iter().map(cpu_ratio).collect();
    runs.sort_by(|a, b| cpu_ratio(a).total_cmp(&cpu_ratio(b)));
    let Round {
        wasm,
        native,
        ceiling,
        concurrency,
    } = &runs[runs.len() / 2];
    Ok(json!({
        "scenario": "throughput",
        "broker": options.kafka.broker.as_str(),
        "messages": messages,
        "partitions": crate::lanes::partitions_for(messages),
        "rate_per_s": wasm.rate_per_s.round(),
        "native_rate_per_s": native.rate_per_s.round(),
        "wasm_ratio": (wasm.rate_per_s / native.rate_per_s * 1000.0).round() / 1000.0,
        "consume_ceiling_per_s": consume_ceiling_rate.round(),
        "p99_ms": (wasm.call_p99_ms * 10.0).round() / 10.0,
        "native_p99_ms": (native.call_p99_ms * 10.0).round() / 10.0,
        "rss_peak_mb": peak_rss_mib(),
        "vendor_latency_ms": options.vendor_latency_ms,
        "in_flight_peak": concurrency,
        "deliveries_per_call": (wasm.deliveries_per_call * 10.0).round() / 10.0,
        "ceiling_rate_per_s": ceiling.rate_per_s.round(),
        "native_host_cpu_us_per_delivery": us(native.cpu_per_delivery),
        "host_cpu_us_per_delivery": us(wasm.cpu_per_delivery),
        "ceiling_cpu_us_per_request": us(ceiling.cpu_per_request),
        "cpu_ratio_vs_ceiling": ratio(
            wasm.cpu_per_delivery.as_secs_f64(),
            ceiling.cpu_per_request.as_secs_f64()
        ),
        "cpu_ratio_by_round": by_round,
        "vendor_cpu_us_per_request": us(wasm.vendor_cpu_per_request),
        "ceiling_vendor_cpu_us_per_request": us(ceiling.vendor_cpu_per_request),
        "cpu_ratio_speed_adjusted": adjusted_median,
        "cpu_ratio_speed_adjusted_by_round": adjusted_by_round,
        "rate_ratio_vs_ceiling": ratio(wasm.rate_per_s, ceiling.rate_per_s),
        "host_system_cpu_share": share(wasm.system_share),
        "ceiling_system_cpu_share": share(ceiling.system_share),
    }))
}

/// One round of `throughput`: the component pipeline, the native one, and the bare client.
struct Round {
    wasm: PipelineRun,
    native: PipelineRun,
    ceiling: crate::ceiling::CeilingRun,
    concurrency: u64,
}

async fn throughput_round(
    kafka: &LabKafka,
    cluster_threads: &Others,
    messages: u64,
    latency: Duration,
    round: u32,
) -> anyhow::Result<Round> {
    // Each pipeline reads the whole backlog in a consumer group of its own (named after it).
    let (wasm_label, native_label) = match round {
        1 => ("wasm".to_string(), "native".to_string()),
        n => (format!("wasm-{n}"), format!("native-{n}")),
    };
    let wasm = pipeline(
        kafka,
        Spec {
            messages,
            adapter: Adapter::Component,
            vendor_latency: latency,
            label: &wasm_label,
            paced: false,
            shape: Shape::ONE,
        },
        cluster_threads,
    )
    .await?;
    let native = pipeline(
        kafka,
        Spec {
            messages,
            adapter: Adapter::Native,
            vendor_latency: latency,
            label: &native_label,
            paced: false,
            shape: Shape::ONE,
        },
        cluster_threads,
    )
    .await?;
    // The bare client at the concurrency the component pipeline reached, on a fresh simulator.
    let side = SideRuntime::new(SIM_THREADS, 2)?;
    let fixture = simulator(&side, latency).await?;
    let concurrency = wasm.peak_in_flight.max(1);
    let ceiling = crate::ceiling::run(
        &fixture,
        messages,
        concurrency,
        &cluster_threads.clone().named(SIM_THREADS),
    )
    .await?;
    anyhow::ensure!(
        fixture.sim.stats.snapshot().delivered == messages,
        "the bare client's requests were not all accepted"
    );
    eprintln!(
        "[throughput] bare HTTP client: {:.0}/s, {:?} CPU per request at {concurrency} in flight \
         (simulator {:?} per request)",
        ceiling.rate_per_s, ceiling.cpu_per_request, ceiling.vendor_cpu_per_request
    );
    Ok(Round {
        wasm,
        native,
        ceiling,
        concurrency,
    })
}

pub async fn partitions(options: ThroughputOptions) -> anyhow::Result<serde_json::Value> {
    check_plugin(&options.plugin_dir)?;
    let latency = Duration::from_millis(options.vendor_latency_ms);
    let messages = options.messages;
    let mut rates = Vec::new();
    for partitions in [1, 12] {
        let (kafka, cluster_threads) = start_kafka(&options.kafka, partitions).await?;
        let label = format!("{partitions}-partitions");
        let run = pipeline(
            &kafka,
            Spec {
                messages,
                adapter: Adapter::Component,
                vendor_latency: latency,
                label: &label,
                paced: true,
                shape: Shape::ONE,
            },
            &cluster_threads,
        )
        .await?;
        rates.push(run.rate_per_s);
    }
    Ok(json!({
        "scenario": "partitions",
        "broker": options.kafka.broker.as_str(),
        "messages": messages,
        "ordering": "key",
        "rate_1_partition_per_s": rates[0].round(),
        "rate_12_partitions_per_s": rates[1].round(),
        "ratio_1_vs_12": (rates[0] / rates[1] * 1000.0).round() / 1000.0,
        "vendor_latency_ms": options.vendor_latency_ms,
    }))
}

/// `scaling`: the component pipeline's rate and host CPU per delivery as the shape of the load
/// changes: recipients per request (1, 10, 100, 1,000) and channels at once (1, 2, 4), each
/// channel with an FCM plugin of its own. Every point delivers `messages` from a fresh backlog,
/// one round each, so each also reports the host's CPU in the simulator's CPU per request of
/// its own window: points minutes apart are compared with the machine's speed divided out.
pub async fn scaling(options: ThroughputOptions) -> anyhow::Result<serde_json::Value> {
    check_plugin(&options.plugin_dir)?;
    let latency = Duration::from_millis(options.vendor_latency_ms);
    let messages = options.messages;
    let point = async |shape: Shape| -> anyhow::Result<serde_json::Value> {
        let (kafka, cluster_threads) = shaped_backlog(&options.kafka, messages, shape).await?;
        let label = format!(
            "{}-recipients-{}-channels",
            shape.recipients, shape.channels
        );
        let run = pipeline(
            &kafka,
            Spec {
                messages,
                adapter: Adapter::Component,
                vendor_latency: latency,
                label: &label,
                paced: false,
                shape,
            },
            &cluster_threads,
        )
        .await?;
        Ok(json!({
            "recipients": shape.recipients,
            "channels": shape.channels,
            "rate_per_s": run.rate_per_s.round(),
            "deliveries_per_call": (run.deliveries_per_call * 10.0).round() / 10.0,
            "host_cpu_us_per_delivery": (run.cpu_per_delivery.as_secs_f64() * 1e7).round() / 10.0,
            "vendor_cpu_us_per_request": (run.vendor_cpu_per_request.as_secs_f64() * 1e7).round() / 10.0,
            // The host's CPU per delivery in the simulator's CPU per request of the same window:
            // the machine's speed, which drifts between points, divided out (see `throughput`).
            "host_cpu_in_vendor_requests": (in_vendor_requests(
                run.cpu_per_delivery,
                run.vendor_cpu_per_request
            ) * 100.0)
                .round()
                / 100.0,
        }))
    };
    let mut by_recipients = Vec::new();
    for recipients in [1, 10, 100, 1000] {
        by_recipients.push(
            point(Shape {
                recipients,
                channels: 1,
            })
            .await?,
        );
    }
    let mut by_channels = Vec::new();
    for channels in [1, 2, 4] {
        by_channels.push(
            point(Shape {
                recipients: 1,
                channels,
            })
            .await?,
        );
    }
    Ok(json!({
        "scenario": "scaling",
        "broker": options.kafka.broker.as_str(),
        "deliveries_per_point": messages,
        "by_recipients": by_recipients,
        "by_channels": by_channels,
        "vendor_latency_ms": options.vendor_latency_ms,
    }))
}
