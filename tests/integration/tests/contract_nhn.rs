//! Contract tests of the NHN Cloud adapters against their simulators: `alimtalk-nhn` (KakaoTalk
//! Bizmessage Alimtalk v2.3) and `sms-nhn` (SMS v3.0). One suite, run over both products as
//! `history/tests/common` runs one suite over two databases: a batch becomes one request per
//! template or message text, every row of the outcome tables in docs/vendors/ maps as
//! documented, credentials are checked, per-recipient results land on the right delivery, and a
//! resent batch counts as duplicates. What differs per product is data in [`Product`].

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};
use switchboard::contract::{Delivery, Outcome};
use switchboard::plugin::LoadedPlugin;
use switchboard_integration_tests::{LoadOptions, delivery, load, plugin_path, runtime};
use vendorsim::RunningSim;
use vendorsim::nhn::{
    AlimtalkCode, AlimtalkConfig, LoggedRequest, RequestLog, SmsCode, SmsConfig, start_alimtalk,
    start_sms,
};

const APPKEY: &str = "sim-appkey-0001";
const SECRET: &str = "sim-secret-key";
/// Sender keys are 40 characters at NHN.
const SENDER_KEY: &str = "5d9a3b1e07c24f8a9e6b2c1d0f3a4e5b6c7d8e9f";
const SEND_NO: &str = "15446859";
const TEMPLATE: &str = "ORDER_SHIPPED";
const OTHER_TEMPLATE: &str = "ORDER_PAID";

/// The suite, once per product.
macro_rules! nhn_suite {
    ($($module:ident => $product:expr),* $(,)?) => {$(
        mod $module {
            use super::Product;

            #[tokio::test]
            async fn sends_a_batch_of_50_in_one_request() {
                super::sends_a_batch_of_50_in_one_request($product).await;
            }

            #[tokio::test]
            async fn groups_a_batch_by_what_one_request_carries() {
                super::groups_a_batch_by_what_one_request_carries($product).await;
            }

            #[tokio::test]
            async fn maps_a_mixed_batch_recipient_by_recipient() {
                super::maps_a_mixed_batch_recipient_by_recipient($product).await;
            }

            #[tokio::test]
            async fn codes_map_to_outcomes() {
                super::codes_map_to_outcomes($product).await;
            }

            #[tokio::test]
            async fn random_error_rates_apply_per_recipient() {
                super::random_error_rates_apply_per_recipient($product).await;
            }

            #[tokio::test]
            async fn wrong_credentials_are_refused() {
                super::wrong_credentials_are_refused($product).await;
            }

            #[tokio::test]
            async fn counts_a_resent_batch_as_duplicates() {
                super::counts_a_resent_batch_as_duplicates($product).await;
            }

            #[tokio::test]
            async fn simulator_checks_the_request_shape() {
                super::simulator_checks_the_request_shape($product).await;
            }
        }
    )*};
}

nhn_suite!(alimtalk => Product::Alimtalk, sms => Product::Sms);

/// An outcome as a short string: `delivered`, `retry:<after_ms or ->`, `rejected:<code>`,
/// `invalid-recipient`.
fn summary(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Delivered(_) => "delivered".into(),
        Outcome::Retry(r) => format!(
            "retry:{}",
            r.after_ms.map_or("-".into(), |ms| ms.to_string())
        ),
        Outcome::Rejected(r) => format!("rejected:{}", r.code),
        Outcome::InvalidRecipient(_) => "invalid-recipient".into(),
    }
}

fn summaries(outcomes: &[Outcome]) -> Vec<String> {
    outcomes.iter().map(summary).collect()
}

/// A Korean mobile number that triggers nothing.
fn number(i: usize) -> String {
    format!("0101000{i:04}")
}

fn template_content(template: &str, name: &str) -> String {
    json!({"template": template, "params": {"name": name, "orderNo": 1042}}).to_string()
}

fn sms_content(body: &str) -> String {
    json!({ "body": body }).to_string()
}

fn sorted(mut requests: Vec<LoggedRequest>) -> Vec<LoggedRequest> {
    requests.sort_by(|a, b| a.group.cmp(&b.group));
    requests
}

fn set(options: &mut LoadOptions, key: &str, value: &str) {
    options.config.retain(|(k, _)| k != key);
    options.config.push((key.into(), value.into()));
}

/// The sequence number in each delivered outcome's message id (`requestId/seq`).
fn sequences(outcomes: &[Outcome]) -> Vec<&str> {
    outcomes
        .iter()
        .map(|o| match o {
            Outcome::Delivered(id) => id.rsplit('/').next().unwrap_or(""),
            _ => "",
        })
        .collect()
}

/// One row of a product's outcome table: what it is, the recipient, the content, the outcome.
type Row = (&'static str, String, String, &'static str);

/// A mixed batch: each delivery's recipient, content and outcome; the deliveries the simulator
/// counts as delivered; and what it counts as refused, by code.
type Mixed = (
    Vec<(String, String, &'static str)>,
    u64,
    Vec<(&'static str, u64)>,
);

/// An NHN Cloud product, and everything the suite needs to know of it.
#[derive(Debug, Clone, Copy)]
enum Product {
    Alimtalk,
    Sms,
}

impl Product {
    fn plugin(self) -> &'static str {
        match self {
            Product::Alimtalk => "alimtalk-nhn",
            Product::Sms => "sms-nhn",
        }
    }

    /// The config key of the sender, and the registered sender.
    fn sender(self) -> (&'static str, &'static str) {
        match self {
            Product::Alimtalk => ("sender_key", SENDER_KEY),
            Product::Sms => ("send_no", SEND_NO),
        }
    }

    /// The send path under the simulator's URL.
    fn path(self) -> String {
        match self {
            Product::Alimtalk => format!("/alimtalk/v2.3/appkeys/{APPKEY}/messages"),
            Product::Sms => format!("/sms/v3.0/appKeys/{APPKEY}/sender/sms"),
        }
    }

    /// Content that delivers; `variant` makes another message for the same group.
    fn content(self, variant: &str) -> String {
        match self {
            Product::Alimtalk => template_content(TEMPLATE, variant),
            Product::Sms => sms_content(&format!("code {variant}")),
        }
    }

    async fn start(self, every_recipient_fails: bool) -> Fixture {
        let (sim, requests) = match self {
            Product::Alimtalk => {
                let mut config = AlimtalkConfig::new(APPKEY, SECRET, SENDER_KEY)
                    .template(TEMPLATE, &["name", "orderNo"])
                    .template(OTHER_TEMPLATE, &["name"]);
                if every_recipient_fails {
                    config.error_rates = vec![(AlimtalkCode::VendorApiFailed, 1.0)];
                }
                let requests = config.requests.clone();
                (
                    start_alimtalk(config).await.expect("alimtalk simulator"),
                    requests,
                )
            }
            Product::Sms => {
                let mut config = SmsConfig::new(APPKEY, SECRET, SEND_NO);
                if every_recipient_fails {
                    config.error_rates = vec![(SmsCode::QueueInsertFailed, 1.0)];
                }
                let requests = config.requests.clone();
                (start_sms(config).await.expect("sms simulator"), requests)
            }
        };
        Fixture {
            product: self,
            sim,
            requests,
        }
    }

    /// The code every recipient fails with when the simulator fails them all (a retried one).
    fn failing_code(self) -> &'static str {
        match self {
            Product::Alimtalk => "-7000",
            Product::Sms => "-2021",
        }
    }

    /// The header code of a wrong secret key.
    fn wrong_secret_code(self) -> &'static str {
        match self {
            Product::Alimtalk => "rejected:-1001",
            Product::Sms => "rejected:-1000",
        }
    }

    /// The content of a large batch that is one request, and the group the simulator logs.
    fn one_group(self) -> (String, String) {
        match self {
            Product::Alimtalk => (template_content(TEMPLATE, "Kim"), TEMPLATE.into()),
            Product::Sms => {
                let text = "[Switchboard] 주문하신 상품이 발송되었습니다.";
                (sms_content(text), text.into())
            }
        }
    }

    /// A batch in two groups, each group with its size, and the sequence each delivery gets in
    /// its group's request.
    fn two_groups(self) -> (Vec<String>, [(String, usize); 2], Vec<&'static str>) {
        match self {
            // Interleaved: indexes 0, 2, 4, 6, 8, 9 use TEMPLATE; 1, 3, 5, 7 OTHER_TEMPLATE.
            Product::Alimtalk => {
                let of = |i: usize| match i.is_multiple_of(2) || i == 9 {
                    true => TEMPLATE,
                    false => OTHER_TEMPLATE,
                };
                (
                    (0..10).map(|i| template_content(of(i), "Lee")).collect(),
                    [(OTHER_TEMPLATE.into(), 4), (TEMPLATE.into(), 6)],
                    vec!["1", "1", "2", "2", "3", "3", "4", "4", "5", "6"],
                )
            }
            // Every third (0, 3, 6) says "code 1234"; the others "code 5678".
            Product::Sms => {
                let of = |i: usize| match i.is_multiple_of(3) {
                    true => "code 1234",
                    false => "code 5678",
                };
                (
                    (0..9).map(|i| sms_content(of(i))).collect(),
                    [("code 1234".into(), 3), ("code 5678".into(), 6)],
                    vec!["1", "1", "2", "2", "3", "4", "3", "5", "6"],
                )
            }
        }
    }

    /// A batch mixing every kind of per-recipient result, and what the simulator counts of it.
    fn mixed(self) -> Mixed {
        match self {
            Product::Alimtalk => {
                let ok = template_content(TEMPLATE, "Park");
                let missing_param =
                    json!({"template": TEMPLATE, "params": {"name": "Park"}}).to_string();
                (
                    vec![
                        (number(1), ok.clone(), "delivered"),
                        ("01099905000".into(), ok.clone(), "invalid-recipient"),
                        (number(2), ok.clone(), "delivered"),
                        (number(3), missing_param, "rejected:-3004"),
                        ("01099909999".into(), ok.clone(), "retry:-"),
                        (number(4), ok.clone(), "delivered"),
                        ("010-ABCD-0000".into(), ok.clone(), "invalid-recipient"),
                        (number(5), ok, "delivered"),
                    ],
                    4,
                    vec![("-5000", 2), ("-3004", 1), ("-9999", 1)],
                )
            }
            Product::Sms => {
                let ok = sms_content("your code is 4821");
                (
                    vec![
                        (number(1), ok.clone(), "delivered"),
                        ("01099902019".into(), ok.clone(), "invalid-recipient"),
                        (number(2), ok.clone(), "delivered"),
                        ("12ab".into(), ok.clone(), "invalid-recipient"),
                        ("01099909999".into(), ok.clone(), "retry:-"),
                        ("01099906001".into(), ok.clone(), "rejected:-6001"),
                        (number(3), ok, "delivered"),
                    ],
                    3,
                    vec![("-2019", 2), ("-9999", 1), ("-6001", 1)],
                )
            }
        }
    }

    /// Every row of docs/vendors/<plugin>.md that the default configuration can produce. The
    /// last two never reach NHN: the adapter refuses them.
    fn rows(self) -> Vec<Row> {
        let ok = self.content("4821");
        let row = |what, to: &str, expected| (what, to.to_string(), ok.clone(), expected);
        let mut rows: Vec<Row> = match self {
            Product::Alimtalk => vec![
                // Per-recipient send results.
                row("recipient -5000", "01099905000", "invalid-recipient"),
                row("recipient -4019", "01099904019", "invalid-recipient"),
                row("recipient -3004", "01099903004", "rejected:-3004"),
                row("recipient -3049", "01099903049", "rejected:-3049"),
                row("recipient -9999", "01099909999", "retry:-"),
                row("recipient -7000", "01099907000", "retry:-"),
                // Failures of the whole request, in the header.
                row("header -1000", "01099911000", "rejected:-1000"),
                row("header -1001", "01099911001", "rejected:-1001"),
                row("header -2017", "01099912017", "rejected:-2017"),
                row("header -2004", "01099912004", "rejected:-2004"),
                row("header -3003", "01099913003", "rejected:-3003"),
                row("header -1027", "01099911027", "rejected:-1027"),
                row("header -5000", "01099915000", "invalid-recipient"),
                row("header -9999", "01099919999", "retry:-"),
                row("header -7000", "01099917000", "retry:-"),
            ],
            Product::Sms => vec![
                row("recipient -2018", "01099902018", "invalid-recipient"),
                row("recipient -2019", "01099902019", "invalid-recipient"),
                row("recipient -6001", "01099906001", "rejected:-6001"),
                row("recipient -9999", "01099909999", "retry:-"),
                row("recipient -2021", "01099902021", "retry:-"),
                row("header -1000", "01099911000", "rejected:-1000"),
                row("header -2312", "01099912312", "rejected:-2312"),
                row("header -2015", "01099912015", "rejected:-2015"),
                row("header -2016", "01099912016", "rejected:-2016"),
                row("header -2019", "01099912019", "invalid-recipient"),
                row("header -9999", "01099919999", "retry:-"),
                row("header -2021", "01099912021", "retry:-"),
            ],
        };
        // HTTP statuses: the same on both products.
        rows.extend([
            row("HTTP 503", "0109992503", "retry:1000"),
            row("HTTP 429", "0109992429", "retry:1000"),
            row("HTTP 500", "0109992500", "retry:-"),
            row("HTTP 408", "0109992408", "retry:-"),
            row("HTTP 400", "0109992400", "rejected:-9997"),
            row("HTTP 200, empty body", "0109992200", "retry:-"),
        ]);
        // The simulator's own checks, then what the adapter refuses without a request.
        rows.extend(match self {
            Product::Alimtalk => vec![
                (
                    "unknown template",
                    number(1),
                    template_content("NO_SUCH_TEMPLATE", "Choi"),
                    "rejected:-3003",
                ),
                (
                    "missing template parameter",
                    number(2),
                    json!({"template": TEMPLATE, "params": {}}).to_string(),
                    "rejected:-3004",
                ),
                row(
                    "malformed number (-1031 with results)",
                    "12ab",
                    "invalid-recipient",
                ),
                row("empty recipient", "  ", "invalid-recipient"),
                (
                    "content not {template, params}",
                    number(3),
                    json!({"body": "hi"}).to_string(),
                    "rejected:INVALID_CONTENT",
                ),
            ],
            Product::Sms => vec![
                (
                    "body over 90 bytes",
                    number(1),
                    sms_content(&"가".repeat(46)),
                    "rejected:-2015",
                ),
                (
                    "body EUC-KR cannot carry",
                    number(2),
                    sms_content("배송 출발 🚚"),
                    "rejected:-2023",
                ),
                ("empty body", number(3), sms_content(" "), "rejected:-2014"),
                row("malformed number", "12ab", "invalid-recipient"),
                row("empty recipient", "", "invalid-recipient"),
                (
                    "content not {body}",
                    number(4),
                    json!({"template": "T"}).to_string(),
                    "rejected:INVALID_CONTENT",
                ),
            ],
        });
        rows
    }

    /// A sender the simulator does not know, and the code it answers.
    fn wrong_sender(self) -> (&'static str, &'static str) {
        match self {
            Product::Alimtalk => ("0000000000000000000000000000000000000000", "rejected:-2017"),
            Product::Sms => ("0212345678", "rejected:-2312"),
        }
    }

    /// Request bodies posted straight to the simulator, with their content type, and the header
    /// code each gets.
    fn shapes(self) -> Vec<(&'static str, String, i64)> {
        match self {
            Product::Alimtalk => {
                let params = json!({"name": "a", "orderNo": "1"});
                let recipients: Vec<Value> = (0..1001)
                    .map(|i| json!({"recipientNo": number(i), "templateParameter": params}))
                    .collect();
                let body = |list: Value| json!({"senderKey": SENDER_KEY, "templateCode": TEMPLATE, "recipientList": list});
                let one = body(json!([{"recipientNo": number(1), "templateParameter": params}]));
                vec![
                    (
                        "application/json",
                        body(json!(recipients)).to_string(),
                        -2004,
                    ),
                    (
                        "application/json",
                        body(json!([{"recipientNo": ""}])).to_string(),
                        -2001,
                    ),
                    ("text/plain", one.to_string(), -9996),
                    ("application/json", "{not json".to_string(), -9997),
                    ("application/json;charset=UTF-8", one.to_string(), 0),
                ]
            }
            Product::Sms => {
                let recipients: Vec<Value> = (0..1001)
                    .map(|i| json!({"recipientNo": number(i)}))
                    .collect();
                let body =
                    |list: Value| json!({"body": "hi", "sendNo": SEND_NO, "recipientList": list});
                let one = body(json!([{"recipientNo": number(1)}]));
                vec![
                    (
                        "application/json",
                        body(json!(recipients)).to_string(),
                        -2016,
                    ),
                    ("application/json", body(json!([])).to_string(), -2001),
                    ("text/plain", one.to_string(), -9996),
                    ("application/json", "{not json".to_string(), -9997),
                    ("application/json;charset=UTF-8", one.to_string(), 0),
                    (
                        "application/json",
                        body(json!([{"internationalRecipientNo": "821010002000"}])).to_string(),
                        0,
                    ),
                ]
            }
        }
    }
}

/// A product's simulator, and the requests it logged.
struct Fixture {
    product: Product,
    sim: RunningSim,
    requests: Arc<RequestLog>,
}

impl Fixture {
    async fn plugin(&self, tune: impl FnOnce(&mut LoadOptions)) -> LoadedPlugin {
        let (sender_key, sender) = self.product.sender();
        let mut options = LoadOptions {
            allowed_hosts: vec![self.sim.addr.to_string()],
            secrets: vec![("secret_key".into(), SECRET.into())],
            config: vec![
                ("appkey".into(), APPKEY.into()),
                (sender_key.into(), sender.into()),
                ("endpoint".into(), self.sim.url()),
            ],
            ..Default::default()
        };
        tune(&mut options);
        let name = self.product.plugin();
        load(&runtime(), name, &plugin_path(name), options)
            .await
            .unwrap_or_else(|e| panic!("{name} loads: {e}"))
    }

    fn refused(&self) -> BTreeMap<String, u64> {
        self.sim.stats.snapshot().refused
    }
}

async fn sends_a_batch_of_50_in_one_request(product: Product) {
    let fixture = product.start(false).await;
    let plugin = fixture.plugin(|_| {}).await;
    let (content, group) = product.one_group();
    let batch: Vec<Delivery> = (0..50)
        .map(|i| delivery(&format!("r1/{i}"), &number(i), &content))
        .collect();
    let outcomes = plugin.deliver(&batch).await.unwrap();
    assert_eq!(summaries(&outcomes), vec!["delivered"; 50]);
    // The message id is NHN's requestId and the recipient's sequence in the request.
    let Outcome::Delivered(last) = &outcomes[49] else {
        unreachable!()
    };
    assert!(last.ends_with("/50"), "{last}");
    assert_eq!(
        fixture.requests.requests(),
        vec![LoggedRequest {
            group,
            recipients: 50
        }]
    );
    let stats = fixture.sim.stats.snapshot();
    assert_eq!(stats.delivered, 50);
    assert_eq!(stats.duplicates, 0);
    assert_eq!(stats.auth_failures, 0);
}

async fn groups_a_batch_by_what_one_request_carries(product: Product) {
    let fixture = product.start(false).await;
    let plugin = fixture.plugin(|_| {}).await;
    let (contents, groups, expected_sequences) = product.two_groups();
    let batch: Vec<Delivery> = contents
        .iter()
        .enumerate()
        .map(|(i, content)| delivery(&format!("r2/{i}"), &number(i), content))
        .collect();
    let outcomes = plugin.deliver(&batch).await.unwrap();
    assert_eq!(summaries(&outcomes), vec!["delivered"; batch.len()]);
    let expected: Vec<LoggedRequest> = groups
        .into_iter()
        .map(|(group, recipients)| LoggedRequest { group, recipients })
        .collect();
    assert_eq!(sorted(fixture.requests.requests()), expected);
    // Each delivery got the result of its own position in its group's request.
    assert_eq!(sequences(&outcomes), expected_sequences);
    assert_eq!(fixture.sim.stats.snapshot().delivered, batch.len() as u64);
}

async fn maps_a_mixed_batch_recipient_by_recipient(product: Product) {
    let fixture = product.start(false).await;
    let plugin = fixture.plugin(|_| {}).await;
    let (cases, delivered, refused) = product.mixed();
    let batch: Vec<Delivery> = cases
        .iter()
        .enumerate()
        .map(|(i, (to, content, _))| delivery(&format!("r3/{i}"), to, content))
        .collect();
    let outcomes = plugin.deliver(&batch).await.unwrap();
    let expected: Vec<&str> = cases.iter().map(|(_, _, e)| *e).collect();
    assert_eq!(summaries(&outcomes), expected);
    assert_eq!(fixture.requests.count(), 1);
    assert_eq!(fixture.sim.stats.snapshot().delivered, delivered);
    let counted = fixture.refused();
    for (code, count) in refused {
        assert_eq!(counted.get(code), Some(&count), "{code}: {counted:?}");
    }
}

async fn codes_map_to_outcomes(product: Product) {
    let fixture = product.start(false).await;
    let plugin = fixture.plugin(|_| {}).await;
    let rows = product.rows();
    for (i, (row, to, content, expected)) in rows.iter().enumerate() {
        let outcomes = plugin
            .deliver(&[delivery(&format!("c/{i}"), to, content)])
            .await
            .unwrap();
        assert_eq!(summary(&outcomes[0]), *expected, "row {row}");
    }
    // The last two rows never reached NHN.
    assert_eq!(fixture.requests.count(), rows.len() - 2);

    // An outage and the rate limit answer 503 / 429 with Retry-After.
    let ok = product.content("4821");
    fixture
        .sim
        .faults
        .set_outage(Some(vendorsim::OutageMode::Unavailable));
    let outage = plugin
        .deliver(&[delivery("o/1", &number(90), &ok)])
        .await
        .unwrap();
    assert_eq!(summary(&outage[0]), "retry:1000");
    fixture.sim.faults.set_outage(None);

    // A sender NHN does not know.
    let (sender_key, _) = product.sender();
    let (wrong, expected) = product.wrong_sender();
    let wrong_sender = fixture.plugin(|o| set(o, sender_key, wrong)).await;
    let outcomes = wrong_sender
        .deliver(&[delivery("s/1", &number(91), &ok)])
        .await
        .unwrap();
    assert_eq!(summary(&outcomes[0]), expected);

    // A reply that is not NHN's (wrong endpoint path: a bare 404).
    let wrong_path = fixture
        .plugin(|o| set(o, "endpoint", &format!("{}/nowhere", fixture.sim.url())))
        .await;
    let outcomes = wrong_path
        .deliver(&[delivery("p/1", &number(92), &ok)])
        .await
        .unwrap();
    assert_eq!(summary(&outcomes[0]), "rejected:HTTP_404");

    // Nobody listening: a transport error.
    let unreachable = fixture
        .plugin(|o| {
            o.allowed_hosts.push("127.0.0.1:1".into());
            set(o, "endpoint", "http://127.0.0.1:1");
        })
        .await;
    let outcomes = unreachable
        .deliver(&[delivery("t/1", &number(93), &ok)])
        .await
        .unwrap();
    assert_eq!(summary(&outcomes[0]), "retry:-");
}

async fn random_error_rates_apply_per_recipient(product: Product) {
    let fixture = product.start(true).await;
    let plugin = fixture.plugin(|_| {}).await;
    let content = product.content("Jung");
    let batch: Vec<Delivery> = (0..5)
        .map(|i| delivery(&format!("e/{i}"), &number(i), &content))
        .collect();
    let outcomes = plugin.deliver(&batch).await.unwrap();
    assert_eq!(summaries(&outcomes), vec!["retry:-"; 5]);
    assert_eq!(fixture.refused().get(product.failing_code()), Some(&5));
}

async fn wrong_credentials_are_refused(product: Product) {
    let fixture = product.start(false).await;
    let content = product.content("Kang");
    let batch = [
        delivery("a/0", &number(0), &content),
        delivery("a/1", &number(1), &content),
    ];

    let wrong_secret = fixture
        .plugin(|o| o.secrets = vec![("secret_key".into(), "not-the-secret".into())])
        .await;
    let outcomes = wrong_secret.deliver(&batch).await.unwrap();
    let refused = product.wrong_secret_code();
    assert_eq!(summaries(&outcomes), [refused, refused]);
    assert_eq!(fixture.sim.stats.snapshot().auth_failures, 1);

    let wrong_appkey = fixture.plugin(|o| set(o, "appkey", "other-appkey")).await;
    let outcomes = wrong_appkey.deliver(&batch).await.unwrap();
    assert_eq!(summaries(&outcomes), ["rejected:-1000", "rejected:-1000"]);

    // The secret under another name, as `secret_key_secret` says.
    let renamed = fixture
        .plugin(|o| {
            o.secrets = vec![("nhn_key".into(), SECRET.into())];
            set(o, "secret_key_secret", "nhn_key");
        })
        .await;
    let outcomes = renamed.deliver(&batch).await.unwrap();
    assert_eq!(summaries(&outcomes), ["delivered", "delivered"]);

    let stats = fixture.sim.stats.snapshot();
    assert_eq!(stats.auth_failures, 2);
    assert_eq!(stats.delivered, 2);
}

async fn counts_a_resent_batch_as_duplicates(product: Product) {
    let fixture = product.start(false).await;
    let plugin = fixture.plugin(|_| {}).await;
    let content = product.content("Yoon");
    let batch: Vec<Delivery> = (0..20)
        .map(|i| delivery(&format!("d/{i}"), &number(i), &content))
        .collect();
    for _ in 0..2 {
        let outcomes = plugin.deliver(&batch).await.unwrap();
        assert_eq!(summaries(&outcomes), vec!["delivered"; 20]);
    }
    // Another message for the same number is no duplicate.
    let other = plugin
        .deliver(&[delivery("d/x", &number(0), &product.content("Han"))])
        .await
        .unwrap();
    assert_eq!(summary(&other[0]), "delivered");
    let stats = fixture.sim.stats.snapshot();
    assert_eq!(stats.delivered, 21);
    assert_eq!(stats.duplicates, 20);
}

async fn simulator_checks_the_request_shape(product: Product) {
    let fixture = product.start(false).await;
    let url = format!("{}{}", fixture.sim.url(), product.path());
    for (content_type, body, expected) in product.shapes() {
        let reply = post(&url, content_type, body).await;
        assert_eq!(reply["header"]["resultCode"], json!(expected), "{reply}");
        assert_eq!(
            reply["header"]["isSuccessful"],
            json!(expected == 0),
            "{reply}"
        );
    }
}

/// Posts `body` straight to a simulator with the right secret key, and returns the JSON reply.
async fn post(url: &str, content_type: &str, body: String) -> Value {
    let client = switchboard::host::http_client(&[]).expect("http client");
    let response = client
        .post(url)
        .header("content-type", content_type)
        .header("x-secret-key", SECRET)
        .body(body)
        .send()
        .await
        .expect("simulator answers");
    assert_eq!(response.status().as_u16(), 200);
    response.json().await.expect("JSON reply")
}
