//! What an operator's tools read from a running host, checked as they read it: `/readyz` for a
//! readiness probe, and `/metrics` against the metric tables in docs/OPERATIONS.md (every
//! documented series is served, and every served series is documented), with the end-to-end
//! latency per lane and the dead letters by reason class counting what happened.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context as _;
use switchboard::demo::{DemoVendors, demo_envelope, produce};
use switchboard_integration_tests::{plugin_dir, wait_until};

const WAIT: Duration = Duration::from_secs(60);
const RECORDS: u64 = 50;

async fn get(base: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let response = reqwest::get(format!("{base}{path}"))
        .await
        .with_context(|| format!("GET {path}"))?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}

/// The value of the first sample of `series` whose labels contain `labels`.
fn sample(metrics: &str, series: &str, labels: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .find(|line| {
            line.strip_prefix(series)
                .is_some_and(|rest| rest.starts_with('{') && rest.contains(labels))
        })
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

/// The series names `/metrics` declares: each `# TYPE` line's name, with `_total` for counters,
/// as an operator writes them in a query.
fn served_series(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| {
            let (name, kind) = rest.split_once(' ')?;
            Some(match kind {
                "counter" => format!("{name}_total"),
                _ => name.to_string(),
            })
        })
        .collect()
}

/// The series the metric tables of docs/OPERATIONS.md document: the first cell of each row.
fn documented_series(operations: &str) -> BTreeSet<String> {
    operations
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once('`').map(|(name, _)| name))
        .filter(|name| name.starts_with("switchboard_") || name.starts_with("process_"))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metric_tables_match_what_metrics_serves_and_readyz_tells_ready() -> anyhow::Result<()>
{
    let vendors = DemoVendors::start(Duration::from_millis(1)).await?;
    let config = vendors.host_config(&plugin_dir())?;
    let topic = config.kafka.topics[0].clone();
    let host = switchboard::start(config).await?;
    let base = format!(
        "http://{}",
        host.admin_addr.context("the admin API listens")?
    );

    // Ready once the consumers have joined; liveness stays the plain answer.
    assert_eq!(get(&base, "/healthz").await?, (200, "ok".to_string()));
    let mut ready = (0, String::new());
    for _ in 0..100 {
        ready = get(&base, "/readyz").await?;
        if ready.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready, (200, r#"{"ready":true}"#.to_string()));

    produce(&host.bootstrap_servers, &topic, RECORDS, |i| {
        (format!("device-{i}"), demo_envelope(i))
    })
    .await?;
    // One record that is no request: a dead letter of class `undecodable`.
    produce(&host.bootstrap_servers, &topic, 1, |_| {
        ("junk".to_string(), "{not json".to_string())
    })
    .await?;
    let counters = host.counters.clone();
    let settled = wait_until(WAIT, || {
        let c = counters.snapshot();
        c.deliveries_delivered == RECORDS && c.dead_lettered == 1
    })
    .await;
    assert!(settled, "{:?}", host.counters.snapshot());

    let (status, metrics) = get(&base, "/metrics").await?;
    assert_eq!(status, 200);
    // Every delivery was observed once, in its lane: the demo sends every tenth as realtime.
    let latency = |lane: &str| {
        sample(
            &metrics,
            "switchboard_delivery_latency_seconds_count",
            &format!("lane=\"{lane}\""),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(latency("realtime"), (RECORDS / 10) as f64, "{metrics}");
    assert_eq!(
        latency("batch"),
        (RECORDS - RECORDS / 10) as f64,
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "switchboard_dead_letters_total",
            "reason=\"undecodable\""
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "switchboard_dead_letters_total",
            "reason=\"rejected\""
        ),
        Some(0.0),
        "every reason class has a series from the start: {metrics}"
    );
    assert_eq!(
        sample(&metrics, "switchboard_build_info", "version=\""),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("process_resident_memory_bytes ")),
        "{metrics}"
    );

    let operations = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/OPERATIONS.md"),
    )?;
    let mut documented = documented_series(&operations);
    // Served only with a dependency to watch (Redis dedup); this host has none.
    documented.remove("switchboard_dependency_up");
    let served = served_series(&metrics);
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let not_served: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty() && not_served.is_empty(),
        "served but not in docs/OPERATIONS.md: {undocumented:?}; documented but not served: \
         {not_served:?}"
    );

    host.stop().await?;
    Ok(())
}
