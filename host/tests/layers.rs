//! The import directions of the host crate, checked: every module imports only modules on a
//! floor below its own, so there are no import cycles between modules, and within a folder no
//! two files import each other (directly or around a loop).
//!
//! A module is a top-level file or folder of `src/`. The floors below run from the ground floor
//! (the contract types, the clock, the per-second window, text bounds: they import nothing of
//! the host) up to the command line. Stages of the record's flow sit above the stages they hand
//! records to: ingest hands to the lane, the lane to dedup, route and dispatch, dispatch to
//! settle, and all of them ticket records in offsets.
//!
//! What is read: `crate::NAME` paths in code (comments stripped), including `use crate::{…}`
//! groups. A file's trailing `#[cfg(test)]` module is left out: tests may build their fixtures
//! from any floor, and nothing imports a test module, so it cannot close a cycle.
//!
//! Written by hand over the source text rather than with a Rust parser: `use crate::` lines and
//! paths are all it needs, and a parser crate would add a build of `syn` for one test.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The floors, lowest first. A module may import modules on lower floors only.
const FLOORS: &[&[&str]] = &[
    // The ground floor: imports nothing of the host.
    &["contract", "clock", "window", "text"],
    // Records what happens; imports nothing above it.
    &["telemetry"],
    &["config", "state"],
    &["secrets", "kafka"],
    // The record's ticket and its partition's watermark: under every stage.
    &["offsets"],
    &["plugin"],
    // The stages, each above the ones it hands records to.
    &["dedup"],
    &["route"],
    &["settle"],
    &["dispatch"],
    &["lane"],
    &["ingest"],
    // The fleet's levers: applies changes to the route and the plugins, for every host.
    &["control"],
    // What operators and authors use, and the wiring.
    &["admin"],
    &["host"],
    &["demo", "authoring", "config_check"],
    &["cli"],
];

/// Names `lib.rs` re-exports at the crate root, and the module each comes from.
const ROOT_REEXPORTS: &[(&str, &str)] = &[
    ("Config", "config"),
    ("RunningHost", "host"),
    ("StartOptions", "host"),
    ("run", "host"),
    ("start", "host"),
    ("start_with", "host"),
];

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file's code without comments and without its trailing test module.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident_at(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// The first path segment of each item of a `{…}` group starting at `text` (just past `{`).
fn group_heads(text: &str) -> Vec<&str> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut item_start = true;
    for (at, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => item_start = true,
            c if item_start && depth == 0 && (c.is_ascii_alphabetic() || c == '_') => {
                heads.push(ident_at(&text[at..]));
                item_start = false;
            }
            _ => {}
        }
    }
    heads
}

/// The names that follow `prefix` in `code` (`prefix` then a name, or a `{…}` group of them).
fn names_after<'a>(code: &'a str, prefix: &str) -> Vec<&'a str> {
    let mut names = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].chars().next_back();
        let after = &rest[at + prefix.len()..];
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            match after.strip_prefix('{') {
                Some(group) => names.extend(group_heads(group)),
                None => names.push(ident_at(after)),
            }
        }
        rest = after;
    }
    names
}

/// The top-level module a file belongs to, and its path inside it.
fn module_of(file: &Path) -> (String, String) {
    let relative = file
        .strip_prefix(src_dir())
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let top = relative
        .split('/')
        .next()
        .unwrap_or_default()
        .trim_end_matches(".rs")
        .to_string();
    (top, relative)
}

#[test]
fn every_module_imports_only_modules_on_floors_below_its_own() {
    let floor: BTreeMap<&str, usize> = FLOORS
        .iter()
        .enumerate()
        .flat_map(|(n, modules)| modules.iter().map(move |m| (*m, n)))
        .collect();
    let reexports: BTreeMap<&str, &str> = ROOT_REEXPORTS.iter().copied().collect();
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    let mut unplaced = BTreeSet::new();
    let mut wrong_way = Vec::new();
    for file in &files {
        let (top, relative) = module_of(file);
        if top == "lib" || top == "main" {
            continue;
        }
        let Some(&own) = floor.get(top.as_str()) else {
            unplaced.insert(top);
            continue;
        };
        let code = code_of(&std::fs::read_to_string(file).unwrap_or_default());
        for name in names_after(&code, "crate::") {
            let target = reexports.get(name).copied().unwrap_or(name);
            if target == top || target.is_empty() {
                continue;
            }
            match floor.get(target) {
                Some(&theirs) if theirs < own => {}
                Some(_) => wrong_way.push(format!("{relative} imports crate::{name}")),
                None => wrong_way.push(format!("{relative} imports crate::{name}, on no floor")),
            }
        }
    }
    assert!(
        unplaced.is_empty(),
        "modules on no floor (add them to FLOORS in tests/layers.rs): {unplaced:?}"
    );
    wrong_way.sort();
    wrong_way.dedup();
    assert!(
        wrong_way.is_empty(),
        "imports that go up or sideways (a module may import modules on lower floors only):\n  {}",
        wrong_way.join("\n  ")
    );
}

#[test]
fn no_two_files_of_a_folder_import_each_other_around_a_loop() {
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    // folder → file module → sibling file modules it imports
    let mut graphs: BTreeMap<PathBuf, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for file in &files {
        let Some(folder) = file.parent() else {
            continue;
        };
        let Some(stem) = file.file_stem().map(|s| s.to_string_lossy().into_owned()) else {
            continue;
        };
        if folder == src_dir() || stem == "mod" {
            continue;
        }
        let siblings: BTreeSet<String> = std::fs::read_dir(folder)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let path = e.path();
                let name = path.file_stem()?.to_string_lossy().into_owned();
                (name != "mod" && name != stem).then_some(name)
            })
            .collect();
        let (top, _) = module_of(file);
        let inner = folder
            .strip_prefix(src_dir())
            .map(|p| p.to_string_lossy().replace('/', "::"))
            .unwrap_or(top);
        let code = code_of(&std::fs::read_to_string(file).unwrap_or_default());
        let mut imports: BTreeSet<String> = names_after(&code, "super::")
            .into_iter()
            .map(str::to_string)
            .collect();
        imports.extend(
            names_after(&code, &format!("crate::{inner}::"))
                .into_iter()
                .map(str::to_string),
        );
        imports.retain(|name| siblings.contains(name));
        graphs
            .entry(folder.to_path_buf())
            .or_default()
            .insert(stem, imports);
    }
    let mut loops = Vec::new();
    for (folder, graph) in &graphs {
        for start in graph.keys() {
            // Depth-first from `start`, looking for a way back to it.
            let mut stack = vec![(start.clone(), vec![start.clone()])];
            let mut seen = BTreeSet::new();
            while let Some((at, path)) = stack.pop() {
                for next in graph.get(&at).into_iter().flatten() {
                    if next == start {
                        loops.push(format!(
                            "{}: {} → {start}",
                            folder.display(),
                            path.join(" → ")
                        ));
                    } else if seen.insert(next.clone()) {
                        let mut longer = path.clone();
                        longer.push(next.clone());
                        stack.push((next.clone(), longer));
                    }
                }
            }
        }
    }
    assert!(
        loops.is_empty(),
        "files of one folder importing each other:\n  {}",
        loops.join("\n  ")
    );
}

#[test]
fn the_checker_reads_paths_groups_and_skips_comments_and_tests() {
    let code = code_of(
        "use crate::{a::X, b, c::{d, e}};\n// crate::commented\nlet x = crate::f::g();\n\
         #[cfg(test)]\nmod tests {\n    use crate::h;\n}\n",
    );
    assert_eq!(names_after(&code, "crate::"), ["a", "b", "c", "f"]);
}
