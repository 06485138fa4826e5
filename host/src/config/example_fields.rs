//! `examples/switchboard.toml` shows every field the config types take.
//!
//! The fields come from the types themselves, as serde sees them: every config struct refuses
//! unknown fields, and the refusal lists the fields it takes. Probing each table with a key no
//! struct has (`__probe__`) walks the whole tree, maps of structs (`[plugins.NAME]`) included,
//! so a field added to a type fails this test until the example shows it. A field counts as
//! shown when it is set or written as a comment (`# brokers = "…"`) under its table.

use std::collections::BTreeSet;
use std::path::Path;

use super::Config;

const PROBE: &str = "__probe__";

/// The fields of the struct at `path` (dotted; `*` for a map's entry), or `None` when no struct
/// sits there.
fn struct_fields(path: &[String]) -> Option<Vec<String>> {
    let table: Vec<&str> = path
        .iter()
        .map(|p| if p == "*" { "p" } else { p.as_str() })
        .collect();
    let text = match table.is_empty() {
        true => format!("{PROBE} = 0\n"),
        false => format!("[{}]\n{PROBE} = 0\n", table.join(".")),
    };
    let error = Config::parse(&text, Path::new("probe.toml"))
        .err()?
        .to_string();
    if !error.contains(&format!("unknown field `{PROBE}`")) {
        return None;
    }
    let expected = error.split("expected").nth(1)?;
    Some(
        expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect(),
    )
}

/// Every field path under `path`, walking structs and maps of structs.
fn walk(path: Vec<String>, fields: &mut BTreeSet<String>) {
    if let Some(names) = struct_fields(&path) {
        for name in names {
            let mut child = path.clone();
            child.push(name);
            fields.insert(child.join("."));
            walk(child, fields);
        }
        return;
    }
    // A map whose entries are structs: `[plugins.NAME]`, `[fallback.CHANNEL]`.
    if path.last().is_none_or(|last| last != "*") {
        let mut entry = path.clone();
        entry.push("*".to_string());
        if struct_fields(&entry).is_some() {
            walk(entry, fields);
        }
    }
}

/// What the example shows: each `table.key` set or commented out, and each table header.
fn shown(example: &str) -> BTreeSet<Vec<String>> {
    let mut shown = BTreeSet::new();
    let mut table: Vec<String> = Vec::new();
    for line in example.lines() {
        let line = line.trim();
        let line = line.strip_prefix('#').map_or(line, str::trim_start);
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            table = header.split('.').map(|s| s.trim().to_string()).collect();
            for end in 1..=table.len() {
                shown.insert(table[..end].to_vec());
            }
            continue;
        }
        let Some((key, _)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim().trim_matches('"');
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        {
            continue;
        }
        let mut path = table.clone();
        path.push(key.to_string());
        shown.insert(path);
    }
    shown
}

#[test]
fn the_example_config_shows_every_field_of_the_config_types() {
    let mut fields = BTreeSet::new();
    walk(Vec::new(), &mut fields);
    // The walk reaches into nested structs and maps of structs: if serde's refusal changed
    // wording, it would find nothing and pass vacuously.
    for expected in [
        "kafka.brokers",
        "lanes.batch.linger_ms",
        "plugins.*.bounds.log_bytes_per_s",
    ] {
        assert!(
            fields.contains(expected),
            "the walk missed {expected}: {fields:?}"
        );
    }
    let shown = shown(include_str!("../../../examples/switchboard.toml"));
    let missing: Vec<&String> = fields
        .iter()
        .filter(|field| {
            let want: Vec<&str> = field.split('.').collect();
            !shown.iter().any(|path| {
                path.len() == want.len() && path.iter().zip(&want).all(|(p, w)| *w == "*" || p == w)
            })
        })
        .collect();
    assert!(
        missing.is_empty(),
        "examples/switchboard.toml does not show: {missing:?}"
    );
}
