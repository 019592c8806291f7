//! Retries, dead letters and replay, against the real stack: a task that keeps failing
//! retryably is tried `max_attempts` times, dead-lettered with its reason, and runs once replayed
//! after the cause is fixed.

mod common;

use common::TestApp;
use devcycle::ops::dlq::{self, Filter};
use devcycle::runtime::dlq as h;
use rdkafka::producer::{FutureProducer, FutureRecord};
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
    // The request's own key, kept: none, as it was submitted without one.
    assert_eq!(letter.key, None);
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

/// A task that fails retryably, then succeeds on its next attempt, shows no error: the hot
/// status of the success does not keep the failed attempt's error fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_after_a_retry_shows_no_error() {
    let app = TestApp::spawn_with(|s| {
        // Time enough to fix the agent between the two attempts.
        s.paths.processors = common::processors_with(&s.database.schema, &[("initial_backoff_ms", "4000".into())]);
    })
    .await;
    let agent = json!({"name": "flaky", "executor": "builtin",
                       "config": {"mode": "fail", "retryable": true, "error": "upstream is down"}});
    let (s, b) = app.post("/v1/agents", &agent).await;
    assert_eq!(s, 201, "{b}");
    let id = app.submit("flaky", json!({"job": 2})).await;
    let retrying = app.wait_status(id, "retrying", WAIT).await;
    assert_eq!(retrying["error"], "upstream is down", "{retrying}");
    let fix = app.http.patch(app.url("/v1/agents/flaky")).json(&json!({"config": {"mode": "echo"}}));
    assert_eq!(app.send(fix).await.0, 200);
    let done = app.wait_status(id, "succeeded", WAIT).await;
    assert_eq!((done["attempts"].as_i64(), &done["output"]), (Some(2), &json!({"job": 2})), "{done}");
    assert!(done["error"].is_null() && done["error_class"].is_null(), "the failed attempt's error stayed: {done}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_agent_from_a_raw_producer_is_dead_lettered() {
    let app = TestApp::spawn().await;
    let req = devcycle::domain::TaskRequest::new("ghost", json!({}));
    app.produce_request(&req, None).await;
    let dead = app.wait_status(req.task_id, "dead_lettered", WAIT).await;
    assert_eq!(dead["error_class"], "unknown_agent");
    let letters =
        dlq::list(&app.deps, &Filter { class: Some("unknown_agent".into()), ..Filter::default() }).await.unwrap();
    assert_eq!(letters.len(), 1);
    app.stop().await;
}

/// Postgres cannot store a NUL character in jsonb; the HTTP ingress refuses one with 400, but a
/// producer writing straight to the topic can send it. That task is dead-lettered with the
/// reason, and the record behind it on the same partition still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_character_in_a_raw_task_input_is_dead_lettered_and_the_partition_flows() {
    let app = TestApp::spawn().await;
    let bad = devcycle::domain::TaskRequest::new("echo", json!({"prompt": "a\u{0}b"}));
    let good = devcycle::domain::TaskRequest::new("echo", json!({"prompt": "fine"}));
    for req in [&bad, &good] {
        app.produce_request(req, Some(0)).await;
    }
    app.wait_status(good.task_id, "succeeded", WAIT).await;
    let dead = app.wait_status(bad.task_id, "dead_lettered", WAIT).await;
    assert!(!dead["error"].as_str().unwrap_or("").is_empty(), "the reason is recorded: {dead}");
    let letters = dlq::list(&app.deps, &Filter::default()).await.unwrap();
    assert_eq!(letters.len(), 1, "only the NUL task is dead-lettered");
    app.stop().await;
}

/// Runs the `devcycle` binary against the app's namespace, schema and prefix; stdout and stderr
/// are pipes (not a terminal).
async fn devcycle_cli(app: &TestApp, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let s = &app.deps.settings;
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_devcycle"));
    c.args(args)
        .current_dir(common::root())
        .env("ENVIRONMENT", "test")
        .env("DEVCYCLE__KAFKA__NAMESPACE", &s.kafka.namespace)
        .env("DEVCYCLE__KAFKA__APPLY_ON_START", "false")
        .env("DEVCYCLE__DATABASE__SCHEMA", &s.database.schema)
        .env("DEVCYCLE__DATABASE__MIGRATE_ON_START", "false")
        .env("DEVCYCLE__REDIS__KEY_PREFIX", &s.redis.key_prefix)
        .env_remove("DEVCYCLE_PROGRESS")
        .stdin(std::process::Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(120), c.output()).await.expect("cli in time").unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_replay_shows_progress_on_stderr_when_not_a_terminal() {
    let app = TestApp::spawn().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let req = devcycle::domain::TaskRequest::new("ghost", json!({"i": i}));
        app.produce_request(&req, None).await;
        ids.push(req.task_id);
    }
    for id in &ids {
        app.wait_status(*id, "dead_lettered", WAIT).await;
    }

    // Pipes, not a terminal: plain progress lines on stderr; stdout keeps only the report.
    let (ok, stdout, stderr) = devcycle_cli(&app, &["dlq", "replay", "--class", "unknown_agent"], &[]).await;
    assert!(ok, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.starts_with("replayed 3 dead letter(s)\n"), "{stdout}");
    assert!(!stdout.contains("dlq replay:") && !stdout.contains("dlq read:"), "{stdout}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(lines.iter().any(|l| l.starts_with("dlq read: 0/3 records (0%), ")), "{stderr}");
    assert!(lines.iter().any(|l| l.starts_with("dlq read: 3/3 records, done in ")), "{stderr}");
    assert!(lines.iter().any(|l| l.starts_with("dlq replay: 0/3 dead letters (0%), ")), "{stderr}");
    assert!(lines.iter().any(|l| l.starts_with("dlq replay: 1/3 dead letters (33%), ")), "{stderr}");
    assert!(lines.iter().any(|l| l.starts_with("dlq replay: 3/3 dead letters, done in ")), "{stderr}");
    assert!(!stderr.contains('\r'), "no terminal redraws in plain mode: {stderr:?}");
    assert_eq!(dlq::list(&app.deps, &Filter::default()).await.unwrap().iter().filter(|(_, r)| *r).count(), 3);

    // `--progress off` (here through DEVCYCLE_PROGRESS): the same report, no progress.
    let (ok, stdout, stderr) =
        devcycle_cli(&app, &["dlq", "replay", "--dry-run"], &[("DEVCYCLE_PROGRESS", "off")]).await;
    assert!(ok, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.starts_with("would replay "), "{stdout}");
    assert!(!stderr.contains("dlq "), "{stderr}");
    app.stop().await;
}

/// A record so near Kafka's size limit that its dead letter (its bytes plus the letter's
/// headers) is refused is dead-lettered without its value, saying so, and the partition goes on;
/// such a letter is not replayed (its value is at its source offset).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_too_large_to_dead_letter_whole_is_dead_lettered_without_its_value() {
    let app = TestApp::spawn().await;
    let requests = app.topic("devcycle.task-requests");
    let producer: FutureProducer = devcycle::kafka::client_config(&app.deps.settings.kafka, "big").create().unwrap();
    // Not Avro, and within a few hundred bytes of librdkafka's default message.max.bytes.
    let value = vec![b'x'; 999_700];
    let record = FutureRecord::to(&requests).key("big").payload(&value).partition(0);
    let offset = producer.send(record, Duration::from_secs(10)).await.unwrap().offset;
    // A good task behind it on the same partition.
    let good = devcycle::domain::TaskRequest::new("echo", json!({"after": "big"}));
    app.produce_request(&good, Some(0)).await;
    app.wait_status(good.task_id, "succeeded", WAIT).await;

    let dlq = app.consumer(&app.topic("devcycle.dead-letters"));
    let deadline = std::time::Instant::now() + WAIT;
    let (payload, headers) = loop {
        assert!(std::time::Instant::now() < deadline, "no dead letter for the large record");
        let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(5), dlq.recv()).await else { continue };
        use rdkafka::Message;
        if m.key() == Some(b"big".as_slice()) {
            let headers: std::collections::BTreeMap<String, String> = common::header_pairs(&m).into_iter().collect();
            break (m.payload().map(<[u8]>::to_vec), headers);
        }
    };
    assert_eq!(payload, None, "the value was sent after all");
    assert!(headers[h::H_VALUE_OMITTED].starts_with("999700 bytes: "), "{headers:?}");
    assert_eq!(headers[h::H_OFFSET], offset.to_string());
    assert_eq!(headers[h::H_CLASS], "bad_magic_byte");
    assert!(
        dlq::replay(&app.deps, &Filter::default(), false).await.unwrap().is_empty(),
        "a letter without its value was replayed"
    );
    app.stop().await;
}

/// Dead letters written in a Kafka transaction (as an exactly-once processor writes them) leave
/// a commit marker at the end of their partition, which no consumer receives: the listing ends
/// at each partition's end, not at a deadline (it waited 3 × `kafka.request_timeout_ms`, 30 s
/// here, before), and `limit` stops the reading early. Until the markers are written a listing
/// ends at the last stable offset, before the letters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_dead_letters_are_listed_without_waiting_for_a_deadline() {
    use rdkafka::producer::Producer;
    let app = TestApp::spawn().await;
    let topic = app.topic("devcycle.dead-letters");
    let producer: FutureProducer = devcycle::kafka::client_config(&app.deps.settings.kafka, "test-dlq-txn")
        .set("transactional.id", format!("test-dlq-{}", uuid::Uuid::new_v4()))
        .create()
        .unwrap();
    producer.init_transactions(WAIT).unwrap();
    producer.begin_transaction().unwrap();
    for i in 0..3 {
        let headers = rdkafka::message::OwnedHeaders::new()
            .insert(rdkafka::message::Header { key: h::H_CLASS, value: Some("agent_error") })
            .insert(rdkafka::message::Header { key: h::H_TOPIC, value: Some(&app.topic("devcycle.task-requests")) });
        let value = format!("letter {i}");
        let record = FutureRecord::<(), _>::to(&topic).payload(&value).headers(headers).partition(0);
        producer.send(record, WAIT).await.unwrap();
    }
    producer.commit_transaction(WAIT).unwrap();

    // `commit_transaction` returns once the coordinator has the commit; it writes the markers to
    // the partition after that, and until then a read-committed reader correctly sees no letter
    // (the topic ends at its last stable offset). So list again until the markers are there; no
    // listing may wait for a deadline, whatever it sees.
    let visible_by = std::time::Instant::now() + Duration::from_secs(20);
    let letters = loop {
        let started = std::time::Instant::now();
        let letters = dlq::list(&app.deps, &Filter::default()).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(8), "listing took {:?}", started.elapsed());
        if letters.len() >= 3 || std::time::Instant::now() > visible_by {
            break letters;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(letters.len(), 3);
    let values: Vec<_> = letters.iter().map(|(l, _)| l.value.clone().unwrap()).collect();
    assert_eq!(values, [b"letter 0".to_vec(), b"letter 1".to_vec(), b"letter 2".to_vec()]);

    let first = dlq::list(&app.deps, &Filter { limit: Some(1), ..Filter::default() }).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].0.value.as_deref(), Some(&b"letter 0"[..]));
    app.stop().await;
}
