//! Routing: the route table in one place. Matches a method and path to a handler and the
//! route template used as the low-cardinality metrics label.

use super::{agents, health, openapi, tasks, topics, ApiError, Ctx, HttpResponse};
use hyper::body::Incoming;
use hyper::{Method, Request};

/// A matched route with its path parameters.
pub enum Handler {
    Health,
    Ready,
    Startup,
    Metrics,
    SubmitTask,
    GetTask(String),
    CancelTask(String),
    ListAgents,
    CreateAgent,
    GetAgent(String),
    ReplaceAgent(String),
    PatchAgent(String),
    DeleteAgent(String),
    ListTopics,
    ProduceRecords(String),
    GetReceipt(String),
    OpenApi,
}

impl Handler {
    pub async fn call(self, ctx: &Ctx, req: Request<Incoming>) -> Result<HttpResponse, ApiError> {
        match self {
            Handler::Health => health::health(ctx).await,
            Handler::Ready => health::ready(ctx).await,
            Handler::Startup => health::startup(ctx).await,
            Handler::Metrics => health::metrics(ctx).await,
            Handler::SubmitTask => tasks::submit(ctx, req).await,
            Handler::GetTask(id) => tasks::get(ctx, &id).await,
            Handler::CancelTask(id) => tasks::cancel(ctx, &id).await,
            Handler::ListAgents => agents::list(ctx, req.uri().query()).await,
            Handler::CreateAgent => agents::create(ctx, req).await,
            Handler::GetAgent(n) => agents::get(ctx, &n).await,
            Handler::ReplaceAgent(n) => agents::replace(ctx, &n, req).await,
            Handler::PatchAgent(n) => agents::patch(ctx, &n, req).await,
            Handler::DeleteAgent(n) => agents::delete(ctx, &n).await,
            Handler::ListTopics => topics::list(ctx).await,
            Handler::ProduceRecords(t) => topics::produce(ctx, &t, req).await,
            Handler::GetReceipt(id) => topics::get_receipt(ctx, &id).await,
            Handler::OpenApi => openapi::document(ctx),
        }
    }
}

/// Paths served on a processor's probe port.
pub fn is_probe(path: &str) -> bool {
    matches!(path.trim_end_matches('/'), "/health" | "/ready" | "/startup" | "/metrics")
}

/// The route template (for metrics and logs) and the handler or the routing error.
pub fn route(method: &Method, path: &str) -> (&'static str, Result<Handler, ApiError>) {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let m = method.clone();
    let not_allowed = |allow: &str| Err(ApiError::MethodNotAllowed { method: m.to_string(), allow: allow.to_string() });
    let param = |s: &str| percent_decode(s);
    match segments.as_slice() {
        ["health"] => ("/health", if *method == Method::GET { Ok(Handler::Health) } else { not_allowed("GET") }),
        ["ready"] => ("/ready", if *method == Method::GET { Ok(Handler::Ready) } else { not_allowed("GET") }),
        ["startup"] => ("/startup", if *method == Method::GET { Ok(Handler::Startup) } else { not_allowed("GET") }),
        ["metrics"] => ("/metrics", if *method == Method::GET { Ok(Handler::Metrics) } else { not_allowed("GET") }),
        ["v1", "tasks"] => {
            ("/v1/tasks", if *method == Method::POST { Ok(Handler::SubmitTask) } else { not_allowed("POST") })
        }
        ["v1", "tasks", id] => (
            "/v1/tasks/{id}",
            if *method == Method::GET { Ok(Handler::GetTask(param(id))) } else { not_allowed("GET") },
        ),
        ["v1", "tasks", id, "cancel"] => (
            "/v1/tasks/{id}/cancel",
            if *method == Method::POST { Ok(Handler::CancelTask(param(id))) } else { not_allowed("POST") },
        ),
        ["v1", "agents"] => (
            "/v1/agents",
            match *method {
                Method::GET => Ok(Handler::ListAgents),
                Method::POST => Ok(Handler::CreateAgent),
                _ => not_allowed("GET, POST"),
            },
        ),
        ["v1", "agents", name] => (
            "/v1/agents/{name}",
            match *method {
                Method::GET => Ok(Handler::GetAgent(param(name))),
                Method::PUT => Ok(Handler::ReplaceAgent(param(name))),
                Method::PATCH => Ok(Handler::PatchAgent(param(name))),
                Method::DELETE => Ok(Handler::DeleteAgent(param(name))),
                _ => not_allowed("GET, PUT, PATCH, DELETE"),
            },
        ),
        ["v1", "topics"] => {
            ("/v1/topics", if *method == Method::GET { Ok(Handler::ListTopics) } else { not_allowed("GET") })
        }
        ["v1", "topics", topic, "records"] => (
            "/v1/topics/{topic}/records",
            if *method == Method::POST { Ok(Handler::ProduceRecords(param(topic))) } else { not_allowed("POST") },
        ),
        ["v1", "receipts", id] => (
            "/v1/receipts/{id}",
            if *method == Method::GET { Ok(Handler::GetReceipt(param(id))) } else { not_allowed("GET") },
        ),
        ["openapi.json"] => {
            ("/openapi.json", if *method == Method::GET { Ok(Handler::OpenApi) } else { not_allowed("GET") })
        }
        _ => ("unmatched", Err(ApiError::NotFound(format!("route {path}")))),
    }
}

/// Decodes %XX escapes in a path segment (invalid escapes are kept as they are).
pub(super) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_errors() {
        assert!(matches!(route(&Method::GET, "/health"), ("/health", Ok(Handler::Health))));
        assert!(matches!(route(&Method::POST, "/v1/tasks/"), ("/v1/tasks", Ok(Handler::SubmitTask))));
        assert!(matches!(route(&Method::GET, "/v1/agents/a%2Db"), (_, Ok(Handler::GetAgent(n))) if n == "a-b"));
        assert!(matches!(route(&Method::DELETE, "/v1/tasks"), (_, Err(ApiError::MethodNotAllowed { .. }))));
        assert!(matches!(route(&Method::GET, "/nope"), ("unmatched", Err(ApiError::NotFound(_)))));
        assert_eq!(percent_decode("%zz%41"), "%zzA");
        assert_eq!(percent_decode("é%4"), "é%4");
    }
}
