//! ndjson streams at their limits: a client gone quiet, per-user quotas (paced lines, refused
//! lines, 429 when already over).

use super::*;

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
