//! What the database holds about one user, exported (a data subject's access request) and
//! erased (a request to be forgotten): the statements behind `ops::privacy`.
//!
//! Invariants: an export reads each kind of record with one statement, streamed row by row
//! (bounded memory, whatever a user's task count); secrets (password and refresh-token hashes,
//! the TOTP seed, service-token hashes) are never exported. An erasure is one transaction:
//! either every record below is gone or anonymized, or nothing changed. Audit rows are not
//! touched (the audit log is append-only for the spec's year; retention deletes them after it).

use super::DbError;
use futures::TryStreamExt;
use sqlx::PgPool;
use uuid::Uuid;

/// The statement that reads each kind of exported record as JSON text, `$1` the user id. Every
/// line carries `"record": <kind>`.
const EXPORTS: [&str; 6] = [
    "SELECT (jsonb_build_object('record', 'user') || (to_jsonb(u) - 'password_hash' - 'totp_secret'))::text
           FROM users u WHERE id = $1",
    "SELECT (jsonb_build_object('record', 'session') || (to_jsonb(s) - 'refresh_token_hash'))::text
           FROM sessions s WHERE user_id = $1 ORDER BY created_at, id",
    "SELECT (jsonb_build_object('record', 'service_token') || (to_jsonb(t) - 'token_hash'))::text
           FROM service_tokens t WHERE created_by = $1 ORDER BY created_at, id",
    "SELECT (jsonb_build_object('record', 'task') || to_jsonb(t))::text
           FROM tasks t WHERE submitted_by = $1::text ORDER BY created_at, task_id",
    "SELECT (jsonb_build_object('record', 'task_event') || to_jsonb(e))::text
           FROM task_events e JOIN tasks t USING (task_id) WHERE t.submitted_by = $1::text ORDER BY e.at, e.event_id",
    "SELECT (jsonb_build_object('record', 'audit') || to_jsonb(a))::text
           FROM audit_log a
          WHERE a.actor = $1::text OR a.target = $1::text OR a.details->>'user_id' = $1::text
             OR a.target = (SELECT email FROM users WHERE id = $1 AND erased_at IS NULL)
          ORDER BY a.at, a.id",
];

/// Streams every exported line of `user` to `emit`, kind by kind; returns how many lines.
pub async fn export(
    pool: &PgPool,
    user: Uuid,
    mut emit: impl FnMut(&str) -> std::io::Result<()>,
) -> Result<u64, ExportError> {
    let mut lines = 0;
    for sql in EXPORTS {
        let mut rows = sqlx::query_scalar::<_, String>(sql).bind(user).fetch(pool);
        while let Some(line) = rows.try_next().await.map_err(DbError::from)? {
            emit(&line).map_err(ExportError::Write)?;
            lines += 1;
        }
    }
    Ok(lines)
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("writing the export: {0}")]
    Write(std::io::Error),
}

/// What an erasure removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Erased {
    /// The user's tasks, deleted with their events (their Redis status is the caller's to drop).
    pub tasks: Vec<Uuid>,
    pub idempotency_keys: u64,
    pub password_history: u64,
    /// Service tokens the user created: kept (not theirs alone), no longer linked to them.
    pub service_tokens_unlinked: u64,
}

/// Erases `user`'s records in one transaction: the user row becomes a tombstone (email
/// `erased-<id>@erased.invalid`, no password, no TOTP seed, disabled, `erased_at`); password
/// history, Idempotency-Key records and tasks (with their events) are deleted; service tokens
/// lose their link. Sessions stay (revoked, no personal data) until retention: the deny list is
/// rebuilt from them. Returns `None` when there is no such user.
pub async fn erase(pool: &PgPool, user: Uuid) -> Result<Option<Erased>, DbError> {
    let mut tx = pool.begin().await?;
    let found = sqlx::query(
        "UPDATE users SET email = 'erased-' || id || '@erased.invalid', password_hash = '!', totp_secret = NULL,
                totp_enabled = false, disabled = true, erased_at = coalesce(erased_at, now()), updated_at = now()
          WHERE id = $1",
    )
    .bind(user)
    .execute(&mut *tx)
    .await?;
    if found.rows_affected() == 0 {
        return Ok(None);
    }
    let run = |sql: &'static str| sqlx::query(sql).bind(user);
    let password_history =
        run("DELETE FROM password_history WHERE user_id = $1").execute(&mut *tx).await?.rows_affected();
    let service_tokens_unlinked = run("UPDATE service_tokens SET created_by = NULL WHERE created_by = $1")
        .execute(&mut *tx)
        .await?
        .rows_affected();
    // `<scope>:<caller>:<key>` (db::idempotency).
    let idempotency_keys = run("DELETE FROM idempotency_keys WHERE split_part(id, ':', 2) = $1::text")
        .execute(&mut *tx)
        .await?
        .rows_affected();
    // task_events is append-only but for an erasure's transaction (migration 14).
    sqlx::query("SELECT set_config('devcycle.erasure', 'on', true)").execute(&mut *tx).await?;
    let tasks = sqlx::query_scalar(
        "WITH gone AS (DELETE FROM tasks WHERE submitted_by = $1::text RETURNING task_id),
              events AS (DELETE FROM task_events e USING gone WHERE e.task_id = gone.task_id)
         SELECT task_id FROM gone",
    )
    .bind(user)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(Erased { tasks, idempotency_keys, password_history, service_tokens_unlinked }))
}
