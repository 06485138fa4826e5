//! `fleet`: host processes in one fleet on a real broker, under load. An operator changes
//! weights and uploads plugin versions through one host's admin API (a different host each
//! time); the lab measures how long until the simulators see the change from every host. Then a
//! host joins late, and the lab measures how long until it is on the fleet's state.
//!
//! Each host delivers to simulators of its own (two FCM vendors, `fcm-x` and `fcm-y`, on one
//! channel), so a simulator's arrivals say which host sent them:
//! - a weight change moves the whole channel from one vendor to the other (100/0 to 0/100):
//!   converged on a host when its new vendor's simulator sees its first delivery;
//! - a plugin swap uploads a new version of the vendor in use: every version has its own
//!   cache, so a new version's first call fetches an access token. Converged on a host when its
//!   simulator sees that token request; the fleet view then confirms every host's active id.
//!
//! Records are produced at a steady rate the whole time: every one must arrive once, over all
//! the simulators (`lost`, `duplicates`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use switchboard::demo::demo_envelope;
use switchboard_integration_tests::{FCM_EMAIL, FCM_PROJECT, FcmFixture, relabelled_component};

use crate::broker::{BrokerKind, LabKafka};
use crate::crash::{HostProcess, fcm_component, host_binary, toml_string};

const TOPIC: &str = "fleet-requests";
const PARTITIONS: i32 = 6;
const TOKEN: &str = "lab-fleet-token";
const CHANNEL: &str = "push-android";
/// How long one change may take to reach every host before the lab counts it unconverged.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(20);

pub struct FleetOptions {
    pub hosts: usize,
    pub rate_per_s: u64,
    pub weight_changes: u32,
    pub plugin_swaps: u32,
    pub plugin_dir: PathBuf,
    pub vendor_latency_ms: u64,
    pub broker: BrokerKind,
    pub brokers: Option<String>,
}

/// One host process and its two simulators.
struct LabHost {
    name: String,
    admin: String,
    process: HostProcess,
    x: FcmFixture,
    y: FcmFixture,
}

impl LabHost {
    fn sim(&self, vendor: &str) -> &FcmFixture {
        if vendor == "fcm-x" { &self.x } else { &self.y }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn plugin_toml(
    dir: &Path,
    name: &str,
    fixture: &FcmFixture,
    wasm: &Path,
) -> anyhow::Result<String> {
    let key = format!("{name}.pem");
    std::fs::write(dir.join(&key), &fixture.account.private_key_pem)?;
    let url = fixture.sim.url();
    Ok(format!(
        r#"[plugins.{name}]
path = {wasm}
allowed_hosts = [{addr}]
max_batch = 100
concurrency = 16
secrets = {{ service_account_key = {{ file = {key} }} }}

[plugins.{name}.config]
project_id = {project}
client_email = {email}
token_uri = {token_uri}
endpoint = {endpoint}

"#,
        wasm = toml_string(&wasm.display().to_string()),
        addr = toml_string(&fixture.sim.addr.to_string()),
        key = toml_string(&key),
        project = toml_string(FCM_PROJECT),
        email = toml_string(FCM_EMAIL),
        token_uri = toml_string(&format!("{url}/token")),
        endpoint = toml_string(&url),
    ))
}

async fn start_host(
    index: usize,
    work: &Path,
    kafka: &LabKafka,
    wasm: &Path,
    latency: Duration,
) -> anyhow::Result<LabHost> {
    let name = format!("host-{index}");
    let dir = work.join(&name);
    std::fs::create_dir_all(&dir)?;
    let tune = |c: &mut vendorsim::fcm::FcmConfig| {
        c.faults.latency.mean = latency;
        c.faults.latency.jitter = latency / 2;
    };
    let x = FcmFixture::start(tune).await;
    let y = FcmFixture::start(tune).await;
    for sim in [&x, &y] {
        sim.sim.stats.log_arrivals("device-");
    }
    let port = free_port()?;
    let text = format!(
        r#"# Written by `switchboard-lab fleet`.
state_dir = "state"

[kafka]
brokers = {brokers}
group_id = {group}
topics = [{topic}]
retry_topic = {retry}
dlq_topic = {dlq}
results_topic = {results}
invalidations_topic = {invalid}
commit_interval_ms = 500
session_timeout_ms = 6000
rebalance_drain_ms = 3000

[dedup]
backend = "embedded"
data_dir = "dedup"

[admin]
listen = "127.0.0.1:{port}"
token = {{ value = {token} }}

[control]
enabled = true
topic = {control}
fleet_topic = {reports}
host_id = {name_toml}
report_interval_ms = 500
host_expiry_s = 5

[channels.{CHANNEL}]
fcm-x = 100
fcm-y = 0

{plugin_x}{plugin_y}"#,
        brokers = toml_string(&kafka.brokers),
        group = toml_string(&kafka.topic("fleet")),
        topic = toml_string(&kafka.topic(TOPIC)),
        retry = toml_string(&kafka.topic("retry")),
        dlq = toml_string(&kafka.topic("dlq")),
        results = toml_string(&kafka.topic("results")),
        invalid = toml_string(&kafka.topic("invalid")),
        token = toml_string(TOKEN),
        control = toml_string(&kafka.topic("control")),
        reports = toml_string(&kafka.topic("fleet-reports")),
        name_toml = toml_string(&name),
        plugin_x = plugin_toml(&dir, "fcm-x", &x, wasm)?,
        plugin_y = plugin_toml(&dir, "fcm-y", &y, wasm)?,
    );
    let config = dir.join("switchboard.toml");
    std::fs::write(&config, text)?;
    let process = HostProcess::spawn(&host_binary()?, &config, &dir.join("host.log"))?;
    Ok(LabHost {
        name,
        admin: format!("http://127.0.0.1:{port}"),
        process,
        x,
        y,
    })
}

async fn call(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Vec<u8>>,
) -> anyhow::Result<Value> {
    let mut request = client.request(method, url).bearer_auth(TOKEN);
    if let Some(body) = body {
        request = request.body(body);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("calling {url}"))?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    anyhow::ensure!(status.is_success(), "{url}: {status} {body}");
    Ok(body)
}

/// The fleet view from `host`, or `None` while it does not answer.
async fn fleet_view(client: &reqwest::Client, host: &str) -> Option<Value> {
    call(
        client,
        reqwest::Method::GET,
        &format!("{host}/v1/fleet"),
        None,
    )
    .await
    .ok()
}

/// Waits until `host`'s fleet view lists `names`, each current.
async fn until_current(
    client: &reqwest::Client,
    host: &str,
    names: &[String],
    timeout: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if let Some(view) = fleet_view(client, host).await {
            let hosts = view["hosts"].as_array().cloned().unwrap_or_default();
            let current = names.iter().all(|name| {
                hosts
                    .iter()
                    .any(|h| h["host"] == json!(name) && h["lagging"] == json!(false))
            });
            if current {
                return Some(started.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// The first arrival at `fixture`'s simulator after `after`.
fn first_arrival_after(fixture: &FcmFixture, after: Instant) -> Option<Instant> {
    fixture
        .sim
        .stats
        .arrivals()
        .into_iter()
        .map(|(_, at)| at)
        .find(|at| *at > after)
}

/// The p-th percentile (0..=100) of `samples`, in ms.
fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

/// Produces demo requests at `rate` a second until `stop`; counts them in `produced`.
async fn produce_steadily(
    brokers: String,
    topic: String,
    rate: u64,
    stop: Arc<AtomicBool>,
    produced: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()?;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let per_tick = (rate / 10).max(1);
    let mut next = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let mut acks = Vec::new();
        for i in next..next + per_tick {
            let (key, value) = (format!("device-{i}"), demo_envelope(i));
            let record = FutureRecord::to(&topic).key(&key).payload(&value);
            acks.push(producer.send_result(record).map_err(|(e, _)| e)?);
        }
        for ack in acks {
            ack.await?.map_err(|(e, _)| e)?;
        }
        next += per_tick;
        produced.store(next, Ordering::Relaxed);
    }
    Ok(())
}

pub async fn run(options: FleetOptions) -> anyhow::Result<Value> {
    let FleetOptions {
        hosts: host_count,
        rate_per_s,
        weight_changes,
        plugin_swaps,
        plugin_dir,
        vendor_latency_ms,
        broker,
        brokers,
    } = options;
    anyhow::ensure!(host_count >= 2, "a fleet needs at least 2 hosts");
    let wasm = fcm_component(&plugin_dir)?;
    let fcm = std::fs::read(&wasm)?;
    let kafka = LabKafka::start(broker, brokers, "fleet", &[TOPIC], PARTITIONS).await?;
    let latency = Duration::from_millis(vendor_latency_ms);
    let work = tempfile::tempdir()?;
    let client = reqwest::Client::new();

    let mut hosts = Vec::new();
    for index in 0..host_count {
        hosts.push(start_host(index, work.path(), &kafka, &wasm, latency).await?);
    }
    let names: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();
    eprintln!(
        "[fleet] {host_count} hosts on {}; work dir {}",
        kafka.brokers,
        work.path().display()
    );
    until_current(&client, &hosts[0].admin, &names, Duration::from_secs(120))
        .await
        .context("the hosts did not all start and report within 120 s (see their host.log)")?;

    let stop = Arc::new(AtomicBool::new(false));
    let produced = Arc::new(AtomicU64::new(0));
    let producing = tokio::spawn(produce_steadily(
        kafka.brokers.clone(),
        kafka.topic(TOPIC),
        rate_per_s,
        stop.clone(),
        produced.clone(),
    ));
    // Every host has partitions and delivers before the first change.
    let warm = Instant::now();
    while !hosts.iter().all(|h| !h.x.sim.stats.arrivals().is_empty()) {
        anyhow::ensure!(
            warm.elapsed() < Duration::from_secs(120),
            "not every host delivered within 120 s of the load starting"
        );
        for host in &mut hosts {
            host.process.check_alive()?;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "[fleet] every host delivers after {:.1} s",
        warm.elapsed().as_secs_f64()
    );

    // Weight changes: the whole channel from one vendor to the other, through host k.
    let mut in_use = "fcm-x";
    let mut weight_samples = Vec::new();
    let mut unconverged = 0;
    for change in 0..weight_changes {
        let to = if in_use == "fcm-x" { "fcm-y" } else { "fcm-x" };
        let body = serde_json::to_vec(&json!({ in_use: 0, to: 100 }))?;
        let via = &hosts[change as usize % hosts.len()];
        let asked = Instant::now();
        call(
            &client,
            reqwest::Method::PUT,
            &format!("{}/v1/channels/{CHANNEL}/weights", via.admin),
            Some(body),
        )
        .await?;
        let answered = asked.elapsed();
        let mut seen: HashMap<usize, Duration> = HashMap::new();
        while seen.len() < hosts.len() && asked.elapsed() < CONVERGE_TIMEOUT {
            for (i, host) in hosts.iter().enumerate() {
                if !seen.contains_key(&i)
                    && let Some(at) = first_arrival_after(host.sim(to), asked)
                {
                    seen.insert(i, at - asked);
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        unconverged += hosts.len() - seen.len();
        let slowest = seen.values().max().copied().unwrap_or(CONVERGE_TIMEOUT);
        eprintln!(
            "[fleet] weights → {to} via {}: answered in {:.0} ms, every host's {to} simulator saw it within {:.0} ms",
            via.name,
            ms(answered),
            ms(slowest)
        );
        weight_samples.extend(seen.values().map(|d| ms(*d)));
        in_use = to;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // Plugin swaps: a new version of the vendor in use, uploaded through host k.
    let mut swap_samples = Vec::new();
    let mut swap_unconverged = 0;
    let mut last_id = String::new();
    let mut confirmed = true;
    let mut view_samples = Vec::new();
    for swap in 0..plugin_swaps {
        let bytes = relabelled_component(&fcm, &format!("lab-fleet-{swap}-{}", std::process::id()));
        let via = &hosts[swap as usize % hosts.len()];
        let tokens_before: Vec<u64> = hosts
            .iter()
            .map(|h| h.sim(in_use).sim.stats.snapshot().token_requests)
            .collect();
        let asked = Instant::now();
        let reply = call(
            &client,
            reqwest::Method::POST,
            &format!("{}/v1/plugins/{in_use}", via.admin),
            Some(bytes),
        )
        .await?;
        let answered = asked.elapsed();
        last_id = reply["id"].as_str().unwrap_or_default().to_string();
        let mut seen: HashMap<usize, Duration> = HashMap::new();
        while seen.len() < hosts.len() && asked.elapsed() < CONVERGE_TIMEOUT {
            for (i, host) in hosts.iter().enumerate() {
                if !seen.contains_key(&i)
                    && host.sim(in_use).sim.stats.snapshot().token_requests > tokens_before[i]
                {
                    seen.insert(i, asked.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        swap_unconverged += hosts.len() - seen.len();
        let slowest = seen.values().max().copied().unwrap_or(CONVERGE_TIMEOUT);
        // The fleet view names the version every host runs, once each host reported since
        // (a report every 500 ms).
        let mut every_host_on_it = false;
        while !every_host_on_it && asked.elapsed() < CONVERGE_TIMEOUT {
            let view = fleet_view(&client, &hosts[0].admin)
                .await
                .unwrap_or(Value::Null);
            every_host_on_it = view["hosts"].as_array().is_some_and(|listed| {
                listed.len() == hosts.len()
                    && listed.iter().all(|h| {
                        h["plugins"].as_array().is_some_and(|ps| {
                            ps.iter().any(|p| {
                                p["name"] == json!(in_use) && p["active"] == json!(last_id)
                            })
                        })
                    })
            });
            if !every_host_on_it {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let view_ms = ms(asked.elapsed());
        view_samples.push(view_ms);
        confirmed &= every_host_on_it;
        eprintln!(
            "[fleet] {in_use} version {last_id} via {}: answered in {:.0} ms, every host's first call on it within {:.0} ms; every host's report named it after {view_ms:.0} ms: {every_host_on_it}",
            via.name,
            ms(answered),
            ms(slowest)
        );
        swap_samples.extend(seen.values().map(|d| ms(*d)));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // A host that joins after every change.
    let joined_at = Instant::now();
    let late = start_host(host_count, work.path(), &kafka, &wasm, latency).await?;
    let mut all_names = names.clone();
    all_names.push(late.name.clone());
    let late_converged = until_current(
        &client,
        &hosts[0].admin,
        &all_names,
        Duration::from_secs(120),
    )
    .await
    .map(|_| joined_at.elapsed());
    let late_view = fleet_view(&client, &late.admin)
        .await
        .unwrap_or(Value::Null);
    let late_on_version = late_view["hosts"].as_array().is_some_and(|listed| {
        listed.iter().any(|h| {
            h["this_host"] == json!(true)
                && h["plugins"].as_array().is_some_and(|ps| {
                    ps.iter().any(|p| {
                        p["name"] == json!(in_use)
                            && (last_id.is_empty() || p["active"] == json!(last_id))
                    })
                })
        })
    });
    let mut late_first_delivery = None;
    while late_first_delivery.is_none() && joined_at.elapsed() < Duration::from_secs(120) {
        late_first_delivery =
            first_arrival_after(late.sim(in_use), joined_at).map(|at| at - joined_at);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stale_vendor = if in_use == "fcm-x" { "fcm-y" } else { "fcm-x" };
    let late_stale = late.sim(stale_vendor).sim.stats.arrivals().len();
    eprintln!(
        "[fleet] late joiner current after {:?}, first delivery after {:?}, on the fleet's version: {late_on_version}, deliveries to the drained vendor: {late_stale}",
        late_converged, late_first_delivery
    );
    hosts.push(late);

    // Let the load settle, then stop it and wait for every record.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    producing.await??;
    let produced = produced.load(Ordering::Relaxed);
    let count = |hosts: &[LabHost]| {
        let mut unique = std::collections::HashSet::new();
        let mut arrivals = 0u64;
        let mut sim_duplicates = 0u64;
        for host in hosts {
            for sim in [&host.x, &host.y] {
                let stats = &sim.sim.stats;
                for (recipient, _) in stats.arrivals() {
                    unique.insert(recipient);
                    arrivals += 1;
                }
                sim_duplicates += stats.snapshot().duplicates;
            }
        }
        (
            unique.len() as u64,
            arrivals - unique.len() as u64 + sim_duplicates,
        )
    };
    let drain = Instant::now();
    while count(&hosts).0 < produced && drain.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (delivered, duplicates) = count(&hosts);
    for host in hosts {
        host.process.terminate(Duration::from_secs(30)).await?;
    }
    Ok(json!({
        "scenario": "fleet",
        "broker": broker.as_str(),
        "hosts": host_count,
        "rate_per_s": rate_per_s,
        "vendor_latency_ms": vendor_latency_ms,
        "weight_changes": weight_changes,
        "weight_change_converged_ms_p50": percentile(&weight_samples, 50.0),
        "weight_change_converged_ms_p99": percentile(&weight_samples, 99.0),
        "weight_change_unconverged": unconverged,
        "plugin_swaps": plugin_swaps,
        "plugin_swap_converged_ms_p50": percentile(&swap_samples, 50.0),
        "plugin_swap_converged_ms_p99": percentile(&swap_samples, 99.0),
        "plugin_swap_unconverged": swap_unconverged,
        "plugin_swap_confirmed_in_fleet_view": confirmed,
        "plugin_swap_fleet_view_ms_p99": percentile(&view_samples, 99.0),
        "late_joiner_converged_ms": late_converged.map(ms),
        "late_joiner_first_delivery_ms": late_first_delivery.map(ms),
        "late_joiner_on_fleet_version": late_on_version,
        "late_joiner_deliveries_to_drained_vendor": late_stale,
        "produced": produced,
        "delivered": delivered,
        "lost": produced.saturating_sub(delivered),
        "duplicates": duplicates,
    }))
}
