//! The Redis dedup store when Redis hangs, refuses or goes away: lookups and marks answer
//! "unavailable" within their timeouts instead of stalling, and the waiting forms wait for Redis
//! to return and then answer correctly. A real Redis (SWITCHBOARD_TEST_REDIS) sits behind a
//! small TCP proxy of this file, which a test switches between passing, black-holing and
//! refusing traffic.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use switchboard::dedup::{DedupStore, RedisDedup, RedisTimeouts, fingerprint};
use switchboard::telemetry::metrics::Metrics;
use switchboard_integration_tests::{CapturedLogs, wait_until};

/// Short timeouts, so an outage shows within a second.
const TIMEOUTS: RedisTimeouts = RedisTimeouts {
    connect: Duration::from_millis(500),
    response: Duration::from_millis(300),
    probe_interval: Duration::from_millis(100),
};

/// The tests that switch a proxy read the log from their own start: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The log capture of this test binary.
fn logs() -> &'static CapturedLogs {
    static LOGS: std::sync::OnceLock<CapturedLogs> = std::sync::OnceLock::new();
    LOGS.get_or_init(CapturedLogs::install)
}

fn redis_url() -> String {
    std::env::var("SWITCHBOARD_TEST_REDIS").expect(
        "SWITCHBOARD_TEST_REDIS is not set: run the tests with `make test`, which starts Redis",
    )
}

/// A key prefix of this run, so runs never see each other's marks.
fn run_prefix(test: &str) -> String {
    format!(
        "sbtest:outage:{test}:{}:{}",
        std::process::id(),
        fingerprint(&format!("{:?}", Instant::now())) % 100_000
    )
}

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProxyMode {
    /// Forwards both ways.
    Pass,
    /// Accepts connections and holds every byte (in order, as TCP would across a partition):
    /// a Redis that hangs, or a network that dropped its packets.
    Blackhole,
    /// Closes every connection, open and new: a Redis that is down.
    Refuse,
}

/// A TCP proxy in front of the test Redis that a test switches between [`ProxyMode`]s.
struct SwitchProxy {
    addr: std::net::SocketAddr,
    mode: watch::Sender<ProxyMode>,
}

impl SwitchProxy {
    async fn start(upstream: std::net::SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, _) = watch::channel(ProxyMode::Pass);
        let modes = mode.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let modes = modes.subscribe();
                tokio::spawn(forward(client, upstream, modes));
            }
        });
        Self { addr, mode }
    }

    fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    fn set(&self, mode: ProxyMode) {
        self.mode.send_replace(mode);
    }
}

/// One proxied connection: until the mode is Refuse, copies each way, holding bytes while the
/// mode is Blackhole.
async fn forward(
    client: TcpStream,
    upstream: std::net::SocketAddr,
    mut modes: watch::Receiver<ProxyMode>,
) {
    if *modes.borrow_and_update() == ProxyMode::Refuse {
        return;
    }
    // A new connection in Blackhole mode is held until the mode changes.
    match modes.wait_for(|m| *m != ProxyMode::Blackhole).await {
        Ok(mode) if *mode == ProxyMode::Pass => {}
        _ => return,
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(client_read, server_write, modes.clone());
    let down = pump(server_read, client_write, modes);
    // Either direction ending ends the connection, as a dead peer would.
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut modes: watch::Receiver<ProxyMode>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = modes.wait_for(|m| *m == ProxyMode::Refuse) => return,
        };
        match modes.wait_for(|m| *m != ProxyMode::Blackhole).await {
            Ok(mode) if *mode == ProxyMode::Pass => {}
            _ => return,
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// The test Redis's address.
fn redis_addr() -> std::net::SocketAddr {
    let url = redis_url();
    let host_port = url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    std::net::ToSocketAddrs::to_socket_addrs(&host_port)
        .unwrap()
        .next()
        .unwrap()
}

/// A listener that accepts connections and never answers: a hung Redis.
async fn hung_redis() -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("redis://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (url, task)
}

/// The Redis store behind `proxy`, with its own metrics to read the up gauge from.
async fn store_behind(proxy: &SwitchProxy, test: &str) -> (DedupStore, Metrics) {
    let metrics = Metrics::new();
    let store = RedisDedup::connect_with(
        &proxy.url(),
        None,
        &run_prefix(test),
        Duration::from_secs(3600),
        4,
        TIMEOUTS,
        metrics.dependency_up("redis"),
    )
    .await
    .unwrap();
    (DedupStore::Redis(store), metrics)
}

/// `switchboard_dependency_up{dependency="redis"}` as rendered.
fn redis_up(metrics: &Metrics) -> Option<i64> {
    metrics
        .render()
        .lines()
        .find_map(|line| line.strip_prefix("switchboard_dependency_up{dependency=\"redis\"} "))
        .and_then(|value| value.trim().parse().ok())
}

#[tokio::test]
async fn connecting_to_a_hung_redis_fails_within_the_connect_timeout() {
    let (url, _hung) = hung_redis().await;
    let started = Instant::now();
    let connected = tokio::time::timeout(
        Duration::from_secs(5),
        RedisDedup::connect(&url, &run_prefix("hung"), Duration::from_secs(3600), 4),
    )
    .await;
    let Ok(connected) = connected else {
        panic!("connecting to a Redis that never answers was still waiting after 5 s");
    };
    let Err(error) = connected else {
        panic!("a Redis that never answers is not connected");
    };
    assert!(error.is_unavailable(), "{error}");
    // The default timeouts: 2 s to connect and 1 s for the answer to the PING.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_redis_that_stops_answering_fails_lookups_instead_of_stalling() {
    let _serial = SERIAL.lock().await;
    let proxy = SwitchProxy::start(redis_addr()).await;
    let (dedup, metrics) = store_behind(&proxy, "blackhole").await;
    dedup.mark(&["req-1/0"]).await.unwrap();
    assert_eq!(
        dedup.seen(&["req-1/0", "req-2/0"]).await.unwrap(),
        vec![true, false]
    );
    assert_eq!(redis_up(&metrics), Some(1));

    proxy.set(ProxyMode::Blackhole);
    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(5), dedup.seen(&["req-1/0"])).await;
    let Ok(answer) = answer else {
        panic!("a lookup on a Redis that stopped answering was still waiting after 5 s");
    };
    let Err(error) = answer else {
        panic!("no answer is not an answer: {answer:?}");
    };
    assert!(error.is_unavailable(), "{error}");
    // Within the response timeout (300 ms), with room for a slow machine.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(!dedup.is_available());
    assert_eq!(redis_up(&metrics), Some(0));

    // The waiting form waits, and answers from Redis once it is back.
    let waiting = tokio::time::timeout(
        Duration::from_secs(1),
        dedup.seen_waiting(&["req-1/0", "req-2/0"]),
    )
    .await;
    assert!(
        waiting.is_err(),
        "answered while Redis was silent: {waiting:?}"
    );
    proxy.set(ProxyMode::Pass);
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        dedup.seen_waiting(&["req-1/0", "req-2/0"]),
    )
    .await
    .expect("Redis answers again, so the lookup does");
    assert_eq!(answer.unwrap(), vec![true, false]);
    assert!(dedup.is_available());
    assert_eq!(redis_up(&metrics), Some(1));
}

#[tokio::test]
async fn a_refused_redis_holds_lookups_and_marks_until_it_returns() {
    let logs = logs();
    let _serial = SERIAL.lock().await;
    let from = logs.text().len();
    let proxy = SwitchProxy::start(redis_addr()).await;
    let (dedup, metrics) = store_behind(&proxy, "refused").await;
    let dedup = std::sync::Arc::new(dedup);
    dedup.mark(&["done/0"]).await.unwrap();

    proxy.set(ProxyMode::Refuse);
    let refused = dedup.seen(&["done/0"]).await;
    assert!(
        refused.as_ref().is_err_and(|e| e.is_unavailable()),
        "{refused:?}"
    );
    let lookup = tokio::spawn({
        let dedup = dedup.clone();
        async move { dedup.seen_waiting(&["done/0", "new/0"]).await }
    });
    let mark = tokio::spawn({
        let dedup = dedup.clone();
        async move { dedup.mark_waiting(&["marked-while-down/0"]).await }
    });
    // Several probes fail meanwhile; neither call answers, and the store reads down.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !lookup.is_finished(),
        "a lookup answered while Redis refused"
    );
    assert!(!mark.is_finished(), "a mark returned while Redis refused");
    assert!(!dedup.is_available());
    assert_eq!(redis_up(&metrics), Some(0));

    proxy.set(ProxyMode::Pass);
    let seen = tokio::time::timeout(Duration::from_secs(5), lookup)
        .await
        .expect("the lookup answers once Redis is back")
        .unwrap();
    assert_eq!(seen.unwrap(), vec![true, false]);
    tokio::time::timeout(Duration::from_secs(5), mark)
        .await
        .expect("the mark lands once Redis is back")
        .unwrap()
        .unwrap();
    assert_eq!(
        dedup.seen(&["marked-while-down/0"]).await.unwrap(),
        vec![true],
        "the mark made while Redis was down is in Redis"
    );
    assert_eq!(redis_up(&metrics), Some(1));

    // One outage: one down and one restored event.
    assert!(
        wait_until(Duration::from_secs(2), || logs.text()[from..]
            .contains("dependency_restored"))
        .await
    );
    let log = &logs.text()[from..];
    assert_eq!(log.matches("event=\"dependency_down\"").count(), 1, "{log}");
    assert_eq!(
        log.matches("event=\"dependency_restored\"").count(),
        1,
        "{log}"
    );
    assert!(log.contains("dependency=\"redis\""), "{log}");
}

#[tokio::test]
async fn a_waiting_mark_can_be_dropped_and_nothing_retries_it_behind_the_caller() {
    let _serial = SERIAL.lock().await;
    let proxy = SwitchProxy::start(redis_addr()).await;
    let (dedup, _metrics) = store_behind(&proxy, "cancel").await;
    proxy.set(ProxyMode::Refuse);
    // Shutdown drops what waits: the waiting forms are cancelled by dropping them.
    let waited = tokio::time::timeout(
        Duration::from_millis(800),
        dedup.mark_waiting(&["cancelled/0"]),
    )
    .await;
    assert!(waited.is_err(), "returned while Redis refused: {waited:?}");
    proxy.set(ProxyMode::Pass);
    assert!(wait_until(Duration::from_secs(5), || dedup.is_available()).await);
    assert_eq!(
        dedup.seen(&["cancelled/0"]).await.unwrap(),
        vec![false],
        "a cancelled mark was not recorded later behind the caller's back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_pauses_while_redis_is_down_and_delivers_everything_once_when_it_returns() {
    let _serial = SERIAL.lock().await;
    let proxy = SwitchProxy::start(redis_addr()).await;
    let topic = "outage-requests";
    let cluster = switchboard::kafka::EmbeddedKafka::start(1, &[topic.to_string()], 2).unwrap();
    let brokers = cluster.bootstrap_servers().to_string();
    let fixture = switchboard_integration_tests::FcmFixture::start(|_| {}).await;
    let mut config = fixture.host_config(&brokers, topic, "g-redis-outage");
    config.dedup.backend = switchboard::config::DedupBackend::Redis;
    config.dedup.redis_url = proxy.url().into();
    config.dedup.redis_prefix = run_prefix("host");
    config.dedup.redis_connect_timeout_ms = 500;
    config.dedup.redis_response_timeout_ms = 300;
    config.dedup.redis_probe_interval_ms = 100;
    let host = switchboard::start(config).await.unwrap();
    let stats = fixture.sim.stats.clone();
    let produce = |from: u64| {
        let brokers = brokers.clone();
        async move {
            switchboard::demo::produce(&brokers, topic, 200, |i| {
                (
                    format!("k{}", from + i),
                    switchboard::demo::demo_envelope(from + i),
                )
            })
            .await
            .unwrap();
        }
    };
    produce(0).await;
    assert!(
        wait_until(Duration::from_secs(60), || stats.snapshot().delivered
            >= 200)
        .await,
        "{:?}",
        stats.snapshot()
    );

    // Redis goes away: nothing more is delivered without a look-up, and the gauge says why.
    proxy.set(ProxyMode::Refuse);
    produce(1_000).await;
    let up = |host: &switchboard::RunningHost| {
        host.metrics
            .render()
            .contains("switchboard_dependency_up{dependency=\"redis\"} 1")
    };
    assert!(
        wait_until(Duration::from_secs(10), || !up(&host)).await,
        "{}",
        host.metrics.render()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        stats.snapshot().delivered,
        200,
        "delivered while the dedup store was down"
    );

    // It returns: the held requests go out by themselves, each once.
    proxy.set(ProxyMode::Pass);
    assert!(
        wait_until(Duration::from_secs(60), || stats.snapshot().delivered
            >= 400)
        .await,
        "{:?} {:?}",
        stats.snapshot(),
        host.counters.snapshot()
    );
    assert!(up(&host), "{}", host.metrics.render());
    host.stop().await.unwrap();
    assert_eq!(stats.snapshot().delivered, 400);
    assert_eq!(stats.snapshot().duplicates, 0);
}
