//! The `tasks` table and its append-only `task_events` log.
//!
//! Invariants: a task in a terminal status is never changed again (every write is guarded by
//! `status NOT IN terminal`), so a redelivered request cannot produce a second, different
//! outcome; each transition and its event are written in one transaction.

use super::DbError;
use crate::domain::{TaskEvent, TaskStatus};
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

/// The statuses of those of `ids` that have a row, in one query: `(task_id, status)`. Through
/// `task_statuses` (migrations/20261126000009), which reads by primary key whatever plan the
/// connection has cached.
pub async fn statuses<'e>(ex: impl sqlx::PgExecutor<'e>, ids: &[Uuid]) -> Result<Vec<(Uuid, String)>, sqlx::Error> {
    sqlx::query_as("SELECT task_id, status FROM task_statuses($1)").bind(ids).fetch_all(ex).await
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

/// The final (or retrying) state of an attempt.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: TaskStatus,
    pub output: Option<serde_json::Value>,
    pub error: Option<String>,
    pub error_class: Option<String>,
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

/// The recorded events of a task's latest attempt, oldest first (re-published unchanged after a
/// redelivery: all of them, because a quick task stores its `running` with its final event and
/// a crash before publishing loses both, not only the last).
pub async fn attempt_events(pool: &PgPool, id: Uuid) -> Result<Vec<TaskEvent>, DbError> {
    let rows = sqlx::query(
        "SELECT e.event_id, e.task_id, t.agent, e.from_status, e.to_status, e.attempt, e.message, e.at, e.request_id
         FROM task_events e JOIN tasks t USING (task_id)
         WHERE e.task_id = $1 AND e.attempt = (SELECT max(attempt) FROM task_events WHERE task_id = $1)
         ORDER BY e.id",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| -> Result<TaskEvent, DbError> {
            let from: Option<String> = r.try_get("from_status")?;
            let to: String = r.try_get("to_status")?;
            Ok(TaskEvent {
                event_id: r.try_get("event_id")?,
                task_id: r.try_get("task_id")?,
                agent: r.try_get("agent")?,
                from_status: from.and_then(|s| s.parse().ok()),
                to_status: to.parse().unwrap_or(TaskStatus::Failed),
                attempt: r.try_get("attempt")?,
                message: r.try_get("message")?,
                at: r.try_get("at")?,
                request_id: r.try_get("request_id")?,
            })
        })
        .collect()
}

pub enum Cancel {
    Cancelled(TaskRow),
    AlreadyFinished(TaskRow),
    NotFound,
}

/// Cancels a task that is not final. A task not yet started (no row) is recorded as cancelled
/// when its agent is known (from the hot status), so the processor never starts it.
/// Cancels a task that is not final. A task Postgres has no record of yet (queued, known from
/// its hot status) is recorded `cancelled` with `agent_hint` and `owner` (its submitter), so
/// the submitter still finds it once the hot status is gone.
pub async fn cancel(
    pool: &PgPool,
    id: Uuid,
    agent_hint: Option<&str>,
    owner: Option<&str>,
    by: Option<&str>,
) -> Result<Cancel, DbError> {
    let mut tx = pool.begin().await?;
    let prior = sqlx::query(AssertSqlSafe(format!("SELECT {COLUMNS} FROM tasks WHERE task_id = $1 FOR UPDATE")))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .as_ref()
        .map(row_to_task)
        .transpose()?;
    let message = format!("cancelled by {}", by.unwrap_or("request"));
    let from = prior.as_ref().map_or(TaskStatus::Queued, |p| p.status);
    let row = match prior {
        Some(current) if current.status.is_terminal() => {
            tx.rollback().await?;
            return Ok(Cancel::AlreadyFinished(current));
        }
        Some(_) => {
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
                "INSERT INTO tasks (task_id, agent, status, input, error, error_class, finished_at, submitted_by)
                 VALUES ($1, $2, 'cancelled', 'null'::jsonb, $3, 'cancelled', now(), $4) RETURNING {COLUMNS}"
            )))
            .bind(id)
            .bind(agent)
            .bind(&message)
            .bind(owner)
            .fetch_one(&mut *tx)
            .await?
        }
    };
    let task = row_to_task(&row)?;
    let event = TaskEvent::new(id, &task.agent, Some(from), TaskStatus::Cancelled, task.attempts, Some(message), None);
    insert_event(&mut tx, &event).await?;
    tx.commit().await?;
    Ok(Cancel::Cancelled(task))
}
