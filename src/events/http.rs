//! Events of the HTTP ingress and its Kafka producer: requests, connections, produced records.
//!
//! Invariants: as in [`super`]: low-cardinality labels only, one event per log line or metric.

use super::*;

/// An HTTP request finished.
pub struct HttpRequestCompleted<'a> {
    pub method: &'a str,
    pub route: &'a str,
    pub status: u16,
    pub elapsed: Duration,
}
impl HttpRequestCompleted<'_> {
    pub fn emit(self) {
        let m = metrics();
        m.http_requests
            .get_or_create(&HttpLabels { method: self.method.into(), route: self.route.into(), status: self.status })
            .inc();
        m.http_duration.get_or_create(&RouteLabels { route: self.route.into() }).observe(self.elapsed.as_secs_f64());
        let duration_ms = self.elapsed.as_secs_f64() * 1000.0;
        if self.status >= 500 {
            tracing::error!(
                method = self.method,
                route = self.route,
                status = self.status,
                duration_ms,
                "request failed"
            );
        } else {
            tracing::info!(
                method = self.method,
                route = self.route,
                status = self.status,
                duration_ms,
                "request completed"
            );
        }
    }
}

/// An HTTP connection was accepted (`opened`) or closed on a listener (`api` or `probes`).
pub struct HttpConnection<'a> {
    pub listener: &'a str,
    pub opened: bool,
}
impl HttpConnection<'_> {
    pub fn emit(self) {
        let g = metrics().http_connections.get_or_create(&ListenerLabels { listener: self.listener.into() }).clone();
        if self.opened {
            g.inc();
        } else {
            g.dec();
        }
    }
}

/// A listener has `limit` connections open and accepts no more until one closes; `log` says
/// whether this occurrence is logged (the caller spaces the warnings out).
pub struct HttpConnectionLimitReached<'a> {
    pub listener: &'a str,
    pub limit: usize,
    pub log: bool,
}
impl HttpConnectionLimitReached<'_> {
    pub fn emit(self) {
        metrics().http_connection_limit.get_or_create(&ListenerLabels { listener: self.listener.into() }).inc();
        if self.log {
            tracing::warn!(
                listener = self.listener,
                limit = self.limit,
                "connection limit reached; new connections wait in the listen backlog"
            );
        }
    }
}

/// A record was produced (or failed to be).
pub struct RecordProduced<'a> {
    pub topic: &'a str,
    pub metrics: &'a ProduceMetrics,
    pub elapsed: Duration,
    pub error: Option<String>,
}
impl RecordProduced<'_> {
    pub fn emit(self) {
        self.metrics.duration.observe(self.elapsed.as_secs_f64());
        if let Some(e) = self.error {
            self.metrics.errors.inc();
            tracing::warn!(topic = self.topic, error = %e, "produce failed");
        }
    }
}

/// A topic's produce metrics, looked up once per topic rather than per record (a record's
/// report then neither allocates nor hashes its label).
#[derive(Clone)]
pub struct ProduceMetrics {
    duration: Histogram,
    errors: Counter,
}

impl ProduceMetrics {
    pub fn of(topic: &str) -> ProduceMetrics {
        let m = metrics();
        let labels = TopicLabels { topic: topic.into() };
        ProduceMetrics {
            duration: m.produce_duration.get_or_create(&labels).clone(),
            errors: m.produce_errors.get_or_create(&labels).clone(),
        }
    }
}

/// The ingress's Kafka producer failed every record for a whole window while the cluster
/// answered a new client: the process exits for a restart.
pub struct IngressProducerStalled {
    pub after: Duration,
}
impl IngressProducerStalled {
    pub fn emit(self) {
        tracing::error!(
            failing_ms = self.after.as_millis() as u64,
            "kafka producer failed every record while the cluster answers; exiting for a restart"
        );
    }
}

/// The access-token deny list was written again from Postgres because Redis may have lost keys:
/// `reason` is `start`, `restart` (a new Redis run id), `eviction` (Redis evicted keys) or
/// `flush` (the mark written after the last rewrite is gone: the list was flushed, evicted or
/// lost in a restart).
pub struct DenyListResynced {
    pub reason: &'static str,
    pub tokens: usize,
}
impl DenyListResynced {
    pub fn emit(self) {
        metrics().deny_list_resyncs.get_or_create(&OutcomeLabels { outcome: self.reason.into() }).inc();
        if self.reason == "start" {
            tracing::info!(
                reason = self.reason,
                tokens = self.tokens as u64,
                "access-token deny list written from postgres"
            );
        } else {
            tracing::warn!(
                reason = self.reason,
                tokens = self.tokens as u64,
                "redis lost keys; access-token deny list written again from postgres"
            );
        }
    }
}

/// The deny list's fields of `removed` expired tokens were dropped.
pub struct DenyListPruned {
    pub removed: u64,
}
impl DenyListPruned {
    pub fn emit(self) {
        tracing::debug!(removed = self.removed, "expired tokens dropped from the access-token deny list");
    }
}

/// Checking or rewriting the deny list failed; it is tried again at the next check.
pub struct DenyListSyncFailed<'a> {
    pub error: &'a (dyn std::error::Error + 'static),
}
impl DenyListSyncFailed<'_> {
    pub fn emit(self) {
        metrics().deny_list_resyncs.get_or_create(&OutcomeLabels { outcome: "failed".into() }).inc();
        tracing::warn!(error = self.error, "access-token deny list check failed; retrying at the next check");
    }
}

/// Storing an `Idempotency-Key`'s answer (`stage` `answer`) or releasing its reservation
/// (`release`) failed: the key stays reserved until its reservation lapses, and retries meanwhile
/// get 409.
pub struct IdempotencyRecordFailed<'a> {
    pub stage: &'static str,
    pub error: &'a (dyn std::error::Error + 'static),
}
impl IdempotencyRecordFailed<'_> {
    pub fn emit(self) {
        tracing::warn!(stage = self.stage, error = self.error, "idempotency record not written; the key lapses later");
    }
}
