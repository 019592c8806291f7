//! `devcycle dlq list` and `devcycle dlq replay`: inspect dead letters and re-publish them to
//! their source topic once the cause is fixed.
//!
//! Invariants: a dead letter is replayed at most once (recorded in `dlq_replays` after Kafka
//! acknowledged the re-published record); a replayed task request that was `dead_lettered` is
//! made runnable again (`queued`), so the processor runs it instead of re-publishing the old
//! outcome; the original key, value and headers are kept (the `dlq.*` headers are dropped and
//! `dlq.replayed.from` is added).

use crate::app::Deps;
use crate::kafka::{client_config, OutRecord};
use crate::progress::Progress;
use crate::runtime::dlq as h;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::time::Duration;

const DLQ_TOPIC: &str = "devcycle.dead-letters";

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("postgres: {0}")]
    Db(#[from] crate::db::DbError),
    #[error("re-publishing failed: {0}")]
    Produce(#[from] crate::kafka::ProduceError),
}

/// One dead letter as read back.
#[derive(Debug, Clone)]
pub struct Letter {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Letter {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// Which dead letters a command applies to.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub class: Option<String>,
    pub source_topic: Option<String>,
    pub limit: Option<usize>,
}

impl Filter {
    fn matches(&self, l: &Letter) -> bool {
        self.class.as_ref().is_none_or(|c| l.header(h::H_CLASS).as_deref() == Some(c))
            && self.source_topic.as_ref().is_none_or(|t| l.header(h::H_TOPIC).as_deref() == Some(t))
    }
}

/// Reads every dead letter currently in the topic (up to the high watermarks).
pub fn read_all(deps: &Deps) -> Result<Vec<Letter>, DlqError> {
    read_all_with(deps, &mut Progress::hidden())
}

/// [`read_all`], counting records read on `progress`.
pub fn read_all_with(deps: &Deps, progress: &mut Progress) -> Result<Vec<Letter>, DlqError> {
    let topic = deps.catalog.topic_name(DLQ_TOPIC);
    let consumer: BaseConsumer = client_config(&deps.settings.kafka, "dlq-reader")
        .set("group.id", format!("{}devcycle.dlq-reader", deps.settings.kafka.namespace))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    let timeout = Duration::from_millis(deps.settings.kafka.request_timeout_ms);
    let md = consumer.fetch_metadata(Some(&topic), timeout)?;
    let partitions: Vec<i32> =
        md.topics().first().map(|t| t.partitions().iter().map(|p| p.id()).collect()).unwrap_or_default();
    let mut ends = BTreeMap::new();
    let mut to_read = 0u64;
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        let (low, high) = consumer.fetch_watermarks(&topic, p, timeout)?;
        if high > low {
            to_read += (high - low) as u64;
            ends.insert(p, high);
            tpl.add_partition_offset(&topic, p, Offset::Offset(low))?;
        }
    }
    let mut letters = Vec::new();
    if ends.is_empty() {
        return Ok(letters);
    }
    consumer.assign(&tpl)?;
    progress.start(Some(to_read));
    let deadline = std::time::Instant::now() + timeout * 3;
    let mut open = ends.clone();
    while !open.is_empty() && std::time::Instant::now() < deadline {
        let Some(msg) = consumer.poll(Duration::from_millis(500)) else { continue };
        let m = msg?;
        let headers = m
            .headers()
            .map(|hs| hs.iter().map(|x| (x.key.to_string(), x.value.unwrap_or_default().to_vec())).collect())
            .unwrap_or_default();
        letters.push(Letter {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            headers,
        });
        progress.inc(1);
        if open.get(&m.partition()).is_some_and(|end| m.offset() + 1 >= *end) {
            open.remove(&m.partition());
        }
    }
    letters.sort_by_key(|l| (l.partition, l.offset));
    progress.finish();
    Ok(letters)
}

/// Dead letters matching `filter`, with whether each was replayed already.
pub async fn list(deps: &Deps, filter: &Filter) -> Result<Vec<(Letter, bool)>, DlqError> {
    list_with(deps, filter, &mut Progress::hidden()).await
}

/// [`list`], counting records read on `progress`.
pub async fn list_with(deps: &Deps, filter: &Filter, progress: &mut Progress) -> Result<Vec<(Letter, bool)>, DlqError> {
    let topic = deps.catalog.topic_name(DLQ_TOPIC);
    let replayed: Vec<(i32, i64)> =
        sqlx::query_as("SELECT dlq_partition, dlq_offset FROM dlq_replays WHERE dlq_topic = $1")
            .bind(&topic)
            .fetch_all(&deps.pool)
            .await
            .map_err(crate::db::DbError::from)?;
    let letters = tokio::task::block_in_place(|| read_all_with(deps, progress))?;
    Ok(letters
        .into_iter()
        .filter(|l| filter.matches(l))
        .map(|l| {
            let done = replayed.contains(&(l.partition, l.offset));
            (l, done)
        })
        .take(filter.limit.unwrap_or(usize::MAX))
        .collect())
}

/// Re-publishes matching, not yet replayed dead letters to their source topics; returns them.
pub async fn replay(deps: &Deps, filter: &Filter, dry_run: bool) -> Result<Vec<Letter>, DlqError> {
    replay_with(deps, filter, dry_run, &mut Progress::hidden()).await
}

/// [`replay`], counting dead letters replayed on `progress` (and records read, before, on a
/// sibling `dlq read`).
pub async fn replay_with(
    deps: &Deps,
    filter: &Filter,
    dry_run: bool,
    progress: &mut Progress,
) -> Result<Vec<Letter>, DlqError> {
    let dlq_topic = deps.catalog.topic_name(DLQ_TOPIC);
    let mut reading = progress.sibling("dlq read", "records");
    let todo: Vec<(Letter, String)> = list_with(deps, &Filter { limit: None, ..filter.clone() }, &mut reading)
        .await?
        .into_iter()
        .filter(|(_, replayed)| !replayed)
        // A letter without its record's value has nothing to replay (the value is at its source
        // offset, while retained).
        .filter(|(letter, _)| letter.header(h::H_VALUE_OMITTED).is_none())
        .filter_map(|(letter, _)| letter.header(h::H_TOPIC).map(|source| (letter, source)))
        .take(filter.limit.unwrap_or(usize::MAX))
        .collect();
    let mut done = Vec::new();
    progress.start(Some(todo.len() as u64));
    for (letter, source) in todo {
        if dry_run {
            done.push(letter);
            progress.inc(1);
            continue;
        }
        // A decodable task request that was dead-lettered becomes runnable again.
        let task_id = match deps.codec.decode_request(letter.value.as_deref()).await {
            Ok(req) => {
                sqlx::query(
                    "UPDATE tasks SET status = 'queued', error = NULL, error_class = NULL, finished_at = NULL,
                         updated_at = now() WHERE task_id = $1 AND status = 'dead_lettered'",
                )
                .bind(req.task_id)
                .execute(&deps.pool)
                .await
                .map_err(crate::db::DbError::from)?;
                let _ = deps.cache.forget_task(req.task_id).await;
                Some(req.task_id)
            }
            Err(_) => None,
        };
        let from = format!("{dlq_topic}:{}:{}", letter.partition, letter.offset);
        let mut headers: Vec<(&str, std::borrow::Cow<[u8]>)> = letter
            .headers
            .iter()
            .filter(|(k, _)| !k.starts_with("dlq."))
            .map(|(k, v)| (k.as_str(), v.as_slice().into()))
            .collect();
        headers.push(("dlq.replayed.from", from.as_bytes().into()));
        deps.producer
            .send(OutRecord {
                topic: &source,
                key: letter.key.as_deref(),
                value: letter.value.as_deref(),
                headers,
                partition: None,
            })
            .await?;
        sqlx::query(
            "INSERT INTO dlq_replays (dlq_topic, dlq_partition, dlq_offset, source_topic, task_id)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(&dlq_topic)
        .bind(letter.partition)
        .bind(letter.offset)
        .bind(&source)
        .bind(task_id)
        .execute(&deps.pool)
        .await
        .map_err(crate::db::DbError::from)?;
        done.push(letter);
        progress.inc(1);
    }
    progress.finish();
    Ok(done)
}
