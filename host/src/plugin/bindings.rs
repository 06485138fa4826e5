//! Host bindings for the `switchboard:adapter@0.1.0` world, generated from `wit/`.
//! Kept private to the plugin module; the rest of the host sees the curated re-exports below.

wasmtime::component::bindgen!({
    world: "adapter",
    path: "../wit",
    imports: { default: async },
    exports: { default: async },
});

pub use self::switchboard::adapter::types::{Priority, Rejection, RetryInfo};
pub use self::switchboard::adapter::{cache, http, log, secrets};
