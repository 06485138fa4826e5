//! Host bindings for the `switchboard:adapter@0.1.0` world, generated from `sdk/wit/`: the WIT
//! ships inside the SDK crate, so authors outside this repository bind the same file.
//! The host sees the curated re-exports of [`crate::contract`]; only the plugin runtime reaches
//! into the generated interfaces to implement them.

wasmtime::component::bindgen!({
    world: "adapter",
    path: "../sdk/wit",
    imports: { default: async },
    exports: { default: async },
});

pub use self::switchboard::adapter::types::{Priority, Rejection, RetryInfo};
pub use self::switchboard::adapter::{cache, http, log, secrets};
