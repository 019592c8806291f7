//! Where a newly assigned partition starts reading, in exactly-once mode.
//!
//! librdkafka looks a new partition's committed offset up itself. While a crashed member's
//! transaction is open, the broker refuses that lookup as unstable and librdkafka retries it;
//! but librdkafka 2.12 gives the retry up when the assignment changes meanwhile (a cooperative
//! rebalance as dead members expire), puts the partition back with no offset
//! (`rdkafka_assignment.c`, the `UNSTABLE_OFFSET_COMMIT` branch of its OffsetFetch handler) and
//! starts it at `auto.offset.reset`: records whose outputs were committed are read again and
//! their results published twice. So in exactly-once mode the runner looks the committed
//! offsets up itself, waiting out open transactions, and assigns explicit positions.
//!
//! Invariants: a partition is read from its committed offset, or from the beginning if the group
//! never committed one (the runner's `auto.offset.reset` is `earliest`); never from a position
//! librdkafka chose after a failed lookup. When the lookup fails for the whole window (the
//! coordinator unreachable), the runner assigns the partitions paused and exits for a restart
//! (a stall, see [`super::watchdog::Stall::StartOffsetsUnknown`]), so that the next owner looks
//! them up again; when the runner is stopping, it assigns them paused and stops.
//! The lookup blocks the rebalance callback, and so the runner's poll loop, for one
//! round trip, or until an open transaction ends (the broker aborts it `transaction.timeout.ms`
//! after it stalled): the partitions' records could not be read before that anyway. A shutdown
//! ends the wait within one lookup (at most [`LOOKUP_WAIT`]).

use super::blocking;
use crate::events::StartOffsetsUnresolved;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Pause between lookups that failed at once (e.g. no coordinator yet).
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// The longest one lookup may wait, so that a shutdown is noticed between lookups.
const LOOKUP_WAIT: Duration = Duration::from_secs(2);

/// Sets each partition of `tpl` to where it starts: its committed offset, or the beginning if
/// there is none. Partitions still unresolved after `within`, or when `stopping` is cancelled,
/// keep their offset; their count is returned (the caller must not let them be read).
pub(super) fn resolve_start_offsets<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    tpl: &mut TopicPartitionList,
    within: Duration,
    stopping: &CancellationToken,
) -> usize {
    let deadline = Instant::now() + within;
    // The lookup fills in the offsets; those of the assignment do not matter.
    let mut pending = tpl.clone();
    let mut last_error: Option<KafkaError> = None;
    while pending.count() > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stopping.is_cancelled() {
            break;
        }
        // The lookup waits (librdkafka retries an unstable answer) a while.
        match blocking(|| consumer.committed_offsets(pending.clone(), left.min(LOOKUP_WAIT))) {
            Ok(found) => {
                let mut again = TopicPartitionList::new();
                for e in found.elements() {
                    if let Err(err) = e.error() {
                        last_error = Some(err);
                        again.add_partition(e.topic(), e.partition());
                        continue;
                    }
                    let start = match e.offset() {
                        Offset::Offset(n) => Offset::Offset(n),
                        _ => Offset::Beginning,
                    };
                    // The partition is in `tpl`: setting its offset cannot fail.
                    let _ = tpl.set_partition_offset(e.topic(), e.partition(), start);
                }
                pending = again;
            }
            Err(e) => last_error = Some(e),
        }
        if pending.count() > 0 {
            // Refused at once, or timed out (librdkafka retries only an unstable answer itself).
            blocking(|| std::thread::sleep(RETRY_PAUSE.min(left)));
        }
    }
    let unresolved = pending.count();
    if unresolved > 0 && !stopping.is_cancelled() {
        let error = last_error.map(|e| e.to_string());
        StartOffsetsUnresolved { partitions: unresolved, within, error: error.as_deref() }.emit();
    }
    unresolved
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::CommitMode;
    use rdkafka::mocking::MockCluster;

    fn two_partitions() -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition("t", 0);
        tpl.add_partition("t", 1);
        tpl
    }

    #[test]
    fn partitions_start_at_their_committed_offset_or_else_the_beginning() {
        let mock = MockCluster::new(1).expect("mock cluster");
        mock.create_topic("t", 2, 1).expect("topic");
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", mock.bootstrap_servers())
            .set("group.id", "g")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let mut committed = TopicPartitionList::new();
        committed.add_partition_offset("t", 0, Offset::Offset(5)).unwrap();
        consumer.commit(&committed, CommitMode::Sync).expect("commit");

        let mut tpl = two_partitions();
        let unresolved = resolve_start_offsets(&consumer, &mut tpl, Duration::from_secs(20), &CancellationToken::new());
        assert_eq!(unresolved, 0);
        assert_eq!(tpl.find_partition("t", 0).unwrap().offset(), Offset::Offset(5));
        assert_eq!(tpl.find_partition("t", 1).unwrap().offset(), Offset::Beginning);
    }

    #[test]
    fn a_stopping_runner_leaves_the_lookup_to_librdkafka() {
        let mock = MockCluster::new(1).expect("mock cluster");
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", mock.bootstrap_servers())
            .set("group.id", "g")
            .create()
            .expect("consumer");
        let stopping = CancellationToken::new();
        stopping.cancel();
        let mut tpl = two_partitions();
        let started = Instant::now();
        assert_eq!(resolve_start_offsets(&consumer, &mut tpl, Duration::from_secs(20), &stopping), 2);
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(tpl.elements().iter().all(|e| e.offset() == Offset::Invalid));
    }
}
