//! What the control topic holds: one record per lever, keyed so that compaction keeps the latest
//! of each, and the component bytes of uploaded plugin versions, in chunks.
//!
//! Owns the keys, the record values and the reassembly of a component from its chunks, with the
//! SHA-256 check. Pure: never reads or writes Kafka, never touches the router or the registry.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

/// The most component bytes in one control record: well under the 1 MB a broker takes by
/// default (`message.max.bytes`), so no broker setting has to change for the control topic.
pub const CHUNK_BYTES: usize = 256 * 1024;

/// What a control record is about, from its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// `weights/{channel}`: the channel's weights in force, or the config file's.
    Weights(String),
    /// `plugin/{name}`: the plugin's active version and canary. No host writes a tombstone
    /// here, and one changes nothing.
    Plugin(String),
    /// `component/{plugin}/{id}/manifest`: how many chunks a version's component has, and its
    /// SHA-256. Written after the chunks.
    Manifest { plugin: String, id: String },
    /// `component/{plugin}/{id}/chunk/{index}`: a slice of a version's component bytes.
    Chunk {
        plugin: String,
        id: String,
        index: u32,
    },
}

impl Key {
    /// The key as written to the topic.
    pub fn render(&self) -> String {
        match self {
            Key::Weights(channel) => format!("weights/{channel}"),
            Key::Plugin(name) => format!("plugin/{name}"),
            Key::Manifest { plugin, id } => format!("component/{plugin}/{id}/manifest"),
            Key::Chunk { plugin, id, index } => format!("component/{plugin}/{id}/chunk/{index}"),
        }
    }

    /// The key a record was written with; `None` for a key no host writes.
    pub fn parse(key: &str) -> Option<Key> {
        if let Some(channel) = key.strip_prefix("weights/") {
            return (!channel.is_empty()).then(|| Key::Weights(channel.to_string()));
        }
        if let Some(name) = key.strip_prefix("plugin/") {
            return (!name.is_empty() && !name.contains('/'))
                .then(|| Key::Plugin(name.to_string()));
        }
        let parts: Vec<&str> = key.strip_prefix("component/")?.split('/').collect();
        match parts.as_slice() {
            [plugin, id, "manifest"] => Some(Key::Manifest {
                plugin: plugin.to_string(),
                id: id.to_string(),
            }),
            [plugin, id, "chunk", index] => Some(Key::Chunk {
                plugin: plugin.to_string(),
                id: id.to_string(),
                index: index.parse().ok()?,
            }),
            _ => None,
        }
    }
}

/// Who made a change and when, on every record a host writes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Origin {
    /// The host whose admin API took the change.
    pub host: String,
    pub at_ms: u64,
}

/// A channel's weights, whole: applying it twice, or after a restart, gives the same split.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WeightsDesire {
    /// `None`: each host's config file's weights. A reset is written as a record, not a
    /// tombstone, so compaction (which drops tombstones after `delete.retention.ms`) cannot
    /// lose it for a host that was away longer.
    pub weights: Option<BTreeMap<String, u32>>,
    pub origin: Origin,
}

/// A plugin's versions as operators want them on every host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PluginDesire {
    /// The version id every host makes active.
    pub active: String,
    pub canary: Option<CanaryDesire>,
    /// How a canary that this record ends ended (`rolled-back`, `promoted`), and why.
    #[serde(default)]
    pub ended: Option<CanaryEnded>,
    pub origin: Origin,
}

/// A canary: a version taking a share of the plugin's calls on every host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CanaryDesire {
    pub id: String,
    pub percent: u8,
}

/// Why a canary ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CanaryEnded {
    pub how: String,
    pub reason: String,
}

/// A version's component, as its chunks add up.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    /// The whole SHA-256 of the component, in hex; the version id is its first 16 digits.
    pub sha256: String,
    pub size: u64,
    pub chunks: u32,
    pub origin: Origin,
}

/// The SHA-256 of `bytes`, in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The records that carry `bytes` as version `id` of `plugin`: the chunks, then the manifest.
pub fn component_records(
    plugin: &str,
    id: &str,
    bytes: &[u8],
    origin: Origin,
) -> Vec<(String, Vec<u8>)> {
    let mut records: Vec<(String, Vec<u8>)> = bytes
        .chunks(CHUNK_BYTES)
        .enumerate()
        .map(|(index, chunk)| {
            let key = Key::Chunk {
                plugin: plugin.to_string(),
                id: id.to_string(),
                index: index as u32,
            };
            (key.render(), chunk.to_vec())
        })
        .collect();
    let manifest = Manifest {
        sha256: sha256_hex(bytes),
        size: bytes.len() as u64,
        chunks: records.len() as u32,
        origin,
    };
    let key = Key::Manifest {
        plugin: plugin.to_string(),
        id: id.to_string(),
    };
    records.push((
        key.render(),
        serde_json::to_vec(&manifest).unwrap_or_default(),
    ));
    records
}

/// Why a component could not be put back together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ComponentError {
    #[error("chunk {index} of {chunks} is missing from the control topic")]
    MissingChunk { index: u32, chunks: u32 },
    #[error("the chunks add up to {got} bytes, the manifest says {want}")]
    WrongSize { got: u64, want: u64 },
    #[error("SHA-256 {got} does not match the manifest's {want}; the version is not loaded")]
    WrongDigest { got: String, want: String },
    #[error("the SHA-256 {sha256} does not start with the version id {id}")]
    WrongId { sha256: String, id: String },
    #[error("no component of version {id} is on the control topic")]
    Unknown { id: String },
}

/// A plugin's name and a version id.
type Place = (String, String);

/// Component bytes read from the control topic: chunks until their manifest arrives, then the
/// whole, checked component by plugin and version id.
#[derive(Default)]
pub struct Components {
    chunks: HashMap<Place, BTreeMap<u32, Vec<u8>>>,
    whole: HashMap<Place, Result<Arc<[u8]>, ComponentError>>,
}

impl Components {
    /// Keeps a chunk until its manifest arrives.
    pub fn chunk(&mut self, plugin: &str, id: &str, index: u32, bytes: Vec<u8>) {
        self.chunks
            .entry((plugin.to_string(), id.to_string()))
            .or_default()
            .insert(index, bytes);
    }

    /// Puts a version's component together from its chunks and checks it against `manifest`.
    pub fn manifest(&mut self, plugin: &str, id: &str, manifest: &Manifest) {
        let place = (plugin.to_string(), id.to_string());
        let chunks = self.chunks.remove(&place).unwrap_or_default();
        let whole = assemble(id, chunks, manifest);
        self.whole.insert(place, whole);
    }

    /// Version `id` of `plugin`, if its component arrived whole and checked.
    pub fn get(&self, plugin: &str, id: &str) -> Result<Arc<[u8]>, ComponentError> {
        match self.whole.get(&(plugin.to_string(), id.to_string())) {
            Some(result) => result.clone(),
            None => Err(ComponentError::Unknown { id: id.to_string() }),
        }
    }

    /// Whether version `id` of `plugin` arrived whole and checked.
    pub fn has(&self, plugin: &str, id: &str) -> bool {
        self.get(plugin, id).is_ok()
    }
}

fn assemble(
    id: &str,
    mut chunks: BTreeMap<u32, Vec<u8>>,
    manifest: &Manifest,
) -> Result<Arc<[u8]>, ComponentError> {
    let mut bytes = Vec::with_capacity(manifest.size as usize);
    for index in 0..manifest.chunks {
        let chunk = chunks.remove(&index).ok_or(ComponentError::MissingChunk {
            index,
            chunks: manifest.chunks,
        })?;
        bytes.extend_from_slice(&chunk);
    }
    if bytes.len() as u64 != manifest.size {
        return Err(ComponentError::WrongSize {
            got: bytes.len() as u64,
            want: manifest.size,
        });
    }
    let sha256 = sha256_hex(&bytes);
    if sha256 != manifest.sha256 {
        return Err(ComponentError::WrongDigest {
            got: sha256,
            want: manifest.sha256.clone(),
        });
    }
    if !sha256.starts_with(id) {
        return Err(ComponentError::WrongId {
            sha256,
            id: id.to_string(),
        });
    }
    Ok(bytes.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Origin {
        Origin {
            host: "a".into(),
            at_ms: 1,
        }
    }

    fn read_back(records: &[(String, Vec<u8>)], components: &mut Components) {
        for (key, value) in records {
            match Key::parse(key) {
                Some(Key::Chunk { plugin, id, index }) => {
                    components.chunk(&plugin, &id, index, value.clone())
                }
                Some(Key::Manifest { plugin, id }) => {
                    let manifest: Manifest = serde_json::from_slice(value).unwrap_or_else(|e| {
                        panic!("manifest: {e}");
                    });
                    components.manifest(&plugin, &id, &manifest);
                }
                other => panic!("unexpected key {other:?}"),
            }
        }
    }

    #[test]
    fn keys_read_back_as_written() {
        for key in [
            Key::Weights("sms".into()),
            Key::Plugin("fcm".into()),
            Key::Manifest {
                plugin: "fcm".into(),
                id: "00ff".into(),
            },
            Key::Chunk {
                plugin: "fcm".into(),
                id: "00ff".into(),
                index: 7,
            },
        ] {
            assert_eq!(Key::parse(&key.render()), Some(key));
        }
        for junk in [
            "",
            "weights/",
            "plugin/a/b",
            "component/a/b",
            "component/a/b/chunk/x",
        ] {
            assert_eq!(Key::parse(junk), None, "{junk}");
        }
    }

    #[test]
    fn a_component_in_chunks_comes_back_whole() {
        let bytes: Vec<u8> = (0..(CHUNK_BYTES * 2 + 17)).map(|i| i as u8).collect();
        let id = &sha256_hex(&bytes)[..16];
        let records = component_records("fcm", id, &bytes, origin());
        assert_eq!(records.len(), 4, "three chunks and the manifest");
        let mut components = Components::default();
        read_back(&records, &mut components);
        assert_eq!(components.get("fcm", id).as_deref().ok(), Some(&bytes[..]));
    }

    #[test]
    fn a_changed_chunk_is_refused_by_its_digest() {
        let bytes = vec![7u8; CHUNK_BYTES + 1];
        let id = &sha256_hex(&bytes)[..16];
        let mut records = component_records("fcm", id, &bytes, origin());
        records[1].1[0] ^= 1;
        let mut components = Components::default();
        read_back(&records, &mut components);
        assert!(matches!(
            components.get("fcm", id),
            Err(ComponentError::WrongDigest { .. })
        ));
        records.remove(0);
        let mut components = Components::default();
        read_back(&records, &mut components);
        assert!(matches!(
            components.get("fcm", id),
            Err(ComponentError::MissingChunk { index: 0, .. })
        ));
    }
}
