//! A plugin-scoped cache kept by the host. Instances are fresh for every call, so anything that
//! must outlive a call (an OAuth token, a provider JWT) lives here.
//!
//! Entries are the plugin's own: another plugin cannot read them, and every version of the plugin
//! shares them, so a token survives a plugin swap. The host keeps up to 4096 entries of up to
//! 64 KiB each and may lose an entry before its time (a restart, a full cache), so a miss must
//! always be recoverable.
//!
//! ```no_run
//! use switchboard_sdk::cache;
//!
//! // Remember for ten minutes that the vendor's sender lookup succeeded.
//! if cache::get("sender-checked").is_none() {
//!     cache::set("sender-checked", b"1", 10 * 60 * 1000);
//! }
//! ```

/// The cached bytes under `key`, unless absent or expired.
///
/// ```no_run
/// use switchboard_sdk::cache;
///
/// if let Some(bytes) = cache::get("sender-id") {
///     println!("cached: {}", String::from_utf8_lossy(&bytes));
/// }
/// ```
pub fn get(key: &str) -> Option<Vec<u8>> {
    crate::imports::cache_get(key)
}

/// Stores `value` under `key` for `ttl_ms` milliseconds. A `ttl_ms` of 0 drops the entry, and
/// so does a value larger than 64 KiB.
///
/// ```no_run
/// use switchboard_sdk::cache;
///
/// cache::set("sender-id", b"SNDR-42", 10 * 60 * 1000);
/// ```
pub fn set(key: &str, value: &[u8], ttl_ms: u64) {
    crate::imports::cache_set(key, value, ttl_ms)
}

/// A token kept in the cache and refreshed shortly before it expires.
///
/// `refresh` returns the new token and its lifetime in milliseconds; the token is cached for that
/// lifetime less `early_ms`, so no call goes out with a token about to expire.
///
/// ```no_run
/// use switchboard_sdk::cache::CachedToken;
///
/// // Tokens live an hour; refreshing five minutes early keeps clear of clock skew.
/// const ACCESS_TOKEN: CachedToken = CachedToken::new("access-token", 5 * 60 * 1000);
///
/// let token = ACCESS_TOKEN.get_or_refresh(|| Ok(("fresh-token".to_string(), 3_600_000)))?;
/// # let _ = token;
/// # Ok::<(), String>(())
/// ```
pub struct CachedToken {
    key: &'static str,
    early_ms: u64,
}

impl CachedToken {
    /// A token cached under `key`, refreshed `early_ms` before it expires.
    ///
    /// ```
    /// use switchboard_sdk::cache::CachedToken;
    ///
    /// const PROVIDER_TOKEN: CachedToken = CachedToken::new("apns-provider-token", 10 * 60 * 1000);
    /// # let _ = PROVIDER_TOKEN;
    /// ```
    pub const fn new(key: &'static str, early_ms: u64) -> Self {
        Self { key, early_ms }
    }

    /// The cached token, or a fresh one from `refresh`.
    ///
    /// ```no_run
    /// use switchboard_sdk::cache::CachedToken;
    /// use switchboard_sdk::http::{self, Request};
    ///
    /// const TOKEN: CachedToken = CachedToken::new("oauth-token", 60_000);
    ///
    /// let token = TOKEN.get_or_refresh(|| {
    ///     let response = http::send(
    ///         Request::post("https://auth.acme.example/token").form(&[("grant_type", "x")]),
    ///     )
    ///     .map_err(|e| e.to_string())?;
    ///     let body = response.json().ok_or("token reply is not JSON")?;
    ///     let token = body["access_token"].as_str().ok_or("no access_token")?;
    ///     let lifetime_ms = body["expires_in"].as_u64().unwrap_or(3600) * 1000;
    ///     Ok((token.to_string(), lifetime_ms))
    /// })?;
    /// # let _ = token;
    /// # Ok::<(), String>(())
    /// ```
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
    ///
    /// ```no_run
    /// use switchboard_sdk::cache::CachedToken;
    ///
    /// const TOKEN: CachedToken = CachedToken::new("oauth-token", 60_000);
    /// // The vendor answered 401: the next call fetches a new token.
    /// TOKEN.invalidate();
    /// ```
    pub fn invalidate(&self) {
        set(self.key, &[], 0);
    }
}
