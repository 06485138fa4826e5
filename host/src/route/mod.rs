//! Routing: which vendor (plugin) serves a delivery of a channel.
//!
//! Owns the live weights, the choice between a channel's vendors, and where a retried delivery
//! goes next:
//! - **weights**: the config file is the baseline; operators change them live
//!   ([`Router::set_weights`]), and changes are kept in the state directory across restarts.
//!   A weight of 0 drains a vendor: it gets nothing new, and what it holds finishes.
//! - **health**: a vendor whose breaker is open ([`health`]) is skipped, so its share goes to
//!   the healthy vendors of its channel. When every vendor of a channel is ejected, the choice
//!   ignores health: the deliveries still go out by weight and their retries back off, rather
//!   than waiting in memory for a vendor to come back.
//! - **failover**: a delivery retried after a vendor's `retry` answer goes to another vendor of
//!   its channel when one is healthy (same idempotency key). A delivery the vendor may have
//!   acted on without the host learning the result stays on the same vendor (see [`RouteHint`]);
//!   [`retry_pinning`] decides which is which, from what the call's requests came to.
//!
//! The choice is smooth weighted round-robin (as nginx balances upstreams): exact proportions
//! over any window of one cycle, and no burst of one vendor, which a random choice would give at
//! small volumes. Skipping a vendor leaves it out of that round's total, as nginx does for a
//! down peer.

pub mod fallback;
pub mod health;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::plugin::{CallError, CallReport};
use crate::telemetry::events;
use health::Health;

/// Where a retried delivery went last, so the router can fail it over, or keep it in place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteHint {
    /// The vendor (plugin name) of the last try.
    pub vendor: String,
    /// The vendor may have delivered the last try without the host learning it (a request
    /// sent and not answered, or a call that trapped or passed its deadline after its requests
    /// reached the vendor; see [`retry_pinning`]). Such a delivery is tried again on the same
    /// vendor with the same idempotency key, so a vendor that deduplicates by key (or the
    /// recipient's device) sees one message, never two from two vendors. It moves only once
    /// that vendor is drained (weight 0) or gone from the channel. The name is kept from when
    /// only timeouts set it: retry records already in the topic carry it.
    pub timed_out: bool,
}

/// What one try tells about where the delivery's retry may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pinning {
    /// The vendor answered, and the plugin judged the answer: the retry may fail over to
    /// another healthy vendor, whatever an earlier try left open.
    Free,
    /// Nothing of the try reached the vendor (no request, or only connections never made), so
    /// it settles nothing: the retry stays as free, or as pinned, as the try before left it.
    Unchanged,
    /// The vendor may have acted on the try without the host learning the result: the retry
    /// stays on it ([`RouteHint::timed_out`]).
    Pinned,
}

/// What the tries of one call's deliveries tell about their retries, from how the call ended and
/// what its HTTP requests came to. The requests are counted per call, not per delivery, so one
/// request the vendor may have acted on pins every retry of the call: doubling one message
/// across vendors is what this must never do, and a slower retry is the price.
///
/// - The call returned outcomes: a request sent and unanswered (timed out, cut off) pins.
///   Otherwise each `retry` is the plugin's reading of the vendor's answers, which frees it;
///   with no answer at all (no request, or connections never made) nothing reached the vendor.
/// - The call trapped or passed its deadline: the plugin said nothing of any delivery. If any
///   request reached the vendor, answered or not, any delivery may have been delivered. If
///   none did, none was.
/// - `init` failed: `deliver` never ran, so no delivery was sent, whatever `init` requested.
pub fn retry_pinning(report: &CallReport) -> Pinning {
    let exchanges = &report.exchanges;
    match &report.outcomes {
        Ok(_) if exchanges.unanswered > 0 => Pinning::Pinned,
        Ok(_) if exchanges.answered > 0 => Pinning::Free,
        Ok(_) => Pinning::Unchanged,
        Err(CallError::Trap(_) | CallError::Timeout(_)) if exchanges.reached_vendor() => {
            Pinning::Pinned
        }
        Err(
            CallError::Trap(_)
            | CallError::Timeout(_)
            | CallError::Init(_)
            | CallError::HostBusy(_),
        ) => Pinning::Unchanged,
    }
}

impl RouteHint {
    /// The hint for the retry of a delivery just tried on `vendor`, whose try came to
    /// `pinning`; `previous` is the hint the delivery arrived with, when it was a retry.
    ///
    /// A pin outlives tries that reached nothing: after a request that timed out on `vendor`,
    /// a retry that trapped before sending, or could not connect, still does not know whether
    /// the first was delivered. Only an answer the plugin judged frees it.
    pub fn after(vendor: &str, pinning: Pinning, previous: Option<&RouteHint>) -> RouteHint {
        let timed_out = match pinning {
            Pinning::Pinned => true,
            Pinning::Free => false,
            // Pinned to another vendor, and tried here: that vendor was drained or removed,
            // which is when a pin may move, so it does not carry over.
            Pinning::Unchanged => previous.is_some_and(|p| p.timed_out && p.vendor == vendor),
        };
        RouteHint {
            vendor: vendor.to_string(),
            timed_out,
        }
    }
}

/// Why weights could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    #[error("no channel `{0}` is configured")]
    UnknownChannel(String),
    #[error("channel `{channel}` has no vendor `{vendor}`; its vendors are: {known}")]
    UnknownVendor {
        channel: String,
        vendor: String,
        known: String,
    },
    #[error(
        "every weight of channel `{0}` would be 0; keep at least one vendor above 0 (a weight of 0 drains one vendor)"
    )]
    AllZero(String),
    #[error("could not keep the weights in {path}: {source}")]
    Persist {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The weighted choice for one channel.
#[derive(Debug)]
struct SmoothWeighted {
    /// (plugin, weight, current score), weights above 0 only.
    vendors: Vec<(String, i64, i64)>,
}

impl SmoothWeighted {
    fn new(weights: &BTreeMap<String, u32>) -> Self {
        let vendors: Vec<_> = weights
            .iter()
            .filter(|(_, w)| **w > 0)
            .map(|(name, w)| (name.clone(), i64::from(*w), 0))
            .collect();
        Self { vendors }
    }

    /// The next vendor among those `eligible` admits; `None` when it admits none.
    fn next_among(&mut self, eligible: impl Fn(&str) -> bool) -> Option<String> {
        let mut total = 0;
        let mut best: Option<usize> = None;
        for i in 0..self.vendors.len() {
            if !eligible(&self.vendors[i].0) {
                continue;
            }
            self.vendors[i].2 += self.vendors[i].1;
            total += self.vendors[i].1;
            // Highest score wins; ties go to the first vendor, so the order is deterministic.
            if best.is_none_or(|b| self.vendors[i].2 > self.vendors[b].2) {
                best = Some(i);
            }
        }
        let best = best?;
        self.vendors[best].2 -= total;
        Some(self.vendors[best].0.clone())
    }

    fn weight_of(&self, vendor: &str) -> u32 {
        self.vendors
            .iter()
            .find(|v| v.0 == vendor)
            .map_or(0, |v| v.1 as u32)
    }
}

/// `current` with the weights in `changes`, refused when a change names a vendor the channel
/// lacks or every weight would be 0.
fn merged(
    channel: &str,
    current: &BTreeMap<String, u32>,
    changes: &BTreeMap<String, u32>,
) -> Result<BTreeMap<String, u32>, WeightError> {
    let mut next = current.clone();
    for (vendor, weight) in changes {
        match next.get_mut(vendor) {
            Some(w) => *w = *weight,
            None => {
                return Err(WeightError::UnknownVendor {
                    channel: channel.to_string(),
                    vendor: vendor.clone(),
                    known: next.keys().cloned().collect::<Vec<_>>().join(", "),
                });
            }
        }
    }
    if next.values().all(|w| *w == 0) {
        return Err(WeightError::AllZero(channel.to_string()));
    }
    Ok(next)
}

/// One channel's weights and its choice.
#[derive(Debug)]
struct Channel {
    /// The config file's weights.
    baseline: BTreeMap<String, u32>,
    /// The weights in force.
    current: BTreeMap<String, u32>,
    choice: SmoothWeighted,
}

/// Channel → vendor choice, with live weights and health.
#[derive(Debug)]
pub struct Router {
    channels: HashMap<String, Mutex<Channel>>,
    health: Arc<Health>,
    /// Where changed weights are kept; `None` keeps them in memory only.
    state_file: Option<PathBuf>,
    /// Serialises writes of the state file.
    persist: Mutex<()>,
}

impl Router {
    /// A router over `channels` (channel → plugin → weight from the config), applying the weights
    /// kept in `state_file` when it exists. Kept weights for vendors no longer in a channel are
    /// ignored, with a warning.
    pub fn new(
        channels: &BTreeMap<String, BTreeMap<String, u32>>,
        health: Arc<Health>,
        state_file: Option<PathBuf>,
    ) -> Self {
        let kept = state_file.as_deref().map(read_kept).unwrap_or_default();
        let channels = channels
            .iter()
            .map(|(name, baseline)| {
                let mut current = baseline.clone();
                if let Some(kept) = kept.get(name) {
                    for (vendor, weight) in kept {
                        match current.get_mut(vendor) {
                            Some(w) => *w = *weight,
                            None => tracing::warn!(
                                channel = %name,
                                vendor = %vendor,
                                "a kept weight names a vendor the channel no longer has; ignored"
                            ),
                        }
                    }
                    if current.values().all(|w| *w == 0) {
                        tracing::warn!(channel = %name, "kept weights are all 0; using the config's");
                        current = baseline.clone();
                    }
                }
                let channel = Channel {
                    choice: SmoothWeighted::new(&current),
                    baseline: baseline.clone(),
                    current,
                };
                (name.clone(), Mutex::new(channel))
            })
            .collect();
        Self {
            channels,
            health,
            state_file,
            persist: Mutex::new(()),
        }
    }

    /// A router with the config's weights, every vendor healthy, nothing kept.
    pub fn from_config(config: &crate::Config) -> Self {
        let health = Arc::new(Health::new(&config.health, config.plugins.keys()));
        Self::new(&config.channels, health, None)
    }

    /// The vendors' health and breakers.
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    fn channel(&self, name: &str) -> Option<std::sync::MutexGuard<'_, Channel>> {
        self.channels
            .get(name)
            .map(|c| c.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// True when `channel` is configured.
    pub fn knows(&self, channel: &str) -> bool {
        self.channels.contains_key(channel)
    }

    /// The configured channels.
    pub fn channel_names(&self) -> Vec<String> {
        let mut names: Vec<_> = self.channels.keys().cloned().collect();
        names.sort();
        names
    }

    /// The vendor for the next delivery of `channel`; `hint` says where it went last, if it is
    /// a retry. A pinned hint keeps the vendor while it has weight; any other retry goes to
    /// another healthy vendor when there is one, and back to the same one only when there is
    /// not. `None` only for an unknown channel.
    pub fn pick(&self, channel: &str, hint: Option<&RouteHint>) -> Option<String> {
        let mut channel = self.channel(channel)?;
        let health = &self.health;
        if let Some(hint) = hint
            && hint.timed_out
            && channel.choice.weight_of(&hint.vendor) > 0
        {
            health.take(&hint.vendor);
            return Some(hint.vendor.clone());
        }
        let avoid = hint.map(|h| h.vendor.as_str());
        let vendor = channel
            .choice
            .next_among(|v| Some(v) != avoid && health.admits(v))
            .or_else(|| channel.choice.next_among(|v| health.admits(v)))
            .or_else(|| channel.choice.next_among(|_| true))?;
        health.take(&vendor);
        Some(vendor)
    }

    /// The weights of `channel` in force.
    pub fn weights(&self, channel: &str) -> Option<BTreeMap<String, u32>> {
        self.channel(channel).map(|c| c.current.clone())
    }

    /// The config file's weights of `channel`.
    pub fn baseline(&self, channel: &str) -> Option<BTreeMap<String, u32>> {
        self.channel(channel).map(|c| c.baseline.clone())
    }

    /// Changes the weights of the vendors named in `changes` (the others keep theirs), keeps
    /// them across restarts, and returns the weights now in force.
    pub fn set_weights(
        &self,
        channel: &str,
        changes: &BTreeMap<String, u32>,
    ) -> Result<BTreeMap<String, u32>, WeightError> {
        let current = {
            let mut state = self
                .channel(channel)
                .ok_or_else(|| WeightError::UnknownChannel(channel.to_string()))?;
            let next = merged(channel, &state.current, changes)?;
            state.choice = SmoothWeighted::new(&next);
            state.current = next.clone();
            next
        };
        self.keep()?;
        events::WeightsChanged {
            channel,
            weights: &current,
        }
        .emit();
        Ok(current)
    }

    /// The weights `channel` would have after [`Router::set_weights`] with `changes`, or why it
    /// would refuse them; changes nothing.
    pub fn preview_weights(
        &self,
        channel: &str,
        changes: &BTreeMap<String, u32>,
    ) -> Result<BTreeMap<String, u32>, WeightError> {
        let state = self
            .channel(channel)
            .ok_or_else(|| WeightError::UnknownChannel(channel.to_string()))?;
        merged(channel, &state.current, changes)
    }

    /// Puts `channel` back on the config file's weights.
    pub fn reset_weights(&self, channel: &str) -> Result<BTreeMap<String, u32>, WeightError> {
        let baseline = self
            .baseline(channel)
            .ok_or_else(|| WeightError::UnknownChannel(channel.to_string()))?;
        self.set_weights(channel, &baseline)
    }

    /// Writes every channel's weights that differ from the config file's to the state file.
    fn keep(&self) -> Result<(), WeightError> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        let _writing = self.persist.lock().unwrap_or_else(|p| p.into_inner());
        let mut kept = BTreeMap::new();
        for (name, channel) in &self.channels {
            let channel = channel.lock().unwrap_or_else(|p| p.into_inner());
            if channel.current != channel.baseline {
                kept.insert(name.clone(), channel.current.clone());
            }
        }
        let text = serde_json::to_vec_pretty(&kept).unwrap_or_default();
        crate::state::write_atomically(path, &text).map_err(|source| WeightError::Persist {
            path: path.clone(),
            source,
        })
    }
}

/// The weights kept in `path`; none when it is missing or unreadable (with a warning).
fn read_kept(path: &std::path::Path) -> BTreeMap<String, BTreeMap<String, u32>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|error| {
            tracing::warn!(path = %path.display(), %error, "kept weights unreadable; using the config's");
            BTreeMap::new()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "kept weights unreadable; using the config's");
            BTreeMap::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HealthConfig;
    use health::CallTally;

    fn router(weights: &[(&str, u32)], state_file: Option<PathBuf>) -> (Router, Arc<Health>) {
        let weights: BTreeMap<String, u32> =
            weights.iter().map(|(v, w)| (v.to_string(), *w)).collect();
        let health = Arc::new(Health::new(
            &HealthConfig {
                min_calls: 4,
                ..HealthConfig::default()
            },
            weights.keys(),
        ));
        let channels = BTreeMap::from([("sms".to_string(), weights)]);
        (Router::new(&channels, health.clone(), state_file), health)
    }

    fn split(router: &Router, picks: usize, hint: Option<&RouteHint>) -> BTreeMap<String, u32> {
        let mut counts = BTreeMap::new();
        for _ in 0..picks {
            *counts
                .entry(router.pick("sms", hint).unwrap_or_default())
                .or_default() += 1;
        }
        counts
    }

    #[test]
    fn split_follows_the_weights_exactly_per_cycle() {
        let (router, _) = router(&[("a", 70), ("b", 30), ("c", 0)], None);
        let counts = split(&router, 10_000, None);
        assert_eq!(counts.get("a"), Some(&7000));
        assert_eq!(counts.get("b"), Some(&3000));
        assert_eq!(counts.get("c"), None, "weight 0 gets nothing");
        assert_eq!(router.pick("push", None), None);
    }

    #[test]
    fn live_weights_change_the_split_and_survive_a_restart() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("weights.json");
        let (router1, _) = router(&[("a", 50), ("b", 50)], Some(file.clone()));
        let now = router1.set_weights("sms", &BTreeMap::from([("a".to_string(), 0)]))?;
        assert_eq!(now, BTreeMap::from([("a".into(), 0), ("b".into(), 50)]));
        assert_eq!(split(&router1, 100, None).get("a"), None, "a is drained");
        let (router2, _) = router(&[("a", 50), ("b", 50)], Some(file.clone()));
        assert_eq!(router2.weights("sms"), Some(now), "kept across a restart");
        router2.reset_weights("sms")?;
        let (router3, _) = router(&[("a", 50), ("b", 50)], Some(file));
        assert_eq!(
            split(&router3, 100, None).get("a"),
            Some(&50),
            "back on the config's"
        );
        Ok(())
    }

    #[test]
    fn bad_weight_changes_are_refused_and_change_nothing() {
        let (router, _) = router(&[("a", 50), ("b", 50)], None);
        let unknown = router.set_weights("sms", &BTreeMap::from([("zz".to_string(), 5)]));
        assert!(matches!(unknown, Err(WeightError::UnknownVendor { .. })));
        let zero = router.set_weights(
            "sms",
            &BTreeMap::from([("a".to_string(), 0), ("b".to_string(), 0)]),
        );
        assert!(matches!(zero, Err(WeightError::AllZero(_))));
        let channel = router.set_weights("push", &BTreeMap::new());
        assert!(matches!(channel, Err(WeightError::UnknownChannel(_))));
        assert_eq!(
            router.weights("sms"),
            Some(BTreeMap::from([("a".into(), 50), ("b".into(), 50)]))
        );
    }

    #[test]
    fn an_ejected_vendor_share_goes_to_the_others() {
        let (router, health) = router(&[("a", 50), ("b", 30), ("c", 20)], None);
        health.record(
            "a",
            &CallTally {
                errors: 10,
                ..CallTally::default()
            },
        );
        let counts = split(&router, 1000, None);
        assert_eq!(counts.get("a"), None, "ejected");
        assert_eq!(counts.get("b"), Some(&600), "b keeps 30:20 against c");
        assert_eq!(counts.get("c"), Some(&400));
    }

    fn report(outcomes: Result<(), CallError>, exchanges: [u32; 3]) -> CallReport {
        let [answered, unanswered, never_sent] = exchanges;
        let retry = crate::contract::Outcome::Retry(crate::contract::RetryInfo {
            reason: "http connect error".into(),
            after_ms: None,
        });
        CallReport {
            outcomes: outcomes.map(|()| vec![retry]),
            exchanges: crate::plugin::capabilities::ExchangeTally {
                answered,
                unanswered,
                never_sent,
            },
        }
    }

    #[test]
    fn only_a_call_the_vendor_may_have_acted_on_pins_its_retries() {
        use Pinning::{Free, Pinned, Unchanged};
        let trap = || Err(CallError::Trap("wasm trap".into()));
        let deadline = || Err(CallError::Timeout(std::time::Duration::from_secs(1)));
        let init = || Err(CallError::Init("refused".into()));
        // Exchanges are [answered, unanswered, never sent].
        let cases = [
            ("outcomes, answered", report(Ok(()), [1, 0, 0]), Free),
            (
                "outcomes, answered + not sent",
                report(Ok(()), [1, 0, 1]),
                Free,
            ),
            ("outcomes, not sent", report(Ok(()), [0, 0, 1]), Unchanged),
            ("outcomes, no request", report(Ok(()), [0, 0, 0]), Unchanged),
            ("outcomes, unanswered", report(Ok(()), [1, 1, 0]), Pinned),
            ("trap, no request", report(trap(), [0, 0, 0]), Unchanged),
            ("trap, not sent", report(trap(), [0, 0, 2]), Unchanged),
            ("trap, answered", report(trap(), [1, 0, 0]), Pinned),
            ("trap, unanswered", report(trap(), [0, 1, 0]), Pinned),
            (
                "deadline, no request",
                report(deadline(), [0, 0, 0]),
                Unchanged,
            ),
            ("deadline, in flight", report(deadline(), [0, 1, 0]), Pinned),
            ("deadline, answered", report(deadline(), [1, 0, 1]), Pinned),
            ("init refused", report(init(), [1, 1, 0]), Unchanged),
        ];
        for (case, report, expected) in cases {
            assert_eq!(retry_pinning(&report), expected, "{case}");
        }
    }

    #[test]
    fn a_pin_outlives_tries_that_reached_nothing() {
        let hint = |vendor: &str, timed_out| RouteHint {
            vendor: vendor.into(),
            timed_out,
        };
        let pinned_to_a = hint("a", true);
        let free_from_a = hint("a", false);
        let cases = [
            (Pinning::Pinned, None, true),
            (Pinning::Free, Some(&pinned_to_a), false),
            (Pinning::Unchanged, None, false),
            (Pinning::Unchanged, Some(&free_from_a), false),
            (Pinning::Unchanged, Some(&pinned_to_a), true),
        ];
        for (pinning, previous, pinned) in cases {
            assert_eq!(
                RouteHint::after("a", pinning, previous),
                hint("a", pinned),
                "{pinning:?} after {previous:?}"
            );
        }
        // Tried on b, pinned to a: a was drained, and the pin does not follow to b.
        assert_eq!(
            RouteHint::after("b", Pinning::Unchanged, Some(&pinned_to_a)),
            hint("b", false)
        );
    }

    /// Where the router sends the retry of a first try on vendor `a` that came to `report`.
    fn next_vendor_after(router: &Router, report: &CallReport) -> Option<String> {
        let hint = RouteHint::after("a", retry_pinning(report), None);
        router.pick("sms", Some(&hint))
    }

    #[test]
    fn a_retry_fails_over_unless_the_vendor_may_have_acted_on_it() {
        let (router, _) = router(&[("a", 50), ("b", 50)], None);
        let connect_failed = report(Ok(()), [0, 0, 1]);
        assert_eq!(
            next_vendor_after(&router, &connect_failed).as_deref(),
            Some("b")
        );
        let trapped_after_answer = report(Err(CallError::Trap("wasm trap".into())), [1, 0, 0]);
        assert_eq!(
            next_vendor_after(&router, &trapped_after_answer).as_deref(),
            Some("a")
        );
    }

    #[test]
    fn retries_fail_over_unless_they_timed_out() {
        let (router, health) = router(&[("a", 50), ("b", 50)], None);
        let after_a = RouteHint {
            vendor: "a".into(),
            timed_out: false,
        };
        assert_eq!(split(&router, 10, Some(&after_a)).get("b"), Some(&10));
        let timed_out = RouteHint {
            vendor: "a".into(),
            timed_out: true,
        };
        assert_eq!(split(&router, 10, Some(&timed_out)).get("a"), Some(&10));
        // Every other vendor ejected: the retry goes back to the one it came from.
        health.record(
            "b",
            &CallTally {
                errors: 10,
                ..CallTally::default()
            },
        );
        assert_eq!(split(&router, 4, Some(&after_a)).get("a"), Some(&4));
        // Every vendor ejected: deliveries still go out by weight.
        health.record(
            "a",
            &CallTally {
                errors: 10,
                ..CallTally::default()
            },
        );
        assert_eq!(split(&router, 10, None).values().sum::<u32>(), 10);
    }
}
