//! `Idempotency-Key` on the API's writes (`POST /v1/tasks`, `POST /v1/topics/{topic}/records`):
//! the first answer to a key is stored in Postgres (`db::idempotency`) and replayed byte for byte
//! to its retries, so a Redis restart or eviction forgets no key.
//!
//! Invariants: a key is the caller's own (the caller is part of the record's id); a key is
//! reserved (claimed) before anything is written, so a concurrent retry gets 409 instead of
//! writing again; a reserved key whose request wrote nothing (refused, 503) is released, so the
//! retry runs for real; a key reused with another request body is refused (422) and never
//! replayed. A reservation lapses after the request's timeout (and a margin), so a process
//! that died mid-request does not hold its key for the answer's lifetime.

use super::envelope::raw_json;
use super::{ApiError, Ctx, HttpResponse};
use crate::db::idempotency as records;
use crate::events::IdempotencyRecordFailed;
use hyper::header::HeaderValue;
use hyper::{Request, StatusCode};
use serde_json::Value as Json;
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

/// The canonical form of a JSON body given as text: compact, each object's keys sorted (a
/// retry whose serializer orders keys otherwise is the same request); a body that does not parse
/// as a JSON tree is kept as sent.
pub fn compact(body: &str) -> Vec<u8> {
    serde_json::from_str::<Json>(body).map(canonical).unwrap_or_else(|_| body.as_bytes().to_vec())
}

/// The canonical form of a JSON tree (see [`compact`]).
pub fn canonical(mut tree: Json) -> Vec<u8> {
    tree.sort_all_objects();
    serde_json::to_vec(&tree).expect("a JSON value serializes")
}

/// The record id of `key` for the request's caller, under `scope` (what the key applies to):
/// `<scope>:<caller>:<key>`.
pub fn record_id(ctx: &Ctx, scope: &str, key: &str) -> String {
    let caller = ctx.principal.as_ref().map_or("-", |p| p.id.as_str());
    format!("{scope}:{caller}:{key}")
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
    id: String,
    hash: String,
}

/// Reserves the key `id` for a request with fingerprint `hash`, or finds its stored answer; a
/// key in use by a request still running is 409, and one used with another body is 422.
pub async fn reserve(ctx: &Ctx, id: String, hash: String) -> Result<Reservation, ApiError> {
    let reserve_secs = ctx.deps.settings.http.request_timeout_ms / 1000 + 5;
    let Some(stored) = records::claim(&ctx.deps.pool, &id, &hash, reserve_secs).await? else {
        return Ok(Reservation::Fresh(Reserved { id, hash }));
    };
    if stored.hash != hash {
        return Err(reused());
    }
    match stored.answer {
        None => Err(ApiError::Conflict("a request with this Idempotency-Key is still in progress".into())),
        Some((status, body)) => match StatusCode::from_u16(status) {
            Ok(status) => Ok(Reservation::Replay(replayed(raw_json(status, body)))),
            Err(_) => Err(ApiError::Internal(format!("unreadable idempotency record {id}"))),
        },
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
                let body = String::from_utf8_lossy(&body);
                let stored =
                    records::answer(&ctx.deps.pool, &self.id, &self.hash, r.status().as_u16(), &body, ttl_secs).await;
                if let Err(error) = stored {
                    IdempotencyRecordFailed { stage: "answer", error: &error }.emit();
                }
            }
            _ => self.release(ctx).await,
        }
    }

    /// Frees the key, so that the request's retry runs.
    pub async fn release(&self, ctx: &Ctx) {
        if let Err(error) = records::release(&ctx.deps.pool, &self.id, &self.hash).await {
            IdempotencyRecordFailed { stage: "release", error: &error }.emit();
        }
    }
}
