//! Users, password history, sessions (refresh-token families), service tokens and the
//! append-only audit log.
//!
//! Invariants: a login's sessions rows share a `family`; exactly one row per live family is
//! current (not rotated, not revoked); logins of one user are serialized (row lock on the user)
//! so the concurrent-session cap holds; every revocation returns the access-token ids to
//! deny-list.

use super::DbError;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, PgPool, Row};
use uuid::Uuid;

mod audit;
pub mod privacy;
mod tokens;

pub use audit::*;
pub use tokens::*;

#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    #[serde(skip)]
    pub password_hash: String,
    pub role: String,
    #[serde(skip)]
    pub totp_secret: Option<String>,
    pub totp_enabled: bool,
    pub disabled: bool,
    pub password_changed_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

const USER_COLUMNS: &str =
    "id, email, password_hash, role, totp_secret, totp_enabled, disabled, password_changed_at, created_at";

fn row_to_user(r: &PgRow) -> Result<User, DbError> {
    Ok(User {
        id: r.try_get("id")?,
        email: r.try_get("email")?,
        password_hash: r.try_get("password_hash")?,
        role: r.try_get("role")?,
        totp_secret: r.try_get("totp_secret")?,
        totp_enabled: r.try_get("totp_enabled")?,
        disabled: r.try_get("disabled")?,
        password_changed_at: r.try_get("password_changed_at")?,
        created_at: r.try_get("created_at")?,
    })
}

/// Creates a user (and the first password history entry).
pub async fn create(pool: &PgPool, email: &str, password_hash: &str, role: &str) -> Result<User, DbError> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO users (id, email, password_hash, role) VALUES ($1, $2, $3, $4) RETURNING {USER_COLUMNS}"
    )))
    .bind(Uuid::new_v4())
    .bind(email)
    .bind(password_hash)
    .bind(role)
    .fetch_one(&mut *tx)
    .await?;
    let user = row_to_user(&row)?;
    sqlx::query("INSERT INTO password_history (user_id, password_hash) VALUES ($1, $2)")
        .bind(user.id)
        .bind(password_hash)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(user)
}

pub async fn by_email(pool: &PgPool, email: &str) -> Result<Option<User>, DbError> {
    let row = sqlx::query(AssertSqlSafe(format!("SELECT {USER_COLUMNS} FROM users WHERE lower(email) = lower($1)")))
        .bind(email)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(row_to_user).transpose()
}

pub async fn by_id(pool: &PgPool, id: Uuid) -> Result<Option<User>, DbError> {
    let row = sqlx::query(AssertSqlSafe(format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1")))
        .bind(id)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(row_to_user).transpose()
}

/// The last `n` password hashes of a user, newest first (the current one included).
pub async fn password_history(pool: &PgPool, user_id: Uuid, n: u32) -> Result<Vec<String>, DbError> {
    let rows = sqlx::query(
        "SELECT password_hash FROM password_history WHERE user_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2",
    )
    .bind(user_id)
    .bind(n as i64)
    .fetch_all(pool)
    .await?;
    rows.iter().map(|r| r.try_get("password_hash").map_err(DbError::from)).collect()
}

/// Sets a new password and records it in the history.
pub async fn set_password(pool: &PgPool, user_id: Uuid, password_hash: &str) -> Result<(), DbError> {
    let mut tx = pool.begin().await?;
    sqlx::query("UPDATE users SET password_hash = $2, password_changed_at = now(), updated_at = now() WHERE id = $1")
        .bind(user_id)
        .bind(password_hash)
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO password_history (user_id, password_hash) VALUES ($1, $2)")
        .bind(user_id)
        .bind(password_hash)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Disables (or enables again) a user's account.
pub async fn set_disabled(pool: &PgPool, user_id: Uuid, disabled: bool) -> Result<(), DbError> {
    sqlx::query("UPDATE users SET disabled = $2, updated_at = now() WHERE id = $1")
        .bind(user_id)
        .bind(disabled)
        .execute(pool)
        .await?;
    Ok(())
}

/// Every stored TOTP seed (sealed, or plaintext from before sealing): `(user id, stored)`.
pub async fn totp_secrets(pool: &PgPool) -> Result<Vec<(Uuid, String)>, DbError> {
    Ok(sqlx::query_as("SELECT id, totp_secret FROM users WHERE totp_secret IS NOT NULL ORDER BY id")
        .fetch_all(pool)
        .await?)
}

/// Replaces a user's stored TOTP seed `old` by `new` (the same seed sealed again); false when
/// it changed meanwhile (a new enrolment wins).
pub async fn reseal_totp(pool: &PgPool, user_id: Uuid, old: &str, new: &str) -> Result<bool, DbError> {
    let r = sqlx::query("UPDATE users SET totp_secret = $3 WHERE id = $1 AND totp_secret = $2")
        .bind(user_id)
        .bind(old)
        .bind(new)
        .execute(pool)
        .await?;
    Ok(r.rows_affected() == 1)
}

pub async fn set_totp(pool: &PgPool, user_id: Uuid, secret: Option<&str>, enabled: bool) -> Result<(), DbError> {
    sqlx::query("UPDATE users SET totp_secret = $2, totp_enabled = $3, updated_at = now() WHERE id = $1")
        .bind(user_id)
        .bind(secret)
        .bind(enabled)
        .execute(pool)
        .await?;
    Ok(())
}

// --- Sessions ---

/// An access token to deny-list: its id and expiry.
#[derive(Debug, Clone)]
pub struct RevokedAccess {
    pub jti: String,
    pub exp: DateTime<Utc>,
}

fn revoked_list(rows: &[PgRow]) -> Vec<RevokedAccess> {
    rows.iter()
        .filter_map(|r| {
            let jti: Option<String> = r.try_get("access_jti").ok()?;
            let exp: Option<DateTime<Utc>> = r.try_get("access_exp").ok()?;
            Some(RevokedAccess { jti: jti?, exp: exp? })
        })
        .collect()
}

/// A new session row to store.
pub struct NewSession<'a> {
    pub user_id: Uuid,
    pub refresh_hash: &'a str,
    pub access_jti: &'a str,
    pub access_exp: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// Starts a session (a new family); ends the oldest live sessions beyond `max_sessions`.
/// Returns the access tokens of the ended sessions.
pub async fn start_session(
    pool: &PgPool,
    s: &NewSession<'_>,
    max_sessions: u32,
    idle_secs: u64,
) -> Result<Vec<RevokedAccess>, DbError> {
    let mut tx = pool.begin().await?;
    // Serialize this user's logins.
    sqlx::query("SELECT id FROM users WHERE id = $1 FOR UPDATE").bind(s.user_id).execute(&mut *tx).await?;
    let live = sqlx::query(
        "SELECT family FROM sessions WHERE user_id = $1 AND revoked_at IS NULL AND rotated_at IS NULL
           AND expires_at > now() AND last_used_at > now() - make_interval(secs => $2)
         ORDER BY created_at ASC",
    )
    .bind(s.user_id)
    .bind(idle_secs as f64)
    .fetch_all(&mut *tx)
    .await?;
    let excess = (live.len() + 1).saturating_sub(max_sessions as usize);
    let mut ended = Vec::new();
    for r in live.iter().take(excess) {
        let family: Uuid = r.try_get("family")?;
        let rows = sqlx::query(
            "UPDATE sessions SET revoked_at = now(), revoked_reason = 'session_limit'
             WHERE family = $1 AND revoked_at IS NULL RETURNING access_jti, access_exp",
        )
        .bind(family)
        .fetch_all(&mut *tx)
        .await?;
        ended.extend(revoked_list(&rows));
    }
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO sessions (id, user_id, family, refresh_token_hash, access_jti, access_exp, expires_at)
         VALUES ($1, $2, $1, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(s.user_id)
    .bind(s.refresh_hash)
    .bind(s.access_jti)
    .bind(s.access_exp)
    .bind(s.expires_at)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(ended)
}

/// The outcome of presenting a refresh token.
pub enum Refresh {
    /// Rotated: the user to issue new tokens for.
    Rotated { user_id: Uuid },
    /// Unknown, expired, idle or revoked.
    Invalid,
    /// A token already rotated was presented again: the whole family was revoked.
    Reused { user_id: Uuid, ended: Vec<RevokedAccess> },
}

/// Rotates a refresh token: the presented row is marked rotated and a new row of the same
/// family stores `next`. Reuse of a rotated token revokes the whole family.
pub async fn rotate(
    pool: &PgPool,
    presented_hash: &str,
    next: &NewSession<'_>,
    idle_secs: u64,
) -> Result<Refresh, DbError> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query(
        "SELECT id, user_id, family, created_at, rotated_at, revoked_at,
                (expires_at <= now() OR last_used_at <= now() - make_interval(secs => $2)) AS stale
         FROM sessions WHERE refresh_token_hash = $1 FOR UPDATE",
    )
    .bind(presented_hash)
    .bind(idle_secs as f64)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else { return Ok(Refresh::Invalid) };
    let user_id: Uuid = row.try_get("user_id")?;
    let family: Uuid = row.try_get("family")?;
    let rotated: Option<DateTime<Utc>> = row.try_get("rotated_at")?;
    let revoked: Option<DateTime<Utc>> = row.try_get("revoked_at")?;
    let stale: bool = row.try_get("stale")?;
    if rotated.is_some() {
        let rows = sqlx::query(
            "UPDATE sessions SET revoked_at = now(), revoked_reason = 'refresh_reuse'
             WHERE family = $1 AND revoked_at IS NULL RETURNING access_jti, access_exp",
        )
        .bind(family)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        return Ok(Refresh::Reused { user_id, ended: revoked_list(&rows) });
    }
    if revoked.is_some() || stale || user_id != next.user_id {
        return Ok(Refresh::Invalid);
    }
    let id: Uuid = row.try_get("id")?;
    let created_at: DateTime<Utc> = row.try_get("created_at")?;
    sqlx::query("UPDATE sessions SET rotated_at = now() WHERE id = $1").bind(id).execute(&mut *tx).await?;
    sqlx::query(
        "INSERT INTO sessions (id, user_id, family, refresh_token_hash, access_jti, access_exp, expires_at, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(Uuid::new_v4())
    .bind(user_id)
    .bind(family)
    .bind(next.refresh_hash)
    .bind(next.access_jti)
    .bind(next.access_exp)
    .bind(next.expires_at)
    .bind(created_at)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Refresh::Rotated { user_id })
}

/// The user a refresh token belongs to (any state), to issue the next access token for.
pub async fn refresh_owner(pool: &PgPool, presented_hash: &str) -> Result<Option<Uuid>, DbError> {
    let row = sqlx::query("SELECT user_id FROM sessions WHERE refresh_token_hash = $1")
        .bind(presented_hash)
        .fetch_optional(pool)
        .await?;
    Ok(row.map(|r| r.try_get("user_id")).transpose()?)
}

/// Ends the session whose current access token is `jti`; returns the access tokens to deny.
pub async fn end_session_by_jti(pool: &PgPool, jti: &str) -> Result<Vec<RevokedAccess>, DbError> {
    let rows = sqlx::query(
        "UPDATE sessions SET revoked_at = now(), revoked_reason = 'logout'
         WHERE family = (SELECT family FROM sessions WHERE access_jti = $1 LIMIT 1) AND revoked_at IS NULL
         RETURNING access_jti, access_exp",
    )
    .bind(jti)
    .fetch_all(pool)
    .await?;
    Ok(revoked_list(&rows))
}

/// Whether the access token `jti` belongs to a revoked session (the deny list's source).
pub async fn access_revoked(pool: &PgPool, jti: &str) -> Result<bool, DbError> {
    let revoked =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM sessions WHERE access_jti = $1 AND revoked_at IS NOT NULL)")
            .bind(jti)
            .fetch_one(pool)
            .await?;
    Ok(revoked)
}

/// Every revoked session's access token not yet expired (a minute of leeway, as in
/// `auth::deny_jti`): the whole deny list, for writing it to Redis again.
pub async fn revoked_access_live(pool: &PgPool) -> Result<Vec<RevokedAccess>, DbError> {
    let rows = sqlx::query(
        "SELECT access_jti, access_exp FROM sessions
         WHERE revoked_at IS NOT NULL AND access_exp > now() - interval '60 seconds'",
    )
    .fetch_all(pool)
    .await?;
    Ok(revoked_list(&rows))
}

/// Ends every session of a user (e.g. after a password change); returns the access tokens to deny.
pub async fn end_all_sessions(pool: &PgPool, user_id: Uuid, reason: &str) -> Result<Vec<RevokedAccess>, DbError> {
    let rows = sqlx::query(
        "UPDATE sessions SET revoked_at = now(), revoked_reason = $2
         WHERE user_id = $1 AND revoked_at IS NULL RETURNING access_jti, access_exp",
    )
    .bind(user_id)
    .bind(reason)
    .fetch_all(pool)
    .await?;
    Ok(revoked_list(&rows))
}

/// Number of live sessions (families) of a user.
pub async fn live_sessions(pool: &PgPool, user_id: Uuid, idle_secs: u64) -> Result<i64, DbError> {
    let row = sqlx::query(
        "SELECT count(*) AS n FROM sessions WHERE user_id = $1 AND revoked_at IS NULL AND rotated_at IS NULL
           AND expires_at > now() AND last_used_at > now() - make_interval(secs => $2)",
    )
    .bind(user_id)
    .bind(idle_secs as f64)
    .fetch_one(pool)
    .await?;
    Ok(row.try_get("n")?)
}
