//! Precompiled plugin artifacts on disk, so that loading a component the host has compiled before
//! deserializes its machine code in milliseconds instead of running Cranelift again (a tenth of a
//! second for the bundled plugins, seconds for large components).
//!
//! Owns the cache directory's layout (one `.cwasm` artifact and one `.cwasm.tag` per component
//! and engine), the host's artifact key file, and the one `unsafe` load of the host. An artifact
//! is named by the component's SHA-256, the wasmtime version and the engine's compatibility hash.
//! The directory is not trusted: every artifact is written with an HMAC-SHA256 tag under a key
//! that lives outside it, and bytes whose tag does not verify are deleted and compiled again,
//! never loaded. See docs/ARCHITECTURE.md, "Precompiled artifacts".

use std::hash::{Hash, Hasher};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::telemetry::events::{ArtifactRejected, ArtifactWriteFailed};

/// The wasmtime release the host links. wasmtime exports no version constant; the workspace
/// pins it with `=`, and a test checks this against Cargo.lock.
pub const WASMTIME_VERSION: &str = "48.0.8";

const KEY_BYTES: usize = 32;
/// Binds a tag to this one use of the key, and to the artifact's name (see [`ArtifactCache::mac`]).
const TAG_DOMAIN: &[u8] = b"switchboard precompiled component artifact v1\0";

type HmacSha256 = Hmac<Sha256>;

/// What the cache did so far, for tests, the lab and the start-up log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArtifactStats {
    /// Loads served from an artifact whose tag verified.
    pub hits: u64,
    /// Loads that compiled the component: no artifact yet, or a rejected one.
    pub misses: u64,
    /// Artifacts refused (tag missing or wrong, unreadable, or refused by wasmtime) and deleted.
    /// Each is also a miss.
    pub rejected: u64,
    /// Artifacts that could not be written. The load itself succeeded.
    pub write_failures: u64,
}

/// Compiled components on disk, authenticated with the host's key. Shared by every load of a
/// [`super::PluginRuntime`], and by several runtimes (each with its own engine) if need be.
pub struct ArtifactCache {
    dir: PathBuf,
    /// Keyed with the host's secret; cloned for each tag, so the key bytes are not kept apart.
    mac: HmacSha256,
    hits: AtomicU64,
    misses: AtomicU64,
    rejected: AtomicU64,
    write_failures: AtomicU64,
}

impl std::fmt::Debug for ArtifactCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactCache")
            .field("dir", &self.dir)
            .field("key", &"<secret>")
            .field("stats", &self.stats())
            .finish()
    }
}

/// Artifact bytes whose tag verified under the host key. Only [`ArtifactCache::read_verified`]
/// makes one, so no other bytes can reach [`load_verified`].
struct Verified(Vec<u8>);

impl ArtifactCache {
    /// A cache over `dir`, with tags under the key in `key_file`. The key is made (32 random
    /// bytes, mode 0600) when the file does not exist yet. The directory is made when the first
    /// artifact is written.
    ///
    /// Refuses a key file inside `dir` (whoever may write artifacts would then hold the key), a
    /// key file group or others may read or write, and one that does not hold 32 bytes.
    pub fn open(dir: &Path, key_file: &Path) -> anyhow::Result<Self> {
        let absolute =
            |p: &Path| std::path::absolute(p).with_context(|| format!("resolving {}", p.display()));
        if absolute(key_file)?.starts_with(absolute(dir)?) {
            anyhow::bail!(
                "artifact key file {} is inside the artifact cache directory {}; it must live outside it",
                key_file.display(),
                dir.display()
            );
        }
        let key = match read_key(key_file)? {
            Some(key) => key,
            None => create_key(key_file)?,
        };
        let mac = HmacSha256::new_from_slice(&key).context("keying the artifact HMAC")?;
        Ok(Self {
            dir: dir.to_path_buf(),
            mac,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            write_failures: AtomicU64::new(0),
        })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Hits, misses, rejections and failed writes so far.
    pub fn stats(&self) -> ArtifactStats {
        ArtifactStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            write_failures: self.write_failures.load(Ordering::Relaxed),
        }
    }

    /// The artifact file that `component` compiled by `engine` is kept in. Its tag is in
    /// [`ArtifactCache::tag_path`] of it.
    pub fn artifact_path(&self, engine: &Engine, component: &[u8]) -> PathBuf {
        self.dir
            .join(format!("{}.cwasm", artifact_name(engine, component)))
    }

    /// The tag file of the artifact at `artifact`.
    pub fn tag_path(artifact: &Path) -> PathBuf {
        let mut name = artifact.as_os_str().to_owned();
        name.push(".tag");
        PathBuf::from(name)
    }

    /// The component for `bytes` on `engine`: from its artifact when one is there and its tag
    /// verifies, else compiled (and its artifact written, or the failure logged). `plugin` only
    /// names the plugin in log events. CPU and file work of up to seconds: call it off the async
    /// workers. Fails only when the bytes do not compile.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        plugin: &str,
        bytes: &[u8],
    ) -> anyhow::Result<Component> {
        let name = artifact_name(engine, bytes);
        let artifact = self.dir.join(format!("{name}.cwasm"));
        let tag = Self::tag_path(&artifact);
        match self.read_verified(&name, &artifact, &tag) {
            Ok(None) => {}
            Ok(Some(verified)) => match load_verified(engine, verified) {
                Ok(component) => {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(plugin, path = %artifact.display(), "loaded precompiled artifact");
                    return Ok(component);
                }
                Err(e) => self.reject(plugin, &artifact, &tag, &format!("wasmtime: {e:#}")),
            },
            Err(reason) => self.reject(plugin, &artifact, &tag, &reason),
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let component = Component::new(engine, bytes)?;
        // `serialize` copies the image compiled just now; it does not compile a second time.
        let written = component
            .serialize()
            .map_err(anyhow::Error::from)
            .and_then(|image| self.write(&name, &artifact, &tag, &image));
        if let Err(error) = written {
            self.write_failures.fetch_add(1, Ordering::Relaxed);
            ArtifactWriteFailed {
                plugin,
                path: &artifact,
                error: &error,
            }
            .emit();
        }
        Ok(component)
    }

    /// The artifact's bytes, if it exists and its tag verifies; `None` when there is no
    /// artifact; the reason when there is one that must not be loaded.
    fn read_verified(
        &self,
        name: &str,
        artifact: &Path,
        tag: &Path,
    ) -> Result<Option<Verified>, String> {
        let bytes = match std::fs::read(artifact) {
            Ok(bytes) => bytes,
            // No artifact: also when the cache directory is not a directory (the write says so).
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(format!("cannot read the artifact: {e}")),
        };
        let tag = match std::fs::read(tag) {
            Ok(tag) => tag,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err("the artifact has no tag file".into());
            }
            Err(e) => return Err(format!("cannot read the tag: {e}")),
        };
        // Constant time, and a tag of the wrong length fails too.
        self.mac(name, &bytes)
            .verify_slice(&tag)
            .map_err(|_| "the tag does not match the artifact under this host's key".to_string())?;
        Ok(Some(Verified(bytes)))
    }

    /// The MAC over an artifact's name and bytes. The name holds the component's SHA-256, so a
    /// valid artifact of one component copied over another's name does not verify.
    fn mac(&self, name: &str, bytes: &[u8]) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(TAG_DOMAIN);
        mac.update(name.as_bytes());
        mac.update(b"\0");
        mac.update(bytes);
        mac
    }

    /// Counts and logs a refused artifact and deletes it with its tag, so the compile that
    /// follows writes them fresh.
    fn reject(&self, plugin: &str, artifact: &Path, tag: &Path, reason: &str) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        ArtifactRejected {
            plugin,
            path: artifact,
            reason,
        }
        .emit();
        // Either may be gone already, or the directory read-only: the rewrite then fails and
        // says so, and every later load is a rejection and a compile, never a load of bad bytes.
        let _ = std::fs::remove_file(artifact);
        let _ = std::fs::remove_file(tag);
    }

    /// Writes the artifact, then its tag, each whole or not at all.
    fn write(&self, name: &str, artifact: &Path, tag: &Path, image: &[u8]) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let tag_bytes = self.mac(name, image).finalize().into_bytes();
        write_atomically(artifact, image)?;
        write_atomically(tag, &tag_bytes)
    }
}

/// Loads verified artifact bytes as machine code: the host's one `unsafe` call.
#[allow(unsafe_code)]
fn load_verified(engine: &Engine, artifact: Verified) -> wasmtime::Result<Component> {
    // SAFETY: `Component::deserialize` maps the bytes as executable code, which is sound only
    // for bytes wasmtime itself produced for a compatible engine. These bytes were written by
    // `ArtifactCache::load_or_compile` from `Component::serialize` (the same image
    // `Engine::precompile_component` produces) of an engine whose `precompile_compatibility_hash`
    // and wasmtime version are part of the file name, and their HMAC-SHA256 tag, under a key
    // only this host holds (outside the cache directory), verified in `read_verified` before
    // this point. `Verified` can only be made there. The bytes are the ones verified, held in
    // memory, not the file, so a change to the file after the check cannot reach the loader.
    // wasmtime also checks the engine settings recorded in the artifact and refuses a mismatch.
    unsafe { Component::deserialize(engine, &artifact.0) }
}

/// `{component sha256}-{wasmtime version}-{compatibility hash}`: one name per component and
/// compatible engine configuration.
fn artifact_name(engine: &Engine, component: &[u8]) -> String {
    let mut compat = Sha256Hasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut compat);
    let compat = compat.0.finalize();
    format!(
        "{}-{WASMTIME_VERSION}-{}",
        hex(&Sha256::digest(component)),
        hex(&compat[..8])
    )
}

/// A `Hasher` that feeds SHA-256, so the engine's compatibility hash comes out the same in
/// every process (std's `DefaultHasher` promises that only within one build).
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_le_bytes(first)
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Reads the key at `path`: `None` when there is none yet.
fn read_key(path: &Path) -> anyhow::Result<Option<[u8; KEY_BYTES]>> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(e).with_context(|| format!("opening artifact key {}", path.display()));
        }
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = file
            .metadata()
            .with_context(|| format!("reading the mode of artifact key {}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            anyhow::bail!(
                "artifact key {} may be read or written by group or others (mode {:o}); `chmod 600` it",
                path.display(),
                mode & 0o777
            );
        }
    }
    let mut bytes = Vec::with_capacity(KEY_BYTES);
    file.read_to_end(&mut bytes)
        .with_context(|| format!("reading artifact key {}", path.display()))?;
    let key = <[u8; KEY_BYTES]>::try_from(bytes.as_slice()).map_err(|_| {
        anyhow::anyhow!(
            "artifact key {} holds {} bytes, not {KEY_BYTES}; delete it to have a new one made",
            path.display(),
            bytes.len()
        )
    })?;
    Ok(Some(key))
}

/// Makes a new random key at `path`, readable by the owner only. When another process made one
/// meanwhile, that one is used.
fn create_key(path: &Path) -> anyhow::Result<[u8; KEY_BYTES]> {
    let mut key = [0u8; KEY_BYTES];
    rand::rngs::OsRng
        .try_fill_bytes(&mut key)
        .context("drawing a random artifact key")?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let temp = temp_path(path);
    write_file(&temp, &key, Some(0o600))
        .with_context(|| format!("writing artifact key {}", temp.display()))?;
    // A hard link appears whole and fails if the name exists, so two hosts starting at once
    // never both make a key, nor read a half-written one.
    let linked = std::fs::hard_link(&temp, path);
    let _ = std::fs::remove_file(&temp);
    match linked {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_key(path)?
            .with_context(|| format!("artifact key {} vanished while made", path.display())),
        Err(e) => Err(e).with_context(|| format!("creating artifact key {}", path.display())),
    }
}

/// Writes `bytes` to a new file beside `path`, then renames it over `path`, so a reader sees
/// the old file or the new one, never a part. No fsync: a torn artifact after a crash fails its
/// tag and is compiled again.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let temp = temp_path(path);
    let written = write_file(&temp, bytes, None)
        .and_then(|()| std::fs::rename(&temp, path))
        .with_context(|| format!("writing {}", path.display()));
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

fn write_file(path: &Path, bytes: &[u8], mode: Option<u32>) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if let Some(mode) = mode {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    if mode.is_some() {
        // Only the key is synced: losing it would reject every artifact written under it.
        file.sync_all()?;
    }
    Ok(())
}

/// A hidden, unique name in the directory of `path`, so the rename stays on one file system.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(
        ".{name}.{}.{:016x}.tmp",
        std::process::id(),
        rand::random::<u64>()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest component: the preamble only. `label` adds a custom section, so each label
    /// is a different component that compiles in microseconds.
    fn component(label: &str) -> Vec<u8> {
        let mut bytes = vec![0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
        let mut section = vec![label.len() as u8];
        section.extend_from_slice(label.as_bytes());
        bytes.push(0); // custom section
        bytes.push(section.len() as u8);
        bytes.extend(section);
        bytes
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        cache_dir: PathBuf,
        key_file: PathBuf,
    }

    fn fixture() -> anyhow::Result<Fixture> {
        let dir = tempfile::tempdir()?;
        Ok(Fixture {
            cache_dir: dir.path().join("artifacts"),
            key_file: dir.path().join("secret/artifact-key"),
            _dir: dir,
        })
    }

    impl Fixture {
        fn open(&self) -> anyhow::Result<ArtifactCache> {
            ArtifactCache::open(&self.cache_dir, &self.key_file)
        }
    }

    fn stats(hits: u64, misses: u64, rejected: u64) -> ArtifactStats {
        ArtifactStats {
            hits,
            misses,
            rejected,
            write_failures: 0,
        }
    }

    #[test]
    fn a_miss_writes_an_artifact_and_a_fresh_engine_then_hits() -> anyhow::Result<()> {
        let f = fixture()?;
        let bytes = component("a");
        let first = f.open()?;
        first.load_or_compile(&Engine::default(), "p", &bytes)?;
        assert_eq!(first.stats(), stats(0, 1, 0));
        let artifact = first.artifact_path(&Engine::default(), &bytes);
        assert!(artifact.is_file() && ArtifactCache::tag_path(&artifact).is_file());
        assert_eq!(
            Engine::detect_precompiled(&std::fs::read(&artifact)?),
            Some(wasmtime::Precompiled::Component)
        );

        let second = f.open()?;
        second.load_or_compile(&Engine::default(), "p", &bytes)?;
        assert_eq!(second.stats(), stats(1, 0, 0));
        Ok(())
    }

    #[test]
    fn a_flipped_byte_is_rejected_deleted_and_rewritten() -> anyhow::Result<()> {
        let f = fixture()?;
        let (engine, bytes) = (Engine::default(), component("a"));
        let cache = f.open()?;
        cache.load_or_compile(&engine, "p", &bytes)?;
        let artifact = cache.artifact_path(&engine, &bytes);
        let good = std::fs::read(&artifact)?;
        let mut bad = good.clone();
        let middle = bad.len() / 2;
        bad[middle] ^= 0x01;
        std::fs::write(&artifact, &bad)?;

        cache.load_or_compile(&engine, "p", &bytes)?;
        assert_eq!(cache.stats(), stats(0, 2, 1));
        assert_eq!(std::fs::read(&artifact)?, good, "rewritten");
        cache.load_or_compile(&engine, "p", &bytes)?;
        assert_eq!(cache.stats(), stats(1, 2, 1), "the rewritten tag verifies");
        Ok(())
    }

    #[test]
    fn an_artifact_without_its_tag_is_rejected() -> anyhow::Result<()> {
        let f = fixture()?;
        let (engine, bytes) = (Engine::default(), component("a"));
        let cache = f.open()?;
        cache.load_or_compile(&engine, "p", &bytes)?;
        let artifact = cache.artifact_path(&engine, &bytes);
        std::fs::remove_file(ArtifactCache::tag_path(&artifact))?;
        cache.load_or_compile(&engine, "p", &bytes)?;
        assert_eq!(cache.stats(), stats(0, 2, 1));
        assert!(ArtifactCache::tag_path(&artifact).is_file());
        Ok(())
    }

    #[test]
    fn an_artifact_tagged_under_another_key_is_rejected() -> anyhow::Result<()> {
        let f = fixture()?;
        let (engine, bytes) = (Engine::default(), component("a"));
        f.open()?.load_or_compile(&engine, "p", &bytes)?;
        let other = ArtifactCache::open(&f.cache_dir, &f.cache_dir.with_file_name("other-key"))?;
        other.load_or_compile(&engine, "p", &bytes)?;
        assert_eq!(other.stats(), stats(0, 1, 1));
        Ok(())
    }

    #[test]
    fn a_valid_artifact_under_another_components_name_is_rejected() -> anyhow::Result<()> {
        let f = fixture()?;
        let engine = Engine::default();
        let (a, b) = (component("a"), component("b"));
        let cache = f.open()?;
        cache.load_or_compile(&engine, "a", &a)?;
        let (from, to) = (
            cache.artifact_path(&engine, &a),
            cache.artifact_path(&engine, &b),
        );
        assert_ne!(from, to);
        std::fs::copy(&from, &to)?;
        std::fs::copy(ArtifactCache::tag_path(&from), ArtifactCache::tag_path(&to))?;
        cache.load_or_compile(&engine, "b", &b)?;
        assert_eq!(cache.stats(), stats(0, 2, 1));
        Ok(())
    }

    #[test]
    fn names_differ_by_component_and_hold_version_and_compatibility() -> anyhow::Result<()> {
        let f = fixture()?;
        let cache = f.open()?;
        let engine = Engine::default();
        let names: std::collections::HashSet<_> = ["a", "b", "c", "ab"]
            .iter()
            .map(|l| cache.artifact_path(&engine, &component(l)))
            .collect();
        assert_eq!(names.len(), 4);
        let name = artifact_name(&engine, &component("a"));
        let parts: Vec<&str> = name.split('-').collect();
        assert_eq!(parts.len(), 3, "{name}");
        assert_eq!(parts[0], hex(&Sha256::digest(component("a"))));
        assert_eq!(parts[1], WASMTIME_VERSION);
        assert_eq!(parts[2].len(), 16);
        // Same settings, same name, in a fresh engine; other settings, another name.
        assert_eq!(name, artifact_name(&Engine::default(), &component("a")));
        let mut other = wasmtime::Config::new();
        other.epoch_interruption(true);
        let other = Engine::new(&other)?;
        assert_ne!(name, artifact_name(&other, &component("a")));
        Ok(())
    }

    #[test]
    fn a_failed_write_is_counted_and_the_load_still_succeeds() -> anyhow::Result<()> {
        let f = fixture()?;
        // A file where the directory should be: nothing can be written under it (even as root).
        std::fs::write(&f.cache_dir, b"")?;
        let cache = f.open()?;
        cache.load_or_compile(&Engine::default(), "p", &component("a"))?;
        assert_eq!(
            cache.stats(),
            ArtifactStats {
                misses: 1,
                write_failures: 1,
                ..Default::default()
            }
        );
        Ok(())
    }

    #[test]
    fn the_key_is_made_once_private_and_reused() -> anyhow::Result<()> {
        let f = fixture()?;
        f.open()?;
        let key = std::fs::read(&f.key_file)?;
        assert_eq!(key.len(), KEY_BYTES);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&f.key_file)?.permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        f.open()?;
        assert_eq!(std::fs::read(&f.key_file)?, key);
        let leftovers = std::fs::read_dir(f.key_file.parent().unwrap_or(Path::new(".")))?.count();
        assert_eq!(leftovers, 1, "no temporary file left");
        Ok(())
    }

    #[test]
    fn a_key_inside_the_cache_or_open_to_others_is_refused() -> anyhow::Result<()> {
        let f = fixture()?;
        let inside = ArtifactCache::open(&f.cache_dir, &f.cache_dir.join("key"));
        assert!(inside.is_err_and(|e| e.to_string().contains("outside")));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            f.open()?;
            std::fs::set_permissions(&f.key_file, std::fs::Permissions::from_mode(0o644))?;
            let open = f.open();
            assert!(open.is_err_and(|e| e.to_string().contains("chmod 600")));
        }
        std::fs::write(&f.key_file, b"short")?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&f.key_file, std::fs::Permissions::from_mode(0o600))?;
        }
        assert!(
            f.open()
                .is_err_and(|e| e.to_string().contains("holds 5 bytes"))
        );
        Ok(())
    }

    #[test]
    fn the_version_in_names_is_the_linked_wasmtime() -> anyhow::Result<()> {
        let lock =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock"))?;
        let pinned = lock
            .split("[[package]]")
            .find(|p| p.contains("\nname = \"wasmtime\"\n"))
            .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
            .map(|v| v.trim_matches('"').to_string());
        assert_eq!(pinned.as_deref(), Some(WASMTIME_VERSION));
        Ok(())
    }
}
