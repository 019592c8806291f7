//! Agents over HTTP: `POST/GET /v1/agents` and `GET/PUT/PATCH/DELETE /v1/agents/{name}`, with
//! a paged list (`page`, `per_page`) and full-text search (`q`).
//!
//! Invariants: an agent's executor config is validated for its executor kind before it is
//! stored; every change invalidates the agent's Redis cache entry.

use super::body::{json_object, only_keys, opt_str};
use super::envelope::ok;
use super::{ApiError, Ctx, HttpResponse};
use crate::db::agents::{self as repo, AgentWrite, DeleteOutcome};
use crate::domain::{validate_agent_name, Agent, AgentStatus, ExecutorKind};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::{json, Map, Value};

const FIELDS: &[&str] = &["name", "executor", "config", "description", "status"];
const MAX_DESCRIPTION: usize = 2000;
const MAX_PER_PAGE: i64 = 100;

/// Loads an agent: process memo, Redis cache, then Postgres (and caches it).
pub async fn load(ctx: &Ctx, name: &str) -> Result<Option<Agent>, ApiError> {
    Ok(repo::load(&ctx.deps.pool, &ctx.deps.cache, name).await?)
}

fn validate_config(executor: ExecutorKind, config: &Value) -> Result<(), ApiError> {
    let cfg = config.as_object().ok_or_else(|| ApiError::validation("config", "must be a JSON object"))?;
    let str_of = |k: &str| cfg.get(k).and_then(Value::as_str);
    match executor {
        ExecutorKind::Builtin => match str_of("mode") {
            Some("echo" | "sleep" | "fail") => Ok(()),
            _ => Err(ApiError::validation("config.mode", "must be one of echo, sleep, fail")),
        },
        ExecutorKind::Http => match str_of("url") {
            Some(u) if u.starts_with("http://") || u.starts_with("https://") => Ok(()),
            _ => Err(ApiError::validation("config.url", "must be an http(s) URL")),
        },
        ExecutorKind::Command => match str_of("program") {
            Some(p) if !p.is_empty() => {
                if cfg.get("args").is_some_and(|a| !a.as_array().is_some_and(|a| a.iter().all(Value::is_string))) {
                    return Err(ApiError::validation("config.args", "must be an array of strings"));
                }
                Ok(())
            }
            _ => Err(ApiError::validation("config.program", "is required")),
        },
    }?;
    if cfg.get("timeout_ms").is_some_and(|t| t.as_u64().is_none_or(|t| t == 0)) {
        return Err(ApiError::validation("config.timeout_ms", "must be a positive integer"));
    }
    Ok(())
}

/// Builds the writable fields from a body, starting from `base` (PATCH) or defaults.
fn write_from(map: &Map<String, Value>, base: Option<&Agent>) -> Result<AgentWrite, ApiError> {
    only_keys(map, FIELDS)?;
    let executor = match opt_str(map, "executor")? {
        Some(e) => ExecutorKind::parse(e)
            .ok_or_else(|| ApiError::validation("executor", "must be one of builtin, http, command"))?,
        None => base.map(|a| a.executor).ok_or_else(|| ApiError::validation("executor", "is required"))?,
    };
    let config = match map.get("config") {
        Some(c) => c.clone(),
        None => base.map(|a| a.config.clone()).unwrap_or_else(|| json!({})),
    };
    validate_config(executor, &config)?;
    let description = match opt_str(map, "description")? {
        Some(d) => d.to_string(),
        None => base.map(|a| a.description.clone()).unwrap_or_default(),
    };
    if description.chars().count() > MAX_DESCRIPTION {
        return Err(ApiError::validation("description", format!("must be at most {MAX_DESCRIPTION} characters")));
    }
    let status = match opt_str(map, "status")? {
        Some(s) => AgentStatus::parse(s).ok_or_else(|| ApiError::validation("status", "must be active or disabled"))?,
        None => base.map(|a| a.status).unwrap_or(AgentStatus::Active),
    };
    Ok(AgentWrite { executor, config, description, status })
}

fn check_body_name(map: &Map<String, Value>, name: &str) -> Result<(), ApiError> {
    match opt_str(map, "name")? {
        Some(n) if n != name => Err(ApiError::validation("name", "does not match the path; agents cannot be renamed")),
        _ => Ok(()),
    }
}

fn agent_json(a: &Agent) -> Value {
    serde_json::to_value(a).expect("agent serializes")
}

async fn audit_change(ctx: &Ctx, action: &str, name: &str) {
    let actor = ctx.principal.as_ref().map(|p| p.id.clone());
    super::auth::audit(ctx, actor.as_deref(), action, "success", Some(name), json!({})).await;
}

pub async fn create(ctx: &Ctx, req: Request<Incoming>) -> Result<HttpResponse, ApiError> {
    let map = json_object(req, ctx.deps.settings.http.max_body_bytes).await?;
    let name = opt_str(&map, "name")?.ok_or_else(|| ApiError::validation("name", "is required"))?;
    validate_agent_name(name).map_err(|m| ApiError::validation("name", m))?;
    let w = write_from(&map, None)?;
    let agent = repo::create(&ctx.deps.pool, name, &w)
        .await?
        .ok_or_else(|| ApiError::Conflict(format!("agent `{name}` already exists")))?;
    let _ = ctx.deps.cache.forget_agent(name).await;
    audit_change(ctx, "agent_create", name).await;
    Ok(ok(StatusCode::CREATED, agent_json(&agent), "Agent created", &ctx.request_id))
}

/// A name no agent can have is not looked up (it may hold what PostgreSQL refuses, like NUL).
fn possible(name: &str) -> Result<(), ApiError> {
    validate_agent_name(name).map_err(|_| ApiError::NotFound(format!("agent `{}`", name.escape_default())))
}

pub async fn get(ctx: &Ctx, name: &str) -> Result<HttpResponse, ApiError> {
    possible(name)?;
    let agent = repo::get(&ctx.deps.pool, name).await?.ok_or_else(|| ApiError::NotFound(format!("agent `{name}`")))?;
    Ok(ok(StatusCode::OK, agent_json(&agent), "Agent", &ctx.request_id))
}

pub async fn replace(ctx: &Ctx, name: &str, req: Request<Incoming>) -> Result<HttpResponse, ApiError> {
    possible(name)?;
    let map = json_object(req, ctx.deps.settings.http.max_body_bytes).await?;
    check_body_name(&map, name)?;
    let w = write_from(&map, None)?;
    let agent =
        repo::update(&ctx.deps.pool, name, &w).await?.ok_or_else(|| ApiError::NotFound(format!("agent `{name}`")))?;
    let _ = ctx.deps.cache.forget_agent(name).await;
    audit_change(ctx, "agent_replace", name).await;
    Ok(ok(StatusCode::OK, agent_json(&agent), "Agent replaced", &ctx.request_id))
}

pub async fn patch(ctx: &Ctx, name: &str, req: Request<Incoming>) -> Result<HttpResponse, ApiError> {
    possible(name)?;
    let map = json_object(req, ctx.deps.settings.http.max_body_bytes).await?;
    check_body_name(&map, name)?;
    let current =
        repo::get(&ctx.deps.pool, name).await?.ok_or_else(|| ApiError::NotFound(format!("agent `{name}`")))?;
    let w = write_from(&map, Some(&current))?;
    let agent =
        repo::update(&ctx.deps.pool, name, &w).await?.ok_or_else(|| ApiError::NotFound(format!("agent `{name}`")))?;
    let _ = ctx.deps.cache.forget_agent(name).await;
    audit_change(ctx, "agent_patch", name).await;
    Ok(ok(StatusCode::OK, agent_json(&agent), "Agent updated", &ctx.request_id))
}

pub async fn delete(ctx: &Ctx, name: &str) -> Result<HttpResponse, ApiError> {
    possible(name)?;
    match repo::delete(&ctx.deps.pool, name).await? {
        DeleteOutcome::Deleted => {
            let _ = ctx.deps.cache.forget_agent(name).await;
            audit_change(ctx, "agent_delete", name).await;
            Ok(ok(StatusCode::OK, json!({"name": name, "deleted": true}), "Agent deleted", &ctx.request_id))
        }
        DeleteOutcome::NotFound => Err(ApiError::NotFound(format!("agent `{name}`"))),
        DeleteOutcome::InUse => Err(ApiError::Conflict(format!("agent `{name}` has tasks; disable it instead"))),
    }
}

/// Parses `q`, `page` (from 1) and `per_page` (1..=100) from a query string.
fn list_params(query: Option<&str>) -> Result<(Option<String>, i64, i64), ApiError> {
    let (mut q, mut page, mut per_page) = (None, 1i64, 20i64);
    for (k, v) in super::body::query_pairs(query)? {
        match k.as_str() {
            "q" => q = Some(v).filter(|s| !s.trim().is_empty()),
            "page" => {
                page = v
                    .parse()
                    .ok()
                    .filter(|p| *p >= 1 && *p <= 100_000)
                    .ok_or_else(|| ApiError::validation("page", "must be an integer >= 1"))?
            }
            "per_page" => {
                per_page = v.parse().ok().filter(|p| (1..=MAX_PER_PAGE).contains(p)).ok_or_else(|| {
                    ApiError::validation("per_page", format!("must be an integer from 1 to {MAX_PER_PAGE}"))
                })?
            }
            other => return Err(ApiError::validation(other, "unknown query parameter; allowed: q, page, per_page")),
        }
    }
    Ok((q, page, per_page))
}

pub async fn list(ctx: &Ctx, query: Option<&str>) -> Result<HttpResponse, ApiError> {
    let (q, page, per_page) = list_params(query)?;
    let (agents, total) = repo::list(&ctx.deps.pool, q.as_deref(), per_page, (page - 1) * per_page).await?;
    let items: Vec<Value> = agents.iter().map(agent_json).collect();
    let data = json!({"items": items, "page": page, "per_page": per_page, "total": total});
    Ok(ok(StatusCode::OK, data, "Agents", &ctx.request_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_checked_per_executor() {
        assert!(validate_config(ExecutorKind::Builtin, &json!({"mode": "echo"})).is_ok());
        assert!(validate_config(ExecutorKind::Builtin, &json!({"mode": "x"})).is_err());
        assert!(validate_config(ExecutorKind::Http, &json!({"url": "ftp://x"})).is_err());
        assert!(validate_config(ExecutorKind::Command, &json!({"program": "cat", "args": [1]})).is_err());
        assert!(validate_config(ExecutorKind::Command, &json!({"program": "cat", "timeout_ms": 0})).is_err());
        assert!(validate_config(ExecutorKind::Http, &json!([])).is_err());
    }

    #[test]
    fn list_params_are_bounded() {
        assert_eq!(
            list_params(Some("q=hello+w%C3%B6rld&page=2&per_page=5")).unwrap(),
            (Some("hello wörld".into()), 2, 5)
        );
        assert!(list_params(Some("per_page=1000")).is_err());
        assert!(list_params(Some("page=0")).is_err());
        assert!(list_params(Some("sort=name")).is_err());
    }
}
