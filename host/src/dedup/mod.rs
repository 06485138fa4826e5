//! Dedup: which deliveries already reached a final outcome, by idempotency key, so a redelivered
//! request sends only the recipients not yet done.
//!
//! Keys are reduced to 64-bit fingerprints (the first 8 bytes of SHA-256 of the key). A
//! cryptographic hash keeps producers from crafting a collision that would skip another
//! request's recipient. By chance alone, two of 10 million live keys share a fingerprint with
//! probability about 3·10⁻⁶.
//!
//! Backends: [`EmbeddedDedup`] (the default, one host) and [`RedisDedup`] (a fleet of hosts).

pub mod embedded;
pub mod redis;

use std::path::{Path, PathBuf};

use sha2::Digest;

pub use embedded::EmbeddedDedup;
pub use redis::RedisDedup;

/// Why the dedup store could not answer. Callers treat an unanswered lookup as "not seen"
/// (at least once) and an unrecorded mark as a failure of the delivery's final step.
#[derive(Debug, thiserror::Error)]
pub enum DedupError {
    #[error("dedup store {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("redis dedup store: {0}")]
    Redis(#[from] ::redis::RedisError),
}

impl DedupError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        DedupError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The key under which a dead-lettered delivery is marked. Kept apart from the delivered mark so
/// a redelivered request skips both, while a DLQ replay skips only what was delivered.
pub fn dead_key(key: &str) -> String {
    format!("{key}#dead")
}

/// The fingerprint of an idempotency key.
pub fn fingerprint(key: &str) -> u64 {
    let digest = sha2::Sha256::digest(key.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

/// The configured dedup backend.
pub enum DedupStore {
    Embedded(EmbeddedDedup),
    Redis(RedisDedup),
}

impl DedupStore {
    /// Which of `keys` are already done.
    pub async fn seen(&self, keys: &[&str]) -> Result<Vec<bool>, DedupError> {
        let fingerprints: Vec<u64> = keys.iter().map(|k| fingerprint(k)).collect();
        match self {
            DedupStore::Embedded(store) => Ok(store.seen(&fingerprints)),
            DedupStore::Redis(store) => store.seen(&fingerprints).await,
        }
    }

    /// Records `keys` as done.
    pub async fn mark(&self, keys: &[&str]) -> Result<(), DedupError> {
        let fingerprints: Vec<u64> = keys.iter().map(|k| fingerprint(k)).collect();
        match self {
            DedupStore::Embedded(store) => store.mark(&fingerprints),
            DedupStore::Redis(store) => store.mark(&fingerprints).await,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fingerprints_are_stable_across_runs() {
        // Persisted stores depend on this value never changing.
        assert_eq!(
            super::fingerprint("req-8f2c/0"),
            super::fingerprint("req-8f2c/0")
        );
        assert_ne!(
            super::fingerprint("req-8f2c/0"),
            super::fingerprint("req-8f2c/1")
        );
        assert_eq!(super::fingerprint(""), 0x141c_fc98_42c4_b0e3);
    }
}
