//! The runner's Kafka consumer: its configuration, its context (rdkafka callbacks:
//! rebalances, errors, statistics), its pausing and its close.
//!
//! Invariants:
//! - rebalance callbacks only record what happened ([`RebalanceEvent`]); the poll loop applies
//!   it after each poll, so offsets, the scheduler and revokes change in one place;
//! - a revoke of partitions this member still owns is held (cooperative protocol only) until the
//!   runner unassigns them (see [`super::revoke`]); never while the consumer closes;
//! - the consumer's close never blocks the runner's end for more than [`CLOSE_WAIT`].

use super::blocking;
use super::runner::Tp;
use super::start::resolve_start_offsets;
use super::watchdog::{check_interval, GroupSeen, Stall};
use crate::catalog::{Guarantee, ProcessorSpec};
use crate::events::ConsumerCloseAbandoned;
use crate::kafka::client_config;
use crate::settings::KafkaSettings;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::{ClientContext, TopicPartitionList};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub(super) enum RebalanceEvent {
    Assigned(Vec<Tp>),
    /// Unassigned already (lost, or the consumer is closing).
    Revoked(Vec<Tp>),
    /// Held: the runner unassigns these once their running records end.
    Revoking(Vec<Tp>),
}

pub(super) struct RunnerContext {
    pub(super) events: Mutex<Vec<RebalanceEvent>>,
    pub(super) paused: AtomicBool,
    /// Whether revokes are held for running records (cleared when the runner stops, so that
    /// closing the consumer unassigns at once).
    pub(super) hold_revokes: AtomicBool,
    /// Set by librdkafka's global errors (e.g. every broker down), which need not surface as a
    /// consumer error; the stall watchdog counts them as trouble.
    pub(super) trouble: AtomicBool,
    /// The group state from librdkafka's statistics, for the stall watchdog.
    pub(super) group: Mutex<GroupSeen>,
    /// Exactly-once: assigned partitions start where the runner finds their committed offsets,
    /// looked up for at most this long, or until the runner stops (see [`super::start`]).
    pub(super) resolve_start: Option<Duration>,
    /// Partitions assigned (paused) whose committed offsets that lookup did not find: the
    /// runner exits for a restart rather than read them from a guessed position.
    pub(super) start_unknown: AtomicUsize,
    pub(super) stopping: CancellationToken,
}

/// The runner's consumer for `spec`, subscribed to `input_topic` in `group`. Offsets are stored
/// by the runner only (from checkpoints); exactly-once commits them inside transactions,
/// at-least-once lets librdkafka commit what was stored.
pub(super) fn subscribe(
    kafka: &KafkaSettings,
    spec: &ProcessorSpec,
    input_topic: &str,
    group: &str,
    stall_after: Duration,
    stopping: CancellationToken,
) -> Result<GroupConsumer, KafkaError> {
    let exactly_once = spec.guarantee == Guarantee::ExactlyOnce;
    let context = RunnerContext {
        events: Mutex::new(Vec::new()),
        paused: AtomicBool::new(false),
        hold_revokes: AtomicBool::new(true),
        trouble: AtomicBool::new(false),
        group: Mutex::new(GroupSeen::new(Instant::now())),
        resolve_start: exactly_once.then_some(stall_after / 2),
        start_unknown: AtomicUsize::new(0),
        stopping,
    };
    let consumer: StreamConsumer<RunnerContext> = client_config(kafka, &spec.name)
        .set("group.id", group)
        .set("enable.auto.commit", if exactly_once { "false" } else { "true" })
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("session.timeout.ms", kafka.session_timeout_ms.to_string())
        .set("heartbeat.interval.ms", "2000")
        .set("max.poll.interval.ms", "300000")
        .set("isolation.level", "read_committed")
        .set("queued.max.messages.kbytes", "16384")
        .set("topic.metadata.refresh.interval.ms", "5000")
        .set("statistics.interval.ms", check_interval(stall_after).as_millis().to_string())
        .create_with_context(context)?;
    let consumer = GroupConsumer(Some(consumer));
    consumer.subscribe(&[input_topic])?;
    Ok(consumer)
}

/// Pauses or resumes fetching for the whole assignment (and for partitions assigned later, see
/// the rebalance callback); returns `pause`.
pub(super) fn set_paused(consumer: &StreamConsumer<RunnerContext>, pause: bool) -> bool {
    consumer.context().paused.store(pause, AtomicOrdering::SeqCst);
    if let Ok(assignment) = consumer.assignment() {
        let r = if pause { consumer.pause(&assignment) } else { consumer.resume(&assignment) };
        if let Err(e) = r {
            tracing::warn!(error = %e, pause, "pause/resume failed");
        }
    }
    pause
}

pub(super) fn tps(list: &TopicPartitionList) -> Vec<Tp> {
    list.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect()
}

pub(super) fn tpl(list: &[Tp]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (topic, partition) in list {
        tpl.add_partition(topic, *partition);
    }
    tpl
}

impl RunnerContext {
    /// Exactly-once: an assignment's committed offsets were not found (see [`super::start`]).
    pub(super) fn start_stall(&self) -> Option<Stall> {
        let partitions = self.start_unknown.load(AtomicOrdering::SeqCst);
        let within = self.resolve_start?;
        (partitions > 0).then_some(Stall::StartOffsetsUnknown { partitions, within })
    }
}

impl ClientContext for RunnerContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.trouble.store(true, AtomicOrdering::SeqCst);
        tracing::error!("librdkafka: {error}: {reason}");
    }
    fn stats(&self, statistics: rdkafka::Statistics) {
        if let Some(g) = statistics.cgrp {
            self.group.lock().expect("lock").report(&g.state, &g.join_state, Instant::now());
        }
    }
}
impl ConsumerContext for RunnerContext {
    /// rdkafka's default rebalance, except that a revoke of partitions this member still owns is
    /// held (see [`super::revoke`]): the runner unassigns them once their running records end.
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let unknown = match self.resolve_start {
                    Some(within) => resolve_start_offsets(consumer, tpl, within, &self.stopping),
                    None => 0,
                };
                let assigned = if cooperative { consumer.incremental_assign(tpl) } else { consumer.assign(tpl) };
                if let Err(e) = assigned {
                    tracing::error!(error = %e, "assigning partitions failed");
                }
                if unknown > 0 && !self.stopping.is_cancelled() {
                    self.start_unknown.store(unknown, AtomicOrdering::SeqCst);
                }
                // librdkafka keeps a partition's pause flag across unassign/assign; set it to
                // what the runner wants now, or a partition paused before a rebalance stays paused.
                // Partitions without a known start are never fetched: the runner stops or exits.
                if self.paused.load(AtomicOrdering::SeqCst) || unknown > 0 {
                    let _ = consumer.pause(tpl);
                } else {
                    let _ = consumer.resume(tpl);
                }
                self.events.lock().expect("lock").push(RebalanceEvent::Assigned(tps(tpl)));
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS
                if cooperative && self.hold_revokes.load(AtomicOrdering::SeqCst) && !consumer.assignment_lost() =>
            {
                self.events.lock().expect("lock").push(RebalanceEvent::Revoking(tps(tpl)));
            }
            _ => {
                if err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS {
                    self.events.lock().expect("lock").push(RebalanceEvent::Revoked(tps(tpl)));
                } else {
                    tracing::error!(error = %RDKafkaErrorCode::from(err), "rebalance failed");
                }
                let unassigned = if cooperative { consumer.incremental_unassign(tpl) } else { consumer.unassign() };
                if let Err(e) = unassigned {
                    tracing::error!(error = %e, "unassigning partitions failed");
                }
            }
        }
    }
}

/// The runner's consumer. However the runner ends (an error, a panic, its task dropped), its
/// consumer's close (in the drop) revokes every partition through [`RunnerContext`]'s rebalance
/// and waits for the unassign call: a revoke held then would never end, and the drop would hang.
/// So revokes are not held from the drop on. The close also waits for the group coordinator
/// (librdkafka commits the stored offsets of an at-least-once consumer before it unassigns, and
/// leaves the group); when the coordinator is unreachable, as in the stalls the watchdog ends,
/// that wait has no end. So the close runs on a thread of its own and the drop waits for it at
/// most [`CLOSE_WAIT`]: a stalled processor still exits for its restart.
pub(super) struct GroupConsumer(pub(super) Option<StreamConsumer<RunnerContext>>);

/// How long dropping the runner waits for its consumer to close.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

impl std::ops::Deref for GroupConsumer {
    type Target = StreamConsumer<RunnerContext>;
    fn deref(&self) -> &Self::Target {
        self.0.as_ref().expect("the consumer until the drop")
    }
}

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        let Some(consumer) = self.0.take() else { return };
        consumer.context().hold_revokes.store(false, AtomicOrdering::SeqCst);
        let (closed_tx, closed_rx) = std::sync::mpsc::channel::<()>();
        let closing = std::thread::Builder::new().name("consumer-close".into()).spawn(move || {
            drop(consumer);
            let _ = closed_tx.send(());
        });
        if closing.is_err() {
            // No thread: the consumer closed here, unbounded, as the refused closure dropped.
            return;
        }
        if blocking(|| closed_rx.recv_timeout(CLOSE_WAIT)).is_err() {
            ConsumerCloseAbandoned { waited: CLOSE_WAIT }.emit();
        }
    }
}
