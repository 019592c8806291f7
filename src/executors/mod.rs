//! Executors: how an agent's task actually runs, chosen by the agent's `executor` column.
//!
//! Invariants: every execution is bounded by a timeout; an executor error says whether trying
//! again could help ([`ExecError::Retryable`]) or not ([`ExecError::Failed`]); executors never
//! touch Kafka, Postgres or Redis; each passes the attempt's trace context on to what it calls
//! (an HTTP agent as `traceparent`, a command's process as `TRACEPARENT`).

mod builtin;
mod command;
mod http;

use crate::domain::{Agent, ExecutorKind};
use std::time::Duration;

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ExecError {
    /// The task failed; running it again would fail the same way.
    #[error("{class}: {message}")]
    Failed { class: String, message: String },
    /// A transient failure (timeout, connection error, HTTP 5xx): worth another attempt.
    #[error("{class}: {message}")]
    Retryable { class: String, message: String },
}

impl ExecError {
    pub fn failed(class: &str, message: impl Into<String>) -> Self {
        ExecError::Failed { class: class.into(), message: message.into() }
    }
    pub fn retryable(class: &str, message: impl Into<String>) -> Self {
        ExecError::Retryable { class: class.into(), message: message.into() }
    }
    pub fn class(&self) -> &str {
        match self {
            ExecError::Failed { class, .. } | ExecError::Retryable { class, .. } => class,
        }
    }
    pub fn message(&self) -> &str {
        match self {
            ExecError::Failed { message, .. } | ExecError::Retryable { message, .. } => message,
        }
    }
}

/// Shared resources of the executors (one HTTP client per process).
#[derive(Clone)]
pub struct Executors {
    http: reqwest::Client,
}

impl Default for Executors {
    fn default() -> Self {
        Self::new()
    }
}

impl Executors {
    pub fn new() -> Self {
        let http = reqwest::Client::builder().pool_max_idle_per_host(32).build().expect("http client");
        Executors { http }
    }

    /// Runs `input` on `agent`, bounded by `timeout`, under `trace` (the attempt's `execute`
    /// span); returns the output as JSON.
    pub async fn execute(
        &self,
        agent: &Agent,
        input: &serde_json::Value,
        timeout: Duration,
        trace: &crate::otlp::Parent,
    ) -> Result<serde_json::Value, ExecError> {
        let run = async {
            match agent.executor {
                ExecutorKind::Builtin => builtin::run(&agent.config, input).await,
                ExecutorKind::Http => http::run(&self.http, &agent.config, input, timeout, trace).await,
                ExecutorKind::Command => command::run(&agent.config, input, trace.traceparent()).await,
            }
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(Ok(output)) => Ok(without_nul(output)),
            Ok(Err(ExecError::Failed { class, message })) => Err(ExecError::Failed { class, message: text(message) }),
            Ok(Err(ExecError::Retryable { class, message })) => {
                Err(ExecError::Retryable { class, message: text(message) })
            }
            // Dropping the future kills a command's child (kill_on_drop) and aborts HTTP calls.
            Err(_) => {
                let message = format!("no result within {} ms", timeout.as_millis());
                // Agents say whether a timeout is worth another attempt (default: yes).
                if agent.config.get("timeout_retryable").and_then(|v| v.as_bool()).unwrap_or(true) {
                    Err(ExecError::retryable("timeout", message))
                } else {
                    Err(ExecError::failed("timeout", message))
                }
            }
        }
    }
}

/// Output text as JSON: parsed when it is JSON, else a JSON string.
pub(crate) fn output_json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_string()))
}

/// Postgres stores no NUL character (jsonb and text refuse it), and a write that fails is
/// retried by running the agent again: so each NUL in an agent's output (strings and keys) or
/// error text becomes U+FFFD, and the outcome is recorded as it came.
fn without_nul(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) => Value::String(text(s)),
        Value::Array(a) => Value::Array(a.into_iter().map(without_nul).collect()),
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (text(k), without_nul(v))).collect()),
        other => other,
    }
}

fn text(s: String) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn with_export_off_a_command_gets_the_record_s_traceparent_unchanged() {
        use crate::domain::AgentStatus;
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let record = crate::otlp::Tracer::disabled().remote(Some(tp));
        let exec = record.start("execute c", crate::otlp::SpanKind::Internal).context();
        let agent = Agent {
            name: "c".into(),
            executor: ExecutorKind::Command,
            config: json!({"program": "sh", "args": ["-c", "printf '%s' \"$TRACEPARENT\""]}),
            description: String::new(),
            status: AgentStatus::Active,
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
        };
        let out = Executors::new().execute(&agent, &json!({}), Duration::from_secs(10), &exec).await.unwrap();
        assert_eq!(out, json!(tp));
    }

    #[test]
    fn nul_characters_become_replacement_characters() {
        let v = json!({"a\0": ["x\0y", 1, {"k": "\0"}], "n": null});
        assert_eq!(without_nul(v), json!({"a\u{FFFD}": ["x\u{FFFD}y", 1, {"k": "\u{FFFD}"}], "n": null}));
        assert_eq!(text("clean".into()), "clean");
    }
}
