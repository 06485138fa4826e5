//! The dedup store's Redis and the history's PostgreSQL over TLS, and their URLs as secrets.
//!
//! Each test starts a server of its own from the binaries `make services` installs (a
//! `redis-server` with only a TLS port; a PostgreSQL cluster that refuses connections without
//! TLS), with a certificate signed by a CA the test makes. A URL with a password is read from a
//! file, and never appears in an error.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use switchboard::config::{DedupBackend, MaybeSecret, SecretSource};
use switchboard::dedup::{DedupStore, RedisDedup, RedisTimeouts};
use switchboard::kafka::EmbeddedKafka;
use switchboard_history::{HistoryBackend, HistoryConfig, HistoryStore, UrlSecret, UrlSetting};
use switchboard_integration_tests::{FcmFixture, cluster_topics};

/// A loopback port nobody listens on now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn scratch_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("switchboard-tls-{name}-"))
        .tempdir()
        .unwrap()
}

/// A CA made for the test, and a server certificate it signed for 127.0.0.1 and localhost.
struct TestCerts {
    ca_pem: String,
    server_cert_pem: String,
    server_key_pem: String,
}

impl TestCerts {
    fn make() -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "switchboard test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let server_key = rcgen::KeyPair::generate().unwrap();
        let server =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .unwrap();
        let server_cert = server.signed_by(&server_key, &ca_cert, &ca_key).unwrap();
        Self {
            ca_pem: ca_cert.pem(),
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
        }
    }
}

/// Polls `ready` until it holds or `within` passes.
fn wait_for(within: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if ready() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A `redis-server` listening only on a TLS port, with a password; killed when dropped.
struct TlsRedis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl TlsRedis {
    fn start(certs: &TestCerts, password: &str) -> Self {
        let dir = scratch_dir("redis");
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let cert = file("server.crt", &certs.server_cert_pem);
        let key = file("server.key", &certs.server_key_pem);
        let ca = file("ca.pem", &certs.ca_pem);
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--tls-port")
            .arg(port.to_string())
            .arg("--tls-cert-file")
            .arg(&cert)
            .arg("--tls-key-file")
            .arg(&key)
            .arg("--tls-ca-cert-file")
            .arg(&ca)
            .args(["--tls-auth-clients", "no", "--requirepass", password])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is not installed: `make services` installs it");
        let listening = wait_for(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(listening, "redis-server with TLS did not listen on {port}");
        Self {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `command` as the `postgres` user (PostgreSQL refuses to run as root).
fn as_postgres(command: &Path) -> Command {
    let mut runuser = Command::new("runuser");
    runuser.args(["-u", "postgres", "--"]).arg(command);
    runuser
}

fn postgres_id(flag: &str) -> u32 {
    let out = Command::new("id")
        .args([flag, "postgres"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "no `postgres` user: `make services` installs PostgreSQL"
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// A PostgreSQL cluster of the test's own, whose `pg_hba.conf` takes password logins over TLS
/// only; stopped when dropped.
struct TlsPostgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
}

impl TlsPostgres {
    const PASSWORD: &str = "pg-tls-s3cret";

    fn start(certs: &TestCerts) -> Self {
        // The newest installed version's server binaries, as `make services` picks them.
        let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL is not installed: `make services` installs it")
            .map(|entry| entry.unwrap().path().join("bin"))
            .filter(|bin| bin.join("initdb").is_file())
            .collect();
        versions.sort_by_key(|bin| {
            bin.parent()
                .and_then(|v| v.file_name())
                .and_then(|v| v.to_str())
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(0)
        });
        let bin = versions.pop().expect("no PostgreSQL server binaries");
        let dir = scratch_dir("postgres");
        let (uid, gid) = (postgres_id("-u"), postgres_id("-g"));
        let owned = |path: &Path| std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
        owned(dir.path());
        let password_file = dir.path().join("password");
        std::fs::write(&password_file, Self::PASSWORD).unwrap();
        owned(&password_file);
        let data = dir.path().join("data");
        let status = as_postgres(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth-local=trust"])
            .arg(format!("--pwfile={}", password_file.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "initdb failed");
        for (name, text) in [
            ("server.crt", certs.server_cert_pem.as_str()),
            ("server.key", certs.server_key_pem.as_str()),
            (
                "pg_hba.conf",
                "local all all trust\n\
                 hostssl all all 127.0.0.1/32 scram-sha-256\n\
                 hostnossl all all 127.0.0.1/32 reject\n",
            ),
        ] {
            let path = data.join(name);
            std::fs::write(&path, text).unwrap();
            owned(&path);
            // The server refuses a key others can read.
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
        }
        let port = free_port();
        let status = as_postgres(&bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(data.join("server.log"))
            .arg("-w")
            .arg("-o")
            .arg(format!(
                "-p {port} -c listen_addresses=127.0.0.1 -k {} -c ssl=on",
                dir.path().display()
            ))
            .arg("start")
            .stdout(Stdio::null())
            .status()
            .unwrap();
        let log = std::fs::read_to_string(data.join("server.log")).unwrap_or_default();
        assert!(
            status.success(),
            "PostgreSQL with TLS did not start:\n{log}"
        );
        Self {
            bin,
            data,
            port,
            dir,
        }
    }

    fn url(&self, options: &str) -> String {
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/postgres?{options}",
            Self::PASSWORD,
            self.port
        )
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .status();
        let _ = self.dir.path();
    }
}

#[tokio::test]
async fn the_dedup_store_reaches_redis_over_tls_with_the_given_ca_only() {
    let certs = TestCerts::make();
    let redis = TlsRedis::start(&certs, "redis-s3cret");
    let url = format!("rediss://:redis-s3cret@127.0.0.1:{}/", redis.port);
    let connect = |roots: Option<Vec<u8>>| {
        RedisDedup::connect_with(
            &url,
            roots,
            "sbtest:tls",
            Duration::from_secs(3600),
            4,
            RedisTimeouts::default(),
            Default::default(),
        )
    };
    let store = DedupStore::Redis(
        connect(Some(certs.ca_pem.clone().into_bytes()))
            .await
            .unwrap(),
    );
    store.mark(&["tls-1/0"]).await.unwrap();
    assert_eq!(
        store.seen(&["tls-1/0", "tls-2/0"]).await.unwrap(),
        vec![true, false]
    );

    // The system's roots do not know the test's CA: the handshake fails, nothing falls back.
    let refused = connect(None)
        .await
        .err()
        .expect("an unknown CA must be refused");
    let refused = format!("{refused:#}");
    assert!(!refused.contains("redis-s3cret"), "{refused}");
}

#[tokio::test]
async fn a_host_reads_its_redis_url_from_a_file_and_connects_with_tls() {
    let certs = TestCerts::make();
    let redis = TlsRedis::start(&certs, "host-s3cret");
    let work = scratch_dir("host");
    let url_file = work.path().join("redis-url");
    std::fs::write(
        &url_file,
        format!("rediss://:host-s3cret@127.0.0.1:{}/\n", redis.port),
    )
    .unwrap();
    let ca_file = work.path().join("redis-ca.pem");
    std::fs::write(&ca_file, &certs.ca_pem).unwrap();

    let cluster = EmbeddedKafka::start(1, &cluster_topics(&["notifications"]), 1).unwrap();
    let fixture = FcmFixture::start(|_| {}).await;
    let mut config = fixture.host_config(cluster.bootstrap_servers(), "notifications", "tls");
    config.dedup.backend = DedupBackend::Redis;
    config.dedup.redis_url = MaybeSecret::Secret(SecretSource::File(url_file));
    config.dedup.redis_tls_ca_file = Some(ca_file);
    config.dedup.redis_prefix = format!("sbtest:tls-host:{}", std::process::id());
    // The host PINGs Redis before it starts: a start is a TLS round trip.
    let host = switchboard::start(config).await.unwrap();
    host.stop().await.unwrap();
}

/// Written before the fix: the start error named the URL, password included.
#[tokio::test]
async fn a_redis_password_never_reaches_the_start_error() {
    let cluster = EmbeddedKafka::start(1, &cluster_topics(&["notifications"]), 1).unwrap();
    let fixture = FcmFixture::start(|_| {}).await;
    let mut config = fixture.host_config(cluster.bootstrap_servers(), "notifications", "pw");
    config.dedup.backend = DedupBackend::Redis;
    config.dedup.redis_url =
        format!("redis://:hunter2-never-printed@127.0.0.1:{}/", free_port()).into();
    let error = match switchboard::start(config).await {
        Ok(_) => panic!("nothing listens there: the start must fail"),
        Err(error) => format!("{error:#}"),
    };
    assert!(error.contains("dedup.redis_url"), "{error}");
    assert!(!error.contains("hunter2-never-printed"), "{error}");
}

#[tokio::test]
async fn the_history_reaches_postgres_over_tls_with_the_given_ca_only() {
    let certs = TestCerts::make();
    let postgres = TlsPostgres::start(&certs);
    let work = scratch_dir("history");
    let ca_file = work.path().join("db-ca.pem");
    std::fs::write(&ca_file, &certs.ca_pem).unwrap();
    let options = Default::default();

    let over_tls = HistoryConfig::Postgres {
        url: postgres.url("sslmode=require"),
        tls_ca_file: Some(ca_file.clone()),
    };
    HistoryStore::open(&over_tls, options).await.unwrap();

    // The server takes no login without TLS, so the open above was TLS.
    let plain = HistoryConfig::Postgres {
        url: postgres.url("sslmode=disable"),
        tls_ca_file: None,
    };
    let refused = HistoryStore::open(&plain, options).await.err().unwrap();
    assert!(
        refused.to_string().contains("no encryption") || refused.to_string().contains("pg_hba"),
        "{refused}"
    );

    // Without the test's CA, the server's certificate is not trusted.
    let unverified = HistoryConfig::Postgres {
        url: postgres.url("sslmode=require"),
        tls_ca_file: None,
    };
    let refused = HistoryStore::open(&unverified, options)
        .await
        .err()
        .unwrap();
    let refused = refused.to_string();
    assert!(!refused.contains(TlsPostgres::PASSWORD), "{refused}");
}

#[tokio::test]
async fn history_settings_read_the_url_from_a_file_beside_the_config() {
    let certs = TestCerts::make();
    let postgres = TlsPostgres::start(&certs);
    let work = scratch_dir("settings");
    std::fs::write(
        work.path().join("history-url"),
        format!("{}\n", postgres.url("sslmode=require")),
    )
    .unwrap();
    std::fs::write(work.path().join("db-ca.pem"), &certs.ca_pem).unwrap();
    let config_path = work.path().join("switchboard.toml");
    std::fs::write(
        &config_path,
        "[history]\nbackend = \"postgres\"\nurl = { file = \"history-url\" }\ntls_ca_file = \"db-ca.pem\"\n",
    )
    .unwrap();
    let config = switchboard::Config::load(&config_path).unwrap();
    let settings = config.history_settings();
    assert_eq!(settings.backend, HistoryBackend::Postgres);
    assert!(matches!(
        settings.url,
        UrlSetting::Secret(UrlSecret::File(ref path)) if path.is_absolute()
    ));
    let printed = format!("{config:?}");
    assert!(!printed.contains(TlsPostgres::PASSWORD), "{printed}");
    settings.open().await.unwrap().unwrap();
}
