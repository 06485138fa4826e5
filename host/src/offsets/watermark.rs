//! Out-of-order completion per partition, reduced to the one offset that is safe to commit.
//!
//! Records finish in any order (batches, retries, slow vendors); only the contiguous prefix of
//! finished records may be committed, or a crash would skip unfinished ones.

use std::collections::BTreeSet;

/// The committable position of one partition.
#[derive(Debug, Default)]
pub struct OffsetWatermark {
    /// Offsets consumed and not yet finished.
    open: BTreeSet<i64>,
    /// The highest offset consumed so far.
    highest_seen: Option<i64>,
    /// The last position handed out by [`OffsetWatermark::advance`].
    last_committable: Option<i64>,
}

impl OffsetWatermark {
    /// A record at `offset` was consumed and is being worked on.
    pub fn open(&mut self, offset: i64) {
        self.open.insert(offset);
        self.highest_seen = Some(self.highest_seen.map_or(offset, |h| h.max(offset)));
    }

    /// The record at `offset` is finished (delivered, refused, or given up).
    pub fn finish(&mut self, offset: i64) {
        self.open.remove(&offset);
    }

    /// The next offset to consume after every finished record of the contiguous prefix: what
    /// Kafka should store as committed. `None` when nothing was consumed yet.
    pub fn committable(&self) -> Option<i64> {
        match self.open.first() {
            Some(lowest_open) => Some(*lowest_open),
            None => self.highest_seen.map(|h| h + 1),
        }
    }

    /// The committable position if it moved since the last call.
    pub fn advance(&mut self) -> Option<i64> {
        let now = self.committable();
        if now.is_some() && now != self.last_committable {
            self.last_committable = now;
            return now;
        }
        None
    }

    /// Records consumed and not finished.
    pub fn open_count(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_order_completion_commits_only_the_contiguous_prefix() {
        let mut w = OffsetWatermark::default();
        assert_eq!(w.committable(), None);
        for o in 10..15 {
            w.open(o);
        }
        w.finish(12);
        w.finish(11);
        assert_eq!(w.committable(), Some(10));
        w.finish(10);
        assert_eq!(w.advance(), Some(13));
        assert_eq!(w.advance(), None, "no move, nothing to store");
        w.finish(14);
        assert_eq!(w.committable(), Some(13));
        w.finish(13);
        assert_eq!(w.advance(), Some(15));
        assert_eq!(w.open_count(), 0);
    }

    #[test]
    fn gaps_in_offsets_do_not_block_the_watermark() {
        // Compaction and transaction markers leave offsets that are never consumed.
        let mut w = OffsetWatermark::default();
        w.open(3);
        w.open(7);
        w.finish(7);
        assert_eq!(w.committable(), Some(3));
        w.finish(3);
        assert_eq!(w.committable(), Some(8));
    }
}
