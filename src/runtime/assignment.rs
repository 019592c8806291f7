//! One partition's assignment to this member, as the runner keeps it: its generation, its
//! offsets, and the cancellation of its running records.
//!
//! Invariants:
//! - a generation is never reused within a runner, so a completion from an earlier assignment
//!   of the same partition is told apart and ignored;
//! - an assignment's token is a child of the runner's workers' token: shutdown cancels every
//!   running record;
//! - an assignment forgotten (its partition handed over after a revoke, or lost) cancels its
//!   records still running, so they never go on beside the partition's new owner, which runs
//!   them again (side effects twice at the same time otherwise).

use super::runner::Tp;
use super::PartitionOffsets;
use std::collections::HashMap;
use tokio_util::sync::CancellationToken;

pub(super) struct Assignment {
    pub generation: u64,
    pub tracker: PartitionOffsets,
    /// Cancelled when the partition is no longer this member's; every record of this
    /// assignment runs under it.
    pub cancel: CancellationToken,
}

pub(super) type Assignments = HashMap<Tp, Assignment>;

/// Hands out assignments with fresh generations under the runner's workers' token.
pub(super) struct Generations {
    last: u64,
    workers: CancellationToken,
}

impl Generations {
    pub fn new(workers: CancellationToken) -> Generations {
        Generations { last: 0, workers }
    }

    pub fn next(&mut self) -> Assignment {
        self.last += 1;
        Assignment { generation: self.last, tracker: PartitionOffsets::default(), cancel: self.workers.child_token() }
    }
}

/// Forgets `tp`'s assignment (its partition is no longer this member's) and cancels its
/// records still running.
pub(super) fn forget(assignments: &mut Assignments, tp: &Tp) {
    if let Some(a) = assignments.remove(tp) {
        a.cancel.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgetting_an_assignment_cancels_its_records_only_and_shutdown_cancels_all() {
        let workers = CancellationToken::new();
        let mut gens = Generations::new(workers.clone());
        let mut assignments = Assignments::new();
        let tp = |p: i32| ("t".to_string(), p);
        assignments.insert(tp(0), gens.next());
        assignments.insert(tp(1), gens.next());
        let (first, second) = (assignments[&tp(0)].cancel.clone(), assignments[&tp(1)].cancel.clone());
        assert_ne!(assignments[&tp(0)].generation, assignments[&tp(1)].generation);

        forget(&mut assignments, &tp(0));
        assert!(first.is_cancelled(), "a forgotten partition's records are cancelled");
        assert!(!second.is_cancelled() && !workers.is_cancelled(), "the others' go on");
        forget(&mut assignments, &tp(0));

        // The partition comes back: a new generation, not cancelled.
        assignments.insert(tp(0), gens.next());
        let again = assignments[&tp(0)].cancel.clone();
        assert!(assignments[&tp(0)].generation > assignments[&tp(1)].generation);
        assert!(!again.is_cancelled());

        workers.cancel();
        assert!(second.is_cancelled() && again.is_cancelled(), "shutdown cancels every record");
    }
}
