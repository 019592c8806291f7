//! `devcycle dlq list` and `devcycle dlq replay`: inspect dead letters and re-publish them to
//! their source topic once the cause is fixed.
//!
//! Invariants: a dead letter is replayed at most once (recorded in `dlq_replays` after Kafka
//! acknowledged the re-published record); a replayed task request that was `dead_lettered` is
//! made runnable again (`queued`), so the processor runs it instead of re-publishing the old
//! outcome; the original key, value and headers are kept (the `dlq.*` headers are dropped and
//! `dlq.replayed.from` is added); the topic is read to the end of every partition, or the
//! command fails: a stalled read never passes for the whole topic; only the letters a command
//! needs are held in memory.

use crate::app::Deps;
use crate::kafka::{client_config, OutRecord};
use crate::progress::Progress;
use crate::runtime::dlq as h;
use crate::settings::KafkaSettings;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::{BTreeSet, HashSet};
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
    /// The topic could not be read to its end: nothing is listed or replayed from a partial read.
    #[error("reading the dead-letter topic stalled after {read} records, {partitions} partition(s) not read to their end within {idle:?}")]
    Incomplete { read: u64, partitions: usize, idle: Duration },
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

/// Reads the topic from the start of each partition to its end, keeping the letters `keep`
/// accepts, and stops early once `limit` are kept (only those are held in memory, not the
/// whole topic). A partition ends at its end-of-partition event, which also passes the
/// transaction markers that exactly-once processors leave after their letters (no consumer
/// receives those, so the last letter's offset + 1 is not the end there). Reading that makes no
/// progress for `kafka.request_timeout_ms` fails with [`DlqError::Incomplete`] rather than
/// return part of the topic as if it were all.
fn scan(
    deps: &Deps,
    progress: &mut Progress,
    limit: Option<usize>,
    keep: impl FnMut(&Letter) -> bool,
) -> Result<Vec<Letter>, DlqError> {
    scan_topic(&deps.settings.kafka, &deps.catalog.topic_name(DLQ_TOPIC), progress, limit, keep)
}

fn scan_topic(
    kafka: &KafkaSettings,
    topic: &str,
    progress: &mut Progress,
    limit: Option<usize>,
    mut keep: impl FnMut(&Letter) -> bool,
) -> Result<Vec<Letter>, DlqError> {
    let consumer: BaseConsumer<Reader> = client_config(kafka, "dlq-reader")
        .set("group.id", format!("{}devcycle.dlq-reader", kafka.namespace))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .create_with_context(Reader)?;
    let timeout = Duration::from_millis(kafka.request_timeout_ms);
    let md = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> =
        md.topics().first().map(|t| t.partitions().iter().map(|p| p.id()).collect()).unwrap_or_default();
    let mut open = BTreeSet::new();
    let mut to_read = 0u64;
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, timeout)?;
        if high > low {
            to_read += (high - low) as u64;
            open.insert(p);
            tpl.add_partition_offset(topic, p, Offset::Offset(low))?;
        }
    }
    let mut letters = Vec::new();
    if open.is_empty() {
        return Ok(letters);
    }
    consumer.assign(&tpl)?;
    progress.start(Some(to_read));
    let mut read = 0u64;
    let mut last_progress = std::time::Instant::now();
    while !open.is_empty() && limit.is_none_or(|n| letters.len() < n) {
        let m = match consumer.poll(Duration::from_millis(500)) {
            None if last_progress.elapsed() >= timeout => {
                return Err(DlqError::Incomplete { read, partitions: open.len(), idle: timeout });
            }
            None => continue,
            Some(Err(KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
                last_progress = std::time::Instant::now();
                continue;
            }
            Some(m) => m?,
        };
        last_progress = std::time::Instant::now();
        read += 1;
        progress.inc(1);
        let headers = m
            .headers()
            .map(|hs| hs.iter().map(|x| (x.key.to_string(), x.value.unwrap_or_default().to_vec())).collect())
            .unwrap_or_default();
        let letter = Letter {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            headers,
        };
        if keep(&letter) {
            letters.push(letter);
        }
    }
    letters.sort_by_key(|l| (l.partition, l.offset));
    progress.finish();
    Ok(letters)
}

/// The reader's context: the end-of-partition events it asks for are how it ends, not errors
/// (librdkafka also reports them to the error callback, which would log them as such).
struct Reader;

impl ClientContext for Reader {
    fn error(&self, error: KafkaError, reason: &str) {
        let eof = matches!(error, KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF));
        if !eof {
            tracing::warn!(error = %error, reason, "dead-letter reader: librdkafka error");
        }
    }
}

impl ConsumerContext for Reader {}

/// The dead letters already replayed, as (partition, offset).
async fn replayed(deps: &Deps) -> Result<HashSet<(i32, i64)>, DlqError> {
    let rows: Vec<(i32, i64)> =
        sqlx::query_as("SELECT dlq_partition, dlq_offset FROM dlq_replays WHERE dlq_topic = $1")
            .bind(deps.catalog.topic_name(DLQ_TOPIC))
            .fetch_all(&deps.pool)
            .await
            .map_err(crate::db::DbError::from)?;
    Ok(rows.into_iter().collect())
}

/// Dead letters matching `filter`, with whether each was replayed already.
pub async fn list(deps: &Deps, filter: &Filter) -> Result<Vec<(Letter, bool)>, DlqError> {
    list_with(deps, filter, &mut Progress::hidden()).await
}

/// [`list`], counting records read on `progress`.
pub async fn list_with(deps: &Deps, filter: &Filter, progress: &mut Progress) -> Result<Vec<(Letter, bool)>, DlqError> {
    let replayed = replayed(deps).await?;
    let letters = tokio::task::block_in_place(|| scan(deps, progress, filter.limit, |l| filter.matches(l)))?;
    Ok(letters
        .into_iter()
        .map(|l| {
            let done = replayed.contains(&(l.partition, l.offset));
            (l, done)
        })
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
    let replayed = replayed(deps).await?;
    let todo = tokio::task::block_in_place(|| {
        scan(deps, &mut reading, filter.limit, |l| {
            filter.matches(l)
                && !replayed.contains(&(l.partition, l.offset))
                // A letter without its record's value has nothing to replay (the value is at its
                // source offset, while retained).
                && l.header(h::H_VALUE_OMITTED).is_none()
                && l.header(h::H_TOPIC).is_some()
        })
    })?;
    let todo: Vec<(Letter, String)> =
        todo.into_iter().filter_map(|l| l.header(h::H_TOPIC).map(|source| (l, source))).collect();
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

#[cfg(test)]
mod tests {
    //! The reader against librdkafka's mock cluster: a read that stops making progress fails
    //! instead of passing part of the topic off as all of it.
    use super::*;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    use std::time::Instant;

    const TOPIC: &str = "dead-letters";

    #[test]
    fn a_read_that_stops_making_progress_fails_as_incomplete() {
        let mock = MockCluster::new(1).expect("mock cluster");
        mock.create_topic(TOPIC, 1, 1).expect("mock topic");
        let kafka = KafkaSettings {
            request_timeout_ms: 2000,
            ..crate::settings::Settings::test_kafka(mock.bootstrap_servers())
        };
        let producer: BaseProducer = client_config(&kafka, "dlq-test").create().expect("producer");
        for value in ["a", "b", "c"] {
            producer.send(BaseRecord::<(), str>::to(TOPIC).payload(value)).expect("queued");
        }
        producer.flush(Duration::from_secs(10)).expect("produced");

        // Metadata and watermarks are answered, every fetch fails (retriably, so librdkafka keeps
        // trying in silence): the read never gets past the start of the partition.
        mock.request_errors(
            RDKafkaApiKey::Fetch,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 10_000],
        );
        let started = Instant::now();
        let stalled = scan_topic(&kafka, TOPIC, &mut Progress::hidden(), None, |_| true);
        match stalled {
            Err(DlqError::Incomplete { read, partitions, idle }) => {
                assert_eq!((read, partitions, idle), (0, 1, Duration::from_millis(2000)));
            }
            other => panic!("expected an incomplete read, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(15), "failed after {:?}", started.elapsed());

        // The same read with fetches answered lists the three letters.
        mock.clear_request_errors(RDKafkaApiKey::Fetch);
        let letters = scan_topic(&kafka, TOPIC, &mut Progress::hidden(), None, |_| true).expect("a complete read");
        let values: Vec<_> = letters.iter().map(|l| l.value.clone().unwrap_or_default()).collect();
        assert_eq!(values, [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
    }
}
