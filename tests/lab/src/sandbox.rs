//! `sandbox`: hostile plugins against the runtime while a well-behaved neighbour carries steady
//! traffic. The neighbour is the FCM plugin against the FCM simulator, called at a fixed rate
//! from its own task, first alone (the baseline) and then while every hostile case runs in
//! turn on the same runtime. Each case must be contained: the hostile call fails with a clear
//! outcome and a counted metric, and the same plugin's next good call works.
//!
//! Neighbour latency is measured twice: per call (from `deliver` to its outcome), and from each
//! call's scheduled start, so that a stall delaying the sending of calls counts against a
//! figure instead of hiding (the second includes the timer's own lateness, about a
//! millisecond).
//!
//! The slow and echoing peer the outbound cases need is a few lines of raw HTTP/1.1 in this
//! file (`/echo`, `/trickle`, `/stall`, as `vendorsim::slowloris` answers them), which keeps
//! the lab's dependencies as they are.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde_json::json;
use switchboard::config::{PluginBounds, RuntimeConfig};
use switchboard::contract::Outcome;
use switchboard::plugin::{CallError, LoadError, LoadedPlugin, PluginRuntime};
use switchboard_integration_tests::{FcmFixture, LoadOptions, delivery, load};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The deadline every hostile plugin gets.
const HOSTILE_TIMEOUT: Duration = Duration::from_millis(500);
/// How late past its deadline a hostile call may end and still count as stopped at it.
const SLACK: Duration = Duration::from_millis(1500);
/// The memory cap of hostile plugins, and the pool's per-instance ceiling (room for the
/// flood case's two million outcomes).
const HOSTILE_MEMORY_MB: usize = 64;
const POOL_MEMORY_BYTES: usize = 256 << 20;

/// What the scenario runs.
pub struct SandboxOptions {
    /// Where `fcm.wasm` is.
    pub plugin_dir: PathBuf,
    /// Where `misbehave.wasm`, `missing_deliver.wasm` and `extra_import.wasm` are.
    pub guest_dir: PathBuf,
    /// Neighbour calls per second (one delivery each).
    pub rate: u64,
    /// Seconds of neighbour traffic alone, before the hostile cases.
    pub baseline_s: u64,
    /// Times the whole list of hostile cases runs.
    pub rounds: u32,
    /// The FCM simulator's response time.
    pub vendor_latency_ms: u64,
}

/// Runs the scenario and returns its JSON line.
pub async fn run(options: SandboxOptions) -> anyhow::Result<serde_json::Value> {
    let rt = PluginRuntime::new(&RuntimeConfig::default(), POOL_MEMORY_BYTES)?;
    let fixture = FcmFixture::start(|config| {
        config.faults.latency.mean = Duration::from_millis(options.vendor_latency_ms);
    })
    .await;
    let fcm_path = options.plugin_dir.join("fcm.wasm");
    let neighbour = Arc::new(
        load(&rt, "fcm", &fcm_path, fixture.load_options())
            .await
            .with_context(|| format!("loading {}", fcm_path.display()))?,
    );
    let peer = SlowPeer::start().await?;
    let hostile = HostilePlugins::load(&rt, &options.guest_dir, &peer).await?;
    let outbound = OutboundCases::start(&rt, &options.guest_dir).await?;

    // Warm-up: the token, the connection pool, the instance pool's first slots.
    let warm = Traffic::run(
        &neighbour,
        options.rate,
        "warm",
        Stop::after(Duration::from_secs(1)),
    )
    .await?;

    eprintln!(
        "[sandbox] baseline: the neighbour alone, {} calls/s for {} s",
        options.rate, options.baseline_s
    );
    let baseline = Traffic::run(
        &neighbour,
        options.rate,
        "base",
        Stop::after(Duration::from_secs(options.baseline_s)),
    )
    .await?;

    eprintln!(
        "[sandbox] hostile cases, {} round(s), with the neighbour",
        options.rounds
    );
    let stop = Stop::flag();
    let traffic = tokio::spawn(Traffic::run(
        &neighbour,
        options.rate,
        "hostile",
        stop.clone(),
    ));
    let peak_before = peak_rss_mib();
    let mut verdicts: Vec<(&'static str, bool)> = Vec::new();
    for round in 1..=options.rounds {
        let mut results = hostile.run_all(&rt, &options.guest_dir, &peer).await;
        results.extend(outbound.run_all(&rt, &options.guest_dir).await);
        for (name, contained, detail) in results {
            eprintln!(
                "[sandbox] round {round} {name}: {} — {detail}",
                if contained {
                    "contained"
                } else {
                    "NOT CONTAINED"
                }
            );
            match verdicts.iter_mut().find(|(n, _)| *n == name) {
                Some((_, all)) => *all &= contained,
                None => verdicts.push((name, contained)),
            }
        }
    }
    // A last stretch of neighbour traffic after the cases, so the figure includes recovery.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.set();
    let under_attack = traffic.await??;
    let peak_growth = peak_rss_mib().saturating_sub(peak_before);

    // Alive: the neighbour still delivers, a new plugin still loads and runs, and the vendor
    // counted exactly the neighbour's deliveries, none twice.
    let after = neighbour
        .deliver(&[delivery("after", "device-after", FCM_CONTENT)])
        .await;
    let fresh = load(
        &rt,
        "fresh",
        &options.guest_dir.join("misbehave.wasm"),
        LoadOptions::default(),
    )
    .await?
    .deliver(&[delivery("fresh", "ok", "{}")])
    .await;
    let stats = fixture.sim.stats.snapshot();
    let delivered = warm.delivered + baseline.delivered + under_attack.delivered + 1;
    let host_alive = matches!(&after.as_deref(), Ok([Outcome::Delivered(_)]))
        && matches!(&fresh.as_deref(), Ok([Outcome::Delivered(_)]))
        && stats.duplicates == 0
        && stats.delivered == delivered;

    let not_contained: Vec<&str> = verdicts
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(name, _)| *name)
        .collect();
    let ms = |us: u64| (us as f64 / 10.0).round() / 100.0;
    Ok(json!({
        "scenario": "sandbox",
        "cases": verdicts.len(),
        "contained": verdicts.iter().filter(|(_, ok)| *ok).count(),
        "host_alive": host_alive,
        "neighbour_p99_ms": ms(under_attack.latency_us.value_at_quantile(0.99)),
        "neighbour_baseline_p99_ms": ms(baseline.latency_us.value_at_quantile(0.99)),
        "neighbour_lost": under_attack.lost + baseline.lost,
        "neighbour_p50_ms": ms(under_attack.latency_us.value_at_quantile(0.5)),
        "neighbour_baseline_p50_ms": ms(baseline.latency_us.value_at_quantile(0.5)),
        "neighbour_max_ms": ms(under_attack.latency_us.max()),
        "neighbour_from_schedule_p99_ms": ms(under_attack.scheduled_us.value_at_quantile(0.99)),
        "neighbour_baseline_from_schedule_p99_ms": ms(baseline.scheduled_us.value_at_quantile(0.99)),
        "neighbour_calls": under_attack.calls,
        "neighbour_baseline_calls": baseline.calls,
        "rate": options.rate,
        "rounds": options.rounds,
        "host_peak_rss_growth_mb": peak_growth,
        "not_contained": not_contained,
    }))
}

const FCM_CONTENT: &str = r#"{"title":"t","body":"b"}"#;

/// When a stretch of traffic ends.
#[derive(Clone)]
enum Stop {
    At(Instant),
    Flag(Arc<AtomicBool>),
}

impl Stop {
    fn after(duration: Duration) -> Self {
        Stop::At(Instant::now() + duration)
    }

    fn flag() -> Self {
        Stop::Flag(Arc::new(AtomicBool::new(false)))
    }

    fn set(&self) {
        if let Stop::Flag(flag) = self {
            flag.store(true, Ordering::Release);
        }
    }

    fn reached(&self) -> bool {
        match self {
            Stop::At(at) => Instant::now() >= *at,
            Stop::Flag(flag) => flag.load(Ordering::Acquire),
        }
    }
}

/// One stretch of neighbour traffic.
struct Traffic {
    calls: u64,
    delivered: u64,
    /// Calls that did not deliver: an error, or any other outcome.
    lost: u64,
    /// Per call, from `deliver` to its outcome.
    latency_us: Histogram<u64>,
    /// Per call, from its scheduled start to its outcome.
    scheduled_us: Histogram<u64>,
}

impl Traffic {
    /// Calls `plugin` `rate` times a second, each call in its own task, until `stop`.
    fn run(
        plugin: &Arc<LoadedPlugin>,
        rate: u64,
        tag: &'static str,
        stop: Stop,
    ) -> impl std::future::Future<Output = anyhow::Result<Traffic>> + Send + 'static {
        let plugin = plugin.clone();
        async move {
            let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
            let mut ticker = tokio::time::interval(period);
            // A late tick is sent at once, so the schedule holds and a stall shows as latency.
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut calls = tokio::task::JoinSet::new();
            let mut traffic = Traffic {
                calls: 0,
                delivered: 0,
                lost: 0,
                latency_us: Histogram::new(3)?,
                scheduled_us: Histogram::new(3)?,
            };
            while !stop.reached() {
                let scheduled = ticker.tick().await.into_std();
                let plugin = plugin.clone();
                let n = traffic.calls;
                traffic.calls += 1;
                calls.spawn(async move {
                    let key = format!("{tag}/{n}");
                    let recipient = format!("device-{tag}-{n}");
                    let started = Instant::now();
                    let outcomes = plugin
                        .deliver(&[delivery(&key, &recipient, FCM_CONTENT)])
                        .await;
                    let delivered = matches!(&outcomes.as_deref(), Ok([Outcome::Delivered(_)]));
                    (started.elapsed(), scheduled.elapsed(), delivered)
                });
                while let Some(done) = calls.try_join_next() {
                    traffic.record(done?)?;
                }
            }
            while let Some(done) = calls.join_next().await {
                traffic.record(done?)?;
            }
            Ok(traffic)
        }
    }

    fn record(
        &mut self,
        (took, since_scheduled, delivered): (Duration, Duration, bool),
    ) -> anyhow::Result<()> {
        self.latency_us.record(took.as_micros().max(1) as u64)?;
        self.scheduled_us
            .record(since_scheduled.as_micros().max(1) as u64)?;
        if delivered {
            self.delivered += 1;
        } else {
            self.lost += 1;
        }
        Ok(())
    }
}

/// The process's peak resident memory so far, in MiB; 0 where /proc is missing.
pub(crate) fn peak_rss_mib() -> u64 {
    proc_status_mib("VmHWM:")
}

/// The process's resident memory now, in MiB; 0 where /proc is missing.
pub(crate) fn rss_mib() -> u64 {
    proc_status_mib("VmRSS:")
}

fn proc_status_mib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}

/// Fault and refusal counts of one plugin, to compare before and after a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Counts {
    traps: u64,
    timeouts: u64,
    host_busy: u64,
    denied_hosts: u64,
    denied_secrets: u64,
    denied_downgrades: u64,
    denied_addresses: u64,
    denied_requests: u64,
    over_transfer: u64,
    scrubbed_secrets: u64,
    dropped_logs: u64,
}

impl Counts {
    fn of(plugin: &LoadedPlugin) -> Self {
        let caps = plugin.capability_counters();
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Self {
            traps: load(&plugin.counters.traps),
            timeouts: load(&plugin.counters.timeouts),
            host_busy: load(&plugin.counters.host_busy),
            denied_hosts: load(&caps.denied_hosts),
            denied_secrets: load(&caps.denied_secrets),
            denied_downgrades: load(&caps.denied_downgrades),
            denied_addresses: load(&caps.denied_addresses),
            denied_requests: load(&caps.denied_requests),
            over_transfer: load(&caps.over_transfer),
            scrubbed_secrets: load(&caps.scrubbed_secrets),
            dropped_logs: load(&caps.dropped_logs),
        }
    }

    fn since(self, before: Counts) -> Counts {
        Counts {
            traps: self.traps - before.traps,
            timeouts: self.timeouts - before.timeouts,
            host_busy: self.host_busy - before.host_busy,
            denied_hosts: self.denied_hosts - before.denied_hosts,
            denied_secrets: self.denied_secrets - before.denied_secrets,
            denied_downgrades: self.denied_downgrades - before.denied_downgrades,
            denied_addresses: self.denied_addresses - before.denied_addresses,
            denied_requests: self.denied_requests - before.denied_requests,
            over_transfer: self.over_transfer - before.over_transfer,
            scrubbed_secrets: self.scrubbed_secrets - before.scrubbed_secrets,
            dropped_logs: self.dropped_logs - before.dropped_logs,
        }
    }
}

/// The hostile plugins, loaded before the measured phase so their compilation is not in it.
struct HostilePlugins {
    /// Granted nothing; used for loops, bombs, traps and the WASI probe.
    plain: LoadedPlugin,
    /// Room for two million outcomes.
    flood: LoadedPlugin,
    /// `init` passes at load and spins on every call.
    init_on_calls: LoadedPlugin,
    /// Owns secret `token`; granted only a closed port, not the peer.
    reader: LoadedPlugin,
    /// Owns `a_key`, granted the peer.
    plugin_a: LoadedPlugin,
    /// Owns `token`, granted the peer; reads from its slow routes.
    slow: LoadedPlugin,
}

impl HostilePlugins {
    async fn load(rt: &PluginRuntime, guests: &Path, peer: &SlowPeer) -> anyhow::Result<Self> {
        let path = guests.join("misbehave.wasm");
        let options = |memory_mb: usize| LoadOptions {
            timeout: HOSTILE_TIMEOUT,
            memory_mb,
            ..Default::default()
        };
        let granted_peer = |secret: &str| LoadOptions {
            allowed_hosts: vec![peer.addr.to_string()],
            secrets: vec![(secret.to_string(), format!("value-of-{secret}"))],
            ..options(HOSTILE_MEMORY_MB)
        };
        let misbehave = async |name: &str, options: LoadOptions| {
            load(rt, name, &path, options)
                .await
                .with_context(|| format!("loading {} as {name}", path.display()))
        };
        Ok(Self {
            plain: misbehave("plain", options(HOSTILE_MEMORY_MB)).await?,
            flood: misbehave("flood", options(128)).await?,
            init_on_calls: misbehave(
                "init-on-calls",
                LoadOptions {
                    config: vec![("init".into(), "loop-on-calls".into())],
                    ..options(HOSTILE_MEMORY_MB)
                },
            )
            .await?,
            reader: misbehave(
                "reader",
                LoadOptions {
                    allowed_hosts: vec!["127.0.0.1:1".into()],
                    secrets: vec![("token".into(), "value-of-token".into())],
                    ..options(HOSTILE_MEMORY_MB)
                },
            )
            .await?,
            plugin_a: misbehave("plugin-a", granted_peer("a_key")).await?,
            slow: misbehave("slow", granted_peer("token")).await?,
        })
    }

    /// Every case once, in order: (name, contained, what was seen).
    async fn run_all(
        &self,
        rt: &PluginRuntime,
        guests: &Path,
        peer: &SlowPeer,
    ) -> Vec<(&'static str, bool, String)> {
        let mut results = Vec::new();
        let peer_url = format!("http://{}", peer.addr);

        // Deadlines: guest CPU, WASI clock waits, and an init that never ends.
        for (name, verb) in [
            ("deliver-loop", "loop"),
            ("clock-spin", "clockspin"),
            ("wasi-sleep", "sleep:3600000"),
        ] {
            results.push(timed_out(name, &self.plain, verb).await);
        }
        results.push(timed_out("init-loop-on-calls", &self.init_on_calls, "ok").await);
        results.push(init_loop_refused_at_load(rt, guests).await);

        // Memory and stack.
        for (name, verb, expect) in [
            (
                "memory-bomb",
                "grow:1024",
                "forcing trap when growing memory",
            ),
            ("stack-overflow", "recurse", "out of bounds"),
            (
                "multi-gb-string",
                "bigstring:3072",
                "forcing trap when growing memory",
            ),
            (
                "aliased-4gb-output",
                "alias:16:256",
                "too much data is being copied",
            ),
        ] {
            results.push(trapped(name, &self.plain, verb, expect).await);
        }
        results.push(flood(&self.flood).await);
        results.push(cache_keys(&self.plain).await);
        results.push(thousand_traps(&self.plain).await);

        // Outbound calls and secrets.
        results.push(
            denied(
                "http-not-granted",
                &self.reader,
                &format!("http:{peer_url}/echo"),
                "host `127.0.0.1` is not granted",
                Counts {
                    denied_hosts: 1,
                    ..Default::default()
                },
                peer,
            )
            .await,
        );
        results.push(
            denied(
                "echo-secret-not-granted",
                &self.reader,
                &format!("echo:token@{peer_url}/echo"),
                "host `127.0.0.1` is not granted",
                Counts {
                    denied_hosts: 1,
                    ..Default::default()
                },
                peer,
            )
            .await,
        );
        results.push(
            denied(
                "other-plugins-secret",
                &self.plugin_a,
                &format!("echo:b_key@{peer_url}/echo"),
                "secret `b_key` is not granted",
                Counts {
                    denied_secrets: 1,
                    ..Default::default()
                },
                peer,
            )
            .await,
        );
        results.push(
            denied(
                "other-plugins-key",
                &self.plugin_a,
                "sign:b_key",
                "no secret `b_key` is granted",
                Counts {
                    denied_secrets: 1,
                    ..Default::default()
                },
                peer,
            )
            .await,
        );
        results.push(wasi_probe(&self.plain, peer).await);

        // Slow vendors.
        for path in ["trickle", "stall"] {
            let name = if path == "trickle" {
                "slowloris-trickle"
            } else {
                "slowloris-stall"
            };
            results.push(slow_vendor(name, &self.slow, &format!("http:{peer_url}/{path}")).await);
        }

        // Components that do not fit.
        for (name, guest, expect) in [
            ("wrong-world", "missing_deliver", "no export `deliver`"),
            (
                "extra-import",
                "extra_import",
                "switchboard:adapter/raw-socket@0.1.0",
            ),
        ] {
            results
                .push(wrong_world(rt, name, &guests.join(format!("{guest}.wasm")), expect).await);
        }
        results
    }
}

/// The plugin's next good call works.
async fn next_call_works(plugin: &LoadedPlugin) -> bool {
    matches!(
        plugin
            .deliver(&[delivery("next", "ok", "{}")])
            .await
            .as_deref(),
        Ok([Outcome::Delivered(_)])
    )
}

fn verdict(name: &'static str, contained: bool, detail: String) -> (&'static str, bool, String) {
    (name, contained, detail)
}

/// Last `n` characters of a trap message (the reason follows the backtrace).
fn tail(text: &str, n: usize) -> &str {
    let mut start = text.len().saturating_sub(n);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

async fn timed_out(
    name: &'static str,
    plugin: &LoadedPlugin,
    verb: &str,
) -> (&'static str, bool, String) {
    let before = Counts::of(plugin);
    let started = Instant::now();
    let result = plugin.deliver(&[delivery("k", verb, "{}")]).await;
    let took = started.elapsed();
    let counted = Counts::of(plugin).since(before)
        == Counts {
            timeouts: 1,
            ..Default::default()
        };
    let contained =
        matches!(result, Err(CallError::Timeout(_))) && took < HOSTILE_TIMEOUT + SLACK && counted;
    // The init-on-calls plugin loops on every call by design; the others must recover.
    let recovers = name == "init-loop-on-calls" || next_call_works(plugin).await;
    verdict(
        name,
        contained && recovers,
        format!(
            "{result:?} after {took:?}, timeouts counted: {counted}, next call works: {recovers}"
        ),
    )
}

async fn init_loop_refused_at_load(
    rt: &PluginRuntime,
    guests: &Path,
) -> (&'static str, bool, String) {
    let options = LoadOptions {
        config: vec![("init".into(), "loop".into())],
        timeout: HOSTILE_TIMEOUT,
        ..Default::default()
    };
    let started = Instant::now();
    let result = load(rt, "init-loop", &guests.join("misbehave.wasm"), options).await;
    let took = started.elapsed();
    match result {
        Err(e @ LoadError::Init { .. }) => {
            let message = e.to_string();
            verdict(
                "init-loop-at-load",
                message.contains("no answer within") && took < HOSTILE_TIMEOUT + SLACK,
                format!("{message} after {took:?}"),
            )
        }
        Err(other) => verdict("init-loop-at-load", false, other.to_string()),
        Ok(_) => verdict("init-loop-at-load", false, "loaded".into()),
    }
}

async fn trapped(
    name: &'static str,
    plugin: &LoadedPlugin,
    verb: &str,
    expect: &str,
) -> (&'static str, bool, String) {
    let before = Counts::of(plugin);
    let result = plugin.deliver(&[delivery("k", verb, "{}")]).await;
    let counted = Counts::of(plugin).since(before)
        == Counts {
            traps: 1,
            ..Default::default()
        };
    let (contained, seen) = match &result {
        Err(CallError::Trap(why)) => (why.contains(expect), tail(why, 120).replace('\n', " ")),
        other => (false, format!("{other:?}")),
    };
    let recovers = next_call_works(plugin).await;
    verdict(
        name,
        contained && counted && recovers,
        format!("trap `…{seen}`, traps counted: {counted}, next call works: {recovers}"),
    )
}

async fn flood(plugin: &LoadedPlugin) -> (&'static str, bool, String) {
    let peak_before = peak_rss_mib();
    let started = Instant::now();
    let result = plugin
        .deliver(&[delivery("k", "flood:2000000", "{}")])
        .await;
    let took = started.elapsed();
    let kept = result.as_ref().map_or(0, Vec::len);
    drop(result);
    let grown = peak_rss_mib().saturating_sub(peak_before);
    let recovers = next_call_works(plugin).await;
    verdict(
        "two-million-outcomes",
        kept == 1 && grown < 512 && recovers,
        format!(
            "kept {kept} of 2000000 outcomes in {took:?}, peak RSS +{grown} MiB, next call works: {recovers}"
        ),
    )
}

/// Cache entries with 8 MiB keys, 20 per call: the host must not keep 160 MiB for them.
async fn cache_keys(plugin: &LoadedPlugin) -> (&'static str, bool, String) {
    static CALL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    // A new delivery key each round, so each round's keys are new entries.
    let key = format!("cache/{}", CALL.fetch_add(1, Ordering::Relaxed));
    let before = rss_mib();
    let result = plugin
        .deliver(&[delivery(&key, "cachekeys:8:20", "{}")])
        .await;
    let kept = rss_mib().saturating_sub(before);
    let recovers = next_call_works(plugin).await;
    verdict(
        "cache-key-bomb",
        kept < 64 && recovers,
        format!(
            "{result:?}; host RSS +{kept} MiB kept after the call, next call works: {recovers}"
        ),
    )
}

async fn thousand_traps(plugin: &LoadedPlugin) -> (&'static str, bool, String) {
    let before = Counts::of(plugin);
    let started = Instant::now();
    let mut trapped = 0;
    for i in 0..1000 {
        let key = format!("t/{i}");
        if let Err(CallError::Trap(_)) = plugin.deliver(&[delivery(&key, "trap", "{}")]).await {
            trapped += 1;
        }
    }
    let took = started.elapsed();
    let counted = Counts::of(plugin).since(before).traps;
    let recovers = next_call_works(plugin).await;
    verdict(
        "thousand-traps",
        trapped == 1000 && counted == 1000 && recovers,
        format!(
            "{trapped} trapped in {took:?}, traps counted: {counted}, next call works: {recovers}"
        ),
    )
}

async fn denied(
    name: &'static str,
    plugin: &LoadedPlugin,
    verb: &str,
    expect: &str,
    counts: Counts,
    peer: &SlowPeer,
) -> (&'static str, bool, String) {
    let before = Counts::of(plugin);
    let echoes_before = peer.echoes();
    let result = plugin.deliver(&[delivery("k", verb, "{}")]).await;
    let counted = Counts::of(plugin).since(before) == counts;
    let sent = peer.echoes() - echoes_before;
    let contained = match result.as_deref() {
        Ok([Outcome::Rejected(r)]) => r.reason.contains(expect) && !r.reason.contains("value-of-"),
        _ => false,
    };
    let recovers = next_call_works(plugin).await;
    verdict(
        name,
        contained && counted && sent == 0 && recovers,
        format!(
            "{result:?}, counted: {counted}, requests that reached the peer: {sent}, next call works: {recovers}"
        ),
    )
}

async fn wasi_probe(plugin: &LoadedPlugin, peer: &SlowPeer) -> (&'static str, bool, String) {
    let result = plugin
        .deliver(&[delivery("k", &format!("wasi:{}", peer.addr), "{}")])
        .await;
    let report: serde_json::Value = match result.as_deref() {
        Ok([Outcome::Delivered(json)]) => serde_json::from_str(json).unwrap_or_default(),
        _ => serde_json::Value::Null,
    };
    let refused = [
        "read_etc_passwd",
        "list_root",
        "list_cwd",
        "write_tmp",
        "tcp_connect",
        "udp_bind",
        "dns",
    ]
    .iter()
    .all(|probe| {
        report[probe]
            .as_str()
            .is_some_and(|v| v.starts_with("err:"))
    });
    let contained = refused && report["env_vars"] == 0 && report["args"] == 0;
    verdict("wasi-access", contained, report.to_string())
}

async fn slow_vendor(
    name: &'static str,
    plugin: &LoadedPlugin,
    verb: &str,
) -> (&'static str, bool, String) {
    let before = Counts::of(plugin);
    let started = Instant::now();
    let result = plugin.deliver(&[delivery("k", verb, "{}")]).await;
    let took = started.elapsed();
    let delta = Counts::of(plugin).since(before);
    // The HTTP timeout and the call's deadline are the same instant; either may end the call.
    let contained = match result.as_deref() {
        Err(CallError::Timeout(_)) => delta.timeouts == 1,
        Ok([Outcome::Rejected(r)]) => r.reason == "Timeout",
        _ => false,
    };
    let on_time =
        took >= HOSTILE_TIMEOUT - Duration::from_millis(50) && took < HOSTILE_TIMEOUT + SLACK;
    let recovers = next_call_works(plugin).await;
    verdict(
        name,
        contained && on_time && recovers,
        format!("{result:?} after {took:?}, next call works: {recovers}"),
    )
}

async fn wrong_world(
    rt: &PluginRuntime,
    name: &'static str,
    path: &Path,
    expect: &str,
) -> (&'static str, bool, String) {
    match load(rt, name, path, LoadOptions::default()).await {
        Err(e @ LoadError::WrongWorld { .. }) => {
            let message = e.to_string();
            verdict(name, message.contains(expect), message)
        }
        Err(other) => verdict(name, false, other.to_string()),
        Ok(_) => verdict(name, false, "loaded".into()),
    }
}

/// A peer on loopback that echoes request headers (`/echo`), never answers (`/stall`), or
/// trickles a body one byte every 200 ms (anything else).
struct SlowPeer {
    addr: std::net::SocketAddr,
    echoes: Arc<std::sync::atomic::AtomicU64>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for SlowPeer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl SlowPeer {
    async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let echoes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = echoes.clone();
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(answer(stream, counter.clone()));
            }
        });
        Ok(Self {
            addr,
            echoes,
            server,
        })
    }

    /// Echo requests answered so far.
    fn echoes(&self) -> u64 {
        self.echoes.load(Ordering::Relaxed)
    }
}

async fn answer(mut stream: tokio::net::TcpStream, echoes: Arc<std::sync::atomic::AtomicU64>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    match path.as_str() {
        "/echo" => {
            echoes.fetch_add(1, Ordering::Relaxed);
            let body = head.replace('\r', "");
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(reply.as_bytes()).await;
        }
        // Never answers; holds the connection until the client gives up.
        "/stall" => while let Ok(1..) = stream.read(&mut buf).await {},
        _ => {
            let start = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000000\r\n\r\n{";
            if stream.write_all(start).await.is_err() {
                return;
            }
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if stream.write_all(b"x").await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The cases of redirects, addresses, scrubbing, call bounds, and memory and instances over a
/// whole component. Their peers are `vendorsim::slowloris` servers: one granted, one never
/// granted, and one over TLS for the step down to plain http.
struct OutboundCases {
    granted: vendorsim::RunningSim,
    elsewhere: vendorsim::RunningSim,
    secure: vendorsim::RunningSim,
    /// Granted `granted` only, owns `token`.
    redirected: LoadedPlugin,
    /// Granted `secure` (by name) and `elsewhere` (without naming plain http), owns `token`.
    downgraded: LoadedPlugin,
    /// Granted `granted`, with small bounds: 10 requests, 4 in flight, 1 MiB, 50 lines/s.
    bounded: LoadedPlugin,
    /// Granted this machine's name, when it resolves to a private address.
    rebound: Option<(LoadedPlugin, String)>,
}

impl OutboundCases {
    async fn start(rt: &PluginRuntime, guests: &Path) -> anyhow::Result<Self> {
        use vendorsim::slowloris::{self, SlowlorisConfig};
        let granted = slowloris::start(SlowlorisConfig::new()).await?;
        let elsewhere = slowloris::start(SlowlorisConfig::new()).await?;
        let secure = slowloris::start(SlowlorisConfig {
            tls: true,
            ..SlowlorisConfig::new()
        })
        .await?;
        let path = guests.join("misbehave.wasm");
        let options = |hosts: Vec<String>| LoadOptions {
            allowed_hosts: hosts,
            secrets: vec![("token".into(), "value-of-token".into())],
            timeout: Duration::from_secs(2),
            memory_mb: HOSTILE_MEMORY_MB,
            ..Default::default()
        };
        let misbehave = async |name: &str, options: LoadOptions| {
            load(rt, name, &path, options)
                .await
                .with_context(|| format!("loading {} as {name}", path.display()))
        };
        let redirected = misbehave("redirected", options(vec![granted.addr.to_string()])).await?;
        let downgraded = misbehave(
            "downgraded",
            LoadOptions {
                trust_pems: secure.ca_pem.clone().into_iter().collect(),
                ..options(vec![
                    format!("localhost:{}", secure.addr.port()),
                    elsewhere.addr.to_string(),
                ])
            },
        )
        .await?;
        let bounded = misbehave(
            "bounded",
            LoadOptions {
                bounds: PluginBounds {
                    requests_per_call: 10,
                    requests_in_flight_per_call: 4,
                    transfer_bytes_per_call: 1 << 20,
                    log_lines_per_s: 50,
                    ..PluginBounds::default()
                },
                ..options(vec![granted.addr.to_string()])
            },
        )
        .await?;
        let rebound = match private_name().await {
            Some(name) => {
                let port = elsewhere.addr.port();
                let plugin = misbehave("rebound", options(vec![format!("{name}:{port}")])).await?;
                Some((plugin, format!("http://{name}:{port}")))
            }
            None => None,
        };
        Ok(Self {
            granted,
            elsewhere,
            secure,
            redirected,
            downgraded,
            bounded,
            rebound,
        })
    }

    async fn run_all(
        &self,
        rt: &PluginRuntime,
        guests: &Path,
    ) -> Vec<(&'static str, bool, String)> {
        let mut results = Vec::new();
        let (granted, elsewhere) = (self.granted.url(), self.elsewhere.url());
        let reached = || self.elsewhere.stats.snapshot().delivered;

        let before = reached();
        let verb = format!("echo:token@{granted}/redirect?to={elsewhere}/echo");
        results.push(
            outbound_case(
                "redirect-not-granted",
                &self.redirected,
                &verb,
                |o| rejected_with(o, "not granted"),
                Counts {
                    denied_hosts: 1,
                    ..Default::default()
                },
            )
            .await
            .and(reached() == before, "the host never granted was reached"),
        );

        let before = reached();
        let verb = format!(
            "echo:token@{}/redirect?to={elsewhere}/echo",
            self.secure.url()
        );
        results.push(
            outbound_case(
                "redirect-https-to-http",
                &self.downgraded,
                &verb,
                |o| rejected_with(o, "plain http"),
                Counts {
                    denied_downgrades: 1,
                    ..Default::default()
                },
            )
            .await
            .and(reached() == before, "the plain-http host was reached"),
        );

        results.push(match &self.rebound {
            Some((plugin, url)) => {
                let before = reached();
                outbound_case(
                    "dns-rebinding",
                    plugin,
                    &format!("echo:token@{url}/echo"),
                    |o| rejected_with(o, "not a public address"),
                    Counts {
                        denied_addresses: 1,
                        ..Default::default()
                    },
                )
                .await
                .and(reached() == before, "the private address was reached")
            }
            None => verdict(
                "dns-rebinding",
                false,
                "no name on this machine resolves to a private address".into(),
            ),
        });

        results.push(
            outbound_case(
                "echo-secret-scrubbed",
                &self.redirected,
                &format!("echo:token@{granted}/echo"),
                |o| {
                    matches!(o, Ok([Outcome::Delivered(body)])
                        if body.contains("{{secret:token}}") && !body.contains("value-of-token"))
                },
                Counts {
                    scrubbed_secrets: 1,
                    ..Default::default()
                },
            )
            .await
            .into(),
        );

        results.push(
            outbound_case(
                "requests-per-call",
                &self.bounded,
                &format!("sendall:25@{granted}/echo"),
                |o| matches!(o, Ok([Outcome::Delivered(r)]) if r.starts_with("ok=10 denied=15 ")),
                Counts {
                    denied_requests: 15,
                    ..Default::default()
                },
            )
            .await
            .into(),
        );

        let stalls = || {
            self.granted
                .stats
                .snapshot()
                .refused
                .get("stall")
                .copied()
                .unwrap_or(0)
        };
        let before = stalls();
        results.push(
            outbound_case(
                "send-all-in-flight",
                &self.bounded,
                &format!("sendall:8@{granted}/stall"),
                |o| matches!(o, Err(CallError::Timeout(_))),
                Counts {
                    timeouts: 1,
                    ..Default::default()
                },
            )
            .await
            .and(
                stalls() - before == 4,
                "more than 4 requests were in flight",
            ),
        );

        // Three 400 KB answers against a 1 MiB budget, up to four at once: whichever chunks
        // come last find the budget spent, so one or two of the requests fail, never none.
        let before = Counts::of(&self.bounded);
        let result = self
            .bounded
            .deliver(&[delivery(
                "k",
                &format!("sendall:3@{granted}/big?bytes=400000"),
                "{}",
            )])
            .await;
        let over = Counts::of(&self.bounded).since(before).over_transfer;
        let report = match result.as_deref() {
            Ok([Outcome::Delivered(report)]) => report.clone(),
            other => format!("{other:?}"),
        };
        let failed =
            |n: u64| report == format!("ok={} denied=0 timeout=0 connect=0 protocol={n}", 3 - n);
        let recovers = next_call_works(&self.bounded).await;
        results.push(verdict(
            "transfer-budget",
            (1..=2).any(|n| failed(n) && over == n) && recovers,
            format!("{report}, over budget counted: {over}, next call works: {recovers}"),
        ));

        let before = Counts::of(&self.bounded);
        let started = Instant::now();
        let result = self
            .bounded
            .deliver(&[delivery("k", "logs:100000", "{}")])
            .await;
        let took = started.elapsed();
        let dropped = Counts::of(&self.bounded).since(before).dropped_logs;
        let recovers = next_call_works(&self.bounded).await;
        results.push(verdict(
            "log-flood",
            matches!(result.as_deref(), Ok([Outcome::Delivered(_)]))
                && dropped >= 99_000
                && recovers,
            format!("{dropped} of 100000 lines dropped in {took:?}, next call works: {recovers}"),
        ));

        results
            .push(component_refused(rt, guests, "many-memories", 31 * 16, 1, "over its cap").await);
        results.push(
            component_refused(rt, guests, "many-instances", 0, 64, "core module instances").await,
        );
        results.push(pool_exhausted(guests).await);
        results
    }
}

/// One case's verdict, with a further condition to add.
struct Verdict {
    name: &'static str,
    contained: bool,
    detail: String,
}

impl From<Verdict> for (&'static str, bool, String) {
    fn from(verdict: Verdict) -> Self {
        (verdict.name, verdict.contained, verdict.detail)
    }
}

impl Verdict {
    fn and(self, holds: bool, otherwise: &str) -> (&'static str, bool, String) {
        let detail = if holds {
            self.detail
        } else {
            format!("{}; {otherwise}", self.detail)
        };
        (self.name, self.contained && holds, detail)
    }
}

fn rejected_with(outcomes: &Result<&[Outcome], &CallError>, expect: &str) -> bool {
    matches!(outcomes, Ok([Outcome::Rejected(r)])
        if r.reason.contains(expect) && !r.reason.contains("value-of-"))
}

/// Runs `verb` on `plugin`: contained when `check` holds, the counts moved by exactly
/// `counts`, and the next good call works.
async fn outbound_case(
    name: &'static str,
    plugin: &LoadedPlugin,
    verb: &str,
    check: impl Fn(&Result<&[Outcome], &CallError>) -> bool,
    counts: Counts,
) -> Verdict {
    let before = Counts::of(plugin);
    let result = plugin.deliver(&[delivery("k", verb, "{}")]).await;
    let moved = Counts::of(plugin).since(before);
    let held = check(&result.as_deref());
    let recovers = next_call_works(plugin).await;
    Verdict {
        name,
        contained: held && moved == counts && recovers,
        detail: format!(
            "{}, counted as expected: {}, next call works: {recovers}",
            tail(&format!("{result:?}"), 200),
            moved == counts
        ),
    }
}

/// This machine's name, when it resolves only to addresses that are not public.
async fn private_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim().to_string();
    let addresses: Vec<_> = tokio::net::lookup_host((name.as_str(), 0))
        .await
        .ok()?
        .map(|a| a.ip())
        .collect();
    let private = !addresses.is_empty()
        && addresses
            .iter()
            .all(|ip| !switchboard::plugin::resolver::is_public(*ip));
    private.then_some(name)
}

/// `misbehave` with `count` more core instances of a module holding `pages` of memory each
/// (none for 0), appended after its other sections: it must be refused at load.
async fn component_refused(
    rt: &PluginRuntime,
    guests: &Path,
    name: &'static str,
    pages: u32,
    count: u32,
    expect: &str,
) -> (&'static str, bool, String) {
    let original = match std::fs::read(guests.join("misbehave.wasm")) {
        Ok(bytes) => bytes,
        Err(e) => return verdict(name, false, e.to_string()),
    };
    let bytes = switchboard_integration_tests::with_extra_instances(&original, pages, count);
    let (caps, limits, config) = switchboard_integration_tests::load_settings(
        name,
        LoadOptions {
            timeout: HOSTILE_TIMEOUT,
            ..Default::default()
        },
    );
    match rt.load_bytes(name, &bytes, caps, limits, config).await {
        Ok(_) => verdict(name, false, "loaded".into()),
        Err(e) => {
            let message = e.to_string();
            verdict(name, message.contains(expect), message)
        }
    }
}

/// A runtime of two instance slots, both held by looping calls: a third call waits, and when
/// its deadline passes first it fails as the host's `HostBusy`, not as the plugin's fault.
async fn pool_exhausted(guests: &Path) -> (&'static str, bool, String) {
    let name = "pool-exhausted";
    let config = RuntimeConfig {
        max_instances: 2,
        ..RuntimeConfig::default()
    };
    let rt = match PluginRuntime::new(&config, POOL_MEMORY_BYTES) {
        Ok(rt) => rt,
        Err(e) => return verdict(name, false, e.to_string()),
    };
    let path = guests.join("misbehave.wasm");
    let with_timeout = |timeout: Duration| LoadOptions {
        timeout,
        ..Default::default()
    };
    let (Ok(hog), Ok(waiting)) = (
        load(&rt, "hog", &path, with_timeout(Duration::from_secs(2))).await,
        load(
            &rt,
            "waiting",
            &path,
            with_timeout(Duration::from_millis(300)),
        )
        .await,
    ) else {
        return verdict(name, false, "the plugins did not load".into());
    };
    let (first, second) = ([delivery("a", "loop", "{}")], [delivery("b", "loop", "{}")]);
    let hogs = futures::future::join(hog.deliver(&first), hog.deliver(&second));
    let late = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let before = Counts::of(&waiting);
        let result = waiting.deliver(&[delivery("c", "ok", "{}")]).await;
        (result, Counts::of(&waiting).since(before))
    };
    let (_, (result, moved)) = futures::future::join(hogs, late).await;
    let recovers = next_call_works(&waiting).await;
    let counted = moved
        == Counts {
            host_busy: 1,
            ..Default::default()
        };
    verdict(
        name,
        matches!(result, Err(CallError::HostBusy(_))) && counted && recovers,
        format!("{result:?}, counted as host busy only: {counted}, next call works: {recovers}"),
    )
}
