//! CPU time of this process, apart from the threads that are not the host's.
//!
//! The `throughput` scenario runs the host, the mock Kafka cluster and the vendor simulator in
//! one process. The host's CPU is the process's (which still counts threads that have exited)
//! minus that of the threads known to be someone else's: the simulator runs on a runtime of its
//! own with named threads, and the cluster's threads are the ones born while it started.
//! Counts come from `/proc` in clock ticks (USER_HZ, 100 per second on Linux), so a window
//! needs seconds to be exact to a percent.

use std::collections::HashSet;
use std::time::Duration;

/// Clock ticks per second in `/proc/*/stat` (the kernel's USER_HZ, fixed at 100).
const TICKS_PER_S: u64 = 100;

/// CPU ticks of a thread or process: in user space, and in the kernel on its behalf.
#[derive(Clone, Copy, Debug, Default)]
struct Ticks {
    user: u64,
    system: u64,
}

impl Ticks {
    fn total(self) -> u64 {
        self.user + self.system
    }

    fn add(&mut self, other: Ticks) {
        self.user += other.user;
        self.system += other.system;
    }
}

/// utime and stime from a `/proc/.../stat` line, in ticks. The command name may hold spaces and
/// parentheses, so fields are counted after the last `)`.
fn ticks_of_stat(stat: &str) -> Option<Ticks> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    // After the name: state (3), ppid … ; utime is field 14 and stime 15 of the whole line.
    let user: u64 = fields.nth(11)?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(Ticks { user, system })
}

fn ticks_to_duration(ticks: u64) -> Duration {
    Duration::from_millis(ticks * 1000 / TICKS_PER_S)
}

/// The threads of this process now.
pub fn thread_ids() -> HashSet<u32> {
    std::fs::read_dir("/proc/self/task")
        .map(|dir| {
            dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn thread_name(tid: u32) -> String {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
        .map(|name| name.trim().to_string())
        .unwrap_or_default()
}

fn thread_ticks(tid: u32) -> Ticks {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
        .ok()
        .and_then(|stat| ticks_of_stat(&stat))
        .unwrap_or_default()
}

fn process_ticks() -> Ticks {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| ticks_of_stat(&stat))
        .unwrap_or_default()
}

/// Threads that are not the host's: by id (born while something else started) or by name
/// prefix (a runtime whose threads were named for it).
#[derive(Clone, Default)]
pub struct Others {
    ids: HashSet<u32>,
    name_prefixes: Vec<String>,
}

impl Others {
    /// Adds the threads born between `before` and now.
    pub fn born_since(mut self, before: &HashSet<u32>) -> Self {
        self.ids.extend(thread_ids().difference(before));
        self
    }

    /// Adds every thread whose name starts with `prefix`.
    pub fn named(mut self, prefix: &str) -> Self {
        self.name_prefixes.push(prefix.to_string());
        self
    }

    fn is_named(&self, tid: u32) -> bool {
        let name = thread_name(tid);
        self.name_prefixes.iter().any(|p| name.starts_with(p))
    }

    /// CPU ticks of the process and of these threads, now.
    pub fn sample(&self) -> Sample {
        let mut sample = Sample {
            process: process_ticks(),
            ..Sample::default()
        };
        for tid in thread_ids() {
            match (self.ids.contains(&tid), self.is_named(tid)) {
                (_, true) => {
                    let ticks = thread_ticks(tid);
                    sample.others.add(ticks);
                    sample.named += ticks.total();
                }
                (true, false) => sample.others.add(thread_ticks(tid)),
                (false, false) => {}
            }
        }
        sample
    }
}

/// The process's CPU and the others' at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    process: Ticks,
    others: Ticks,
    /// The part of `others` in threads found by name (the simulator's).
    named: u64,
}

impl Sample {
    /// The host's CPU between `self` and `later`: the process's less the others'. The others'
    /// threads live through the window, so their counts only grow.
    pub fn own_cpu_until(&self, later: &Sample) -> Duration {
        self.own_until(later, Ticks::total)
    }

    /// The part of [`Sample::own_cpu_until`] the kernel spent on the host's behalf (system
    /// calls, page faults), from 0 to 1. The bare client spends much of its time in socket
    /// calls, so what a system call costs on the machine moves its figure more than the host's.
    pub fn own_system_share_until(&self, later: &Sample) -> f64 {
        let system = self.own_until(later, |t| t.system);
        system.as_secs_f64() / self.own_cpu_until(later).as_secs_f64().max(1e-9)
    }

    /// `part` of the process's ticks less the others', between `self` and `later`.
    fn own_until(&self, later: &Sample, part: impl Fn(Ticks) -> u64) -> Duration {
        let process = part(later.process).saturating_sub(part(self.process));
        let others = part(later.others).saturating_sub(part(self.others));
        ticks_to_duration(process.saturating_sub(others))
    }

    /// The others' CPU between `self` and `later`.
    pub fn others_cpu_until(&self, later: &Sample) -> Duration {
        ticks_to_duration(later.others.total().saturating_sub(self.others.total()))
    }

    /// The CPU of the threads found by name (the simulator's) between `self` and `later`.
    pub fn named_cpu_until(&self, later: &Sample) -> Duration {
        ticks_to_duration(later.named.saturating_sub(self.named))
    }
}

/// A tokio runtime of its own for the lab's helpers (the simulator), with named threads so that
/// their CPU is not counted as the host's. Shut down in the background on drop, which is allowed
/// inside the lab's own runtime.
pub struct SideRuntime {
    runtime: Option<tokio::runtime::Runtime>,
}

impl SideRuntime {
    pub fn new(thread_name: &str, workers: usize) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name(thread_name)
            .enable_all()
            .build()?;
        Ok(Self {
            runtime: Some(runtime),
        })
    }

    /// Runs `future` on this runtime (so what it spawns stays here) and waits for it.
    pub async fn run<F>(&self, future: F) -> anyhow::Result<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("the side runtime was shut down"))?;
        Ok(runtime.spawn(future).await?)
    }
}

impl Drop for SideRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_name() {
        // A name with a space and a parenthesis, as thread names may have.
        let stat = "42 (a) b) S 1 42 42 0 -1 4194560 100 0 0 0 250 37 0 0 20 0 3 0 100 0 0";
        let ticks = ticks_of_stat(stat).map(|t| (t.user, t.system));
        assert_eq!(ticks, Some((250, 37)));
    }
}
