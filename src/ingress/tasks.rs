//! `POST /v1/tasks` (submit: JSON in, an Avro TaskRequest on the requests topic out) and
//! `GET /v1/tasks/{id}` (status: Redis first, Postgres as the record).
//!
//! Invariants: a submission is answered 202 only after Kafka acknowledged the record (acks=all,
//! idempotent producer); the task reads `queued` from the moment it is answered (unless Redis
//! is down: then from Postgres once it starts); nothing is produced for a request that fails
//! validation. With an `Idempotency-Key` the task id is derived from the caller and the key, so
//! a retry names the same task: it gets the stored answer (Postgres, `gateway.idempotency_ttl_secs`),
//! or after that expired, the task's record once a processor has written it.
use super::body::{json_object, only_keys, opt_str};
use super::envelope::ok;
use super::idempotency::{self, Reservation};
use super::{ApiError, Ctx, HttpResponse};
use crate::domain::{AgentStatus, TaskRequest};
use crate::kafka::{OutRecord, ProduceError};
use chrono::{DateTime, Utc};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

const REQUESTS_TOPIC: &str = "devcycle.task-requests";
const MAX_KEY_LEN: usize = 256;

/// The namespace of task ids derived from an `Idempotency-Key` (UUIDv5 of `<caller>\n<key>`).
const IDEMPOTENT_TASKS: Uuid = Uuid::from_u128(0x6465_7663_7963_6c65_2d74_6173_6b2d_6964);

/// A validated submission.
struct Submission {
    agent: String,
    input: Value,
    priority: i32,
    deadline: Option<DateTime<Utc>>,
    key: Option<String>,
}

fn validate(map: serde_json::Map<String, Value>) -> Result<Submission, ApiError> {
    only_keys(&map, &["agent", "input", "priority", "deadline", "key"])?;
    let agent = opt_str(&map, "agent")?.ok_or_else(|| ApiError::validation("agent", "is required"))?;
    crate::domain::validate_agent_name(agent).map_err(|m| ApiError::validation("agent", m))?;
    let input = map.get("input").cloned().ok_or_else(|| ApiError::validation("input", "is required"))?;
    let priority = match map.get("priority") {
        None | Some(Value::Null) => 0,
        Some(v) => v
            .as_i64()
            .filter(|p| (-1000..=1000).contains(p))
            .ok_or_else(|| ApiError::validation("priority", "must be an integer from -1000 to 1000"))?
            as i32,
    };
    let deadline = match opt_str(&map, "deadline")? {
        None => None,
        Some(s) => {
            let d = DateTime::parse_from_rfc3339(s)
                .map_err(|_| ApiError::validation("deadline", "must be an RFC 3339 timestamp"))?
                .with_timezone(&Utc);
            if d <= Utc::now() {
                return Err(ApiError::validation("deadline", "must be in the future"));
            }
            Some(d)
        }
    };
    let key = opt_str(&map, "key")?.map(String::from);
    if key.as_ref().is_some_and(|k| k.is_empty() || k.len() > MAX_KEY_LEN) {
        return Err(ApiError::validation("key", format!("must be 1 to {MAX_KEY_LEN} bytes")));
    }
    Ok(Submission { agent: agent.to_string(), input, priority, deadline, key })
}

pub async fn submit(ctx: &Ctx, req: Request<Incoming>) -> Result<HttpResponse, ApiError> {
    let deps = &ctx.deps;
    let tracestate = req.headers().get("tracestate").and_then(|v| v.to_str().ok()).map(String::from);
    let idem_key = idempotency::key_of(&req)?;
    let body = json_object(req, deps.settings.http.max_body_bytes).await?;
    let hash = idem_key
        .as_ref()
        .map(|_| idempotency::fingerprint("task", &idempotency::canonical(serde_json::Value::Object(body.clone()))));
    let sub = validate(body)?;
    match (idem_key, hash) {
        // Boxed: the keyed path's futures would otherwise be part of every submission's.
        (Some(key), Some(hash)) => Box::pin(submit_keyed(ctx, sub, key, hash, tracestate)).await,
        _ => produce_task(ctx, sub, Uuid::new_v4(), tracestate).await,
    }
}

/// A submission with an `Idempotency-Key`: replayed, answered from the task's record, or
/// produced as the task the key names.
async fn submit_keyed(
    ctx: &Ctx,
    sub: Submission,
    key: String,
    hash: String,
    tracestate: Option<String>,
) -> Result<HttpResponse, ApiError> {
    let deps = &ctx.deps;
    let caller = ctx.principal.as_ref().map_or("-", |p| p.id.as_str());
    let task_id = Uuid::new_v5(&IDEMPOTENT_TASKS, format!("{caller}\n{key}").as_bytes());
    let reserved = match idempotency::reserve(ctx, idempotency::record_id(ctx, "tasks", &key), hash).await? {
        Reservation::Replay(answer) => return Ok(answer),
        Reservation::Fresh(reserved) => reserved,
    };
    // The stored answer may have expired while the task's record stays.
    let result = match recorded(ctx, task_id, &sub).await {
        Ok(Some(answer)) => Ok(idempotency::replayed(answer)),
        Ok(None) => produce_task(ctx, sub, task_id, tracestate).await,
        Err(e) => Err(e),
    };
    reserved.finish(ctx, &result, deps.settings.gateway.idempotency_ttl_secs).await;
    result
}

/// The answer to a submission whose task `task_id` already has its record (a processor wrote
/// it): its task id, topic, partition and offset as first answered. A record with another agent,
/// input or priority means the key was used for another request: refused.
async fn recorded(ctx: &Ctx, task_id: Uuid, sub: &Submission) -> Result<Option<HttpResponse>, ApiError> {
    let Some(row) = crate::db::tasks::get(&ctx.deps.pool, task_id).await? else { return Ok(None) };
    if row.agent != sub.agent || row.input != sub.input || row.priority != sub.priority {
        return Err(idempotency::reused());
    }
    let data = json!({
        "task_id": row.task_id,
        "agent": row.agent,
        "status": "queued",
        "topic": row.source_topic,
        "partition": row.source_partition,
        "offset": row.source_offset,
        "submitted_at": row.created_at.to_rfc3339(),
    });
    Ok(Some(accepted(ctx, task_id, data)))
}

/// 202 with `data` and the task's Location.
fn accepted(ctx: &Ctx, task_id: Uuid, data: Value) -> HttpResponse {
    let mut resp = ok(StatusCode::ACCEPTED, data, "Task accepted", &ctx.request_id);
    if let Ok(v) = hyper::header::HeaderValue::from_str(&format!("/v1/tasks/{task_id}")) {
        resp.headers_mut().insert(hyper::header::LOCATION, v);
    }
    resp
}

/// Produces the task `task_id` of `sub`; 202 once Kafka acknowledged it.
async fn produce_task(
    ctx: &Ctx,
    sub: Submission,
    task_id: Uuid,
    tracestate: Option<String>,
) -> Result<HttpResponse, ApiError> {
    let deps = &ctx.deps;
    match super::agents::load(ctx, &sub.agent).await? {
        Some(a) if a.status == AgentStatus::Active => {}
        Some(_) => return Err(ApiError::validation("agent", format!("agent `{}` is disabled", sub.agent))),
        None => return Err(ApiError::validation("agent", format!("unknown agent `{}`", sub.agent))),
    }
    let topic = deps.catalog.topic_name(REQUESTS_TOPIC);
    // The PRODUCER span's context travels in the TaskRequest and the Kafka headers, so the
    // processor's span hangs under it (with export off: the caller's traceparent, unchanged).
    let mut produce = ctx.trace.start(format!("send {topic}"), crate::otlp::SpanKind::Producer);
    produce.set("messaging.system", "kafka");
    produce.set("messaging.operation.type", "send");
    produce.set("messaging.destination.name", topic.as_str());
    let traceparent = produce.traceparent();
    let request = TaskRequest {
        priority: sub.priority,
        submitted_by: ctx.principal.as_ref().map(|p| p.id.clone()),
        deadline: sub.deadline,
        request_id: Some(ctx.request_id.clone()),
        traceparent: traceparent.clone(),
        tracestate,
        task_id,
        ..TaskRequest::new(sub.agent, sub.input)
    };
    produce.set("devcycle.task_id", request.task_id.to_string());
    let retry_after = deps.settings.http.retry_after_secs;
    let payload = deps.codec.encode_request(&topic, &request).await.map_err(|e| match e {
        crate::avro::EncodeError::Unavailable(reason) => {
            ApiError::Unavailable { service: "schema_registry", reason, retry_after }
        }
        crate::avro::EncodeError::Invalid(m) => ApiError::Internal(m),
    })?;
    let submitted_at = request.submitted_at.to_rfc3339();
    // The client's ordering key, if any. Without one the record has no key, so the producer's
    // sticky partitioner fills one partition's batch at a time instead of one batch per task.
    let key = sub.key;
    let mut headers = vec![("request_id", ctx.request_id.as_bytes().into())];
    if let Some(t) = &traceparent {
        headers.push(("traceparent", t.as_bytes().into()));
    }
    // `queued` in Redis and the record in Kafka at once: the status only fills fields a
    // processor has not written yet (HSETNX), so the order in which they land does not matter.
    let (queued, produced) = tokio::join!(
        deps.cache.set_queued(request.task_id, &request.agent, &submitted_at, request.submitted_by.as_deref()),
        deps.producer.send(OutRecord {
            topic: &topic,
            key: key.as_deref().map(str::as_bytes),
            value: Some(&payload),
            headers,
            partition: None
        }),
    );
    if let Err(e) = &queued {
        // The task is on its way regardless; its status reads from Postgres once it starts.
        tracing::warn!(task_id = %request.task_id, error = %e, "recording `queued` in Redis failed");
    }
    let (partition, offset) = match produced {
        Ok(p) => p,
        Err(e) => {
            produce.error(e.to_string());
            // Boxed: the Redis command's future (~5.5 KB) would otherwise be part of every
            // submission's future for its whole life, acknowledged or not.
            let _ = Box::pin(deps.cache.forget_task(request.task_id)).await;
            return Err(match e {
                ProduceError::Unavailable(k) => {
                    ApiError::Unavailable { service: "kafka", reason: k.to_string(), retry_after }
                }
                e if e.too_large() => ApiError::RecordTooLarge { limit: crate::kafka::MAX_RECORD_BYTES },
                ProduceError::Rejected(k) => ApiError::Internal(format!("kafka refused the record: {k}")),
            });
        }
    };
    produce.set("messaging.destination.partition.id", partition.to_string());
    produce.set("messaging.kafka.offset", offset);
    produce.end();
    let data = json!({
        "task_id": request.task_id,
        "agent": request.agent,
        "status": "queued",
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "submitted_at": submitted_at,
    });
    Ok(accepted(ctx, request.task_id, data))
}

pub async fn get(ctx: &Ctx, id: &str) -> Result<HttpResponse, ApiError> {
    let id = Uuid::parse_str(id).map_err(|_| ApiError::validation("task_id", "must be a UUID"))?;
    let deps = &ctx.deps;
    // Callers without `task:read:all` see only their own tasks; others' are "not found".
    let owner_only = ctx.principal.as_ref().filter(|p| !p.can("task:read:all")).map(|p| p.id.as_str());
    let not_found = || ApiError::NotFound(format!("task {id}"));
    let hot = deps.cache.get_status(id).await.ok().flatten();
    // A hot entry without an owner is checked against the Postgres record.
    let hot = hot.filter(|f| owner_only.is_none() || f.contains_key("submitted_by"));
    if let Some(f) = hot {
        if owner_only.is_some_and(|me| f.get("submitted_by").map(String::as_str) != Some(me)) {
            return Err(not_found());
        }
        let text = |k: &str| f.get(k).filter(|v| !v.is_empty()).cloned();
        let data = json!({
            "task_id": id,
            "agent": text("agent"),
            "status": text("status"),
            "attempts": text("attempts").and_then(|a| a.parse::<i64>().ok()).unwrap_or(0),
            "output": text("output").map(|o| serde_json::from_str::<Value>(&o).unwrap_or(Value::String(o))),
            "error": text("error"),
            "error_class": text("error_class"),
            "created_at": text("created_at"),
            "started_at": text("started_at"),
            "finished_at": text("finished_at"),
            "updated_at": text("updated_at"),
        });
        return Ok(ok(StatusCode::OK, data, "Task status", &ctx.request_id));
    }
    let row = crate::db::tasks::get(&deps.pool, id).await?.ok_or_else(not_found)?;
    if owner_only.is_some_and(|me| row.submitted_by.as_deref() != Some(me)) {
        return Err(not_found());
    }
    let data = json!({
        "task_id": row.task_id,
        "agent": row.agent,
        "status": row.status,
        "attempts": row.attempts,
        "output": row.output,
        "error": row.error,
        "error_class": row.error_class,
        "created_at": row.created_at,
        "started_at": row.started_at,
        "finished_at": row.finished_at,
        "updated_at": row.updated_at,
    });
    Ok(ok(StatusCode::OK, data, "Task status", &ctx.request_id))
}

/// `POST /v1/tasks/{id}/cancel`: a queued task never starts; a running one is stopped. As with
/// `GET`, callers without `task:read:all` reach only their own tasks; others' are "not found".
pub async fn cancel(ctx: &Ctx, id: &str) -> Result<HttpResponse, ApiError> {
    use crate::db::tasks::Cancel;
    let id = Uuid::parse_str(id).map_err(|_| ApiError::validation("task_id", "must be a UUID"))?;
    let deps = &ctx.deps;
    let hot = deps.cache.get_status(id).await.ok().flatten().unwrap_or_default();
    let (agent, owner) = (hot.get("agent"), hot.get("submitted_by"));
    if let Some(me) = ctx.principal.as_ref().filter(|p| !p.can("task:read:all")).map(|p| p.id.as_str()) {
        // The submitter: Postgres's record when there is one, else the hot status's.
        let owner = match crate::db::tasks::get(&deps.pool, id).await? {
            Some(row) => row.submitted_by,
            None => owner.cloned(),
        };
        if owner.as_deref() != Some(me) {
            return Err(ApiError::NotFound(format!("task {id}")));
        }
    }
    let by = ctx.principal.as_ref().map(|p| p.id.as_str());
    match crate::db::tasks::cancel(&deps.pool, id, agent.map(String::as_str), owner.map(String::as_str), by).await? {
        Cancel::Cancelled(row) => {
            let now = Utc::now().to_rfc3339();
            deps.cache
                .set_status(
                    id,
                    vec![
                        ("status", "cancelled".to_string()),
                        ("agent", row.agent.clone()),
                        ("error", row.error.clone().unwrap_or_default()),
                        ("error_class", "cancelled".to_string()),
                        ("finished_at", now.clone()),
                        ("updated_at", now),
                    ],
                )
                .await?;
            deps.cache.publish_cancel(id).await?;
            let data = json!({"task_id": id, "status": "cancelled", "agent": row.agent});
            Ok(ok(StatusCode::OK, data, "Task cancelled", &ctx.request_id))
        }
        Cancel::AlreadyFinished(row) => Err(ApiError::Conflict(format!("task {id} already {}", row.status))),
        Cancel::NotFound => Err(ApiError::NotFound(format!("task {id}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn validation_names_the_field() {
        let field = |v: Value| match validate(obj(v)) {
            Err(ApiError::Validation { field, .. }) => field,
            other => panic!("expected a validation error, got {:?}", other.map(|s| s.agent)),
        };
        assert_eq!(field(json!({"input": 1})), "agent");
        assert_eq!(field(json!({"agent": "echo"})), "input");
        assert_eq!(field(json!({"agent": "Bad Name", "input": 1})), "agent");
        assert_eq!(field(json!({"agent": "echo", "input": 1, "priority": "high"})), "priority");
        assert_eq!(field(json!({"agent": "echo", "input": 1, "deadline": "tomorrow"})), "deadline");
        assert_eq!(field(json!({"agent": "echo", "input": 1, "deadline": "2001-01-01T00:00:00Z"})), "deadline");
        assert_eq!(field(json!({"agent": "echo", "input": 1, "colour": "red"})), "colour");
        assert_eq!(field(json!({"agent": "echo", "input": 1, "key": ""})), "key");
        let ok = validate(obj(json!({"agent": "echo", "input": {"a": 1}, "priority": 5, "key": "k"}))).unwrap();
        assert_eq!((ok.priority, ok.key.as_deref()), (5, Some("k")));
    }
}
