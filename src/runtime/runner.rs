//! The consumer-group runner (quickwit's shape): one poll loop owns the consumer, the offsets
//! and the scheduler; workers run records and report completions over a bounded channel. The
//! consumer's callbacks and close are in [`super::consumer`], the partition assignments in
//! [`super::assignment`].
//!
//! Invariants:
//! - the poll loop never awaits a task, so long tasks never cost group membership; when more
//!   than `max_buffered` records are held, or more than `max_buffered_bytes` wait to start, it
//!   pauses the assignment (and keeps polling);
//! - offsets are stored (and auto-committed by librdkafka, and on revoke and shutdown) only
//!   from [`PartitionOffsets`] checkpoints: after every effect of a record is durable;
//! - on revoke, unstarted records of the revoked partitions are dropped, and the partitions are
//!   handed over once their running records end (see [`super::revoke`]; within a grace period,
//!   after which those records are cancelled and the new owner redelivers them);
//! - on shutdown: stop fetching, finish in-flight work within the grace period, commit, leave;
//! - a stall that lasts the whole window (see [`super::watchdog`]) ends the runner with
//!   [`RunnerError::Stalled`], so that the process exits and its supervisor restarts it; so does,
//!   in exactly-once mode, an assignment whose committed offsets could not be read (see
//!   [`super::start`]): its partitions are never read from a guessed position.

use super::assignment::{forget, Assignment, Assignments, Generations};
use super::consumer::{tpl, GroupConsumer, RebalanceEvent, RunnerContext};
use super::ordering::ordering_key;
use super::revoke::{Ready, Revokes};
use super::txn::Transactions;
use super::watchdog::{check_interval, GroupSeen, Stall, Watchdog};
use super::worker::{spawn_worker, Done, Shared, Work};
use super::{Processor, Scheduler};
use crate::catalog::{Guarantee, ProcessorSpec};
use crate::events::{processor_gauges, PartitionsHandedOver, ProcessorStalled};
use crate::kafka::{client_config, Producer};
use crate::settings::KafkaSettings;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("kafka consumer error: {0}")]
    Kafka(#[from] KafkaError),
    /// The processor has lost its way (see [`super::watchdog`]): it exits so that its
    /// supervisor restarts it; nothing past the last checkpoint is lost.
    #[error("processor stalled for {after:?}: {stall}")]
    Stalled { stall: Stall, after: Duration },
    /// A thread or runtime the processor needs could not be started.
    #[error("processor could not start: {0}")]
    Start(std::io::Error),
}

/// What the runner reports to health probes.
#[derive(Debug, Default)]
pub struct RunnerHealth {
    pub assigned: AtomicUsize,
    pub in_flight: AtomicUsize,
    /// Records held: running, and waiting to start.
    pub held: AtomicUsize,
    /// Set while a dependency is unavailable (records are waiting on it).
    pub degraded: AtomicBool,
    /// Set while records wait for Kafka to take their outputs; cleared when one succeeds.
    pub kafka_waiting: AtomicBool,
    pub started: AtomicBool,
    /// Partitions revoked but held until their running records end (see `runtime::revoke`).
    pub revoking: AtomicUsize,
}

pub(super) type Tp = (String, i32);

/// A processor's spec with its names resolved (namespace applied).
pub struct RunnerConfig {
    pub spec: ProcessorSpec,
    pub input_topic: String,
    pub group: String,
    pub dead_letter_topic: String,
    /// How long a stall must last before the processor exits for a restart.
    pub stall_after: Duration,
}

/// Runs `processor` as declared by `spec` until `shutdown` fires.
pub async fn run_processor<P: Processor>(
    kafka: &KafkaSettings,
    config: RunnerConfig,
    producer: Producer,
    processor: Arc<P>,
    health: Arc<RunnerHealth>,
    shutdown: CancellationToken,
) -> Result<(), RunnerError> {
    let RunnerConfig { spec, input_topic, group, dead_letter_topic, stall_after } = config;
    let context = RunnerContext {
        events: Mutex::new(Vec::new()),
        paused: AtomicBool::new(false),
        hold_revokes: AtomicBool::new(true),
        trouble: AtomicBool::new(false),
        group: Mutex::new(GroupSeen::new(Instant::now())),
        resolve_start: (spec.guarantee == Guarantee::ExactlyOnce).then_some(stall_after / 2),
        start_unknown: AtomicUsize::new(0),
        stopping: shutdown.clone(),
    };
    let consumer: StreamConsumer<RunnerContext> = client_config(kafka, &spec.name)
        .set("group.id", &group)
        // Exactly-once commits offsets inside transactions; at-least-once lets librdkafka
        // commit the offsets stored from checkpoints.
        .set("enable.auto.commit", if spec.guarantee == Guarantee::AtLeastOnce { "true" } else { "false" })
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
    consumer.subscribe(&[&input_topic])?;
    health.started.store(true, AtomicOrdering::SeqCst);
    tracing::info!(processor = %spec.name, topic = %input_topic, group = %group, "processor started");

    let (in_flight_gauge, paused_gauge, consumed) = processor_gauges(&spec.name);
    let workers_cancel = CancellationToken::new();
    let shared = Arc::new(Shared {
        processor,
        spec: spec.clone(),
        group,
        dead_letter_topic,
        producer,
        health: health.clone(),
        transactional: spec.guarantee == Guarantee::ExactlyOnce,
    });
    let mut txn = match spec.guarantee {
        Guarantee::ExactlyOnce => Some(Transactions::new(kafka, &spec.name, &shared.group)?),
        Guarantee::AtLeastOnce => None,
    };
    let mut txn_tick = tokio::time::interval(Duration::from_millis(100));
    let group_label = shared.group.clone();
    let (done_tx, mut done_rx) = mpsc::channel::<Done>(spec.max_buffered * 2);
    let mut scheduler: Scheduler<Vec<u8>, Work> = Scheduler::new(spec.concurrency).weighing(|w| record_bytes(&w.msg));
    let mut offsets = Assignments::new();
    let mut gens = Generations::new(workers_cancel.clone());
    let mut paused = false;
    let mut lag_tick = tokio::time::interval(check_interval(stall_after));
    let mut watchdog = Watchdog::new(stall_after, Instant::now());
    // A held revoke ends within the shutdown grace, and well inside the stall window (the group
    // is not settled meanwhile).
    let mut revokes = Revokes::new(Duration::from_millis(spec.timeouts.shutdown_grace_ms).min(stall_after / 2));

    loop {
        while let Some((_, work)) = scheduler.start_next() {
            revokes.started((work.msg.topic().to_string(), work.msg.partition()));
            spawn_worker(shared.clone(), work, done_tx.clone());
        }
        in_flight_gauge.set(scheduler.running() as i64);
        health.in_flight.store(scheduler.running(), AtomicOrdering::Relaxed);
        let (held, bytes) = (scheduler.held(), scheduler.queued_bytes());
        health.held.store(held, AtomicOrdering::Relaxed);
        health.revoking.store(revokes.partitions(), AtomicOrdering::Relaxed);
        if !paused && (held >= spec.max_buffered || bytes >= spec.max_buffered_bytes) {
            paused = set_paused(&consumer, true);
        } else if paused && held <= spec.max_buffered / 2 && bytes <= spec.max_buffered_bytes / 2 {
            paused = set_paused(&consumer, false);
        }
        paused_gauge.set(paused as i64);
        let revoke_deadline = revokes.next_deadline();

        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(revoke_deadline.unwrap_or_else(Instant::now).into()), if revoke_deadline.is_some() => {}
            _ = lag_tick.tick() => {
                record_lag(&consumer, &offsets, &group_label);
                let now = Instant::now();
                if consumer.context().trouble.swap(false, AtomicOrdering::SeqCst) {
                    watchdog.trouble(now);
                }
                let waiting = health.kafka_waiting.load(AtomicOrdering::Relaxed);
                let group = consumer.context().group.lock().expect("lock").clone();
                if let Some(stall) = watchdog.check(now, waiting, &group) {
                    ProcessorStalled { processor: &spec.name, stall: &stall, after: stall_after }.emit();
                    return Err(RunnerError::Stalled { stall, after: stall_after });
                }
            }
            _ = txn_tick.tick(), if txn.is_some() => {
                // A revoke handled inside the last poll is applied first, so its partitions'
                // outputs and offsets are never committed after they went to another member.
                apply_rebalances(&consumer, &mut offsets, &mut scheduler, &mut gens, &health, txn.as_mut(), &mut revokes);
                if let Some(t) = txn.as_mut() {
                    if commit_transaction(t, &consumer, &offsets, &spec).await? {
                        watchdog.committed();
                    } else {
                        watchdog.commit_failed(Instant::now());
                    }
                }
            }
            Some(done) = done_rx.recv() => {
                watchdog.finished(Instant::now());
                complete(&consumer, &mut offsets, &mut scheduler, &mut revokes, &spec, done, txn.as_mut());
            }
            msg = consumer.recv() => {
                apply_rebalances(&consumer, &mut offsets, &mut scheduler, &mut gens, &health, txn.as_mut(), &mut revokes);
                match msg {
                    Ok(m) => {
                        watchdog.received(Instant::now());
                        consumed.inc();
                        let m = m.detach();
                        let tp = (m.topic().to_string(), m.partition());
                        if revokes.is_revoking(&tp) {
                            // Fetched before the revoke; its new owner reads it again.
                            continue;
                        }
                        let entry = offsets.entry(tp).or_insert_with(|| gens.next());
                        entry.tracker.register(m.offset());
                        let key = ordering_key(spec.ordering, &m);
                        let work = Work { msg: m, generation: entry.generation, cancel: entry.cancel.clone() };
                        scheduler.push(key, work);
                    }
                    Err(e) => {
                        watchdog.trouble(Instant::now());
                        tracing::warn!(processor = %spec.name, error = %e, "consumer error");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
        // Set by an assign inside a poll of `recv`: checked after every turn, before anything
        // could resume those partitions; records not started are left to the next owner.
        if let Some(stall) = consumer.context().start_stall() {
            ProcessorStalled { processor: &spec.name, stall: &stall, after: stall_after }.emit();
            return Err(RunnerError::Stalled { stall, after: stall_after });
        }
        apply_rebalances(&consumer, &mut offsets, &mut scheduler, &mut gens, &health, txn.as_mut(), &mut revokes);
        hand_over(&consumer, &mut offsets, &mut revokes, txn.as_mut(), &spec, false).await?;
    }

    // Nothing polls for a held revoke's records from here on.
    consumer.context().hold_revokes.store(false, AtomicOrdering::SeqCst);
    // Shutdown: drop what has not started, let in-flight work finish within the grace period.
    let dropped = scheduler.discard(|_| true);
    let grace = Duration::from_millis(spec.timeouts.shutdown_grace_ms);
    tracing::info!(processor = %spec.name, in_flight = scheduler.running(), dropped, "processor stopping");
    let drain = async {
        while scheduler.running() > 0 {
            match done_rx.recv().await {
                Some(done) => {
                    complete(&consumer, &mut offsets, &mut scheduler, &mut revokes, &spec, done, txn.as_mut())
                }
                None => break,
            }
        }
    };
    if tokio::time::timeout(grace, drain).await.is_err() {
        tracing::warn!(processor = %spec.name, "grace period over; cancelling in-flight records (they will be redelivered)");
        workers_cancel.cancel();
    }
    apply_rebalances(&consumer, &mut offsets, &mut scheduler, &mut gens, &health, txn.as_mut(), &mut revokes);
    hand_over(&consumer, &mut offsets, &mut revokes, txn.as_mut(), &spec, true).await?;
    if let Some(t) = txn.as_mut() {
        commit_transaction(t, &consumer, &offsets, &spec).await?;
    }
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) | Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => tracing::warn!(processor = %spec.name, error = %e, "final commit failed"),
    }
    in_flight_gauge.set(0);
    consumer.unsubscribe();
    tracing::info!(processor = %spec.name, "processor stopped");
    Ok(())
}

/// Commits the pending transaction; an abortable failure is retried on the next tick, a fatal
/// one (this producer was fenced) stops the processor.
async fn commit_transaction(
    t: &mut Transactions,
    consumer: &StreamConsumer<RunnerContext>,
    offsets: &Assignments,
    spec: &ProcessorSpec,
) -> Result<bool, RunnerError> {
    match t.commit(consumer, offsets).await {
        Ok(_) => Ok(true),
        Err(KafkaError::Transaction(e)) if e.is_fatal() => {
            tracing::error!(processor = %spec.name, error = %e, "transactional producer fenced or failed");
            Err(RunnerError::Kafka(KafkaError::Transaction(e)))
        }
        Err(e) => {
            tracing::warn!(processor = %spec.name, error = %e, "transaction aborted; retrying");
            Ok(false)
        }
    }
}

/// Publishes `devcycle_consumer_lag` for the assigned partitions: the broker's end offset (as
/// last seen by librdkafka, no network call) minus the commit position.
fn record_lag(consumer: &StreamConsumer<RunnerContext>, offsets: &Assignments, group: &str) {
    for ((topic, partition), Assignment { tracker, .. }) in offsets {
        let Ok(c_topic) = std::ffi::CString::new(topic.as_str()) else { continue };
        let (mut low, mut high) = (-1i64, -1i64);
        // SAFETY: a valid client handle, a NUL-terminated topic name and two out-pointers; the
        // call reads librdkafka's cached watermarks and does not block.
        let err = unsafe {
            rdkafka::bindings::rd_kafka_get_watermark_offsets(
                consumer.client().native_ptr(),
                c_topic.as_ptr(),
                *partition,
                &mut low,
                &mut high,
            )
        };
        if err != rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || high < 0 {
            continue;
        }
        let position = tracker.position().unwrap_or(high).max(low);
        crate::events::metrics()
            .consumer_lag
            .get_or_create(&crate::events::LagLabels {
                group: group.to_string(),
                topic: topic.clone(),
                partition: *partition,
            })
            .set((high - position).max(0));
    }
}

/// What a held record weighs: its key and value.
fn record_bytes(m: &rdkafka::message::OwnedMessage) -> usize {
    m.payload().map_or(0, <[u8]>::len) + m.key().map_or(0, <[u8]>::len)
}

fn set_paused(consumer: &StreamConsumer<RunnerContext>, pause: bool) -> bool {
    consumer.context().paused.store(pause, AtomicOrdering::SeqCst);
    if let Ok(assignment) = consumer.assignment() {
        let r = if pause { consumer.pause(&assignment) } else { consumer.resume(&assignment) };
        if let Err(e) = r {
            tracing::warn!(error = %e, pause, "pause/resume failed");
        }
    }
    pause
}

/// Hands over the held revokes that are ready (see [`super::revoke`]): exactly-once commits the
/// finished records' outputs and offsets first; at-least-once has stored them, and librdkafka
/// commits stored offsets when it unassigns.
async fn hand_over(
    consumer: &StreamConsumer<RunnerContext>,
    offsets: &mut Assignments,
    revokes: &mut Revokes,
    mut txn: Option<&mut Transactions>,
    spec: &ProcessorSpec,
    all: bool,
) -> Result<(), RunnerError> {
    if revokes.is_empty() {
        return Ok(());
    }
    let ready = revokes.take_ready(Instant::now(), all);
    if ready.is_empty() {
        return Ok(());
    }
    if let Some(t) = txn.as_deref_mut() {
        commit_transaction(t, consumer, offsets, spec).await?;
    }
    for Ready { revoke, abandoned } in ready {
        forget_partitions(offsets, txn.as_deref_mut(), &revoke.list);
        if let Err(e) = consumer.incremental_unassign(&tpl(&revoke.list)) {
            tracing::warn!(processor = %spec.name, error = %e, "unassigning revoked partitions failed");
        }
        PartitionsHandedOver {
            processor: &spec.name,
            partitions: revoke.list.len(),
            waited: revoke.since.elapsed(),
            abandoned,
        }
        .emit();
    }
    Ok(())
}

/// Forgets the offsets (and exactly-once: the held outputs) of partitions no longer assigned
/// here, and cancels their records still running; their new owner reads their records again
/// from the last commit.
fn forget_partitions(offsets: &mut Assignments, mut txn: Option<&mut Transactions>, list: &[Tp]) {
    for tp in list {
        forget(offsets, tp);
        if let Some(t) = txn.as_deref_mut() {
            t.forget(tp);
        }
    }
}

/// Drops the records of `list`'s partitions not yet started (their new owner reads them again).
fn drop_unstarted(scheduler: &mut Scheduler<Vec<u8>, Work>, list: &[Tp]) -> usize {
    scheduler.discard(|w| list.iter().any(|(t, p)| w.msg.topic() == t && w.msg.partition() == *p))
}

fn apply_rebalances(
    consumer: &StreamConsumer<RunnerContext>,
    offsets: &mut Assignments,
    scheduler: &mut Scheduler<Vec<u8>, Work>,
    gens: &mut Generations,
    health: &RunnerHealth,
    mut txn: Option<&mut Transactions>,
    revokes: &mut Revokes,
) {
    let events = std::mem::take(&mut *consumer.context().events.lock().expect("lock"));
    for event in events {
        match event {
            RebalanceEvent::Assigned(list) => {
                for tp in list {
                    offsets.entry(tp).or_insert_with(|| gens.next());
                }
            }
            RebalanceEvent::Revoked(list) => {
                // Lost while held: those partitions are gone already, and may come back.
                revokes.forget(&list);
                forget_partitions(offsets, txn.as_deref_mut(), &list);
                let dropped = drop_unstarted(scheduler, &list);
                tracing::info!(partitions = list.len(), dropped, "partitions revoked");
            }
            RebalanceEvent::Revoking(list) => {
                let dropped = drop_unstarted(scheduler, &list);
                tracing::info!(
                    partitions = list.len(),
                    dropped,
                    "partitions revoked; waiting for their running records"
                );
                revokes.hold(list, Instant::now());
            }
        }
    }
    health.assigned.store(offsets.len(), AtomicOrdering::Relaxed);
}

fn complete(
    consumer: &StreamConsumer<RunnerContext>,
    offsets: &mut Assignments,
    scheduler: &mut Scheduler<Vec<u8>, Work>,
    revokes: &mut Revokes,
    spec: &ProcessorSpec,
    done: Done,
    txn: Option<&mut Transactions>,
) {
    scheduler.finish(done.key.as_ref());
    revokes.finished(&done.tp);
    if !done.finished {
        // Cancelled (its partition went to another member, or the shutdown grace is over):
        // not done, so its offset is never stored; the partition's owner runs it again.
        return;
    }
    let Some(Assignment { generation, tracker, .. }) = offsets.get_mut(&done.tp) else { return };
    if *generation != done.generation {
        return;
    }
    if let Some(t) = txn {
        // Exactly-once: the outputs and the offset are committed by the next transaction.
        t.hold(done.tp.clone(), done.offset, done.outputs);
        tracker.complete(done.offset);
        return;
    }
    if let Some(position) = tracker.complete(done.offset) {
        let mut tpl = TopicPartitionList::new();
        if tpl.add_partition_offset(&done.tp.0, done.tp.1, Offset::Offset(position)).is_ok() {
            if let Err(e) = consumer.store_offsets(&tpl) {
                tracing::debug!(processor = %spec.name, error = %e, "offset not stored (partition no longer assigned)");
            }
        }
    }
}
