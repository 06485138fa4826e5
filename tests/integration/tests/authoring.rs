//! A vendor team's whole path, from a clean temp directory outside the checkout: the SDK packed
//! as it would be published, scaffold against that packed crate, build, check, offline test (and
//! a recorded one), load into a running host on embedded defaults, deliver to vendorsim.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use switchboard::config::{PluginConfig, SecretSource};
use switchboard::demo::produce;
use switchboard_integration_tests::{
    path_arg as path, run_switchboard as switchboard, succeeded as ok, wait_until,
};

/// The target directory this test was built into (`target/<profile>/deps/this-test`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_path_buf()
}

/// `cargo package -p switchboard-sdk` (which builds the packed crate on its own to verify it),
/// then the `.crate` unpacked into `into`: the SDK as an author outside this repository gets it.
fn packed_sdk(into: &Path) -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let packed = Command::new(env!("CARGO"))
        .args(["package", "-p", "switchboard-sdk", "--allow-dirty"])
        .current_dir(&workspace)
        .env("CARGO_TARGET_DIR", target_dir())
        .output()
        .unwrap();
    assert!(
        packed.status.success(),
        "{}",
        String::from_utf8_lossy(&packed.stderr)
    );
    let version = env!("CARGO_PKG_VERSION");
    let file = target_dir().join(format!("package/switchboard-sdk-{version}.crate"));
    let unpacked = Command::new("tar")
        .args(["xzf", path(&file), "-C", path(into)])
        .output()
        .unwrap();
    assert!(unpacked.status.success(), "{unpacked:?}");
    let sdk = into.join(format!("switchboard-sdk-{version}"));
    assert!(
        sdk.join("wit/switchboard.wit").is_file(),
        "the WIT is packed"
    );
    sdk
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaffold_build_check_test_load_and_deliver() {
    let work = tempfile::tempdir().unwrap();
    let sdk = packed_sdk(work.path());

    // 1. Scaffold, against the packed SDK.
    ok(&switchboard(&[
        "plugin",
        "new",
        "acme-sms",
        "--channel",
        "sms",
        "--dir",
        path(work.path()),
        "--sdk",
        path(&sdk),
    ]));
    let crate_dir = work.path().join("acme-sms");

    // 2. Build, with one command. Sharing this workspace's target directory reuses the SDK
    // and wit-bindgen builds of `make plugins`.
    let build = Command::new(env!("CARGO"))
        .args(["build", "--release"])
        .current_dir(&crate_dir)
        .env("CARGO_TARGET_DIR", target_dir())
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let wasm = target_dir().join("wasm32-wasip2/release/acme_sms.wasm");

    // 3. Check.
    let checked = ok(&switchboard(&["plugin", "check", path(&wasm)]));
    assert!(checked.contains("channel:     sms"), "{checked}");
    // Linked with the small stack the generated `.cargo/config.toml` asks for, not rustc's
    // 1 MiB, which would push the heap out of the memory kept resident between calls.
    assert!(
        checked.contains("stack:       256 KiB, first in linear memory"),
        "{checked}"
    );
    assert!(!checked.contains("warning:"), "{checked}");

    // 4. Offline test against the generated cases file.
    let cases = crate_dir.join("tests/cases.yaml");
    let tested = ok(&switchboard(&[
        "plugin",
        "test",
        path(&wasm),
        "--cases",
        path(&cases),
    ]));
    assert!(tested.contains("3 passed, 0 failed"), "{tested}");

    // A case that expects the wrong outcome fails, with a reason and a failing exit code.
    let broken = std::fs::read_to_string(&cases)
        .unwrap()
        .replace("id: msg-1", "id: msg-2");
    let broken_cases = work.path().join("broken.yaml");
    std::fs::write(&broken_cases, broken).unwrap();
    let failed = switchboard(&[
        "plugin",
        "test",
        path(&wasm),
        "--cases",
        path(&broken_cases),
    ]);
    assert!(!failed.status.success());
    let table = String::from_utf8_lossy(&failed.stdout);
    assert!(
        table.contains("FAIL: expected delivered(msg-2), got delivered(msg-1)"),
        "{table}"
    );
    assert!(table.contains("2 passed, 1 failed"), "{table}");

    // Recording against the Hello simulator, then replaying the recording offline.
    let sim = vendorsim::hello::start(vendorsim::hello::HelloConfig::new("k3y"))
        .await
        .unwrap();
    let live_cases = format!(
        "plugin:\n  config: {{endpoint: \"{url}\"}}\n  secrets: {{api_key: k3y}}\n  allowed_hosts: [\"{addr}\"]\ncases:\n  - name: live delivered\n    delivery: {{recipient: \"+821055500000\", content: {{body: hi}}}}\n    expect: {{outcome: delivered}}\n  - name: live invalid\n    delivery: {{recipient: \"12\", content: {{body: hi}}}}\n    expect: {{outcome: delivered}}\n",
        url = sim.url(),
        addr = sim.addr
    );
    let live = work.path().join("live.yaml");
    let recorded = work.path().join("recorded.yaml");
    std::fs::write(&live, live_cases).unwrap();
    ok(&switchboard(&[
        "plugin",
        "test",
        path(&wasm),
        "--cases",
        path(&live),
        "--record",
        "--out",
        path(&recorded),
    ]));
    let recorded_text = std::fs::read_to_string(&recorded).unwrap();
    assert!(
        recorded_text.contains("invalid-recipient"),
        "{recorded_text}"
    );
    assert!(
        recorded_text.contains("{{secret:api_key}}"),
        "{recorded_text}"
    );
    // The test secret appears once, where the cases file gives it; never in an exchange.
    assert_eq!(recorded_text.matches("k3y").count(), 1, "{recorded_text}");
    let replayed = ok(&switchboard(&[
        "plugin",
        "test",
        path(&wasm),
        "--cases",
        path(&recorded),
    ]));
    assert!(replayed.contains("2 passed, 0 failed"), "{replayed}");

    // 5. Load into a running host on embedded defaults (in-process Kafka).
    let mut config = switchboard::Config::default();
    config.dedup.data_dir = work.path().join("dedup");
    config.history.path = work.path().join("history.sqlite3");
    config.runtime.artifact_cache_dir = work.path().join("artifacts");
    config.runtime.artifact_key_file = work.path().join("artifact-key");
    config.plugins.insert(
        "acme-sms".into(),
        PluginConfig {
            path: wasm.clone(),
            allowed_hosts: vec![sim.addr.to_string()],
            timeout_ms: 5_000,
            memory_mb: 32,
            max_batch: 50,
            concurrency: 8,
            rate_per_s: None,
            burst: None,
            config: [("endpoint".to_string(), sim.url())].into(),
            secrets: [("api_key".to_string(), SecretSource::Value("k3y".into()))].into(),
            bounds: Default::default(),
        },
    );
    config
        .channels
        .insert("sms".into(), [("acme-sms".to_string(), 100)].into());
    let host = switchboard::start(config).await.unwrap();

    // 6. Deliver through it to the simulator.
    let before = sim.stats.snapshot().delivered;
    produce(&host.bootstrap_servers, "notifications", 200, |i| {
        let envelope = serde_json::json!({
            "id": format!("acme-{i}"), "channel": "sms", "priority": "realtime",
            "recipients": [{"to": format!("+8210777{i:05}")}],
            "content": {"body": format!("hello {i}")},
        });
        (format!("k{i}"), envelope.to_string())
    })
    .await
    .unwrap();
    let stats = sim.stats.clone();
    assert!(
        wait_until(Duration::from_secs(60), || stats.snapshot().delivered
            >= before + 200)
        .await,
        "{:?}",
        stats.snapshot()
    );
    host.stop().await.unwrap();
    assert_eq!(sim.stats.snapshot().delivered, before + 200);
    assert_eq!(sim.stats.snapshot().duplicates, 0);
}
