//! Helpers for building plugin descriptions and reading vendor retry hints.

use crate::PluginInfo;

/// Builder-style additions to [`PluginInfo`], for [`Adapter::describe`](crate::Adapter::describe).
///
/// ```
/// use switchboard_sdk::{PluginInfo, PluginInfoExt};
///
/// let info = PluginInfo::new("acme-sms", "1.2.0", "sms")
///     .max_batch(100)
///     .wants_host("api.acme.example");
/// assert_eq!((info.max_batch, info.wants_hosts.len()), (100, 1));
/// ```
pub trait PluginInfoExt {
    /// A description with `max_batch` 1 and no wanted hosts. `name` is how operators refer to
    /// the plugin; `version` is usually `env!("CARGO_PKG_VERSION")`; `channel` is the channel
    /// served (`sms`, `push-android`, `push-ios`, `alimtalk`, …).
    ///
    /// ```
    /// use switchboard_sdk::{PluginInfo, PluginInfoExt};
    ///
    /// let info = PluginInfo::new("acme-sms", env!("CARGO_PKG_VERSION"), "sms");
    /// assert_eq!(info.max_batch, 1);
    /// assert!(info.wants_hosts.is_empty());
    /// ```
    fn new(name: &str, version: &str, channel: &str) -> Self;

    /// Sets the largest batch the adapter accepts (at least 1). Use the vendor's batch limit
    /// when it has a batch API, or the number of concurrent requests worth sending otherwise.
    ///
    /// ```
    /// use switchboard_sdk::{PluginInfo, PluginInfoExt};
    ///
    /// assert_eq!(PluginInfo::new("a", "1", "sms").max_batch(1000).max_batch, 1000);
    /// assert_eq!(PluginInfo::new("a", "1", "sms").max_batch(0).max_batch, 1);
    /// ```
    fn max_batch(self, max_batch: u32) -> Self;

    /// Adds a host the adapter needs to reach (`host` or `host:port`). Operators grant it in
    /// `allowed_hosts`; the host denies every other.
    ///
    /// ```
    /// use switchboard_sdk::{PluginInfo, PluginInfoExt};
    ///
    /// let info = PluginInfo::new("fcm", "1", "push-android")
    ///     .wants_host("oauth2.googleapis.com")
    ///     .wants_host("fcm.googleapis.com");
    /// assert_eq!(info.wants_hosts, ["oauth2.googleapis.com", "fcm.googleapis.com"]);
    /// ```
    fn wants_host(self, host: &str) -> Self;
}

impl PluginInfoExt for PluginInfo {
    fn new(name: &str, version: &str, channel: &str) -> Self {
        PluginInfo {
            name: name.to_string(),
            version: version.to_string(),
            channel: channel.to_string(),
            max_batch: 1,
            wants_hosts: Vec::new(),
        }
    }

    fn max_batch(mut self, max_batch: u32) -> Self {
        self.max_batch = max_batch.max(1);
        self
    }

    fn wants_host(mut self, host: &str) -> Self {
        self.wants_hosts.push(host.to_string());
        self
    }
}

/// Reads a `Retry-After` value given in seconds as milliseconds. HTTP dates are not parsed: the
/// vendors we know send seconds, and a wrong guess here is caught by the host's own backoff floor.
///
/// ```
/// use switchboard_sdk::{Outcome, retry_after_ms};
///
/// assert_eq!(retry_after_ms(Some("30")), Some(30_000));
/// assert_eq!(retry_after_ms(None), None);
/// let outcome = Outcome::retry("HTTP 429", retry_after_ms(Some("2")));
/// # let _ = outcome;
/// ```
pub fn retry_after_ms(value: Option<&str>) -> Option<u64> {
    value?
        .trim()
        .parse::<u64>()
        .ok()
        .map(|s| s.saturating_mul(1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds() {
        assert_eq!(retry_after_ms(Some(" 3 ")), Some(3000));
        assert_eq!(retry_after_ms(Some("Wed, 21 Oct 2015 07:28:00 GMT")), None);
        assert_eq!(retry_after_ms(None), None);
    }
}
