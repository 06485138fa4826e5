//! What the registry keeps across a restart: each plugin's active version and the config
//! version it replaced (`plugins.json`), beside the component files of its versions.
//!
//! The config file stays the baseline: a kept version is restored only while the config's own
//! component is the one it replaced ([`KeptActive::restores_over`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::state;

/// Kept in `plugins.json`: a plugin's active version, and the config version it replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptActive {
    pub active: String,
    pub config: String,
}

impl KeptActive {
    /// Whether this kept version is restored over a config whose component has id
    /// `config_id`: only when the config is unchanged since, and the kept version is another.
    pub fn restores_over(&self, config_id: &str) -> bool {
        self.config == config_id && self.active != config_id
    }
}

/// Writes every plugin's kept active version, whole (a crash leaves the old file).
pub fn write(state_dir: &Path, actives: BTreeMap<String, KeptActive>) {
    let path = state::plugins_file(state_dir);
    let text = serde_json::to_vec_pretty(&actives).unwrap_or_default();
    if let Err(error) = state::write_atomically(&path, &text) {
        tracing::warn!(path = %path.display(), %error, "could not keep the active plugin versions");
    }
}

/// The kept active versions, by plugin; none when nothing was kept or the file is unreadable
/// (then the config's versions stand, and the reason is logged).
pub fn read(state_dir: &Path) -> BTreeMap<String, KeptActive> {
    let path = state::plugins_file(state_dir);
    let Ok(bytes) = std::fs::read(&path) else {
        return BTreeMap::new();
    };
    serde_json::from_slice(&bytes).unwrap_or_else(|error| {
        tracing::warn!(path = %path.display(), %error, "kept plugin versions unreadable; using the config's");
        BTreeMap::new()
    })
}

/// Where version `id` of `plugin`'s component is kept.
pub fn component_file(state_dir: &Path, plugin: &str, id: &str) -> PathBuf {
    state::versions_dir(state_dir, plugin).join(format!("{id}.wasm"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(active: &str, config: &str) -> KeptActive {
        KeptActive {
            active: active.into(),
            config: config.into(),
        }
    }

    #[test]
    fn kept_versions_come_back_as_they_were_written() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        assert!(read(dir.path()).is_empty(), "nothing kept yet");
        let actives = BTreeMap::from([
            ("fcm".to_string(), kept("b", "a")),
            ("apns".to_string(), kept("c", "c")),
        ]);
        write(dir.path(), actives.clone());
        assert_eq!(read(dir.path()), actives);
        Ok(())
    }

    #[test]
    fn an_unreadable_file_keeps_nothing() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::write(state::plugins_file(dir.path()), b"{not json")?;
        assert!(read(dir.path()).is_empty());
        Ok(())
    }

    #[test]
    fn a_kept_version_is_restored_only_over_the_config_it_replaced() {
        assert!(kept("b", "a").restores_over("a"));
        assert!(
            !kept("b", "a").restores_over("z"),
            "the config changed since: it wins"
        );
        assert!(
            !kept("a", "a").restores_over("a"),
            "the config's own version is active"
        );
    }
}
