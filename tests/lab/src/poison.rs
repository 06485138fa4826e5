//! `poison` and `expired-backlog`: bad input must never slow valid traffic down or lose it.
//!
//! - `poison` runs the host twice in this process on the same number of valid requests: once
//!   clean, once with hostile records interleaved (sizes around the record limit, encodings,
//!   shapes, types, expired, unknown channel). Every valid request must be delivered once, every
//!   hostile record must reach the DLQ with a reason, and the valid traffic's rate is compared
//!   with the clean run's.
//! - `expired-backlog` puts expired requests in front of valid ones and measures how fast the
//!   host dead-letters them, and when the valid ones behind them are delivered.
//! - `fanout` sends requests of 1,000 recipients each with a large content, and measures how far
//!   the process's peak memory grows while they are delivered: every recipient's delivery must
//!   share its request's one content, not hold a copy of it.
//!
//! The records are produced by an outside librdkafka producer before the host starts, as a
//! backlog a restarted host would find.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use switchboard::kafka::EmbeddedKafka;
use switchboard_integration_tests::{FcmFixture, cluster_topics};

const TOPIC: &str = "lab.poison";

fn valid(i: u64) -> String {
    json!({
        "id": format!("ok-{i}"),
        "channel": "push-android",
        "priority": "batch",
        "recipients": [{"to": format!("ok-{i}")}],
        "content": {"title": "Your order", "body": format!("Order {i} is on its way")},
    })
    .to_string()
}

fn expired(i: u64) -> String {
    json!({
        "id": format!("old-{i}"),
        "channel": "push-android",
        "recipients": [{"to": format!("old-{i}")}],
        "content": {"body": "too late"},
        "expires_at": "2020-01-01T00:00:00Z",
    })
    .to_string()
}

/// The hostile records, by kind: each must end in the DLQ with a reason. `limit` is the host's
/// `max_record_bytes`.
fn hostile_kinds(limit: usize) -> Vec<(&'static str, Vec<u8>)> {
    let padded = |bytes: usize| {
        // A well-formed request whose size is exactly `bytes`.
        let head = r#"{"id":"pad","channel":"push-android","recipients":[{"to":"pad"}],"content":{"body":""#;
        let tail = r#""}}"#;
        let fill = bytes.saturating_sub(head.len() + tail.len());
        format!("{head}{}{tail}", "p".repeat(fill)).into_bytes()
    };
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let many = vec![json!({"to": "x"}); 1001];
    vec![
        ("over_limit_by_one", padded(limit + 1)),
        ("two_mib", vec![b'x'; 2 << 20]),
        ("empty", Vec::new()),
        ("not_utf8", vec![0xff, 0xfe, 0xfd, b'{']),
        ("not_json", b"{not json".to_vec()),
        ("json_array", b"[1,2,3]".to_vec()),
        ("json_null", b"null".to_vec()),
        ("deep_nesting", nested.into_bytes()),
        ("no_id", br#"{"channel":"push-android","recipients":[{"to":"a"}],"content":{}}"#.to_vec()),
        ("empty_id", br#"{"id":" ","channel":"push-android","recipients":[{"to":"a"}],"content":{}}"#.to_vec()),
        ("no_recipients", br#"{"id":"a","channel":"push-android","recipients":[],"content":{}}"#.to_vec()),
        ("recipients_wrong_type", br#"{"id":"a","channel":"push-android","recipients":"a","content":{}}"#.to_vec()),
        (
            "too_many_recipients",
            json!({"id": "a", "channel": "push-android", "recipients": many, "content": {}})
                .to_string()
                .into_bytes(),
        ),
        ("content_not_object", br#"{"id":"a","channel":"push-android","recipients":[{"to":"a"}],"content":"hi"}"#.to_vec()),
        ("unknown_priority", br#"{"id":"a","channel":"push-android","priority":"urgent","recipients":[{"to":"a"}],"content":{}}"#.to_vec()),
        ("unknown_channel", br#"{"id":"a","channel":"carrier-pigeon","recipients":[{"to":"a"}],"content":{}}"#.to_vec()),
        ("expired", expired(0).into_bytes()),
    ]
}

/// An outside producer that may write records far above librdkafka's default limit.
fn producer(brokers: &str) -> anyhow::Result<FutureProducer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.max.bytes", "8000000")
        .set("linger.ms", "5")
        .create()
        .context("creating the lab producer")
}

async fn send_all(brokers: &str, records: Vec<(String, Vec<u8>)>) -> anyhow::Result<()> {
    let producer = producer(brokers)?;
    for chunk in records.chunks(1000) {
        let sends = chunk.iter().map(|(key, value)| {
            producer.send(
                FutureRecord::to(TOPIC).key(key).payload(value),
                Duration::from_secs(60),
            )
        });
        for sent in futures::future::join_all(sends).await {
            sent.map_err(|(e, _)| anyhow::anyhow!("produce failed: {e}"))?;
        }
    }
    Ok(())
}

/// A fresh cluster holding a produced backlog, the FCM simulator (20 ms) and a host config for
/// both, without dedup: what both scenarios start a host on.
struct Backlog {
    /// Kept alive for the host's run.
    _cluster: EmbeddedKafka,
    fixture: FcmFixture,
    config: switchboard::Config,
    partitions: i32,
}

impl Backlog {
    async fn produce(records: Vec<(String, Vec<u8>)>, group: &str) -> anyhow::Result<Self> {
        let bytes: usize = records.iter().map(|(_, v)| v.len()).sum();
        // The mock cluster keeps about 5 MiB per partition: spread the backlog so none is
        // dropped.
        let partitions = ((bytes >> 20) as i32 / 2).max(12);
        // With every topic the host reads and writes: the mock cluster cannot create them.
        let cluster = EmbeddedKafka::start(1, &cluster_topics(&[TOPIC]), partitions)?;
        let brokers = cluster.bootstrap_servers().to_string();
        send_all(&brokers, records).await?;
        crate::lanes::check_nothing_dropped(&brokers, TOPIC, partitions)?;
        let fixture = FcmFixture::start(|sim| {
            sim.faults.latency = vendorsim::Latency::fixed(Duration::from_millis(20))
        })
        .await;
        let mut config = fixture.host_config(&brokers, TOPIC, group);
        config.dedup.backend = switchboard::config::DedupBackend::Off;
        Ok(Self {
            _cluster: cluster,
            fixture,
            config,
            partitions,
        })
    }
}

/// What one host run saw.
struct Run {
    delivered: u64,
    duplicates: u64,
    dead_lettered: u64,
    /// Valid deliveries per second, from the host's start to the last valid delivery.
    valid_rate_per_s: f64,
}

/// Starts a host on a fresh cluster holding `records`, and waits for `valid` deliveries and
/// `dead` DLQ writes.
async fn run_host(
    records: Vec<(String, Vec<u8>)>,
    valid: u64,
    dead: u64,
    timeout: Duration,
) -> anyhow::Result<Run> {
    let backlog = Backlog::produce(records, "lab-poison").await?;
    let Backlog {
        fixture, config, ..
    } = &backlog;
    let config = config.clone();
    let started = Instant::now();
    let host = switchboard::start(config).await?;
    let stats = fixture.sim.stats.clone();
    let counters = host.counters.clone();
    let deadline = started + timeout;
    let mut last_valid = started;
    loop {
        let delivered = stats.snapshot().delivered;
        if delivered >= valid && last_valid == started {
            last_valid = Instant::now();
        }
        if delivered >= valid && counters.snapshot().dead_lettered >= dead {
            break;
        }
        if Instant::now() > deadline {
            eprintln!(
                "[poison] timed out: {:?} {:?}",
                stats.snapshot(),
                counters.snapshot()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    host.stop().await?;
    let snapshot = stats.snapshot();
    Ok(Run {
        delivered: snapshot.delivered,
        duplicates: snapshot.duplicates,
        dead_lettered: counters.snapshot().dead_lettered,
        valid_rate_per_s: valid as f64 / (last_valid - started).as_secs_f64().max(1e-3),
    })
}

/// `poison`: a clean run, then the same valid requests with hostile records interleaved.
pub async fn poison(valid: u64, rounds: u64) -> anyhow::Result<serde_json::Value> {
    let limit = switchboard::Config::default().dispatch.max_record_bytes;
    let clean: Vec<(String, Vec<u8>)> = (0..valid)
        .map(|i| (format!("k{i}"), valid_bytes(i)))
        .collect();
    eprintln!("[poison] clean run: {valid} valid requests");
    let clean = run_host(clean, valid, 0, Duration::from_secs(300)).await?;

    let kinds = hostile_kinds(limit);
    let mut records = Vec::new();
    let mut hostile = 0u64;
    let every = (valid / (rounds * kinds.len() as u64)).max(1);
    let mut next_kind = 0usize;
    for i in 0..valid {
        records.push((format!("k{i}"), valid_bytes(i)));
        if i % every == 0 && hostile < rounds * kinds.len() as u64 {
            let (kind, value) = &kinds[next_kind % kinds.len()];
            records.push((format!("hostile-{kind}-{hostile}"), value.clone()));
            next_kind += 1;
            hostile += 1;
        }
    }
    eprintln!("[poison] hostile run: {valid} valid requests, {hostile} hostile records");
    let poisoned = run_host(records, valid, hostile, Duration::from_secs(300)).await?;
    Ok(json!({
        "scenario": "poison",
        "valid": valid,
        "delivered": poisoned.delivered,
        "lost": valid.saturating_sub(poisoned.delivered),
        "duplicates": poisoned.duplicates,
        "hostile": hostile,
        "hostile_kinds": kinds.len(),
        "dead_lettered": poisoned.dead_lettered,
        "clean_rate_per_s": round(clean.valid_rate_per_s),
        "rate_per_s": round(poisoned.valid_rate_per_s),
        "rate_ratio_vs_clean": round3(poisoned.valid_rate_per_s / clean.valid_rate_per_s),
        "clean_delivered": clean.delivered,
    }))
}

fn valid_bytes(i: u64) -> Vec<u8> {
    valid(i).into_bytes()
}

/// `expired-backlog`: `expired` requests already past their `expires_at`, then `valid` ones.
pub async fn expired_backlog(
    expired_count: u64,
    valid_count: u64,
) -> anyhow::Result<serde_json::Value> {
    let mut records: Vec<(String, Vec<u8>)> = (0..expired_count)
        .map(|i| (format!("old{i}"), expired(i).into_bytes()))
        .collect();
    records.extend((0..valid_count).map(|i| (format!("k{i}"), valid_bytes(i))));
    let backlog = Backlog::produce(records, "lab-expired").await?;
    eprintln!(
        "[expired-backlog] {expired_count} expired, then {valid_count} valid, on {} partitions",
        backlog.partitions
    );
    let Backlog {
        fixture, config, ..
    } = &backlog;
    let config = config.clone();
    let started = Instant::now();
    let host = switchboard::start(config).await?;
    let (stats, counters) = (fixture.sim.stats.clone(), host.counters.clone());
    let deadline = started + Duration::from_secs(600);
    let (mut dead_done, mut valid_done) = (None, None);
    while (dead_done.is_none() || valid_done.is_none()) && Instant::now() < deadline {
        if dead_done.is_none() && counters.snapshot().dead_lettered >= expired_count {
            dead_done = Some(started.elapsed());
        }
        if valid_done.is_none() && stats.snapshot().delivered >= valid_count {
            valid_done = Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    host.stop().await?;
    let dead_lettered = counters.snapshot().dead_lettered;
    let delivered = stats.snapshot().delivered;
    let dead_s = dead_done.unwrap_or_else(|| started.elapsed()).as_secs_f64();
    Ok(json!({
        "scenario": "expired-backlog",
        "expired": expired_count,
        "valid": valid_count,
        "dead_lettered": dead_lettered,
        "dead_letter_rate_per_s": round(dead_lettered as f64 / dead_s.max(1e-3)),
        "delivered": delivered,
        "lost": valid_count.saturating_sub(delivered),
        "valid_delivered_after_s": valid_done.map(|d| round3(d.as_secs_f64())),
    }))
}

/// Delivers `records` requests of `recipients` recipients and `content_bytes` of content each,
/// on a fresh cluster and host, and measures the process's peak memory meanwhile. Run as
/// `fanout-pass` in a process of its own: the peak of a process that already ran a host says
/// little about the next one.
pub async fn fanout_pass(
    records: u64,
    recipients: u64,
    content_bytes: usize,
) -> anyhow::Result<serde_json::Value> {
    let body = "f".repeat(content_bytes);
    let backlog_records: Vec<(String, Vec<u8>)> = (0..records)
        .map(|i| {
            let to: Vec<_> = (0..recipients)
                .map(|r| json!({"to": format!("fan-{i}-{r}")}))
                .collect();
            let request = json!({
                "id": format!("fan-{i}"),
                "channel": "push-android",
                "priority": "batch",
                "recipients": to,
                "content": {"title": "t", "body": body},
            });
            (format!("fan-{i}"), request.to_string().into_bytes())
        })
        .collect();
    drop(body);
    let backlog = Backlog::produce(backlog_records, "lab-fanout").await?;
    let Backlog {
        fixture, config, ..
    } = &backlog;
    let expected = records * recipients;
    eprintln!("[fanout] {records} requests × {recipients} recipients × {content_bytes} bytes");
    let rss_before = crate::sandbox::rss_mib();
    let started = Instant::now();
    let host = switchboard::start(config.clone()).await?;
    let counters = host.counters.clone();
    let settled = || {
        let c = counters.snapshot();
        c.deliveries_delivered
            + c.deliveries_rejected
            + c.deliveries_invalid_recipient
            + c.deliveries_failed
    };
    let deadline = started + Duration::from_secs(600);
    let mut reported = Instant::now();
    while settled() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if reported.elapsed() >= Duration::from_secs(5) {
            eprintln!("[fanout] {} of {expected} settled", settled());
            reported = Instant::now();
        }
    }
    let took = started.elapsed();
    let peak_growth_mb = crate::sandbox::peak_rss_mib().saturating_sub(rss_before);
    host.stop().await?;
    Ok(json!({
        "delivered": fixture.sim.stats.snapshot().delivered,
        "rejected": counters.snapshot().deliveries_rejected,
        "took_s": round3(took.as_secs_f64()),
        "peak_rss_growth_mb": peak_growth_mb,
    }))
}

/// Runs `fanout`: `records` requests of 1,000 recipients with `content_bytes` of content each,
/// after a baseline pass of the same requests with a 10-byte content, in the same process.
/// With one content shared per request the two peaks are close; with one copy per recipient
/// the second would grow by up to the content of every delivery in flight.
///
/// The content stays under FCM's 4,096-byte message limit, so every delivery is accepted (a
/// larger one is rejected, and each rejection writes its own copy to the DLQ).
pub async fn fanout(records: u64, content_bytes: usize) -> anyhow::Result<serde_json::Value> {
    const RECIPIENTS: u64 = 1000;
    let baseline = fanout_in_child(records, RECIPIENTS, 10).await?;
    let full = fanout_in_child(records, RECIPIENTS, content_bytes).await?;
    let expected = records * RECIPIENTS;
    let copies_mb = (content_bytes as f64) * expected as f64 / f64::from(1 << 20);
    let growth = |pass: &serde_json::Value| pass["peak_rss_growth_mb"].as_i64().unwrap_or(0);
    let delivered = full["delivered"].as_u64().unwrap_or(0);
    Ok(json!({
        "scenario": "fanout",
        "records": records,
        "recipients_per_record": RECIPIENTS,
        "content_bytes": content_bytes,
        "delivered": delivered,
        "rejected": full["rejected"],
        "lost": expected.saturating_sub(delivered),
        "took_s": full["took_s"],
        "peak_rss_growth_mb": growth(&full),
        "baseline_content_bytes": 10,
        "baseline_delivered": baseline["delivered"],
        "baseline_took_s": baseline["took_s"],
        "baseline_peak_rss_growth_mb": growth(&baseline),
        "content_cost_mb": growth(&full) - growth(&baseline),
        // The backlog's content with one copy per recipient, for scale.
        "content_copied_per_recipient_mb": round(copies_mb),
    }))
}

/// Runs one `fanout-pass` in a child process of this lab and returns its last line.
async fn fanout_in_child(
    records: u64,
    recipients: u64,
    content_bytes: usize,
) -> anyhow::Result<serde_json::Value> {
    let output = tokio::process::Command::new(std::env::current_exe()?)
        .args(["fanout-pass", "--records", &records.to_string()])
        .args(["--recipients", &recipients.to_string()])
        .args(["--content-bytes", &content_bytes.to_string()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .await?;
    anyhow::ensure!(
        output.status.success(),
        "fanout-pass failed: {}",
        output.status
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    Ok(serde_json::from_str(last)?)
}

fn round(x: f64) -> f64 {
    x.round()
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
