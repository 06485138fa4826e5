//! `rebalance`: three host **processes** in one consumer group, under load. Host B joins while
//! A delivers, then C joins, then A leaves and then B leaves (each gracefully, by SIGTERM),
//! and C delivers the rest; the simulator counts what arrived. The scenario runs twice, once
//! with each host's own embedded dedup store and once with the Redis store all three share, and
//! reports for each the records read again by a partition's next owner and the sends the vendor
//! saw twice.
//!
//! A rebalance drains the revoked partitions' in-flight records and commits before giving them
//! up, so a graceful hand-over should re-read nothing; what is re-read anyway (a commit the
//! broker did not take, a record fetched but not yet started) is sent twice with per-host dedup
//! and skipped as done with the shared store.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;
use switchboard::demo::{demo_envelope, produce};
use switchboard::settle::Outbox;
use switchboard_integration_tests::FcmFixture;

use crate::broker::{BrokerKind, LabKafka};
use crate::crash::{
    DLQ_TOPIC, EMBEDDED_DEDUP, HostProcess, HostTables, PARTITIONS, RETRY_TOPIC, TOPIC,
    dlq_records, fcm_component, host_binary, toml_string, write_host_config,
};

const GROUP: &str = "switchboard-lab-rebalance";
const HOSTS: [&str; 3] = ["a", "b", "c"];

/// Which dedup store the hosts use; `both` runs the scenario once with each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DedupChoice {
    Embedded,
    Redis,
    Both,
}

/// What the scenario runs.
pub struct RebalanceOptions {
    /// Requests to produce, one recipient each.
    pub messages: u64,
    /// Where `fcm.wasm` is.
    pub plugin_dir: PathBuf,
    /// Mean simulated vendor latency; the jitter is half of it.
    pub vendor_latency_ms: u64,
    /// Requests produced per second. Paced rather than all at once, so the run lasts long enough
    /// for every join and leave to happen while records are in flight.
    pub rate: u64,
    /// The Redis the hosts share in the shared-dedup run (from `--redis` or
    /// SWITCHBOARD_TEST_REDIS).
    pub redis: Option<String>,
    /// Give up waiting for the last request after this long.
    pub timeout: Duration,
    /// The mock cluster or a real broker.
    pub broker: BrokerKind,
    /// The real broker's address, when not the default.
    pub brokers: Option<String>,
    /// Per-host embedded dedup, shared Redis dedup, or one run of each.
    pub dedup: DedupChoice,
}

/// Produces `total` demo requests at `rate` a second, one slice a second. Each slice is its own
/// task: `produce` sets up a producer per call, and overlapping the calls keeps that set-up time
/// from slowing the rate.
async fn produce_paced(
    brokers: String,
    topic: String,
    total: u64,
    rate: u64,
) -> anyhow::Result<()> {
    let slice = rate.max(1);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut slices = Vec::new();
    let mut from = 0;
    while from < total {
        tick.tick().await;
        let count = slice.min(total - from);
        let (brokers, topic) = (brokers.clone(), topic.clone());
        slices.push(tokio::spawn(async move {
            produce(&brokers, &topic, count, |i| {
                let n = from + i;
                (format!("device-{n}"), demo_envelope(n))
            })
            .await
        }));
        from += count;
    }
    for slice in slices {
        slice.await.context("producer task panicked")??;
    }
    Ok(())
}

/// Fails with a message naming SWITCHBOARD_TEST_REDIS when Redis does not answer PING.
async fn check_redis(url: &str) -> anyhow::Result<()> {
    let hint = || {
        format!(
            "Redis at {url} is not reachable: start it with `make services` (which sets SWITCHBOARD_TEST_REDIS=redis://127.0.0.1:6390) or point SWITCHBOARD_TEST_REDIS / --redis at one"
        )
    };
    let ping = async {
        let client = redis::Client::open(url)?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map(|_| ())
    };
    tokio::time::timeout(Duration::from_secs(5), ping)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within 5 s"))
        .and_then(|r| r.map_err(anyhow::Error::from))
        .with_context(hint)
}

/// Deletes the keys this run wrote under `prefix`.
pub(crate) async fn remove_prefix(url: &str, prefix: &str) -> anyhow::Result<()> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut cursor: u64 = 0;
    loop {
        let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(10_000)
            .query_async(&mut conn)
            .await?;
        if !found.is_empty() {
            let () = redis::cmd("UNLINK")
                .arg(&found)
                .query_async(&mut conn)
                .await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// One membership change, made once the simulator has seen `at` of the requests delivered.
#[derive(Clone, Copy, Debug)]
enum Step {
    Join(usize),
    Leave(usize),
}

/// B joins, C joins, A leaves, B leaves: every host both takes partitions over and (but C) hands
/// them on, and each change waits for the one before it to settle.
const SCHEDULE: [(f64, Step); 4] = [
    (1.0 / 6.0, Step::Join(1)),
    (2.0 / 6.0, Step::Join(2)),
    (3.0 / 6.0, Step::Leave(0)),
    (4.0 / 6.0, Step::Leave(1)),
];

/// A loopback port nobody listens on now, for a host's admin API.
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// One of the three hosts: its process while it runs, and what its `/metrics` last said.
struct Member {
    name: &'static str,
    config: PathBuf,
    log: PathBuf,
    metrics_url: String,
    process: Option<HostProcess>,
    /// `switchboard_records_consumed_total` at the last scrape that answered.
    consumed: u64,
    stopping: bool,
    stopped: bool,
}

impl Member {
    /// Reads `switchboard_records_consumed_total`; keeps the last value when the host does not
    /// answer (starting, or stopping with its admin API already closed).
    async fn scrape(&mut self, http: &reqwest::Client) {
        let Ok(response) = http.get(&self.metrics_url).send().await else {
            return;
        };
        let Ok(text) = response.text().await else {
            return;
        };
        if let Some(value) = text.lines().find_map(|line| {
            line.strip_prefix("switchboard_records_consumed_total ")
                .and_then(|v| v.trim().parse::<u64>().ok())
        }) {
            self.consumed = value;
        }
    }

    fn running(&self) -> bool {
        self.process.is_some() && !self.stopping
    }

    /// Checks a running host is alive, and notes a stopping one that has exited.
    fn check(&mut self) -> anyhow::Result<()> {
        let Some(process) = self.process.as_mut() else {
            return Ok(());
        };
        if self.stopping {
            if process
                .stopped()
                .with_context(|| format!("host {}", self.name))?
            {
                self.process = None;
                self.stopped = true;
            }
        } else {
            process
                .check_alive()
                .with_context(|| format!("host {}", self.name))?;
        }
        Ok(())
    }
}

/// The outcome of one run.
struct RunFigures {
    delivered_unique: u64,
    duplicate_sends: u64,
    dlq: u64,
    consumed: Vec<u64>,
    steps_done: usize,
    elapsed: Duration,
}

impl RunFigures {
    fn to_json(&self, messages: u64) -> serde_json::Value {
        let consumed_total: u64 = self.consumed.iter().sum();
        // Signed: a scrape that missed a host's last records shows as a negative figure rather
        // than as "nothing read again". No faults are injected, so no record is a retry.
        let redelivered = consumed_total as i64 - messages as i64;
        json!({
            "delivered_unique": self.delivered_unique,
            "lost": messages.saturating_sub(self.delivered_unique + self.dlq),
            "duplicate_sends": self.duplicate_sends,
            "redelivered_records": redelivered,
            "records_consumed": self.consumed,
            "membership_changes": self.steps_done,
            "dlq": self.dlq,
            "elapsed_ms": self.elapsed.as_millis() as u64,
        })
    }
}

/// One run of the schedule with the `[dedup]` table `dedup`.
async fn run_once(
    options: &RebalanceOptions,
    label: &str,
    dedup: &str,
    fcm_wasm: &Path,
    binary: &Path,
) -> anyhow::Result<RunFigures> {
    let messages = options.messages;
    let kafka = LabKafka::start(
        options.broker,
        options.brokers.clone(),
        &format!("rebalance-{label}"),
        &[TOPIC],
        PARTITIONS,
    )
    .await?;
    let brokers = kafka.brokers.clone();
    let latency = Duration::from_millis(options.vendor_latency_ms);
    let fixture = FcmFixture::start(|c| {
        c.faults.latency.mean = latency;
        c.faults.latency.jitter = latency / 2;
    })
    .await;
    let stats = fixture.sim.stats.clone();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let work = std::env::temp_dir().join(format!(
        "switchboard-lab-rebalance-{label}-{}-{nanos}",
        std::process::id()
    ));
    let mut members = Vec::with_capacity(HOSTS.len());
    for name in HOSTS {
        let port = free_port()?;
        let dir = work.join(name);
        let config = write_host_config(
            &dir,
            &kafka,
            &fixture,
            fcm_wasm,
            &HostTables {
                written_by: "rebalance",
                group: GROUP,
                dedup,
                admin_listen: &format!("127.0.0.1:{port}"),
            },
        )?;
        members.push(Member {
            name,
            config,
            log: dir.join("host.log"),
            metrics_url: format!("http://127.0.0.1:{port}/metrics"),
            process: None,
            consumed: 0,
            stopping: false,
            stopped: false,
        });
    }
    eprintln!(
        "[rebalance {label}] kafka at {brokers}, fcm simulator at {}; host logs under {}",
        fixture.sim.url(),
        work.display()
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()?;
    let outbox = Outbox::connect(
        &brokers,
        &kafka.topic(RETRY_TOPIC),
        &kafka.topic(DLQ_TOPIC),
        &Default::default(),
    )?;

    let started = Instant::now();
    members[0].process = Some(HostProcess::spawn(
        binary,
        &members[0].config,
        &members[0].log,
    )?);
    let producing = tokio::spawn(produce_paced(
        brokers.clone(),
        kafka.topic(TOPIC),
        messages,
        options.rate,
    ));

    let mut steps = SCHEDULE.iter().copied().peekable();
    let mut steps_done = 0;
    // The step before the next: the next waits until it has settled (a joined host consumes,
    // a leaving host has exited), so rebalances stay apart.
    let mut settling: Option<Step> = None;
    let mut dlq = 0;
    let mut last_scrape = Instant::now();
    let mut last_dlq_read = Instant::now();
    loop {
        for member in &mut members {
            member.check()?;
        }
        if last_scrape.elapsed() >= Duration::from_millis(500) {
            for member in members.iter_mut().filter(|m| m.process.is_some()) {
                member.scrape(&http).await;
            }
            last_scrape = Instant::now();
        }
        let delivered = stats.snapshot().delivered;
        if delivered >= messages {
            break;
        }
        if last_dlq_read.elapsed() >= Duration::from_secs(2) {
            dlq = dlq_records(&kafka, &outbox).await?;
            let s = stats.snapshot();
            eprintln!(
                "[rebalance {label}] delivered {}/{messages}, duplicates {}, dlq {dlq}, consumed {:?}",
                s.delivered,
                s.duplicates,
                members.iter().map(|m| m.consumed).collect::<Vec<_>>()
            );
            if s.delivered + dlq >= messages {
                break;
            }
            last_dlq_read = Instant::now();
        }
        let settled = match settling {
            None => true,
            Some(Step::Join(i)) => members[i].consumed > 0,
            Some(Step::Leave(i)) => members[i].stopped,
        };
        if settled
            && let Some(&(at, step)) = steps.peek()
            && delivered as f64 >= at * messages as f64
        {
            steps.next();
            steps_done += 1;
            let member = match step {
                Step::Join(i) | Step::Leave(i) => &mut members[i],
            };
            match step {
                Step::Join(_) => {
                    eprintln!(
                        "[rebalance {label}] delivered {delivered}: host {} joins",
                        member.name
                    );
                    member.process = Some(HostProcess::spawn(binary, &member.config, &member.log)?);
                }
                Step::Leave(_) => {
                    eprintln!(
                        "[rebalance {label}] delivered {delivered}: host {} leaves",
                        member.name
                    );
                    // The last count before its admin API closes.
                    member.scrape(&http).await;
                    if let Some(process) = member.process.as_mut() {
                        process.request_stop()?;
                    }
                    member.stopping = true;
                }
            }
            settling = Some(step);
        }
        if started.elapsed() > options.timeout {
            eprintln!(
                "[rebalance {label}] timed out after {:?}: {delivered}/{messages} delivered, dlq {dlq}",
                options.timeout
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    producing.await.context("producer task panicked")??;
    for member in members.iter_mut().filter(|m| m.running()) {
        member.scrape(&http).await;
        if let Some(process) = member.process.as_mut() {
            process.request_stop()?;
        }
        member.stopping = true;
    }
    let stop_deadline = Instant::now() + Duration::from_secs(60);
    while members.iter().any(|m| m.process.is_some()) {
        for member in &mut members {
            member.check()?;
        }
        anyhow::ensure!(
            Instant::now() < stop_deadline,
            "a host did not stop within 60 s of SIGTERM; see the logs under {}",
            work.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dlq = dlq_records(&kafka, &outbox).await?.max(dlq);
    let seen = stats.snapshot();
    let figures = RunFigures {
        delivered_unique: seen.delivered,
        duplicate_sends: seen.duplicates,
        dlq,
        consumed: members.iter().map(|m| m.consumed).collect(),
        steps_done,
        elapsed,
    };
    if seen.delivered + dlq >= messages {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        eprintln!(
            "[rebalance {label}] kept {} (host logs, configs, dedup stores) for a look",
            work.display()
        );
    }
    drop(outbox);
    drop(kafka);
    Ok(figures)
}

pub async fn run(options: RebalanceOptions) -> anyhow::Result<serde_json::Value> {
    let fcm_wasm = fcm_component(&options.plugin_dir)?;
    let binary = host_binary()?;
    let (embedded, shared) = match options.dedup {
        DedupChoice::Embedded => (true, false),
        DedupChoice::Redis => (false, true),
        DedupChoice::Both => (true, true),
    };
    let mut line = json!({
        "scenario": "rebalance",
        "broker": options.broker.as_str(),
        "hosts": HOSTS.len(),
        "requested": options.messages,
    });
    let mut lost = 0;
    // Redis is checked before any run, so a missing one does not throw away the first run.
    let redis_url = if shared {
        let url = options.redis.clone().context(
            "no Redis given: set SWITCHBOARD_TEST_REDIS (`make services` starts one on redis://127.0.0.1:6390) or pass --redis, or run with --dedup embedded",
        )?;
        check_redis(&url).await?;
        Some(url)
    } else {
        None
    };
    if embedded {
        let figures = run_once(&options, "embedded", EMBEDDED_DEDUP, &fcm_wasm, &binary).await?;
        lost += options
            .messages
            .saturating_sub(figures.delivered_unique + figures.dlq);
        line["embedded_dedup"] = figures.to_json(options.messages);
        line["inflight_bound_per_handover"] = json!(crate::crash::inflight_bound());
    }
    if let Some(redis_url) = redis_url {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let prefix = format!("switchboard-lab:rebalance:{}:{nanos}", std::process::id());
        let dedup = format!(
            "[dedup]\nbackend = \"redis\"\nredis_url = {}\nredis_prefix = {}\n",
            toml_string(&redis_url),
            toml_string(&prefix)
        );
        let figures = run_once(&options, "redis", &dedup, &fcm_wasm, &binary).await;
        if let Err(e) = remove_prefix(&redis_url, &prefix).await {
            eprintln!("[rebalance] could not remove the run's Redis keys under {prefix}: {e:#}");
        }
        let figures = figures?;
        lost += options
            .messages
            .saturating_sub(figures.delivered_unique + figures.dlq);
        line["redis_dedup"] = figures.to_json(options.messages);
    }
    line["lost"] = json!(lost);
    Ok(line)
}
