//! Built-in executors for tests and demos: `echo` returns its input, `sleep` waits `ms`
//! milliseconds (input's `ms`, else the agent's), `fail` fails with input's `error` (else the
//! agent's). `fail` with `"retryable": true` fails retryably.

use super::ExecError;
use serde_json::Value;
use std::time::Duration;

/// Longest sleep a builtin agent accepts (10 minutes).
const MAX_SLEEP_MS: u64 = 600_000;

pub async fn run(config: &Value, input: &Value) -> Result<Value, ExecError> {
    let setting = |k: &str| input.get(k).or_else(|| config.get(k));
    match config.get("mode").and_then(Value::as_str) {
        Some("echo") => Ok(input.clone()),
        Some("sleep") => {
            let ms = setting("ms").and_then(Value::as_u64).unwrap_or(100);
            if ms > MAX_SLEEP_MS {
                return Err(ExecError::failed("invalid_input", format!("ms must be at most {MAX_SLEEP_MS}")));
            }
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(input.clone())
        }
        Some("fail") => {
            let msg = setting("error").and_then(Value::as_str).unwrap_or("failed on purpose").to_string();
            if setting("retryable").and_then(Value::as_bool).unwrap_or(false) {
                Err(ExecError::retryable("agent_error", msg))
            } else {
                Err(ExecError::failed("agent_error", msg))
            }
        }
        other => Err(ExecError::failed("agent_misconfigured", format!("unknown builtin mode {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn modes() {
        let input = json!({"x": 1, "ms": 5});
        assert_eq!(run(&json!({"mode": "echo"}), &input).await.unwrap(), input);
        assert_eq!(run(&json!({"mode": "sleep"}), &input).await.unwrap(), input);
        let e = run(&json!({"mode": "fail", "error": "boom"}), &json!({})).await.unwrap_err();
        assert_eq!(e, ExecError::failed("agent_error", "boom"));
        let e = run(&json!({"mode": "fail"}), &json!({"retryable": true})).await.unwrap_err();
        assert!(matches!(e, ExecError::Retryable { .. }));
        assert!(run(&json!({"mode": "nope"}), &input).await.is_err());
    }
}
