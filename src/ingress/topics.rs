//! The HTTP gateway to topics: `POST /v1/topics/{topic}/records` (one record or
//! `{records: [...]}`), `GET /v1/topics` (producible topics and their schemas) and
//! `GET /v1/receipts/{id}` (delivery results of a `Prefer: respond-async` request).
//!
//! Invariants: only declared topics with `ingress_produce = true` are written (namespace
//! applied here); every record gets its own report line, in request order; the status is 200
//! only when every record was acknowledged by Kafka (acks=all), 207 when some were, 4xx/503
//! when none was. An `Idempotency-Key` answer is stored once and replayed byte for byte; a 503
//! (nothing written) is not stored, so the retry really runs. Per-user quotas (records/s,
//! bytes/s) refuse a whole request with 429, and pace an ndjson stream line by line (a line
//! that cannot be paced within `stream_quota_max_wait_ms` gets a `QUOTA_EXCEEDED` line).

use super::body::{any_json_object, only_keys};
use super::envelope::{ok, ok_with};
use super::{ApiError, Ctx, HttpResponse};
use crate::auth::ratelimit::{self, Charge, Refused};
use crate::catalog::{TopicDecl, ValueFormat};
use crate::gateway::{self, LatestSchema, RecordEncoder, SchemaError};
use crate::kafka::{Delivered, OutRecord, ProduceError};
use base64::Engine as _;
use bytes::Bytes;
use fred::prelude::*;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Map, Value as Json};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

/// How far ahead of the broker's clock a record's timestamp may be: Kafka 4 refuses more
/// (`message.timestamp.after.max.ms`, one hour by default).
const MAX_FUTURE_TIMESTAMP_MS: i64 = 3_600_000;
const RECORD_FIELDS: &[&str] = &["key", "value", "headers", "partition", "timestamp"];
const MAX_IDEMPOTENCY_KEY: usize = 255;

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

/// The `data` of a produce answer.
#[derive(serde::Serialize)]
struct Answer<'a> {
    topic: &'a str,
    written: usize,
    failed: usize,
    records: &'a [Line],
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

fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

fn raw_response(status: StatusCode, body: String) -> HttpResponse {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// The spec's error envelope with any status and code (403, 207 ...).
fn error_envelope(status: StatusCode, code: &str, message: &str, details: Json, request_id: &str) -> HttpResponse {
    let body = json!({"success": false, "error": code, "message": message, "details": details,
                      "timestamp": now(), "request_id": request_id});
    raw_response(status, body.to_string())
}

fn declared<'a>(ctx: &'a Ctx, topic: &str) -> Result<Result<&'a TopicDecl, HttpResponse>, ApiError> {
    let decl = ctx.deps.catalog.topics.get(topic).ok_or_else(|| ApiError::NotFound(format!("topic `{topic}`")))?;
    if !decl.ingress_produce {
        return Ok(Err(error_envelope(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            &format!("topic `{topic}` does not accept records over HTTP"),
            json!({"topic": topic}),
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
        &s.schema_registry.url,
        &subject,
        Duration::from_secs(s.gateway.schema_cache_secs),
        Duration::from_millis(s.schema_registry.timeout_ms),
    )
    .await
    .map(Some)
    .map_err(|e| schema_error(e, s.http.retry_after_secs))
}

/// One record ready for Kafka.
struct Prepared {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
    partition: Option<i32>,
    timestamp: Option<i64>,
}

/// The encoder of a topic's value schema (none for binary topics). A schema the registry
/// serves but that cannot be resolved is the registry's fault: 502.
fn encoder_for(schema: Option<&LatestSchema>) -> Result<Option<RecordEncoder<'_>>, ApiError> {
    schema.map(RecordEncoder::new).transpose().map_err(ApiError::Internal)
}

fn prepare(
    rec: &Json,
    decl: &TopicDecl,
    schema: Option<&RecordEncoder<'_>>,
    forwarded: &[(String, Vec<u8>)],
    max_record_bytes: usize,
) -> Result<Prepared, Line> {
    let bad = |m: String| Line::failed(VALIDATION, m);
    let map = rec.as_object().ok_or_else(|| bad("record: must be a JSON object".into()))?;
    if let Some(k) = map.keys().find(|k| !RECORD_FIELDS.contains(&k.as_str())) {
        return Err(bad(format!("{k}: unknown field; allowed: {}", RECORD_FIELDS.join(", "))));
    }
    let key = match map.get("key") {
        None | Some(Json::Null) => None,
        Some(Json::String(s)) => Some(s.clone().into_bytes()),
        Some(_) => return Err(bad("key: must be a string".into())),
    };
    let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
    match map.get("headers") {
        None | Some(Json::Null) => {}
        Some(Json::Object(h)) => {
            for (name, v) in h {
                let v = v.as_str().ok_or_else(|| bad(format!("headers.{name}: must be a string")))?;
                headers.push((name.clone(), v.as_bytes().to_vec()));
            }
        }
        Some(_) => return Err(bad("headers: must be an object of strings".into())),
    }
    headers.extend(forwarded.iter().cloned());
    let partition = match map.get("partition") {
        None | Some(Json::Null) => None,
        Some(p) => Some(
            p.as_i64()
                .filter(|p| (0..decl.partitions as i64).contains(p))
                .ok_or_else(|| bad(format!("partition: must be an integer from 0 to {}", decl.partitions - 1)))?
                as i32,
        ),
    };
    let timestamp = match map.get("timestamp") {
        None | Some(Json::Null) => None,
        Some(Json::Number(n)) => Some(n.as_i64().ok_or_else(|| bad("timestamp: must be epoch milliseconds".into()))?),
        Some(Json::String(s)) => Some(
            chrono::DateTime::parse_from_rfc3339(s)
                .map_err(|_| bad("timestamp: must be an RFC 3339 timestamp or epoch milliseconds".into()))?
                .timestamp_millis(),
        ),
        Some(_) => return Err(bad("timestamp: must be an RFC 3339 timestamp or epoch milliseconds".into())),
    };
    // The broker refuses a timestamp before the epoch or too far ahead, and with it every other
    // record of the same produce batch: refuse it here, for this record only.
    let latest = chrono::Utc::now().timestamp_millis() + MAX_FUTURE_TIMESTAMP_MS;
    if timestamp.is_some_and(|t| !(0..=latest).contains(&t)) {
        return Err(bad("timestamp: must be from 1970-01-01T00:00:00Z to one hour from now".into()));
    }
    let json_value = map.get("value").ok_or_else(|| bad("value: is required".into()))?;
    let value = match (decl.value_format(), schema) {
        (ValueFormat::Avro, Some(encoder)) => Some(encoder.encode(json_value).map_err(bad)?),
        (ValueFormat::Avro, None) => return Err(Line::failed(REJECTED, "topic has no value schema")),
        (ValueFormat::Binary, _) => match json_value {
            Json::Null => None,
            Json::String(s) => Some(
                base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map_err(|e| bad(format!("value: invalid base64: {e}")))?,
            ),
            _ => return Err(bad("value: must be a base64 string or null".into())),
        },
    };
    let size = key.as_ref().map_or(0, Vec::len)
        + value.as_ref().map_or(0, Vec::len)
        + headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
    if size > max_record_bytes {
        return Err(Line::failed(TOO_LARGE, format!("record is {size} bytes; the limit is {max_record_bytes}")));
    }
    Ok(Prepared { key, value, headers, partition, timestamp })
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

/// The Redis answer stored for an idempotency key.
fn idem_key(ctx: &Ctx, topic: &str, key: &str) -> String {
    format!("{}gateway:idem:{topic}:{key}", ctx.deps.cache.prefix())
}

fn receipt_key(ctx_prefix: &str, id: &str) -> String {
    format!("{ctx_prefix}gateway:receipt:{id}")
}

enum Idem {
    /// No key: nothing to store.
    None,
    /// Reserved: store the answer under this Redis key.
    Reserved { redis_key: String, hash: String },
}

/// A caller's produce quotas (records/s and bytes/s; 0 = off), shared by all ingress instances
/// through Redis in one-second windows. Charges are all or nothing: a refused request or line
/// costs nothing.
struct Quota {
    cache: crate::cache::Cache,
    user: String,
    records_per_sec: u64,
    bytes_per_sec: u64,
}

impl Quota {
    const WINDOW_MS: u64 = 1000;

    /// None for an anonymous caller or when both quotas are off.
    fn of(ctx: &Ctx) -> Option<Quota> {
        let g = &ctx.deps.settings.gateway;
        let user = ctx.principal.as_ref()?.id.clone();
        (g.quota_records_per_sec > 0 || g.quota_bytes_per_sec > 0).then(|| Quota {
            cache: ctx.deps.cache.clone(),
            user,
            records_per_sec: g.quota_records_per_sec,
            bytes_per_sec: g.quota_bytes_per_sec,
        })
    }

    /// Charges `records` and `bytes` to the current window (`commit`), or only looks whether
    /// they would fit; a refusal names its unit (`records` or `bytes`).
    async fn take(
        &self,
        records: u64,
        bytes: u64,
        commit: bool,
    ) -> Result<Result<(), (&'static str, Refused)>, crate::cache::CacheError> {
        let (units, charges): (Vec<&'static str>, Vec<Charge>) =
            [("records", records, self.records_per_sec), ("bytes", bytes, self.bytes_per_sec)]
                .into_iter()
                .filter(|(_, _, limit)| *limit > 0)
                .map(|(unit, amount, limit)| {
                    (unit, Charge { bucket: format!("quota:{unit}:{}", self.user), amount, limit })
                })
                .unzip();
        Ok(ratelimit::take(&self.cache, &charges, Self::WINDOW_MS, commit).await?.map_err(|r| (units[r.index], r)))
    }
}

/// A non-streaming request is charged whole before anything is produced; over a quota it is
/// refused with 429 and Retry-After.
async fn check_quota(ctx: &Ctx, records: usize, bytes: usize) -> Result<(), ApiError> {
    let Some(quota) = Quota::of(ctx) else { return Ok(()) };
    match quota.take(records as u64, bytes as u64, true).await? {
        Ok(()) => Ok(()),
        Err((unit, r)) => Err(ApiError::QuotaExceeded { unit, decision: r.decision() }),
    }
}

pub async fn produce(ctx: &Ctx, topic: &str, req: Request<Incoming>) -> Result<HttpResponse, ApiError> {
    let decl = match declared(ctx, topic)? {
        Ok(d) => d,
        Err(forbidden) => return Ok(forbidden),
    };
    let s = &ctx.deps.settings;
    let idem_header = header(&req, "idempotency-key");
    if let Some(k) = &idem_header {
        if k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY || !k.chars().all(|c| c.is_ascii_graphic()) {
            return Err(ApiError::validation(
                "Idempotency-Key",
                format!("must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"),
            ));
        }
    }
    let is_async = wants_async(&req);
    let mut forwarded = vec![("request_id".to_string(), ctx.request_id.clone().into_bytes())];
    for h in ["traceparent", "tracestate"] {
        if let Some(v) = header(&req, h).filter(|v| !v.is_empty()) {
            forwarded.push((h.to_string(), v.into_bytes()));
        }
    }
    let (mut body, body_bytes) = any_json_object(req, s.gateway.max_body_bytes).await?;
    // The idempotency hash covers the whole body (and the respond-async preference).
    let body_hash = idem_header.as_ref().map(|_| {
        let canonical = serde_json::to_vec(&body).expect("a JSON map serializes");
        format!("{}:{}", if is_async { "async" } else { "sync" }, hex(&Sha256::digest(&canonical)))
    });
    let records: Vec<Json> = if body.contains_key("records") {
        only_keys(&body, &["records"])?;
        match body.remove("records") {
            Some(Json::Array(a)) => a,
            _ => return Err(ApiError::validation("records", "must be an array of records")),
        }
    } else {
        vec![Json::Object(body)]
    };
    if records.is_empty() {
        return Err(ApiError::validation("records", "must hold at least one record"));
    }
    let max = s.gateway.max_records_per_request;
    if records.len() > max {
        return Ok(error_envelope(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            &format!("{} records in one request; the limit is {max}", records.len()),
            json!({"max_records_per_request": max, "records": records.len()}),
            &ctx.request_id,
        ));
    }

    // The bytes charged are the request body's (what the caller sent).
    check_quota(ctx, records.len(), body_bytes).await?;

    // Idempotency: replay a stored answer, refuse a reused key with another body, or reserve.
    let mut idem = Idem::None;
    if let (Some(k), Some(hash)) = (&idem_header, body_hash) {
        let redis_key = idem_key(ctx, topic, k);
        let pool = ctx.deps.cache.pool();
        let pending = json!({"hash": hash, "state": "pending"}).to_string();
        let reserve_secs = (s.http.request_timeout_ms / 1000 + 5) as i64;
        let set: Option<String> = pool
            .set(&redis_key, pending, Some(Expiration::EX(reserve_secs)), Some(SetOptions::NX), false)
            .await
            .map_err(|e| ApiError::Unavailable {
                service: "redis",
                reason: e.to_string(),
                retry_after: s.http.retry_after_secs,
            })?;
        if set.is_none() {
            let stored: Option<String> = pool.get(&redis_key).await.map_err(|e| ApiError::Unavailable {
                service: "redis",
                reason: e.to_string(),
                retry_after: s.http.retry_after_secs,
            })?;
            let stored: Json = stored.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or(Json::Null);
            if stored["hash"].as_str() != Some(hash.as_str()) {
                return Err(ApiError::validation(
                    "Idempotency-Key",
                    "was already used with a different request body (or respond-async preference)",
                ));
            }
            if stored["state"] == "pending" {
                return Err(ApiError::Conflict("a request with this Idempotency-Key is still in progress".into()));
            }
            let status = stored["status"].as_u64().and_then(|c| StatusCode::from_u16(c as u16).ok());
            let body = stored["body"].as_str();
            return match (status, body) {
                (Some(status), Some(body)) => {
                    let mut r = raw_response(status, body.to_string());
                    r.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
                    Ok(r)
                }
                _ => Err(ApiError::Internal(format!("unreadable idempotency record {redis_key}"))),
            };
        }
        idem = Idem::Reserved { redis_key, hash };
    }

    let result = run(ctx, decl, &records, &forwarded, is_async).await;
    let ttl = s.gateway.idempotency_ttl_secs as i64;
    if let Idem::Reserved { redis_key, hash } = idem {
        let pool = ctx.deps.cache.pool();
        match &result {
            // Nothing was written: let the retry run for real.
            Ok(r) if r.status() != StatusCode::SERVICE_UNAVAILABLE => {
                let body =
                    http_body_util::BodyExt::collect(r.body().clone()).await.map(|c| c.to_bytes()).unwrap_or_default();
                let stored = json!({"hash": hash, "state": "done", "status": r.status().as_u16(),
                                    "body": String::from_utf8_lossy(&body)});
                let _: Result<(), _> =
                    pool.set(&redis_key, stored.to_string(), Some(Expiration::EX(ttl)), None, false).await;
            }
            _ => {
                let _: Result<i64, _> = pool.del(&redis_key).await;
            }
        }
    }
    result
}

/// Validates, encodes and produces the records; the answer (sync) or the receipt (async).
async fn run(
    ctx: &Ctx,
    decl: &TopicDecl,
    records: &[Json],
    forwarded: &[(String, Vec<u8>)],
    is_async: bool,
) -> Result<HttpResponse, ApiError> {
    let schema = value_schema(ctx, decl).await?;
    let encoder = encoder_for(schema.as_deref())?;
    let kafka_topic = ctx.deps.catalog.topic_name(&decl.name);
    let mut lines: Vec<Option<Line>> = vec![None; records.len()];
    let mut pending = Vec::new();
    for (i, rec) in records.iter().enumerate() {
        match enqueue_record(&ctx.deps, &kafka_topic, decl, encoder.as_ref(), forwarded, rec) {
            Ok(fut) => pending.push((i, fut)),
            Err(line) => lines[i] = Some(line),
        }
    }
    if is_async && !pending.is_empty() {
        return Ok(receipt(ctx, decl, lines, pending).await);
    }
    let (idx, futs): (Vec<usize>, Vec<_>) = pending.into_iter().unzip();
    for (i, r) in idx.into_iter().zip(futures::future::join_all(futs).await) {
        lines[i] = Some(delivered(r));
    }
    let lines: Vec<Line> = lines.into_iter().map(|l| l.expect("every record has a line")).collect();
    Ok(answer(ctx, &decl.name, &lines))
}

/// One record of a batch or a stream: validated, encoded and queued in the producer (its
/// delivery still to come), or the line saying why it was not.
fn enqueue_record(
    deps: &crate::app::Deps,
    kafka_topic: &str,
    decl: &TopicDecl,
    schema: Option<&RecordEncoder<'_>>,
    forwarded: &[(String, Vec<u8>)],
    rec: &Json,
) -> Result<crate::kafka::Pending, Line> {
    let p = prepare(rec, decl, schema, forwarded, deps.settings.gateway.max_record_bytes)?;
    let out = OutRecord {
        topic: kafka_topic,
        key: p.key.as_deref(),
        value: p.value.as_deref(),
        headers: p.headers.iter().map(|(k, v)| (k.as_str(), v.clone())).collect(),
        partition: p.partition,
    };
    deps.producer.enqueue(out, p.timestamp).map_err(produce_failure)
}

/// The line of a record's delivery report.
fn delivered(r: Result<Delivered, ProduceError>) -> Line {
    r.map_or_else(produce_failure, Line::Written)
}

fn produce_failure(e: ProduceError) -> Line {
    match e {
        ProduceError::Unavailable(k) => Line::failed(UNAVAILABLE, format!("kafka unavailable: {k}")),
        ProduceError::Rejected(k) => Line::failed(REJECTED, format!("kafka refused the record: {k}")),
    }
}

fn answer(ctx: &Ctx, topic: &str, lines: &[Line]) -> HttpResponse {
    let written = lines.iter().filter(|l| matches!(l, Line::Written(_))).count();
    let data = Answer { topic, written, failed: lines.len() - written, records: lines };
    match overall(lines) {
        (status, None) => ok_with(status, &data, &format!("{written} records written"), &ctx.request_id),
        (status, Some(code)) => {
            let message = format!("{written} of {} records written", lines.len());
            let data = serde_json::to_value(&data).expect("an answer serializes");
            let mut r = error_envelope(status, code, &message, data, &ctx.request_id);
            if status == StatusCode::SERVICE_UNAVAILABLE {
                r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(ctx.deps.settings.http.retry_after_secs));
            }
            r
        }
    }
}

fn receipt_json(topic: &str, lines: &[Option<Line>]) -> Json {
    let done = lines.iter().all(Option::is_some);
    let records: Vec<Json> =
        lines.iter().map(|l| l.as_ref().map_or(json!({"state": "pending"}), Line::to_json)).collect();
    let mut out = json!({"topic": topic, "state": if done { "complete" } else { "pending" }, "records": records});
    if done {
        let lines: Vec<Line> = lines.iter().flatten().cloned().collect();
        let (status, code) = overall(&lines);
        out["status"] = json!(status.as_u16());
        out["error"] = json!(code);
        out["written"] = json!(lines.iter().filter(|l| matches!(l, Line::Written(_))).count());
    }
    out
}

/// Answers 202 with a receipt; a spawned task records the delivery reports in Redis.
async fn receipt(
    ctx: &Ctx,
    decl: &TopicDecl,
    mut lines: Vec<Option<Line>>,
    pending: Vec<(usize, crate::kafka::Pending)>,
) -> HttpResponse {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let key = receipt_key(ctx.deps.cache.prefix(), &id);
    let ttl = ctx.deps.settings.gateway.receipt_ttl_secs as i64;
    let pool = ctx.deps.cache.pool().clone();
    let topic = decl.name.clone();
    let queued = pending.len();
    let first = receipt_json(&topic, &lines).to_string();
    let stored: Result<(), _> = pool.set(&key, first, Some(Expiration::EX(ttl)), None, false).await;
    if let Err(e) = stored {
        tracing::warn!(error = %e, receipt = %id, "could not store the receipt; results will still be recorded");
    }
    let task_key = key.clone();
    let task_topic = topic.clone();
    tokio::spawn(async move {
        let (idx, futs): (Vec<usize>, Vec<_>) = pending.into_iter().unzip();
        for (i, r) in idx.into_iter().zip(futures::future::join_all(futs).await) {
            lines[i] = Some(delivered(r));
        }
        let done = receipt_json(&task_topic, &lines).to_string();
        let r: Result<(), _> = pool.set(&task_key, done, Some(Expiration::EX(ttl)), None, false).await;
        if let Err(e) = r {
            tracing::error!(error = %e, key = %task_key, "could not store delivery results of a receipt");
        }
    });
    let location = format!("/v1/receipts/{id}");
    let mut r = ok(
        StatusCode::ACCEPTED,
        json!({"receipt_id": id, "topic": topic, "queued": queued, "location": location}),
        "Records queued",
        &ctx.request_id,
    );
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(hyper::header::LOCATION, v);
    }
    r
}

pub async fn get_receipt(ctx: &Ctx, id: &str) -> Result<HttpResponse, ApiError> {
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(ApiError::validation("receipt_id", "must be a receipt id"));
    }
    let stored: Option<String> = ctx
        .deps
        .cache
        .pool()
        .get(receipt_key(ctx.deps.cache.prefix(), id))
        .await
        .map_err(|e| ApiError::Unavailable { service: "redis", reason: e.to_string(), retry_after: 5 })?;
    let data: Json = stored
        .and_then(|t| serde_json::from_str(&t).ok())
        .ok_or_else(|| ApiError::NotFound(format!("receipt {id}")))?;
    Ok(ok(StatusCode::OK, data, "Receipt", &ctx.request_id))
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

/// The body of a streaming answer.
pub type StreamResponse = Response<http_body_util::combinators::UnsyncBoxBody<Bytes, std::convert::Infallible>>;

/// Whether a request is a streaming produce (`POST /v1/topics/{topic}/records` with
/// `Content-Type: application/x-ndjson`); returns the declared topic.
pub fn ndjson_produce_topic(req: &Request<Incoming>) -> Option<String> {
    if req.method() != hyper::Method::POST {
        return None;
    }
    let mime = req.headers().get(CONTENT_TYPE)?.to_str().ok()?.split(';').next()?.trim().to_ascii_lowercase();
    if mime != "application/x-ndjson" {
        return None;
    }
    match req.uri().path().trim_end_matches('/').split('/').skip(1).collect::<Vec<_>>().as_slice() {
        ["v1", "topics", topic, "records"] => Some(super::router::percent_decode(topic)),
        _ => None,
    }
}

type LineFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Line> + Send>>;
type FrameSender = futures::channel::mpsc::Sender<Result<hyper::body::Frame<Bytes>, std::convert::Infallible>>;

/// Streaming produce: one JSON record per request line; one report line per record, in
/// order, each sent as soon as that record is acknowledged, then a final
/// `{"done": true, "records", "written", "failed"}` line (with `error_code` and `message` when
/// the stream was cut short). The 200 only means the stream was accepted: the outcome is in
/// the lines. Idempotency-Key and respond-async do not apply (422).
///
/// Quotas: a caller with no room left in the current window is refused with 429 before the
/// stream starts; then each line is charged as it is taken (see [`stream_task`]).
pub async fn produce_stream(ctx: Ctx, topic: &str, req: Request<Incoming>) -> StreamResponse {
    use http_body_util::BodyExt;
    let boxed = |r: HttpResponse| r.map(|b| b.boxed_unsync());
    let decl = match declared(&ctx, topic) {
        Ok(Ok(d)) => d.clone(),
        Ok(Err(forbidden)) => return boxed(forbidden),
        Err(e) => return boxed(e.into_response(&ctx.request_id)),
    };
    if req.headers().contains_key("idempotency-key") || wants_async(&req) {
        let e = ApiError::validation(
            "Content-Type",
            "application/x-ndjson streams take neither Idempotency-Key nor Prefer: respond-async",
        );
        return boxed(e.into_response(&ctx.request_id));
    }
    let quota = Quota::of(&ctx);
    if let Some(q) = &quota {
        // Room for at least one small record now? (A look: nothing is charged.)
        let refusal = match q.take(1, 1, false).await {
            Ok(Ok(())) => None,
            Ok(Err((unit, r))) => Some(ApiError::QuotaExceeded { unit, decision: r.decision() }),
            Err(e) => Some(ApiError::from(e)),
        };
        if let Some(e) = refusal {
            return boxed(e.into_response(&ctx.request_id));
        }
    }
    let schema = match value_schema(&ctx, &decl).await {
        Ok(s) => s,
        Err(e) => return boxed(e.into_response(&ctx.request_id)),
    };
    let mut forwarded = vec![("request_id".to_string(), ctx.request_id.clone().into_bytes())];
    for h in ["traceparent", "tracestate"] {
        if let Some(v) = header(&req, h).filter(|v| !v.is_empty()) {
            forwarded.push((h.to_string(), v.into_bytes()));
        }
    }
    let (tx, rx) = futures::channel::mpsc::channel(64);
    let stream = Stream { deps: ctx.deps.clone(), decl, schema, forwarded, quota };
    tokio::spawn(stream_task(stream, req.into_body(), tx));
    let mut r = Response::new(http_body_util::StreamBody::new(rx).boxed_unsync());
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    r
}

/// What every line of one stream is produced with.
struct Stream {
    deps: Arc<crate::app::Deps>,
    decl: TopicDecl,
    schema: Option<Arc<LatestSchema>>,
    forwarded: Vec<(String, Vec<u8>)>,
    quota: Option<Quota>,
}

/// What the quota says of a stream's next line.
enum Admission {
    /// Charged: produce it.
    Go,
    /// No room in this window: try again after this long.
    Wait(Duration),
    /// Not produced: this is its line.
    Refuse(Line),
}

impl Stream {
    /// Charges one line (one record, its bytes) to the quota. A line waits at most
    /// `stream_quota_max_wait_ms` in all (`waited` so far); one that would wait longer, or can
    /// never fit in a window, gets a `QUOTA_EXCEEDED` line instead.
    async fn admit(&self, line: &[u8], waited: Duration) -> Admission {
        let Some(quota) = &self.quota else { return Admission::Go };
        let max_wait = Duration::from_millis(self.deps.settings.gateway.stream_quota_max_wait_ms);
        match quota.take(1, line.len() as u64, true).await {
            Ok(Ok(())) => Admission::Go,
            Ok(Err((unit, r))) if r.never_fits() => Admission::Refuse(Line::failed(
                QUOTA,
                format!("the record is {} {unit}; the quota allows {} {unit}/s", r.amount, r.limit),
            )),
            Ok(Err((unit, r))) => {
                let wait = Duration::from_millis(r.wait_ms);
                if waited + wait <= max_wait {
                    return Admission::Wait(wait);
                }
                Admission::Refuse(Line::Failed {
                    code: QUOTA,
                    message: format!(
                        "produce quota of {} {unit}/s exceeded; waited {} ms, the limit is {} ms",
                        r.limit,
                        waited.as_millis(),
                        max_wait.as_millis()
                    ),
                    retry_after_ms: Some(r.wait_ms),
                })
            }
            Err(e) => Admission::Refuse(Line::failed(UNAVAILABLE, format!("quota not checked: {e}"))),
        }
    }

    /// The report of one admitted line: its record produced, or why not.
    fn produce(&self, kafka_topic: &str, line: &[u8]) -> LineFuture {
        let rec = match serde_json::from_slice::<Json>(line) {
            Ok(rec) => rec,
            Err(e) => return Box::pin(futures::future::ready(Line::failed("MALFORMED_JSON", e.to_string()))),
        };
        // A stream's lines arrive one by one: each is encoded on its own.
        let encoder = match encoder_for(self.schema.as_deref()) {
            Ok(e) => e,
            Err(e) => return Box::pin(futures::future::ready(Line::failed(REJECTED, e.to_string()))),
        };
        match enqueue_record(&self.deps, kafka_topic, &self.decl, encoder.as_ref(), &self.forwarded, &rec) {
            Ok(f) => Box::pin(async move { delivered(f.await) }),
            Err(l) => Box::pin(futures::future::ready(l)),
        }
    }
}

/// Reads the body line by line and streams the reports. Lines are taken in order: the head line
/// waits while its quota window is full, and meanwhile the body is not read (TCP backpressure
/// slows the client) while reports of earlier lines keep flowing. Every counted line gets
/// exactly one report line.
async fn stream_task(st: Stream, mut body: Incoming, mut tx: FrameSender) {
    use futures::{SinkExt, StreamExt};
    use http_body_util::BodyExt;
    let g = &st.deps.settings.gateway;
    let kafka_topic = st.deps.catalog.topic_name(&st.decl.name);
    let mut inflight: futures::stream::FuturesOrdered<LineFuture> = Default::default();
    // Complete lines read from the body and counted, not yet admitted.
    let mut queued: std::collections::VecDeque<Vec<u8>> = Default::default();
    // While `paused`, the head line waits for `pause` (it has waited `waited` so far).
    let pause = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(pause);
    let (mut paused, mut waited) = (false, Duration::ZERO);
    let (mut buf, mut total, mut count, mut written, mut failed) = (Vec::<u8>::new(), 0usize, 0usize, 0usize, 0usize);
    let mut reading = true;
    let mut abort: Option<(&'static str, String)> = None;
    // Queues a line of the body (blank lines are skipped); false past the record limit.
    let mut take_line = |line: Vec<u8>, queued: &mut std::collections::VecDeque<Vec<u8>>| -> bool {
        if line.iter().all(u8::is_ascii_whitespace) {
            return true;
        }
        count += 1;
        if count > g.max_records_per_request {
            return false;
        }
        queued.push_back(line.trim_ascii_end().to_vec());
        true
    };
    loop {
        while !paused {
            let Some(line) = queued.front() else { break };
            let report = match st.admit(line, waited).await {
                Admission::Wait(wait) => {
                    waited += wait;
                    pause.as_mut().reset(tokio::time::Instant::now() + wait);
                    paused = true;
                    break;
                }
                Admission::Go => st.produce(&kafka_topic, line),
                Admission::Refuse(l) => Box::pin(futures::future::ready(l)) as LineFuture,
            };
            inflight.push_back(report);
            queued.pop_front();
            waited = Duration::ZERO;
        }
        tokio::select! {
            biased;
            Some(line) = inflight.next(), if !inflight.is_empty() => {
                match &line {
                    Line::Written(_) => written += 1,
                    Line::Failed { .. } => failed += 1,
                }
                let text = format!("{}\n", line.to_json());
                if tx.send(Ok(hyper::body::Frame::data(Bytes::from(text)))).await.is_err() {
                    return; // the client went away
                }
            }
            () = &mut pause, if paused => paused = false,
            frame = body.frame(), if reading && queued.is_empty() && inflight.len() < 1024 => {
                match frame {
                    None => {
                        reading = false;
                        if !take_line(std::mem::take(&mut buf), &mut queued) {
                            abort = Some(("PAYLOAD_TOO_LARGE", format!("more than {} records", g.max_records_per_request)));
                        }
                    }
                    Some(Err(e)) => {
                        reading = false;
                        abort = Some(("MALFORMED_REQUEST", format!("could not read the body: {e}")));
                    }
                    Some(Ok(f)) => {
                        let Ok(data) = f.into_data() else { continue };
                        total += data.len();
                        if total > g.max_body_bytes {
                            reading = false;
                            abort = Some(("PAYLOAD_TOO_LARGE", format!("request body exceeds {} bytes", g.max_body_bytes)));
                            continue;
                        }
                        buf.extend_from_slice(&data);
                        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                            let line: Vec<u8> = buf.drain(..=pos).collect();
                            if !take_line(line, &mut queued) {
                                reading = false;
                                abort = Some(("PAYLOAD_TOO_LARGE", format!("more than {} records", g.max_records_per_request)));
                                break;
                            }
                        }
                    }
                }
            }
            else => break,
        }
    }
    let mut done = json!({"done": true, "records": written + failed, "written": written, "failed": failed});
    if let Some((code, message)) = abort {
        done["error_code"] = json!(code);
        done["message"] = json!(message);
    }
    let _ = tx.send(Ok(hyper::body::Frame::data(Bytes::from(format!("{done}\n"))))).await;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
