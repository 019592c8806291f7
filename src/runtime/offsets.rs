//! Per-partition offset tracking for out-of-order completion.
//!
//! Invariant: the commit position is the lowest offset still unfinished, or one past the
//! highest offset seen when nothing is unfinished: never past an unfinished record.

use std::collections::BTreeSet;

#[derive(Debug, Default, Clone)]
pub struct PartitionOffsets {
    pending: BTreeSet<i64>,
    next_unseen: Option<i64>,
    stored: Option<i64>,
}

impl PartitionOffsets {
    /// A record at `offset` was handed to a worker.
    pub fn register(&mut self, offset: i64) {
        // The first record's offset is where this assignment started: nothing to commit yet.
        self.stored.get_or_insert(offset);
        self.pending.insert(offset);
        self.next_unseen = Some(self.next_unseen.map_or(offset + 1, |n| n.max(offset + 1)));
    }

    /// The record at `offset` finished. Returns the new commit position (the next offset to
    /// consume) when it advanced.
    pub fn complete(&mut self, offset: i64) -> Option<i64> {
        if !self.pending.remove(&offset) {
            return None;
        }
        let position = self.position()?;
        if self.stored.is_none_or(|s| position > s) {
            self.stored = Some(position);
            Some(position)
        } else {
            None
        }
    }

    /// The next offset to consume that is safe to commit.
    pub fn position(&self) -> Option<i64> {
        self.pending.first().copied().or(self.next_unseen)
    }

    /// The last position reported by [`Self::complete`] (or where the assignment started).
    pub fn stored(&self) -> Option<i64> {
        self.stored
    }

    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_contiguous_prefix_is_committed() {
        let mut p = PartitionOffsets::default();
        for o in 10..15 {
            p.register(o);
        }
        assert_eq!(p.complete(12), None); // 10 and 11 unfinished
        assert_eq!(p.complete(11), None);
        assert_eq!(p.complete(10), Some(13)); // 10..=12 done, 13 unfinished
        assert_eq!(p.complete(14), None);
        assert_eq!(p.complete(13), Some(15));
        assert_eq!(p.complete(13), None); // unknown or repeated completion changes nothing
    }

    #[test]
    fn gaps_in_offsets_are_fine() {
        let mut p = PartitionOffsets::default();
        p.register(3);
        p.register(7); // compaction or transaction markers in between
        assert_eq!(p.complete(7), None);
        assert_eq!(p.complete(3), Some(8));
        assert_eq!(p.in_flight(), 0);
    }

    #[test]
    fn randomized_completion_never_passes_an_unfinished_record() {
        use rand::seq::SliceRandom;
        let mut rng = rand::rng();
        for _ in 0..50 {
            let mut p = PartitionOffsets::default();
            let mut offsets: Vec<i64> = (0..100).collect();
            offsets.iter().for_each(|o| p.register(*o));
            offsets.shuffle(&mut rng);
            let mut done = std::collections::BTreeSet::new();
            for o in offsets {
                done.insert(o);
                if let Some(pos) = p.complete(o) {
                    assert!((0..pos).all(|x| done.contains(&x)), "committed {pos} past an unfinished record");
                }
            }
            assert_eq!(p.position(), Some(100));
        }
    }
}
