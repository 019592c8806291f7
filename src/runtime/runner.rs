//! The consumer-group runner (quickwit's shape): one poll loop owns the consumer, the offsets
//! and the scheduler; workers run records and report completions over a bounded channel. The
//! consumer's configuration, callbacks and close are in [`super::consumer`]; what the loop
//! holds (assignments, offsets, held records, revokes, the transaction) and how completions and
//! rebalances change it are in [`super::held`].
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

use super::assignment::{Assignment, Assignments, Generations};
use super::consumer::{set_paused, subscribe, RunnerContext};
use super::held::Held;
use super::revoke::Revokes;
use super::txn::Transactions;
use super::watchdog::{check_interval, Stall, Watchdog};
use super::worker::{spawn_worker, Done, Shared};
use super::{Processor, Scheduler};
use crate::catalog::{Guarantee, ProcessorSpec};
use crate::events::{processor_gauges, ProcessorStalled};
use crate::kafka::Producer;
use crate::settings::KafkaSettings;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Arc;
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
    let consumer = subscribe(kafka, &spec, &input_topic, &group, stall_after, shutdown.clone())?;
    health.started.store(true, AtomicOrdering::SeqCst);
    tracing::info!(processor = %spec.name, topic = %input_topic, group = %group, "processor started");

    let (in_flight_gauge, paused_gauge, consumed) = processor_gauges(&spec.name);
    let workers_cancel = CancellationToken::new();
    let group_label = group.clone();
    let txn = match spec.guarantee {
        Guarantee::ExactlyOnce => Some(Transactions::new(kafka, &spec.name, &group)?),
        Guarantee::AtLeastOnce => None,
    };
    let shared = Arc::new(Shared {
        processor,
        spec: spec.clone(),
        group,
        dead_letter_topic,
        producer,
        health: health.clone(),
        transactional: spec.guarantee == Guarantee::ExactlyOnce,
    });
    let (done_tx, mut done_rx) = mpsc::channel::<Done>(spec.max_buffered * 2);
    let mut held = Held::new(
        Scheduler::new(spec.concurrency).weighing(|w| record_bytes(&w.msg)),
        // A held revoke ends within the shutdown grace, and well inside the stall window (the
        // group is not settled meanwhile).
        Revokes::new(Duration::from_millis(spec.timeouts.shutdown_grace_ms).min(stall_after / 2)),
        txn,
        Generations::new(workers_cancel.clone()),
        spec.ordering,
        &spec.name,
        health.clone(),
    );
    let mut txn_tick = tokio::time::interval(Duration::from_millis(100));
    let mut paused = false;
    let mut lag_tick = tokio::time::interval(check_interval(stall_after));
    let mut watchdog = Watchdog::new(stall_after, Instant::now());

    loop {
        while let Some((_, work)) = held.scheduler.start_next() {
            held.revokes.started((work.msg.topic().to_string(), work.msg.partition()));
            spawn_worker(shared.clone(), work, done_tx.clone());
        }
        let scheduler = &held.scheduler;
        in_flight_gauge.set(scheduler.running() as i64);
        health.in_flight.store(scheduler.running(), AtomicOrdering::Relaxed);
        let (count, bytes) = (scheduler.held(), scheduler.queued_bytes());
        health.held.store(count, AtomicOrdering::Relaxed);
        health.revoking.store(held.revokes.partitions(), AtomicOrdering::Relaxed);
        if !paused && (count >= spec.max_buffered || bytes >= spec.max_buffered_bytes) {
            paused = set_paused(&consumer, true);
        } else if paused && count <= spec.max_buffered / 2 && bytes <= spec.max_buffered_bytes / 2 {
            paused = set_paused(&consumer, false);
        }
        paused_gauge.set(paused as i64);
        let revoke_deadline = held.revokes.next_deadline();

        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(revoke_deadline.unwrap_or_else(Instant::now).into()), if revoke_deadline.is_some() => {}
            _ = lag_tick.tick() => {
                record_lag(&consumer, &held.offsets, &group_label);
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
            _ = txn_tick.tick(), if held.txn.is_some() => {
                // A revoke handled inside the last poll is applied first, so its partitions'
                // outputs and offsets are never committed after they went to another member.
                held.apply_rebalances(&consumer);
                if held.commit_transaction(&consumer).await? {
                    watchdog.committed();
                } else {
                    watchdog.commit_failed(Instant::now());
                }
            }
            Some(done) = done_rx.recv() => {
                watchdog.finished(Instant::now());
                held.complete(&consumer, done);
            }
            msg = consumer.recv() => {
                held.apply_rebalances(&consumer);
                match msg {
                    Ok(m) => {
                        watchdog.received(Instant::now());
                        consumed.inc();
                        held.push(m.detach());
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
        held.apply_rebalances(&consumer);
        held.hand_over(&consumer, false).await?;
    }

    // Nothing polls for a held revoke's records from here on.
    consumer.context().hold_revokes.store(false, AtomicOrdering::SeqCst);
    // Shutdown: drop what has not started, let in-flight work finish within the grace period.
    let dropped = held.scheduler.discard(|_| true);
    let grace = Duration::from_millis(spec.timeouts.shutdown_grace_ms);
    tracing::info!(processor = %spec.name, in_flight = held.scheduler.running(), dropped, "processor stopping");
    let drain = async {
        while held.scheduler.running() > 0 {
            match done_rx.recv().await {
                Some(done) => held.complete(&consumer, done),
                None => break,
            }
        }
    };
    if tokio::time::timeout(grace, drain).await.is_err() {
        tracing::warn!(processor = %spec.name, "grace period over; cancelling in-flight records (they will be redelivered)");
        workers_cancel.cancel();
    }
    held.apply_rebalances(&consumer);
    held.hand_over(&consumer, true).await?;
    held.commit_transaction(&consumer).await?;
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) | Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => tracing::warn!(processor = %spec.name, error = %e, "final commit failed"),
    }
    in_flight_gauge.set(0);
    consumer.unsubscribe();
    tracing::info!(processor = %spec.name, "processor stopped");
    Ok(())
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
