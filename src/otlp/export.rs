//! The OTLP/HTTP JSON encoding of spans and the exporter task that batches and POSTs them.

use super::*;

/// `k1=v1,k2=v2` (the `OTEL_EXPORTER_OTLP_HEADERS` format) into pairs.
pub(super) fn parse_headers(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

pub(super) fn resource(service_name: &str, environment: &str) -> Value {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_default();
    let mut attrs = vec![
        attr("service.name", &AttrValue::from(service_name)),
        attr("service.version", &AttrValue::from(env!("CARGO_PKG_VERSION"))),
        attr("deployment.environment.name", &AttrValue::from(environment)),
        attr("process.pid", &AttrValue::Int(std::process::id().into())),
        attr("telemetry.sdk.name", &AttrValue::from("devcycle")),
        attr("telemetry.sdk.language", &AttrValue::from("rust")),
    ];
    if !host.is_empty() {
        attrs.push(attr("host.name", &AttrValue::Str(host)));
    }
    json!({ "attributes": attrs })
}

pub(super) fn attr(key: &str, v: &AttrValue) -> Value {
    let value = match v {
        AttrValue::Str(s) => json!({ "stringValue": s }),
        // OTLP/JSON encodes 64-bit integers as strings.
        AttrValue::Int(i) => json!({ "intValue": i.to_string() }),
        AttrValue::Bool(b) => json!({ "boolValue": b }),
    };
    json!({ "key": key, "value": value })
}

pub(super) fn unix_nanos(t: SystemTime) -> String {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos().to_string()
}

/// An `ExportTraceServiceRequest` in the OTLP 1.x JSON mapping: ids as lower-case hex, enums as
/// integers, 64-bit integers (times, `intValue`) as decimal strings, lowerCamelCase names.
pub fn encode_request(resource: &Value, spans: &[SpanRecord]) -> Value {
    let spans: Vec<Value> = spans
        .iter()
        .map(|s| {
            let mut span = json!({
                "traceId": hex(&s.trace_id),
                "spanId": hex(&s.span_id),
                "name": s.name,
                "kind": s.kind as i32,
                "startTimeUnixNano": unix_nanos(s.start),
                "endTimeUnixNano": unix_nanos(s.end),
                "attributes": s.attributes.iter().map(|(k, v)| attr(k, v)).collect::<Vec<_>>(),
                "status": match &s.status {
                    Status::Unset => json!({}),
                    Status::Ok => json!({ "code": 1 }),
                    Status::Error(m) => json!({ "code": 2, "message": m }),
                },
            });
            if let Some(p) = s.parent_span_id {
                span["parentSpanId"] = Value::String(hex(&p));
            }
            span
        })
        .collect();
    json!({
        "resourceSpans": [{
            "resource": resource,
            "scopeSpans": [{
                "scope": { "name": "devcycle", "version": env!("CARGO_PKG_VERSION") },
                "spans": spans,
            }],
        }],
    })
}

pub(super) struct Exporter {
    pub(super) url: String,
    pub(super) headers: Vec<(String, String)>,
    pub(super) resource: Value,
    pub(super) client: reqwest::Client,
    pub(super) batch_size: usize,
    pub(super) interval: Duration,
}

impl Exporter {
    pub(super) async fn run(self, mut rx: mpsc::Receiver<Msg>) {
        let mut batch: Vec<SpanRecord> = Vec::with_capacity(self.batch_size);
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Msg::Span(s)) => {
                        batch.push(*s);
                        if batch.len() >= self.batch_size {
                            self.export(&mut batch).await;
                        }
                    }
                    Some(Msg::Flush(done)) => {
                        self.export(&mut batch).await;
                        let _ = done.send(());
                    }
                    None => {
                        self.export(&mut batch).await;
                        return;
                    }
                },
                _ = tick.tick() => self.export(&mut batch).await,
            }
        }
    }

    async fn export(&self, batch: &mut Vec<SpanRecord>) {
        if batch.is_empty() {
            return;
        }
        let spans = std::mem::take(batch);
        let body = encode_request(&self.resource, &spans).to_string();
        let mut req = self.client.post(&self.url).header("content-type", "application/json").body(body);
        for (k, v) in &self.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let count = spans.len() as u64;
        match req.send().await {
            Ok(r) if r.status().is_success() => SpansExported { count, outcome: "exported" }.emit(),
            Ok(r) => {
                tracing::warn!(url = %self.url, status = r.status().as_u16(), spans = count, "OTLP export refused");
                SpansExported { count, outcome: "dropped_export_failed" }.emit();
            }
            Err(e) => {
                tracing::warn!(url = %self.url, error = %crate::error_chain(&e), spans = count, "OTLP export failed");
                SpansExported { count, outcome: "dropped_export_failed" }.emit();
            }
        }
    }
}
