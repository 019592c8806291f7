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
use std::time::Duration;

/// Each dependency check is bounded well inside the spec's 5 s probe timeout.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn health(ctx: &Ctx) -> Result<HttpResponse, ApiError> {
    Ok(ok(StatusCode::OK, json!({"status": "ok"}), "Service is alive", &ctx.request_id))
}

pub async fn startup(ctx: &Ctx) -> Result<HttpResponse, ApiError> {
    // The ingress serves only after its dependencies were connected and migrations applied.
    Ok(ok(StatusCode::OK, json!({"status": "started"}), "Service has started", &ctx.request_id))
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
    let checks =
        json!({"kafka": word(kafka), "schema_registry": word(reg), "postgres": word(pg), "redis": word(redis)});
    if kafka && reg && pg && redis {
        Ok(ok(StatusCode::OK, json!({"status": "ready", "checks": checks}), "Service is ready", &ctx.request_id))
    } else {
        let failing: Vec<&str> = [("kafka", kafka), ("schema_registry", reg), ("postgres", pg), ("redis", redis)]
            .iter()
            .filter(|(_, up)| !up)
            .map(|(n, _)| *n)
            .collect();
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

pub async fn metrics(_ctx: &Ctx) -> Result<HttpResponse, ApiError> {
    let mut r = Response::new(Full::new(Bytes::from(crate::events::encode())));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"));
    Ok(r)
}
