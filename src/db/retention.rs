//! Data retention (`devcycle retention apply`): deletes what the spec and the configuration no
//! longer ask to keep.
//!
//! - `audit_log` rows older than `retention.audit_log_days` (at least the spec's 365 days; the
//!   table's trigger refuses any younger delete, whatever this code asks).
//! - Sessions whose refresh token expired more than `retention.sessions_days` ago. A session
//!   row matters until then for refresh-token reuse detection and the deny list of its access
//!   token (which expired long before).
//! - Password history beyond the `auth.password_history` newest per user (only those are read).
//! - `Idempotency-Key` records past their expiry (they already count as absent).
//!
//! Invariants: deletes run in batches of `retention.batch_size` rows, each its own statement,
//! so no lock is held long and a run cut short resumes where it stopped; the run is recorded in
//! the audit log (action `retention_apply`) with what it deleted. Task records are kept: the
//! spec sets no retention for them.

use super::DbError;
use crate::settings::Settings;
use sqlx::PgPool;

/// What a run deleted (or, dry, would delete).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub audit_log: u64,
    pub sessions: u64,
    pub password_history: u64,
    pub idempotency_keys: u64,
}

/// The ids of the rows of each kind past retention, with `$1` the cutoff.
const AUDIT: &str = "SELECT id FROM audit_log WHERE at < now() - make_interval(days => $1)";
const SESSIONS: &str = "SELECT id FROM sessions WHERE expires_at < now() - make_interval(days => $1)";
const HISTORY: &str = "SELECT id FROM (SELECT id, row_number() OVER (PARTITION BY user_id
                         ORDER BY created_at DESC, id DESC) AS n FROM password_history) h
                       WHERE n > $1";
const IDEMPOTENCY: &str = "SELECT id FROM idempotency_keys WHERE expires_at < now() - make_interval(days => $1)";

/// Counts (`dry_run`) or deletes, batch by batch, the rows of `table` that `select` finds.
async fn sweep(
    pool: &PgPool,
    table: &str,
    select: &str,
    cutoff: i32,
    batch: i64,
    dry_run: bool,
) -> Result<u64, DbError> {
    if dry_run {
        let count = format!("SELECT count(*) FROM ({select}) x");
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(count)).bind(cutoff).fetch_one(pool).await?;
        return Ok(n as u64);
    }
    let delete = format!("DELETE FROM {table} WHERE id IN ({select} LIMIT $2)");
    let mut total = 0;
    loop {
        let done = sqlx::query(sqlx::AssertSqlSafe(delete.as_str())).bind(cutoff).bind(batch).execute(pool).await?;
        total += done.rows_affected();
        if done.rows_affected() < batch as u64 {
            return Ok(total);
        }
    }
}

/// Applies retention (or, `dry_run`, counts what it would delete).
pub async fn apply(pool: &PgPool, settings: &Settings, dry_run: bool) -> Result<Report, DbError> {
    let r = &settings.retention;
    let batch = r.batch_size as i64;
    let history = settings.auth.password_history.max(1) as i32;
    let report = Report {
        audit_log: sweep(pool, "audit_log", AUDIT, r.audit_log_days as i32, batch, dry_run).await?,
        sessions: sweep(pool, "sessions", SESSIONS, r.sessions_days as i32, batch, dry_run).await?,
        password_history: sweep(pool, "password_history", HISTORY, history, batch, dry_run).await?,
        idempotency_keys: sweep(pool, "idempotency_keys", IDEMPOTENCY, 0, batch, dry_run).await?,
    };
    if !dry_run {
        let details = serde_json::json!({
            "deleted": {"audit_log": report.audit_log, "sessions": report.sessions,
                        "password_history": report.password_history,
                        "idempotency_keys": report.idempotency_keys},
            "audit_log_days": r.audit_log_days, "sessions_days": r.sessions_days,
        });
        let entry = super::users::AuditEntry {
            actor: Some("devcycle retention"),
            action: "retention_apply",
            outcome: "success",
            details,
            ..Default::default()
        };
        super::users::audit(pool, &entry).await?;
    }
    Ok(report)
}
