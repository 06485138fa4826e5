//! Running an adapter natively, inside the host's own process, instead of as a component.
//!
//! On the native target the functions that reach the host ([`crate::http`], [`crate::secrets`],
//! [`crate::cache`], [`crate::log`]) call the [`NativeHost`] installed on the current thread by
//! [`with_host`]. A host that links an adapter crate as a library implements [`NativeHost`] with
//! its own capabilities and calls the adapter through [`NativeAdapter`]. The Switchboard host does
//! this to measure what the sandbox costs: the same adapter code, the same host capabilities,
//! without the component boundary.
//!
//! Must never: change what a component does. This module exists only off the wasm target, and
//! a component's imports go to the host exactly as before. Outside [`with_host`], the functions
//! that reach the host panic, as they always have in native unit tests.
//!
//! ```
//! use switchboard_sdk::http::{HttpError, Request, Response};
//! use switchboard_sdk::log::Level;
//! use switchboard_sdk::native::{self, NativeAdapter, NativeHost};
//! use switchboard_sdk::{Adapter, Config, Delivery, Outcome, PluginInfo, PluginInfoExt, Priority};
//!
//! // An adapter that posts every delivery and reports the status it got.
//! struct Poster;
//!
//! impl Adapter for Poster {
//!     fn describe() -> PluginInfo {
//!         PluginInfo::new("poster", "0.1.0", "sms")
//!     }
//!     fn init(_config: Config) -> Result<Self, String> {
//!         Ok(Poster)
//!     }
//!     fn deliver(&self, batch: Vec<Delivery>) -> Vec<Outcome> {
//!         let requests = batch.iter().map(|d| Request::post(format!("https://x.example/{}", d.key)));
//!         switchboard_sdk::http::send_all(requests.collect())
//!             .into_iter()
//!             .map(|r| match r {
//!                 Ok(response) => Outcome::delivered(response.status.to_string()),
//!                 Err(error) => Outcome::retry(error.to_string(), None),
//!             })
//!             .collect()
//!     }
//! }
//!
//! // A host that answers every request with 202.
//! struct Accepting;
//!
//! impl NativeHost for Accepting {
//!     fn send_all(&mut self, requests: Vec<Request>) -> Vec<Result<Response, HttpError>> {
//!         requests.iter().map(|_| Ok(Response { status: 202, headers: vec![], body: vec![] })).collect()
//!     }
//!     fn sign(&mut self, _key: &str, _alg: &str, _data: &[u8]) -> Result<Vec<u8>, String> {
//!         Err("no keys here".into())
//!     }
//!     fn cache_get(&mut self, _key: &str) -> Option<Vec<u8>> {
//!         None
//!     }
//!     fn cache_set(&mut self, _key: &str, _value: &[u8], _ttl_ms: u64) {}
//!     fn log(&mut self, _level: Level, _message: &str) {}
//! }
//!
//! let poster = NativeAdapter::of::<Poster>();
//! let delivery = Delivery {
//!     key: "r/0".into(),
//!     recipient: "+15550100".into(),
//!     content: "{}".into(),
//!     priority: Priority::Realtime,
//!     attempt: 1,
//! };
//! let outcomes = native::with_host(Accepting, || poster.deliver(Vec::new(), vec![delivery]))?;
//! assert_eq!(outcomes, vec![Outcome::delivered("202")]);
//! # Ok::<(), String>(())
//! ```

use std::cell::RefCell;

use crate::http::{HttpError, Request, Response};
use crate::log::Level;
use crate::{Adapter, Config, Delivery, Outcome, PluginInfo};

/// What an adapter running natively reaches instead of the component's imports: one method per
/// function of the `switchboard:adapter` world's `http`, `secrets`, `cache` and `log` interfaces,
/// with the same meaning (see `wit/switchboard.wit`).
///
/// The methods are blocking: the adapter calls them on its own thread, as a component's call
/// waits on the host.
pub trait NativeHost {
    /// `http.send`: sends one request and waits for the whole response. By default it is
    /// [`NativeHost::send_all`] of one request.
    fn send(&mut self, request: Request) -> Result<Response, HttpError> {
        self.send_all(vec![request])
            .pop()
            .unwrap_or_else(|| Err(HttpError::Protocol("the host returned no result".into())))
    }

    /// `http.send-all`: sends all requests concurrently; one result per request, in order.
    fn send_all(&mut self, requests: Vec<Request>) -> Vec<Result<Response, HttpError>>;

    /// `secrets.sign`: signs `data` with the plugin's secret `key`; `alg` is `RS256`, `ES256` or
    /// `HS256`.
    fn sign(&mut self, key: &str, alg: &str, data: &[u8]) -> Result<Vec<u8>, String>;

    /// `cache.get`: the cached bytes under `key`, unless absent or expired.
    fn cache_get(&mut self, key: &str) -> Option<Vec<u8>>;

    /// `cache.set`: stores `value` under `key` for `ttl_ms` milliseconds (0 drops it).
    fn cache_set(&mut self, key: &str, value: &[u8], ttl_ms: u64);

    /// `log.log`: one line of the plugin's log.
    fn log(&mut self, level: Level, message: &str);
}

thread_local! {
    /// The host of the adapter code running on this thread, while [`with_host`] runs.
    static INSTALLED: RefCell<Option<Box<dyn NativeHost>>> = const { RefCell::new(None) };
}

/// Runs `f` with `host` answering every host function the SDK calls on this thread, and returns
/// what `f` returns. The host is dropped when `f` returns or panics; a [`with_host`] around this
/// one gets its own host back.
///
/// The host is moved in, rather than borrowed, so the SDK can keep it in a thread-local without
/// unsafe code. A host is meant to be cheap to build for one call (shared state behind an `Arc`).
///
/// ```
/// use switchboard_sdk::http::{HttpError, Request, Response};
/// use switchboard_sdk::log::Level;
/// use switchboard_sdk::{cache, native::{self, NativeHost}};
///
/// // A host with one cached value.
/// struct OneEntry;
///
/// impl NativeHost for OneEntry {
///     fn send_all(&mut self, requests: Vec<Request>) -> Vec<Result<Response, HttpError>> {
///         requests.iter().map(|_| Err(HttpError::Denied("no network".into()))).collect()
///     }
///     fn sign(&mut self, _key: &str, _alg: &str, _data: &[u8]) -> Result<Vec<u8>, String> {
///         Err("no keys".into())
///     }
///     fn cache_get(&mut self, key: &str) -> Option<Vec<u8>> {
///         (key == "greeting").then(|| b"hello".to_vec())
///     }
///     fn cache_set(&mut self, _key: &str, _value: &[u8], _ttl_ms: u64) {}
///     fn log(&mut self, _level: Level, _message: &str) {}
/// }
///
/// let cached = native::with_host(OneEntry, || cache::get("greeting"));
/// assert_eq!(cached.as_deref(), Some(&b"hello"[..]));
/// ```
pub fn with_host<R>(host: impl NativeHost + 'static, f: impl FnOnce() -> R) -> R {
    /// Puts the previous host back however `f` ends, so a panic cannot leave this call's host
    /// installed for later code on the thread.
    struct Restore(Option<Box<dyn NativeHost>>);

    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            INSTALLED.with(|slot| *slot.borrow_mut() = previous);
        }
    }

    let previous = INSTALLED.with(|slot| slot.borrow_mut().replace(Box::new(host)));
    let _restore = Restore(previous);
    f()
}

/// Calls `f` with the installed host. Panics when there is none: the adapter code is running
/// neither in a component nor under [`with_host`].
pub(crate) fn installed<R>(f: impl FnOnce(&mut dyn NativeHost) -> R) -> R {
    INSTALLED.with(|slot| {
        let mut slot = slot.borrow_mut();
        match slot.as_deref_mut() {
            Some(host) => f(host),
            None => panic!(
                "a Switchboard host function was called outside the host: on the native target \
                 it needs a host installed with switchboard_sdk::native::with_host"
            ),
        }
    })
}

/// An [`Adapter`] type as a value: a native host holds it without naming the type, and calls it
/// the way the host calls a component's exports.
///
/// ```
/// use switchboard_sdk::native::NativeAdapter;
/// use switchboard_sdk::{Adapter, Config, Delivery, Outcome, PluginInfo, PluginInfoExt};
///
/// struct Strict;
///
/// impl Adapter for Strict {
///     fn describe() -> PluginInfo {
///         PluginInfo::new("strict", "0.1.0", "sms").max_batch(20)
///     }
///     fn init(config: Config) -> Result<Self, String> {
///         config.require("appkey").map(|_| Strict)
///     }
///     fn deliver(&self, batch: Vec<Delivery>) -> Vec<Outcome> {
///         batch.iter().map(|d| Outcome::delivered(d.key.clone())).collect()
///     }
/// }
///
/// let strict = NativeAdapter::of::<Strict>();
/// assert_eq!(strict.describe().max_batch, 20);
/// assert_eq!(strict.init(Vec::new()), Err("missing config key `appkey`".to_string()));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct NativeAdapter {
    describe: fn() -> PluginInfo,
    init: fn(InitConfig) -> Result<(), String>,
    deliver: fn(InitConfig, Vec<Delivery>) -> Result<Vec<Outcome>, String>,
}

/// The key/value pairs `init` receives, as the host passes them.
type InitConfig = Vec<(String, String)>;

impl NativeAdapter {
    /// The adapter `A`.
    pub fn of<A: Adapter>() -> Self {
        Self {
            describe: A::describe,
            init: |config| A::init(Config::new(config)).map(drop),
            deliver: |config, batch| A::init(Config::new(config)).map(|a| a.deliver(batch)),
        }
    }

    /// The `describe` export: what the adapter says of itself. It must not use the host.
    pub fn describe(&self) -> PluginInfo {
        (self.describe)()
    }

    /// The `init` export on a fresh adapter, which is then dropped: the host's check of the
    /// config at load time. Run it under [`with_host`]: adapters may use the host in `init`.
    pub fn init(&self, config: Vec<(String, String)>) -> Result<(), String> {
        (self.init)(config)
    }

    /// One call as the host makes it on a fresh component instance: `init` with `config`, then
    /// `deliver` of `batch`. An `Err` is `init`'s refusal. Run it under [`with_host`].
    pub fn deliver(
        &self,
        config: Vec<(String, String)>,
        batch: Vec<Delivery>,
    ) -> Result<Vec<Outcome>, String> {
        (self.deliver)(config, batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counting(u64);

    impl NativeHost for Counting {
        fn send_all(&mut self, requests: Vec<Request>) -> Vec<Result<Response, HttpError>> {
            self.0 += 1;
            requests
                .iter()
                .map(|_| Err(HttpError::Denied(format!("call {}", self.0))))
                .collect()
        }
        fn sign(&mut self, _key: &str, _alg: &str, _data: &[u8]) -> Result<Vec<u8>, String> {
            Err("no keys".into())
        }
        fn cache_get(&mut self, _key: &str) -> Option<Vec<u8>> {
            None
        }
        fn cache_set(&mut self, _key: &str, _value: &[u8], _ttl_ms: u64) {}
        fn log(&mut self, _level: Level, _message: &str) {}
    }

    #[test]
    fn send_goes_to_the_installed_host_and_nested_hosts_restore_the_outer_one() {
        let outer = with_host(Counting(0), || {
            let inner = with_host(Counting(10), || {
                crate::http::send(Request::get("http://a/"))
            });
            assert_eq!(inner, Err(HttpError::Denied("call 11".into())));
            crate::http::send(Request::get("http://a/"))
        });
        assert_eq!(outer, Err(HttpError::Denied("call 1".into())));
    }

    #[test]
    fn a_panic_inside_with_host_uninstalls_the_host() {
        let panicked = std::panic::catch_unwind(|| with_host(Counting(0), || panic!("adapter")));
        assert!(panicked.is_err());
        let outside = std::panic::catch_unwind(|| crate::cache::get("k"));
        assert!(outside.is_err(), "no host is installed any more");
    }
}
