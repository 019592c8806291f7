//! Authentication and authorization: roles and permissions, the password policy and argon2id
//! hashing, HS256 access tokens, opaque refresh and service tokens, TOTP (RFC 6238), the
//! access-token deny-list and the rate limits ([`ratelimit`]).
//!
//! Invariants: only HS256 tokens signed with `secret_key` and carrying exactly the spec's claims
//! (sub, email, role, permissions, iat, exp, jti) are accepted; opaque tokens are stored only
//! as SHA-256 hashes; passwords only as argon2id PHC strings.

pub mod ratelimit;
pub mod sealed;

use crate::cache::{Cache, CacheError};
use crate::settings::AuthSettings;
use argon2::{Argon2, Params, PasswordHasher, PasswordVerifier};
use base64::Engine;
use fred::prelude::*;
use hmac::{Hmac, KeyInit, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Every permission; admins hold all of them.
pub const ALL_PERMISSIONS: &[&str] = &[
    "agent:read",
    "agent:write",
    "task:submit",
    "task:read",
    "task:read:all",
    "task:cancel",
    "topic:produce",
    "user:read",
    "user:write",
    "audit:read",
    "token:read",
    "token:write",
];

pub const ROLES: &[&str] = &["admin", "developer", "viewer", "service"];

/// The permissions of a role, or None for an unknown role.
pub fn role_permissions(role: &str) -> Option<Vec<String>> {
    let p: &[&str] = match role {
        "admin" => ALL_PERMISSIONS,
        "developer" => &["agent:read", "agent:write", "task:submit", "task:read", "task:cancel", "topic:produce"],
        "viewer" => &["agent:read", "task:read"],
        "service" => &["task:submit", "task:read", "topic:produce"],
        _ => return None,
    };
    Some(p.iter().map(|s| s.to_string()).collect())
}

/// The access token's claims: exactly the spec's, nothing else.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    pub sub: String,
    pub email: String,
    pub role: String,
    pub permissions: Vec<String>,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
}

/// Who is calling: a user (from an access token) or a service token.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The user id, or `svc:<token id>` for a service token.
    pub id: String,
    pub email: Option<String>,
    pub role: String,
    pub permissions: Vec<String>,
    /// The access token's id and expiry (unix seconds), for logout.
    pub jti: Option<String>,
    pub exp: Option<i64>,
}

impl Principal {
    pub fn can(&self, permission: &str) -> bool {
        self.permissions.iter().any(|p| p == permission)
    }

    pub fn user_id(&self) -> Option<uuid::Uuid> {
        uuid::Uuid::parse_str(&self.id).ok()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("token issued in the future")]
    NotYetValid,
}

/// Signs an access token for a user; returns the token and its claims.
pub fn issue_access(secret: &str, s: &AuthSettings, user_id: &str, email: &str, role: &str) -> (String, Claims) {
    let now = chrono::Utc::now().timestamp();
    let claims = Claims {
        sub: user_id.to_string(),
        email: email.to_string(),
        role: role.to_string(),
        permissions: role_permissions(role).unwrap_or_default(),
        iat: now,
        exp: now + s.access_token_ttl_secs as i64,
        jti: uuid::Uuid::new_v4().to_string(),
    };
    let token =
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes()))
            .expect("HS256 signing cannot fail");
    (token, claims)
}

/// Verifies an access token: HS256 only, signature, exp, iat not in the future (beyond leeway),
/// exactly the spec's claims.
pub fn verify_access(secret: &str, leeway_secs: u64, token: &str) -> Result<Claims, TokenError> {
    let mut v = Validation::new(Algorithm::HS256);
    v.algorithms = vec![Algorithm::HS256];
    v.leeway = leeway_secs;
    v.validate_exp = true;
    v.validate_nbf = false;
    v.set_required_spec_claims(&["exp", "iat", "sub", "jti"]);
    let data = jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(secret.as_bytes()), &v)
        .map_err(|e| TokenError::Invalid(e.to_string()))?;
    if data.header.alg != Algorithm::HS256 {
        return Err(TokenError::Invalid("algorithm".into()));
    }
    if data.claims.iat > chrono::Utc::now().timestamp() + leeway_secs as i64 {
        return Err(TokenError::NotYetValid);
    }
    Ok(data.claims)
}

/// Verifies an access token signed with `current` or, during a key rotation, with `previous`
/// (empty outside one). Every check but the signature's is the same for both keys.
pub fn verify_access_rotating(
    current: &str,
    previous: &str,
    leeway_secs: u64,
    token: &str,
) -> Result<Claims, TokenError> {
    match verify_access(current, leeway_secs, token) {
        Err(TokenError::Invalid(e)) if !previous.is_empty() => match verify_access(previous, leeway_secs, token) {
            Err(TokenError::Invalid(_)) => Err(TokenError::Invalid(e)),
            r => r,
        },
        r => r,
    }
}

/// A random opaque token with `prefix` (URL-safe base64 of 32 random bytes).
pub fn random_token(prefix: &str) -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    format!("{prefix}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
}

/// The stored form of an opaque token: hex SHA-256.
pub fn token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// Lower-case hex of `b`.
pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The spec's password policy: length, mixed case, digits and special characters.
pub fn check_password_policy(password: &str, min_len: usize) -> Result<(), String> {
    let n = password.chars().count();
    if n < min_len {
        return Err(format!("must be at least {min_len} characters"));
    }
    if n > 256 {
        return Err("must be at most 256 characters".into());
    }
    if !password.chars().any(|c| c.is_lowercase()) || !password.chars().any(|c| c.is_uppercase()) {
        return Err("must contain upper and lower case letters".into());
    }
    if !password.chars().any(|c| c.is_ascii_digit()) {
        return Err("must contain a digit".into());
    }
    if !password.chars().any(|c| !c.is_alphanumeric()) {
        return Err("must contain a special character".into());
    }
    Ok(())
}

/// Hashes a password with argon2id (CPU-heavy: call from a blocking thread).
pub fn hash_password(s: &AuthSettings, password: &str) -> Result<String, String> {
    let params =
        Params::new(s.argon2_memory_kib, s.argon2_iterations, s.argon2_parallelism, None).map_err(|e| e.to_string())?;
    let argon = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    argon.hash_password_with_salt(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| e.to_string())
}

/// Whether `password` matches a stored PHC hash (parameters come from the hash).
pub fn verify_password(hash: &str, password: &str) -> bool {
    Argon2::default().verify_password(password.as_bytes(), hash).is_ok()
}

/// [`hash_password`] on a blocking thread.
pub async fn hash_password_async(s: &AuthSettings, password: &str) -> Result<String, String> {
    let (s, p) = (s.clone(), password.to_string());
    tokio::task::spawn_blocking(move || hash_password(&s, &p)).await.map_err(|e| e.to_string())?
}

/// Whether `password` matches any of `hashes`, on a blocking thread.
pub async fn verify_any_async(hashes: Vec<String>, password: &str) -> bool {
    let p = password.to_string();
    tokio::task::spawn_blocking(move || hashes.iter().any(|h| verify_password(h, &p))).await.unwrap_or(false)
}

// --- Access-token deny-list (Redis) ---
//
// One hash: a field per revoked access token (its jti; the value its expiry + 60 s, unix
// seconds) and the field [`DENY_LIST_WHOLE`], written after each complete rewrite of the list
// (`ingress::deny_sync`). Being one key, it is evicted (the spec's `allkeys-lru`), flushed or
// lost whole, never some tokens without the mark that vouches for the rest. Expired tokens'
// fields are pruned by `deny_sync` (Redis 7.0 has no per-field expiry).

/// The deny list's hash.
pub fn deny_list_key(cache: &Cache) -> String {
    format!("{}auth:deny", cache.prefix())
}

/// The deny list's field that says the list is whole (written after each complete rewrite).
pub const DENY_LIST_WHOLE: &str = "*";

/// Until when a revoked token's field is kept (unix seconds): its expiry and a minute more.
fn deny_until(exp: i64) -> i64 {
    exp + 60
}

/// Deny-lists an access token id until its expiry (unix seconds).
pub async fn deny_jti(cache: &Cache, jti: &str, exp: i64) -> Result<(), CacheError> {
    let _: () = cache.pool().hset(deny_list_key(cache), vec![(jti, deny_until(exp))]).await?;
    Ok(())
}

/// Deny-lists every access token of `revoked` (ended sessions), 512 to a command.
pub async fn deny_all(cache: &Cache, revoked: &[crate::db::users::RevokedAccess]) -> Result<(), CacheError> {
    for chunk in revoked.chunks(512) {
        let fields: Vec<(&str, i64)> = chunk.iter().map(|r| (r.jti.as_str(), deny_until(r.exp.timestamp()))).collect();
        let _: () = cache.pool().hset(deny_list_key(cache), fields).await?;
    }
    Ok(())
}

/// Drops the deny list's fields of tokens expired by `now` (unix seconds); returns how many.
static PRUNE_DENY_LIST: crate::cache::Script = crate::cache::Script::new(
    r#"
local now = tonumber(ARGV[1])
local all = redis.call('HGETALL', KEYS[1])
local gone = {}
for i = 1, #all, 2 do
  local until_ = tonumber(all[i + 1])
  if all[i] ~= ARGV[2] and until_ and until_ < now then gone[#gone + 1] = all[i] end
end
for i = 1, #gone, 1000 do
  redis.call('HDEL', KEYS[1], unpack(gone, i, math.min(i + 999, #gone)))
end
return #gone
"#,
);

/// Drops the fields of expired tokens from the deny list (they are refused as expired anyway).
pub async fn prune_deny_list(cache: &Cache, now: i64) -> Result<u64, CacheError> {
    PRUNE_DENY_LIST
        .run(cache.pool(), vec![deny_list_key(cache)], vec![now.to_string(), DENY_LIST_WHOLE.to_string()])
        .await
}

// --- TOTP (RFC 6238: HMAC-SHA1, 30 s steps, 6 digits) ---

const B32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

pub fn base32_encode(data: &[u8]) -> String {
    let mut out = String::new();
    let (mut buf, mut bits) = (0u32, 0u32);
    for &b in data {
        buf = (buf << 8) | b as u32;
        bits += 8;
        while bits >= 5 {
            out.push(B32[((buf >> (bits - 5)) & 31) as usize] as char);
            bits -= 5;
        }
    }
    if bits > 0 {
        out.push(B32[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

pub fn base32_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut buf, mut bits) = (0u32, 0u32);
    for c in s.trim_end_matches('=').bytes() {
        let v = B32.iter().position(|&x| x == c.to_ascii_uppercase())? as u32;
        buf = (buf << 5) | v;
        bits += 5;
        if bits >= 8 {
            out.push((buf >> (bits - 8)) as u8);
            bits -= 8;
        }
    }
    Some(out)
}

/// A new random TOTP secret (base32, 160 bits).
pub fn new_totp_secret() -> String {
    let mut b = [0u8; 20];
    rand::rng().fill_bytes(&mut b);
    base32_encode(&b)
}

/// The 6-digit TOTP code of `secret` (base32) at unix time `t`.
pub fn totp_code(secret: &str, t: i64) -> Option<String> {
    let key = base32_decode(secret)?;
    let counter = (t / 30) as u64;
    let mut mac = <Hmac<sha1::Sha1> as KeyInit>::new_from_slice(&key).ok()?;
    mac.update(&counter.to_be_bytes());
    let h = mac.finalize().into_bytes();
    let off = (h[h.len() - 1] & 0x0f) as usize;
    let bin = u32::from_be_bytes([h[off] & 0x7f, h[off + 1], h[off + 2], h[off + 3]]);
    Some(format!("{:06}", bin % 1_000_000))
}

/// Whether `code` is valid now (one step of clock skew either way).
pub fn totp_verify(secret: &str, code: &str) -> bool {
    let now = chrono::Utc::now().timestamp();
    let code = code.trim();
    code.len() == 6 && [-30, 0, 30].iter().any(|d| totp_code(secret, now + d).is_some_and(|c| c == code))
}

pub fn otpauth_url(issuer: &str, email: &str, secret: &str) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    };
    format!(
        "otpauth://totp/{}:{}?secret={secret}&issuer={}&algorithm=SHA1&digits=6&period=30",
        enc(issuer),
        enc(email),
        enc(issuer)
    )
}

#[cfg(test)]
mod tests;

/// Why a user could not be created or a password not set.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("{field}: {issue}")]
    Invalid { field: &'static str, issue: String },
    #[error("a user with this email already exists")]
    Exists,
    #[error("{0}")]
    Db(#[from] crate::db::DbError),
    #[error("password hashing failed: {0}")]
    Hash(String),
}

pub fn validate_email(email: &str) -> Result<(), UserError> {
    let ok = email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email.split_once('@').is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty());
    if ok {
        Ok(())
    } else {
        Err(UserError::Invalid { field: "email", issue: "must be an email address".into() })
    }
}

/// Validates and creates a user: email, role, the password policy, argon2id hash.
pub async fn create_user(
    pool: &sqlx::PgPool,
    s: &AuthSettings,
    email: &str,
    password: &str,
    role: &str,
) -> Result<crate::db::users::User, UserError> {
    validate_email(email)?;
    if !ROLES.contains(&role) {
        return Err(UserError::Invalid { field: "role", issue: format!("must be one of {}", ROLES.join(", ")) });
    }
    check_password_policy(password, s.password_min_length)
        .map_err(|issue| UserError::Invalid { field: "password", issue })?;
    let hash = hash_password_async(s, password).await.map_err(UserError::Hash)?;
    match crate::db::users::create(pool, email, &hash, role).await {
        Ok(u) => Ok(u),
        Err(crate::db::DbError::Constraint { constraint, .. }) if constraint.contains("email") => {
            Err(UserError::Exists)
        }
        Err(e) => Err(e.into()),
    }
}

/// Sets a new password: the policy, and none of the last `password_history` passwords.
pub async fn set_password(
    pool: &sqlx::PgPool,
    s: &AuthSettings,
    user_id: uuid::Uuid,
    password: &str,
) -> Result<(), UserError> {
    check_password_policy(password, s.password_min_length)
        .map_err(|issue| UserError::Invalid { field: "new_password", issue })?;
    let history = crate::db::users::password_history(pool, user_id, s.password_history).await?;
    if verify_any_async(history, password).await {
        return Err(UserError::Invalid {
            field: "new_password",
            issue: format!("must not be one of the last {} passwords", s.password_history),
        });
    }
    let hash = hash_password_async(s, password).await.map_err(UserError::Hash)?;
    crate::db::users::set_password(pool, user_id, &hash).await?;
    Ok(())
}
