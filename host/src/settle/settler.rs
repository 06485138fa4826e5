//! The settler: carries each [`Decision`] out. It counts the outcome, writes the retry topic or
//! the DLQ, re-sends on a fallback channel, publishes the result and the send history, and marks
//! finished deliveries in the dedup store before their records may finish.
//!
//! Must never finish a delivery before its outcome is durable (the vendor took it, the DLQ
//! holds it, or the retry topic does), and never mark a retried delivery as done.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus_client::metrics::histogram::Histogram;
use switchboard_history::{HistorySender, OutcomeClass, SendRecord};

use super::backoff::Backoff;
use super::decide::{Decision, Facts, RetryPolicy, decide, refused_retry_class};
use super::results::{Invalidation, ResultOutcome, ResultRecord, invalid_since_ms};
use super::{DeadLetterReason, Origin, Outbox, ReasonClass, RetryRecord};
use crate::clock::now_ms;
use crate::config::{DispatchConfig, FallbackConfig, TrafficClass};
use crate::contract::{Outcome, SharedDelivery};
use crate::dedup::{self, DedupStore};
use crate::offsets::RecordTicket;
use crate::plugin::LoadedPlugin;
use crate::route::health::Health;
use crate::route::{Pinning, RouteHint, fallback};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::{Counters, events};

/// One delivery on its way, with the record it belongs to.
pub struct Job {
    pub delivery: SharedDelivery,
    /// The lane it runs in.
    pub class: TrafficClass,
    ticket: Arc<RecordTicket>,
    /// The request's channel, for the retry topic.
    pub channel: Arc<str>,
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

    /// How long a first try has waited since its record was produced (by the record's
    /// timestamp), at `now_ms`; `None` for a retry, whose first sighting says nothing of this
    /// try's wait.
    pub fn first_try_waited_ms(&self, now_ms: u64) -> Option<u64> {
        (self.delivery.attempt <= 1).then(|| now_ms.saturating_sub(self.first_seen_ms))
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
        crate::text::cap_in_place(&mut last_reason, super::HEADER_REASON_BYTES);
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

impl Settler {
    /// The settler over `records`, with the retry limits and backoff of `config`.
    pub fn new(records: Records, config: &DispatchConfig) -> Self {
        let Records {
            counters,
            dedup,
            outbox,
            history,
            health,
            fallback,
            metrics,
        } = records;
        Self {
            counters,
            dedup,
            outbox,
            history,
            health,
            fallback,
            delivery_latency: TrafficClass::ALL
                .map(|class| metrics.delivery_latency(class.as_str())),
            metrics,
            policy: RetryPolicy {
                max_attempts: config.retry_max_attempts,
                give_up_after: Duration::from_secs(config.give_up_after_s),
            },
            backoff: Backoff::new(
                Duration::from_millis(config.retry_base_ms),
                Duration::from_millis(config.retry_max_ms),
            ),
        }
    }

    /// Every vendor's health and breaker, for the calls' tallies.
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Each call's outcomes and duration.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}

/// Turns outcomes into durable results, shared by all lanes.
pub struct Settler {
    counters: Arc<Counters>,
    dedup: Option<Arc<DedupStore>>,
    outbox: Arc<Outbox>,
    /// Where each settled outcome is counted for `switchboard history`; never waits.
    history: Option<HistorySender>,
    health: Arc<Health>,
    fallback: std::collections::BTreeMap<String, FallbackConfig>,
    metrics: Arc<Metrics>,
    /// Each lane's delivery latency series, by [`TrafficClass::index`]: looked up once here
    /// rather than per delivery.
    delivery_latency: [Histogram; 3],
    policy: RetryPolicy,
    backoff: Backoff,
}

impl Settler {
    /// Acts on one outcome. Returns the job when the outcome is final (to be marked and
    /// finished); a retried job is finished here, once the retry topic holds it.
    pub async fn settle(&self, job: Job, outcome: Outcome, call: &CallContext<'_>) -> Option<Job> {
        let CallContext {
            plugin,
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
        let facts = Facts {
            attempt: job.delivery.attempt,
            first_seen_ms: job.first_seen_ms,
            now_ms: now_ms(),
            wait: match &outcome {
                Outcome::Retry(info) => self.backoff.delay(
                    job.delivery.attempt,
                    info.after_ms.map(Duration::from_millis),
                    &mut rand::thread_rng(),
                ),
                _ => Duration::ZERO,
            },
            plugin_fault,
            host_busy,
            // Only a refusal can fall back: a delivered or retried outcome (the hot path) skips
            // the look-up.
            fallback: matches!(outcome, Outcome::Rejected(_) | Outcome::InvalidRecipient(_))
                && self.fallback_applies(&job, &outcome),
        };
        match (decide(&outcome, &facts, &self.policy), outcome) {
            (Decision::Delivered, Outcome::Delivered(id)) => Some(self.delivered(job, id, call)),
            (Decision::InvalidRecipient { fall_back }, Outcome::InvalidRecipient(reason)) => {
                counters
                    .deliveries_invalid_recipient
                    .fetch_add(1, Ordering::Relaxed);
                record(&job, OutcomeClass::InvalidRecipient);
                events::RecipientInvalid {
                    key: &job.delivery.key,
                    plugin: &plugin.name,
                    reason: &reason,
                }
                .emit();
                let fell_back = match fall_back {
                    true => self.fall_back(&job, &reason).await,
                    false => None,
                };
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
                    invalid_since_ms: invalid_since_ms(&reason),
                });
                Some(job)
            }
            (Decision::Rejected { fall_back }, Outcome::Rejected(rejection)) => {
                counters.deliveries_rejected.fetch_add(1, Ordering::Relaxed);
                record(&job, OutcomeClass::Rejected);
                events::DeliveryRejected {
                    key: &job.delivery.key,
                    plugin: &plugin.name,
                    code: &rejection.code,
                    reason: &rejection.reason,
                }
                .emit();
                let fell_back = match fall_back {
                    true => self.fall_back(&job, &rejection.reason).await,
                    false => None,
                };
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
            (Decision::GiveUp { class }, Outcome::Retry(info)) => {
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
                Some(job)
            }
            (Decision::Retry { due_at_ms, attempt }, Outcome::Retry(info)) => {
                counters.retries.fetch_add(1, Ordering::Relaxed);
                record(&job, OutcomeClass::Retry);
                let mut record = job.retry_record(due_at_ms, info.reason, plugin_fault);
                record.attempt = attempt;
                record.route = Some(RouteHint::after(&plugin.name, pinning, job.route.as_ref()));
                if let Err(error) = self.outbox.retry(&mut record).await {
                    // The retry topic refused it for good: the DLQ keeps it instead, so it is
                    // never lost and the lane goes on.
                    let reason = format!(
                        "{}; the retry topic refused it: {error}",
                        record.last_reason
                    );
                    counters.deliveries_failed.fetch_add(1, Ordering::Relaxed);
                    let class = refused_retry_class(plugin_fault);
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
            (decision, outcome) => {
                // `decide` answers each outcome with its own kind of decision; a mismatch is a
                // bug in it. The delivery is left unfinished, so its record is read again.
                tracing::error!(?decision, ?outcome, key = %job.delivery.key, "settling: a decision that does not fit its outcome");
                None
            }
        }
    }

    /// Settles a delivery the vendor took; final, so the job comes back to be marked and
    /// finished. It waits on nothing, so a call settles its delivered outcomes (nearly all of
    /// them) here, without a future each: [`Settler::settle`]'s future is large, and a call's
    /// hundred of them cost a copy and an allocation apiece in `join_all`.
    pub fn delivered(&self, job: Job, vendor_message_id: String, call: &CallContext<'_>) -> Job {
        let now = now_ms();
        self.counters
            .deliveries_delivered
            .fetch_add(1, Ordering::Relaxed);
        // From the request record's Kafka timestamp: the figure the lanes exist for.
        self.delivery_latency[job.class.index()]
            .observe(Duration::from_millis(now.saturating_sub(job.first_seen_ms)).as_secs_f64());
        let plugin = call.plugin;
        let latency_ms = call.elapsed.as_millis() as u64;
        if let Some(history) = &self.history {
            history.submit(SendRecord {
                at_ms: now as i64,
                channel: job.channel.to_string(),
                vendor: plugin.name.clone(),
                plugin_version: plugin.info.version.clone(),
                outcome: OutcomeClass::Delivered,
                latency_ms,
                key: job.delivery.key.clone(),
            });
        }
        self.outbox.publish_result(|| ResultRecord {
            key: job.delivery.key.clone(),
            channel: job.channel.to_string(),
            vendor: plugin.name.clone(),
            plugin_version: plugin.info.version.clone(),
            outcome: ResultOutcome::Delivered,
            attempt: job.delivery.attempt,
            at_ms: now,
            latency_ms,
            vendor_message_id: (!vendor_message_id.is_empty()).then_some(vendor_message_id),
            code: None,
            reason: None,
            fallback_channel: None,
            fallback_key: None,
        });
        job
    }

    /// Whether `job`'s channel re-sends `outcome` on a fallback channel: one is configured for
    /// this outcome, and the delivery did not itself come through a fallback (every chain ends).
    fn fallback_applies(&self, job: &Job, outcome: &Outcome) -> bool {
        !fallback::is_fallback_key(&job.delivery.key)
            && self
                .fallback
                .get(&*job.channel)
                .is_some_and(|config| fallback::applies(config, outcome))
    }

    /// Re-sends a permanently failed delivery on its channel's fallback channel, when one is
    /// configured for this outcome: through the retry topic, due now, under its own key.
    /// Returns the fallback channel once the retry topic holds it.
    async fn fall_back(&self, job: &Job, reason: &str) -> Option<String> {
        let config = self.fallback.get(&*job.channel)?;
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
    pub async fn dead_letter(
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
    pub async fn finish(&self, jobs: Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        let finished = jobs
            .iter()
            .map(|j| (j.delivery.key.as_str(), j.dead_lettered));
        dedup::mark_finished(self.dedup.as_deref(), finished, &self.counters).await;
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
pub struct CallContext<'a> {
    pub plugin: &'a LoadedPlugin,
    /// The call failed as a whole (trap, timeout, failed init).
    pub plugin_fault: bool,
    /// The host had no instance slot for the call: the plugin never ran, so its retries take
    /// no attempt of the delivery's (only `give_up_after` bounds them).
    pub host_busy: bool,
    /// Whether the vendor may have acted on the call, which decides where its retries may go
    /// ([`crate::route::retry_pinning`]).
    pub pinning: Pinning,
    pub elapsed: Duration,
}
