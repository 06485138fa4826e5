//! The plugin runtime against real components: deadlines, traps, denied hosts, memory caps,
//! the cache, and the simulators' outage windows. The FCM adapter's contract is in
//! `contract_fcm.rs`.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use switchboard::contract::Outcome;
use switchboard::plugin::CallError;
use switchboard_integration_tests::{
    FcmFixture, LoadOptions, delivery, guest_path, load, plugin_path, runtime,
};

#[tokio::test]
async fn a_guest_that_loops_forever_is_stopped_at_its_deadline() {
    let rt = runtime();
    let options = LoadOptions {
        timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let plugin = load(&rt, "misbehave", &guest_path("misbehave"), options)
        .await
        .unwrap();
    let started = Instant::now();
    let result = plugin.deliver(&[delivery("k/0", "loop", "{}")]).await;
    let took = started.elapsed();
    assert!(matches!(result, Err(CallError::Timeout(_))), "{result:?}");
    // Stopped at the deadline, give or take scheduling; not left running.
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert_eq!(
        plugin
            .counters
            .timeouts
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // The host goes on: the next call on a fresh instance works.
    let next = plugin
        .deliver(&[delivery("k/1", "ok", "{}")])
        .await
        .unwrap();
    assert!(matches!(&next[0], Outcome::Delivered(_)), "{next:?}");
}

#[tokio::test]
async fn a_trap_fails_that_call_only_and_the_next_call_succeeds() {
    let rt = runtime();
    let plugin = load(
        &rt,
        "misbehave",
        &guest_path("misbehave"),
        Default::default(),
    )
    .await
    .unwrap();
    let trapped = plugin
        .deliver(&[delivery("k/0", "ok", "{}"), delivery("k/1", "trap", "{}")])
        .await;
    assert!(matches!(trapped, Err(CallError::Trap(_))), "{trapped:?}");
    let next = plugin
        .deliver(&[delivery("k/2", "ok", "{}")])
        .await
        .unwrap();
    assert_eq!(next.len(), 1);
    assert!(
        matches!(&next[0], Outcome::Delivered(id) if id == "ok-k/2"),
        "{next:?}"
    );
    assert_eq!(
        plugin
            .counters
            .traps
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn a_host_that_was_not_granted_is_denied() {
    let fixture = FcmFixture::start(|_| {}).await;
    let rt = runtime();
    // Granted a different port on the same address: still denied.
    let options = LoadOptions {
        allowed_hosts: vec!["127.0.0.1:1".into()],
        secrets: vec![("token".into(), "t0ken".into())],
        ..Default::default()
    };
    let plugin = load(&rt, "misbehave", &guest_path("misbehave"), options)
        .await
        .unwrap();
    let url = format!("http:{}/_sim/stats", fixture.sim.url());
    let outcomes = plugin
        .deliver(&[delivery("k/0", &url, "{}")])
        .await
        .unwrap();
    match &outcomes[0] {
        Outcome::Rejected(r) => assert!(r.reason.contains("Denied"), "{r:?}"),
        other => panic!("expected a denied request, got {other:?}"),
    }
    let denied = plugin
        .capability_counters()
        .denied_hosts
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(denied, 1);

    // The same request from a plugin granted that host goes through.
    let granted = LoadOptions {
        allowed_hosts: vec![fixture.sim.addr.to_string()],
        secrets: vec![("token".into(), "t0ken".into())],
        ..Default::default()
    };
    let plugin = load(&rt, "misbehave", &guest_path("misbehave"), granted)
        .await
        .unwrap();
    let outcomes = plugin
        .deliver(&[delivery("k/1", &url, "{}")])
        .await
        .unwrap();
    assert!(
        matches!(&outcomes[0], Outcome::Delivered(status) if status == "200"),
        "{outcomes:?}"
    );
}

#[tokio::test]
async fn a_placeholder_for_a_secret_the_plugin_does_not_own_is_denied() {
    let fixture = FcmFixture::start(|_| {}).await;
    let rt = runtime();
    let options = LoadOptions {
        allowed_hosts: vec![fixture.sim.addr.to_string()],
        // No secret `token`: the header placeholder names a secret this plugin does not own.
        ..Default::default()
    };
    let plugin = load(&rt, "misbehave", &guest_path("misbehave"), options)
        .await
        .unwrap();
    let url = format!("http:{}/_sim/stats", fixture.sim.url());
    let outcomes = plugin
        .deliver(&[delivery("k/0", &url, "{}")])
        .await
        .unwrap();
    assert!(
        matches!(&outcomes[0], Outcome::Rejected(r) if r.reason.contains("secret `token` is not granted")),
        "{outcomes:?}"
    );
    let signed = plugin
        .deliver(&[delivery("k/1", "sign:other", "{}")])
        .await
        .unwrap();
    assert!(
        matches!(&signed[0], Outcome::Rejected(r) if r.code == "sign"),
        "{signed:?}"
    );
}

#[tokio::test]
async fn a_guest_over_its_memory_cap_fails_that_call_only() {
    let rt = runtime();
    let options = LoadOptions {
        memory_mb: 16,
        ..Default::default()
    };
    let plugin = load(&rt, "misbehave", &guest_path("misbehave"), options)
        .await
        .unwrap();
    let within = plugin
        .deliver(&[delivery("k/0", "grow:4", "{}")])
        .await
        .unwrap();
    assert!(matches!(&within[0], Outcome::Delivered(_)), "{within:?}");
    let over = plugin.deliver(&[delivery("k/1", "grow:64", "{}")]).await;
    assert!(
        matches!(&over, Err(CallError::Trap(why)) if why.contains("memory")),
        "{over:?}"
    );
    let next = plugin
        .deliver(&[delivery("k/2", "ok", "{}")])
        .await
        .unwrap();
    assert!(matches!(&next[0], Outcome::Delivered(_)), "{next:?}");
}

#[tokio::test]
async fn the_cache_outlives_fresh_instances_but_instance_state_does_not() {
    let rt = runtime();
    let plugin = load(
        &rt,
        "misbehave",
        &guest_path("misbehave"),
        Default::default(),
    )
    .await
    .unwrap();
    for expected in 1..=3 {
        let outcomes = plugin
            .deliver(&[delivery("k", "count", "{}")])
            .await
            .unwrap();
        assert!(
            matches!(&outcomes[0], Outcome::Delivered(n) if *n == expected.to_string()),
            "{outcomes:?}"
        );
    }
}

#[tokio::test]
async fn a_config_the_plugin_refuses_is_refused_at_load() {
    let rt = runtime();
    let options = LoadOptions {
        config: vec![("init".into(), "fail".into())],
        ..Default::default()
    };
    let err = load(&rt, "misbehave", &guest_path("misbehave"), options)
        .await
        .err();
    let message = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("init told to fail"), "{message}");
}

#[tokio::test]
async fn a_file_that_is_not_a_component_is_refused_with_a_reason() {
    let rt = runtime();
    let dir = std::env::temp_dir().join(format!("sb-not-a-component-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("junk.wasm");
    std::fs::write(&path, b"\0asm junk").unwrap();
    let err = load(&rt, "junk", &path, Default::default()).await.err();
    let message = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(
        message.contains("not a valid WebAssembly component"),
        "{message}"
    );
}

#[tokio::test]
async fn outage_windows_answer_503_or_refuse_connections_then_recover() {
    let fixture = FcmFixture::start(|_| {}).await;
    let rt = runtime();
    let plugin = load(&rt, "fcm", &plugin_path("fcm"), fixture.load_options())
        .await
        .unwrap();
    let content = r#"{"title":"t","body":"b"}"#;

    fixture
        .sim
        .faults
        .set_outage(Some(vendorsim::OutageMode::Unavailable));
    let out = plugin
        .deliver(&[delivery("o/0", "device-o0", content)])
        .await
        .unwrap();
    assert!(
        matches!(&out[0], Outcome::Retry(r) if r.reason.contains("UNAVAILABLE")),
        "{out:?}"
    );

    fixture
        .sim
        .faults
        .set_outage(Some(vendorsim::OutageMode::Refuse));
    // The listener closes within a tick of the accept loop.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = tokio::net::TcpStream::connect(fixture.sim.addr).await;
    assert!(refused.is_err(), "the simulator still accepts connections");
    let out = plugin
        .deliver(&[delivery("o/1", "device-o1", content)])
        .await
        .unwrap();
    assert!(
        matches!(&out[0], Outcome::Retry(r) if r.reason.contains("http")),
        "{out:?}"
    );

    fixture.sim.faults.set_outage(None);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let out = plugin
        .deliver(&[delivery("o/2", "device-o2", content)])
        .await
        .unwrap();
    assert!(matches!(&out[0], Outcome::Delivered(_)), "{out:?}");
}

#[tokio::test]
async fn ncp_signatures_made_through_the_host_match_an_independent_hmac() {
    use base64::Engine as _;
    use hmac::Mac as _;
    let rt = runtime();
    let options = LoadOptions {
        secrets: vec![("sens_secret".into(), "s3cret-key".into())],
        ..Default::default()
    };
    let plugin = load(&rt, "misbehave", &guest_path("misbehave"), options)
        .await
        .unwrap();
    let out = plugin
        .deliver(&[delivery("n/0", "ncp:sens_secret", "{}")])
        .await
        .unwrap();
    let Outcome::Delivered(signature) = &out[0] else {
        panic!("{out:?}");
    };
    // NCP API Gateway: base64(HMAC-SHA256(secret, "{METHOD} {uri}\n{timestamp}\n{accessKey}")).
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"s3cret-key").unwrap();
    mac.update(b"GET /api?q=1\n1700000000000\nACCESSKEY");
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_eq!(signature, &expected);
}
