//! The precompiled-artifact cache with real components: a fresh runtime loads a plugin from its
//! artifact and the plugin works; a tampered, untagged or foreign-keyed artifact is rejected,
//! compiled again and rewritten, and the load still succeeds.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard::contract::Outcome;
use switchboard::plugin::artifacts::{ArtifactCache, ArtifactStats};
use switchboard::plugin::{LoadedPlugin, PluginRuntime};
use switchboard_integration_tests::{
    FcmFixture, LoadOptions, delivery, guest_path, load, plugin_path,
};

/// A cache directory and a key file beside it (not inside), in a fresh temporary directory.
struct Dirs {
    _tmp: tempfile::TempDir,
    cache: PathBuf,
    key: PathBuf,
}

fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().unwrap();
    Dirs {
        cache: tmp.path().join("artifacts"),
        key: tmp.path().join("artifact-key"),
        _tmp: tmp,
    }
}

impl Dirs {
    fn open(&self) -> Arc<ArtifactCache> {
        Arc::new(ArtifactCache::open(&self.cache, &self.key).unwrap())
    }
}

/// A runtime (with its own engine) that loads through `cache`, sized as the other tests' are.
fn runtime(cache: &Arc<ArtifactCache>) -> PluginRuntime {
    PluginRuntime::new(&Default::default(), 64 << 20)
        .unwrap()
        .with_artifact_cache(cache.clone())
}

/// The one artifact in `dir`.
fn the_artifact(dir: &Path) -> PathBuf {
    let artifacts: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(artifacts.len(), 1, "{artifacts:?}");
    artifacts.into_iter().next().unwrap()
}

fn stats(hits: u64, misses: u64, rejected: u64) -> ArtifactStats {
    ArtifactStats {
        hits,
        misses,
        rejected,
        write_failures: 0,
    }
}

async fn timed_load(
    rt: &PluginRuntime,
    name: &str,
    path: &Path,
    options: LoadOptions,
) -> (LoadedPlugin, Duration) {
    let started = Instant::now();
    let plugin = load(rt, name, path, options).await.unwrap();
    (plugin, started.elapsed())
}

async fn misbehave(cache: &Arc<ArtifactCache>) -> LoadedPlugin {
    load(
        &runtime(cache),
        "misbehave",
        &guest_path("misbehave"),
        Default::default(),
    )
    .await
    .unwrap()
}

async fn delivers(plugin: &LoadedPlugin) {
    let outcomes = plugin
        .deliver(&[delivery("k/0", "ok", "{}")])
        .await
        .unwrap();
    assert!(
        matches!(&outcomes[0], Outcome::Delivered(id) if id == "ok-k/0"),
        "{outcomes:?}"
    );
}

#[tokio::test]
async fn a_fresh_runtime_loads_fcm_from_its_artifact_and_it_delivers() {
    let fixture = FcmFixture::start(|_| {}).await;
    let dirs = dirs();
    let fcm = plugin_path("fcm");

    let uncached = PluginRuntime::new(&Default::default(), 64 << 20).unwrap();
    let (_, compile) = timed_load(&uncached, "fcm", &fcm, fixture.load_options()).await;

    let first = dirs.open();
    let (compiled, miss) = timed_load(&runtime(&first), "fcm", &fcm, fixture.load_options()).await;
    assert_eq!(first.stats(), stats(0, 1, 0));
    let artifact = the_artifact(&dirs.cache);
    assert!(ArtifactCache::tag_path(&artifact).is_file());

    // A new cache and runtime over the same directory and key: as after a restart.
    let second = dirs.open();
    let (loaded, hit) = timed_load(&runtime(&second), "fcm", &fcm, fixture.load_options()).await;
    assert_eq!(second.stats(), stats(1, 0, 0));
    assert_eq!(format!("{:?}", loaded.info), format!("{:?}", compiled.info));

    let outcomes = loaded
        .deliver(&[delivery("k/0", "device-1", r#"{"title":"t","body":"b"}"#)])
        .await
        .unwrap();
    assert!(
        matches!(&outcomes[0], Outcome::Delivered(_)),
        "{outcomes:?}"
    );
    assert_eq!(fixture.sim.stats.snapshot().delivered, 1);

    let size = std::fs::metadata(&artifact).unwrap().len();
    eprintln!(
        "fcm.wasm load (compile, describe, init): no cache {compile:?}, miss {miss:?}, hit {hit:?}; artifact {} KiB",
        size / 1024
    );
    assert!(hit < miss, "hit {hit:?} is not faster than miss {miss:?}");
}

#[tokio::test]
async fn a_tampered_artifact_is_rejected_recompiled_and_rewritten() {
    let dirs = dirs();
    let first = dirs.open();
    delivers(&misbehave(&first).await).await;
    let artifact = the_artifact(&dirs.cache);
    let good = std::fs::read(&artifact).unwrap();
    let mut bad = good.clone();
    let middle = bad.len() / 2;
    bad[middle] ^= 0x20;
    std::fs::write(&artifact, &bad).unwrap();

    let second = dirs.open();
    delivers(&misbehave(&second).await).await;
    assert_eq!(second.stats(), stats(0, 1, 1));
    assert_eq!(std::fs::read(&artifact).unwrap(), good, "rewritten");

    // The rewritten artifact carries a valid tag: the next fresh runtime hits.
    let third = dirs.open();
    delivers(&misbehave(&third).await).await;
    assert_eq!(third.stats(), stats(1, 0, 0));
}

#[tokio::test]
async fn an_artifact_without_its_tag_is_rejected_and_rewritten() {
    let dirs = dirs();
    misbehave(&dirs.open()).await;
    let tag = ArtifactCache::tag_path(&the_artifact(&dirs.cache));
    std::fs::remove_file(&tag).unwrap();

    let second = dirs.open();
    delivers(&misbehave(&second).await).await;
    assert_eq!(second.stats(), stats(0, 1, 1));
    assert!(tag.is_file());
    let third = dirs.open();
    misbehave(&third).await;
    assert_eq!(third.stats(), stats(1, 0, 0));
}

#[tokio::test]
async fn an_artifact_tagged_under_another_hosts_key_is_rejected() {
    let dirs = dirs();
    misbehave(&dirs.open()).await;
    let other_key = dirs.cache.with_file_name("other-artifact-key");
    let other = Arc::new(ArtifactCache::open(&dirs.cache, &other_key).unwrap());
    delivers(&misbehave(&other).await).await;
    assert_eq!(other.stats(), stats(0, 1, 1));
    // Now tagged under the other key, the first key's host rejects it in turn.
    let first_again = dirs.open();
    misbehave(&first_again).await;
    assert_eq!(first_again.stats(), stats(0, 1, 1));
}

#[tokio::test]
async fn different_components_get_different_artifacts() {
    let dirs = dirs();
    let cache = dirs.open();
    let rt = runtime(&cache);
    for name in ["misbehave", "extra_import"] {
        // extra_import does not fit the world; it is compiled (and cached) before that check.
        let _ = load(&rt, name, &guest_path(name), Default::default()).await;
    }
    for name in ["sms-twilio", "sms-nhn"] {
        let _ = load(&rt, name, &plugin_path(name), Default::default()).await;
    }
    let names: std::collections::BTreeSet<_> = std::fs::read_dir(&dirs.cache)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().ends_with(".cwasm"))
        .collect();
    assert_eq!(names.len(), 4, "{names:?}");
    assert_eq!(cache.stats(), stats(0, 4, 0));
}
