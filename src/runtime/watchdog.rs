//! When a processor has lost its way and must exit so that its supervisor restarts it.
//!
//! librdkafka recovers from most broker trouble by itself, but after broker restarts two
//! failures have been seen that it never recovers from: a producer that times out every record
//! while the consumer works again, and a consumer that never rejoins its group (CI, 2026-11-26:
//! the broker came back, removed the member on session expiry and saw no JoinGroup for five
//! minutes, while the process logged nothing: records already fetched before the outage had
//! cleared the "Kafka errors" evidence). The runner feeds its observations in; [`Watchdog::check`]
//! names the stall once one has lasted the whole window. Exiting loses nothing: offsets are only
//! ever committed from checkpoints, and the new process starts from them.
//!
//! Invariant: every verdict needs a full window of evidence, so a slow task, a rebalance or a
//! short outage never restarts a healthy processor.

use std::time::{Duration, Instant};

/// Why the processor gives up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stall {
    /// Kafka reported errors and no record was received or finished since.
    KafkaErrors,
    /// Records wait for Kafka to take their outputs and none finished.
    OutputsRefused,
    /// Exactly-once: every transaction commit has failed (finished records' outputs and offsets
    /// are held, not committed).
    CommitsFailing,
    /// The consumer has not been a settled group member (librdkafka's group state `up`, join
    /// state `steady`); the last state seen is named.
    GroupNotJoined { state: String, join_state: String },
    /// Exactly-once: the committed offsets of newly assigned partitions could not be read within
    /// the lookup's window (see `runtime::start`); reading them from elsewhere could publish
    /// results twice.
    StartOffsetsUnknown { partitions: usize, within: Duration },
}

impl std::fmt::Display for Stall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stall::KafkaErrors => f.write_str("Kafka errors and no record received or finished"),
            Stall::OutputsRefused => f.write_str("Kafka refused every output and no record finished"),
            Stall::CommitsFailing => f.write_str("every transaction commit failed"),
            Stall::GroupNotJoined { state, join_state } => {
                write!(f, "not a settled consumer-group member (group state {state}, join state {join_state})")
            }
            Stall::StartOffsetsUnknown { partitions, within } => {
                write!(f, "the committed offsets of {partitions} assigned partition(s) not found within {within:?}")
            }
        }
    }
}

/// The consumer group's state as librdkafka's statistics last reported it.
#[derive(Debug, Clone)]
pub struct GroupSeen {
    /// When the group was last seen settled (or when the runner started).
    pub settled_at: Instant,
    pub state: String,
    pub join_state: String,
}

impl GroupSeen {
    pub fn new(now: Instant) -> GroupSeen {
        GroupSeen { settled_at: now, state: "init".into(), join_state: "init".into() }
    }

    /// Records one statistics report of the group's state.
    pub fn report(&mut self, state: &str, join_state: &str, now: Instant) {
        if state == "up" && join_state == "steady" {
            self.settled_at = now;
        }
        self.state = state.to_string();
        self.join_state = join_state.to_string();
    }
}

/// How often a watchdog looks at its evidence (librdkafka's statistics for the runner, delivery
/// outcomes for the ingress's producer watch): several times per window.
pub fn check_interval(window: Duration) -> Duration {
    (window / 6).clamp(Duration::from_millis(200), Duration::from_secs(5))
}

/// The runner's progress, as far as the stall verdicts need it.
#[derive(Debug)]
pub struct Watchdog {
    window: Duration,
    last_progress: Instant,
    last_done: Instant,
    trouble_since: Option<Instant>,
    /// Exactly-once: since when every transaction commit has failed.
    commits_failing_since: Option<Instant>,
}

impl Watchdog {
    pub fn new(window: Duration, now: Instant) -> Watchdog {
        Watchdog { window, last_progress: now, last_done: now, trouble_since: None, commits_failing_since: None }
    }

    /// A record arrived from Kafka.
    pub fn received(&mut self, now: Instant) {
        self.last_progress = now;
        self.trouble_since = None;
    }

    /// A record finished (its effects are durable).
    pub fn finished(&mut self, now: Instant) {
        self.last_progress = now;
        self.last_done = now;
    }

    /// A transaction commit failed (exactly-once).
    pub fn commit_failed(&mut self, now: Instant) {
        self.commits_failing_since.get_or_insert(now);
    }

    /// A transaction committed (exactly-once).
    pub fn committed(&mut self) {
        self.commits_failing_since = None;
    }

    /// Kafka reported an error (to the consumer, or globally).
    pub fn trouble(&mut self, now: Instant) {
        self.trouble_since.get_or_insert(now);
    }

    /// The stall that has lasted a whole window, if any. `outputs_waiting`: records are waiting
    /// for Kafka to take their outputs.
    pub fn check(&self, now: Instant, outputs_waiting: bool, group: &GroupSeen) -> Option<Stall> {
        let over = |since: Instant| now.saturating_duration_since(since) > self.window;
        if self.trouble_since.is_some_and(over) && over(self.last_progress) {
            return Some(Stall::KafkaErrors);
        }
        if outputs_waiting && over(self.last_done) {
            return Some(Stall::OutputsRefused);
        }
        if self.commits_failing_since.is_some_and(over) {
            return Some(Stall::CommitsFailing);
        }
        if over(group.settled_at) {
            return Some(Stall::GroupNotJoined { state: group.state.clone(), join_state: group.join_state.clone() });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(30);

    fn at(t0: Instant, secs: u64) -> Instant {
        t0 + Duration::from_secs(secs)
    }

    #[test]
    fn a_settled_group_with_no_records_is_not_a_stall() {
        let t0 = Instant::now();
        let dog = Watchdog::new(W, t0);
        let mut group = GroupSeen::new(t0);
        for s in (5..300).step_by(5) {
            group.report("up", "steady", at(t0, s));
            assert_eq!(dog.check(at(t0, s + 1), false, &group), None);
        }
    }

    #[test]
    fn a_group_never_settling_for_a_window_is_a_stall_naming_its_state() {
        let t0 = Instant::now();
        let dog = Watchdog::new(W, t0);
        let mut group = GroupSeen::new(t0);
        group.report("up", "steady", at(t0, 5));
        group.report("up", "wait-join", at(t0, 10));
        group.report("up", "wait-join", at(t0, 30));
        assert_eq!(dog.check(at(t0, 35), false, &group), None, "a window not yet over");
        let stall = dog.check(at(t0, 36), false, &group).expect("stalled");
        assert_eq!(stall, Stall::GroupNotJoined { state: "up".into(), join_state: "wait-join".into() });
        assert!(stall.to_string().contains("join state wait-join"), "{stall}");
        // A rebalance that settles within the window is not a stall.
        group.report("up", "steady", at(t0, 37));
        assert_eq!(dog.check(at(t0, 60), false, &group), None);
    }

    #[test]
    fn kafka_errors_count_only_without_progress_for_a_window() {
        let t0 = Instant::now();
        let mut dog = Watchdog::new(W, t0);
        let mut group = GroupSeen::new(t0);
        dog.trouble(at(t0, 1));
        dog.finished(at(t0, 20));
        group.report("up", "steady", at(t0, 45));
        assert_eq!(dog.check(at(t0, 45), false, &group), None, "a record finished 25 s ago");
        assert_eq!(dog.check(at(t0, 51), false, &group), Some(Stall::KafkaErrors));
        dog.received(at(t0, 52));
        assert_eq!(dog.check(at(t0, 70), false, &group), None, "a record arrived: the errors are over");
    }

    #[test]
    fn failing_transaction_commits_are_a_stall_after_a_window_even_while_records_finish() {
        let t0 = Instant::now();
        let mut dog = Watchdog::new(W, t0);
        let mut group = GroupSeen::new(t0);
        dog.commit_failed(at(t0, 10));
        for s in (11..=40).step_by(3) {
            dog.received(at(t0, s));
            dog.finished(at(t0, s));
            dog.commit_failed(at(t0, s));
            group.report("up", "steady", at(t0, s));
        }
        assert_eq!(dog.check(at(t0, 40), false, &group), None, "a window not yet over");
        assert_eq!(dog.check(at(t0, 41), false, &group), Some(Stall::CommitsFailing));
        // One commit that goes through ends it.
        dog.committed();
        dog.commit_failed(at(t0, 42));
        assert_eq!(dog.check(at(t0, 60), false, &group), None);
    }

    #[test]
    fn refused_outputs_count_only_while_nothing_finishes() {
        let t0 = Instant::now();
        let mut dog = Watchdog::new(W, t0);
        let mut group = GroupSeen::new(t0);
        dog.finished(at(t0, 10));
        dog.received(at(t0, 39));
        group.report("up", "steady", at(t0, 40));
        assert_eq!(dog.check(at(t0, 40), true, &group), None);
        assert_eq!(dog.check(at(t0, 41), true, &group), Some(Stall::OutputsRefused));
        assert_eq!(dog.check(at(t0, 41), false, &group), None, "not waiting on Kafka: a slow task");
    }

    #[test]
    fn checks_come_several_times_per_window() {
        assert_eq!(check_interval(Duration::from_secs(60)), Duration::from_secs(5));
        assert_eq!(check_interval(Duration::from_secs(3)), Duration::from_millis(500));
        assert_eq!(check_interval(Duration::from_millis(100)), Duration::from_millis(200));
    }
}
