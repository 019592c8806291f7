//! Avro at the edge: domain types to and from Confluent wire-format records (magic byte,
//! 4-byte schema id, Avro body), through the schema registry.
//!
//! Invariants: records are encoded against the subject's registered schema (`<topic>-value`);
//! decoding uses the writer schema named by the record's id, then resolves into DevCycle's own
//! reader schema, so producers may evolve BACKWARD-compatibly. A record that cannot be read is a
//! [`DecodeError::Poison`] (dead-letter it); a registry that cannot be reached is
//! [`DecodeError::Unavailable`] (retry later). DevCycle's own records are written by
//! `direct` when the subject's latest schema is DevCycle's, else through `apache_avro` values.

use crate::domain::{TaskEvent, TaskRequest, TaskResult, TaskStatus};
use apache_avro::schema::{Name, ResolvedSchema};
use apache_avro::types::Value;
use apache_avro::Schema;
use chrono::{DateTime, TimeZone, Utc};
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::{get_schema_by_subject, SrSettings};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::SubjectNameStrategy;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::OnceCell;
use uuid::Uuid;

pub(crate) mod direct;

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The record can never be read: dead-letter it. `class` is a stable reason code.
    #[error("{class}: {message}")]
    Poison { class: &'static str, message: String },
    /// The registry is unreachable: retry later.
    #[error("schema registry unavailable: {0}")]
    Unavailable(String),
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("schema registry unavailable: {0}")]
    Unavailable(String),
    #[error("cannot encode record: {0}")]
    Invalid(String),
}

fn poison(class: &'static str, message: impl ToString) -> DecodeError {
    DecodeError::Poison { class, message: message.to_string() }
}

/// Encodes and decodes DevCycle's records through the registry, with cached schemas.
pub struct Codec {
    encoder: AvroEncoder,
    decoder: AvroDecoder,
    registry: SrSettings,
    /// Reader schemas by name, with their named types resolved once (not per record).
    readers: BTreeMap<String, (Schema, Names)>,
    /// How records to each topic are written, decided once per topic.
    writers: Mutex<HashMap<String, Arc<OnceCell<Writer>>>>,
}

/// How a topic's records are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    /// The subject's latest schema is DevCycle's own (this id): `direct` writes the body.
    Direct(u32),
    /// Another schema is the latest: `apache_avro` encodes the record against it.
    Generic,
}

/// The writer for a subject whose latest registered schema is `latest` (with this id), given
/// DevCycle's own schema for the record.
pub fn writer_for(id: u32, latest: &str, ours: &Schema) -> Writer {
    match Schema::parse_str(latest) {
        Ok(s) if s.canonical_form() == ours.canonical_form() => Writer::Direct(id),
        _ => Writer::Generic,
    }
}

/// The named types of a schema (what its references resolve to), resolved once.
pub type Names = HashMap<Name, Schema>;

/// The named types of `schema`.
pub fn names_of(schema: &Schema) -> Result<Names, String> {
    let resolved = ResolvedSchema::try_from(schema).map_err(|e| format!("schema: {e}"))?;
    Ok(resolved.get_names().iter().map(|(k, v)| (k.clone(), (*v).clone())).collect())
}

impl Codec {
    /// `schemas` maps a schema name (TaskRequest, ...) to its `.avsc` text.
    pub fn new(
        registry_url: &str,
        timeout: Duration,
        schemas: &BTreeMap<String, String>,
    ) -> Result<Codec, EncodeError> {
        let settings = || {
            SrSettings::new_builder(registry_url.to_string())
                .set_timeout(timeout)
                .build()
                .map_err(|e| EncodeError::Invalid(e.to_string()))
        };
        let mut readers = BTreeMap::new();
        for (name, text) in schemas {
            let schema = Schema::parse_str(text).map_err(|e| EncodeError::Invalid(e.to_string()))?;
            let names = names_of(&schema).map_err(EncodeError::Invalid)?;
            readers.insert(name.clone(), (schema, names));
        }
        Ok(Codec {
            encoder: AvroEncoder::new(settings()?),
            decoder: AvroDecoder::new(settings()?),
            registry: settings()?,
            readers,
            writers: Mutex::default(),
        })
    }

    /// How records of DevCycle's schema `name` are written to `topic`: looked up in the
    /// registry once per topic (concurrent first uses share the lookup). Known writers are
    /// answered without the lookup's state, which is boxed, so the futures of the encoders
    /// (held by every task while it publishes) stay small.
    pub async fn writer(&self, topic: &str, name: &str) -> Result<Writer, EncodeError> {
        let cell = {
            let mut writers = self.writers.lock().expect("lock");
            match writers.get(topic) {
                Some(c) => match c.get() {
                    Some(w) => return Ok(*w),
                    None => c.clone(),
                },
                None => writers.entry(topic.to_string()).or_default().clone(),
            }
        };
        let lookup = async {
            let strategy = SubjectNameStrategy::TopicNameStrategy(topic.to_string(), false);
            let latest = get_schema_by_subject(&self.registry, &strategy).await.map_err(encode_error)?;
            let (ours, _) = self.readers.get(name).ok_or_else(|| EncodeError::Invalid(format!("no schema {name}")))?;
            Ok::<_, EncodeError>(if latest.references.is_empty() {
                writer_for(latest.id, &latest.schema, ours)
            } else {
                Writer::Generic
            })
        };
        Ok(*Box::pin(cell.get_or_try_init(|| lookup)).await?)
    }

    async fn encode(&self, topic: &str, value: Value) -> Result<Vec<u8>, EncodeError> {
        let strategy = SubjectNameStrategy::TopicNameStrategy(topic.to_string(), false);
        self.encoder.encode_value(value, &strategy).await.map_err(encode_error)
    }

    pub async fn encode_request(&self, topic: &str, r: &TaskRequest) -> Result<Vec<u8>, EncodeError> {
        match self.writer(topic, "TaskRequest").await? {
            Writer::Direct(id) => Ok(direct::framed(id, |out| direct::request(out, r))),
            Writer::Generic => Box::pin(self.encode(topic, request_to_value(r))).await,
        }
    }
    pub async fn encode_result(&self, topic: &str, r: &TaskResult) -> Result<Vec<u8>, EncodeError> {
        match self.writer(topic, "TaskResult").await? {
            Writer::Direct(id) => Ok(direct::framed(id, |out| direct::result(out, r))),
            Writer::Generic => Box::pin(self.encode(topic, result_to_value(r))).await,
        }
    }
    pub async fn encode_event(&self, topic: &str, e: &TaskEvent) -> Result<Vec<u8>, EncodeError> {
        match self.writer(topic, "TaskEvent").await? {
            Writer::Direct(id) => Ok(direct::framed(id, |out| direct::event(out, e))),
            Writer::Generic => Box::pin(self.encode(topic, event_to_value(e))).await,
        }
    }

    /// Decodes a wire-format record into a value of the reader schema `reader`.
    pub async fn decode_value(&self, reader: &str, payload: Option<&[u8]>) -> Result<Value, DecodeError> {
        let bytes = payload.ok_or_else(|| poison("empty_value", "record has no value"))?;
        if bytes.len() < 5 || bytes[0] != 0 {
            return Err(poison("bad_magic_byte", "value is not in the Confluent wire format (magic byte 0)"));
        }
        let decoded = self.decoder.decode(Some(bytes)).await.map_err(classify)?;
        let (schema, names) = self.readers.get(reader).ok_or_else(|| poison("no_reader_schema", reader))?;
        decoded
            .value
            .resolve_with_names(schema, names)
            .map_err(|e| poison("incompatible_schema", format!("cannot be read as {reader}: {e}")))
    }

    pub async fn decode_request(&self, payload: Option<&[u8]>) -> Result<TaskRequest, DecodeError> {
        request_from_value(self.decode_value("TaskRequest", payload).await?)
    }
    pub async fn decode_result(&self, payload: Option<&[u8]>) -> Result<TaskResult, DecodeError> {
        result_from_value(self.decode_value("TaskResult", payload).await?)
    }
}

fn encode_error(e: SRCError) -> EncodeError {
    if e.retriable {
        EncodeError::Unavailable(e.to_string())
    } else {
        EncodeError::Invalid(e.to_string())
    }
}

fn classify(e: SRCError) -> DecodeError {
    if e.retriable {
        DecodeError::Unavailable(e.to_string())
    } else if e.error.contains("schema") || e.error.contains("id") {
        // Registry answered but does not know the id, or the schema does not parse.
        poison("unknown_schema", e.to_string())
    } else {
        poison("invalid_avro", e.to_string())
    }
}

// ---- Value builders ----------------------------------------------------------------------

fn opt_str(v: &Option<String>) -> Value {
    match v {
        Some(s) => Value::Union(1, Box::new(Value::String(s.clone()))),
        None => Value::Union(0, Box::new(Value::Null)),
    }
}
fn opt_ts(v: &Option<DateTime<Utc>>) -> Value {
    match v {
        Some(t) => Value::Union(1, Box::new(Value::TimestampMillis(t.timestamp_millis()))),
        None => Value::Union(0, Box::new(Value::Null)),
    }
}
fn opt<T>(v: Option<T>, f: impl FnOnce(T) -> Value) -> Value {
    match v {
        Some(x) => Value::Union(1, Box::new(f(x))),
        None => Value::Union(0, Box::new(Value::Null)),
    }
}
fn record(fields: Vec<(&str, Value)>) -> Value {
    Value::Record(fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

pub fn request_to_value(r: &TaskRequest) -> Value {
    record(vec![
        ("task_id", Value::Uuid(r.task_id)),
        ("agent", Value::String(r.agent.clone())),
        ("input", Value::String(r.input.to_string())),
        ("priority", Value::Int(r.priority)),
        ("submitted_by", opt_str(&r.submitted_by)),
        ("submitted_at", Value::TimestampMillis(r.submitted_at.timestamp_millis())),
        ("deadline", opt_ts(&r.deadline)),
        ("request_id", opt_str(&r.request_id)),
        ("traceparent", opt_str(&r.traceparent)),
        ("tracestate", opt_str(&r.tracestate)),
        ("attempt", Value::Int(r.attempt)),
    ])
}

pub fn result_to_value(r: &TaskResult) -> Value {
    record(vec![
        ("task_id", Value::Uuid(r.task_id)),
        ("agent", Value::String(r.agent.clone())),
        ("status", Value::String(r.status.as_str().into())),
        ("output", opt(r.output.as_ref(), |o| Value::String(o.to_string()))),
        ("error", opt_str(&r.error)),
        ("error_class", opt_str(&r.error_class)),
        ("attempts", Value::Int(r.attempts)),
        ("started_at", opt_ts(&r.started_at)),
        ("finished_at", Value::TimestampMillis(r.finished_at.timestamp_millis())),
        ("request_id", opt_str(&r.request_id)),
        ("traceparent", opt_str(&r.traceparent)),
        ("processor", Value::String(r.processor.clone())),
        ("source_topic", opt_str(&r.source_topic)),
        ("source_partition", opt(r.source_partition, Value::Int)),
        ("source_offset", opt(r.source_offset, Value::Long)),
    ])
}

pub fn event_to_value(e: &TaskEvent) -> Value {
    record(vec![
        ("event_id", Value::Uuid(e.event_id)),
        ("task_id", Value::Uuid(e.task_id)),
        ("agent", Value::String(e.agent.clone())),
        ("from_status", opt(e.from_status, |s| Value::String(s.as_str().into()))),
        ("to_status", Value::String(e.to_status.as_str().into())),
        ("attempt", Value::Int(e.attempt)),
        ("message", opt_str(&e.message)),
        ("at", Value::TimestampMillis(e.at.timestamp_millis())),
        ("request_id", opt_str(&e.request_id)),
    ])
}

// ---- Value readers -----------------------------------------------------------------------

struct Fields(BTreeMap<String, Value>);

impl Fields {
    fn of(v: Value) -> Result<Fields, DecodeError> {
        match v {
            Value::Record(f) => Ok(Fields(f.into_iter().collect())),
            other => Err(poison("invalid_avro", format!("expected a record, got {other:?}"))),
        }
    }
    fn take(&mut self, k: &str) -> Result<Value, DecodeError> {
        let v = self.0.remove(k).ok_or_else(|| poison("invalid_avro", format!("missing field `{k}`")))?;
        Ok(match v {
            Value::Union(_, inner) => *inner,
            other => other,
        })
    }
    fn string(&mut self, k: &str) -> Result<String, DecodeError> {
        match self.take(k)? {
            Value::String(s) => Ok(s),
            Value::Uuid(u) => Ok(u.to_string()),
            other => Err(bad(k, &other)),
        }
    }
    fn opt_string(&mut self, k: &str) -> Result<Option<String>, DecodeError> {
        match self.take(k)? {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s)),
            other => Err(bad(k, &other)),
        }
    }
    fn uuid(&mut self, k: &str) -> Result<Uuid, DecodeError> {
        match self.take(k)? {
            Value::Uuid(u) => Ok(u),
            Value::String(s) => Uuid::parse_str(&s).map_err(|e| poison("invalid_field", format!("`{k}`: {e}"))),
            other => Err(bad(k, &other)),
        }
    }
    fn int(&mut self, k: &str) -> Result<i32, DecodeError> {
        match self.take(k)? {
            Value::Int(i) => Ok(i),
            other => Err(bad(k, &other)),
        }
    }
    fn opt_long(&mut self, k: &str) -> Result<Option<i64>, DecodeError> {
        match self.take(k)? {
            Value::Null => Ok(None),
            Value::Long(i) | Value::TimestampMillis(i) => Ok(Some(i)),
            Value::Int(i) => Ok(Some(i.into())),
            other => Err(bad(k, &other)),
        }
    }
    fn ts(&mut self, k: &str) -> Result<DateTime<Utc>, DecodeError> {
        self.opt_ts(k)?.ok_or_else(|| poison("invalid_field", format!("`{k}` is null")))
    }
    fn opt_ts(&mut self, k: &str) -> Result<Option<DateTime<Utc>>, DecodeError> {
        match self.opt_long(k)? {
            None => Ok(None),
            Some(ms) => Utc
                .timestamp_millis_opt(ms)
                .single()
                .map(Some)
                .ok_or_else(|| poison("invalid_field", format!("`{k}` is out of range"))),
        }
    }
}

fn bad(k: &str, v: &Value) -> DecodeError {
    poison("invalid_field", format!("field `{k}` has unexpected value {v:?}"))
}

fn json(k: &str, text: &str) -> Result<serde_json::Value, DecodeError> {
    serde_json::from_str(text).map_err(|e| poison("invalid_json_input", format!("`{k}` is not JSON: {e}")))
}

pub fn request_from_value(v: Value) -> Result<TaskRequest, DecodeError> {
    let mut f = Fields::of(v)?;
    let agent = f.string("agent")?;
    crate::domain::validate_agent_name(&agent).map_err(|m| poison("invalid_field", format!("agent: {m}")))?;
    Ok(TaskRequest {
        task_id: f.uuid("task_id")?,
        agent,
        input: json("input", &f.string("input")?)?,
        priority: f.int("priority")?,
        submitted_by: f.opt_string("submitted_by")?,
        submitted_at: f.ts("submitted_at")?,
        deadline: f.opt_ts("deadline")?,
        request_id: f.opt_string("request_id")?,
        traceparent: f.opt_string("traceparent")?,
        tracestate: f.opt_string("tracestate")?,
        attempt: f.int("attempt")?,
    })
}

pub fn result_from_value(v: Value) -> Result<TaskResult, DecodeError> {
    let mut f = Fields::of(v)?;
    let status: TaskStatus = f.string("status")?.parse().map_err(|e: String| poison("invalid_field", e))?;
    Ok(TaskResult {
        task_id: f.uuid("task_id")?,
        agent: f.string("agent")?,
        status,
        output: f.opt_string("output")?.map(|o| json("output", &o)).transpose()?,
        error: f.opt_string("error")?,
        error_class: f.opt_string("error_class")?,
        attempts: f.int("attempts")?,
        started_at: f.opt_ts("started_at")?,
        finished_at: f.ts("finished_at")?,
        request_id: f.opt_string("request_id")?,
        traceparent: f.opt_string("traceparent")?,
        processor: f.string("processor")?,
        source_topic: f.opt_string("source_topic")?,
        source_partition: f.opt_long("source_partition")?.map(|p| p as i32),
        source_offset: f.opt_long("source_offset")?,
    })
}

#[cfg(test)]
#[allow(deprecated)] // to/from_avro_datum are the simplest raw round trip
mod tests {
    use super::*;

    fn schema(name: &str) -> Schema {
        let path = format!("{}/schemas/{name}.avsc", env!("CARGO_MANIFEST_DIR"));
        Schema::parse_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn sample_request() -> TaskRequest {
        TaskRequest {
            task_id: Uuid::new_v4(),
            agent: "echo".into(),
            input: serde_json::json!({"text": "hi", "n": [1, 2]}),
            priority: 3,
            submitted_by: Some("u1".into()),
            submitted_at: Utc.timestamp_millis_opt(1_700_000_000_123).unwrap(),
            deadline: None,
            request_id: Some("req_1".into()),
            traceparent: None,
            tracestate: None,
            attempt: 1,
        }
    }

    #[test]
    fn request_round_trips_through_avro_bytes() {
        let s = schema("TaskRequest");
        let r = sample_request();
        let bytes = apache_avro::to_avro_datum(&s, request_to_value(&r)).unwrap();
        let v = apache_avro::from_avro_datum(&s, &mut &bytes[..], None).unwrap();
        assert_eq!(request_from_value(v.resolve(&s).unwrap()).unwrap(), r);
    }

    #[test]
    fn result_and_event_encode_against_their_schemas() {
        let r = TaskResult {
            task_id: Uuid::new_v4(),
            agent: "echo".into(),
            status: TaskStatus::Succeeded,
            output: Some(serde_json::json!({"ok": true})),
            error: None,
            error_class: None,
            attempts: 1,
            started_at: Some(Utc.timestamp_millis_opt(1).unwrap()),
            finished_at: Utc.timestamp_millis_opt(2).unwrap(),
            request_id: None,
            traceparent: None,
            processor: "agent-executor".into(),
            source_topic: Some("t".into()),
            source_partition: Some(1),
            source_offset: Some(42),
        };
        let s = schema("TaskResult");
        let bytes = apache_avro::to_avro_datum(&s, result_to_value(&r)).unwrap();
        let v = apache_avro::from_avro_datum(&s, &mut &bytes[..], None).unwrap();
        assert_eq!(result_from_value(v).unwrap(), r);
        let e = TaskEvent::new(r.task_id, "echo", None, TaskStatus::Running, 1, None, None);
        apache_avro::to_avro_datum(&schema("TaskEvent"), event_to_value(&e)).unwrap();
    }

    #[test]
    fn an_older_writer_without_optional_fields_is_readable() {
        // A producer on an older schema that lacks the optional fields still decodes.
        let old = Schema::parse_str(
            r#"{"type":"record","name":"TaskRequest","namespace":"dev.devcycle.tasks.v1","fields":[
            {"name":"task_id","type":"string"},{"name":"agent","type":"string"},{"name":"input","type":"string"},
            {"name":"submitted_at","type":"long"}]}"#,
        )
        .unwrap();
        let id = Uuid::new_v4();
        let v = record(vec![
            ("task_id", Value::String(id.to_string())),
            ("agent", Value::String("echo".into())),
            ("input", Value::String("{}".into())),
            ("submitted_at", Value::Long(5)),
        ]);
        let bytes = apache_avro::to_avro_datum(&old, v).unwrap();
        let written = apache_avro::from_avro_datum(&old, &mut &bytes[..], None).unwrap();
        let r = request_from_value(written.resolve(&schema("TaskRequest")).unwrap()).unwrap();
        assert_eq!((r.task_id, r.attempt, r.priority), (id, 1, 0));
    }

    #[test]
    fn invalid_json_input_is_poison() {
        let mut r = request_to_value(&sample_request());
        if let Value::Record(f) = &mut r {
            f[2].1 = Value::String("{not json".into());
        }
        assert!(matches!(request_from_value(r), Err(DecodeError::Poison { class: "invalid_json_input", .. })));
    }
}
