//! Contract tests of the NHN Cloud adapters against their simulators: `alimtalk-nhn` (KakaoTalk
//! Bizmessage Alimtalk v2.3) and `sms-nhn` (SMS v3.0). A batch becomes one request per template
//! or message text, every row of the outcome tables in docs/vendors/ maps as documented,
//! credentials are checked, per-recipient results land on the right delivery, and a resent batch
//! counts as duplicates.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use serde_json::{Value, json};
use switchboard::plugin::{Delivery, LoadedPlugin, Outcome};
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

// ---------------------------------------------------------------------------------------------
// Alimtalk

struct AlimtalkFixture {
    sim: RunningSim,
    requests: Arc<RequestLog>,
}

impl AlimtalkFixture {
    async fn start(tune: impl FnOnce(&mut AlimtalkConfig)) -> Self {
        let mut config = AlimtalkConfig::new(APPKEY, SECRET, SENDER_KEY)
            .template(TEMPLATE, &["name", "orderNo"])
            .template(OTHER_TEMPLATE, &["name"]);
        tune(&mut config);
        let requests = config.requests.clone();
        let sim = start_alimtalk(config).await.expect("alimtalk simulator");
        Self { sim, requests }
    }

    fn options(&self) -> LoadOptions {
        LoadOptions {
            allowed_hosts: vec![self.sim.addr.to_string()],
            secrets: vec![("secret_key".into(), SECRET.into())],
            config: vec![
                ("appkey".into(), APPKEY.into()),
                ("sender_key".into(), SENDER_KEY.into()),
                ("endpoint".into(), self.sim.url()),
            ],
            ..Default::default()
        }
    }

    async fn plugin(&self, tune: impl FnOnce(&mut LoadOptions)) -> LoadedPlugin {
        let mut options = self.options();
        tune(&mut options);
        load(
            &runtime(),
            "alimtalk-nhn",
            &plugin_path("alimtalk-nhn"),
            options,
        )
        .await
        .expect("alimtalk-nhn loads")
    }
}

fn set(options: &mut LoadOptions, key: &str, value: &str) {
    options.config.retain(|(k, _)| k != key);
    options.config.push((key.into(), value.into()));
}

#[tokio::test]
async fn alimtalk_sends_a_batch_of_50_in_one_request() {
    let fixture = AlimtalkFixture::start(|_| {}).await;
    let plugin = fixture.plugin(|_| {}).await;
    let batch: Vec<Delivery> = (0..50)
        .map(|i| {
            delivery(
                &format!("r1/{i}"),
                &number(i),
                &template_content(TEMPLATE, "Kim"),
            )
        })
        .collect();
    let outcomes = plugin.deliver(&batch).await.unwrap();
    assert!(
        outcomes.iter().all(|o| matches!(o, Outcome::Delivered(_))),
        "{outcomes:?}"
    );
    // The message id is NHN's requestId and the recipient's sequence in the request.
    let Outcome::Delivered(last) = &outcomes[49] else {
        unreachable!()
    };
    assert!(last.ends_with("/50"), "{last}");
    assert_eq!(
        fixture.requests.requests(),
        vec![LoggedRequest {
            group: TEMPLATE.into(),
            recipients: 50
        }]
    );
    let stats = fixture.sim.stats.snapshot();
    assert_eq!(stats.delivered, 50);
    assert_eq!(stats.duplicates, 0);
    assert_eq!(stats.auth_failures, 0);
}

#[tokio::test]
async fn alimtalk_groups_a_batch_by_template() {
    let fixture = AlimtalkFixture::start(|_| {}).await;
    let plugin = fixture.plugin(|_| {}).await;
    // Interleaved: indexes 0, 2, 4, 6, 8, 9 use TEMPLATE; 1, 3, 5, 7 use OTHER_TEMPLATE.
    let template_of = |i: usize| {
        if i.is_multiple_of(2) || i == 9 {
            TEMPLATE
        } else {
            OTHER_TEMPLATE
        }
    };
    let batch: Vec<Delivery> = (0..10)
        .map(|i| {
            delivery(
                &format!("r2/{i}"),
                &number(i),
                &template_content(template_of(i), "Lee"),
            )
        })
        .collect();
    let outcomes = plugin.deliver(&batch).await.unwrap();
    assert_eq!(summaries(&outcomes), vec!["delivered"; 10]);
    assert_eq!(
        sorted(fixture.requests.requests()),
        vec![
            LoggedRequest {
                group: OTHER_TEMPLATE.into(),
                recipients: 4
            },
            LoggedRequest {
                group: TEMPLATE.into(),
                recipients: 6
            },
        ]
    );
    // Each delivery got the result of its own position in its template's request.
    let seqs: Vec<&str> = outcomes
        .iter()
        .map(|o| match o {
            Outcome::Delivered(id) => id.rsplit('/').next().unwrap_or(""),
            _ => "",
        })
        .collect();
    assert_eq!(seqs, ["1", "1", "2", "2", "3", "3", "4", "4", "5", "6"]);
    assert_eq!(fixture.sim.stats.snapshot().delivered, 10);
}

#[tokio::test]
async fn alimtalk_maps_a_mixed_batch_recipient_by_recipient() {
    let fixture = AlimtalkFixture::start(|_| {}).await;
    let plugin = fixture.plugin(|_| {}).await;
    let ok = template_content(TEMPLATE, "Park");
    let missing_param = json!({"template": TEMPLATE, "params": {"name": "Park"}}).to_string();
    let cases = [
        (number(1), ok.clone(), "delivered"),
        ("01099905000".to_string(), ok.clone(), "invalid-recipient"),
        (number(2), ok.clone(), "delivered"),
        (number(3), missing_param, "rejected:-3004"),
        ("01099909999".to_string(), ok.clone(), "retry:-"),
        (number(4), ok.clone(), "delivered"),
        ("010-ABCD-0000".to_string(), ok.clone(), "invalid-recipient"),
        (number(5), ok.clone(), "delivered"),
    ];
    let batch: Vec<Delivery> = cases
        .iter()
        .enumerate()
        .map(|(i, (to, content, _))| delivery(&format!("r3/{i}"), to, content))
        .collect();
    let outcomes = plugin.deliver(&batch).await.unwrap();
    let expected: Vec<&str> = cases.iter().map(|(_, _, e)| *e).collect();
    assert_eq!(summaries(&outcomes), expected);
    assert_eq!(fixture.requests.count(), 1);
    let stats = fixture.sim.stats.snapshot();
    assert_eq!(stats.delivered, 4);
    assert_eq!(stats.refused.get("-5000"), Some(&2));
    assert_eq!(stats.refused.get("-3004"), Some(&1));
    assert_eq!(stats.refused.get("-9999"), Some(&1));
}

/// Every row of docs/vendors/alimtalk-nhn.md that the default configuration can produce.
#[tokio::test]
async fn alimtalk_codes_map_to_outcomes() {
    let fixture = AlimtalkFixture::start(|_| {}).await;
    let plugin = fixture.plugin(|_| {}).await;
    let ok = template_content(TEMPLATE, "Choi");
    let cases: Vec<(&str, String, String, &str)> = vec![
        // Per-recipient send results.
        (
            "recipient -5000",
            "01099905000".into(),
            ok.clone(),
            "invalid-recipient",
        ),
        (
            "recipient -4019",
            "01099904019".into(),
            ok.clone(),
            "invalid-recipient",
        ),
        (
            "recipient -3004",
            "01099903004".into(),
            ok.clone(),
            "rejected:-3004",
        ),
        (
            "recipient -3049",
            "01099903049".into(),
            ok.clone(),
            "rejected:-3049",
        ),
        (
            "recipient -9999",
            "01099909999".into(),
            ok.clone(),
            "retry:-",
        ),
        (
            "recipient -7000",
            "01099907000".into(),
            ok.clone(),
            "retry:-",
        ),
        // Failures of the whole request, in the header.
        (
            "header -1000",
            "01099911000".into(),
            ok.clone(),
            "rejected:-1000",
        ),
        (
            "header -1001",
            "01099911001".into(),
            ok.clone(),
            "rejected:-1001",
        ),
        (
            "header -2017",
            "01099912017".into(),
            ok.clone(),
            "rejected:-2017",
        ),
        (
            "header -2004",
            "01099912004".into(),
            ok.clone(),
            "rejected:-2004",
        ),
        (
            "header -3003",
            "01099913003".into(),
            ok.clone(),
            "rejected:-3003",
        ),
        (
            "header -1027",
            "01099911027".into(),
            ok.clone(),
            "rejected:-1027",
        ),
        (
            "header -5000",
            "01099915000".into(),
            ok.clone(),
            "invalid-recipient",
        ),
        ("header -9999", "01099919999".into(), ok.clone(), "retry:-"),
        ("header -7000", "01099917000".into(), ok.clone(), "retry:-"),
        // HTTP statuses.
        ("HTTP 503", "0109992503".into(), ok.clone(), "retry:1000"),
        ("HTTP 429", "0109992429".into(), ok.clone(), "retry:1000"),
        ("HTTP 500", "0109992500".into(), ok.clone(), "retry:-"),
        ("HTTP 408", "0109992408".into(), ok.clone(), "retry:-"),
        (
            "HTTP 400",
            "0109992400".into(),
            ok.clone(),
            "rejected:-9997",
        ),
        (
            "HTTP 200, empty body",
            "0109992200".into(),
            ok.clone(),
            "retry:-",
        ),
        // The simulator's own checks.
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
        (
            "malformed number (-1031 with results)",
            "12ab".into(),
            ok.clone(),
            "invalid-recipient",
        ),
        // Refused by the adapter without a request.
        (
            "empty recipient",
            "  ".into(),
            ok.clone(),
            "invalid-recipient",
        ),
        (
            "content not {template, params}",
            number(3),
            json!({"body": "hi"}).to_string(),
            "rejected:INVALID_CONTENT",
        ),
    ];
    for (i, (row, to, content, expected)) in cases.iter().enumerate() {
        let outcomes = plugin
            .deliver(&[delivery(&format!("c/{i}"), to, content)])
            .await
            .unwrap();
        assert_eq!(summary(&outcomes[0]), *expected, "row {row}");
    }
    // The last two rows never reached NHN.
    assert_eq!(fixture.requests.count(), cases.len() - 2);

    // An outage and the rate limit answer 503 / 429 with Retry-After.
    fixture
        .sim
        .faults
        .set_outage(Some(vendorsim::OutageMode::Unavailable));
    let outage = plugin
        .deliver(&[delivery("o/1", &number(4), &ok)])
        .await
        .unwrap();
    assert_eq!(summary(&outage[0]), "retry:1000");
    fixture.sim.faults.set_outage(None);

    // A sender key NHN does not know.
    let wrong_sender = fixture
        .plugin(|o| set(o, "sender_key", "0000000000000000000000000000000000000000"))
        .await;
    let outcomes = wrong_sender
        .deliver(&[delivery("s/1", &number(5), &ok)])
        .await
        .unwrap();
    assert_eq!(summary(&outcomes[0]), "rejected:-2017");

    // A reply that is not NHN's (wrong endpoint path: a bare 404).
    let wrong_path = fixture
        .plugin(|o| set(o, "endpoint", &format!("{}/nowhere", fixture.sim.url())))
        .await;
    let outcomes = wrong_path
        .deliver(&[delivery("p/1", &number(6), &ok)])
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
        .deliver(&[delivery("t/1", &number(7), &ok)])
        .await
        .unwrap();
    assert_eq!(summary(&outcomes[0]), "retry:-");
}

#[tokio::test]
async fn alimtalk_random_error_rates_apply_per_recipient() {
    let fixture = AlimtalkFixture::start(|c| {
        c.error_rates = vec![(AlimtalkCode::VendorApiFailed, 1.0)];
    })
    .await;
    let plugin = fixture.plugin(|_| {}).await;
    let batch: Vec<Delivery> = (0..5)
        .map(|i| {
            delivery(
                &format!("e/{i}"),
                &number(i),
                &template_content(TEMPLATE, "Jung"),
            )
        })
        .collect();
    let outcomes = plugin.deliver(&batch).await.unwrap();
    assert_eq!(summaries(&outcomes), vec!["retry:-"; 5]);
    assert_eq!(fixture.sim.stats.snapshot().refused.get("-7000"), Some(&5));
}

#[tokio::test]
async fn alimtalk_wrong_credentials_are_refused() {
    let fixture = AlimtalkFixture::start(|_| {}).await;
    let content = template_content(TEMPLATE, "Kang");
    let batch = [
        delivery("a/0", &number(0), &content),
        delivery("a/1", &number(1), &content),
    ];

    let wrong_secret = fixture
        .plugin(|o| o.secrets = vec![("secret_key".into(), "not-the-secret".into())])
        .await;
    let outcomes = wrong_secret.deliver(&batch).await.unwrap();
    assert_eq!(summaries(&outcomes), ["rejected:-1001", "rejected:-1001"]);
    assert_eq!(fixture.sim.stats.snapshot().auth_failures, 1);

    let wrong_appkey = fixture.plugin(|o| set(o, "appkey", "other-appkey")).await;
    let outcomes = wrong_appkey.deliver(&batch).await.unwrap();
    assert_eq!(summaries(&outcomes), ["rejected:-1000", "rejected:-1000"]);

    // The secret under another name, as `secret_key_secret` says.
    let renamed = fixture
        .plugin(|o| {
            o.secrets = vec![("nhn_alimtalk".into(), SECRET.into())];
            set(o, "secret_key_secret", "nhn_alimtalk");
        })
        .await;
    let outcomes = renamed.deliver(&batch).await.unwrap();
    assert_eq!(summaries(&outcomes), ["delivered", "delivered"]);

    let stats = fixture.sim.stats.snapshot();
    assert_eq!(stats.auth_failures, 2);
    assert_eq!(stats.delivered, 2);
}

#[tokio::test]
async fn alimtalk_counts_a_resent_batch_as_duplicates() {
    let fixture = AlimtalkFixture::start(|_| {}).await;
    let plugin = fixture.plugin(|_| {}).await;
    let batch: Vec<Delivery> = (0..20)
        .map(|i| {
            delivery(
                &format!("d/{i}"),
                &number(i),
                &template_content(TEMPLATE, "Yoon"),
            )
        })
        .collect();
    for _ in 0..2 {
        let outcomes = plugin.deliver(&batch).await.unwrap();
        assert_eq!(summaries(&outcomes), vec!["delivered"; 20]);
    }
    // Other parameters make another message for the same number.
    let other = plugin
        .deliver(&[delivery(
            "d/x",
            &number(0),
            &template_content(TEMPLATE, "Han"),
        )])
        .await
        .unwrap();
    assert_eq!(summary(&other[0]), "delivered");
    let stats = fixture.sim.stats.snapshot();
    assert_eq!(stats.delivered, 21);
    assert_eq!(stats.duplicates, 20);
}

#[tokio::test]
async fn alimtalk_simulator_checks_the_request_shape() {
    let fixture = AlimtalkFixture::start(|_| {}).await;
    let url = format!(
        "{}/alimtalk/v2.3/appkeys/{APPKEY}/messages",
        fixture.sim.url()
    );
    let recipients: Vec<Value> = (0..1001)
        .map(|i| json!({"recipientNo": number(i), "templateParameter": {"name": "a", "orderNo": "1"}}))
        .collect();
    let too_many =
        json!({"senderKey": SENDER_KEY, "templateCode": TEMPLATE, "recipientList": recipients});
    let one = json!({"senderKey": SENDER_KEY, "templateCode": TEMPLATE,
        "recipientList": [{"recipientNo": number(1), "templateParameter": {"name": "a", "orderNo": "1"}}]});
    let no_recipient_no = json!({"senderKey": SENDER_KEY, "templateCode": TEMPLATE,
        "recipientList": [{"recipientNo": ""}]});
    let cases = [
        ("application/json", too_many.to_string(), -2004),
        ("application/json", no_recipient_no.to_string(), -2001),
        ("text/plain", one.to_string(), -9996),
        ("application/json", "{not json".to_string(), -9997),
        ("application/json;charset=UTF-8", one.to_string(), 0),
    ];
    for (content_type, body, expected) in cases {
        let reply = post(&url, content_type, body).await;
        assert_eq!(reply["header"]["resultCode"], json!(expected), "{reply}");
        assert_eq!(
            reply["header"]["isSuccessful"],
            json!(expected == 0),
            "{reply}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// SMS

struct SmsFixture {
    sim: RunningSim,
    requests: Arc<RequestLog>,
}

impl SmsFixture {
    async fn start(tune: impl FnOnce(&mut SmsConfig)) -> Self {
        let mut config = SmsConfig::new(APPKEY, SECRET, SEND_NO);
        tune(&mut config);
        let requests = config.requests.clone();
        let sim = start_sms(config).await.expect("sms simulator");
        Self { sim, requests }
    }

    async fn plugin(&self, tune: impl FnOnce(&mut LoadOptions)) -> LoadedPlugin {
        let mut options = LoadOptions {
            allowed_hosts: vec![self.sim.addr.to_string()],
            secrets: vec![("secret_key".into(), SECRET.into())],
            config: vec![
                ("appkey".into(), APPKEY.into()),
                ("send_no".into(), SEND_NO.into()),
                ("endpoint".into(), self.sim.url()),
            ],
            ..Default::default()
        };
        tune(&mut options);
        load(&runtime(), "sms-nhn", &plugin_path("sms-nhn"), options)
            .await
            .expect("sms-nhn loads")
    }
}

#[tokio::test]
async fn sms_sends_a_batch_of_50_in_one_request() {
    let fixture = SmsFixture::start(|_| {}).await;
    let plugin = fixture.plugin(|_| {}).await;
    let text = "[Switchboard] 주문하신 상품이 발송되었습니다.";
    let batch: Vec<Delivery> = (0..50)
        .map(|i| delivery(&format!("r1/{i}"), &number(i), &sms_content(text)))
        .collect();
    let outcomes = plugin.deliver(&batch).await.unwrap();
    assert_eq!(summaries(&outcomes), vec!["delivered"; 50]);
    let Outcome::Delivered(last) = &outcomes[49] else {
        unreachable!()
    };
    assert!(last.ends_with("/50"), "{last}");
    assert_eq!(
        fixture.requests.requests(),
        vec![LoggedRequest {
            group: text.into(),
            recipients: 50
        }]
    );
    let stats = fixture.sim.stats.snapshot();
    assert_eq!(stats.delivered, 50);
    assert_eq!(stats.duplicates, 0);
}

#[tokio::test]
async fn sms_groups_a_batch_by_message_text() {
    let fixture = SmsFixture::start(|_| {}).await;
    let plugin = fixture.plugin(|_| {}).await;
    let text_of = |i: usize| {
        if i.is_multiple_of(3) {
            "code 1234"
        } else {
            "code 5678"
        }
    };
    let batch: Vec<Delivery> = (0..9)
        .map(|i| delivery(&format!("r2/{i}"), &number(i), &sms_content(text_of(i))))
        .collect();
    let outcomes = plugin.deliver(&batch).await.unwrap();
    assert_eq!(summaries(&outcomes), vec!["delivered"; 9]);
    assert_eq!(
        sorted(fixture.requests.requests()),
        vec![
            LoggedRequest {
                group: "code 1234".into(),
                recipients: 3
            },
            LoggedRequest {
                group: "code 5678".into(),
                recipients: 6
            },
        ]
    );
    let seqs: Vec<&str> = outcomes
        .iter()
        .map(|o| match o {
            Outcome::Delivered(id) => id.rsplit('/').next().unwrap_or(""),
            _ => "",
        })
        .collect();
    assert_eq!(seqs, ["1", "1", "2", "2", "3", "4", "3", "5", "6"]);
}

#[tokio::test]
async fn sms_maps_a_mixed_batch_recipient_by_recipient() {
    let fixture = SmsFixture::start(|_| {}).await;
    let plugin = fixture.plugin(|_| {}).await;
    let content = sms_content("your code is 4821");
    let cases = [
        (number(1), "delivered"),
        ("01099902019".to_string(), "invalid-recipient"),
        (number(2), "delivered"),
        ("12ab".to_string(), "invalid-recipient"),
        ("01099909999".to_string(), "retry:-"),
        ("01099906001".to_string(), "rejected:-6001"),
        (number(3), "delivered"),
    ];
    let batch: Vec<Delivery> = cases
        .iter()
        .enumerate()
        .map(|(i, (to, _))| delivery(&format!("r3/{i}"), to, &content))
        .collect();
    let outcomes = plugin.deliver(&batch).await.unwrap();
    let expected: Vec<&str> = cases.iter().map(|(_, e)| *e).collect();
    assert_eq!(summaries(&outcomes), expected);
    assert_eq!(fixture.requests.count(), 1);
    let stats = fixture.sim.stats.snapshot();
    assert_eq!(stats.delivered, 3);
    assert_eq!(stats.refused.get("-2019"), Some(&2));
    assert_eq!(stats.refused.get("-9999"), Some(&1));
    assert_eq!(stats.refused.get("-6001"), Some(&1));
}

/// Every row of docs/vendors/sms-nhn.md that the default configuration can produce.
#[tokio::test]
async fn sms_codes_map_to_outcomes() {
    let fixture = SmsFixture::start(|_| {}).await;
    let plugin = fixture.plugin(|_| {}).await;
    let ok = sms_content("your code is 4821");
    let cases: Vec<(&str, String, String, &str)> = vec![
        // Per-recipient send results.
        (
            "recipient -2018",
            "01099902018".into(),
            ok.clone(),
            "invalid-recipient",
        ),
        (
            "recipient -2019",
            "01099902019".into(),
            ok.clone(),
            "invalid-recipient",
        ),
        (
            "recipient -6001",
            "01099906001".into(),
            ok.clone(),
            "rejected:-6001",
        ),
        (
            "recipient -9999",
            "01099909999".into(),
            ok.clone(),
            "retry:-",
        ),
        (
            "recipient -2021",
            "01099902021".into(),
            ok.clone(),
            "retry:-",
        ),
        // Failures of the whole request, in the header.
        (
            "header -1000",
            "01099911000".into(),
            ok.clone(),
            "rejected:-1000",
        ),
        (
            "header -2312",
            "01099912312".into(),
            ok.clone(),
            "rejected:-2312",
        ),
        (
            "header -2015",
            "01099912015".into(),
            ok.clone(),
            "rejected:-2015",
        ),
        (
            "header -2016",
            "01099912016".into(),
            ok.clone(),
            "rejected:-2016",
        ),
        (
            "header -2019",
            "01099912019".into(),
            ok.clone(),
            "invalid-recipient",
        ),
        ("header -9999", "01099919999".into(), ok.clone(), "retry:-"),
        ("header -2021", "01099912021".into(), ok.clone(), "retry:-"),
        // HTTP statuses.
        ("HTTP 503", "0109992503".into(), ok.clone(), "retry:1000"),
        ("HTTP 429", "0109992429".into(), ok.clone(), "retry:1000"),
        ("HTTP 500", "0109992500".into(), ok.clone(), "retry:-"),
        ("HTTP 408", "0109992408".into(), ok.clone(), "retry:-"),
        (
            "HTTP 400",
            "0109992400".into(),
            ok.clone(),
            "rejected:-9997",
        ),
        (
            "HTTP 200, empty body",
            "0109992200".into(),
            ok.clone(),
            "retry:-",
        ),
        // The simulator's own checks.
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
        (
            "malformed number",
            "12ab".into(),
            ok.clone(),
            "invalid-recipient",
        ),
        // Refused by the adapter without a request.
        (
            "empty recipient",
            "".into(),
            ok.clone(),
            "invalid-recipient",
        ),
        (
            "content not {body}",
            number(4),
            json!({"template": "T"}).to_string(),
            "rejected:INVALID_CONTENT",
        ),
    ];
    for (i, (row, to, content, expected)) in cases.iter().enumerate() {
        let outcomes = plugin
            .deliver(&[delivery(&format!("c/{i}"), to, content)])
            .await
            .unwrap();
        assert_eq!(summary(&outcomes[0]), *expected, "row {row}");
    }
    assert_eq!(fixture.requests.count(), cases.len() - 2);

    fixture
        .sim
        .faults
        .set_outage(Some(vendorsim::OutageMode::Unavailable));
    let outage = plugin
        .deliver(&[delivery("o/1", &number(5), &ok)])
        .await
        .unwrap();
    assert_eq!(summary(&outage[0]), "retry:1000");
    fixture.sim.faults.set_outage(None);

    // A sender number that is not registered.
    let unregistered = fixture.plugin(|o| set(o, "send_no", "0212345678")).await;
    let outcomes = unregistered
        .deliver(&[delivery("s/1", &number(6), &ok)])
        .await
        .unwrap();
    assert_eq!(summary(&outcomes[0]), "rejected:-2312");

    let wrong_path = fixture
        .plugin(|o| set(o, "endpoint", &format!("{}/nowhere", fixture.sim.url())))
        .await;
    let outcomes = wrong_path
        .deliver(&[delivery("p/1", &number(7), &ok)])
        .await
        .unwrap();
    assert_eq!(summary(&outcomes[0]), "rejected:HTTP_404");

    let unreachable = fixture
        .plugin(|o| {
            o.allowed_hosts.push("127.0.0.1:1".into());
            set(o, "endpoint", "http://127.0.0.1:1");
        })
        .await;
    let outcomes = unreachable
        .deliver(&[delivery("t/1", &number(8), &ok)])
        .await
        .unwrap();
    assert_eq!(summary(&outcomes[0]), "retry:-");
}

#[tokio::test]
async fn sms_random_error_rates_apply_per_recipient() {
    let fixture = SmsFixture::start(|c| {
        c.error_rates = vec![(SmsCode::QueueInsertFailed, 1.0)];
    })
    .await;
    let plugin = fixture.plugin(|_| {}).await;
    let batch: Vec<Delivery> = (0..5)
        .map(|i| delivery(&format!("e/{i}"), &number(i), &sms_content("hi")))
        .collect();
    let outcomes = plugin.deliver(&batch).await.unwrap();
    assert_eq!(summaries(&outcomes), vec!["retry:-"; 5]);
    assert_eq!(fixture.sim.stats.snapshot().refused.get("-2021"), Some(&5));
}

#[tokio::test]
async fn sms_wrong_credentials_are_refused() {
    let fixture = SmsFixture::start(|_| {}).await;
    let content = sms_content("hello");
    let batch = [
        delivery("a/0", &number(0), &content),
        delivery("a/1", &number(1), &content),
    ];

    let wrong_secret = fixture
        .plugin(|o| o.secrets = vec![("secret_key".into(), "not-the-secret".into())])
        .await;
    let outcomes = wrong_secret.deliver(&batch).await.unwrap();
    assert_eq!(summaries(&outcomes), ["rejected:-1000", "rejected:-1000"]);
    assert_eq!(fixture.sim.stats.snapshot().auth_failures, 1);

    let wrong_appkey = fixture.plugin(|o| set(o, "appkey", "other-appkey")).await;
    let outcomes = wrong_appkey.deliver(&batch).await.unwrap();
    assert_eq!(summaries(&outcomes), ["rejected:-1000", "rejected:-1000"]);

    let renamed = fixture
        .plugin(|o| {
            o.secrets = vec![("nhn_sms".into(), SECRET.into())];
            set(o, "secret_key_secret", "nhn_sms");
        })
        .await;
    let outcomes = renamed.deliver(&batch).await.unwrap();
    assert_eq!(summaries(&outcomes), ["delivered", "delivered"]);

    let stats = fixture.sim.stats.snapshot();
    assert_eq!(stats.auth_failures, 2);
    assert_eq!(stats.delivered, 2);
}

#[tokio::test]
async fn sms_counts_a_resent_batch_as_duplicates() {
    let fixture = SmsFixture::start(|_| {}).await;
    let plugin = fixture.plugin(|_| {}).await;
    let batch: Vec<Delivery> = (0..20)
        .map(|i| delivery(&format!("d/{i}"), &number(i), &sms_content("code 9731")))
        .collect();
    for _ in 0..2 {
        let outcomes = plugin.deliver(&batch).await.unwrap();
        assert_eq!(summaries(&outcomes), vec!["delivered"; 20]);
    }
    let other = plugin
        .deliver(&[delivery("d/x", &number(0), &sms_content("code 1111"))])
        .await
        .unwrap();
    assert_eq!(summary(&other[0]), "delivered");
    let stats = fixture.sim.stats.snapshot();
    assert_eq!(stats.delivered, 21);
    assert_eq!(stats.duplicates, 20);
}

#[tokio::test]
async fn sms_simulator_checks_the_request_shape() {
    let fixture = SmsFixture::start(|_| {}).await;
    let url = format!("{}/sms/v3.0/appKeys/{APPKEY}/sender/sms", fixture.sim.url());
    let recipients: Vec<Value> = (0..1001)
        .map(|i| json!({"recipientNo": number(i)}))
        .collect();
    let too_many = json!({"body": "hi", "sendNo": SEND_NO, "recipientList": recipients});
    let none = json!({"body": "hi", "sendNo": SEND_NO, "recipientList": []});
    let one =
        json!({"body": "hi", "sendNo": SEND_NO, "recipientList": [{"recipientNo": number(1)}]});
    let international = json!({"body": "hi", "sendNo": SEND_NO,
        "recipientList": [{"internationalRecipientNo": "821010002000"}]});
    let cases = [
        ("application/json", too_many.to_string(), -2016),
        ("application/json", none.to_string(), -2001),
        ("text/plain", one.to_string(), -9996),
        ("application/json", "{not json".to_string(), -9997),
        ("application/json;charset=UTF-8", one.to_string(), 0),
        ("application/json", international.to_string(), 0),
    ];
    for (content_type, body, expected) in cases {
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
