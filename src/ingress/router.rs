//! Routing: the route table in one place. Matches a method and path to a handler and the
//! route template used as the low-cardinality metrics label; [`Handler::policy`] declares what
//! each route needs (a permission, or none) and which rate limit counts it.

use super::{admin, agents, auth, health, openapi, tasks, topics, ApiError, Ctx, HttpResponse};
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
    Login,
    Refresh,
    Logout,
    ChangePassword,
    TotpEnrol,
    TotpConfirm,
    TotpDisable,
    CreateUser,
    ListAudit,
    CreateServiceToken,
    ListServiceTokens,
    RevokeServiceToken(String),
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, no token (probes, metrics, login).
    Public,
    /// Any valid token.
    Authenticated,
    /// A valid token holding this permission.
    Permission(&'static str),
}

/// Which rate limit counts a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateClass {
    /// Not limited (probes, metrics).
    None,
    /// Authentication endpoints: per client IP.
    Auth,
    /// Other API endpoints: per user.
    Api,
    /// Task submission (agent execution): per user, on top of `Api`.
    Submit,
}

impl Handler {
    /// The permission and rate limit of each route: declared here, enforced by the ingress.
    pub fn policy(&self) -> (Access, RateClass) {
        use Access::*;
        match self {
            Handler::Health | Handler::Ready | Handler::Startup | Handler::Metrics => (Public, RateClass::None),
            Handler::Login | Handler::Refresh | Handler::ChangePassword => (Public, RateClass::Auth),
            Handler::Logout | Handler::TotpEnrol | Handler::TotpConfirm | Handler::TotpDisable => {
                (Authenticated, RateClass::Auth)
            }
            Handler::SubmitTask => (Permission("task:submit"), RateClass::Submit),
            Handler::GetTask(_) => (Permission("task:read"), RateClass::Api),
            Handler::CancelTask(_) => (Permission("task:cancel"), RateClass::Api),
            Handler::OpenApi => (Public, RateClass::None),
            Handler::ListTopics | Handler::GetReceipt(_) => (Permission("topic:produce"), RateClass::Api),
            Handler::ProduceRecords(_) => (Permission("topic:produce"), RateClass::Submit),
            Handler::ListAgents | Handler::GetAgent(_) => (Permission("agent:read"), RateClass::Api),
            Handler::CreateAgent | Handler::ReplaceAgent(_) | Handler::PatchAgent(_) | Handler::DeleteAgent(_) => {
                (Permission("agent:write"), RateClass::Api)
            }
            Handler::CreateUser => (Permission("user:write"), RateClass::Api),
            Handler::ListAudit => (Permission("audit:read"), RateClass::Api),
            Handler::ListServiceTokens => (Permission("token:read"), RateClass::Api),
            Handler::CreateServiceToken | Handler::RevokeServiceToken(_) => (Permission("token:write"), RateClass::Api),
        }
    }

    /// Runs the route's handler. Only single submissions, /health and /metrics run inline: every
    /// other handler's future is boxed, so that a request in flight holds the state of its own
    /// route, not that of the largest one (`/ready`'s 14.4 KB when all were inline, held for as
    /// long as a request waits, e.g. thousands of submissions awaiting their acks).
    pub async fn call(self, ctx: &Ctx, req: Request<Incoming>) -> Result<HttpResponse, ApiError> {
        match self {
            Handler::Health => health::health(ctx).await,
            Handler::Ready => Box::pin(health::ready(ctx)).await,
            Handler::Startup => Box::pin(health::startup(ctx)).await,
            Handler::Metrics => health::metrics(ctx).await,
            Handler::SubmitTask => tasks::submit(ctx, req).await,
            Handler::GetTask(id) => Box::pin(tasks::get(ctx, &id)).await,
            Handler::CancelTask(id) => Box::pin(tasks::cancel(ctx, &id)).await,
            Handler::ListAgents => Box::pin(agents::list(ctx, req.uri().query())).await,
            Handler::CreateAgent => Box::pin(agents::create(ctx, req)).await,
            Handler::GetAgent(n) => Box::pin(agents::get(ctx, &n)).await,
            Handler::ReplaceAgent(n) => Box::pin(agents::replace(ctx, &n, req)).await,
            Handler::PatchAgent(n) => Box::pin(agents::patch(ctx, &n, req)).await,
            Handler::DeleteAgent(n) => Box::pin(agents::delete(ctx, &n)).await,
            Handler::ListTopics => Box::pin(topics::list(ctx)).await,
            Handler::ProduceRecords(t) => Box::pin(topics::produce(ctx, &t, req)).await,
            Handler::GetReceipt(id) => Box::pin(topics::get_receipt(ctx, &id)).await,
            Handler::OpenApi => openapi::document(ctx),
            Handler::Login => Box::pin(auth::login(ctx, req)).await,
            Handler::Refresh => Box::pin(auth::refresh(ctx, req)).await,
            Handler::Logout => Box::pin(auth::logout(ctx)).await,
            Handler::ChangePassword => Box::pin(auth::change_password(ctx, req)).await,
            Handler::TotpEnrol => Box::pin(auth::totp_enrol(ctx)).await,
            Handler::TotpConfirm => Box::pin(auth::totp_confirm(ctx, req)).await,
            Handler::TotpDisable => Box::pin(auth::totp_disable(ctx, req)).await,
            Handler::CreateUser => Box::pin(admin::create_user(ctx, req)).await,
            Handler::ListAudit => Box::pin(admin::list_audit(ctx, req.uri().query())).await,
            Handler::CreateServiceToken => Box::pin(admin::create_service_token(ctx, req)).await,
            Handler::ListServiceTokens => Box::pin(admin::list_service_tokens(ctx)).await,
            Handler::RevokeServiceToken(id) => Box::pin(admin::revoke_service_token(ctx, &id)).await,
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
    let post = |h: Handler| if *method == Method::POST { Ok(h) } else { not_allowed("POST") };
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
        ["v1", "auth", "login"] => ("/v1/auth/login", post(Handler::Login)),
        ["v1", "auth", "refresh"] => ("/v1/auth/refresh", post(Handler::Refresh)),
        ["v1", "auth", "logout"] => ("/v1/auth/logout", post(Handler::Logout)),
        ["v1", "auth", "password"] => ("/v1/auth/password", post(Handler::ChangePassword)),
        ["v1", "auth", "totp", "enrol"] => ("/v1/auth/totp/enrol", post(Handler::TotpEnrol)),
        ["v1", "auth", "totp", "confirm"] => ("/v1/auth/totp/confirm", post(Handler::TotpConfirm)),
        ["v1", "auth", "totp", "disable"] => ("/v1/auth/totp/disable", post(Handler::TotpDisable)),
        ["v1", "users"] => ("/v1/users", post(Handler::CreateUser)),
        ["v1", "audit"] => {
            ("/v1/audit", if *method == Method::GET { Ok(Handler::ListAudit) } else { not_allowed("GET") })
        }
        ["v1", "service-tokens"] => (
            "/v1/service-tokens",
            match *method {
                Method::GET => Ok(Handler::ListServiceTokens),
                Method::POST => Ok(Handler::CreateServiceToken),
                _ => not_allowed("GET, POST"),
            },
        ),
        ["v1", "service-tokens", id] => (
            "/v1/service-tokens/{id}",
            if *method == Method::DELETE { Ok(Handler::RevokeServiceToken(param(id))) } else { not_allowed("DELETE") },
        ),
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
        assert!(matches!(route(&Method::POST, "/v1/auth/login"), ("/v1/auth/login", Ok(Handler::Login))));
        assert!(matches!(route(&Method::GET, "/v1/auth/login"), (_, Err(ApiError::MethodNotAllowed { .. }))));
        assert_eq!(Handler::Health.policy(), (Access::Public, RateClass::None));
        assert_eq!(Handler::CreateAgent.policy().0, Access::Permission("agent:write"));
        assert_eq!(Handler::SubmitTask.policy(), (Access::Permission("task:submit"), RateClass::Submit));
        assert_eq!(percent_decode("%zz%41"), "%zzA");
        assert_eq!(percent_decode("é%4"), "é%4");
    }
}
