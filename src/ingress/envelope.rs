//! The spec's response envelopes and the ingress's error type.
//!
//! Success: `{success: true, data, message, timestamp, request_id}`.
//! Error: `{success: false, error: CODE, message, details, timestamp, request_id}`.
//! Invariant: every response body the ingress writes is one of these two shapes.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Response, StatusCode};
use serde_json::{json, Value};

pub type HttpResponse = Response<Full<Bytes>>;

fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

fn json_response<T: serde::Serialize>(status: StatusCode, body: &T) -> HttpResponse {
    raw_json(status, serde_json::to_vec(body).expect("a response body serializes"))
}

/// A JSON body already serialized (a stored answer replayed byte for byte).
pub fn raw_json(status: StatusCode, body: impl Into<Bytes>) -> HttpResponse {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// A success envelope.
pub fn ok(status: StatusCode, data: Value, message: &str, request_id: &str) -> HttpResponse {
    ok_with(status, &data, message, request_id)
}

/// A success envelope around any serializable `data`, written without building a JSON tree.
pub fn ok_with<T: serde::Serialize>(status: StatusCode, data: &T, message: &str, request_id: &str) -> HttpResponse {
    #[derive(serde::Serialize)]
    struct Success<'a, T> {
        success: bool,
        data: &'a T,
        message: &'a str,
        timestamp: String,
        request_id: &'a str,
    }
    json_response(status, &Success { success: true, data, message, timestamp: now(), request_id })
}

/// An error envelope with any status, code and serializable `details` ([`ApiError`]'s, or an
/// answer that is not a plain error, such as a gateway's 207 with its record lines).
pub fn error_with<T: serde::Serialize>(
    status: StatusCode,
    code: &str,
    message: &str,
    details: &T,
    request_id: &str,
) -> HttpResponse {
    #[derive(serde::Serialize)]
    struct Failure<'a, T> {
        success: bool,
        error: &'a str,
        message: &'a str,
        details: &'a T,
        timestamp: String,
        request_id: &'a str,
    }
    json_response(status, &Failure { success: false, error: code, message, details, timestamp: now(), request_id })
}

/// Every way a request can fail, with its status and error code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("{field}: {issue}")]
    Validation { field: String, issue: String },
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("rate limit of {} requests exceeded; retry in {} s", .0.limit, .0.reset_secs)]
    RateLimited(crate::auth::ratelimit::Decision),
    /// A per-user produce quota (`unit` per second) has no room for the request.
    #[error("produce quota of {} {unit}/s exceeded; retry in {} s", .decision.limit, .decision.reset_secs)]
    QuotaExceeded { unit: &'static str, decision: crate::auth::ratelimit::Decision },
    #[error("{0} not found")]
    NotFound(String),
    #[error("method {method} not allowed; allowed: {allow}")]
    MethodNotAllowed { method: String, allow: String },
    #[error("request body exceeds {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// The request's Kafka record (as encoded) is over the producer's limit.
    #[error("the request's record exceeds Kafka's limit of {limit} bytes")]
    RecordTooLarge { limit: usize },
    #[error("unsupported content type {0:?}; send application/json")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{service} unavailable: {reason}")]
    Unavailable { service: &'static str, reason: String, retry_after: u64 },
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn validation(field: &str, issue: impl Into<String>) -> Self {
        ApiError::Validation { field: field.into(), issue: issue.into() }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_) => StatusCode::BAD_REQUEST,
            ApiError::Validation { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::RateLimited(_) | ApiError::QuotaExceeded { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge { .. } | ApiError::RecordTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MalformedJson(_) => "MALFORMED_JSON",
            ApiError::Validation { .. } => "VALIDATION_ERROR",
            ApiError::Unauthorized(_) => "UNAUTHORIZED",
            ApiError::Forbidden(_) => "FORBIDDEN",
            ApiError::RateLimited(_) | ApiError::QuotaExceeded { .. } => "RATE_LIMITED",
            ApiError::NotFound(_) => "NOT_FOUND",
            ApiError::MethodNotAllowed { .. } => "METHOD_NOT_ALLOWED",
            ApiError::PayloadTooLarge { .. } | ApiError::RecordTooLarge { .. } => "PAYLOAD_TOO_LARGE",
            ApiError::UnsupportedMediaType(_) => "UNSUPPORTED_MEDIA_TYPE",
            ApiError::Conflict(_) => "CONFLICT",
            ApiError::Unavailable { .. } => "SERVICE_UNAVAILABLE",
            ApiError::Internal(_) => "INTERNAL_ERROR",
        }
    }

    fn details(&self) -> Value {
        match self {
            ApiError::Validation { field, issue } => json!({"field": field, "issue": issue}),
            ApiError::MethodNotAllowed { allow, .. } => json!({"allow": allow}),
            ApiError::PayloadTooLarge { limit } | ApiError::RecordTooLarge { limit } => json!({"limit_bytes": limit}),
            ApiError::RateLimited(d) => json!({"limit": d.limit, "retry_after_seconds": d.reset_secs}),
            ApiError::QuotaExceeded { unit, decision: d } => {
                json!({"limit": d.limit, "unit": format!("{unit}/s"), "retry_after_seconds": d.reset_secs})
            }
            ApiError::Unavailable { service, retry_after, .. } => {
                json!({"service": service, "retry_after_seconds": retry_after})
            }
            _ => json!({}),
        }
    }

    /// The spec's error envelope, with Allow / Retry-After headers where they apply.
    pub fn into_response(self, request_id: &str) -> HttpResponse {
        let message = match &self {
            // Internal details stay in the log, not in the response.
            ApiError::Internal(_) => "internal error".to_string(),
            other => other.to_string(),
        };
        let mut r = error_with(self.status(), self.code(), &message, &self.details(), request_id);
        match &self {
            ApiError::MethodNotAllowed { allow, .. } => {
                if let Ok(v) = HeaderValue::from_str(allow) {
                    r.headers_mut().insert(hyper::header::ALLOW, v);
                }
            }
            ApiError::Unavailable { retry_after, .. } => {
                r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            ApiError::Unauthorized(_) => {
                r.headers_mut()
                    .insert(hyper::header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"devcycle\""));
            }
            ApiError::RateLimited(d) | ApiError::QuotaExceeded { decision: d, .. } => {
                r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(d.reset_secs));
                rate_limit_headers(&mut r, d);
            }
            _ => {}
        }
        r
    }
}

/// The `RateLimit-*` headers of a counted request.
pub fn rate_limit_headers(r: &mut HttpResponse, d: &crate::auth::ratelimit::Decision) {
    let h = r.headers_mut();
    h.insert("ratelimit-limit", HeaderValue::from(d.limit));
    h.insert("ratelimit-remaining", HeaderValue::from(d.remaining));
    h.insert("ratelimit-reset", HeaderValue::from(d.reset_secs));
}

impl From<crate::db::DbError> for ApiError {
    fn from(e: crate::db::DbError) -> Self {
        if e.is_unavailable() {
            ApiError::Unavailable { service: "postgres", reason: e.to_string(), retry_after: 5 }
        } else {
            ApiError::Internal(crate::error_chain(&e))
        }
    }
}

impl From<crate::cache::CacheError> for ApiError {
    fn from(e: crate::cache::CacheError) -> Self {
        ApiError::Unavailable { service: "redis", reason: e.to_string(), retry_after: 5 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::ratelimit::Decision;
    use http_body_util::BodyExt;

    async fn body(r: HttpResponse) -> Value {
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn header<'a>(r: &'a HttpResponse, name: &str) -> Option<&'a str> {
        r.headers().get(name).map(|v| v.to_str().unwrap())
    }

    /// Every error maps to its own status and code, in the spec's error envelope, with the
    /// request id and a millisecond UTC timestamp.
    #[tokio::test]
    async fn every_error_has_its_status_code_and_the_error_envelope() {
        let d = Decision { allowed: false, limit: 100, remaining: 0, reset_secs: 42 };
        let cases = [
            (ApiError::MalformedJson("eof".into()), 400, "MALFORMED_JSON"),
            (ApiError::validation("agent", "required"), 422, "VALIDATION_ERROR"),
            (ApiError::Unauthorized("no token".into()), 401, "UNAUTHORIZED"),
            (ApiError::Forbidden("not yours".into()), 403, "FORBIDDEN"),
            (ApiError::RateLimited(d), 429, "RATE_LIMITED"),
            (ApiError::QuotaExceeded { unit: "records", decision: d }, 429, "RATE_LIMITED"),
            (ApiError::NotFound("task".into()), 404, "NOT_FOUND"),
            (ApiError::MethodNotAllowed { method: "PUT".into(), allow: "GET, POST".into() }, 405, "METHOD_NOT_ALLOWED"),
            (ApiError::PayloadTooLarge { limit: 1024 }, 413, "PAYLOAD_TOO_LARGE"),
            (ApiError::RecordTooLarge { limit: 1024 }, 413, "PAYLOAD_TOO_LARGE"),
            (ApiError::UnsupportedMediaType("text/plain".into()), 415, "UNSUPPORTED_MEDIA_TYPE"),
            (ApiError::Conflict("exists".into()), 409, "CONFLICT"),
            (
                ApiError::Unavailable { service: "kafka", reason: "down".into(), retry_after: 7 },
                503,
                "SERVICE_UNAVAILABLE",
            ),
            (ApiError::Internal("pool closed".into()), 500, "INTERNAL_ERROR"),
        ];
        for (err, status, code) in cases {
            let message = err.to_string();
            let r = err.into_response("req-1");
            assert_eq!(r.status().as_u16(), status, "{code}");
            assert_eq!(header(&r, "content-type"), Some("application/json"));
            let b = body(r).await;
            assert_eq!(b["success"], false, "{b}");
            assert_eq!(b["error"], code, "{b}");
            assert_eq!(b["request_id"], "req-1", "{b}");
            assert!(b["details"].is_object(), "{b}");
            let ts = b["timestamp"].as_str().unwrap();
            assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok() && ts.ends_with('Z') && ts.len() == 24, "{ts}");
            if code != "INTERNAL_ERROR" {
                assert_eq!(b["message"], message, "{b}");
            }
        }
    }

    /// An internal error's cause (which may name hosts, queries or paths) stays in the log.
    #[tokio::test]
    async fn an_internal_error_does_not_show_its_cause() {
        let b = body(ApiError::Internal("password authentication failed for user devcycle".into()).into_response("r"))
            .await;
        assert_eq!(b["message"], "internal error");
        assert!(!b.to_string().contains("password"), "{b}");
        assert_eq!(b["details"], json!({}));
    }

    /// The headers a client acts on: Allow, Retry-After, WWW-Authenticate and RateLimit-*.
    #[tokio::test]
    async fn errors_carry_the_headers_a_client_acts_on() {
        let r = ApiError::MethodNotAllowed { method: "PUT".into(), allow: "GET, POST".into() }.into_response("r");
        assert_eq!(header(&r, "allow"), Some("GET, POST"));
        assert_eq!(body(r).await["details"], json!({"allow": "GET, POST"}));

        let r = ApiError::Unavailable { service: "redis", reason: "refused".into(), retry_after: 5 }.into_response("r");
        assert_eq!(header(&r, "retry-after"), Some("5"));
        assert_eq!(body(r).await["details"], json!({"service": "redis", "retry_after_seconds": 5}));

        let r = ApiError::Unauthorized("expired".into()).into_response("r");
        assert_eq!(header(&r, "www-authenticate"), Some("Bearer realm=\"devcycle\""));

        let d = Decision { allowed: false, limit: 60, remaining: 0, reset_secs: 17 };
        let r = ApiError::QuotaExceeded { unit: "bytes", decision: d }.into_response("r");
        assert_eq!(
            ["retry-after", "ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"].map(|h| header(&r, h)),
            [Some("17"), Some("60"), Some("0"), Some("17")]
        );
        assert_eq!(body(r).await["details"], json!({"limit": 60, "unit": "bytes/s", "retry_after_seconds": 17}));

        let r = ApiError::PayloadTooLarge { limit: 1024 }.into_response("r");
        assert_eq!(header(&r, "retry-after"), None);
        assert_eq!(body(r).await["details"], json!({"limit_bytes": 1024}));
    }

    #[tokio::test]
    async fn success_envelopes_hold_the_data_and_the_request_id() {
        let r = ok(StatusCode::ACCEPTED, json!({"task_id": "t"}), "queued", "req-9");
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let b = body(r).await;
        assert_eq!(
            (&b["success"], &b["data"], &b["message"], &b["request_id"]),
            (&json!(true), &json!({"task_id": "t"}), &json!("queued"), &json!("req-9"))
        );
        let stored = br#"{"success":true}"#;
        let r = raw_json(StatusCode::OK, &stored[..]);
        assert_eq!(
            r.into_body().collect().await.unwrap().to_bytes(),
            &stored[..],
            "a stored answer is replayed byte for byte"
        );
    }
}
