//! The `http` executor: POSTs the input as JSON to the agent's `url`; a 2xx response body is the
//! output (JSON if it parses, else a string). 5xx, 408, 429 and connection errors are retryable;
//! other statuses fail the task.

use super::{output_json, ExecError};
use serde_json::Value;
use std::time::Duration;

/// Largest response body accepted as output.
const MAX_BODY: usize = 10 * 1024 * 1024;

pub async fn run(
    client: &reqwest::Client,
    config: &Value,
    input: &Value,
    timeout: Duration,
) -> Result<Value, ExecError> {
    let url = config
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| ExecError::failed("agent_misconfigured", "http agent needs config.url"))?;
    let mut req = client.post(url).json(input).timeout(timeout);
    if let Some(headers) = config.get("headers").and_then(Value::as_object) {
        for (k, v) in headers {
            if let Some(v) = v.as_str() {
                req = req.header(k, v);
            }
        }
    }
    let resp = req.send().await.map_err(|e| {
        if e.is_builder() {
            ExecError::failed("agent_misconfigured", e.to_string())
        } else {
            ExecError::retryable("http_connection", e.to_string())
        }
    })?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| ExecError::retryable("http_connection", e.to_string()))?;
    if body.len() > MAX_BODY {
        return Err(ExecError::failed("output_too_large", format!("response body over {MAX_BODY} bytes")));
    }
    let text = String::from_utf8_lossy(&body);
    if status.is_success() {
        return Ok(output_json(&text));
    }
    let message = format!("HTTP {}: {}", status.as_u16(), text.chars().take(500).collect::<String>());
    if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
        Err(ExecError::retryable("http_status", message))
    } else {
        Err(ExecError::failed("http_status", message))
    }
}
