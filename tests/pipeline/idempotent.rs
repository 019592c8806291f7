//! `Idempotency-Key` on task submission: a retry names the same task and produces nothing
//! again, while the stored answer lives (in Postgres: Redis forgetting everything changes
//! nothing) and after it expired (the task's record answers then); the key is the caller's own
//! and bound to its request body.

use super::*;
use base64::Engine;
use reqwest::header::HeaderMap;
use serde_json::Value;

/// Submits `body` with `Idempotency-Key: key` as the holder of `token`.
async fn submit_keyed(app: &TestApp, token: &str, key: &str, body: &Value) -> (u16, HeaderMap, Value) {
    let r = app.http.post(app.url("/v1/tasks")).bearer_auth(token).header("idempotency-key", key).json(body);
    app.send_raw(r).await
}

/// The user id (`sub`) an access token names.
fn user_id(token: &str) -> String {
    let payload = token.split('.').nth(1).expect("a JWT");
    let claims: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    claims["sub"].as_str().expect("sub").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_submission_names_the_same_task_and_produces_it_once() {
    let app = TestApp::spawn().await;
    let (key, body) = ("order-42", json!({"agent": "echo", "input": {"order": 42}}));
    let (status, headers, first) = submit_keyed(&app, &app.token, key, &body).await;
    assert_eq!(status, 202, "{first}");
    assert!(headers.get("idempotent-replayed").is_none());
    let id: uuid::Uuid = first["data"]["task_id"].as_str().unwrap().parse().unwrap();

    // A retry gets the first answer as it was.
    let (status, headers, again) = submit_keyed(&app, &app.token, key, &body).await;
    assert_eq!((status, &again), (202, &first));
    assert_eq!(headers["idempotent-replayed"], "true");
    // The same request from a serializer that orders keys otherwise is the same request.
    let reordered = json!({"input": {"order": 42}, "agent": "echo"});
    assert_ne!(reordered.to_string(), body.to_string());
    let (status, headers, again) = submit_keyed(&app, &app.token, key, &reordered).await;
    assert_eq!((status, &again), (202, &first), "keys in another order");
    assert_eq!(headers["idempotent-replayed"], "true");
    // The key with another body is refused; another caller's same key is another task.
    let other_body = json!({"agent": "echo", "input": {"order": 43}});
    let (status, _, refused) = submit_keyed(&app, &app.token, key, &other_body).await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["details"]["field"], "Idempotency-Key", "{refused}");
    let (_, other_caller) = app.user_token("developer").await;
    let (status, _, theirs) = submit_keyed(&app, &other_caller, key, &body).await;
    assert_eq!(status, 202, "{theirs}");
    assert_ne!(theirs["data"]["task_id"], first["data"]["task_id"]);

    // Redis forgets every key of this app (a restart without persistence, an eviction): the
    // retry still gets the first answer, byte for byte.
    app.wait_status(id, "succeeded", WAIT).await;
    app.forget_redis().await;
    let (status, headers, after_redis) = submit_keyed(&app, &app.token, key, &body).await;
    assert_eq!((status, &after_redis), (202, &first), "after Redis lost its keys");
    assert_eq!(headers["idempotent-replayed"], "true");

    // The stored answer expires (removed here) while the task's record stays: the retry is
    // answered from the record, same task, partition and offset, and produces nothing.
    let record = format!("tasks:{}:{key}", user_id(&app.token));
    let removed = sqlx::query("DELETE FROM idempotency_keys WHERE id = $1").bind(&record).execute(&app.deps.pool);
    assert_eq!(removed.await.unwrap().rows_affected(), 1, "the stored answer {record}");
    let (status, _, refused) = submit_keyed(&app, &app.token, key, &other_body).await;
    assert_eq!(status, 422, "another body, told by the record: {refused}");
    let (status, headers, after_loss) = submit_keyed(&app, &app.token, key, &body).await;
    assert_eq!(status, 202, "{after_loss}");
    assert_eq!(headers["idempotent-replayed"], "true");
    for field in ["task_id", "agent", "status", "topic", "partition", "offset"] {
        assert_eq!(after_loss["data"][field], first["data"][field], "{field}: {after_loss} vs {first}");
    }
    // Two tasks were produced in all (ours once, the other caller's), and ours ran once.
    assert_eq!(app.record_count("devcycle.task-requests"), 2);
    let done = app.wait_status(id, "succeeded", WAIT).await;
    assert_eq!(done["attempts"], 1, "{done}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_idempotency_key_is_refused_and_produces_nothing() {
    let app = TestApp::spawn().await;
    let body = json!({"agent": "echo", "input": {}});
    for key in ["x".repeat(256), "with space".to_string()] {
        let (status, _, refused) = submit_keyed(&app, &app.token, &key, &body).await;
        assert_eq!(status, 422, "{key}: {refused}");
        assert_eq!(refused["details"]["field"], "Idempotency-Key", "{refused}");
    }
    assert_eq!(app.record_count("devcycle.task-requests"), 0);
    app.stop().await;
}
