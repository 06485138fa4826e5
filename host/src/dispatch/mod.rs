//! Dispatch: batches deliveries per plugin and lane, and runs plugin calls under the lane's and
//! the vendor's limits. Each call's outcomes go to the [`Settler`].
//!
//! Each (plugin, lane) pair has its own batching queue, so a realtime delivery never waits
//! behind a queue of ads for the same vendor. A call holds a slot of its lane (the lane's
//! `concurrency`) and is admitted by the vendor's [`vendor::VendorGate`] (the vendor's
//! concurrency, rate limit and Retry-After hold, with a reserve for realtime).
//!
//! A call that fails as a whole (a trap, a timeout, a failed init) costs that call only: every
//! delivery in it comes to `retry`. Each call is tallied for the vendor's breaker and the
//! version's canary judgement, and counted in the metrics per vendor and plugin version. A call
//! the host had no instance slot for (`CallError::HostBusy`) never reached the plugin, and
//! counts for nothing.

pub mod vendor;
pub mod yielding;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};

use crate::config::{DispatchConfig, LanesConfig, TrafficClass};
use crate::contract::{Outcome, SharedDelivery};
use crate::plugin::CallError;
use crate::plugin::registry::{Slot, Version};
use crate::route::health::CallTally;
use crate::route::retry_pinning;
use crate::settle::{CallContext, ReasonClass, Settler, decide};
pub use crate::settle::{Job, Records};
use crate::telemetry::events;
use crate::telemetry::metrics::CallOutcome;
use vendor::VendorGate;

/// Resolves once every batching queue of a dispatcher, and every call they started, has ended:
/// each holds a clone of the sender this receiver waits on (mini-redis's shutdown pattern), so
/// the last to end closes the channel. They end once the dispatcher is dropped.
pub struct QueuesEnded(mpsc::Receiver<()>);

impl QueuesEnded {
    pub async fn wait(mut self) {
        let _ = self.0.recv().await;
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

impl Dispatcher {
    /// Starts one batching queue per plugin and lane; realtime queues on `realtime`. The
    /// [`QueuesEnded`] resolves once they have all ended after the dispatcher is dropped.
    pub fn start(
        plugins: Vec<PluginLane>,
        config: &DispatchConfig,
        lanes: &LanesConfig,
        records: Records,
        realtime: &tokio::runtime::Handle,
    ) -> (Self, QueuesEnded) {
        let (running, ended) = mpsc::channel(1);
        let settler = Arc::new(Settler::new(records, config));
        let lane_calls = TrafficClass::ALL
            .map(|class| Arc::new(Semaphore::new(lanes.get(class).concurrency(class))));
        let realtime_wait = Arc::new(yielding::RealtimeWait::default());
        for class in TrafficClass::ALL {
            let target_ms = lanes.get(class).yield_to_realtime_ms(class);
            if target_ms > 0 {
                tokio::spawn(yielding::yield_to_realtime(
                    realtime_wait.clone(),
                    Arc::downgrade(&lane_calls[class.index()]),
                    lanes.get(class).concurrency(class),
                    target_ms,
                ));
            }
        }
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
                    realtime_wait: (class == TrafficClass::Realtime).then(|| realtime_wait.clone()),
                    gate: gate.clone(),
                    settler: settler.clone(),
                    _running: running.clone(),
                };
                // The runner spawns its calls where it runs: realtime on its own threads.
                match class {
                    TrafficClass::Realtime => realtime.spawn(runner.run(rx)),
                    _ => tokio::spawn(runner.run(rx)),
                };
                queues.insert((plugin.slot.name.clone(), class), tx);
            }
        }
        (Self { queues, settler }, QueuesEnded(ended))
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

/// The batching queue of one plugin in one lane.
struct LaneRunner {
    /// The plugin's versions: each call takes the one in force as it starts.
    slot: Arc<Slot>,
    class: TrafficClass,
    linger: Duration,
    /// The lane's call slots, shared with the lane's queues for other plugins.
    lane_calls: Arc<Semaphore>,
    /// The realtime lane's: where it notes how long its requests waited, for the bulk lanes
    /// that yield to it ([`yielding`]).
    realtime_wait: Option<Arc<yielding::RealtimeWait>>,
    /// The vendor's limits, shared with the vendor's queues in other lanes.
    gate: Arc<VendorGate>,
    settler: Arc<Settler>,
    /// Dropped when this queue and its calls have ended (see [`QueuesEnded`]).
    _running: mpsc::Sender<()>,
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
            if let Some(wait) = &runner.realtime_wait {
                let now = crate::clock::now_ms();
                if let Some(worst) = batch
                    .iter()
                    .filter_map(|j| j.first_try_waited_ms(now))
                    .max()
                {
                    wait.note(worst);
                }
            }
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
                    Outcome::Retry(crate::contract::RetryInfo {
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
        self.settler.metrics().record_call(
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
        for outcome in &outcomes {
            if let Some(wait) = decide::vendor_hold(outcome, plugin_fault) {
                // The vendor asked everyone to wait, not just this delivery.
                self.gate.hold_for(wait);
            }
        }
        let call = CallContext {
            plugin,
            plugin_fault,
            host_busy,
            pinning,
            elapsed,
        };
        let mut finished = Vec::with_capacity(batch.len());
        let mut settling = Vec::new();
        for (job, outcome) in batch.into_iter().zip(outcomes) {
            match outcome {
                // Waits on nothing: settled here, without a future of its own.
                Outcome::Delivered(id) => finished.push(self.settler.delivered(job, id, &call)),
                outcome => settling.push(self.settler.settle(job, outcome, &call)),
            }
        }
        if !settling.is_empty() {
            finished.extend(
                futures::future::join_all(settling)
                    .await
                    .into_iter()
                    .flatten(),
            );
        }
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
        self.settler.health().record(&self.slot.name, &tally);
    }
}
