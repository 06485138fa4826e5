//! Logging through the host, which tags each line with the plugin's name and version.

use crate::bindings::switchboard::adapter::log as wit;
pub use crate::bindings::switchboard::adapter::log::Level;

/// Logs `message` at `level`.
pub fn log(level: Level, message: &str) {
    wit::log(level, message)
}

/// Logs at debug level.
pub fn debug(message: &str) {
    log(Level::Debug, message)
}

/// Logs at info level.
pub fn info(message: &str) {
    log(Level::Info, message)
}

/// Logs at warn level.
pub fn warn(message: &str) {
    log(Level::Warn, message)
}

/// Logs at error level.
pub fn error(message: &str) {
    log(Level::Error, message)
}
