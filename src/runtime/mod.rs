//! The processor runtime: a consumer-group runner that owns offsets, pausing, retries and dead
//! letters, and the one [`Processor`] trait that handlers implement.
//!
//! Invariants: handlers see decoded, validated inputs and never touch offsets; a record's offset
//! is stored for commit only after the handler returned `Ok` (every effect durable) or the record
//! was dead-lettered, and never past an unfinished record of the same partition.

mod assignment;
mod consumer;
pub mod dlq;
mod held;
#[cfg(test)]
mod lost_tests;
mod offsets;
mod ordering;
mod publish;
mod revoke;
mod runner;
mod scheduler;
#[cfg(test)]
mod stall_tests;
mod start;
mod txn;
pub mod watchdog;
mod worker;

pub use dlq::DeadLetter;
pub use offsets::PartitionOffsets;
pub use publish::{Output, Publisher};
pub use runner::{run_processor, RunnerConfig, RunnerError, RunnerHealth};
pub use scheduler::Scheduler;

use crate::avro::DecodeError;
use async_trait::async_trait;

/// How long to wait before trying an unavailable dependency again, after `waits` waits: 200 ms
/// doubling to 3 s.
pub fn unavailable_pause(waits: u32) -> std::time::Duration {
    std::time::Duration::from_millis((100u64 << waits.min(5)).min(3000))
}

/// Where a record came from, and its Kafka metadata, as handlers may read it.
#[derive(Debug, Clone)]
pub struct RecordMeta {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// Attempt number for this delivery, starting at 1.
    pub attempt: u32,
    /// Where the handler publishes its output records (direct, or the record's transaction).
    pub publisher: Publisher,
}

impl RecordMeta {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

/// What a handler's failure means to the runner.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProcessError {
    /// Worth another attempt (counted against the retry policy), then dead-lettered.
    #[error("{class}: {message}")]
    Retryable { class: String, message: String },
    /// Can never succeed: dead-letter at once.
    #[error("{class}: {message}")]
    Permanent { class: String, message: String },
    /// A dependency (Postgres, Redis, Kafka, the registry) is down: wait and try again without
    /// counting an attempt; the runner applies backpressure meanwhile.
    #[error("{dependency} unavailable: {message}")]
    Unavailable { dependency: &'static str, message: String },
}

impl ProcessError {
    pub fn class(&self) -> &str {
        match self {
            ProcessError::Retryable { class, .. } | ProcessError::Permanent { class, .. } => class,
            ProcessError::Unavailable { dependency, .. } => dependency,
        }
    }
    pub fn message(&self) -> String {
        match self {
            ProcessError::Retryable { message, .. } | ProcessError::Permanent { message, .. } => message.clone(),
            ProcessError::Unavailable { message, .. } => message.clone(),
        }
    }
}

impl From<crate::db::DbError> for ProcessError {
    fn from(e: crate::db::DbError) -> Self {
        if e.is_unavailable() {
            ProcessError::Unavailable { dependency: "postgres", message: crate::error_chain(&e) }
        } else {
            ProcessError::Retryable { class: "postgres".into(), message: crate::error_chain(&e) }
        }
    }
}

impl From<crate::cache::CacheError> for ProcessError {
    fn from(e: crate::cache::CacheError) -> Self {
        ProcessError::Unavailable { dependency: "redis", message: crate::error_chain(&e) }
    }
}

impl From<crate::kafka::ProduceError> for ProcessError {
    fn from(e: crate::kafka::ProduceError) -> Self {
        match e {
            crate::kafka::ProduceError::Unavailable(_) => {
                ProcessError::Unavailable { dependency: "kafka", message: crate::error_chain(&e) }
            }
            crate::kafka::ProduceError::Rejected(_) => {
                ProcessError::Permanent { class: "produce_rejected".into(), message: crate::error_chain(&e) }
            }
        }
    }
}

impl From<crate::avro::EncodeError> for ProcessError {
    fn from(e: crate::avro::EncodeError) -> Self {
        match e {
            crate::avro::EncodeError::Unavailable(m) => {
                ProcessError::Unavailable { dependency: "schema_registry", message: m }
            }
            crate::avro::EncodeError::Invalid(m) => ProcessError::Retryable { class: "encode".into(), message: m },
        }
    }
}

/// A stream processor: decodes its input records and applies their effects.
#[async_trait]
pub trait Processor: Send + Sync + 'static {
    /// The validated domain type of an input record.
    type Input: Send + Sync + 'static;

    /// Decodes a record's value at the edge. A poison record is dead-lettered by the runner.
    async fn decode(&self, payload: Option<&[u8]>) -> Result<Self::Input, DecodeError>;

    /// Applies every effect of one record; returns only when they are durable.
    async fn process(&self, input: &Self::Input, meta: &RecordMeta) -> Result<(), ProcessError>;

    /// Called after a decoded record was dead-lettered (after its last attempt or a permanent
    /// error), so the handler can record the final state.
    async fn dead_lettered(
        &self,
        _input: &Self::Input,
        _meta: &RecordMeta,
        _error: &ProcessError,
    ) -> Result<(), ProcessError> {
        Ok(())
    }
}

/// Runs `f`, telling tokio's multi-thread runtime that it blocks (the rebalance callback runs
/// inside the runner's `recv`, the runner's drop on a worker); on any other thread it just runs.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}
