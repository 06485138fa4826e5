//! The realtime lane's threads: a runtime of its own, so bulk work on the shared threads never
//! delays a realtime delivery.

use anyhow::Context as _;

/// The realtime lane's own async runtime ("separate thread pools per traffic class"): its
/// consumer, its batching queues, its plugin calls and its HTTP connections run on these
/// threads, so a run queue full of bulk work on the shared threads never delays a realtime
/// delivery. Shut down in the background on drop, since a runtime may not be dropped from
/// inside another.
pub struct RealtimeThreads(Option<tokio::runtime::Runtime>);

impl RealtimeThreads {
    pub fn start(threads: usize) -> anyhow::Result<Self> {
        if threads == 0 {
            return Ok(Self(None));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("switchboard-realtime")
            .enable_all()
            .build()
            .context("starting the realtime lane's threads")?;
        Ok(Self(Some(runtime)))
    }

    /// Where realtime work is spawned: its own runtime, or the shared one.
    pub fn handle(&self) -> tokio::runtime::Handle {
        match &self.0 {
            Some(runtime) => runtime.handle().clone(),
            None => tokio::runtime::Handle::current(),
        }
    }

    /// Whether the lane has threads of its own (then it has its own HTTP pool too).
    pub fn own(&self) -> bool {
        self.0.is_some()
    }
}

impl Drop for RealtimeThreads {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}
