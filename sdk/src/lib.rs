//! # switchboard-sdk
//!
//! Write a Switchboard vendor adapter as a plain Rust type. Implement [`Adapter`], call
//! [`export_adapter!`] once, and build with `cargo build --release --target wasm32-wasip2`: the
//! result is a WebAssembly component the Switchboard host loads at runtime.
//!
//! ```ignore
//! use switchboard_sdk::{Adapter, Config, Delivery, Outcome, PluginInfo};
//!
//! struct Hello;
//!
//! impl Adapter for Hello {
//!     fn describe() -> PluginInfo {
//!         PluginInfo::new("hello", env!("CARGO_PKG_VERSION"), "sms").max_batch(10)
//!     }
//!     fn init(_config: Config) -> Result<Self, String> {
//!         Ok(Hello)
//!     }
//!     fn deliver(&self, batch: Vec<Delivery>) -> Vec<Outcome> {
//!         batch.iter().map(|d| Outcome::delivered(format!("id-{}", d.key))).collect()
//!     }
//! }
//!
//! switchboard_sdk::export_adapter!(Hello);
//! ```
//!
//! Layout:
//! - [`http`]: outbound HTTP performed by the host (allow-listed, pooled, under the call deadline);
//! - [`secrets`]: signing with keys the plugin never sees, and `{{secret:NAME}}` placeholders;
//! - [`cache`]: a plugin-scoped cache that outlives the instance, and [`cache::CachedToken`];
//! - [`jwt`]: JSON Web Tokens signed through the host;
//! - [`content`]: typed views of the channel content;
//! - [`log`]: logging through the host.
#![deny(missing_docs)]

pub mod cache;
pub mod content;
pub mod http;
pub mod jwt;
pub mod log;
pub mod secrets;

mod outcome;

pub use outcome::{PluginInfoExt, retry_after_ms};

#[doc(hidden)]
pub mod bindings {
    //! Generated bindings for the `switchboard:adapter@0.1.0` world. Plugin authors use the
    //! re-exports at the crate root instead of these names.
    #![allow(missing_docs)]
    wit_bindgen::generate!({
        world: "adapter",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__export_adapter_world",
        default_bindings_module: "::switchboard_sdk::bindings",
        generate_all,
    });
}

pub use bindings::switchboard::adapter::types::{
    Delivery, Outcome, PluginInfo, Priority, Rejection, RetryInfo,
};

#[doc(hidden)]
pub use bindings::Guest as __Guest;
#[doc(hidden)]
pub use wit_bindgen;

/// The configuration an operator gives the plugin (`[plugins.NAME.config]` in the host's config).
#[derive(Debug, Clone, Default)]
pub struct Config {
    entries: Vec<(String, String)>,
}

impl Config {
    /// Wraps the key/value pairs the host passed to `init`.
    pub fn new(entries: Vec<(String, String)>) -> Self {
        Self { entries }
    }

    /// The value of `key`, if the operator set it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key`, or an error that names the missing key.
    pub fn require(&self, key: &str) -> Result<&str, String> {
        self.get(key)
            .ok_or_else(|| format!("missing config key `{key}`"))
    }

    /// The value of `key`, or `default` when it is not set.
    pub fn get_or<'a>(&'a self, key: &str, default: &'a str) -> &'a str {
        self.get(key).unwrap_or(default)
    }
}

/// A vendor adapter. The host creates a fresh instance for every call, so `init` runs before each
/// `deliver`: keep it cheap, and keep state that must outlive a call (tokens) in [`cache`].
pub trait Adapter: Sized + 'static {
    /// Name, version, channel, batch size and wanted hosts. Must not use host capabilities.
    fn describe() -> PluginInfo;

    /// Builds the adapter from the operator's config. An error refuses the plugin at load time.
    fn init(config: Config) -> Result<Self, String>;

    /// Delivers a batch. Must return exactly one outcome per delivery, in the same order; the host
    /// turns a missing outcome into a retry.
    fn deliver(&self, batch: Vec<Delivery>) -> Vec<Outcome>;
}

impl Outcome {
    /// The vendor accepted the delivery; `message_id` is its id for it.
    pub fn delivered(message_id: impl Into<String>) -> Self {
        Outcome::Delivered(message_id.into())
    }

    /// A transient failure; the host tries again no sooner than `after_ms`, if given.
    pub fn retry(reason: impl Into<String>, after_ms: Option<u64>) -> Self {
        Outcome::Retry(RetryInfo {
            reason: reason.into(),
            after_ms,
        })
    }

    /// A permanent failure with the vendor's error code.
    pub fn rejected(code: impl Into<String>, reason: impl Into<String>) -> Self {
        Outcome::Rejected(Rejection {
            code: code.into(),
            reason: reason.into(),
        })
    }

    /// The recipient no longer exists at the vendor.
    pub fn invalid_recipient(reason: impl Into<String>) -> Self {
        Outcome::InvalidRecipient(reason.into())
    }
}

/// Exports a type implementing [`Adapter`] as the component's `adapter` world.
///
/// ```ignore
/// switchboard_sdk::export_adapter!(MyAdapter);
/// ```
#[macro_export]
macro_rules! export_adapter {
    ($adapter:ty) => {
        const _: () = {
            ::std::thread_local! {
                static __SWITCHBOARD_ADAPTER: ::std::cell::RefCell<::std::option::Option<$adapter>> =
                    const { ::std::cell::RefCell::new(::std::option::Option::None) };
            }

            struct __SwitchboardExport;

            impl $crate::__Guest for __SwitchboardExport {
                fn describe() -> $crate::PluginInfo {
                    <$adapter as $crate::Adapter>::describe()
                }

                fn init(
                    config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    let adapter = <$adapter as $crate::Adapter>::init($crate::Config::new(config))?;
                    __SWITCHBOARD_ADAPTER.with(|slot| *slot.borrow_mut() = Some(adapter));
                    Ok(())
                }

                fn deliver(
                    batch: ::std::vec::Vec<$crate::Delivery>,
                ) -> ::std::vec::Vec<$crate::Outcome> {
                    __SWITCHBOARD_ADAPTER.with(|slot| match slot.borrow().as_ref() {
                        Some(adapter) => <$adapter as $crate::Adapter>::deliver(adapter, batch),
                        None => batch
                            .iter()
                            .map(|_| $crate::Outcome::retry("adapter used before init", None))
                            .collect(),
                    })
                }
            }

            $crate::bindings::__export_adapter_world!(__SwitchboardExport with_types_in $crate::bindings);
        };
    };
}
