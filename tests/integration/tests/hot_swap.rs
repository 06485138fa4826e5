//! Plugin versions on a running host: hot swap under traffic, refusals that leave the active
//! version in place, rollback, the automatic rollback of a failing canary, and versions kept
//! across a restart. The real host, the mock Kafka cluster, the FCM simulator and components.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use switchboard::demo::produce;
use switchboard::kafka::EmbeddedKafka;
use switchboard::plugin::registry::{SwapError, VersionSource, version_id};
use switchboard_integration_tests::{
    FcmFixture, guest_path, plugin_path, relabelled_component, wait_until,
};

const WAIT: Duration = Duration::from_secs(90);

fn push(prefix: &'static str) -> impl Fn(u64) -> (String, String) {
    move |i| {
        let to = format!("{prefix}-{i}");
        let envelope = serde_json::json!({
            "id": to,
            "channel": "push-android",
            "priority": "batch",
            "recipients": [{"to": to}],
            "content": {"title": "t", "body": "b"},
        });
        (to.clone(), envelope.to_string())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_swap_refuse_roll_back_and_survive_a_restart() {
    let topic = "hot-swap";
    let cluster = EmbeddedKafka::start(1, &[topic.to_string()], 2).unwrap();
    let brokers = cluster.bootstrap_servers().to_string();
    let fixture = FcmFixture::start(|_| {}).await;
    let config = fixture.host_config(&brokers, topic, "g-hot-swap");
    let host = switchboard::start(config.clone()).await.unwrap();
    let registry = host.registry.clone();
    let fcm = std::fs::read(plugin_path("fcm")).unwrap();
    let original = version_id(&fcm);
    let active = || registry.slot("fcm").unwrap().active().id.clone();
    assert_eq!(active(), original);

    produce(&brokers, topic, 300, push("before")).await.unwrap();
    let second = relabelled_component(&fcm, "second");
    let swapped = registry
        .upload("fcm", &second, VersionSource::Upload)
        .await
        .unwrap();
    assert_eq!(swapped.id, version_id(&second));
    assert_eq!(active(), swapped.id);
    produce(&brokers, topic, 300, |i| push("after")(i))
        .await
        .unwrap();
    let delivered = || fixture.sim.stats.snapshot().delivered;
    assert!(
        wait_until(WAIT, || delivered() >= 600).await,
        "{}",
        delivered()
    );
    let calls = |plugin: &switchboard::plugin::LoadedPlugin| {
        plugin
            .counters
            .calls
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert!(calls(&swapped.plugin) > 0, "the new version serves calls");

    // Refusals: not a component, another channel's component. The active version stays.
    let garbage = registry
        .upload("fcm", b"\0asm not really", VersionSource::Upload)
        .await;
    assert!(matches!(garbage, Err(SwapError::Load(_))), "{garbage:?}");
    let apns = std::fs::read(plugin_path("apns")).unwrap();
    let init_fails = registry.upload("fcm", &apns, VersionSource::Upload).await;
    assert!(
        format!("{:?}", init_fails.map(|v| v.id.clone())).contains("missing config key"),
        "APNs cannot init with FCM's config"
    );
    let test_guest = std::fs::read(guest_path("misbehave")).unwrap();
    match registry
        .upload("fcm", &test_guest, VersionSource::Upload)
        .await
    {
        Err(SwapError::WrongChannel {
            channel, expected, ..
        }) => {
            assert_eq!(
                (channel.as_str(), expected.as_str()),
                ("test", "push-android")
            );
        }
        other => panic!("{other:?}"),
    }
    // Components the host cannot run: an import it does not provide, a world without `deliver`.
    for (guest, why) in [
        ("extra_import", "WrongWorld"),
        ("missing_deliver", "WrongWorld"),
    ] {
        let bytes = std::fs::read(guest_path(guest)).unwrap();
        let refused = registry.upload("fcm", &bytes, VersionSource::Upload).await;
        let error = format!("{:?}", refused.map(|v| v.id.clone()));
        assert!(error.contains(why), "{guest}: {error}");
    }
    assert!(matches!(
        registry.upload("nope", &fcm, VersionSource::Upload).await,
        Err(SwapError::UnknownPlugin(_))
    ));
    assert_eq!(active(), swapped.id);

    // A canary that fails 30 % of its deliveries is rolled back while traffic flows.
    let flaky = std::fs::read(guest_path("flaky_fcm")).unwrap();
    let canary = registry
        .stage("fcm", &flaky, VersionSource::Upload)
        .await
        .unwrap();
    assert_eq!(active(), swapped.id, "staging does not activate");
    // Named by the version its `describe` gives, which only this loaded version has.
    assert_eq!(canary.plugin.info.version, "0.1.0-flaky");
    registry
        .set_canary("fcm", &canary.plugin.info.version, 50)
        .await
        .unwrap();
    let slot = registry.slot("fcm").unwrap().clone();
    let producer = tokio::spawn({
        let brokers = brokers.clone();
        async move { produce(&brokers, topic, 2000, push("canary")).await }
    });
    assert!(
        wait_until(WAIT, || slot.last_canary_end().is_some()).await,
        "the canary was never judged"
    );
    producer.await.unwrap().unwrap();
    let end = slot.last_canary_end().unwrap();
    assert_eq!(end.how, "rolled-back", "{end:?}");
    assert!(end.reason.contains("canary failed"), "{end:?}");
    assert!(slot.lineup().canary.is_none());
    assert_eq!(active(), swapped.id);
    assert!(
        wait_until(WAIT, || delivered() >= 2600).await,
        "every delivery the canary failed is delivered by the active version: {}",
        delivered()
    );

    // Versions held in memory are bounded: the oldest previous and staged ones are let go.
    for i in 0..7 {
        let bytes = relabelled_component(&fcm, &format!("staged-{i}"));
        registry
            .stage("fcm", &bytes, VersionSource::Upload)
            .await
            .unwrap();
    }
    let lineup = slot.lineup();
    assert_eq!(lineup.staged.len(), 5, "staged versions are capped");
    assert!(lineup.previous.len() <= 5);

    // Rollback: back to the config's version.
    let back = registry.rollback("fcm").await.unwrap();
    assert_eq!(back.id, original);
    registry.activate("fcm", &swapped.id).await.unwrap();
    host.stop().await.unwrap();
    assert_eq!(fixture.sim.stats.snapshot().duplicates, 0);

    // A restart comes back on the version active before it.
    let host = switchboard::start(config.clone()).await.unwrap();
    assert_eq!(host.registry.slot("fcm").unwrap().active().id, swapped.id);
    host.stop().await.unwrap();

    // Unless the config file's component changed: then the config wins.
    let changed_dir = tempfile::tempdir().unwrap();
    let changed = changed_dir.path().join("fcm.wasm");
    std::fs::write(&changed, relabelled_component(&fcm, "from-config")).unwrap();
    let mut config = config;
    config.plugins.get_mut("fcm").unwrap().path = changed.clone();
    let host = switchboard::start(config).await.unwrap();
    assert_eq!(
        host.registry.slot("fcm").unwrap().active().id,
        version_id(&std::fs::read(&changed).unwrap())
    );
    host.stop().await.unwrap();
}
