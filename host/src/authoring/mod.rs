//! What vendor teams use to write adapters: the scaffold (`switchboard plugin new`) and offline
//! tests against recorded vendor exchanges (`switchboard plugin test`).

pub mod offline;
pub mod scaffold;
