//! A delivery as the host holds it between the consumer and the plugin call.
//!
//! The WIT `delivery` record owns its content as a `String`, so a request with 1,000 recipients
//! would hold 1,000 copies of the same content. The host keeps one copy per request instead,
//! shared by every recipient's delivery, and lowers it straight into the guest's memory at the
//! call: the only per-recipient copy is the one the guest itself reads.
//!
//! Owns only the shape and its conversions; never decides anything about a delivery.

use std::sync::Arc;

use wasmtime::component::{ComponentType, Lower};

use super::{Delivery, Priority};

/// One recipient's delivery, with the request's content shared. Lowers as the WIT `delivery`
/// record (same field names and types), so a component receives exactly what it always did.
#[derive(Debug, Clone, PartialEq, Eq, ComponentType, Lower)]
#[component(record)]
pub struct SharedDelivery {
    /// Idempotency key of this recipient's delivery.
    pub key: String,
    /// Device token, phone number, ...
    pub recipient: String,
    /// The channel content as JSON text, shared by every recipient of the request.
    pub content: Arc<str>,
    pub priority: Priority,
    /// 1 on the first try.
    pub attempt: u32,
}

impl SharedDelivery {
    /// The WIT record, with a content copy of its own: for paths that need one (the native
    /// adapter, offline tests), never the component call.
    pub fn to_owned_delivery(&self) -> Delivery {
        Delivery {
            key: self.key.clone(),
            recipient: self.recipient.clone(),
            content: self.content.to_string(),
            priority: self.priority,
            attempt: self.attempt,
        }
    }
}

impl From<&Delivery> for SharedDelivery {
    fn from(delivery: &Delivery) -> Self {
        Self {
            key: delivery.key.clone(),
            recipient: delivery.recipient.clone(),
            content: delivery.content.as_str().into(),
            priority: delivery.priority,
            attempt: delivery.attempt,
        }
    }
}
