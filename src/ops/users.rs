//! `devcycle users disable|enable`: locking a user out at once (a compromised account, someone
//! who left) and letting them back in.
//!
//! Invariants: disabling ends every session of the user and deny-lists their access tokens
//! before it returns, so no token of theirs passes afterwards (login and refresh already refuse
//! a disabled user); the revoked sessions also reach Redis again through the deny list's
//! rewrites (`ingress::deny_sync`). Enabling ends nothing and restores nothing: the user logs in
//! again. Service tokens the user created are not theirs alone and stay (revoke them by id).
//! Both are audited with the actor `cli`.

use crate::cache::{Cache, CacheError};
use crate::db::users::{self, AuditEntry, User};
use crate::db::DbError;
use sqlx::PgPool;

#[derive(Debug, thiserror::Error)]
pub enum UsersOpError {
    #[error("no user with the email {0}")]
    NotFound(String),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("redis: {0}")]
    Cache(#[from] CacheError),
}

/// Disables (`disabled`) or enables the user with `email`; returns the user and how many
/// sessions were ended.
pub async fn set_disabled(
    pool: &PgPool,
    cache: &Cache,
    email: &str,
    disabled: bool,
) -> Result<(User, usize), UsersOpError> {
    let user = users::by_email(pool, email).await?.ok_or_else(|| UsersOpError::NotFound(email.to_string()))?;
    users::set_disabled(pool, user.id, disabled).await?;
    let mut ended = 0;
    if disabled {
        let revoked = users::end_all_sessions(pool, user.id, "disabled").await?;
        crate::auth::deny_all(cache, &revoked).await?;
        ended = revoked.len();
    }
    let entry = AuditEntry {
        actor: Some("cli"),
        action: if disabled { "user_disable" } else { "user_enable" },
        outcome: "success",
        target: Some(&user.email),
        details: serde_json::json!({"user_id": user.id, "sessions_ended": ended}),
        ..Default::default()
    };
    users::audit(pool, &entry).await?;
    Ok((user, ended))
}
