//! OTLP trace export against the real stack: a tiny OTLP/HTTP collector inside the test receives
//! the spans of one task, from the HTTP submit (with the caller's traceparent) through the Kafka
//! produce to the processor's execution, all in the caller's trace with correct parent links;
//! and the agents an execution calls (HTTP, a command) receive its context.

mod common;

use common::TestApp;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const CALLER_SPAN: &str = "b7ad6b7169203331";

/// One export request as the collector saw it.
#[derive(Debug, Clone)]
struct Export {
    method: String,
    path: String,
    content_type: String,
    traceparent: Option<String>,
    body: Value,
}

type Received = Arc<Mutex<Vec<Export>>>;

/// An OTLP/HTTP collector on 127.0.0.1, port 0: records each request, answers `{}`.
async fn collector() -> (String, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received: Received = Arc::default();
    let store = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let store = store.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let store = store.clone();
                    async move {
                        let method = req.method().to_string();
                        let path = req.uri().path().to_string();
                        let content_type = req
                            .headers()
                            .get("content-type")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string();
                        let traceparent =
                            req.headers().get("traceparent").and_then(|v| v.to_str().ok()).map(String::from);
                        let bytes = req.into_body().collect().await.unwrap().to_bytes();
                        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                        store.lock().unwrap().push(Export { method, path, content_type, traceparent, body });
                        let resp = Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from_static(b"{}")))
                            .unwrap();
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    (format!("http://{addr}"), received)
}

/// A collector, and an app exporting its spans there every 100 ms as `devcycle-otlp-test`.
async fn traced_app() -> (String, Received, TestApp) {
    let (endpoint, received) = collector().await;
    let app = TestApp::spawn_with(|s| {
        s.telemetry.otlp_endpoint = endpoint.clone();
        s.telemetry.service_name = "devcycle-otlp-test".into();
        s.telemetry.otlp_batch_interval_ms = 100;
    })
    .await;
    (endpoint, received, app)
}

/// Every span received so far, with its resource's attributes.
fn spans(received: &Received) -> Vec<(Value, Value)> {
    let mut out = Vec::new();
    for e in received.lock().unwrap().iter() {
        for rs in e.body["resourceSpans"].as_array().into_iter().flatten() {
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for s in ss["spans"].as_array().into_iter().flatten() {
                    out.push((rs["resource"].clone(), s.clone()));
                }
            }
        }
    }
    out
}

fn attr<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["attributes"].as_array()?.iter().find(|a| a["key"] == key).map(|a| &a["value"])
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && s.bytes().any(|b| b != b'0')
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_the_http_submit_to_the_processor_execution() {
    let (_, received, app) = traced_app().await;

    let traceparent = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    let req = app
        .http
        .post(app.url("/v1/tasks"))
        .header("traceparent", &traceparent)
        .json(&json!({"agent": "echo", "input": {"traced": true}}));
    let (status, _, body) = app.send(req).await;
    assert_eq!(status, 202, "{body}");
    let id: uuid::Uuid = body["data"]["task_id"].as_str().unwrap().parse().unwrap();
    app.wait_status(id, "succeeded", Duration::from_secs(60)).await;

    // Server, producer, consumer and execute spans of the caller's trace reach the collector.
    let deadline = Instant::now() + Duration::from_secs(30);
    let of_trace = loop {
        let found: Vec<(Value, Value)> =
            spans(&received).into_iter().filter(|(_, s)| s["traceId"] == TRACE_ID).collect();
        let kinds: Vec<i64> = found.iter().filter_map(|(_, s)| s["kind"].as_i64()).collect();
        if [1, 2, 4, 5].iter().all(|k| kinds.contains(k)) {
            break found;
        }
        assert!(Instant::now() < deadline, "spans of the trace: {found:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // Valid OTLP/HTTP JSON requests.
    for e in received.lock().unwrap().iter() {
        assert_eq!((e.method.as_str(), e.path.as_str()), ("POST", "/v1/traces"));
        assert!(e.content_type.starts_with("application/json"), "{}", e.content_type);
        assert!(e.body["resourceSpans"].is_array(), "{}", e.body);
    }
    for (resource, s) in &of_trace {
        let attrs = resource["attributes"].as_array().unwrap();
        assert!(
            attrs.contains(&json!({"key": "service.name", "value": {"stringValue": "devcycle-otlp-test"}})),
            "{resource}"
        );
        assert!(is_hex(s["spanId"].as_str().unwrap(), 16), "{s}");
        let start: u128 = s["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
        let end: u128 = s["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
        assert!(start > 1_600_000_000_000_000_000 && end >= start, "{s}");
        assert!(is_hex(s["parentSpanId"].as_str().unwrap(), 16), "every span of this trace has a parent: {s}");
    }
    let one = |kind: i64| -> &Value {
        let of_kind: Vec<&Value> = of_trace.iter().map(|(_, s)| s).filter(|s| s["kind"] == kind).collect();
        assert_eq!(of_kind.len(), 1, "one span of kind {kind}: {of_kind:#?}");
        of_kind[0]
    };
    let server = one(2);
    let producer = one(4);
    let consumer = one(5);
    let execute = one(1);

    // The ingress: a SERVER span under the caller's span, with route and status.
    assert_eq!(server["name"], "POST /v1/tasks");
    assert_eq!(server["parentSpanId"], CALLER_SPAN);
    assert_eq!(attr(server, "http.route"), Some(&json!({"stringValue": "/v1/tasks"})));
    assert_eq!(attr(server, "http.request.method"), Some(&json!({"stringValue": "POST"})));
    assert_eq!(attr(server, "http.response.status_code"), Some(&json!({"intValue": "202"})));
    // The Kafka produce under it.
    assert_eq!(producer["parentSpanId"], server["spanId"]);
    let topic = app.topic("devcycle.task-requests");
    assert_eq!(producer["name"], format!("send {topic}"));
    assert_eq!(attr(producer, "messaging.destination.name"), Some(&json!({"stringValue": topic})));
    // The processor's CONSUMER span under the produce (from the Kafka header), the execution
    // under that.
    assert_eq!(consumer["parentSpanId"], producer["spanId"]);
    assert_eq!(attr(consumer, "devcycle.task_id"), Some(&json!({"stringValue": id.to_string()})));
    assert_eq!(attr(consumer, "devcycle.task.status"), Some(&json!({"stringValue": "succeeded"})));
    assert_eq!(execute["parentSpanId"], consumer["spanId"]);
    assert_eq!(execute["name"], "execute echo");

    // The traceparent that travelled is the produce span's: on the TaskResult and its headers.
    let want = format!("00-{TRACE_ID}-{}-01", producer["spanId"].as_str().unwrap());
    let results = app.read_results(&[id], Duration::from_secs(30)).await;
    let (result, headers) = &results[0];
    assert_eq!(result.traceparent.as_deref(), Some(want.as_str()));
    assert!(headers.contains(&("traceparent".to_string(), want.clone())), "{headers:?}");

    // Probes are not traced; a request without a traceparent starts a new trace: a root SERVER
    // span. (Spans reach the collector in the order they ended.)
    assert_eq!(app.get("/health").await.0, 200);
    let (s, _) = app.get(&format!("/v1/tasks/{id}")).await;
    assert_eq!(s, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let root = spans(&received).into_iter().map(|(_, s)| s).find(|s| s["name"] == "GET /v1/tasks/{id}");
        if let Some(root) = root {
            assert!(root.get("parentSpanId").is_none(), "{root}");
            assert!(is_hex(root["traceId"].as_str().unwrap(), 32) && root["traceId"] != TRACE_ID, "{root}");
            assert_eq!(attr(&root, "http.response.status_code"), Some(&json!({"intValue": "200"})));
            assert!(!spans(&received).iter().any(|(_, s)| s["name"] == "GET /health"));
            break;
        }
        assert!(Instant::now() < deadline, "no span for GET /v1/tasks/{{id}}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(devcycle::events::otlp_spans("exported") >= 5);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_batch_is_one_producer_span_whose_context_its_records_carry() {
    use rdkafka::message::Message;
    let (_, received, app) = traced_app().await;
    let traceparent = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    let ids = [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()];
    let records: Vec<Value> = ids
        .iter()
        .map(|id| {
            json!({"key": id.to_string(), "value": {"task_id": id.to_string(), "agent": "echo", "input": "{}",
                                                     "submitted_at": 1}})
        })
        .collect();
    let req = app
        .http
        .post(app.url("/v1/topics/devcycle.task-requests/records"))
        .header("traceparent", &traceparent)
        .header("tracestate", "vendor=1")
        .json(&json!({"records": records}));
    let (status, _, body) = app.send(req).await;
    assert_eq!(status, 200, "{body}");

    // The SERVER span, one PRODUCER span for the request, and the processor's two CONSUMER spans.
    let deadline = Instant::now() + Duration::from_secs(60);
    let of_trace = loop {
        let found: Vec<Value> =
            spans(&received).into_iter().map(|(_, s)| s).filter(|s| s["traceId"] == TRACE_ID).collect();
        let count = |kind: i64| found.iter().filter(|s| s["kind"] == kind).count();
        if count(2) == 1 && count(4) == 1 && count(5) == 2 {
            break found;
        }
        assert!(Instant::now() < deadline, "spans of the trace: {found:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let of_kind = |kind: i64| of_trace.iter().filter(move |s| s["kind"] == kind);
    let server = of_kind(2).next().unwrap();
    let producer = of_kind(4).next().unwrap();
    assert_eq!(server["parentSpanId"], CALLER_SPAN, "{server}");
    assert_eq!(producer["parentSpanId"], server["spanId"], "{producer}");
    let topic = app.topic("devcycle.task-requests");
    assert_eq!(producer["name"], format!("send {topic}"));
    assert_eq!(attr(producer, "messaging.batch.message_count"), Some(&json!({"intValue": "2"})));
    for consumer in of_kind(5) {
        assert_eq!(consumer["parentSpanId"], producer["spanId"], "{consumer}");
    }

    // Each record carries the produce span's context (not the caller's) and the caller's tracestate.
    let want = format!("00-{TRACE_ID}-{}-01", producer["spanId"].as_str().unwrap());
    let consumer = app.consumer(&topic);
    let mut seen = 0;
    while seen < ids.len() {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await.expect("record").unwrap();
        let headers = common::header_pairs(&m);
        assert!(headers.contains(&("traceparent".to_string(), want.clone())), "{headers:?}");
        assert!(headers.contains(&("tracestate".to_string(), "vendor=1".to_string())), "{headers:?}");
        assert!(m.key().is_some());
        seen += 1;
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_an_execution_calls_receive_its_trace_context() {
    let (endpoint, received, app) = traced_app().await;
    // An HTTP agent calling the collector (which answers `{}`), configured with a traceparent of
    // its own that the call's must replace; a command agent printing its TRACEPARENT.
    let configured = "00-11111111111111111111111111111111-2222222222222222-01";
    let agents = [
        json!({"name": "traced-http", "executor": "http",
               "config": {"url": format!("{endpoint}/agent"), "headers": {"Traceparent": configured}}}),
        json!({"name": "traced-cmd", "executor": "command",
               "config": {"program": "sh", "args": ["-c", "printf '{\"tp\": \"%s\"}' \"$TRACEPARENT\""]}}),
    ];
    for agent in &agents {
        let (s, b) = app.post("/v1/agents", agent).await;
        assert_eq!(s, 201, "{b}");
    }
    let traceparent = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    let mut ids = Vec::new();
    for agent in ["traced-http", "traced-cmd"] {
        let body = json!({"agent": agent, "input": {"n": 1}});
        let req = app.http.post(app.url("/v1/tasks")).header("traceparent", &traceparent).json(&body);
        let (status, _, body) = app.send(req).await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["data"]["task_id"].as_str().unwrap().parse::<uuid::Uuid>().unwrap());
    }
    app.wait_status(ids[0], "succeeded", Duration::from_secs(60)).await;
    let cmd = app.wait_status(ids[1], "succeeded", Duration::from_secs(60)).await;

    let deadline = Instant::now() + Duration::from_secs(30);
    let named = |found: &[Value], name: &str| found.iter().find(|s| s["name"] == name).cloned();
    let (execute_http, execute_cmd, client) = loop {
        let found: Vec<Value> =
            spans(&received).into_iter().map(|(_, s)| s).filter(|s| s["traceId"] == TRACE_ID).collect();
        let client = found.iter().find(|s| s["kind"] == 3).cloned();
        if let (Some(h), Some(c), Some(client)) =
            (named(&found, "execute traced-http"), named(&found, "execute traced-cmd"), client)
        {
            break (h, c, client);
        }
        assert!(Instant::now() < deadline, "spans of the trace: {found:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // The HTTP call: a CLIENT span under its execution, whose context the agent received.
    assert_eq!((&client["name"], &client["parentSpanId"]), (&json!("POST"), &execute_http["spanId"]), "{client}");
    assert_eq!(attr(&client, "http.request.method"), Some(&json!({"stringValue": "POST"})));
    assert_eq!(attr(&client, "http.response.status_code"), Some(&json!({"intValue": "200"})));
    assert_eq!(attr(&client, "server.address"), Some(&json!({"stringValue": "127.0.0.1"})));
    let calls: Vec<Export> = received.lock().unwrap().iter().filter(|e| e.path == "/agent").cloned().collect();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].body, json!({"n": 1}));
    let want = format!("00-{TRACE_ID}-{}-01", client["spanId"].as_str().unwrap());
    assert_eq!(calls[0].traceparent.as_deref(), Some(want.as_str()), "not the configured {configured}");

    // The command: its TRACEPARENT is its execution's context.
    let want = format!("00-{TRACE_ID}-{}-01", execute_cmd["spanId"].as_str().unwrap());
    assert_eq!(cmd["output"], json!({"tp": want}), "{cmd}");
    app.stop().await;
}
