//! `devcycle users export|erase`: a data subject's rights (the spec's GDPR and CCPA compliance):
//! everything DevCycle's database holds about one user, as JSON lines; and the erasure of it.
//!
//! Invariants: an export never holds a secret (`db::users::privacy::EXPORTS`) and is audited
//! (`user_export`, target the user id). An erasure first locks the user out (sessions ended,
//! access tokens deny-listed, as `users disable`), then erases in one transaction
//! (`db::users::privacy::erase`), then drops the erased tasks' statuses from Redis; it is audited
//! (`user_erase`) under the user id, never the email, and can be run again by id: tasks a
//! processor writes after it (requests still in Kafka) are erased by the next run. What stays is
//! said in the README (audit rows for the spec's year; records in Kafka until topic retention).

use super::users::UsersOpError;
use crate::cache::Cache;
use crate::db::users::privacy::{self, Erased};
use crate::db::users::{self, AuditEntry, User};
use sqlx::PgPool;
use uuid::Uuid;

/// Whom a request is about.
#[derive(Debug, Clone)]
pub enum Subject {
    Email(String),
    /// The user id (an erased user is found by id only: their email is gone).
    Id(Uuid),
}

async fn find(pool: &PgPool, subject: &Subject) -> Result<User, UsersOpError> {
    let found = match subject {
        Subject::Email(email) => users::by_email(pool, email).await?,
        Subject::Id(id) => users::by_id(pool, *id).await?,
    };
    found.ok_or_else(|| match subject {
        Subject::Email(email) => UsersOpError::NotFound(email.clone()),
        Subject::Id(id) => UsersOpError::NoSuchId(*id),
    })
}

async fn audited(pool: &PgPool, action: &str, user: Uuid, details: serde_json::Value) -> Result<(), UsersOpError> {
    let target = user.to_string();
    let entry = AuditEntry {
        actor: Some("cli"),
        action,
        outcome: "success",
        target: Some(&target),
        details,
        ..Default::default()
    };
    Ok(users::audit(pool, &entry).await?)
}

/// Writes every record about `subject` to `out`, one JSON object per line; returns the user id
/// and the number of lines.
pub async fn export(
    pool: &PgPool,
    subject: &Subject,
    out: &mut impl std::io::Write,
) -> Result<(Uuid, u64), UsersOpError> {
    let user = find(pool, subject).await?;
    let lines = privacy::export(pool, user.id, |line| writeln!(out, "{line}")).await?;
    out.flush().map_err(|e| UsersOpError::Export(privacy::ExportError::Write(e)))?;
    audited(pool, "user_export", user.id, serde_json::json!({"lines": lines})).await?;
    Ok((user.id, lines))
}

/// What an erasure did.
#[derive(Debug, Clone)]
pub struct Erasure {
    pub user: Uuid,
    pub sessions_ended: usize,
    pub erased: Erased,
}

/// Locks `subject` out and erases their records (see the module's invariants).
pub async fn erase(pool: &PgPool, cache: &Cache, subject: &Subject) -> Result<Erasure, UsersOpError> {
    let user = find(pool, subject).await?;
    let revoked = users::end_all_sessions(pool, user.id, "erased").await?;
    crate::auth::deny_all(cache, &revoked).await?;
    let erased = privacy::erase(pool, user.id).await?.ok_or(UsersOpError::NoSuchId(user.id))?;
    let details = serde_json::json!({
        "sessions_ended": revoked.len(), "tasks": erased.tasks.len(),
        "idempotency_keys": erased.idempotency_keys, "password_history": erased.password_history,
        "service_tokens_unlinked": erased.service_tokens_unlinked,
    });
    audited(pool, "user_erase", user.id, details).await?;
    // The statuses of the deleted tasks: a failure here leaves them until their Redis TTL.
    for chunk in erased.tasks.chunks(64) {
        futures::future::try_join_all(chunk.iter().map(|id| cache.forget_task(*id))).await?;
    }
    Ok(Erasure { user: user.id, sessions_ended: revoked.len(), erased })
}
