//! Send history: how many sends each vendor delivered, retried or lost, per time bucket, for
//! operators who ask "is sms-nhn failing since ten minutes ago?".
//!
//! **History is an operator view, not the source of truth.** Kafka offsets, the dedup store, the
//! retry topic and the DLQ decide what is delivered; this crate only counts what the host tells it.
//! So it may lose counts, and it must never slow or stop a delivery: the host hands records to a
//! [`HistoryWriter`] through a bounded queue that never waits. When the queue is full the record
//! is dropped and counted ([`HistorySender::dropped`]), and a warning is logged.
//!
//! Layout:
//! - `config`: the `[history]` table of the host's config ([`HistorySettings`]), the backend
//!   choice ([`HistoryConfig`]) and the store's tuning ([`StoreOptions`]).
//! - `model`: what is recorded ([`SendRecord`], [`OutcomeClass`]) and what queries return
//!   ([`BucketRow`], [`VendorSummary`]), plus the in-memory aggregation into buckets.
//! - `store`: [`HistoryStore`], one type over both backends; `sqlite` (the default, on a
//!   blocking thread) and `postgres` (through tokio-postgres, for a fleet of hosts).
//! - `writer`: [`HistoryWriter`], the batching task between the delivery path and the store.
//! - `report`: [`parse_since`], the plain-text table and the JSON for `switchboard history`.
//!
//! What is stored, and why: counts per (bucket start, vendor, plugin version, channel, outcome),
//! with the latency sum and maximum, upserted once per flush. A flush of thousands of sends
//! becomes a handful of row updates, so the write cost follows the number of vendors, not the
//! send rate. Individual sends are kept only when they failed (every outcome but `delivered`),
//! and only the last [`StoreOptions::recent_failures`] of them: a delivered send carries nothing
//! the counts do not, while a failed one carries the idempotency key that leads an operator to
//! the DLQ record and the log lines. Keeping every send would write one row per delivery,
//! hundreds of millions a day, for a view that is read by the minute.

mod config;
mod model;
mod postgres;
mod report;
mod sqlite;
mod store;
mod writer;

pub use config::{
    HistoryBackend, HistoryConfig, HistorySettings, StoreOptions, UrlSecret, UrlSetting, redact_url,
};
pub use model::{BucketRow, HistoryQuery, OutcomeClass, OutcomeCounts, SendRecord, VendorSummary};
pub use report::{HistoryReport, ParseSinceError, parse_since, render_json, render_text};
pub use store::{HistoryError, HistoryStore};
pub use writer::{HistorySender, HistoryWriter, WriterOptions, WriterStats};

/// Milliseconds since the Unix epoch, now: the clock [`SendRecord::at_ms`] is read from.
pub fn now_ms() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}
