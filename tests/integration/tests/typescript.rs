//! A vendor team writing TypeScript: the scaffold (`plugin new --lang ts`) builds with npm,
//! passes `plugin check` and its generated cases, and the example Twilio adapter in TypeScript
//! (`examples/twilio-ts`, built by `make example-ts`) delivers through a running host on
//! embedded defaults to the Twilio simulator, exactly once per message.

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

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs npm in `dir`; the registry is reached only for packages not in npm's cache, which
/// `make sdk-ts` filled.
fn npm(dir: &Path, args: &[&str]) {
    let output = Command::new("npm")
        .args(args)
        .args(["--no-fund", "--no-audit", "--prefer-offline"])
        .current_dir(dir)
        .output()
        .unwrap();
    ok(&output);
}

#[test]
fn a_typescript_scaffold_builds_checks_and_passes_its_cases() {
    let work = tempfile::tempdir().unwrap();
    let sdk = repo_root().join("sdk-ts").canonicalize().unwrap();
    ok(&switchboard(&[
        "plugin",
        "new",
        "acme-push",
        "--channel",
        "push-android",
        "--lang",
        "ts",
        "--dir",
        path(work.path()),
        "--sdk",
        path(&sdk),
    ]));
    let project = work.path().join("acme-push");
    // The one build command the scaffold prints.
    npm(&project, &["install"]);
    npm(&project, &["run", "build"]);
    let wasm = project.join("dist/acme_push.wasm");

    let checked = ok(&switchboard(&["plugin", "check", path(&wasm)]));
    assert!(checked.contains("channel:     push-android"), "{checked}");
    let tested = ok(&switchboard(&[
        "plugin",
        "test",
        path(&wasm),
        "--cases",
        path(&project.join("tests/cases.yaml")),
    ]));
    assert!(tested.contains("3 passed, 0 failed"), "{tested}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_twilio_adapter_delivers_through_the_host_exactly_once() {
    let wasm = repo_root().join("examples/twilio-ts/dist/sms_twilio_ts.wasm");
    assert!(
        wasm.exists(),
        "{} is missing: run `make example-ts` first",
        wasm.display()
    );
    let account = "AC0123456789abcdef0123456789abcdef";
    let twilio = vendorsim::twilio::TwilioConfig::new(account, "f0e1d2c3b4a5968778695a4b3c2d1e0f");
    let basic = twilio.basic_auth();
    let sim = vendorsim::twilio::start(twilio).await.unwrap();

    let work = tempfile::tempdir().unwrap();
    let mut config = switchboard::Config::default();
    config.dedup.data_dir = work.path().join("dedup");
    config.history.path = work.path().join("history.sqlite3");
    config.runtime.artifact_cache_dir = work.path().join("artifacts");
    config.runtime.artifact_key_file = work.path().join("artifact-key");
    config.plugins.insert(
        "sms-twilio-ts".into(),
        PluginConfig {
            path: wasm,
            allowed_hosts: vec![sim.addr.to_string()],
            timeout_ms: 5_000,
            memory_mb: 64,
            max_batch: 50,
            concurrency: 8,
            rate_per_s: None,
            burst: None,
            config: [
                ("endpoint".to_string(), sim.url()),
                ("account_sid".to_string(), account.to_string()),
                ("from".to_string(), "+15005550006".to_string()),
            ]
            .into(),
            secrets: [("basic_auth".to_string(), SecretSource::Value(basic))].into(),
            bounds: Default::default(),
        },
    );
    config
        .channels
        .insert("sms".into(), [("sms-twilio-ts".to_string(), 100)].into());
    let host = switchboard::start(config).await.unwrap();

    let messages = 500;
    produce(&host.bootstrap_servers, "notifications", messages, |i| {
        let envelope = serde_json::json!({
            "id": format!("ts-{i}"), "channel": "sms", "priority": "batch",
            "recipients": [{"to": format!("+8210777{i:05}")}],
            "content": {"body": format!("hello {i}")},
        });
        (format!("k{i}"), envelope.to_string())
    })
    .await
    .unwrap();
    let stats = sim.stats.clone();
    assert!(
        wait_until(Duration::from_secs(120), || stats.snapshot().delivered
            >= messages)
        .await,
        "{:?}",
        stats.snapshot()
    );
    host.stop().await.unwrap();
    let seen = sim.stats.snapshot();
    assert_eq!(seen.delivered, messages, "{seen:?}");
    assert_eq!(seen.duplicates, 0, "{seen:?}");
}
