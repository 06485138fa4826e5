//! `crash`: the host as a child process, killed with SIGKILL while deliveries are in flight and
//! restarted, a chosen number of times; then it counts what the simulator received.
//!
//! The lab owns the Kafka cluster and the FCM simulator, so both outlive every kill. The host
//! runs as `switchboard run --config FILE` from the binary next to the lab's, with the embedded
//! dedup store in a directory that survives its restarts. What the promise allows under SIGKILL:
//! nothing lost, and at most the deliveries inside plugin calls at the moment of each kill sent
//! twice (the vendor accepted them, the dedup mark was not written yet).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;
use switchboard::demo::{demo_envelope, produce};
use switchboard::settle::Outbox;
use switchboard::settle::replay::{ReplayFilter, replay};
use switchboard_integration_tests::{FCM_EMAIL, FCM_PROJECT, FcmFixture};

use crate::broker::{BrokerKind, LabKafka};

pub(crate) const TOPIC: &str = "notifications";
pub(crate) const RETRY_TOPIC: &str = "switchboard.retry";
pub(crate) const DLQ_TOPIC: &str = "switchboard.dlq";
pub(crate) const PARTITIONS: i32 = 6;
const GROUP: &str = "switchboard-lab-crash";

/// The plugin limits written into the host's config. Every delivery the vendor accepts is inside
/// one plugin call until its dedup mark is written, and at most `CONCURRENCY` calls of at most
/// `MAX_BATCH` deliveries run at once (the FCM plugin's own max-batch is 100, so it does not
/// lower this one). A kill can therefore leave at most CONCURRENCY × MAX_BATCH deliveries
/// accepted and unmarked, and each of those is sent again after the restart.
const CONCURRENCY: u64 = 32;
const MAX_BATCH: u64 = 100;

/// Deliveries a host may have accepted by the vendor and not yet marked done at any moment:
/// the most a kill (or a hand-over that fails to drain) can send twice.
pub(crate) fn inflight_bound() -> u64 {
    CONCURRENCY * MAX_BATCH
}

/// Kills land between these fractions of the requests delivered, so none falls in the ramp-up
/// or in the tail where little is in flight.
const FIRST_KILL_AT: f64 = 0.05;
const LAST_KILL_AT: f64 = 0.90;

/// What the scenario runs.
pub struct CrashOptions {
    /// SIGKILLs (each followed by a restart).
    pub kills: u32,
    /// Requests to produce, one recipient each.
    pub messages: u64,
    /// Where `fcm.wasm` is.
    pub plugin_dir: PathBuf,
    /// Mean simulated vendor latency; the jitter is half of it.
    pub vendor_latency_ms: u64,
    /// Seed of the kill moments; a run with the same seed kills at the same delivered counts.
    pub seed: Option<u64>,
    /// Give up waiting for the last request after this long (after the last restart).
    pub timeout: Duration,
    /// The mock cluster or a real broker.
    pub broker: BrokerKind,
    /// The real broker's address, when not the default.
    pub brokers: Option<String>,
}

/// xorshift64*: enough to spread kill moments, and reproducible from the printed seed.
struct KillDice(u64);

impl KillDice {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// Uniform in [0, 1).
    fn next_unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Delivered counts at which to kill: one uniform point in each of `kills` equal slices of
/// [FIRST_KILL_AT, LAST_KILL_AT] × messages, so kills are random yet spread over the whole run.
fn kill_points(kills: u32, messages: u64, dice: &mut KillDice) -> Vec<u64> {
    let span = LAST_KILL_AT - FIRST_KILL_AT;
    (0..kills)
        .map(|k| {
            let fraction =
                FIRST_KILL_AT + span * (f64::from(k) + dice.next_unit()) / f64::from(kills);
            (fraction * messages as f64) as u64
        })
        .collect()
}

/// A TOML basic string: JSON's string escapes are valid TOML.
pub(crate) fn toml_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// The `fcm.wasm` component in `plugin_dir`, as an absolute path for a config elsewhere.
pub(crate) fn fcm_component(plugin_dir: &Path) -> anyhow::Result<PathBuf> {
    let path = plugin_dir.join("fcm.wasm");
    path.canonicalize().with_context(|| {
        format!(
            "{} is missing: build the plugins first (`make plugins`)",
            path.display()
        )
    })
}

/// The `[plugins.fcm]` and `[channels.push-android]` tables for a host child process that
/// delivers to `fixture`, with the service-account key written into `dir` beside the config.
pub(crate) fn fcm_plugin_toml(
    dir: &Path,
    fixture: &FcmFixture,
    fcm_wasm: &Path,
    max_batch: u64,
    concurrency: u64,
) -> anyhow::Result<String> {
    let key_path = dir.join("service-account.pem");
    std::fs::write(&key_path, &fixture.account.private_key_pem)
        .with_context(|| format!("writing {}", key_path.display()))?;
    let url = fixture.sim.url();
    Ok(format!(
        r#"[plugins.fcm]
path = {wasm}
allowed_hosts = [{addr}]
max_batch = {max_batch}
concurrency = {concurrency}
secrets = {{ service_account_key = {{ file = "service-account.pem" }} }}

[plugins.fcm.config]
project_id = {project}
client_email = {email}
token_uri = {token_uri}
endpoint = {endpoint}

[channels.push-android]
fcm = 100
"#,
        wasm = toml_string(&fcm_wasm.display().to_string()),
        addr = toml_string(&fixture.sim.addr.to_string()),
        project = toml_string(FCM_PROJECT),
        email = toml_string(FCM_EMAIL),
        token_uri = toml_string(&format!("{url}/token")),
        endpoint = toml_string(&url),
    ))
}

/// What differs between the host processes the lab's scenarios write configs for.
pub(crate) struct HostTables<'a> {
    /// Which scenario wrote the file, for its first line.
    pub written_by: &'a str,
    /// The consumer group, before [`LabKafka::topic`] names it.
    pub group: &'a str,
    /// The `[dedup]` table.
    pub dedup: &'a str,
    /// Where the admin API listens.
    pub admin_listen: &'a str,
}

/// The `[dedup]` table of a host with its own embedded store in `dedup/` beside its config.
pub(crate) const EMBEDDED_DEDUP: &str = "[dedup]\nbackend = \"embedded\"\ndata_dir = \"dedup\"\n";

/// Writes a host's config and the service-account key into `dir`; returns the config's path.
pub(crate) fn write_host_config(
    dir: &Path,
    kafka: &LabKafka,
    fixture: &FcmFixture,
    fcm_wasm: &Path,
    tables: &HostTables<'_>,
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let plugin = fcm_plugin_toml(dir, fixture, fcm_wasm, MAX_BATCH, CONCURRENCY)?;
    let text = format!(
        r#"# Written by `switchboard-lab {written_by}`.
[kafka]
brokers = {brokers}
group_id = {group}
topics = [{topic}]
retry_topic = {retry}
dlq_topic = {dlq}
commit_interval_ms = 500
# A killed member holds its partitions until its session times out, and the restarted host
# waits that long before it is assigned any: 6 s keeps each restart short.
session_timeout_ms = 6000
rebalance_drain_ms = 3000

{dedup}
[admin]
listen = {admin}

{plugin}"#,
        written_by = tables.written_by,
        brokers = toml_string(&kafka.brokers),
        group = toml_string(&kafka.topic(tables.group)),
        topic = toml_string(&kafka.topic(TOPIC)),
        retry = toml_string(&kafka.topic(RETRY_TOPIC)),
        dlq = toml_string(&kafka.topic(DLQ_TOPIC)),
        dedup = tables.dedup,
        admin = toml_string(tables.admin_listen),
    );
    let path = dir.join("switchboard.toml");
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The `switchboard` binary next to the lab's (both in the release target directory).
pub(crate) fn host_binary() -> anyhow::Result<PathBuf> {
    let binary = std::env::current_exe()?
        .parent()
        .context("the lab binary has no directory")?
        .join("switchboard");
    anyhow::ensure!(
        binary.exists(),
        "{} is missing: `cargo build --release -p switchboard` builds it next to the lab",
        binary.display()
    );
    Ok(binary)
}

/// The host process and where its log goes.
pub(crate) struct HostProcess {
    binary: PathBuf,
    config: PathBuf,
    log: PathBuf,
    child: Child,
}

impl HostProcess {
    pub(crate) fn spawn(binary: &Path, config: &Path, log: &Path) -> anyhow::Result<Self> {
        let child = Self::spawn_child(binary, config, log)?;
        Ok(Self {
            binary: binary.to_path_buf(),
            config: config.to_path_buf(),
            log: log.to_path_buf(),
            child,
        })
    }

    fn spawn_child(binary: &Path, config: &Path, log: &Path) -> anyhow::Result<Child> {
        // Every incarnation appends to one log, so a lost or doubled record can be followed
        // across restarts.
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        Command::new(binary)
            .arg("run")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))
    }

    /// SIGKILL, reap, start again.
    fn kill_and_restart(&mut self) -> anyhow::Result<()> {
        self.child.kill().context("killing the host")?;
        self.child.wait().context("reaping the killed host")?;
        self.child = Self::spawn_child(&self.binary, &self.config, &self.log)?;
        Ok(())
    }

    /// Fails when the host ended on its own.
    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            anyhow::bail!(
                "the host exited on its own ({status}); see {}",
                self.log.display()
            );
        }
        Ok(())
    }

    /// The host's peak resident memory so far, in MiB, from /proc; 0 where /proc is missing.
    pub(crate) fn peak_rss_mib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
            .map_or(0, |kb| kb / 1024)
    }

    /// Asks the host to stop gracefully (SIGTERM): it drains, commits and exits.
    pub(crate) fn request_stop(&mut self) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .context("running `kill -TERM`")?;
        anyhow::ensure!(status.success(), "`kill -TERM` failed: {status}");
        Ok(())
    }

    /// After [`HostProcess::request_stop`]: true once the host has exited, an error when it
    /// exited unsuccessfully.
    pub(crate) fn stopped(&mut self) -> anyhow::Result<bool> {
        match self.child.try_wait()? {
            None => Ok(false),
            Some(status) if status.success() => Ok(true),
            Some(status) => {
                anyhow::bail!("the host stopped with {status}; see {}", self.log.display())
            }
        }
    }

    /// SIGTERM, then waits for the graceful stop (drain and commit); SIGKILL after `grace`.
    pub(crate) async fn terminate(mut self, grace: Duration) -> anyhow::Result<()> {
        self.request_stop()?;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.stopped()? {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.child.kill()?;
        self.child.wait()?;
        anyhow::bail!(
            "the host did not stop within {grace:?} of SIGTERM; see {}",
            self.log.display()
        )
    }
}

/// A lab that fails half-way leaves no host behind.
impl Drop for HostProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Records in the DLQ. The lab has no Kafka client of its own: the replay tool's dry run reads
/// the DLQ to its end, writes nothing, and counts what it read.
pub(crate) async fn dlq_records(kafka: &LabKafka, outbox: &Outbox) -> anyhow::Result<u64> {
    let filter = ReplayFilter {
        reason: None,
        since_ms: 0,
        dry_run: true,
    };
    Ok(replay(
        &kafka.brokers,
        &kafka.topic(DLQ_TOPIC),
        &Default::default(),
        outbox,
        &filter,
    )
    .await?
    .scanned)
}

pub async fn run(options: CrashOptions) -> anyhow::Result<serde_json::Value> {
    let CrashOptions {
        kills,
        messages,
        plugin_dir,
        vendor_latency_ms,
        seed,
        timeout,
        broker,
        brokers,
    } = options;
    let fcm_wasm = fcm_component(&plugin_dir)?;
    let binary = host_binary()?;

    let kafka = LabKafka::start(broker, brokers, "crash", &[TOPIC], PARTITIONS).await?;
    let brokers = kafka.brokers.clone();
    let topic = kafka.topic(TOPIC);
    let latency = Duration::from_millis(vendor_latency_ms);
    let fixture = FcmFixture::start(|c| {
        c.faults.latency.mean = latency;
        c.faults.latency.jitter = latency / 2;
    })
    .await;
    let stats = fixture.sim.stats.clone();

    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let work = std::env::temp_dir().join(format!(
        "switchboard-lab-crash-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let config = write_host_config(
        &work,
        &kafka,
        &fixture,
        &fcm_wasm,
        &HostTables {
            written_by: "crash",
            group: GROUP,
            dedup: EMBEDDED_DEDUP,
            // Any free port: a lab host is not administered, and the next run's host must not
            // collide.
            admin_listen: "127.0.0.1:0",
        },
    )?;
    let log = work.join("host.log");
    let seed = seed.unwrap_or(nanos);
    let points = kill_points(kills, messages, &mut KillDice::new(seed));
    eprintln!(
        "[crash] kafka at {brokers}, fcm simulator at {}; host log {}; seed {seed}; kills at delivered {points:?}",
        fixture.sim.url(),
        log.display()
    );

    let started = Instant::now();
    let mut host = HostProcess::spawn(&binary, &config, &log)?;
    let producing = tokio::spawn({
        let brokers = brokers.clone();
        async move {
            produce(&brokers, &topic, messages, |i| {
                (format!("device-{i}"), demo_envelope(i))
            })
            .await
        }
    });

    // Kill when the delivered count passes the next point, but only while the simulator is
    // accepting deliveries from the current incarnation: then plugin calls are in flight.
    let accepted = || {
        let s = stats.snapshot();
        s.delivered + s.duplicates
    };
    let mut kills_done = 0u32;
    // The duplicates a kill causes show up after its restart, when the records whose deliveries
    // were accepted but not yet marked are consumed again: between this kill and the next.
    let mut duplicates_at_kill = Vec::with_capacity(kills as usize);
    let mut accepted_at_restart = accepted();
    let mut last_accepted = accepted_at_restart;
    let mut last_report = Instant::now();
    let mut next_point = points.iter().copied().peekable();
    while let Some(&point) = next_point.peek() {
        host.check_alive()?;
        let now_accepted = accepted();
        let flowing = now_accepted > last_accepted && now_accepted > accepted_at_restart;
        last_accepted = now_accepted;
        if stats.snapshot().delivered >= point && flowing {
            host.kill_and_restart()?;
            kills_done += 1;
            accepted_at_restart = accepted();
            last_accepted = accepted_at_restart;
            next_point.next();
            let s = stats.snapshot();
            duplicates_at_kill.push(s.duplicates);
            eprintln!(
                "[crash] kill {kills_done}/{kills} at delivered {} (duplicates so far {}), restarted",
                s.delivered, s.duplicates
            );
        }
        if started.elapsed() > timeout {
            eprintln!("[crash] timed out before kill {}", kills_done + 1);
            break;
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            let s = stats.snapshot();
            eprintln!(
                "[crash] delivered {}/{messages}, duplicates {}, kills {kills_done}/{kills}",
                s.delivered, s.duplicates
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    producing.await.context("producer task panicked")??;

    // Every request ends delivered or in the DLQ; the DLQ is read only when the simulator's
    // count alone falls short.
    let outbox = Outbox::connect(
        &brokers,
        &kafka.topic(RETRY_TOPIC),
        &kafka.topic(DLQ_TOPIC),
        &Default::default(),
    )?;
    let waiting_since = Instant::now();
    let mut dlq = 0;
    loop {
        host.check_alive()?;
        let delivered = stats.snapshot().delivered;
        if delivered >= messages {
            break;
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            dlq = dlq_records(&kafka, &outbox).await?;
            let s = stats.snapshot();
            eprintln!(
                "[crash] delivered {}/{messages}, duplicates {}, dlq {dlq}, kills {kills_done}/{kills}",
                s.delivered, s.duplicates
            );
            if s.delivered + dlq >= messages {
                break;
            }
            last_report = Instant::now();
        }
        if waiting_since.elapsed() > timeout {
            eprintln!(
                "[crash] timed out after {timeout:?}: {delivered}/{messages} delivered, dlq {dlq}"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    host.terminate(Duration::from_secs(30)).await?;
    let dlq = dlq_records(&kafka, &outbox).await?;
    let seen = stats.snapshot();
    let lost = messages.saturating_sub(seen.delivered + dlq);
    let inflight_bound = inflight_bound();
    let duplicates_per_kill: Vec<u64> = duplicates_at_kill
        .iter()
        .zip(duplicates_at_kill.iter().skip(1).chain([&seen.duplicates]))
        .map(|(at_kill, at_next)| at_next - at_kill)
        .collect();
    let before_first_kill = duplicates_at_kill
        .first()
        .copied()
        .unwrap_or(seen.duplicates);
    if before_first_kill > 0 {
        eprintln!("[crash] {before_first_kill} duplicates before any kill");
    }
    if lost == 0
        && before_first_kill == 0
        && duplicates_per_kill.iter().all(|d| *d <= inflight_bound)
    {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        eprintln!(
            "[crash] kept {} (host log, config, dedup store) for a look",
            work.display()
        );
    }
    // The DLQ reader's producer goes before the cluster it talks to.
    drop(outbox);
    drop(kafka);
    Ok(json!({
        "scenario": "crash",
        "broker": broker.as_str(),
        "kills": kills_done,
        "requested": messages,
        "delivered_unique": seen.delivered,
        "lost": lost,
        "duplicate_sends": seen.duplicates,
        "duplicates_per_kill": duplicates_per_kill,
        "inflight_bound": inflight_bound,
        "dlq": dlq,
        "elapsed_ms": elapsed.as_millis() as u64,
    }))
}
