//! Logging through the host, which tags each line with the plugin's name and version and
//! truncates it at 4 KiB. Never log secret values or message content a vendor would not see.
//!
//! ```no_run
//! use switchboard_sdk::log;
//!
//! log::warn(&format!("could not fetch an access token at init: {}", "HTTP 503"));
//! ```

/// A log level: `Trace`, `Debug`, `Info`, `Warn` or `Error`. The operator's log filter decides
/// which of them are written.
///
/// ```
/// use switchboard_sdk::log::Level;
///
/// let level = if cfg!(debug_assertions) { Level::Debug } else { Level::Info };
/// # let _ = level;
/// ```
#[doc(inline)]
pub use crate::bindings::switchboard::adapter::log::Level;

/// Logs `message` at `level`.
///
/// ```no_run
/// use switchboard_sdk::log::{self, Level};
///
/// log::log(Level::Trace, "built 3 requests");
/// ```
pub fn log(level: Level, message: &str) {
    crate::imports::log(level, message)
}

/// Logs at debug level.
///
/// ```no_run
/// switchboard_sdk::log::debug("token cache miss");
/// ```
pub fn debug(message: &str) {
    log(Level::Debug, message)
}

/// Logs at info level.
///
/// ```no_run
/// switchboard_sdk::log::info("fetched a new access token");
/// ```
pub fn info(message: &str) {
    log(Level::Info, message)
}

/// Logs at warn level.
///
/// ```no_run
/// switchboard_sdk::log::warn("vendor answered 503; the batch will be retried");
/// ```
pub fn warn(message: &str) {
    log(Level::Warn, message)
}

/// Logs at error level: something the operator has to fix, such as refused credentials.
///
/// ```no_run
/// switchboard_sdk::log::error("the vendor refused the credentials: check the secret `api_key`");
/// ```
pub fn error(message: &str) {
    log(Level::Error, message)
}
