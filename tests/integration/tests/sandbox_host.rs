//! The sandbox's bounds, from a config file to a running host process: `switchboard run` with
//! hostile plugins, fed through Kafka, watched only through its admin API (`/metrics` and
//! `/v1/vendors`), as an operator would. `sandbox.rs` loads plugins into the runtime directly;
//! this file shows that `[plugins.NAME.bounds]`, `[http] private_names` and
//! `runtime.max_instances` reach the plugins of a real host, and that a call the host could not
//! run for want of an instance slot never counts against the vendor that was never asked.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use switchboard::demo::produce;
use switchboard::kafka::EmbeddedKafka;
use switchboard_integration_tests::{batch_request, cluster_topics, guest_path, switchboard_bin};
use vendorsim::slowloris::{self, SlowlorisConfig};

const WAIT: Duration = Duration::from_secs(90);

/// A loopback port nobody listens on now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// This machine's own name, when it resolves to loopback only: a granted name whose DNS answer
/// points into the host's own network.
async fn a_name_for_loopback() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let name = name.trim().to_string();
    let found: Vec<_> = tokio::net::lookup_host((name.as_str(), 0))
        .await
        .unwrap()
        .map(|a| a.ip())
        .collect();
    assert!(
        !found.is_empty() && found.iter().all(|ip| ip.is_loopback()),
        "test set-up: this machine's name `{name}` does not resolve to loopback only: {found:?}"
    );
    name
}

/// A `switchboard run` process, killed if the test ends without stopping it.
struct HostProcess {
    child: tokio::process::Child,
    log: PathBuf,
    admin: String,
}

impl HostProcess {
    async fn start(config: &Path, admin_port: u16, work: &Path) -> Self {
        let log = work.join("host.log");
        let child = tokio::process::Command::new(switchboard_bin())
            .args(["run", "--config"])
            .arg(config)
            .stdout(std::fs::File::create(work.join("host.out")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .stdin(Stdio::null())
            .env_remove("RUST_BACKTRACE")
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let host = Self {
            child,
            log,
            admin: format!("http://127.0.0.1:{admin_port}"),
        };
        let healthz = format!("{}/healthz", host.admin);
        let up = eventually(WAIT, || async { reqwest::get(&healthz).await.is_ok() }).await;
        assert!(up, "the host did not come up:\n{}", host.log_text());
        host
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn get(&self, path: &str) -> String {
        reqwest::get(format!("{}{path}", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// A series of `/metrics`, by its name after `switchboard_` and its labels.
    async fn counter(&self, series: &str) -> u64 {
        let metrics = self.get("/metrics").await;
        let prefix = format!("switchboard_{series} ");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0)
    }

    /// A counter of `/metrics` for one plugin.
    async fn plugin_counter(&self, name: &str, plugin: &str) -> u64 {
        self.counter(&format!("{name}_total{{plugin=\"{plugin}\"}}"))
            .await
    }

    async fn vendor(&self, vendor: &str) -> Value {
        let vendors: Value = serde_json::from_str(&self.get("/v1/vendors").await).unwrap();
        vendors
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["vendor"] == vendor)
            .cloned()
            .unwrap_or_else(|| panic!("no vendor {vendor} in {vendors}"))
    }

    /// SIGTERM, then the exit status within a minute.
    async fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().unwrap().to_string();
        let _ = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await;
        tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the host did not stop:\n{}", self.log_text()))
            .unwrap()
    }
}

/// `wait_until` over an async condition.
async fn eventually<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_process_applies_its_config_files_sandbox_bounds() {
    let work = tempfile::tempdir().unwrap();
    let topic = "notifications";
    let cluster = EmbeddedKafka::start(1, &cluster_topics(&[topic]), 2).unwrap();
    let echo = slowloris::start(SlowlorisConfig::new()).await.unwrap();
    let name = a_name_for_loopback().await;
    let granted = format!("{name}:{}", echo.addr.port());
    let misbehave = guest_path("misbehave");
    let admin_port = free_port();
    let config = format!(
        r#"
state_dir = "state"

[kafka]
brokers = "{brokers}"
group_id = "sandbox-host"
topics = ["{topic}"]

[dispatch]
# One try per delivery: a call that found no instance slot must not use it up.
retry_max_attempts = 1
retry_base_ms = 100

[admin]
listen = "127.0.0.1:{admin_port}"

[dedup]
data_dir = "dedup"

[history]
path = "history.sqlite3"

[runtime]
# One instance slot for the whole host: `hog` holds it, `victim` waits for it.
max_instances = 1
artifact_cache_dir = "artifacts"
artifact_key_file = "artifact-key"

[http]
# The machine's own name resolves to loopback; only this entry lets `wide` reach it.
private_names = ["{name}"]

[plugins.wide]
path = "{misbehave}"
allowed_hosts = ["{granted}"]

[plugins.wide.bounds]
requests_per_call = 3

[plugins.hog]
path = "{misbehave}"
timeout_ms = 2000
concurrency = 1

[plugins.victim]
path = "{misbehave}"
timeout_ms = 300

[channels.wide]
wide = 1

[channels.hog]
hog = 1

[channels.victim]
victim = 1
"#,
        brokers = cluster.bootstrap_servers(),
        misbehave = misbehave.display(),
    );
    let config_path = work.path().join("switchboard.toml");
    std::fs::write(&config_path, config).unwrap();
    let host = HostProcess::start(&config_path, admin_port, work.path()).await;

    // `[plugins.wide.bounds]` and `[http] private_names`: five requests to a granted name
    // that resolves to loopback; three may go, two are denied, none for the address.
    let verb = format!("sendall:5@http://{granted}/echo");
    produce(cluster.bootstrap_servers(), topic, 1, |_| {
        batch_request("wide-1", "wide", &verb)
    })
    .await
    .unwrap();
    let denied = eventually(WAIT, || async {
        host.plugin_counter("plugin_denied_requests", "wide").await >= 2
    })
    .await;
    assert!(denied, "no request was denied:\n{}", host.log_text());
    // A denial is counted at once, the granted requests only after their round trip: wait for
    // them rather than race them.
    eventually(WAIT, || async { echo.stats.snapshot().delivered >= 3 }).await;
    assert_eq!(echo.stats.snapshot().delivered, 3, "{}", host.log_text());
    assert_eq!(
        host.plugin_counter("plugin_denied_requests", "wide").await,
        2
    );
    assert_eq!(
        host.plugin_counter("plugin_denied_addresses", "wide").await,
        0,
        "the name in `http.private_names` was refused"
    );

    // `runtime.max_instances`: `hog` spins in the only slot; `victim`'s calls wait for it past
    // their deadline and fail as host-busy, which is the host's doing, not the vendor's.
    produce(cluster.bootstrap_servers(), topic, 5, |i| {
        batch_request(&format!("hog-{i}"), "hog", "loop")
    })
    .await
    .unwrap();
    let hogging = eventually(WAIT, || async {
        host.plugin_counter("plugin_calls", "hog").await >= 1
    })
    .await;
    assert!(hogging, "hog was never called:\n{}", host.log_text());
    produce(cluster.bootstrap_servers(), topic, 20, |i| {
        batch_request(&format!("victim-{i}"), "victim", "ok")
    })
    .await
    .unwrap();
    let busy = eventually(WAIT, || async {
        host.plugin_counter("plugin_host_busy", "victim").await >= 1
    })
    .await;
    assert!(
        busy,
        "victim never found the host busy:\n{}",
        host.log_text()
    );
    let victim = host.vendor("victim").await;
    assert_eq!(victim["window"]["errors"], 0, "{victim}");
    assert_eq!(victim["window"]["timeouts"], 0, "{victim}");
    assert_eq!(victim["breaker"], "closed", "{victim}");
    assert_eq!(victim["trips"], 0, "{victim}");
    // The hog's own timeouts do count against it.
    let hog_timed_out = eventually(WAIT, || async {
        host.vendor("hog").await["window"]["timeouts"]
            .as_u64()
            .is_some_and(|n| n >= 1)
    })
    .await;
    assert!(hog_timed_out, "{}", host.vendor("hog").await);
    let victim = host.vendor("victim").await;
    assert_eq!(victim["window"]["errors"], 0, "{victim}");

    // Every victim delivery is delivered once the hog's one try has timed out: waiting for a
    // slot took none of their one attempt. The hog's five went to the DLQ.
    let settled = eventually(WAIT, || async {
        host.counter("deliveries_total{outcome=\"delivered\"}")
            .await
            >= 21
    })
    .await;
    let failed = host.counter("deliveries_total{outcome=\"failed\"}").await;
    assert!(
        settled,
        "victim deliveries were lost to host-busy calls: delivered {}, failed {failed}\n{}",
        host.counter("deliveries_total{outcome=\"delivered\"}")
            .await,
        host.log_text()
    );
    assert_eq!(failed, 5, "only the hog's deliveries may fail");

    let status = host.stop().await;
    assert!(status.success(), "exit {status}");
}
