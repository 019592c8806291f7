//! Rate limits, permissions and task ownership (reading, cancelling, submitting through the
//! gateway in another user's name), and injection strings as plain data.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_with_headers() {
    let app = TestApp::spawn_with(|s| {
        s.rate_limits.auth_per_window = 10;
        s.rate_limits.api_per_window = 6;
        s.rate_limits.submit_per_window = 2;
    })
    .await;
    // Task submission: 2 per window per user.
    app.submit("echo", json!({"n": 1})).await;
    app.submit("echo", json!({"n": 2})).await;
    let (s, h, b) = app.send(app.http.post(app.url("/v1/tasks")).json(&json!({"agent": "echo", "input": 3}))).await;
    assert_error(s, &b, 429, "RATE_LIMITED");
    assert_eq!(h["ratelimit-limit"], "2");
    assert_eq!(h["ratelimit-remaining"], "0");
    // API: 6 per window per user (three used above).
    for _ in 0..3 {
        let (s, h, _) = app.send(app.http.get(app.url("/v1/agents"))).await;
        assert_eq!(s, 200);
        assert_eq!(h["ratelimit-limit"], "6");
    }
    let (s, h, b) = app.send(app.http.get(app.url("/v1/agents"))).await;
    assert_error(s, &b, 429, "RATE_LIMITED");
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(h["ratelimit-reset"].to_str().unwrap(), retry.to_string());
    // Probes are not limited.
    assert_eq!(app.send_raw(app.http.get(app.url("/health"))).await.0, 200);

    // Brute force on login, per IP: the spawn's admin login used one of the 10.
    let email = app.create_user("developer").await;
    for i in 0..9 {
        let (s, b) = app.login(&email, &format!("Wrong-Guess-{i}!")).await;
        assert_error(s, &b, 401, "UNAUTHORIZED");
    }
    let (s, h, b) = post_public(&app, "/v1/auth/login", &json!({"email": email, "password": "Wrong-Guess-x!"})).await;
    assert_error(s, &b, 429, "RATE_LIMITED");
    assert!(h.contains_key("retry-after"));
    assert_eq!(h["ratelimit-limit"], "10");
    assert_eq!(h["ratelimit-remaining"], "0");
    // Even the right password is throttled now.
    assert_eq!(app.login(&email, PASSWORD).await.0, 429);
    // Each failure was audited with the IP and request id.
    let rows = devcycle::db::users::audit_list(&app.deps.pool, None, Some("login"), None, 100, 0).await.unwrap().0;
    let failures: Vec<_> = rows.iter().filter(|r| r.outcome == "failure").collect();
    assert_eq!(failures.len(), 9);
    assert!(failures.iter().all(|r| r.ip.as_deref() == Some("127.0.0.1") && r.request_id.is_some()));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_and_task_ownership() {
    let app = TestApp::spawn().await;
    let (_, viewer) = app.user_token("viewer").await;
    let viewer_id = payload(&viewer)["sub"].as_str().unwrap().to_string();
    let agent = json!({"name": "v-agent", "executor": "builtin", "config": {"mode": "echo"}});
    let (s, b) = post_with(&app, "/v1/agents", &viewer, &agent).await;
    assert_error(s, &b, 403, "FORBIDDEN");
    let (s, _, b) = app.send_raw(app.http.delete(app.url("/v1/agents/echo")).bearer_auth(&viewer)).await;
    assert_error(s, &b, 403, "FORBIDDEN");
    let (s, b) = post_with(&app, "/v1/tasks", &viewer, &json!({"agent": "echo", "input": 1})).await;
    assert_error(s, &b, 403, "FORBIDDEN");
    assert_eq!(get_with(&app, "/v1/agents", &viewer).await.0, 200);
    let (s, _, b) = get_with(&app, "/v1/audit", &viewer).await;
    assert_error(s, &b, 403, "FORBIDDEN");
    let (s, b) = app.get(&format!("/v1/audit?action=permission_denied&actor={viewer_id}")).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["data"]["total"], 4, "{b}");
    assert!(b["data"]["items"][0]["request_id"].is_string());

    // Developers see their own tasks only; admins see all.
    let (_, alice) = app.user_token("developer").await;
    let (_, bob) = app.user_token("developer").await;
    let alice_id = payload(&alice)["sub"].as_str().unwrap().to_string();
    let (s, b) = post_with(&app, "/v1/tasks", &alice, &json!({"agent": "echo", "input": {"secret": 42}})).await;
    assert_eq!(s, 202, "{b}");
    let id: uuid::Uuid = b["data"]["task_id"].as_str().unwrap().parse().unwrap();
    let path = format!("/v1/tasks/{id}");
    let (s, _, b) = get_with(&app, &path, &bob).await;
    assert_error(s, &b, 404, "NOT_FOUND");
    assert_eq!(get_with(&app, &path, &alice).await.0, 200);
    app.wait_status(id, "succeeded", Duration::from_secs(60)).await; // as admin
    let row = devcycle::db::tasks::get(&app.deps.pool, id).await.unwrap().unwrap();
    assert_eq!(row.submitted_by.as_deref(), Some(alice_id.as_str()));
    // Also from the Postgres record once the hot status is gone.
    app.deps.cache.forget_task(id).await.unwrap();
    let (s, _, b) = get_with(&app, &path, &bob).await;
    assert_error(s, &b, 404, "NOT_FOUND");
    let (s, _, b) = get_with(&app, &path, &alice).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["data"]["output"], json!({"secret": 42}));
    app.stop().await;
}

/// Only the submitter (or a caller with `task:read:all`) cancels a task; anyone else gets 404,
/// as for `GET`. A task cancelled while only queued keeps its submitter in Postgres.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_submitter_or_an_admin_cancels_a_task() {
    // No processor: submitted tasks stay queued, known only from their hot status.
    let deps = devcycle::app::Deps::connect(common::test_settings()).await.unwrap();
    let app = TestApp::start(deps, devcycle::app::Mode::Ingress).await;
    let (_, alice) = app.user_token("developer").await;
    let (_, bob) = app.user_token("developer").await;
    let alice_id = payload(&alice)["sub"].as_str().unwrap().to_string();
    let mut ids: Vec<uuid::Uuid> = Vec::new();
    for _ in 0..2 {
        let (s, b) = post_with(&app, "/v1/tasks", &alice, &json!({"agent": "echo", "input": 1})).await;
        assert_eq!(s, 202, "{b}");
        ids.push(b["data"]["task_id"].as_str().unwrap().parse().unwrap());
    }

    // Bob cannot cancel Alice's task, and it is still queued.
    let (s, b) = post_with(&app, &format!("/v1/tasks/{}/cancel", ids[0]), &bob, &json!({})).await;
    assert_error(s, &b, 404, "NOT_FOUND");
    assert!(devcycle::db::tasks::get(&app.deps.pool, ids[0]).await.unwrap().is_none(), "Bob's cancel wrote a row");
    let (s, _, b) = get_with(&app, &format!("/v1/tasks/{}", ids[0]), &alice).await;
    assert_eq!((s, b["data"]["status"].as_str()), (200, Some("queued")), "{b}");

    // Alice can; the row keeps her as the submitter, so she still finds it without Redis.
    let (s, b) = post_with(&app, &format!("/v1/tasks/{}/cancel", ids[0]), &alice, &json!({})).await;
    assert_eq!((s, b["data"]["status"].as_str()), (200, Some("cancelled")), "{b}");
    let row = devcycle::db::tasks::get(&app.deps.pool, ids[0]).await.unwrap().unwrap();
    assert_eq!((row.status.as_str(), row.submitted_by.as_deref()), ("cancelled", Some(alice_id.as_str())));
    app.deps.cache.forget_task(ids[0]).await.unwrap();
    let (s, _, b) = get_with(&app, &format!("/v1/tasks/{}", ids[0]), &alice).await;
    assert_eq!((s, b["data"]["status"].as_str()), (200, Some("cancelled")), "{b}");
    // Once Postgres has the row, Bob is still refused.
    let (s, b) = post_with(&app, &format!("/v1/tasks/{}/cancel", ids[0]), &bob, &json!({})).await;
    assert_error(s, &b, 404, "NOT_FOUND");

    // An admin (the test client) cancels anyone's task.
    let (s, b) = app.post(&format!("/v1/tasks/{}/cancel", ids[1]), &json!({})).await;
    assert_eq!((s, b["data"]["status"].as_str()), (200, Some("cancelled")), "{b}");
    app.stop().await;
}

/// A task request produced through the HTTP gateway belongs to the caller who produced it,
/// whatever `submitted_by` its value names; callers cannot set the header that says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_caller_cannot_submit_a_task_in_another_user_s_name() {
    let app = TestApp::spawn().await;
    let (_, alice) = app.user_token("developer").await;
    let (_, bob) = app.user_token("developer").await;
    let (alice_id, bob_id) =
        (payload(&alice)["sub"].as_str().unwrap().to_string(), payload(&bob)["sub"].as_str().unwrap().to_string());
    let records = "/v1/topics/devcycle.task-requests/records";
    let id = uuid::Uuid::new_v4();
    let value = json!({"task_id": id.to_string(), "agent": "echo", "input": "{\"n\":1}",
                       "submitted_at": "2026-01-02T03:04:05.678Z", "submitted_by": {"string": bob_id}});
    let (s, b) = post_with(&app, records, &alice, &json!({"value": value})).await;
    assert_eq!(s, 200, "{b}");
    app.wait_status(id, "succeeded", Duration::from_secs(60)).await; // as admin
    let row = devcycle::db::tasks::get(&app.deps.pool, id).await.unwrap().unwrap();
    assert_eq!(row.submitted_by.as_deref(), Some(alice_id.as_str()), "the value's submitted_by was believed");
    app.deps.cache.forget_task(id).await.unwrap();
    let (s, _, b) = get_with(&app, &format!("/v1/tasks/{id}"), &bob).await;
    assert_error(s, &b, 404, "NOT_FOUND");
    assert_eq!(get_with(&app, &format!("/v1/tasks/{id}"), &alice).await.0, 200);

    // The header naming the producer is the gateway's own.
    let forged = json!({"value": value, "headers": {"devcycle.submitted_by": bob_id}});
    let (s, b) = post_with(&app, records, &alice, &forged).await;
    assert_eq!(s, 422, "{b}");
    assert!(b.to_string().contains("the devcycle. prefix is reserved"), "{b}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injection_strings_are_data() {
    let app = TestApp::spawn().await;
    let sneaky = "x'); DROP TABLE users; --";
    let email = "o'hara\";--DROP_TABLE_sessions@example.test";
    let password = "Pa55'; DROP TABLE users;--";
    let (s, b) = app.post("/v1/users", &json!({"email": email, "password": password, "role": "developer"})).await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["data"]["email"], email);
    let (s, b) = app.login(email, password).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["data"]["user"]["email"], email);
    let dev = b["data"]["access_token"].as_str().unwrap().to_string();
    let (s, b) = app.login("' OR '1'='1", "' OR '1'='1").await;
    assert_error(s, &b, 401, "UNAUTHORIZED");

    let agent = json!({"name": "sneaky", "executor": "builtin", "config": {"mode": "echo", "note": sneaky},
                       "description": sneaky});
    let (s, b) = post_with(&app, "/v1/agents", &dev, &agent).await;
    assert_eq!(s, 201, "{b}");
    let (s, _, b) = get_with(&app, "/v1/agents/sneaky", &dev).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["data"]["description"], sneaky);
    assert_eq!(b["data"]["config"]["note"], sneaky);

    let (s, b) =
        post_with(&app, "/v1/tasks", &dev, &json!({"agent": "sneaky", "input": {"q": sneaky}, "key": sneaky})).await;
    assert_eq!(s, 202, "{b}");
    let id: uuid::Uuid = b["data"]["task_id"].as_str().unwrap().parse().unwrap();
    let done = app.wait_status(id, "succeeded", Duration::from_secs(60)).await;
    assert_eq!(done["output"]["q"], sneaky);

    let (s, b) = app.post("/v1/service-tokens", &json!({"name": sneaky, "permissions": ["task:read"]})).await;
    assert_eq!(s, 201, "{b}");
    let (_, b) = app.get("/v1/service-tokens").await;
    assert_eq!(b["data"]["items"][0]["name"], sneaky);

    // Filters are bound parameters: an injection matches nothing.
    let (s, b) = app.get("/v1/audit?actor=%27%20OR%201%3D1%20--").await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["data"]["total"], 0);
    let (_, b) = app.get(&format!("/v1/audit?action=login&actor={}", payload(&dev)["sub"].as_str().unwrap())).await;
    assert_eq!(b["data"]["total"], 1, "{b}");
    let rows = devcycle::db::users::audit_list(&app.deps.pool, None, Some("user_create"), None, 10, 0).await.unwrap().0;
    assert!(rows.iter().any(|r| r.target.as_deref() == Some(email)));
    // The tables are all still there.
    for t in ["users", "sessions", "tasks", "audit_log"] {
        sqlx::query(sqlx::AssertSqlSafe(format!("SELECT 1 FROM {t} LIMIT 1"))).execute(&app.deps.pool).await.unwrap();
    }
    app.stop().await;
}
