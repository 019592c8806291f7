//! `GET /openapi.json`: the OpenAPI 3.1 document of the whole ingress, kept as a checked-in
//! file (`src/ingress/openapi.json`) and compiled in.
//!
//! Invariant (tested below): every route of the router's table is in the document, and every
//! documented operation is routed, with the same methods.

use super::{ApiError, Ctx, HttpResponse};
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::Response;

pub const DOCUMENT: &str = include_str!("openapi.json");

pub fn document(_ctx: &Ctx) -> Result<HttpResponse, ApiError> {
    let mut r = Response::new(Full::new(Bytes::from_static(DOCUMENT.as_bytes())));
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::super::router::{route, Handler};
    use super::*;
    use hyper::Method;
    use std::collections::BTreeSet;

    /// Every handler with its method and route template. The match has no wildcard: a new
    /// route does not compile until it is listed here (and so checked against the document).
    fn template(h: &Handler) -> (Method, &'static str) {
        match h {
            Handler::Health => (Method::GET, "/health"),
            Handler::Ready => (Method::GET, "/ready"),
            Handler::Startup => (Method::GET, "/startup"),
            Handler::Metrics => (Method::GET, "/metrics"),
            Handler::SubmitTask => (Method::POST, "/v1/tasks"),
            Handler::GetTask(_) => (Method::GET, "/v1/tasks/{id}"),
            Handler::CancelTask(_) => (Method::POST, "/v1/tasks/{id}/cancel"),
            Handler::ListAgents => (Method::GET, "/v1/agents"),
            Handler::CreateAgent => (Method::POST, "/v1/agents"),
            Handler::GetAgent(_) => (Method::GET, "/v1/agents/{name}"),
            Handler::ReplaceAgent(_) => (Method::PUT, "/v1/agents/{name}"),
            Handler::PatchAgent(_) => (Method::PATCH, "/v1/agents/{name}"),
            Handler::DeleteAgent(_) => (Method::DELETE, "/v1/agents/{name}"),
            Handler::ListTopics => (Method::GET, "/v1/topics"),
            Handler::ProduceRecords(_) => (Method::POST, "/v1/topics/{topic}/records"),
            Handler::GetReceipt(_) => (Method::GET, "/v1/receipts/{id}"),
            Handler::OpenApi => (Method::GET, "/openapi.json"),
            Handler::Login => (Method::POST, "/v1/auth/login"),
            Handler::Refresh => (Method::POST, "/v1/auth/refresh"),
            Handler::Logout => (Method::POST, "/v1/auth/logout"),
            Handler::ChangePassword => (Method::POST, "/v1/auth/password"),
            Handler::TotpEnrol => (Method::POST, "/v1/auth/totp/enrol"),
            Handler::TotpConfirm => (Method::POST, "/v1/auth/totp/confirm"),
            Handler::TotpDisable => (Method::POST, "/v1/auth/totp/disable"),
            Handler::CreateUser => (Method::POST, "/v1/users"),
            Handler::ListAudit => (Method::GET, "/v1/audit"),
            Handler::CreateServiceToken => (Method::POST, "/v1/service-tokens"),
            Handler::ListServiceTokens => (Method::GET, "/v1/service-tokens"),
            Handler::RevokeServiceToken(_) => (Method::DELETE, "/v1/service-tokens/{id}"),
        }
    }

    /// One sample of every handler variant.
    fn all_handlers() -> Vec<Handler> {
        let s = || "x".to_string();
        vec![
            Handler::Health,
            Handler::Ready,
            Handler::Startup,
            Handler::Metrics,
            Handler::SubmitTask,
            Handler::GetTask(s()),
            Handler::CancelTask(s()),
            Handler::ListAgents,
            Handler::CreateAgent,
            Handler::GetAgent(s()),
            Handler::ReplaceAgent(s()),
            Handler::PatchAgent(s()),
            Handler::DeleteAgent(s()),
            Handler::ListTopics,
            Handler::ProduceRecords(s()),
            Handler::GetReceipt(s()),
            Handler::OpenApi,
            Handler::Login,
            Handler::Refresh,
            Handler::Logout,
            Handler::ChangePassword,
            Handler::TotpEnrol,
            Handler::TotpConfirm,
            Handler::TotpDisable,
            Handler::CreateUser,
            Handler::ListAudit,
            Handler::CreateServiceToken,
            Handler::ListServiceTokens,
            Handler::RevokeServiceToken(s()),
        ]
    }

    const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

    #[test]
    fn the_document_and_the_route_table_agree() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).expect("openapi.json is JSON");
        assert_eq!(doc["openapi"].as_str().map(|v| v.starts_with("3.1")), Some(true));
        let paths = doc["paths"].as_object().expect("paths");
        let mut documented = BTreeSet::new();
        for (path, item) in paths {
            for m in METHODS {
                if item.get(m).is_some() {
                    documented.insert((m.to_ascii_uppercase(), path.clone()));
                }
            }
        }
        let routed: BTreeSet<(String, String)> =
            all_handlers().iter().map(|h| template(h)).map(|(m, p)| (m.to_string(), p.to_string())).collect();
        assert_eq!(documented, routed, "documented (left) vs routed (right)");
        // Each documented operation is really routed by the table, to the listed template,
        // and the other methods on its path are refused.
        for (path, item) in paths {
            let concrete = path.replace("{id}", "0").replace("{name}", "n").replace("{topic}", "t");
            for m in METHODS {
                let method: Method = m.to_ascii_uppercase().parse().unwrap();
                let (tpl, found) = route(&method, &concrete);
                if item.get(m).is_some() {
                    let h = found.unwrap_or_else(|e| panic!("{m} {path} is documented but not routed: {e}"));
                    assert_eq!((tpl, template(&h)), (path.as_str(), (method.clone(), path.as_str())));
                } else {
                    assert!(
                        matches!(found, Err(ApiError::MethodNotAllowed { .. })),
                        "{m} {path} is routed but not documented"
                    );
                }
            }
        }
    }
}
