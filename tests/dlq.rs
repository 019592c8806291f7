//! Retries, dead letters and replay, against the real stack: a task that keeps failing
//! retryably is tried `max_attempts` times, dead-lettered with its reason, and runs once replayed
//! after the cause is fixed.

mod common;

use common::TestApp;
use devcycle::ops::dlq::{self, Filter};
use devcycle::runtime::dlq as h;
use serde_json::json;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_then_dead_lettered_then_replayed_once_fixed() {
    let app = TestApp::spawn().await;
    let (s, b) = app
        .post(
            "/v1/agents",
            &json!({"name": "flaky", "executor": "builtin",
            "config": {"mode": "fail", "retryable": true, "error": "upstream is down"}}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let id = app.submit("flaky", json!({"job": 1})).await;
    let dead = app.wait_status(id, "dead_lettered", WAIT).await;
    assert_eq!(dead["attempts"], 3, "{dead}");
    assert_eq!(dead["error"], "upstream is down");
    let events = devcycle::db::tasks::events(&app.deps.pool, id).await.unwrap();
    let statuses: Vec<&str> = events.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(statuses, ["running", "retrying", "running", "retrying", "running", "dead_lettered"]);

    let letters = dlq::list(&app.deps, &Filter::default()).await.unwrap();
    assert_eq!(letters.len(), 1);
    let (letter, replayed) = &letters[0];
    assert!(!replayed);
    assert_eq!(letter.header(h::H_CLASS).as_deref(), Some("agent_error"));
    assert_eq!(letter.header(h::H_ATTEMPTS).as_deref(), Some("3"));
    assert_eq!(letter.header(h::H_TOPIC), Some(app.topic("devcycle.task-requests")));
    assert_eq!(letter.key.as_deref(), Some(id.to_string().as_bytes()));
    let first = letter.header(h::H_FIRST).unwrap();
    let last = letter.header(h::H_LAST).unwrap();
    assert!(first <= last, "{first} {last}");

    // A filter that matches nothing replays nothing.
    let none = Filter { class: Some("unknown_agent".into()), ..Filter::default() };
    assert!(dlq::replay(&app.deps, &none, false).await.unwrap().is_empty());

    // Fix the cause, replay: the task runs and succeeds.
    let fix = app.http.patch(app.url("/v1/agents/flaky")).json(&json!({"config": {"mode": "echo"}}));
    assert_eq!(app.send(fix).await.0, 200);
    let replayed = dlq::replay(&app.deps, &Filter::default(), false).await.unwrap();
    assert_eq!(replayed.len(), 1);
    let done = app.wait_status(id, "succeeded", WAIT).await;
    assert_eq!(done["output"], json!({"job": 1}));

    // At most once: a second replay finds nothing new, and the list marks it replayed.
    assert!(dlq::replay(&app.deps, &Filter::default(), false).await.unwrap().is_empty());
    let letters = dlq::list(&app.deps, &Filter::default()).await.unwrap();
    assert!(letters.iter().all(|(_, replayed)| *replayed));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_agent_from_a_raw_producer_is_dead_lettered() {
    let app = TestApp::spawn().await;
    let req = devcycle::domain::TaskRequest::new("ghost", json!({}));
    let topic = app.topic("devcycle.task-requests");
    let bytes = app.deps.codec.encode_request(&topic, &req).await.unwrap();
    let key = req.task_id.to_string();
    app.deps
        .producer
        .send(devcycle::kafka::OutRecord {
            topic: &topic,
            key: Some(key.as_bytes()),
            value: Some(&bytes),
            headers: vec![],
            partition: None,
        })
        .await
        .unwrap();
    let dead = app.wait_status(req.task_id, "dead_lettered", WAIT).await;
    assert_eq!(dead["error_class"], "unknown_agent");
    let letters =
        dlq::list(&app.deps, &Filter { class: Some("unknown_agent".into()), ..Filter::default() }).await.unwrap();
    assert_eq!(letters.len(), 1);
    app.stop().await;
}
