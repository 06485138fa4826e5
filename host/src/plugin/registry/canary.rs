//! Canary judgement: a canary takes a share of a plugin's calls, and every second its error
//! rate is compared with the active version's over the same window, from the canary's start.
//! A canary worse by more than `margin_percent` points, once it has `min_calls` answers, is
//! rolled back; its version stays loaded.
//!
//! Owns the rule ([`judge`], pure) and the loop that applies it; the roll back itself is a swap.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::Registry;
use crate::config::CanaryConfig;
use crate::window::Bucket;

/// How a canary ended, for operators.
#[derive(Debug, Clone, Serialize)]
pub struct CanaryEnd {
    pub id: String,
    /// `rolled-back` (automatically or by an operator) or `promoted`.
    pub how: String,
    pub reason: String,
    pub at_ms: u64,
    /// How long the canary ran.
    pub after_ms: u64,
}

/// Why the canary (`theirs`) should be rolled back against the active version (`ours`), or
/// `None` while it holds up or has too few answers to judge.
pub fn judge(theirs: &Bucket, ours: &Bucket, config: &CanaryConfig) -> Option<String> {
    if theirs.deliveries() < config.min_calls {
        return None;
    }
    let margin = config.margin_percent as f64;
    (theirs.error_percent() > ours.error_percent() + margin).then(|| {
        format!(
            "canary failed {:.1} % of {} deliveries against {:.1} % of {} on the active version (margin {margin} points)",
            theirs.error_percent(),
            theirs.deliveries(),
            ours.error_percent(),
            ours.deliveries(),
        )
    })
}

impl Registry {
    /// Compares every canary with its active version once; rolls back those doing worse than
    /// the margin allows. Returns the plugins rolled back.
    pub async fn judge_canaries(&self) -> Vec<String> {
        let mut rolled_back = Vec::new();
        for slot in self.slots.values() {
            let lineup = slot.lineup();
            let Some(canary) = &lineup.canary else {
                continue;
            };
            let config = &self.canary;
            let since = canary.started_at_ms / 1000;
            let theirs = canary.version.totals(config.window_s, since);
            let ours = lineup.active.totals(config.window_s, since);
            if let Some(reason) = judge(&theirs, &ours, config) {
                let _change = self.changes.lock().await;
                // Still the same canary: an operator may have changed it meanwhile.
                if slot
                    .lineup()
                    .canary
                    .as_ref()
                    .is_some_and(|c| c.version.id == canary.version.id)
                {
                    self.end_canary(slot, "rolled-back", &reason);
                    rolled_back.push(slot.name.clone());
                }
            }
        }
        rolled_back
    }

    /// Judges canaries every `every` until `stop` is set.
    pub async fn watch_canaries(
        self: Arc<Self>,
        every: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => return,
            }
            self.judge_canaries().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(ok: u64, errors: u64) -> Bucket {
        Bucket {
            ok,
            errors,
            ..Bucket::default()
        }
    }

    const CONFIG: CanaryConfig = CanaryConfig {
        margin_percent: 5,
        min_calls: 20,
        window_s: 60,
    };

    #[test]
    fn a_canary_worse_than_the_margin_is_rolled_back_with_the_figures() {
        let reason = judge(&answers(18, 2), &answers(100, 0), &CONFIG);
        // 10 % against 0 % is past a 5-point margin.
        assert!(
            reason
                .as_deref()
                .is_some_and(|r| r.contains("10.0 % of 20")),
            "{reason:?}"
        );
    }

    #[test]
    fn a_canary_within_the_margin_or_with_too_few_answers_stays() {
        assert_eq!(
            judge(&answers(96, 4), &answers(100, 0), &CONFIG),
            None,
            "4 points"
        );
        assert_eq!(
            judge(&answers(90, 10), &answers(90, 10), &CONFIG),
            None,
            "as bad as the active version"
        );
        assert_eq!(
            judge(&answers(0, 19), &answers(100, 0), &CONFIG),
            None,
            "19 answers are too few to judge"
        );
    }
}
