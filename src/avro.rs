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
#[cfg(test)]
#[allow(deprecated)] // to/from_avro_datum are the simplest raw round trip
mod tests;
mod values;

pub use values::*;

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
