//! Logging setup: JSON lines in exactly the spec's format, or readable text on a terminal in
//! development.
//!
//! A JSON line carries `timestamp` (RFC 3339, milliseconds, UTC), `level` (upper case),
//! `logger` (the module path with dots, e.g. `devcycle.ingress.tasks`), `message`, then the
//! well-known fields `user_id`, `request_id`, `duration_ms` when known, then every other field
//! of the event and of its enclosing spans (so a request span's `request_id` reaches every line
//! logged inside it). Initialising twice is harmless (tests share one process).

use crate::settings::{Environment, LogFormat, Settings};
use serde_json::{Map, Value};
use std::fmt;
use std::io::{IsTerminal, Write};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Installs the global subscriber for these settings. `RUST_LOG`, when set, overrides the
/// level filter for fine-grained debugging.
pub fn init(settings: &Settings) {
    let level = settings.log_level.to_ascii_lowercase();
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("warn,devcycle={level},rdkafka={level}")));
    let text = match settings.log_format {
        LogFormat::Text => true,
        LogFormat::Json => false,
        LogFormat::Auto => settings.environment == Environment::Development && std::io::stdout().is_terminal(),
    };
    let registry = tracing_subscriber::registry().with(filter);
    let _ = if text {
        registry.with(tracing_subscriber::fmt::layer().with_target(true)).try_init()
    } else {
        registry.with(JsonLayer::stdout()).try_init()
    };
}

/// Emits one JSON object per event, in the spec's log format, to its writer (stdout in
/// production), each line in one write.
pub struct JsonLayer<W = fn() -> std::io::Stdout> {
    writer: W,
}

impl JsonLayer {
    pub fn stdout() -> Self {
        JsonLayer { writer: std::io::stdout }
    }
}

#[derive(Default)]
struct SpanFields(Map<String, Value>);

struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_string(), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), Value::String(value.to_string()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().to_string(), Value::String(crate::error_chain(value)));
    }
}

impl<S, W> Layer<S> for JsonLayer<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = SpanFields::default();
        attrs.record(&mut JsonVisitor(&mut fields.0));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            let mut ext = span.extensions_mut();
            if let Some(fields) = ext.get_mut::<SpanFields>() {
                values.record(&mut JsonVisitor(&mut fields.0));
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Map::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(f) = span.extensions().get::<SpanFields>() {
                    fields.extend(f.0.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
            }
        }
        event.record(&mut JsonVisitor(&mut fields));
        let line = format_line(event.metadata().level().as_str(), event.metadata().target(), fields);
        let _ = self.writer.make_writer().write_all(line.as_bytes());
    }
}

/// Builds one log line (with its trailing newline) from an event's level, target and fields.
pub fn format_line(level: &str, target: &str, mut fields: Map<String, Value>) -> String {
    let mut obj = Map::new();
    obj.insert("timestamp".into(), Value::String(chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()));
    obj.insert("level".into(), Value::String(level.to_ascii_uppercase()));
    obj.insert("logger".into(), Value::String(target.replace("::", ".")));
    obj.insert("message".into(), fields.remove("message").unwrap_or(Value::String(String::new())));
    for key in ["user_id", "request_id", "duration_ms"] {
        if let Some(v) = fields.remove(key) {
            obj.insert(key.into(), v);
        }
    }
    obj.extend(fields);
    let mut line = Value::Object(obj).to_string();
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::SharedBuf;

    #[test]
    fn line_has_the_spec_fields_in_order() {
        let mut f = Map::new();
        f.insert("message".into(), "User authentication successful".into());
        f.insert("duration_ms".into(), 150.into());
        f.insert("request_id".into(), "req_456".into());
        f.insert("user_id".into(), "user_123".into());
        f.insert("extra".into(), true.into());
        let line = format_line("INFO", "devcycle::api::auth", f);
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["logger"], "devcycle.api.auth");
        assert_eq!(v["message"], "User authentication successful");
        assert_eq!(v["duration_ms"], 150);
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(|s| s.as_str()).collect();
        assert_eq!(keys, ["timestamp", "level", "logger", "message", "user_id", "request_id", "duration_ms", "extra"]);
        let ts = v["timestamp"].as_str().unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok() && ts.ends_with('Z') && ts.len() == 24);
    }

    #[derive(Debug, thiserror::Error)]
    #[error("publishing the result failed")]
    struct Outer(#[source] std::io::Error);

    /// What the layer adds to `format_line`: the fields of every enclosing span (a request
    /// span's `request_id`, a `user_id` recorded later), typed values, and an error's causes.
    #[test]
    fn events_carry_their_spans_fields_typed_values_and_error_causes() {
        let buf = SharedBuf::default();
        let subscriber = tracing_subscriber::registry().with(JsonLayer { writer: buf.clone() });
        tracing::subscriber::with_default(subscriber, || {
            let request = tracing::info_span!("request", request_id = "req_1", user_id = tracing::field::Empty);
            let _r = request.enter();
            request.record("user_id", "user_9");
            let step = tracing::info_span!("step", attempt = 2u64, request_id = "req_2");
            let _s = step.enter();
            let err = Outer(std::io::Error::other("broker down"));
            tracing::warn!(
                duration_ms = 12.5,
                ok = true,
                delta = -3i64,
                error = &err as &(dyn std::error::Error + 'static),
                "step failed"
            );
            drop(_s);
            drop(_r);
            tracing::info!("outside");
        });
        let out = buf.text();
        let lines: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2, "{out}");
        let v = &lines[0];
        assert_eq!(
            (&v["level"], &v["logger"], &v["message"]),
            (&"WARN".into(), &"devcycle.telemetry.tests".into(), &"step failed".into())
        );
        assert_eq!(v["user_id"], "user_9", "recorded on the span after it was created");
        assert_eq!(v["request_id"], "req_2", "the innermost span's value wins");
        assert_eq!(
            (&v["duration_ms"], &v["attempt"], &v["ok"], &v["delta"]),
            (&12.5.into(), &2.into(), &true.into(), &(-3).into())
        );
        assert_eq!(v["error"], "publishing the result failed: broker down");
        let keys: Vec<&str> = v.as_object().unwrap().keys().take(7).map(|s| s.as_str()).collect();
        assert_eq!(keys, ["timestamp", "level", "logger", "message", "user_id", "request_id", "duration_ms"]);
        assert_eq!(lines[1]["message"], "outside");
        assert!(lines[1].get("request_id").is_none(), "no span, no request id: {}", lines[1]);
    }
}
