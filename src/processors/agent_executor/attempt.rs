//! One attempt at a task: run the agent, write what came of it, publish it.
//!
//! With `timeouts.running_after_ms` = 0, `running` is written (group commit) before the agent
//! runs. Otherwise the agent starts at once, after a read of the task's status when its
//! executor has side effects (a task already final, by a redelivery or a cancel while queued,
//! is not run again). An agent without side effects (builtin) runs without that read: the
//! write of its outcome leaves a final task as it was and the stored state is published, as a
//! read would have; a retryable failure reads the status before retrying. Then:
//! - ended within `running_after_ms`: one write holds the start and the outcome, with both
//!   events (`running`, then the final one), published in that order;
//! - still running then: `running` is written while the agent goes on, and announced (Redis,
//!   events topic) as before; the outcome is written when it ends.
//!
//! Invariants: the outcome is never written before its attempt's `running`; nothing is
//! published before Postgres holds it; `running` is announced before anything final.

use super::{timed, AgentExecutor};
use crate::db::tasks::{self, Outcome, Source, Start, TaskRow};
use crate::domain::{Agent, TaskEvent, TaskRequest, TaskStatus};
use crate::events::TaskExecuted;
use crate::executors::ExecError;
use crate::runtime::{ProcessError, RecordMeta};
use chrono::{DateTime, Utc};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// What came of running the agent.
enum Verdict {
    /// A final state (or `cancelled`).
    Done(Outcome),
    /// A retryable failure: `retrying` (when attempts are left) and back to the runner.
    Retry { class: String, message: String },
}

/// What is left to do once the agent is done and its outcome is written.
enum Next {
    /// Publish the final state.
    Final { status: TaskStatus, recorded: Result<(TaskRow, Vec<TaskEvent>), ProcessError> },
    /// Announce what was recorded (`retrying`, or the last attempt's `running`) and hand the
    /// record back to the runner to retry or dead-letter.
    Retry { recorded: Option<Result<(TaskRow, Vec<TaskEvent>), ProcessError>>, class: String, message: String },
}

impl AgentExecutor {
    pub(super) async fn attempt(
        &self,
        req: &TaskRequest,
        meta: &RecordMeta,
        src: &Source,
        agent: &Agent,
        token: &CancellationToken,
        trace: &mut crate::otlp::Span,
    ) -> Result<(), ProcessError> {
        let running_after = Duration::from_millis(self.spec.timeouts.running_after_ms);
        let p = &meta.publisher;
        // An agent with side effects runs only once its task is known not to be final; one
        // without runs at once and reads the status only before a retry.
        let reads_first = agent.executor.has_side_effects();
        if !running_after.is_zero() && reads_first {
            if let Some(row) = self.final_row(req).await? {
                return self.republish(p, row).await;
            }
        }
        let started_at = Utc::now();
        let started = Instant::now();
        let mut exec = trace.context().start(format!("execute {}", agent.name), crate::otlp::SpanKind::Internal);
        exec.set("devcycle.agent", agent.name.as_str());
        exec.set("devcycle.executor", agent.executor.as_str());
        let exec_ctx = exec.context();
        let mut run = std::pin::pin!(async {
            tokio::select! {
                r = self.deps.executors.execute(agent, &req.input, self.timeout_for(agent), &exec_ctx) => Some(r),
                _ = token.cancelled() => None,
            }
        });
        if !running_after.is_zero() {
            if let Ok(result) = tokio::time::timeout(running_after, &mut run).await {
                let verdict = verdict(agent, result, exec, started);
                // A final task is not retried: what was stored is published again.
                if !reads_first && matches!(verdict, Verdict::Retry { .. }) {
                    if let Some(row) = self.final_row(req).await? {
                        return self.republish(p, row).await;
                    }
                }
                let next = self.write(req, meta, src, verdict, Some(started_at)).await;
                return self.complete(meta, next, trace).await;
            }
        }
        // `running` is written: before the agent starts when running_after_ms is 0 (the start
        // is then what keeps a final task from running again), else while it goes on.
        let mut result = None;
        let start = timed("start", self.writer.start(req, src));
        tokio::pin!(start);
        let start = if running_after.is_zero() {
            start.await
        } else {
            loop {
                tokio::select! {
                    s = &mut start => break s,
                    r = &mut run, if result.is_none() => result = Some(r),
                }
            }
        };
        let (row, event) = match start? {
            Start::Started(row, event) => (row, event),
            // Final meanwhile (cancelled, or finished elsewhere): the execution is dropped.
            Start::Finished(row) => {
                exec.set("devcycle.outcome", "superseded");
                exec.end();
                return self.republish(p, row).await;
            }
        };
        // `running` is recorded in Postgres; Redis and the event are best effort here (the final
        // state is always published), so an outage cannot make the task run twice. They are
        // announced while the agent runs and awaited before anything final is published, so
        // neither can land after the final state.
        let announce = async {
            let (c, e) =
                timed("announce", async { tokio::join!(self.cache_row(&row), self.publish_event(p, &event)) }).await;
            if let Err(err) = c.and(e) {
                tracing::warn!(task_id = %req.task_id, error = %err, "publishing `running` failed");
            }
        };
        // The outcome is written as soon as the agent is done, while `running` may still be on
        // its way to Redis and Kafka; it is published only after that.
        let work = async {
            let result = match result {
                Some(r) => r,
                None => run.await,
            };
            let verdict = verdict(agent, result, exec, started);
            self.write(req, meta, src, verdict, None).await
        };
        let ((), next) = tokio::join!(announce, work);
        self.complete(meta, next, trace).await
    }

    /// The task's row when it is already final (read through the batched status reads).
    async fn final_row(&self, req: &TaskRequest) -> Result<Option<TaskRow>, ProcessError> {
        let status = timed("check", self.writer.status(req.task_id)).await?;
        if !status.is_some_and(TaskStatus::is_terminal) {
            return Ok(None);
        }
        Ok(tasks::get(&self.deps.pool, req.task_id).await?)
    }

    /// Writes what came of the attempt; `started` when its start is written with it.
    async fn write(
        &self,
        req: &TaskRequest,
        meta: &RecordMeta,
        src: &Source,
        verdict: Verdict,
        started: Option<DateTime<Utc>>,
    ) -> Next {
        match verdict {
            Verdict::Done(outcome) => {
                let recorded = self.record(req, src, &outcome, started).await;
                Next::Final { status: outcome.status, recorded }
            }
            Verdict::Retry { class, message } => {
                let recorded = if meta.attempt < self.spec.retry.max_attempts {
                    let retrying = Outcome {
                        status: TaskStatus::Retrying,
                        output: None,
                        error: Some(message.clone()),
                        error_class: Some(class.clone()),
                    };
                    Some(timed("finish", self.writer.finish(req, src, &retrying, started)).await.map_err(Into::into))
                } else if started.is_some() {
                    // The last attempt, ended quickly: its `running` is recorded as a slower one's
                    // would be; the runner dead-letters the task next.
                    Some(timed("start", self.writer.start(req, src)).await.map_err(Into::into).map(|s| match s {
                        Start::Started(row, event) => (row, vec![event]),
                        Start::Finished(row) => (row, Vec::new()),
                    }))
                } else {
                    None
                };
                Next::Retry { recorded, class, message }
            }
        }
    }

    /// Publishes what was written: the final state, or the retry's events before handing the
    /// record back.
    async fn complete(&self, meta: &RecordMeta, next: Next, trace: &mut crate::otlp::Span) -> Result<(), ProcessError> {
        let p = &meta.publisher;
        match next {
            Next::Final { status, recorded } => {
                trace.set("devcycle.task.status", status.as_str());
                let (row, events) = recorded?;
                timed("publish", self.publish_final(p, &row, &events)).await
            }
            Next::Retry { recorded, class, message } => {
                if let Some(recorded) = recorded {
                    let (row, events) = recorded?;
                    if !events.is_empty() {
                        let _ = tokio::join!(self.cache_row(&row), self.publish_events(p, &events));
                    }
                }
                Err(ProcessError::Retryable { class, message })
            }
        }
    }
}

/// The outcome of an execution (`None`: cancelled), recorded on its span and as an event.
fn verdict(
    agent: &Agent,
    result: Option<Result<serde_json::Value, ExecError>>,
    mut exec: crate::otlp::Span,
    started: Instant,
) -> Verdict {
    match &result {
        None => exec.set("devcycle.outcome", "cancelled"),
        Some(Ok(_)) => exec.set("devcycle.outcome", "succeeded"),
        Some(Err(ExecError::Failed { class, message } | ExecError::Retryable { class, message })) => {
            exec.set("devcycle.outcome", class.clone());
            exec.error(message.clone());
        }
    }
    exec.end();
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
            return Verdict::Retry { class, message };
        }
    };
    TaskExecuted { agent: &agent.name, outcome: outcome.status.as_str(), elapsed: started.elapsed() }.emit();
    Verdict::Done(outcome)
}
