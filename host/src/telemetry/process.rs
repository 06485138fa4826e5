//! The process's own series: resident memory, CPU seconds, threads, open files and start time,
//! read from `/proc` at each scrape under the names every Prometheus client library uses
//! (`process_resident_memory_bytes`, `process_cpu_seconds_total`, …), so the usual dashboards
//! and alerts work unchanged.
//!
//! Owns reading `/proc` only; it never keeps state between scrapes. Off Linux, or where `/proc`
//! cannot be read, the series are left out rather than shown as zero. Written by hand because
//! it is five small files of a stable format; the crates that do it bring a whole `/proc` model
//! (and `libc` calls the workspace's `unsafe_code = "deny"` would have to allow).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// Clock ticks per second in `/proc/*/stat`: Linux fixes USER_HZ at 100 for user space on the
/// platforms the host is built for, whatever the kernel's own tick rate.
const TICKS_PER_SECOND: f64 = 100.0;

/// What one scrape read.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessStats {
    pub resident_bytes: u64,
    pub cpu_seconds: f64,
    pub threads: u64,
    pub start_time_seconds: f64,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
}

impl ProcessStats {
    /// This process's, or `None` where `/proc/self` cannot be read.
    pub fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|text| boot_time_seconds(&text));
        let limits = std::fs::read_to_string("/proc/self/limits").ok();
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|dir| dir.count() as u64);
        Self::parse(&stat, &status, boot_time?, limits.as_deref(), open_fds)
    }

    /// From the texts of `/proc/self/stat`, `/proc/self/status` and `/proc/self/limits`, the
    /// boot time and the count of open files.
    fn parse(
        stat: &str,
        status: &str,
        boot_time_seconds: f64,
        limits: Option<&str>,
        open_fds: Option<u64>,
    ) -> Option<Self> {
        // The command name (field 2) may hold spaces and parentheses: fields resume after the
        // last `)`, at field 3.
        let after_name = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let field = |number: usize| -> Option<u64> { fields.get(number - 3)?.parse().ok() };
        let (user, system) = (field(14)?, field(15)?);
        let threads = field(20)?;
        let start_ticks = field(22)?;
        let resident_kb: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        Some(Self {
            resident_bytes: resident_kb * 1024,
            cpu_seconds: (user + system) as f64 / TICKS_PER_SECOND,
            threads,
            start_time_seconds: boot_time_seconds + start_ticks as f64 / TICKS_PER_SECOND,
            open_fds,
            max_fds: limits.and_then(max_open_files),
        })
    }
}

/// `btime` of `/proc/stat`: when the machine booted, in seconds since the epoch.
fn boot_time_seconds(proc_stat: &str) -> Option<f64> {
    proc_stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// The soft limit of open files from `/proc/self/limits`; `None` when unlimited.
fn max_open_files(limits: &str) -> Option<u64> {
    let line = limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))?;
    line.split_whitespace().next()?.parse().ok()
}

/// Encodes [`ProcessStats`] at each scrape.
#[derive(Debug)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let Some(stats) = ProcessStats::read() else {
            return Ok(());
        };
        let e = &mut encoder;
        ConstGauge::new(stats.resident_bytes as i64).encode(e.encode_descriptor(
            "process_resident_memory",
            "Resident memory size",
            Some(&Unit::Bytes),
            MetricType::Gauge,
        )?)?;
        ConstCounter::new(stats.cpu_seconds).encode(e.encode_descriptor(
            "process_cpu",
            "User and system CPU time spent",
            Some(&Unit::Seconds),
            MetricType::Counter,
        )?)?;
        ConstGauge::new(stats.threads as i64).encode(e.encode_descriptor(
            "process_threads",
            "OS threads in the process",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(stats.start_time_seconds).encode(e.encode_descriptor(
            "process_start_time",
            "Start time of the process since the Unix epoch",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?)?;
        if let Some(open) = stats.open_fds {
            ConstGauge::new(open as i64).encode(e.encode_descriptor(
                "process_open_fds",
                "Open file descriptors",
                None,
                MetricType::Gauge,
            )?)?;
        }
        if let Some(max) = stats.max_fds {
            ConstGauge::new(max as i64).encode(e.encode_descriptor(
                "process_max_fds",
                "The soft limit of open file descriptors",
                None,
                MetricType::Gauge,
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_resume_after_the_last_parenthesis_of_the_name() -> anyhow::Result<()> {
        // A command name with a space and a parenthesis, as `/proc` shows it.
        let stat = "4242 (sw (x) y) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 \
                    17 0 12345 1000000 2500 18446744073709551615";
        let status = "Name:\tsw\nVmPeak:\t  9000 kB\nVmRSS:\t  2048 kB\nThreads:\t17\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        let stats = ProcessStats::parse(stat, status, 1_700_000_000.0, Some(limits), Some(12))
            .ok_or_else(|| anyhow::anyhow!("not parsed"))?;
        assert_eq!(stats.resident_bytes, 2048 * 1024);
        assert_eq!(stats.cpu_seconds, 3.0);
        assert_eq!(stats.threads, 17);
        assert!((stats.start_time_seconds - 1_700_000_123.45).abs() < 1e-3);
        assert_eq!(stats.open_fds, Some(12));
        assert_eq!(stats.max_fds, Some(1024));
        assert_eq!(
            boot_time_seconds("cpu 1 2\nbtime 1700000000\n"),
            Some(1_700_000_000.0)
        );
        Ok(())
    }

    #[test]
    fn this_process_can_be_read() -> anyhow::Result<()> {
        let stats = ProcessStats::read().ok_or_else(|| anyhow::anyhow!("/proc/self unread"))?;
        assert!(stats.resident_bytes > 0);
        assert!(stats.threads >= 1);
        Ok(())
    }
}
