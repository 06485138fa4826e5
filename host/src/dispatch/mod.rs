//! Dispatch: batches deliveries per plugin, runs plugin calls under each plugin's concurrency
//! limit, and acts on outcomes — final ones finish the delivery, `retry` ones come back after a
//! backoff until the attempts run out.
//!
//! Must never finish a delivery that has no final outcome: that would let its record's offset be
//! committed while the recipient was never served.

pub mod backoff;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};

use crate::config::DispatchConfig;
use crate::dedup::DedupStore;
use crate::ingest::consumer::RecordTicket;
use crate::plugin::{Delivery, LoadedPlugin, Outcome, RetryInfo};
use crate::telemetry::{Counters, events};
use backoff::Backoff;

/// One delivery on its way, with the record it belongs to.
pub struct Job {
    delivery: Delivery,
    ticket: Arc<RecordTicket>,
}

impl Job {
    /// A first attempt at `delivery`.
    pub fn new(delivery: Delivery, ticket: Arc<RecordTicket>) -> Self {
        Self { delivery, ticket }
    }
}

/// Sends jobs to the lane of their plugin.
pub struct Dispatcher {
    lanes: HashMap<String, mpsc::UnboundedSender<Job>>,
    counters: Arc<Counters>,
}

/// A plugin with the limits the dispatcher applies to it.
pub struct PluginLane {
    pub plugin: Arc<LoadedPlugin>,
    /// Deliveries per call.
    pub max_batch: usize,
    /// Calls at once.
    pub concurrency: usize,
}

impl Dispatcher {
    /// Starts one batching lane per plugin.
    pub fn start(
        plugins: Vec<PluginLane>,
        config: &DispatchConfig,
        counters: Arc<Counters>,
        dedup: Option<Arc<DedupStore>>,
    ) -> Self {
        let mut lanes = HashMap::new();
        for lane in plugins {
            let (tx, rx) = mpsc::unbounded_channel();
            let runner = LaneRunner {
                plugin: lane.plugin.clone(),
                max_batch: lane.max_batch,
                linger: Duration::from_millis(config.batch_linger_ms),
                calls: Arc::new(Semaphore::new(lane.concurrency)),
                retry: RetryPolicy {
                    max_attempts: config.retry_max_attempts,
                    backoff: Backoff::new(
                        Duration::from_millis(config.retry_base_ms),
                        Duration::from_millis(config.retry_max_ms),
                    ),
                    requeue: tx.downgrade(),
                },
                counters: counters.clone(),
                dedup: dedup.clone(),
            };
            tokio::spawn(runner.run(rx));
            lanes.insert(lane.plugin.name.clone(), tx);
        }
        Self { lanes, counters }
    }

    /// Queues a job on its plugin's lane. A plugin without a lane (not loaded) fails the
    /// delivery with a reason rather than holding its record forever.
    pub fn submit(&self, plugin: &str, job: Job) {
        match self.lanes.get(plugin) {
            Some(lane) => {
                if let Err(mpsc::error::SendError(job)) = lane.send(job) {
                    give_up(&self.counters, &job, "plugin lane has stopped");
                }
            }
            None => give_up(
                &self.counters,
                &job,
                &format!("no plugin `{plugin}` is loaded"),
            ),
        }
    }
}

fn give_up(counters: &Counters, job: &Job, reason: &str) {
    report_given_up(counters, job, reason);
    job.ticket.complete();
}

fn report_given_up(counters: &Counters, job: &Job, reason: &str) {
    counters.deliveries_failed.fetch_add(1, Ordering::Relaxed);
    events::DeliveryGivenUp {
        key: &job.delivery.key,
        attempts: job.delivery.attempt,
        reason,
        record: job.ticket.coordinates(),
    }
    .emit();
}

struct RetryPolicy {
    max_attempts: u32,
    backoff: Backoff,
    /// Weak, so pending retries do not keep a lane alive after shutdown.
    requeue: mpsc::WeakUnboundedSender<Job>,
}

struct LaneRunner {
    plugin: Arc<LoadedPlugin>,
    max_batch: usize,
    linger: Duration,
    calls: Arc<Semaphore>,
    retry: RetryPolicy,
    counters: Arc<Counters>,
    dedup: Option<Arc<DedupStore>>,
}

impl LaneRunner {
    async fn run(self, mut jobs: mpsc::UnboundedReceiver<Job>) {
        let runner = Arc::new(self);
        while let Some(first) = jobs.recv().await {
            let mut batch = Vec::with_capacity(runner.max_batch);
            batch.push(first);
            // Take what is already queued, then wait up to the linger time for a fuller batch.
            let linger_until = tokio::time::Instant::now() + runner.linger;
            while batch.len() < runner.max_batch {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        match tokio::time::timeout_at(linger_until, jobs.recv()).await {
                            Ok(Some(job)) => batch.push(job),
                            Ok(None) | Err(_) => break,
                        }
                    }
                }
            }
            let Ok(permit) = runner.calls.clone().acquire_owned().await else {
                break;
            };
            let runner = runner.clone();
            tokio::spawn(async move {
                runner.call(batch).await;
                drop(permit);
            });
        }
    }

    async fn call(&self, batch: Vec<Job>) {
        let deliveries: Vec<Delivery> = batch.iter().map(|j| j.delivery.clone()).collect();
        let started = std::time::Instant::now();
        let result = self.plugin.deliver(&deliveries).await;
        let elapsed = started.elapsed();
        let mut finished = Vec::with_capacity(batch.len());
        match result {
            Ok(outcomes) => {
                for (job, outcome) in batch.into_iter().zip(outcomes) {
                    finished.extend(self.settle(job, outcome));
                }
            }
            Err(error) => {
                events::PluginCallFailed {
                    plugin: &self.plugin.name,
                    version: &self.plugin.info.version,
                    batch: deliveries.len(),
                    elapsed,
                    error: &error,
                }
                .emit();
                // A trap, a timeout or a failed init costs this call only: every delivery in it
                // is retried on a fresh instance.
                let reason = error.to_string();
                for job in batch {
                    let retry = Outcome::Retry(RetryInfo {
                        reason: reason.clone(),
                        after_ms: None,
                    });
                    finished.extend(self.settle(job, retry));
                }
            }
        }
        self.finish(finished).await;
    }

    /// Marks deliveries with a final outcome as done, then lets their records finish. The mark
    /// comes first: once a record's offset is committed, its recipients must be known as done.
    async fn finish(&self, jobs: Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        if let Some(dedup) = &self.dedup {
            let keys: Vec<&str> = jobs.iter().map(|j| j.delivery.key.as_str()).collect();
            if let Err(error) = dedup.mark(&keys).await {
                // The deliveries are done either way; an unrecorded mark only means a
                // redelivery of the record could send them again (at least once).
                self.counters.dedup_errors.fetch_add(1, Ordering::Relaxed);
                events::DedupFailed { error: &error }.emit();
            }
        }
        for job in jobs {
            job.ticket.complete();
        }
    }

    /// Acts on one outcome. Returns the job when the outcome is final (to be marked and
    /// finished); a retry is requeued and returns nothing.
    fn settle(&self, mut job: Job, outcome: Outcome) -> Option<Job> {
        let counters = &self.counters;
        match outcome {
            Outcome::Delivered(_) => {
                counters
                    .deliveries_delivered
                    .fetch_add(1, Ordering::Relaxed);
                Some(job)
            }
            Outcome::Rejected(rejection) => {
                counters.deliveries_rejected.fetch_add(1, Ordering::Relaxed);
                events::DeliveryRejected {
                    key: &job.delivery.key,
                    plugin: &self.plugin.name,
                    code: &rejection.code,
                    reason: &rejection.reason,
                }
                .emit();
                Some(job)
            }
            Outcome::InvalidRecipient(reason) => {
                counters
                    .deliveries_invalid_recipient
                    .fetch_add(1, Ordering::Relaxed);
                events::RecipientInvalid {
                    key: &job.delivery.key,
                    plugin: &self.plugin.name,
                    reason: &reason,
                }
                .emit();
                Some(job)
            }
            Outcome::Retry(info) => {
                if job.delivery.attempt >= self.retry.max_attempts {
                    let reason = format!("out of attempts; last: {}", info.reason);
                    report_given_up(counters, &job, &reason);
                    return Some(job);
                }
                counters.retries.fetch_add(1, Ordering::Relaxed);
                let wait = self.retry.backoff.delay(
                    job.delivery.attempt,
                    info.after_ms.map(Duration::from_millis),
                    &mut rand::thread_rng(),
                );
                job.delivery.attempt += 1;
                let requeue = self.retry.requeue.clone();
                let counters = counters.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    match requeue.upgrade() {
                        Some(lane) => {
                            if let Err(mpsc::error::SendError(job)) = lane.send(job) {
                                give_up(&counters, &job, "plugin lane has stopped");
                            }
                        }
                        // Shutting down: the record stays unfinished and is consumed again.
                        None => drop(job),
                    }
                });
                None
            }
        }
    }
}
