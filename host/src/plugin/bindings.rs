//! Host bindings for the `switchboard:adapter@0.1.0` world, generated from `sdk/wit/`: the WIT
//! ships inside the SDK crate, so authors outside this repository bind the same file.
//! Kept private to the plugin module; the rest of the host sees the curated re-exports below.

wasmtime::component::bindgen!({
    world: "adapter",
    path: "../sdk/wit",
    imports: { default: async },
    exports: { default: async },
});

pub use self::switchboard::adapter::types::{Priority, Rejection, RetryInfo};
pub use self::switchboard::adapter::{cache, http, log, secrets};
