//! The wall clock, in the one unit the host stores and compares: milliseconds since the Unix
//! epoch. On the ground floor; imports nothing of the host.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
