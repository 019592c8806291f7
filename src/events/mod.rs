//! Typed internal events: every metric and every operational log line is emitted through one of
//! these (Vector's pattern), so names, labels and levels live in one place.
//!
//! Invariants: labels are low-cardinality only (route templates, not paths; processor, topic
//! and agent names, outcome classes; never task ids, users or request ids). Metrics live in one
//! process-wide registry, encoded by [`encode`] in the Prometheus/OpenMetrics text format.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::OnceLock;
use std::time::Duration;

mod http;
mod processing;

pub use http::*;
pub use processing::*;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabels {
    pub topic: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProcessorLabels {
    pub processor: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExecutionLabels {
    pub agent: String,
    pub outcome: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentLabels {
    pub agent: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub stage: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub processor: String,
    pub reason: String,
}

fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub http_connections: Family<ListenerLabels, Gauge>,
    pub http_connection_limit: Family<ListenerLabels, Counter>,
    pub produce_duration: Family<TopicLabels, Histogram, fn() -> Histogram>,
    pub produce_errors: Family<TopicLabels, Counter>,
    pub tasks_in_flight: Family<ProcessorLabels, Gauge>,
    pub records_consumed: Family<ProcessorLabels, Counter>,
    pub task_executions: Family<ExecutionLabels, Counter>,
    pub task_duration: Family<AgentLabels, Histogram, fn() -> Histogram>,
    pub retries: Family<ProcessorLabels, Counter>,
    pub dead_letters: Family<ReasonLabels, Counter>,
    pub paused: Family<ProcessorLabels, Gauge>,
    pub consumer_lag: Family<LagLabels, Gauge>,
    pub pool_connections: Family<PoolLabels, Gauge>,
    pub process_rss_bytes: Gauge,
    pub process_cpu_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub otlp_spans: Family<OutcomeLabels, Counter>,
    pub task_stage_duration: Family<StageLabels, Histogram, fn() -> Histogram>,
    pub task_batch_size: Histogram,
    pub task_batch_duration: Histogram,
    pub deny_list_resyncs: Family<OutcomeLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LagLabels {
    pub group: String,
    pub topic: String,
    pub partition: i32,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub pool: String,
    pub state: String,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The process-wide metrics, registered on first use.
pub fn metrics() -> &'static Metrics {
    METRICS.get_or_init(|| {
        let mut r = Registry::with_prefix("devcycle");
        let m = Metrics {
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(latency),
            http_connections: Family::default(),
            http_connection_limit: Family::default(),
            produce_duration: Family::new_with_constructor(latency),
            produce_errors: Family::default(),
            tasks_in_flight: Family::default(),
            records_consumed: Family::default(),
            task_executions: Family::default(),
            task_duration: Family::new_with_constructor(latency),
            retries: Family::default(),
            dead_letters: Family::default(),
            paused: Family::default(),
            consumer_lag: Family::default(),
            pool_connections: Family::default(),
            process_rss_bytes: Gauge::default(),
            process_cpu_seconds: Gauge::default(),
            otlp_spans: Family::default(),
            task_stage_duration: Family::new_with_constructor(latency),
            task_batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            task_batch_duration: latency(),
            deny_list_resyncs: Family::default(),
            registry: Registry::default(),
        };
        r.register("http_requests", "HTTP requests by route and status", m.http_requests.clone());
        r.register("http_request_duration_seconds", "HTTP request latency", m.http_duration.clone());
        r.register("http_connections", "Open HTTP connections by listener (api, probes)", m.http_connections.clone());
        r.register(
            "http_connection_limit_reached",
            "Times a listener reached its connection limit and stopped accepting",
            m.http_connection_limit.clone(),
        );
        r.register("kafka_produce_duration_seconds", "Time to a delivery report", m.produce_duration.clone());
        r.register("kafka_produce_errors", "Failed deliveries", m.produce_errors.clone());
        r.register("tasks_in_flight", "Records being processed", m.tasks_in_flight.clone());
        r.register("records_consumed", "Records read by a processor", m.records_consumed.clone());
        r.register("task_executions", "Agent task executions by outcome", m.task_executions.clone());
        r.register("task_duration_seconds", "Agent task execution time", m.task_duration.clone());
        r.register("retries", "Retried record attempts", m.retries.clone());
        r.register("dead_letters", "Records sent to the dead-letter topic", m.dead_letters.clone());
        r.register("consumer_paused", "1 while a processor's partitions are paused", m.paused.clone());
        r.register("consumer_lag", "Records not yet committed, per group and partition", m.consumer_lag.clone());
        r.register("pool_connections", "Postgres and Redis pool connections by state", m.pool_connections.clone());
        r.register("process_resident_memory_bytes", "Resident set size", m.process_rss_bytes.clone());
        r.register("process_cpu_seconds", "User plus system CPU time", m.process_cpu_seconds.clone());
        r.register("otlp_spans", "Trace spans by export outcome (exported, dropped_*)", m.otlp_spans.clone());
        r.register(
            "task_stage_duration_seconds",
            "Time a task spends in each step of the agent-executor (start, announce, finish, publish)",
            m.task_stage_duration.clone(),
        );
        r.register("task_writer_batch_size", "Task transitions per group commit", m.task_batch_size.clone());
        r.register(
            "task_writer_batch_duration_seconds",
            "Time of one group commit of task transitions",
            m.task_batch_duration.clone(),
        );
        r.register(
            "deny_list_resyncs",
            "Rewrites of the access-token deny list from Postgres after Redis lost keys, by reason (start, restart, eviction, flush) or failed",
            m.deny_list_resyncs.clone(),
        );
        Metrics { registry: r, ..m }
    })
}

/// Reads this process's RSS and CPU time from /proc (Linux); zero elsewhere.
fn sample_process() {
    let m = metrics();
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        let rss_kb = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0);
        m.process_rss_bytes.set(rss_kb * 1024);
    }
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name: utime and stime are the 12th and 13th.
        let ticks: Vec<f64> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|v| v.parse().ok())
            .collect();
        let hz = 100.0; // USER_HZ on Linux
        m.process_cpu_seconds.set(ticks.iter().sum::<f64>() / hz);
    }
}

/// Records a connection pool's size and idle connections.
pub fn pool_sample(pool: &str, size: u32, idle: u32) {
    let m = metrics();
    let g =
        |state: &str| m.pool_connections.get_or_create(&PoolLabels { pool: pool.into(), state: state.into() }).clone();
    g("idle").set(idle as i64);
    g("in_use").set(size.saturating_sub(idle) as i64);
}

/// The registry in the OpenMetrics text format (what Prometheus scrapes).
pub fn encode() -> String {
    sample_process();
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &metrics().registry).expect("writing to a String cannot fail");
    out
}

/// Trace spans were exported over OTLP, or dropped (queue full, export failed).
pub struct SpansExported {
    pub count: u64,
    pub outcome: &'static str,
}
impl SpansExported {
    pub fn emit(self) {
        metrics().otlp_spans.get_or_create(&OutcomeLabels { outcome: self.outcome.into() }).inc_by(self.count);
        if self.outcome != "exported" {
            tracing::debug!(spans = self.count, outcome = self.outcome, "trace spans dropped");
        }
    }
}

/// Spans counted with `outcome` so far.
pub fn otlp_spans(outcome: &str) -> u64 {
    metrics().otlp_spans.get_or_create(&OutcomeLabels { outcome: outcome.into() }).get()
}

/// Gauges a processor updates as it runs.
pub fn processor_gauges(processor: &str) -> (Gauge, Gauge, Counter) {
    let m = metrics();
    let l = ProcessorLabels { processor: processor.into() };
    (
        m.tasks_in_flight.get_or_create(&l).clone(),
        m.paused.get_or_create(&l).clone(),
        m.records_consumed.get_or_create(&l).clone(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_in_text_format() {
        HttpRequestCompleted { method: "GET", route: "/health", status: 200, elapsed: Duration::from_millis(3) }.emit();
        let text = encode();
        assert!(
            text.contains("devcycle_http_requests_total{method=\"GET\",route=\"/health\",status=\"200\"}"),
            "{text}"
        );
        assert!(text.contains("devcycle_http_request_duration_seconds_bucket"));
        assert!(text.trim_end().ends_with("# EOF"));
        assert!(!text.contains("devcycle_process_resident_memory_bytes 0\n"), "RSS is sampled");
    }
}
