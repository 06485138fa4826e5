//! The contract between the host and its adapters: the types of the `switchboard:adapter` WIT
//! world (a delivery, its outcome, its priority) and the host's shared form of a delivery.
//!
//! The ground floor: every stage speaks in these types, so this module imports nothing of the
//! host. It owns the shapes only; it never decides anything about a delivery.

pub(crate) mod bindings;
mod delivery;

pub use bindings::http as bindings_http;
pub use bindings::{Delivery, Outcome, PluginInfo, Priority, Rejection, RetryInfo};
pub use delivery::SharedDelivery;
