//! The embedded dedup store: 64-bit fingerprints in time buckets, in memory, with every mark
//! appended to the bucket's file before it is acknowledged.
//!
//! Why this shape: a per-key string in Redis cost a large platform 272 bytes. A fingerprint is 8
//! bytes, and a hash set of them costs about 9 bytes per slot. Buckets expire whole, so there is
//! no per-key TTL to store. At hashbrown's load factors that is 10–20 bytes per key resident.
//! `switchboard-lab dedup` measures it.
//!
//! Durability: a mark is written to the bucket's file with one `write` before `mark` returns. A
//! kill -9 of the host cannot lose it, since the data is in the kernel then. Losing power can lose
//! what was not yet synced; the store syncs when it rotates a bucket and on `flush`.
//!
//! Alignment: a bucket file is a run of fixed-size records. A crash or a failed write mid-record
//! leaves a torn tail; it is cut off when the file is loaded and before it is appended to, since
//! marks appended after it would be read shifted — lost, with garbage fingerprints in their place.

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::DedupError;

/// One mark on disk: a fingerprint, little-endian.
const RECORD_BYTES: u64 = 8;

/// Buckets per retention window: lookups probe this many sets, and expiry frees memory in
/// steps of retention / BUCKETS.
const BUCKETS: u64 = 8;

/// The fingerprints are already uniformly distributed hashes, so hashing them again would only
/// cost time: this hasher passes the value through. Written by hand because it is four lines.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type FingerprintSet = HashSet<u64, BuildHasherDefault<PassThrough>>;

struct Bucket {
    keys: FingerprintSet,
    file: Option<File>,
}

struct Buckets {
    /// Bucket start (unix seconds) → bucket.
    by_start: BTreeMap<u64, Bucket>,
}

/// A compact, persistent set of delivery fingerprints with a retention window.
pub struct EmbeddedDedup {
    dir: PathBuf,
    retention: Duration,
    width_s: u64,
    buckets: RwLock<Buckets>,
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl EmbeddedDedup {
    /// Opens (or creates) the store in `dir`, loading the buckets still inside `retention` and
    /// deleting older ones.
    pub fn open(dir: &Path, retention: Duration) -> Result<Self, DedupError> {
        std::fs::create_dir_all(dir).map_err(|e| DedupError::io(dir, e))?;
        let width_s = (retention.as_secs() / BUCKETS).max(60);
        let store = Self {
            dir: dir.to_path_buf(),
            retention,
            width_s,
            buckets: RwLock::new(Buckets {
                by_start: BTreeMap::new(),
            }),
        };
        let oldest_kept = store.oldest_live_start(now_s());
        let mut by_start = BTreeMap::new();
        let entries = std::fs::read_dir(dir).map_err(|e| DedupError::io(dir, e))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(start) = bucket_start_of(&path) else {
                continue;
            };
            if start < oldest_kept {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let keys = load_bucket(&path)?;
            by_start.insert(start, Bucket { keys, file: None });
        }
        store
            .buckets
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .by_start = by_start;
        Ok(store)
    }

    fn oldest_live_start(&self, now: u64) -> u64 {
        now.saturating_sub(self.retention.as_secs() + self.width_s)
    }

    fn bucket_path(&self, start: u64) -> PathBuf {
        self.dir.join(format!("bucket-{start}.log"))
    }

    /// Which of `fingerprints` were marked within the retention window.
    pub fn seen(&self, fingerprints: &[u64]) -> Vec<bool> {
        let buckets = self.buckets.read().unwrap_or_else(|p| p.into_inner());
        fingerprints
            .iter()
            .map(|f| buckets.by_start.values().any(|b| b.keys.contains(f)))
            .collect()
    }

    /// Marks `fingerprints` as done. Returns once they are written to the bucket file.
    pub fn mark(&self, fingerprints: &[u64]) -> Result<(), DedupError> {
        self.mark_at(fingerprints, now_s())
    }

    fn mark_at(&self, fingerprints: &[u64], now: u64) -> Result<(), DedupError> {
        let start = now - now % self.width_s;
        let mut buckets = self.buckets.write().unwrap_or_else(|p| p.into_inner());
        self.expire(&mut buckets, now);
        let mut fresh: Vec<u64> = fingerprints
            .iter()
            .copied()
            .filter(|f| !buckets.by_start.values().any(|b| b.keys.contains(f)))
            .collect();
        fresh.sort_unstable();
        fresh.dedup();
        if fresh.is_empty() {
            return Ok(());
        }
        let path = self.bucket_path(start);
        let bucket = buckets.by_start.entry(start).or_insert_with(|| Bucket {
            keys: FingerprintSet::default(),
            file: None,
        });
        if bucket.file.is_none() {
            bucket.file = Some(open_for_append(&path)?);
        }
        let mut record = Vec::with_capacity(fresh.len() * RECORD_BYTES as usize);
        for f in &fresh {
            record.extend_from_slice(&f.to_le_bytes());
        }
        if let Some(file) = bucket.file.as_mut()
            && let Err(e) = file.write_all(&record)
        {
            // The write may have stopped mid-record: reopen before the next append, which cuts
            // the torn tail off.
            bucket.file = None;
            return Err(DedupError::io(&path, e));
        }
        bucket.keys.extend(fresh);
        Ok(())
    }

    /// Drops buckets older than the retention window, and closes (after syncing) the files of
    /// buckets no longer written.
    fn expire(&self, buckets: &mut Buckets, now: u64) {
        let oldest_kept = self.oldest_live_start(now);
        let current = now - now % self.width_s;
        let expired: Vec<u64> = buckets
            .by_start
            .range(..oldest_kept)
            .map(|(start, _)| *start)
            .collect();
        for start in expired {
            buckets.by_start.remove(&start);
            let _ = std::fs::remove_file(self.bucket_path(start));
        }
        for (start, bucket) in buckets.by_start.range_mut(..current) {
            if let Some(file) = bucket.file.take()
                && let Err(e) = file.sync_data()
            {
                tracing::warn!(bucket = start, error = %e, "dedup bucket sync failed");
            }
        }
    }

    /// Syncs the open bucket files to disk.
    pub fn flush(&self) -> Result<(), DedupError> {
        let buckets = self.buckets.read().unwrap_or_else(|p| p.into_inner());
        for (start, bucket) in &buckets.by_start {
            if let Some(file) = &bucket.file {
                file.sync_data()
                    .map_err(|e| DedupError::io(&self.bucket_path(*start), e))?;
            }
        }
        Ok(())
    }

    /// Fingerprints held, over all buckets.
    pub fn len(&self) -> usize {
        let buckets = self.buckets.read().unwrap_or_else(|p| p.into_inner());
        buckets.by_start.values().map(|b| b.keys.len()).sum()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn bucket_start_of(path: &Path) -> Option<u64> {
    path.file_name()?
        .to_str()?
        .strip_prefix("bucket-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

/// Opens a bucket file for appending, on a record boundary.
fn open_for_append(path: &Path) -> Result<File, DedupError> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| DedupError::io(path, e))?;
    let len = file.metadata().map_err(|e| DedupError::io(path, e))?.len();
    cut_torn_tail(&file, path, len)?;
    Ok(file)
}

/// Truncates `file` (of `len` bytes) to its last whole record. The torn record was never
/// acknowledged (a mark returns only after its whole write), so nothing done is forgotten.
fn cut_torn_tail(file: &File, path: &Path, len: u64) -> Result<(), DedupError> {
    let torn = len % RECORD_BYTES;
    if torn == 0 {
        return Ok(());
    }
    file.set_len(len - torn)
        .map_err(|e| DedupError::io(path, e))?;
    tracing::warn!(
        event = "dedup_torn_record_cut",
        path = %path.display(),
        torn_bytes = torn,
        kept_bytes = len - torn,
        "dedup bucket file ended in a partial record (a crash mid-write); cut it off"
    );
    Ok(())
}

fn load_bucket(path: &Path) -> Result<FingerprintSet, DedupError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| DedupError::io(path, e))?;
    if !(bytes.len() as u64).is_multiple_of(RECORD_BYTES) {
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| DedupError::io(path, e))?;
        cut_torn_tail(&file, path, bytes.len() as u64)?;
    }
    let mut keys = FingerprintSet::default();
    keys.reserve(bytes.len() / RECORD_BYTES as usize);
    for chunk in bytes.chunks_exact(RECORD_BYTES as usize) {
        let mut raw = [0u8; 8];
        raw.copy_from_slice(chunk);
        keys.insert(u64::from_le_bytes(raw));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_survive_reopening_and_partial_records_are_ignored() -> Result<(), DedupError> {
        let dir = tempfile::tempdir().map_err(|e| DedupError::io(Path::new("tmp"), e))?;
        let store = EmbeddedDedup::open(dir.path(), Duration::from_secs(3600))?;
        store.mark(&[1, 2, 3])?;
        assert_eq!(store.seen(&[1, 4, 3]), vec![true, false, true]);
        drop(store);
        // A torn write: half a record at the end of a bucket file.
        let file = std::fs::read_dir(dir.path())
            .map_err(|e| DedupError::io(dir.path(), e))?
            .flatten()
            .next()
            .map(|e| e.path())
            .unwrap_or_default();
        OpenOptions::new()
            .append(true)
            .open(&file)
            .and_then(|mut f| f.write_all(&[9, 9, 9]))
            .map_err(|e| DedupError::io(&file, e))?;
        let reopened = EmbeddedDedup::open(dir.path(), Duration::from_secs(3600))?;
        assert_eq!(reopened.seen(&[1, 2, 3, 4]), vec![true, true, true, false]);
        assert_eq!(reopened.len(), 3);
        Ok(())
    }

    #[test]
    fn marks_after_a_torn_record_stay_aligned_across_restarts() -> Result<(), DedupError> {
        let dir = tempfile::tempdir().map_err(|e| DedupError::io(Path::new("tmp"), e))?;
        let retention = Duration::from_secs(3600);
        // One fixed time, so every mark lands in the same bucket file.
        let now = now_s();
        let before: Vec<u64> = (1..=5).map(|i| i * 0x0101_0101_0101_0101).collect();
        let after: Vec<u64> = (6..=9).map(|i| i * 0x0101_0101_0101_0101).collect();
        let store = EmbeddedDedup::open(dir.path(), retention)?;
        store.mark_at(&before, now)?;
        drop(store);
        let file = std::fs::read_dir(dir.path())
            .map_err(|e| DedupError::io(dir.path(), e))?
            .flatten()
            .map(|e| e.path())
            .find(|p| bucket_start_of(p).is_some())
            .unwrap_or_default();
        OpenOptions::new()
            .append(true)
            .open(&file)
            .and_then(|mut f| f.write_all(&[0xAB, 0xCD, 0xEF]))
            .map_err(|e| DedupError::io(&file, e))?;

        let reopened = EmbeddedDedup::open(dir.path(), retention)?;
        reopened.mark_at(&after, now)?;
        drop(reopened);
        let again = EmbeddedDedup::open(dir.path(), retention)?;
        let all: Vec<u64> = before.iter().chain(&after).copied().collect();
        assert_eq!(again.seen(&all), vec![true; all.len()], "a mark was lost");
        assert_eq!(again.len(), all.len(), "a spurious mark was loaded");
        let size = std::fs::metadata(&file)
            .map_err(|e| DedupError::io(&file, e))?
            .len();
        assert_eq!(
            size,
            8 * all.len() as u64,
            "the file holds whole records only"
        );
        Ok(())
    }

    #[test]
    fn buckets_expire_whole_after_the_retention() -> Result<(), DedupError> {
        let dir = tempfile::tempdir().map_err(|e| DedupError::io(Path::new("tmp"), e))?;
        let store = EmbeddedDedup::open(dir.path(), Duration::from_secs(800))?;
        let t0 = 1_000_000;
        store.mark_at(&[7], t0)?;
        store.mark_at(&[8], t0 + 500)?;
        assert_eq!(store.seen(&[7, 8]), vec![true, true]);
        // Past retention + one bucket width for the first mark, not for the second.
        store.mark_at(&[9], t0 + 800 + 100 + 60)?;
        assert_eq!(store.seen(&[7, 8, 9]), vec![false, true, true]);
        Ok(())
    }

    #[test]
    fn marking_twice_stores_once() -> Result<(), DedupError> {
        let dir = tempfile::tempdir().map_err(|e| DedupError::io(Path::new("tmp"), e))?;
        let store = EmbeddedDedup::open(dir.path(), Duration::from_secs(3600))?;
        store.mark(&[5, 5, 6])?;
        store.mark(&[5])?;
        assert_eq!(store.len(), 2);
        Ok(())
    }
}
