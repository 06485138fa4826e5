//! Routing: which plugin serves a delivery of a channel, in proportion to the configured weights.
//!
//! Smooth weighted round-robin (as nginx balances upstreams): exact proportions over any window
//! of one cycle, and no burst of one vendor, which a random choice would give at small volumes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// The weighted choice for one channel.
#[derive(Debug)]
struct SmoothWeighted {
    /// (plugin, weight, current score).
    vendors: Vec<(String, i64, i64)>,
    total: i64,
}

impl SmoothWeighted {
    fn new(weights: &BTreeMap<String, u32>) -> Self {
        let vendors: Vec<_> = weights
            .iter()
            .filter(|(_, w)| **w > 0)
            .map(|(name, w)| (name.clone(), i64::from(*w), 0))
            .collect();
        let total = vendors.iter().map(|(_, w, _)| w).sum();
        Self { vendors, total }
    }

    fn next(&mut self) -> Option<&str> {
        for vendor in &mut self.vendors {
            vendor.2 += vendor.1;
        }
        // Highest score wins; ties go to the first vendor, so the order is deterministic.
        let best =
            (0..self.vendors.len()).max_by_key(|i| (self.vendors[*i].2, std::cmp::Reverse(*i)))?;
        self.vendors[best].2 -= self.total;
        Some(&self.vendors[best].0)
    }
}

/// Channel → plugin choice.
#[derive(Debug, Default)]
pub struct ChannelRouter {
    channels: HashMap<String, Mutex<SmoothWeighted>>,
}

impl ChannelRouter {
    /// A router over `channels` (channel → plugin → weight).
    pub fn new(channels: &BTreeMap<String, BTreeMap<String, u32>>) -> Self {
        Self {
            channels: channels
                .iter()
                .map(|(c, w)| (c.clone(), Mutex::new(SmoothWeighted::new(w))))
                .collect(),
        }
    }

    /// True when `channel` is configured.
    pub fn knows(&self, channel: &str) -> bool {
        self.channels.contains_key(channel)
    }

    /// The plugin for the next delivery of `channel`.
    pub fn pick(&self, channel: &str) -> Option<String> {
        let mut choice = self
            .channels
            .get(channel)?
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        choice.next().map(str::to_string)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_follows_the_weights_exactly_per_cycle() {
        let weights = BTreeMap::from([
            ("a".to_string(), 70),
            ("b".to_string(), 30),
            ("c".to_string(), 0),
        ]);
        let router = ChannelRouter::new(&BTreeMap::from([("sms".to_string(), weights)]));
        let mut counts: HashMap<String, u32> = HashMap::new();
        for _ in 0..10_000 {
            *counts
                .entry(router.pick("sms").unwrap_or_default())
                .or_default() += 1;
        }
        assert_eq!(counts.get("a"), Some(&7000));
        assert_eq!(counts.get("b"), Some(&3000));
        assert_eq!(counts.get("c"), None, "weight 0 gets nothing");
        assert_eq!(router.pick("push"), None);
    }
}
