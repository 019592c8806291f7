//! Trace export over OTLP/HTTP with JSON encoding, switched on by `telemetry.otlp_endpoint`.
//!
//! A small in-crate exporter instead of the `opentelemetry` crates: it costs no new dependency
//! (spans are plain structs, the JSON is `serde_json`, and the HTTP client is `reqwest`, which
//! this crate already uses and which is the hyper 1 / hyper-util client underneath), so the
//! build on a small machine stays as it was.
//!
//! Spans are explicit records, not derived from `tracing` spans, so they do not depend on the
//! log level: the ingress starts a SERVER span per request (parent: the caller's `traceparent`,
//! else a new trace), a PRODUCER span per TaskRequest it produces (its context is the
//! `traceparent` written to the Kafka headers and the TaskRequest), and the agent-executor a
//! CONSUMER span per attempt (parent: the record's `traceparent` header, else the TaskRequest's)
//! with an INTERNAL child around the agent's execution. One trace thus runs from the HTTP
//! submit to the processor's execution.
//!
//! Invariants:
//! - export off (empty endpoint): no span is recorded and a received `traceparent` is passed on
//!   unchanged, exactly as before tracing existed;
//! - recording never blocks: a finished span goes into a bounded queue with `try_send`; when the
//!   queue is full the span is dropped and counted (`devcycle_otlp_spans_total{outcome}`);
//! - one exporter task per process batches spans (`otlp_batch_size` or every
//!   `otlp_batch_interval_ms`) and POSTs each batch to `{endpoint}/v1/traces` within
//!   `otlp_timeout_ms`; a failed batch is dropped and counted, not retried;
//! - a parent's sampled flag is kept: spans of an unsampled trace (flags `00`) get ids and are
//!   propagated but not exported; new traces are sampled.

use crate::events::SpansExported;
use crate::settings::TelemetrySettings;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

/// OTLP `Span.SpanKind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Internal = 1,
    Server = 2,
    Client = 3,
    Producer = 4,
    Consumer = 5,
}

/// A W3C trace context: trace id, span id and the sampled flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

impl TraceContext {
    /// Parses a `traceparent` header (W3C Trace Context level 1): `00-<32 hex>-<16 hex>-<2 hex>`;
    /// later versions may append fields. All-zero ids, upper case and version `ff` are invalid.
    pub fn parse(header: &str) -> Option<TraceContext> {
        let h = header.trim();
        let mut parts = h.split('-');
        let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || !is_lower_hex(version) || version == "ff" {
            return None;
        }
        if version == "00" && (h.len() != 55 || parts.next().is_some()) {
            return None;
        }
        if flags.len() != 2 || !is_lower_hex(flags) {
            return None;
        }
        let trace_id: [u8; 16] = decode_hex(trace)?;
        let span_id: [u8; 8] = decode_hex(span)?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(TraceContext { trace_id, span_id, sampled: flags & 1 == 1 })
    }

    /// The `traceparent` header value (version 00).
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{:02x}", hex(&self.trace_id), hex(&self.span_id), u8::from(self.sampled))
    }

    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    pub fn span_id_hex(&self) -> String {
        hex(&self.span_id)
    }
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn decode_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 || !is_lower_hex(s) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(out)
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn random_nonzero<const N: usize>() -> [u8; N] {
    loop {
        let mut b = [0u8; N];
        rand::fill(&mut b[..]);
        if b != [0; N] {
            return b;
        }
    }
}

/// An attribute value (OTLP `AnyValue` subset).
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl From<&str> for AttrValue {
    fn from(s: &str) -> Self {
        AttrValue::Str(s.to_string())
    }
}
impl From<String> for AttrValue {
    fn from(s: String) -> Self {
        AttrValue::Str(s)
    }
}
impl From<i64> for AttrValue {
    fn from(v: i64) -> Self {
        AttrValue::Int(v)
    }
}
impl From<i32> for AttrValue {
    fn from(v: i32) -> Self {
        AttrValue::Int(v.into())
    }
}
impl From<u32> for AttrValue {
    fn from(v: u32) -> Self {
        AttrValue::Int(v.into())
    }
}
impl From<u16> for AttrValue {
    fn from(v: u16) -> Self {
        AttrValue::Int(v.into())
    }
}
impl From<bool> for AttrValue {
    fn from(v: bool) -> Self {
        AttrValue::Bool(v)
    }
}

/// OTLP `Status`.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    Unset,
    Ok,
    Error(String),
}

/// A finished span, as queued for export.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub name: String,
    pub kind: SpanKind,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, AttrValue)>,
    pub status: Status,
}

enum Msg {
    Span(Box<SpanRecord>),
    Flush(oneshot::Sender<()>),
}

/// Starts spans; cheap to clone. [`Tracer::disabled`] records nothing.
#[derive(Clone, Default)]
pub struct Tracer {
    tx: Option<mpsc::Sender<Msg>>,
}

impl Tracer {
    pub fn disabled() -> Tracer {
        Tracer { tx: None }
    }

    /// A tracer exporting to `settings.otlp_endpoint`, or a disabled one when it is empty. The
    /// exporter task runs on the current tokio runtime.
    pub fn start(settings: &TelemetrySettings, environment: &str) -> Tracer {
        let endpoint = settings.otlp_endpoint.trim().trim_end_matches('/');
        if endpoint.is_empty() {
            return Tracer::disabled();
        }
        let (tx, rx) = mpsc::channel(settings.otlp_queue_size.max(1));
        let exporter = Exporter {
            url: format!("{endpoint}/v1/traces"),
            headers: parse_headers(settings.otlp_headers.expose()),
            resource: resource(&settings.service_name, environment),
            client: reqwest::Client::builder()
                .timeout(Duration::from_millis(settings.otlp_timeout_ms))
                .build()
                .unwrap_or_default(),
            batch_size: settings.otlp_batch_size.max(1),
            interval: Duration::from_millis(settings.otlp_batch_interval_ms.max(1)),
        };
        tracing::info!(url = %exporter.url, service_name = %settings.service_name, "OTLP trace export on");
        tokio::spawn(exporter.run(rx));
        Tracer { tx: Some(tx) }
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// The parent for spans started on behalf of a received `traceparent` (None or invalid: a
    /// new trace). With export off, the header is only carried, to be passed on unchanged.
    pub fn remote(&self, traceparent: Option<&str>) -> Parent {
        Parent {
            tracer: self.clone(),
            ctx: if self.enabled() { traceparent.and_then(TraceContext::parse) } else { None },
            received: traceparent.map(String::from),
        }
    }

    /// Exports every span queued so far (waits at most `timeout`).
    pub async fn flush(&self, timeout: Duration) {
        let Some(tx) = &self.tx else { return };
        let (done, wait) = oneshot::channel();
        let _ = tokio::time::timeout(timeout, async {
            if tx.send(Msg::Flush(done)).await.is_ok() {
                let _ = wait.await;
            }
        })
        .await;
    }

    fn record(&self, span: SpanRecord) {
        let Some(tx) = &self.tx else { return };
        if tx.try_send(Msg::Span(Box::new(span))).is_err() {
            SpansExported { count: 1, outcome: "dropped_queue_full" }.emit();
        }
    }
}

/// Where a new span hangs: a trace context (or none: a new trace), and the tracer. Cheap to
/// clone; request handlers keep one to start children.
#[derive(Clone, Default)]
pub struct Parent {
    tracer: Tracer,
    ctx: Option<TraceContext>,
    /// The header as received (passed on unchanged when export is off).
    received: Option<String>,
}

impl Parent {
    /// Starts a span under this parent.
    pub fn start(&self, name: impl Into<String>, kind: SpanKind) -> Span {
        let ctx = self.tracer.enabled().then(|| TraceContext {
            trace_id: self.ctx.map(|c| c.trace_id).unwrap_or_else(random_nonzero),
            span_id: random_nonzero(),
            sampled: self.ctx.is_none_or(|c| c.sampled),
        });
        Span {
            tracer: self.tracer.clone(),
            ctx,
            parent_span_id: self.ctx.map(|c| c.span_id),
            received: self.received.clone(),
            name: name.into(),
            kind,
            start: SystemTime::now(),
            attributes: Vec::new(),
            status: Status::Unset,
            ended: false,
        }
    }

    /// The `traceparent` to send downstream from here.
    pub fn traceparent(&self) -> Option<String> {
        match &self.ctx {
            Some(c) => Some(c.traceparent()),
            None => self.received.clone(),
        }
    }
}

/// A span being recorded; exported when ended (or dropped).
pub struct Span {
    tracer: Tracer,
    /// None when export is off.
    ctx: Option<TraceContext>,
    parent_span_id: Option<[u8; 8]>,
    received: Option<String>,
    name: String,
    kind: SpanKind,
    start: SystemTime,
    attributes: Vec<(&'static str, AttrValue)>,
    status: Status,
    ended: bool,
}

impl Span {
    /// A span that records nothing and passes nothing on.
    pub fn none() -> Span {
        Parent::default().start("", SpanKind::Internal)
    }

    /// The parent for this span's children.
    pub fn context(&self) -> Parent {
        Parent { tracer: self.tracer.clone(), ctx: self.ctx, received: self.received.clone() }
    }

    /// The `traceparent` to send downstream: this span's context, or with export off the
    /// received header unchanged.
    pub fn traceparent(&self) -> Option<String> {
        match &self.ctx {
            Some(c) => Some(c.traceparent()),
            None => self.received.clone(),
        }
    }

    pub fn trace_context(&self) -> Option<TraceContext> {
        self.ctx
    }

    pub fn set(&mut self, key: &'static str, value: impl Into<AttrValue>) {
        if self.ctx.is_some() {
            let value = value.into();
            match self.attributes.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = value,
                None => self.attributes.push((key, value)),
            }
        }
    }

    /// Marks the span failed.
    pub fn error(&mut self, message: impl Into<String>) {
        if self.ctx.is_some() {
            self.status = Status::Error(message.into());
        }
    }

    pub fn end(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        if self.ended {
            return;
        }
        self.ended = true;
        let Some(ctx) = self.ctx.filter(|c| c.sampled) else { return };
        self.tracer.record(SpanRecord {
            trace_id: ctx.trace_id,
            span_id: ctx.span_id,
            parent_span_id: self.parent_span_id,
            name: std::mem::take(&mut self.name),
            kind: self.kind,
            start: self.start,
            end: SystemTime::now().max(self.start),
            attributes: std::mem::take(&mut self.attributes),
            status: std::mem::replace(&mut self.status, Status::Unset),
        });
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        self.finish();
    }
}

/// `k1=v1,k2=v2` (the `OTEL_EXPORTER_OTLP_HEADERS` format) into pairs.
fn parse_headers(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

fn resource(service_name: &str, environment: &str) -> Value {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_default();
    let mut attrs = vec![
        attr("service.name", &AttrValue::from(service_name)),
        attr("service.version", &AttrValue::from(env!("CARGO_PKG_VERSION"))),
        attr("deployment.environment.name", &AttrValue::from(environment)),
        attr("process.pid", &AttrValue::Int(std::process::id().into())),
        attr("telemetry.sdk.name", &AttrValue::from("devcycle")),
        attr("telemetry.sdk.language", &AttrValue::from("rust")),
    ];
    if !host.is_empty() {
        attrs.push(attr("host.name", &AttrValue::Str(host)));
    }
    json!({ "attributes": attrs })
}

fn attr(key: &str, v: &AttrValue) -> Value {
    let value = match v {
        AttrValue::Str(s) => json!({ "stringValue": s }),
        // OTLP/JSON encodes 64-bit integers as strings.
        AttrValue::Int(i) => json!({ "intValue": i.to_string() }),
        AttrValue::Bool(b) => json!({ "boolValue": b }),
    };
    json!({ "key": key, "value": value })
}

fn unix_nanos(t: SystemTime) -> String {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos().to_string()
}

/// An `ExportTraceServiceRequest` in the OTLP 1.x JSON mapping: ids as lower-case hex, enums as
/// integers, 64-bit integers (times, `intValue`) as decimal strings, lowerCamelCase names.
pub fn encode_request(resource: &Value, spans: &[SpanRecord]) -> Value {
    let spans: Vec<Value> = spans
        .iter()
        .map(|s| {
            let mut span = json!({
                "traceId": hex(&s.trace_id),
                "spanId": hex(&s.span_id),
                "name": s.name,
                "kind": s.kind as i32,
                "startTimeUnixNano": unix_nanos(s.start),
                "endTimeUnixNano": unix_nanos(s.end),
                "attributes": s.attributes.iter().map(|(k, v)| attr(k, v)).collect::<Vec<_>>(),
                "status": match &s.status {
                    Status::Unset => json!({}),
                    Status::Ok => json!({ "code": 1 }),
                    Status::Error(m) => json!({ "code": 2, "message": m }),
                },
            });
            if let Some(p) = s.parent_span_id {
                span["parentSpanId"] = Value::String(hex(&p));
            }
            span
        })
        .collect();
    json!({
        "resourceSpans": [{
            "resource": resource,
            "scopeSpans": [{
                "scope": { "name": "devcycle", "version": env!("CARGO_PKG_VERSION") },
                "spans": spans,
            }],
        }],
    })
}

struct Exporter {
    url: String,
    headers: Vec<(String, String)>,
    resource: Value,
    client: reqwest::Client,
    batch_size: usize,
    interval: Duration,
}

impl Exporter {
    async fn run(self, mut rx: mpsc::Receiver<Msg>) {
        let mut batch: Vec<SpanRecord> = Vec::with_capacity(self.batch_size);
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Msg::Span(s)) => {
                        batch.push(*s);
                        if batch.len() >= self.batch_size {
                            self.export(&mut batch).await;
                        }
                    }
                    Some(Msg::Flush(done)) => {
                        self.export(&mut batch).await;
                        let _ = done.send(());
                    }
                    None => {
                        self.export(&mut batch).await;
                        return;
                    }
                },
                _ = tick.tick() => self.export(&mut batch).await,
            }
        }
    }

    async fn export(&self, batch: &mut Vec<SpanRecord>) {
        if batch.is_empty() {
            return;
        }
        let spans = std::mem::take(batch);
        let body = encode_request(&self.resource, &spans).to_string();
        let mut req = self.client.post(&self.url).header("content-type", "application/json").body(body);
        for (k, v) in &self.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let count = spans.len() as u64;
        match req.send().await {
            Ok(r) if r.status().is_success() => SpansExported { count, outcome: "exported" }.emit(),
            Ok(r) => {
                tracing::warn!(url = %self.url, status = r.status().as_u16(), spans = count, "OTLP export refused");
                SpansExported { count, outcome: "dropped_export_failed" }.emit();
            }
            Err(e) => {
                tracing::warn!(url = %self.url, error = %crate::error_chain(&e), spans = count, "OTLP export failed");
                SpansExported { count, outcome: "dropped_export_failed" }.emit();
            }
        }
    }
}

#[cfg(test)]
mod tests {
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
}
