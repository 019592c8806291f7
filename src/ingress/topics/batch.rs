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
    declared, end_producer_span, enqueue_record, overall, producer_span, settle, value_schema, wants_async, Line,
};
use crate::catalog::TopicDecl;
use crate::ingress::body::{body_error, json_body, only_names};
use crate::ingress::envelope::{error_with, ok_with};
use crate::ingress::idempotency::{self, Reservation};
use crate::ingress::{ApiError, Ctx, HttpResponse};
use crate::otlp::Span;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, RETRY_AFTER};
use hyper::{Request, StatusCode};
use serde_json::json;

/// The `data` of a produce answer.
#[derive(serde::Serialize)]
struct Answer<'a> {
    topic: &'a str,
    written: usize,
    failed: usize,
    records: &'a [Line],
}

pub async fn produce(ctx: &Ctx, topic: &str, req: Request<Incoming>) -> Result<HttpResponse, ApiError> {
    let decl = match declared(ctx, topic)? {
        Ok(d) => d,
        Err(forbidden) => return Ok(forbidden),
    };
    let s = &ctx.deps.settings;
    let idem_header = idempotency::key_of(&req)?;
    let is_async = wants_async(&req);
    let (span, forwarded) = producer_span(ctx, &req, decl);
    let body = json_body(req, s.gateway.max_body_bytes).await?;
    let text = std::str::from_utf8(&body).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    let body_in = read_body(text).map_err(body_error)?;
    // The idempotency hash covers the whole body (and the respond-async preference); a body
    // nested deeper than a JSON tree may be (its values were only skipped over when read) is
    // hashed as sent.
    let body_hash = idem_header
        .as_ref()
        .map(|_| idempotency::fingerprint(if is_async { "async" } else { "sync" }, &idempotency::compact(text)));
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
    let mut idem = None;
    if let (Some(k), Some(hash)) = (&idem_header, body_hash) {
        let id = idempotency::record_id(ctx, "gateway", &format!("{topic}:{k}"));
        match idempotency::reserve(ctx, id, hash).await? {
            Reservation::Replay(r) => return Ok(r),
            Reservation::Fresh(reserved) => idem = Some(reserved),
        }
    }

    // The bytes charged are the request body's (what the caller sent). A refused request frees
    // its key, so its retry runs.
    if let Err(e) = check_quota(ctx, records.len(), body.len()).await {
        if let Some(reserved) = &idem {
            reserved.release(ctx).await;
        }
        return Err(e);
    }

    let result = run(ctx, decl, records, &forwarded, is_async, span).await;
    if let Some(reserved) = idem {
        reserved.finish(ctx, &result, s.gateway.idempotency_ttl_secs).await;
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
