//! At least once, reduced to offsets: which records are finished, and which offset of each
//! partition is safe to commit.
//!
//! - [`watermark`]: one partition's out-of-order completions, reduced to the committable offset;
//! - [`book`]: the watermarks of one consumer's partitions, and where their offsets are stored;
//! - [`ticket`]: one consumed record, shared by its deliveries, finished when the last of them is.
//!
//! The floor under the stages: a record is ticketed as it is consumed and finished by whichever
//! stage settles its last delivery, so this module imports nothing above it.

pub mod book;
pub mod ticket;
pub mod watermark;

pub use book::{OffsetBook, OffsetSink};
pub use ticket::RecordTicket;
pub use watermark::OffsetWatermark;
