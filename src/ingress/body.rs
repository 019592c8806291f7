//! Request bodies: content type, size limit and JSON parsing, each failure with its status.

use super::ApiError;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper::Request;
use serde_json::Value;

/// Reads a JSON object body of at most `limit` bytes whose strings hold no NUL character
/// (PostgreSQL text and jsonb cannot store one: refused with 422 rather than failing later).
pub async fn json_object(req: Request<Incoming>, limit: usize) -> Result<serde_json::Map<String, Value>, ApiError> {
    let map = any_json_object(req, limit).await?;
    for (k, v) in &map {
        if let Some(path) = nul_at(k, v) {
            return Err(ApiError::validation(&path, "must not contain NUL characters (\\u0000)"));
        }
    }
    Ok(map)
}

/// Where a NUL character is in a key or string of `value` (found under `path`), if anywhere.
fn nul_at(path: &str, value: &Value) -> Option<String> {
    if path.contains('\0') {
        return Some(path.replace('\0', "\\u0000"));
    }
    match value {
        Value::String(s) if s.contains('\0') => Some(path.to_string()),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, v)| nul_at(&format!("{path}[{i}]"), v)),
        Value::Object(map) => map.iter().find_map(|(k, v)| nul_at(&format!("{path}.{k}"), v)),
        _ => None,
    }
}

/// Reads a JSON object body of at most `limit` bytes, any strings allowed.
async fn any_json_object(req: Request<Incoming>, limit: usize) -> Result<serde_json::Map<String, Value>, ApiError> {
    let bytes = json_body(req, limit).await?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::validation("body", "must be a JSON object")),
    }
}

/// Reads a body of at most `limit` bytes sent as JSON (`application/json` or `+json`), unparsed.
pub async fn json_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
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
    Ok(Limited::new(req.into_body(), limit)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                ApiError::PayloadTooLarge { limit }
            } else {
                ApiError::MalformedJson(format!("could not read the body: {e}"))
            }
        })?
        .to_bytes())
}

/// The answer to a body that could not be read as a JSON object: not JSON 400, not an object 422.
pub fn body_error(e: serde_json::Error) -> ApiError {
    match e.classify() {
        serde_json::error::Category::Data => ApiError::validation("body", "must be a JSON object"),
        _ => ApiError::MalformedJson(e.to_string()),
    }
}

/// Refuses keys outside `allowed`, naming the first unknown one.
pub fn only_keys(map: &serde_json::Map<String, Value>, allowed: &[&str]) -> Result<(), ApiError> {
    only_names(map.keys().map(String::as_str), allowed)
}

/// [`only_keys`] of any key names.
pub fn only_names<'a>(mut keys: impl Iterator<Item = &'a str>, allowed: &[&str]) -> Result<(), ApiError> {
    match keys.find(|k| !allowed.contains(k)) {
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

/// The decoded `key=value` pairs of a query string (`+` is a space); a NUL character in either
/// is refused (422), as PostgreSQL cannot compare against one.
pub fn query_pairs(query: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    let decode = |s: &str| super::router::percent_decode(&s.replace('+', " "));
    let mut out = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (decode(k), decode(v));
        if k.contains('\0') || v.contains('\0') {
            return Err(ApiError::validation(&k.replace('\0', "\\u0000"), "must not contain NUL characters (%00)"));
        }
        out.push((k, v));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nul_characters_are_found_with_their_path() {
        assert_eq!(nul_at("input", &json!({"a": [1, "x\0"]})), Some("input.a[1]".into()));
        assert_eq!(nul_at("input", &json!({"k\0": 1})), Some("input.k\\u0000".into()));
        assert_eq!(nul_at("input", &json!({"a": ["x", 2, null]})), None);
        assert!(matches!(query_pairs(Some("q=a%00b")), Err(ApiError::Validation { field, .. }) if field == "q"));
        assert_eq!(
            query_pairs(Some("q=a+b&page=2")).unwrap(),
            vec![("q".into(), "a b".into()), ("page".into(), "2".into())]
        );
    }
}
