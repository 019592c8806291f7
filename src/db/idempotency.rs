//! The `idempotency_keys` table: the durable record of each `Idempotency-Key` (a reservation
//! while its request runs, then the answer to replay), read and written by
//! `ingress::idempotency`.
//!
//! Invariants: one row per key (`<scope>:<caller>:<key>`); a row is claimed by one statement,
//! so of two concurrent requests with a key exactly one claims it; a row past `expires_at`
//! counts as absent and the next claim takes it over; only the claimant's reservation (same
//! fingerprint, no answer yet) is answered or released.

use super::DbError;
use sqlx::{PgPool, Row};

/// What a key's record holds when another request claimed it first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The fingerprint of the request that claimed the key.
    pub hash: String,
    /// The stored answer (status, body); `None` while that request still runs.
    pub answer: Option<(u16, String)>,
}

/// How often a claim looks again when the row it found was released meanwhile.
const CLAIM_TRIES: usize = 3;

/// Claims `id` for a request with fingerprint `hash` for `reserve_secs`: `None` when claimed
/// (a new key, or one whose record expired), else the live record another request left.
pub async fn claim(pool: &PgPool, id: &str, hash: &str, reserve_secs: u64) -> Result<Option<Stored>, DbError> {
    for _ in 0..CLAIM_TRIES {
        let claimed = sqlx::query(
            "INSERT INTO idempotency_keys (id, hash, expires_at)
             VALUES ($1, $2, now() + make_interval(secs => $3))
             ON CONFLICT (id) DO UPDATE SET hash = EXCLUDED.hash, status = NULL, body = NULL,
                 created_at = now(), expires_at = EXCLUDED.expires_at
               WHERE idempotency_keys.expires_at <= now()",
        )
        .bind(id)
        .bind(hash)
        .bind(reserve_secs as f64)
        .execute(pool)
        .await?;
        if claimed.rows_affected() == 1 {
            return Ok(None);
        }
        let row = sqlx::query("SELECT hash, status, body FROM idempotency_keys WHERE id = $1 AND expires_at > now()")
            .bind(id)
            .fetch_optional(pool)
            .await?;
        if let Some(row) = row {
            let status: Option<i16> = row.try_get("status")?;
            let body: Option<String> = row.try_get("body")?;
            let answer = status.map(|s| (s as u16, body.unwrap_or_default()));
            return Ok(Some(Stored { hash: row.try_get("hash")?, answer }));
        }
        // Released or expired between the two statements: claim again.
    }
    // Claimed and released over and over by others: report it as running, the caller retries.
    Ok(Some(Stored { hash: hash.to_string(), answer: None }))
}

/// Stores the answer of the request that claimed `id` with `hash`, kept for `ttl_secs`.
pub async fn answer(
    pool: &PgPool,
    id: &str,
    hash: &str,
    status: u16,
    body: &str,
    ttl_secs: u64,
) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE idempotency_keys SET status = $3, body = $4, expires_at = now() + make_interval(secs => $5)
          WHERE id = $1 AND hash = $2 AND status IS NULL",
    )
    .bind(id)
    .bind(hash)
    .bind(status as i16)
    .bind(body)
    .bind(ttl_secs as f64)
    .execute(pool)
    .await?;
    Ok(())
}

/// Releases the reservation of `id` with `hash` (its request wrote nothing): a retry runs.
pub async fn release(pool: &PgPool, id: &str, hash: &str) -> Result<(), DbError> {
    sqlx::query("DELETE FROM idempotency_keys WHERE id = $1 AND hash = $2 AND status IS NULL")
        .bind(id)
        .bind(hash)
        .execute(pool)
        .await?;
    Ok(())
}
