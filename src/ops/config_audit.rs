//! Configuration changes in the audit log (the spec's "all system configuration
//! modifications"): declared topics created or altered, and schemas registered, by `devcycle
//! topics|schemas apply` (actor `cli`) or by a service applying its declarations at start
//! (actor `service`).
//!
//! Invariants: one entry per apply that changed something, listing every change; an apply that
//! changed nothing writes nothing (services start often).

use crate::db::users::{self, AuditEntry};
use crate::db::DbError;
use crate::registry::Registered;
use crate::topics::Change;
use sqlx::PgPool;

/// Records the topic changes among `changes` (warnings are not changes); whether it wrote.
pub async fn topics_applied(pool: &PgPool, actor: &str, changes: &[Change]) -> Result<bool, DbError> {
    let changed: Vec<String> = changes.iter().filter(|c| c.is_change()).map(ToString::to_string).collect();
    record(pool, actor, "topics_apply", changed).await
}

/// Records the schemas among `applied` that were registered as new versions; whether it wrote.
pub async fn schemas_applied(pool: &PgPool, actor: &str, applied: &[Registered]) -> Result<bool, DbError> {
    let changed: Vec<String> =
        applied.iter().filter(|r| r.new_version).map(|r| format!("{} registered (id {})", r.subject, r.id)).collect();
    record(pool, actor, "schemas_apply", changed).await
}

async fn record(pool: &PgPool, actor: &str, action: &str, changed: Vec<String>) -> Result<bool, DbError> {
    if changed.is_empty() {
        return Ok(false);
    }
    let entry = AuditEntry {
        actor: Some(actor),
        action,
        outcome: "success",
        details: serde_json::json!({ "changes": changed }),
        ..Default::default()
    };
    users::audit(pool, &entry).await?;
    Ok(true)
}
