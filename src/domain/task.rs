//! Tasks: the request a producer posts, the result a processor publishes, and the status
//! transitions between them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Queued,
    Running,
    Retrying,
    Succeeded,
    Failed,
    DeadLettered,
    Cancelled,
    Expired,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 8] = [
        TaskStatus::Queued,
        TaskStatus::Running,
        TaskStatus::Retrying,
        TaskStatus::Succeeded,
        TaskStatus::Failed,
        TaskStatus::DeadLettered,
        TaskStatus::Cancelled,
        TaskStatus::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Queued => "queued",
            TaskStatus::Running => "running",
            TaskStatus::Retrying => "retrying",
            TaskStatus::Succeeded => "succeeded",
            TaskStatus::Failed => "failed",
            TaskStatus::DeadLettered => "dead_lettered",
            TaskStatus::Cancelled => "cancelled",
            TaskStatus::Expired => "expired",
        }
    }

    /// A terminal status is final: redeliveries of the request change nothing.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Succeeded
                | TaskStatus::Failed
                | TaskStatus::DeadLettered
                | TaskStatus::Cancelled
                | TaskStatus::Expired
        )
    }

    /// SQL list of terminal statuses, for `status in (...)` / `not in (...)`.
    pub const TERMINAL_SQL: &'static str = "('succeeded','failed','dead_lettered','cancelled','expired')";
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskStatus::ALL.into_iter().find(|t| t.as_str() == s).ok_or_else(|| format!("unknown task status `{s}`"))
    }
}

/// The record header in which the HTTP gateway names the caller who produced a record. For a
/// task request it is the task's owner, whatever the value's `submitted_by` says: a gateway
/// caller cannot submit a task in another user's name. Callers cannot set it (nor any
/// `devcycle.` header).
pub const SUBMITTED_BY_HEADER: &str = "devcycle.submitted_by";

/// A request to run `agent` on `input`, as carried by the requests topic.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRequest {
    pub task_id: Uuid,
    pub agent: String,
    /// JSON text, validated.
    pub input: serde_json::Value,
    pub priority: i32,
    pub submitted_by: Option<String>,
    pub submitted_at: DateTime<Utc>,
    pub deadline: Option<DateTime<Utc>>,
    pub request_id: Option<String>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    pub attempt: i32,
}

impl TaskRequest {
    /// A new first-attempt request with a fresh task id, submitted now; optional fields empty.
    pub fn new(agent: impl Into<String>, input: serde_json::Value) -> Self {
        TaskRequest {
            task_id: Uuid::new_v4(),
            agent: agent.into(),
            input,
            priority: 0,
            submitted_by: None,
            submitted_at: Utc::now(),
            deadline: None,
            request_id: None,
            traceparent: None,
            tracestate: None,
            attempt: 1,
        }
    }
}

/// The outcome of a task, as published on the results topic (key: task id).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskResult {
    pub task_id: Uuid,
    pub agent: String,
    pub status: TaskStatus,
    pub output: Option<serde_json::Value>,
    pub error: Option<String>,
    pub error_class: Option<String>,
    pub attempts: i32,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: DateTime<Utc>,
    pub request_id: Option<String>,
    pub traceparent: Option<String>,
    pub processor: String,
    pub source_topic: Option<String>,
    pub source_partition: Option<i32>,
    pub source_offset: Option<i64>,
}

/// One status transition of a task, as published on the events topic and kept in
/// `task_events`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskEvent {
    pub event_id: Uuid,
    pub task_id: Uuid,
    pub agent: String,
    pub from_status: Option<TaskStatus>,
    pub to_status: TaskStatus,
    pub attempt: i32,
    pub message: Option<String>,
    pub at: DateTime<Utc>,
    pub request_id: Option<String>,
}

impl TaskEvent {
    pub fn new(
        task_id: Uuid,
        agent: &str,
        from: Option<TaskStatus>,
        to: TaskStatus,
        attempt: i32,
        message: Option<String>,
        request_id: Option<String>,
    ) -> Self {
        TaskEvent {
            event_id: Uuid::new_v4(),
            task_id,
            agent: agent.to_string(),
            from_status: from,
            to_status: to,
            attempt,
            message,
            at: Utc::now(),
            request_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_and_terminal_set_matches_sql() {
        for s in TaskStatus::ALL {
            assert_eq!(s.as_str().parse::<TaskStatus>().unwrap(), s);
            assert_eq!(s.is_terminal(), TaskStatus::TERMINAL_SQL.contains(&format!("'{s}'")));
        }
        assert!("done".parse::<TaskStatus>().is_err());
    }
}
