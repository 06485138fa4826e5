//! Secret values: loaded once at start from the config, the environment or files, and held
//! only here. Owns redaction: a [`SecretValue`] never prints its contents, so a secret cannot
//! reach a log line, a metric or an error message by accident. Never hands values to plugins.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::{Config, SecretSource};

/// Why a secret could not be loaded. Names the plugin and secret, never a value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("plugin `{plugin}`, secret `{name}`: environment variable `{var}` is not set")]
    MissingEnv {
        plugin: String,
        name: String,
        var: String,
    },
    #[error("plugin `{plugin}`, secret `{name}`: cannot read {path}: {source}")]
    File {
        plugin: String,
        name: String,
        path: String,
        source: std::io::Error,
    },
}

/// A secret's value. Its `Debug` and `Display` print a placeholder, never the value.
#[derive(Clone)]
pub struct SecretValue(Arc<str>);

impl SecretValue {
    /// Wraps a value.
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Self(value.into())
    }

    /// The value, for the few places that must use it: header substitution and signing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

impl std::fmt::Display for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

/// One plugin's secrets by name.
#[derive(Debug, Clone, Default)]
pub struct PluginSecrets {
    values: BTreeMap<String, SecretValue>,
}

impl PluginSecrets {
    /// Loads the secrets that `config` grants to plugin `plugin`.
    pub fn load(config: &Config, plugin: &str) -> Result<Self, SecretError> {
        let mut values = BTreeMap::new();
        let Some(plugin_config) = config.plugins.get(plugin) else {
            return Ok(Self { values });
        };
        for (name, source) in &plugin_config.secrets {
            let value = match source {
                SecretSource::Value(v) => v.clone(),
                SecretSource::Env(var) => {
                    std::env::var(var).map_err(|_| SecretError::MissingEnv {
                        plugin: plugin.to_string(),
                        name: name.clone(),
                        var: var.clone(),
                    })?
                }
                SecretSource::File(path) => {
                    let path = config.resolve(path);
                    std::fs::read_to_string(&path)
                        .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                        .map_err(|source| SecretError::File {
                            plugin: plugin.to_string(),
                            name: name.clone(),
                            path: path.display().to_string(),
                            source,
                        })?
                }
            };
            values.insert(name.clone(), SecretValue::new(value));
        }
        Ok(Self { values })
    }

    /// Secrets given directly, for embedded setups such as the demo.
    pub fn from_values(values: impl IntoIterator<Item = (String, String)>) -> Self {
        Self {
            values: values
                .into_iter()
                .map(|(k, v)| (k, SecretValue::new(v)))
                .collect(),
        }
    }

    /// The secret called `name`, if this plugin owns one.
    pub fn get(&self, name: &str) -> Option<&SecretValue> {
        self.values.get(name)
    }

    /// Every value, for output scrubbing in tests and the demo.
    pub fn values(&self) -> impl Iterator<Item = &SecretValue> {
        self.values.values()
    }
}

/// Replaces every `{{secret:NAME}}` in `text` with the plugin's secret NAME. Returns the name of
/// the first placeholder the plugin owns no secret for.
pub fn fill_placeholders(text: &str, secrets: &PluginSecrets) -> Result<String, String> {
    fill_placeholders_noting(text, secrets, &mut Vec::new())
}

/// As [`fill_placeholders_noting`], for a text the caller owns: one without a placeholder, as
/// most header values are, comes back as it is, without a copy.
pub fn fill_owned_placeholders_noting(
    text: String,
    secrets: &PluginSecrets,
    filled: &mut Vec<String>,
) -> Result<String, String> {
    match text.contains(PLACEHOLDER_OPEN) {
        true => fill_placeholders_noting(&text, secrets, filled),
        false => Ok(text),
    }
}

/// How every placeholder starts: `{{secret:NAME}}`.
const PLACEHOLDER_OPEN: &str = "{{secret:";

/// As [`fill_placeholders`], adding the name of every secret it filled in to `filled`, so the
/// caller can scrub those values out of whatever comes back.
pub fn fill_placeholders_noting(
    text: &str,
    secrets: &PluginSecrets,
    filled: &mut Vec<String>,
) -> Result<String, String> {
    const OPEN: &str = PLACEHOLDER_OPEN;
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        out.push_str(&rest[..start]);
        let after = &rest[start + OPEN.len()..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let name = &after[..end];
        match secrets.get(name) {
            Some(value) => {
                out.push_str(value.expose());
                if !filled.iter().any(|f| f == name) {
                    filled.push(name.to_string());
                }
            }
            None => return Err(name.to_string()),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> PluginSecrets {
        PluginSecrets::from_values([("key".to_string(), "s3cr3t".to_string())])
    }

    #[test]
    fn placeholders_are_filled() {
        assert_eq!(
            fill_placeholders("Basic {{secret:key}}!", &secrets()),
            Ok("Basic s3cr3t!".to_string())
        );
        assert_eq!(
            fill_placeholders("plain", &secrets()),
            Ok("plain".to_string())
        );
    }

    #[test]
    fn an_owned_value_is_filled_and_noted_like_a_borrowed_one() {
        let mut filled = Vec::new();
        assert_eq!(
            fill_owned_placeholders_noting("Bearer {{secret:key}}".into(), &secrets(), &mut filled),
            Ok("Bearer s3cr3t".to_string())
        );
        assert_eq!(filled, ["key"]);
        let plain = "application/json".to_string();
        let at = plain.as_ptr();
        let passed = fill_owned_placeholders_noting(plain, &secrets(), &mut filled);
        assert_eq!(passed.as_deref(), Ok("application/json"));
        assert_eq!(
            passed.map(|p| p.as_ptr()),
            Ok(at),
            "a plain value is not copied"
        );
        assert_eq!(
            fill_owned_placeholders_noting("{{secret:other}}".into(), &secrets(), &mut filled),
            Err("other".to_string())
        );
    }

    #[test]
    fn unknown_secret_is_named() {
        assert_eq!(
            fill_placeholders("{{secret:other}}", &secrets()),
            Err("other".to_string())
        );
    }

    #[test]
    fn debug_never_shows_the_value() {
        let shown = format!("{:?} {}", secrets(), SecretValue::new("s3cr3t"));
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }
}
