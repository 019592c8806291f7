//! One record of a produce request: read from its JSON text ([`parse_record`]: the value is
//! kept as text, to be converted to Avro while it is parsed), then validated and encoded
//! ([`prepare`]).
//!
//! Invariant: a record is encoded only when all of its fields are valid; every failure is that
//! record's report line, never the whole request's.

use super::{Line, REJECTED, TOO_LARGE, VALIDATION};
use crate::catalog::{TopicDecl, ValueFormat};
use crate::gateway::LatestSchema;
use crate::ingress::body::raw_members;
use base64::Engine as _;
use serde_json::value::RawValue;
use serde_json::{Map, Value as Json};

/// How far ahead of the broker's clock a record's timestamp may be: Kafka 4 refuses more
/// (`message.timestamp.after.max.ms`, one hour by default).
const MAX_FUTURE_TIMESTAMP_MS: i64 = 3_600_000;
const RECORD_FIELDS: &[&str] = &["key", "value", "headers", "partition", "timestamp"];

/// A record as sent: its fields other than `value` parsed, the `value` as JSON text.
pub(super) struct RecordIn<'a> {
    fields: Map<String, Json>,
    value: Option<&'a RawValue>,
}

/// Reads a record from its JSON text: not JSON is `MALFORMED_JSON`, not an object a validation
/// error.
pub(super) fn parse_record(text: &str) -> Result<RecordIn<'_>, Line> {
    let malformed = |e: serde_json::Error| Line::failed("MALFORMED_JSON", e.to_string());
    let members = raw_members(text).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => Line::failed(VALIDATION, "record: must be a JSON object"),
        _ => malformed(e),
    })?;
    let mut rec = RecordIn { fields: Map::new(), value: None };
    for (key, raw) in members {
        if key == "value" {
            rec.value = Some(raw);
        } else {
            rec.fields.insert(key.into_owned(), serde_json::from_str(raw.get()).map_err(malformed)?);
        }
    }
    Ok(rec)
}

/// One record ready for Kafka.
pub(super) struct Prepared {
    pub(super) key: Option<Vec<u8>>,
    pub(super) value: Option<Vec<u8>>,
    pub(super) headers: Vec<(String, Vec<u8>)>,
    pub(super) partition: Option<i32>,
    pub(super) timestamp: Option<i64>,
}

/// Validates and encodes one record: the record as it goes to Kafka, or its report line.
pub(super) fn prepare(
    rec: &RecordIn<'_>,
    decl: &TopicDecl,
    schema: Option<&LatestSchema>,
    forwarded: &[(String, Vec<u8>)],
    max_record_bytes: usize,
) -> Result<Prepared, Line> {
    let bad = |m: String| Line::failed(VALIDATION, m);
    let map = &rec.fields;
    if let Some(k) = map.keys().find(|k| !RECORD_FIELDS.contains(&k.as_str())) {
        return Err(bad(format!("{k}: unknown field; allowed: {}", RECORD_FIELDS.join(", "))));
    }
    let key = match map.get("key") {
        None | Some(Json::Null) => None,
        Some(Json::String(s)) => Some(s.clone().into_bytes()),
        Some(_) => return Err(bad("key: must be a string".into())),
    };
    let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
    match map.get("headers") {
        None | Some(Json::Null) => {}
        Some(Json::Object(h)) => {
            for (name, v) in h {
                let v = v.as_str().ok_or_else(|| bad(format!("headers.{name}: must be a string")))?;
                headers.push((name.clone(), v.as_bytes().to_vec()));
            }
        }
        Some(_) => return Err(bad("headers: must be an object of strings".into())),
    }
    headers.extend(forwarded.iter().cloned());
    let partition = match map.get("partition") {
        None | Some(Json::Null) => None,
        Some(p) => Some(
            p.as_i64()
                .filter(|p| (0..decl.partitions as i64).contains(p))
                .ok_or_else(|| bad(format!("partition: must be an integer from 0 to {}", decl.partitions - 1)))?
                as i32,
        ),
    };
    let timestamp = match map.get("timestamp") {
        None | Some(Json::Null) => None,
        Some(Json::Number(n)) => Some(n.as_i64().ok_or_else(|| bad("timestamp: must be epoch milliseconds".into()))?),
        Some(Json::String(s)) => Some(
            chrono::DateTime::parse_from_rfc3339(s)
                .map_err(|_| bad("timestamp: must be an RFC 3339 timestamp or epoch milliseconds".into()))?
                .timestamp_millis(),
        ),
        Some(_) => return Err(bad("timestamp: must be an RFC 3339 timestamp or epoch milliseconds".into())),
    };
    // The broker refuses a timestamp before the epoch or too far ahead, and with it every other
    // record of the same produce batch: refuse it here, for this record only.
    let latest = chrono::Utc::now().timestamp_millis() + MAX_FUTURE_TIMESTAMP_MS;
    if timestamp.is_some_and(|t| !(0..=latest).contains(&t)) {
        return Err(bad("timestamp: must be from 1970-01-01T00:00:00Z to one hour from now".into()));
    }
    let raw_value = rec.value.ok_or_else(|| bad("value: is required".into()))?;
    let value = match (decl.value_format(), schema) {
        (ValueFormat::Avro, Some(schema)) => Some(schema.encode_text(raw_value.get()).map_err(bad)?),
        (ValueFormat::Avro, None) => return Err(Line::failed(REJECTED, "topic has no value schema")),
        (ValueFormat::Binary, _) => {
            match serde_json::from_str::<Json>(raw_value.get()).map_err(|e| bad(format!("value: {e}")))? {
                Json::Null => None,
                Json::String(s) => Some(
                    base64::engine::general_purpose::STANDARD
                        .decode(s)
                        .map_err(|e| bad(format!("value: invalid base64: {e}")))?,
                ),
                _ => return Err(bad("value: must be a base64 string or null".into())),
            }
        }
    };
    let size = key.as_ref().map_or(0, Vec::len)
        + value.as_ref().map_or(0, Vec::len)
        + headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
    if size > max_record_bytes {
        return Err(Line::failed(TOO_LARGE, format!("record is {size} bytes; the limit is {max_record_bytes}")));
    }
    Ok(Prepared { key, value, headers, partition, timestamp })
}
