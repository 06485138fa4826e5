//! A plugin-scoped cache kept by the host. Instances are fresh for every call, so anything that
//! must outlive a call (an OAuth token, a provider JWT) lives here.

use crate::bindings::switchboard::adapter::cache as wit;

/// The cached bytes under `key`, unless absent or expired.
pub fn get(key: &str) -> Option<Vec<u8>> {
    wit::get(key)
}

/// Stores `value` under `key` for `ttl_ms` milliseconds.
pub fn set(key: &str, value: &[u8], ttl_ms: u64) {
    wit::set(key, value, ttl_ms)
}

/// A token kept in the cache and refreshed shortly before it expires.
///
/// `refresh` returns the new token and its lifetime in milliseconds; the token is cached for that
/// lifetime less `early_ms`, so no call goes out with a token about to expire.
pub struct CachedToken {
    key: &'static str,
    early_ms: u64,
}

impl CachedToken {
    /// A token cached under `key`, refreshed `early_ms` before it expires.
    pub const fn new(key: &'static str, early_ms: u64) -> Self {
        Self { key, early_ms }
    }

    /// The cached token, or a fresh one from `refresh`.
    pub fn get_or_refresh(
        &self,
        refresh: impl FnOnce() -> Result<(String, u64), String>,
    ) -> Result<String, String> {
        if let Some(bytes) = get(self.key)
            && let Ok(token) = String::from_utf8(bytes)
        {
            return Ok(token);
        }
        let (token, lifetime_ms) = refresh()?;
        let ttl = lifetime_ms.saturating_sub(self.early_ms);
        if ttl > 0 {
            set(self.key, token.as_bytes(), ttl);
        }
        Ok(token)
    }

    /// Drops the cached token, e.g. after the vendor said it is no longer valid.
    pub fn invalidate(&self) {
        set(self.key, &[], 0);
    }
}
