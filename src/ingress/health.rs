//! Probes and metrics: `/health` (the process answers), `/ready` (Kafka, the registry,
//! Postgres and Redis answer, checked concurrently within the probe timeout), `/startup`, and
//! `/metrics` in the Prometheus text format.

use super::envelope::{ok, HttpResponse};
use super::{ApiError, Ctx};
use crate::registry::RegistryClient;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Each dependency check is bounded well inside the spec's 5 s probe timeout.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn health(ctx: &Ctx) -> Result<HttpResponse, ApiError> {
    Ok(ok(StatusCode::OK, json!({"status": "ok"}), "Service is alive", &ctx.request_id))
}

pub async fn startup(ctx: &Ctx) -> Result<HttpResponse, ApiError> {
    // The server runs only after its dependencies were connected and migrations applied; a
    // processor has started once it subscribed.
    let waiting: Vec<String> = ctx
        .deps
        .runners
        .lock()
        .expect("lock")
        .iter()
        .filter(|(_, h)| !h.started.load(Ordering::Relaxed))
        .map(|(n, _)| n.clone())
        .collect();
    if !waiting.is_empty() {
        return Err(ApiError::Unavailable {
            service: "processors",
            reason: format!("starting: {}", waiting.join(", ")),
            retry_after: 1,
        });
    }
    Ok(ok(StatusCode::OK, json!({"status": "started"}), "Service has started", &ctx.request_id))
}

/// Each processor's state: ok, or degraded while a dependency it needs is unavailable.
fn processor_checks(ctx: &Ctx) -> Vec<(String, bool)> {
    ctx.deps
        .runners
        .lock()
        .expect("lock")
        .iter()
        .map(|(n, h)| (n.clone(), h.started.load(Ordering::Relaxed) && !h.degraded.load(Ordering::Relaxed)))
        .collect()
}

async fn bounded(f: impl std::future::Future<Output = bool>) -> bool {
    tokio::time::timeout(CHECK_TIMEOUT, f).await.unwrap_or(false)
}

pub async fn ready(ctx: &Ctx) -> Result<HttpResponse, ApiError> {
    let d = &ctx.deps;
    let registry = RegistryClient::new(&d.settings);
    let (kafka, reg, pg, redis) = tokio::join!(
        bounded(d.producer.reachable(CHECK_TIMEOUT)),
        bounded(registry.reachable()),
        bounded(crate::db::ping(&d.pool)),
        bounded(d.cache.ping()),
    );
    let word = |b: bool| if b { "ok" } else { "unavailable" };
    let mut checks =
        json!({"kafka": word(kafka), "schema_registry": word(reg), "postgres": word(pg), "redis": word(redis)});
    let processors = processor_checks(ctx);
    if !processors.is_empty() {
        let view: serde_json::Map<String, serde_json::Value> =
            processors.iter().map(|(n, up)| (n.clone(), json!(if *up { "ok" } else { "degraded" }))).collect();
        checks["processors"] = serde_json::Value::Object(view);
    }
    if kafka && reg && pg && redis && processors.iter().all(|(_, up)| *up) {
        Ok(ok(StatusCode::OK, json!({"status": "ready", "checks": checks}), "Service is ready", &ctx.request_id))
    } else {
        let mut failing: Vec<&str> = [("kafka", kafka), ("schema_registry", reg), ("postgres", pg), ("redis", redis)]
            .iter()
            .filter(|(_, up)| !up)
            .map(|(n, _)| *n)
            .collect();
        failing.extend(processors.iter().filter(|(_, up)| !up).map(|(n, _)| n.as_str()));
        let mut r = ApiError::Unavailable {
            service: "dependencies",
            reason: format!("not ready: {} unavailable", failing.join(", ")),
            retry_after: d.settings.http.retry_after_secs,
        }
        .into_response(&ctx.request_id);
        // Keep the per-dependency view in the error details.
        let body = json!({
            "success": false,
            "error": "SERVICE_UNAVAILABLE",
            "message": format!("not ready: {} unavailable", failing.join(", ")),
            "details": {"checks": checks},
            "timestamp": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
            "request_id": ctx.request_id,
        });
        *r.body_mut() = Full::new(Bytes::from(body.to_string()));
        Ok(r)
    }
}

pub async fn metrics(ctx: &Ctx) -> Result<HttpResponse, ApiError> {
    let pool = &ctx.deps.pool;
    crate::events::pool_sample("postgres", pool.size(), pool.num_idle() as u32);
    let (size, connected) = ctx.deps.cache.pool_state();
    crate::events::pool_sample("redis", size as u32, size.saturating_sub(connected) as u32);
    let mut r = Response::new(Full::new(Bytes::from(crate::events::encode())));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"));
    Ok(r)
}
