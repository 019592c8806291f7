//! Trace contexts, span recording, the OTLP encoding and the exporter against a local collector.

use super::*;

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[test]
fn traceparent_parses_and_prints() {
    let c = TraceContext::parse(TP).unwrap();
    assert_eq!(c.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(c.span_id_hex(), "00f067aa0ba902b7");
    assert!(c.sampled);
    assert_eq!(c.traceparent(), TP);
    assert!(!TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap().sampled);
    // A later version may append fields.
    assert!(TraceContext::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz").is_some());
    for bad in [
        "",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
    ] {
        assert!(TraceContext::parse(bad).is_none(), "{bad}");
    }
}

fn enabled_tracer(queue: usize) -> (Tracer, mpsc::Receiver<Msg>) {
    let (tx, rx) = mpsc::channel(queue);
    (Tracer { tx: Some(tx) }, rx)
}

fn recorded(rx: &mut mpsc::Receiver<Msg>) -> Vec<SpanRecord> {
    let mut out = Vec::new();
    while let Ok(Msg::Span(s)) = rx.try_recv() {
        out.push(*s);
    }
    out
}

#[test]
fn children_share_the_trace_and_link_to_their_parent() {
    let (tracer, mut rx) = enabled_tracer(16);
    let server = tracer.remote(Some(TP)).start("POST /v1/tasks", SpanKind::Server);
    let sc = server.trace_context().unwrap();
    let produce = server.context().start("send t", SpanKind::Producer);
    let pc = produce.trace_context().unwrap();
    assert_eq!(pc.trace_id, sc.trace_id);
    assert_eq!(produce.traceparent().unwrap(), pc.traceparent());
    let consumer = tracer.remote(produce.traceparent().as_deref()).start("process t", SpanKind::Consumer);
    drop(consumer);
    produce.end();
    server.end();
    let spans = recorded(&mut rx);
    assert_eq!(spans.len(), 3);
    assert_eq!(spans[0].parent_span_id, Some(pc.span_id));
    assert_eq!(spans[1].parent_span_id, Some(sc.span_id));
    assert_eq!(hex(&spans[2].parent_span_id.unwrap()), "00f067aa0ba902b7");
    assert!(spans.iter().all(|s| hex(&s.trace_id) == "4bf92f3577b34da6a3ce929d0e0e4736"));

    // No (or an invalid) traceparent: a new sampled root.
    let root = tracer.remote(Some("garbage")).start("GET /health", SpanKind::Server);
    let rc = root.trace_context().unwrap();
    assert!(rc.sampled && hex(&rc.trace_id) != "4bf92f3577b34da6a3ce929d0e0e4736");
    root.end();
    assert_eq!(recorded(&mut rx)[0].parent_span_id, None);

    // Unsampled: propagated, never exported.
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    let s = tracer.remote(Some(tp)).start("x", SpanKind::Server);
    assert!(s.traceparent().unwrap().ends_with("-00"));
    s.end();
    assert!(recorded(&mut rx).is_empty());
}

#[test]
fn export_off_passes_the_received_traceparent_on_unchanged() {
    let tracer = Tracer::disabled();
    let server = tracer.remote(Some(TP)).start("POST /v1/tasks", SpanKind::Server);
    let produce = server.context().start("send t", SpanKind::Producer);
    assert_eq!(produce.traceparent().as_deref(), Some(TP));
    assert!(produce.trace_context().is_none());
    assert_eq!(tracer.remote(None).start("x", SpanKind::Server).traceparent(), None);
}

#[test]
fn a_full_queue_drops_spans_and_never_blocks() {
    let (tracer, mut rx) = enabled_tracer(2);
    let before = crate::events::otlp_spans("dropped_queue_full");
    for _ in 0..5 {
        tracer.remote(None).start("x", SpanKind::Internal).end();
    }
    assert_eq!(recorded(&mut rx).len(), 2);
    assert_eq!(crate::events::otlp_spans("dropped_queue_full") - before, 3);
}

#[test]
fn json_encoding_follows_the_otlp_json_mapping() {
    let start = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
    let span = SpanRecord {
        trace_id: decode_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
        span_id: decode_hex("00f067aa0ba902b7").unwrap(),
        parent_span_id: Some(decode_hex("1111111111111111").unwrap()),
        name: "POST /v1/tasks".into(),
        kind: SpanKind::Server,
        start,
        end: start + Duration::from_millis(5),
        attributes: vec![
            ("http.route", "/v1/tasks".into()),
            ("http.response.status_code", 503u16.into()),
            ("ok", false.into()),
        ],
        status: Status::Error("kafka unavailable".into()),
    };
    let root = SpanRecord { parent_span_id: None, status: Status::Unset, attributes: vec![], ..span.clone() };
    let v = encode_request(&resource("devcycle-test", "test"), &[span, root]);
    let rs = &v["resourceSpans"][0];
    let res = rs["resource"]["attributes"].as_array().unwrap();
    assert!(res.contains(&json!({"key": "service.name", "value": {"stringValue": "devcycle-test"}})));
    assert_eq!(rs["scopeSpans"][0]["scope"]["name"], "devcycle");
    let s = &rs["scopeSpans"][0]["spans"][0];
    assert_eq!(s["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(s["spanId"], "00f067aa0ba902b7");
    assert_eq!(s["parentSpanId"], "1111111111111111");
    assert_eq!(s["name"], "POST /v1/tasks");
    assert_eq!(s["kind"], 2);
    assert_eq!(s["startTimeUnixNano"], "1700000000123456789");
    assert_eq!(s["endTimeUnixNano"], "1700000000128456789");
    assert_eq!(
        s["attributes"],
        json!([
            {"key": "http.route", "value": {"stringValue": "/v1/tasks"}},
            {"key": "http.response.status_code", "value": {"intValue": "503"}},
            {"key": "ok", "value": {"boolValue": false}},
        ])
    );
    assert_eq!(s["status"], json!({"code": 2, "message": "kafka unavailable"}));
    let r = &rs["scopeSpans"][0]["spans"][1];
    assert!(r.get("parentSpanId").is_none());
    assert_eq!(r["status"], json!({}));
}

#[test]
fn headers_parse_like_otel_exporter_otlp_headers() {
    assert_eq!(
        parse_headers("api-key=abc, x-team = core,bad,"),
        [("api-key".to_string(), "abc".to_string()), ("x-team".to_string(), "core".to_string())]
    );
}
