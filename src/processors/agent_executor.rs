//! agent-executor: runs each TaskRequest on its agent's executor and records the outcome.
//!
//! Per task: `running` (Postgres + event, then Redis and the events topic while the agent runs;
//! for a task that ends within `running_after_ms`, written together with the outcome instead:
//! see [`attempt`]), the executor, then the final status in Postgres (idempotent, keyed by task
//! id), and once `running` is out, the TaskResult on the results topic (key: task id), the
//! TaskEvents, and Redis. Returns only when all of that is durable.
//! Postgres transitions are group-committed across tasks ([`TaskWriter`]).
//!
//! Invariants: a task already final in Postgres is never run again; its stored result is
//! re-published unchanged (a crash may have happened between the Postgres write and the
//! produce), so every finished task is on the results topic and never with a second outcome.

mod attempt;
mod publish;
mod running;

use running::Running;

use super::launch_with;
use crate::app::Deps;
use crate::avro::DecodeError;
use crate::cache::Cache;
use crate::catalog::ProcessorSpec;
use crate::db::batch::TaskWriter;
use crate::db::tasks::{self, Outcome, Source, TaskRow};
use crate::domain::{Agent, AgentStatus, TaskEvent, TaskRequest, TaskStatus};
use crate::events::{OutcomeWriteWaiting, TaskStage};
use crate::runtime::{ProcessError, Processor, Publisher, RecordMeta, RunnerError, RunnerHealth};
use async_trait::async_trait;
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub fn launch(
    deps: Arc<Deps>,
    spec: ProcessorSpec,
    health: Arc<RunnerHealth>,
    shutdown: CancellationToken,
) -> BoxFuture<'static, Result<(), RunnerError>> {
    let running = Running::default();
    let writer = match TaskWriter::spawn(deps.pool.clone(), deps.settings.database.task_writers) {
        Ok(w) => w,
        Err(e) => return Box::pin(async move { Err(RunnerError::Start(e)) }),
    };
    let processor = AgentExecutor {
        results_topic: deps.catalog.topic_name(&spec.outputs.results),
        events_topic: deps.catalog.topic_name(&spec.outputs.events),
        writer,
        deps: deps.clone(),
        spec: spec.clone(),
        running: running.clone(),
    };
    let redis = deps.settings.redis.clone();
    let stop = shutdown.clone();
    let runner = launch_with(deps, spec, processor, health, shutdown);
    Box::pin(async move {
        // Cancellations of running tasks arrive over Redis pub/sub; a task cancelled before it
        // starts is caught by its Postgres status instead, so a missed message loses nothing.
        let on_cancel = move |id| running.cancel(id);
        if let Err(e) = Cache::listen_cancels(&redis, stop, on_cancel).await {
            tracing::warn!(error = %e, "cancellation listener not started; running tasks finish despite cancel");
        }
        runner.await
    })
}

pub struct AgentExecutor {
    deps: Arc<Deps>,
    spec: ProcessorSpec,
    results_topic: String,
    events_topic: String,
    running: Running,
    writer: TaskWriter,
}

fn permanent(class: &str, message: impl Into<String>) -> ProcessError {
    ProcessError::Permanent { class: class.into(), message: message.into() }
}

impl AgentExecutor {
    async fn agent(&self, name: &str) -> Result<Option<Agent>, ProcessError> {
        Ok(crate::db::agents::load(&self.deps.pool, &self.deps.cache, name).await?)
    }

    /// Writes an outcome (Postgres first) and publishes it.
    async fn conclude(
        &self,
        p: &Publisher,
        req: &TaskRequest,
        src: &Source,
        outcome: Outcome,
    ) -> Result<(), ProcessError> {
        let (row, events) = self.record(req, src, &outcome, None).await?;
        timed("publish", self.publish_final(p, &row, &events)).await
    }

    /// Writes an outcome to Postgres (with the attempt's start when `started` is given): the
    /// row as it now reads and the events to publish, in order (the last attempt's recorded ones
    /// when the task was already final: re-published unchanged).
    async fn record(
        &self,
        req: &TaskRequest,
        src: &Source,
        outcome: &Outcome,
        started: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<(TaskRow, Vec<TaskEvent>), ProcessError> {
        // The outcome is kept while Postgres is unavailable and written once it is back: handing
        // the record back to the runner would run the agent (and its side effects) again.
        let mut waits = 0u32;
        let (row, mut events) = loop {
            match timed("finish", self.writer.finish(req, src, outcome, started)).await.map_err(ProcessError::from) {
                Err(ProcessError::Unavailable { dependency, message }) => {
                    waits += 1;
                    OutcomeWriteWaiting { task_id: req.task_id, dependency, error: &message, waits }.emit();
                    tokio::time::sleep(crate::runtime::unavailable_pause(waits)).await;
                }
                written => break written?,
            }
        };
        if events.is_empty() {
            events = tasks::attempt_events(&self.deps.pool, row.task_id).await?;
        }
        Ok((row, events))
    }

    /// Publishes a task that is already final as it was recorded (result, the last attempt's
    /// events, Redis).
    async fn republish(&self, p: &Publisher, row: TaskRow) -> Result<(), ProcessError> {
        let events = tasks::attempt_events(&self.deps.pool, row.task_id).await?;
        self.publish_final(p, &row, &events).await
    }

    fn timeout_for(&self, agent: &Agent) -> Duration {
        let ms = agent.config.get("timeout_ms").and_then(|v| v.as_u64()).unwrap_or(self.spec.timeouts.task_ms);
        Duration::from_millis(ms.min(self.spec.timeouts.task_ms))
    }
}

/// Runs one step of a task, recording its time ([`TaskStage`]).
pub(super) async fn timed<T>(stage: &'static str, step: impl std::future::Future<Output = T>) -> T {
    let started = Instant::now();
    let out = step.await;
    TaskStage { stage, elapsed: started.elapsed() }.emit();
    out
}

fn source(meta: &RecordMeta) -> Source {
    Source { topic: meta.topic.clone(), partition: meta.partition, offset: meta.offset }
}

#[async_trait]
impl Processor for AgentExecutor {
    type Input = TaskRequest;

    async fn decode(&self, payload: Option<&[u8]>) -> Result<TaskRequest, DecodeError> {
        self.deps.codec.decode_request(payload).await
    }

    async fn process(&self, req: &TaskRequest, meta: &RecordMeta) -> Result<(), ProcessError> {
        let req = &*owned_by_producer(req, meta);
        let span = tracing::info_span!("task", task_id = %req.task_id, agent = %req.agent,
            request_id = req.request_id.as_deref().unwrap_or(""), attempt = meta.attempt,
            trace_id = tracing::field::Empty);
        // The CONSUMER span of this attempt: its parent is the record's traceparent header (the
        // ingress's produce span), else the TaskRequest's (a producer that sets only the field).
        let parent = meta.header("traceparent").or(req.traceparent.as_deref());
        let mut trace =
            self.deps.tracer.remote(parent).start(format!("process {}", meta.topic), crate::otlp::SpanKind::Consumer);
        if let Some(c) = trace.traceparent().as_deref().and_then(crate::otlp::TraceContext::parse) {
            span.record("trace_id", c.trace_id_hex());
        }
        trace.set("messaging.system", "kafka");
        trace.set("messaging.operation.type", "process");
        trace.set("messaging.destination.name", meta.topic.as_str());
        trace.set("messaging.destination.partition.id", meta.partition.to_string());
        trace.set("messaging.kafka.offset", meta.offset);
        trace.set("messaging.consumer.group.name", self.deps.catalog.group_name(&self.spec.group));
        trace.set("devcycle.processor", self.spec.name.as_str());
        trace.set("devcycle.task_id", req.task_id.to_string());
        trace.set("devcycle.agent", req.agent.as_str());
        trace.set("devcycle.attempt", meta.attempt);
        if let Some(r) = &req.request_id {
            trace.set("devcycle.request_id", r.as_str());
        }
        let result = self.run_task(req, meta, &mut trace).instrument(span).await;
        if let Err(e) = &result {
            trace.set("error.type", e.class().to_string());
            trace.error(e.message());
        }
        result
    }

    async fn dead_lettered(
        &self,
        req: &TaskRequest,
        meta: &RecordMeta,
        error: &ProcessError,
    ) -> Result<(), ProcessError> {
        self.record_dead_letter(&owned_by_producer(req, meta), meta, error).await
    }
}

/// The request with the owner that a record from the HTTP gateway names in its header (the
/// caller who produced it), whatever the value's `submitted_by` says.
fn owned_by_producer<'a>(req: &'a TaskRequest, meta: &RecordMeta) -> std::borrow::Cow<'a, TaskRequest> {
    match meta.header(crate::domain::SUBMITTED_BY_HEADER) {
        Some(by) if req.submitted_by.as_deref() != Some(by) => {
            std::borrow::Cow::Owned(TaskRequest { submitted_by: Some(by.to_string()), ..req.clone() })
        }
        _ => std::borrow::Cow::Borrowed(req),
    }
}

impl AgentExecutor {
    async fn run_task(
        &self,
        req: &TaskRequest,
        meta: &RecordMeta,
        trace: &mut crate::otlp::Span,
    ) -> Result<(), ProcessError> {
        // Another copy of this task running here is waited for ([`running`]): it ends before
        // this one reads or writes anything, so a final task is found final.
        let turn = self.running.turn(req.task_id).await;
        let src = source(meta);
        let agent = match self.agent(&req.agent).await? {
            Some(a) if a.status == AgentStatus::Active => a,
            other => {
                // A task that already ended keeps its outcome even if its agent changed since.
                if let Some(existing) = tasks::get(&self.deps.pool, req.task_id).await? {
                    if existing.status.is_terminal() {
                        return self.republish(&meta.publisher, existing).await;
                    }
                }
                return Err(match other {
                    Some(_) => permanent("agent_disabled", format!("agent `{}` is disabled", req.agent)),
                    None => permanent("unknown_agent", format!("agent `{}` does not exist", req.agent)),
                });
            }
        };
        if req.deadline.is_some_and(|d| d <= chrono::Utc::now()) {
            let outcome = Outcome {
                status: TaskStatus::Expired,
                output: None,
                error: Some("deadline passed before the task started".into()),
                error_class: Some("deadline_exceeded".into()),
            };
            return self.conclude(&meta.publisher, req, &src, outcome).await;
        }
        // The turn's token was registered before the task's status is read or written: a
        // cancel committed before that is seen there (the row is final), one committed after
        // reaches the token.
        self.attempt(req, meta, &src, &agent, &turn.token, trace).await
    }

    async fn record_dead_letter(
        &self,
        req: &TaskRequest,
        meta: &RecordMeta,
        error: &ProcessError,
    ) -> Result<(), ProcessError> {
        let outcome = Outcome {
            status: TaskStatus::DeadLettered,
            output: None,
            error: Some(error.message()),
            error_class: Some(error.class().to_string()),
        };
        match self.conclude(&meta.publisher, req, &source(meta), outcome).await {
            // No such agent: the task cannot have a row (foreign key); Redis still tells.
            Err(ProcessError::Retryable { class, .. }) if class == "postgres" => {
                let now = chrono::Utc::now().to_rfc3339();
                self.deps
                    .cache
                    .set_status(
                        req.task_id,
                        vec![
                            ("status", TaskStatus::DeadLettered.as_str().to_string()),
                            ("agent", req.agent.clone()),
                            ("error", error.message()),
                            ("error_class", error.class().to_string()),
                            ("finished_at", now.clone()),
                            ("updated_at", now),
                        ],
                    )
                    .await?;
                Ok(())
            }
            other => other,
        }
    }
}
