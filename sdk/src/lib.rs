//! # switchboard-sdk
//!
//! Write a Switchboard vendor adapter as a plain Rust type. Implement [`Adapter`], call
//! [`export_adapter!`] once, and build with `cargo build --release --target wasm32-wasip2`: the
//! result is a WebAssembly component the Switchboard host loads at runtime.
//!
//! ```
//! use switchboard_sdk::{Adapter, Config, Delivery, Outcome, PluginInfo, PluginInfoExt};
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
//! # fn main() {}
//! ```
//!
//! Layout:
//! - [`http`]: outbound HTTP performed by the host (allow-listed, pooled, under the call deadline);
//! - [`auth`]: Basic and Bearer through secret placeholders, NCP API Gateway signatures;
//! - [`classify`]: a vendor reply (status and body, "200 with an error inside") as a
//!   [`classify::Verdict`], and a verdict as an [`Outcome`];
//! - [`secrets`]: signing with keys the plugin never sees, and `{{secret:NAME}}` placeholders;
//! - [`cache`]: a plugin-scoped cache that outlives the instance, and [`cache::CachedToken`];
//! - [`jwt`]: JSON Web Tokens signed through the host, and the wall clock;
//! - [`content`]: typed views of the channel content;
//! - [`log`]: logging through the host;
//! - `native` (not on the wasm target): running an adapter inside a native host's process.
//!
//! Functions that reach the host (HTTP, signing, the cache, logging) work only inside a
//! component the host runs, or natively under a host installed with `native::with_host`; in a
//! plain native unit test they panic. Everything else (request builders, [`classify`],
//! [`content`], [`auth::ncp_string_to_sign`]) is plain Rust and can be unit-tested natively. The
//! author guide is `docs/PLUGINS.md` in the Switchboard repository.
#![deny(missing_docs)]

pub mod auth;
pub mod cache;
pub mod classify;
pub mod content;
pub mod http;
pub mod jwt;
pub mod log;
#[cfg(not(target_arch = "wasm32"))]
pub mod native;
pub mod secrets;

mod imports;
mod outcome;

pub use outcome::{PluginInfoExt, retry_after_ms};

#[doc(hidden)]
pub mod bindings {
    //! Generated bindings for the `switchboard:adapter@0.1.0` world. Plugin authors use the
    //! re-exports at the crate root instead of these names.
    #![allow(missing_docs)]
    wit_bindgen::generate!({
        world: "adapter",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "__export_adapter_world",
        default_bindings_module: "::switchboard_sdk::bindings",
        additional_derives: [PartialEq],
        generate_all,
    });
}

/// One recipient's delivery in a batch: its idempotency `key`, the `recipient` (device token,
/// phone number), the channel's `content` JSON, its `priority` and the `attempt` (1 on the
/// first try).
///
/// ```
/// use switchboard_sdk::{Delivery, Priority};
///
/// let delivery = Delivery {
///     key: "req-1/0".into(),
///     recipient: "+15550100".into(),
///     content: r#"{"body":"hi"}"#.into(),
///     priority: Priority::Realtime,
///     attempt: 1,
/// };
/// assert_eq!(delivery.attempt, 1);
/// ```
pub use bindings::switchboard::adapter::types::Delivery;

/// What became of one delivery; build it with [`Outcome::delivered`], [`Outcome::retry`],
/// [`Outcome::rejected`] or [`Outcome::invalid_recipient`], or from a [`classify::Verdict`].
///
/// ```
/// use switchboard_sdk::Outcome;
///
/// let outcome = Outcome::rejected("-1001", "invalid secret key");
/// assert!(matches!(outcome, Outcome::Rejected(ref r) if r.code == "-1001"));
/// ```
pub use bindings::switchboard::adapter::types::Outcome;

/// What an adapter says about itself in [`Adapter::describe`]; build it with [`PluginInfoExt`].
///
/// ```
/// use switchboard_sdk::{PluginInfo, PluginInfoExt};
///
/// let info = PluginInfo::new("acme-sms", "0.1.0", "sms").max_batch(50);
/// assert_eq!(info.channel, "sms");
/// ```
pub use bindings::switchboard::adapter::types::PluginInfo;

/// The traffic class of a delivery; the host runs each class in its own lane. An adapter may map
/// it to the vendor's priority.
///
/// ```
/// use switchboard_sdk::Priority;
///
/// let android_priority = |p: Priority| match p {
///     Priority::Realtime => "high",
///     Priority::Batch | Priority::Ads => "normal",
/// };
/// assert_eq!(android_priority(Priority::Ads), "normal");
/// ```
pub use bindings::switchboard::adapter::types::Priority;

/// The payload of [`Outcome::Rejected`]: the vendor's error `code` and a `reason`.
///
/// ```
/// use switchboard_sdk::{Outcome, Rejection};
///
/// let Outcome::Rejected(Rejection { code, .. }) = Outcome::rejected("21610", "unsubscribed") else {
///     unreachable!()
/// };
/// assert_eq!(code, "21610");
/// ```
pub use bindings::switchboard::adapter::types::Rejection;

/// The payload of [`Outcome::Retry`]: a `reason` and the earliest next try, `after_ms`.
///
/// ```
/// use switchboard_sdk::{Outcome, RetryInfo};
///
/// let Outcome::Retry(RetryInfo { after_ms, .. }) = Outcome::retry("HTTP 429", Some(1000)) else {
///     unreachable!()
/// };
/// assert_eq!(after_ms, Some(1000));
/// ```
pub use bindings::switchboard::adapter::types::RetryInfo;

#[doc(hidden)]
pub use bindings::Guest as __Guest;
#[doc(hidden)]
pub use wit_bindgen;

/// The configuration an operator gives the plugin (`[plugins.NAME.config]` in the host's config).
///
/// Values are strings as the operator wrote them. Secrets never appear here: they are named in
/// config (`secret_key_secret = "ncp_secret"`) and used through [`secrets`] and [`auth`].
///
/// ```
/// use switchboard_sdk::Config;
///
/// let config = Config::new(vec![("appkey".into(), "A1b2".into())]);
/// assert_eq!(config.require("appkey")?, "A1b2");
/// assert_eq!(config.get_or("endpoint", "https://api.acme.example"), "https://api.acme.example");
/// # Ok::<(), String>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct Config {
    entries: Vec<(String, String)>,
}

impl Config {
    /// Wraps the key/value pairs the host passed to `init`. Useful in unit tests of `init`.
    ///
    /// ```
    /// use switchboard_sdk::Config;
    ///
    /// let config = Config::new(vec![("from".into(), "+15550100".into())]);
    /// assert_eq!(config.get("from"), Some("+15550100"));
    /// ```
    pub fn new(entries: Vec<(String, String)>) -> Self {
        Self { entries }
    }

    /// The value of `key`, if the operator set it.
    ///
    /// ```
    /// use switchboard_sdk::Config;
    ///
    /// let config = Config::new(vec![("region".into(), "kr".into())]);
    /// assert_eq!(config.get("region"), Some("kr"));
    /// assert_eq!(config.get("missing"), None);
    /// ```
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key`, or an error that names the missing key. Returned from
    /// [`Adapter::init`], the error refuses the plugin at load time with that message.
    ///
    /// ```
    /// use switchboard_sdk::Config;
    ///
    /// let config = Config::default();
    /// assert_eq!(config.require("appkey"), Err("missing config key `appkey`".to_string()));
    /// ```
    pub fn require(&self, key: &str) -> Result<&str, String> {
        self.get(key)
            .ok_or_else(|| format!("missing config key `{key}`"))
    }

    /// The value of `key`, or `default` when it is not set.
    ///
    /// ```
    /// use switchboard_sdk::Config;
    ///
    /// let config = Config::new(vec![("endpoint".into(), "http://127.0.0.1:9000".into())]);
    /// assert_eq!(config.get_or("endpoint", "https://api.acme.example"), "http://127.0.0.1:9000");
    /// assert_eq!(config.get_or("api_key_secret", "api_key"), "api_key");
    /// ```
    pub fn get_or<'a>(&'a self, key: &str, default: &'a str) -> &'a str {
        self.get(key).unwrap_or(default)
    }
}

/// A vendor adapter. The host creates a fresh instance for every call, so `init` runs before each
/// `deliver`: keep it cheap, and keep state that must outlive a call (tokens) in [`cache`].
///
/// ```
/// use switchboard_sdk::{Adapter, Config, Delivery, Outcome, PluginInfo, PluginInfoExt};
///
/// struct Echo {
///     prefix: String,
/// }
///
/// impl Adapter for Echo {
///     fn describe() -> PluginInfo {
///         PluginInfo::new("echo", "0.1.0", "sms").max_batch(10)
///     }
///     fn init(config: Config) -> Result<Self, String> {
///         Ok(Echo { prefix: config.get_or("prefix", "echo").to_string() })
///     }
///     fn deliver(&self, batch: Vec<Delivery>) -> Vec<Outcome> {
///         batch.iter().map(|d| Outcome::delivered(format!("{}-{}", self.prefix, d.key))).collect()
///     }
/// }
///
/// let echo = Echo::init(Config::default())?;
/// assert_eq!(echo.deliver(Vec::new()).len(), 0);
/// # Ok::<(), String>(())
/// ```
pub trait Adapter: Sized + 'static {
    /// Name, version, channel, batch size and wanted hosts. Must not use host capabilities: the
    /// host calls it on an instance that has none.
    ///
    /// ```
    /// use switchboard_sdk::{PluginInfo, PluginInfoExt};
    ///
    /// fn describe() -> PluginInfo {
    ///     PluginInfo::new("acme-sms", env!("CARGO_PKG_VERSION"), "sms")
    ///         .max_batch(50)
    ///         .wants_host("api.acme.example")
    /// }
    /// assert_eq!(describe().wants_hosts, ["api.acme.example"]);
    /// ```
    fn describe() -> PluginInfo;

    /// Builds the adapter from the operator's config. An error refuses the plugin at load time.
    /// It runs again on every fresh instance, so it should only read config.
    ///
    /// ```
    /// use switchboard_sdk::Config;
    ///
    /// struct Acme {
    ///     messages_url: String,
    /// }
    ///
    /// fn init(config: Config) -> Result<Acme, String> {
    ///     let endpoint = config.get_or("endpoint", "https://api.acme.example");
    ///     Ok(Acme { messages_url: format!("{}/v1/messages", endpoint.trim_end_matches('/')) })
    /// }
    /// assert_eq!(init(Config::default())?.messages_url, "https://api.acme.example/v1/messages");
    /// # Ok::<(), String>(())
    /// ```
    fn init(config: Config) -> Result<Self, String>;

    /// Delivers a batch. Must return exactly one outcome per delivery, in the same order; the host
    /// turns a missing outcome into a retry.
    ///
    /// ```
    /// use switchboard_sdk::content::{self, SmsContent};
    /// use switchboard_sdk::{Delivery, Outcome};
    ///
    /// // The usual shape: content that does not parse is rejected without a request.
    /// fn deliver(batch: Vec<Delivery>) -> Vec<Outcome> {
    ///     batch
    ///         .iter()
    ///         .map(|d| match content::parse::<SmsContent>(&d.content) {
    ///             Ok(_sms) => Outcome::delivered(d.key.clone()),
    ///             Err(why) => Outcome::rejected("INVALID_CONTENT", why),
    ///         })
    ///         .collect()
    /// }
    /// assert!(deliver(Vec::new()).is_empty());
    /// ```
    fn deliver(&self, batch: Vec<Delivery>) -> Vec<Outcome>;
}

impl Outcome {
    /// The vendor accepted the delivery; `message_id` is its id for it.
    ///
    /// ```
    /// use switchboard_sdk::Outcome;
    ///
    /// assert!(matches!(Outcome::delivered("SM123"), Outcome::Delivered(id) if id == "SM123"));
    /// ```
    pub fn delivered(message_id: impl Into<String>) -> Self {
        Outcome::Delivered(message_id.into())
    }

    /// A transient failure; the host tries again no sooner than `after_ms`, if given.
    ///
    /// ```
    /// use switchboard_sdk::{Outcome, retry_after_ms};
    ///
    /// let outcome = Outcome::retry("HTTP 429", retry_after_ms(Some("5")));
    /// assert!(matches!(outcome, Outcome::Retry(r) if r.after_ms == Some(5000)));
    /// ```
    pub fn retry(reason: impl Into<String>, after_ms: Option<u64>) -> Self {
        Outcome::Retry(RetryInfo {
            reason: reason.into(),
            after_ms,
        })
    }

    /// A permanent failure with the vendor's error code.
    ///
    /// ```
    /// use switchboard_sdk::Outcome;
    ///
    /// let outcome = Outcome::rejected("INVALID_ARGUMENT", "message is too long");
    /// assert!(matches!(outcome, Outcome::Rejected(r) if r.code == "INVALID_ARGUMENT"));
    /// ```
    pub fn rejected(code: impl Into<String>, reason: impl Into<String>) -> Self {
        Outcome::Rejected(Rejection {
            code: code.into(),
            reason: reason.into(),
        })
    }

    /// The recipient no longer exists at the vendor.
    ///
    /// ```
    /// use switchboard_sdk::Outcome;
    ///
    /// let outcome = Outcome::invalid_recipient("21211: invalid 'To' phone number");
    /// assert!(matches!(outcome, Outcome::InvalidRecipient(_)));
    /// ```
    pub fn invalid_recipient(reason: impl Into<String>) -> Self {
        Outcome::InvalidRecipient(reason.into())
    }
}

/// Exports a type implementing [`Adapter`] as the component's `adapter` world. Call it once, at
/// the crate root of a `cdylib` crate.
///
/// It exports only when building for the wasm target. Built natively, as a library a host links,
/// the crate exports nothing and the host calls the adapter through `native::NativeAdapter`.
///
/// ```
/// use switchboard_sdk::{Adapter, Config, Delivery, Outcome, PluginInfo, PluginInfoExt};
///
/// struct MyAdapter;
///
/// impl Adapter for MyAdapter {
///     fn describe() -> PluginInfo {
///         PluginInfo::new("my-adapter", "0.1.0", "sms")
///     }
///     fn init(_config: Config) -> Result<Self, String> {
///         Ok(MyAdapter)
///     }
///     fn deliver(&self, batch: Vec<Delivery>) -> Vec<Outcome> {
///         batch.iter().map(|_| Outcome::retry("not implemented yet", None)).collect()
///     }
/// }
///
/// switchboard_sdk::export_adapter!(MyAdapter);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! export_adapter {
    ($adapter:ty) => {
        #[cfg(target_arch = "wasm32")]
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
