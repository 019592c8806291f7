//! The append-only audit log: who did what, from where, with which outcome.

use crate::db::DbError;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{AssertSqlSafe, PgPool, Row};

/// One audit event.
#[derive(Debug, Clone, Default)]
pub struct AuditEntry<'a> {
    pub actor: Option<&'a str>,
    pub action: &'a str,
    pub outcome: &'a str,
    pub target: Option<&'a str>,
    pub ip: Option<String>,
    pub request_id: Option<&'a str>,
    pub details: Value,
}

pub async fn audit(pool: &PgPool, e: &AuditEntry<'_>) -> Result<(), DbError> {
    let details = if e.details.is_null() { serde_json::json!({}) } else { e.details.clone() };
    sqlx::query(
        "INSERT INTO audit_log (actor, action, outcome, target, ip, request_id, details)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(e.actor)
    .bind(e.action)
    .bind(e.outcome)
    .bind(e.target)
    .bind(&e.ip)
    .bind(e.request_id)
    .bind(details)
    .execute(pool)
    .await?;
    Ok(())
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: Option<String>,
    pub action: String,
    pub outcome: String,
    pub target: Option<String>,
    pub ip: Option<String>,
    pub request_id: Option<String>,
    pub details: Value,
}

/// Audit events, newest first, filtered by actor, action and time, paged.
pub async fn audit_list(
    pool: &PgPool,
    actor: Option<&str>,
    action: Option<&str>,
    since: Option<DateTime<Utc>>,
    limit: i64,
    offset: i64,
) -> Result<(Vec<AuditRow>, i64), DbError> {
    let filter = "($1::text IS NULL OR actor = $1) AND ($2::text IS NULL OR action = $2)
                  AND ($3::timestamptz IS NULL OR at >= $3)";
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT id, at, actor, action, outcome, target, ip, request_id, details FROM audit_log
         WHERE {filter} ORDER BY id DESC LIMIT $4 OFFSET $5"
    )))
    .bind(actor)
    .bind(action)
    .bind(since)
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await?;
    let total: i64 = sqlx::query(AssertSqlSafe(format!("SELECT count(*) AS n FROM audit_log WHERE {filter}")))
        .bind(actor)
        .bind(action)
        .bind(since)
        .fetch_one(pool)
        .await?
        .try_get("n")?;
    let items = rows
        .iter()
        .map(|r| {
            Ok(AuditRow {
                id: r.try_get("id")?,
                at: r.try_get("at")?,
                actor: r.try_get("actor")?,
                action: r.try_get("action")?,
                outcome: r.try_get("outcome")?,
                target: r.try_get("target")?,
                ip: r.try_get("ip")?,
                request_id: r.try_get("request_id")?,
                details: r.try_get("details")?,
            })
        })
        .collect::<Result<Vec<_>, DbError>>()?;
    Ok((items, total))
}
