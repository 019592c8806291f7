//! The HTTP gateway to topics against the real broker and registry: records produced over
//! HTTP are read back from Kafka and decoded; per-record lines and statuses; limits;
//! idempotent replays; respond-async receipts; forwarded headers; the topic list.

#[path = "../common/mod.rs"]
mod common;
mod limits;
mod ndjson;
mod ndjson_limits;

use common::{header_pairs, test_settings, TestApp};
use devcycle::app::{Deps, Mode};
use devcycle::settings::Settings;
use rdkafka::message::{Message, Timestamp};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use uuid::Uuid;

const TOPIC: &str = "devcycle.task-requests";
const RECORDS: &str = "/v1/topics/devcycle.task-requests/records";

/// An ingress only (no processors consume the requests topic), on a fresh namespace.
async fn ingress(customize: impl FnOnce(&mut Settings)) -> TestApp {
    let mut s = test_settings();
    customize(&mut s);
    let deps = Deps::connect(s).await.expect("connect to the test services");
    TestApp::start(deps, Mode::Ingress).await
}

fn request_value(agent: &str) -> Value {
    json!({"task_id": Uuid::new_v4().to_string(), "agent": agent, "input": "{\"n\":1}",
           "submitted_at": "2026-01-02T03:04:05.678Z"})
}

/// Reads `n` records of the requests topic from the beginning.
async fn read_records(app: &TestApp, n: usize) -> Vec<rdkafka::message::OwnedMessage> {
    let consumer = app.consumer(&app.topic(TOPIC));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "read {} of {n} records", out.len());
        if let Ok(Ok(m)) = tokio::time::timeout(left, consumer.recv()).await {
            out.push(m.detach());
        }
    }
    out
}

fn assert_written(line: &Value) {
    assert!(line["partition"].as_i64().is_some() && line["offset"].as_i64().is_some(), "{line}");
    assert!(line["timestamp"].as_i64().is_some(), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_and_batch_records_reach_kafka_with_forwarded_headers() {
    let app = ingress(|_| {}).await;
    let single = request_value("echo");
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let req = app
        .http
        .post(app.url(RECORDS))
        .header("x-request-id", "req_gateway_1")
        .header("traceparent", traceparent)
        .json(&json!({"key": "k-1", "value": single, "headers": {"source": "gw-test"}, "partition": 2,
                      "timestamp": "2026-03-04T05:06:07Z"}));
    let (s, _, b) = app.send(req).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!((b["success"].as_bool(), b["data"]["written"].as_u64()), (Some(true), Some(1)), "{b}");
    let line = &b["data"]["records"][0];
    assert_written(line);
    assert_eq!(line["partition"], 2);

    let batch: Vec<Value> = (0..3).map(|i| json!({"key": format!("b-{i}"), "value": request_value("echo")})).collect();
    let (s, b) = app.post(RECORDS, &json!({"records": batch})).await;
    assert_eq!(s, 200, "{b}");
    let lines = b["data"]["records"].as_array().unwrap();
    assert_eq!(lines.len(), 3);
    lines.iter().for_each(assert_written);

    let msgs = read_records(&app, 4).await;
    assert_eq!(app.record_count(TOPIC), 4);
    let first = msgs.iter().find(|m| m.key() == Some(b"k-1".as_slice())).expect("the single record");
    assert_eq!(first.partition(), 2);
    assert_eq!(first.offset(), line["offset"].as_i64().unwrap());
    assert_eq!(first.timestamp(), Timestamp::CreateTime(1_772_600_767_000));
    let decoded = app.deps.codec.decode_request(first.payload()).await.expect("decodes with the codec");
    assert_eq!(decoded.task_id.to_string(), single["task_id"].as_str().unwrap());
    assert_eq!(decoded.agent, "echo");
    assert_eq!(decoded.submitted_at.timestamp_millis(), 1_767_323_045_678);
    assert_eq!((decoded.priority, decoded.attempt), (0, 1)); // schema defaults
    let headers = header_pairs(first);
    for (k, v) in [("source", "gw-test"), ("request_id", "req_gateway_1"), ("traceparent", traceparent)] {
        assert!(headers.contains(&(k.to_string(), v.to_string())), "{k} missing in {headers:?}");
    }
    for (i, line) in lines.iter().enumerate() {
        let key = format!("b-{i}");
        let m = msgs.iter().find(|m| m.key() == Some(key.as_bytes())).expect("batch record");
        assert_eq!(m.offset(), line["offset"].as_i64().unwrap());
        assert_eq!(m.partition() as i64, line["partition"].as_i64().unwrap());
        app.deps.codec.decode_request(m.payload()).await.expect("batch record decodes");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_records_get_their_own_lines_and_status() {
    let app = ingress(|_| {}).await;
    let mut bad = request_value("echo");
    bad["priority"] = json!("high");
    let mut no_uuid = request_value("echo");
    no_uuid["task_id"] = json!("not-a-uuid");
    let body = json!({"records": [{"value": request_value("echo")}, {"value": bad}, {"value": request_value("echo")}]});
    let (s, b) = app.post(RECORDS, &body).await;
    assert_eq!(s, 207, "{b}");
    assert_eq!((b["success"].as_bool(), b["error"].as_str()), (Some(false), Some("PARTIAL_FAILURE")), "{b}");
    let lines = b["details"]["records"].as_array().unwrap();
    assert_written(&lines[0]);
    assert_written(&lines[2]);
    assert_eq!(lines[1]["error_code"], "VALIDATION_ERROR");
    assert!(lines[1]["message"].as_str().unwrap().contains("value.priority"), "{b}");
    assert!(lines[1].get("offset").is_none());
    assert_eq!(app.record_count(TOPIC), 2);

    let (s, b) = app.post(RECORDS, &json!({"records": [{"value": no_uuid}, {"key": 5, "value": {}}]})).await;
    assert_eq!((s, b["error"].as_str()), (422, Some("VALIDATION_ERROR")), "{b}");
    let lines = b["details"]["records"].as_array().unwrap();
    assert!(lines[0]["message"].as_str().unwrap().contains("value.task_id"), "{b}");
    assert!(lines[1]["message"].as_str().unwrap().starts_with("key"), "{b}");
    let (s, b) = app.post(RECORDS, &json!({"value": {"agent": "echo"}})).await;
    assert_eq!(s, 422, "{b}");
    assert_eq!(app.record_count(TOPIC), 2, "nothing written for invalid records");

    // Timestamps the broker would refuse (more than an hour ahead, before 1970), and with them
    // the rest of their produce batch, are refused for their own record only.
    let body = json!({"records": [
        {"value": request_value("echo"), "partition": 1, "timestamp": "7540-02-03T04:56:58Z"},
        {"value": request_value("echo"), "partition": 1, "timestamp": "0110-06-05T15:52:11Z"},
        {"value": request_value("echo"), "partition": 1, "timestamp": -1},
        {"value": request_value("echo"), "partition": 1}]});
    let (s, b) = app.post(RECORDS, &body).await;
    assert_eq!(s, 207, "{b}");
    let lines = b["details"]["records"].as_array().unwrap();
    for line in &lines[..3] {
        assert_eq!(line["error_code"], "VALIDATION_ERROR", "{b}");
        assert!(line["message"].as_str().unwrap().starts_with("timestamp"), "{b}");
    }
    assert_written(&lines[3]);
    assert_eq!(app.record_count(TOPIC), 3);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_of_the_wrong_shape_are_refused_whole_and_write_nothing() {
    let app = ingress(|_| {}).await;
    let raw = |body: &str| {
        app.send(app.http.post(app.url(RECORDS)).header("content-type", "application/json").body(body.to_string()))
    };
    // (body, status, error code, what the message or field names)
    let cases = [
        (r#"{"records": [{"value": "#, 400, "MALFORMED_JSON", "EOF"),
        (r#"{"records": []} trailing"#, 400, "MALFORMED_JSON", "trailing"),
        (r#"[1, 2]"#, 422, "VALIDATION_ERROR", "body"),
        (r#"{"records": 5}"#, 422, "VALIDATION_ERROR", "records"),
        (r#"{"records": []}"#, 422, "VALIDATION_ERROR", "records"),
        (r#"{"records": [{"value": {}}], "extra": 1}"#, 422, "VALIDATION_ERROR", "extra"),
    ];
    for (body, status, code, names) in cases {
        let (s, _, b) = raw(body).await;
        assert_eq!((s, b["error"].as_str()), (status, Some(code)), "{body}: {b}");
        assert!(b.to_string().contains(names), "{body}: {b}");
    }
    // A record that is not an object, or an escaped key: that record's own line.
    let ok = request_value("echo").to_string();
    let body = format!(r#"{{"records": [5, {{"v\u0061lue": {ok}}}, {{"value": {ok}, "nope": 1}}]}}"#);
    let (s, _, b) = raw(&body).await;
    assert_eq!(s, 207, "{b}");
    let lines = b["details"]["records"].as_array().unwrap();
    assert_eq!(lines[0]["message"], "record: must be a JSON object", "{b}");
    assert_written(&lines[1]);
    assert!(lines[2]["message"].as_str().unwrap().starts_with("nope: unknown field"), "{b}");
    assert_eq!(app.record_count(TOPIC), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_replays_the_first_answer() {
    let app = ingress(|_| {}).await;
    let body = json!({"records": [{"key": "a", "value": request_value("echo")}, {"value": request_value("echo")}]});
    let post = |b: &Value, key: &str| {
        app.http.post(app.url(RECORDS)).bearer_auth(&app.token).header("idempotency-key", key).json(b)
    };
    let r1 = post(&body, "idem-1").send().await.unwrap();
    let s1 = r1.status().as_u16();
    let t1 = r1.text().await.unwrap();
    assert_eq!(s1, 200, "{t1}");
    assert_eq!(app.record_count(TOPIC), 2);

    let r2 = post(&body, "idem-1").send().await.unwrap();
    assert_eq!(r2.status().as_u16(), 200);
    assert_eq!(r2.headers()["idempotent-replayed"], "true");
    assert_eq!(r2.text().await.unwrap(), t1, "the replay is the stored answer, byte for byte");
    assert_eq!(app.record_count(TOPIC), 2, "the replay produced nothing");
    // The same records from a serializer that orders keys otherwise are the same request.
    let (v0, v1) = (&body["records"][0]["value"], &body["records"][1]["value"]);
    let reordered = json!({"records": [{"value": v0, "key": "a"}, {"value": v1}]});
    assert_ne!(reordered.to_string(), body.to_string());
    let r = post(&reordered, "idem-1").send().await.unwrap();
    assert_eq!(
        r.headers().get("idempotent-replayed").map(|v| v.to_str().unwrap()),
        Some("true"),
        "keys in another order"
    );
    assert_eq!(r.text().await.unwrap(), t1);
    // Redis forgetting everything (a restart without persistence, an eviction) changes nothing.
    app.forget_redis().await;
    let r3 = post(&body, "idem-1").send().await.unwrap();
    assert_eq!(r3.headers()["idempotent-replayed"], "true");
    assert_eq!(r3.text().await.unwrap(), t1, "after Redis lost its keys");
    assert_eq!(app.record_count(TOPIC), 2);

    let other = json!({"value": request_value("echo")});
    let (s, _, b) = app.send(post(&other, "idem-1")).await;
    assert_eq!((s, b["error"].as_str()), (422, Some("VALIDATION_ERROR")), "{b}");
    assert_eq!(b["details"]["field"], "Idempotency-Key");
    assert_eq!(app.record_count(TOPIC), 2);

    // A failed (all-invalid) answer is replayed too; another key is a new request.
    let invalid = json!({"value": {"agent": 1}});
    let (s, _, b1) = app.send(post(&invalid, "idem-2")).await;
    assert_eq!(s, 422);
    let (s, _, b2) = app.send(post(&invalid, "idem-2")).await;
    assert_eq!((s, &b1), (422, &b2));
    let (s, _, _) = app.send(post(&body, "idem-3")).await;
    assert_eq!(s, 200);
    assert_eq!(app.record_count(TOPIC), 4);

    // A key is its caller's own: another user's same key and body is a request of its own.
    let (_, other_user) = app.user_token("developer").await;
    let req = app.http.post(app.url(RECORDS)).bearer_auth(&other_user).header("idempotency-key", "idem-1");
    let r = req.json(&body).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers().get("idempotent-replayed").is_none(), "another user's answer was replayed");
    assert_ne!(r.text().await.unwrap(), t1);
    assert_eq!(app.record_count(TOPIC), 6, "the other user's records were not written");

    // A value nested deeper than a JSON tree may be gets its answer (the record's line), not a
    // dropped connection.
    let deep = format!("{{\"value\": {}{}}}", "[".repeat(200), "]".repeat(200));
    let req = app.http.post(app.url(RECORDS)).bearer_auth(&app.token).header("idempotency-key", "idem-deep");
    let (s, _, b) = app.send(req.header("content-type", "application/json").body(deep)).await;
    assert_eq!((s, b["error"].as_str()), (422, Some("VALIDATION_ERROR")), "{b}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn respond_async_receipt_shows_the_offsets() {
    let app = ingress(|_| {}).await;
    let body = json!({"records": [{"key": "r1", "value": request_value("echo")}, {"value": {"nope": 1}},
                                  {"key": "r2", "value": request_value("echo")}]});
    let req = app.http.post(app.url(RECORDS)).header("prefer", "respond-async").json(&body);
    let (s, h, b) = app.send(req).await;
    assert_eq!(s, 202, "{b}");
    let id = b["data"]["receipt_id"].as_str().unwrap().to_string();
    assert_eq!(h["location"], format!("/v1/receipts/{id}"));
    assert_eq!(b["data"]["queued"], 2);
    let deadline = Instant::now() + Duration::from_secs(30);
    let receipt = loop {
        let (s, b) = app.get(&format!("/v1/receipts/{id}")).await;
        assert_eq!(s, 200, "{b}");
        if b["data"]["state"] == "complete" {
            break b["data"].clone();
        }
        assert!(Instant::now() < deadline, "receipt still pending: {b}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((receipt["status"].as_u64(), receipt["written"].as_u64()), (Some(207), Some(2)), "{receipt}");
    let lines = receipt["records"].as_array().unwrap();
    assert_written(&lines[0]);
    assert_written(&lines[2]);
    assert_eq!(lines[1]["error_code"], "VALIDATION_ERROR");
    let msgs = read_records(&app, 2).await;
    let r1 = msgs.iter().find(|m| m.key() == Some(b"r1".as_slice())).unwrap();
    assert_eq!(r1.offset(), lines[0]["offset"].as_i64().unwrap());
    let (s, b) = app.get(&format!("/v1/receipts/{}", Uuid::new_v4().simple())).await;
    assert_eq!((s, b["error"].as_str()), (404, Some("NOT_FOUND")), "{b}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_list_and_openapi_document() {
    let app = ingress(|_| {}).await;
    let (s, b) = app.get("/v1/topics").await;
    assert_eq!(s, 200, "{b}");
    let items = b["data"]["items"].as_array().unwrap();
    let names: Vec<&str> = items.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, [TOPIC], "only producible topics are listed");
    let schema = &items[0]["value_schema"];
    assert_eq!(schema["subject"], format!("{}-value", app.topic(TOPIC)));
    assert!(schema["id"].as_u64().is_some(), "{schema}");
    let text: Value = serde_json::from_str(schema["schema"].as_str().unwrap()).unwrap();
    assert_eq!(text["name"], "TaskRequest");
    assert_eq!(items[0]["value_format"], "avro");

    let (s, b) = app.get("/openapi.json").await;
    assert_eq!(s, 200);
    assert_eq!(b["openapi"], "3.1.0");
    assert!(b["paths"]["/v1/topics/{topic}/records"]["post"].is_object());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_topics_take_base64_values() {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(common::root().join("topics")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    std::fs::write(
        dir.path().join("gw.raw.toml"),
        "name = \"gw.raw\"\npartitions = 1\nreplication_factor = 1\nretention_ms = 3600000\n\
         cleanup_policy = \"delete\"\ncompression = \"lz4\"\ningress_produce = true\nvalue_format = \"binary\"\n",
    )
    .unwrap();
    let path = dir.path().to_path_buf();
    let app = ingress(move |s| s.paths.topics = path).await;
    let (s, b) =
        app.post("/v1/topics/gw.raw/records", &json!({"records": [{"value": "AAEC/w=="}, {"value": "%%%"}]})).await;
    assert_eq!(s, 207, "{b}");
    assert!(b["details"]["records"][1]["message"].as_str().unwrap().contains("base64"), "{b}");
    let c = app.consumer(&app.topic("gw.raw"));
    let m = tokio::time::timeout(Duration::from_secs(30), c.recv()).await.unwrap().unwrap();
    assert_eq!(m.payload(), Some([0u8, 1, 2, 255].as_slice()));
    let (_, b) = app.get("/v1/topics").await;
    let raw = b["data"]["items"].as_array().unwrap().iter().find(|t| t["name"] == "gw.raw").unwrap().clone();
    assert_eq!((raw["value_format"].as_str(), &raw["value_schema"]), (Some("binary"), &Value::Null));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_is_claimed_once_and_a_lapsed_claim_is_taken_over() {
    let app = ingress(|_| {}).await;
    let body = json!({"records": [{"value": request_value("echo")}]});
    let post =
        |key: &str| app.http.post(app.url(RECORDS)).bearer_auth(&app.token).header("idempotency-key", key).json(&body);

    // Eight requests at once with one key: one writes; every other one is 409 (the first still
    // running) or the replay of its answer.
    let answers = futures::future::join_all((0..8).map(|_| app.send_raw(post("race")))).await;
    let replayed = |h: &reqwest::header::HeaderMap| h.get("idempotent-replayed").is_some();
    let written = answers.iter().filter(|(s, h, _)| *s == 200 && !replayed(h)).count();
    assert_eq!(written, 1, "{answers:?}");
    assert!(answers.iter().all(|(s, _, _)| *s == 409 || *s == 200), "{answers:?}");
    assert_eq!(app.record_count(TOPIC), 1);

    // A reservation whose request never answered (its process died): retries are 409 until it
    // lapses, then one runs for real.
    let (s, _, _) = app.send_raw(post("lapse")).await;
    assert_eq!(s, 200);
    let pool = &app.deps.pool;
    let dead = "UPDATE idempotency_keys SET status = NULL, body = NULL WHERE id LIKE 'gateway:%:lapse'";
    assert_eq!(sqlx::query(dead).execute(pool).await.unwrap().rows_affected(), 1);
    let (s, _, b) = app.send_raw(post("lapse")).await;
    assert_eq!((s, b["error"].as_str()), (409, Some("CONFLICT")), "{b}");
    assert_eq!(app.record_count(TOPIC), 2);
    let lapsed = "UPDATE idempotency_keys SET expires_at = now() - interval '1 second' WHERE id LIKE 'gateway:%:lapse'";
    assert_eq!(sqlx::query(lapsed).execute(pool).await.unwrap().rows_affected(), 1);
    let (s, h, b) = app.send_raw(post("lapse")).await;
    assert_eq!((s, replayed(&h)), (200, false), "{b}");
    assert_eq!(app.record_count(TOPIC), 3);
    let (s, h, _) = app.send_raw(post("lapse")).await;
    assert_eq!((s, replayed(&h)), (200, true), "the new answer is kept");
    assert_eq!(app.record_count(TOPIC), 3);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_down_is_503_and_the_idempotency_key_stays_usable() {
    // A healthy app creates the namespace's topics and schemas; a second ingress on the same
    // namespace has its producer pointed at a closed port.
    let healthy = ingress(|_| {}).await;
    let mut s = healthy.deps.settings.clone();
    s.kafka.bootstrap_servers = "127.0.0.1:1".into();
    s.kafka.apply_on_start = false;
    s.database.migrate_on_start = false;
    s.http.produce_timeout_ms = 1500;
    s.http.retry_after_secs = 7;
    let broken = TestApp::start(Deps::connect(s).await.unwrap(), Mode::Ingress).await;
    let body = json!({"records": [{"value": request_value("echo")}, {"value": request_value("echo")}]});
    let req = broken.http.post(broken.url(RECORDS)).header("idempotency-key", "down-1").json(&body);
    let (s, h, b) = broken.send(req).await;
    assert_eq!((s, b["error"].as_str()), (503, Some("SERVICE_UNAVAILABLE")), "{b}");
    assert_eq!(h["retry-after"], "7");
    assert_eq!(b["details"]["written"], 0);
    for line in b["details"]["records"].as_array().unwrap() {
        assert_eq!(line["error_code"], "SERVICE_UNAVAILABLE", "{b}");
    }
    // The 503 was not kept: the same key and body on a healthy ingress really produces.
    let req = healthy.http.post(healthy.url(RECORDS)).header("idempotency-key", "down-1").json(&body);
    let (s, h, b) = healthy.send(req).await;
    assert_eq!(s, 200, "{b}");
    assert!(h.get("idempotent-replayed").is_none());
    assert_eq!(healthy.record_count(TOPIC), 2);
    broken.stop().await;
    healthy.stop().await;
}
