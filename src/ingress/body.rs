//! Request bodies: content type, size limit and JSON parsing, each failure with its status.

use super::ApiError;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper::Request;
use serde_json::Value;

/// Reads a JSON object body of at most `limit` bytes.
pub async fn json_object(req: Request<Incoming>, limit: usize) -> Result<serde_json::Map<String, Value>, ApiError> {
    let ctype = req.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let mime = ctype.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if mime != "application/json" && !(mime.starts_with("application/") && mime.ends_with("+json")) {
        return Err(ApiError::UnsupportedMediaType(ctype));
    }
    let declared =
        req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let bytes = Limited::new(req.into_body(), limit)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                ApiError::PayloadTooLarge { limit }
            } else {
                ApiError::MalformedJson(format!("could not read the body: {e}"))
            }
        })?
        .to_bytes();
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::validation("body", "must be a JSON object")),
    }
}

/// Refuses keys outside `allowed`, naming the first unknown one.
pub fn only_keys(map: &serde_json::Map<String, Value>, allowed: &[&str]) -> Result<(), ApiError> {
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(ApiError::validation(k, format!("unknown field; allowed: {}", allowed.join(", ")))),
        None => Ok(()),
    }
}

/// An optional string field.
pub fn opt_str<'a>(map: &'a serde_json::Map<String, Value>, key: &str) -> Result<Option<&'a str>, ApiError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::validation(key, "must be a string")),
    }
}
