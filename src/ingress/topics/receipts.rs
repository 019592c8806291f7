//! Receipts of `Prefer: respond-async` produce requests: answered 202 at once, the delivery
//! reports recorded in Redis as they arrive, read back with `GET /v1/receipts/{id}`.
//!
//! Invariant: a receipt reads `pending` until every record of its request has its report.

use super::{overall, settle, Line};
use crate::catalog::TopicDecl;
use crate::ingress::envelope::ok;
use crate::ingress::{ApiError, Ctx, HttpResponse};
use fred::prelude::*;
use hyper::header::HeaderValue;
use hyper::StatusCode;
use serde_json::{json, Value as Json};

fn receipt_key(ctx_prefix: &str, id: &str) -> String {
    format!("{ctx_prefix}gateway:receipt:{id}")
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
pub(super) async fn receipt(
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
        settle(&mut lines, pending).await;
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
    let stored: Option<String> =
        ctx.deps.cache.pool().get(receipt_key(ctx.deps.cache.prefix(), id)).await.map_err(|e| ctx.redis_down(e))?;
    let data: Json = stored
        .and_then(|t| serde_json::from_str(&t).ok())
        .ok_or_else(|| ApiError::NotFound(format!("receipt {id}")))?;
    Ok(ok(StatusCode::OK, data, "Receipt", &ctx.request_id))
}
