//! The offset book: the watermark of each partition one consumer reads, and the sink its
//! committable offsets are stored in (the consumer, whose librdkafka commits them every
//! `commit_interval_ms`).
//!
//! Owns the watermarks; never commits by itself and never decides when a record is finished.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, OnceLock, Weak};

use rdkafka::consumer::{ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::{Offset, TopicPartitionList};

use super::OffsetWatermark;
use crate::telemetry::events;

/// Where committable offsets are stored: a consumer with `enable.auto.offset.store=false`.
pub trait OffsetSink: Send + Sync {
    fn store_offsets(&self, offsets: &TopicPartitionList) -> KafkaResult<()>;
}

impl<C: ConsumerContext + 'static> OffsetSink for StreamConsumer<C> {
    fn store_offsets(&self, offsets: &TopicPartitionList) -> KafkaResult<()> {
        rdkafka::consumer::Consumer::store_offsets(self, offsets)
    }
}

/// The watermarks of the partitions one consumer reads, and the consumer to store them in.
pub struct OffsetBook {
    marks: Mutex<HashMap<(String, i32), OffsetWatermark>>,
    sink: OnceLock<Weak<dyn OffsetSink>>,
}

impl Default for OffsetBook {
    fn default() -> Self {
        Self::new()
    }
}

impl OffsetBook {
    pub fn new() -> Self {
        Self {
            marks: Mutex::new(HashMap::new()),
            sink: OnceLock::new(),
        }
    }

    /// Stores committable offsets in `sink` from now on; only the first call counts. Weak, so
    /// a book outliving its consumer stores nothing rather than keeping it alive.
    pub fn store_in(&self, sink: Weak<dyn OffsetSink>) {
        let _ = self.sink.set(sink);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<(String, i32), OffsetWatermark>> {
        self.marks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A record at `offset` was consumed and is being worked on.
    pub fn open(&self, topic: &str, partition: i32, offset: i64) {
        self.lock()
            .entry((topic.to_string(), partition))
            .or_default()
            .open(offset);
    }

    /// The record at `offset` is finished: stores the partition's offset if it advanced.
    pub fn finish(&self, topic: &str, partition: i32, offset: i64) {
        let advanced = {
            let mut marks = self.lock();
            let Some(mark) = marks.get_mut(&(topic.to_string(), partition)) else {
                // The partition was revoked while the record was in flight; its new owner
                // consumes it again from the last commit.
                return;
            };
            mark.finish(offset);
            mark.advance()
        };
        if let Some(next) = advanced {
            self.store(topic, partition, next);
        }
    }

    fn store(&self, topic: &str, partition: i32, next_offset: i64) {
        let Some(sink) = self.sink.get().and_then(Weak::upgrade) else {
            return;
        };
        let mut tpl = TopicPartitionList::new();
        if tpl
            .add_partition_offset(topic, partition, Offset::Offset(next_offset))
            .is_ok()
            && let Err(e) = sink.store_offsets(&tpl)
        {
            events::OffsetStoreFailed {
                topic,
                partition,
                offset: next_offset,
                error: &e,
            }
            .emit();
        }
    }

    /// Forgets the partitions of `tpl` (revoked): their records in flight finish unrecorded.
    pub fn forget(&self, tpl: &TopicPartitionList) {
        let mut marks = self.lock();
        for e in tpl.elements() {
            marks.remove(&(e.topic().to_string(), e.partition()));
        }
    }

    /// Records consumed and not yet finished in the partitions of `tpl`.
    pub fn open_in(&self, tpl: &TopicPartitionList) -> usize {
        let marks = self.lock();
        tpl.elements()
            .iter()
            .filter_map(|e| marks.get(&(e.topic().to_string(), e.partition())))
            .map(OffsetWatermark::open_count)
            .sum()
    }

    /// Records consumed and not yet finished, over all partitions.
    pub fn open_records(&self) -> usize {
        self.lock().values().map(OffsetWatermark::open_count).sum()
    }
}
