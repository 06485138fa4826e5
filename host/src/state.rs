//! The state directory: what operators change live and the host keeps across restarts (weights
//! set through the API, the active plugin versions and their component files). The config file
//! stays the baseline; these files override it.
//!
//! Every file is written whole to a temporary file beside it and renamed into place, so a crash
//! mid-write leaves the old file, never a torn one.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The weights changed through the API: channel → vendor → weight.
pub fn weights_file(state_dir: &Path) -> PathBuf {
    state_dir.join("weights.json")
}

/// The active version of each plugin: name → version id.
pub fn plugins_file(state_dir: &Path) -> PathBuf {
    state_dir.join("plugins.json")
}

/// Where the component files of a plugin's versions are kept, by version id.
pub fn versions_dir(state_dir: &Path, plugin: &str) -> PathBuf {
    state_dir.join("plugins").join(plugin)
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename), creating the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_the_whole_file() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("a/b/weights.json");
        write_atomically(&path, b"first, and longer")?;
        write_atomically(&path, b"second")?;
        assert_eq!(std::fs::read(&path)?, b"second");
        Ok(())
    }
}
