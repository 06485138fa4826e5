//! The operator CLI's side of the admin API: where the API is, the requests, and the tables
//! `switchboard weights|plugins|vendors` print.
//!
//! Owns finding the API (`--admin`, else the config file's `admin.listen`, else the default
//! address) and its token, and turning the server's `{"error": …}` answers into errors that
//! carry its message. Prints nothing itself: the CLI prints the tables or the raw JSON.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

use crate::config::Config;

/// Where the admin API is when nothing says otherwise.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8088";

/// An admin API to talk to, with the token for mutations.
pub struct AdminClient {
    base: Url,
    token: Option<String>,
    http: reqwest::Client,
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminClient")
            .field("base", &self.base.as_str())
            .field("token", &self.token.as_ref().map(|_| "<secret>"))
            .finish()
    }
}

/// The base URL for a host whose config file listens on `listen`: a wildcard address is reached
/// on loopback.
fn url_of_listen(listen: &str) -> anyhow::Result<String> {
    let listen = listen.trim();
    anyhow::ensure!(
        !listen.is_empty(),
        "admin.listen is empty in the config: the host's admin API is off"
    );
    let Ok(addr) = listen.parse::<std::net::SocketAddr>() else {
        // A host name, e.g. `localhost:8088`.
        return Ok(format!("http://{listen}"));
    };
    anyhow::ensure!(
        addr.port() != 0,
        "admin.listen `{listen}` picks a free port at start; pass --admin with the address the host logged (`admin API listening`)"
    );
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    Ok(format!(
        "http://{}",
        std::net::SocketAddr::new(ip, addr.port())
    ))
}

impl AdminClient {
    /// The client for `admin` (a URL, or `host:port`), else the admin API of the config file
    /// `config`, else [`DEFAULT_URL`]. The token is `token`, else the config file's
    /// `admin.token`.
    pub fn resolve(
        admin: Option<&str>,
        token: Option<&str>,
        config: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let config = config
            .map(|path| -> anyhow::Result<Config> {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                let mut config = Config::parse(&text, path)?;
                config.source = Some(path.to_path_buf());
                Ok(config)
            })
            .transpose()?;
        let url = match (admin, &config) {
            (Some(admin), _) if admin.contains("://") => admin.to_string(),
            (Some(admin), _) => format!("http://{admin}"),
            (None, Some(config)) => url_of_listen(&config.admin.listen)?,
            (None, None) => DEFAULT_URL.to_string(),
        };
        let token = match (token, &config) {
            (Some(token), _) => Some(token.trim().to_string()),
            (None, Some(config)) if config.admin.token.is_some() => {
                super::resolve_token(config)?.map(|t| t.expose().to_string())
            }
            _ => None,
        }
        .filter(|t| !t.is_empty());
        Self::new(&url, token)
    }

    /// A client for the admin API at `url`.
    pub fn new(url: &str, token: Option<String>) -> anyhow::Result<Self> {
        let base = Url::parse(url).with_context(|| format!("`{url}` is not a URL"))?;
        anyhow::ensure!(
            matches!(base.scheme(), "http" | "https"),
            "`{url}` is not an http:// or https:// URL"
        );
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            // An upload is compiled before the answer comes.
            .timeout(Duration::from_secs(300))
            .build()
            .context("building the HTTP client")?;
        Ok(Self { base, token, http })
    }

    /// The base URL.
    pub fn url(&self) -> &str {
        self.base.as_str()
    }

    fn endpoint(&self, segments: &[&str]) -> anyhow::Result<Url> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| anyhow::anyhow!("`{}` cannot be a base URL", self.base))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<reqwest::Body>,
    ) -> anyhow::Result<Value> {
        let mut request = self.http.request(method.clone(), url.clone());
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the admin API at {}", self.base))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .with_context(|| format!("reading the answer to {method} {}", url.path()))?;
        if !status.is_success() {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("error")?.as_str().map(str::to_string))
                .unwrap_or(text);
            let hint = match status {
                StatusCode::UNAUTHORIZED => " (pass --token or set SWITCHBOARD_ADMIN_TOKEN)",
                _ => "",
            };
            anyhow::bail!("{message}{hint} [HTTP {}]", status.as_u16());
        }
        serde_json::from_str(&text)
            .with_context(|| format!("the answer to {method} {} is not JSON", url.path()))
    }

    async fn json(
        &self,
        method: Method,
        segments: &[&str],
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = self.endpoint(segments)?;
        let body = body.map(|b| reqwest::Body::from(b.to_string()));
        self.send(method, url, body).await
    }

    /// `GET /v1/channels/{channel}/weights`.
    pub async fn weights(&self, channel: &str) -> anyhow::Result<Value> {
        self.json(Method::GET, &["v1", "channels", channel, "weights"], None)
            .await
    }

    /// `PUT /v1/channels/{channel}/weights`: changes the vendors named, the others keep theirs.
    pub async fn set_weights(
        &self,
        channel: &str,
        changes: &[(String, u32)],
    ) -> anyhow::Result<Value> {
        let body: serde_json::Map<String, Value> = changes
            .iter()
            .map(|(vendor, weight)| (vendor.clone(), Value::from(*weight)))
            .collect();
        self.json(
            Method::PUT,
            &["v1", "channels", channel, "weights"],
            Some(Value::Object(body)),
        )
        .await
    }

    /// `DELETE /v1/channels/{channel}/weights`: back to the config file's weights.
    pub async fn reset_weights(&self, channel: &str) -> anyhow::Result<Value> {
        self.json(
            Method::DELETE,
            &["v1", "channels", channel, "weights"],
            None,
        )
        .await
    }

    /// `GET /v1/plugins`.
    pub async fn plugins(&self) -> anyhow::Result<Value> {
        self.json(Method::GET, &["v1", "plugins"], None).await
    }

    /// `POST /v1/plugins/{name}`: uploads a component; `stage` loads it without activating.
    pub async fn upload(&self, name: &str, bytes: Vec<u8>, stage: bool) -> anyhow::Result<Value> {
        let mut url = self.endpoint(&["v1", "plugins", name])?;
        if stage {
            url.set_query(Some("activate=false"));
        }
        self.send(Method::POST, url, Some(reqwest::Body::from(bytes)))
            .await
    }

    /// `POST /v1/plugins/{name}/activate`.
    pub async fn activate(&self, name: &str, id: &str) -> anyhow::Result<Value> {
        self.json(
            Method::POST,
            &["v1", "plugins", name, "activate"],
            Some(serde_json::json!({ "id": id })),
        )
        .await
    }

    /// `POST /v1/plugins/{name}/rollback`.
    pub async fn rollback(&self, name: &str) -> anyhow::Result<Value> {
        self.json(Method::POST, &["v1", "plugins", name, "rollback"], None)
            .await
    }

    /// `PUT /v1/plugins/{name}/canary`, or `DELETE` when `percent` is 0.
    pub async fn canary(&self, name: &str, version: &str, percent: u8) -> anyhow::Result<Value> {
        let segments = ["v1", "plugins", name, "canary"];
        if percent == 0 {
            return self.json(Method::DELETE, &segments, None).await;
        }
        self.json(
            Method::PUT,
            &segments,
            Some(serde_json::json!({ "version": version, "percent": percent })),
        )
        .await
    }

    /// `GET /v1/vendors`.
    pub async fn vendors(&self) -> anyhow::Result<Value> {
        self.json(Method::GET, &["v1", "vendors"], None).await
    }

    pub async fn fleet(&self) -> anyhow::Result<Value> {
        self.json(Method::GET, &["v1", "fleet"], None).await
    }
}

/// Parses `VENDOR=WEIGHT`.
pub fn parse_weight(arg: &str) -> Result<(String, u32), String> {
    let (vendor, weight) = arg
        .split_once('=')
        .ok_or_else(|| format!("expected VENDOR=WEIGHT, e.g. sms-twilio=70, not `{arg}`"))?;
    let vendor = vendor.trim();
    if vendor.is_empty() {
        return Err(format!(
            "expected VENDOR=WEIGHT, but `{arg}` names no vendor"
        ));
    }
    let weight = weight.trim().parse::<u32>().map_err(|_| {
        format!("expected VENDOR=WEIGHT with a whole number 0 or above, not `{arg}`")
    })?;
    Ok((vendor.to_string(), weight))
}

/// Lines of columns, padded to line up; columns listed in `right` are aligned right.
fn table(header: &[&str], rows: &[Vec<String>], right: &[usize]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let width = widths.get(i).copied().unwrap_or(0);
            let pad = " ".repeat(width.saturating_sub(cell.chars().count()));
            if i > 0 {
                out.push_str("  ");
            }
            if right.contains(&i) {
                out.push_str(&pad);
                out.push_str(cell);
            } else {
                out.push_str(cell);
                out.push_str(&pad);
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

fn text(value: &Value, key: &str) -> String {
    match value.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}

fn number(value: &Value, key: &str) -> u64 {
    value.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// A channel's weights: vendor, weight in force, share of the channel, config file's weight.
pub fn render_weights(reply: &Value) -> String {
    let empty = serde_json::Map::new();
    let weights = reply
        .get("weights")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let baseline = reply.get("baseline").unwrap_or(&Value::Null);
    let total: u64 = weights.values().filter_map(Value::as_u64).sum();
    let rows: Vec<Vec<String>> = weights
        .iter()
        .map(|(vendor, weight)| {
            let weight = weight.as_u64().unwrap_or(0);
            let share = if total == 0 {
                0.0
            } else {
                weight as f64 * 100.0 / total as f64
            };
            vec![
                vendor.clone(),
                weight.to_string(),
                format!("{share:.1}%"),
                number(baseline, vendor).to_string(),
            ]
        })
        .collect();
    let mut out = format!("channel {}\n", text(reply, "channel"));
    out.push_str(&table(
        &["vendor", "weight", "share", "config"],
        &rows,
        &[1, 2, 3],
    ));
    if reply.get("weights") != reply.get("baseline") {
        out.push_str(
            "(live weights differ from the config file's; `switchboard weights reset` goes back)\n",
        );
    }
    out
}

/// Every plugin: its active version, canary and what a rollback goes back to.
pub fn render_plugins(reply: &Value) -> String {
    let rows: Vec<Vec<String>> = reply
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|plugin| {
            let active = plugin.get("active").unwrap_or(&Value::Null);
            let canary = match plugin.get("canary") {
                Some(c) if !c.is_null() => format!(
                    "{} at {}%",
                    text(c.get("version").unwrap_or(&Value::Null), "id"),
                    number(c, "percent")
                ),
                _ => "-".into(),
            };
            let list = |key: &str| match plugin.get(key).and_then(Value::as_array) {
                Some(versions) if !versions.is_empty() => versions
                    .iter()
                    .map(|v| text(v, "id"))
                    .collect::<Vec<_>>()
                    .join(","),
                _ => "-".into(),
            };
            let previous = plugin
                .get("previous")
                .and_then(Value::as_array)
                .and_then(|p| p.first())
                .map_or_else(|| "-".to_string(), |v| text(v, "id"));
            vec![
                text(plugin, "name"),
                text(plugin, "channel"),
                text(active, "id"),
                text(active, "version"),
                text(active, "source"),
                canary,
                previous,
                list("staged"),
            ]
        })
        .collect();
    table(
        &[
            "plugin",
            "channel",
            "active",
            "version",
            "source",
            "canary",
            "rollback to",
            "staged",
        ],
        &rows,
        &[],
    )
}

/// Every vendor's breaker and its sliding window.
pub fn render_vendors(reply: &Value) -> String {
    let rows: Vec<Vec<String>> = reply
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|vendor| {
            let window = vendor.get("window").unwrap_or(&Value::Null);
            let ok = number(window, "ok");
            let errors = number(window, "errors");
            let timeouts = number(window, "timeouts");
            let error_percent = vendor
                .get("error_percent")
                .and_then(Value::as_f64)
                .unwrap_or(0.0);
            let mean = vendor
                .get("mean_latency_ms")
                .and_then(Value::as_f64)
                .unwrap_or(0.0);
            vec![
                text(vendor, "vendor"),
                text(vendor, "breaker"),
                number(vendor, "trips").to_string(),
                (ok + errors + timeouts).to_string(),
                errors.to_string(),
                timeouts.to_string(),
                format!("{error_percent:.1}%"),
                format!("{mean:.1}"),
            ]
        })
        .collect();
    table(
        &[
            "vendor",
            "breaker",
            "trips",
            "deliveries",
            "errors",
            "timeouts",
            "error %",
            "mean ms",
        ],
        &rows,
        &[2, 3, 4, 5, 6, 7],
    )
}

/// One line about a version after an upload, an activation or a rollback.
pub fn render_version(reply: &Value) -> String {
    let plugin = text(reply, "plugin");
    let id = text(reply, "id");
    let state = if reply.get("active").and_then(Value::as_bool) == Some(true) {
        "is active".to_string()
    } else {
        format!(
            "is staged, not active; activate it with `switchboard plugins activate {plugin} {id}`"
        )
    };
    format!(
        "{plugin}: version {} (id {id}) {state}\n",
        text(reply, "version")
    )
}

/// One line about a plugin's canary after a change.
pub fn render_canary(reply: &Value) -> String {
    let plugin = text(reply, "name");
    match reply.get("canary") {
        Some(canary) if !canary.is_null() => format!(
            "{plugin}: canary {} takes {}% of calls; active stays {}\n",
            text(canary.get("version").unwrap_or(&Value::Null), "id"),
            number(canary, "percent"),
            text(reply.get("active").unwrap_or(&Value::Null), "id"),
        ),
        _ => format!(
            "{plugin}: no canary; active is {}\n",
            text(reply.get("active").unwrap_or(&Value::Null), "id")
        ),
    }
}

/// `switchboard fleet`: one line per live host, a host behind the desired state marked.
pub fn render_fleet(reply: &Value) -> String {
    let desired = reply
        .get("desired_offset")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let hosts = reply
        .get("hosts")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let rows: Vec<Vec<String>> = hosts
        .iter()
        .map(|host| {
            let applied = host
                .get("applied_offset")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            let state = if host.get("lagging").and_then(Value::as_bool) == Some(true) {
                format!("behind by {}", desired - applied)
            } else {
                "current".to_string()
            };
            let plugins = host
                .get("plugins")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|p| {
                    let canary = p
                        .get("canary")
                        .filter(|c| !c.is_null())
                        .map(|c| format!(" +{}@{}%", text(c, "id"), number(c, "percent")))
                        .unwrap_or_default();
                    format!("{}={}{canary}", text(p, "name"), text(p, "active"))
                })
                .collect::<Vec<_>>()
                .join(" ");
            let open: Vec<String> = host
                .get("breakers")
                .and_then(Value::as_object)
                .map(|b| {
                    b.iter()
                        .filter(|(_, state)| state.as_str() != Some("closed"))
                        .map(|(vendor, state)| {
                            format!("{vendor}:{}", state.as_str().unwrap_or("?"))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let lag: i64 = host
                .get("lanes_lag")
                .and_then(Value::as_object)
                .map(|l| {
                    l.values()
                        .filter_map(Value::as_i64)
                        .filter(|v| *v > 0)
                        .sum()
                })
                .unwrap_or(0);
            let refused = host
                .get("refusals")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let mut name = text(host, "host");
            if host.get("this_host").and_then(Value::as_bool) == Some(true) {
                name.push_str(" *");
            }
            vec![
                name,
                applied.to_string(),
                state,
                plugins,
                if open.is_empty() {
                    "all closed".into()
                } else {
                    open.join(" ")
                },
                lag.to_string(),
                refused.to_string(),
                format!("{:.1}", number(host, "age_ms") as f64 / 1000.0),
            ]
        })
        .collect();
    let mut out = String::new();
    if reply.get("control").and_then(Value::as_bool) != Some(true) {
        out.push_str("control plane off (control.enabled): this host only\n");
    }
    out.push_str(&format!("desired state: control-topic offset {desired}\n"));
    out.push_str(&table(
        &[
            "host", "applied", "state", "plugins", "breakers", "lag", "refused", "age s",
        ],
        &rows,
        &[1, 5, 6, 7],
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_parse_or_say_what_is_expected() {
        assert_eq!(parse_weight("sms-nhn=30"), Ok(("sms-nhn".into(), 30)));
        for bad in ["sms-nhn", "sms-nhn=", "=30", "sms-nhn=-1", "sms-nhn=x"] {
            let error = parse_weight(bad).err().unwrap_or_default();
            assert!(error.contains("expected VENDOR=WEIGHT"), "{bad}: {error}");
        }
    }

    #[test]
    fn a_wildcard_listen_address_is_reached_on_loopback() -> anyhow::Result<()> {
        assert_eq!(url_of_listen("0.0.0.0:8088")?, "http://127.0.0.1:8088");
        assert_eq!(url_of_listen("[::]:9000")?, "http://[::1]:9000");
        assert_eq!(url_of_listen("10.0.0.5:8088")?, "http://10.0.0.5:8088");
        assert_eq!(url_of_listen("localhost:8088")?, "http://localhost:8088");
        assert!(url_of_listen("127.0.0.1:0").is_err());
        assert!(url_of_listen("").is_err());
        Ok(())
    }

    #[test]
    fn endpoints_escape_their_segments() -> anyhow::Result<()> {
        let client = AdminClient::new("http://127.0.0.1:8088/admin/", None)?;
        let url = client.endpoint(&["v1", "channels", "a b/c", "weights"])?;
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:8088/admin/v1/channels/a%20b%2Fc/weights"
        );
        Ok(())
    }

    #[test]
    fn the_weights_table_shows_shares() {
        let reply = serde_json::json!({
            "channel": "sms",
            "weights": {"sms-nhn": 30, "sms-twilio": 70},
            "baseline": {"sms-nhn": 50, "sms-twilio": 50},
        });
        let out = render_weights(&reply);
        assert!(out.contains("sms-twilio      70  70.0%      50"), "{out}");
        assert!(out.contains("differ from the config file's"), "{out}");
    }
}
