//! The bundled FCM adapter with a bug on purpose: 30 % of deliveries (chosen by a hash of the
//! idempotency key, so the same ones every time) fail with `retry` before reaching the vendor;
//! the rest are delivered by the real adapter. The canary lab and tests run it as a new version
//! of `fcm` and expect the host to roll it back.

use std::hash::{Hash, Hasher};

use fcm::Fcm;
use switchboard_sdk::{Adapter, Config, Delivery, Outcome, PluginInfo};

/// The share of deliveries that fail, in percent.
const FAILING_PERCENT: u64 = 30;

struct FlakyFcm(Fcm);

fn fails(key: &str) -> bool {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish() % 100 < FAILING_PERCENT
}

impl Adapter for FlakyFcm {
    fn describe() -> PluginInfo {
        let fcm = Fcm::describe();
        PluginInfo {
            version: format!("{}-flaky", fcm.version),
            ..fcm
        }
    }

    fn init(config: Config) -> Result<Self, String> {
        Fcm::init(config).map(FlakyFcm)
    }

    fn deliver(&self, batch: Vec<Delivery>) -> Vec<Outcome> {
        let (failing, passing): (Vec<_>, Vec<_>) =
            batch.iter().enumerate().partition(|(_, d)| fails(&d.key));
        let mut outcomes: Vec<Option<Outcome>> = vec![None; batch.len()];
        for (i, _) in failing {
            outcomes[i] = Some(Outcome::retry("flaky canary: injected failure", None));
        }
        let indexes: Vec<usize> = passing.iter().map(|(i, _)| *i).collect();
        let delivered = self
            .0
            .deliver(passing.into_iter().map(|(_, d)| d.clone()).collect());
        for (i, outcome) in indexes.into_iter().zip(delivered) {
            outcomes[i] = Some(outcome);
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::retry("no outcome", None)))
            .collect()
    }
}

switchboard_sdk::export_adapter!(FlakyFcm);
