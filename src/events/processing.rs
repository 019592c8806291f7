//! Events of the processors: task executions, retries, dead letters, stalls, rebalances and the
//! task writer's group commits.
//!
//! Invariants: as in [`super`]: low-cardinality labels only, one event per log line or metric.

use super::*;

/// A task execution finished (the agent ran).
pub struct TaskExecuted<'a> {
    pub agent: &'a str,
    pub outcome: &'a str,
    pub elapsed: Duration,
}
impl TaskExecuted<'_> {
    pub fn emit(self) {
        let m = metrics();
        m.task_executions
            .get_or_create(&ExecutionLabels { agent: self.agent.into(), outcome: self.outcome.into() })
            .inc();
        m.task_duration.get_or_create(&AgentLabels { agent: self.agent.into() }).observe(self.elapsed.as_secs_f64());
        tracing::info!(
            agent = self.agent,
            outcome = self.outcome,
            duration_ms = self.elapsed.as_secs_f64() * 1000.0,
            "task executed"
        );
    }
}

/// A record went to the dead-letter topic.
pub struct RecordDeadLettered<'a> {
    pub processor: &'a str,
    pub reason: &'a str,
    pub message: &'a str,
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}
impl RecordDeadLettered<'_> {
    pub fn emit(self) {
        metrics()
            .dead_letters
            .get_or_create(&ReasonLabels { processor: self.processor.into(), reason: self.reason.into() })
            .inc();
        tracing::warn!(
            processor = self.processor,
            reason = self.reason,
            error = self.message,
            topic = self.topic,
            partition = self.partition,
            offset = self.offset,
            "record dead-lettered"
        );
    }
}

/// A record attempt failed and will be retried.
pub struct RecordRetrying<'a> {
    pub processor: &'a str,
    pub attempt: u32,
    pub backoff: Duration,
    pub error: &'a str,
}
impl RecordRetrying<'_> {
    pub fn emit(self) {
        metrics().retries.get_or_create(&ProcessorLabels { processor: self.processor.into() }).inc();
        tracing::warn!(
            processor = self.processor,
            attempt = self.attempt,
            backoff_ms = self.backoff.as_millis() as u64,
            error = self.error,
            "attempt failed, retrying"
        );
    }
}

/// Kafka refused a dead letter for itself (too large with the letter's headers). With the
/// record's value (`with_value`), it is sent again without it; without, the record is left at its
/// source offset and the partition goes on.
pub struct DeadLetterRefused<'a> {
    pub processor: &'a str,
    pub topic: &'a str,
    pub offset: i64,
    pub error: &'a rdkafka::error::KafkaError,
    pub with_value: bool,
}
impl DeadLetterRefused<'_> {
    pub fn emit(self) {
        let (processor, topic, offset, error) = (self.processor, self.topic, self.offset, self.error);
        if self.with_value {
            tracing::warn!(processor, topic, offset, error = %error, "dead letter refused with the record's value; sending it without");
        } else {
            tracing::error!(
                processor,
                topic,
                offset,
                error = %error,
                "dead letter refused by kafka even without the record's value; the record stays at its source offset"
            );
        }
    }
}

/// A task's outcome could not be written (Postgres unavailable): it is kept and written again,
/// not run again. Logged on the first wait and every tenth.
pub struct OutcomeWriteWaiting<'a> {
    pub task_id: uuid::Uuid,
    pub dependency: &'a str,
    pub error: &'a str,
    pub waits: u32,
}
impl OutcomeWriteWaiting<'_> {
    pub fn emit(self) {
        if self.waits == 1 || self.waits.is_multiple_of(10) {
            tracing::warn!(
                task_id = %self.task_id,
                dependency = self.dependency,
                error = self.error,
                waits = self.waits,
                "writing a task's outcome failed; keeping it and trying again"
            );
        }
    }
}

/// A processor stalled (see `runtime::watchdog`) and exits so that its supervisor restarts it.
pub struct ProcessorStalled<'a> {
    pub processor: &'a str,
    pub stall: &'a crate::runtime::watchdog::Stall,
    pub after: Duration,
}
impl ProcessorStalled<'_> {
    pub fn emit(self) {
        tracing::error!(
            processor = self.processor,
            stall = %self.stall,
            window_ms = self.after.as_millis() as u64,
            "processor stalled; exiting for a restart"
        );
    }
}

/// Exactly-once: the committed offsets of newly assigned partitions were not found within the
/// window (with the lookup's last error); they stay paused, and the runner's exit for a restart
/// follows as [`ProcessorStalled`] (see `runtime::start`).
pub struct StartOffsetsUnresolved<'a> {
    pub partitions: usize,
    pub within: Duration,
    pub error: Option<&'a str>,
}
impl StartOffsetsUnresolved<'_> {
    pub fn emit(self) {
        tracing::warn!(
            partitions = self.partitions,
            within_ms = self.within.as_millis() as u64,
            error = self.error.unwrap_or_default(),
            "committed offsets not found in time; the partitions stay paused"
        );
    }
}

/// A runner's consumer did not close within the wait (the group coordinator unreachable?): it is
/// left closing, and the runner ends regardless.
pub struct ConsumerCloseAbandoned {
    pub waited: Duration,
}
impl ConsumerCloseAbandoned {
    pub fn emit(self) {
        tracing::warn!(
            wait_ms = self.waited.as_millis() as u64,
            "the consumer did not close in time (group coordinator unreachable?); left closing"
        );
    }
}

/// Revoked partitions were handed over to the group after their running records ended (or
/// after the grace period, with `abandoned` records still running: cancelled here, and run
/// again by their new owner).
pub struct PartitionsHandedOver<'a> {
    pub processor: &'a str,
    pub partitions: usize,
    pub waited: Duration,
    pub abandoned: usize,
}
impl PartitionsHandedOver<'_> {
    pub fn emit(self) {
        let waited_ms = self.waited.as_millis() as u64;
        if self.abandoned == 0 {
            tracing::info!(
                processor = self.processor,
                partitions = self.partitions,
                waited_ms,
                "revoked partitions handed over"
            );
        } else {
            tracing::warn!(
                processor = self.processor,
                partitions = self.partitions,
                waited_ms,
                abandoned = self.abandoned,
                "revoked partitions handed over with records still running (grace period over): cancelled here; their new owner runs them again"
            );
        }
    }
}

/// A copy of a task arrived while another copy of it runs in this process: it waits for that
/// one to end (and then finds the task final) instead of running the agent beside it.
pub struct DuplicateTaskWaiting {
    pub task_id: uuid::Uuid,
}
impl DuplicateTaskWaiting {
    pub fn emit(self) {
        tracing::info!(task_id = %self.task_id, "another copy of this task is running here; waiting for it to end");
    }
}

/// One step of a task in the agent-executor took `elapsed` (stages: `start`, `announce`,
/// `finish`, `publish`; metrics only, no log line: there are several per task).
pub struct TaskStage {
    pub stage: &'static str,
    pub elapsed: Duration,
}
impl TaskStage {
    pub fn emit(self) {
        metrics()
            .task_stage_duration
            .get_or_create(&StageLabels { stage: self.stage.into() })
            .observe(self.elapsed.as_secs_f64());
    }
}

/// The task writer committed a batch of `jobs` transitions in `elapsed`.
pub struct TaskBatchWritten {
    pub jobs: usize,
    pub elapsed: Duration,
}
impl TaskBatchWritten {
    pub fn emit(self) {
        let m = metrics();
        m.task_batch_size.observe(self.jobs as f64);
        m.task_batch_duration.observe(self.elapsed.as_secs_f64());
        tracing::debug!(jobs = self.jobs, duration_ms = self.elapsed.as_secs_f64() * 1000.0, "task batch written");
    }
}
