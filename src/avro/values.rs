//! DevCycle's domain types to and from `apache_avro` values (the path for records whose writer
//! schema is not DevCycle's own; see [`super::direct`] for the fast one).
//!
//! Invariant: decoding validates every field into the domain type; a missing or ill-typed field
//! is a [`DecodeError::Poison`], never a default.

use super::*;

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
pub(super) fn record(fields: Vec<(&str, Value)>) -> Value {
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
