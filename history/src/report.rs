//! What `switchboard history` prints: the `--since` parser, the report a query assembles, and its
//! plain-text table and JSON forms. Owns the presentation only; never writes to the store.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::model::{
    BucketRow, HistoryQuery, OutcomeClass, OutcomeCounts, SendRecord, VendorSummary,
};
use crate::store::{HistoryError, HistoryStore};

/// A duration that is not one, or is zero.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration `{input}`: expected whole numbers with units, such as 90s, 30m, 1h, 2d or 1h 30m"
)]
pub struct ParseSinceError {
    /// What was given.
    pub input: String,
}

/// Parses a look-back such as `90s`, `30m`, `1h`, `1.5h`, `2d`, `1w` or `1h 30m`: the one duration
/// grammar of the command line (`humantime`'s), for `history --since` and `dlq replay --since`
/// alike. Zero and a number without a unit are refused.
pub fn parse_since(text: &str) -> Result<Duration, ParseSinceError> {
    match humantime::parse_duration(text.trim()) {
        Ok(duration) if !duration.is_zero() => Ok(duration),
        _ => Err(ParseSinceError {
            input: text.to_owned(),
        }),
    }
}

/// Everything `switchboard history` shows for one query.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryReport {
    /// The vendor asked for, or `None` for all.
    pub vendor: Option<String>,
    /// Start of the window (the start of its first bucket), ms since the Unix epoch.
    pub from_ms: i64,
    /// End of the window (exclusive), ms since the Unix epoch.
    pub until_ms: i64,
    /// The store's bucket width, in seconds.
    pub bucket_s: u64,
    /// Totals per vendor.
    pub summary: Vec<VendorSummary>,
    /// Every stored bucket row in the window.
    pub buckets: Vec<BucketRow>,
    /// The latest failed sends in the window, newest first.
    pub recent_failures: Vec<SendRecord>,
}

impl HistoryStore {
    /// Runs a query for `switchboard history`: the summary, the buckets and up to
    /// `failures_limit` recent failed sends. The window is fixed once, so all three agree.
    pub async fn report(
        &self,
        query: &HistoryQuery,
        failures_limit: u32,
    ) -> Result<HistoryReport, HistoryError> {
        let options = self.options();
        let window = query.window(options.bucket_ms());
        let fixed = HistoryQuery {
            until_ms: Some(window.until_ms),
            ..query.clone()
        };
        Ok(HistoryReport {
            vendor: query.vendor.clone(),
            from_ms: window.from_ms,
            until_ms: window.until_ms,
            bucket_s: options.bucket.as_secs(),
            summary: self.summary(&fixed).await?,
            buckets: self.buckets(&fixed).await?,
            recent_failures: self.recent_failures(&fixed, failures_limit).await?,
        })
    }
}

/// The report as one line of JSON (`--json`). Times are milliseconds since the Unix epoch.
pub fn render_json(report: &HistoryReport) -> Result<String, serde_json::Error> {
    serde_json::to_string(report)
}

/// The report as plain-text tables: the totals per vendor, one line per bucket and plugin version
/// (outcome counts side by side), and the latest failed sends. Times are UTC.
pub fn render_text(report: &HistoryReport) -> String {
    let mut out = String::new();
    let subject = report.vendor.as_deref().unwrap_or("all vendors");
    let _ = writeln!(
        out,
        "send history of {subject}, {} to {} UTC, {} s buckets",
        format_utc(report.from_ms),
        format_utc(report.until_ms),
        report.bucket_s
    );
    if report.summary.is_empty() {
        let _ = writeln!(out, "\nno sends recorded in this window");
        return out;
    }

    out.push('\n');
    let mut totals = Table::new(
        &["vendor", "channel", "total"],
        &["success", "mean ms", "max ms"],
    );
    // The total is a number: right-aligned like the counts.
    totals.left = 2;
    for summary in &report.summary {
        totals.row(
            vec![
                summary.vendor.clone(),
                summary.channel.clone(),
                summary.total.to_string(),
            ],
            &summary.counts,
            vec![
                format!("{:.1}%", summary.success_rate * 100.0),
                format!("{:.1}", summary.mean_latency_ms),
                summary.max_latency_ms.to_string(),
            ],
        );
    }
    out.push_str(&totals.render());

    out.push('\n');
    let mut buckets = Table::new(
        &["bucket (UTC)", "vendor", "version"],
        &["mean ms", "max ms"],
    );
    for line in bucket_lines(&report.buckets) {
        let mean = if line.counts.total() == 0 {
            0.0
        } else {
            line.latency_sum_ms as f64 / line.counts.total() as f64
        };
        buckets.row(
            vec![
                format_utc(line.bucket_start_ms),
                line.vendor,
                line.plugin_version,
            ],
            &line.counts,
            vec![format!("{mean:.1}"), line.latency_max_ms.to_string()],
        );
    }
    out.push_str(&buckets.render());

    if !report.recent_failures.is_empty() {
        let _ = writeln!(out, "\nlatest failed sends");
        let mut failures = Table::plain(&["at (UTC)", "vendor", "version", "outcome", "ms", "key"]);
        for failure in &report.recent_failures {
            failures.rows.push(vec![
                format_utc(failure.at_ms),
                failure.vendor.clone(),
                failure.plugin_version.clone(),
                failure.outcome.to_string(),
                failure.latency_ms.to_string(),
                failure.key.clone(),
            ]);
        }
        out.push_str(&failures.render());
    }
    out
}

/// One printed bucket line: the outcome rows of one (bucket, vendor, version) side by side.
struct BucketLine {
    bucket_start_ms: i64,
    vendor: String,
    plugin_version: String,
    counts: OutcomeCounts,
    latency_sum_ms: u64,
    latency_max_ms: u64,
}

/// Pivots rows sorted by (bucket, vendor, version, …) into one line per (bucket, vendor, version).
fn bucket_lines(rows: &[BucketRow]) -> Vec<BucketLine> {
    let mut lines: Vec<BucketLine> = Vec::new();
    for row in rows {
        let same_line = lines.last().is_some_and(|line| {
            line.bucket_start_ms == row.bucket_start_ms
                && line.vendor == row.vendor
                && line.plugin_version == row.plugin_version
        });
        if !same_line {
            lines.push(BucketLine {
                bucket_start_ms: row.bucket_start_ms,
                vendor: row.vendor.clone(),
                plugin_version: row.plugin_version.clone(),
                counts: OutcomeCounts::default(),
                latency_sum_ms: 0,
                latency_max_ms: 0,
            });
        }
        if let Some(line) = lines.last_mut() {
            line.counts.add(row.outcome, row.count);
            line.latency_sum_ms = line.latency_sum_ms.saturating_add(row.latency_sum_ms);
            line.latency_max_ms = line.latency_max_ms.max(row.latency_max_ms);
        }
    }
    lines
}

/// Column headers of the outcome counts, in [`OutcomeClass::ALL`] order.
const OUTCOME_HEADERS: [&str; 6] = [
    "delivered",
    "retry",
    "rejected",
    "invalid",
    "dead",
    "failed",
];

/// A text table: the first `left` columns are left-aligned, the rest (numbers) right-aligned.
struct Table {
    headers: Vec<String>,
    left: usize,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// Leading columns, the six outcome counts, trailing columns.
    fn new(leading: &[&str], trailing: &[&str]) -> Self {
        let headers = leading
            .iter()
            .chain(OUTCOME_HEADERS.iter())
            .chain(trailing.iter())
            .map(|header| (*header).to_owned())
            .collect();
        Self {
            headers,
            left: leading.len(),
            rows: Vec::new(),
        }
    }

    /// All columns left-aligned.
    fn plain(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|header| (*header).to_owned()).collect(),
            left: headers.len(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, leading: Vec<String>, counts: &OutcomeCounts, trailing: Vec<String>) {
        let mut cells = leading;
        cells.extend(
            OutcomeClass::ALL
                .into_iter()
                .map(|class| counts.get(class).to_string()),
        );
        cells.extend(trailing);
        self.rows.push(cells);
    }

    fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for cells in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (column, (cell, width)) in cells.iter().zip(&widths).enumerate() {
                if column > 0 {
                    line.push_str("  ");
                }
                if column < self.left {
                    let _ = write!(line, "{cell:<width$}");
                } else {
                    let _ = write!(line, "{cell:>width$}");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `YYYY-MM-DD HH:MM:SS` in UTC; the raw milliseconds if out of range.
fn format_utc(at_ms: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(at_ms) * 1_000_000) {
        Ok(at) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            at.year(),
            u8::from(at.month()),
            at.day(),
            at.hour(),
            at.minute(),
            at.second()
        ),
        Err(_) => format!("{at_ms} ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_number_and_a_unit() {
        assert_eq!(parse_since("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_since("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_since("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_since("2d"), Ok(Duration::from_secs(2 * 86_400)));
        assert_eq!(parse_since(" 1h "), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_since("1w"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_since("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_since("1.5h"), Ok(Duration::from_secs(5400)));
        for bad in ["", "h", "1", "-1h", "0m", "1hh", "99999999999999999999d"] {
            let error = parse_since(bad).unwrap_err();
            assert_eq!(error.input, bad);
            assert!(error.to_string().contains("30m, 1h, 2d"), "{error}");
        }
    }

    fn report() -> HistoryReport {
        let row = |minute: i64, version: &str, outcome, count, sum, max| BucketRow {
            bucket_start_ms: 1_778_313_600_000 + minute * 60_000,
            vendor: "sms-nhn".into(),
            plugin_version: version.into(),
            channel: "sms".into(),
            outcome,
            count,
            latency_sum_ms: sum,
            latency_max_ms: max,
        };
        HistoryReport {
            vendor: Some("sms-nhn".into()),
            from_ms: 1_778_313_600_000,
            until_ms: 1_778_313_600_000 + 3_600_000,
            bucket_s: 60,
            summary: vec![VendorSummary {
                vendor: "sms-nhn".into(),
                channel: "sms".into(),
                total: 12,
                counts: OutcomeCounts {
                    delivered: 9,
                    retry: 3,
                    ..OutcomeCounts::default()
                },
                success_rate: 0.75,
                mean_latency_ms: 42.0,
                max_latency_ms: 900,
            }],
            buckets: vec![
                row(0, "1.0.0", OutcomeClass::Delivered, 5, 100, 40),
                row(0, "1.0.0", OutcomeClass::Retry, 3, 300, 900),
                row(1, "1.0.0", OutcomeClass::Delivered, 4, 40, 10),
            ],
            recent_failures: vec![SendRecord {
                at_ms: 1_778_313_600_000 + 5_000,
                channel: "sms".into(),
                vendor: "sms-nhn".into(),
                plugin_version: "1.0.0".into(),
                outcome: OutcomeClass::Retry,
                latency_ms: 900,
                key: "req-7/3".into(),
            }],
        }
    }

    #[test]
    fn text_shows_totals_then_one_line_per_bucket_then_failures() {
        let text = render_text(&report());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "send history of sms-nhn, 2026-05-09 08:00:00 to 2026-05-09 09:00:00 UTC, 60 s buckets"
        );
        assert_eq!(
            lines[2],
            "vendor   channel  total  delivered  retry  rejected  invalid  dead  failed  success  mean ms  max ms"
        );
        assert_eq!(
            lines[3],
            "sms-nhn  sms         12          9      3         0        0     0       0    75.0%     42.0     900"
        );
        // Two outcome rows of the first minute share one line.
        assert!(
            lines[6].starts_with("2026-05-09 08:00:00  sms-nhn  1.0.0"),
            "{text}"
        );
        assert!(
            lines[6].ends_with("5      3         0        0     0       0     50.0     900"),
            "{text}"
        );
        assert!(lines[7].starts_with("2026-05-09 08:01:00"), "{text}");
        assert_eq!(lines[9], "latest failed sends");
        assert!(lines[11].ends_with("retry    900  req-7/3"), "{text}");
    }

    #[test]
    fn an_empty_window_says_so() {
        let empty = HistoryReport {
            summary: Vec::new(),
            buckets: Vec::new(),
            recent_failures: Vec::new(),
            ..report()
        };
        assert!(render_text(&empty).contains("no sends recorded in this window"));
    }

    #[test]
    fn json_is_one_line_with_outcome_names() {
        let json = render_json(&report()).unwrap();
        assert!(!json.contains('\n'));
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["vendor"], "sms-nhn");
        assert_eq!(value["summary"][0]["counts"]["delivered"], 9);
        assert_eq!(value["summary"][0]["success_rate"], 0.75);
        assert_eq!(value["buckets"][1]["outcome"], "retry");
        assert_eq!(value["recent_failures"][0]["key"], "req-7/3");
    }
}
