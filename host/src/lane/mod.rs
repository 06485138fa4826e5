//! Lanes: the traffic classes (realtime, batch, ads) a record travels in, so that bulk traffic
//! never delays a realtime push.
//!
//! - [`budget`]: each lane's memory budget, with the total's, and the high and low water marks
//!   a lane's partitions pause and resume at;
//! - [`arrival`]: a record's deliveries on their way through the lane;
//! - [`key_order`]: records of one key, one at a time, when the lane keeps key order;
//! - [`admit`]: admission: the budget charge, key order, the dedup look-up, the vendor pick and
//!   the hand-off to the dispatcher, in that order.
//!
//! The lane of a record is decided by its consumer (ingest); the realtime lane's own runtime is
//! built in `host.rs`.

pub mod admit;
pub mod arrival;
pub mod budget;
pub mod key_order;

pub use admit::Admission;
pub use arrival::Arrival;
pub use budget::{Budget, Charge, LaneBudget, PER_DELIVERY_OVERHEAD};
pub use key_order::KeyOrder;
