//! [`HistoryWriter`]: the task between the delivery path and the store. Owns the bounded queue,
//! the batching (flush every N records or T ms), the periodic retention sweep and the counters of
//! what was written, dropped and lost. It must never make a sender wait: a full queue drops the
//! record and counts it, because history is an operator view, not the source of truth.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::model::SendRecord;
use crate::store::HistoryStore;

/// How the writer queues and batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterOptions {
    /// Records the queue holds before it drops new ones. At 5 000 sends/s, 65 536 is about 13 s
    /// of sends: enough to ride out a slow flush, small enough (≈ 10 MiB) not to matter.
    pub capacity: usize,
    /// Flush as soon as this many records are waiting.
    pub flush_records: usize,
    /// Flush at least this often while records are waiting.
    pub flush_interval: Duration,
    /// How often buckets past the retention are deleted.
    pub prune_interval: Duration,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            capacity: 65_536,
            flush_records: 4_096,
            // A second is far below the bucket width an operator reads, and keeps the writes to
            // one transaction a second at any send rate.
            flush_interval: Duration::from_secs(1),
            prune_interval: Duration::from_secs(60),
        }
    }
}

/// What a writer did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Records the store took.
    pub written: u64,
    /// Records refused because the queue was full or the writer had stopped.
    pub dropped: u64,
    /// Records lost because the store returned an error for their flush.
    pub failed: u64,
}

#[derive(Default)]
struct Counters {
    written: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> WriterStats {
        WriterStats {
            written: self.written.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// The handle the delivery path records through. Cheap to clone; never waits.
#[derive(Clone)]
pub struct HistorySender {
    queue: mpsc::Sender<SendRecord>,
    counters: Arc<Counters>,
}

impl HistorySender {
    /// Queues one record for the next flush. Returns `false`, and counts the record as dropped,
    /// when the queue is full or the writer has stopped. Never waits and never logs; the writer
    /// logs the drops once per flush interval.
    pub fn submit(&self, record: SendRecord) -> bool {
        match self.queue.try_send(record) {
            Ok(()) => true,
            Err(_) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Queues each record as [`submit`](Self::submit) does; returns how many were queued.
    pub fn submit_all(&self, records: impl IntoIterator<Item = SendRecord>) -> usize {
        records
            .into_iter()
            .filter_map(|record| self.submit(record).then_some(()))
            .count()
    }

    /// Records dropped so far (queue full or writer stopped).
    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }

    /// Written, dropped and failed so far, e.g. for metrics.
    pub fn stats(&self) -> WriterStats {
        self.counters.snapshot()
    }
}

/// Owns the writer task. Dropping it stops the task too, after a last flush of what is queued;
/// [`shutdown`](Self::shutdown) does the same and waits for it.
pub struct HistoryWriter {
    sender: HistorySender,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl HistoryWriter {
    /// Starts the writer task on the current tokio runtime. It also deletes expired buckets
    /// once at start and then every [`WriterOptions::prune_interval`].
    pub fn start(store: HistoryStore, options: WriterOptions) -> Self {
        let (queue, receiver) = mpsc::channel(options.capacity.max(1));
        let counters = Arc::new(Counters::default());
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(
            store,
            options,
            receiver,
            stopped,
            Arc::clone(&counters),
        ));
        Self {
            sender: HistorySender { queue, counters },
            stop,
            task,
        }
    }

    /// A handle to submit records through.
    pub fn sender(&self) -> HistorySender {
        self.sender.clone()
    }

    /// Stops taking records, flushes what is queued, and returns the final counts. Records
    /// submitted after this are dropped.
    pub async fn shutdown(self) -> WriterStats {
        let Self { sender, stop, task } = self;
        // The task may be gone already (it only ends on a stop signal); either way it is stopping.
        let _ = stop.send(());
        if let Err(error) = task.await {
            tracing::error!(
                event = "history_writer_failed",
                error = %error,
                "history writer task ended abnormally"
            );
        }
        sender.stats()
    }
}

async fn run(
    store: HistoryStore,
    options: WriterOptions,
    mut receiver: mpsc::Receiver<SendRecord>,
    mut stopped: oneshot::Receiver<()>,
    counters: Arc<Counters>,
) {
    let flush_records = options.flush_records.max(1);
    let mut batch = Vec::with_capacity(flush_records);
    let mut flush_tick =
        tokio::time::interval(options.flush_interval.max(Duration::from_millis(1)));
    flush_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    flush_tick.tick().await;
    let mut prune_tick = tokio::time::interval(options.prune_interval.max(Duration::from_secs(1)));
    prune_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut drops_reported = 0;

    loop {
        // Never zero: a full batch is flushed as soon as it fills.
        let room = flush_records - batch.len();
        tokio::select! {
            biased;
            // A stop signal, or the `HistoryWriter` was dropped without one: stop either way.
            _ = &mut stopped => break,
            // The ticks before the queue: under a steady stream the queue is always ready, and
            // the drop warning and the retention sweep must still run.
            _ = flush_tick.tick() => {
                flush(&store, &mut batch, &counters).await;
                drops_reported = report_drops(&counters, drops_reported);
            }
            _ = prune_tick.tick() => prune(&store).await,
            received = receiver.recv_many(&mut batch, room) => {
                if received == 0 {
                    break;
                }
                if batch.len() >= flush_records {
                    flush(&store, &mut batch, &counters).await;
                }
            }
        }
    }

    // Refuse new records, then write what was queued before the stop.
    receiver.close();
    while receiver.recv_many(&mut batch, flush_records).await > 0 {
        flush(&store, &mut batch, &counters).await;
    }
    flush(&store, &mut batch, &counters).await;
    report_drops(&counters, drops_reported);
}

async fn flush(store: &HistoryStore, batch: &mut Vec<SendRecord>, counters: &Counters) {
    if batch.is_empty() {
        return;
    }
    let records = batch.len() as u64;
    match store.record(batch).await {
        Ok(()) => {
            counters.written.fetch_add(records, Ordering::Relaxed);
        }
        Err(error) => {
            // Not retried: the queue keeps filling meanwhile, and a store that fails now would
            // make the retry drop newer records instead. The counts undercount by `records`.
            counters.failed.fetch_add(records, Ordering::Relaxed);
            tracing::error!(
                event = "history_write_failed",
                records,
                error = %error,
                "send history flush failed; these records are not counted"
            );
        }
    }
    batch.clear();
}

async fn prune(store: &HistoryStore) {
    match store.prune(crate::now_ms()).await {
        Ok(0) => {}
        Ok(rows) => tracing::debug!(event = "history_pruned", rows, "expired history deleted"),
        Err(error) => tracing::warn!(
            event = "history_prune_failed",
            error = %error,
            "deleting expired history failed; retried at the next interval"
        ),
    }
}

/// Logs the drops since the last report, if any; returns the new total reported.
fn report_drops(counters: &Counters, reported: u64) -> u64 {
    let dropped = counters.dropped.load(Ordering::Relaxed);
    if dropped > reported {
        tracing::warn!(
            event = "history_records_dropped",
            dropped = dropped - reported,
            dropped_total = dropped,
            "send history queue full; records dropped, history undercounts"
        );
    }
    dropped
}
