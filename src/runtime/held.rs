//! What the runner's poll loop holds (see [`super::runner`]): the partition assignments with
//! their offsets, the records held in the scheduler, the revokes held for running records and,
//! exactly-once, the open transaction. Fetched records, completions, rebalances and hand-overs
//! change them here, and only from the poll loop.
//!
//! Invariants:
//! - an offset is stored (at-least-once) or put in the transaction (exactly-once) only for a
//!   record that finished, of the partition's current assignment, and only up to the
//!   partition's checkpoint (see [`super::PartitionOffsets`]);
//! - a partition revoked or lost has its records not started dropped and its running records
//!   cancelled (see [`super::assignment`]); its new owner reads them again from the last commit;
//! - exactly-once commits the finished records' outputs and offsets before it hands a partition
//!   over, so nothing is committed for a partition after it went to another member.

use super::assignment::{forget, Assignment, Assignments, Generations};
use super::consumer::{tpl, RebalanceEvent, RunnerContext};
use super::ordering::ordering_key;
use super::revoke::{Ready, Revokes};
use super::runner::{RunnerError, RunnerHealth, Tp};
use super::txn::Transactions;
use super::worker::{Done, Work};
use super::Scheduler;
use crate::catalog::Ordering as RecordOrdering;
use crate::events::PartitionsHandedOver;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::Arc;
use std::time::Instant;

type RunnerConsumer = StreamConsumer<RunnerContext>;

pub(super) struct Held {
    pub offsets: Assignments,
    pub scheduler: Scheduler<Vec<u8>, Work>,
    pub revokes: Revokes,
    /// Exactly-once only.
    pub txn: Option<Transactions>,
    gens: Generations,
    ordering: RecordOrdering,
    processor: String,
    health: Arc<RunnerHealth>,
}

impl Held {
    pub fn new(
        scheduler: Scheduler<Vec<u8>, Work>,
        revokes: Revokes,
        txn: Option<Transactions>,
        gens: Generations,
        ordering: RecordOrdering,
        processor: &str,
        health: Arc<RunnerHealth>,
    ) -> Held {
        Held {
            offsets: Assignments::new(),
            scheduler,
            revokes,
            txn,
            gens,
            ordering,
            processor: processor.to_string(),
            health,
        }
    }

    /// Takes a fetched record: registers its offset with its partition's assignment and queues
    /// it, unless its partition is being handed over (fetched before the revoke: its new owner
    /// reads it again).
    pub fn push(&mut self, m: OwnedMessage) {
        let tp = (m.topic().to_string(), m.partition());
        if self.revokes.is_revoking(&tp) {
            return;
        }
        let entry = self.offsets.entry(tp).or_insert_with(|| self.gens.next());
        entry.tracker.register(m.offset());
        let key = ordering_key(self.ordering, &m);
        let work = Work { msg: m, generation: entry.generation, cancel: entry.cancel.clone() };
        self.scheduler.push(key, work);
    }

    /// Applies what the consumer's rebalance callbacks recorded since the last call.
    pub fn apply_rebalances(&mut self, consumer: &RunnerConsumer) {
        let events = std::mem::take(&mut *consumer.context().events.lock().expect("lock"));
        for event in events {
            match event {
                RebalanceEvent::Assigned(list) => {
                    for tp in list {
                        self.offsets.entry(tp).or_insert_with(|| self.gens.next());
                    }
                }
                RebalanceEvent::Revoked(list) => {
                    // Lost while held: those partitions are gone already, and may come back.
                    self.revokes.forget(&list);
                    self.forget_partitions(&list);
                    let dropped = self.drop_unstarted(&list);
                    tracing::info!(partitions = list.len(), dropped, "partitions revoked");
                }
                RebalanceEvent::Revoking(list) => {
                    let dropped = self.drop_unstarted(&list);
                    tracing::info!(
                        partitions = list.len(),
                        dropped,
                        "partitions revoked; waiting for their running records"
                    );
                    self.revokes.hold(list, Instant::now());
                }
            }
        }
        self.health.assigned.store(self.offsets.len(), AtomicOrdering::Relaxed);
    }

    /// A worker reported its record: it frees its slot; when finished, its offset counts
    /// towards its partition's checkpoint.
    pub fn complete(&mut self, consumer: &RunnerConsumer, done: Done) {
        self.scheduler.finish(done.key.as_ref());
        self.revokes.finished(&done.tp);
        if !done.finished {
            // Cancelled (its partition went to another member, or the shutdown grace is over):
            // not done, so its offset is never stored; the partition's owner runs it again.
            return;
        }
        let Some(Assignment { generation, tracker, .. }) = self.offsets.get_mut(&done.tp) else { return };
        if *generation != done.generation {
            return;
        }
        if let Some(t) = self.txn.as_mut() {
            // Exactly-once: the outputs and the offset are committed by the next transaction.
            t.hold(done.tp.clone(), done.offset, done.outputs);
            tracker.complete(done.offset);
            return;
        }
        if let Some(position) = tracker.complete(done.offset) {
            let mut tpl = TopicPartitionList::new();
            if tpl.add_partition_offset(&done.tp.0, done.tp.1, Offset::Offset(position)).is_ok() {
                if let Err(e) = consumer.store_offsets(&tpl) {
                    tracing::debug!(processor = %self.processor, error = %e, "offset not stored (partition no longer assigned)");
                }
            }
        }
    }

    /// Exactly-once: commits the open transaction (true when it committed; always true without
    /// one). An abortable failure is retried on the next tick; a fatal one (this producer was
    /// fenced) stops the processor.
    pub async fn commit_transaction(&mut self, consumer: &RunnerConsumer) -> Result<bool, RunnerError> {
        let Some(t) = self.txn.as_mut() else { return Ok(true) };
        match t.commit(consumer, &self.offsets).await {
            Ok(_) => Ok(true),
            Err(KafkaError::Transaction(e)) if e.is_fatal() => {
                tracing::error!(processor = %self.processor, error = %e, "transactional producer fenced or failed");
                Err(RunnerError::Kafka(KafkaError::Transaction(e)))
            }
            Err(e) => {
                tracing::warn!(processor = %self.processor, error = %e, "transaction aborted; retrying");
                Ok(false)
            }
        }
    }

    /// Hands over the held revokes that are ready (all of them with `all`; see
    /// [`super::revoke`]): exactly-once commits the finished records' outputs and offsets first;
    /// at-least-once has stored them, and librdkafka commits stored offsets when it unassigns.
    pub async fn hand_over(&mut self, consumer: &RunnerConsumer, all: bool) -> Result<(), RunnerError> {
        if self.revokes.is_empty() {
            return Ok(());
        }
        let ready = self.revokes.take_ready(Instant::now(), all);
        if ready.is_empty() {
            return Ok(());
        }
        self.commit_transaction(consumer).await?;
        for Ready { revoke, abandoned } in ready {
            self.forget_partitions(&revoke.list);
            if let Err(e) = consumer.incremental_unassign(&tpl(&revoke.list)) {
                tracing::warn!(processor = %self.processor, error = %e, "unassigning revoked partitions failed");
            }
            PartitionsHandedOver {
                processor: &self.processor,
                partitions: revoke.list.len(),
                waited: revoke.since.elapsed(),
                abandoned,
            }
            .emit();
        }
        Ok(())
    }

    /// Forgets the offsets (and exactly-once: the held outputs) of partitions no longer
    /// assigned here, and cancels their records still running.
    fn forget_partitions(&mut self, list: &[Tp]) {
        for tp in list {
            forget(&mut self.offsets, tp);
            if let Some(t) = self.txn.as_mut() {
                t.forget(tp);
            }
        }
    }

    /// Drops the records of `list`'s partitions not yet started.
    fn drop_unstarted(&mut self, list: &[Tp]) -> usize {
        self.scheduler.discard(|w| list.iter().any(|(t, p)| w.msg.topic() == t && w.msg.partition() == *p))
    }
}
