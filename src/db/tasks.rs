//! The `tasks` table and its append-only `task_events` log.
//!
//! Invariants: a task in a terminal status is never changed again (every write is guarded by
//! `status NOT IN terminal`), so a redelivered request cannot produce a second, different
//! outcome; each transition and its event are written in one transaction.

use super::DbError;
use crate::domain::{TaskEvent, TaskRequest, TaskStatus};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, PgPool, Postgres, Row, Transaction};
use uuid::Uuid;

pub(crate) const COLUMNS: &str = "task_id, agent, status, attempts, priority, input, output, error, error_class, \
    submitted_by, request_id, traceparent, deadline, created_at, started_at, finished_at, updated_at, \
    source_topic, source_partition, source_offset";

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TaskRow {
    pub task_id: Uuid,
    pub agent: String,
    pub status: TaskStatus,
    pub attempts: i32,
    pub priority: i32,
    pub input: serde_json::Value,
    pub output: Option<serde_json::Value>,
    pub error: Option<String>,
    pub error_class: Option<String>,
    pub submitted_by: Option<String>,
    pub request_id: Option<String>,
    pub traceparent: Option<String>,
    pub deadline: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    pub source_topic: Option<String>,
    pub source_partition: Option<i32>,
    pub source_offset: Option<i64>,
}

pub(crate) fn row_to_task(r: &PgRow) -> Result<TaskRow, DbError> {
    let status: String = r.try_get("status")?;
    Ok(TaskRow {
        task_id: r.try_get("task_id")?,
        agent: r.try_get("agent")?,
        status: status.parse().unwrap_or(TaskStatus::Failed),
        attempts: r.try_get("attempts")?,
        priority: r.try_get("priority")?,
        input: r.try_get("input")?,
        output: r.try_get("output")?,
        error: r.try_get("error")?,
        error_class: r.try_get("error_class")?,
        submitted_by: r.try_get("submitted_by")?,
        request_id: r.try_get("request_id")?,
        traceparent: r.try_get("traceparent")?,
        deadline: r.try_get("deadline")?,
        created_at: r.try_get("created_at")?,
        started_at: r.try_get("started_at")?,
        finished_at: r.try_get("finished_at")?,
        updated_at: r.try_get("updated_at")?,
        source_topic: r.try_get("source_topic")?,
        source_partition: r.try_get("source_partition")?,
        source_offset: r.try_get("source_offset")?,
    })
}

/// Where a request record was read from.
#[derive(Debug, Clone)]
pub struct Source {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<TaskRow>, DbError> {
    let row = sqlx::query(AssertSqlSafe(format!("SELECT {COLUMNS} FROM tasks WHERE task_id = $1")))
        .bind(id)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(row_to_task).transpose()
}

pub enum Start {
    /// The attempt may run; the row now reads `running`; the event recorded.
    Started(TaskRow, TaskEvent),
    /// The task is already final: do not run it again.
    Finished(TaskRow),
}

/// Records the start of an attempt: inserts the task (first delivery) or moves it to
/// `running`, raising `attempts`, unless it is already final.
pub async fn start(pool: &PgPool, req: &TaskRequest, src: &Source) -> Result<Start, DbError> {
    let mut tx = pool.begin().await?;
    // `running` need not survive a Postgres crash: the request's offset is not committed yet,
    // so a lost `running` is simply written again on redelivery. Skipping the WAL flush wait
    // here halves the fsyncs per task; the final state (`finish`) is committed durably.
    sqlx::query("SET LOCAL synchronous_commit TO OFF").execute(&mut *tx).await?;
    let prior: Option<(String,)> = sqlx::query_as("SELECT status FROM tasks WHERE task_id = $1 FOR UPDATE")
        .bind(req.task_id)
        .fetch_optional(&mut *tx)
        .await?;
    let row = sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO tasks (task_id, agent, status, attempts, priority, input, submitted_by, request_id,
                            traceparent, deadline, created_at, started_at, source_topic, source_partition, source_offset)
         VALUES ($1, $2, 'running', 1, $3, $4, $5, $6, $7, $8, $9, now(), $10, $11, $12)
         ON CONFLICT (task_id) DO UPDATE SET status = 'running', attempts = tasks.attempts + 1,
             started_at = now(), updated_at = now(), source_topic = $10, source_partition = $11, source_offset = $12
           WHERE tasks.status NOT IN {}
         RETURNING {COLUMNS}",
        TaskStatus::TERMINAL_SQL
    )))
    .bind(req.task_id)
    .bind(&req.agent)
    .bind(req.priority)
    .bind(&req.input)
    .bind(&req.submitted_by)
    .bind(&req.request_id)
    .bind(&req.traceparent)
    .bind(req.deadline)
    .bind(req.submitted_at)
    .bind(&src.topic)
    .bind(src.partition)
    .bind(src.offset)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Ok(Start::Finished(unchanged(pool, tx, req.task_id, "start").await?));
    };
    let task = row_to_task(&row)?;
    let from = prior.and_then(|(s,)| s.parse().ok()).or(Some(TaskStatus::Queued));
    let event = TaskEvent::new(
        task.task_id,
        &task.agent,
        from,
        TaskStatus::Running,
        task.attempts,
        None,
        task.request_id.clone(),
    );
    insert_event(&mut tx, &event).await?;
    tx.commit().await?;
    Ok(Start::Started(task, event))
}

/// The final (or retrying) state of an attempt.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: TaskStatus,
    pub output: Option<serde_json::Value>,
    pub error: Option<String>,
    pub error_class: Option<String>,
}

/// Moves a task to `outcome.status` unless it is already final; returns the row as it now is
/// and the event recorded when this call changed it. A task never started (expired, dead-lettered before
/// running) is inserted from `req`.
pub async fn finish(
    pool: &PgPool,
    req: &TaskRequest,
    src: &Source,
    outcome: &Outcome,
) -> Result<(TaskRow, Option<TaskEvent>), DbError> {
    let mut tx = pool.begin().await?;
    let prior: Option<(String, i32)> =
        sqlx::query_as("SELECT status, attempts FROM tasks WHERE task_id = $1 FOR UPDATE")
            .bind(req.task_id)
            .fetch_optional(&mut *tx)
            .await?;
    let finished = outcome.status.is_terminal();
    let row = sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO tasks (task_id, agent, status, attempts, priority, input, output, error, error_class,
                            submitted_by, request_id, traceparent, deadline, created_at, finished_at,
                            source_topic, source_partition, source_offset)
         VALUES ($1, $2, $3, 0, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, CASE WHEN $14 THEN now() END, $15, $16, $17)
         ON CONFLICT (task_id) DO UPDATE SET status = $3, output = $6, error = $7, error_class = $8,
             finished_at = CASE WHEN $14 THEN now() END, updated_at = now()
           WHERE tasks.status NOT IN {}
         RETURNING {COLUMNS}",
        TaskStatus::TERMINAL_SQL
    )))
    .bind(req.task_id)
    .bind(&req.agent)
    .bind(outcome.status.as_str())
    .bind(req.priority)
    .bind(&req.input)
    .bind(&outcome.output)
    .bind(&outcome.error)
    .bind(&outcome.error_class)
    .bind(&req.submitted_by)
    .bind(&req.request_id)
    .bind(&req.traceparent)
    .bind(req.deadline)
    .bind(req.submitted_at)
    .bind(finished)
    .bind(&src.topic)
    .bind(src.partition)
    .bind(src.offset)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Ok((unchanged(pool, tx, req.task_id, "finish").await?, None));
    };
    let task = row_to_task(&row)?;
    let from = prior.as_ref().and_then(|(s, _)| s.parse().ok());
    let event = TaskEvent::new(
        task.task_id,
        &task.agent,
        from,
        task.status,
        task.attempts,
        outcome.error.clone(),
        task.request_id.clone(),
    );
    insert_event(&mut tx, &event).await?;
    tx.commit().await?;
    Ok((task, Some(event)))
}

/// The row as it stands when an upsert changed nothing (the task was already final); `tx` is
/// rolled back.
async fn unchanged(
    pool: &PgPool,
    tx: Transaction<'_, Postgres>,
    task_id: Uuid,
    step: &str,
) -> Result<TaskRow, DbError> {
    tx.rollback().await?;
    get(pool, task_id)
        .await?
        .ok_or_else(|| DbError::Other(sqlx::Error::Protocol(format!("task vanished during {step}"))))
}

async fn insert_event(tx: &mut Transaction<'_, Postgres>, e: &TaskEvent) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO task_events (event_id, task_id, from_status, to_status, attempt, message, request_id, at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(e.event_id)
    .bind(e.task_id)
    .bind(e.from_status.map(|s| s.as_str()))
    .bind(e.to_status.as_str())
    .bind(e.attempt)
    .bind(&e.message)
    .bind(&e.request_id)
    .bind(e.at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The events of a task, oldest first.
pub async fn events(pool: &PgPool, id: Uuid) -> Result<Vec<(Option<String>, String, i32)>, DbError> {
    Ok(sqlx::query_as("SELECT from_status, to_status, attempt FROM task_events WHERE task_id = $1 ORDER BY id")
        .bind(id)
        .fetch_all(pool)
        .await?)
}

/// The latest recorded event of a task (re-published unchanged after a redelivery).
pub async fn last_event(pool: &PgPool, id: Uuid) -> Result<Option<TaskEvent>, DbError> {
    let row = sqlx::query(
        "SELECT e.event_id, e.task_id, t.agent, e.from_status, e.to_status, e.attempt, e.message, e.at, e.request_id
         FROM task_events e JOIN tasks t USING (task_id) WHERE e.task_id = $1 ORDER BY e.id DESC LIMIT 1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    let Some(r) = row else { return Ok(None) };
    let from: Option<String> = r.try_get("from_status")?;
    let to: String = r.try_get("to_status")?;
    Ok(Some(TaskEvent {
        event_id: r.try_get("event_id")?,
        task_id: r.try_get("task_id")?,
        agent: r.try_get("agent")?,
        from_status: from.and_then(|s| s.parse().ok()),
        to_status: to.parse().unwrap_or(TaskStatus::Failed),
        attempt: r.try_get("attempt")?,
        message: r.try_get("message")?,
        at: r.try_get("at")?,
        request_id: r.try_get("request_id")?,
    }))
}

pub enum Cancel {
    Cancelled(TaskRow),
    AlreadyFinished(TaskRow),
    NotFound,
}

/// Cancels a task that is not final. A task not yet started (no row) is recorded as cancelled
/// when its agent is known (from the hot status), so the processor never starts it.
pub async fn cancel(pool: &PgPool, id: Uuid, agent_hint: Option<&str>, by: Option<&str>) -> Result<Cancel, DbError> {
    let mut tx = pool.begin().await?;
    let prior: Option<(String,)> = sqlx::query_as("SELECT status FROM tasks WHERE task_id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    let message = format!("cancelled by {}", by.unwrap_or("request"));
    let row = match &prior {
        Some((status,)) => {
            let status: TaskStatus = status.parse().unwrap_or(TaskStatus::Failed);
            if status.is_terminal() {
                tx.rollback().await?;
                let row = get(pool, id).await?.ok_or(DbError::Other(sqlx::Error::RowNotFound))?;
                return Ok(Cancel::AlreadyFinished(row));
            }
            sqlx::query(AssertSqlSafe(format!(
                "UPDATE tasks SET status = 'cancelled', error = $2, error_class = 'cancelled', finished_at = now(),
                     updated_at = now() WHERE task_id = $1 RETURNING {COLUMNS}"
            )))
            .bind(id)
            .bind(&message)
            .fetch_one(&mut *tx)
            .await?
        }
        None => {
            let Some(agent) = agent_hint else {
                tx.rollback().await?;
                return Ok(Cancel::NotFound);
            };
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO tasks (task_id, agent, status, input, error, error_class, finished_at)
                 VALUES ($1, $2, 'cancelled', 'null'::jsonb, $3, 'cancelled', now()) RETURNING {COLUMNS}"
            )))
            .bind(id)
            .bind(agent)
            .bind(&message)
            .fetch_one(&mut *tx)
            .await?
        }
    };
    let task = row_to_task(&row)?;
    let from = prior.and_then(|(s,)| s.parse().ok()).or(Some(TaskStatus::Queued));
    let event = TaskEvent::new(id, &task.agent, from, TaskStatus::Cancelled, task.attempts, Some(message), None);
    insert_event(&mut tx, &event).await?;
    tx.commit().await?;
    Ok(Cancel::Cancelled(task))
}
