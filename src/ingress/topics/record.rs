//! One record of a produce request: read from its JSON text ([`parse_record`], a stream's line)
//! or with the whole body in one pass ([`read_body`]), its value kept as text to be converted to
//! Avro while it is parsed; then validated and encoded ([`prepare`]).
//!
//! Invariant: a record is encoded only when all of its fields are valid; every failure is that
//! record's report line, never the whole request's.

use super::{Line, REJECTED, TOO_LARGE, VALIDATION};
use crate::catalog::{TopicDecl, ValueFormat};
use crate::gateway::JsonKey;
use crate::gateway::LatestSchema;
use base64::Engine as _;
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value as Json};
use std::borrow::Cow;

/// The scalar visits of a visitor that takes every JSON value other than an object or array as
/// `$other`.
macro_rules! not_this {
    ($other:expr) => {
        fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok($other)
        }
    };
}

/// How far ahead of the broker's clock a record's timestamp may be: Kafka 4 refuses more
/// (`message.timestamp.after.max.ms`, one hour by default).
const MAX_FUTURE_TIMESTAMP_MS: i64 = 3_600_000;
const RECORD_FIELDS: &[&str] = &["key", "value", "headers", "partition", "timestamp"];

/// A record as sent: its `key` and `value` as JSON text (read when it is prepared: no copy of
/// either is made while the body is read), its other fields parsed.
#[derive(Default)]
pub(super) struct RecordIn<'a> {
    fields: Map<String, Json>,
    key: Option<&'a RawValue>,
    value: Option<&'a RawValue>,
}

/// Reads a record from its JSON text: not JSON is `MALFORMED_JSON`, not an object a validation
/// error.
pub(super) fn parse_record(text: &str) -> Result<RecordIn<'_>, Line> {
    match serde_json::from_str::<Slot>(text) {
        Ok(Slot(rec)) => rec,
        Err(e) => Err(Line::failed("MALFORMED_JSON", e.to_string())),
    }
}

fn not_an_object() -> Line {
    Line::failed(VALIDATION, "record: must be a JSON object")
}

/// A request body as read in one pass: the records of `{"records": [...]}` (each read while the
/// body is, its value kept as text), and its other members, which are the one record of a body
/// without `records`.
pub(super) struct BodyIn<'a> {
    /// The last `records` member: its records, or `None` when it is not an array.
    pub(super) records: Option<Option<Vec<Result<RecordIn<'a>, Line>>>>,
    /// The names of every other member, in the body's order.
    pub(super) others: Vec<Cow<'a, str>>,
    /// Every other member, as a record.
    pub(super) record: RecordIn<'a>,
}

/// Reads a request body in one pass. A syntax error, or a body that is not an object (a data
/// error), is the whole request's; a record that is not an object is that record's line.
pub(super) fn read_body(text: &str) -> Result<BodyIn<'_>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let body = de.deserialize_map(BodyVisitor)?;
    de.end()?;
    Ok(body)
}

struct BodyVisitor;

impl<'de> Visitor<'de> for BodyVisitor {
    type Value = BodyIn<'de>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<BodyIn<'de>, A::Error> {
        let mut body = BodyIn { records: None, others: Vec::new(), record: RecordIn::default() };
        while let Some(JsonKey(key)) = map.next_key()? {
            if key == "records" {
                body.records = Some(map.next_value::<Records>()?.0);
            } else {
                body.others.push(key.clone());
                take_member(&mut body.record, key, &mut map)?;
            }
        }
        Ok(body)
    }
}

/// `records`: an array of records, or `None` for anything else.
struct Records<'a>(Option<Vec<Result<RecordIn<'a>, Line>>>);

impl<'de> Deserialize<'de> for Records<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Records<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of records")
            }
            fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Records<'de>, S::Error> {
                let mut out = Vec::new();
                while let Some(Slot(rec)) = seq.next_element()? {
                    out.push(rec);
                }
                Ok(Records(Some(out)))
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Records<'de>, M::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Records(None))
            }
            not_this!(Records(None));
        }
        d.deserialize_any(V)
    }
}

/// Reads the value of member `key` into `rec`: `value` kept as text, any other as a field.
fn take_member<'de, M: MapAccess<'de>>(
    rec: &mut RecordIn<'de>,
    key: Cow<'de, str>,
    map: &mut M,
) -> Result<(), M::Error> {
    if key == "value" {
        rec.value = Some(map.next_value()?);
    } else if key == "key" {
        rec.key = Some(map.next_value()?);
    } else {
        rec.fields.insert(key.into_owned(), map.next_value()?);
    }
    Ok(())
}

/// One element of `records`: the record, or its line when it is not an object.
struct Slot<'a>(Result<RecordIn<'a>, Line>);

impl<'de> Deserialize<'de> for Slot<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Slot<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a record")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Slot<'de>, M::Error> {
                let mut rec = RecordIn::default();
                while let Some(JsonKey(key)) = map.next_key()? {
                    take_member(&mut rec, key, &mut map)?;
                }
                Ok(Slot(Ok(rec)))
            }
            fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Slot<'de>, S::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Slot(Err(not_an_object())))
            }
            not_this!(Slot(Err(not_an_object())));
        }
        d.deserialize_any(V)
    }
}

/// One record ready for Kafka (its own headers; the request's forwarded ones go with it).
pub(super) struct Prepared<'a> {
    /// Borrowed from the body unless it had escapes.
    pub(super) key: Option<Cow<'a, [u8]>>,
    pub(super) value: Option<Vec<u8>>,
    pub(super) headers: Vec<(String, Vec<u8>)>,
    pub(super) partition: Option<i32>,
    pub(super) timestamp: Option<i64>,
}

/// Validates and encodes one record: the record as it goes to Kafka, or its report line.
pub(super) fn prepare<'a>(
    rec: &RecordIn<'a>,
    decl: &TopicDecl,
    schema: Option<&LatestSchema>,
    forwarded: &[(String, Vec<u8>)],
    max_record_bytes: usize,
) -> Result<Prepared<'a>, Line> {
    let bad = |m: String| Line::failed(VALIDATION, m);
    let map = &rec.fields;
    if let Some(k) = map.keys().find(|k| !RECORD_FIELDS.contains(&k.as_str())) {
        return Err(bad(format!("{k}: unknown field; allowed: {}", RECORD_FIELDS.join(", "))));
    }
    let key = rec.key.map(key_bytes).transpose().map_err(|()| bad("key: must be a string".into()))?.flatten();
    let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
    match map.get("headers") {
        None | Some(Json::Null) => {}
        Some(Json::Object(h)) => {
            for (name, v) in h {
                if name.starts_with("devcycle.") {
                    return Err(bad(format!("headers.{name}: the devcycle. prefix is reserved")));
                }
                let v = v.as_str().ok_or_else(|| bad(format!("headers.{name}: must be a string")))?;
                headers.push((name.clone(), v.as_bytes().to_vec()));
            }
        }
        Some(_) => return Err(bad("headers: must be an object of strings".into())),
    }
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
    if timestamp.is_some_and(|t| !(0..=chrono::Utc::now().timestamp_millis() + MAX_FUTURE_TIMESTAMP_MS).contains(&t)) {
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
    let size = key.as_ref().map_or(0, |k| k.len())
        + value.as_ref().map_or(0, Vec::len)
        + headers.iter().chain(forwarded).map(|(k, v)| k.len() + v.len()).sum::<usize>();
    if size > max_record_bytes {
        return Err(Line::failed(TOO_LARGE, format!("record is {size} bytes; the limit is {max_record_bytes}")));
    }
    Ok(Prepared { key, value, headers, partition, timestamp })
}

/// A record's key from its JSON text: its bytes (borrowed when the string has no escapes), `None`
/// for `null`; anything else is not a key.
fn key_bytes(raw: &RawValue) -> Result<Option<Cow<'_, [u8]>>, ()> {
    if let Ok(s) = serde_json::from_str::<&str>(raw.get()) {
        return Ok(Some(Cow::Borrowed(s.as_bytes())));
    }
    match serde_json::from_str::<Option<String>>(raw.get()) {
        Ok(s) => Ok(s.map(|s| Cow::Owned(s.into_bytes()))),
        Err(_) => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record as the tests look at it: its field names and its value's text.
    type Seen = (Vec<String>, Option<String>);

    fn lines_of(body: &str) -> Vec<Result<Seen, String>> {
        let body = read_body(body).expect("reads");
        let records = body.records.expect("has records").expect("an array");
        records
            .into_iter()
            .map(|r| match r {
                Ok(rec) => {
                    let names = rec.key.map(|_| "key".to_string()).into_iter().chain(rec.fields.keys().cloned());
                    Ok((names.collect(), rec.value.map(|v| v.get().to_string())))
                }
                Err(Line::Failed { code, message, .. }) => Err(format!("{code}: {message}")),
                Err(other) => panic!("unexpected line {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_body_of_records_is_read_in_one_pass_each_record_its_own_outcome() {
        let got = lines_of(
            r#"{"records": [{"key": "k", "value": {"x": [1, "a"]}, "partition": 0}, 5, [1, {}], null,
            {"value": null}, {"headers": {"h": "v"}}]}"#,
        );
        let bad = || Err(format!("{VALIDATION}: record: must be a JSON object"));
        assert_eq!(
            got,
            vec![
                Ok((vec!["key".into(), "partition".into()], Some(r#"{"x": [1, "a"]}"#.into()))),
                bad(),
                bad(),
                bad(),
                Ok((vec![], Some("null".into()))),
                Ok((vec!["headers".into()], None)),
            ]
        );
    }

    #[test]
    fn the_last_records_member_counts_and_other_members_are_kept() {
        let body = read_body(r#"{"records": 1, "extra": true, "records": [{"value": 2}]}"#).unwrap();
        assert_eq!(body.others, vec!["extra"]);
        assert_eq!(body.records.unwrap().unwrap().len(), 1);
        let not_array = read_body(r#"{"records": {"value": 1}}"#).unwrap();
        assert!(matches!(not_array.records, Some(None)));
    }

    #[test]
    fn a_single_record_body_keeps_its_value_unparsed() {
        let text = r#"{"key": "k\u00e9", "value": {"a": 1}}"#;
        let body = read_body(text).unwrap();
        assert!(body.records.is_none());
        assert_eq!(body.others, vec!["key", "value"]);
        for rec in [body.record, parse_record(text).unwrap()] {
            assert_eq!(rec.key.map(key_bytes), Some(Ok(Some(Cow::Owned("ké".as_bytes().to_vec())))));
            assert_eq!(rec.value.map(RawValue::get), Some(r#"{"a": 1}"#));
        }
    }

    #[test]
    fn a_key_is_borrowed_from_the_body_unless_it_has_escapes() {
        let key = |text: &'static str| {
            let raw: &RawValue = serde_json::from_str(text).unwrap();
            key_bytes(raw)
        };
        assert!(matches!(key(r#""k-1""#), Ok(Some(Cow::Borrowed(b"k-1")))));
        assert_eq!(key(r#""a\"b""#), Ok(Some(Cow::Owned(br#"a"b"#.to_vec()))));
        assert_eq!(key("null"), Ok(None));
        for not_a_string in ["1", "true", "[]", r#"{"k": "v"}"#] {
            assert_eq!(key(not_a_string), Err(()), "{not_a_string}");
        }
    }

    #[test]
    fn syntax_errors_and_non_objects_fail_the_whole_body() {
        use serde_json::error::Category;
        assert_eq!(read_body(r#"{"records": [{"value": 1}"#).err().map(|e| e.classify()), Some(Category::Eof));
        assert_eq!(read_body(r#"{"records": [}"#).err().map(|e| e.classify()), Some(Category::Syntax));
        assert_eq!(read_body("[1]").err().map(|e| e.classify()), Some(Category::Data));
        assert_eq!(read_body(r#"{"value": 1} x"#).err().map(|e| e.classify()), Some(Category::Syntax));
    }
}
