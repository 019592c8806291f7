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

mod export;
#[cfg(test)]
mod tests;

pub use export::encode_request;
use export::{parse_headers, resource, Exporter};

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
