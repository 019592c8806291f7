//! The HTTP gateway to topics: `POST /v1/topics/{topic}/records` (one record or
//! `{records: [...]}`, [`batch`]; an `application/x-ndjson` stream, [`stream`]),
//! `GET /v1/topics` (producible topics and their schemas) and `GET /v1/receipts/{id}`
//! (delivery results of a `Prefer: respond-async` request, [`receipts`]). This module holds what
//! every form shares: the topic check, one record's validation and encoding, and report lines.
//!
//! Invariants: only declared topics with `ingress_produce = true` are written (namespace
//! applied here); every record gets its own report line, in request order; the status is 200
//! only when every record was acknowledged by Kafka (acks=all), 207 when some were, 4xx/503
//! when none was. An `Idempotency-Key` answer is stored once and replayed byte for byte; a 503
//! (nothing written) is not stored, so the retry really runs. Per-user quotas (records/s,
//! bytes/s, [`quota`]) refuse a whole request with 429, and pace an ndjson stream line by line
//! (a line that cannot be paced within `stream_quota_max_wait_ms` gets a `QUOTA_EXCEEDED` line).

mod batch;
mod quota;
mod receipts;
mod record;
mod stream;

pub use batch::produce;
pub use receipts::get_receipt;
pub use stream::{ndjson_produce_topic, produce_stream, StreamResponse};

use super::envelope::{error_with, ok};
use super::{ApiError, Ctx, HttpResponse};
use crate::catalog::{TopicDecl, ValueFormat};
use crate::gateway::{self, LatestSchema, SchemaError};
use crate::kafka::{Delivered, OutRecord, ProduceError};
use crate::otlp::{Span, SpanKind};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::{json, Map, Value as Json};
use std::sync::Arc;
use std::time::Duration;

/// The outcome of one record.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    Written(Delivered),
    /// Not written; `retry_after_ms` when the same record may be sent again after that long
    /// (a stream's `QUOTA_EXCEEDED` line).
    Failed {
        code: &'static str,
        message: String,
        retry_after_ms: Option<u64>,
    },
}

impl Line {
    fn failed(code: &'static str, message: impl Into<String>) -> Line {
        Line::Failed { code, message: message.into(), retry_after_ms: None }
    }
    fn to_json(&self) -> Json {
        serde_json::to_value(self).expect("a line serializes")
    }
}

/// A line as its answer shows it: `{partition, offset, timestamp}` or `{error_code, message}`
/// (and `retry_after_ms` when set).
impl serde::Serialize for Line {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            Line::Written(d) => {
                let mut m = s.serialize_map(Some(3))?;
                m.serialize_entry("partition", &d.partition)?;
                m.serialize_entry("offset", &d.offset)?;
                m.serialize_entry("timestamp", &d.timestamp)?;
                m.end()
            }
            Line::Failed { code, message, retry_after_ms } => {
                let mut m = s.serialize_map(None)?;
                m.serialize_entry("error_code", code)?;
                m.serialize_entry("message", message)?;
                if let Some(ms) = retry_after_ms {
                    m.serialize_entry("retry_after_ms", ms)?;
                }
                m.end()
            }
        }
    }
}

const VALIDATION: &str = "VALIDATION_ERROR";

const TOO_LARGE: &str = "RECORD_TOO_LARGE";

const UNAVAILABLE: &str = "SERVICE_UNAVAILABLE";

const REJECTED: &str = "RECORD_REJECTED";

const QUOTA: &str = "QUOTA_EXCEEDED";

/// The status and error code of a whole answer from its lines.
pub fn overall(lines: &[Line]) -> (StatusCode, Option<&'static str>) {
    let failed: Vec<&'static str> = lines
        .iter()
        .filter_map(|l| match l {
            Line::Failed { code, .. } => Some(*code),
            Line::Written(_) => None,
        })
        .collect();
    if failed.is_empty() {
        (StatusCode::OK, None)
    } else if failed.len() < lines.len() {
        (StatusCode::MULTI_STATUS, Some("PARTIAL_FAILURE"))
    } else if failed.contains(&UNAVAILABLE) {
        (StatusCode::SERVICE_UNAVAILABLE, Some(UNAVAILABLE))
    } else if failed.iter().all(|c| *c == TOO_LARGE) {
        (StatusCode::PAYLOAD_TOO_LARGE, Some("PAYLOAD_TOO_LARGE"))
    } else {
        (StatusCode::UNPROCESSABLE_ENTITY, Some(VALIDATION))
    }
}

fn declared<'a>(ctx: &'a Ctx, topic: &str) -> Result<Result<&'a TopicDecl, HttpResponse>, ApiError> {
    let decl = ctx.deps.catalog.topics.get(topic).ok_or_else(|| ApiError::NotFound(format!("topic `{topic}`")))?;
    if !decl.ingress_produce {
        return Ok(Err(error_with(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            &format!("topic `{topic}` does not accept records over HTTP"),
            &json!({"topic": topic}),
            &ctx.request_id,
        )));
    }
    Ok(Ok(decl))
}

fn schema_error(e: SchemaError, retry_after: u64) -> ApiError {
    match e {
        SchemaError::Unavailable(reason) => ApiError::Unavailable { service: "schema_registry", reason, retry_after },
        other => ApiError::Internal(other.to_string()),
    }
}

async fn value_schema(ctx: &Ctx, decl: &TopicDecl) -> Result<Option<Arc<LatestSchema>>, ApiError> {
    if decl.value_format() != ValueFormat::Avro {
        return Ok(None);
    }
    let s = &ctx.deps.settings;
    let subject = ctx.deps.catalog.value_subject(&decl.name);
    gateway::latest_schema(
        &ctx.deps.registry_http,
        &s.schema_registry.url,
        &subject,
        Duration::from_secs(s.gateway.schema_cache_secs),
        Duration::from_millis(s.schema_registry.timeout_ms),
    )
    .await
    .map(Some)
    .map_err(|e| schema_error(e, s.http.retry_after_secs))
}

/// The PRODUCER span of one produce request (or stream) and the headers each of its records
/// carries: the request id, the span's `traceparent` (with export off, the caller's unchanged)
/// and the caller's `tracestate`, so a consumer's span hangs under this produce.
fn producer_span(ctx: &Ctx, req: &Request<Incoming>, decl: &TopicDecl) -> (Span, Vec<(String, Vec<u8>)>) {
    let topic = ctx.deps.catalog.topic_name(&decl.name);
    let mut span = ctx.trace.start(format!("send {topic}"), SpanKind::Producer);
    span.set("messaging.system", "kafka");
    span.set("messaging.operation.type", "send");
    span.set("messaging.destination.name", topic);
    let mut forwarded = vec![("request_id".to_string(), ctx.request_id.clone().into_bytes())];
    if let Some(p) = &ctx.principal {
        forwarded.push((crate::domain::SUBMITTED_BY_HEADER.to_string(), p.id.clone().into_bytes()));
    }
    if let Some(t) = span.traceparent() {
        forwarded.push(("traceparent".to_string(), t.into_bytes()));
    }
    if let Some(v) = header(req, "tracestate").filter(|v| !v.is_empty()) {
        forwarded.push(("tracestate".to_string(), v.into_bytes()));
    }
    (span, forwarded)
}

/// Ends a produce span with how many records went out and how many failed.
fn end_producer_span(mut span: Span, written: usize, failed: usize) {
    span.set("messaging.batch.message_count", (written + failed) as i64);
    if failed > 0 {
        span.error(format!("{failed} of {} records not written", written + failed));
    }
    span.end();
}

fn header(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.headers().get(name).and_then(|v| v.to_str().ok()).map(|s| s.trim().to_string())
}

fn wants_async(req: &Request<Incoming>) -> bool {
    req.headers()
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("respond-async"))
}

/// One record of a batch or a stream, already read: validated, encoded and queued in the
/// producer (its delivery still to come), or the line saying why it was not.
fn enqueue_record(
    deps: &crate::app::Deps,
    kafka_topic: &str,
    decl: &TopicDecl,
    schema: Option<&LatestSchema>,
    forwarded: &[(String, Vec<u8>)],
    rec: &record::RecordIn<'_>,
) -> Result<crate::kafka::Pending, Line> {
    let p = record::prepare(rec, decl, schema, forwarded, deps.settings.gateway.max_record_bytes)?;
    let out = OutRecord {
        topic: kafka_topic,
        key: p.key.as_deref(),
        value: p.value.as_deref(),
        headers: p.headers.iter().chain(forwarded).map(|(k, v)| (k.as_str(), v.as_slice().into())).collect(),
        partition: p.partition,
    };
    deps.producer.enqueue(&out, p.timestamp).map_err(produce_failure)
}

/// The line of a record's delivery report.
fn delivered(r: Result<Delivered, ProduceError>) -> Line {
    r.map_or_else(produce_failure, Line::Written)
}

/// Waits for the delivery reports of the queued records (`(line index, delivery)`) and fills
/// in their lines. They are awaited in turn: librdkafka reports a produce request's records
/// together, so most are in when their turn comes, and only the one awaited holds a waker
/// (joining them all would register, and wake, one per record).
async fn settle(lines: &mut [Option<Line>], pending: Vec<(usize, crate::kafka::Pending)>) {
    for (i, p) in pending {
        lines[i] = Some(delivered(p.await));
    }
}

fn produce_failure(e: ProduceError) -> Line {
    match e {
        e if e.too_large() => Line::failed(TOO_LARGE, format!("the record exceeds Kafka's limit ({e})")),
        ProduceError::Unavailable(k) => Line::failed(UNAVAILABLE, format!("kafka unavailable: {k}")),
        ProduceError::Rejected(k) => Line::failed(REJECTED, format!("kafka refused the record: {k}")),
    }
}

pub async fn list(ctx: &Ctx) -> Result<HttpResponse, ApiError> {
    let mut items = Vec::new();
    for decl in ctx.deps.catalog.topics.values().filter(|d| d.ingress_produce) {
        let schema = value_schema(ctx, decl).await?.map(|s| {
            json!({"subject": s.subject, "id": s.id, "version": s.version, "schema": s.text,
                   "name": decl.value_schema})
        });
        let mut item = Map::new();
        item.insert("name".into(), json!(decl.name));
        item.insert("partitions".into(), json!(decl.partitions));
        item.insert("value_format".into(), json!(format!("{:?}", decl.value_format()).to_ascii_lowercase()));
        item.insert("value_schema".into(), schema.unwrap_or(Json::Null));
        item.insert("records_url".into(), json!(format!("/v1/topics/{}/records", decl.name)));
        items.push(Json::Object(item));
    }
    Ok(ok(StatusCode::OK, json!({"items": items}), "Producible topics", &ctx.request_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w() -> Line {
        Line::Written(Delivered { partition: 0, offset: 1, timestamp: Some(2) })
    }

    #[test]
    fn status_is_never_200_with_a_failure() {
        let v = || Line::failed(VALIDATION, "x");
        assert_eq!(overall(&[w(), w()]), (StatusCode::OK, None));
        assert_eq!(overall(&[w(), v()]).0, StatusCode::MULTI_STATUS);
        assert_eq!(overall(&[v(), v()]).0, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(overall(&[Line::failed(TOO_LARGE, "x")]).0, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(overall(&[v(), Line::failed(UNAVAILABLE, "x")]).0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(overall(&[Line::failed(REJECTED, "x")]).0, StatusCode::UNPROCESSABLE_ENTITY);
    }
}
