//! The HTTP gateway to topics, transport-free parts: JSON values converted to Avro with a
//! topic's registered schema (`json_avro`, its rules), the registry's latest schemas cached per
//! subject ([`latest_schema`]), and the Confluent wire format ([`LatestSchema::encode_text`]).
//!
//! Invariants: a value is encoded only after it converted cleanly against the subject's latest
//! registered schema, and always with that schema's registry id, so consumers decode it with
//! the exact writer schema; the cache never serves an entry older than its TTL.

mod json_avro;

pub use json_avro::JsonKey;

use crate::avro::{names_of, Names};
use json_avro::write_text;

use apache_avro::Schema;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The latest registered schema of a subject.
#[derive(Debug)]
pub struct LatestSchema {
    pub subject: String,
    pub id: u32,
    pub version: i64,
    /// The schema's JSON text as the registry holds it.
    pub text: String,
    pub schema: Schema,
    /// The schema's named types, resolved once per fetch (not per record).
    names: Names,
}

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("schema registry unavailable: {0}")]
    Unavailable(String),
    #[error("subject {0} has no registered schema")]
    Missing(String),
    #[error("subject {subject}: {message}")]
    Invalid { subject: String, message: String },
}

type CacheMap = HashMap<(String, String), (Instant, Arc<LatestSchema>)>;

fn cache() -> &'static Mutex<CacheMap> {
    static CACHE: OnceLock<Mutex<CacheMap>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// The latest schema of `subject` from the registry at `base`, cached for `ttl`, fetched with
/// `http`. The client is the caller's (one per app, see [`crate::app::Deps`]), not one for the
/// process: a pooled connection belongs to the runtime that opened it, and a client shared by
/// runtimes (tests, the load generator) handed out connections whose runtime had ended ("error
/// sending request").
pub async fn latest_schema(
    http: &reqwest::Client,
    base: &str,
    subject: &str,
    ttl: Duration,
    timeout: Duration,
) -> Result<Arc<LatestSchema>, SchemaError> {
    let key = (base.to_string(), subject.to_string());
    if let Some((at, s)) = cache().lock().expect("schema cache lock").get(&key) {
        if at.elapsed() < ttl {
            return Ok(s.clone());
        }
    }
    let url = format!("{}/subjects/{subject}/versions/latest", base.trim_end_matches('/'));
    let resp = http
        .get(&url)
        .header("Accept", "application/vnd.schemaregistry.v1+json")
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| SchemaError::Unavailable(e.to_string()))?;
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.map_err(|e| SchemaError::Unavailable(e.to_string()))?;
    match status {
        200 => {}
        404 => return Err(SchemaError::Missing(subject.to_string())),
        s if s >= 500 => return Err(SchemaError::Unavailable(format!("registry answered {s}: {body}"))),
        s => {
            return Err(SchemaError::Invalid {
                subject: subject.into(),
                message: format!("registry answered {s}: {body}"),
            })
        }
    }
    let invalid = |m: &str| SchemaError::Invalid { subject: subject.into(), message: m.to_string() };
    let id = body["id"].as_u64().and_then(|i| u32::try_from(i).ok()).ok_or_else(|| invalid("no schema id"))?;
    let text = body["schema"].as_str().ok_or_else(|| invalid("no schema text"))?.to_string();
    let schema = Schema::parse_str(&text).map_err(|e| invalid(&e.to_string()))?;
    let names = names_of(&schema).map_err(|e| invalid(&e))?;
    let latest = Arc::new(LatestSchema {
        subject: subject.to_string(),
        id,
        version: body["version"].as_i64().unwrap_or(0),
        text,
        schema,
        names,
    });
    cache().lock().expect("schema cache lock").insert(key, (Instant::now(), latest.clone()));
    Ok(latest)
}

impl LatestSchema {
    /// A value given as JSON text (the `json_avro` rules, converted as it is parsed) in the
    /// Confluent wire format: magic byte 0, the 4-byte big-endian schema id, the Avro binary body.
    pub fn encode_text(&self, json: &str) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(128);
        out.push(0);
        out.extend_from_slice(&self.id.to_be_bytes());
        write_text(&self.schema, &self.names, json, &mut out)?;
        Ok(out)
    }
}
