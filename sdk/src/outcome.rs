//! Helpers for building plugin descriptions and reading vendor retry hints.

use crate::PluginInfo;

/// Builder-style additions to [`PluginInfo`].
pub trait PluginInfoExt {
    /// A description with `max_batch` 1 and no wanted hosts.
    fn new(name: &str, version: &str, channel: &str) -> Self;
    /// Sets the largest batch the adapter accepts.
    fn max_batch(self, max_batch: u32) -> Self;
    /// Adds a host the adapter needs to reach.
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
