//! JSON to Avro with a schema: the gateway's value conversion, written straight to the Avro
//! binary encoding (no intermediate `Value` tree, no second validation pass). [`write_text`]
//! converts JSON text while parsing it (records, strings and numbers without a tree); what it
//! reads whole goes through [`write`], the conversion of a parsed JSON tree, so both follow the
//! same rules with the same messages.
//!
//! Rules: records take a JSON object (unknown fields refused, missing fields take their schema
//! default); a union takes `null` for its null branch, otherwise the first branch the value
//! converts to, or the Avro JSON form `{"<branch type>": value}`; `uuid` takes a UUID string;
//! `timestamp-millis`/`-micros` take epoch numbers or RFC 3339 strings; `date` takes days or
//! `YYYY-MM-DD`; `bytes`/`fixed` take base64 strings; enums take a symbol.
//!
//! Invariant: on `Ok` the bytes appended are exactly one datum of the schema (a union branch
//! that fails part-way is truncated away before the next is tried); on `Err` the buffer may hold
//! a partial datum and must be discarded. Error messages name the path (`value.a.b[2]`); the
//! path is rendered only when something fails.

use crate::avro::direct::{bytes, long};
use crate::avro::Names;
use apache_avro::schema::UuidSchema;
use apache_avro::Schema;
use base64::Engine as _;
use chrono::{DateTime, NaiveDate};
use serde_json::Value as Json;
use std::fmt;

mod seed;

pub use seed::{write_text, JsonKey};

/// Where a value sits in the record, rendered only for an error message.
enum Path<'a> {
    Root,
    Field(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Root => f.write_str("value"),
            Path::Field(p, name) => write!(f, "{p}.{name}"),
            Path::Index(p, i) => write!(f, "{p}[{i}]"),
        }
    }
}

fn fail(path: &Path<'_>, want: &str, got: &Json) -> String {
    let shown = got.to_string();
    let shown =
        if shown.chars().count() > 60 { format!("{}...", shown.chars().take(60).collect::<String>()) } else { shown };
    format!("{path}: expected {want}, got {shown}")
}

fn base64_bytes(path: &Path<'_>, json: &Json) -> Result<Vec<u8>, String> {
    let s = json.as_str().ok_or_else(|| fail(path, "a base64 string", json))?;
    base64::engine::general_purpose::STANDARD.decode(s).map_err(|e| format!("{path}: invalid base64: {e}"))
}

fn epoch(path: &Path<'_>, json: &Json, micros: bool) -> Result<i64, String> {
    match json {
        Json::Number(n) => n.as_i64().ok_or_else(|| fail(path, "an integer timestamp", json)),
        Json::String(s) => {
            let t = DateTime::parse_from_rfc3339(s).map_err(|_| fail(path, "an RFC 3339 timestamp", json))?;
            Ok(if micros { t.timestamp_micros() } else { t.timestamp_millis() })
        }
        _ => Err(fail(path, "a timestamp (epoch number or RFC 3339 string)", json)),
    }
}

fn int(path: &Path<'_>, json: &Json, want: &str) -> Result<i64, String> {
    json.as_i64().filter(|i| i32::try_from(*i).is_ok()).ok_or_else(|| fail(path, want, json))
}

fn uuid(path: &Path<'_>, json: &Json) -> Result<uuid::Uuid, String> {
    let s = json.as_str().ok_or_else(|| fail(path, "a UUID string", json))?;
    uuid::Uuid::parse_str(s).map_err(|_| fail(path, "a UUID string", json))
}

/// Appends the parsed `json` as one Avro datum of `schema` at `path`; the error names the path.
fn write(schema: &Schema, json: &Json, names: &Names, path: &Path<'_>, out: &mut Vec<u8>) -> Result<(), String> {
    match schema {
        Schema::Null => match json {
            Json::Null => {}
            _ => return Err(fail(path, "null", json)),
        },
        Schema::Boolean => out.push(u8::from(json.as_bool().ok_or_else(|| fail(path, "a boolean", json))?)),
        Schema::Int => long(out, int(path, json, "a 32-bit integer")?),
        Schema::Long => long(out, json.as_i64().ok_or_else(|| fail(path, "a 64-bit integer", json))?),
        Schema::Float => {
            let x = json.as_f64().ok_or_else(|| fail(path, "a number", json))? as f32;
            out.extend_from_slice(&x.to_le_bytes());
        }
        Schema::Double => {
            out.extend_from_slice(&json.as_f64().ok_or_else(|| fail(path, "a number", json))?.to_le_bytes())
        }
        Schema::String => bytes(out, json.as_str().ok_or_else(|| fail(path, "a string", json))?.as_bytes()),
        Schema::Bytes => bytes(out, &base64_bytes(path, json)?),
        Schema::Fixed(f) => {
            let b = base64_bytes(path, json)?;
            if b.len() != f.size {
                return Err(format!("{path}: expected {} bytes, got {}", f.size, b.len()));
            }
            out.extend_from_slice(&b);
        }
        Schema::Uuid(kind) => {
            let id = uuid(path, json)?;
            match kind {
                UuidSchema::String => {
                    bytes(out, id.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()).as_bytes())
                }
                UuidSchema::Bytes => bytes(out, id.as_bytes()),
                UuidSchema::Fixed(f) if f.size == 16 => out.extend_from_slice(id.as_bytes()),
                UuidSchema::Fixed(f) => return Err(format!("{path}: a uuid cannot be a fixed of {} bytes", f.size)),
            }
        }
        Schema::TimestampMillis | Schema::LocalTimestampMillis => long(out, epoch(path, json, false)?),
        Schema::TimestampMicros | Schema::LocalTimestampMicros => long(out, epoch(path, json, true)?),
        Schema::Date => {
            let days = match json {
                Json::String(s) => {
                    let d =
                        NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| fail(path, "a YYYY-MM-DD date", json))?;
                    let days = d.signed_duration_since(NaiveDate::default()).num_days();
                    i32::try_from(days).map_err(|_| fail(path, "a date in range", json))?.into()
                }
                _ => int(path, json, "a date")?,
            };
            long(out, days);
        }
        Schema::TimeMillis => long(out, int(path, json, "milliseconds")?),
        Schema::TimeMicros => long(out, json.as_i64().ok_or_else(|| fail(path, "microseconds", json))?),
        Schema::Enum(e) => {
            let s = json.as_str().ok_or_else(|| fail(path, "an enum symbol", json))?;
            let i = e
                .symbols
                .iter()
                .position(|x| x == s)
                .ok_or_else(|| format!("{path}: `{s}` is not one of {}", e.symbols.join(", ")))?;
            long(out, i as i64);
        }
        Schema::Array(a) => {
            let items = json.as_array().ok_or_else(|| fail(path, "an array", json))?;
            if !items.is_empty() {
                long(out, items.len() as i64);
                for (i, item) in items.iter().enumerate() {
                    write(&a.items, item, names, &Path::Index(path, i), out)?;
                }
            }
            out.push(0);
        }
        Schema::Map(m) => {
            let obj = json.as_object().ok_or_else(|| fail(path, "an object", json))?;
            if !obj.is_empty() {
                long(out, obj.len() as i64);
                for (k, v) in obj {
                    bytes(out, k.as_bytes());
                    write(&m.types, v, names, &Path::Field(path, k), out)?;
                }
            }
            out.push(0);
        }
        Schema::Record(r) => {
            let obj = json.as_object().ok_or_else(|| fail(path, "an object", json))?;
            if let Some(k) = obj.keys().find(|k| !r.lookup.contains_key(*k)) {
                return Err(format!("{path}.{k}: unknown field"));
            }
            for f in &r.fields {
                let fpath = Path::Field(path, &f.name);
                match (obj.get(&f.name), &f.default) {
                    (Some(v), _) => write(&f.schema, v, names, &fpath, out)?,
                    (None, Some(d)) => write_default(&f.schema, d, names, &fpath, out)?,
                    (None, None) => return Err(format!("{fpath}: is required")),
                }
            }
        }
        Schema::Union(u) => write_union(u.variants(), json, names, path, out)?,
        Schema::Ref { name } => {
            let s = names.get(name).ok_or_else(|| format!("{path}: unresolved schema reference {name}"))?;
            write(s, json, names, path, out)?
        }
        other => return Err(format!("{path}: the gateway does not convert {other:?} values")),
    }
    Ok(())
}

fn write_union(
    variants: &[Schema],
    json: &Json,
    names: &Names,
    path: &Path<'_>,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    if json.is_null() {
        let i = variants
            .iter()
            .position(|s| matches!(s, Schema::Null))
            .ok_or_else(|| format!("{path}: must not be null"))?;
        long(out, i as i64);
        return Ok(());
    }
    let start = out.len();
    for (i, s) in variants.iter().enumerate() {
        if matches!(s, Schema::Null) {
            continue;
        }
        long(out, i as i64);
        if write(s, json, names, path, out).is_ok() {
            return Ok(());
        }
        out.truncate(start);
    }
    // The Avro JSON encoding names the branch: {"string": "x"}.
    if let Some((k, inner)) = json.as_object().filter(|o| o.len() == 1).and_then(|o| o.iter().next()) {
        for (i, s) in variants.iter().enumerate() {
            if branch_name(s).as_deref() == Some(k.as_str()) {
                long(out, i as i64);
                return write(s, inner, names, path, out);
            }
        }
    }
    let kinds: Vec<String> = variants.iter().map(|s| branch_name(s).unwrap_or_else(|| "?".into())).collect();
    Err(fail(path, &format!("one of [{}]", kinds.join(", ")), json))
}

/// A field default: for a union it applies to the first branch (Avro spec).
fn write_default(schema: &Schema, d: &Json, names: &Names, path: &Path<'_>, out: &mut Vec<u8>) -> Result<(), String> {
    match schema {
        Schema::Union(u) => {
            let first = u.variants().first().ok_or_else(|| format!("{path}: empty union"))?;
            long(out, 0);
            write(first, d, names, path, out)
        }
        s => write(s, d, names, path, out),
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
mod tests;
