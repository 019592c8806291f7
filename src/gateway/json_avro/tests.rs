//! The gateway's JSON to Avro writer against apache-avro as an independent reader.

#![allow(deprecated)] // from_avro_datum / to_avro_datum: the plainest independent reader and writer

use super::*;
use crate::avro::names_of;
use apache_avro::types::Value;
use serde_json::json;
use std::collections::HashMap;

fn request_schema() -> Schema {
    let path = format!("{}/schemas/TaskRequest.avsc", env!("CARGO_MANIFEST_DIR"));
    Schema::parse_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `json` as one Avro datum of `schema`, from the parsed tree ([`write`]).
fn json_to_avro(schema: &Schema, json: &Json) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(64);
    write(schema, json, &names_of(schema)?, &Path::Root, &mut out)?;
    Ok(out)
}

/// [`json_to_avro`] (from a parsed tree), checked against [`write_text`] (converted while
/// parsing) on the same value as text: the same bytes, or the same error.
fn convert(schema: &Schema, json: &Json) -> Result<Vec<u8>, String> {
    let tree = json_to_avro(schema, json);
    assert_eq!(streamed(schema, &json.to_string()), tree, "streamed and tree conversions differ for {json}");
    tree
}

fn streamed(schema: &Schema, text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    write_text(schema, &names_of(schema).unwrap(), text, &mut out).map(|()| out)
}

/// Decodes with apache-avro (an independent reader), which must use every byte.
fn read(schema: &Schema, bytes: &[u8]) -> Value {
    let mut rest = bytes;
    let v = apache_avro::from_avro_datum(schema, &mut rest, None).unwrap();
    assert!(rest.is_empty(), "{} bytes left after the datum", rest.len());
    v
}

/// [`read`], and apache-avro's own encoder writes the same bytes for what it read (not for
/// maps of more than one entry: it reads them into a HashMap, in no fixed order).
fn decoded(schema: &Schema, bytes: &[u8]) -> Value {
    let v = read(schema, bytes);
    assert_eq!(apache_avro::to_avro_datum(schema, v.clone()).unwrap(), bytes, "apache-avro encodes {v:?} differently");
    v
}

#[test]
fn a_task_request_converts_and_round_trips() {
    let s = request_schema();
    let id = uuid::Uuid::new_v4();
    let bytes = convert(
        &s,
        &json!({"task_id": id.to_string(), "agent": "echo", "input": "{}", "submitted_at": "2026-01-02T03:04:05.678Z",
                "deadline": 1_800_000_000_000i64, "submitted_by": {"string": "u1"}}),
    )
    .unwrap();
    let r = crate::avro::request_from_value(decoded(&s, &bytes)).unwrap();
    assert_eq!((r.task_id, r.priority, r.attempt), (id, 0, 1));
    assert_eq!(r.submitted_at.timestamp_millis(), 1_767_323_045_678);
    assert_eq!(r.deadline.unwrap().timestamp_millis(), 1_800_000_000_000);
    assert_eq!(r.submitted_by.as_deref(), Some("u1"));
    assert_eq!(r.request_id, None);
}

#[test]
fn every_supported_type_encodes_as_apache_avro_reads_it() {
    let s = Schema::parse_str(
        r#"{"type": "record", "name": "All", "namespace": "t", "fields": [
            {"name": "i", "type": "int"}, {"name": "l", "type": "long"},
            {"name": "f", "type": "float"}, {"name": "d", "type": "double"},
            {"name": "b", "type": "boolean"}, {"name": "by", "type": "bytes"},
            {"name": "fx", "type": {"type": "fixed", "name": "Four", "size": 4}},
            {"name": "e", "type": {"type": "enum", "name": "Colour", "symbols": ["RED", "GREEN"]}},
            {"name": "u", "type": {"type": "string", "logicalType": "uuid"}},
            {"name": "day", "type": {"type": "int", "logicalType": "date"}},
            {"name": "day2", "type": {"type": "int", "logicalType": "date"}},
            {"name": "tm", "type": {"type": "int", "logicalType": "time-millis"}},
            {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-micros"}},
            {"name": "inner", "type": {"type": "record", "name": "Inner", "fields": [{"name": "x", "type": "long"}]}},
            {"name": "again", "type": "Inner"},
            {"name": "list", "type": {"type": "array", "items": "Inner"}},
            {"name": "empty", "type": {"type": "array", "items": "int"}},
            {"name": "m", "type": {"type": "map", "values": ["null", "string"]}},
            {"name": "named", "type": ["null", "Four", "string"]},
            {"name": "dflt", "type": "int", "default": 7},
            {"name": "opt", "type": ["null", "string"], "default": null}
        ]}"#,
    )
    .unwrap();
    let id = uuid::Uuid::new_v4();
    let bytes = convert(
        &s,
        &json!({"i": -3, "l": 1i64 << 40, "f": 1.5, "d": -2.25, "b": true, "by": "AAEC", "fx": "AQIDBA==",
                "e": "GREEN", "u": id.to_string().to_uppercase(), "day": "1970-01-11", "day2": 12, "tm": 1000,
                "ts": "1970-01-01T00:00:01.000002Z", "inner": {"x": 5}, "again": {"x": -5},
                "list": [{"x": 1}, {"x": 2}], "empty": [], "m": {"b": null},
                "named": {"string": "s"}}),
    )
    .unwrap();
    let inner = |x: i64| Value::Record(vec![("x".into(), Value::Long(x))]);
    let Value::Record(fields) = decoded(&s, &bytes) else { panic!("not a record") };
    let want = vec![
        ("i", Value::Int(-3)),
        ("l", Value::Long(1 << 40)),
        ("f", Value::Float(1.5)),
        ("d", Value::Double(-2.25)),
        ("b", Value::Boolean(true)),
        ("by", Value::Bytes(vec![0, 1, 2])),
        ("fx", Value::Fixed(4, vec![1, 2, 3, 4])),
        ("e", Value::Enum(1, "GREEN".into())),
        ("u", Value::Uuid(id)),
        ("day", Value::Date(10)),
        ("day2", Value::Date(12)),
        ("tm", Value::TimeMillis(1000)),
        ("ts", Value::TimestampMicros(1_000_002)),
        ("inner", inner(5)),
        ("again", inner(-5)),
        ("list", Value::Array(vec![inner(1), inner(2)])),
        ("empty", Value::Array(vec![])),
        ("m", Value::Map([("b".to_string(), Value::Union(0, Box::new(Value::Null)))].into())),
        ("named", Value::Union(2, Box::new(Value::String("s".into())))),
        ("dflt", Value::Int(7)),
        ("opt", Value::Union(0, Box::new(Value::Null))),
    ];
    let got: Vec<(&str, Value)> = fields.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    assert_eq!(got, want);

    let map = Schema::parse_str(r#"{"type": "map", "values": ["null", "string"]}"#).unwrap();
    let bytes = convert(&map, &json!({"a": "z", "b": null, "c": "y"})).unwrap();
    let want: HashMap<String, Value> = [
        ("a".to_string(), Value::Union(1, Box::new(Value::String("z".into())))),
        ("b".to_string(), Value::Union(0, Box::new(Value::Null))),
        ("c".to_string(), Value::Union(1, Box::new(Value::String("y".into())))),
    ]
    .into();
    assert_eq!(read(&map, &bytes), Value::Map(want));
}

#[test]
fn a_union_branch_that_fails_part_way_leaves_no_bytes_behind() {
    let s = Schema::parse_str(
        r#"[{"type": "record", "name": "A", "fields": [{"name": "a", "type": "string"}, {"name": "b", "type": "int"}]},
            {"type": "record", "name": "B", "fields": [{"name": "a", "type": "string"}, {"name": "b", "type": "string"}]}]"#,
    )
    .unwrap();
    // A writes `a`, then fails on `b`: what it wrote must go before B is tried.
    let bytes = convert(&s, &json!({"a": "x", "b": "y"})).unwrap();
    let want = Value::Record(vec![("a".into(), Value::String("x".into())), ("b".into(), Value::String("y".into()))]);
    assert_eq!(decoded(&s, &bytes), Value::Union(1, Box::new(want)));
    let err = convert(&s, &json!({"a": "x", "b": true})).unwrap_err();
    assert!(err.starts_with("value: expected one of [A, B]"), "{err}");
}

#[test]
fn errors_name_the_field() {
    let s = request_schema();
    let base = json!({"task_id": uuid::Uuid::new_v4().to_string(), "agent": "echo", "input": "{}", "submitted_at": 1});
    let err = |patch: Json| {
        let mut v = base.clone();
        for (k, x) in patch.as_object().unwrap() {
            v[k] = x.clone();
        }
        convert(&s, &v).unwrap_err()
    };
    assert!(err(json!({"task_id": "nope"})).starts_with("value.task_id:"));
    assert!(err(json!({"priority": "high"})).starts_with("value.priority:"));
    assert!(err(json!({"priority": 1i64 << 40})).starts_with("value.priority:"));
    assert!(err(json!({"deadline": true})).starts_with("value.deadline:"));
    assert!(err(json!({"colour": "red"})).contains("unknown field"));
    assert!(convert(&s, &json!({"agent": "x"})).unwrap_err().contains("is required"));
    assert!(convert(&s, &json!([1])).is_err());
    let list = Schema::parse_str(r#"{"type": "array", "items": {"type": "map", "values": "int"}}"#).unwrap();
    assert_eq!(
        convert(&list, &json!([{}, {"k": "v"}])).unwrap_err(),
        r#"value[1].k: expected a 32-bit integer, got "v""#
    );
}

#[test]
fn streamed_records_take_fields_in_any_order_and_the_last_of_a_repeated_key() {
    let s = request_schema();
    let id = uuid::Uuid::new_v4();
    let ordered = json!({"task_id": id.to_string(), "agent": "echo", "input": "{}", "submitted_at": 5});
    let want = convert(&s, &ordered).unwrap();
    let shuffled = format!(r#"{{"submitted_at": 5, "input": "{{}}", "agent": "echo", "task_id": "{id}"}}"#);
    assert_eq!(streamed(&s, &shuffled).unwrap(), want);
    let escaped = format!(r#"{{"submitted_at": 5, "input": "{{}}", "ag\u0065nt": "echo", "task_id": "{id}"}}"#);
    assert_eq!(streamed(&s, &escaped).unwrap(), want);
    let repeated =
        format!(r#"{{"agent": "x", "submitted_at": 5, "input": "{{}}", "agent": "echo", "task_id": "{id}"}}"#);
    assert_eq!(streamed(&s, &repeated).unwrap(), want);
    // Not JSON, or more than one value: an error that says so, never bytes.
    assert!(streamed(&s, r#"{"agent": "#).unwrap_err().starts_with("value: "));
    assert!(streamed(&s, &format!("{} {{}}", ordered)).is_err());
}
