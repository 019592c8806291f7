//! Encoding and decoding round trips, schema evolution and poison records.

use super::values::record;
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
