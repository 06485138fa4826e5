//! Dedup: which deliveries already reached a final outcome, by idempotency key, so a redelivered
//! request sends only the recipients not yet done.
//!
//! Keys are reduced to 64-bit fingerprints (the first 8 bytes of SHA-256 of the key). A
//! cryptographic hash keeps producers from crafting a collision that would skip another
//! request's recipient. By chance alone, two of 10 million live keys share a fingerprint with
//! probability about 3·10⁻⁶.
//!
//! Backends: [`EmbeddedDedup`] (the default, one host) and [`RedisDedup`] (a fleet of hosts).
//!
//! When the store does not answer. Redis is a dependency on the network: it can refuse, hang or
//! vanish. Each Redis call is bounded by its timeouts ([`RedisTimeouts`]) and fails with
//! [`DedupError::Unavailable`]; the first such failure marks the store down ([`Availability`]),
//! logs `dependency_down` once and sets `switchboard_dependency_up{dependency="redis"}` to 0.
//! A probe then looks for Redis every probe interval; its first answer marks the store up
//! again (`dependency_restored`, with how long it was down).
//!
//! The policy: an unanswered lookup is never taken as "not seen", and an unrecorded mark never
//! lets a record finish. [`DedupStore::seen_waiting`] and [`DedupStore::mark_waiting`] wait
//! while the store is down and try again once it is back, so delivery pauses (and with it
//! consumption: records stay unfinished, their offsets uncommitted, and the lanes fill up to
//! their budgets) and resumes by itself. An error that waiting cannot cure (Redis answered with
//! an error, or the embedded store's disk failed) is returned to the caller as it is.
//!
//! Must never: answer "not seen" for a key it could not look up.

pub mod embedded;
pub mod redis;
mod rules;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use sha2::Digest;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use crate::telemetry::events;

pub use embedded::EmbeddedDedup;
pub use redis::{RedisDedup, RedisTimeouts};
pub use rules::{done_among, mark_finished};

/// Why the dedup store could not answer. Callers branch on [`DedupError::is_unavailable`]: an
/// unavailable store is waited for (see [`DedupStore::seen_waiting`]); any other error is
/// final for that call.
#[derive(Debug, thiserror::Error)]
pub enum DedupError {
    /// The embedded store's files could not be read or written.
    #[error("dedup store {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Redis did not answer: the connection was refused or lost, or the call passed its connect
    /// or response timeout, or Redis said it cannot serve yet (loading, no master). The store
    /// is marked down until a probe reaches Redis again.
    #[error("redis dedup store unavailable: {0}")]
    Unavailable(#[source] ::redis::RedisError),
    /// Redis answered with an error (a key of the wrong type, a refused command, a bad URL):
    /// waiting for Redis would not change the answer.
    #[error("redis dedup store: {0}")]
    Redis(#[source] ::redis::RedisError),
}

impl DedupError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        DedupError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// True when the store could not be reached: waiting for it to come back may help.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, DedupError::Unavailable(_))
    }
}

impl From<::redis::RedisError> for DedupError {
    fn from(error: ::redis::RedisError) -> Self {
        use ::redis::RetryMethod;
        // I/O covers refused, reset, closed and timed out. Reconnect covers a stream out of
        // step and a failed handshake; WaitAndRetry covers LOADING, MASTERDOWN, TRYAGAIN and
        // CLUSTERDOWN: Redis is there but cannot serve yet.
        let unreachable = error.is_io_error()
            || matches!(
                error.retry_method(),
                RetryMethod::Reconnect
                    | RetryMethod::ReconnectFromInitialConnections
                    | RetryMethod::WaitAndRetry
            );
        match unreachable {
            true => DedupError::Unavailable(error),
            false => DedupError::Redis(error),
        }
    }
}

/// The key under which a dead-lettered delivery is marked. Kept apart from the delivered mark so
/// a redelivered request skips both, while a DLQ replay skips only what was delivered.
pub fn dead_key(key: &str) -> String {
    format!("{key}#dead")
}

/// The fingerprint of an idempotency key.
pub fn fingerprint(key: &str) -> u64 {
    let digest = sha2::Sha256::digest(key.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

/// The configured dedup backend.
pub enum DedupStore {
    Embedded(EmbeddedDedup),
    Redis(RedisDedup),
}

impl DedupStore {
    /// Which of `keys` are already done. Fails at once when the store does not answer; see
    /// [`DedupStore::seen_waiting`] for the form that waits.
    pub async fn seen(&self, keys: &[&str]) -> Result<Vec<bool>, DedupError> {
        let fingerprints: Vec<u64> = keys.iter().map(|k| fingerprint(k)).collect();
        match self {
            DedupStore::Embedded(store) => Ok(store.seen(&fingerprints)),
            DedupStore::Redis(store) => store.seen(&fingerprints).await,
        }
    }

    /// Records `keys` as done. Fails at once when the store does not answer; see
    /// [`DedupStore::mark_waiting`] for the form that waits.
    pub async fn mark(&self, keys: &[&str]) -> Result<(), DedupError> {
        let fingerprints: Vec<u64> = keys.iter().map(|k| fingerprint(k)).collect();
        match self {
            DedupStore::Embedded(store) => store.mark(&fingerprints),
            DedupStore::Redis(store) => store.mark(&fingerprints).await,
        }
    }

    /// Which of `keys` are already done, waiting for as long as the store is unavailable: it
    /// answers from the store or fails with an error that waiting cannot cure, never with a
    /// guess. Cancel it by dropping it (e.g. at shutdown).
    pub async fn seen_waiting(&self, keys: &[&str]) -> Result<Vec<bool>, DedupError> {
        match self.availability() {
            None => self.seen(keys).await,
            Some(availability) => until_answered(availability, || self.seen(keys)).await,
        }
    }

    /// Records `keys` as done, waiting for as long as the store is unavailable. A record may
    /// finish (and its offset be committed) only after this returned `Ok`. Cancel it by
    /// dropping it.
    pub async fn mark_waiting(&self, keys: &[&str]) -> Result<(), DedupError> {
        match self.availability() {
            None => self.mark(keys).await,
            Some(availability) => until_answered(availability, || self.mark(keys)).await,
        }
    }

    /// Whether the store answers now, as its last call or probe found. The embedded store
    /// always does.
    pub fn is_available(&self) -> bool {
        self.availability().is_none_or(Availability::is_up)
    }

    /// Returns once the store is available (at once if it is).
    pub async fn wait_available(&self) {
        if let Some(availability) = self.availability() {
            availability.wait_up().await;
        }
    }

    /// Returns once the store is unavailable; never, for the embedded store. For a consumer
    /// that stops taking records while the store is down.
    pub async fn wait_unavailable(&self) {
        match self.availability() {
            Some(availability) => availability.wait_down().await,
            None => std::future::pending().await,
        }
    }

    /// The availability of a store on the network; `None` for the embedded store, whose
    /// failures are its disk's and are not waited out.
    pub fn availability(&self) -> Option<&Availability> {
        match self {
            DedupStore::Embedded(_) => None,
            DedupStore::Redis(store) => Some(store.availability()),
        }
    }
}

/// Runs `attempt` until it answers or fails with an error other than unavailability, waiting
/// for `availability` before each try. An unavailable answer has marked the store down (unless
/// it came from a connection a probe had already replaced), so this waits for the probe rather
/// than spinning.
async fn until_answered<T, F, Fut>(
    availability: &Availability,
    mut attempt: F,
) -> Result<T, DedupError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, DedupError>>,
{
    loop {
        availability.wait_up().await;
        match attempt().await {
            Err(error) if error.is_unavailable() => continue,
            answer => return answer,
        }
    }
}

/// Whether a dependency answers now. The store marks it down when a call goes unanswered, its
/// probe marks it up again, and callers wait on it. Each change logs one event and sets the
/// `switchboard_dependency_up` gauge.
#[derive(Debug)]
pub struct Availability {
    /// Its name in events and metrics: `redis`.
    dependency: &'static str,
    state: watch::Sender<Reachability>,
    /// 1 up, 0 down.
    up_gauge: Gauge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reachability {
    Up,
    /// Down since the first unanswered call, for `dependency_restored`'s `down_for`.
    Down {
        since: Instant,
    },
}

impl Reachability {
    fn is_up(&self) -> bool {
        *self == Reachability::Up
    }
}

/// What one probe of a dependency found.
pub(crate) enum ProbeOutcome {
    /// It answered, and calls may use it again.
    Answered,
    Unanswered(DedupError),
    /// The store was dropped: nobody is waiting any more.
    StoreClosed,
}

impl Availability {
    /// A dependency that answers, as it did when it was connected.
    pub(crate) fn new(dependency: &'static str, up_gauge: Gauge) -> Self {
        up_gauge.set(1);
        let (state, _) = watch::channel(Reachability::Up);
        Self {
            dependency,
            state,
            up_gauge,
        }
    }

    /// Whether the dependency answers now.
    pub fn is_up(&self) -> bool {
        self.state.borrow().is_up()
    }

    /// Returns once the dependency is up (at once if it is).
    pub async fn wait_up(&self) {
        // The sender lives in `self`, so the channel cannot close while this waits.
        let _ = self.state.subscribe().wait_for(Reachability::is_up).await;
    }

    /// Returns once the dependency is down (at once if it is).
    pub async fn wait_down(&self) {
        let _ = self.state.subscribe().wait_for(|s| !s.is_up()).await;
    }

    /// Marks the dependency down after `error`. True if it was up: the caller starts the probe.
    pub(crate) fn mark_down(&self, error: &dyn std::fmt::Display) -> bool {
        let flipped = self.state.send_if_modified(|state| match state {
            Reachability::Up => {
                *state = Reachability::Down {
                    since: Instant::now(),
                };
                true
            }
            Reachability::Down { .. } => false,
        });
        if flipped {
            self.up_gauge.set(0);
            events::DependencyDown {
                dependency: self.dependency,
                error,
            }
            .emit();
        }
        flipped
    }

    /// Marks the dependency up. How long it was down, if it was.
    pub(crate) fn mark_up(&self) -> Option<Duration> {
        let mut down_for = None;
        self.state.send_if_modified(|state| match *state {
            Reachability::Down { since } => {
                down_for = Some(since.elapsed());
                *state = Reachability::Up;
                true
            }
            Reachability::Up => false,
        });
        if let Some(down_for) = down_for {
            self.up_gauge.set(1);
            events::DependencyRestored {
                dependency: self.dependency,
                down_for,
            }
            .emit();
        }
        down_for
    }

    /// Probes every `interval` (the first at once) until a probe answers, then marks the
    /// dependency up. Stops without marking it when the store is gone.
    pub(crate) async fn probe_until_up<F, Fut>(&self, interval: Duration, mut probe: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = ProbeOutcome>,
    {
        let mut ticks = tokio::time::interval(interval);
        // A probe of a hung dependency takes its whole timeout; the next one follows it by a
        // full interval rather than at once.
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match probe().await {
                ProbeOutcome::Answered => {
                    self.mark_up();
                    return;
                }
                ProbeOutcome::Unanswered(error) => {
                    tracing::debug!(dependency = self.dependency, %error, "probe unanswered");
                }
                ProbeOutcome::StoreClosed => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn timed_out() -> DedupError {
        ::redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut)).into()
    }

    #[test]
    fn fingerprints_are_stable_across_runs() {
        // Persisted stores depend on this value never changing.
        assert_eq!(
            super::fingerprint("req-8f2c/0"),
            super::fingerprint("req-8f2c/0")
        );
        assert_ne!(
            super::fingerprint("req-8f2c/0"),
            super::fingerprint("req-8f2c/1")
        );
        assert_eq!(super::fingerprint(""), 0x141c_fc98_42c4_b0e3);
    }

    #[test]
    fn an_unreachable_redis_is_unavailable_and_an_error_answer_is_not() {
        use ::redis::{ErrorKind, RedisError};
        use std::io::ErrorKind as Io;
        for io in [
            Io::TimedOut,
            Io::ConnectionRefused,
            Io::ConnectionReset,
            Io::BrokenPipe,
            Io::UnexpectedEof,
        ] {
            let error = DedupError::from(RedisError::from(std::io::Error::from(io)));
            assert!(error.is_unavailable(), "{io:?}: {error}");
        }
        let loading = DedupError::from(RedisError::from((
            ErrorKind::BusyLoadingError,
            "LOADING Redis is loading the dataset in memory",
        )));
        assert!(loading.is_unavailable(), "{loading}");
        let wrong_type = DedupError::from(RedisError::from((
            ErrorKind::TypeError,
            "WRONGTYPE Operation against a key holding the wrong kind of value",
        )));
        assert!(!wrong_type.is_unavailable(), "{wrong_type}");
        let bad_url = DedupError::from(RedisError::from((
            ErrorKind::InvalidClientConfig,
            "Redis URL did not parse",
        )));
        assert!(!bad_url.is_unavailable(), "{bad_url}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_is_one_down_and_one_restored_with_how_long_it_lasted() {
        let gauge = Gauge::default();
        let availability = Availability::new("redis", gauge.clone());
        assert!(availability.is_up());
        assert_eq!(gauge.get(), 1);
        assert!(availability.mark_down(&"connection refused"));
        assert!(
            !availability.mark_down(&"connection refused"),
            "a second failure in the same outage starts no second probe"
        );
        assert!(!availability.is_up());
        assert_eq!(gauge.get(), 0);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(availability.mark_up(), Some(Duration::from_secs(3)));
        assert_eq!(availability.mark_up(), None, "already up");
        assert!(availability.is_up());
        assert_eq!(gauge.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_probe_marks_the_store_up_at_its_first_answer() {
        let availability = Arc::new(Availability::new("redis", Gauge::default()));
        availability.mark_down(&"timed out");
        let probes = Arc::new(AtomicU32::new(0));
        let prober = tokio::spawn({
            let (availability, probes) = (availability.clone(), probes.clone());
            async move {
                availability
                    .probe_until_up(Duration::from_millis(500), || {
                        // Unanswered at 0, 500 and 1000 ms; answered at 1500 ms.
                        let n = probes.fetch_add(1, Ordering::SeqCst) + 1;
                        async move {
                            match n {
                                4 => ProbeOutcome::Answered,
                                _ => ProbeOutcome::Unanswered(timed_out()),
                            }
                        }
                    })
                    .await;
            }
        });
        tokio::time::sleep(Duration::from_millis(1400)).await;
        assert!(!availability.is_up());
        assert_eq!(probes.load(Ordering::SeqCst), 3);
        tokio::time::timeout(Duration::from_millis(200), availability.wait_up())
            .await
            .unwrap_or_else(|_| panic!("not up after the fourth probe answered"));
        assert_eq!(probes.load(Ordering::SeqCst), 4);
        prober.await.unwrap_or_else(|e| panic!("probe task: {e}"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_probe_stops_when_the_store_is_gone() {
        let availability = Availability::new("redis", Gauge::default());
        availability.mark_down(&"timed out");
        tokio::time::timeout(
            Duration::from_secs(1),
            availability.probe_until_up(Duration::from_millis(500), || async {
                ProbeOutcome::StoreClosed
            }),
        )
        .await
        .unwrap_or_else(|_| panic!("the probe kept going without a store"));
        assert!(!availability.is_up());
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_lookup_answers_only_from_the_store_once_it_is_back() {
        let availability = Arc::new(Availability::new("redis", Gauge::default()));
        let attempts = AtomicU32::new(0);
        let started = Instant::now();
        let answer = until_answered(&availability, || {
            let n = attempts.fetch_add(1, Ordering::SeqCst) + 1;
            let availability = availability.clone();
            async move {
                if n > 1 {
                    return Ok(vec![true, false]);
                }
                // The first try goes unanswered: the store is marked down and comes back 2 s
                // later.
                let error = timed_out();
                if availability.mark_down(&error) {
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        availability.mark_up();
                    });
                }
                Err(error)
            }
        })
        .await;
        assert_eq!(answer.unwrap_or_else(|e| panic!("{e}")), vec![true, false]);
        assert_eq!(attempts.load(Ordering::SeqCst), 2, "no try while down");
        assert!(started.elapsed() >= Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_answer_is_returned_not_waited_on() {
        let availability = Availability::new("redis", Gauge::default());
        let attempts = AtomicU32::new(0);
        let answer: Result<(), DedupError> = until_answered(&availability, || {
            attempts.fetch_add(1, Ordering::SeqCst);
            async {
                Err(DedupError::from(::redis::RedisError::from((
                    ::redis::ErrorKind::TypeError,
                    "WRONGTYPE",
                ))))
            }
        })
        .await;
        assert!(matches!(answer, Err(DedupError::Redis(_))), "{answer:?}");
        assert_eq!(attempts.load(Ordering::SeqCst), 1);
        assert!(availability.is_up(), "an error answer is not an outage");
    }
}
