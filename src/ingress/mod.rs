//! The HTTP ingress (hyper 1): turns HTTP calls into topic records and reads task state.
//!
//! Invariants: every request gets a request id (the caller's valid `X-Request-ID` or a new one)
//! echoed in the `X-Request-ID` header and the envelope; every response is a spec envelope;
//! bodies are bounded by `http.max_body_bytes` and every request by `http.request_timeout_ms`;
//! on shutdown the listener closes and open connections finish their current request.

mod agents;
mod body;
mod envelope;
mod health;
mod openapi;
mod router;
mod tasks;
mod topics;

pub use envelope::{ApiError, HttpResponse};

use crate::app::Deps;
use crate::events::HttpRequestCompleted;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// A bound, not yet serving, ingress.
pub struct Server {
    deps: Arc<Deps>,
    listener: TcpListener,
    /// Serve only /health, /ready, /startup and /metrics (a processor's metrics port).
    probes_only: bool,
}

impl Server {
    pub async fn bind(deps: Arc<Deps>) -> std::io::Result<Server> {
        let addr = format!("{}:{}", deps.settings.http.host, deps.settings.http.port);
        let listener = TcpListener::bind(&addr).await?;
        tracing::info!(addr = %listener.local_addr()?, "ingress listening");
        Ok(Server { deps, listener, probes_only: false })
    }

    /// The probes and metrics of a processor process, on `metrics.host:metrics.port`.
    pub async fn bind_probes(deps: Arc<Deps>) -> std::io::Result<Server> {
        let addr = format!("{}:{}", deps.settings.metrics.host, deps.settings.metrics.port);
        let listener = TcpListener::bind(&addr).await?;
        tracing::info!(addr = %listener.local_addr()?, "probes and metrics listening");
        Ok(Server { deps, listener, probes_only: true })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    /// Serves until `shutdown`, then lets open connections finish (bounded by the request
    /// timeout).
    pub async fn serve(self, shutdown: CancellationToken) {
        let graceful = GracefulShutdown::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let deps = self.deps.clone();
                    let probes_only = self.probes_only;
                    let svc = service_fn(move |req| {
                        let deps = deps.clone();
                        async move {
                            if probes_only && !router::is_probe(req.uri().path()) {
                                let e = ApiError::NotFound(format!("route {}", req.uri().path()));
                                let resp = e.into_response(&request_id(&req));
                                return Ok(resp.map(http_body_util::BodyExt::boxed_unsync));
                            }
                            if let Some(topic) = topics::ndjson_produce_topic(&req) {
                                return Ok::<_, std::convert::Infallible>(handle_stream(deps, req, peer, topic).await);
                            }
                            Ok(handle(deps, req, peer).await.map(http_body_util::BodyExt::boxed_unsync))
                        }
                    });
                    let conn = http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(10))
                        .serve_connection(TokioIo::new(stream), svc);
                    let watched = graceful.watch(conn);
                    tokio::spawn(async move {
                        if let Err(e) = watched.await {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                    });
                }
            }
        }
        drop(self.listener);
        let grace = Duration::from_millis(self.deps.settings.http.request_timeout_ms);
        if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
            tracing::warn!("connections still open after the grace period; closing");
        }
        tracing::info!("ingress stopped");
    }
}

fn request_id(req: &Request<Incoming>) -> String {
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|s| {
            !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        })
        .map(String::from)
        .unwrap_or_else(|| format!("req_{}", uuid::Uuid::new_v4().simple()))
}

/// Everything a route handler gets.
pub struct Ctx {
    pub deps: Arc<Deps>,
    pub request_id: String,
    pub peer: SocketAddr,
}

/// A streaming produce (`application/x-ndjson`): answered with a streaming body.
async fn handle_stream(
    deps: Arc<Deps>,
    req: Request<Incoming>,
    peer: SocketAddr,
    topic: String,
) -> topics::StreamResponse {
    let started = Instant::now();
    let request_id = request_id(&req);
    let route = "/v1/topics/{topic}/records";
    let span = tracing::info_span!("http", request_id = %request_id, method = "POST", route = route);
    let ctx = Ctx { deps, request_id: request_id.clone(), peer };
    let mut resp = topics::produce_stream(ctx, &topic, req).instrument(span.clone()).await;
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let _enter = span.enter();
    HttpRequestCompleted { method: "POST", route, status: resp.status().as_u16(), elapsed: started.elapsed() }.emit();
    resp
}

async fn handle(deps: Arc<Deps>, req: Request<Incoming>, peer: SocketAddr) -> HttpResponse {
    let started = Instant::now();
    let request_id = request_id(&req);
    let method = req.method().clone();
    let timeout = Duration::from_millis(deps.settings.http.request_timeout_ms);
    let (route, found) = router::route(req.method(), req.uri().path());
    let span = tracing::info_span!("http", request_id = %request_id, method = %method, route = route);
    let ctx = Ctx { deps, request_id: request_id.clone(), peer };
    let fut = async {
        match found {
            Ok(handler) => match tokio::time::timeout(timeout, handler.call(&ctx, req)).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    if let ApiError::Internal(detail) = &e {
                        tracing::error!(error = %detail, "request failed");
                    }
                    e.into_response(&ctx.request_id)
                }
                Err(_) => ApiError::Unavailable {
                    service: "ingress",
                    reason: "request timed out".into(),
                    retry_after: ctx.deps.settings.http.retry_after_secs,
                }
                .into_response(&ctx.request_id),
            },
            Err(e) => e.into_response(&ctx.request_id),
        }
    };
    let mut resp = fut.instrument(span.clone()).await;
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let _enter = span.enter();
    HttpRequestCompleted { method: method.as_str(), route, status: resp.status().as_u16(), elapsed: started.elapsed() }
        .emit();
    resp
}
