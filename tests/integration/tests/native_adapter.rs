//! The native backend: the FCM adapter crate linked into the host instead of loaded as a
//! component. It must behave as the component does against the FCM simulator (deliveries, error
//! mapping, one token, the allow-list) and keep the runtime's call semantics (deadline, panics
//! as traps, `init` refusing a config), both alone and through the whole host.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use switchboard::contract::Outcome;
use switchboard::demo::{demo_envelope, produce};
use switchboard::kafka::EmbeddedKafka;
use switchboard::plugin::{CallError, LoadedPlugin, NativePlugins, PluginRuntime};
use switchboard::{StartOptions, start_with};
use switchboard_integration_tests::{
    FcmFixture, LoadOptions, delivery, load, load_settings, plugin_path, runtime, wait_until,
};
use switchboard_sdk::{Adapter, Config, Delivery, PluginInfo, PluginInfoExt};
use vendorsim::fcm::FcmError;

async fn native_fcm(rt: &PluginRuntime, options: LoadOptions) -> LoadedPlugin {
    let (caps, limits, config) = load_settings("fcm", options);
    rt.load_native::<fcm::Fcm>("fcm", caps, limits, config)
        .await
        .unwrap()
}

/// An outcome as one comparable line.
fn summary(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Delivered(_) => "delivered".to_string(),
        Outcome::Rejected(r) => format!("rejected:{}", r.code),
        Outcome::InvalidRecipient(_) => "invalid-recipient".to_string(),
        Outcome::Retry(r) => format!(
            "retry:{}",
            r.after_ms.map_or("-".into(), |ms| ms.to_string())
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_fcm_delivers_and_fetches_its_token_once() {
    let fixture = FcmFixture::start(|_| {}).await;
    let rt = runtime();
    let plugin = native_fcm(&rt, fixture.load_options()).await;
    assert!(plugin.is_native());
    assert_eq!(
        (plugin.info.name.as_str(), plugin.info.channel.as_str()),
        ("fcm", "push-android")
    );
    assert_eq!(plugin.info.max_batch, 100);
    let content = r#"{"title":"t","body":"b","data":{"n":1}}"#;
    for call in 0..20 {
        let batch: Vec<_> = (0..5)
            .map(|i| {
                delivery(
                    &format!("r{call}/{i}"),
                    &format!("device-{call}-{i}"),
                    content,
                )
            })
            .collect();
        let outcomes = plugin.deliver(&batch).await.unwrap();
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, Outcome::Delivered(id) if id.starts_with("projects/"))),
            "{outcomes:?}"
        );
    }
    let stats = fixture.sim.stats.snapshot();
    assert_eq!(stats.delivered, 100);
    assert_eq!(stats.duplicates, 0);
    assert_eq!(
        stats.token_requests, 1,
        "one token, fetched at init, for 20 calls"
    );
    assert_eq!(stats.auth_failures, 0);
    assert_eq!(plugin.counters.calls.load(Ordering::Relaxed), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_fcm_maps_errors_to_the_same_outcomes_as_the_component() {
    let fixture = FcmFixture::start(|_| {}).await;
    let rt = runtime();
    let component = load(&rt, "fcm", &plugin_path("fcm"), fixture.load_options())
        .await
        .unwrap();
    let native = native_fcm(&rt, fixture.load_options()).await;
    let content = r#"{"title":"t","body":"b"}"#;
    let cases = [
        (FcmError::InvalidArgument, "rejected:INVALID_ARGUMENT"),
        (
            FcmError::ThirdPartyAuthError,
            "rejected:THIRD_PARTY_AUTH_ERROR",
        ),
        (FcmError::SenderIdMismatch, "rejected:SENDER_ID_MISMATCH"),
        (FcmError::Unregistered, "invalid-recipient"),
        (FcmError::QuotaExceeded, "retry:1000"),
        (FcmError::Internal, "retry:-"),
        (FcmError::Unavailable, "retry:1000"),
    ];
    let mut batch: Vec<_> = cases
        .iter()
        .map(|(e, _)| {
            let token = format!("sim-{}-device", e.code().to_ascii_lowercase());
            delivery(e.code(), &token, content)
        })
        .collect();
    // Content that is not push JSON is refused without a request.
    batch.push(delivery("bad", "device-x", r#"{"title": 5}"#));

    let from_native = native.deliver(&batch).await.unwrap();
    let from_component = component.deliver(&batch).await.unwrap();
    let expected: Vec<&str> = cases
        .iter()
        .map(|(_, expected)| *expected)
        .chain(["rejected:INVALID_CONTENT"])
        .collect();
    let native_summary: Vec<String> = from_native.iter().map(summary).collect();
    assert_eq!(native_summary, expected);
    // Not only the same kinds: the same reasons, word for word.
    assert_eq!(
        format!("{from_native:?}"),
        format!("{from_component:?}"),
        "native and component outcomes differ"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_fcm_refreshes_a_token_the_vendor_stopped_accepting() {
    let fixture = FcmFixture::start(|_| {}).await;
    let rt = runtime();
    let plugin = native_fcm(&rt, fixture.load_options()).await;
    let first = plugin
        .deliver(&[delivery("a", "device-a", "{}")])
        .await
        .unwrap();
    assert!(matches!(&first[0], Outcome::Delivered(_)), "{first:?}");

    let client = switchboard::host::http_client(&[]).unwrap();
    let revoke = format!("{}/_sim/revoke-tokens", fixture.sim.url());
    assert!(
        client
            .post(revoke)
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );
    // The cached token is refused: retried, and the cached token dropped from the host cache...
    let refused = plugin
        .deliver(&[delivery("b", "device-b", "{}")])
        .await
        .unwrap();
    assert!(matches!(&refused[0], Outcome::Retry(_)), "{refused:?}");
    // ...so the next call fetches a new one and goes through.
    let again = plugin
        .deliver(&[delivery("b", "device-b", "{}")])
        .await
        .unwrap();
    assert!(matches!(&again[0], Outcome::Delivered(_)), "{again:?}");
    assert_eq!(fixture.sim.stats.snapshot().token_requests, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_fcm_is_held_to_the_same_allow_list_and_secrets() {
    let fixture = FcmFixture::start(|_| {}).await;
    let rt = runtime();
    let not_granted = || LoadOptions {
        // The simulator's address on another port: not granted.
        allowed_hosts: vec!["127.0.0.1:1".into()],
        ..fixture.load_options()
    };
    let component = load(&rt, "fcm", &plugin_path("fcm"), not_granted())
        .await
        .unwrap();
    let native = native_fcm(&rt, not_granted()).await;
    let batch = [delivery("d/0", "device-0", "{}")];
    let from_native = native.deliver(&batch).await.unwrap();
    let from_component = component.deliver(&batch).await.unwrap();
    assert!(
        matches!(&from_native[0], Outcome::Retry(r) if r.reason.contains("not granted")),
        "{from_native:?}"
    );
    assert_eq!(format!("{from_native:?}"), format!("{from_component:?}"));
    let denied = |p: &LoadedPlugin| p.capability_counters().denied_hosts.load(Ordering::Relaxed);
    // Refused token requests: `init` at load, then `init` and `deliver` in the call.
    assert_eq!(denied(&native), 3);
    assert_eq!(denied(&native), denied(&component));
    assert_eq!(fixture.sim.stats.snapshot().token_requests, 0);

    // Signing with a secret the plugin does not own is refused by the host's signer.
    let mut wrong_key = fixture.load_options();
    wrong_key
        .config
        .push(("key_secret".into(), "someone_elses_key".into()));
    let native = native_fcm(&rt, wrong_key).await;
    let out = native.deliver(&batch).await.unwrap();
    assert!(
        matches!(&out[0], Outcome::Retry(r) if r.reason.contains("someone_elses_key")),
        "{out:?}"
    );
    assert_eq!(
        native
            .capability_counters()
            .denied_secrets
            .load(Ordering::Relaxed),
        3
    );
}

/// A native adapter that misbehaves on request: recipient `sleep` blocks past any test
/// deadline, `panic` panics; config `init = fail` refuses.
struct Misbehaving;

impl Adapter for Misbehaving {
    fn describe() -> PluginInfo {
        PluginInfo::new("misbehaving", "0.1.0", "push-android").max_batch(10)
    }

    fn init(config: Config) -> Result<Self, String> {
        match config.get("init") {
            Some("fail") => Err("init told to fail".into()),
            _ => Ok(Misbehaving),
        }
    }

    fn deliver(&self, batch: Vec<Delivery>) -> Vec<switchboard_sdk::Outcome> {
        for d in &batch {
            match d.recipient.as_str() {
                "sleep" => std::thread::sleep(Duration::from_millis(1500)),
                "panic" => panic!("told to panic"),
                _ => {}
            }
        }
        batch
            .iter()
            .map(|d| switchboard_sdk::Outcome::delivered(format!("ok-{}", d.key)))
            .collect()
    }
}

async fn misbehaving(rt: &PluginRuntime, options: LoadOptions) -> LoadedPlugin {
    let (caps, limits, config) = load_settings("misbehaving", options);
    rt.load_native::<Misbehaving>("misbehaving", caps, limits, config)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_call_past_its_deadline_is_a_timeout_and_the_next_call_works() {
    let rt = runtime();
    let options = LoadOptions {
        timeout: Duration::from_millis(200),
        ..Default::default()
    };
    let plugin = misbehaving(&rt, options).await;
    let started = Instant::now();
    let result = plugin.deliver(&[delivery("k/0", "sleep", "{}")]).await;
    let took = started.elapsed();
    assert!(matches!(result, Err(CallError::Timeout(_))), "{result:?}");
    assert!(took < Duration::from_millis(1000), "took {took:?}");
    assert_eq!(plugin.counters.timeouts.load(Ordering::Relaxed), 1);
    let next = plugin
        .deliver(&[delivery("k/1", "ok", "{}")])
        .await
        .unwrap();
    assert!(
        matches!(&next[0], Outcome::Delivered(id) if id == "ok-k/1"),
        "{next:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_panic_fails_that_call_only_as_a_trap() {
    let rt = runtime();
    // The panic hook runs inside the call, before the unwind reaches the host. With
    // RUST_BACKTRACE set it symbolizes a backtrace, which took more than the default 5 s
    // deadline on a loaded machine, and the call came back as a timeout. This test is about
    // the panic, so the deadline is out of its way.
    let options = LoadOptions {
        timeout: Duration::from_secs(120),
        ..Default::default()
    };
    let plugin = misbehaving(&rt, options).await;
    let panicked = plugin
        .deliver(&[delivery("k/0", "ok", "{}"), delivery("k/1", "panic", "{}")])
        .await;
    assert!(
        matches!(&panicked, Err(CallError::Trap(why)) if why.contains("told to panic")),
        "{panicked:?}"
    );
    assert_eq!(plugin.counters.traps.load(Ordering::Relaxed), 1);
    let next = plugin
        .deliver(&[delivery("k/2", "ok", "{}")])
        .await
        .unwrap();
    assert!(
        matches!(&next[0], Outcome::Delivered(id) if id == "ok-k/2"),
        "{next:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_the_native_adapter_refuses_is_refused_at_load() {
    let rt = runtime();
    let options = LoadOptions {
        config: vec![("init".into(), "fail".into())],
        ..Default::default()
    };
    let (caps, limits, config) = load_settings("misbehaving", options);
    let err = rt
        .load_native::<Misbehaving>("misbehaving", caps, limits, config)
        .await
        .err();
    let message = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(
        message.contains("`init` refused the config: init told to fail"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_reach_fcm_exactly_once_through_the_native_adapter() {
    let topic = "e2e-native";
    let cluster = EmbeddedKafka::start(1, &[topic.to_string()], 3).unwrap();
    let brokers = cluster.bootstrap_servers().to_string();
    let fixture = FcmFixture::start(|_| {}).await;
    let mut config = fixture.host_config(&brokers, topic, "g-native");
    // No component behind the plugin: only the native adapter can deliver.
    config.plugins.get_mut("fcm").unwrap().path = "/nonexistent/fcm.wasm".into();
    let options = StartOptions {
        native_plugins: NativePlugins::new().with::<fcm::Fcm>("fcm"),
    };
    let host = start_with(config, options).await.unwrap();
    assert!(
        host.registry.slots().all(|s| s.active().plugin.is_native()),
        "the fcm plugin is not native"
    );
    produce(&brokers, topic, 1000, |i| {
        (format!("device-{i}"), demo_envelope(i))
    })
    .await
    .unwrap();
    let stats = &fixture.sim.stats;
    assert!(
        wait_until(Duration::from_secs(60), || stats.snapshot().delivered
            >= 1000)
        .await,
        "{:?}",
        stats.snapshot()
    );
    host.stop().await.unwrap();
    let seen = stats.snapshot();
    assert_eq!(seen.delivered, 1000);
    assert_eq!(seen.duplicates, 0);
    assert_eq!(seen.token_requests, 1);
}

#[tokio::test]
async fn a_native_plugin_for_an_unconfigured_name_refuses_to_start() {
    let fixture = FcmFixture::start(|_| {}).await;
    let config = fixture.host_config("127.0.0.1:1", "unused", "g-unused");
    let options = StartOptions {
        native_plugins: NativePlugins::new().with::<fcm::Fcm>("fcm-typo"),
    };
    let err = start_with(config, options).await.err();
    let message = err.map(|e| format!("{e:#}")).unwrap_or_default();
    assert!(
        message.contains("native plugin `fcm-typo` is not configured"),
        "{message}"
    );
}
