//! The realtime lane's threads: a runtime of its own, so bulk work on the shared threads never
//! delays a realtime delivery; and the shared threads' lower OS priority, so that on a busy
//! machine the kernel runs realtime's thread first.
//!
//! Must never: raise any thread's priority (that needs privileges the host does not ask for),
//! or lower the realtime lane's.

use anyhow::Context as _;

/// Names the `switchboard` binary's shared runtime threads ([`shared_runtime`]); Linux keeps the
/// first 15 bytes of a thread's name.
pub const SHARED_THREAD_NAME: &str = "switchboard-shared";

/// The runtime the `switchboard` binary runs on: everything but the realtime lane (bulk lanes,
/// settlement, the admin API). Its threads are named so that [`lower_shared_priority`] can find
/// them.
pub fn shared_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .thread_name(SHARED_THREAD_NAME)
        .enable_all()
        .build()
}

/// Sets the nice value of every thread of [`shared_runtime`] (by name, from `/proc/self/task`)
/// to `nice`; how many it changed. Threads the shared runtime starts later (its blocking pool)
/// inherit the value from the thread that starts them. Threads made earlier by others (the
/// realtime lane's, librdkafka's) keep theirs. Elsewhere than on Linux, or in a process whose
/// runtime is not [`shared_runtime`] (the lab, the tests), it changes nothing.
pub fn lower_shared_priority(nice: i32) -> usize {
    let name_prefix = &SHARED_THREAD_NAME[..15];
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    let mut changed = 0;
    for task in tasks.flatten() {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<i32>().ok())
        else {
            continue;
        };
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !name.trim_end().starts_with(name_prefix) {
            continue;
        }
        // On Linux the nice value is per thread, and a thread id names one thread here.
        match rustix::process::setpriority_process(rustix::process::Pid::from_raw(tid), nice) {
            Ok(()) => changed += 1,
            Err(error) => tracing::warn!(tid, %error, "could not lower a shared thread's priority"),
        }
    }
    changed
}

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
