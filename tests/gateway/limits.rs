//! A JSON request at the gateway's limits: topics it may not write or that do not exist, too
//! many records, too large a body or record, and per-user produce quotas (429, nothing written).

use super::*;

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
    // Its RateLimit-* headers are the quota's (3 records a second), not the admission's
    // request limit (100,000 in the test settings) counted for the same request.
    let header = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert_eq!(
        (header("ratelimit-limit").as_deref(), header("ratelimit-remaining").as_deref()),
        (Some("3"), Some("0")),
        "{h:?}"
    );
    assert_eq!(header("ratelimit-reset"), header("retry-after"), "{h:?}");
    assert_eq!(app.record_count(TOPIC), 6, "a refused request writes nothing");
    app.stop().await;

    let app = ingress(|s| s.gateway.quota_bytes_per_sec = 200).await;
    let big = json!({"value": request_value("echo"), "key": "x".repeat(300)});
    let (s, b) = app.post(RECORDS, &big).await;
    assert_eq!((s, b["error"].as_str()), (429, Some("RATE_LIMITED")), "{b}");
    assert_eq!(app.record_count(TOPIC), 0);
    app.stop().await;
}

/// At the shipped limits a request body may hold a value whose record Kafka's producer refuses
/// (1,000,000 bytes): that is the caller's request being too large (413, the record's line
/// `RECORD_TOO_LARGE`), on the gateway and on `POST /v1/tasks` alike, not a server error (500).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_over_kafka_s_limit_is_too_large_at_the_shipped_limits() {
    let app = ingress(|_| {}).await;
    let input = "z".repeat(1_010_000);
    assert!(app.deps.settings.gateway.max_record_bytes > input.len() + 200, "the value passes the gateway's check");
    assert!(app.deps.settings.http.max_body_bytes > input.len() + 200, "the body passes the body limit");
    let mut big = request_value("echo");
    big["input"] = json!(input);
    let (s, b) = app.post(RECORDS, &json!({"records": [{"value": big}]})).await;
    assert_eq!((s, b["error"].as_str()), (413, Some("PAYLOAD_TOO_LARGE")), "{b}");
    assert_eq!(b["details"]["records"][0]["error_code"], "RECORD_TOO_LARGE", "{b}");

    let (s, b) = app.post("/v1/tasks", &json!({"agent": "echo", "input": input})).await;
    assert_eq!((s, b["error"].as_str()), (413, Some("PAYLOAD_TOO_LARGE")), "{b}");
    assert_eq!(b["details"]["limit_bytes"], 1_000_000);
    assert_eq!(app.record_count(TOPIC), 0, "nothing written");
    app.stop().await;
}
