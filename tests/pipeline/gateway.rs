//! End to end through the other ways in and out: task requests produced over the HTTP gateway
//! to topics (a JSON batch, an ndjson stream, and a respond-async batch with its receipt) run
//! and reach the results topic; an `http` agent is called with the task's input, and its
//! answer, retryable failure or refusal decides the task.

use super::*;
use devcycle::domain::TaskResult;
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const RECORDS: &str = "/v1/topics/devcycle.task-requests/records";

fn request(i: usize) -> (uuid::Uuid, Value) {
    let id = uuid::Uuid::new_v4();
    let value = json!({"task_id": id.to_string(), "agent": "echo", "input": json!({"n": i}).to_string(),
                       "submitted_at": "2026-01-02T03:04:05.678Z"});
    (id, json!({"key": format!("k-{i}"), "value": value}))
}

fn assert_echoed(results: &[(TaskResult, Vec<(String, String)>)], ids: &[(uuid::Uuid, usize)]) {
    assert_eq!(results.len(), ids.len());
    for (id, n) in ids {
        let (r, _) = results.iter().find(|(r, _)| r.task_id == *id).expect("a result for every task");
        assert_eq!((r.status, r.attempts), (TaskStatus::Succeeded, 1), "{r:?}");
        assert_eq!(r.output, Some(json!({"n": n})), "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_requests_produced_through_the_topic_gateway_run_to_their_results() {
    let app = TestApp::spawn().await;
    let mut ids = Vec::new();

    // A JSON batch.
    let batch: Vec<(uuid::Uuid, Value)> = (0..10).map(request).collect();
    let records: Vec<&Value> = batch.iter().map(|(_, r)| r).collect();
    let (s, b) = app.post(RECORDS, &json!({ "records": records })).await;
    assert_eq!((s, b["data"]["written"].as_u64()), (200, Some(10)), "{b}");
    ids.extend(batch.iter().enumerate().map(|(i, (id, _))| (*id, i)));

    // An ndjson stream: one answer line per record.
    let stream: Vec<(uuid::Uuid, Value)> = (10..15).map(request).collect();
    let body: String = stream.iter().map(|(_, r)| format!("{r}\n")).collect();
    let r = app.http.post(app.url(RECORDS)).bearer_auth(&app.token).header("content-type", "application/x-ndjson");
    let r = r.body(body).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let text = r.text().await.unwrap();
    let written = text.lines().filter(|l| l.contains("\"offset\"")).count();
    assert_eq!(written, 5, "{text}");
    ids.extend(stream.iter().enumerate().map(|(i, (id, _))| (*id, 10 + i)));

    // respond-async: 202 with a receipt that completes with the lines.
    let later: Vec<(uuid::Uuid, Value)> = (15..18).map(request).collect();
    let records: Vec<&Value> = later.iter().map(|(_, r)| r).collect();
    let req = app.http.post(app.url(RECORDS)).header("prefer", "respond-async").json(&json!({ "records": records }));
    let (s, _, b) = app.send(req).await;
    assert_eq!(s, 202, "{b}");
    let receipt = b["data"]["receipt_id"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (s, b) = app.get(&format!("/v1/receipts/{receipt}")).await;
        assert_eq!(s, 200, "{b}");
        if b["data"]["state"] == "complete" {
            assert_eq!(b["data"]["written"], 3, "{b}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "receipt still {b}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ids.extend(later.iter().enumerate().map(|(i, (id, _))| (*id, 15 + i)));

    let only_ids: Vec<uuid::Uuid> = ids.iter().map(|(id, _)| *id).collect();
    let results = app.read_results(&only_ids, WAIT).await;
    assert_echoed(&results, &ids);
    // The HTTP status of one of them, and its durable record.
    let (id, n) = ids[12];
    let done = app.wait_status(id, "succeeded", WAIT).await;
    assert_eq!(done["output"], json!({"n": n}));
    let row = devcycle::db::tasks::get(&app.deps.pool, id).await.unwrap().unwrap();
    assert_eq!(row.status, TaskStatus::Succeeded);
    app.stop().await;
}

/// A one-request-per-connection HTTP server on 127.0.0.1: `/ok` answers `{"seen": body}`,
/// `/flaky` answers 503 the first time and like `/ok` after, `/bad` answers 400. Returns its
/// address and how many requests it has had.
async fn agent_server() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let (count, flaky) = (hits.clone(), Arc::new(AtomicUsize::new(0)));
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let flaky = flaky.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head, body) = loop {
                    let n = conn.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                            })
                            .and_then(|v| v.parse::<usize>().ok())
                            .unwrap_or(0);
                        if body.len() >= len {
                            break (head.to_string(), body[..len].to_string());
                        }
                    }
                };
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                let seen = || json!({"seen": serde_json::from_str::<Value>(&body).unwrap_or(Value::Null)}).to_string();
                let (status, answer) = match path.as_str() {
                    "/ok" => ("200 OK", seen()),
                    "/flaky" if flaky.fetch_add(1, Ordering::SeqCst) == 0 => ("503 Service Unavailable", "busy".into()),
                    "/flaky" => ("200 OK", seen()),
                    _ => ("400 Bad Request", "no such thing".into()),
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                    answer.len()
                );
                let _ = conn.write_all(response.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    (addr, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_agent_s_answer_decides_its_task() {
    let app = TestApp::spawn().await;
    let (addr, hits) = agent_server().await;
    for (name, path) in [("remote-ok", "/ok"), ("remote-flaky", "/flaky"), ("remote-bad", "/bad")] {
        let agent = json!({"name": name, "executor": "http", "config": {"url": format!("http://{addr}{path}")}});
        let (s, b) = app.post("/v1/agents", &agent).await;
        assert_eq!(s, 201, "{b}");
    }
    let ok = app.submit("remote-ok", json!({"q": "ping"})).await;
    let flaky = app.submit("remote-flaky", json!({"q": 2})).await;
    let bad = app.submit("remote-bad", json!({})).await;

    let done = app.wait_status(ok, "succeeded", WAIT).await;
    assert_eq!((&done["output"], done["attempts"].as_i64()), (&json!({"seen": {"q": "ping"}}), Some(1)), "{done}");
    let done = app.wait_status(flaky, "succeeded", WAIT).await;
    assert_eq!(
        (&done["output"], done["attempts"].as_i64()),
        (&json!({"seen": {"q": 2}}), Some(2)),
        "a 503 is retried: {done}"
    );
    let done = app.wait_status(bad, "failed", WAIT).await;
    assert!(done["error"].as_str().unwrap_or("").contains("400"), "a 400 fails the task at once: {done}");
    assert_eq!(done["attempts"], 1, "{done}");
    assert_eq!(hits.load(Ordering::SeqCst), 4, "ok once, flaky twice, bad once");
    app.stop().await;
}
