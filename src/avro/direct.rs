//! Avro binary for DevCycle's own records (TaskRequest, TaskResult, TaskEvent), written straight
//! from the domain types, field by field in the order of `schemas/*.avsc`: no `Value` tree, no
//! per-record schema walk. Those took ~13% of a processor's CPU per task (three records each).
//!
//! Invariant: used only for a subject whose latest registered schema is DevCycle's own, in the
//! same canonical form ([`Codec`](super::Codec) checks, and falls back to the generic encoder
//! otherwise); the tests compare every byte with apache_avro's encoding of the same record.

use crate::domain::{TaskEvent, TaskRequest, TaskResult};
use uuid::Uuid;

/// A record in the Confluent wire format: magic byte 0, the schema id (big-endian), the body.
pub fn framed(id: u32, body: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.push(0);
    out.extend_from_slice(&id.to_be_bytes());
    body(&mut out);
    out
}

/// Avro `long`/`int`: zig-zag, then a little-endian base-128 varint (an `int` in range encodes
/// to the same bytes as the equal `long`). Also the gateway's JSON-to-Avro writer's.
pub(crate) fn long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// Avro `bytes` (and a `string`'s UTF-8): the length, then the bytes.
pub(crate) fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    long(out, b.len() as i64);
    out.extend_from_slice(b);
}

fn string(out: &mut Vec<u8>, s: &str) {
    bytes(out, s.as_bytes());
}

/// `{"type": "string", "logicalType": "uuid"}`: the hyphenated lower-case text.
fn uuid(out: &mut Vec<u8>, id: Uuid) {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    string(out, id.hyphenated().encode_lower(&mut buf));
}

/// `["null", T]`: branch 0 for null, else branch 1 and the value.
fn opt<T>(out: &mut Vec<u8>, v: Option<T>, write: impl FnOnce(&mut Vec<u8>, T)) {
    match v {
        None => long(out, 0),
        Some(x) => {
            long(out, 1);
            write(out, x);
        }
    }
}

fn json(out: &mut Vec<u8>, v: &serde_json::Value) {
    string(out, &v.to_string());
}

pub fn request(out: &mut Vec<u8>, r: &TaskRequest) {
    uuid(out, r.task_id);
    string(out, &r.agent);
    json(out, &r.input);
    long(out, r.priority.into());
    opt(out, r.submitted_by.as_deref(), string);
    long(out, r.submitted_at.timestamp_millis());
    opt(out, r.deadline, |o, t| long(o, t.timestamp_millis()));
    opt(out, r.request_id.as_deref(), string);
    opt(out, r.traceparent.as_deref(), string);
    opt(out, r.tracestate.as_deref(), string);
    long(out, r.attempt.into());
}

pub fn result(out: &mut Vec<u8>, r: &TaskResult) {
    uuid(out, r.task_id);
    string(out, &r.agent);
    string(out, r.status.as_str());
    opt(out, r.output.as_ref(), json);
    opt(out, r.error.as_deref(), string);
    opt(out, r.error_class.as_deref(), string);
    long(out, r.attempts.into());
    opt(out, r.started_at, |o, t| long(o, t.timestamp_millis()));
    long(out, r.finished_at.timestamp_millis());
    opt(out, r.request_id.as_deref(), string);
    opt(out, r.traceparent.as_deref(), string);
    string(out, &r.processor);
    opt(out, r.source_topic.as_deref(), string);
    opt(out, r.source_partition, |o, p| long(o, p.into()));
    opt(out, r.source_offset, long);
}

pub fn event(out: &mut Vec<u8>, e: &TaskEvent) {
    uuid(out, e.event_id);
    uuid(out, e.task_id);
    string(out, &e.agent);
    opt(out, e.from_status, |o, s| string(o, s.as_str()));
    string(out, e.to_status.as_str());
    long(out, e.attempt.into());
    opt(out, e.message.as_deref(), string);
    long(out, e.at.timestamp_millis());
    opt(out, e.request_id.as_deref(), string);
}

#[cfg(test)]
#[allow(deprecated)] // to_avro_datum: apache_avro's plainest writer, the reference here
mod tests {
    use super::super::{event_to_value, request_to_value, result_to_value};
    use crate::domain::{TaskEvent, TaskRequest, TaskResult, TaskStatus};
    use apache_avro::Schema;
    use chrono::{TimeZone, Utc};
    use serde_json::json;

    fn generic(avsc: &str, value: apache_avro::types::Value) -> Vec<u8> {
        let schema = Schema::parse_str(avsc).expect("schema parses");
        apache_avro::to_avro_datum(&schema, value).expect("apache_avro encodes")
    }

    fn direct(write: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut out = Vec::new();
        write(&mut out);
        out
    }

    const REQUEST: &str = include_str!("../../schemas/TaskRequest.avsc");
    const RESULT: &str = include_str!("../../schemas/TaskResult.avsc");
    const EVENT: &str = include_str!("../../schemas/TaskEvent.avsc");

    #[test]
    fn requests_are_the_bytes_apache_avro_writes() {
        let mut full = TaskRequest::new("echo", json!({"text": "héllo", "n": [1, 2, 3]}));
        full.priority = -1000;
        full.submitted_by = Some("user-1".into());
        full.deadline = Some(Utc.timestamp_millis_opt(4_102_444_800_123).unwrap());
        full.request_id = Some("req".into());
        full.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        full.tracestate = Some("k=v".into());
        full.attempt = 300;
        let bare = TaskRequest::new("a", json!(null));
        for r in [full, bare] {
            assert_eq!(direct(|o| super::request(o, &r)), generic(REQUEST, request_to_value(&r)));
        }
    }

    #[test]
    fn results_are_the_bytes_apache_avro_writes() {
        let full = TaskResult {
            task_id: uuid::Uuid::new_v4(),
            agent: "echo".into(),
            status: TaskStatus::Failed,
            output: Some(json!({"long": "x".repeat(300)})),
            error: Some("boom".into()),
            error_class: Some("agent_error".into()),
            attempts: i32::MAX,
            started_at: Some(Utc.timestamp_millis_opt(-5).unwrap()),
            finished_at: Utc::now(),
            request_id: Some("r".into()),
            traceparent: Some("t".into()),
            processor: "agent-executor".into(),
            source_topic: Some("devcycle.task-requests".into()),
            source_partition: Some(5),
            source_offset: Some(i64::MAX),
        };
        let bare = TaskResult {
            output: None,
            error: None,
            error_class: None,
            attempts: 0,
            started_at: None,
            request_id: None,
            traceparent: None,
            source_topic: None,
            source_partition: None,
            source_offset: None,
            status: TaskStatus::Succeeded,
            ..full.clone()
        };
        for r in [full, bare] {
            assert_eq!(direct(|o| super::result(o, &r)), generic(RESULT, result_to_value(&r)));
        }
    }

    #[test]
    fn events_are_the_bytes_apache_avro_writes() {
        let id = uuid::Uuid::new_v4();
        let mut full = TaskEvent::new(id, "echo", Some(TaskStatus::Running), TaskStatus::Succeeded, 2, None, None);
        full.message = Some("done".into());
        full.request_id = Some("req".into());
        let bare = TaskEvent::new(id, "echo", None, TaskStatus::Queued, 0, None, None);
        for e in [full, bare] {
            assert_eq!(direct(|o| super::event(o, &e)), generic(EVENT, event_to_value(&e)));
        }
    }

    #[test]
    fn only_devcycles_own_schema_is_written_directly() {
        use super::super::{writer_for, Writer};
        let ours = Schema::parse_str(RESULT).unwrap();
        // The same schema as the registry returns it (other whitespace, docs): direct, its id.
        let compact = serde_json::to_string(&serde_json::from_str::<serde_json::Value>(RESULT).unwrap()).unwrap();
        assert_eq!(writer_for(7, &compact, &ours), Writer::Direct(7));
        // An evolved latest version (a field added): the generic encoder, against it.
        let mut evolved: serde_json::Value = serde_json::from_str(RESULT).unwrap();
        evolved["fields"].as_array_mut().unwrap().push(json!({"name": "extra", "type": "string", "default": ""}));
        assert_eq!(writer_for(8, &evolved.to_string(), &ours), Writer::Generic);
        assert_eq!(writer_for(9, "not a schema", &ours), Writer::Generic);
    }

    #[test]
    fn framing_is_magic_byte_and_big_endian_id() {
        assert_eq!(super::framed(0x0102_0304, |o| o.push(9)), vec![0, 1, 2, 3, 4, 9]);
    }
}
