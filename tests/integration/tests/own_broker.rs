//! Tests that run a broker of their own (sqlite storage in a temporary directory), so that what
//! they do to it touches no other test:
//! - a broker killed with SIGKILL mid-stream and started again on the same storage: the host
//!   waits it out and delivers every request, with duplicates only from work in flight;
//! - a broker that speaks TLS only: the host reaches it with `security.protocol = "SSL"` and
//!   zstd compression, as a secured production cluster needs.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, FutureProducer, FutureRecord, Producer as _};
use switchboard::demo::{demo_envelope, produce};
use switchboard_integration_tests::{FcmFixture, wait_until};

const WAIT: Duration = Duration::from_secs(180);

/// A broker process of this test's own.
struct Broker {
    child: std::process::Child,
    address: String,
}

impl Broker {
    fn start(dir: &Path, port: u16) -> Self {
        Self::start_with(dir, port, &[])
    }

    /// As [`Broker::start`], with more arguments for the broker.
    fn start_with(dir: &Path, port: u16, more: &[&str]) -> Self {
        let bin = PathBuf::from(std::env::var("SWITCHBOARD_TEST_BROKER_BIN").expect(
            "SWITCHBOARD_TEST_BROKER_BIN is not set: run the tests with `make test`, which builds the broker",
        ));
        let address = format!("127.0.0.1:{port}");
        let url = format!("tcp://{address}");
        let child = std::process::Command::new(bin)
            .current_dir(dir)
            .args(["broker", "--storage-engine", "sqlite://broker.db"])
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(more)
            .stdout(std::fs::File::create(dir.join("broker.out")).unwrap())
            .stderr(std::fs::File::create(dir.join("broker.log")).unwrap())
            .spawn()
            .unwrap();
        // Owned at once, so that a broker that never listens is killed as the test fails.
        let broker = Self { child, address };
        for _ in 0..100 {
            if std::net::TcpStream::connect(&broker.address).is_ok() {
                return broker;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let address = &broker.address;
        panic!(
            "the broker did not listen on {address}: {}",
            std::fs::read_to_string(dir.join("broker.log")).unwrap_or_default()
        );
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_mid_stream_and_restarted_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let broker = Broker::start(dir.path(), port);
    let brokers = broker.address.clone();
    let topic = "requests";
    switchboard::kafka::ensure_topics(&brokers, &[topic], 2, &Default::default())
        .await
        .unwrap();
    const REQUESTS: u64 = 2000;
    produce(&brokers, topic, REQUESTS, |i| {
        (format!("device-{i}"), demo_envelope(i))
    })
    .await
    .unwrap();

    let fixture = FcmFixture::start(|sim| {
        sim.faults.latency = vendorsim::Latency::fixed(Duration::from_millis(20));
    })
    .await;
    let work = tempfile::tempdir().unwrap();
    let mut config = fixture.host_config(&brokers, topic, "g-restart");
    config.dedup.data_dir = work.path().join("dedup");
    let host = switchboard::start(config).await.unwrap();
    let stats = fixture.sim.stats.clone();
    assert!(
        wait_until(WAIT, || stats.snapshot().delivered >= REQUESTS / 5).await,
        "{:?}",
        stats.snapshot()
    );

    broker.kill();
    let at_kill = stats.snapshot().delivered;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _broker = Broker::start(dir.path(), port);

    let all = wait_until(WAIT, || stats.snapshot().delivered >= REQUESTS).await;
    let seen = stats.snapshot();
    host.stop().await.unwrap();
    assert!(
        all,
        "delivered {} of {REQUESTS} after the broker came back (killed at {at_kill}): {seen:?}",
        seen.delivered
    );
    assert!(at_kill < REQUESTS, "the kill came after the end");
    // Only deliveries in flight at the kill may go out twice: the embedded dedup store knows
    // the ones marked done.
    assert!(seen.duplicates <= 200, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_reaches_a_tls_only_broker_with_zstd_compression() {
    let dir = tempfile::tempdir().unwrap();
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();
    let port = free_port();
    let _broker = Broker::start_with(
        dir.path(),
        port,
        &[
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
    );
    let brokers = format!("127.0.0.1:{port}");
    let secured: std::collections::BTreeMap<String, String> = [
        ("security.protocol", "SSL"),
        ("ssl.ca.location", cert.to_str().unwrap()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let topic = "secured";
    switchboard::kafka::ensure_topics(&brokers, &[topic], 2, &secured)
        .await
        .unwrap();

    let mut producer = ClientConfig::new();
    producer
        .set("bootstrap.servers", &brokers)
        .set("compression.type", "zstd");
    for (k, v) in &secured {
        producer.set(k, v);
    }
    let producer: FutureProducer = producer.create().unwrap();
    const REQUESTS: u64 = 100;
    for i in 0..REQUESTS {
        let value = demo_envelope(i);
        let key = format!("device-{i}");
        producer
            .send(
                FutureRecord::to(topic).key(&key).payload(&value),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    let fixture = FcmFixture::start(|_| {}).await;
    let work = tempfile::tempdir().unwrap();
    let mut config = fixture.host_config(&brokers, topic, "g-tls");
    config.dedup.data_dir = work.path().join("dedup");
    config.kafka.properties = secured.into_iter().map(|(k, v)| (k, v.into())).collect();
    config
        .kafka
        .properties
        .insert("compression.type".into(), "zstd".into());
    let host = switchboard::start(config).await.unwrap();
    let stats = fixture.sim.stats.clone();
    let all = wait_until(WAIT, || stats.snapshot().delivered >= REQUESTS).await;
    host.stop().await.unwrap();
    assert!(all, "{:?}", stats.snapshot());
    assert_eq!(stats.snapshot().duplicates, 0);
}

/// Where no broker of the kind is at hand (SASL needs users the test broker does not keep):
/// a SASL_SSL client with SCRAM builds, and fails only when it reaches for the network. Built
/// without TLS, librdkafka refuses the configuration itself.
#[test]
fn a_sasl_ssl_client_builds_and_fails_only_on_the_network() {
    for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", format!("127.0.0.1:{}", free_port()))
            .set("security.protocol", "SASL_SSL")
            .set("sasl.mechanism", mechanism)
            .set("sasl.username", "switchboard")
            .set("sasl.password", "not-a-real-password")
            .set("compression.type", "lz4")
            .create()
            .unwrap_or_else(|e| panic!("{mechanism}: {e}"));
        let metadata = producer
            .client()
            .fetch_metadata(None, Duration::from_millis(500));
        assert!(metadata.is_err(), "{mechanism}: nothing listens there");
    }
    let oauth: Result<BaseProducer, _> = ClientConfig::new()
        .set("bootstrap.servers", "127.0.0.1:9")
        .set("security.protocol", "SASL_SSL")
        .set("sasl.mechanism", "OAUTHBEARER")
        .set("compression.type", "snappy")
        .create();
    assert!(oauth.is_ok(), "{:?}", oauth.err());
}
