//! Dead letters: the original key, value bytes and headers of a failed record, plus headers
//! that say why, where it came from and how often it was tried.
//!
//! Header names (all UTF-8 values): `dlq.error.class`, `dlq.error.message`,
//! `dlq.source.topic`, `dlq.source.partition`, `dlq.source.offset`, `dlq.consumer.group`,
//! `dlq.processor`, `dlq.attempts`, `dlq.first.failure`, `dlq.last.failure` (RFC 3339).

use super::Publisher;
use crate::kafka::{OutRecord, ProduceError};
use chrono::{DateTime, Utc};
use std::borrow::Cow;

pub const H_CLASS: &str = "dlq.error.class";
pub const H_MESSAGE: &str = "dlq.error.message";
pub const H_TOPIC: &str = "dlq.source.topic";
pub const H_PARTITION: &str = "dlq.source.partition";
pub const H_OFFSET: &str = "dlq.source.offset";
pub const H_GROUP: &str = "dlq.consumer.group";
pub const H_PROCESSOR: &str = "dlq.processor";
pub const H_ATTEMPTS: &str = "dlq.attempts";
pub const H_FIRST: &str = "dlq.first.failure";
pub const H_LAST: &str = "dlq.last.failure";
/// Set when Kafka refused the letter with the record's value (too large with the headers): the
/// value's size and Kafka's reason. The value is still at its source offset while retained.
pub const H_VALUE_OMITTED: &str = "dlq.value.omitted";

/// Everything needed to dead-letter one record.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub class: String,
    pub message: String,
    pub source_topic: String,
    pub partition: i32,
    pub offset: i64,
    pub group: String,
    pub processor: String,
    pub attempts: u32,
    pub first_failure: DateTime<Utc>,
    pub last_failure: DateTime<Utc>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// Why the value is not in the letter (see [`H_VALUE_OMITTED`]); None: it is.
    pub value_omitted: Option<String>,
}

impl DeadLetter {
    /// The same letter without the record's value, saying why (Kafka refused it with the value).
    pub fn without_value(self, reason: &str) -> DeadLetter {
        let size = self.value.as_ref().map_or(0, Vec::len);
        DeadLetter { value: None, value_omitted: Some(format!("{size} bytes: {reason}")), ..self }
    }

    /// Publishes the dead letter to `topic` (acknowledged, or held for the record's transaction).
    pub async fn publish(&self, publisher: &Publisher, topic: &str) -> Result<(), ProduceError> {
        let mut headers: Vec<(&str, Cow<[u8]>)> = self
            .headers
            .iter()
            .filter(|(k, _)| !k.starts_with("dlq."))
            .map(|(k, v)| (k.as_str(), v.as_slice().into()))
            .collect();
        let message: String = self.message.chars().take(4000).collect();
        for (k, v) in [
            (H_CLASS, self.class.clone()),
            (H_MESSAGE, message),
            (H_TOPIC, self.source_topic.clone()),
            (H_PARTITION, self.partition.to_string()),
            (H_OFFSET, self.offset.to_string()),
            (H_GROUP, self.group.clone()),
            (H_PROCESSOR, self.processor.clone()),
            (H_ATTEMPTS, self.attempts.to_string()),
            (H_FIRST, self.first_failure.to_rfc3339()),
            (H_LAST, self.last_failure.to_rfc3339()),
        ] {
            headers.push((k, v.into_bytes().into()));
        }
        if let Some(why) = &self.value_omitted {
            headers.push((H_VALUE_OMITTED, why.as_bytes().into()));
        }
        publisher
            .publish(OutRecord {
                topic,
                key: self.key.as_deref(),
                value: self.value.as_deref(),
                headers,
                partition: None,
            })
            .await
    }
}
