//! `POST /v1/topics/{topic}/records` with a JSON body: one record or `{records: [...]}`,
//! produced together and answered once every record has its report (or at once with a receipt,
//! `Prefer: respond-async`).
//!
//! Invariants: a request is charged to the caller's quotas whole, before anything is produced
//! (a replayed answer is not charged: it writes nothing); an `Idempotency-Key` is the caller's
//! own, reserves its key before producing and stores the answer once (a 503 or 429, with nothing
//! written, is not stored, so the retry runs); a key reused with another body is refused.

use super::quota::check_quota;
use super::receipts::receipt;
use super::record::{read_body, RecordIn};
use super::{
    declared, end_producer_span, enqueue_record, header, overall, producer_span, redis_down, settle, value_schema,
    wants_async, Line,
};
use crate::catalog::TopicDecl;
use crate::ingress::body::{body_error, json_body, only_names};
use crate::ingress::envelope::{error_with, ok_with, raw_json};
use crate::ingress::{ApiError, Ctx, HttpResponse};
use crate::otlp::Span;
use fred::prelude::*;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, RETRY_AFTER};
use hyper::{Request, StatusCode};
use serde_json::{json, Value as Json};
use sha2::{Digest, Sha256};

const MAX_IDEMPOTENCY_KEY: usize = 255;

/// The `data` of a produce answer.
#[derive(serde::Serialize)]
struct Answer<'a> {
    topic: &'a str,
    written: usize,
    failed: usize,
    records: &'a [Line],
}

/// The Redis answer stored for an idempotency key: the key is the caller's own (another
/// caller's same key is another request).
fn idem_key(ctx: &Ctx, topic: &str, key: &str) -> String {
    let caller = ctx.principal.as_ref().map_or("-", |p| p.id.as_str());
    format!("{}gateway:idem:{caller}:{topic}:{key}", ctx.deps.cache.prefix())
}

enum Idem {
    /// No key: nothing to store.
    None,
    /// Reserved: store the answer under this Redis key.
    Reserved { redis_key: String, hash: String },
}

impl Idem {
    /// Frees a reserved key when nothing was written, so that the request's retry runs.
    async fn release(&self, ctx: &Ctx) {
        if let Idem::Reserved { redis_key, .. } = self {
            let _: Result<i64, _> = ctx.deps.cache.pool().del(redis_key).await;
        }
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
    let (span, forwarded) = producer_span(ctx, &req, decl);
    let body = json_body(req, s.gateway.max_body_bytes).await?;
    let text = std::str::from_utf8(&body).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    let body_in = read_body(text).map_err(body_error)?;
    // The idempotency hash covers the whole body (and the respond-async preference), in its
    // compact form; a body nested deeper than a JSON tree may be (its values were only skipped
    // over when read) is hashed as sent.
    let body_hash = idem_header.as_ref().map(|_| {
        let canonical = serde_json::from_str::<Json>(text)
            .map(|tree| serde_json::to_vec(&tree).expect("a JSON value serializes"))
            .unwrap_or_else(|_| text.as_bytes().to_vec());
        format!("{}:{}", if is_async { "async" } else { "sync" }, hex(&Sha256::digest(&canonical)))
    });
    // `{records: [...]}` or one record; each record's value stays JSON text until it is encoded.
    let records: Vec<Result<RecordIn<'_>, Line>> = match body_in.records {
        Some(list) => {
            only_names(body_in.others.iter().map(|k| k.as_ref()), &["records"])?;
            list.ok_or_else(|| ApiError::validation("records", "must be an array of records"))?
        }
        None => vec![Ok(body_in.record)],
    };
    if records.is_empty() {
        return Err(ApiError::validation("records", "must hold at least one record"));
    }
    let max = s.gateway.max_records_per_request;
    if records.len() > max {
        return Ok(error_with(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            &format!("{} records in one request; the limit is {max}", records.len()),
            &json!({"max_records_per_request": max, "records": records.len()}),
            &ctx.request_id,
        ));
    }

    // Idempotency first: a replay writes nothing, so it is not charged to the quotas.
    // Replay a stored answer, refuse a reused key with another body, or reserve.
    let mut idem = Idem::None;
    if let (Some(k), Some(hash)) = (&idem_header, body_hash) {
        let redis_key = idem_key(ctx, topic, k);
        let pool = ctx.deps.cache.pool();
        let pending = json!({"hash": hash, "state": "pending"}).to_string();
        let reserve_secs = (s.http.request_timeout_ms / 1000 + 5) as i64;
        let set: Option<String> = pool
            .set(&redis_key, pending, Some(Expiration::EX(reserve_secs)), Some(SetOptions::NX), false)
            .await
            .map_err(|e| redis_down(ctx, e))?;
        if set.is_none() {
            let stored: Option<String> = pool.get(&redis_key).await.map_err(|e| redis_down(ctx, e))?;
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
                    let mut r = raw_json(status, body.to_string());
                    r.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
                    Ok(r)
                }
                _ => Err(ApiError::Internal(format!("unreadable idempotency record {redis_key}"))),
            };
        }
        idem = Idem::Reserved { redis_key, hash };
    }

    // The bytes charged are the request body's (what the caller sent). A refused request frees
    // its key, so its retry runs.
    if let Err(e) = check_quota(ctx, records.len(), body.len()).await {
        idem.release(ctx).await;
        return Err(e);
    }

    let result = run(ctx, decl, records, &forwarded, is_async, span).await;
    let ttl = s.gateway.idempotency_ttl_secs as i64;
    match (&idem, &result) {
        // Nothing was written on a 503 or an error: let the retry run for real.
        (Idem::Reserved { redis_key, hash }, Ok(r)) if r.status() != StatusCode::SERVICE_UNAVAILABLE => {
            let body =
                http_body_util::BodyExt::collect(r.body().clone()).await.map(|c| c.to_bytes()).unwrap_or_default();
            let stored = json!({"hash": hash, "state": "done", "status": r.status().as_u16(),
                                "body": String::from_utf8_lossy(&body)});
            let _: Result<(), _> =
                ctx.deps.cache.pool().set(redis_key, stored.to_string(), Some(Expiration::EX(ttl)), None, false).await;
        }
        _ => idem.release(ctx).await,
    }
    result
}

/// Validates, encodes and produces the records; the answer (sync) or the receipt (async).
async fn run(
    ctx: &Ctx,
    decl: &TopicDecl,
    records: Vec<Result<RecordIn<'_>, Line>>,
    forwarded: &[(String, Vec<u8>)],
    is_async: bool,
    mut span: Span,
) -> Result<HttpResponse, ApiError> {
    let schema = match value_schema(ctx, decl).await {
        Ok(s) => s,
        Err(e) => {
            span.error(e.to_string());
            return Err(e);
        }
    };
    let kafka_topic = ctx.deps.catalog.topic_name(&decl.name);
    let mut lines: Vec<Option<Line>> = vec![None; records.len()];
    let mut pending = Vec::new();
    for (i, rec) in records.into_iter().enumerate() {
        match rec.and_then(|r| enqueue_record(&ctx.deps, &kafka_topic, decl, schema.as_deref(), forwarded, &r)) {
            Ok(fut) => pending.push((i, fut)),
            Err(line) => lines[i] = Some(line),
        }
    }
    if is_async && !pending.is_empty() {
        // The span covers the queueing; the deliveries are the receipt's.
        end_producer_span(span, pending.len(), lines.iter().flatten().count());
        return Ok(receipt(ctx, decl, lines, pending).await);
    }
    settle(&mut lines, pending).await;
    let lines: Vec<Line> = lines.into_iter().map(|l| l.expect("every record has a line")).collect();
    let written = lines.iter().filter(|l| matches!(l, Line::Written(_))).count();
    end_producer_span(span, written, lines.len() - written);
    Ok(answer(ctx, &decl.name, &lines))
}

fn answer(ctx: &Ctx, topic: &str, lines: &[Line]) -> HttpResponse {
    let written = lines.iter().filter(|l| matches!(l, Line::Written(_))).count();
    let data = Answer { topic, written, failed: lines.len() - written, records: lines };
    match overall(lines) {
        (status, None) => ok_with(status, &data, &format!("{written} records written"), &ctx.request_id),
        (status, Some(code)) => {
            let message = format!("{written} of {} records written", lines.len());
            let mut r = error_with(status, code, &message, &data, &ctx.request_id);
            if status == StatusCode::SERVICE_UNAVAILABLE {
                r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(ctx.deps.settings.http.retry_after_secs));
            }
            r
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
