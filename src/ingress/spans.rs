//! A request's spans: its log span (request id, route, user, trace id on every log line) and its
//! OTLP SERVER span, whose context is the parent of the spans its handler starts.
//!
//! Invariant: probes and scrapes are not traced; every other request's server span ends with its
//! response status (5xx is an error).

use super::{router, Ctx};
use crate::app::Deps;
use hyper::body::Incoming;
use hyper::Request;
use std::net::SocketAddr;
use std::sync::Arc;

/// The SERVER span of a request: parent is the caller's `traceparent` (else a new trace). Probes
/// and scrapes (every few seconds from Kubernetes and Prometheus) are not traced.
fn server_span(deps: &Deps, req: &Request<Incoming>, route: &str, request_id: &str) -> crate::otlp::Span {
    if router::is_probe(req.uri().path()) {
        return crate::otlp::Span::none();
    }
    let received = req.headers().get("traceparent").and_then(|v| v.to_str().ok());
    let method = req.method().as_str();
    let mut span = deps.tracer.remote(received).start(format!("{method} {route}"), crate::otlp::SpanKind::Server);
    span.set("http.request.method", method);
    span.set("http.route", route);
    span.set("url.path", req.uri().path());
    span.set("devcycle.request_id", request_id);
    span
}

/// What every request starts with: its log span, its server span (OTLP) and its context.
pub(super) fn begin(
    deps: Arc<Deps>,
    req: &Request<Incoming>,
    peer: SocketAddr,
    route: &str,
    request_id: &str,
) -> (tracing::Span, crate::otlp::Span, Ctx) {
    let span = tracing::info_span!(
        "http",
        request_id = %request_id,
        method = %req.method(),
        route = route,
        user_id = tracing::field::Empty,
        trace_id = tracing::field::Empty
    );
    let server = server_span(&deps, req, route, request_id);
    record_trace_id(&span, &server);
    let ctx = Ctx { deps, request_id: request_id.to_string(), peer, principal: None, trace: server.context() };
    (span, server, ctx)
}

/// Puts the trace id on the request's log lines (the caller's, or with export on, the server
/// span's), so logs and traces meet.
fn record_trace_id(log_span: &tracing::Span, server: &crate::otlp::Span) {
    if let Some(c) = server.traceparent().as_deref().and_then(crate::otlp::TraceContext::parse) {
        log_span.record("trace_id", c.trace_id_hex());
    }
}

/// Completes a request's server span with the response status (5xx is an error).
pub(super) fn end_server_span(mut span: crate::otlp::Span, status: u16, principal: Option<&crate::auth::Principal>) {
    span.set("http.response.status_code", status);
    if let Some(p) = principal {
        span.set("enduser.id", p.id.as_str());
    }
    if status >= 500 {
        span.error(format!("HTTP {status}"));
    }
    span.end();
}
