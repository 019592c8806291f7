//! `Idempotency-Key` on the API's writes (`POST /v1/tasks`, `POST /v1/topics/{topic}/records`):
//! the first answer to a key is stored in Redis and replayed byte for byte to its retries.
//!
//! Invariants: a key is the caller's own (the caller is part of the Redis key); a key is reserved
//! (`pending`) before anything is written, so a concurrent retry gets 409 instead of writing
//! again; a reserved key whose request wrote nothing (refused, 503) is released, so the retry
//! runs for real; a key reused with another request body is refused (422) and never replayed.

use super::envelope::raw_json;
use super::{ApiError, Ctx, HttpResponse};
use fred::prelude::*;
use hyper::header::HeaderValue;
use hyper::{Request, StatusCode};
use serde_json::{json, Value as Json};
use sha2::{Digest, Sha256};

/// The longest key accepted.
pub const MAX_KEY: usize = 255;

/// The request's `Idempotency-Key`, if any: 1 to [`MAX_KEY`] visible ASCII characters.
pub fn key_of<B>(req: &Request<B>) -> Result<Option<String>, ApiError> {
    let Some(v) = req.headers().get("idempotency-key") else { return Ok(None) };
    match v.to_str().map(str::trim) {
        Ok(k) if !k.is_empty() && k.len() <= MAX_KEY && k.chars().all(|c| c.is_ascii_graphic()) => {
            Ok(Some(k.to_string()))
        }
        _ => Err(ApiError::validation("Idempotency-Key", format!("must be 1 to {MAX_KEY} visible ASCII characters"))),
    }
}

/// The fingerprint of a request: `<variant>:<SHA-256 of its body's compact JSON form>`.
/// `variant` tells apart what else makes two requests differ (e.g. a respond-async preference).
pub fn fingerprint(variant: &str, compact_body: &[u8]) -> String {
    format!("{variant}:{}", crate::auth::hex(&Sha256::digest(compact_body)))
}

/// The compact form of a JSON body given as text (a body that does not parse as a JSON tree is
/// kept as sent).
pub fn compact(body: &str) -> Vec<u8> {
    serde_json::from_str::<Json>(body)
        .map(|tree| serde_json::to_vec(&tree).expect("a JSON value serializes"))
        .unwrap_or_else(|_| body.as_bytes().to_vec())
}

/// The Redis key of `key` for the request's caller, under `scope` (what the key applies to):
/// `<prefix><scope>:idem:<caller>:<key>`.
pub fn redis_key(ctx: &Ctx, scope: &str, key: &str) -> String {
    let caller = ctx.principal.as_ref().map_or("-", |p| p.id.as_str());
    format!("{}{scope}:idem:{caller}:{key}", ctx.deps.cache.prefix())
}

/// What a key's reservation found.
pub enum Reservation {
    /// The key is new and now reserved: run the request, then [`Reserved::finish`].
    Fresh(Reserved),
    /// The key's stored answer, to send as it is.
    Replay(HttpResponse),
}

/// A reserved key.
pub struct Reserved {
    redis_key: String,
    hash: String,
}

/// Reserves `redis_key` for a request with fingerprint `hash`, or finds its stored answer; a
/// key in use by a request still running is 409, and one used with another body is 422.
pub async fn reserve(ctx: &Ctx, redis_key: String, hash: String) -> Result<Reservation, ApiError> {
    let pool = ctx.deps.cache.pool();
    let pending = json!({"hash": hash, "state": "pending"}).to_string();
    let reserve_secs = (ctx.deps.settings.http.request_timeout_ms / 1000 + 5) as i64;
    let set: Option<String> = pool
        .set(&redis_key, pending, Some(Expiration::EX(reserve_secs)), Some(SetOptions::NX), false)
        .await
        .map_err(|e| ctx.redis_down(e))?;
    if set.is_some() {
        return Ok(Reservation::Fresh(Reserved { redis_key, hash }));
    }
    let stored: Option<String> = pool.get(&redis_key).await.map_err(|e| ctx.redis_down(e))?;
    let stored: Json = stored.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or(Json::Null);
    if stored["hash"].as_str() != Some(hash.as_str()) {
        return Err(reused());
    }
    if stored["state"] == "pending" {
        return Err(ApiError::Conflict("a request with this Idempotency-Key is still in progress".into()));
    }
    let status = stored["status"].as_u64().and_then(|c| StatusCode::from_u16(c as u16).ok());
    match (status, stored["body"].as_str()) {
        (Some(status), Some(body)) => Ok(Reservation::Replay(replayed(raw_json(status, body.to_string())))),
        _ => Err(ApiError::Internal(format!("unreadable idempotency record {redis_key}"))),
    }
}

/// The refusal of a key reused with another request.
pub fn reused() -> ApiError {
    ApiError::validation(
        "Idempotency-Key",
        "was already used with a different request body (or respond-async preference)",
    )
}

/// Marks `resp` as a replayed answer (`Idempotent-Replayed: true`).
pub fn replayed(mut resp: HttpResponse) -> HttpResponse {
    resp.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    resp
}

impl Reserved {
    /// Stores the request's answer for `ttl_secs`, or releases the key when the request wrote
    /// nothing (an error, or a 503): its retry then runs for real.
    pub async fn finish(self, ctx: &Ctx, result: &Result<HttpResponse, ApiError>, ttl_secs: u64) {
        match result {
            Ok(r) if r.status() != StatusCode::SERVICE_UNAVAILABLE => {
                let body =
                    http_body_util::BodyExt::collect(r.body().clone()).await.map(|c| c.to_bytes()).unwrap_or_default();
                let stored = json!({"hash": self.hash, "state": "done", "status": r.status().as_u16(),
                                    "body": String::from_utf8_lossy(&body)});
                let ex = Some(Expiration::EX(ttl_secs as i64));
                let _: Result<(), _> =
                    ctx.deps.cache.pool().set(&self.redis_key, stored.to_string(), ex, None, false).await;
            }
            _ => self.release(ctx).await,
        }
    }

    /// Frees the key, so that the request's retry runs.
    pub async fn release(&self, ctx: &Ctx) {
        let _: Result<i64, _> = ctx.deps.cache.pool().del(&self.redis_key).await;
    }
}
