//! Kafka ingest: the consumer, the envelope decoder, the offset watermark, and the embedded
//! mock cluster used when no brokers are configured.

pub mod budget;
pub mod consumer;
pub mod embedded;
pub mod envelope;
pub mod watermark;

pub use embedded::EmbeddedKafka;
pub use envelope::{Envelope, EnvelopeError};
pub use watermark::OffsetWatermark;
