//! The FCM adapter's contract against the FCM simulator: the OAuth token fetched once and reused
//! across calls, refreshed when FCM stops accepting it, and each FCM error mapped to its outcome.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use switchboard::contract::Outcome;
use switchboard_integration_tests::{FcmFixture, delivery, load, plugin_path, runtime};
use vendorsim::fcm::FcmError;

#[tokio::test]
async fn fcm_fetches_its_token_once_and_reuses_it_across_calls() {
    let fixture = FcmFixture::start(|_| {}).await;
    let rt = runtime();
    let plugin = load(&rt, "fcm", &plugin_path("fcm"), fixture.load_options())
        .await
        .unwrap();
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
            outcomes.iter().all(|o| matches!(o, Outcome::Delivered(_))),
            "{outcomes:?}"
        );
    }
    let stats = fixture.sim.stats.snapshot();
    assert_eq!(stats.delivered, 100);
    assert_eq!(stats.token_requests, 1, "one token for 20 calls");
    assert_eq!(stats.auth_failures, 0);
}

#[tokio::test]
async fn fcm_errors_map_to_outcomes() {
    let fixture = FcmFixture::start(|_| {}).await;
    let rt = runtime();
    let plugin = load(&rt, "fcm", &plugin_path("fcm"), fixture.load_options())
        .await
        .unwrap();
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
    let batch: Vec<_> = cases
        .iter()
        .map(|(e, _)| {
            let token = format!("sim-{}-device", e.code().to_ascii_lowercase());
            delivery(e.code(), &token, content)
        })
        .collect();
    let outcomes = plugin.deliver(&batch).await.unwrap();
    for ((error, expected), outcome) in cases.iter().zip(&outcomes) {
        let got = match outcome {
            Outcome::Rejected(r) => format!("rejected:{}", r.code),
            Outcome::InvalidRecipient(_) => "invalid-recipient".to_string(),
            Outcome::Retry(r) => format!(
                "retry:{}",
                r.after_ms.map_or("-".into(), |ms| ms.to_string())
            ),
            Outcome::Delivered(_) => "delivered".to_string(),
        };
        assert_eq!(&got, expected, "FCM {error:?}");
    }
    // Content that is not push JSON is refused without a request.
    let bad = plugin
        .deliver(&[delivery("bad", "device-x", r#"{"title": 5}"#)])
        .await
        .unwrap();
    assert!(
        matches!(&bad[0], Outcome::Rejected(r) if r.code == "INVALID_CONTENT"),
        "{bad:?}"
    );
}

#[tokio::test]
async fn fcm_refreshes_a_token_the_vendor_stopped_accepting() {
    let fixture = FcmFixture::start(|_| {}).await;
    let rt = runtime();
    let plugin = load(&rt, "fcm", &plugin_path("fcm"), fixture.load_options())
        .await
        .unwrap();
    let first = plugin
        .deliver(&[delivery("a", "device-a", "{}")])
        .await
        .unwrap();
    assert!(matches!(&first[0], Outcome::Delivered(_)), "{first:?}");

    let revoke = format!("{}/_sim/revoke-tokens", fixture.sim.url());
    reqwest_post(&revoke).await;
    // The cached token is refused: the delivery is retried and the cached token dropped...
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

async fn reqwest_post(url: &str) {
    let client = switchboard::host::http_client(&[]).expect("http client");
    let status = client
        .post(url)
        .send()
        .await
        .expect("revoke request")
        .status();
    assert!(status.is_success(), "{status}");
}
