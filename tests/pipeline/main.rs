//! End to end against the real services: HTTP → Kafka (Avro) → agent-executor → Postgres,
//! Redis and the results topic.

#[path = "../common/mod.rs"]
mod common;
mod duplicates;
mod gateway;
mod idempotent;
mod rebalance;

use common::TestApp;
use devcycle::domain::TaskStatus;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_task_comes_back_succeeded_everywhere() {
    let app = TestApp::spawn().await;
    let r = app
        .http
        .post(app.url("/v1/tasks"))
        .header("x-request-id", "req_echo_test_1")
        .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .json(&json!({"agent": "echo", "input": {"hello": "world", "n": [1, 2, 3]}}));
    let (status, headers, body) = app.send(r).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["success"], true);
    assert_eq!(body["request_id"], "req_echo_test_1");
    assert_eq!(headers["x-request-id"], "req_echo_test_1");
    let data = &body["data"];
    assert_eq!(data["status"], "queued");
    assert_eq!(data["topic"], app.topic("devcycle.task-requests"));
    assert!(data["partition"].as_i64().unwrap() >= 0 && data["offset"].as_i64().unwrap() >= 0);
    let id: uuid::Uuid = data["task_id"].as_str().unwrap().parse().unwrap();

    // Readable at once (queued, or already further along).
    let (s, now) = app.get(&format!("/v1/tasks/{id}")).await;
    assert_eq!(s, 200);
    assert!(["queued", "running", "succeeded"].contains(&now["data"]["status"].as_str().unwrap()), "{now}");

    let done = app.wait_status(id, "succeeded", WAIT).await;
    assert_eq!(done["output"], json!({"hello": "world", "n": [1, 2, 3]}));
    assert_eq!(done["attempts"], 1);

    // The durable record.
    let row = devcycle::db::tasks::get(&app.deps.pool, id).await.unwrap().unwrap();
    assert_eq!(row.status, TaskStatus::Succeeded);
    assert_eq!(row.output, Some(json!({"hello": "world", "n": [1, 2, 3]})));
    assert_eq!(row.request_id.as_deref(), Some("req_echo_test_1"));
    assert!(row.started_at.is_some() && row.finished_at.is_some());
    assert_eq!(row.source_topic.as_deref(), Some(app.topic("devcycle.task-requests").as_str()));
    let events = devcycle::db::tasks::events(&app.deps.pool, id).await.unwrap();
    let statuses: Vec<&str> = events.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(statuses, ["running", "succeeded"]);

    // The hot status.
    let hot = app.deps.cache.get_status(id).await.unwrap().unwrap();
    assert_eq!(hot["status"], "succeeded");

    // The result topic, decoded through the registry, with the request id carried along.
    let results = app.read_results(&[id], WAIT).await;
    let (result, headers) = &results[0];
    assert_eq!(result.status, TaskStatus::Succeeded);
    assert_eq!(result.output, Some(json!({"hello": "world", "n": [1, 2, 3]})));
    assert_eq!(result.request_id.as_deref(), Some("req_echo_test_1"));
    assert_eq!(result.traceparent.as_deref(), Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
    assert!(headers.contains(&("request_id".to_string(), "req_echo_test_1".to_string())));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_agent_gives_failed() {
    let app = TestApp::spawn().await;
    let id = app.submit("fail", json!({"error": "boom on purpose"})).await;
    let done = app.wait_status(id, "failed", WAIT).await;
    assert_eq!(done["error"], "boom on purpose");
    assert_eq!(done["error_class"], "agent_error");
    let results = app.read_results(&[id], WAIT).await;
    assert_eq!(results[0].0.status, TaskStatus::Failed);
    assert_eq!(results[0].0.error.as_deref(), Some("boom on purpose"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_agent_runs_its_program() {
    let app = TestApp::spawn().await;
    let (s, body) = app
        .post(
            "/v1/agents",
            &json!({"name": "upper", "executor": "command", "description": "uppercases its input",
                    "config": {"program": "tr", "args": ["a-z", "A-Z"], "memory_limit_mb": 256}}),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    let id = app.submit("upper", json!({"text": "shout"})).await;
    let done = app.wait_status(id, "succeeded", WAIT).await;
    assert_eq!(done["output"], json!({"TEXT": "SHOUT"}));

    // A program that exits non-zero fails the task with its stderr.
    let (s, _) = app
        .post(
            "/v1/agents",
            &json!({"name": "broken", "executor": "command",
            "config": {"program": "sh", "args": ["-c", "echo it broke >&2; exit 4"]}}),
        )
        .await;
    assert_eq!(s, 201);
    let id = app.submit("broken", json!({})).await;
    let done = app.wait_status(id, "failed", WAIT).await;
    assert!(done["error"].as_str().unwrap().contains("it broke"), "{done}");

    // Output with a NUL character (which Postgres cannot store) is recorded with U+FFFD in its
    // place, once: not a failed write that runs the program again.
    let (s, _) = app
        .post(
            "/v1/agents",
            &json!({"name": "nul", "executor": "command", "config": {"program": "printf", "args": ["a\\0b"]}}),
        )
        .await;
    assert_eq!(s, 201);
    let id = app.submit("nul", json!({})).await;
    let done = app.wait_status(id, "succeeded", WAIT).await;
    assert_eq!((&done["output"], done["attempts"].as_i64()), (&json!("a\u{FFFD}b"), Some(1)), "{done}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_pills_go_to_the_dead_letter_topic_and_the_partition_keeps_flowing() {
    let app = TestApp::spawn().await;
    let requests = app.topic("devcycle.task-requests");
    let producer: FutureProducer = devcycle::kafka::client_config(&app.deps.settings.kafka, "poison").create().unwrap();
    let bad: [(&str, &[u8]); 3] = [
        ("p1", b"not avro at all"),
        ("p2", &[0, 0, 0, 0x7f, 0x7f, 1, 2, 3]), // unknown schema id
        ("p3", &[1, 0, 0, 0, 1, 2]),             // bad magic byte
    ];
    for (key, value) in bad {
        producer
            .send(FutureRecord::to(&requests).key(key).payload(value).partition(0), Duration::from_secs(10))
            .await
            .unwrap();
    }
    // A good task behind them, on the same partition.
    let good = app.submit("echo", json!({"after": "poison"})).await;
    app.wait_status(good, "succeeded", WAIT).await;

    let dlq = app.consumer(&app.topic("devcycle.dead-letters"));
    let mut seen = std::collections::BTreeMap::new();
    let deadline = std::time::Instant::now() + WAIT;
    while seen.len() < 3 {
        assert!(std::time::Instant::now() < deadline, "dead letters seen: {seen:?}");
        let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(5), dlq.recv()).await else { continue };
        use rdkafka::Message;
        let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
        let headers: std::collections::BTreeMap<String, String> = common::header_pairs(&m).into_iter().collect();
        seen.insert(key, (m.payload().unwrap().to_vec(), headers));
    }
    for (key, value) in bad {
        let (bytes, headers) = &seen[key];
        assert_eq!(bytes.as_slice(), value, "original bytes kept for {key}");
        assert_eq!(headers["dlq.source.topic"], requests);
        assert_eq!(headers["dlq.source.partition"], "0");
        assert_eq!(
            headers["dlq.consumer.group"],
            format!("{}devcycle.agent-executor", app.deps.settings.kafka.namespace)
        );
        assert!(!headers["dlq.error.message"].is_empty());
        assert!(headers["dlq.source.offset"].parse::<i64>().is_ok());
        assert_eq!(headers["dlq.attempts"], "1");
        assert!(chrono::DateTime::parse_from_rfc3339(&headers["dlq.first.failure"]).is_ok());
    }
    assert_eq!(seen["p1"].1["dlq.error.class"], "bad_magic_byte");
    assert_eq!(seen["p3"].1["dlq.error.class"], "bad_magic_byte");
    assert_eq!(seen["p2"].1["dlq.error.class"], "unknown_schema");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_all_finish_exactly_once() {
    let app = TestApp::spawn().await;
    let mut ids = Vec::new();
    for i in 0..100 {
        let agent = if i % 10 == 0 { "fail" } else { "echo" };
        ids.push(app.submit(agent, json!({"i": i})).await);
    }
    let results = app.read_results(&ids, WAIT).await;
    let unique: std::collections::BTreeSet<_> = results.iter().map(|r| r.0.task_id).collect();
    assert_eq!(unique.len(), 100);
    let failed = results.iter().filter(|r| r.0.status == TaskStatus::Failed).count();
    assert_eq!(failed, 10);
    let (finished,): (i64,) = sqlx::query_as("SELECT count(*) FROM tasks WHERE status IN ('succeeded', 'failed')")
        .fetch_one(&app.deps.pool)
        .await
        .unwrap();
    assert_eq!(finished, 100);
    let (runs,): (i64,) = sqlx::query_as("SELECT count(*) FROM task_events WHERE to_status = 'running'")
        .fetch_one(&app.deps.pool)
        .await
        .unwrap();
    assert_eq!(runs, 100, "each task ran once");
    app.stop().await;
}

/// The `to_status` of each TaskEvent of `id` on the events topic, in topic order, once `n` are
/// there.
async fn published_statuses(app: &TestApp, id: uuid::Uuid, n: usize) -> Vec<String> {
    use apache_avro::types::Value;
    use rdkafka::Message;
    let consumer = app.consumer(&app.topic("devcycle.task-events"));
    let deadline = std::time::Instant::now() + WAIT;
    let mut seen = Vec::new();
    while seen.len() < n {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(!left.is_zero(), "events of {id} on the topic: {seen:?}");
        let Ok(Ok(m)) = tokio::time::timeout(left, consumer.recv()).await else { continue };
        if m.key() != Some(id.to_string().as_bytes()) {
            continue;
        }
        let Value::Record(fields) = app.deps.codec.decode_value("TaskEvent", m.payload()).await.unwrap() else {
            panic!("a TaskEvent is a record")
        };
        match fields.into_iter().find(|(k, _)| k == "to_status") {
            Some((_, Value::String(s))) => seen.push(s),
            other => panic!("to_status: {other:?}"),
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_done_within_running_after_is_written_once_and_a_longer_one_shows_running() {
    let app = TestApp::spawn_with(|s| {
        s.paths.processors = common::processors_with(&s.database.schema, &[("running_after_ms", "1500".into())]);
    })
    .await;
    // Quick (0.6 s < 1.5 s): `queued` while it runs, then one write with both events.
    let quick = app.submit("sleep", json!({"ms": 600})).await;
    let seen_at = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, b) = app.get(&format!("/v1/tasks/{quick}")).await;
    let at_300ms = b["data"]["status"].as_str().unwrap().to_string();
    let done = app.wait_status(quick, "succeeded", WAIT).await;
    assert!(seen_at.elapsed() >= Duration::from_millis(600));
    assert_eq!(at_300ms, "queued", "a quick task is not recorded running: {b}");
    assert_eq!(done["attempts"], 1);
    let row = devcycle::db::tasks::get(&app.deps.pool, quick).await.unwrap().unwrap();
    let ran = row.finished_at.unwrap() - row.started_at.expect("started_at is the attempt's start");
    assert!(ran >= chrono::Duration::milliseconds(590), "started_at is when it started, not when written: {ran}");
    assert_eq!(row.source_topic.as_deref(), Some(app.topic("devcycle.task-requests").as_str()));
    let events = devcycle::db::tasks::events(&app.deps.pool, quick).await.unwrap();
    let stored: Vec<(Option<&str>, &str, i32)> = events.iter().map(|e| (e.0.as_deref(), e.1.as_str(), e.2)).collect();
    assert_eq!(stored, [(Some("queued"), "running", 1), (Some("running"), "succeeded", 1)]);
    assert_eq!(published_statuses(&app, quick, 2).await, ["running", "succeeded"]);

    // Slow (3 s > 1.5 s): `running` is recorded and readable while it runs.
    let slow = app.submit("sleep", json!({"ms": 3000})).await;
    let running = app.wait_status(slow, "running", WAIT).await;
    assert_eq!(running["attempts"], 1);
    app.wait_status(slow, "succeeded", WAIT).await;
    let statuses: Vec<String> =
        devcycle::db::tasks::events(&app.deps.pool, slow).await.unwrap().into_iter().map(|e| e.1).collect();
    assert_eq!(statuses, ["running", "succeeded"]);
    assert_eq!(published_statuses(&app, slow, 2).await, ["running", "succeeded"]);

    app.stop().await;
}

/// Runs a task of `agent` to `succeeded`, then redelivers its request (a crash before the
/// offset commit) with another input: the stored result and events are published again,
/// unchanged, and nothing is written.
async fn redeliver_a_final_task(app: &TestApp, agent: &str) {
    let id = app.submit(agent, json!({"n": 1})).await;
    app.wait_status(id, "succeeded", WAIT).await;
    let before = devcycle::db::tasks::get(&app.deps.pool, id).await.unwrap().unwrap();
    let mut req = devcycle::domain::TaskRequest::new(agent, json!({"n": 2}));
    req.task_id = id;
    app.produce_request(&req, None).await;
    let results = app.read_results(&[id, id], WAIT).await;
    for (r, _) in &results {
        let want = (TaskStatus::Succeeded, 1, &Some(json!({"n": 1})));
        assert_eq!((r.status, r.attempts, &r.output), want, "{results:?}");
    }
    let after = devcycle::db::tasks::get(&app.deps.pool, id).await.unwrap().unwrap();
    assert_eq!((after.attempts, after.updated_at, after.output), (before.attempts, before.updated_at, before.output));
    let statuses: Vec<String> =
        devcycle::db::tasks::events(&app.deps.pool, id).await.unwrap().into_iter().map(|e| e.1).collect();
    assert_eq!(statuses, ["running", "succeeded"]);
    // The attempt's events are published again, all of them (a quick task's `running` is
    // published with its final event: a crash before publishing would otherwise lose it).
    let published = published_statuses(app, id, 4).await;
    assert_eq!(published, ["running", "succeeded", "running", "succeeded"]);
}

/// A redelivered final task of an agent with side effects does not run again: its command
/// counts its runs in a file.
async fn a_redelivered_final_task_is_not_run_again(running_after_ms: u64) {
    let app = TestApp::spawn_with(|s| {
        let edits = [("running_after_ms", running_after_ms.to_string())];
        s.paths.processors = common::processors_with(&s.database.schema, &edits);
    })
    .await;
    let runs = app.deps.settings.paths.processors.join("runs");
    let script = format!("echo run >> '{}'; cat", runs.display());
    let agent = json!({"name": "counted", "executor": "command", "config": {"program": "sh", "args": ["-c", script]}});
    assert_eq!(app.post("/v1/agents", &agent).await.0, 201);
    redeliver_a_final_task(&app, "counted").await;
    // Give a second run time to show before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(std::fs::read_to_string(&runs).unwrap().lines().count(), 1, "the agent ran once");
    app.stop().await;
}

/// A builtin agent (no side effects) runs without a status read first: a redelivered final
/// task may run again, but nothing is written and the stored result is published again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_final_task_of_a_builtin_agent_is_published_as_stored() {
    let app = TestApp::spawn().await;
    redeliver_a_final_task(&app, "echo").await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_final_task_is_not_run_again_when_quick_tasks_are_written_once() {
    a_redelivered_final_task_is_not_run_again(200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_final_task_is_not_run_again_when_running_is_written_first() {
    a_redelivered_final_task_is_not_run_again(0).await;
}

/// A submission's `key` is its request record's key; one without a key gives a keyless record
/// (the producer's sticky partitioner places it), with the task id in the value either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_s_key_is_its_record_key_and_none_without() {
    use rdkafka::Message;
    let app = TestApp::spawn_with(|s| s.run.processors.clear()).await;
    let (s, b) = app.post("/v1/tasks", &json!({"agent": "echo", "input": {"n": 1}, "key": "k-1"})).await;
    assert_eq!(s, 202, "{b}");
    let keyed: uuid::Uuid = b["data"]["task_id"].as_str().unwrap().parse().unwrap();
    let keyless = app.submit("echo", json!({"n": 2})).await;
    let consumer = app.consumer(&app.topic("devcycle.task-requests"));
    let mut keys = std::collections::BTreeMap::new();
    while keys.len() < 2 {
        let m = tokio::time::timeout(WAIT, consumer.recv()).await.expect("request record").unwrap();
        let req = app.deps.codec.decode_request(m.payload()).await.unwrap();
        keys.insert(req.task_id, m.key().map(<[u8]>::to_vec));
    }
    assert_eq!(keys[&keyed].as_deref(), Some(b"k-1".as_slice()));
    assert_eq!(keys[&keyless], None);
    app.stop().await;
}
