//! # Switchboard
//!
//! A WebAssembly-plugin host for notification vendors. It consumes notification requests from
//! Kafka and delivers them through vendor adapters compiled to WebAssembly components.
//!
//! ## Layout
//! In the order a record flows (docs/ARCHITECTURE.md numbers the steps):
//! - [`ingest`]: consume and decode: the Kafka consumers, the envelope, refused records;
//! - [`lane`]: the traffic classes: memory budgets, key order, admission;
//! - [`dedup`]: which deliveries are done, by idempotency key: look-up and mark rules, stores;
//! - [`route`]: channel → vendor: live weights, health and breakers, failover, fallback;
//! - [`dispatch`]: batching per plugin, call concurrency, the plugin call;
//! - [`settle`]: outcome → actions (retry, DLQ, results, the dedup mark) and their effects;
//! - [`offsets`]: the record ticket, the watermark, the offsets stored for commit.
//!
//! Beside the flow:
//! - [`plugin`]: the wasmtime runtime, plugin loading, the registry of versions (hot swap,
//!   canaries), and the host capabilities plugins import;
//! - [`kafka`]: the embedded cluster and the topics the host makes sure of at start;
//! - [`config`], [`config_check`]: the TOML configuration, checked at start or on its own;
//! - [`secrets`]: secret values, loaded once and never printed;
//! - [`state`]: what operators change live, kept across restarts;
//! - [`telemetry`]: tracing setup, counters, metric families, one struct per observable event;
//! - [`control`]: the fleet's control plane: every lever through a Kafka topic all hosts apply,
//!   component bytes with it, host reports and the fleet view;
//! - [`admin`]: the admin API (weights, plugin versions, health, `/metrics`, the console) and the
//!   operator CLI's client;
//! - [`host`]: wires the stages into a running host, [`run`] and [`host::start`];
//! - `demo`: the self-contained demo (embedded Kafka, simulated vendors, bundled plugins), with
//!   the `demo` feature only, so a production build links no simulator;
//! - [`authoring`]: for vendor teams: the plugin scaffold and offline tests;
//! - [`cli`]: the `switchboard` command line.
//!
//! The ground floor, which imports nothing of the host: [`contract`] (the WIT world's types),
//! [`clock`], [`window`] (the per-second window) and [`text`]. `tests/layers.rs` checks that
//! every module imports only modules below it.

/// Every binary built on the host (the `switchboard` command, the lab, the tests) allocates with
/// mimalloc, so what the lab measures is what runs. glibc's malloc and free took about a fifth
/// of the host's CPU per delivery: many threads freeing buffers another thread allocated.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod admin;
pub mod authoring;
pub mod cli;
pub mod clock;
pub mod config;
pub mod config_check;
pub mod contract;
pub mod control;
pub mod dedup;
#[cfg(feature = "demo")]
pub mod demo;
pub mod dispatch;
pub mod host;
pub mod ingest;
pub mod kafka;
pub mod lane;
pub mod offsets;
pub mod plugin;
pub mod route;
pub mod secrets;
pub mod settle;
pub mod state;
pub mod telemetry;
pub mod text;
pub mod window;

pub use config::Config;
pub use host::{RunningHost, StartOptions, run, start, start_with};
