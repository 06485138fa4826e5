//! `dedup`: what a done-delivery key costs in the embedded store and in Redis.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;
use switchboard::dedup::{EmbeddedDedup, RedisDedup, fingerprint};

/// Resident set size of this process, from /proc/self/statm.
fn rss_bytes() -> anyhow::Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").context("reading /proc/self/statm")?;
    let resident_pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .context("parsing /proc/self/statm")?;
    Ok(resident_pages * 4096)
}

fn fingerprints(prefix: &str, n: u64) -> Vec<u64> {
    (0..n)
        .map(|i| fingerprint(&format!("{prefix}-{i}/0")))
        .collect()
}

pub async fn measure(
    keys: u64,
    redis_keys: u64,
    redis: Option<&str>,
) -> anyhow::Result<serde_json::Value> {
    let dir = std::env::temp_dir().join(format!("switchboard-lab-dedup-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // Keys are hashed before the memory is read, so only the store's own memory is counted.
    eprintln!("[dedup] hashing {keys} keys");
    let marked = fingerprints("lab", keys);
    let absent = fingerprints("absent", keys.min(1_000_000));
    let store = EmbeddedDedup::open(&dir, Duration::from_secs(7 * 24 * 3600))?;
    let before = rss_bytes()?;
    let started = Instant::now();
    for (n, chunk) in marked.chunks(1000).enumerate() {
        store.mark(chunk)?;
        if n % 2000 == 0 && n > 0 {
            eprintln!("[dedup] {} keys marked", n * 1000);
        }
    }
    let insert_time = started.elapsed();
    let after = rss_bytes()?;
    anyhow::ensure!(
        store.len() as u64 == keys,
        "store holds {} of {keys} keys",
        store.len()
    );

    let probe: Vec<u64> = marked
        .iter()
        .take(absent.len())
        .copied()
        .chain(absent.iter().copied())
        .collect();
    let started = Instant::now();
    let mut hits = 0usize;
    for chunk in probe.chunks(1000) {
        hits += store.seen(chunk).iter().filter(|s| **s).count();
    }
    let lookup_time = started.elapsed();
    anyhow::ensure!(
        hits == absent.len(),
        "lookups found {hits} of {} marked keys",
        absent.len()
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);

    let redis_bytes_per_key = match redis {
        Some(url) => Some(measure_redis(url, redis_keys).await?),
        None => None,
    };
    Ok(json!({
        "scenario": "dedup",
        "keys": keys,
        "bytes_per_key": ((after.saturating_sub(before)) as f64 / keys as f64 * 10.0).round() / 10.0,
        "inserts_per_s": (keys as f64 / insert_time.as_secs_f64()) as u64,
        "lookups_per_s": (probe.len() as f64 / lookup_time.as_secs_f64()) as u64,
        "redis_keys": redis.map(|_| redis_keys),
        "redis_bytes_per_key": redis_bytes_per_key,
    }))
}

async fn used_memory(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<u64> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(conn).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .context("INFO memory has no used_memory")
}

async fn measure_redis(url: &str, keys: u64) -> anyhow::Result<f64> {
    eprintln!("[dedup] redis: marking {keys} keys");
    let prefix = format!("switchboard-lab:{}", std::process::id());
    // ~400 fingerprints per SET keeps each an intset (Redis's limit is 512 by default).
    let shards = keys.div_ceil(400).max(1);
    let store = RedisDedup::connect(url, &prefix, Duration::from_secs(3600), shards).await?;
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let before = used_memory(&mut conn).await?;
    let marked = fingerprints("redis-lab", keys);
    for chunk in marked.chunks(10_000) {
        store.mark(chunk).await?;
    }
    let after = used_memory(&mut conn).await?;
    // Clean up what the measurement wrote.
    crate::rebalance::remove_prefix(url, &prefix).await?;
    Ok(((after.saturating_sub(before)) as f64 / keys as f64 * 10.0).round() / 10.0)
}
