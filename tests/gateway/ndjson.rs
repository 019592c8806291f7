//! ndjson streams through the gateway: one answer line per record, in order.

use super::*;

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
