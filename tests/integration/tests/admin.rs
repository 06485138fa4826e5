//! The admin API and the operator CLI against a real host: the embedded Kafka cluster, the
//! vendor simulators and the bundled components. Auth, live weights (and their restart),
//! refusals that keep the active plugin version, a hot swap under traffic, rollback, canaries,
//! the watched directory, and `switchboard weights` driving the same API.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use switchboard::config::SecretSource;
use switchboard::demo::{DemoVendors, demo_envelope, produce};
use switchboard::kafka::EmbeddedKafka;
use switchboard::plugin::registry::version_id;
use switchboard::route::Router;
use switchboard_integration_tests::{
    CapturedLogs, FcmFixture, plugin_dir, plugin_path, relabelled_component, wait_until,
};

const TOKEN: &str = "test-admin-token-5d1f";
const WAIT: Duration = Duration::from_secs(60);

/// The admin API of one running host.
struct Api {
    base: String,
    http: reqwest::Client,
}

/// What the API answered: the status, the `WWW-Authenticate` header, and the body (JSON when it
/// is JSON, else a string).
struct Answer {
    status: StatusCode,
    www_authenticate: Option<String>,
    content_type: String,
    body: Value,
}

impl Answer {
    fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or_default()
    }
}

impl Api {
    fn new(host: &switchboard::RunningHost) -> Self {
        let addr = host.admin_addr.expect("the admin API listens");
        Self {
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Answer {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let www_authenticate = header(reqwest::header::WWW_AUTHENTICATE);
        let content_type = header(reqwest::header::CONTENT_TYPE).unwrap_or_default();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer {
            status,
            www_authenticate,
            content_type,
            body,
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path, None, None).await
    }

    /// A mutation with the right token and a JSON body.
    async fn send(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        let body = body.map(|b| b.to_string().into_bytes());
        self.call(method, path, Some(TOKEN), body).await
    }

    async fn weights(&self, channel: &str) -> Value {
        let answer = self.get(&format!("/v1/channels/{channel}/weights")).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        answer.body["weights"].clone()
    }

    async fn plugin(&self, name: &str) -> Value {
        let answer = self.get("/v1/plugins").await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        answer
            .body
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap()
    }

    async fn active_id(&self, name: &str) -> String {
        self.plugin(name).await["active"]["id"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

/// How 100 picks of channel `sms` fall between its vendors.
fn split(router: &Router) -> BTreeMap<String, u32> {
    let mut counts = BTreeMap::new();
    for _ in 0..100 {
        *counts.entry(router.pick("sms", None).unwrap()).or_default() += 1;
    }
    counts
}

fn counts(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// Bytes that are no component: a multiplicative hash of the index.
fn noise(len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

fn sms_host_config(vendors: &DemoVendors) -> switchboard::Config {
    let mut config = vendors.host_config(&plugin_dir()).unwrap();
    config.admin.token = Some(SecretSource::Value(TOKEN.into()));
    config.admin.max_body_kb = 1;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_change_live_with_the_token_and_are_kept_across_a_restart() {
    let captured = CapturedLogs::install();
    let vendors = DemoVendors::start(Duration::from_millis(1)).await.unwrap();
    let config = sms_host_config(&vendors);
    let host = switchboard::start(config.clone()).await.unwrap();
    let api = Api::new(&host);

    // Reads are open.
    let health = api.get("/healthz").await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.body, "ok");
    let console = api.get("/").await;
    assert_eq!(console.status, StatusCode::OK);
    assert!(console.content_type.starts_with("text/html"));
    assert!(
        console
            .body
            .as_str()
            .unwrap()
            .contains("Switchboard console")
    );
    let metrics = api.get("/metrics").await;
    assert!(
        metrics
            .body
            .as_str()
            .unwrap()
            .contains("switchboard_deliveries_total{outcome=\"delivered\"} 0"),
        "{}",
        metrics.body
    );
    let status = api.get("/v1/status").await;
    assert_eq!(status.status, StatusCode::OK);
    assert_eq!(status.body["counters"]["deliveries_delivered"], 0);
    assert_eq!(status.body["lanes"].as_array().unwrap().len(), 3);
    assert_eq!(status.body["vendors"].as_array().unwrap().len(), 5);
    assert_eq!(status.body["plugins"].as_array().unwrap().len(), 5);
    assert_eq!(
        status.body["channels"]["sms"]["baseline"],
        json!({"sms-nhn": 50, "sms-twilio": 50})
    );
    let channels = api.get("/v1/channels").await;
    assert_eq!(channels.body["sms"], status.body["channels"]["sms"]);
    let vendor_list = api.get("/v1/vendors").await;
    assert_eq!(vendor_list.body[0]["breaker"], "closed");
    let series = api.get("/v1/vendors/sms-nhn/series?seconds=30").await;
    assert_eq!(series.body.as_array().unwrap().len(), 30);
    assert_eq!(
        api.get("/v1/vendors/sms-acme/series").await.status,
        StatusCode::NOT_FOUND
    );
    let unknown = api.get("/v1/channels/fax/weights").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert!(unknown.error().contains("fax"), "{}", unknown.body);

    // Mutations need the token.
    let path = "/v1/channels/sms/weights";
    let change = json!({"sms-twilio": 70, "sms-nhn": 30})
        .to_string()
        .into_bytes();
    let missing = api
        .call(Method::PUT, path, None, Some(change.clone()))
        .await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.www_authenticate.as_deref(), Some("Bearer"));
    assert!(missing.error().contains("Bearer"), "{}", missing.body);
    let wrong = api
        .call(Method::PUT, path, Some("guess"), Some(change.clone()))
        .await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    assert!(!wrong.error().contains(TOKEN));
    assert_eq!(
        api.weights("sms").await,
        json!({"sms-nhn": 50, "sms-twilio": 50})
    );

    // With it, the weights change, and so does the routing: exactly 70/30 over one cycle.
    let set = api.call(Method::PUT, path, Some(TOKEN), Some(change)).await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.body);
    assert_eq!(set.body["channel"], "sms");
    assert_eq!(
        set.body["weights"],
        json!({"sms-nhn": 30, "sms-twilio": 70})
    );
    assert_eq!(
        set.body["baseline"],
        json!({"sms-nhn": 50, "sms-twilio": 50})
    );
    assert_eq!(
        api.weights("sms").await,
        json!({"sms-nhn": 30, "sms-twilio": 70})
    );
    assert_eq!(
        split(&host.router),
        counts(&[("sms-nhn", 30), ("sms-twilio", 70)])
    );

    // Weight 0 drains a vendor; the change merges, so the other keeps its 70.
    let drain = api
        .send(Method::PUT, path, Some(json!({"sms-nhn": 0})))
        .await;
    assert_eq!(
        drain.body["weights"],
        json!({"sms-nhn": 0, "sms-twilio": 70})
    );
    assert_eq!(split(&host.router), counts(&[("sms-twilio", 100)]));
    api.send(Method::PUT, path, Some(json!({"sms-nhn": 30})))
        .await;

    // Refusals say why and change nothing.
    let unknown_vendor = api
        .send(Method::PUT, path, Some(json!({"sms-acme": 5})))
        .await;
    assert_eq!(unknown_vendor.status, StatusCode::BAD_REQUEST);
    assert!(
        unknown_vendor.error().contains("sms-acme"),
        "{}",
        unknown_vendor.body
    );
    let all_zero = api
        .send(
            Method::PUT,
            path,
            Some(json!({"sms-nhn": 0, "sms-twilio": 0})),
        )
        .await;
    assert_eq!(all_zero.status, StatusCode::BAD_REQUEST);
    assert!(all_zero.error().contains("0"), "{}", all_zero.body);
    let unknown_channel = api
        .send(
            Method::PUT,
            "/v1/channels/fax/weights",
            Some(json!({"a": 1})),
        )
        .await;
    assert_eq!(unknown_channel.status, StatusCode::NOT_FOUND);
    let not_json = api
        .call(Method::PUT, path, Some(TOKEN), Some(b"sms-nhn=5".to_vec()))
        .await;
    assert_eq!(not_json.status, StatusCode::BAD_REQUEST);
    assert!(not_json.error().contains("object"), "{}", not_json.body);
    let big = Value::Object([("x".repeat(2048), json!(1))].into_iter().collect());
    let too_big = api.send(Method::PUT, path, Some(big)).await;
    assert_eq!(too_big.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        too_big.error().contains("admin.max_body_kb"),
        "{}",
        too_big.body
    );
    assert_eq!(
        api.weights("sms").await,
        json!({"sms-nhn": 30, "sms-twilio": 70})
    );
    host.stop().await.unwrap();

    // A restart (same state directory) comes back on the live weights. This host has no token:
    // reads work, mutations are refused with how to turn them on.
    let mut no_token = config.clone();
    no_token.admin.token = None;
    let token_in_env = std::env::var_os(switchboard::admin::TOKEN_ENV).is_some();
    let host = switchboard::start(no_token).await.unwrap();
    let api = Api::new(&host);
    assert_eq!(
        api.weights("sms").await,
        json!({"sms-nhn": 30, "sms-twilio": 70})
    );
    assert_eq!(
        split(&host.router),
        counts(&[("sms-nhn", 30), ("sms-twilio", 70)])
    );
    if !token_in_env {
        let off = api.send(Method::DELETE, path, None).await;
        assert_eq!(off.status, StatusCode::FORBIDDEN);
        assert!(
            off.error().contains("admin.token") && off.error().contains("SWITCHBOARD_ADMIN_TOKEN"),
            "{}",
            off.body
        );
        assert_eq!(
            api.weights("sms").await,
            json!({"sms-nhn": 30, "sms-twilio": 70})
        );
    }
    host.stop().await.unwrap();

    // DELETE puts the channel back on the config file's weights, also across a restart.
    let host = switchboard::start(config.clone()).await.unwrap();
    let api = Api::new(&host);
    let reset = api.send(Method::DELETE, path, None).await;
    assert_eq!(reset.status, StatusCode::OK, "{}", reset.body);
    assert_eq!(
        reset.body["weights"],
        json!({"sms-nhn": 50, "sms-twilio": 50})
    );
    assert_eq!(
        split(&host.router),
        counts(&[("sms-nhn", 50), ("sms-twilio", 50)])
    );
    host.stop().await.unwrap();
    let host = switchboard::start(config).await.unwrap();
    let api = Api::new(&host);
    assert_eq!(
        api.weights("sms").await,
        json!({"sms-nhn": 50, "sms-twilio": 50})
    );
    let metrics = api.get("/metrics").await;
    host.stop().await.unwrap();

    // The token is a secret: it is in no log line, at any level, and not in the metrics.
    assert!(!metrics.body.to_string().contains(TOKEN));
    let logs = captured.text();
    assert!(logs.contains("admin API listening"), "the capture works");
    assert!(!logs.contains(TOKEN), "the admin token reached a log line");
}

async fn produce_demo(brokers: &str, topic: &str, from: u64, count: u64) {
    produce(brokers, topic, count, |i| {
        let n = from + i;
        (format!("device-{n}"), demo_envelope(n))
    })
    .await
    .unwrap();
}

/// Records produced while the new version is uploaded.
const SWAP_RECORDS: u64 = 2000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_swaps_in_under_traffic_and_refusals_keep_the_active_one() {
    let topic = "admin-swap";
    let cluster = EmbeddedKafka::start(1, &[topic.to_string()], 3).unwrap();
    let brokers = cluster.bootstrap_servers().to_string();
    // A little vendor latency, so the swap lands while deliveries are in flight.
    let fixture = FcmFixture::start(|c| {
        c.faults.latency = vendorsim::Latency::fixed(Duration::from_millis(5));
    })
    .await;
    let stats = fixture.sim.stats.clone();
    let mut config = fixture.host_config(&brokers, topic, "g-admin-swap");
    config.admin.token = Some(SecretSource::Value(TOKEN.into()));
    config.admin.max_upload_mb = 1;
    config.admin.max_body_kb = 1;
    let host = switchboard::start(config).await.unwrap();
    let api = Api::new(&host);

    let original = std::fs::read(plugin_path("fcm")).unwrap();
    let old_id = version_id(&original);
    assert_eq!(api.active_id("fcm").await, old_id);
    let described = api.plugin("fcm").await["active"]["version"].clone();
    produce_demo(&brokers, topic, 0, 300).await;
    assert!(
        wait_until(WAIT, || stats.snapshot().delivered >= 300).await,
        "{:?}",
        stats.snapshot()
    );

    // Refusals, each with its reason; the active version stays through every one.
    let upload = |body: Vec<u8>, token: Option<&'static str>| {
        let api = &api;
        async move {
            api.call(Method::POST, "/v1/plugins/fcm", token, Some(body))
                .await
        }
    };
    let garbage = upload(noise(4096), Some(TOKEN)).await;
    assert_eq!(garbage.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        garbage
            .error()
            .contains("not a valid WebAssembly component"),
        "{}",
        garbage.body
    );
    assert_eq!(api.active_id("fcm").await, old_id);
    let other_plugin = upload(std::fs::read(plugin_path("sms-nhn")).unwrap(), Some(TOKEN)).await;
    assert_eq!(
        other_plugin.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        other_plugin.body
    );
    assert!(!other_plugin.error().is_empty());
    assert_eq!(api.active_id("fcm").await, old_id);
    let oversized = upload(vec![0; 2 << 20], Some(TOKEN)).await;
    assert_eq!(oversized.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        oversized.error().contains("admin.max_upload_mb"),
        "{}",
        oversized.body
    );
    assert_eq!(api.active_id("fcm").await, old_id);
    let v2 = relabelled_component(&original, "v2");
    let v2_id = version_id(&v2);
    assert_ne!(v2_id, old_id);
    let no_token = upload(v2.clone(), None).await;
    assert_eq!(no_token.status, StatusCode::UNAUTHORIZED);
    assert_eq!(api.active_id("fcm").await, old_id);
    let unknown = api
        .call(
            Method::POST,
            "/v1/plugins/fcm-eu",
            Some(TOKEN),
            Some(v2.clone()),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let long_body = api
        .send(
            Method::POST,
            "/v1/plugins/fcm/activate",
            Some(json!({"id": "f".repeat(2048)})),
        )
        .await;
    assert_eq!(long_body.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(api.active_id("fcm").await, old_id);

    // Staged only: loaded and listed, not active.
    let staged = api
        .call(
            Method::POST,
            "/v1/plugins/fcm?activate=false",
            Some(TOKEN),
            Some(v2.clone()),
        )
        .await;
    assert_eq!(staged.status, StatusCode::OK, "{}", staged.body);
    assert_eq!(
        staged.body,
        json!({"plugin": "fcm", "id": v2_id, "version": described, "active": false})
    );
    let listed = api.plugin("fcm").await;
    assert_eq!(listed["active"]["id"], old_id.as_str());
    assert_eq!(listed["staged"][0]["id"], v2_id.as_str());

    // The swap, while records flow: every one delivered once.
    let producing = {
        let brokers = brokers.clone();
        tokio::spawn(async move { produce_demo(&brokers, topic, 300, SWAP_RECORDS).await })
    };
    assert!(
        wait_until(WAIT, || stats.snapshot().delivered >= 400).await,
        "{:?}",
        stats.snapshot()
    );
    let swapped = upload(v2.clone(), Some(TOKEN)).await;
    assert_eq!(swapped.status, StatusCode::OK, "{}", swapped.body);
    assert_eq!(
        swapped.body,
        json!({"plugin": "fcm", "id": v2_id, "version": described, "active": true})
    );
    let delivered_at_swap = stats.snapshot().delivered;
    producing.await.unwrap();
    // And records after the swap, which only the new version can take.
    produce_demo(&brokers, topic, 300 + SWAP_RECORDS, 200).await;
    let total = 300 + SWAP_RECORDS + 200;
    let listed = api.plugin("fcm").await;
    assert_eq!(listed["active"]["id"], v2_id.as_str());
    assert_eq!(listed["active"]["source"], "upload");
    assert_eq!(listed["previous"][0]["id"], old_id.as_str());
    assert!(
        wait_until(WAIT, || stats.snapshot().delivered >= total).await,
        "{:?}",
        stats.snapshot()
    );
    eprintln!("delivered when the new version became active: {delivered_at_swap} of {total}");
    assert_eq!(stats.snapshot().delivered, total);
    assert_eq!(stats.snapshot().duplicates, 0);
    // The new version delivered at least the records after the swap.
    let serving = host.registry.slot("fcm").unwrap().active();
    assert_eq!(serving.id, v2_id);
    assert!(
        serving.totals(600, 0).ok >= 200,
        "the new version answered nothing: {:?}",
        serving.totals(600, 0)
    );

    // Rollback: the old version is active again.
    let back = api
        .send(Method::POST, "/v1/plugins/fcm/rollback", None)
        .await;
    assert_eq!(back.status, StatusCode::OK, "{}", back.body);
    assert_eq!(back.body["id"], old_id.as_str());
    assert_eq!(back.body["active"], true);
    assert_eq!(api.active_id("fcm").await, old_id);

    // A canary takes its share of the traffic, is listed, and ends on DELETE.
    let canary = api
        .send(
            Method::PUT,
            "/v1/plugins/fcm/canary",
            Some(json!({"version": v2_id, "percent": 10})),
        )
        .await;
    assert_eq!(canary.status, StatusCode::OK, "{}", canary.body);
    let listed = api.plugin("fcm").await;
    assert_eq!(listed["canary"]["version"]["id"], v2_id.as_str());
    assert_eq!(listed["canary"]["percent"], 10);
    assert_eq!(listed["active"]["id"], old_id.as_str());
    produce_demo(&brokers, topic, total, 200).await;
    assert!(
        wait_until(WAIT, || stats.snapshot().delivered >= total + 200).await,
        "{:?}",
        stats.snapshot()
    );
    let bad_percent = api
        .send(
            Method::PUT,
            "/v1/plugins/fcm/canary",
            Some(json!({"version": v2_id, "percent": 100})),
        )
        .await;
    assert_eq!(bad_percent.status, StatusCode::BAD_REQUEST);
    let ended = api
        .send(Method::DELETE, "/v1/plugins/fcm/canary", None)
        .await;
    assert_eq!(ended.status, StatusCode::OK, "{}", ended.body);
    let listed = api.plugin("fcm").await;
    assert_eq!(listed["canary"], Value::Null);
    assert_eq!(listed["last_canary_end"]["id"], v2_id.as_str());
    assert_eq!(listed["active"]["id"], old_id.as_str());

    // Activation by id, and an id never loaded.
    let activated = api
        .send(
            Method::POST,
            "/v1/plugins/fcm/activate",
            Some(json!({"id": v2_id})),
        )
        .await;
    assert_eq!(activated.status, StatusCode::OK, "{}", activated.body);
    assert_eq!(api.active_id("fcm").await, v2_id);
    let never = api
        .send(
            Method::POST,
            "/v1/plugins/fcm/activate",
            Some(json!({"id": "0123456789abcdef"})),
        )
        .await;
    assert_eq!(never.status, StatusCode::NOT_FOUND);
    assert_eq!(api.active_id("fcm").await, v2_id);

    host.stop().await.unwrap();
    assert_eq!(stats.snapshot().delivered, total + 200);
    assert_eq!(stats.snapshot().duplicates, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_renamed_into_the_watched_directory_becomes_active() {
    let topic = "admin-watch";
    let cluster = EmbeddedKafka::start(1, &[topic.to_string()], 1).unwrap();
    let brokers = cluster.bootstrap_servers().to_string();
    let fixture = FcmFixture::start(|_| {}).await;
    let stats = fixture.sim.stats.clone();
    let watched = tempfile::tempdir().unwrap();
    let mut config = fixture.host_config(&brokers, topic, "g-admin-watch");
    config.admin.watch_dir = Some(watched.path().to_path_buf());
    let host = switchboard::start(config).await.unwrap();
    let api = Api::new(&host);

    let original = std::fs::read(plugin_path("fcm")).unwrap();
    let v2 = relabelled_component(&original, "watched v2");
    let v2_id = version_id(&v2);
    // Written under a name the watcher ignores, then renamed in whole.
    let partial: PathBuf = watched.path().join("fcm.wasm.partial");
    std::fs::write(&partial, &v2).unwrap();
    std::fs::rename(&partial, watched.path().join("fcm@v2.wasm")).unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut active = api.active_id("fcm").await;
    while active != v2_id && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        active = api.active_id("fcm").await;
    }
    assert_eq!(active, v2_id);
    assert_eq!(api.plugin("fcm").await["active"]["source"], "watched");

    // And it delivers.
    produce_demo(&brokers, topic, 0, 50).await;
    assert!(
        wait_until(WAIT, || stats.snapshot().delivered >= 50).await,
        "{:?}",
        stats.snapshot()
    );
    host.stop().await.unwrap();
    assert_eq!(stats.snapshot().duplicates, 0);
}

/// Runs the built `switchboard` binary (next to this test's `deps` directory).
async fn cli(args: &[&str]) -> std::process::Output {
    let bin = switchboard_integration_tests::switchboard_bin();
    tokio::process::Command::new(bin)
        .args(args)
        // Only what the arguments say.
        .env_remove("SWITCHBOARD_ADMIN_TOKEN")
        .env_remove("SWITCHBOARD_ADMIN_URL")
        .env_remove("RUST_BACKTRACE")
        .output()
        .await
        .unwrap()
}

fn stdout_of(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr_of_failure(output: &std::process::Output) -> String {
    assert!(
        !output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_drives_the_admin_api() {
    let vendors = DemoVendors::start(Duration::from_millis(1)).await.unwrap();
    let host = switchboard::start(sms_host_config(&vendors)).await.unwrap();
    let api = Api::new(&host);
    let admin = api.base.clone();

    let set = stdout_of(
        &cli(&[
            "weights",
            "set",
            "sms",
            "sms-twilio=70",
            "sms-nhn=30",
            "--admin",
            &admin,
            "--token",
            TOKEN,
        ])
        .await,
    );
    assert!(set.contains("70.0%"), "{set}");
    assert_eq!(
        api.weights("sms").await,
        json!({"sms-nhn": 30, "sms-twilio": 70})
    );
    let got: Value = serde_json::from_str(&stdout_of(
        &cli(&["weights", "get", "sms", "--json", "--admin", &admin]).await,
    ))
    .unwrap();
    assert_eq!(got["weights"], json!({"sms-nhn": 30, "sms-twilio": 70}));
    assert_eq!(got["baseline"], json!({"sms-nhn": 50, "sms-twilio": 50}));

    // Errors: the server's message, a non-zero exit, nothing changed.
    let refused = stderr_of_failure(
        &cli(&[
            "weights",
            "set",
            "sms",
            "sms-acme=5",
            "--admin",
            &admin,
            "--token",
            TOKEN,
        ])
        .await,
    );
    assert!(
        refused.contains("channel `sms` has no vendor `sms-acme`"),
        "{refused}"
    );
    let unauthenticated =
        stderr_of_failure(&cli(&["weights", "set", "sms", "sms-nhn=1", "--admin", &admin]).await);
    assert!(unauthenticated.contains("--token"), "{unauthenticated}");
    let malformed =
        stderr_of_failure(&cli(&["weights", "set", "sms", "sms-twilio", "--admin", &admin]).await);
    assert!(malformed.contains("expected VENDOR=WEIGHT"), "{malformed}");
    assert_eq!(
        api.weights("sms").await,
        json!({"sms-nhn": 30, "sms-twilio": 70})
    );

    // The tables.
    let vendors_table = stdout_of(&cli(&["vendors", "--admin", &admin]).await);
    assert!(
        vendors_table
            .lines()
            .any(|l| l.starts_with("sms-nhn") && l.contains("closed")),
        "{vendors_table}"
    );
    let fcm_id = api.active_id("fcm").await;
    let plugins_table = stdout_of(&cli(&["plugins", "list", "--admin", &admin]).await);
    assert!(
        plugins_table
            .lines()
            .any(|l| l.starts_with("fcm ") && l.contains(&fcm_id)),
        "{plugins_table}"
    );
    let fleet_table = stdout_of(&cli(&["fleet", "--admin", &admin]).await);
    assert!(
        fleet_table
            .lines()
            .any(|l| l.contains(" * ") && l.contains("current") && l.contains(&fcm_id)),
        "this host, current, on its fcm version: {fleet_table}"
    );

    stdout_of(
        &cli(&[
            "weights", "reset", "sms", "--admin", &admin, "--token", TOKEN,
        ])
        .await,
    );
    assert_eq!(
        api.weights("sms").await,
        json!({"sms-nhn": 50, "sms-twilio": 50})
    );
    host.stop().await.unwrap();
}
