//! Dispatch: batches deliveries per plugin and lane, runs plugin calls under the lane's and the
//! vendor's limits, and settles every outcome.
//!
//! Each (plugin, lane) pair has its own batching queue, so a realtime delivery never waits
//! behind a queue of ads for the same vendor. A call holds a slot of its lane (the lane's
//! `concurrency`) and is admitted by the vendor's [`vendor::VendorGate`] (the vendor's
//! concurrency, rate limit and Retry-After hold, with a reserve for realtime).
//!
//! - `delivered`, `invalid-recipient`: final.
//! - `rejected`: written to the DLQ, then final.
//! - `retry`: written to the retry topic with its due time (exponential backoff with jitter,
//!   never before the vendor's Retry-After). If that is past `give_up_after`, or the attempts ran
//!   out, it goes to the DLQ instead. A call the host had no instance slot for
//!   (`CallError::HostBusy`) never reached the plugin: its retries take no attempt and count
//!   nothing against the vendor's health.
//!
//! A final delivery is marked in the dedup store before its record may finish. A retried one
//! finishes its record once the retry topic has acknowledged it, and is not marked.
//!
//! Every settled outcome (and each retry scheduled) is also published to the results topic, and
//! each invalid recipient to the invalidations topic ([`crate::retry::results`]); publishing
//! only enqueues, so it never holds a delivery back. Each call's outcomes and duration are
//! counted in the metrics per vendor and plugin version.
//!
//! Must never finish a delivery before its outcome is recorded somewhere durable: the vendor
//! accepted it, the DLQ holds it, or the retry topic does. Otherwise the record's offset could be
//! committed while the recipient was never served.

pub mod backoff;
pub mod vendor;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};

use crate::config::{DispatchConfig, FallbackConfig, LanesConfig, TrafficClass};
use crate::dedup::DedupStore;
use crate::ingest::consumer::RecordTicket;
use crate::plugin::registry::{Slot, Version};
use crate::plugin::{CallError, LoadedPlugin, Outcome, SharedDelivery};
use crate::retry::results::{Invalidation, ResultOutcome, ResultRecord, invalid_since_ms};
use crate::retry::{DeadLetterReason, Origin, Outbox, ReasonClass, RetryRecord, now_ms};
use crate::route::fallback;
use crate::route::health::{CallTally, Health};
use crate::route::{Pinning, RouteHint, retry_pinning};
use crate::telemetry::metrics::{CallOutcome, Metrics};
use crate::telemetry::{Counters, events};
use backoff::Backoff;
use switchboard_history::{HistorySender, OutcomeClass, SendRecord};
use vendor::VendorGate;

/// One delivery on its way, with the record it belongs to.
pub struct Job {
    delivery: SharedDelivery,
    /// The lane it runs in.
    class: TrafficClass,
    ticket: Arc<RecordTicket>,
    /// The request's channel, for the retry topic.
    channel: Arc<str>,
    /// Where the request was first read, for the retry topic and the DLQ headers.
    origin: Arc<Origin>,
    /// When the request was first seen (ms since the epoch), for `give_up_after`.
    first_seen_ms: u64,
    /// Set once the DLQ holds the delivery: it is marked as dead, not as delivered.
    dead_lettered: bool,
    /// Where the delivery's last try went, when it is a retry: a try that reaches nothing
    /// leaves its retry as pinned as this says ([`RouteHint::after`]).
    route: Option<RouteHint>,
}

impl Job {
    /// A delivery of a request on `channel` first read at `origin`.
    pub fn new(
        delivery: SharedDelivery,
        class: TrafficClass,
        ticket: Arc<RecordTicket>,
        channel: Arc<str>,
        origin: Arc<Origin>,
        first_seen_ms: u64,
    ) -> Self {
        Self {
            delivery,
            class,
            ticket,
            channel,
            origin,
            first_seen_ms,
            dead_lettered: false,
            route: None,
        }
    }

    /// The same job, retried after a try that went where `route` says.
    pub fn retried_after(mut self, route: Option<RouteHint>) -> Self {
        self.route = route;
        self
    }

    fn retry_record(
        &self,
        due_at_ms: u64,
        mut last_reason: String,
        plugin_fault: bool,
    ) -> RetryRecord {
        // A trap's message can carry a long backtrace; the record keeps a bounded reason.
        crate::text::cap_in_place(&mut last_reason, crate::retry::HEADER_REASON_BYTES);
        RetryRecord {
            route: None,
            key: self.delivery.key.clone(),
            channel: self.channel.to_string(),
            recipient: self.delivery.recipient.clone(),
            content: self.delivery.content.to_string(),
            priority: self.delivery.priority.into(),
            attempt: self.delivery.attempt + 1,
            due_at_ms,
            first_seen_ms: self.first_seen_ms,
            origin: (*self.origin).clone(),
            last_reason,
            last_was_plugin_fault: plugin_fault,
            replayed: false,
            hop_due_ms: None,
        }
    }
}

/// Sends jobs to the queue of their plugin and lane.
pub struct Dispatcher {
    queues: HashMap<(String, TrafficClass), mpsc::UnboundedSender<Job>>,
    settler: Arc<Settler>,
}

/// A plugin with the limits the dispatcher applies to it.
pub struct PluginLane {
    /// The plugin's versions; each call takes the version in force when it starts.
    pub slot: Arc<Slot>,
    /// Calls at once, over all lanes.
    pub concurrency: usize,
    /// Deliveries per second, over all lanes; `None` for no limit.
    pub rate_per_s: Option<f64>,
    /// The rate limit's burst.
    pub burst: Option<u32>,
}

/// Where settled outcomes are recorded.
pub struct Records {
    pub counters: Arc<Counters>,
    /// Final deliveries are marked here before their records finish.
    pub dedup: Option<Arc<DedupStore>>,
    /// The retry topic and the DLQ.
    pub outbox: Arc<Outbox>,
    /// The send history, when on.
    pub history: Option<HistorySender>,
    /// Every vendor's health and breaker.
    pub health: Arc<Health>,
    /// Channel → where its permanent failures are re-sent.
    pub fallback: std::collections::BTreeMap<String, FallbackConfig>,
    /// Each call's outcomes and duration, per vendor and plugin version.
    pub metrics: Arc<Metrics>,
}

impl Dispatcher {
    /// Starts one batching queue per plugin and lane; realtime queues on `realtime`.
    pub fn start(
        plugins: Vec<PluginLane>,
        config: &DispatchConfig,
        lanes: &LanesConfig,
        records: Records,
        realtime: &tokio::runtime::Handle,
    ) -> Self {
        let Records {
            counters,
            dedup,
            outbox,
            history,
            health,
            fallback,
            metrics,
        } = records;
        let settler = Arc::new(Settler {
            counters,
            dedup,
            outbox,
            history,
            health,
            fallback,
            metrics,
            max_attempts: config.retry_max_attempts,
            give_up_after: Duration::from_secs(config.give_up_after_s),
            backoff: Backoff::new(
                Duration::from_millis(config.retry_base_ms),
                Duration::from_millis(config.retry_max_ms),
            ),
        });
        let lane_calls = TrafficClass::ALL
            .map(|class| Arc::new(Semaphore::new(lanes.get(class).concurrency(class))));
        let mut queues = HashMap::new();
        for plugin in plugins {
            let gate = Arc::new(VendorGate::new(
                plugin.concurrency,
                plugin.rate_per_s,
                plugin.burst,
            ));
            for class in TrafficClass::ALL {
                let (tx, rx) = mpsc::unbounded_channel();
                let runner = LaneRunner {
                    slot: plugin.slot.clone(),
                    class,
                    linger: Duration::from_millis(lanes.get(class).linger_ms(class, config)),
                    lane_calls: lane_calls[class.index()].clone(),
                    gate: gate.clone(),
                    settler: settler.clone(),
                };
                // The runner spawns its calls where it runs: realtime on its own threads.
                match class {
                    TrafficClass::Realtime => realtime.spawn(runner.run(rx)),
                    _ => tokio::spawn(runner.run(rx)),
                };
                queues.insert((plugin.slot.name.clone(), class), tx);
            }
        }
        Self { queues, settler }
    }

    /// Queues a job on its plugin's lane. A plugin without a lane (not loaded) dead-letters the
    /// delivery rather than holding its record forever.
    pub async fn submit(&self, plugin: &str, job: Job) {
        let job = match self.queues.get(&(plugin.to_string(), job.class)) {
            Some(lane) => match lane.send(job) {
                Ok(()) => return,
                Err(mpsc::error::SendError(job)) => job,
            },
            None => job,
        };
        let reason = format!(
            "no plugin `{plugin}` is running for channel `{}`",
            job.channel
        );
        if let Some(settled) = self
            .settler
            .dead_letter(job, ReasonClass::UnknownChannel, &reason, None, None)
            .await
        {
            self.settler.finish(vec![settled]).await;
        }
    }
}

/// Turns outcomes into durable results, shared by all lanes.
struct Settler {
    counters: Arc<Counters>,
    dedup: Option<Arc<DedupStore>>,
    outbox: Arc<Outbox>,
    /// Where each settled outcome is counted for `switchboard history`; never waits.
    history: Option<HistorySender>,
    health: Arc<Health>,
    fallback: std::collections::BTreeMap<String, FallbackConfig>,
    metrics: Arc<Metrics>,
    max_attempts: u32,
    give_up_after: Duration,
    backoff: Backoff,
}

impl Settler {
    /// Acts on one outcome. Returns the job when the outcome is final (to be marked and
    /// finished); a retried job is finished here, once the retry topic holds it.
    async fn settle(&self, job: Job, outcome: Outcome, call: &CallContext<'_>) -> Option<Job> {
        let CallContext {
            plugin,
            gate,
            plugin_fault,
            host_busy,
            pinning,
            elapsed,
        } = *call;
        let counters = &self.counters;
        // The results topic's record of this outcome; made only when the topic is on.
        let result = |job: &Job, outcome: ResultOutcome| ResultRecord {
            key: job.delivery.key.clone(),
            channel: job.channel.to_string(),
            vendor: plugin.name.clone(),
            plugin_version: plugin.info.version.clone(),
            outcome,
            attempt: job.delivery.attempt,
            at_ms: now_ms(),
            latency_ms: elapsed.as_millis() as u64,
            vendor_message_id: None,
            code: None,
            reason: None,
            fallback_channel: None,
            fallback_key: None,
        };
        let record = |job: &Job, outcome: OutcomeClass| {
            if let Some(history) = &self.history {
                history.submit(SendRecord {
                    at_ms: now_ms() as i64,
                    channel: job.channel.to_string(),
                    vendor: plugin.name.clone(),
                    plugin_version: plugin.info.version.clone(),
                    outcome,
                    latency_ms: elapsed.as_millis() as u64,
                    key: job.delivery.key.clone(),
                });
            }
        };
        match outcome {
            Outcome::Delivered(ref id) => {
                counters
                    .deliveries_delivered
                    .fetch_add(1, Ordering::Relaxed);
                // From the request record's Kafka timestamp: the figure the lanes exist for.
                self.metrics.record_delivery_latency(
                    job.class.as_str(),
                    Duration::from_millis(now_ms().saturating_sub(job.first_seen_ms)),
                );
                record(&job, OutcomeClass::Delivered);
                self.outbox.publish_result(|| ResultRecord {
                    vendor_message_id: (!id.is_empty()).then(|| id.clone()),
                    ..result(&job, ResultOutcome::Delivered)
                });
                Some(job)
            }
            Outcome::InvalidRecipient(ref reason) => {
                counters
                    .deliveries_invalid_recipient
                    .fetch_add(1, Ordering::Relaxed);
                record(&job, OutcomeClass::InvalidRecipient);
                events::RecipientInvalid {
                    key: &job.delivery.key,
                    plugin: &plugin.name,
                    reason,
                }
                .emit();
                let fell_back = self.fall_back(&job, &outcome, reason).await;
                self.outbox.publish_result(|| ResultRecord {
                    reason: Some(reason.clone()),
                    ..with_fallback(result(&job, ResultOutcome::InvalidRecipient), fell_back)
                });
                self.outbox.publish_invalidation(|| Invalidation {
                    recipient: job.delivery.recipient.clone(),
                    channel: job.channel.to_string(),
                    vendor: plugin.name.clone(),
                    key: job.delivery.key.clone(),
                    reason: reason.clone(),
                    at_ms: now_ms(),
                    invalid_since_ms: invalid_since_ms(reason),
                });
                Some(job)
            }
            Outcome::Rejected(ref rejection) => {
                counters.deliveries_rejected.fetch_add(1, Ordering::Relaxed);
                record(&job, OutcomeClass::Rejected);
                events::DeliveryRejected {
                    key: &job.delivery.key,
                    plugin: &plugin.name,
                    code: &rejection.code,
                    reason: &rejection.reason,
                }
                .emit();
                let fell_back = self.fall_back(&job, &outcome, &rejection.reason).await;
                let job = match fell_back {
                    // The fallback channel carries it on: not dead, and final here.
                    Some(_) => job,
                    None => {
                        self.dead_letter(
                            job,
                            ReasonClass::Rejected,
                            &rejection.reason,
                            Some(&rejection.code),
                            Some(plugin),
                        )
                        .await?
                    }
                };
                self.outbox.publish_result(|| ResultRecord {
                    code: Some(rejection.code.clone()),
                    reason: Some(rejection.reason.clone()),
                    ..with_fallback(result(&job, ResultOutcome::Rejected), fell_back)
                });
                Some(job)
            }
            Outcome::Retry(info) => {
                if let Some(after_ms) = info.after_ms
                    && !plugin_fault
                {
                    // The vendor asked everyone to wait, not just this delivery.
                    gate.hold_for(Duration::from_millis(after_ms));
                }
                let wait = self.backoff.delay(
                    job.delivery.attempt,
                    info.after_ms.map(Duration::from_millis),
                    &mut rand::thread_rng(),
                );
                let due_at_ms = now_ms() + wait.as_millis() as u64;
                let give_up_at = job.first_seen_ms + self.give_up_after.as_millis() as u64;
                let class = if due_at_ms > give_up_at {
                    Some(ReasonClass::Expired)
                } else if job.delivery.attempt >= self.max_attempts && !host_busy {
                    Some(if plugin_fault {
                        ReasonClass::PluginFault
                    } else {
                        ReasonClass::AttemptsExhausted
                    })
                } else {
                    None
                };
                if let Some(class) = class {
                    counters.deliveries_failed.fetch_add(1, Ordering::Relaxed);
                    record(&job, OutcomeClass::Failed);
                    events::DeliveryGivenUp {
                        key: &job.delivery.key,
                        attempts: job.delivery.attempt,
                        reason: &info.reason,
                        class: class.as_str(),
                    }
                    .emit();
                    let job = self
                        .dead_letter(job, class, &info.reason, None, Some(plugin))
                        .await?;
                    self.outbox.publish_result(|| ResultRecord {
                        code: Some(class.as_str().to_string()),
                        reason: Some(info.reason.clone()),
                        ..result(&job, ResultOutcome::Failed)
                    });
                    return Some(job);
                }
                counters.retries.fetch_add(1, Ordering::Relaxed);
                record(&job, OutcomeClass::Retry);
                let mut record = job.retry_record(due_at_ms, info.reason, plugin_fault);
                if host_busy {
                    // A call the host had no slot for was no try of the delivery.
                    record.attempt = job.delivery.attempt;
                }
                record.route = Some(RouteHint::after(&plugin.name, pinning, job.route.as_ref()));
                if let Err(error) = self.outbox.retry(&mut record).await {
                    // The retry topic refused it for good: the DLQ keeps it instead, so it is
                    // never lost and the lane goes on.
                    let reason = format!(
                        "{}; the retry topic refused it: {error}",
                        record.last_reason
                    );
                    let class = if plugin_fault {
                        ReasonClass::PluginFault
                    } else {
                        ReasonClass::AttemptsExhausted
                    };
                    counters.deliveries_failed.fetch_add(1, Ordering::Relaxed);
                    return self
                        .dead_letter(job, class, &reason, None, Some(plugin))
                        .await;
                }
                self.outbox.publish_result(|| ResultRecord {
                    reason: Some(record.last_reason.clone()),
                    ..result(&job, ResultOutcome::Retry)
                });
                // The retry topic holds the delivery now: its record may move on, unmarked.
                job.ticket.complete();
                None
            }
        }
    }

    /// Re-sends a permanently failed delivery on its channel's fallback channel, when one is
    /// configured for this outcome: through the retry topic, due now, under its own key.
    /// Returns the fallback channel once the retry topic holds it.
    async fn fall_back(&self, job: &Job, outcome: &Outcome, reason: &str) -> Option<String> {
        // A delivery that already came through a fallback ends in the DLQ: every chain ends.
        if fallback::is_fallback_key(&job.delivery.key) {
            return None;
        }
        let config = self.fallback.get(&*job.channel)?;
        if !fallback::applies(config, outcome) {
            return None;
        }
        let content = match fallback::render(config, &job.delivery.content) {
            Ok(content) => content,
            Err(why) => {
                tracing::warn!(
                    key = %job.delivery.key,
                    channel = %job.channel,
                    reason = %why,
                    "no fallback: the content cannot be rendered for the fallback channel"
                );
                return None;
            }
        };
        let mut record = job.retry_record(
            now_ms(),
            format!("fallback from {}: {reason}", job.channel),
            false,
        );
        record.key = fallback::fallback_key(&job.delivery.key, &config.channel);
        record.channel = config.channel.clone();
        record.content = content;
        record.attempt = 1;
        if let Err(error) = self.outbox.retry(&mut record).await {
            tracing::warn!(key = %job.delivery.key, %error, "no fallback: the retry topic refused it");
            return None;
        }
        self.counters
            .deliveries_fallen_back
            .fetch_add(1, Ordering::Relaxed);
        events::DeliveryFellBack {
            key: &job.delivery.key,
            from: &job.channel,
            to: &config.channel,
            reason,
        }
        .emit();
        Some(config.channel.clone())
    }

    /// Writes the delivery to the DLQ; returns it for marking and finishing. `None` when the
    /// DLQ refused it for good or shutdown abandoned the write: the job is dropped unfinished,
    /// so its record's offset never passes it and the record is read again later.
    async fn dead_letter(
        &self,
        mut job: Job,
        class: ReasonClass,
        reason: &str,
        vendor_code: Option<&str>,
        plugin: Option<&LoadedPlugin>,
    ) -> Option<Job> {
        let record = job.retry_record(
            now_ms(),
            reason.to_string(),
            class == ReasonClass::PluginFault,
        );
        let value = serde_json::to_vec(&record).unwrap_or_default();
        let why = DeadLetterReason {
            class,
            reason,
            vendor_code,
            plugin: plugin.map(|p| (p.name.as_str(), p.info.version.as_str())),
            attempts: job.delivery.attempt,
            first_seen_ms: job.first_seen_ms,
        };
        if let Err(error) = self
            .outbox
            .dead_letter(&job.delivery.key, &value, &job.origin, &why)
            .await
        {
            self.counters
                .deliveries_unsettled
                .fetch_add(1, Ordering::Relaxed);
            events::DeliveryUnsettled {
                key: &job.delivery.key,
                error: &error,
            }
            .emit();
            return None;
        }
        // Counted once the DLQ holds it, so the count never runs ahead of the topic.
        self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
        job.dead_lettered = true;
        Some(job)
    }

    /// Marks final deliveries as done, then lets their records finish. The mark comes first:
    /// once a record's offset is committed, its recipients must be known as done.
    async fn finish(&self, jobs: Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        if let Some(dedup) = &self.dedup {
            let keys: Vec<String> = jobs
                .iter()
                .map(|j| match j.dead_lettered {
                    true => crate::dedup::dead_key(&j.delivery.key),
                    false => j.delivery.key.clone(),
                })
                .collect();
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            // While the store is down this waits for it: a record's offset may pass its
            // deliveries only once they are known as done.
            if let Err(error) = dedup.mark_waiting(&keys).await {
                // The store answered with an error, not an outage: waiting would not change
                // it. The deliveries are done; a redelivery could send them again (at least
                // once), and the error is counted and logged.
                self.counters.dedup_errors.fetch_add(1, Ordering::Relaxed);
                events::DedupFailed { error: &error }.emit();
            }
        }
        for job in jobs {
            job.ticket.complete();
        }
    }
}

/// `result` with where its delivery was sent on, when it fell back to `channel`.
fn with_fallback(result: ResultRecord, channel: Option<String>) -> ResultRecord {
    match channel {
        Some(channel) => ResultRecord {
            fallback_key: Some(fallback::fallback_key(&result.key, &channel)),
            fallback_channel: Some(channel),
            ..result
        },
        None => result,
    }
}

/// What one call was, for settling its outcomes.
#[derive(Clone, Copy)]
struct CallContext<'a> {
    plugin: &'a LoadedPlugin,
    gate: &'a VendorGate,
    /// The call failed as a whole (trap, timeout, failed init).
    plugin_fault: bool,
    /// The host had no instance slot for the call: the plugin never ran, so its retries take
    /// no attempt of the delivery's (only `give_up_after` bounds them).
    host_busy: bool,
    /// Whether the vendor may have acted on the call, which decides where its retries may go
    /// ([`crate::route::retry_pinning`]).
    pinning: Pinning,
    elapsed: Duration,
}

/// The batching queue of one plugin in one lane.
struct LaneRunner {
    /// The plugin's versions: each call takes the one in force as it starts.
    slot: Arc<Slot>,
    class: TrafficClass,
    linger: Duration,
    /// The lane's call slots, shared with the lane's queues for other plugins.
    lane_calls: Arc<Semaphore>,
    /// The vendor's limits, shared with the vendor's queues in other lanes.
    gate: Arc<VendorGate>,
    settler: Arc<Settler>,
}

impl LaneRunner {
    async fn run(self, mut jobs: mpsc::UnboundedReceiver<Job>) {
        let runner = Arc::new(self);
        while let Some(first) = jobs.recv().await {
            let max_batch = runner.slot.max_batch();
            let mut batch = Vec::with_capacity(max_batch);
            batch.push(first);
            // Take what is already queued, then wait up to the linger time for a fuller batch.
            let linger_until = tokio::time::Instant::now() + runner.linger;
            while batch.len() < max_batch {
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
            let Ok(lane_slot) = runner.lane_calls.clone().acquire_owned().await else {
                break;
            };
            let vendor_slot = runner.gate.admit(runner.class, batch.len()).await;
            let runner = runner.clone();
            tokio::spawn(async move {
                runner.call(batch).await;
                drop((lane_slot, vendor_slot));
            });
        }
    }

    async fn call(&self, batch: Vec<Job>) {
        // The version in force now serves this whole call, even if another is activated
        // meanwhile: the call holds it until its outcomes are settled.
        let version = self.slot.choose();
        let plugin = match self.class {
            TrafficClass::Realtime => &version.realtime,
            _ => &version.plugin,
        };
        // Cheap: the content is shared, only keys and recipients are copied.
        let deliveries: Vec<SharedDelivery> = batch.iter().map(|j| j.delivery.clone()).collect();
        let started = std::time::Instant::now();
        let report = plugin.deliver_reporting(&deliveries).await;
        let elapsed = started.elapsed();
        let pinning = retry_pinning(&report);
        // The host could not run the call (no instance slot): the vendor was never asked, so
        // nothing of it counts for or against the vendor.
        let host_busy = matches!(report.outcomes, Err(CallError::HostBusy(_)));
        let (outcomes, plugin_fault, timed_out) = match report.outcomes {
            Ok(outcomes) => (outcomes, false, report.exchanges.unanswered > 0),
            Err(error) => {
                events::PluginCallFailed {
                    plugin: &plugin.name,
                    version: &plugin.info.version,
                    batch: deliveries.len(),
                    elapsed,
                    error: &error,
                }
                .emit();
                // A trap, a timeout or a failed init costs this call only: every delivery in it
                // is tried again, on a fresh instance.
                let reason = error.to_string();
                let retry = |_| {
                    Outcome::Retry(crate::plugin::RetryInfo {
                        reason: reason.clone(),
                        after_ms: None,
                    })
                };
                let timed_out = matches!(error, CallError::Timeout(_));
                ((0..batch.len()).map(retry).collect(), !host_busy, timed_out)
            }
        };
        if !host_busy {
            self.record_health(&version, &outcomes, timed_out, elapsed);
        }
        self.settler.metrics.record_call(
            &self.slot.name,
            &version.plugin.info.version,
            &version.id,
            outcomes.iter().map(|outcome| match outcome {
                Outcome::Delivered(_) => CallOutcome::Delivered,
                Outcome::Rejected(_) => CallOutcome::Rejected,
                Outcome::InvalidRecipient(_) => CallOutcome::InvalidRecipient,
                // As `record_health` counts them: a timed-out call or request, else the call's
                // own failure, else the vendor's answer.
                Outcome::Retry(_) if timed_out => CallOutcome::Timeout,
                Outcome::Retry(_) if plugin_fault => CallOutcome::Trap,
                Outcome::Retry(_) => CallOutcome::Retry,
            }),
            elapsed,
        );
        let call = CallContext {
            plugin,
            gate: &self.gate,
            plugin_fault,
            host_busy,
            pinning,
            elapsed,
        };
        let settling = batch
            .into_iter()
            .zip(outcomes)
            .map(|(job, outcome)| self.settler.settle(job, outcome, &call));
        let finished = futures::future::join_all(settling)
            .await
            .into_iter()
            .flatten()
            .collect();
        self.settler.finish(finished).await;
    }

    /// Counts the call for the vendor's breaker and the version's canary judgement. Answers
    /// (delivered, rejected, invalid recipient) are successes: the vendor answered. A `retry`
    /// is an error, or a timeout when the call or a request of it timed out. A trap counts as
    /// an error too: the vendor's path is broken either way.
    fn record_health(
        &self,
        version: &Version,
        outcomes: &[Outcome],
        timed_out: bool,
        latency: Duration,
    ) {
        let mut tally = CallTally {
            latency,
            ..CallTally::default()
        };
        for outcome in outcomes {
            match outcome {
                Outcome::Retry(_) if timed_out => tally.timeouts += 1,
                Outcome::Retry(_) => tally.errors += 1,
                _ => tally.ok += 1,
            }
        }
        version.record(&tally);
        self.settler.health.record(&self.slot.name, &tally);
    }
}
