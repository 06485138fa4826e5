//! Placeholder while the sms-twilio adapter is written.

use switchboard_sdk::{Adapter, Config, Delivery, Outcome, PluginInfo, PluginInfoExt};

struct Placeholder;

impl Adapter for Placeholder {
    fn describe() -> PluginInfo {
        PluginInfo::new("sms-twilio", env!("CARGO_PKG_VERSION"), "placeholder")
    }

    fn init(_config: Config) -> Result<Self, String> {
        Ok(Placeholder)
    }

    fn deliver(&self, batch: Vec<Delivery>) -> Vec<Outcome> {
        batch.iter().map(|_| Outcome::retry("not written yet", None)).collect()
    }
}

switchboard_sdk::export_adapter!(Placeholder);
