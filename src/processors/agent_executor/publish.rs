//! The agent-executor's outputs for a task row: the TaskResult (results topic), TaskEvents
//! (events topic) and the hot status in Redis. Each returns once its effect is durable (a
//! delivery report, a Redis reply); the caller decides the order (see the parent module).

use super::AgentExecutor;
use crate::db::tasks::TaskRow;
use crate::domain::{TaskEvent, TaskResult};
use crate::kafka::OutRecord;
use crate::runtime::{ProcessError, Publisher};
use std::borrow::Cow;

impl AgentExecutor {
    pub(super) fn result_of(&self, row: &TaskRow) -> TaskResult {
        TaskResult {
            task_id: row.task_id,
            agent: row.agent.clone(),
            status: row.status,
            output: row.output.clone(),
            error: row.error.clone(),
            error_class: row.error_class.clone(),
            attempts: row.attempts,
            started_at: row.started_at,
            finished_at: row.finished_at.unwrap_or(row.updated_at),
            request_id: row.request_id.clone(),
            traceparent: row.traceparent.clone(),
            processor: self.spec.name.clone(),
            source_topic: row.source_topic.clone(),
            source_partition: row.source_partition,
            source_offset: row.source_offset,
        }
    }

    fn trace_headers<'a>(
        req_id: &'a Option<String>,
        traceparent: &'a Option<String>,
    ) -> Vec<(&'static str, Cow<'a, [u8]>)> {
        let mut h = Vec::new();
        if let Some(r) = req_id {
            h.push(("request_id", r.as_bytes().into()));
        }
        if let Some(t) = traceparent {
            h.push(("traceparent", t.as_bytes().into()));
        }
        h
    }

    async fn publish_result(&self, p: &Publisher, row: &TaskRow) -> Result<(), ProcessError> {
        let result = self.result_of(row);
        let bytes = self.deps.codec.encode_result(&self.results_topic, &result).await?;
        let key = row.task_id.to_string();
        p.publish(OutRecord {
            topic: &self.results_topic,
            key: Some(key.as_bytes()),
            value: Some(&bytes),
            headers: Self::trace_headers(&row.request_id, &row.traceparent),
            partition: None,
        })
        .await?;
        Ok(())
    }

    pub(super) async fn publish_event(&self, p: &Publisher, event: &TaskEvent) -> Result<(), ProcessError> {
        self.publish_events(p, std::slice::from_ref(event)).await
    }

    /// Publishes events of one task in their order (one key: the task id, so one partition).
    pub(super) async fn publish_events(&self, p: &Publisher, events: &[TaskEvent]) -> Result<(), ProcessError> {
        let Some(first) = events.first() else { return Ok(()) };
        let key = first.task_id.to_string();
        let mut encoded = Vec::with_capacity(events.len());
        for e in events {
            encoded.push(self.deps.codec.encode_event(&self.events_topic, e).await?);
        }
        let recs = events
            .iter()
            .zip(&encoded)
            .map(|(e, bytes)| OutRecord {
                topic: &self.events_topic,
                key: Some(key.as_bytes()),
                value: Some(bytes),
                headers: Self::trace_headers(&e.request_id, &None),
                partition: None,
            })
            .collect();
        p.publish_in_order(recs).await?;
        Ok(())
    }

    pub(super) async fn cache_row(&self, row: &TaskRow) -> Result<(), ProcessError> {
        let ts = |t: Option<chrono::DateTime<chrono::Utc>>| t.map(|t| t.to_rfc3339()).unwrap_or_default();
        let mut fields = vec![
            ("status", row.status.as_str().to_string()),
            ("agent", row.agent.clone()),
            ("attempts", row.attempts.to_string()),
            ("created_at", row.created_at.to_rfc3339()),
            ("started_at", ts(row.started_at)),
            ("finished_at", ts(row.finished_at)),
            ("updated_at", row.updated_at.to_rfc3339()),
        ];
        // Absent ones are written empty (read as absent), so an earlier attempt's error does not
        // stay beside a later success.
        fields.push(("output", row.output.as_ref().map(|o| o.to_string()).unwrap_or_default()));
        fields.push(("error", row.error.clone().unwrap_or_default()));
        fields.push(("error_class", row.error_class.clone().unwrap_or_default()));
        self.deps.cache.set_status(row.task_id, fields).await?;
        Ok(())
    }

    /// Publishes the final state of a task (result, events in order, Redis) concurrently.
    pub(super) async fn publish_final(
        &self,
        p: &Publisher,
        row: &TaskRow,
        events: &[TaskEvent],
    ) -> Result<(), ProcessError> {
        let (r, e, c) = tokio::join!(self.publish_result(p, row), self.publish_events(p, events), self.cache_row(row));
        r.and(e).and(c)
    }
}
