//! Property-based fuzzing of what outsiders write: Kafka record values (the envelope decoder)
//! and config files (the loader). Neither may panic on any input, and every refusal must say
//! why. A bounded run is part of `make test`; `PROPTEST_CASES=1000000 cargo test --release -p
//! switchboard --test fuzz_inputs` runs a long one (see docs/SECURITY.md).

use std::path::Path;

use proptest::prelude::*;
use switchboard::Config;
use switchboard::ingest::Envelope;

fn config() -> ProptestConfig {
    // Bounded for `make test`; PROPTEST_CASES overrides it for long runs.
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2000),
        ..ProptestConfig::default()
    }
}

/// JSON-shaped values, nested, with the envelope's field names mixed in so the decoder gets past
/// the first checks often.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        "[ -~]{0,12}".prop_map(serde_json::Value::from),
        prop_oneof![
            Just("realtime"),
            Just("ads"),
            Just("sms"),
            Just("2026-11-22T10:00:00Z")
        ]
        .prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("id".to_string()),
                    Just("channel".to_string()),
                    Just("priority".to_string()),
                    Just("recipients".to_string()),
                    Just("to".to_string()),
                    Just("content".to_string()),
                    Just("expires_at".to_string()),
                    "[a-z]{1,6}",
                ],
                inner,
                0..7
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_bytes_decode_or_are_refused_with_a_reason(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        if let Err(error) = Envelope::decode(Some(&bytes), 1 << 20) {
            prop_assert!(!error.to_string().is_empty());
        }
    }

    #[test]
    fn any_json_decodes_or_is_refused_with_a_reason(value in json_value()) {
        let bytes = value.to_string().into_bytes();
        match Envelope::decode(Some(&bytes), 1 << 20) {
            Ok(envelope) => {
                prop_assert!(!envelope.id.trim().is_empty());
                prop_assert!((1..=1000).contains(&envelope.recipients.len()));
                prop_assert_eq!(envelope.deliveries().count(), envelope.recipients.len());
            }
            Err(error) => prop_assert!(!error.to_string().is_empty()),
        }
    }

    #[test]
    fn any_text_parses_or_is_refused_naming_the_file(text in "\\PC{0,400}") {
        match Config::parse(&text, Path::new("fuzz.toml")) {
            Ok(config) => {
                // Whatever parses also validates without panicking.
                let _ = config.validate();
            }
            Err(error) => prop_assert!(error.to_string().contains("fuzz.toml")),
        }
    }

    #[test]
    fn mutated_configs_are_refused_with_the_field_or_line(
        key in "[a-z_]{1,12}",
        value in prop_oneof!["[0-9]{1,6}", "\"[ -~]{0,10}\"", Just("true".to_string())],
        section in prop_oneof![Just("kafka"), Just("dispatch"), Just("runtime"), Just("dedup"), Just("plugins.fcm")],
    ) {
        let text = format!(
            "[plugins.fcm]\npath = \"fcm.wasm\"\n\n[channels.push-android]\nfcm = 100\n\n[{section}]\n{key} = {value}\n"
        );
        match Config::parse(&text, Path::new("fuzz.toml")) {
            Ok(config) => { let _ = config.validate(); }
            Err(error) => {
                let message = error.to_string();
                prop_assert!(message.contains("fuzz.toml"), "{}", message);
                prop_assert!(message.contains("line"), "{}", message);
            }
        }
    }
}

#[test]
fn deeply_nested_json_is_refused_not_a_stack_overflow() {
    let deep = "[".repeat(100_000) + &"]".repeat(100_000);
    let refused = Envelope::decode(Some(deep.as_bytes()), 1 << 20);
    assert!(refused.is_err());
}

#[test]
fn a_million_and_one_recipients_are_refused() {
    let recipients = vec![r#"{"to":"1"}"#; 1_000_001].join(",");
    let text =
        format!(r#"{{"id":"a","channel":"sms","recipients":[{recipients}],"content":{{}}}}"#);
    let refused = Envelope::decode(Some(text.as_bytes()), 64 << 20);
    assert!(
        matches!(
            refused,
            Err(switchboard::ingest::EnvelopeError::TooManyRecipients(
                1_000_001
            ))
        ),
        "{refused:?}"
    );
}
