//! The Redis dedup store, for fleets of hosts sharing one set of done deliveries.
//!
//! Encoding: fingerprints go into SETs keyed by time bucket and shard:
//! `{prefix}:{bucket_start}:{shard}`. Each SET holds integers and stays under Redis's
//! `set-max-intset-entries` (512 by default), so Redis stores it as an intset: 8 bytes per
//! fingerprint, plus the key's own overhead spread over its members. Whole bucket keys expire
//! with EXPIRE, so there is no per-delivery key and no per-delivery TTL.
//! `switchboard-lab dedup` measures the bytes per key with Redis's own `INFO memory`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionManager;

use super::DedupError;

/// Buckets per retention window, as in the embedded store.
const BUCKETS: u64 = 8;

/// A dedup store in Redis.
#[derive(Clone)]
pub struct RedisDedup {
    connection: ConnectionManager,
    prefix: String,
    retention: Duration,
    width_s: u64,
    shards: u64,
}

impl RedisDedup {
    /// Connects to `url`. `shards` SETs per bucket: keep `live keys per bucket / shards` under
    /// 512 so every SET stays an intset.
    pub async fn connect(
        url: &str,
        prefix: &str,
        retention: Duration,
        shards: u64,
    ) -> Result<Self, DedupError> {
        let client = redis::Client::open(url)?;
        let connection = ConnectionManager::new(client).await?;
        Ok(Self {
            connection,
            prefix: prefix.to_string(),
            retention,
            width_s: (retention.as_secs() / BUCKETS).max(60),
            shards: shards.max(1),
        })
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
        let answers: Vec<bool> = pipe.query_async(&mut self.connection.clone()).await?;
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
        let () = pipe.query_async(&mut self.connection.clone()).await?;
        Ok(())
    }
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
