//! The ingress's HTTP contract: every bad input gets the spec's error envelope with the right
//! status; agents CRUD; probes and metrics.

mod common;

use common::TestApp;
use serde_json::{json, Value};

fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["error"], want_code, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert!(body["timestamp"].is_string() && body["request_id"].is_string(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_error_envelope_and_never_a_500() {
    let app = TestApp::spawn_with(|s| s.http.max_body_bytes = 2048).await;
    let tasks = app.url("/v1/tasks");

    let r = app.http.post(&tasks).header("content-type", "application/json").body("{\"agent\": ");
    let (s, _, b) = app.send(r).await;
    assert_error(s, &b, 400, "MALFORMED_JSON");

    let (s, b) = app.post("/v1/tasks", &json!({"agent": "echo"})).await;
    assert_error(s, &b, 422, "VALIDATION_ERROR");
    assert_eq!(b["details"], json!({"field": "input", "issue": "is required"}));

    let (s, b) = app.post("/v1/tasks", &json!({"agent": "echo", "input": 1, "priority": "high"})).await;
    assert_error(s, &b, 422, "VALIDATION_ERROR");
    assert_eq!(b["details"]["field"], "priority");

    let (s, b) = app.post("/v1/tasks", &json!({"agent": "no-such-agent", "input": 1})).await;
    assert_error(s, &b, 422, "VALIDATION_ERROR");
    assert_eq!(b["details"]["field"], "agent");

    let (s, b) = app.get("/v1/nothing-here").await;
    assert_error(s, &b, 404, "NOT_FOUND");

    let (s, h, b) = app.send(app.http.delete(&tasks)).await;
    assert_error(s, &b, 405, "METHOD_NOT_ALLOWED");
    assert_eq!(h["allow"], "POST");

    let big = json!({"agent": "echo", "input": "x".repeat(4096)});
    let (s, b) = app.post("/v1/tasks", &big).await;
    assert_error(s, &b, 413, "PAYLOAD_TOO_LARGE");

    let r = app.http.post(&tasks).header("content-type", "text/plain").body("agent=echo");
    let (s, _, b) = app.send(r).await;
    assert_error(s, &b, 415, "UNSUPPORTED_MEDIA_TYPE");

    let (s, b) = app.get("/v1/tasks/not-a-uuid").await;
    assert_error(s, &b, 422, "VALIDATION_ERROR");
    let (s, b) = app.get(&format!("/v1/tasks/{}", uuid::Uuid::new_v4())).await;
    assert_error(s, &b, 404, "NOT_FOUND");

    // NUL characters, which PostgreSQL cannot store or compare, are refused up front (found by
    // schemathesis as 500s): in bodies, queries and agent names.
    let (s, b) = app.post("/v1/tasks", &json!({"agent": "echo", "input": {"a": ["ok", "x\0"]}})).await;
    assert_error(s, &b, 422, "VALIDATION_ERROR");
    assert_eq!(b["details"]["field"], "input.a[1]");
    let agent = json!({"name": "nul", "executor": "builtin", "config": {"mode": "echo"}, "description": "a\0"});
    let (s, b) = app.post("/v1/agents", &agent).await;
    assert_error(s, &b, 422, "VALIDATION_ERROR");
    let (s, b) = app.post("/v1/auth/login", &json!({"email": "a\0@example.com", "password": "x"})).await;
    assert_error(s, &b, 422, "VALIDATION_ERROR");
    let huge = "page=9223372036854775807";
    for path in ["/v1/agents?q=a%00b", "/v1/audit?action=a%00b", "/v1/audit?actor=%00", &format!("/v1/audit?{huge}")] {
        let (s, b) = app.get(path).await;
        assert_error(s, &b, 422, "VALIDATION_ERROR");
    }
    let (s, b) = app.get("/v1/agents/a%00b").await;
    assert_error(s, &b, 404, "NOT_FOUND");
    let (s, _, b) = app.send(app.http.delete(app.url("/v1/agents/a%00b"))).await;
    assert_error(s, &b, 404, "NOT_FOUND");

    // Injection-looking text is just data.
    let sneaky = "x'); DROP TABLE tasks; --";
    let id = app.submit("echo", json!({"text": sneaky})).await;
    let done = app.wait_status(id, "succeeded", std::time::Duration::from_secs(60)).await;
    assert_eq!(done["output"]["text"], sneaky);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_unavailable_is_503_with_retry_after() {
    // A healthy app creates the namespace's topics and schemas...
    let healthy = TestApp::spawn().await;
    // ...then an ingress whose producer points at a closed port.
    let mut s = healthy.deps.settings.clone();
    s.kafka.bootstrap_servers = "127.0.0.1:1".into();
    s.kafka.apply_on_start = false;
    s.database.migrate_on_start = false;
    s.http.produce_timeout_ms = 1500;
    s.http.retry_after_secs = 7;
    let deps = devcycle::app::Deps::connect(s).await.unwrap();
    let broken = TestApp::start(deps, devcycle::app::Mode::Ingress).await;
    let (s, h, b) =
        broken.send(broken.http.post(broken.url("/v1/tasks")).json(&json!({"agent": "echo", "input": {}}))).await;
    assert_error(s, &b, 503, "SERVICE_UNAVAILABLE");
    assert_eq!(h["retry-after"], "7");
    assert_eq!(b["details"]["service"], "kafka");
    let (s, b) = broken.get("/ready").await;
    assert_error(s, &b, 503, "SERVICE_UNAVAILABLE");
    assert_eq!(b["details"]["checks"]["kafka"], "unavailable");
    assert_eq!(b["details"]["checks"]["postgres"], "ok");
    broken.stop().await;
    healthy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_crud_with_paging_and_search() {
    let app = TestApp::spawn().await;
    let (s, b) = app
        .post(
            "/v1/agents",
            &json!({"name": "summarizer", "executor": "http",
            "config": {"url": "http://127.0.0.1:9/summarize"}, "description": "Summarizes long documents"}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["data"]["status"], "active");
    let (s, b) =
        app.post("/v1/agents", &json!({"name": "summarizer", "executor": "builtin", "config": {"mode": "echo"}})).await;
    assert_error(s, &b, 409, "CONFLICT");
    let (s, b) =
        app.post("/v1/agents", &json!({"name": "Bad Name", "executor": "builtin", "config": {"mode": "echo"}})).await;
    assert_error(s, &b, 422, "VALIDATION_ERROR");
    let (s, b) = app.post("/v1/agents", &json!({"name": "h2", "executor": "http", "config": {}})).await;
    assert_error(s, &b, 422, "VALIDATION_ERROR");
    assert_eq!(b["details"]["field"], "config.url");

    let (s, b) = app.get("/v1/agents/summarizer").await;
    assert_eq!((s, b["data"]["executor"].as_str()), (200, Some("http")));

    // Search by a word of the description; page through everything.
    let (s, b) = app.get("/v1/agents?q=documents").await;
    assert_eq!(s, 200);
    let names: Vec<&str> = b["data"]["items"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["summarizer"]);
    let (_, b) = app.get("/v1/agents?per_page=2&page=1").await;
    assert_eq!(b["data"]["total"], 4); // echo, sleep, fail, summarizer
    assert_eq!(b["data"]["items"].as_array().unwrap().len(), 2);
    let (_, b) = app.get("/v1/agents?per_page=2&page=2").await;
    assert_eq!(b["data"]["items"].as_array().unwrap().len(), 2);
    let (s, b) = app.get("/v1/agents?per_page=0").await;
    assert_error(s, &b, 422, "VALIDATION_ERROR");

    // PUT replaces, PATCH merges.
    let put = app
        .http
        .put(app.url("/v1/agents/summarizer"))
        .json(&json!({"executor": "builtin", "config": {"mode": "echo"}}));
    let (s, _, b) = app.send(put).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["data"]["description"], "");
    let patch = app.http.patch(app.url("/v1/agents/summarizer")).json(&json!({"status": "disabled"}));
    let (s, _, b) = app.send(patch).await;
    assert_eq!(
        (s, b["data"]["status"].as_str(), b["data"]["executor"].as_str()),
        (200, Some("disabled"), Some("builtin"))
    );
    let (s, b) = app.post("/v1/tasks", &json!({"agent": "summarizer", "input": {}})).await;
    assert_error(s, &b, 422, "VALIDATION_ERROR");
    let patch = app.http.patch(app.url("/v1/agents/nobody")).json(&json!({"status": "disabled"}));
    let (s, _, b) = app.send(patch).await;
    assert_error(s, &b, 404, "NOT_FOUND");

    let (s, _, _) = app.send(app.http.delete(app.url("/v1/agents/summarizer"))).await;
    assert_eq!(s, 200);
    let (s, b) = app.get("/v1/agents/summarizer").await;
    assert_error(s, &b, 404, "NOT_FOUND");
    // An agent with tasks cannot be deleted.
    let id = app.submit("echo", json!({})).await;
    app.wait_status(id, "succeeded", std::time::Duration::from_secs(60)).await;
    let (s, _, b) = app.send(app.http.delete(app.url("/v1/agents/echo"))).await;
    assert_error(s, &b, 409, "CONFLICT");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_metrics() {
    let app = TestApp::spawn().await;
    let (s, b) = app.get("/health").await;
    assert_eq!((s, b["data"]["status"].as_str()), (200, Some("ok")));
    let (s, b) = app.get("/startup").await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = app.get("/ready").await;
    assert_eq!(s, 200, "{b}");
    let checks = &b["data"]["checks"];
    for dep in ["kafka", "schema_registry", "postgres", "redis"] {
        assert_eq!(checks[dep], "ok", "{b}");
    }
    assert_eq!(checks["processors"], json!({"agent-executor": "ok"}), "{b}");
    let text = app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("devcycle_http_requests_total{method=\"GET\",route=\"/ready\",status=\"200\"}"), "{text}");
    assert!(text.contains("devcycle_http_request_duration_seconds_bucket"));
    assert!(text.contains("devcycle_pool_connections{pool=\"postgres\",state=\"idle\"}"), "{text}");
    app.stop().await;
}
