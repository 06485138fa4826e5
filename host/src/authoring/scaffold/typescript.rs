//! The TypeScript project `plugin new --lang ts` writes: the same Hello-vendor adapter as the
//! Rust crate, on `@switchboard/adapter-sdk`, built into a component by `jco componentize`
//! (StarlingMonkey, a SpiderMonkey build for WASI, with the adapter's code pre-initialised).

use super::{SdkSource, minor_requirement, type_name};

/// The versions the build uses, pinned: the SDK's own `package.json` names the same ones, and
/// the component a build makes depends on them (the engine is inside it).
const JCO_VERSION: &str = "1.34.0";
const TYPESCRIPT_VERSION: &str = "7.0.2";

/// Where `npm run build` puts the component.
pub(super) fn component(name: &str) -> String {
    format!("dist/{}.wasm", name.replace('-', "_"))
}

impl SdkSource {
    /// The npm dependency's value.
    fn npm_requirement(&self) -> String {
        match self {
            // The host and the SDKs are released together: any patch of the same minor.
            SdkSource::Registry => format!("~{}.0", minor_requirement(env!("CARGO_PKG_VERSION"))),
            SdkSource::Path(path) => format!("file:{}", path.display()),
        }
    }
}

pub(super) fn package_json(name: &str, sdk: &SdkSource) -> String {
    let sdk_dir = "node_modules/@switchboard/adapter-sdk";
    // `--disable stdio http fetch-event`: the component imports only clocks and random of WASI
    // (and a stderr the host discards); the vendor is reached through the host's `http` import.
    let build = format!(
        "tsc --noEmit -p . && mkdir -p dist && jco componentize src/adapter.ts --wit {sdk_dir}/wit --world-name adapter --bundle-config {sdk_dir}/bundle.config.js --disable stdio http fetch-event --out {}",
        component(name)
    );
    let value = serde_json::json!({
        "name": name,
        "version": "0.1.0",
        "private": true,
        "description": format!("A Switchboard adapter: {name}"),
        "type": "module",
        "scripts": { "build": build },
        "dependencies": { "@switchboard/adapter-sdk": sdk.npm_requirement() },
        "devDependencies": {
            "@bytecodealliance/jco": JCO_VERSION,
            "typescript": TYPESCRIPT_VERSION,
        },
    });
    // A value built in code serialises; the fallback only keeps this function total.
    serde_json::to_string_pretty(&value).unwrap_or_default() + "\n"
}

pub(super) const TSCONFIG: &str = r#"{
  "compilerOptions": {
    "target": "es2022",
    "module": "esnext",
    "moduleResolution": "bundler",
    "strict": true,
    "noEmit": true,
    "allowImportingTsExtensions": true,
    "lib": ["es2022", "dom"],
    "types": []
  },
  "include": ["src/**/*.ts"]
}
"#;

/// How the adapter reads the channel's content into the text it sends.
fn content_to_text(channel: &str) -> &'static str {
    match channel {
        "sms" => "  return parseSms(delivery.content).body;",
        "push-android" | "push-ios" => {
            "  const push = parsePush(delivery.content);\n  return push.body ?? push.title ?? \"\";"
        }
        "alimtalk" => {
            "  const message = parseTemplate(delivery.content);\n  return `${message.template} ${JSON.stringify(message.params)}`;"
        }
        _ => "  return delivery.content;",
    }
}

pub(super) fn adapter_ts(name: &str, channel: &str) -> String {
    let ty = type_name(name);
    let endpoint = format!("https://api.{name}.example");
    let host = format!("api.{name}.example");
    format!(
        r#"/**
 * The `{name}` adapter for Switchboard's `{channel}` channel.
 *
 * Replace the wire format below with your vendor's: the request in `sendRequest`, and the
 * mapping of its replies to outcomes in `classify`. The host does the rest: batching, retries,
 * dedup, and the HTTP itself (only to the hosts the operator grants).
 *
 * Config keys: `endpoint` (default `{endpoint}`). Secrets: `api_key`, sent as the `x-api-key`
 * header through a placeholder, so the plugin never sees its value.
 */
import {{
  RequestBuilder,
  defineAdapter,
  delivered,
  describeError,
  header,
  invalidRecipient,
  json,
  parsePush,
  parseSms,
  parseTemplate,
  pluginInfo,
  rejected,
  retry,
  retryAfterMs,
  secretPlaceholder,
  sendAll,
  type Delivery,
  type Outcome,
  type Request,
  type Response,
}} from "@switchboard/adapter-sdk";

// Unused content readers are kept so that changing the channel needs no new import.
void [parsePush, parseSms, parseTemplate];

interface {ty} {{
  endpoint: string;
}}

/** The text to send for a delivery of this channel. */
function textOf(delivery: Delivery): string {{
{content}
}}

/** The vendor request for one delivery. */
function sendRequest(adapter: {ty}, delivery: Delivery): Request {{
  return RequestBuilder.post(`${{adapter.endpoint}}/v1/messages`)
    .header("x-api-key", secretPlaceholder("api_key"))
    .json({{ to: delivery.recipient, text: textOf(delivery) }})
    .build();
}}

/** Maps the vendor's reply to an outcome. */
function classify(response: Response): Outcome {{
  const body = (json(response) ?? {{}}) as {{ id?: unknown; error?: unknown }};
  const error = typeof body.error === "string" ? body.error : "";
  const status = response.status;
  if (status >= 200 && status <= 299) {{
    return typeof body.id === "string" ? delivered(body.id) : retry("success without a message id");
  }}
  if (status === 400 && error === "invalid_number") return invalidRecipient("invalid_number");
  if (status === 429) return retry("rate limited", retryAfterMs(header(response, "retry-after")));
  if (status >= 500) return retry(`vendor error ${{status}}`);
  return rejected(error === "" ? `HTTP_${{status}}` : error, JSON.stringify(body));
}}

export const {{ describe, init, deliver }} = defineAdapter<{ty}>({{
  describe: () => pluginInfo("{name}", "0.1.0", "{channel}", {{ maxBatch: 50, wantsHosts: ["{host}"] }}),

  init: (config) => ({{ endpoint: config.getOr("endpoint", "{endpoint}").replace(/\/+$/, "") }}),

  deliver(adapter, batch) {{
    // Content that does not parse is refused without a request.
    const requests = batch.map((delivery) => {{
      try {{
        return sendRequest(adapter, delivery);
      }} catch (why) {{
        return why instanceof Error ? why.message : String(why);
      }}
    }});
    const answers = sendAll(requests.filter((r): r is Request => typeof r !== "string"));
    let next = 0;
    return requests.map((request) => {{
      if (typeof request === "string") return rejected("INVALID_CONTENT", request);
      const sent = answers[next++];
      if (sent === undefined) return retry("no answer");
      return sent.ok ? classify(sent.response) : retry(describeError(sent.error));
    }});
  }},
}});
"#,
        content = content_to_text(channel),
    )
}

pub(super) fn readme(name: &str, channel: &str) -> String {
    let wasm = component(name);
    format!(
        r#"# {name}

A Switchboard adapter for the `{channel}` channel, in TypeScript.

1. **Build**: `npm install && npm run build` makes `{wasm}`: the type check (`tsc`), then
   `jco componentize`, which bundles `src/adapter.ts` with the SDK and builds a WebAssembly
   component around a JavaScript engine (about 12 MB; the host compiles it once per version).
2. **Check** that it fits the host's contract: `switchboard plugin check {wasm}`.
3. **Write the mapping** in `src/adapter.ts`: the request in `sendRequest`, and the vendor's
   replies in `classify`. `docs/PLUGINS.md` in the Switchboard repository is the guide.
4. **Test offline**: `switchboard plugin test {wasm} --cases tests/cases.yaml`. Add a case per
   vendor reply you map; `--record` captures real exchanges from a sandbox endpoint.
5. **Ship** the `.wasm`. Operators add it under `[plugins.{name}]` with `allowed_hosts` and the
   `api_key` secret, and route the `{channel}` channel to it.

What the JavaScript engine gives you: the language, `JSON`, `TextEncoder`/`TextDecoder`, `Date`
and `crypto.getRandomValues`. Not `fetch`, files, timers that outlive the call, or Node's
modules: the vendor is reached through the SDK's `send`/`sendAll`, which the host performs.
"#
    )
}
