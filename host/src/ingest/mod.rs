//! Ingest: the Kafka consumers and the envelope decoder. The first stage a record meets: it is
//! consumed, ticketed, decoded, given its lane, and handed to the lane's admission; or, when it
//! is not a usable request, sent to the DLQ with a reason.
//!
//! - [`consumer`]: the consumers' topology, consuming, decoding, the hold over budget, drain
//!   and commit;
//! - `rebalance.rs`: what a consumer does as partitions are taken from it;
//! - `refused.rs`: refused records on their way to the DLQ, retries to their next tier;
//! - `lag.rs`: the consumer lag from librdkafka's statistics;
//! - [`envelope`]: the request envelope.

pub mod consumer;
pub mod envelope;
mod lag;
mod rebalance;
mod refused;

pub use envelope::{Envelope, EnvelopeError};
