//! The `http` executor: POSTs the input as JSON to the agent's `url`; a 2xx response body is the
//! output (JSON if it parses, else a string). 5xx, 408, 429 and connection errors are retryable;
//! other statuses fail the task. The body is read up to [`MAX_BODY`] bytes: a longer one (as
//! announced, or as it arrives) fails the task without being read further.
//!
//! Each call is a CLIENT span (`POST`, under the attempt's `execute` span) whose context the
//! agent receives as `traceparent` (W3C), so the agent's own spans join the task's trace; with
//! export off the received `traceparent` is passed on unchanged. A `traceparent` in the agent's
//! configured headers is ignored: the call's context is the one that holds.

use super::{output_json, ExecError};
use crate::otlp::{Parent, SpanKind};
use serde_json::Value;
use std::time::Duration;

/// Largest response body accepted as output.
const MAX_BODY: usize = 10 * 1024 * 1024;

pub async fn run(
    client: &reqwest::Client,
    config: &Value,
    input: &Value,
    timeout: Duration,
    trace: &Parent,
) -> Result<Value, ExecError> {
    let url = config
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| ExecError::failed("agent_misconfigured", "http agent needs config.url"))?;
    let mut span = trace.start("POST", SpanKind::Client);
    span.set("http.request.method", "POST");
    if let Ok(parsed) = reqwest::Url::parse(url) {
        span.set("server.address", parsed.host_str().unwrap_or_default().to_string());
        if let Some(port) = parsed.port_or_known_default() {
            span.set("server.port", port);
        }
    }
    let (status, result) = call(client, url, config, input, timeout, span.traceparent()).await;
    if let Some(status) = status {
        span.set("http.response.status_code", status);
    }
    if let Err(e) = &result {
        span.error(e.message());
    }
    result
}

/// POSTs `input` to `url` with the configured headers and `traceparent`; the response's status
/// (if one came) and the outcome.
async fn call(
    client: &reqwest::Client,
    url: &str,
    config: &Value,
    input: &Value,
    timeout: Duration,
    traceparent: Option<String>,
) -> (Option<u16>, Result<Value, ExecError>) {
    let mut req = client.post(url).json(input).timeout(timeout);
    if let Some(headers) = config.get("headers").and_then(Value::as_object) {
        for (k, v) in headers {
            if let Some(v) = v.as_str().filter(|_| !k.eq_ignore_ascii_case("traceparent")) {
                req = req.header(k, v);
            }
        }
    }
    if let Some(tp) = traceparent {
        req = req.header("traceparent", tp);
    }
    let resp = match req.send().await {
        Ok(resp) => resp,
        Err(e) if e.is_builder() => return (None, Err(ExecError::failed("agent_misconfigured", e.to_string()))),
        Err(e) => return (None, Err(ExecError::retryable("http_connection", e.to_string()))),
    };
    let status = resp.status();
    let result = match read_capped(resp).await {
        Err(e) => Err(e),
        Ok(body) => {
            let text = String::from_utf8_lossy(&body);
            let message = format!("HTTP {}: {}", status.as_u16(), text.chars().take(500).collect::<String>());
            if status.is_success() {
                Ok(output_json(&text))
            } else if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
                Err(ExecError::retryable("http_status", message))
            } else {
                Err(ExecError::failed("http_status", message))
            }
        }
    };
    (Some(status.as_u16()), result)
}

/// The response body, refused as soon as it is known to be over [`MAX_BODY`].
async fn read_capped(mut resp: reqwest::Response) -> Result<Vec<u8>, ExecError> {
    let too_large = || ExecError::failed("output_too_large", format!("response body over {MAX_BODY} bytes"));
    if resp.content_length().is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| ExecError::retryable("http_connection", e.to_string()))? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-connection HTTP server on 127.0.0.1 that reads the request head and answers with
    /// `head`, then `body` (repeated without end when `endless`).
    async fn server(head: &'static str, body: &'static [u8], endless: bool) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let _ = conn.read(&mut buf).await;
            conn.write_all(head.as_bytes()).await.unwrap();
            loop {
                if conn.write_all(body).await.is_err() || !endless {
                    break;
                }
            }
        });
        format!("http://{addr}/run")
    }

    async fn call(url: String) -> Result<Value, ExecError> {
        let trace = Parent::default();
        run(&reqwest::Client::new(), &json!({"url": url}), &json!({"a": 1}), Duration::from_secs(10), &trace).await
    }

    #[tokio::test]
    async fn statuses_decide_the_outcome() {
        let ok = "HTTP/1.1 200 OK\r\ncontent-length: 8\r\nconnection: close\r\n\r\n";
        assert_eq!(call(server(ok, b"{\"b\": 2}", false).await).await.unwrap(), json!({"b": 2}));
        let busy = "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\nconnection: close\r\n\r\n";
        let e = call(server(busy, b"busy", false).await).await.unwrap_err();
        assert!(matches!(e, ExecError::Retryable { .. }) && e.message().contains("busy"), "{e:?}");
        let gone = "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
        let e = call(server(gone, b"", false).await).await.unwrap_err();
        assert!(!matches!(e, ExecError::Retryable { .. }) && e.class() == "http_status", "{e:?}");
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused_without_reading_it_all() {
        // Announced: refused before reading.
        let big = "HTTP/1.1 200 OK\r\ncontent-length: 999999999\r\nconnection: close\r\n\r\n";
        assert_eq!(call(server(big, b"x", false).await).await.unwrap_err().class(), "output_too_large");
        // Unannounced and without end (a close-delimited body): refused once past the limit.
        let endless = "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n";
        let started = std::time::Instant::now();
        let e = call(server(endless, &[b'x'; 65536], true).await).await.unwrap_err();
        assert_eq!(e.class(), "output_too_large");
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    }
}
