//! Offline tests of a plugin component: `switchboard plugin test FILE.wasm --cases cases.yaml`.
//!
//! A cases file gives the plugin's config and test secrets, then cases. Each case has a
//! delivery, the vendor exchanges it should cause, and the outcome it should end in. The plugin
//! runs in the real runtime, but its HTTP requests are answered from the case's exchanges and
//! checked against them, so nothing reaches the network. With `--record`, the cases run against
//! a live endpoint (or a simulator), and the exchanges and outcomes seen are written back.
//!
//! Requests are matched as the plugin made them: header placeholders unfilled. So a cases file
//! never needs, and `--record` never writes, a secret's value.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::RuntimeConfig;
use crate::contract::bindings_http as http;
use crate::contract::{Delivery, Outcome, Priority};
use crate::plugin::capabilities::{
    AllowedHost, Capabilities, ExchangeRecorder, ExchangeScript, PluginCache,
};
use crate::plugin::{LoadedPlugin, PluginLimits, PluginRuntime};
use crate::secrets::PluginSecrets;

/// A cases file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CasesFile {
    #[serde(default)]
    pub plugin: PluginSetup,
    pub cases: Vec<Case>,
}

/// How the plugin is loaded for the cases.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSetup {
    /// Passed to `init`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Test values of the plugin's secrets (for signing). Never production secrets.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// Hosts the plugin may reach when recording (`host` or `host:port`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
}

/// One case.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub delivery: CaseDelivery,
    /// The exchanges the delivery should cause, in any order.
    #[serde(default)]
    pub exchanges: Vec<Exchange>,
    pub expect: Expect,
}

/// The delivery of a case.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseDelivery {
    pub recipient: String,
    /// The channel content, as YAML/JSON.
    pub content: Value,
    #[serde(default = "realtime")]
    pub priority: String,
}

fn realtime() -> String {
    "realtime".into()
}

/// One request the plugin should make, and the canned answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exchange {
    pub request: RequestMatch,
    pub response: CannedResponse,
}

/// What a request must look like. Every field given must match; absent fields match anything.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The URL's path, without the query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Headers that must be present with these values (names without case). Values are as the
    /// plugin sent them, placeholders unfilled: `x-api-key: "{{secret:api_key}}"`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The JSON body must contain this (objects: these keys with matching values, recursively).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_json: Option<Value>,
    /// The body must contain each of these strings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub body_contains: Vec<String>,
}

/// The answer to a matched request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CannedResponse {
    pub status: u16,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: String,
}

/// The outcome a case must end in.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// `delivered`, `retry`, `rejected` or `invalid-recipient`.
    pub outcome: String,
    /// For `delivered`: the vendor's message id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// For `rejected`: the code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// For `retry`: the wait the plugin asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_ms: Option<u64>,
}

impl Expect {
    fn of(outcome: &Outcome) -> Expect {
        let mut e = Expect {
            outcome: String::new(),
            id: None,
            code: None,
            after_ms: None,
        };
        match outcome {
            Outcome::Delivered(id) => {
                e.outcome = "delivered".into();
                e.id = Some(id.clone());
            }
            Outcome::Retry(info) => {
                e.outcome = "retry".into();
                e.after_ms = info.after_ms;
            }
            Outcome::Rejected(r) => {
                e.outcome = "rejected".into();
                e.code = Some(r.code.clone());
            }
            Outcome::InvalidRecipient(_) => e.outcome = "invalid-recipient".into(),
        }
        e
    }

    /// Why `got` does not meet this expectation, if it does not.
    fn mismatch(&self, got: &Outcome) -> Option<String> {
        let seen = Expect::of(got);
        let wrong = seen.outcome != self.outcome
            || self
                .id
                .as_ref()
                .is_some_and(|id| seen.id.as_ref() != Some(id))
            || self
                .code
                .as_ref()
                .is_some_and(|c| seen.code.as_ref() != Some(c))
            || self.after_ms.is_some_and(|ms| seen.after_ms != Some(ms));
        wrong.then(|| format!("expected {}, got {}", describe(self), describe(&seen)))
    }
}

fn describe(e: &Expect) -> String {
    let detail =
        e.id.clone()
            .or_else(|| e.code.clone())
            .or_else(|| e.after_ms.map(|ms| format!("{ms}ms")));
    match detail {
        Some(d) => format!("{}({d})", e.outcome),
        None => e.outcome.clone(),
    }
}

/// True when `actual` contains `wanted`: objects key by key (recursively), anything else equal.
fn json_contains(actual: &Value, wanted: &Value) -> bool {
    match (actual, wanted) {
        (Value::Object(a), Value::Object(w)) => w
            .iter()
            .all(|(k, wv)| a.get(k).is_some_and(|av| json_contains(av, wv))),
        _ => actual == wanted,
    }
}

impl RequestMatch {
    /// Why `request` does not match, if it does not.
    fn mismatch(&self, request: &http::Request) -> Option<String> {
        if let Some(method) = &self.method
            && !method.eq_ignore_ascii_case(&request.method)
        {
            return Some(format!("method {} ≠ {method}", request.method));
        }
        if let Some(path) = &self.path {
            let actual = reqwest::Url::parse(&request.url)
                .map(|u| u.path().to_string())
                .unwrap_or_default();
            if &actual != path {
                return Some(format!("path {actual} ≠ {path}"));
            }
        }
        for (name, value) in &self.headers {
            let actual = request
                .headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str());
            if actual != Some(value.as_str()) {
                return Some(format!("header {name}: {actual:?} ≠ {value:?}"));
            }
        }
        let body = String::from_utf8_lossy(&request.body);
        if let Some(wanted) = &self.body_json {
            match serde_json::from_slice::<Value>(&request.body) {
                Ok(actual) if json_contains(&actual, wanted) => {}
                Ok(actual) => return Some(format!("body {actual} does not contain {wanted}")),
                Err(_) => return Some("body is not JSON".into()),
            }
        }
        for needle in &self.body_contains {
            if !body.contains(needle.as_str()) {
                return Some(format!("body does not contain {needle:?}"));
            }
        }
        None
    }
}

/// The exchanges of one case, consumed as the plugin makes requests.
struct CaseScript {
    state: Mutex<ScriptState>,
}

struct ScriptState {
    unused: Vec<Exchange>,
    problems: Vec<String>,
}

impl CaseScript {
    fn new(exchanges: Vec<Exchange>) -> Self {
        Self {
            state: Mutex::new(ScriptState {
                unused: exchanges,
                problems: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ScriptState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What went wrong: unexpected requests, and exchanges never requested.
    fn problems(&self) -> Vec<String> {
        let state = self.lock();
        let mut problems = state.problems.clone();
        for left in &state.unused {
            problems.push(format!(
                "expected request never made: {} {}",
                left.request.method.as_deref().unwrap_or("*"),
                left.request.path.as_deref().unwrap_or("*")
            ));
        }
        problems
    }
}

impl ExchangeScript for CaseScript {
    fn answer(&self, request: &http::Request) -> Result<http::Response, http::HttpError> {
        let mut state = self.lock();
        let mut reasons = Vec::new();
        for (i, exchange) in state.unused.iter().enumerate() {
            match exchange.request.mismatch(request) {
                None => {
                    let exchange = state.unused.remove(i);
                    return Ok(http::Response {
                        status: exchange.response.status,
                        headers: exchange.response.headers.into_iter().collect(),
                        body: exchange.response.body.into_bytes(),
                    });
                }
                Some(why) => reasons.push(why),
            }
        }
        let problem = format!(
            "unexpected request {} {}{}",
            request.method,
            request.url,
            if reasons.is_empty() {
                String::new()
            } else {
                format!(" ({})", reasons.join("; "))
            }
        );
        state.problems.push(problem.clone());
        Err(http::HttpError::Protocol(format!(
            "offline test: {problem}"
        )))
    }
}

/// Refuses every request: the load-time `init` of an offline test has no exchanges.
struct NoNetwork;

impl ExchangeScript for NoNetwork {
    fn answer(&self, _request: &http::Request) -> Result<http::Response, http::HttpError> {
        Err(http::HttpError::Denied(
            "offline test: no exchange at load time".into(),
        ))
    }
}

/// Collects live exchanges for `--record`.
#[derive(Default)]
struct Recorder {
    exchanges: Mutex<Vec<Exchange>>,
}

impl ExchangeRecorder for Recorder {
    fn record(&self, request: &http::Request, response: &http::Response) {
        let path = reqwest::Url::parse(&request.url)
            .map(|u| u.path().to_string())
            .ok();
        // Only headers that carry placeholders (auth) or the content type: others, like dates
        // and signatures, change from run to run.
        let headers = request
            .headers
            .iter()
            .filter(|(k, v)| v.contains("{{secret:") || k.eq_ignore_ascii_case("content-type"))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        let exchange = Exchange {
            request: RequestMatch {
                method: Some(request.method.clone()),
                path,
                headers,
                body_json: serde_json::from_slice(&request.body).ok(),
                body_contains: Vec::new(),
            },
            response: CannedResponse {
                status: response.status,
                headers: response
                    .headers
                    .iter()
                    .filter(|(k, _)| {
                        k.eq_ignore_ascii_case("content-type")
                            || k.eq_ignore_ascii_case("retry-after")
                    })
                    .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                    .collect(),
                body: String::from_utf8_lossy(&response.body).into_owned(),
            },
        };
        self.exchanges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(exchange);
    }
}

/// The result of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    pub name: String,
    /// What the plugin returned, as `outcome(detail)`.
    pub got: String,
    /// Empty when the case passed.
    pub problems: Vec<String>,
}

/// Every case's result.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub plugin: String,
    pub results: Vec<CaseResult>,
}

impl Report {
    /// Cases that passed.
    pub fn passed(&self) -> usize {
        self.results
            .iter()
            .filter(|r| r.problems.is_empty())
            .count()
    }

    /// Cases that failed.
    pub fn failed(&self) -> usize {
        self.results.len() - self.passed()
    }

    /// The pass/fail table, with the closing `N passed, N failed` line.
    pub fn table(&self) -> String {
        let width = self
            .results
            .iter()
            .map(|r| r.name.len())
            .max()
            .unwrap_or(4)
            .max(4);
        let mut out = format!("{:width$}  {:32}  result\n", "case", "outcome");
        for r in &self.results {
            let verdict = if r.problems.is_empty() {
                "pass".to_string()
            } else {
                format!("FAIL: {}", r.problems.join("; "))
            };
            out.push_str(&format!("{:width$}  {:32}  {verdict}\n", r.name, r.got));
        }
        out.push_str(&format!(
            "{} passed, {} failed\n",
            self.passed(),
            self.failed()
        ));
        out
    }
}

fn priority(text: &str) -> anyhow::Result<Priority> {
    Ok(match text {
        "realtime" => Priority::Realtime,
        "batch" => Priority::Batch,
        "ads" => Priority::Ads,
        other => anyhow::bail!("priority `{other}` is not realtime, batch or ads"),
    })
}

/// Reads a cases file.
pub fn read_cases(path: &Path) -> anyhow::Result<CasesFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_norway::from_str(&text)
        .with_context(|| format!("{} is not a valid cases file", path.display()))
}

fn capabilities(
    setup: &PluginSecrets,
    name: &str,
    allowed: &[String],
) -> anyhow::Result<Capabilities> {
    Ok(Capabilities::new(
        name.to_string(),
        allowed.iter().map(|h| AllowedHost::parse(h)).collect(),
        setup.clone(),
        Arc::new(PluginCache::default()),
        crate::host::http_client(&[])?,
        Default::default(),
    ))
}

async fn load(
    wasm: &Path,
    cases: &CasesFile,
    live: bool,
) -> anyhow::Result<(PluginRuntime, LoadedPlugin, PluginSecrets)> {
    let limits = PluginLimits {
        timeout: Duration::from_secs(10),
        memory_bytes: 128 << 20,
    };
    let runtime = PluginRuntime::new(&RuntimeConfig::default(), limits.memory_bytes)?;
    let secrets = PluginSecrets::from_values(cases.plugin.secrets.clone());
    let name = wasm
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut caps = capabilities(&secrets, &name, &cases.plugin.allowed_hosts)?;
    if !live {
        caps = caps.with_script(Arc::new(NoNetwork));
    }
    let config = cases.plugin.config.clone().into_iter().collect();
    let loaded = runtime.load_file(&name, wasm, caps, limits, config).await?;
    Ok((runtime, loaded, secrets))
}

fn delivery_of(index: usize, case: &Case) -> anyhow::Result<Delivery> {
    Ok(Delivery {
        key: format!("case-{index}/0"),
        recipient: case.delivery.recipient.clone(),
        content: case.delivery.content.to_string(),
        priority: priority(&case.delivery.priority)
            .with_context(|| format!("case `{}`", case.name))?,
        attempt: 1,
    })
}

/// Runs every case of `cases` against the component at `wasm`, offline.
pub async fn run(wasm: &Path, cases: &CasesFile) -> anyhow::Result<Report> {
    let (_runtime, loaded, secrets) = load(wasm, cases, false).await?;
    let mut report = Report {
        plugin: format!("{} {}", loaded.info.name, loaded.info.version),
        results: Vec::new(),
    };
    for (index, case) in cases.cases.iter().enumerate() {
        let script = Arc::new(CaseScript::new(case.exchanges.clone()));
        let caps = capabilities(&secrets, &loaded.name, &[])?.with_script(script.clone());
        let plugin = loaded.with_capabilities(caps);
        let delivery = delivery_of(index, case)?;
        let (got, mut problems) = match plugin.deliver(&[delivery]).await {
            Ok(outcomes) => match outcomes.first() {
                Some(outcome) => (
                    describe(&Expect::of(outcome)),
                    case.expect.mismatch(outcome).into_iter().collect(),
                ),
                None => ("nothing".to_string(), vec!["no outcome".to_string()]),
            },
            Err(error) => ("call failed".to_string(), vec![error.to_string()]),
        };
        problems.extend(script.problems());
        report.results.push(CaseResult {
            name: case.name.clone(),
            got,
            problems,
        });
    }
    Ok(report)
}

/// Runs every case against the live endpoints in the plugin's config, and returns the cases
/// with the exchanges and outcomes seen. Needs `plugin.allowed_hosts`.
pub async fn record(wasm: &Path, cases: &CasesFile) -> anyhow::Result<CasesFile> {
    anyhow::ensure!(
        !cases.plugin.allowed_hosts.is_empty(),
        "recording needs `plugin.allowed_hosts` in the cases file: the hosts the plugin may reach"
    );
    let (_runtime, loaded, secrets) = load(wasm, cases, true).await?;
    let mut recorded = cases.clone();
    for (index, case) in recorded.cases.iter_mut().enumerate() {
        let recorder = Arc::new(Recorder::default());
        let caps = capabilities(&secrets, &loaded.name, &cases.plugin.allowed_hosts)?
            .with_recorder(recorder.clone());
        let plugin = loaded.with_capabilities(caps);
        let outcomes = plugin
            .deliver(&[delivery_of(index, case)?])
            .await
            .with_context(|| format!("case `{}`", case.name))?;
        let outcome = outcomes.first().context("the plugin returned no outcome")?;
        case.expect = Expect::of(outcome);
        case.exchanges =
            std::mem::take(&mut *recorder.exchanges.lock().unwrap_or_else(|p| p.into_inner()));
    }
    Ok(recorded)
}

/// Writes a cases file, keeping a short header comment.
pub fn write_cases(path: &Path, cases: &CasesFile) -> anyhow::Result<()> {
    let yaml = serde_norway::to_string(cases)?;
    let text = format!(
        "# Offline test cases for `switchboard plugin test`. Recorded exchanges; secrets appear only\n# as {{{{secret:NAME}}}} placeholders.\n{yaml}"
    );
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_bodies_match_by_subset() {
        let actual = serde_json::json!({"to": "+1", "text": "hi", "meta": {"a": 1, "b": 2}});
        assert!(json_contains(
            &actual,
            &serde_json::json!({"to": "+1", "meta": {"a": 1}})
        ));
        assert!(!json_contains(&actual, &serde_json::json!({"to": "+2"})));
        assert!(!json_contains(&actual, &serde_json::json!({"missing": 1})));
    }

    #[test]
    fn requests_match_on_raw_placeholders() {
        let request = http::Request {
            method: "POST".into(),
            url: "https://api.example/v1/messages?x=1".into(),
            headers: vec![("X-Api-Key".into(), "{{secret:api_key}}".into())],
            body: br#"{"to":"+1"}"#.to_vec(),
        };
        let matcher = RequestMatch {
            method: Some("post".into()),
            path: Some("/v1/messages".into()),
            headers: [("x-api-key".to_string(), "{{secret:api_key}}".to_string())].into(),
            body_json: Some(serde_json::json!({"to": "+1"})),
            body_contains: vec!["+1".into()],
        };
        assert_eq!(matcher.mismatch(&request), None);
        let wrong = RequestMatch {
            path: Some("/v2/messages".into()),
            ..Default::default()
        };
        assert!(
            wrong
                .mismatch(&request)
                .is_some_and(|m| m.contains("/v2/messages"))
        );
    }

    #[test]
    fn expectations_compare_outcome_and_detail() {
        let expect = Expect {
            outcome: "retry".into(),
            id: None,
            code: None,
            after_ms: Some(1000),
        };
        let got = Outcome::Retry(crate::contract::RetryInfo {
            reason: "429".into(),
            after_ms: Some(1000),
        });
        assert_eq!(expect.mismatch(&got), None);
        let other = Outcome::InvalidRecipient("gone".into());
        assert!(expect.mismatch(&other).is_some());
    }
}
