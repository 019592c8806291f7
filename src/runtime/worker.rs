//! The worker side of the runner: one spawned task per record runs it to a durable end
//! (processed, or dead-lettered), with retries, backoff and waits on unavailable dependencies,
//! and reports it done to the poll loop over a bounded channel.
//!
//! Invariants: a record is reported done only once every effect is durable; a cancelled one
//! (its partition handed over or lost while it ran, or the shutdown grace over; see
//! [`super::assignment`]) is reported as not finished, so its offset stays uncommitted; workers
//! never touch offsets.

use super::dlq::DeadLetter;
use super::runner::Tp;
use super::{Output, ProcessError, Processor, Publisher, RecordMeta, RunnerHealth};
use crate::avro::DecodeError;
use crate::catalog::ProcessorSpec;
use crate::events::{DeadLetterRefused, RecordDeadLettered, RecordRetrying};
use crate::kafka::{ProduceError, Producer};
use futures::FutureExt;
use rdkafka::message::{Headers, Message, OwnedMessage};
use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A record handed to a worker.
pub(super) struct Work {
    pub(super) msg: OwnedMessage,
    pub(super) generation: u64,
    /// Its partition's assignment's token (see [`super::assignment`]).
    pub(super) cancel: CancellationToken,
}

pub(super) struct Done {
    pub(super) tp: Tp,
    pub(super) offset: i64,
    pub(super) generation: u64,
    pub(super) key: Option<Vec<u8>>,
    /// Outputs held for the transaction (exactly-once only).
    pub(super) outputs: Vec<Output>,
    /// False when the record was cancelled before it reached a durable end: it frees its slot
    /// and counts as no longer running, but is not done (its offset is never stored).
    pub(super) finished: bool,
}

/// Everything a worker needs, shared.
pub(super) struct Shared<P: Processor> {
    pub(super) processor: Arc<P>,
    pub(super) spec: ProcessorSpec,
    pub(super) group: String,
    pub(super) dead_letter_topic: String,
    pub(super) producer: Producer,
    pub(super) health: Arc<RunnerHealth>,
    /// Exactly-once: outputs go into the record's transaction buffer.
    pub(super) transactional: bool,
}

pub(super) fn spawn_worker<P: Processor>(shared: Arc<Shared<P>>, work: Work, done_tx: mpsc::Sender<Done>) {
    let key = super::ordering::ordering_key(shared.spec.ordering, &work.msg);
    tokio::spawn(async move {
        let tp = (work.msg.topic().to_string(), work.msg.partition());
        let offset = work.msg.offset();
        let publisher = if shared.transactional {
            Publisher::Transactional(Arc::default())
        } else {
            Publisher::Direct(shared.producer.clone())
        };
        let finished = tokio::select! {
            _ = work.cancel.cancelled() => false,
            () = handle_record(&shared, &work.msg, &publisher) => true,
        };
        // A cancelled record is reported, so its slot is freed, but never done: its offset is
        // not stored, and its outputs (exactly-once) are dropped.
        let outputs = if finished { publisher.take() } else { Vec::new() };
        let _ = done_tx.send(Done { tp, offset, generation: work.generation, key, outputs, finished }).await;
    });
}

fn backoff(policy: &crate::catalog::RetryPolicy, attempt: u32) -> Duration {
    let base = policy.initial_backoff_ms.saturating_mul(1u64 << attempt.saturating_sub(1).min(20));
    let capped = base.min(policy.max_backoff_ms);
    // Full jitter over the upper half keeps retries of many records apart.
    let jitter = rand::random_range(capped / 2..=capped.max(1));
    Duration::from_millis(jitter)
}

fn meta_of(msg: &OwnedMessage, attempt: u32, publisher: &Publisher) -> RecordMeta {
    let headers = msg
        .headers()
        .map(|h| h.iter().map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec())).collect())
        .unwrap_or_default();
    RecordMeta {
        topic: msg.topic().to_string(),
        partition: msg.partition(),
        offset: msg.offset(),
        key: msg.key().map(<[u8]>::to_vec),
        headers,
        attempt,
        publisher: publisher.clone(),
    }
}

/// Runs one record to a durable end: processed, or dead-lettered.
async fn handle_record<P: Processor>(shared: &Shared<P>, msg: &OwnedMessage, publisher: &Publisher) {
    let spec = &shared.spec;
    let first_failure = chrono::Utc::now();
    // Decode at the edge; wait out an unreachable registry.
    let mut waits = 0u32;
    let input = loop {
        match shared.processor.decode(msg.payload()).await {
            Ok(input) => break input,
            Err(DecodeError::Poison { class, message }) => {
                let meta = meta_of(msg, 1, publisher);
                dead_letter(shared, &meta, msg, class, &message, 1, first_failure).await;
                return;
            }
            Err(DecodeError::Unavailable(m)) => {
                waits += 1;
                wait_unavailable(shared, "schema_registry", &m, waits).await;
            }
        }
    };
    let mut attempt = 1u32;
    let mut waits = 0u32;
    loop {
        let meta = meta_of(msg, attempt, publisher);
        // A handler that panics (a bug) fails its record for good: dead-lettered, so the
        // partition goes on, instead of a worker that never reports back.
        let processed = std::panic::AssertUnwindSafe(shared.processor.process(&input, &meta)).catch_unwind().await;
        let err = match processed.unwrap_or_else(|panic| Err(panicked(panic))) {
            Ok(()) => {
                recovered(shared);
                return;
            }
            Err(e) => e,
        };
        match &err {
            ProcessError::Unavailable { dependency, message } => {
                waits += 1;
                wait_unavailable(shared, dependency, message, waits).await;
            }
            ProcessError::Retryable { .. } if attempt < spec.retry.max_attempts => {
                let pause = backoff(&spec.retry, attempt);
                RecordRetrying { processor: &spec.name, attempt, backoff: pause, error: &err.to_string() }.emit();
                tokio::time::sleep(pause).await;
                attempt += 1;
            }
            _ => {
                dead_letter(shared, &meta, msg, err.class(), &err.message(), attempt, first_failure).await;
                // Record the final state; wait out unavailable dependencies, give up on others.
                let mut waits = 0u32;
                loop {
                    match shared.processor.dead_lettered(&input, &meta, &err).await {
                        Err(ProcessError::Unavailable { dependency, message }) => {
                            waits += 1;
                            wait_unavailable(shared, dependency, &message, waits).await;
                        }
                        Err(e) => {
                            tracing::error!(processor = %spec.name, error = %e, "recording dead-lettered state failed");
                            return;
                        }
                        Ok(()) => return,
                    }
                }
            }
        }
    }
}

/// A record reached a durable end: no dependency is waited on now (see [`wait_unavailable`]).
fn recovered<P: Processor>(shared: &Shared<P>) {
    shared.health.degraded.store(false, AtomicOrdering::Relaxed);
    shared.health.kafka_waiting.store(false, AtomicOrdering::Relaxed);
}

async fn wait_unavailable<P: Processor>(shared: &Shared<P>, dependency: &str, message: &str, waits: u32) {
    shared.health.degraded.store(true, AtomicOrdering::Relaxed);
    if dependency == "kafka" {
        shared.health.kafka_waiting.store(true, AtomicOrdering::Relaxed);
    }
    let pause = super::unavailable_pause(waits);
    if waits == 1 || waits.is_multiple_of(10) {
        tracing::warn!(processor = %shared.spec.name, dependency, error = message, waits, "dependency unavailable; waiting");
    }
    tokio::time::sleep(pause).await;
}

async fn dead_letter<P: Processor>(
    shared: &Shared<P>,
    meta: &RecordMeta,
    msg: &OwnedMessage,
    class: &str,
    message: &str,
    attempts: u32,
    first_failure: chrono::DateTime<chrono::Utc>,
) {
    let mut letter = DeadLetter {
        class: class.to_string(),
        message: message.to_string(),
        source_topic: meta.topic.clone(),
        partition: meta.partition,
        offset: meta.offset,
        group: shared.group.clone(),
        processor: shared.spec.name.clone(),
        attempts,
        first_failure,
        last_failure: chrono::Utc::now(),
        key: msg.key().map(<[u8]>::to_vec),
        value: msg.payload().map(<[u8]>::to_vec),
        headers: meta.headers.clone(),
        value_omitted: None,
    };
    let mut waits = 0u32;
    let written = loop {
        match letter.publish(&meta.publisher, &shared.dead_letter_topic).await {
            Ok(()) => break true,
            // Refused for itself (a record near the size limit, plus the letter's headers): sent
            // without the value, which stays at its source offset, so the partition goes on.
            Err(ProduceError::Rejected(e)) => {
                let with_value = letter.value.is_some();
                let (processor, topic, offset) = (&shared.spec.name, &meta.topic, meta.offset);
                DeadLetterRefused { processor, topic, offset, error: &e, with_value }.emit();
                if !with_value {
                    break false;
                }
                letter = letter.without_value(&e.to_string());
            }
            Err(e) => {
                waits += 1;
                wait_unavailable(shared, "kafka", &e.to_string(), waits).await;
            }
        }
    };
    // A durable end for the record: whatever waited before, nothing waits now.
    recovered(shared);
    if !written {
        return;
    }
    RecordDeadLettered {
        processor: &shared.spec.name,
        reason: class,
        message,
        topic: &meta.topic,
        partition: meta.partition,
        offset: meta.offset,
    }
    .emit();
}

/// The failure a handler's panic stands for: permanent, with the panic's message.
fn panicked(panic: Box<dyn std::any::Any + Send>) -> ProcessError {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into());
    ProcessError::Permanent { class: "panic".into(), message }
}
