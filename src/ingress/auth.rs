//! Authentication over HTTP: login, refresh (rotation with reuse detection), logout, password
//! change and TOTP enrolment; and [`authenticate`], which turns a request's bearer token into a
//! [`Principal`]. User creation, the audit log and service tokens are in [`super::admin`].
//!
//! Invariants: a failed login says only "invalid email or password"; every login success and
//! failure, logout, refresh reuse, permission denial and user/token change is audited with
//! actor, IP and request id; tokens are returned once and stored only hashed.

use super::body::{json_object, only_keys, opt_str};
use super::envelope::ok;
use super::{ApiError, Ctx, HttpResponse};
use crate::auth::{self as core, Principal, UserError};
use crate::db::users::{self as repo, AuditEntry, NewSession, Refresh, RevokedAccess, User};
use chrono::{DateTime, Duration, Utc};
use hyper::body::Incoming;
use hyper::header::AUTHORIZATION;
use hyper::{HeaderMap, Request, StatusCode};
use serde_json::{json, Value};

pub(super) const SERVICE_TOKEN_PREFIX: &str = "dcst_";
const REFRESH_TOKEN_PREFIX: &str = "dcrt_";

impl From<UserError> for ApiError {
    fn from(e: UserError) -> Self {
        match e {
            UserError::Invalid { field, issue } => ApiError::validation(field, issue),
            UserError::Exists => ApiError::Conflict(e.to_string()),
            UserError::Db(d) => d.into(),
            UserError::Hash(h) => ApiError::Internal(h),
        }
    }
}

/// Records an audit event; a failure to record is logged, not returned.
pub async fn audit(ctx: &Ctx, actor: Option<&str>, action: &str, outcome: &str, target: Option<&str>, details: Value) {
    let entry = AuditEntry {
        actor,
        action,
        outcome,
        target,
        ip: Some(ctx.peer.ip().to_string()),
        request_id: Some(&ctx.request_id),
        details,
    };
    if let Err(e) = repo::audit(&ctx.deps.pool, &entry).await {
        tracing::error!(error = %crate::error_chain(&e), action, "audit log write failed");
    }
}

pub(super) fn actor(ctx: &Ctx) -> Option<&str> {
    ctx.principal.as_ref().map(|p| p.id.as_str())
}

/// The principal of a request's `Authorization: Bearer` token, before the revocation check
/// (the deny-list key of its `jti`), which the caller makes together with its rate-limit counts.
pub async fn authenticate(ctx: &Ctx, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let value = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("").trim();
    let token = match value.split_once(' ') {
        Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") && !t.trim().is_empty() => t.trim(),
        _ => return Err(ApiError::Unauthorized("a bearer token is required".into())),
    };
    let deps = &ctx.deps;
    if token.starts_with(SERVICE_TOKEN_PREFIX) {
        let st = repo::live_service_token(&deps.pool, &core::token_hash(token))
            .await?
            .ok_or_else(|| ApiError::Unauthorized("invalid or revoked token".into()))?;
        return Ok(Principal {
            id: format!("svc:{}", st.id),
            email: None,
            role: "service".into(),
            permissions: st.permissions,
            jti: None,
            exp: None,
        });
    }
    let s = &deps.settings;
    let claims =
        core::verify_access_rotating(s.secret_key.expose(), s.secret_key_previous.expose(), s.auth.leeway_secs, token)
            .map_err(|_| ApiError::Unauthorized("invalid or expired token".into()))?;
    Ok(Principal {
        id: claims.sub,
        email: Some(claims.email),
        role: claims.role,
        permissions: claims.permissions,
        jti: Some(claims.jti),
        exp: Some(claims.exp),
    })
}

/// The logged-in user behind the request (not a service token).
async fn current_user(ctx: &Ctx) -> Result<User, ApiError> {
    let id = ctx
        .principal
        .as_ref()
        .and_then(Principal::user_id)
        .ok_or_else(|| ApiError::Forbidden("only a user can do this, not a service token".into()))?;
    repo::by_id(&ctx.deps.pool, id).await?.ok_or_else(|| ApiError::Unauthorized("user no longer exists".into()))
}

async fn deny_all(ctx: &Ctx, ended: &[RevokedAccess]) -> Result<(), ApiError> {
    Ok(core::deny_all(&ctx.deps.cache, ended).await?)
}

pub(super) fn required<'a>(map: &'a serde_json::Map<String, Value>, key: &str) -> Result<&'a str, ApiError> {
    opt_str(map, key)?.filter(|s| !s.is_empty()).ok_or_else(|| ApiError::validation(key, "is required"))
}

/// New access + refresh tokens for a user.
struct Issued {
    access: String,
    claims: core::Claims,
    refresh: String,
    refresh_expires: DateTime<Utc>,
}

fn issue(ctx: &Ctx, user: &User) -> Issued {
    let s = &ctx.deps.settings;
    let (access, claims) =
        core::issue_access(s.secret_key.expose(), &s.auth, &user.id.to_string(), &user.email, &user.role);
    let refresh = core::random_token(REFRESH_TOKEN_PREFIX);
    let refresh_expires = Utc::now() + Duration::seconds(s.auth.refresh_token_ttl_secs as i64);
    Issued { access, claims, refresh, refresh_expires }
}

fn token_body(ctx: &Ctx, user: &User, t: &Issued) -> Value {
    json!({
        "access_token": t.access,
        "token_type": "Bearer",
        "expires_in": ctx.deps.settings.auth.access_token_ttl_secs,
        "refresh_token": t.refresh,
        "refresh_expires_in": ctx.deps.settings.auth.refresh_token_ttl_secs,
        "user": {"id": user.id, "email": user.email, "role": user.role, "permissions": t.claims.permissions},
    })
}

fn session<'a>(user: &User, t: &'a Issued, refresh_hash: &'a str) -> NewSession<'a> {
    NewSession {
        user_id: user.id,
        refresh_hash,
        access_jti: &t.claims.jti,
        access_exp: DateTime::from_timestamp(t.claims.exp, 0).unwrap_or_else(Utc::now),
        expires_at: t.refresh_expires,
    }
}

/// Whether `password` is `user`'s. An unknown (or disabled) user's password is verified against
/// a throwaway hash of the same cost, so the time an answer takes does not tell which emails
/// exist.
async fn verify_in_constant_time(ctx: &Ctx, user: Option<&User>, password: &str) -> bool {
    let hash = match user {
        Some(u) => u.password_hash.clone(),
        None => {
            let auth = &ctx.deps.settings.auth;
            let dummy = ctx.deps.dummy_password_hash.get_or_init(|| async {
                core::hash_password_async(auth, "not-a-real-password").await.unwrap_or_default()
            });
            dummy.await.clone()
        }
    };
    core::verify_any_async(vec![hash], password).await && user.is_some()
}

/// `POST /v1/auth/login {email, password, totp?}`.
pub async fn login(ctx: &Ctx, req: Request<Incoming>) -> Result<HttpResponse, ApiError> {
    let deps = &ctx.deps;
    let map = json_object(req, deps.settings.http.max_body_bytes).await?;
    only_keys(&map, &["email", "password", "totp"])?;
    let email = required(&map, "email")?;
    let password = required(&map, "password")?;
    let totp = opt_str(&map, "totp")?;
    let user = repo::by_email(&deps.pool, email).await?.filter(|u| !u.disabled);
    let matches = verify_in_constant_time(ctx, user.as_ref(), password).await;
    let Some(user) = user.filter(|_| matches) else {
        audit(ctx, None, "login", "failure", Some(email), json!({"reason": "bad_credentials"})).await;
        return Err(ApiError::Unauthorized("invalid email or password".into()));
    };
    let uid = user.id.to_string();
    second_factor(ctx, &user, totp, "login", email).await?;
    if password_expired(ctx, &user) {
        audit(ctx, Some(&uid), "login", "failure", Some(email), json!({"reason": "password_expired"})).await;
        return Err(ApiError::Forbidden("password expired; set a new one with POST /v1/auth/password".into()));
    }
    let t = issue(ctx, &user);
    let refresh_hash = core::token_hash(&t.refresh);
    let a = &deps.settings.auth;
    let ended =
        repo::start_session(&deps.pool, &session(&user, &t, &refresh_hash), a.max_sessions, a.session_idle_secs)
            .await?;
    deny_all(ctx, &ended).await?;
    audit(ctx, Some(&uid), "login", "success", Some(email), json!({"sessions_ended": ended.len()})).await;
    Ok(ok(StatusCode::OK, token_body(ctx, &user, &t), "Logged in", &ctx.request_id))
}

/// `POST /v1/auth/refresh {refresh_token}`: rotates the refresh token.
pub async fn refresh(ctx: &Ctx, req: Request<Incoming>) -> Result<HttpResponse, ApiError> {
    let deps = &ctx.deps;
    let map = json_object(req, deps.settings.http.max_body_bytes).await?;
    only_keys(&map, &["refresh_token"])?;
    let presented = core::token_hash(required(&map, "refresh_token")?);
    let invalid = || ApiError::Unauthorized("invalid, expired or revoked refresh token".into());
    let owner = repo::refresh_owner(&deps.pool, &presented).await?.ok_or_else(invalid)?;
    let user = repo::by_id(&deps.pool, owner).await?.filter(|u| !u.disabled).ok_or_else(invalid)?;
    // An expired password gets no new tokens, as it gets no login; the session stays, and ends
    // when the password is changed.
    if password_expired(ctx, &user) {
        let uid = user.id.to_string();
        audit(ctx, Some(&uid), "refresh", "failure", None, json!({"reason": "password_expired"})).await;
        return Err(ApiError::Forbidden("password expired; set a new one with POST /v1/auth/password".into()));
    }
    let t = issue(ctx, &user);
    let next_hash = core::token_hash(&t.refresh);
    match repo::rotate(&deps.pool, &presented, &session(&user, &t, &next_hash), deps.settings.auth.session_idle_secs)
        .await?
    {
        Refresh::Rotated { .. } => {
            Ok(ok(StatusCode::OK, token_body(ctx, &user, &t), "Tokens refreshed", &ctx.request_id))
        }
        Refresh::Reused { user_id, ended } => {
            deny_all(ctx, &ended).await?;
            let uid = user_id.to_string();
            audit(ctx, Some(&uid), "refresh_reuse", "denied", None, json!({"sessions_ended": 1})).await;
            tracing::warn!(user_id = %uid, "refresh token reused; session family revoked");
            Err(invalid())
        }
        Refresh::Invalid => Err(invalid()),
    }
}

/// Whether `user`'s password is older than `auth.password_max_age_days` (the spec's 90 days).
fn password_expired(ctx: &Ctx, user: &repo::User) -> bool {
    let max_age = Duration::days(ctx.deps.settings.auth.password_max_age_days as i64);
    user.password_changed_at + max_age < Utc::now()
}

/// `POST /v1/auth/logout`: ends the caller's session and deny-lists its access token.
pub async fn logout(ctx: &Ctx) -> Result<HttpResponse, ApiError> {
    let p = ctx.principal.as_ref().ok_or_else(|| ApiError::Unauthorized("not logged in".into()))?;
    let (Some(jti), Some(exp)) = (p.jti.as_deref(), p.exp) else {
        return Err(ApiError::validation("authorization", "service tokens have no session; revoke the token"));
    };
    let ended = repo::end_session_by_jti(&ctx.deps.pool, jti).await?;
    deny_all(ctx, &ended).await?;
    core::deny_jti(&ctx.deps.cache, jti, exp).await?;
    audit(ctx, Some(&p.id), "logout", "success", None, json!({})).await;
    Ok(ok(StatusCode::OK, json!({"logged_out": true}), "Logged out", &ctx.request_id))
}

/// The second factor of a user with TOTP enabled: `totp` must be a current code (401 otherwise,
/// audited as a failure of `action`). Nothing to check for a user without.
async fn second_factor(ctx: &Ctx, user: &User, totp: Option<&str>, action: &str, email: &str) -> Result<(), ApiError> {
    if !user.totp_enabled {
        return Ok(());
    }
    let uid = user.id.to_string();
    let secret = totp_seed(ctx, user)?.unwrap_or_default();
    match totp {
        None => {
            audit(ctx, Some(&uid), action, "failure", Some(email), json!({"reason": "totp_required"})).await;
            Err(ApiError::Unauthorized("a TOTP code is required (field `totp`)".into()))
        }
        Some(code) if !core::totp_verify(&secret, code) => {
            audit(ctx, Some(&uid), action, "failure", Some(email), json!({"reason": "bad_totp"})).await;
            Err(ApiError::Unauthorized("invalid email, password or TOTP code".into()))
        }
        Some(_) => Ok(()),
    }
}

/// `POST /v1/auth/password {email, current_password, new_password, totp?}` (works with an
/// expired password, so it takes credentials rather than a token; a user with TOTP enabled
/// gives a current code too, as at login).
pub async fn change_password(ctx: &Ctx, req: Request<Incoming>) -> Result<HttpResponse, ApiError> {
    let deps = &ctx.deps;
    let map = json_object(req, deps.settings.http.max_body_bytes).await?;
    only_keys(&map, &["email", "current_password", "new_password", "totp"])?;
    let email = required(&map, "email")?;
    let current = required(&map, "current_password")?;
    let new = required(&map, "new_password")?;
    let totp = opt_str(&map, "totp")?;
    let user = repo::by_email(&deps.pool, email).await?.filter(|u| !u.disabled);
    let valid = verify_in_constant_time(ctx, user.as_ref(), current).await;
    let Some(user) = user.filter(|_| valid) else {
        audit(ctx, None, "password_change", "failure", Some(email), json!({"reason": "bad_credentials"})).await;
        return Err(ApiError::Unauthorized("invalid email or password".into()));
    };
    let uid = user.id.to_string();
    second_factor(ctx, &user, totp, "password_change", email).await?;
    if let Err(e) = core::set_password(&deps.pool, &deps.settings.auth, user.id, new).await {
        audit(ctx, Some(&uid), "password_change", "failure", Some(email), json!({"reason": e.to_string()})).await;
        return Err(e.into());
    }
    // A new password ends every existing session.
    let ended = repo::end_all_sessions(&deps.pool, user.id, "password_change").await?;
    deny_all(ctx, &ended).await?;
    audit(ctx, Some(&uid), "password_change", "success", Some(email), json!({"sessions_ended": ended.len()})).await;
    Ok(ok(StatusCode::OK, json!({"password_changed": true}), "Password changed", &ctx.request_id))
}

/// The data keys that seal TOTP seeds at rest (`auth::sealed`; checked when settings load).
fn data_keys(ctx: &Ctx) -> core::sealed::DataKeys {
    core::sealed::DataKeys::from_settings(&ctx.deps.settings.auth).expect("auth.data_key checked at load")
}

/// The user's TOTP seed, opened (a seed that does not open is a key misconfiguration: 500).
fn totp_seed(ctx: &Ctx, user: &User) -> Result<Option<String>, ApiError> {
    let Some(stored) = user.totp_secret.as_deref() else { return Ok(None) };
    let opened = data_keys(ctx).open(stored, &user.id.to_string()).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Some(opened.plaintext))
}

/// `POST /v1/auth/totp/enrol`: a new secret (not active until confirmed).
pub async fn totp_enrol(ctx: &Ctx) -> Result<HttpResponse, ApiError> {
    let user = current_user(ctx).await?;
    if user.totp_enabled {
        return Err(ApiError::Conflict("TOTP is already enabled; disable it first".into()));
    }
    let secret = core::new_totp_secret();
    let sealed = data_keys(ctx).seal(&secret, &user.id.to_string());
    repo::set_totp(&ctx.deps.pool, user.id, Some(&sealed), false).await?;
    audit(ctx, actor(ctx), "totp_enrol", "success", Some(&user.email), json!({})).await;
    let url = core::otpauth_url(&ctx.deps.settings.auth.totp_issuer, &user.email, &secret);
    Ok(ok(StatusCode::OK, json!({"secret": secret, "otpauth_url": url}), "TOTP secret issued", &ctx.request_id))
}

async fn totp_code_body(ctx: &Ctx, req: Request<Incoming>) -> Result<String, ApiError> {
    let map = json_object(req, ctx.deps.settings.http.max_body_bytes).await?;
    only_keys(&map, &["code"])?;
    Ok(required(&map, "code")?.to_string())
}

/// `POST /v1/auth/totp/confirm {code}`: enables TOTP.
pub async fn totp_confirm(ctx: &Ctx, req: Request<Incoming>) -> Result<HttpResponse, ApiError> {
    let code = totp_code_body(ctx, req).await?;
    let user = current_user(ctx).await?;
    let secret = totp_seed(ctx, &user)?.ok_or_else(|| ApiError::validation("code", "enrol first"))?;
    if user.totp_enabled {
        return Err(ApiError::Conflict("TOTP is already enabled".into()));
    }
    if !core::totp_verify(&secret, &code) {
        audit(ctx, actor(ctx), "totp_confirm", "failure", Some(&user.email), json!({})).await;
        return Err(ApiError::validation("code", "is not the current code"));
    }
    let sealed = data_keys(ctx).seal(&secret, &user.id.to_string());
    repo::set_totp(&ctx.deps.pool, user.id, Some(&sealed), true).await?;
    audit(ctx, actor(ctx), "totp_confirm", "success", Some(&user.email), json!({})).await;
    Ok(ok(StatusCode::OK, json!({"totp_enabled": true}), "TOTP enabled", &ctx.request_id))
}

/// `POST /v1/auth/totp/disable {code}`.
pub async fn totp_disable(ctx: &Ctx, req: Request<Incoming>) -> Result<HttpResponse, ApiError> {
    let code = totp_code_body(ctx, req).await?;
    let user = current_user(ctx).await?;
    let secret = totp_seed(ctx, &user)?.filter(|_| user.totp_enabled);
    let Some(secret) = secret else { return Err(ApiError::validation("code", "TOTP is not enabled")) };
    if !core::totp_verify(&secret, &code) {
        audit(ctx, actor(ctx), "totp_disable", "failure", Some(&user.email), json!({})).await;
        return Err(ApiError::validation("code", "is not the current code"));
    }
    repo::set_totp(&ctx.deps.pool, user.id, None, false).await?;
    audit(ctx, actor(ctx), "totp_disable", "success", Some(&user.email), json!({})).await;
    Ok(ok(StatusCode::OK, json!({"totp_enabled": false}), "TOTP disabled", &ctx.request_id))
}
