//! The fleet's control plane on the real broker (`make services` starts it): hosts in one
//! fleet share weights, plugin versions and canaries through the control topic. A change on
//! one host's admin API applies on every host; a host that was stopped, or starts later,
//! converges before it consumes; a component whose bytes do not match their SHA-256 is refused
//! on every host, visibly, and the active version stays.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use reqwest::Method;
use serde_json::{Value, json};
use switchboard::RunningHost;
use switchboard::config::SecretSource;
use switchboard::plugin::registry::version_id;
use switchboard_integration_tests::{
    FcmFixture, RealBroker, guest_path, plugin_path, relabelled_component, wait_until,
};

const TOKEN: &str = "fleet-admin-token-81c2";
const WAIT: Duration = Duration::from_secs(30);
const CHANNEL: &str = "push-android";

/// A host of the fleet, named `name`, with data directories of its own.
fn config(fixture: &FcmFixture, broker: &RealBroker, name: &str) -> switchboard::Config {
    let requests = broker.topic("requests");
    let mut config = fixture.host_config(&broker.brokers, &requests, "unused");
    broker.configure(&mut config, "fleet");
    // A second vendor on the channel, so that weights have something to split.
    let fcm = config.plugins["fcm"].clone();
    config.plugins.insert("fcm-b".into(), fcm);
    config.channels.insert(
        CHANNEL.into(),
        [("fcm".to_string(), 50), ("fcm-b".to_string(), 50)]
            .into_iter()
            .collect(),
    );
    config.admin.token = Some(SecretSource::Value(TOKEN.into()));
    config.control.enabled = Some(true);
    config.control.topic = broker.topic("control");
    config.control.fleet_topic = broker.topic("fleet");
    config.control.host_id = Some(name.into());
    config.control.report_interval_ms = 200;
    config.control.host_expiry_s = 3;
    config
}

async fn call(host: &RunningHost, method: Method, path: &str, body: Option<Vec<u8>>) -> Value {
    let addr = host.admin_addr.unwrap();
    let mut request = reqwest::Client::new()
        .request(method, format!("http://{addr}{path}"))
        .bearer_auth(TOKEN);
    if let Some(body) = body {
        request = request.body(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert!(status.is_success(), "{path}: {status} {body}");
    body
}

fn weights(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
    pairs.iter().map(|(v, w)| (v.to_string(), *w)).collect()
}

fn active(host: &RunningHost) -> String {
    host.registry.slot("fcm").unwrap().active().id.clone()
}

fn canary(host: &RunningHost) -> Option<(String, u8)> {
    let lineup = host.registry.slot("fcm").unwrap().lineup();
    lineup
        .canary
        .as_ref()
        .map(|c| (c.version.id.clone(), c.percent))
}

async fn all_hold(hosts: &[&RunningHost], what: &str, holds: impl Fn(&RunningHost) -> bool) {
    assert!(
        wait_until(WAIT, || hosts.iter().all(|h| holds(h))).await,
        "{what} did not reach every host"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_change_reaches_every_host_and_hosts_that_return_or_join_converge() {
    let broker = RealBroker::with_topics("fleet", &["requests"], 2).await;
    let fixture = FcmFixture::start(|_| {}).await;
    let a = switchboard::start(config(&fixture, &broker, "a"))
        .await
        .unwrap();
    let b = switchboard::start(config(&fixture, &broker, "b"))
        .await
        .unwrap();
    let c = switchboard::start(config(&fixture, &broker, "c"))
        .await
        .unwrap();

    // A weight change on A applies on B and C.
    let split = weights(&[("fcm", 20), ("fcm-b", 80)]);
    let body = serde_json::to_vec(&json!({"fcm": 20, "fcm-b": 80})).unwrap();
    let reply = call(
        &a,
        Method::PUT,
        &format!("/v1/channels/{CHANNEL}/weights"),
        Some(body),
    )
    .await;
    assert_eq!(
        reply["weights"],
        json!({"fcm": 20, "fcm-b": 80}),
        "A answers with the change applied"
    );
    all_hold(&[&b, &c], "the weights set on A", |h| {
        h.router.weights(CHANNEL) == Some(split.clone())
    })
    .await;

    // Every host sees every other.
    let fleet_sees_three = || async {
        let view = call(&c, Method::GET, "/v1/fleet", None).await;
        view["hosts"].as_array().unwrap().len()
    };
    let mut seen = 0;
    for _ in 0..50 {
        seen = fleet_sees_three().await;
        if seen == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, 3, "C's fleet view lists A, B and C");

    // An upload on B becomes active on every host.
    let fcm = std::fs::read(plugin_path("fcm")).unwrap();
    let second = relabelled_component(&fcm, "fleet-second");
    let second_id = version_id(&second);
    let reply = call(&b, Method::POST, "/v1/plugins/fcm", Some(second.clone())).await;
    assert_eq!(reply["id"], json!(second_id));
    assert_eq!(reply["active"], json!(true));
    all_hold(&[&a, &b, &c], "the version uploaded on B", |h| {
        active(h) == second_id
    })
    .await;

    // A version staged on A becomes a canary on every host; ended on B, it ends on all.
    let third = relabelled_component(&fcm, "fleet-third");
    let third_id = version_id(&third);
    call(
        &a,
        Method::POST,
        "/v1/plugins/fcm?activate=false",
        Some(third),
    )
    .await;
    let body = serde_json::to_vec(&json!({"version": third_id, "percent": 10})).unwrap();
    call(&a, Method::PUT, "/v1/plugins/fcm/canary", Some(body)).await;
    all_hold(&[&a, &b, &c], "the canary started on A", |h| {
        canary(h) == Some((third_id.clone(), 10))
    })
    .await;
    call(&b, Method::POST, "/v1/plugins/fcm/rollback", None).await;
    all_hold(&[&a, &b, &c], "the canary rolled back on B", |h| {
        canary(h).is_none()
            && active(h) == second_id
            && h.registry
                .slot("fcm")
                .unwrap()
                .last_canary_end()
                .is_some_and(|end| end.how == "rolled-back" && end.id == third_id)
    })
    .await;

    // A change made while C is stopped reaches C when it returns, before it consumes.
    c.stop().await.unwrap();
    let body = serde_json::to_vec(&json!({"fcm": 60, "fcm-b": 40})).unwrap();
    call(
        &a,
        Method::PUT,
        &format!("/v1/channels/{CHANNEL}/weights"),
        Some(body),
    )
    .await;
    let returned = switchboard::start(config(&fixture, &broker, "c"))
        .await
        .unwrap();
    let later = weights(&[("fcm", 60), ("fcm-b", 40)]);
    assert_eq!(
        returned.router.weights(CHANNEL),
        Some(later.clone()),
        "C came back on the change made while it was stopped"
    );
    assert_eq!(
        active(&returned),
        second_id,
        "C came back on the fleet's version"
    );

    // A host that starts after every change converges before it consumes.
    let late = switchboard::start(config(&fixture, &broker, "d"))
        .await
        .unwrap();
    assert_eq!(late.router.weights(CHANNEL), Some(later));
    assert_eq!(active(&late), second_id);
    assert_eq!(
        late.control.as_ref().unwrap().applied(),
        a.control.as_ref().unwrap().applied()
    );

    // A component whose bytes do not match its SHA-256, activated through the control topic:
    // every host refuses it, keeps its active version, and the refusal shows fleet-wide.
    let forged = relabelled_component(&fcm, "fleet-forged");
    let forged_id = version_id(&forged);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.brokers)
        .create()
        .unwrap();
    let control_topic = broker.topic("control");
    let origin = json!({"host": "someone", "at_ms": 0});
    let records = [
        (format!("component/fcm/{forged_id}/chunk/0"), fcm.clone()),
        (
            format!("component/fcm/{forged_id}/manifest"),
            serde_json::to_vec(&json!({
                "sha256": switchboard::control::record::sha256_hex(&forged),
                "size": fcm.len(),
                "chunks": 1,
                "origin": origin,
            }))
            .unwrap(),
        ),
        (
            "plugin/fcm".to_string(),
            serde_json::to_vec(&json!({"active": forged_id, "canary": null, "origin": origin}))
                .unwrap(),
        ),
        ("garbage/key".to_string(), b"not json".to_vec()),
    ];
    for (key, value) in &records {
        let record = FutureRecord::to(&control_topic)
            .key(key)
            .payload(value)
            .partition(0);
        producer
            .send(record, Duration::from_secs(10))
            .await
            .unwrap();
    }
    let hosts = [&a, &b, &returned, &late];
    let refused_everywhere = || async {
        let view = call(&a, Method::GET, "/v1/fleet", None).await;
        let listed = view["hosts"].as_array().unwrap().clone();
        listed.len() == 4
            && listed.iter().all(|host| {
                let refusals = host["refusals"].as_array().unwrap();
                refusals
                    .iter()
                    .any(|r| r["reason"].as_str().unwrap().contains("SHA-256"))
                    && refusals.iter().any(|r| r["key"] == json!("garbage/key"))
                    && host["lagging"] == json!(false)
            })
    };
    let mut refused = false;
    for _ in 0..100 {
        if refused_everywhere().await {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        refused,
        "every host's refusal of the forged version shows in A's fleet view"
    );
    for host in hosts {
        assert_eq!(active(host), second_id, "the forged version was not loaded");
    }
    // The hosts still take changes after the refusals.
    let body = serde_json::to_vec(&json!({"fcm": 100, "fcm-b": 0})).unwrap();
    call(
        &late,
        Method::PUT,
        &format!("/v1/channels/{CHANNEL}/weights"),
        Some(body),
    )
    .await;
    let drained = weights(&[("fcm", 100), ("fcm-b", 0)]);
    all_hold(&hosts, "the weights set after the refusals", |h| {
        h.router.weights(CHANNEL) == Some(drained.clone())
    })
    .await;

    // A reset on one host puts every host back on its config file's weights.
    let addr = b.admin_addr.unwrap();
    let reset = reqwest::Client::new()
        .delete(format!("http://{addr}/v1/channels/{CHANNEL}/weights"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert!(reset.status().is_success(), "reset: {}", reset.status());
    let baseline = weights(&[("fcm", 50), ("fcm-b", 50)]);
    all_hold(&hosts, "the reset made on B", |h| {
        h.router.weights(CHANNEL) == Some(baseline.clone())
    })
    .await;

    for host in [a, b, returned, late] {
        host.stop().await.unwrap();
    }
}

/// Requests on the channel, `count` of them, to the fleet's request topic.
async fn produce_requests(broker: &RealBroker, prefix: &'static str, count: u64) {
    switchboard::demo::produce(
        &broker.brokers,
        &broker.topic("requests"),
        count,
        move |i| {
            let to = format!("{prefix}-{i}");
            let envelope = json!({
                "id": to,
                "channel": CHANNEL,
                "priority": "batch",
                "recipients": [{"to": to}],
                "content": {"title": "t", "body": "b"},
            });
            (to, envelope.to_string())
        },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_judged_on_the_fleet_s_answers_is_rolled_back_on_every_host() {
    let broker = RealBroker::with_topics("fleet-canary", &["requests"], 2).await;
    let fixture = FcmFixture::start(|_| {}).await;
    let a = switchboard::start(config(&fixture, &broker, "a"))
        .await
        .unwrap();
    let b = switchboard::start(config(&fixture, &broker, "b"))
        .await
        .unwrap();

    // The FCM adapter failing 30 % of its deliveries, staged on A, a canary on every host.
    let flaky = std::fs::read(guest_path("flaky_fcm")).unwrap();
    let flaky_id = version_id(&flaky);
    call(
        &a,
        Method::POST,
        "/v1/plugins/fcm?activate=false",
        Some(flaky),
    )
    .await;
    let body = serde_json::to_vec(&json!({"version": flaky_id, "percent": 50})).unwrap();
    call(&a, Method::PUT, "/v1/plugins/fcm/canary", Some(body)).await;
    all_hold(&[&a, &b], "the canary started on A", |h| {
        canary(h) == Some((flaky_id.clone(), 50))
    })
    .await;

    produce_requests(&broker, "canary", 2000).await;
    let ended = |h: &RunningHost| h.registry.slot("fcm").unwrap().last_canary_end();
    all_hold(&[&a, &b], "the canary's rollback", |h| {
        canary(h).is_none() && ended(h).is_some()
    })
    .await;
    let (on_a, on_b) = (ended(&a).unwrap(), ended(&b).unwrap());
    assert_eq!(on_a.how, "rolled-back", "{on_a:?}");
    // One decision, judged on the fleet's answers, reached both hosts.
    assert_eq!(on_a.reason, on_b.reason);
    assert!(
        on_a.reason.contains("canary failed") && on_a.reason.contains("host(s)"),
        "{on_a:?}"
    );

    for host in [a, b] {
        host.stop().await.unwrap();
    }
}
