//! The web console in a real browser: headless Chromium driven through chromedriver (WebDriver)
//! against a real host with the demo's vendors and the bundled components. Weights typed into
//! the page and applied change the routing; without the token the page shows the refusal and
//! nothing changes; the page keeps up with the host (weights after a refresh, a breaker badge per
//! vendor, deliveries plotted from the series endpoint in a uPlot chart with axes and a legend);
//! a plugin version uploaded through the page's file field can be rolled back and activated
//! again with its buttons. A screenshot of the charts is left at
//! `$CARGO_TARGET_TMPDIR/console-charts.png` (`target/tmp/`); the test log prints its path.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`make browser`, which `make test` runs). The
//! test fails, rather than skips, when they are missing: a console nobody tested is not tested.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use switchboard::RunningHost;
use switchboard::config::SecretSource;
use switchboard::demo::{DemoVendors, demo_envelope, produce};
use switchboard::plugin::registry::version_id;
use switchboard_integration_tests::{plugin_dir, plugin_path, relabelled_component};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
const TOKEN: &str = "console-test-token-8c2e";
/// The key the page keeps the token under in `localStorage`.
const TOKEN_KEY: &str = "switchboard.admin.token";
/// Long enough for a loaded machine; each wait ends as soon as its condition holds.
const WAIT: Duration = Duration::from_secs(30);

/// A chromedriver of this test's own, on a free port. Dropping it kills chromedriver and the
/// browsers it started (its whole process group), also when the test fails half-way.
struct ChromeDriver {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl ChromeDriver {
    fn start() -> anyhow::Result<Self> {
        ensure!(
            Path::new(CHROMEDRIVER).exists() && Path::new(CHROMIUM).exists(),
            "{CHROMEDRIVER} or {CHROMIUM} is missing: run `make browser` (or `make test`, which \
             runs it) to install Debian's chromium and chromium-driver"
        );
        // A free port: bound, read, released. Another process taking it in between is unlikely,
        // and shows as chromedriver failing to start, with its log.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("chromedriver.log");
        let out = File::create(&log)?;
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            // Its own process group, so one signal also reaches the browsers it starts.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {CHROMEDRIVER}"))?;
        Ok(Self {
            child,
            port,
            log,
            _dir: dir,
        })
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for chromedriver to be ready, then opens a headless Chromium session.
    async fn browser(&mut self) -> anyhow::Result<Client> {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "chromedriver exited ({status}) before it was ready:\n{}",
                    self.log()
                );
            }
            let ready = match http.get(format!("{}/status", self.url())).send().await {
                Ok(response) => response.json::<Value>().await.ok(),
                Err(_) => None,
            };
            if ready.is_some_and(|s| s["value"]["ready"] == true) {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "chromedriver not ready after {WAIT:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
            }),
        );
        // Plain HTTP: chromedriver is on loopback, so no TLS stack is needed.
        ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url())
            .await
            .with_context(|| format!("opening a Chromium session:\n{}", self.log()))
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        // The whole group (chromedriver and its browsers), then chromedriver itself in case the
        // group signal could not be sent; then reap it.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Calls `probe` until it gives a value, for at most [`WAIT`]; fails saying what never came.
async fn eventually<T>(
    what: &str,
    mut probe: impl AsyncFnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = probe().await? {
            return Ok(value);
        }
        ensure!(Instant::now() < deadline, "{what}: not after {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn css(selector: &str) -> Locator<'_> {
    Locator::Css(selector)
}

fn weight_input(channel: &str, vendor: &str) -> String {
    format!(r#"input[data-channel="{channel}"][data-vendor="{vendor}"]"#)
}

fn shown_weight(channel: &str, vendor: &str) -> String {
    format!(r#"[data-current-weight][data-channel="{channel}"][data-vendor="{vendor}"]"#)
}

/// Finds `selector` and scrolls it to the middle of the window, as a user would before using
/// it: WebDriver's own scrolling can leave it under the page's sticky header.
async fn in_view(page: &Client, selector: &str) -> anyhow::Result<Element> {
    let element = page
        .wait()
        .at_most(WAIT)
        .for_element(css(selector))
        .await
        .with_context(|| format!("no `{selector}` on the page"))?;
    page.execute(
        "arguments[0].scrollIntoView({block: 'center'});",
        vec![serde_json::to_value(&element)?],
    )
    .await?;
    Ok(element)
}

/// Clicks `selector`.
async fn click(page: &Client, selector: &str) -> anyhow::Result<()> {
    in_view(page, selector).await?.click().await?;
    Ok(())
}

/// Replaces what an input holds with `text`, as a user would type it.
async fn type_into(page: &Client, selector: &str, text: &str) -> anyhow::Result<()> {
    let input = in_view(page, selector).await?;
    input.clear().await?;
    input.send_keys(text).await?;
    Ok(())
}

/// The visible text of `selector` (empty while it is hidden).
async fn text_of(page: &Client, selector: &str) -> anyhow::Result<String> {
    Ok(page.find(css(selector)).await?.text().await?)
}

/// What the page shows for `channel`: the weights in force and what each input holds.
async fn page_weights(
    page: &Client,
    channel: &str,
    vendors: &[&str],
) -> anyhow::Result<(BTreeMap<String, String>, BTreeMap<String, String>)> {
    let (mut shown, mut inputs) = (BTreeMap::new(), BTreeMap::new());
    for vendor in vendors {
        shown.insert(
            vendor.to_string(),
            text_of(page, &shown_weight(channel, vendor)).await?,
        );
        let input = page.find(css(&weight_input(channel, vendor))).await?;
        inputs.insert(
            vendor.to_string(),
            input.prop("value").await?.unwrap_or_default(),
        );
    }
    Ok((shown, inputs))
}

/// How many times the page has read `/v1/status`.
async fn refreshes(page: &Client) -> anyhow::Result<u64> {
    let seq = page
        .find(css("#updated"))
        .await?
        .attr("data-seq")
        .await?
        .unwrap_or_default();
    Ok(seq.parse().unwrap_or(0))
}

/// Waits until the page has read the host twice more, so its latest read began after now.
async fn next_refresh(page: &Client) -> anyhow::Result<()> {
    let from = refreshes(page).await?;
    eventually("the page reading /v1/status again", async || {
        Ok((refreshes(page).await? >= from + 2).then_some(()))
    })
    .await
}

async fn api_get(http: &reqwest::Client, base: &str, path: &str) -> anyhow::Result<Value> {
    let response = http.get(format!("{base}{path}")).send().await?;
    ensure!(
        response.status().is_success(),
        "GET {path}: {}",
        response.status()
    );
    Ok(response.json().await?)
}

fn weights(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn strings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The active version id of plugin `name`, as the API reports it.
async fn active_id(http: &reqwest::Client, base: &str, name: &str) -> anyhow::Result<String> {
    let plugins = api_get(http, base, "/v1/plugins").await?;
    let plugin = plugins
        .as_array()
        .and_then(|all| all.iter().find(|p| p["name"] == name))
        .with_context(|| format!("no plugin {name}"))?;
    Ok(plugin["active"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

/// Waits until plugin `name`'s active version is `id`.
async fn until_active(
    http: &reqwest::Client,
    base: &str,
    name: &str,
    id: &str,
) -> anyhow::Result<()> {
    eventually(&format!("{name} running version {id}"), async || {
        Ok((active_id(http, base, name).await? == id).then_some(()))
    })
    .await
}

/// How 100 picks of channel `sms` fall between its vendors.
fn split(host: &RunningHost) -> anyhow::Result<BTreeMap<String, u32>> {
    let mut counts = BTreeMap::new();
    for _ in 0..100 {
        let vendor = host.router.pick("sms", None).context("no sms vendor")?;
        *counts.entry(vendor).or_default() += 1;
    }
    Ok(counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_sets_weights_shows_refusals_and_keeps_up_with_the_host() -> anyhow::Result<()>
{
    // First, so a machine without the browser fails at once and says what to run.
    let mut driver = ChromeDriver::start()?;
    let vendors = DemoVendors::start(Duration::from_millis(1)).await?;
    let mut config = vendors.host_config(&plugin_dir())?;
    config.admin.token = Some(SecretSource::Value(TOKEN.into()));
    let topic = config.kafka.topics[0].clone();
    let host = switchboard::start(config).await?;
    let base = format!(
        "http://{}",
        host.admin_addr.context("the admin API listens")?
    );
    let page = driver.browser().await?;
    let outcome = drive(&page, &host, &base, &topic).await;
    // Ends the browser session whatever happened; the driver's guard kills what is left.
    let closed = page.close().await;
    host.stop().await?;
    outcome?;
    closed?;
    Ok(())
}

async fn drive(page: &Client, host: &RunningHost, base: &str, topic: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let sms = ["sms-nhn", "sms-twilio"];
    let twilio = weight_input("sms", "sms-twilio");
    let nhn = weight_input("sms", "sms-nhn");

    page.goto(&format!("{base}/")).await?;
    ensure!(
        page.source().await?.contains("Switchboard console"),
        "the console page is served at /"
    );
    // The inputs appear with the first status read.
    page.wait().at_most(WAIT).for_element(css(&twilio)).await?;
    let (shown, _) = page_weights(page, "sms", &sms).await?;
    ensure!(
        shown == strings(&[("sms-nhn", "50"), ("sms-twilio", "50")]),
        "the config's weights: {shown:?}"
    );

    // A breaker badge for every vendor the host reports, saying its state.
    let status = api_get(&http, base, "/v1/status").await?;
    let reported = status["vendors"].as_array().context("vendors")?;
    ensure!(reported.len() == 5, "five demo vendors: {reported:?}");
    for vendor in reported {
        let name = vendor["vendor"].as_str().context("vendor name")?;
        let state = vendor["breaker"].as_str().context("breaker state")?;
        let badge = page
            .find(css(&format!(r#"[data-breaker="{name}"]"#)))
            .await
            .with_context(|| format!("no breaker badge for {name}"))?;
        let (text, class) = (badge.text().await?, badge.attr("class").await?);
        ensure!(
            text.eq_ignore_ascii_case(state),
            "{name}: badge `{text}`, host `{state}`"
        );
        ensure!(
            class
                .unwrap_or_default()
                .split(' ')
                .any(|c| c == format!("breaker-{state}")),
            "{name}: the badge is coloured for `{state}`"
        );
    }

    // The fleet section lists this host, on the desired state.
    let row = in_view(page, r#"#fleet tr[data-host][data-state="current"]"#).await?;
    // The badge is upper-cased by its style.
    let row_text = row.text().await?.to_lowercase();
    ensure!(
        row_text.contains("this host") && row_text.contains("current"),
        "the fleet row marks this host as current: {row_text}"
    );

    // Without the token: the page shows the 401 and nothing changes.
    ensure!(
        page.find(css("#token"))
            .await?
            .prop("value")
            .await?
            .unwrap_or_default()
            .is_empty(),
        "a fresh browser profile has no token"
    );
    type_into(page, &twilio, "80").await?;
    type_into(page, &nhn, "20").await?;
    click(page, "button#apply-sms").await?;
    let error = eventually("the refusal shown on the page", async || {
        let text = text_of(page, "#error-text").await?;
        Ok((!text.is_empty()).then_some(text))
    })
    .await?;
    ensure!(
        error.contains("401") && error.contains("Bearer"),
        "the page shows the API's refusal: {error}"
    );
    let weights_now = &api_get(&http, base, "/v1/channels/sms/weights").await?["weights"];
    ensure!(
        *weights_now == json!({"sms-nhn": 50, "sms-twilio": 50}),
        "a refused Apply changes nothing: {weights_now}"
    );
    ensure!(
        host.router.weights("sms") == Some(weights(&[("sms-nhn", 50), ("sms-twilio", 50)])),
        "the router kept 50/50"
    );
    next_refresh(page).await?;
    let (shown, inputs) = page_weights(page, "sms", &sms).await?;
    ensure!(
        shown == strings(&[("sms-nhn", "50"), ("sms-twilio", "50")]),
        "the page shows the weights in force: {shown:?}"
    );
    ensure!(
        inputs == strings(&[("sms-nhn", "20"), ("sms-twilio", "80")]),
        "a refresh keeps what the operator typed: {inputs:?}"
    );

    // With the token (kept in localStorage), Apply changes the weights and the routing.
    type_into(page, "#token", TOKEN).await?;
    let stored = page
        .execute(
            "return localStorage.getItem(arguments[0]);",
            vec![json!(TOKEN_KEY)],
        )
        .await?;
    ensure!(stored == json!(TOKEN), "the token is kept: {stored}");
    click(page, "button#apply-sms").await?;
    eventually("the change confirmed on the page", async || {
        let notice = text_of(page, "#notice-text").await?;
        Ok(notice.contains("sms-twilio 80").then_some(()))
    })
    .await?;
    ensure!(
        text_of(page, "#error-text").await?.is_empty(),
        "the earlier error is gone"
    );
    // (a) The API, (b) the router, exactly 80/20 over one cycle of 100 picks.
    let weights_now = &api_get(&http, base, "/v1/channels/sms/weights").await?["weights"];
    ensure!(
        *weights_now == json!({"sms-nhn": 20, "sms-twilio": 80}),
        "GET weights after Apply: {weights_now}"
    );
    let target = weights(&[("sms-nhn", 20), ("sms-twilio", 80)]);
    ensure!(
        host.router.weights("sms").as_ref() == Some(&target),
        "router weights: {:?}",
        host.router.weights("sms")
    );
    let picks = split(host)?;
    ensure!(picks == target, "100 picks: {picks:?}");
    // (c) The page, after its next read of the host.
    next_refresh(page).await?;
    let (shown, inputs) = page_weights(page, "sms", &sms).await?;
    ensure!(
        shown == strings(&[("sms-nhn", "20"), ("sms-twilio", "80")]),
        "the page shows the new weights: {shown:?}"
    );
    ensure!(
        inputs == strings(&[("sms-nhn", "20"), ("sms-twilio", "80")]),
        "the inputs hold the weights in force: {inputs:?}"
    );

    // The token survives a reload.
    page.goto(&format!("{base}/")).await?;
    page.wait().at_most(WAIT).for_element(css(&twilio)).await?;
    let token = page.find(css("#token")).await?.prop("value").await?;
    ensure!(
        token.as_deref() == Some(TOKEN),
        "the token field is filled from localStorage"
    );

    // Deliveries show in the vendor's plot, read from the series endpoint.
    const MESSAGES: u64 = 30;
    produce(&host.bootstrap_servers, topic, MESSAGES, |i| {
        (format!("device-{i}"), demo_envelope(i))
    })
    .await?;
    eventually("the deliveries delivered", async || {
        Ok((host.counters.snapshot().deliveries_delivered >= MESSAGES).then_some(()))
    })
    .await?;
    let chart = r#"div.chart-plot[data-chart="throughput"][data-vendor="fcm"]"#;
    let plotted = eventually("the deliveries plotted", async || {
        let total = page.find(css(chart)).await?.attr("data-total").await?;
        let total: f64 = total.unwrap_or_default().parse().unwrap_or(0.0);
        Ok((total >= MESSAGES as f64).then_some(total))
    })
    .await?;
    ensure!(
        plotted == MESSAGES as f64,
        "fcm's plot counts {plotted} deliveries, the host made {MESSAGES}"
    );
    // A uPlot chart really rendered: its canvas, a legend naming the series (where hover values
    // show), and two axes.
    page.find(css(&format!("{chart} canvas")))
        .await
        .context("the plot has a canvas")?;
    let legend = text_of(page, &format!("{chart} .u-legend")).await?;
    ensure!(
        legend.contains("deliveries/s"),
        "the legend names the series: `{legend}`"
    );
    let axes = page.find_all(css(&format!("{chart} .u-axis"))).await?;
    ensure!(
        axes.len() == 2,
        "an x-axis and a y-axis: {} found",
        axes.len()
    );
    // uPlot draws axis labels and lines on the canvas, so they are read from the chart itself
    // (the wrapper's `uplot` property) and from the canvas's pixels.
    let drawn = page
        .execute(
            r#"const plot = document.querySelector(arguments[0]);
               const u = plot.uplot;
               const canvas = plot.querySelector("canvas");
               const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
               let painted = 0;
               for (let i = 3; i < pixels.length; i += 4) if (pixels[i] !== 0) painted++;
               return {
                 x: { scale: u.axes[0].scale, side: u.axes[0].side, time: u.scales.x.time === true },
                 y: { scale: u.axes[1].scale, side: u.axes[1].side, label: u.axes[1].label },
                 points: u.data[0].length,
                 painted,
               };"#,
            vec![json!(chart)],
        )
        .await?;
    ensure!(
        drawn["x"] == json!({"scale": "x", "side": 2, "time": true}),
        "a time x-axis below the plot: {drawn}"
    );
    ensure!(
        drawn["y"] == json!({"scale": "y", "side": 3, "label": "deliveries/s"}),
        "a y-axis on the left labelled with its unit: {drawn}"
    );
    let points: u64 = page
        .find(css(chart))
        .await?
        .attr("data-points")
        .await?
        .unwrap_or_default()
        .parse()
        .unwrap_or(0);
    ensure!(
        points > 0 && drawn["points"].as_u64() == Some(points),
        "data-points {points} is what the chart plots: {drawn}"
    );
    ensure!(
        drawn["painted"].as_u64().unwrap_or(0) > 0,
        "the chart drew on its canvas: {drawn}"
    );
    // A picture of the charts for whoever reads the test log. CARGO_TARGET_TMPDIR is where
    // cargo lets integration tests leave files; it is set when the test is compiled.
    in_view(page, r#"[data-vendor-card="fcm"]"#).await?;
    let png = page.screenshot().await?;
    ensure!(
        png.starts_with(b"\x89PNG"),
        "the screenshot is a PNG ({} bytes)",
        png.len()
    );
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-charts.png");
    std::fs::write(&shot, &png).with_context(|| format!("writing {}", shot.display()))?;
    eprintln!("the console's charts: {}", shot.display());

    // A new version uploaded through the page's file field, rolled back with its button, then
    // activated again from the staged list.
    let original = std::fs::read(plugin_path("sms-nhn"))?;
    let v2 = relabelled_component(&original, "v2");
    let (old_id, new_id) = (version_id(&original), version_id(&v2));
    ensure!(
        active_id(&http, base, "sms-nhn").await? == old_id,
        "sms-nhn starts on the config's component"
    );
    let upload_dir = tempfile::tempdir()?;
    let upload = upload_dir.path().join("sms-nhn-v2.wasm");
    std::fs::write(&upload, &v2)?;
    in_view(page, "#upload-file-sms-nhn")
        .await?
        .send_keys(&upload.display().to_string())
        .await?;
    click(page, "button#upload-sms-nhn").await?;
    until_active(&http, base, "sms-nhn", &new_id).await?;
    let activate_old = format!(r#"button[data-activate="sms-nhn"][data-id="{old_id}"]"#);
    in_view(page, &activate_old)
        .await
        .context("the replaced version is listed with an Activate button")?;
    click(page, "button#rollback-sms-nhn").await?;
    until_active(&http, base, "sms-nhn", &old_id).await?;
    let activate_new = format!(r#"button[data-activate="sms-nhn"][data-id="{new_id}"]"#);
    click(page, &activate_new)
        .await
        .context("the rolled-back version is listed as staged")?;
    until_active(&http, base, "sms-nhn", &new_id).await?;
    ensure!(
        text_of(page, "#error-text").await?.is_empty(),
        "no plugin action was refused"
    );

    // "Reset to config" goes back to the config's weights.
    click(page, "button#reset-sms").await?;
    eventually("the weights reset", async || {
        let now = host.router.weights("sms");
        Ok((now == Some(weights(&[("sms-nhn", 50), ("sms-twilio", 50)]))).then_some(()))
    })
    .await?;
    next_refresh(page).await?;
    let (shown, _) = page_weights(page, "sms", &sms).await?;
    ensure!(
        shown == strings(&[("sms-nhn", "50"), ("sms-twilio", "50")]),
        "the page shows the reset weights: {shown:?}"
    );
    Ok(())
}
