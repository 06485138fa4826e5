//! `switchboard config check`: everything `switchboard run` would refuse a config for, found
//! without starting anything, and every problem at once, each naming its line.
//!
//! Owns the checks a start would make only later or one at a time: the file's values and
//! references ([`Config::problems`]), the files and secrets it names, then each plugin's
//! component compiled and asked to `describe` itself, and the channels checked against what the
//! plugins say they serve. It connects to nothing (no Kafka, Redis or PostgreSQL): reachability is
//! `/readyz`'s question, asked of a running host.

use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError, line_of};

/// What a check found: the problems (each an error the host would stop at) and notes that do
/// not stop it.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub problems: Vec<ConfigError>,
    pub notes: Vec<String>,
    /// Each plugin that loaded: its name and what it says of itself.
    pub plugins: Vec<(String, crate::contract::PluginInfo)>,
}

/// Checks the config at `path`. `Err` only when it does not read or parse; every other problem
/// is in the report.
pub async fn check(path: &Path) -> Result<CheckReport, ConfigError> {
    let (config, mut problems) = Config::check_file(path)?;
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let invalid = |field: String, message: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        line: line_of(&text, &field),
        field,
        message,
    };
    let mut report = CheckReport::default();
    for (name, plugin) in &config.plugins {
        let component: PathBuf = config.resolve(&plugin.path);
        if !component.is_file() {
            continue; // Already a problem: the file does not exist.
        }
        match crate::plugin::check_component(&component).await {
            Ok(info) => report.plugins.push((name.clone(), info)),
            Err(error) => problems.push(invalid(
                format!("plugins.{name}.path"),
                format!("{} does not load: {error}", component.display()),
            )),
        }
    }
    // A channel's vendors must serve it: the router would send its deliveries to a plugin that
    // formats them for another channel.
    for (channel, weights) in &config.channels {
        for vendor in weights.keys() {
            let Some((_, info)) = report.plugins.iter().find(|(name, _)| name == vendor) else {
                continue;
            };
            if info.channel != *channel {
                problems.push(invalid(
                    format!("channels.{channel}.{vendor}"),
                    format!(
                        "plugin `{vendor}` serves channel `{}` (its describe says so), not `{channel}`",
                        info.channel
                    ),
                ));
            }
        }
    }
    if config.kafka.brokers.is_none() {
        report.notes.push(
            "kafka.brokers is not set: `switchboard run` refuses to start without it unless \
             given --embedded-test-cluster"
                .into(),
        );
    }
    report.problems = problems;
    Ok(report)
}
