//! The HTTP gateway to topics against the real broker and registry: records produced over
//! HTTP are read back from Kafka and decoded; per-record lines and statuses; limits;
//! idempotent replays; respond-async receipts; forwarded headers; the topic list.

mod common;

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
async fn topic_access_and_limits() {
    let app = ingress(|s| {
        s.gateway.max_records_per_request = 3;
        s.gateway.max_body_bytes = 4096;
        s.gateway.max_record_bytes = 400;
    })
    .await;
    let one = json!({"value": request_value("echo")});
    let (s, b) = app.post("/v1/topics/devcycle.task-results/records", &one).await;
    assert_eq!((s, b["error"].as_str()), (403, Some("FORBIDDEN")), "{b}");
    let (s, b) = app.post("/v1/topics/no-such-topic/records", &one).await;
    assert_eq!((s, b["error"].as_str()), (404, Some("NOT_FOUND")), "{b}");
    let (s, _, b) = app.send(app.http.get(app.url(RECORDS))).await;
    assert_eq!((s, b["error"].as_str()), (405, Some("METHOD_NOT_ALLOWED")), "{b}");

    let four: Vec<Value> = (0..4).map(|_| one.clone()).collect();
    let (s, b) = app.post(RECORDS, &json!({"records": four})).await;
    assert_eq!((s, b["error"].as_str()), (413, Some("PAYLOAD_TOO_LARGE")), "{b}");
    assert_eq!(b["details"]["max_records_per_request"], 3);

    let mut huge = request_value("echo");
    huge["input"] = json!("x".repeat(5000));
    let (s, b) = app.post(RECORDS, &json!({"value": huge})).await;
    assert_eq!((s, b["error"].as_str()), (413, Some("PAYLOAD_TOO_LARGE")), "{b}");

    // One record over max_record_bytes: its own 413 line; the other is written (207).
    let mut big = request_value("echo");
    big["input"] = json!("y".repeat(600));
    let (s, b) = app.post(RECORDS, &json!({"records": [{"value": big.clone()}, one.clone()]})).await;
    assert_eq!(s, 207, "{b}");
    assert_eq!(b["details"]["records"][0]["error_code"], "RECORD_TOO_LARGE");
    assert_written(&b["details"]["records"][1]);
    let (s, b) = app.post(RECORDS, &json!({"value": big})).await;
    assert_eq!((s, b["error"].as_str()), (413, Some("PAYLOAD_TOO_LARGE")), "{b}");
    assert_eq!(app.record_count(TOPIC), 1);

    let (s, b) = app.post(RECORDS, &json!({"records": []})).await;
    assert_eq!(s, 422, "{b}");
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
async fn ndjson_stream_reports_one_line_per_record_in_order() {
    let app = ingress(|_| {}).await;
    let lines = [
        json!({"key": "s0", "value": request_value("echo")}).to_string(),
        json!({"key": "s1", "value": {"agent": "echo"}}).to_string(),
        "{not json".to_string(),
        json!({"key": "s3", "value": request_value("echo"), "headers": {"h": "v"}}).to_string(),
    ];
    let body = format!("{}\n", lines.join("\n"));
    // Streams are authenticated like every route.
    let unauthenticated = app
        .http
        .post(app.url(RECORDS))
        .header("content-type", "application/x-ndjson")
        .body("{}\n")
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status().as_u16(), 401);
    let r = app
        .http
        .post(app.url(RECORDS))
        .bearer_auth(&app.token)
        .header("content-type", "application/x-ndjson")
        .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    assert_eq!(r.headers()["transfer-encoding"], "chunked");
    let text = r.text().await.unwrap();
    let out: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(out.len(), 5, "{text}");
    assert_written(&out[0]);
    assert_eq!(out[1]["error_code"], "VALIDATION_ERROR", "{text}");
    assert_eq!(out[2]["error_code"], "MALFORMED_JSON", "{text}");
    assert_written(&out[3]);
    assert_eq!(out[4], json!({"done": true, "records": 4, "written": 2, "failed": 2}));
    let msgs = read_records(&app, 2).await;
    let s3 = msgs.iter().find(|m| m.key() == Some(b"s3".as_slice())).unwrap();
    assert_eq!(s3.offset(), out[3]["offset"].as_i64().unwrap());
    assert!(header_pairs(s3).contains(&("h".into(), "v".into())));
    assert!(header_pairs(s3).iter().any(|(k, _)| k == "traceparent"));
    assert_eq!(app.record_count(TOPIC), 2);

    // Too many records: the stream stops with a final error line.
    let app2_records: Vec<String> = (0..3).map(|_| json!({"value": request_value("echo")}).to_string()).collect();
    let small = ingress(|s| s.gateway.max_records_per_request = 2).await;
    let r = small
        .http
        .post(small.url(RECORDS))
        .bearer_auth(&small.token)
        .header("content-type", "application/x-ndjson")
        .body(app2_records.join("\n"))
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(
        (last["done"].as_bool(), last["error_code"].as_str()),
        (Some(true), Some("PAYLOAD_TOO_LARGE")),
        "{text}"
    );
    assert_eq!(last["written"], 2, "{text}");
    small.stop().await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_produce_quotas_answer_429_and_write_nothing() {
    let app = ingress(|s| {
        s.gateway.quota_records_per_sec = 3;
        s.gateway.quota_bytes_per_sec = 100_000;
    })
    .await;
    let batch =
        |n: usize| json!({"records": (0..n).map(|_| json!({"value": request_value("echo")})).collect::<Vec<_>>()});
    let (s, b) = app.post(RECORDS, &batch(3)).await;
    assert_eq!(s, 200, "{b}");
    // An idempotent retry is answered from its stored answer, not charged: with the quota used
    // up (3 records within the second), the first try of 3 more is refused and frees its key
    // (its retry would run), and a replay of a stored answer is not refused.
    let three = batch(3);
    let keyed = |key: &str| app.http.post(app.url(RECORDS)).header("idempotency-key", key).json(&three);
    let (s, _, b) = app.send(keyed("q-1")).await;
    assert_eq!((s, b["error"].as_str()), (429, Some("RATE_LIMITED")), "{b}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (s, _, b) = app.send(keyed("q-2")).await;
    assert_eq!(s, 200, "a new window: {b}");
    let (s, h, b) = app.send(keyed("q-2")).await;
    assert_eq!((s, h.get("idempotent-replayed").map(|v| v.to_str().unwrap())), (200, Some("true")), "{b}");
    assert_eq!(app.record_count(TOPIC), 6);
    // More records than the per-second quota can ever allow: refused, whatever the window.
    let (s, h, b) = app.send(app.http.post(app.url(RECORDS)).json(&batch(4))).await;
    assert_eq!((s, b["error"].as_str()), (429, Some("RATE_LIMITED")), "{b}");
    assert!(h.contains_key("retry-after"), "{h:?}");
    assert_eq!(app.record_count(TOPIC), 6, "a refused request writes nothing");
    app.stop().await;

    let app = ingress(|s| s.gateway.quota_bytes_per_sec = 200).await;
    let big = json!({"value": request_value("echo"), "key": "x".repeat(300)});
    let (s, b) = app.post(RECORDS, &big).await;
    assert_eq!((s, b["error"].as_str()), (429, Some("RATE_LIMITED")), "{b}");
    assert_eq!(app.record_count(TOPIC), 0);
    app.stop().await;
}

/// A stream whose client stops sending ends after `http.request_timeout_ms` with a final
/// `REQUEST_TIMEOUT` line; the line it sent before is reported, and written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ndjson_stream_whose_client_goes_quiet_is_ended() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = ingress(|s| s.http.request_timeout_ms = 1500).await;
    let line = format!("{}\n", json!({"key": "q0", "value": request_value("echo")}));
    let head = format!(
        "POST {RECORDS} HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {}\r\ncontent-type: application/x-ndjson\r\n\
         transfer-encoding: chunked\r\n\r\n{:x}\r\n{line}\r\n",
        app.addr,
        app.token,
        line.len()
    );
    let mut conn = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    // ... and then nothing: the body never ends. Read the answer to its last chunk.
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.ends_with(b"\r\n0\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(20), conn.read(&mut buf))
            .await
            .expect("the stream ended")
            .unwrap();
        assert!(n > 0, "closed before the answer ended: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let lines: Vec<Value> =
        text.split('\n').filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l.trim_end()).unwrap()).collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_written(&lines[0]);
    let done = &lines[1];
    assert_eq!((done["done"].as_bool(), done["error_code"].as_str()), (Some(true), Some("REQUEST_TIMEOUT")), "{text}");
    assert_eq!((done["records"].as_u64(), done["written"].as_u64()), (Some(1), Some(1)), "{text}");
    assert!(took >= Duration::from_millis(1400) && took < Duration::from_secs(10), "ended after {took:?}");
    assert_eq!(read_records(&app, 1).await[0].key(), Some(b"q0".as_slice()));
    app.stop().await;
}

/// Sends an ndjson stream with the admin's token; returns the status, the headers and each
/// answer line with when it arrived (since the request was sent).
async fn stream(app: &TestApp, lines: &[String]) -> (u16, reqwest::header::HeaderMap, Vec<(Value, Duration)>) {
    let started = Instant::now();
    let mut r = app
        .http
        .post(app.url(RECORDS))
        .bearer_auth(&app.token)
        .header("content-type", "application/x-ndjson")
        .body(format!("{}\n", lines.join("\n")))
        .send()
        .await
        .unwrap();
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    let (mut out, mut buf) = (Vec::new(), Vec::<u8>::new());
    while let Some(chunk) = r.chunk().await.unwrap() {
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            out.push((serde_json::from_slice(&line).unwrap(), started.elapsed()));
        }
    }
    if !buf.is_empty() {
        out.push((
            serde_json::from_slice(&buf).unwrap_or(Value::String(String::from_utf8_lossy(&buf).into())),
            started.elapsed(),
        ));
    }
    (status, headers, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_stream_over_its_quota_is_paced_and_every_line_reported() {
    let app = ingress(|s| {
        s.gateway.quota_records_per_sec = 2;
        s.gateway.quota_bytes_per_sec = 100_000;
        s.gateway.stream_quota_max_wait_ms = 5000;
    })
    .await;
    let lines: Vec<String> =
        (0..6).map(|i| json!({"key": format!("p{i}"), "value": request_value("echo")}).to_string()).collect();
    let (status, _, out) = stream(&app, &lines).await;
    assert_eq!(status, 200);
    let text: Vec<String> = out.iter().map(|(l, t)| format!("{t:?} {l}")).collect();
    assert_eq!(out.len(), 7, "one report per line, then done: {text:#?}");
    out[..6].iter().for_each(|(l, _)| assert_written(l));
    assert_eq!(out[6].0, json!({"done": true, "records": 6, "written": 6, "failed": 0}));
    // Two records a second: records 3-4 wait for the second window, 5-6 for the third, and
    // the reports of the first ones were sent meanwhile.
    assert!(out[6].1 >= Duration::from_millis(1900), "paced over three windows: {text:#?}");
    assert!(out[4].1 - out[0].1 >= Duration::from_millis(1500), "reports stream while paced: {text:#?}");
    assert_eq!(app.record_count(TOPIC), 6);
    let msgs = read_records(&app, 6).await;
    for (i, (line, _)) in out[..6].iter().enumerate() {
        let key = format!("p{i}");
        let m = msgs.iter().find(|m| m.key() == Some(key.as_bytes())).expect("record written");
        assert_eq!(
            (m.partition() as i64, m.offset()),
            (line["partition"].as_i64().unwrap(), line["offset"].as_i64().unwrap())
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_stream_refuses_lines_it_cannot_wait_for_and_429s_when_already_over() {
    let app = ingress(|s| {
        s.gateway.quota_records_per_sec = 2;
        s.gateway.quota_bytes_per_sec = 2000;
        s.gateway.stream_quota_max_wait_ms = 0; // never wait: refuse at once
    })
    .await;
    let valid = |k: &str| json!({"key": k, "value": request_value("echo")}).to_string();
    let huge = json!({"key": "h".repeat(3000), "value": request_value("echo")}).to_string();
    let lines = vec![valid("q0"), huge, valid("q2"), valid("q3"), valid("q4")];
    let (status, _, out) = stream(&app, &lines).await;
    assert_eq!(status, 200);
    let text: Vec<String> = out.iter().map(|(l, _)| l.to_string()).collect();
    assert_eq!(out.len(), 6, "one report per line, then done: {text:#?}");
    assert_written(&out[0].0);
    // More bytes than a whole window allows: refused (waiting never helps), not charged.
    assert_eq!(out[1].0["error_code"], "QUOTA_EXCEEDED", "{text:#?}");
    assert!(out[1].0.get("retry_after_ms").is_none(), "{text:#?}");
    assert_written(&out[2].0);
    // The window's two records are used: the next lines are refused with a retry hint.
    let refused: Vec<&Value> =
        out[3..5].iter().map(|(l, _)| l).filter(|l| l["error_code"] == "QUOTA_EXCEEDED").collect();
    assert!(!refused.is_empty(), "{text:#?}");
    for l in &refused {
        let ms = l["retry_after_ms"].as_u64().unwrap_or_else(|| panic!("retry_after_ms in {l}"));
        assert!((1..=1000).contains(&ms), "{l}");
        assert!(l.get("offset").is_none(), "{l}");
    }
    let written = out[..5].iter().filter(|(l, _)| l.get("offset").is_some()).count();
    assert_eq!(written + refused.len() + 1, 5, "every line is written or refused: {text:#?}");
    assert_eq!(out[5].0, json!({"done": true, "records": 5, "written": written, "failed": 5 - written}));
    assert_eq!(app.record_count(TOPIC), written as i64, "refused lines are not produced");

    // A caller with no room left in the window is refused before the stream starts. Fill the
    // window (a 422 batch is charged too; a 429 means it was full already), then stream at once.
    let invalid = json!({"records": [{"value": {"agent": 1}}, {"value": {"agent": 1}}]});
    let mut refusal = None;
    for _ in 0..5 {
        let (s, _) = app.post(RECORDS, &invalid).await;
        assert!(s == 422 || s == 429, "{s}");
        let (status, headers, out) = stream(&app, &[valid("late")]).await;
        if status == 429 {
            refusal = Some((headers, out));
            break;
        }
        // The window rolled over in between: that stream was taken; try again.
        assert_eq!(status, 200);
    }
    let (headers, out) = refusal.expect("a stream over the quota is refused with 429");
    assert!(headers.contains_key("retry-after"), "{headers:?}");
    assert_eq!(headers["ratelimit-limit"], "2");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(out.len(), 1, "{out:?}");
    let body = &out[0].0;
    assert_eq!((body["success"].as_bool(), body["error"].as_str()), (Some(false), Some("RATE_LIMITED")), "{body}");
    assert_eq!(body["details"]["unit"], "records/s", "{body}");
    assert!(body["request_id"].is_string() && body["timestamp"].is_string(), "{body}");
    app.stop().await;
}
