//! Telemetry: tracing setup, the host's counters, the Prometheus metrics, and one struct per
//! observable event.

pub mod events;
pub mod metrics;
pub mod process;

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Installs the global tracing subscriber, writing to stderr. `RUST_LOG` overrides `default_filter`.
pub fn init(format: LogFormat, default_filter: &str) {
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    // Colours only on a terminal: a log file or a collector gets plain text, not escape codes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // A second init (tests, the demo inside the lab) keeps the first subscriber.
    let _ = subscriber(format, filter, ansi, std::io::stderr).try_init();
}

/// The subscriber [`init`] installs, writing to `writer`.
fn subscriber<W>(
    format: LogFormat,
    filter: tracing_subscriber::EnvFilter,
    ansi: bool,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    match format {
        LogFormat::Text => Box::new(builder.fmt_fields(escaped_fields()).finish()),
        // An event's fields (`event`, `plugin`, `vendor`, …) are top-level keys, where log
        // pipelines index them, not nested under `fields`.
        LogFormat::Json => Box::new(builder.json().flatten_event(true).finish()),
    }
}

/// Text lines' fields, written as the default writes them (the message, then `name=value`),
/// with every control character escaped. Reasons and errors carry text from records, vendors
/// and plugins (a channel name, a parser's quote of its input, a guest's message), and a
/// newline in one wrote a second, forged log line. Escaping here, where every field of every
/// line passes, covers the call sites that log such text with `%` (Display, written raw);
/// `&str` fields were already written quoted and escaped. JSON lines are escaped by JSON.
fn escaped_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> {
    use std::fmt::Write as _;
    use tracing_subscriber::field::MakeExt as _;
    tracing_subscriber::fmt::format::debug_fn(|writer, field, value| {
        if field.name() != "message" {
            write!(writer, "{field}=")?;
        }
        write!(ControlEscaped(writer), "{value:?}")
    })
    .delimited(" ")
}

/// Passes text on with control characters (newlines, carriage returns, escape sequences, NUL)
/// written as escapes, so nothing written through it can end a line or move the cursor.
struct ControlEscaped<'a, W: std::fmt::Write + ?Sized>(&'a mut W);

impl<W: std::fmt::Write + ?Sized> std::fmt::Write for ControlEscaped<'_, W> {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        let mut plain_from = 0;
        for (at, c) in text.char_indices() {
            if c.is_control() {
                self.0.write_str(&text[plain_from..at])?;
                write!(self.0, "{}", c.escape_default())?;
                plain_from = at + c.len_utf8();
            }
        }
        self.0.write_str(&text[plain_from..])
    }
}

/// The host's running totals. Every figure the demo and the lab print about the host comes from
/// here, counted where the event happens.
#[derive(Debug, Default)]
pub struct Counters {
    /// Records read from Kafka.
    pub records_consumed: AtomicU64,
    /// Records that are not a valid envelope.
    pub records_undecodable: AtomicU64,
    /// Records whose `expires_at` had passed.
    pub records_expired: AtomicU64,
    /// Records for a channel no plugin serves.
    pub records_unknown_channel: AtomicU64,
    /// Deliveries the vendor accepted.
    pub deliveries_delivered: AtomicU64,
    /// Deliveries the vendor refused for good.
    pub deliveries_rejected: AtomicU64,
    /// Deliveries to recipients the vendor no longer knows.
    pub deliveries_invalid_recipient: AtomicU64,
    /// Deliveries given up (attempts exhausted, expired, plugin faults).
    pub deliveries_failed: AtomicU64,
    /// DLQ writes: deliveries and records.
    pub dead_lettered: AtomicU64,
    /// Retries scheduled.
    pub retries: AtomicU64,
    /// Deliveries skipped because the dedup store knew them as done.
    pub deliveries_skipped_done: AtomicU64,
    /// Dedup look-ups or marks the store answered with an error (an outage is waited out).
    pub dedup_errors: AtomicU64,
    /// Permanently failed deliveries re-sent on their channel's fallback channel.
    pub deliveries_fallen_back: AtomicU64,
    /// Retried deliveries routed to another vendor than their last try's.
    pub deliveries_failed_over: AtomicU64,
    /// Results the results topic acknowledged.
    pub results_published: AtomicU64,
    /// Results that never reached the results topic (queue full, or not acknowledged in time).
    pub results_failed: AtomicU64,
    /// Invalid recipients the invalidations topic acknowledged.
    pub invalidations_published: AtomicU64,
    /// Invalid recipients that never reached the invalidations topic.
    pub invalidations_failed: AtomicU64,
    /// Deliveries and records that neither the retry topic nor the DLQ would take for good:
    /// left unfinished, so their offsets are not committed and they are read again later.
    pub deliveries_unsettled: AtomicU64,
    /// DLQ records stored with only a prefix of a value too large for the topic.
    pub dead_letters_truncated: AtomicU64,
    /// Writes to the retry topic or the DLQ refused for good (too large, no topic, no ACL).
    pub outbox_refused: AtomicU64,
}

/// A point-in-time copy of [`Counters`].
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct CountersSnapshot {
    pub records_consumed: u64,
    pub records_undecodable: u64,
    pub records_expired: u64,
    pub records_unknown_channel: u64,
    pub deliveries_delivered: u64,
    pub deliveries_rejected: u64,
    pub deliveries_invalid_recipient: u64,
    pub deliveries_failed: u64,
    pub dead_lettered: u64,
    pub retries: u64,
    pub deliveries_skipped_done: u64,
    pub dedup_errors: u64,
    pub deliveries_fallen_back: u64,
    pub deliveries_failed_over: u64,
    pub results_published: u64,
    pub results_failed: u64,
    pub invalidations_published: u64,
    pub invalidations_failed: u64,
    pub deliveries_unsettled: u64,
    pub dead_letters_truncated: u64,
    pub outbox_refused: u64,
}

impl CountersSnapshot {
    /// Deliveries that reached a final outcome.
    pub fn deliveries_final(&self) -> u64 {
        self.deliveries_delivered
            + self.deliveries_rejected
            + self.deliveries_invalid_recipient
            + self.deliveries_failed
    }
}

impl Counters {
    /// Reads every counter.
    pub fn snapshot(&self) -> CountersSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CountersSnapshot {
            records_consumed: r(&self.records_consumed),
            records_undecodable: r(&self.records_undecodable),
            records_expired: r(&self.records_expired),
            records_unknown_channel: r(&self.records_unknown_channel),
            deliveries_delivered: r(&self.deliveries_delivered),
            deliveries_rejected: r(&self.deliveries_rejected),
            deliveries_invalid_recipient: r(&self.deliveries_invalid_recipient),
            deliveries_failed: r(&self.deliveries_failed),
            dead_lettered: r(&self.dead_lettered),
            retries: r(&self.retries),
            deliveries_skipped_done: r(&self.deliveries_skipped_done),
            dedup_errors: r(&self.dedup_errors),
            deliveries_fallen_back: r(&self.deliveries_fallen_back),
            deliveries_failed_over: r(&self.deliveries_failed_over),
            results_published: r(&self.results_published),
            results_failed: r(&self.results_failed),
            invalidations_published: r(&self.invalidations_published),
            invalidations_failed: r(&self.invalidations_failed),
            deliveries_unsettled: r(&self.deliveries_unsettled),
            dead_letters_truncated: r(&self.dead_letters_truncated),
            outbox_refused: r(&self.outbox_refused),
        }
    }
}

#[cfg(test)]
mod log_format_tests {
    use std::sync::{Arc, Mutex, PoisonError};

    use super::*;

    /// A log destination the test reads back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        /// A subscriber writing lines of `format` here.
        fn subscriber(&self, format: LogFormat) -> Box<dyn tracing::Subscriber + Send + Sync> {
            let writer = self.clone();
            subscriber(
                format,
                tracing_subscriber::EnvFilter::new("info"),
                false,
                move || writer.clone(),
            )
        }

        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner))
                .into_owned()
        }
    }

    /// Written before the fix: a channel name with a newline in a record wrote a second,
    /// forged log line of the attacker's choosing (seen with a host on a real broker).
    #[test]
    fn text_from_a_record_cannot_start_a_log_line_of_its_own() {
        let captured = Captured::default();
        let subscriber = captured.subscriber(LogFormat::Text);
        let hostile = "unknown channel `x\n2026-12-05T09:00:00Z ERROR switchboard::host: FORGED\r\u{1b}[2J\0`";
        tracing::subscriber::with_default(subscriber, || {
            events::RecordRefused {
                topic: "requests",
                partition: 0,
                offset: 7,
                reason: &hostile,
            }
            .emit();
            tracing::warn!(key = %hostile, "{hostile}");
        });
        let text = captured.text();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(!text.contains(['\r', '\u{1b}', '\0']), "{text}");
        assert!(text.contains("x\\n2026-12-05T09:00:00Z ERROR"), "{text}");
    }

    /// Written before the fix: the fields sat under `fields`.
    #[test]
    fn json_lines_carry_an_events_fields_as_top_level_keys() {
        let captured = Captured::default();
        let subscriber = captured.subscriber(LogFormat::Json);
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(event = "vendor_ejected", vendor = "sms-twilio", "ejected");
        });
        let text = String::from_utf8(
            captured
                .0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
        .unwrap_or_default();
        let line: serde_json::Value =
            serde_json::from_str(text.lines().next().unwrap_or_default()).unwrap_or_default();
        assert_eq!(line["event"], "vendor_ejected", "{text}");
        assert_eq!(line["vendor"], "sms-twilio", "{text}");
        assert_eq!(line["message"], "ejected", "{text}");
        assert_eq!(line["level"], "WARN", "{text}");
        assert!(line.get("fields").is_none(), "{text}");
    }
}
