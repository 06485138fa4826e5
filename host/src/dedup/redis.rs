//! The Redis dedup store, for fleets of hosts sharing one set of done deliveries.
//!
//! Encoding: fingerprints go into SETs keyed by time bucket and shard:
//! `{prefix}:{bucket_start}:{shard}`. Each SET holds integers and stays under Redis's
//! `set-max-intset-entries` (512 by default), so Redis stores it as an intset: 8 bytes per
//! fingerprint, plus the key's own overhead spread over its members. Whole bucket keys expire
//! with EXPIRE, so there is no per-delivery key and no per-delivery TTL.
//! `switchboard-lab dedup` measures the bytes per key with Redis's own `INFO memory`.
//!
//! Reachability: every call is bounded by [`RedisTimeouts`], so a Redis that hangs costs a
//! lookup or a mark at most `connect + response`, never the consumer's progress. A call that
//! goes unanswered marks the store down (see [`super::Availability`]), and from then on a probe
//! opens a fresh connection and PINGs it every `probe_interval`; the first answer replaces the
//! connection and marks the store up. The probe is the one place that reconnects: the redis
//! crate's `ConnectionManager` reconnects only after a refused or reset connection, never
//! after a timeout, so a connection to a Redis that went silent (a partition, a failover to
//! another machine) would stay in use forever; and its own retries with backoff would hold a
//! call past its timeouts.
//!
//! Must never: report a lookup as answered when Redis did not answer it.

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use prometheus_client::metrics::gauge::Gauge;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, FromRedisValue, Pipeline};

use super::{Availability, DedupError, ProbeOutcome};
use crate::config::{
    DEFAULT_REDIS_CONNECT_TIMEOUT, DEFAULT_REDIS_PROBE_INTERVAL, DEFAULT_REDIS_RESPONSE_TIMEOUT,
};

/// Buckets per retention window, as in the embedded store.
const BUCKETS: u64 = 8;

/// The name of this dependency in events and metrics.
const DEPENDENCY: &str = "redis";

/// How long the Redis store waits for Redis, and how often it looks for it once lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedisTimeouts {
    /// Longest wait for a connection, its handshake included ([`DEFAULT_REDIS_CONNECT_TIMEOUT`]).
    pub connect: Duration,
    /// Longest wait for the answer to one lookup or mark ([`DEFAULT_REDIS_RESPONSE_TIMEOUT`]).
    pub response: Duration,
    /// Time between two probes of a store marked down ([`DEFAULT_REDIS_PROBE_INTERVAL`]).
    pub probe_interval: Duration,
}

impl Default for RedisTimeouts {
    fn default() -> Self {
        Self {
            connect: DEFAULT_REDIS_CONNECT_TIMEOUT,
            response: DEFAULT_REDIS_RESPONSE_TIMEOUT,
            probe_interval: DEFAULT_REDIS_PROBE_INTERVAL,
        }
    }
}

/// A dedup store in Redis.
#[derive(Clone)]
pub struct RedisDedup {
    link: Arc<RedisLink>,
    prefix: String,
    retention: Duration,
    width_s: u64,
    shards: u64,
}

/// The connection to Redis, and whether Redis answers on it.
struct RedisLink {
    client: redis::Client,
    timeouts: RedisTimeouts,
    /// The connection calls use now. Replaced only by a probe that reached Redis.
    current: ArcSwap<Connected>,
    availability: Arc<Availability>,
}

/// One connection, numbered: a call that failed on a connection already replaced says
/// nothing about Redis now, and must not mark the store down again.
struct Connected {
    generation: u64,
    connection: MultiplexedConnection,
}

impl RedisDedup {
    /// Connects to `url` with the default [`RedisTimeouts`]. `shards` SETs per bucket: keep
    /// `live keys per bucket / shards` under 512 so every SET stays an intset.
    pub async fn connect(
        url: &str,
        prefix: &str,
        retention: Duration,
        shards: u64,
    ) -> Result<Self, DedupError> {
        Self::connect_with(
            url,
            None,
            prefix,
            retention,
            shards,
            RedisTimeouts::default(),
            Gauge::default(),
        )
        .await
    }

    /// Connects to `url`, and PINGs it: a Redis that cannot answer at start fails the start,
    /// within `timeouts.connect + timeouts.response`. `up_gauge` follows the store's
    /// availability (1 up, 0 down): pass `Metrics::dependency_up("redis")`. A `rediss://` URL
    /// connects with TLS and verifies the server against `tls_roots` (PEM CA certificates)
    /// when given, else against the system's roots.
    pub async fn connect_with(
        url: &str,
        tls_roots: Option<Vec<u8>>,
        prefix: &str,
        retention: Duration,
        shards: u64,
        timeouts: RedisTimeouts,
        up_gauge: Gauge,
    ) -> Result<Self, DedupError> {
        let client = match tls_roots {
            Some(root_cert) => redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                },
            )?,
            None => redis::Client::open(url)?,
        };
        let connection = open_and_ping(&client, &timeouts).await?;
        let link = RedisLink {
            client,
            timeouts,
            current: ArcSwap::from_pointee(Connected {
                generation: 0,
                connection,
            }),
            availability: Arc::new(Availability::new(DEPENDENCY, up_gauge)),
        };
        Ok(Self {
            link: Arc::new(link),
            prefix: prefix.to_string(),
            retention,
            width_s: (retention.as_secs() / BUCKETS).max(60),
            shards: shards.max(1),
        })
    }

    /// Whether Redis answers, as the last call or probe found.
    pub fn availability(&self) -> &Availability {
        &self.link.availability
    }

    fn key(&self, bucket_start: u64, fingerprint: u64) -> String {
        format!(
            "{}:{}:{}",
            self.prefix,
            bucket_start,
            fingerprint % self.shards
        )
    }

    fn live_buckets(&self, now: u64) -> Vec<u64> {
        let current = now - now % self.width_s;
        let oldest = now.saturating_sub(self.retention.as_secs() + self.width_s);
        (0..)
            .map(|i| current.saturating_sub(i * self.width_s))
            .take_while(|start| *start >= oldest && *start > 0)
            .take((BUCKETS + 2) as usize)
            .collect()
    }

    /// Which fingerprints are in any live bucket.
    pub async fn seen(&self, fingerprints: &[u64]) -> Result<Vec<bool>, DedupError> {
        let buckets = self.live_buckets(now_s());
        let mut pipe = redis::pipe();
        for f in fingerprints {
            for start in &buckets {
                // Stored as i64: Redis intsets hold signed 64-bit integers.
                pipe.sismember(self.key(*start, *f), *f as i64);
            }
        }
        let answers: Vec<bool> = self.link.query(&pipe).await?;
        Ok(answers
            .chunks(buckets.len().max(1))
            .map(|per_bucket| per_bucket.iter().any(|seen| *seen))
            .collect())
    }

    /// Adds fingerprints to the current bucket, and keeps the bucket alive for the retention.
    pub async fn mark(&self, fingerprints: &[u64]) -> Result<(), DedupError> {
        let now = now_s();
        let start = now - now % self.width_s;
        let ttl = (self.retention.as_secs() + self.width_s) as i64;
        let mut pipe = redis::pipe();
        for f in fingerprints {
            let key = self.key(start, *f);
            pipe.sadd(&key, *f as i64).ignore();
            pipe.expire(&key, ttl).ignore();
        }
        let () = self.link.query(&pipe).await?;
        Ok(())
    }
}

impl RedisLink {
    /// Runs `pipe` on the current connection within the timeouts. An unanswered call marks
    /// the store down and starts the probe.
    async fn query<T: FromRedisValue>(self: &Arc<Self>, pipe: &Pipeline) -> Result<T, DedupError> {
        let connected = self.current.load_full();
        let mut connection = connected.connection.clone();
        // The connection's own response timeout bounds the answer; this bounds the whole call
        // whatever the crate does inside it.
        let deadline = self.timeouts.connect + self.timeouts.response;
        let answer = match tokio::time::timeout(deadline, pipe.query_async(&mut connection)).await {
            Ok(answer) => answer.map_err(DedupError::from),
            Err(_elapsed) => Err(DedupError::from(timed_out(deadline))),
        };
        if let Err(error) = &answer
            && error.is_unavailable()
        {
            self.lost(connected.generation, error);
        }
        answer
    }

    /// Redis did not answer on connection `generation`: marks the store down, and starts the
    /// probe if it was up.
    fn lost(self: &Arc<Self>, generation: u64, error: &DedupError) {
        if generation != self.current.load().generation {
            return;
        }
        if self.availability.mark_down(error) {
            let link = Arc::downgrade(self);
            let availability = self.availability.clone();
            let interval = self.timeouts.probe_interval;
            tokio::spawn(async move {
                availability
                    .probe_until_up(interval, || probe(link.clone()))
                    .await;
            });
        }
    }

    /// Opens a fresh connection and PINGs it; on an answer, calls use it from now on.
    async fn reconnect(&self) -> Result<(), DedupError> {
        let connection = open_and_ping(&self.client, &self.timeouts).await?;
        let generation = self.current.load().generation + 1;
        self.current.store(Arc::new(Connected {
            generation,
            connection,
        }));
        Ok(())
    }
}

/// One probe of a store marked down. Ends the probing once every handle to the store is gone.
async fn probe(link: Weak<RedisLink>) -> ProbeOutcome {
    let Some(link) = link.upgrade() else {
        return ProbeOutcome::StoreClosed;
    };
    match link.reconnect().await {
        Ok(()) => ProbeOutcome::Answered,
        Err(error) => ProbeOutcome::Unanswered(error),
    }
}

/// A new connection to Redis that answered a PING, within the timeouts.
async fn open_and_ping(
    client: &redis::Client,
    timeouts: &RedisTimeouts,
) -> Result<MultiplexedConnection, DedupError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(timeouts.connect)
        .set_response_timeout(timeouts.response);
    let deadline = timeouts.connect + timeouts.response;
    let attempt = async {
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let _pong: String = redis::cmd("PING").query_async(&mut connection).await?;
        Ok::<_, redis::RedisError>(connection)
    };
    match tokio::time::timeout(deadline, attempt).await {
        Ok(connection) => Ok(connection?),
        Err(_elapsed) => Err(DedupError::from(timed_out(deadline))),
    }
}

fn timed_out(deadline: Duration) -> redis::RedisError {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no answer within {} ms", deadline.as_millis()),
    )
    .into()
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
