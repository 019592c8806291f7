//! agent-executor: runs each TaskRequest on its agent's executor and records the outcome.
//!
//! Per task: `running` (Postgres + event, then Redis and the events topic while the agent runs),
//! the executor, then the final status in Postgres (idempotent, keyed by task id), and once
//! `running` is out, the TaskResult on the results topic (key: task id), the TaskEvent, and
//! Redis. Returns only when all of that is durable.
//! Postgres transitions are group-committed across tasks ([`TaskWriter`]).
//!
//! Invariants: a task already final in Postgres is never run again; its stored result is
//! re-published unchanged (a crash may have happened between the Postgres write and the
//! produce), so every finished task is on the results topic and never with a second outcome.

mod publish;

use super::launch_with;
use crate::app::Deps;
use crate::avro::DecodeError;
use crate::cache::Cache;
use crate::catalog::ProcessorSpec;
use crate::db::batch::TaskWriter;
use crate::db::tasks::{self, Outcome, Source, Start, TaskRow};
use crate::domain::{Agent, AgentStatus, TaskEvent, TaskRequest, TaskStatus};
use crate::events::{TaskExecuted, TaskStage};
use crate::executors::ExecError;
use crate::runtime::{ProcessError, Processor, Publisher, RecordMeta, RunnerError, RunnerHealth};
use async_trait::async_trait;
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

pub fn launch(
    deps: Arc<Deps>,
    spec: ProcessorSpec,
    health: Arc<RunnerHealth>,
    shutdown: CancellationToken,
) -> BoxFuture<'static, Result<(), RunnerError>> {
    let running: Running = Arc::default();
    let processor = AgentExecutor {
        results_topic: deps.catalog.topic_name(&spec.outputs.results),
        events_topic: deps.catalog.topic_name(&spec.outputs.events),
        writer: TaskWriter::spawn(deps.pool.clone()),
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
        let on_cancel = move |id| {
            if let Some(token) = running.lock().expect("lock").get(&id) {
                token.cancel();
            }
        };
        if let Err(e) = Cache::listen_cancels(&redis, stop, on_cancel).await {
            tracing::warn!(error = %e, "cancellation listener not started; running tasks finish despite cancel");
        }
        runner.await
    })
}

/// Tokens of the tasks running in this process, by task id.
type Running = Arc<Mutex<HashMap<Uuid, CancellationToken>>>;

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
        let (row, event) = self.record(req, src, &outcome).await?;
        timed("publish", self.publish_final(p, &row, event.as_ref())).await
    }

    /// Writes an outcome to Postgres: the row as it now reads and the event to publish (the
    /// recorded last one when the task was already final: re-published unchanged).
    async fn record(
        &self,
        req: &TaskRequest,
        src: &Source,
        outcome: &Outcome,
    ) -> Result<(TaskRow, Option<TaskEvent>), ProcessError> {
        let (row, event) = timed("finish", self.writer.finish(req, src, outcome)).await?;
        let event = match event {
            Some(e) => Some(e),
            None => tasks::last_event(&self.deps.pool, row.task_id).await?,
        };
        Ok((row, event))
    }

    fn timeout_for(&self, agent: &Agent) -> Duration {
        let ms = agent.config.get("timeout_ms").and_then(|v| v.as_u64()).unwrap_or(self.spec.timeouts.task_ms);
        Duration::from_millis(ms.min(self.spec.timeouts.task_ms))
    }
}

/// What is left to do once the agent is done and its outcome is written.
enum Next {
    /// Publish the final state.
    Final { status: TaskStatus, recorded: Result<(TaskRow, Option<TaskEvent>), ProcessError> },
    /// Announce `retrying` (when recorded) and hand the record back to the runner to retry.
    Retry { recorded: Option<Result<(TaskRow, Option<TaskEvent>), crate::db::DbError>>, class: String, message: String },
}

/// Runs one step of a task, recording its time ([`TaskStage`]).
async fn timed<T>(stage: &'static str, step: impl std::future::Future<Output = T>) -> T {
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
        self.record_dead_letter(req, meta, error).await
    }
}

impl AgentExecutor {
    async fn run_task(
        &self,
        req: &TaskRequest,
        meta: &RecordMeta,
        trace: &mut crate::otlp::Span,
    ) -> Result<(), ProcessError> {
        let src = source(meta);
        let agent = match self.agent(&req.agent).await? {
            Some(a) if a.status == AgentStatus::Active => a,
            other => {
                // A task that already ended keeps its outcome even if its agent changed since.
                if let Some(existing) = tasks::get(&self.deps.pool, req.task_id).await? {
                    if existing.status.is_terminal() {
                        let event = tasks::last_event(&self.deps.pool, req.task_id).await?;
                        return self.publish_final(&meta.publisher, &existing, event.as_ref()).await;
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
        // The token is registered before `running` is written: a cancel committed before the
        // start is seen by the start (the row is final), one committed after it reaches the token.
        let token = CancellationToken::new();
        self.running.lock().expect("lock").insert(req.task_id, token.clone());
        let started = timed("start", self.writer.start(req, &src)).await;
        let (row, event) = match started {
            Ok(Start::Started(row, event)) => (row, event),
            Ok(Start::Finished(row)) => {
                self.running.lock().expect("lock").remove(&req.task_id);
                let event = tasks::last_event(&self.deps.pool, row.task_id).await?;
                return self.publish_final(&meta.publisher, &row, event.as_ref()).await;
            }
            Err(e) => {
                self.running.lock().expect("lock").remove(&req.task_id);
                return Err(e.into());
            }
        };
        // `running` is recorded in Postgres; Redis and the event are best effort here (the final
        // state is always published), so an outage cannot make the task run twice. They are
        // announced while the agent runs and awaited before anything final is written, so
        // neither can land after the final state (the event is queued to Kafka first).
        let announce = async {
            let (c, e) = timed("announce", async {
                tokio::join!(self.cache_row(&row), self.publish_event(&meta.publisher, &event))
            })
            .await;
            if let Err(err) = c.and(e) {
                tracing::warn!(task_id = %req.task_id, error = %err, "publishing `running` failed");
            }
        };
        let started = Instant::now();
        let mut exec = trace.context().start(format!("execute {}", agent.name), crate::otlp::SpanKind::Internal);
        exec.set("devcycle.agent", agent.name.as_str());
        exec.set("devcycle.executor", agent.executor.as_str());
        let run = async {
            tokio::select! {
                r = self.deps.executors.execute(&agent, &req.input, self.timeout_for(&agent)) => Some(r),
                _ = token.cancelled() => None,
            }
        };
        // The outcome is written to Postgres as soon as the agent is done, while `running` may
        // still be on its way to Redis and Kafka; it is published only after that.
        let work = async {
            let result = run.await;
            match &result {
                None => exec.set("devcycle.outcome", "cancelled"),
                Some(Ok(_)) => exec.set("devcycle.outcome", "succeeded"),
                Some(Err(ExecError::Failed { class, message } | ExecError::Retryable { class, message })) => {
                    exec.set("devcycle.outcome", class.clone());
                    exec.error(message.clone());
                }
            }
            exec.end();
            self.running.lock().expect("lock").remove(&req.task_id);
            let outcome = match result {
                // Dropping the execution killed a command's process and aborted HTTP calls.
                None => Outcome {
                    status: TaskStatus::Cancelled,
                    output: None,
                    error: Some("cancelled while running".into()),
                    error_class: Some("cancelled".into()),
                },
                Some(Ok(output)) => {
                    Outcome { status: TaskStatus::Succeeded, output: Some(output), error: None, error_class: None }
                }
                Some(Err(ExecError::Failed { class, message })) => {
                    Outcome { status: TaskStatus::Failed, output: None, error: Some(message), error_class: Some(class) }
                }
                Some(Err(ExecError::Retryable { class, message })) => {
                    TaskExecuted { agent: &agent.name, outcome: "retryable_error", elapsed: started.elapsed() }.emit();
                    let retrying = (meta.attempt < self.spec.retry.max_attempts).then(|| Outcome {
                        status: TaskStatus::Retrying,
                        output: None,
                        error: Some(message.clone()),
                        error_class: Some(class.clone()),
                    });
                    let recorded = match &retrying {
                        Some(o) => Some(timed("finish", self.writer.finish(req, &src, o)).await),
                        None => None,
                    };
                    return Next::Retry { recorded, class, message };
                }
            };
            TaskExecuted { agent: &agent.name, outcome: outcome.status.as_str(), elapsed: started.elapsed() }.emit();
            let recorded = self.record(req, &src, &outcome).await;
            Next::Final { status: outcome.status, recorded }
        };
        let ((), next) = tokio::join!(announce, work);
        match next {
            Next::Final { status, recorded } => {
                trace.set("devcycle.task.status", status.as_str());
                let (row, event) = recorded?;
                timed("publish", self.publish_final(&meta.publisher, &row, event.as_ref())).await
            }
            Next::Retry { recorded, class, message } => {
                if let Some(recorded) = recorded {
                    if let (row, Some(ev)) = recorded? {
                        let _ = tokio::join!(self.cache_row(&row), self.publish_event(&meta.publisher, &ev));
                    }
                }
                Err(ProcessError::Retryable { class, message })
            }
        }
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
