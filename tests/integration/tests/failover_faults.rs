//! Where a retry goes after a fault, end to end through the real host, the mock Kafka cluster
//! and real components: a request that never reached its vendor (the connection could not be
//! made) fails over to another vendor of the channel; a call that trapped after its vendor
//! answered stays on that vendor, since the vendor may have delivered.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard::config::{PluginConfig, SecretSource};
use switchboard::demo::{DemoVendors, produce};
use switchboard::kafka::EmbeddedKafka;
use switchboard_integration_tests::{host_config_in, misbehave_plugin, plugin_dir, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(90);

/// A vendor address whose connections are neither made nor refused: the listener's accept
/// queue is full, so the kernel drops every further SYN and a client's connect times out, as
/// behind a black-holed route. Nothing sent to it can ever reach a vendor.
struct BlackHole {
    addr: SocketAddr,
    _listener: tokio::net::TcpListener,
    /// The one connection that fills the accept queue.
    _filler: std::net::TcpStream,
}

impl BlackHole {
    fn start() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        // A backlog of 0 queues one connection; the next SYNs are dropped.
        let listener = socket.listen(0).unwrap();
        let addr = listener.local_addr().unwrap();
        let filler = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).unwrap();
        Self {
            addr,
            _listener: listener,
            _filler: filler,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_timeout_fails_over_to_the_healthy_vendor() {
    let topic = "connect-timeout";
    let cluster = EmbeddedKafka::start(1, &[topic.to_string()], 1).unwrap();
    let brokers = cluster.bootstrap_servers().to_string();
    let vendors = DemoVendors::start(Duration::from_millis(1)).await.unwrap();
    let black_hole = BlackHole::start();
    let mut config = vendors.host_config(&plugin_dir()).unwrap();
    config.kafka.brokers = Some(brokers.clone());
    config.kafka.topics = vec![topic.to_string()];
    config.kafka.group_id = "g-connect-timeout".into();
    config.dispatch.retry_base_ms = 50;
    config.dispatch.retry_max_ms = 200;
    config.dispatch.retry_max_attempts = 3;
    // sms-twilio's address is the black hole; the host's client gives up connecting after its
    // connect timeout (5 s), well inside the plugin's 10 s deadline.
    let twilio = config.plugins.get_mut("sms-twilio").unwrap();
    twilio.allowed_hosts = vec![black_hole.addr.to_string()];
    twilio
        .config
        .insert("endpoint".into(), format!("http://{}", black_hole.addr));
    // Every first try goes to sms-twilio (at 100:1, smooth round-robin gives the heavier vendor
    // dozens of picks before the other gets one), so each delivery meets the black hole once.
    config.channels.insert(
        "sms".into(),
        BTreeMap::from([("sms-twilio".into(), 100), ("sms-nhn".into(), 1)]),
    );
    let host = switchboard::start(config).await.unwrap();

    const RECORDS: u64 = 3;
    produce(&brokers, topic, RECORDS, |i| {
        let to = format!("+82107{i:07}");
        let envelope = serde_json::json!({
            "id": format!("connect-timeout-{i}"),
            "channel": "sms",
            "priority": "batch",
            "recipients": [{"to": to}],
            "content": {"body": format!("Order {i} is on its way")},
        });
        (to, envelope.to_string())
    })
    .await
    .unwrap();
    let counters = host.counters.clone();
    let nhn = vendors.sms_nhn.stats.clone();
    // Stop at the first dead letter: a retry pinned to the dead vendor ends there.
    wait_until(WAIT, || {
        nhn.snapshot().delivered >= RECORDS || counters.snapshot().dead_lettered > 0
    })
    .await;
    let counters = counters.snapshot();
    host.stop().await.unwrap();

    assert_eq!(
        counters.dead_lettered, 0,
        "nothing reached sms-twilio, so its retries were free to fail over: {counters:?}"
    );
    assert_eq!(nhn.snapshot().delivered, RECORDS, "{counters:?}");
    assert_eq!(counters.deliveries_failed_over, RECORDS, "{counters:?}");
    assert_eq!(vendors.sms_twilio.stats.snapshot().delivered, 0);
}

/// A vendor endpoint that answers every request 200 at once and keeps the `x-token` header of
/// each: the secret of the plugin that sent it, so it tells which vendor a request came from.
struct TokenRecorder {
    addr: SocketAddr,
    tokens: Arc<Mutex<Vec<String>>>,
}

impl TokenRecorder {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tokens = Arc::new(Mutex::new(Vec::new()));
        let seen = tokens.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    // One request per connection: a GET without a body, so the head is all.
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let token = head
                        .lines()
                        .find_map(|l| {
                            let (name, value) = l.split_once(':')?;
                            name.eq_ignore_ascii_case("x-token")
                                .then(|| value.trim().to_string())
                        })
                        .unwrap_or_default();
                    seen.lock().unwrap().push(token);
                    let _ = stream
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                });
            }
        });
        Self { addr, tokens }
    }

    fn tokens(&self) -> Vec<String> {
        self.tokens.lock().unwrap().clone()
    }
}

fn misbehave(vendor: &TokenRecorder, token: &str) -> PluginConfig {
    PluginConfig {
        allowed_hosts: vec![vendor.addr.to_string()],
        secrets: [("token".to_string(), SecretSource::Value(token.into()))].into(),
        ..misbehave_plugin()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_after_the_vendor_answered_keeps_the_retry_on_that_vendor() {
    let work = tempfile::tempdir().unwrap();
    let vendor = TokenRecorder::start().await;
    let mut config = host_config_in(work.path());
    config.dispatch.retry_base_ms = 50;
    config.dispatch.retry_max_ms = 200;
    config.dispatch.retry_max_attempts = 3;
    // Long enough that both deliveries of the record share one call.
    config.dispatch.batch_linger_ms = 300;
    // One partition per topic: the retries come back in the order they were written, so in
    // every later call the `http` delivery comes before `trap` and its request is sent.
    config.kafka.new_topic_partitions = 1;
    // Two vendors of one channel, the same test guest with different secrets: the token a
    // request carries names the vendor that sent it.
    config
        .plugins
        .insert("misbehave-a".into(), misbehave(&vendor, "vendor-a"));
    config
        .plugins
        .insert("misbehave-b".into(), misbehave(&vendor, "vendor-b"));
    // Every first try goes to misbehave-a (at 100:1, smooth round-robin gives it dozens of picks
    // before misbehave-b gets one).
    config.channels.insert(
        "test".into(),
        BTreeMap::from([("misbehave-a".into(), 100), ("misbehave-b".into(), 1)]),
    );
    let host = switchboard::start(config).await.unwrap();

    // One call: the first delivery's request is answered, then the second traps the instance,
    // so the call returns no outcomes though the vendor may have delivered the first.
    let url = format!("http://{}/send", vendor.addr);
    produce(&host.bootstrap_servers, "notifications", 1, |_| {
        let envelope = serde_json::json!({
            "id": "answered-then-trapped",
            "channel": "test",
            "priority": "batch",
            "recipients": [{"to": format!("http:{url}")}, {"to": "trap"}],
            "content": {},
        });
        ("answered-then-trapped".into(), envelope.to_string())
    })
    .await
    .unwrap();
    let counters = host.counters.clone();
    // Done when both deliveries are final: delivered, or given up after their attempts (a
    // retry that shares a call with `trap` again traps again).
    let settled = wait_until(WAIT, || {
        let c = counters.snapshot();
        c.deliveries_delivered + c.dead_lettered >= 2
    })
    .await;
    let counters = counters.snapshot();
    host.stop().await.unwrap();

    assert!(settled, "{counters:?}");
    let tokens = vendor.tokens();
    assert!(
        tokens.len() >= 2,
        "the trapped call's request and at least one retry of it: {tokens:?} {counters:?}"
    );
    // The `trap` delivery alone may fail over (no request of it reached a vendor); the `http`
    // one, which the vendor answered, must never be sent by the other vendor.
    assert!(
        tokens.iter().all(|t| t == "vendor-a"),
        "every try of a delivery the vendor may have acted on stays on that vendor: {tokens:?} {counters:?}"
    );
}
