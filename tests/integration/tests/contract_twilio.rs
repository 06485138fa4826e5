//! The `sms-twilio` plugin against the Twilio simulator: the exact form it sends, every row of
//! its outcome table (docs/vendors/sms-twilio.md), credentials, Messaging Services, and
//! duplicate counting.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};
use switchboard::contract::Outcome;
use switchboard::plugin::{LoadedPlugin, PluginRuntime};
use switchboard_integration_tests::{LoadOptions, delivery, load, plugin_path, runtime};
use vendorsim::twilio::{MAGIC_FROM, MAX_BODY_CHARS, TwilioConfig};
use vendorsim::{OutageMode, RateLimit};

const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "f0e1d2c3b4a5968778695a4b3c2d1e0f";
const SERVICE: &str = "MG00112233445566778899aabbccddeeff";

/// The simulator, the config it was started with, and a plugin runtime.
struct Fixture {
    sim: vendorsim::RunningSim,
    config: TwilioConfig,
    rt: PluginRuntime,
}

impl Fixture {
    async fn start(tune: impl FnOnce(&mut TwilioConfig)) -> Self {
        let mut config = TwilioConfig::new(ACCOUNT, TOKEN);
        tune(&mut config);
        let sim = vendorsim::twilio::start(config.clone())
            .await
            .expect("twilio simulator");
        Self {
            sim,
            config,
            rt: runtime(),
        }
    }

    /// Load options reaching this simulator with the right credentials and `plugin_config`
    /// (the endpoint is added).
    fn options(&self, plugin_config: &[(&str, &str)]) -> LoadOptions {
        let mut config: Vec<(String, String)> = plugin_config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        config.push(("endpoint".into(), self.sim.url()));
        LoadOptions {
            allowed_hosts: vec![self.sim.addr.to_string()],
            secrets: vec![("basic_auth".into(), self.config.basic_auth())],
            config,
            ..Default::default()
        }
    }

    /// The plugin sending from Twilio's always-valid magic number.
    async fn plugin(&self) -> LoadedPlugin {
        self.plugin_with(&[("account_sid", ACCOUNT), ("from", MAGIC_FROM)])
            .await
    }

    async fn plugin_with(&self, plugin_config: &[(&str, &str)]) -> LoadedPlugin {
        self.load(self.options(plugin_config))
            .await
            .expect("sms-twilio loads")
    }

    async fn load(
        &self,
        options: LoadOptions,
    ) -> Result<LoadedPlugin, switchboard::plugin::LoadError> {
        load(&self.rt, "sms-twilio", &plugin_path("sms-twilio"), options).await
    }

    /// The create requests the simulator saw, in arrival order.
    async fn requests(&self) -> Vec<Value> {
        match get_json(&format!("{}/_sim/requests", self.sim.url()), None).await {
            Value::Array(requests) => requests,
            other => panic!("not a list: {other}"),
        }
    }

    /// The simulator's `{account_sid, params}` record of the request to `to`.
    async fn request_to(&self, to: &str) -> Value {
        self.requests()
            .await
            .into_iter()
            .find(|r| params(r).iter().any(|(k, v)| k == "To" && v == to))
            .unwrap_or_else(|| panic!("no request to {to}"))
    }

    /// Fetches a message through Twilio's own API.
    async fn fetch(&self, sid: &str) -> Value {
        get_json(
            &format!(
                "{}/2010-04-01/Accounts/{ACCOUNT}/Messages/{sid}.json",
                self.sim.url()
            ),
            Some(&self.config.basic_auth()),
        )
        .await
    }
}

async fn get_json(url: &str, basic: Option<&str>) -> Value {
    let client = switchboard::host::http_client(&[]).expect("http client");
    let mut request = client.get(url);
    if let Some(basic) = basic {
        request = request.header("authorization", format!("Basic {basic}"));
    }
    let response = request.send().await.expect("simulator answers");
    assert!(
        response.status().is_success(),
        "{url}: {}",
        response.status()
    );
    response.json().await.expect("JSON")
}

fn params(request: &Value) -> Vec<(String, String)> {
    request["params"]
        .as_array()
        .map(|pairs| {
            pairs
                .iter()
                .map(|p| {
                    (
                        p[0].as_str().unwrap_or_default().to_string(),
                        p[1].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn sms(body: &str) -> String {
    json!({ "body": body }).to_string()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// An outcome as one comparable string: `delivered`, `invalid-recipient`, `rejected:CODE`,
/// `retry:AFTER_MS` (or `retry:-` without a hint).
fn label(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Delivered(_) => "delivered".to_string(),
        Outcome::InvalidRecipient(_) => "invalid-recipient".to_string(),
        Outcome::Rejected(r) => format!("rejected:{}", r.code),
        Outcome::Retry(r) => format!(
            "retry:{}",
            r.after_ms.map_or("-".into(), |ms| ms.to_string())
        ),
    }
}

fn refused(fixture: &Fixture, code: &str) -> u64 {
    fixture
        .sim
        .stats
        .snapshot()
        .refused
        .get(code)
        .copied()
        .unwrap_or(0)
}

#[tokio::test]
async fn twilio_delivers_a_batch_with_exactly_the_form_fields() {
    let fixture = Fixture::start(|_| {}).await;
    let plugin = fixture.plugin().await;
    // A full batch, with bodies that need form encoding.
    let batch: Vec<_> = (0..50)
        .map(|i| {
            delivery(
                &format!("req/{i}"),
                &format!("+8210000000{i:02}"),
                &sms(&format!("Order {i} is on its way: 100% & paid = ✓ +1")),
            )
        })
        .collect();
    let outcomes = plugin.deliver(&batch).await.unwrap();

    let mut sids = std::collections::HashSet::new();
    for outcome in &outcomes {
        let Outcome::Delivered(sid) = outcome else {
            panic!("{outcome:?}");
        };
        assert!(sid.starts_with("SM") && sid.len() == 34, "{sid}");
        assert!(sid[2..].bytes().all(|b| b.is_ascii_hexdigit()), "{sid}");
        sids.insert(sid.clone());
    }
    assert_eq!(sids.len(), 50, "every message has its own sid");
    let stats = fixture.sim.stats.snapshot();
    assert_eq!(stats.delivered, 50);
    assert_eq!(stats.duplicates, 0);
    assert_eq!(stats.auth_failures, 0);

    // The simulator saw exactly To, From, Body, in that order, and nothing else.
    let requests = fixture.requests().await;
    assert_eq!(requests.len(), 50);
    for (i, d) in batch.iter().enumerate() {
        let request = fixture.request_to(&d.recipient).await;
        assert_eq!(request["account_sid"], ACCOUNT);
        assert_eq!(
            params(&request),
            pairs(&[
                ("To", &d.recipient),
                ("From", MAGIC_FROM),
                (
                    "Body",
                    &format!("Order {i} is on its way: 100% & paid = ✓ +1")
                ),
            ])
        );
    }

    // Twilio's own view of one of them.
    let Outcome::Delivered(sid) = &outcomes[7] else {
        unreachable!()
    };
    let message = fixture.fetch(sid).await;
    assert_eq!(message["status"], "delivered");
    assert_eq!(message["to"], batch[7].recipient);
    assert_eq!(message["from"], MAGIC_FROM);
    assert_eq!(message["body"], "Order 7 is on its way: 100% & paid = ✓ +1");
}

#[tokio::test]
async fn twilio_errors_map_to_outcomes() {
    let fixture = Fixture::start(|_| {}).await;
    let plugin = fixture.plugin().await;
    let too_long = "x".repeat(MAX_BODY_CHARS + 1);
    // (To, Body, expected outcome, Twilio code the simulator refused it with)
    let cases: [(&str, &str, &str, &str); 15] = [
        ("+15005550001", "hi", "invalid-recipient", "21211"),
        ("01012345678", "hi", "invalid-recipient", "21211"),
        ("+15005550009", "hi", "invalid-recipient", "21614"),
        ("+15005550004", "hi", "rejected:21610", "21610"),
        ("+15005550003", "hi", "rejected:21408", "21408"),
        ("+15005550002", "hi", "rejected:21612", "21612"),
        ("+99921606000", "hi", "rejected:21606", "21606"),
        ("+99921212000", "hi", "rejected:21212", "21212"),
        (MAGIC_FROM, "hi", "rejected:21266", "21266"),
        ("+821012345678", &too_long, "rejected:21617", "21617"),
        ("+821012345679", "", "rejected:21602", "21602"),
        ("+99920429000", "hi", "retry:1000", "20429"),
        ("+99921611000", "hi", "retry:-", "21611"),
        ("+99920500000", "hi", "retry:-", "20500"),
        ("+99920503000", "hi", "retry:1000", "20503"),
    ];
    let batch: Vec<_> = cases
        .iter()
        .map(|(to, body, _, _)| delivery(to, to, &sms(body)))
        .collect();
    let outcomes = plugin.deliver(&batch).await.unwrap();
    for ((to, _, expected, _), outcome) in cases.iter().zip(&outcomes) {
        assert_eq!(&label(outcome), expected, "To {to}: {outcome:?}");
    }
    // The rejection carries Twilio's message as its reason.
    let unsubscribed = &outcomes[3];
    assert!(
        matches!(unsubscribed, Outcome::Rejected(r) if r.reason.contains("unsubscribed")),
        "{unsubscribed:?}"
    );
    let stats = fixture.sim.stats.snapshot();
    assert_eq!(stats.delivered, 0);
    for (to, _, _, code) in &cases {
        assert!(
            stats.refused.get(*code).copied().unwrap_or(0) >= 1,
            "To {to}: {code}"
        );
    }
    assert_eq!(refused(&fixture, "21211"), 2);

    // A delivery-time failure (30001): Twilio accepts the message, then it fails. The adapter
    // reports what Twilio answered; the recipient got nothing, and the simulator says so.
    let late = plugin
        .deliver(&[delivery("late", "+99930001000", &sms("hi"))])
        .await
        .unwrap();
    let Outcome::Delivered(sid) = &late[0] else {
        panic!("{late:?}");
    };
    let message = fixture.fetch(sid).await;
    assert_eq!(message["status"], "failed");
    assert_eq!(message["error_code"], 30001);
    assert_eq!(refused(&fixture, "30001"), 1);
    assert_eq!(fixture.sim.stats.snapshot().delivered, 0);

    // Content that is not SMS JSON is refused without a request.
    let before = fixture.requests().await.len();
    let bad = plugin
        .deliver(&[delivery("bad", "+821012345678", r#"{"text": "hi"}"#)])
        .await
        .unwrap();
    assert_eq!(label(&bad[0]), "rejected:INVALID_CONTENT");
    assert_eq!(fixture.requests().await.len(), before);
}

#[tokio::test]
async fn twilio_sender_errors_map_to_outcomes() {
    let fixture = Fixture::start(|_| {}).await;
    let cases = [
        ("+14155550100", "rejected:21606"),
        ("+15005550007", "rejected:21606"),
        ("Not A Sender!", "rejected:21212"),
        ("+15005550001", "rejected:21212"),
        ("+15005550008", "retry:-"),
    ];
    for (from, expected) in cases {
        let plugin = fixture
            .plugin_with(&[("account_sid", ACCOUNT), ("from", from)])
            .await;
        let outcomes = plugin
            .deliver(&[delivery(from, "+821012345678", &sms("hi"))])
            .await
            .unwrap();
        assert_eq!(label(&outcomes[0]), expected, "From {from}: {outcomes:?}");
    }
    assert_eq!(refused(&fixture, "21606"), 2);
    assert_eq!(refused(&fixture, "21212"), 2);
    assert_eq!(refused(&fixture, "21611"), 1);
}

#[tokio::test]
async fn twilio_outages_rate_limits_and_transport_errors_are_retried() {
    // An outage: Twilio's 503 with Retry-After.
    let fixture = Fixture::start(|c| c.retry_after_s = 2).await;
    let plugin = fixture.plugin().await;
    fixture.sim.faults.set_outage(Some(OutageMode::Unavailable));
    let down = plugin
        .deliver(&[delivery("a", "+821012345678", &sms("hi"))])
        .await
        .unwrap();
    assert_eq!(label(&down[0]), "retry:2000", "{down:?}");
    assert_eq!(refused(&fixture, "20503"), 1);
    fixture.sim.faults.set_outage(None);
    let up = plugin
        .deliver(&[delivery("a", "+821012345678", &sms("hi"))])
        .await
        .unwrap();
    assert_eq!(label(&up[0]), "delivered");

    // A number that fails twice with 503, then goes through.
    let mut labels = Vec::new();
    for _ in 0..3 {
        let outcomes = plugin
            .deliver(&[delivery("f", "+99821234567", &sms("hi"))])
            .await
            .unwrap();
        labels.push(label(&outcomes[0]));
    }
    assert_eq!(labels, ["retry:2000", "retry:2000", "delivered"]);

    // The rate limit: 429 with code 20429 and Retry-After past one request a second.
    let limited = Fixture::start(|c| {
        c.faults.rate_limit = Some(RateLimit {
            per_second: 1,
            retry_after_s: 3,
        })
    })
    .await;
    let plugin = limited.plugin().await;
    let batch: Vec<_> = (0..3)
        .map(|i| delivery(&i.to_string(), &format!("+82101234567{i}"), &sms("hi")))
        .collect();
    let outcomes: Vec<_> = plugin
        .deliver(&batch)
        .await
        .unwrap()
        .iter()
        .map(label)
        .collect();
    assert_eq!(
        outcomes.iter().filter(|l| *l == "delivered").count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes.iter().filter(|l| *l == "retry:3000").count(),
        2,
        "{outcomes:?}"
    );
    assert_eq!(refused(&limited, "20429"), 2);

    // Nothing listening: a connect error is retried.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let options = LoadOptions {
        allowed_hosts: vec![addr.to_string()],
        secrets: vec![("basic_auth".into(), fixture.config.basic_auth())],
        config: pairs(&[
            ("account_sid", ACCOUNT),
            ("from", MAGIC_FROM),
            ("endpoint", &format!("http://{addr}")),
        ]),
        ..Default::default()
    };
    let plugin = fixture.load(options).await.unwrap();
    let outcomes = plugin
        .deliver(&[delivery("x", "+821012345678", &sms("hi"))])
        .await
        .unwrap();
    assert!(
        matches!(&outcomes[0], Outcome::Retry(r) if r.reason.starts_with("http")),
        "{outcomes:?}"
    );
}

#[tokio::test]
async fn twilio_refuses_wrong_credentials_and_the_deliveries_are_retried() {
    let fixture = Fixture::start(|_| {}).await;
    let wrong_token = TwilioConfig::new(ACCOUNT, "not-the-token").basic_auth();
    let mut options = fixture.options(&[("account_sid", ACCOUNT), ("from", MAGIC_FROM)]);
    options.secrets = vec![("basic_auth".into(), wrong_token)];
    let plugin = fixture.load(options).await.unwrap();
    let batch: Vec<_> = (0..3)
        .map(|i| delivery(&i.to_string(), &format!("+82101234567{i}"), &sms("hi")))
        .collect();
    let outcomes = plugin.deliver(&batch).await.unwrap();
    for outcome in &outcomes {
        assert!(
            matches!(outcome, Outcome::Retry(r) if r.reason.contains("20003") && r.after_ms.is_none()),
            "{outcome:?}"
        );
    }
    let stats = fixture.sim.stats.snapshot();
    assert_eq!(stats.auth_failures, 3);
    assert_eq!(stats.delivered, 0);
    assert!(
        fixture.requests().await.is_empty(),
        "nothing is looked at before auth"
    );

    // Right credentials, but a path naming another account: Twilio refuses those too.
    let plugin = fixture
        .plugin_with(&[
            ("account_sid", "AC99999999999999999999999999999999"),
            ("from", MAGIC_FROM),
        ])
        .await;
    let outcomes = plugin
        .deliver(&[delivery("o", "+821012345678", &sms("hi"))])
        .await
        .unwrap();
    assert!(
        matches!(&outcomes[0], Outcome::Retry(r) if r.reason.contains("20003")),
        "{outcomes:?}"
    );
    assert_eq!(fixture.sim.stats.snapshot().auth_failures, 4);
}

#[tokio::test]
async fn twilio_sends_through_a_messaging_service_instead_of_a_number() {
    let fixture = Fixture::start(|c| c.messaging_services = vec![SERVICE.into()]).await;
    let plugin = fixture
        .plugin_with(&[("account_sid", ACCOUNT), ("messaging_service_sid", SERVICE)])
        .await;
    let outcomes = plugin
        .deliver(&[delivery("s", "+821012345678", &sms("via the pool"))])
        .await
        .unwrap();
    let Outcome::Delivered(sid) = &outcomes[0] else {
        panic!("{outcomes:?}");
    };
    let request = fixture.request_to("+821012345678").await;
    assert_eq!(
        params(&request),
        pairs(&[
            ("To", "+821012345678"),
            ("MessagingServiceSid", SERVICE),
            ("Body", "via the pool"),
        ])
    );
    let message = fixture.fetch(sid).await;
    assert_eq!(message["messaging_service_sid"], SERVICE);
    assert_eq!(fixture.sim.stats.snapshot().delivered, 1);

    // A service the account does not have is Twilio's 404 (20404), a permanent rejection.
    let plugin = fixture
        .plugin_with(&[
            ("account_sid", ACCOUNT),
            (
                "messaging_service_sid",
                "MGffffffffffffffffffffffffffffffff",
            ),
        ])
        .await;
    let outcomes = plugin
        .deliver(&[delivery("u", "+821012345678", &sms("hi"))])
        .await
        .unwrap();
    assert_eq!(label(&outcomes[0]), "rejected:20404");
}

#[tokio::test]
async fn twilio_counts_a_resend_of_the_same_message_as_a_duplicate() {
    let fixture = Fixture::start(|_| {}).await;
    let plugin = fixture.plugin().await;
    let first = plugin
        .deliver(&[delivery("r/0", "+821012345678", &sms("your code is 1234"))])
        .await
        .unwrap();
    // The same message again, as after a lost reply: Twilio has no idempotency key, so it
    // creates a second message, and the recipient sees it twice.
    let again = plugin
        .deliver(&[delivery("r/0", "+821012345678", &sms("your code is 1234"))])
        .await
        .unwrap();
    assert_eq!(label(&first[0]), "delivered");
    assert_eq!(label(&again[0]), "delivered");
    let stats = fixture.sim.stats.snapshot();
    assert_eq!((stats.delivered, stats.duplicates), (1, 1));

    // Another text to the same number is a new message.
    plugin
        .deliver(&[delivery("r/1", "+821012345678", &sms("your code is 5678"))])
        .await
        .unwrap();
    let stats = fixture.sim.stats.snapshot();
    assert_eq!((stats.delivered, stats.duplicates), (2, 1));
}

#[tokio::test]
async fn twilio_config_is_checked_at_load() {
    let fixture = Fixture::start(|_| {}).await;
    let cases: [(&[(&str, &str)], &str); 3] = [
        (&[("from", MAGIC_FROM)], "account_sid"),
        (
            &[("account_sid", ACCOUNT)],
            "`from` or `messaging_service_sid`",
        ),
        (
            &[
                ("account_sid", ACCOUNT),
                ("from", MAGIC_FROM),
                ("messaging_service_sid", SERVICE),
            ],
            "not both",
        ),
    ];
    for (config, expected) in cases {
        let err = fixture
            .load(fixture.options(config))
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains(expected), "{config:?}: {err}");
    }
}
