//! Plugins linked into the host natively: an adapter crate built as a Rust library and called
//! through `switchboard_sdk::native`, without a component or a sandbox. It exists so that a
//! benchmark can run the same adapter both ways and see what the sandbox costs.
//!
//! A native call is made as much like a component call as the difference allows: `init` then
//! `deliver` on a fresh adapter value, on a blocking thread, under the plugin's wall deadline,
//! counted in the same counters, with every host function going through the same
//! [`CallCapabilities`] a component's `Store` uses (allow-list, secret placeholders, signing,
//! the plugin's cache, logging). What a native plugin does not get is isolation: no memory cap,
//! no CPU preemption, and a panic is caught rather than contained.
//!
//! Must never: implement a capability a second time. Every host function is forwarded to
//! [`CallCapabilities`]; the conversions between the SDK's types and the host's generated types
//! live here and nowhere else.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use switchboard_sdk::native::{NativeAdapter, NativeHost, with_host};
use tokio::runtime::Handle;

use super::capabilities::{CallCapabilities, Capabilities};
use super::{
    Backend, CallCounters, CallError, LoadError, LoadedPlugin, PluginLimits, PluginRuntime,
};
use crate::contract::bindings::{http, log};
use crate::contract::{Outcome, PluginInfo, Priority, Rejection, RetryInfo, SharedDelivery};

/// Adapters to run natively, by the configured plugin name they serve. Given to
/// [`crate::host::start_with`], each replaces the component that `[plugins.NAME]` names; the
/// rest of that plugin's config (hosts, secrets, config, limits) applies as it is.
#[derive(Debug, Clone, Default)]
pub struct NativePlugins {
    adapters: HashMap<String, NativeAdapter>,
}

impl NativePlugins {
    /// No native plugins.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves the configured plugin `plugin` with the adapter `A`, linked natively.
    pub fn with<A: switchboard_sdk::Adapter>(mut self, plugin: &str) -> Self {
        self.adapters
            .insert(plugin.to_string(), NativeAdapter::of::<A>());
        self
    }

    /// The adapter serving plugin `plugin`, if one was registered.
    pub fn get(&self, plugin: &str) -> Option<NativeAdapter> {
        self.adapters.get(plugin).copied()
    }

    /// The plugin names that have a native adapter.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.adapters.keys().map(String::as_str)
    }
}

impl PluginRuntime {
    /// Loads the adapter `A` natively as plugin `name`: `describe` and `init` run as
    /// [`PluginRuntime::load_file`] runs them, with the same capabilities, limits and config,
    /// and the result delivers through the same [`LoadedPlugin::deliver`]. `limits.memory_bytes`
    /// does not apply: native code has no memory cap.
    pub async fn load_native<A: switchboard_sdk::Adapter>(
        &self,
        name: &str,
        caps: Capabilities,
        limits: PluginLimits,
        init_config: Vec<(String, String)>,
    ) -> Result<LoadedPlugin, LoadError> {
        self.load_native_adapter(name, NativeAdapter::of::<A>(), caps, limits, init_config)
            .await
    }

    /// As [`PluginRuntime::load_native`], for an adapter held as a [`NativeAdapter`] value.
    pub async fn load_native_adapter(
        &self,
        name: &str,
        adapter: NativeAdapter,
        mut caps: Capabilities,
        limits: PluginLimits,
        init_config: Vec<(String, String)>,
    ) -> Result<LoadedPlugin, LoadError> {
        let plugin = name.to_string();
        // As for a component: `describe` gets a host that grants nothing.
        let nothing_granted = Arc::new(Capabilities::new(
            plugin.clone(),
            Vec::new(),
            Default::default(),
            Default::default(),
            caps.client.clone(),
            Default::default(),
        ));
        let info = run_blocking(nothing_granted, limits, move || adapter.describe())
            .await
            .map(plugin_info_from_sdk)
            .map_err(|failure| LoadError::Describe {
                plugin: plugin.clone(),
                reason: failure.to_string(),
            })?;
        caps.version = info.version.clone();
        let loaded = LoadedPlugin {
            name: plugin.clone(),
            info,
            backend: Backend::Native(adapter),
            caps: Arc::new(caps),
            limits,
            init_config,
            counters: Arc::new(CallCounters::default()),
        };
        // Running init once here refuses a bad config at load time, and lets adapters warm
        // their credentials, as for a component.
        let config = loaded.init_config.clone();
        let init = run_blocking(loaded.caps.clone(), limits, move || adapter.init(config));
        match init.await {
            Ok(Ok(())) => Ok(loaded),
            Ok(Err(reason)) => Err(LoadError::Init { plugin, reason }),
            Err(failure) => Err(LoadError::Init {
                plugin,
                reason: failure.to_string(),
            }),
        }
    }
}

/// One native call: `init` then `deliver` on a fresh adapter value, on a blocking thread, with
/// the host functions going to `call`. The caller bounds it with the plugin's deadline.
pub(super) async fn call_deliver(
    adapter: NativeAdapter,
    call: CallCapabilities,
    init_config: &[(String, String)],
    batch: &[SharedDelivery],
) -> Result<Vec<Outcome>, CallError> {
    let config = init_config.to_vec();
    let batch = batch.iter().map(delivery_to_sdk).collect();
    let host = NativeCall {
        call,
        runtime: Handle::current(),
    };
    let task =
        tokio::task::spawn_blocking(move || with_host(host, || adapter.deliver(config, batch)));
    // When the caller's deadline passes first, this future is dropped and the blocking thread
    // is left to finish on its own: a thread cannot be stopped from outside. Its HTTP requests
    // end at the same deadline, so only an adapter spinning on CPU outlives the call, and its
    // outcomes are discarded. The call is already reported as `CallError::Timeout`.
    match task.await {
        Ok(Ok(outcomes)) => Ok(outcomes.into_iter().map(outcome_from_sdk).collect()),
        Ok(Err(reason)) => Err(CallError::Init(reason)),
        Err(join_error) => Err(CallError::Trap(panic_reason(join_error))),
    }
}

/// Why a load-time step of a native adapter failed.
#[derive(Debug, thiserror::Error)]
enum BlockingFailure {
    #[error("panicked: {0}")]
    Panicked(String),
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
}

/// Runs `f` on a blocking thread with a host granting `caps`, under the plugin's deadline.
async fn run_blocking<T: Send + 'static>(
    caps: Arc<Capabilities>,
    limits: PluginLimits,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, BlockingFailure> {
    let host = NativeCall {
        call: CallCapabilities::new(caps, Instant::now() + limits.timeout),
        runtime: Handle::current(),
    };
    let task = tokio::task::spawn_blocking(move || with_host(host, f));
    match tokio::time::timeout(limits.timeout, task).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(join_error)) => Err(BlockingFailure::Panicked(panic_reason(join_error))),
        Err(_) => Err(BlockingFailure::Timeout(limits.timeout)),
    }
}

fn panic_reason(join_error: tokio::task::JoinError) -> String {
    if !join_error.is_panic() {
        return format!("native call did not finish: {join_error}");
    }
    let payload = join_error.into_panic();
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic payload".to_string());
    format!("native adapter panicked: {message}")
}

/// The host of one native call: the SDK's host functions, answered by the same
/// [`CallCapabilities`] a component's imports use. HTTP is async in the host, so it is driven
/// to completion here with the runtime's handle; this thread is a blocking thread, which is
/// allowed to block on a future.
struct NativeCall {
    call: CallCapabilities,
    runtime: Handle,
}

impl NativeHost for NativeCall {
    fn send(
        &mut self,
        request: switchboard_sdk::http::Request,
    ) -> Result<switchboard_sdk::http::Response, switchboard_sdk::http::HttpError> {
        let result = self
            .runtime
            .block_on(self.call.send(request_from_sdk(request)));
        response_to_sdk(result)
    }

    fn send_all(
        &mut self,
        requests: Vec<switchboard_sdk::http::Request>,
    ) -> Vec<Result<switchboard_sdk::http::Response, switchboard_sdk::http::HttpError>> {
        let requests = requests.into_iter().map(request_from_sdk).collect();
        let results = self.runtime.block_on(self.call.send_all(requests));
        results.into_iter().map(response_to_sdk).collect()
    }

    fn sign(&mut self, key: &str, alg: &str, data: &[u8]) -> Result<Vec<u8>, String> {
        self.call.sign(key, alg, data)
    }

    fn cache_get(&mut self, key: &str) -> Option<Vec<u8>> {
        self.call.cache_get(key)
    }

    fn cache_set(&mut self, key: &str, value: &[u8], ttl_ms: u64) {
        self.call.cache_set(key.to_string(), value.to_vec(), ttl_ms)
    }

    fn log(&mut self, level: switchboard_sdk::log::Level, message: &str) {
        self.call.log(level_from_sdk(level), message.to_string())
    }
}

// The conversions between the SDK's generated types (wit-bindgen, guest side) and the host's
// (wasmtime bindgen). Both come from the same WIT, so each is a field-by-field move.

fn delivery_to_sdk(delivery: &SharedDelivery) -> switchboard_sdk::Delivery {
    switchboard_sdk::Delivery {
        key: delivery.key.clone(),
        recipient: delivery.recipient.clone(),
        content: delivery.content.to_string(),
        priority: match delivery.priority {
            Priority::Realtime => switchboard_sdk::Priority::Realtime,
            Priority::Batch => switchboard_sdk::Priority::Batch,
            Priority::Ads => switchboard_sdk::Priority::Ads,
        },
        attempt: delivery.attempt,
    }
}

fn outcome_from_sdk(outcome: switchboard_sdk::Outcome) -> Outcome {
    use switchboard_sdk::Outcome as Sdk;
    match outcome {
        Sdk::Delivered(message_id) => Outcome::Delivered(message_id),
        Sdk::Retry(retry) => Outcome::Retry(RetryInfo {
            reason: retry.reason,
            after_ms: retry.after_ms,
        }),
        Sdk::Rejected(rejection) => Outcome::Rejected(Rejection {
            code: rejection.code,
            reason: rejection.reason,
        }),
        Sdk::InvalidRecipient(reason) => Outcome::InvalidRecipient(reason),
    }
}

fn plugin_info_from_sdk(info: switchboard_sdk::PluginInfo) -> PluginInfo {
    PluginInfo {
        name: info.name,
        version: info.version,
        channel: info.channel,
        max_batch: info.max_batch,
        wants_hosts: info.wants_hosts,
    }
}

fn request_from_sdk(request: switchboard_sdk::http::Request) -> http::Request {
    http::Request {
        method: request.method,
        url: request.url,
        headers: request.headers,
        body: request.body,
    }
}

fn response_to_sdk(
    result: Result<http::Response, http::HttpError>,
) -> Result<switchboard_sdk::http::Response, switchboard_sdk::http::HttpError> {
    use switchboard_sdk::http::HttpError as Sdk;
    match result {
        Ok(response) => Ok(switchboard_sdk::http::Response {
            status: response.status,
            headers: response.headers,
            body: response.body,
        }),
        Err(http::HttpError::Denied(why)) => Err(Sdk::Denied(why)),
        Err(http::HttpError::Timeout) => Err(Sdk::Timeout),
        Err(http::HttpError::Connect(why)) => Err(Sdk::Connect(why)),
        Err(http::HttpError::Protocol(why)) => Err(Sdk::Protocol(why)),
    }
}

fn level_from_sdk(level: switchboard_sdk::log::Level) -> log::Level {
    use switchboard_sdk::log::Level as Sdk;
    match level {
        Sdk::Trace => log::Level::Trace,
        Sdk::Debug => log::Level::Debug,
        Sdk::Info => log::Level::Info,
        Sdk::Warn => log::Level::Warn,
        Sdk::Error => log::Level::Error,
    }
}
