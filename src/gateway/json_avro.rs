//! JSON to Avro with a schema: the gateway's value conversion.
//!
//! Rules: records take a JSON object (unknown fields refused, missing fields take their schema
//! default); a union takes `null` for its null branch, otherwise the first branch the value
//! converts to, or the Avro JSON form `{"<branch type>": value}`; `uuid` takes a UUID string;
//! `timestamp-millis`/`-micros` take epoch numbers or RFC 3339 strings; `date` takes days or
//! `YYYY-MM-DD`; `bytes`/`fixed` take base64 strings; enums take a symbol.

use apache_avro::schema::{Name, ResolvedSchema};
use apache_avro::types::Value;
use apache_avro::Schema;
use base64::Engine as _;
use chrono::{DateTime, NaiveDate};
use serde_json::Value as Json;
use std::collections::HashMap;

pub type Names<'s> = HashMap<Name, &'s Schema>;

/// The named types of `schema` (what its references resolve to).
fn names_of(schema: &Schema) -> Result<Names<'_>, String> {
    let resolved = ResolvedSchema::try_from(schema).map_err(|e| format!("schema: {e}"))?;
    Ok(resolved.get_names().iter().map(|(k, v)| (k.clone(), *v)).collect())
}

/// Converts `json` to an Avro value of `schema`; the error names the path (`value.a.b`).
pub fn json_to_avro(schema: &Schema, json: &Json) -> Result<Value, String> {
    convert(schema, json, &names_of(schema)?, "value")
}

/// [`json_to_avro`] with the schema's names already resolved ([`names_of`]).
pub fn json_to_avro_with(schema: &Schema, names: &Names<'_>, json: &Json) -> Result<Value, String> {
    convert(schema, json, names, "value")
}

fn fail(path: &str, want: &str, got: &Json) -> String {
    let shown = got.to_string();
    let shown =
        if shown.chars().count() > 60 { format!("{}...", shown.chars().take(60).collect::<String>()) } else { shown };
    format!("{path}: expected {want}, got {shown}")
}

fn base64_bytes(path: &str, json: &Json) -> Result<Vec<u8>, String> {
    let s = json.as_str().ok_or_else(|| fail(path, "a base64 string", json))?;
    base64::engine::general_purpose::STANDARD.decode(s).map_err(|e| format!("{path}: invalid base64: {e}"))
}

fn epoch(path: &str, json: &Json, per_milli: i64) -> Result<i64, String> {
    match json {
        Json::Number(n) => n.as_i64().ok_or_else(|| fail(path, "an integer timestamp", json)),
        Json::String(s) => {
            let t = DateTime::parse_from_rfc3339(s).map_err(|_| fail(path, "an RFC 3339 timestamp", json))?;
            if per_milli == 1 {
                Ok(t.timestamp_millis())
            } else {
                Ok(t.timestamp_micros())
            }
        }
        _ => Err(fail(path, "a timestamp (epoch number or RFC 3339 string)", json)),
    }
}

fn convert(schema: &Schema, json: &Json, names: &Names<'_>, path: &str) -> Result<Value, String> {
    Ok(match schema {
        Schema::Null => match json {
            Json::Null => Value::Null,
            _ => return Err(fail(path, "null", json)),
        },
        Schema::Boolean => Value::Boolean(json.as_bool().ok_or_else(|| fail(path, "a boolean", json))?),
        Schema::Int => Value::Int(
            json.as_i64().and_then(|i| i32::try_from(i).ok()).ok_or_else(|| fail(path, "a 32-bit integer", json))?,
        ),
        Schema::Long => Value::Long(json.as_i64().ok_or_else(|| fail(path, "a 64-bit integer", json))?),
        Schema::Float => Value::Float(json.as_f64().ok_or_else(|| fail(path, "a number", json))? as f32),
        Schema::Double => Value::Double(json.as_f64().ok_or_else(|| fail(path, "a number", json))?),
        Schema::String => Value::String(json.as_str().ok_or_else(|| fail(path, "a string", json))?.to_string()),
        Schema::Bytes => Value::Bytes(base64_bytes(path, json)?),
        Schema::Fixed(f) => {
            let b = base64_bytes(path, json)?;
            if b.len() != f.size {
                return Err(format!("{path}: expected {} bytes, got {}", f.size, b.len()));
            }
            Value::Fixed(f.size, b)
        }
        Schema::Uuid(_) => {
            let s = json.as_str().ok_or_else(|| fail(path, "a UUID string", json))?;
            Value::Uuid(uuid::Uuid::parse_str(s).map_err(|_| fail(path, "a UUID string", json))?)
        }
        Schema::TimestampMillis => Value::TimestampMillis(epoch(path, json, 1)?),
        Schema::TimestampMicros => Value::TimestampMicros(epoch(path, json, 1000)?),
        Schema::LocalTimestampMillis => Value::LocalTimestampMillis(epoch(path, json, 1)?),
        Schema::LocalTimestampMicros => Value::LocalTimestampMicros(epoch(path, json, 1000)?),
        Schema::Date => match json {
            Json::String(s) => {
                let d = NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| fail(path, "a YYYY-MM-DD date", json))?;
                let days = d.signed_duration_since(NaiveDate::default()).num_days();
                Value::Date(i32::try_from(days).map_err(|_| fail(path, "a date in range", json))?)
            }
            _ => Value::Date(
                json.as_i64().and_then(|i| i32::try_from(i).ok()).ok_or_else(|| fail(path, "a date", json))?,
            ),
        },
        Schema::TimeMillis => Value::TimeMillis(
            json.as_i64().and_then(|i| i32::try_from(i).ok()).ok_or_else(|| fail(path, "milliseconds", json))?,
        ),
        Schema::TimeMicros => Value::TimeMicros(json.as_i64().ok_or_else(|| fail(path, "microseconds", json))?),
        Schema::Enum(e) => {
            let s = json.as_str().ok_or_else(|| fail(path, "an enum symbol", json))?;
            let i = e
                .symbols
                .iter()
                .position(|x| x == s)
                .ok_or_else(|| format!("{path}: `{s}` is not one of {}", e.symbols.join(", ")))?;
            Value::Enum(i as u32, s.to_string())
        }
        Schema::Array(a) => {
            let items = json.as_array().ok_or_else(|| fail(path, "an array", json))?;
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                out.push(convert(&a.items, item, names, &format!("{path}[{i}]"))?);
            }
            Value::Array(out)
        }
        Schema::Map(m) => {
            let obj = json.as_object().ok_or_else(|| fail(path, "an object", json))?;
            let mut out = HashMap::with_capacity(obj.len());
            for (k, v) in obj {
                out.insert(k.clone(), convert(&m.types, v, names, &format!("{path}.{k}"))?);
            }
            Value::Map(out)
        }
        Schema::Record(r) => {
            let obj = json.as_object().ok_or_else(|| fail(path, "an object", json))?;
            if let Some(k) = obj.keys().find(|k| !r.lookup.contains_key(*k)) {
                return Err(format!("{path}.{k}: unknown field"));
            }
            let mut out = Vec::with_capacity(r.fields.len());
            for f in &r.fields {
                let fpath = format!("{path}.{}", f.name);
                let v = match (obj.get(&f.name), &f.default) {
                    (Some(v), _) => convert(&f.schema, v, names, &fpath)?,
                    (None, Some(d)) => default_value(&f.schema, d, names, &fpath)?,
                    (None, None) => return Err(format!("{fpath}: is required")),
                };
                out.push((f.name.clone(), v));
            }
            Value::Record(out)
        }
        Schema::Union(u) => {
            let variants = u.variants();
            if json.is_null() {
                let i = variants
                    .iter()
                    .position(|s| matches!(s, Schema::Null))
                    .ok_or_else(|| format!("{path}: must not be null"))?;
                return Ok(Value::Union(i as u32, Box::new(Value::Null)));
            }
            for (i, s) in variants.iter().enumerate() {
                if matches!(s, Schema::Null) {
                    continue;
                }
                if let Ok(v) = convert(s, json, names, path) {
                    return Ok(Value::Union(i as u32, Box::new(v)));
                }
            }
            // The Avro JSON encoding names the branch: {"string": "x"}.
            if let Some((k, inner)) = json.as_object().filter(|o| o.len() == 1).and_then(|o| o.iter().next()) {
                for (i, s) in variants.iter().enumerate() {
                    if branch_name(s).as_deref() == Some(k.as_str()) {
                        return Ok(Value::Union(i as u32, Box::new(convert(s, inner, names, path)?)));
                    }
                }
            }
            let kinds: Vec<String> = variants.iter().map(|s| branch_name(s).unwrap_or_else(|| "?".into())).collect();
            return Err(fail(path, &format!("one of [{}]", kinds.join(", ")), json));
        }
        Schema::Ref { name } => {
            let s = names.get(name).ok_or_else(|| format!("{path}: unresolved schema reference {name}"))?;
            convert(s, json, names, path)?
        }
        other => return Err(format!("{path}: the gateway does not convert {other:?} values")),
    })
}

/// A field default: for a union it applies to the first branch (Avro spec).
fn default_value(schema: &Schema, d: &Json, names: &Names<'_>, path: &str) -> Result<Value, String> {
    match schema {
        Schema::Union(u) => {
            let first = u.variants().first().ok_or_else(|| format!("{path}: empty union"))?;
            Ok(Value::Union(0, Box::new(convert(first, d, names, path)?)))
        }
        s => convert(s, d, names, path),
    }
}

fn branch_name(s: &Schema) -> Option<String> {
    Some(
        match s {
            Schema::Null => "null",
            Schema::Boolean => "boolean",
            Schema::Int | Schema::Date | Schema::TimeMillis => "int",
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros => "long",
            Schema::Float => "float",
            Schema::Double => "double",
            Schema::Bytes => "bytes",
            Schema::String | Schema::Uuid(_) => "string",
            Schema::Array(_) => "array",
            Schema::Map(_) => "map",
            Schema::Record(r) => return Some(r.name.fullname(None)),
            Schema::Enum(e) => return Some(e.name.fullname(None)),
            Schema::Fixed(f) => return Some(f.name.fullname(None)),
            Schema::Ref { name } => return Some(name.fullname(None)),
            _ => return None,
        }
        .to_string(),
    )
}

#[cfg(test)]
#[allow(deprecated)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request_schema() -> Schema {
        let path = format!("{}/schemas/TaskRequest.avsc", env!("CARGO_MANIFEST_DIR"));
        Schema::parse_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn a_task_request_converts_and_round_trips() {
        let s = request_schema();
        let id = uuid::Uuid::new_v4();
        let v = json_to_avro(
            &s,
            &json!({"task_id": id.to_string(), "agent": "echo", "input": "{}", "submitted_at": "2026-01-02T03:04:05.678Z",
                    "deadline": 1_800_000_000_000i64, "submitted_by": {"string": "u1"}}),
        )
        .unwrap();
        let bytes = apache_avro::to_avro_datum(&s, v).unwrap();
        let back = apache_avro::from_avro_datum(&s, &mut &bytes[..], None).unwrap();
        let r = crate::avro::request_from_value(back).unwrap();
        assert_eq!((r.task_id, r.priority, r.attempt), (id, 0, 1));
        assert_eq!(r.submitted_at.timestamp_millis(), 1_767_323_045_678);
        assert_eq!(r.deadline.unwrap().timestamp_millis(), 1_800_000_000_000);
        assert_eq!(r.submitted_by.as_deref(), Some("u1"));
        assert_eq!(r.request_id, None);
    }

    #[test]
    fn errors_name_the_field() {
        let s = request_schema();
        let base =
            json!({"task_id": uuid::Uuid::new_v4().to_string(), "agent": "echo", "input": "{}", "submitted_at": 1});
        let err = |patch: Json| {
            let mut v = base.clone();
            for (k, x) in patch.as_object().unwrap() {
                v[k] = x.clone();
            }
            json_to_avro(&s, &v).unwrap_err()
        };
        assert!(err(json!({"task_id": "nope"})).starts_with("value.task_id:"));
        assert!(err(json!({"priority": "high"})).starts_with("value.priority:"));
        assert!(err(json!({"priority": 1i64 << 40})).starts_with("value.priority:"));
        assert!(err(json!({"deadline": true})).starts_with("value.deadline:"));
        assert!(err(json!({"colour": "red"})).contains("unknown field"));
        assert!(json_to_avro(&s, &json!({"agent": "x"})).unwrap_err().contains("is required"));
        assert!(json_to_avro(&s, &json!([1])).is_err());
    }
}
