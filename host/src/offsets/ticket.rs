//! The record ticket: one consumed record, shared by its deliveries. The record is finished
//! (and its offset may be committed) only when every delivery called [`RecordTicket::complete`];
//! merely dropping the ticket, as on shutdown, never finishes it, so an unfinished record is
//! consumed again.
//!
//! The stages hang what they hold for the record on its ticket without this module knowing
//! them: the lane's memory charge ([`RecordTicket::hold`], released when the last share of the
//! ticket goes) and the key order's release of the next record ([`RecordTicket::on_finish`]).

use std::any::Any;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use super::OffsetBook;

/// One consumed record, shared by its deliveries.
pub struct RecordTicket {
    topic: String,
    partition: i32,
    offset: i64,
    remaining: AtomicUsize,
    book: Arc<OffsetBook>,
    /// Held from admission until the last share of the ticket is dropped (the record's bytes
    /// against the lane's budget).
    held: OnceLock<Box<dyn Any + Send + Sync>>,
    /// Run once when the record finishes (the next record of its key may go).
    on_finish: OnceLock<Box<dyn Fn() + Send + Sync>>,
}

impl RecordTicket {
    /// Opens the record at `offset` in `book`, to be finished by `deliveries` completions.
    pub fn open(
        book: &Arc<OffsetBook>,
        topic: &str,
        partition: i32,
        offset: i64,
        deliveries: usize,
    ) -> Arc<Self> {
        book.open(topic, partition, offset);
        Arc::new(Self {
            topic: topic.to_string(),
            partition,
            offset,
            remaining: AtomicUsize::new(deliveries),
            book: book.clone(),
            held: OnceLock::new(),
            on_finish: OnceLock::new(),
        })
    }

    /// Keeps `resource` until the ticket is dropped. Only the first call counts.
    pub fn hold(&self, resource: impl Any + Send + Sync) {
        let _ = self.held.set(Box::new(resource));
    }

    /// Runs `action` when the record finishes. Only the first call counts.
    pub fn on_finish(&self, action: impl Fn() + Send + Sync + 'static) {
        let _ = self.on_finish.set(Box::new(action));
    }

    /// One delivery of this record reached a final outcome, or was handed to the retry topic.
    pub fn complete(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.book.finish(&self.topic, self.partition, self.offset);
            if let Some(action) = self.on_finish.get() {
                action();
            }
        }
    }

    /// Where the record came from, for logs.
    pub fn coordinates(&self) -> (&str, i32, i64) {
        (&self.topic, self.partition, self.offset)
    }

    /// The record's partition.
    pub fn partition(&self) -> (&str, i32) {
        (&self.topic, self.partition)
    }
}
