//! Administration over HTTP: user creation, the audit log's listing and service tokens.
//!
//! Invariants: each endpoint needs the permission its route declares (`user:write`,
//! `audit:read`, `token:read`, `token:write`; see the router); every change is audited (actor,
//! IP, request id); a service token is shown once, at creation, and stored only hashed.

use super::auth::{actor, audit, required, SERVICE_TOKEN_PREFIX};
use super::body::{json_object, only_keys};
use super::envelope::ok;
use super::{ApiError, Ctx, HttpResponse};
use crate::auth::{self as core, Principal};
use crate::db::users as repo;
use chrono::{DateTime, Duration, Utc};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::{json, Value};

/// `POST /v1/users {email, password, role}` (admin).
pub async fn create_user(ctx: &Ctx, req: Request<Incoming>) -> Result<HttpResponse, ApiError> {
    let deps = &ctx.deps;
    let map = json_object(req, deps.settings.http.max_body_bytes).await?;
    only_keys(&map, &["email", "password", "role"])?;
    let email = required(&map, "email")?;
    let password = required(&map, "password")?;
    let role = required(&map, "role")?;
    match core::create_user(&deps.pool, &deps.settings.auth, email, password, role).await {
        Ok(user) => {
            let details = json!({"user_id": user.id, "role": user.role});
            audit(ctx, actor(ctx), "user_create", "success", Some(email), details).await;
            Ok(ok(StatusCode::CREATED, json!(user), "User created", &ctx.request_id))
        }
        Err(e) => {
            audit(ctx, actor(ctx), "user_create", "failure", Some(email), json!({"reason": e.to_string()})).await;
            Err(e.into())
        }
    }
}

/// `GET /v1/audit?actor=&action=&since=&page=&per_page=` (admin), newest first.
pub async fn list_audit(ctx: &Ctx, query: Option<&str>) -> Result<HttpResponse, ApiError> {
    let (mut actor_f, mut action, mut since, mut page, mut per_page) = (None, None, None, 1i64, 50i64);
    for (k, v) in super::body::query_pairs(query)? {
        match k.as_str() {
            "actor" => actor_f = Some(v),
            "action" => action = Some(v),
            "since" => {
                let t = DateTime::parse_from_rfc3339(&v)
                    .map_err(|_| ApiError::validation("since", "must be an RFC 3339 timestamp"))?;
                since = Some(t.with_timezone(&Utc));
            }
            "page" => {
                // Bounded as the agents list's is, so the offset cannot overflow.
                page = v
                    .parse()
                    .ok()
                    .filter(|p| (1..=100_000).contains(p))
                    .ok_or_else(|| ApiError::validation("page", "must be from 1 to 100000"))?
            }
            "per_page" => {
                per_page = v
                    .parse()
                    .ok()
                    .filter(|p| (1..=200).contains(p))
                    .ok_or_else(|| ApiError::validation("per_page", "must be from 1 to 200"))?
            }
            other => {
                return Err(ApiError::validation(
                    other,
                    "unknown query parameter; allowed: actor, action, since, page, per_page",
                ))
            }
        }
    }
    let (items, total) =
        repo::audit_list(&ctx.deps.pool, actor_f.as_deref(), action.as_deref(), since, per_page, (page - 1) * per_page)
            .await?;
    let data = json!({"items": items, "page": page, "per_page": per_page, "total": total});
    Ok(ok(StatusCode::OK, data, "Audit events", &ctx.request_id))
}

/// `POST /v1/service-tokens {name, permissions, expires_in_days?}` (admin): the token is shown once.
pub async fn create_service_token(ctx: &Ctx, req: Request<Incoming>) -> Result<HttpResponse, ApiError> {
    let deps = &ctx.deps;
    let map = json_object(req, deps.settings.http.max_body_bytes).await?;
    only_keys(&map, &["name", "permissions", "expires_in_days"])?;
    let name = required(&map, "name")?;
    if name.chars().count() > 200 {
        return Err(ApiError::validation("name", "must be at most 200 characters"));
    }
    let perms: Vec<String> = map
        .get("permissions")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::validation("permissions", "must be an array of permissions"))?
        .iter()
        .map(|p| p.as_str().map(String::from))
        .collect::<Option<_>>()
        .ok_or_else(|| ApiError::validation("permissions", "must be an array of strings"))?;
    if perms.is_empty() {
        return Err(ApiError::validation("permissions", "must not be empty"));
    }
    if let Some(bad) = perms.iter().find(|p| !core::ALL_PERMISSIONS.contains(&p.as_str())) {
        return Err(ApiError::validation("permissions", format!("unknown permission `{bad}`")));
    }
    let expires_at = match map.get("expires_in_days") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let d = v
                .as_i64()
                .filter(|d| (1..=3650).contains(d))
                .ok_or_else(|| ApiError::validation("expires_in_days", "must be an integer from 1 to 3650"))?;
            Some(Utc::now() + Duration::days(d))
        }
    };
    let token = core::random_token(SERVICE_TOKEN_PREFIX);
    let created_by = ctx.principal.as_ref().and_then(Principal::user_id);
    let st =
        repo::create_service_token(&deps.pool, name, &core::token_hash(&token), &perms, created_by, expires_at).await?;
    let target = st.id.to_string();
    audit(ctx, actor(ctx), "service_token_create", "success", Some(&target), json!({"permissions": perms})).await;
    let mut data = json!(st);
    data["token"] = json!(token);
    Ok(ok(StatusCode::CREATED, data, "Service token created", &ctx.request_id))
}

pub async fn list_service_tokens(ctx: &Ctx) -> Result<HttpResponse, ApiError> {
    let items = repo::list_service_tokens(&ctx.deps.pool).await?;
    Ok(ok(StatusCode::OK, json!({"items": items}), "Service tokens", &ctx.request_id))
}

pub async fn revoke_service_token(ctx: &Ctx, id: &str) -> Result<HttpResponse, ApiError> {
    let uuid = uuid::Uuid::parse_str(id).map_err(|_| ApiError::validation("id", "must be a UUID"))?;
    if !repo::revoke_service_token(&ctx.deps.pool, uuid).await? {
        return Err(ApiError::NotFound(format!("service token {id}")));
    }
    audit(ctx, actor(ctx), "service_token_revoke", "success", Some(id), json!({})).await;
    Ok(ok(StatusCode::OK, json!({"revoked": true}), "Service token revoked", &ctx.request_id))
}
