//! Streaming produce: `POST /v1/topics/{topic}/records` with `Content-Type:
//! application/x-ndjson`, one record per line in, one report line per record out.
//!
//! Invariants: every counted line gets exactly one report line, in order; a line waiting for
//! its quota window stops the body from being read (TCP backpressure), never the reports of
//! earlier lines; at most 1,024 lines are in flight; a client that sends nothing, or reads no
//! report, for `http.request_timeout_ms` ends the stream (the stream as a whole is bounded by
//! the gateway's body and record limits).

use super::quota::Quota;
use super::{declared, delivered, enqueue_record, value_schema, wants_async, Line};
use super::{end_producer_span, producer_span};
use super::{QUOTA, UNAVAILABLE};
use crate::catalog::TopicDecl;
use crate::gateway::LatestSchema;
use crate::ingress::{ApiError, Ctx, HttpResponse};
use crate::otlp::Span;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// The body of a streaming answer.
pub type StreamResponse = Response<http_body_util::combinators::UnsyncBoxBody<Bytes, std::convert::Infallible>>;

/// Whether a request is a streaming produce (`POST /v1/topics/{topic}/records` with
/// `Content-Type: application/x-ndjson`); returns the declared topic.
pub fn ndjson_produce_topic(req: &Request<Incoming>) -> Option<String> {
    if req.method() != hyper::Method::POST {
        return None;
    }
    let mime = req.headers().get(CONTENT_TYPE)?.to_str().ok()?.split(';').next()?.trim().to_ascii_lowercase();
    if mime != "application/x-ndjson" {
        return None;
    }
    match req.uri().path().trim_end_matches('/').split('/').skip(1).collect::<Vec<_>>().as_slice() {
        ["v1", "topics", topic, "records"] => Some(crate::ingress::router::percent_decode(topic)),
        _ => None,
    }
}

type LineFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Line> + Send>>;

type FrameSender = futures::channel::mpsc::Sender<Result<hyper::body::Frame<Bytes>, std::convert::Infallible>>;

/// Streaming produce: one JSON record per request line; one report line per record, in
/// order, each sent as soon as that record is acknowledged, then a final
/// `{"done": true, "records", "written", "failed"}` line (with `error_code` and `message` when
/// the stream was cut short). The 200 only means the stream was accepted: the outcome is in
/// the lines. Idempotency-Key and respond-async do not apply (422).
///
/// Quotas: a caller with no room left in the current window is refused with 429 before the
/// stream starts; then each line is charged as it is taken (see [`stream_task`]).
pub async fn produce_stream(ctx: Ctx, topic: &str, req: Request<Incoming>) -> StreamResponse {
    use http_body_util::BodyExt;
    let boxed = |r: HttpResponse| r.map(|b| b.boxed_unsync());
    let decl = match declared(&ctx, topic) {
        Ok(Ok(d)) => d.clone(),
        Ok(Err(forbidden)) => return boxed(forbidden),
        Err(e) => return boxed(e.into_response(&ctx.request_id)),
    };
    if req.headers().contains_key("idempotency-key") || wants_async(&req) {
        let e = ApiError::validation(
            "Content-Type",
            "application/x-ndjson streams take neither Idempotency-Key nor Prefer: respond-async",
        );
        return boxed(e.into_response(&ctx.request_id));
    }
    let quota = Quota::of(&ctx);
    if let Some(q) = &quota {
        // Room for at least one small record now? (A look: nothing is charged.)
        let refusal = match q.take(1, 1, false).await {
            Ok(Ok(())) => None,
            Ok(Err((unit, r))) => Some(ApiError::QuotaExceeded { unit, decision: r.decision() }),
            Err(e) => Some(ApiError::from(e)),
        };
        if let Some(e) = refusal {
            return boxed(e.into_response(&ctx.request_id));
        }
    }
    let schema = match value_schema(&ctx, &decl).await {
        Ok(s) => s,
        Err(e) => return boxed(e.into_response(&ctx.request_id)),
    };
    let (span, forwarded) = producer_span(&ctx, &req, &decl);
    let (tx, rx) = futures::channel::mpsc::channel(64);
    let stream = Stream { deps: ctx.deps.clone(), decl, schema, forwarded, quota, span };
    tokio::spawn(stream_task(stream, req.into_body(), tx));
    let mut r = Response::new(http_body_util::StreamBody::new(rx).boxed_unsync());
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    r
}

/// What every line of one stream is produced with.
struct Stream {
    deps: Arc<crate::app::Deps>,
    decl: TopicDecl,
    schema: Option<Arc<LatestSchema>>,
    forwarded: Vec<(String, Vec<u8>)>,
    quota: Option<Quota>,
    /// The stream's PRODUCER span, ended with the stream.
    span: Span,
}

/// What the quota says of a stream's next line.
enum Admission {
    /// Charged: produce it.
    Go,
    /// No room in this window: try again after this long.
    Wait(Duration),
    /// Not produced: this is its line.
    Refuse(Line),
}

impl Stream {
    /// Charges one line (one record, its bytes) to the quota. A line waits at most
    /// `stream_quota_max_wait_ms` in all (`waited` so far); one that would wait longer, or can
    /// never fit in a window, gets a `QUOTA_EXCEEDED` line instead.
    async fn admit(&self, line: &[u8], waited: Duration) -> Admission {
        let Some(quota) = &self.quota else { return Admission::Go };
        let max_wait = Duration::from_millis(self.deps.settings.gateway.stream_quota_max_wait_ms);
        match quota.take(1, line.len() as u64, true).await {
            Ok(Ok(())) => Admission::Go,
            Ok(Err((unit, r))) if r.never_fits() => Admission::Refuse(Line::failed(
                QUOTA,
                format!("the record is {} {unit}; the quota allows {} {unit}/s", r.amount, r.limit),
            )),
            Ok(Err((unit, r))) => {
                let wait = Duration::from_millis(r.wait_ms);
                if waited + wait <= max_wait {
                    return Admission::Wait(wait);
                }
                Admission::Refuse(Line::Failed {
                    code: QUOTA,
                    message: format!(
                        "produce quota of {} {unit}/s exceeded; waited {} ms, the limit is {} ms",
                        r.limit,
                        waited.as_millis(),
                        max_wait.as_millis()
                    ),
                    retry_after_ms: Some(r.wait_ms),
                })
            }
            Err(e) => Admission::Refuse(Line::failed(UNAVAILABLE, format!("quota not checked: {e}"))),
        }
    }

    /// The report of one admitted line: its record produced, or why not.
    fn produce(&self, kafka_topic: &str, line: &[u8]) -> LineFuture {
        let rec = match std::str::from_utf8(line) {
            Ok(rec) => rec,
            Err(e) => return Box::pin(futures::future::ready(Line::failed("MALFORMED_JSON", e.to_string()))),
        };
        let queued = super::record::parse_record(rec).and_then(|r| {
            enqueue_record(&self.deps, kafka_topic, &self.decl, self.schema.as_deref(), &self.forwarded, &r)
        });
        match queued {
            Ok(f) => Box::pin(async move { delivered(f.await) }),
            Err(l) => Box::pin(futures::future::ready(l)),
        }
    }
}

/// Sends one answer line; false when the client went away or has read nothing for `idle`.
async fn send_line(tx: &mut FrameSender, text: String, idle: Duration) -> bool {
    use futures::SinkExt;
    let frame = hyper::body::Frame::data(Bytes::from(text));
    matches!(tokio::time::timeout(idle, tx.send(Ok(frame))).await, Ok(Ok(())))
}

/// Reads the body line by line and streams the reports. Lines are taken in order: the head line
/// waits while its quota window is full, and meanwhile the body is not read (TCP backpressure
/// slows the client) while reports of earlier lines keep flowing. Every counted line gets
/// exactly one report line. A body that sends nothing for `http.request_timeout_ms` while the
/// stream waits for it ends the stream (`REQUEST_TIMEOUT` in the final line).
async fn stream_task(st: Stream, mut body: Incoming, mut tx: FrameSender) {
    use futures::StreamExt;
    use http_body_util::BodyExt;
    let g = &st.deps.settings.gateway;
    let idle_limit = Duration::from_millis(st.deps.settings.http.request_timeout_ms);
    let idle = tokio::time::sleep(idle_limit);
    tokio::pin!(idle);
    let kafka_topic = st.deps.catalog.topic_name(&st.decl.name);
    let mut inflight: futures::stream::FuturesOrdered<LineFuture> = Default::default();
    // Complete lines read from the body and counted, not yet admitted.
    let mut queued: std::collections::VecDeque<Vec<u8>> = Default::default();
    // While `paused`, the head line waits for `pause` (it has waited `waited` so far).
    let pause = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(pause);
    let (mut paused, mut waited) = (false, Duration::ZERO);
    let (mut buf, mut total, mut count, mut written, mut failed) = (Vec::<u8>::new(), 0usize, 0usize, 0usize, 0usize);
    let mut reading = true;
    let mut abort: Option<(&'static str, String)> = None;
    // Queues a line of the body (blank lines are skipped); false past the record limit.
    let mut take_line = |line: Vec<u8>, queued: &mut std::collections::VecDeque<Vec<u8>>| -> bool {
        if line.iter().all(u8::is_ascii_whitespace) {
            return true;
        }
        count += 1;
        if count > g.max_records_per_request {
            return false;
        }
        queued.push_back(line.trim_ascii_end().to_vec());
        true
    };
    loop {
        while !paused {
            let Some(line) = queued.front() else { break };
            let report = match st.admit(line, waited).await {
                Admission::Wait(wait) => {
                    waited += wait;
                    pause.as_mut().reset(tokio::time::Instant::now() + wait);
                    paused = true;
                    break;
                }
                Admission::Go => st.produce(&kafka_topic, line),
                Admission::Refuse(l) => Box::pin(futures::future::ready(l)) as LineFuture,
            };
            inflight.push_back(report);
            queued.pop_front();
            waited = Duration::ZERO;
        }
        let wants_body = reading && queued.is_empty() && inflight.len() < 1024;
        if !wants_body {
            // Only time spent waiting for the client counts.
            idle.as_mut().reset(tokio::time::Instant::now() + idle_limit);
        }
        tokio::select! {
            biased;
            Some(line) = inflight.next(), if !inflight.is_empty() => {
                match &line {
                    Line::Written(_) => written += 1,
                    Line::Failed { .. } => failed += 1,
                }
                if !send_line(&mut tx, format!("{}\n", line.to_json()), idle_limit).await {
                    return; // the client went away or reads nothing
                }
            }
            () = &mut pause, if paused => paused = false,
            () = &mut idle, if wants_body => {
                reading = false;
                abort = Some(("REQUEST_TIMEOUT", format!("no data from the client for {} ms", idle_limit.as_millis())));
            }
            frame = body.frame(), if wants_body => {
                idle.as_mut().reset(tokio::time::Instant::now() + idle_limit);
                match frame {
                    None => {
                        reading = false;
                        if !take_line(std::mem::take(&mut buf), &mut queued) {
                            abort = Some(("PAYLOAD_TOO_LARGE", format!("more than {} records", g.max_records_per_request)));
                        }
                    }
                    Some(Err(e)) => {
                        reading = false;
                        abort = Some(("MALFORMED_REQUEST", format!("could not read the body: {e}")));
                    }
                    Some(Ok(f)) => {
                        let Ok(data) = f.into_data() else { continue };
                        total += data.len();
                        if total > g.max_body_bytes {
                            reading = false;
                            abort = Some(("PAYLOAD_TOO_LARGE", format!("request body exceeds {} bytes", g.max_body_bytes)));
                            continue;
                        }
                        buf.extend_from_slice(&data);
                        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                            let line: Vec<u8> = buf.drain(..=pos).collect();
                            if !take_line(line, &mut queued) {
                                reading = false;
                                abort = Some(("PAYLOAD_TOO_LARGE", format!("more than {} records", g.max_records_per_request)));
                                break;
                            }
                        }
                    }
                }
            }
            else => break,
        }
    }
    let mut done = json!({"done": true, "records": written + failed, "written": written, "failed": failed});
    if let Some((code, message)) = abort {
        done["error_code"] = json!(code);
        done["message"] = json!(message);
    }
    send_line(&mut tx, format!("{done}\n"), idle_limit).await;
    end_producer_span(st.span, written, failed);
}
