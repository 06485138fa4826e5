//! Ingest: the Kafka consumers and the envelope decoder. The first stage a record meets: it is
//! consumed, ticketed, decoded, given its lane, and handed to the lane's admission; or, when it
//! is not a usable request, sent to the DLQ with a reason.

pub mod consumer;
pub mod envelope;

pub use envelope::{Envelope, EnvelopeError};
