//! The APNs adapter against the APNs simulator over TLS and HTTP/2: every row of the outcome
//! table in docs/vendors/apns.md, provider-token reuse and refresh, refused credentials,
//! duplicate counting, and the simulator's own checks of requests written by hand.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use switchboard::contract::{Outcome, Priority};
use switchboard::plugin::{LoadedPlugin, PluginRuntime};
use switchboard_integration_tests::{LoadOptions, delivery, load, plugin_path, runtime};
use vendorsim::apns::{ApnsConfig, ApnsError, ApnsKey, device_token};

const TEAM_ID: &str = "TEAM4TESTS";
const KEY_ID: &str = "KEY4TESTS1";
const TOPIC: &str = "com.example.switchboard";
const ALERT: &str = r#"{"title":"Your order","body":"is on its way","data":{"order":"o-1"}}"#;

/// The simulator with a fresh signing key, and the runtime plugins are loaded into.
struct Fixture {
    sim: vendorsim::RunningSim,
    key: ApnsKey,
    rt: PluginRuntime,
}

impl Fixture {
    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts the simulator; `tune` adjusts its behaviour first.
    async fn start_with(tune: impl FnOnce(&mut ApnsConfig)) -> Self {
        let key = ApnsKey::generate(TEAM_ID, KEY_ID).expect("test set-up");
        let mut config = ApnsConfig::new(TOPIC, &key);
        tune(&mut config);
        let sim = vendorsim::apns::start(config).await.expect("test set-up");
        Self {
            sim,
            key,
            rt: runtime(),
        }
    }

    fn ca(&self) -> String {
        self.sim.ca_pem.clone().expect("test set-up")
    }

    /// The plugin against this simulator, signing with `private_key_pem`, with `config`
    /// overriding the defaults.
    async fn plugin_with(&self, private_key_pem: &str, config: &[(&str, &str)]) -> LoadedPlugin {
        let mut entries: Vec<(String, String)> = vec![
            ("team_id".into(), TEAM_ID.into()),
            ("key_id".into(), KEY_ID.into()),
            ("topic".into(), TOPIC.into()),
            ("endpoint".into(), self.sim.url()),
        ];
        for (k, v) in config {
            entries.retain(|(key, _)| key != k);
            entries.push((k.to_string(), v.to_string()));
        }
        let options = LoadOptions {
            allowed_hosts: vec![format!("localhost:{}", self.sim.addr.port())],
            secrets: vec![("apns_key".into(), private_key_pem.into())],
            config: entries,
            trust_pems: vec![self.ca()],
            ..Default::default()
        };
        load(&self.rt, "apns", &plugin_path("apns"), options)
            .await
            .expect("test set-up")
    }

    async fn plugin(&self) -> LoadedPlugin {
        self.plugin_with(&self.key.private_key_pem, &[]).await
    }

    async fn get_json(&self, path: &str) -> Value {
        switchboard::host::http_client(&[self.ca()])
            .expect("test set-up")
            .get(format!("{}{path}", self.sim.url()))
            .send()
            .await
            .expect("test set-up")
            .json()
            .await
            .expect("test set-up")
    }

    async fn expire_provider_tokens(&self) {
        let status = switchboard::host::http_client(&[self.ca()])
            .expect("test set-up")
            .post(format!("{}/_sim/expire-provider-tokens", self.sim.url()))
            .send()
            .await
            .expect("test set-up")
            .status();
        assert!(status.is_success(), "{status}");
    }

    /// A push written by hand: returns the status, the `reason` (or the `apns-id` on success)
    /// and the HTTP version it was answered in.
    async fn raw_push(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, String, String) {
        let client = switchboard::host::http_client(&[self.ca()]).expect("test set-up");
        let mut request = client
            .post(format!("{}{path}", self.sim.url()))
            .body(body.to_string());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("test set-up");
        let status = response.status().as_u16();
        let version = format!("{:?}", response.version());
        let apns_id = response
            .headers()
            .get("apns-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let reason = match body.get("reason").and_then(Value::as_str) {
            Some(reason) => reason.to_string(),
            None => apns_id,
        };
        (status, reason, version)
    }

    fn refused(&self, reason: &str) -> u64 {
        self.sim
            .stats
            .snapshot()
            .refused
            .get(reason)
            .copied()
            .unwrap_or(0)
    }
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("test set-up")
        .as_secs()
}

/// An outcome as one comparable string: `delivered`, `rejected:CODE`, `invalid-recipient`,
/// `retry:AFTER_MS` (`-` when the vendor gave no Retry-After).
fn summary(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Delivered(_) => "delivered".into(),
        Outcome::Rejected(r) => format!("rejected:{}", r.code),
        Outcome::InvalidRecipient(_) => "invalid-recipient".into(),
        Outcome::Retry(r) => format!(
            "retry:{}",
            r.after_ms.map_or("-".into(), |ms| ms.to_string())
        ),
    }
}

/// A request written by hand: its name, headers and body, and the status and reason expected.
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str, u16, &'a str);

/// `headers` without `name`, plus `name: value` when given.
fn replaced<'a>(
    headers: &[(&'a str, &'a str)],
    name: &'a str,
    value: Option<&'a str>,
) -> Vec<(&'a str, &'a str)> {
    let mut out: Vec<_> = headers
        .iter()
        .filter(|(n, _)| *n != name)
        .copied()
        .collect();
    if let Some(value) = value {
        out.push((name, value));
    }
    out
}

fn is_uuid(id: &str) -> bool {
    let groups: Vec<&str> = id.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[tokio::test]
async fn apns_delivers_over_http2() {
    let fixture = Fixture::start().await;
    let plugin = fixture.plugin().await;
    assert_eq!(plugin.info.channel, "push-ios");
    assert_eq!(plugin.info.max_batch, 100);
    assert_eq!(
        plugin.info.wants_hosts,
        ["api.push.apple.com", "api.sandbox.push.apple.com"]
    );

    let mut batch: Vec<_> = (0..3)
        .map(|i| delivery(&format!("req-1/{i}"), &device_token("ab", i), ALERT))
        .collect();
    // Data-only content goes out as a background push, with a collapse id.
    batch.push(delivery(
        "req-1/3",
        &device_token("ab", 3),
        r#"{"data":{"sync":true},"collapse_id":"inbox"}"#,
    ));
    batch[1].priority = Priority::Ads;
    let outcomes = plugin.deliver(&batch).await.unwrap();
    for outcome in &outcomes {
        match outcome {
            Outcome::Delivered(id) => assert!(is_uuid(id), "{id}"),
            other => panic!("{other:?}"),
        }
    }
    let stats = fixture.sim.stats.snapshot();
    assert_eq!(stats.delivered, 4);
    assert_eq!(stats.duplicates, 0);
    assert_eq!(stats.auth_failures, 0);
    assert!(stats.refused.is_empty(), "{:?}", stats.refused);
    // Every push arrived over HTTP/2.
    let protocol = fixture.get_json("/_sim/protocol").await;
    assert_eq!(protocol["http2_requests"], 4);
    assert_eq!(protocol["other_requests"], 0);
}

#[tokio::test]
async fn apns_errors_map_to_outcomes() {
    let fixture = Fixture::start().await;
    let plugin = fixture.plugin().await;
    let cases = [
        (ApnsError::BadDeviceToken, "rejected:BadDeviceToken"),
        (
            ApnsError::DeviceTokenNotForTopic,
            "rejected:DeviceTokenNotForTopic",
        ),
        (ApnsError::TopicDisallowed, "rejected:TopicDisallowed"),
        (ApnsError::Unregistered, "invalid-recipient"),
        (ApnsError::ExpiredToken, "invalid-recipient"),
        (ApnsError::TooManyRequests, "retry:1000"),
        (ApnsError::InternalServerError, "retry:-"),
        (ApnsError::ServiceUnavailable, "retry:1000"),
        (ApnsError::Shutdown, "retry:-"),
    ];
    let batch: Vec<_> = cases
        .iter()
        .enumerate()
        .map(|(i, (e, _))| {
            let token = device_token(e.trigger_prefix().unwrap(), i as u64);
            delivery(e.reason(), &token, ALERT)
        })
        .collect();
    let outcomes = plugin.deliver(&batch).await.unwrap();
    for ((error, expected), outcome) in cases.iter().zip(&outcomes) {
        assert_eq!(&summary(outcome), expected, "APNs {error:?}: {outcome:?}");
        assert_eq!(fixture.refused(error.reason()), 1, "{error:?}");
    }
    // 410 names the reason and when APNs saw the token go.
    for outcome in &outcomes[3..5] {
        let Outcome::InvalidRecipient(reason) = outcome else {
            panic!("{outcome:?}")
        };
        assert!(reason.contains("since"), "{reason}");
    }
    assert!(matches!(&outcomes[3], Outcome::InvalidRecipient(r) if r.starts_with("Unregistered")));
    assert!(matches!(&outcomes[4], Outcome::InvalidRecipient(r) if r.starts_with("ExpiredToken")));

    // Checks the simulator makes on what the adapter sends.
    let long_collapse = format!(r#"{{"title":"t","collapse_id":"{}"}}"#, "c".repeat(65));
    let checked = [
        (
            delivery("short", "not-a-device-token", ALERT),
            "rejected:BadDeviceToken",
        ),
        (
            delivery("collapse", &device_token("ab", 20), &long_collapse),
            "rejected:BadCollapseId",
        ),
        // Content that does not parse, or that APNs could not carry, never leaves.
        (
            delivery("bad", &device_token("ab", 21), r#"{"title": 5}"#),
            "rejected:INVALID_CONTENT",
        ),
        (
            delivery(
                "voip",
                &device_token("ab", 22),
                r#"{"title":"t","push_type":"voip"}"#,
            ),
            "rejected:INVALID_CONTENT",
        ),
        (
            delivery("aps", &device_token("ab", 23), r#"{"data":{"aps":1}}"#),
            "rejected:INVALID_CONTENT",
        ),
    ];
    let batch: Vec<_> = checked.iter().map(|(d, _)| d.clone()).collect();
    let outcomes = plugin.deliver(&batch).await.unwrap();
    for ((d, expected), outcome) in checked.iter().zip(&outcomes) {
        assert_eq!(&summary(outcome), expected, "{}: {outcome:?}", d.key);
    }
    // Only the two the simulator refused were sent.
    let protocol = fixture.get_json("/_sim/protocol").await;
    assert_eq!(protocol["http2_requests"], cases.len() as u64 + 2);
}

#[tokio::test]
async fn apns_rejects_a_payload_too_large() {
    let fixture = Fixture::start().await;
    let plugin = fixture.plugin().await;
    let huge = json!({"title": "t", "data": {"blob": "x".repeat(5000)}}).to_string();
    let outcomes = plugin
        .deliver(&[delivery("big", &device_token("ab", 1), &huge)])
        .await
        .unwrap();
    assert_eq!(summary(&outcomes[0]), "rejected:PayloadTooLarge");
    assert_eq!(fixture.refused("PayloadTooLarge"), 1);
    assert_eq!(fixture.sim.stats.snapshot().delivered, 0);
}

#[tokio::test]
async fn apns_reuses_one_provider_token_across_many_calls() {
    let fixture = Fixture::start().await;
    let plugin = Arc::new(fixture.plugin().await);
    // Concurrent calls straight after load: the token minted in `init` serves them all.
    let mut calls = tokio::task::JoinSet::new();
    for call in 0..20u64 {
        let plugin = plugin.clone();
        calls.spawn(async move {
            let batch: Vec<_> = (0..10)
                .map(|i| {
                    delivery(
                        &format!("req-{call}/{i}"),
                        &device_token("cd", call * 100 + i),
                        ALERT,
                    )
                })
                .collect();
            plugin.deliver(&batch).await.unwrap()
        });
    }
    while let Some(outcomes) = calls.join_next().await {
        for outcome in outcomes.unwrap() {
            assert_eq!(summary(&outcome), "delivered", "{outcome:?}");
        }
    }
    // And sequential calls after them, in a later second: a token minted again would differ
    // from the first (its `iat` would), which APNs answers with TooManyProviderTokenUpdates.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    for call in 0..10u64 {
        let outcomes = plugin
            .deliver(&[delivery(
                &format!("seq-{call}/0"),
                &device_token("ef", call),
                ALERT,
            )])
            .await
            .unwrap();
        assert_eq!(summary(&outcomes[0]), "delivered", "{outcomes:?}");
    }
    let stats = fixture.sim.stats.snapshot();
    assert_eq!(stats.delivered, 210);
    assert_eq!(
        stats.token_requests, 1,
        "one provider token minted and used"
    );
    assert_eq!(fixture.refused("TooManyProviderTokenUpdates"), 0);
    assert_eq!(stats.auth_failures, 0);
}

#[tokio::test]
async fn apns_refreshes_an_expired_provider_token() {
    let fixture = Fixture::start().await;
    let plugin = fixture.plugin().await;
    let first = plugin
        .deliver(&[delivery("a/0", &device_token("ab", 1), ALERT)])
        .await
        .unwrap();
    assert_eq!(summary(&first[0]), "delivered");

    // Tokens carry `iat` in seconds and ES256 signing here is deterministic (RFC 6979): a token
    // minted in the same second as the expired one would be that very token.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    fixture.expire_provider_tokens().await;
    // The token in use is stale: the delivery is retried and the cached token dropped...
    let refused = plugin
        .deliver(&[delivery("b/0", &device_token("ab", 2), ALERT)])
        .await
        .unwrap();
    assert!(
        matches!(&refused[0], Outcome::Retry(r) if r.reason.contains("ExpiredProviderToken")),
        "{refused:?}"
    );
    // ...so the next call mints a new one and goes through.
    let again = plugin
        .deliver(&[delivery("b/0", &device_token("ab", 2), ALERT)])
        .await
        .unwrap();
    assert_eq!(summary(&again[0]), "delivered", "{again:?}");
    let stats = fixture.sim.stats.snapshot();
    assert_eq!(stats.token_requests, 2);
    assert_eq!(stats.auth_failures, 1);
    assert_eq!(stats.delivered, 2);
    assert_eq!(fixture.refused("TooManyProviderTokenUpdates"), 0);
}

#[tokio::test]
async fn apns_refuses_a_provider_token_signed_with_another_key() {
    let fixture = Fixture::start().await;
    let other = ApnsKey::generate(TEAM_ID, KEY_ID).unwrap();
    let wrong_key = fixture.plugin_with(&other.private_key_pem, &[]).await;
    let wrong_kid = fixture
        .plugin_with(&fixture.key.private_key_pem, &[("key_id", "UNKNOWNKID")])
        .await;
    let wrong_team = fixture
        .plugin_with(&fixture.key.private_key_pem, &[("team_id", "OTHERTEAM1")])
        .await;
    for plugin in [&wrong_key, &wrong_kid, &wrong_team] {
        let outcomes = plugin
            .deliver(&[delivery("a/0", &device_token("ab", 1), ALERT)])
            .await
            .unwrap();
        assert!(
            matches!(&outcomes[0], Outcome::Retry(r) if r.reason.contains("InvalidProviderToken")),
            "{outcomes:?}"
        );
    }
    let stats = fixture.sim.stats.snapshot();
    assert_eq!(stats.auth_failures, 3);
    assert_eq!(stats.delivered, 0);
    assert_eq!(stats.token_requests, 0);
}

#[tokio::test]
async fn apns_config_mistakes_map_to_outcomes() {
    let fixture = Fixture::start().await;
    let key = fixture.key.private_key_pem.clone();
    let base = fixture.sim.url();
    let cases = [
        // A bundle id the device token does not belong to.
        (
            ("topic", "com.example.other".to_string()),
            "rejected:DeviceTokenNotForTopic",
        ),
        // An endpoint with a path APNs does not serve: 404 BadPath.
        (("endpoint", format!("{base}/v1")), "rejected:BadPath"),
        // A host the operator has not granted: the host denies it, and the delivery is kept.
        (
            ("endpoint", "https://api.push.apple.com".to_string()),
            "retry:-",
        ),
    ];
    for ((name, value), expected) in cases {
        let plugin = fixture.plugin_with(&key, &[(name, &value)]).await;
        let outcomes = plugin
            .deliver(&[delivery("a/0", &device_token("ab", 1), ALERT)])
            .await
            .unwrap();
        assert_eq!(
            summary(&outcomes[0]),
            expected,
            "{name} = {value}: {outcomes:?}"
        );
    }
    assert_eq!(fixture.sim.stats.snapshot().delivered, 0);
}

#[tokio::test]
async fn apns_backs_off_when_provider_tokens_change_too_often() {
    let fixture = Fixture::start().await;
    // Another sender put a token for the same key into use a minute ago.
    let earlier = fixture.key.provider_token(now_s() - 60).unwrap();
    let bearer = format!("bearer {earlier}");
    let headers = [("authorization", bearer.as_str()), ("apns-topic", TOPIC)];
    let path = format!("/3/device/{}", device_token("ab", 1));
    let (status, _, _) = fixture.raw_push(&path, &headers, r#"{"aps":{}}"#).await;
    assert_eq!(status, 200);

    let plugin = fixture.plugin().await;
    for attempt in 0..2 {
        let outcomes = plugin
            .deliver(&[delivery("a/0", &device_token("ab", 2), ALERT)])
            .await
            .unwrap();
        assert!(
            matches!(&outcomes[0], Outcome::Retry(r) if r.reason == "TooManyProviderTokenUpdates"),
            "attempt {attempt}: {outcomes:?}"
        );
    }
    // The refused token never came into use: the one from a minute ago is still the key's.
    assert_eq!(fixture.refused("TooManyProviderTokenUpdates"), 2);
    assert_eq!(fixture.sim.stats.snapshot().token_requests, 1);
}

#[tokio::test]
async fn apns_simulator_faults_map_to_outcomes() {
    use vendorsim::{OutageMode, RateLimit};

    let fixture = Fixture::start_with(|config| {
        config.faults.rate_limit = Some(RateLimit {
            per_second: 2,
            retry_after_s: 3,
        });
    })
    .await;
    let plugin = fixture.plugin().await;
    let batch: Vec<_> = (0..4)
        .map(|i| delivery(&format!("rl/{i}"), &device_token("ab", i), ALERT))
        .collect();
    let mut got: Vec<_> = plugin
        .deliver(&batch)
        .await
        .unwrap()
        .iter()
        .map(summary)
        .collect();
    got.sort();
    assert_eq!(got, ["delivered", "delivered", "retry:3000", "retry:3000"]);
    assert_eq!(fixture.refused("TooManyRequests"), 2);

    fixture.sim.faults.set_outage(Some(OutageMode::Unavailable));
    let outcomes = plugin
        .deliver(&[delivery("down/0", &device_token("ab", 9), ALERT)])
        .await
        .unwrap();
    assert_eq!(summary(&outcomes[0]), "retry:1000");
    assert_eq!(fixture.refused("ServiceUnavailable"), 1);

    // A random error rate of 1 answers every notification with that reason.
    let fixture = Fixture::start_with(|config| {
        config.error_rates = vec![(ApnsError::Unregistered, 1.0)];
    })
    .await;
    let plugin = fixture.plugin().await;
    let outcomes = plugin
        .deliver(&[delivery("gone/0", &device_token("ab", 1), ALERT)])
        .await
        .unwrap();
    assert_eq!(summary(&outcomes[0]), "invalid-recipient");
}

#[tokio::test]
async fn apns_counts_a_retried_delivery_as_a_duplicate() {
    let fixture = Fixture::start().await;
    let plugin = fixture.plugin().await;
    let d = delivery("dup/0", &device_token("ab", 1), ALERT);
    let first = plugin.deliver(std::slice::from_ref(&d)).await.unwrap();
    let mut retried = d.clone();
    retried.attempt = 2;
    let second = plugin.deliver(&[retried]).await.unwrap();
    // Both tries carry the same apns-id, derived from the delivery's key.
    let (Outcome::Delivered(a), Outcome::Delivered(b)) = (&first[0], &second[0]) else {
        panic!("{first:?} {second:?}")
    };
    assert_eq!(a, b);
    // The same content under another key is another notification.
    plugin
        .deliver(&[delivery("dup/1", &device_token("ab", 1), ALERT)])
        .await
        .unwrap();
    let stats = fixture.sim.stats.snapshot();
    assert_eq!(stats.delivered, 2);
    assert_eq!(stats.duplicates, 1);

    // A token that fails twice and then succeeds is delivered once, with no duplicate.
    let flaky = delivery("flaky/0", &device_token("0000ff02", 1), ALERT);
    let mut got = Vec::new();
    for _ in 0..3 {
        let outcomes = plugin.deliver(std::slice::from_ref(&flaky)).await.unwrap();
        got.push(summary(&outcomes[0]));
    }
    assert_eq!(got, ["retry:1000", "retry:1000", "delivered"]);
    let stats = fixture.sim.stats.snapshot();
    assert_eq!(stats.delivered, 3);
    assert_eq!(stats.duplicates, 1);
}

#[tokio::test]
async fn apns_simulator_checks_requests_as_apns_does() {
    let fixture = Fixture::start().await;
    let token = fixture.key.provider_token(now_s()).unwrap();
    let bearer = format!("bearer {token}");
    let path = format!("/3/device/{}", device_token("ab", 1));
    let good: Vec<(&str, &str)> = vec![
        ("authorization", &bearer),
        ("apns-topic", TOPIC),
        ("apns-push-type", "alert"),
        ("apns-priority", "10"),
        ("apns-expiration", "0"),
        ("apns-id", "123e4567-e89b-12d3-a456-426655440000"),
    ];
    let body = r#"{"aps":{"alert":"hi"}}"#;
    let with = |name, value| replaced(&good, name, value);

    let (status, id, version) = fixture.raw_push(&path, &good, body).await;
    assert_eq!(
        (status, id.as_str(), version.as_str()),
        (200, "123e4567-e89b-12d3-a456-426655440000", "HTTP/2.0")
    );

    let old = fixture.key.provider_token(now_s() - 2 * 3600).unwrap();
    let old_bearer = format!("bearer {old}");
    let expired = replaced(&good, "authorization", Some(&old_bearer));
    let mut duplicated = good.clone();
    duplicated.push(("apns-topic", TOPIC));
    let cases: Vec<Case> = vec![
        (
            "no token",
            with("authorization", None),
            body,
            403,
            "MissingProviderToken",
        ),
        (
            "forged token",
            with("authorization", Some("bearer e30.e30.AAAA")),
            body,
            403,
            "InvalidProviderToken",
        ),
        ("old token", expired, body, 403, "ExpiredProviderToken"),
        (
            "no topic",
            with("apns-topic", None),
            body,
            400,
            "MissingTopic",
        ),
        (
            "bad topic",
            with("apns-topic", Some("two words")),
            body,
            400,
            "BadTopic",
        ),
        (
            "push type",
            with("apns-push-type", Some("banner")),
            body,
            400,
            "InvalidPushType",
        ),
        (
            "priority",
            with("apns-priority", Some("7")),
            body,
            400,
            "BadPriority",
        ),
        (
            "expiration",
            with("apns-expiration", Some("tomorrow")),
            body,
            400,
            "BadExpirationDate",
        ),
        (
            "apns-id",
            with("apns-id", Some("42")),
            body,
            400,
            "BadMessageId",
        ),
        ("duplicated", duplicated, body, 400, "DuplicateHeaders"),
        ("empty", good.clone(), "", 400, "PayloadEmpty"),
        (
            "no aps",
            good.clone(),
            r#"{"alert":"hi"}"#,
            400,
            "PayloadEmpty",
        ),
    ];
    for (name, headers, body, status, reason) in cases {
        let got = fixture.raw_push(&path, &headers, body).await;
        assert_eq!((got.0, got.1.as_str()), (status, reason), "{name}");
    }
    let background_at_10 = replaced(
        &with("apns-push-type", Some("background")),
        "apns-priority",
        Some("10"),
    );
    let got = fixture
        .raw_push(
            &path,
            &background_at_10,
            r#"{"aps":{"content-available":1}}"#,
        )
        .await;
    assert_eq!((got.0, got.1.as_str()), (400, "BadPriority"));
    let got = fixture.raw_push("/3/devices/x", &good, body).await;
    assert_eq!((got.0, got.1.as_str()), (404, "BadPath"));

    let stats = fixture.sim.stats.snapshot();
    assert_eq!(stats.delivered, 1);
    assert_eq!(stats.auth_failures, 3);
    assert_eq!(stats.token_requests, 1);
    let protocol = fixture.get_json("/_sim/protocol").await;
    assert_eq!(protocol["other_requests"], 0);
}

/// Something between the adapter and APNs (a proxy, a load balancer) can answer without APNs's
/// `{"reason"}` body: the status is then the code.
#[tokio::test]
async fn apns_a_reply_without_a_reason_is_rejected_with_its_status() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let fixture = Fixture::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut request = vec![0u8; 64 * 1024];
            let _ = stream.read(&mut request).await;
            let _ = stream
                .write_all(b"HTTP/1.1 418 I'm a teapot\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    });
    let options = LoadOptions {
        allowed_hosts: vec![addr.to_string()],
        secrets: vec![("apns_key".into(), fixture.key.private_key_pem.clone())],
        config: vec![
            ("team_id".into(), TEAM_ID.into()),
            ("key_id".into(), KEY_ID.into()),
            ("topic".into(), TOPIC.into()),
            ("endpoint".into(), format!("http://{addr}")),
        ],
        ..Default::default()
    };
    let plugin = load(&fixture.rt, "apns", &plugin_path("apns"), options)
        .await
        .unwrap();
    let outcomes = plugin
        .deliver(&[delivery("a/0", &device_token("ab", 1), ALERT)])
        .await
        .unwrap();
    assert_eq!(summary(&outcomes[0]), "rejected:HTTP_418");
}
