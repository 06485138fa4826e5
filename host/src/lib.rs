//! # Switchboard
//!
//! A WebAssembly-plugin host for notification vendors. It consumes notification requests from
//! Kafka and delivers them through vendor adapters compiled to WebAssembly components.
//!
//! ## Layout
//! - [`config`]: the TOML configuration, documented field by field, validated at start;
//! - [`config_check`]: `switchboard config check`, every problem of a config without a start;
//! - [`ingest`]: the Kafka consumer, envelope decoding, the offset watermark, the embedded cluster;
//! - [`dedup`]: which deliveries are done, by idempotency key (embedded store, Redis);
//! - [`dispatch`]: batching per plugin, call concurrency, retries with backoff;
//! - [`retry`]: the retry topic and the DLQ: records, headers, the idempotent producer;
//! - [`route`]: channel → vendor choice: live weights, health and breakers, failover, fallback;
//! - [`state`]: what operators change live, kept across restarts;
//! - [`plugin`]: the wasmtime runtime, plugin loading, the registry of versions (hot swap,
//!   canaries), and the host capabilities plugins import;
//! - [`secrets`]: secret values, loaded once and never printed;
//! - [`telemetry`]: tracing setup, counters, one struct per observable event;
//! - [`text`]: outside text cut to a known size before it becomes a header or a field;
//! - [`admin`]: the admin API (weights, plugin versions, health, `/metrics`, the console) and the
//!   operator CLI's client;
//! - [`host`]: wires the parts into a running host, [`run`] and [`host::start`];
//! - [`demo`]: the self-contained demo (embedded Kafka, simulated vendors, bundled plugins);
//! - [`authoring`]: for vendor teams: the plugin scaffold and offline tests;
//! - [`cli`]: the `switchboard` command line.

pub mod admin;
pub mod authoring;
pub mod cli;
pub mod config;
pub mod config_check;
pub mod dedup;
pub mod demo;
pub mod dispatch;
pub mod host;
pub mod ingest;
pub mod plugin;
pub mod retry;
pub mod route;
pub mod secrets;
pub mod state;
pub mod telemetry;
pub mod text;

pub use config::Config;
pub use host::{RunningHost, StartOptions, run, start, start_with};
