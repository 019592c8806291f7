//! Revokes that wait for the revoked partitions' running records (cooperative rebalancing).
//!
//! Handing a revoked partition over at once lets its new owner start the same tasks again
//! while they still run here (their status is `running`, not final): side effects twice. So the
//! runner holds a revoke: librdkafka keeps this member in the group (heartbeating) until the
//! application calls unassign, and the runner calls it once the revoked partitions' running
//! records have finished here and their offsets are stored (exactly-once: committed with their
//! outputs). The new owner then starts after them and finds those tasks final. Meanwhile
//! librdkafka fetches nothing for this member (it pauses the whole assignment until the unassign
//! call), so a held revoke also delays the partitions this member keeps, by at most the grace.
//!
//! Invariants:
//! - no record of a partition being revoked is started (unstarted ones are dropped; the new
//!   owner redelivers them);
//! - a revoke waits at most its grace period; records still running then are cancelled as on
//!   shutdown when the partitions are handed over (see [`super::assignment`]; the new owner
//!   redelivers them);
//! - lost partitions (session expired) and revokes while the consumer closes are handed over at
//!   once: another member owns them already, or the member is leaving.

use super::runner::Tp;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A revoke waiting for its partitions' running records.
pub(super) struct Revoking {
    pub list: Vec<Tp>,
    pub since: Instant,
    deadline: Instant,
}

/// A revoke ready to be handed over, with how many of its records still run (abandoned).
pub(super) struct Ready {
    pub revoke: Revoking,
    pub abandoned: usize,
}

/// Running records per partition, and the revokes waiting for them.
pub(super) struct Revokes {
    pending: Vec<Revoking>,
    running: HashMap<Tp, usize>,
    grace: Duration,
}

impl Revokes {
    pub fn new(grace: Duration) -> Revokes {
        Revokes { pending: Vec::new(), running: HashMap::new(), grace }
    }

    /// A record of `tp` was started.
    pub fn started(&mut self, tp: Tp) {
        *self.running.entry(tp).or_default() += 1;
    }

    /// A record of `tp` finished (whatever its assignment's generation).
    pub fn finished(&mut self, tp: &Tp) {
        if let Some(n) = self.running.get_mut(tp) {
            *n -= 1;
            if *n == 0 {
                self.running.remove(tp);
            }
        }
    }

    /// Holds a revoke of `list` until its partitions' running records finish.
    pub fn hold(&mut self, list: Vec<Tp>, now: Instant) {
        self.pending.push(Revoking { list, since: now, deadline: now + self.grace });
    }

    /// Forgets `list` in the held revokes: those partitions were unassigned meanwhile (lost).
    /// A revoke left with no partition ends.
    pub fn forget(&mut self, list: &[Tp]) {
        for revoke in &mut self.pending {
            revoke.list.retain(|tp| !list.contains(tp));
        }
        self.pending.retain(|r| !r.list.is_empty());
    }

    /// Whether `tp` is being revoked (its records are not started).
    pub fn is_revoking(&self, tp: &Tp) -> bool {
        self.pending.iter().any(|r| r.list.contains(tp))
    }

    /// How many partitions the held revokes hold.
    pub fn partitions(&self) -> usize {
        self.pending.iter().map(|r| r.list.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// When the earliest held revoke's grace period ends.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.iter().map(|r| r.deadline).min()
    }

    fn still_running(&self, list: &[Tp]) -> usize {
        list.iter().map(|tp| self.running.get(tp).copied().unwrap_or(0)).sum()
    }

    /// Takes the revokes whose records have all finished, whose grace period is over, or all of
    /// them when `all` (shutdown).
    pub fn take_ready(&mut self, now: Instant, all: bool) -> Vec<Ready> {
        let mut ready = Vec::new();
        let mut kept = Vec::new();
        for revoke in std::mem::take(&mut self.pending) {
            let running = self.still_running(&revoke.list);
            if all || running == 0 || now >= revoke.deadline {
                ready.push(Ready { revoke, abandoned: running });
            } else {
                kept.push(revoke);
            }
        }
        self.pending = kept;
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(p: i32) -> Tp {
        ("t".to_string(), p)
    }

    #[test]
    fn a_revoke_waits_for_its_partitions_running_records_only() {
        let t0 = Instant::now();
        let mut r = Revokes::new(Duration::from_secs(30));
        r.started(tp(0));
        r.started(tp(0));
        r.started(tp(1));
        r.hold(vec![tp(0)], t0);
        assert!(r.is_revoking(&tp(0)) && !r.is_revoking(&tp(1)));
        r.finished(&tp(0));
        assert!(r.take_ready(t0, false).is_empty(), "one record of partition 0 still runs");
        r.finished(&tp(0));
        let ready = r.take_ready(t0, false);
        assert_eq!((ready.len(), ready[0].abandoned), (1, 0), "partition 1's record is not waited for");
        assert!(r.is_empty() && !r.is_revoking(&tp(0)));
    }

    #[test]
    fn partitions_lost_while_held_are_no_longer_held() {
        let t0 = Instant::now();
        let mut r = Revokes::new(Duration::from_secs(30));
        r.started(tp(0));
        r.started(tp(1));
        r.hold(vec![tp(0), tp(1)], t0);
        r.forget(&[tp(0)]);
        assert!(!r.is_revoking(&tp(0)) && r.is_revoking(&tp(1)));
        r.forget(&[tp(1)]);
        assert!(r.is_empty(), "a revoke with no partition left ends");
    }

    #[test]
    fn a_revoke_is_handed_over_at_its_deadline_or_on_shutdown_with_what_still_runs() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(30);
        let mut r = Revokes::new(grace);
        r.started(tp(0));
        r.hold(vec![tp(0)], t0);
        r.started(tp(2));
        r.hold(vec![tp(2)], t0 + Duration::from_secs(10));
        assert_eq!(r.next_deadline(), Some(t0 + grace));
        assert!(r.take_ready(t0 + grace - Duration::from_millis(1), false).is_empty());
        let ready = r.take_ready(t0 + grace, false);
        assert_eq!((ready.len(), ready[0].revoke.list.clone(), ready[0].abandoned), (1, vec![tp(0)], 1));
        let ready = r.take_ready(t0 + grace, true);
        assert_eq!((ready.len(), ready[0].abandoned), (1, 1), "shutdown hands every revoke over");
        assert!(r.is_empty());
    }
}
