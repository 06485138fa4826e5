//! The broker, as every stage sees it: the embedded cluster used when no brokers are configured,
//! the topics the host writes to, made sure of at start, the producers every writer uses (polled
//! without spinning), and a producer of test and demo load.
//!
//! Imports nothing above the configuration: the stages that read and write records (ingest,
//! settle) use it; it knows nothing of them.

pub mod embedded;
pub mod polled;
pub mod produce;
pub mod topics;

pub use embedded::EmbeddedKafka;
pub use polled::{AwaitedProducer, PolledProducer};
pub use produce::produce;
pub use topics::{TopicsMissing, ensure_topics, ensure_topics_with};
