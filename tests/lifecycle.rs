//! Task lifecycle controls against the real stack: cancellation (queued and running),
//! deadlines, and executor timeouts.

mod common;

use common::TestApp;
use devcycle::app::Mode;
use devcycle::domain::TaskStatus;
use serde_json::json;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

async fn statuses(app: &TestApp, id: uuid::Uuid) -> Vec<String> {
    devcycle::db::tasks::events(&app.deps.pool, id).await.unwrap().into_iter().map(|e| e.1).collect()
}

/// A task of `agent` (created from `definition` first, if given) submitted while only the
/// ingress runs, and cancelled while queued; then a processor starts. Returns (ingress,
/// processor, task id).
async fn cancelled_while_queued(agent: &str, definition: Option<serde_json::Value>) -> (TestApp, TestApp, uuid::Uuid) {
    let ingress = TestApp::spawn_with(|_| {}).await;
    let deps = ingress.deps.clone();
    ingress.stop().await;
    let ingress = TestApp::start(deps.clone(), Mode::Ingress).await;
    if let Some(d) = definition {
        assert_eq!(ingress.post("/v1/agents", &d).await.0, 201);
    }
    let id = ingress.submit(agent, json!({"x": 1})).await;
    let (s, b) = ingress.post(&format!("/v1/tasks/{id}/cancel"), &json!({})).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["data"]["status"], "cancelled");
    // Now a processor reads the request.
    let processor = TestApp::start(deps, Mode::Process("agent-executor".into())).await;
    (ingress, processor, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_queued_task_never_starts() {
    // It must not run, and says so on the results topic.
    let (ingress, processor, id) = cancelled_while_queued("echo", None).await;
    let results = ingress.read_results(&[id], WAIT).await;
    assert_eq!(results[0].0.status, TaskStatus::Cancelled);
    assert_eq!(statuses(&ingress, id).await, ["cancelled"]);
    let (_, b) = ingress.get(&format!("/v1/tasks/{id}")).await;
    assert_eq!(b["data"]["status"], "cancelled");
    let (s, b) = ingress.post(&format!("/v1/tasks/{id}/cancel"), &json!({})).await;
    assert_eq!((s, b["error"].as_str()), (409, Some("CONFLICT")));
    let (s, _) = ingress.post(&format!("/v1/tasks/{}/cancel", uuid::Uuid::new_v4()), &json!({})).await;
    assert_eq!(s, 404);
    processor.stop().await;
    ingress.stop().await;
}

/// A builtin agent runs without a status read first (it has no side effects). One that fails
/// retryably on a task cancelled while queued must still not be retried or dead-lettered: the
/// stored `cancelled` is published at once, and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_queued_task_of_a_builtin_agent_failing_retryably_is_not_retried() {
    let flaky = json!({"name": "flaky", "executor": "builtin", "config": {"mode": "fail", "retryable": true}});
    let (ingress, processor, id) = cancelled_while_queued("flaky", Some(flaky)).await;
    let results = ingress.read_results(&[id], WAIT).await;
    assert_eq!((results[0].0.status, results[0].0.attempts), (TaskStatus::Cancelled, 0));
    // Retries would come 200 and 400 ms apart (the processor file's backoff), then the dead
    // letter: give them time to show.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(ingress.record_count("devcycle.dead-letters"), 0, "not dead-lettered");
    assert_eq!(statuses(&ingress, id).await, ["cancelled"]);
    processor.stop().await;
    ingress.stop().await;
}

/// Cancels a running task and waits for its `cancelled` result, which must come well before
/// the task would have ended by itself.
async fn cancel_stops(app: &TestApp, id: uuid::Uuid) {
    let started = std::time::Instant::now();
    let (s, b) = app.post(&format!("/v1/tasks/{id}/cancel"), &json!({})).await;
    assert_eq!(s, 200, "{b}");
    let results = app.read_results(&[id], WAIT).await;
    assert_eq!(results[0].0.status, TaskStatus::Cancelled);
    assert!(started.elapsed() < Duration::from_secs(20), "the running task was not stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_task_is_stopped_by_cancel() {
    let app = TestApp::spawn().await;
    let id = app.submit("sleep", json!({"ms": 60000})).await;
    app.wait_status(id, "running", WAIT).await;
    cancel_stops(&app, id).await;
    assert_eq!(statuses(&app, id).await, ["running", "cancelled"]);
    // The slot is free again: a new task runs.
    let next = app.submit("echo", json!({})).await;
    app.wait_status(next, "succeeded", WAIT).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_cancelled_before_its_running_is_recorded_is_stopped() {
    // running_after_ms of a minute: the task runs with its row still unwritten (`queued`).
    let app = TestApp::spawn_with(|s| {
        s.paths.processors = common::processors_with(&s.database.schema, &[("running_after_ms", "60000".into())]);
    })
    .await;
    // A command that marks its start, then runs long.
    let marker = app.deps.settings.paths.processors.join("started");
    let script = format!("touch '{}'; sleep 50", marker.display());
    let agent = json!({"name": "long", "executor": "command", "config": {"program": "sh", "args": ["-c", script]}});
    assert_eq!(app.post("/v1/agents", &agent).await.0, 201);
    let id = app.submit("long", json!({})).await;
    let deadline = std::time::Instant::now() + WAIT;
    while !marker.exists() {
        assert!(std::time::Instant::now() < deadline, "the task never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, b) = app.get(&format!("/v1/tasks/{id}")).await;
    assert_eq!(b["data"]["status"], "queued", "{b}");
    cancel_stops(&app, id).await;
    // The cancel wrote the final state; the attempt found it final and added nothing.
    assert_eq!(statuses(&app, id).await, ["cancelled"]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_past_its_deadline_is_not_started() {
    let first = TestApp::spawn().await;
    let deps = first.deps.clone();
    first.stop().await;
    let ingress = TestApp::start(deps.clone(), Mode::Ingress).await;
    let deadline = (chrono::Utc::now() + chrono::Duration::milliseconds(800)).to_rfc3339();
    let (s, b) = ingress.post("/v1/tasks", &json!({"agent": "echo", "input": {}, "deadline": deadline})).await;
    assert_eq!(s, 202, "{b}");
    let id: uuid::Uuid = b["data"]["task_id"].as_str().unwrap().parse().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let processor = TestApp::start(deps, Mode::Process("agent-executor".into())).await;
    let expired = ingress.wait_status(id, "expired", WAIT).await;
    assert_eq!(expired["error_class"], "deadline_exceeded");
    assert_eq!(statuses(&ingress, id).await, ["expired"]);
    processor.stop().await;
    ingress.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_command_is_killed_and_counted_as_configured() {
    let app = TestApp::spawn().await;
    let marker = format!("/tmp/devcycle-timeout-{}", uuid::Uuid::new_v4());
    let (s, b) = app
        .post(
            "/v1/agents",
            &json!({"name": "slowpoke", "executor": "command", "config": {
            "program": "sh", "args": ["-c", format!("sleep 3; touch {marker}")],
            "timeout_ms": 300, "timeout_retryable": false}}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let id = app.submit("slowpoke", json!({})).await;
    let failed = app.wait_status(id, "failed", WAIT).await;
    assert_eq!(failed["error_class"], "timeout");
    assert_eq!(failed["attempts"], 1);
    // The process was killed: it never got to touch its marker.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!std::path::Path::new(&marker).exists(), "the timed-out command kept running");
    app.stop().await;
}

/// The hot status never goes back from a final state: a `running` or `retrying` that lands late
/// (after a cancel, or after another processor finished the task) is not written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hot_status_never_goes_back_from_a_final_state() {
    let deps = devcycle::app::Deps::connect(common::test_settings()).await.unwrap();
    let cache = &deps.cache;
    let id = uuid::Uuid::new_v4();
    let status = |fields: Option<devcycle::cache::StatusFields>| fields.unwrap()["status"].clone();
    cache.set_status(id, vec![("status", "running".into()), ("attempts", "1".into())]).await.unwrap();
    assert_eq!(status(cache.get_status(id).await.unwrap()), "running");
    let cancelled = vec![("status", "cancelled".into()), ("error", "cancelled by request".into())];
    cache.set_status(id, cancelled).await.unwrap();
    for late in ["running", "retrying"] {
        cache.set_status(id, vec![("status", late.into()), ("error", "late".into())]).await.unwrap();
        let hot = cache.get_status(id).await.unwrap().unwrap();
        assert_eq!((hot["status"].as_str(), hot["error"].as_str()), ("cancelled", "cancelled by request"), "{late}");
    }
    // A final state is still written over a final one, and fields without a status are written.
    cache.set_status(id, vec![("status", "succeeded".into())]).await.unwrap();
    assert_eq!(status(cache.get_status(id).await.unwrap()), "succeeded");
    cache.set_status(id, vec![("updated_at", "now".into())]).await.unwrap();
    assert_eq!(cache.get_status(id).await.unwrap().unwrap()["updated_at"], "now");
    cache.forget_task(id).await.unwrap();
}

/// A task's hot status lives `task_status_ttl_secs` while it is not final and the shorter
/// `task_final_status_ttl_secs` once it is, whichever write makes it final and whatever lands
/// after (a submission's late `queued`, a late `running`, fields alone): Redis holds recent
/// tasks, not a day of them (at 10,000 tasks a minute a day of hashes is ~7 GB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_hot_status_lives_for_the_final_ttl_only() {
    use fred::interfaces::KeysInterface;
    let mut settings = common::test_settings();
    settings.redis.task_status_ttl_secs = 86_400;
    settings.redis.task_final_status_ttl_secs = 900;
    let deps = devcycle::app::Deps::connect(settings).await.unwrap();
    let cache = &deps.cache;
    let ttl = |id: uuid::Uuid| async move {
        let t: i64 = cache.pool().ttl(cache.task_key(id)).await.unwrap();
        t
    };
    let active = 86_000..=86_400;
    let short = 800..=900;

    let id = uuid::Uuid::new_v4();
    cache.set_queued(id, "echo", "2026-11-27T00:00:00Z", None).await.unwrap();
    assert!(active.contains(&ttl(id).await), "queued: {}", ttl(id).await);
    cache.set_status(id, vec![("status", "running".into())]).await.unwrap();
    assert!(active.contains(&ttl(id).await), "running: {}", ttl(id).await);
    cache.set_status(id, vec![("status", "succeeded".into())]).await.unwrap();
    assert!(short.contains(&ttl(id).await), "succeeded: {}", ttl(id).await);
    cache.set_status(id, vec![("status", "running".into())]).await.unwrap();
    cache.set_status(id, vec![("updated_at", "later".into())]).await.unwrap();
    assert!(short.contains(&ttl(id).await), "after late writes: {}", ttl(id).await);

    // The processor can finish a task before its submission's `queued` reaches Redis.
    let early = uuid::Uuid::new_v4();
    cache.set_status(early, vec![("status", "failed".into()), ("error", "boom".into())]).await.unwrap();
    cache.set_queued(early, "echo", "2026-11-27T00:00:00Z", None).await.unwrap();
    let hot = cache.get_status(early).await.unwrap().unwrap();
    assert_eq!((hot["status"].as_str(), hot["agent"].as_str()), ("failed", "echo"));
    assert!(short.contains(&ttl(early).await), "late queued: {}", ttl(early).await);
    for id in [id, early] {
        cache.forget_task(id).await.unwrap();
    }
}

/// Scripts are sent by their hash; a Redis that does not hold one (restarted, failed over,
/// `SCRIPT FLUSH`) gets its text once more, and the call still answers. Flushing is
/// server-wide: other tests running meanwhile take the same way back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_redis_forgot_is_sent_again_and_runs() {
    use devcycle::cache::{Cache, Script};
    use fred::prelude::*;
    // A script of this run's own (its text, hence its hash, names a fresh key prefix).
    let s = common::test_settings();
    let text: &'static str =
        Box::leak(format!("-- {}\nreturn ARGV[1] .. ':' .. KEYS[1]", s.redis.key_prefix).into_boxed_str());
    let script = Script::new(text);
    let cache = Cache::connect(&s.redis).await.unwrap();
    let pool = cache.pool();
    let held = |pool: &fred::clients::Pool| {
        let pool = pool.clone();
        let sha = script.sha().to_string();
        async move { pool.next().script_exists::<Vec<bool>, _>(sha).await.unwrap() == vec![true] }
    };
    assert!(!held(pool).await, "a new script is not held yet");
    let got: String = script.run(pool, "k1", "a").await.unwrap();
    assert_eq!(got, "a:k1");
    assert!(held(pool).await, "the first call loads the script");
    let got: String = script.run(pool, "k2", "b").await.unwrap();
    assert_eq!(got, "b:k2");
    let _: () = pool.next().script_flush(false).await.unwrap();
    assert!(!held(pool).await);
    let got: String = script.run(pool, "k3", "c").await.unwrap();
    assert_eq!(got, "c:k3", "the call runs after the server forgot the script");
    assert!(held(pool).await, "and the script is held again");
}
