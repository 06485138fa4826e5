//! The DLQ and the retry topic end to end: what lands in the DLQ, with which headers, and a
//! replay that delivers once and never twice.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use switchboard::demo::{demo_envelope, produce};
use switchboard::kafka::EmbeddedKafka;
use switchboard::settle::replay::{ReplayFilter, replay, replay_with_progress};
use switchboard::settle::{Outbox, ReasonClass};
use switchboard_integration_tests::{FcmFixture, read_topic, switchboard_bin, wait_until};

const WAIT: Duration = Duration::from_secs(60);

fn envelope_to(i: u64, to: &str) -> String {
    let mut envelope: serde_json::Value = serde_json::from_str(&demo_envelope(i)).unwrap();
    envelope["recipients"][0]["to"] = to.into();
    envelope.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_undecodable_and_expired_go_to_the_dlq_and_replay_delivers_once() {
    let topic = "dlq-requests";
    let cluster = EmbeddedKafka::start(1, &[topic.to_string()], 2).unwrap();
    let brokers = cluster.bootstrap_servers().to_string();
    let fixture = FcmFixture::start(|_| {}).await;
    let mut config = fixture.host_config(&brokers, topic, "g-dlq");
    // Any retry is past its deadline at once: it goes to the DLQ as expired.
    config.dispatch.give_up_after_s = 0;
    let host = switchboard::start(config.clone()).await.unwrap();

    produce(&brokers, topic, 4, |i| {
        let value = match i {
            0 => demo_envelope(0),
            1 => envelope_to(1, "sim-invalid_argument-1"),
            2 => "\u{0}garbage".to_string(),
            _ => envelope_to(3, "sim-flaky1-3"),
        };
        (format!("k{i}"), value)
    })
    .await
    .unwrap();
    let counters = host.counters.clone();
    assert!(
        wait_until(WAIT, || {
            let c = counters.snapshot();
            c.dead_lettered >= 3 && c.deliveries_delivered >= 1
        })
        .await,
        "{:?}",
        counters.snapshot()
    );

    let dlq = read_topic(&brokers, &config.kafka.dlq_topic);
    let by_class: HashMap<String, &HashMap<String, String>> = dlq
        .iter()
        .map(|(h, _)| (h["sb-reason-class"].clone(), h))
        .collect();
    assert_eq!(dlq.len(), 3, "{dlq:?}");
    let rejected = by_class["rejected"];
    assert_eq!(rejected["sb-vendor-code"], "INVALID_ARGUMENT");
    assert_eq!(rejected["sb-plugin"], "fcm");
    assert_eq!(rejected["sb-plugin-version"], "0.1.0");
    assert_eq!(rejected["sb-origin-topic"], topic);
    assert_eq!(rejected["sb-attempts"], "1");
    for name in [
        "sb-origin-partition",
        "sb-origin-offset",
        "sb-first-seen-ms",
        "sb-dead-at-ms",
    ] {
        assert!(rejected.contains_key(name), "{name} missing: {rejected:?}");
    }
    assert!(by_class["undecodable"]["sb-reason"].contains("not a valid envelope"));
    assert_eq!(by_class["expired"]["sb-attempts"], "1");

    // An operator reads the same from outside the host: `dlq list` and `dlq show`.
    let work = tempfile::tempdir().unwrap();
    let config_file = work.path().join("switchboard.toml");
    std::fs::write(
        &config_file,
        format!(
            "[kafka]\nbrokers = \"{brokers}\"\ntopics = [\"{topic}\"]\ndlq_topic = \"{}\"\n",
            config.kafka.dlq_topic
        ),
    )
    .unwrap();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(switchboard_bin())
            .args(args)
            .arg("--config")
            .arg(&config_file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let table = cli(&["dlq", "list"]);
    assert!(
        table.contains("3 of 3 matching records shown (3 read)"),
        "{table}"
    );
    for class in ["rejected", "undecodable", "expired"] {
        assert!(table.contains(class), "{table}");
    }
    let listing: serde_json::Value =
        serde_json::from_str(&cli(&["dlq", "list", "--reason", "rejected", "--json"])).unwrap();
    assert_eq!(listing["matched"], 1, "{listing}");
    let rejected_key = listing["records"][0]["key"].as_str().unwrap().to_string();
    assert_eq!(listing["records"][0]["plugin"], "fcm");
    let shown = cli(&["dlq", "show", &rejected_key]);
    assert!(
        shown.contains("sb-vendor-code: INVALID_ARGUMENT"),
        "{shown}"
    );
    assert!(
        shown.contains("sim-invalid_argument-1"),
        "the value is shown: {shown}"
    );

    // Replay the expired delivery: its second try succeeds (the token fails only once).
    let outbox = Outbox::connect(
        &brokers,
        &config.kafka.retry_topic,
        &config.kafka.dlq_topic,
        &Default::default(),
    )
    .unwrap();
    let filter = ReplayFilter {
        reason: Some(ReasonClass::Expired),
        since_ms: 0,
        dry_run: false,
    };
    let summary = replay(
        &brokers,
        &config.kafka.dlq_topic,
        &config.kafka_properties().unwrap(),
        &outbox,
        &filter,
    )
    .await
    .unwrap();
    assert_eq!(summary.scanned, 3);
    assert_eq!(summary.to_retry_topic, 1);
    let stats = fixture.sim.stats.clone();
    assert!(
        wait_until(WAIT, || stats.snapshot().delivered >= 2).await,
        "{:?}",
        stats.snapshot()
    );

    // Replaying it again sends nothing: the dedup store knows it as delivered.
    replay(
        &brokers,
        &config.kafka.dlq_topic,
        &config.kafka_properties().unwrap(),
        &outbox,
        &filter,
    )
    .await
    .unwrap();
    assert!(
        wait_until(WAIT, || counters.snapshot().deliveries_skipped_done >= 1).await,
        "{:?}",
        counters.snapshot()
    );
    host.stop().await.unwrap();
    assert_eq!(stats.snapshot().delivered, 2);
    assert_eq!(stats.snapshot().duplicates, 0);

    // Undecodable records are counted, never replayed.
    let all = ReplayFilter {
        reason: None,
        since_ms: 0,
        dry_run: true,
    };
    let dry = replay(
        &brokers,
        &config.kafka.dlq_topic,
        &config.kafka_properties().unwrap(),
        &outbox,
        &all,
    )
    .await
    .unwrap();
    assert_eq!(dry.not_replayable, 1);

    // Progress, as `dlq replay` prints it: how many records are read of how many, and what the
    // replay came to so far. Reported on every record here; every two seconds on the command
    // line.
    let mut reports = Vec::new();
    let watched = replay_with_progress(
        &brokers,
        &config.kafka.dlq_topic,
        &config.kafka_properties().unwrap(),
        &outbox,
        &all,
        Duration::ZERO,
        &mut |read, total, so_far| reports.push((read, total, so_far.scanned)),
    )
    .await
    .unwrap();
    assert_eq!(watched.scanned, dry.scanned);
    let total = dry.scanned;
    assert_eq!(reports.len() as u64, total, "{reports:?}");
    for (i, (read, of, scanned)) in reports.iter().enumerate() {
        assert_eq!(
            (*read, *of, *scanned),
            (i as u64 + 1, total, i as u64),
            "{reports:?}"
        );
    }
}
