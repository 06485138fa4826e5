//! Two hosts in one consumer group, sharing the Redis dedup store (`make services` starts Redis
//! and sets SWITCHBOARD_TEST_REDIS): one joins while the other delivers, then the first leaves
//! while the second delivers. Every request arrives once.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use switchboard::config::DedupBackend;
use switchboard::demo::demo_envelope;
use switchboard::kafka::EmbeddedKafka;
use switchboard::telemetry::CountersSnapshot;
use switchboard_integration_tests::{FcmFixture, cluster_topics, wait_until};

const TOPIC: &str = "two-hosts";
const REQUESTS: u64 = 3000;
/// Requests produced per second: production lasts 30 s, so both rebalances (each about the
/// session timeout long on the mock cluster) happen while requests keep arriving.
const RATE: u64 = 100;
const WAIT: Duration = Duration::from_secs(90);

fn redis_url() -> String {
    std::env::var("SWITCHBOARD_TEST_REDIS").expect(
        "SWITCHBOARD_TEST_REDIS is not set: run the tests with `make test`, which starts Redis",
    )
}

/// Produces the demo requests at `RATE` a second, in slices four times a second, through one
/// idempotent producer.
async fn produce_paced(brokers: String) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut from = 0;
    while from < REQUESTS {
        tick.tick().await;
        let to = (from + RATE / 4).min(REQUESTS);
        // Queue the whole slice, then wait for its acknowledgements together.
        let mut acks = Vec::new();
        for n in from..to {
            let (key, value) = (format!("device-{n}"), demo_envelope(n));
            let record = FutureRecord::to(TOPIC).key(&key).payload(&value);
            acks.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
        }
        for ack in acks {
            ack.await.unwrap().map_err(|(e, _)| e).unwrap();
        }
        from = to;
    }
}

fn dead_lettered(c: &CountersSnapshot) -> u64 {
    c.deliveries_rejected
        + c.deliveries_invalid_recipient
        + c.deliveries_failed
        + c.records_undecodable
        + c.records_unknown_channel
        + c.records_expired
}

async fn remove_keys(prefix: &str) {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let found: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    if !found.is_empty() {
        let () = redis::cmd("DEL")
            .arg(&found)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_host_joining_and_one_leaving_under_load_lose_and_repeat_nothing() {
    let cluster = EmbeddedKafka::start(1, &cluster_topics(&[TOPIC]), 6).expect("embedded kafka");
    let brokers = cluster.bootstrap_servers().to_string();
    // Vendor latency keeps deliveries in flight when partitions are revoked.
    let fixture = FcmFixture::start(|c| {
        c.faults.latency = vendorsim::Latency {
            mean: Duration::from_millis(20),
            jitter: Duration::from_millis(10),
        };
    })
    .await;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let prefix = format!("sbtest:two-hosts:{}:{nanos}", std::process::id());
    let mut config = fixture.host_config(&brokers, TOPIC, "g-two-hosts");
    config.dedup.backend = DedupBackend::Redis;
    config.dedup.redis_url = redis_url().into();
    config.dedup.redis_prefix = prefix.clone();
    // The mock cluster holds each rebalance open for the session timeout less a second.
    config.kafka.session_timeout_ms = 6000;
    config.kafka.rebalance_drain_ms = 3000;

    let stats = fixture.sim.stats.clone();
    let host_a = switchboard::start(config.clone()).await.unwrap();
    let a_counters = host_a.counters.clone();
    let producing = tokio::spawn(produce_paced(brokers.clone()));
    let deadline = Instant::now() + WAIT;
    let delivered = || stats.snapshot().delivered;

    while delivered() < REQUESTS / 3 {
        assert!(Instant::now() < deadline, "{:?}", stats.snapshot());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let host_b = switchboard::start(config.clone()).await.unwrap();
    let b_counters = host_b.counters.clone();

    // A leaves once B has partitions of its own and two thirds are delivered.
    while delivered() < REQUESTS * 2 / 3 || b_counters.snapshot().records_consumed == 0 {
        assert!(Instant::now() < deadline, "{:?}", stats.snapshot());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delivered_when_a_left = delivered();
    let b_consumed_when_a_left = b_counters.snapshot().records_consumed;
    host_a.stop().await.unwrap();

    // Every request ends delivered or dead-lettered; what is neither by the deadline is lost.
    let settled = || delivered() + dead_lettered(&b_counters.snapshot()) >= REQUESTS;
    wait_until(deadline.saturating_duration_since(Instant::now()), settled).await;
    producing.await.unwrap();
    host_b.stop().await.unwrap();
    remove_keys(&prefix).await;

    let seen = stats.snapshot();
    let (a, b) = (a_counters.snapshot(), b_counters.snapshot());
    let dlq = dead_lettered(&a) + dead_lettered(&b);
    let lost = REQUESTS.saturating_sub(seen.delivered + dlq);
    assert_eq!(lost, 0, "{seen:?} a={a:?} b={b:?}");
    assert_eq!(dlq, 0, "a={a:?} b={b:?}");
    assert_eq!(seen.duplicates, 0, "{seen:?} a={a:?} b={b:?}");
    // Both rebalances happened with requests still to deliver: A left before the end, and B
    // took over A's partitions after it.
    assert!(
        delivered_when_a_left < REQUESTS,
        "host A left only after everything was delivered"
    );
    assert!(
        b.records_consumed > b_consumed_when_a_left,
        "host B consumed nothing after host A left: a={a:?} b={b:?}"
    );
}
