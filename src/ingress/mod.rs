//! The HTTP ingress (hyper 1): turns HTTP calls into topic records and reads task state.
//!
//! Invariants: every request gets a request id (the caller's valid `X-Request-ID` or a new one)
//! echoed in the `X-Request-ID` header and the envelope; every response is a spec envelope;
//! bodies are bounded by `http.max_body_bytes` and every request by `http.request_timeout_ms`;
//! open connections by `http.max_connections` (at the limit nothing more is accepted until one
//! closes), and the wait for a request head, idle keep-alive included, by
//! `http.header_read_timeout_ms`; on shutdown the listener closes and open connections finish
//! their current request.

mod admin;
mod agents;
mod auth;
mod body;
pub mod deny_sync;
mod envelope;
mod health;
mod idempotency;
mod openapi;
mod probes;
pub mod producer_watch;
mod router;
mod spans;
mod tasks;
mod topics;

pub use envelope::{ApiError, HttpResponse};
pub use probes::Probes;
pub use router::{Access, RateClass};

use crate::app::Deps;
use crate::events::{HttpConnection, HttpConnectionLimitReached, HttpRequestCompleted};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use spans::{begin, end_server_span};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// A bound, not yet serving, ingress.
pub struct Server {
    deps: Arc<Deps>,
    listener: TcpListener,
    /// Serve only /health, /ready, /startup and /metrics (a processor's metrics port).
    probes_only: bool,
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// Connections served at once.
    max_connections: usize,
}

/// How often reaching the connection limit is logged at most (each time is counted).
const LIMIT_LOG_EVERY: Duration = Duration::from_secs(60);

/// A connection's place under its listener's limit: the permit, and the open-connections gauge
/// while it is held.
struct Slot {
    _permit: OwnedSemaphorePermit,
    listener: &'static str,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit, listener: &'static str) -> Slot {
        HttpConnection { listener, opened: true }.emit();
        Slot { _permit: permit, listener }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        HttpConnection { listener: self.listener, opened: false }.emit();
    }
}

/// The rustls acceptor for `http.tls_cert_path` / `http.tls_key_path` (None when unset).
fn tls_acceptor(s: &crate::settings::HttpSettings) -> std::io::Result<Option<tokio_rustls::TlsAcceptor>> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    if s.tls_cert_path.is_empty() {
        return Ok(None);
    }
    let bad = |what: &str, e: &dyn std::fmt::Display| std::io::Error::other(format!("tls {what}: {e}"));
    let certs = CertificateDer::pem_file_iter(&s.tls_cert_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad(&s.tls_cert_path, &e))?;
    let key = PrivateKeyDer::from_pem_file(&s.tls_key_path).map_err(|e| bad(&s.tls_key_path, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        // The spec's "TLS 1.3 minimum": a TLS 1.2 client is refused in the handshake.
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| bad("protocols", &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad("certificate", &e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
}

impl Server {
    pub async fn bind(deps: Arc<Deps>) -> std::io::Result<Server> {
        let tls = tls_acceptor(&deps.settings.http)?;
        let addr = format!("{}:{}", deps.settings.http.host, deps.settings.http.port);
        let listener = TcpListener::bind(&addr).await?;
        tracing::info!(addr = %listener.local_addr()?, tls = tls.is_some(), "ingress listening");
        let max_connections = deps.settings.http.max_connections;
        Ok(Server { deps, listener, tls, probes_only: false, max_connections })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    /// Serves until `shutdown`, then lets open connections finish (bounded by the request
    /// timeout).
    pub async fn serve(self, shutdown: CancellationToken) {
        let graceful = GracefulShutdown::new();
        let kind = if self.probes_only { "probes" } else { "api" };
        let limit = Arc::new(Semaphore::new(self.max_connections));
        let header_read_timeout = Duration::from_millis(self.deps.settings.http.header_read_timeout_ms);
        let mut logged: Option<Instant> = None;
        loop {
            // A place for the next connection first: at the limit, nothing is accepted (the
            // kernel's listen backlog holds new connections) until an open one closes.
            let permit = match limit.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    let log = logged.is_none_or(|t| t.elapsed() >= LIMIT_LOG_EVERY);
                    if log {
                        logged = Some(Instant::now());
                    }
                    HttpConnectionLimitReached { listener: kind, limit: self.max_connections, log }.emit();
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        p = limit.clone().acquire_owned() => p.expect("the connection semaphore is never closed"),
                    }
                }
            };
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
                    let watcher = graceful.watcher();
                    let tls = self.tls.clone();
                    let slot = Slot::new(permit, kind);
                    tokio::spawn(async move {
                        let _slot = slot;
                        let mut builder = http1::Builder::new();
                        builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(header_read_timeout);
                        let served = match tls {
                            None => watcher.watch(builder.serve_connection(TokioIo::new(stream), svc)).await,
                            Some(acceptor) => {
                                match tokio::time::timeout(header_read_timeout, acceptor.accept(stream)).await {
                                    Ok(Ok(s)) => watcher.watch(builder.serve_connection(TokioIo::new(s), svc)).await,
                                    Ok(Err(e)) => {
                                        tracing::debug!(error = %e, peer = %peer, "TLS handshake failed");
                                        return;
                                    }
                                    Err(_) => return,
                                }
                            }
                        };
                        if let Err(e) = served {
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
    /// The authenticated caller (None on public routes).
    pub principal: Option<crate::auth::Principal>,
    /// The request's server span, parent of the spans a handler starts (e.g. a produce).
    pub trace: crate::otlp::Parent,
}

impl Ctx {
    /// Redis failing the ingress's own bookkeeping (receipts): 503.
    pub fn redis_down(&self, e: impl std::fmt::Display) -> ApiError {
        let retry_after = self.deps.settings.http.retry_after_secs;
        ApiError::Unavailable { service: "redis", reason: e.to_string(), retry_after }
    }
}

/// Authenticates, authorizes and rate-limits a request per its route's policy; returns the
/// most restrictive rate-limit decision (for the `RateLimit-*` headers).
async fn admit(
    ctx: &mut Ctx,
    handler: &router::Handler,
    req: &Request<Incoming>,
    span: &tracing::Span,
) -> Result<Option<crate::auth::ratelimit::Decision>, ApiError> {
    use crate::auth::ratelimit::{guarded_hits, hit, Admission, Decision, Guard};
    let (access, class) = handler.policy();
    let rl = ctx.deps.settings.rate_limits.clone();
    let mut shown: Option<Decision> = None;
    let mut count = |d: Decision| -> Result<(), ApiError> {
        if !d.allowed {
            return Err(ApiError::RateLimited(d));
        }
        if shown.is_none_or(|s| d.remaining < s.remaining) {
            shown = Some(d);
        }
        Ok(())
    };
    if rl.enabled && class == RateClass::Auth {
        let bucket = format!("auth:ip:{}", ctx.peer.ip());
        count(hit(&ctx.deps.cache, &bucket, rl.auth_per_window, rl.window_secs).await?)?;
    }
    if access == Access::Public {
        return Ok(shown);
    }
    let principal = auth::authenticate(ctx, req.headers()).await?;
    span.record("user_id", principal.id.as_str());
    let permitted = match access {
        Access::Permission(p) => principal.can(p),
        _ => true,
    };
    // The revocation check and the rate-limit counts are one Redis script (one round trip); a
    // revoked token is refused before anything is counted, and a forbidden request is not counted.
    let counted = permitted && rl.enabled && matches!(class, RateClass::Api | RateClass::Submit);
    let mut buckets = Vec::new();
    if counted {
        buckets.push((format!("api:user:{}", principal.id), rl.api_per_window));
        if class == RateClass::Submit {
            buckets.push((format!("submit:user:{}", principal.id), rl.submit_per_window));
        }
    }
    // The deny list's mark vouches that Redis holds the whole list; without it (Redis restarted
    // or flushed, or the list evicted, until the next rewrite) Postgres answers.
    let cache = &ctx.deps.cache;
    let guard = principal.jti.as_deref().map(|jti| Guard {
        hash: crate::auth::deny_list_key(cache),
        field: jti.to_string(),
        voucher: crate::auth::DENY_LIST_WHOLE,
    });
    let revoked = || ApiError::Unauthorized("token revoked".into());
    let decisions = match guarded_hits(cache, guard, &buckets, rl.window_secs).await? {
        Admission::Guarded => return Err(revoked()),
        Admission::Counted { decisions, vouched: true } => decisions,
        Admission::Counted { decisions, vouched: false } => {
            let jti = principal.jti.as_deref().unwrap_or_default();
            if crate::db::users::access_revoked(&ctx.deps.pool, jti).await? {
                return Err(revoked());
            }
            decisions
        }
    };
    if let Access::Permission(p) = access {
        if !permitted {
            ctx.principal = Some(principal);
            let details =
                serde_json::json!({"permission": p, "path": req.uri().path(), "method": req.method().as_str()});
            let actor = ctx.principal.as_ref().map(|p| p.id.clone());
            auth::audit(ctx, actor.as_deref(), "permission_denied", "denied", Some(req.uri().path()), details).await;
            return Err(ApiError::Forbidden(format!("permission `{p}` is required")));
        }
    }
    for decision in decisions {
        count(decision)?;
    }
    ctx.principal = Some(principal);
    Ok(shown)
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
    let (span, server, mut ctx) = begin(deps, &req, peer, route, &request_id);
    // Streams pass the same authentication, permission and rate limits as every route.
    let handler = router::Handler::ProduceRecords(topic.clone());
    let mut resp = match admit(&mut ctx, &handler, &req, &span).instrument(span.clone()).await {
        Ok(_) => topics::produce_stream(ctx, &topic, req).instrument(span.clone()).await,
        Err(e) => e.into_response(&request_id).map(http_body_util::BodyExt::boxed_unsync),
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    // The span ends when the stream is taken; the body goes on streaming.
    end_server_span(server, resp.status().as_u16(), None);
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
    let (span, server, mut ctx) = begin(deps, &req, peer, route, &request_id);
    let fut = async {
        let admitted = match &found {
            Ok(handler) => admit(&mut ctx, handler, &req, &span).await.map(Some),
            Err(_) => Ok(None),
        };
        let limits = match admitted {
            Ok(l) => l.flatten(),
            Err(e) => return e.into_response(&ctx.request_id),
        };
        let ctx = &ctx;
        let mut resp = match found {
            Ok(handler) => match tokio::time::timeout(timeout, handler.call(ctx, req)).await {
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
        };
        // A handler's own refusal (a produce quota's 429) carries its quota's headers: kept.
        if let Some(d) = limits.as_ref().filter(|_| !resp.headers().contains_key("ratelimit-limit")) {
            envelope::rate_limit_headers(&mut resp, d);
        }
        resp
    };
    let mut resp = fut.instrument(span.clone()).await;
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    end_server_span(server, resp.status().as_u16(), ctx.principal.as_ref());
    let _enter = span.enter();
    HttpRequestCompleted { method: method.as_str(), route, status: resp.status().as_u16(), elapsed: started.elapsed() }
        .emit();
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<F, Fut>(_: F) -> usize
    where
        F: Fn(Arc<Deps>, Request<Incoming>, SocketAddr) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    fn route_future_size<'a, F, Fut>(_: F) -> usize
    where
        F: Fn(&'a Ctx, Request<Incoming>) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    fn admission_future_size<'a, F, Fut>(_: F) -> usize
    where
        F: Fn(&'a mut Ctx, &'a router::Handler, &'a Request<Incoming>, &'a tracing::Span) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// A request in flight holds its whole `handle` future (in hyper's connection task) for as
    /// long as it waits, e.g. for its record's acknowledgement. That future must be set by the
    /// steps every request takes (admission, then a submission), not by the largest route
    /// (`Handler::call` boxes the others); and a submission's state must not carry the futures
    /// of its rare steps (Redis commands' futures are 5-9 KB each; those steps are boxed).
    /// Before either was so: 16,720 bytes for `handle`, 7,296 for a submission, 6,592 for the
    /// admission. (The admission stays inline: boxed, a 6.6 KB allocation per request cost more
    /// than it saved, in throughput and in peak RSS.)
    #[test]
    fn a_submission_in_flight_holds_little_more_than_its_own_state() {
        let (whole, submit, admit) =
            (future_size(handle), route_future_size(tasks::submit), admission_future_size(admit));
        assert!(submit <= 4096, "a submission's future is {submit} bytes");
        assert!(
            whole <= submit.max(admit) + 2048,
            "handle's future is {whole} bytes, a submission's {submit}, the admission's {admit}"
        );
    }
}
