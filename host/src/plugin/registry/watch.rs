//! The watched directory: a component dropped into `admin.watch_dir` as `NAME.wasm` or
//! `NAME@anything.wasm` becomes the active version of plugin NAME, once its size and
//! modification time held still for one poll.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{Registry, VersionSource};

impl Registry {
    /// Polls `dir` every `every` for new versions until `stop` is set: `NAME.wasm` or
    /// `NAME@anything.wasm` is activated as plugin NAME once its size and modification time
    /// held still for one poll. Each file is tried once per change.
    pub async fn watch_dir(
        self: Arc<Self>,
        dir: PathBuf,
        every: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        // Polling, not inotify: it behaves the same on every filesystem (network mounts and
        // container volumes included), and a second's delay is nothing for a release.
        let mut seen: BTreeMap<PathBuf, (u64, std::time::SystemTime, bool)> = BTreeMap::new();
        loop {
            for (path, name, size, modified) in wasm_files(&dir) {
                let entry = seen.entry(path.clone()).or_insert((size, modified, false));
                if (entry.0, entry.1) != (size, modified) {
                    *entry = (size, modified, false);
                    continue;
                }
                if entry.2 {
                    continue;
                }
                entry.2 = true;
                match std::fs::read(&path) {
                    Ok(bytes) => {
                        if let Ok(version) =
                            self.upload(&name, &bytes, VersionSource::Watched).await
                        {
                            tracing::info!(plugin = %name, id = %version.id, file = %path.display(), "version from the watched directory is active");
                        }
                    }
                    Err(error) => {
                        tracing::warn!(file = %path.display(), %error, "cannot read a watched plugin file");
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

/// The `.wasm` files in `dir`: (path, plugin name, size, modified).
fn wasm_files(dir: &Path) -> Vec<(PathBuf, String, u64, std::time::SystemTime)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let path = entry.path();
            if path.extension()? != "wasm" {
                return None;
            }
            let stem = path.file_stem()?.to_str()?;
            let name = stem.split('@').next()?.to_string();
            let meta = entry.metadata().ok()?;
            Some((path, name, meta.len(), meta.modified().ok()?))
        })
        .collect()
}
