//! `switchboard plugin new NAME --channel CHANNEL [--lang rust|ts]`: a plugin project that
//! builds, passes `plugin check` and `plugin test` as generated, and shows where the vendor
//! mapping goes. A Rust crate on `switchboard-sdk`, or a TypeScript package on
//! `@switchboard/adapter-sdk` (`sdk-ts/`) built into a component by `jco componentize`.
//!
//! The generated adapter speaks a minimal JSON API (`POST {endpoint}/v1/messages` with
//! `{"to", "text"}` and an `x-api-key` header, the "Hello" vendor of `vendorsim`), so that an
//! author starts from working code and replaces the wire format with their vendor's. Both
//! languages share the offline cases file: the same exchanges, the same outcomes.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

mod typescript;

/// Channels the scaffold knows the content shape of.
pub const CHANNELS: [&str; 4] = ["sms", "push-android", "push-ios", "alimtalk"];

/// The language a plugin is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Language {
    /// A Rust crate built for wasm32-wasip2.
    #[default]
    Rust,
    /// A TypeScript package built by `jco componentize` (a JavaScript engine in the component).
    #[value(name = "ts", alias = "typescript")]
    TypeScript,
}

/// Creates the plugin project `dir/name` in `language`. It depends on the SDK release this host
/// was built with, from the registry (crates.io or npm); `sdk` names a local copy instead (for
/// Rust an unpacked `.crate` or a checkout's `sdk/`, for TypeScript a checkout's `sdk-ts/`).
pub fn create(
    dir: &Path,
    name: &str,
    channel: &str,
    sdk: Option<&Path>,
    language: Language,
) -> anyhow::Result<PathBuf> {
    anyhow::ensure!(
        !name.is_empty()
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
        "plugin name `{name}` must be lowercase letters, digits and dashes, starting with a letter"
    );
    anyhow::ensure!(
        !channel.is_empty()
            && channel
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
        "channel `{channel}` must be lowercase letters, digits and dashes"
    );
    let root = dir.join(name);
    anyhow::ensure!(!root.exists(), "{} already exists", root.display());
    let sdk = match sdk {
        Some(path) => {
            let path = path
                .canonicalize()
                .with_context(|| format!("the SDK is not at {}", path.display()))?;
            let (manifest, package) = match language {
                Language::Rust => ("Cargo.toml", "the switchboard-sdk crate"),
                Language::TypeScript => ("package.json", "the @switchboard/adapter-sdk package"),
            };
            anyhow::ensure!(
                path.join(manifest).is_file() && path.join("wit").is_dir(),
                "{} is not {package} (no {manifest} and wit/ there)",
                path.display()
            );
            SdkSource::Path(path)
        }
        None => SdkSource::Registry,
    };
    let files = match language {
        Language::Rust => vec![
            ("Cargo.toml", cargo_toml(name, &sdk)),
            (".cargo/config.toml", CARGO_CONFIG.to_string()),
            ("src/lib.rs", lib_rs(name, channel)),
            ("README.md", readme(name, channel)),
            (
                "tests/cases.yaml",
                cases_yaml(channel, &rust_component(name)),
            ),
            (".gitignore", "/target\n".to_string()),
        ],
        Language::TypeScript => vec![
            ("package.json", typescript::package_json(name, &sdk)),
            ("tsconfig.json", typescript::TSCONFIG.to_string()),
            ("src/adapter.ts", typescript::adapter_ts(name, channel)),
            ("README.md", typescript::readme(name, channel)),
            (
                "tests/cases.yaml",
                cases_yaml(channel, &typescript::component(name)),
            ),
            (".gitignore", "/node_modules\n/dist\n".to_string()),
        ],
    };
    for (file, text) in files {
        let path = root.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(root)
}

/// Where `cargo build --release` puts a Rust plugin's component.
fn rust_component(name: &str) -> String {
    format!(
        "target/wasm32-wasip2/release/{}.wasm",
        name.replace('-', "_")
    )
}

fn type_name(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            match chars.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

const CARGO_CONFIG: &str = r#"# `cargo build --release` builds the component: WebAssembly, WASI preview 2.
[build]
target = "wasm32-wasip2"

# A 256 KiB stack instead of rustc's 1 MiB: the host zeroes the first MiB of an instance's memory
# after every call and hands back the rest, and with rustc's stack (placed first) the heap lies
# past that MiB, to be faulted in again on every call. `switchboard plugin check` prints the
# stack; docs/PLUGINS.md, "Limits and capabilities", says more.
[target.wasm32-wasip2]
rustflags = ["-C", "link-arg=-zstack-size=262144"]
"#;

/// Where the generated crate takes the SDK from.
enum SdkSource {
    /// The release this host was built with, from the registry.
    Registry,
    /// A local copy of the crate.
    Path(PathBuf),
}

impl SdkSource {
    /// The dependency's TOML value.
    fn requirement(&self) -> String {
        match self {
            // The host and the SDK are released together, so the matching minor version binds
            // the world this host loads.
            SdkSource::Registry => format!("\"{}\"", minor_requirement(env!("CARGO_PKG_VERSION"))),
            SdkSource::Path(path) => format!("{{ path = \"{}\" }}", path.display()),
        }
    }
}

/// `0.1.3` → `0.1`: any release of the same minor version.
fn minor_requirement(version: &str) -> String {
    version.splitn(3, '.').take(2).collect::<Vec<_>>().join(".")
}

fn cargo_toml(name: &str, sdk: &SdkSource) -> String {
    format!(
        r#"# A Switchboard vendor adapter. Build it with `cargo build --release`; the component is
# target/wasm32-wasip2/release/{lib}.wasm. Check it with `switchboard plugin check FILE`, test it
# offline with `switchboard plugin test FILE --cases tests/cases.yaml`.
[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
# A component is a cdylib built for wasm32-wasip2.
crate-type = ["cdylib"]

[dependencies]
# The SDK: the Adapter trait, the export macro, and helpers for HTTP, auth, content and tokens.
switchboard-sdk = {sdk}
serde_json = "1"

[profile.release]
# Small components load faster, and adapters spend their time waiting on the vendor anyway.
opt-level = "s"
lto = true
strip = "debuginfo"

# A workspace of its own, so the plugin builds wherever it is checked out.
[workspace]
"#,
        lib = name.replace('-', "_"),
        sdk = sdk.requirement()
    )
}

/// How the adapter reads the channel's content into the text it sends.
fn content_to_text(channel: &str) -> &'static str {
    match channel {
        "sms" => {
            r#"    let sms: SmsContent = content::parse(&delivery.content)?;
    Ok(sms.body)"#
        }
        "push-android" | "push-ios" => {
            r#"    let push: PushContent = content::parse(&delivery.content)?;
    Ok(push.body.or(push.title).unwrap_or_default())"#
        }
        "alimtalk" => {
            r#"    let template: TemplateContent = content::parse(&delivery.content)?;
    Ok(format!("{} {}", template.template, serde_json::Value::Object(template.params)))"#
        }
        _ => r#"    Ok(delivery.content.clone())"#,
    }
}

fn lib_rs(name: &str, channel: &str) -> String {
    let ty = type_name(name);
    let endpoint = format!("https://api.{name}.example");
    let host = format!("api.{name}.example");
    format!(
        r#"//! The `{name}` adapter for Switchboard's `{channel}` channel.
//!
//! Replace the wire format below with your vendor's: the request in `send_request`, and the
//! mapping of its replies to outcomes in `classify`. The host does the rest: batching,
//! retries, dedup, and the HTTP itself (only to the hosts the operator grants).
//!
//! Config keys: `endpoint` (default `{endpoint}`). Secrets: `api_key`, sent as the
//! `x-api-key` header through a placeholder, so the plugin never sees its value.

#[allow(unused_imports)]
use switchboard_sdk::content::{{self, PushContent, SmsContent, TemplateContent}};
use switchboard_sdk::http::{{self, HttpError, Request, Response}};
use switchboard_sdk::{{
    Adapter, Config, Delivery, Outcome, PluginInfo, PluginInfoExt, retry_after_ms, secrets,
}};

struct {ty} {{
    endpoint: String,
}}

impl Adapter for {ty} {{
    fn describe() -> PluginInfo {{
        PluginInfo::new("{name}", env!("CARGO_PKG_VERSION"), "{channel}")
            .max_batch(50)
            .wants_host("{host}")
    }}

    fn init(config: Config) -> Result<Self, String> {{
        Ok({ty} {{
            endpoint: config.get_or("endpoint", "{endpoint}").trim_end_matches('/').to_string(),
        }})
    }}

    fn deliver(&self, batch: Vec<Delivery>) -> Vec<Outcome> {{
        // Content that does not parse is refused without a request.
        let requests: Vec<Result<Request, String>> =
            batch.iter().map(|d| self.send_request(d)).collect();
        let to_send: Vec<Request> = requests.iter().filter_map(|r| r.as_ref().ok().cloned()).collect();
        let mut answers = http::send_all(to_send).into_iter();
        requests
            .into_iter()
            .map(|request| match request {{
                Err(why) => Outcome::rejected("INVALID_CONTENT", why),
                Ok(_) => match answers.next() {{
                    Some(Ok(response)) => classify(&response),
                    Some(Err(error)) => transport_outcome(error),
                    None => Outcome::retry("no answer", None),
                }},
            }})
            .collect()
    }}
}}

/// The text to send for a delivery of this channel.
fn text_of(delivery: &Delivery) -> Result<String, String> {{
{content}
}}

impl {ty} {{
    /// The vendor request for one delivery.
    fn send_request(&self, delivery: &Delivery) -> Result<Request, String> {{
        let text = text_of(delivery)?;
        Ok(Request::post(format!("{{}}/v1/messages", self.endpoint))
            .header("x-api-key", secrets::placeholder("api_key"))
            .json(&serde_json::json!({{ "to": delivery.recipient, "text": text }})))
    }}
}}

/// Maps the vendor's reply to an outcome.
fn classify(response: &Response) -> Outcome {{
    let body = response.json().unwrap_or(serde_json::Value::Null);
    let error = body.get("error").and_then(|e| e.as_str()).unwrap_or("");
    match response.status {{
        200..=299 => match body.get("id").and_then(|id| id.as_str()) {{
            Some(id) => Outcome::delivered(id),
            None => Outcome::retry("success without a message id", None),
        }},
        400 if error == "invalid_number" => Outcome::invalid_recipient("invalid_number"),
        429 => Outcome::retry("rate limited", retry_after_ms(response.header("retry-after"))),
        500..=599 => Outcome::retry(format!("vendor error {{}}", response.status), None),
        status => Outcome::rejected(
            if error.is_empty() {{ format!("HTTP_{{status}}") }} else {{ error.to_string() }},
            body.to_string(),
        ),
    }}
}}

/// A request that got no answer may be retried.
fn transport_outcome(error: HttpError) -> Outcome {{
    Outcome::retry(format!("http {{error:?}}"), None)
}}

switchboard_sdk::export_adapter!({ty});
"#,
        content = content_to_text(channel),
    )
}

fn sample_content(channel: &str) -> &'static str {
    match channel {
        "sms" => r#"{body: "Your order is on its way"}"#,
        "push-android" | "push-ios" => r#"{title: "Your order", body: "Your order is on its way"}"#,
        "alimtalk" => r#"{template: ORDER_SHIPPED, params: {order: "8f2c"}}"#,
        _ => r#"{text: "Your order is on its way"}"#,
    }
}

/// The offline cases of the generated adapter; `component` is where its build puts it.
fn cases_yaml(channel: &str, component: &str) -> String {
    let content = sample_content(channel);
    format!(
        r#"# Offline tests: `switchboard plugin test {component} --cases tests/cases.yaml`.
# Each case gives a delivery, the vendor exchanges it should cause (requests are matched as the
# plugin sends them: secrets stay {{{{secret:NAME}}}} placeholders), and the outcome it must end in.
plugin:
  config:
    endpoint: https://api.vendor.example
  secrets:
    api_key: test-key-not-a-real-one
cases:
  - name: delivered
    delivery:
      recipient: "+821012345678"
      content: {content}
    exchanges:
      - request:
          method: POST
          path: /v1/messages
          headers:
            x-api-key: "{{{{secret:api_key}}}}"
          body_json: {{to: "+821012345678"}}
        response:
          status: 200
          body: '{{"id":"msg-1"}}'
    expect:
      outcome: delivered
      id: msg-1
  - name: invalid number
    delivery:
      recipient: "12345"
      content: {content}
    exchanges:
      - request: {{method: POST, path: /v1/messages}}
        response:
          status: 400
          body: '{{"error":"invalid_number"}}'
    expect:
      outcome: invalid-recipient
  - name: rate limited
    delivery:
      recipient: "+821012345679"
      content: {content}
    exchanges:
      - request: {{method: POST, path: /v1/messages}}
        response:
          status: 429
          headers: {{retry-after: "2"}}
          body: '{{"error":"rate_limited"}}'
    expect:
      outcome: retry
      after_ms: 2000
"#
    )
}

fn readme(name: &str, channel: &str) -> String {
    let lib = name.replace('-', "_");
    format!(
        r#"# {name}

A Switchboard adapter for the `{channel}` channel.

1. **Build**: `cargo build --release` makes `target/wasm32-wasip2/release/{lib}.wasm`. The
   target is set in `.cargo/config.toml`, and `rustup target add wasm32-wasip2` adds it once.
2. **Check** that it fits the host's contract:
   `switchboard plugin check target/wasm32-wasip2/release/{lib}.wasm`.
3. **Write the mapping** in `src/lib.rs`: the request in `send_request`, and the vendor's
   replies in `classify`. `docs/PLUGINS.md` in the Switchboard repository is the guide.
4. **Test offline**:
   `switchboard plugin test target/wasm32-wasip2/release/{lib}.wasm --cases tests/cases.yaml`.
   Add a case per vendor reply you map. To capture real exchanges from a sandbox endpoint (or
   `vendorsim`), set `plugin.config.endpoint` and `plugin.allowed_hosts` in the cases file and
   run the same command with `--record`.
5. **Ship** the `.wasm`. Operators add it under `[plugins.{name}]` with `allowed_hosts` and the
   `api_key` secret, and route the `{channel}` channel to it.
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_types_and_bad_names_are_refused() -> anyhow::Result<()> {
        assert_eq!(type_name("acme-sms"), "AcmeSms");
        let dir = tempfile::tempdir()?;
        let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk");
        let sdk = Some(sdk.as_path());
        assert!(create(dir.path(), "Acme SMS", "sms", sdk, Language::Rust).is_err());
        let root = create(dir.path(), "acme-sms", "sms", sdk, Language::Rust)?;
        for file in [
            "Cargo.toml",
            "src/lib.rs",
            "README.md",
            "tests/cases.yaml",
            ".cargo/config.toml",
        ] {
            assert!(root.join(file).exists(), "{file}");
        }
        assert!(
            create(dir.path(), "acme-sms", "sms", sdk, Language::Rust).is_err(),
            "refuses to overwrite"
        );
        let cases: crate::authoring::offline::CasesFile =
            serde_norway::from_str(&std::fs::read_to_string(root.join("tests/cases.yaml"))?)?;
        assert_eq!(cases.cases.len(), 3);
        Ok(())
    }

    /// Without `--sdk`, the crate names the SDK release, never a path on the machine that built
    /// the host; with it, the path given.
    #[test]
    fn the_sdk_comes_from_the_registry_unless_a_local_copy_is_named() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let root = create(dir.path(), "acme-push", "push-ios", None, Language::Rust)?;
        let manifest = std::fs::read_to_string(root.join("Cargo.toml"))?;
        let wanted = format!(
            "switchboard-sdk = \"{}\"",
            minor_requirement(env!("CARGO_PKG_VERSION"))
        );
        assert!(manifest.contains(&wanted), "{manifest}");
        assert!(!manifest.contains(env!("CARGO_MANIFEST_DIR")), "{manifest}");
        assert_eq!(minor_requirement("0.1.3"), "0.1");
        let not_sdk = create(
            dir.path(),
            "acme-sms",
            "sms",
            Some(dir.path()),
            Language::Rust,
        );
        assert!(not_sdk.is_err());
        Ok(())
    }

    /// A TypeScript project: its files, the SDK from npm unless a local `sdk-ts/` is named, and
    /// the cases file pointing at the component its build makes.
    #[test]
    fn a_typescript_project_names_its_sdk_and_its_component() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let root = create(dir.path(), "acme-sms", "sms", None, Language::TypeScript)?;
        for file in [
            "package.json",
            "tsconfig.json",
            "src/adapter.ts",
            "README.md",
            "tests/cases.yaml",
            ".gitignore",
        ] {
            assert!(root.join(file).exists(), "{file}");
        }
        let manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(root.join("package.json"))?)?;
        let wanted = format!("~{}.0", minor_requirement(env!("CARGO_PKG_VERSION")));
        assert_eq!(
            manifest["dependencies"]["@switchboard/adapter-sdk"], wanted,
            "{manifest}"
        );
        let cases = std::fs::read_to_string(root.join("tests/cases.yaml"))?;
        assert!(cases.contains("plugin test dist/acme_sms.wasm"), "{cases}");

        let sdk_ts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk-ts");
        let local = create(
            dir.path(),
            "acme-push",
            "push-ios",
            Some(&sdk_ts),
            Language::TypeScript,
        )?;
        let manifest = std::fs::read_to_string(local.join("package.json"))?;
        assert!(manifest.contains("\"file:/"), "{manifest}");
        // The Rust SDK is not a TypeScript SDK.
        let rust_sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk");
        let wrong = create(
            dir.path(),
            "acme-other",
            "sms",
            Some(&rust_sdk),
            Language::TypeScript,
        );
        assert!(wrong.is_err());
        Ok(())
    }
}
