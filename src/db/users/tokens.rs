//! Service tokens: long-lived API tokens with their own permissions, stored hashed.
//!
//! Invariant: a token is live while neither revoked nor expired; the plain token is never
//! stored.

use crate::db::DbError;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, PgPool, Row};
use uuid::Uuid;

#[derive(Debug, Clone, Serialize)]
pub struct ServiceToken {
    pub id: Uuid,
    pub name: String,
    pub permissions: Vec<String>,
    pub created_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

const TOKEN_COLUMNS: &str = "id, name, permissions, created_by, created_at, expires_at, revoked_at";

fn row_to_token(r: &PgRow) -> Result<ServiceToken, DbError> {
    Ok(ServiceToken {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        permissions: r.try_get("permissions")?,
        created_by: r.try_get("created_by")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        revoked_at: r.try_get("revoked_at")?,
    })
}

pub async fn create_service_token(
    pool: &PgPool,
    name: &str,
    token_hash: &str,
    permissions: &[String],
    created_by: Option<Uuid>,
    expires_at: Option<DateTime<Utc>>,
) -> Result<ServiceToken, DbError> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO service_tokens (id, name, token_hash, permissions, created_by, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING {TOKEN_COLUMNS}"
    )))
    .bind(Uuid::new_v4())
    .bind(name)
    .bind(token_hash)
    .bind(permissions)
    .bind(created_by)
    .bind(expires_at)
    .fetch_one(pool)
    .await?;
    row_to_token(&row)
}

/// A live (not revoked, not expired) service token by its hash.
pub async fn live_service_token(pool: &PgPool, token_hash: &str) -> Result<Option<ServiceToken>, DbError> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "UPDATE service_tokens SET last_used_at = now()
         WHERE token_hash = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())
         RETURNING {TOKEN_COLUMNS}"
    )))
    .bind(token_hash)
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(row_to_token).transpose()
}

pub async fn list_service_tokens(pool: &PgPool) -> Result<Vec<ServiceToken>, DbError> {
    let rows = sqlx::query(AssertSqlSafe(format!("SELECT {TOKEN_COLUMNS} FROM service_tokens ORDER BY created_at")))
        .fetch_all(pool)
        .await?;
    rows.iter().map(row_to_token).collect()
}

/// Revokes a token; false if there is no such live token.
pub async fn revoke_service_token(pool: &PgPool, id: Uuid) -> Result<bool, DbError> {
    let r = sqlx::query("UPDATE service_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(r.rows_affected() == 1)
}
