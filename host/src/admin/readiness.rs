//! Whether the host should be sent traffic and kept in its group: what `/readyz` answers.
//!
//! Owns the judgement only, from what the parts already know: the consumers have subscribed
//! (each has its partitions or is waiting in the group for them), shutdown has not begun, and
//! every dependency the host waits on (the Redis dedup store) answers. It never changes a part
//! and never probes anything itself: a probe of a probe would put load on a dependency that is
//! already struggling.
//!
//! `/healthz` stays the liveness answer: it says the process serves HTTP, nothing more, so a
//! Redis outage (during which delivery pauses and resumes on its own) never gets the pod killed.

use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;
use tokio::sync::watch;

use crate::telemetry::metrics::Metrics;

/// The host's readiness, shared between the host that sets it and the admin API that reads it.
#[derive(Debug)]
pub struct Readiness {
    consuming: AtomicBool,
    shutdown: watch::Receiver<bool>,
    metrics: std::sync::Arc<Metrics>,
}

/// `/readyz`'s body: ready or not, and every reason it is not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadyReply {
    pub ready: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
}

impl Readiness {
    /// Not ready until [`Readiness::mark_consuming`]; draining once `shutdown` turns true; each
    /// dependency as `metrics` reports it.
    pub fn new(shutdown: watch::Receiver<bool>, metrics: std::sync::Arc<Metrics>) -> Self {
        Self {
            consuming: AtomicBool::new(false),
            shutdown,
            metrics,
        }
    }

    /// Every consumer has subscribed to its topics.
    pub fn mark_consuming(&self) {
        self.consuming.store(true, Ordering::Release);
    }

    /// Ready or not, with every reason.
    pub fn check(&self) -> ReadyReply {
        let mut reasons = Vec::new();
        if *self.shutdown.borrow() {
            reasons.push("draining: the host is shutting down".to_string());
        } else if !self.consuming.load(Ordering::Acquire) {
            reasons.push("starting: the consumers have not joined their group yet".to_string());
        }
        for dependency in self.metrics.dependencies_down() {
            reasons.push(format!(
                "{dependency} is down: delivery waits for it (switchboard_dependency_up)"
            ));
        }
        ReadyReply {
            ready: reasons.is_empty(),
            reasons,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn ready_only_while_consuming_with_every_dependency_up_and_not_draining() {
        let metrics = Arc::new(Metrics::new());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let readiness = Readiness::new(shutdown_rx, metrics.clone());
        let starting = readiness.check();
        assert!(!starting.ready);
        assert!(starting.reasons[0].starts_with("starting"), "{starting:?}");

        readiness.mark_consuming();
        let redis = metrics.dependency_up("redis");
        redis.set(1);
        assert_eq!(
            readiness.check(),
            ReadyReply {
                ready: true,
                reasons: vec![]
            }
        );

        redis.set(0);
        let down = readiness.check();
        assert!(!down.ready);
        assert!(down.reasons[0].starts_with("redis is down"), "{down:?}");

        redis.set(1);
        let _ = shutdown.send(true);
        let draining = readiness.check();
        assert!(!draining.ready);
        assert!(draining.reasons[0].starts_with("draining"), "{draining:?}");
    }
}
