//! `devcycle users disable|enable`: locking a user out at once (a compromised account, someone
//! who left) and letting them back in. `devcycle users reencrypt`: every TOTP seed sealed under
//! the current `auth.data_key` (after a rotation, or for seeds stored before sealing).
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
    #[error("no user with the id {0}")]
    NoSuchId(uuid::Uuid),
    #[error("user {0}: {1}")]
    Sealed(uuid::Uuid, crate::auth::sealed::SealError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Export(#[from] crate::db::users::privacy::ExportError),
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

/// Seals again under the current key every TOTP seed that is not (the previous key's, or
/// plaintext); returns how many were sealed again and how many seeds there are. A seed that
/// opens under neither key stops the run (nothing after it is touched). Audited.
pub async fn reencrypt(pool: &PgPool, auth: &crate::settings::AuthSettings) -> Result<(usize, usize), UsersOpError> {
    let keys = crate::auth::sealed::DataKeys::from_settings(auth).expect("auth.data_key checked at load");
    let stored = users::totp_secrets(pool).await?;
    let mut resealed = 0;
    for (id, value) in &stored {
        let owner = id.to_string();
        let opened = keys.open(value, &owner).map_err(|e| UsersOpError::Sealed(*id, e))?;
        if opened.stale && users::reseal_totp(pool, *id, value, &keys.seal(&opened.plaintext, &owner)).await? {
            resealed += 1;
        }
    }
    let entry = AuditEntry {
        actor: Some("cli"),
        action: "secrets_reencrypt",
        outcome: "success",
        details: serde_json::json!({"totp_secrets": stored.len(), "resealed": resealed}),
        ..Default::default()
    };
    users::audit(pool, &entry).await?;
    Ok((resealed, stored.len()))
}
