//! Kafka clients built from settings: the idempotent producer (acks=all) and consumers.
//!
//! Invariants: every client gets the configured bootstrap servers and the extra
//! `kafka.properties` (security settings); [`Producer::send`] returns only once the broker has
//! acknowledged the record (or failed), so "sent" means durable.

use crate::events::{ProduceMetrics, RecordProduced};
use crate::settings::KafkaSettings;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Whether `client` gets cluster metadata within `timeout` (a blocking call, off the workers).
async fn answers_metadata(client: FutureProducer, timeout: Duration) -> bool {
    tokio::task::spawn_blocking(move || client.client().fetch_metadata(None, timeout).is_ok()).await.unwrap_or(false)
}

/// A base client config with bootstrap servers, client id and the extra properties.
pub fn client_config(k: &KafkaSettings, client_suffix: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.bootstrap_servers)
        .set("client.id", format!("{}-{}", k.client_id, client_suffix))
        .set("socket.keepalive.enable", "true");
    for (key, value) in &k.properties {
        c.set(key, value);
    }
    c
}

/// A reader outside any real consumer group (tests, benchmarks, checks): read_committed, from
/// the earliest offset, never committing, in a throwaway group `<namespace><name>-<uuid>`.
pub fn reader_config(k: &KafkaSettings, name: &str) -> ClientConfig {
    let mut c = client_config(k, name);
    c.set("group.id", format!("{}{name}-{}", k.namespace, uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed");
    c
}

#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// Kafka did not take the record in time, or is down: the caller may retry later.
    #[error("kafka unavailable: {0}")]
    Unavailable(KafkaError),
    /// Kafka refused the record itself (too large, unknown topic, ...).
    #[error("kafka refused the record: {0}")]
    Rejected(KafkaError),
}

/// The largest record the producer sends (librdkafka's `message.max.bytes`, set explicitly at
/// its default); a larger one is refused before it leaves ([`ProduceError::too_large`]).
pub const MAX_RECORD_BYTES: usize = 1_000_000;

impl ProduceError {
    /// Whether the record was refused for its size (the producer's [`MAX_RECORD_BYTES`], or the
    /// topic's limit): the caller's request is too large, not Kafka at fault.
    pub fn too_large(&self) -> bool {
        matches!(self, ProduceError::Rejected(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge))
    }

    fn from_kafka(e: KafkaError) -> Self {
        let code = e.rdkafka_error_code();
        match code {
            Some(
                RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidTimestamp
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::MessageBatchTooLarge
                | RDKafkaErrorCode::TopicAuthorizationFailed,
            ) => ProduceError::Rejected(e),
            _ => ProduceError::Unavailable(e),
        }
    }
}

/// The librdkafka record for an [`OutRecord`].
pub fn future_record<'a>(rec: &'a OutRecord<'a>) -> FutureRecord<'a, [u8], [u8]> {
    let mut headers = OwnedHeaders::new_with_capacity(rec.headers.len());
    for (name, value) in &rec.headers {
        headers = headers.insert(Header { key: name, value: Some(value.as_ref()) });
    }
    let mut fr: FutureRecord<'a, [u8], [u8]> = FutureRecord::to(rec.topic).headers(headers);
    if let Some(k) = rec.key {
        fr = fr.key(k);
    }
    if let Some(v) = rec.value {
        fr = fr.payload(v);
    }
    if let Some(p) = rec.partition {
        fr = fr.partition(p);
    }
    fr
}

/// The idempotent, acks=all producer shared by a process.
#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer,
    timeout: Duration,
    outcomes: Arc<Outcomes>,
    topics: Arc<Topics>,
}

/// How the producer's deliveries have gone lately (for the ingress's watchdog): times are ms
/// since `epoch`, plus one (0: never).
struct Outcomes {
    epoch: Instant,
    /// The first failure since the last success.
    failing_since: AtomicU64,
    last_failure: AtomicU64,
}

impl Outcomes {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Records a delivery report. A record Kafka refused for itself (too large, unknown topic)
    /// says nothing about the producer and is not counted.
    fn record<T>(&self, out: &Result<T, ProduceError>) {
        match out {
            Ok(_) => self.failing_since.store(0, Ordering::Relaxed),
            Err(ProduceError::Unavailable(_)) => {
                let now = self.now();
                let _ = self.failing_since.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
                self.last_failure.store(now, Ordering::Relaxed);
            }
            Err(ProduceError::Rejected(_)) => {}
        }
    }

    /// A delivery report of a record to `topic` handed over at `started`: recorded, and emitted
    /// as [`RecordProduced`].
    fn report<T>(&self, topic: &Topic, started: Instant, out: &Result<T, ProduceError>) {
        self.record(out);
        let error = out.as_ref().err().map(|e| crate::error_chain(e));
        RecordProduced { topic: &topic.name, metrics: &topic.metrics, elapsed: started.elapsed(), error }.emit();
    }
}

/// A topic's name and metrics, shared by the reports of its records.
struct Topic {
    name: Box<str>,
    metrics: ProduceMetrics,
}

/// Topics looked up so far (bounded: past [`Topics::MAX`] names, lookups are not kept).
#[derive(Default)]
struct Topics(RwLock<HashMap<Box<str>, Arc<Topic>>>);

impl Topics {
    const MAX: usize = 1024;

    fn get(&self, name: &str) -> Arc<Topic> {
        if let Some(t) = self.0.read().expect("lock").get(name) {
            return t.clone();
        }
        let topic = Arc::new(Topic { name: name.into(), metrics: ProduceMetrics::of(name) });
        let mut map = self.0.write().expect("lock");
        if map.len() < Self::MAX {
            map.insert(name.into(), topic.clone());
        }
        topic
    }
}

/// Deliveries have failed since `for_` ago without one success; the last failure was `last` ago.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failing {
    pub for_: Duration,
    pub last: Duration,
}

/// One record to produce; headers are (name, value) pairs, borrowed where the caller keeps
/// them (librdkafka copies them when the record is queued).
pub struct OutRecord<'a> {
    pub topic: &'a str,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: Vec<(&'a str, Cow<'a, [u8]>)>,
    pub partition: Option<i32>,
}

/// A broker acknowledgement: where the record was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
    /// The record's timestamp (ms since the epoch), when the broker reports one.
    pub timestamp: Option<i64>,
}

/// A queued record's delivery report, still to come (reported to the producer's outcomes and
/// metrics when it comes).
pub struct Pending {
    delivery: DeliveryFuture,
    outcomes: Arc<Outcomes>,
    topic: Arc<Topic>,
    started: Instant,
}

impl Future for Pending {
    type Output = Result<Delivered, ProduceError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let out = match std::task::ready!(Pin::new(&mut self.delivery).poll(cx)) {
            Ok(Ok(d)) => Ok(Delivered { partition: d.partition, offset: d.offset, timestamp: d.timestamp.to_millis() }),
            Ok(Err((e, _))) => Err(ProduceError::from_kafka(e)),
            Err(_) => Err(ProduceError::Unavailable(KafkaError::Canceled)),
        };
        self.outcomes.report(&self.topic, self.started, &out);
        Poll::Ready(out)
    }
}

impl Producer {
    pub fn new(k: &KafkaSettings, suffix: &str, timeout: Duration) -> Result<Producer, KafkaError> {
        let inner: FutureProducer = client_config(k, suffix)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", k.linger_ms.to_string())
            .set("compression.type", "lz4")
            .set("message.timeout.ms", timeout.as_millis().to_string())
            .set("message.max.bytes", MAX_RECORD_BYTES.to_string())
            .create()?;
        let outcomes =
            Outcomes { epoch: Instant::now(), failing_since: AtomicU64::new(0), last_failure: AtomicU64::new(0) };
        Ok(Producer { inner, timeout, outcomes: Arc::new(outcomes), topics: Arc::default() })
    }

    /// Whether every delivery has failed (Kafka unavailable) since the last success, and since
    /// when. `None` after a success, or before any failure.
    pub fn failing(&self) -> Option<Failing> {
        let o = &self.outcomes;
        let since = o.failing_since.load(Ordering::Relaxed);
        let now = o.now();
        (since != 0).then(|| Failing {
            for_: Duration::from_millis(now.saturating_sub(since)),
            last: Duration::from_millis(now.saturating_sub(o.last_failure.load(Ordering::Relaxed))),
        })
    }

    /// Produces one record and waits for its delivery report: (partition, offset).
    pub async fn send(&self, rec: OutRecord<'_>) -> Result<(i32, i64), ProduceError> {
        let started = Instant::now();
        let fr = future_record(&rec);
        // librdkafka reports every record within message.timeout.ms; the outer bound guards
        // against a report that never comes (e.g. a wedged connection after a broker restart).
        let bound = self.timeout * 2 + Duration::from_secs(5);
        let out = match tokio::time::timeout(bound, self.inner.send(fr, self.timeout)).await {
            Ok(Ok(delivery)) => Ok((delivery.partition, delivery.offset)),
            Ok(Err((e, _))) => Err(ProduceError::from_kafka(e)),
            Err(_) => Err(ProduceError::Unavailable(KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut))),
        };
        self.outcomes.report(&self.topics.get(rec.topic), started, &out);
        out
    }

    /// Hands one record to the producer's queue without waiting (`timestamp`: ms since the
    /// epoch, or the producer's clock). Fails at once when the queue is full or the record is
    /// refused locally; the returned future resolves to the broker's acknowledgement.
    pub fn enqueue(&self, rec: &OutRecord<'_>, timestamp: Option<i64>) -> Result<Pending, ProduceError> {
        let started = Instant::now();
        let mut fr = future_record(rec);
        if let Some(t) = timestamp {
            fr = fr.timestamp(t);
        }
        let delivery = self.inner.send_result(fr).map_err(|(e, _)| ProduceError::from_kafka(e))?;
        Ok(Pending { delivery, outcomes: self.outcomes.clone(), topic: self.topics.get(rec.topic), started })
    }

    /// Waits until queued records are delivered (shutdown).
    pub fn flush(&self, timeout: Duration) {
        let _ = self.inner.flush(timeout);
    }

    /// Whether the cluster answers a metadata request from a new client (not this producer's
    /// connections) within `timeout`.
    pub async fn cluster_reachable(k: &KafkaSettings, timeout: Duration) -> bool {
        match client_config(k, "probe").create::<FutureProducer>() {
            Ok(client) => answers_metadata(client, timeout).await,
            Err(_) => false,
        }
    }

    /// Whether the cluster answers a metadata request within `timeout`.
    pub async fn reachable(&self, timeout: Duration) -> bool {
        answers_metadata(self.inner.clone(), timeout).await
    }

    /// Partition count of a topic, from cluster metadata.
    pub async fn partition_count(&self, topic: &str, timeout: Duration) -> Option<usize> {
        let client = self.inner.clone();
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || {
            let md = client.client().fetch_metadata(Some(&topic), timeout).ok()?;
            md.topics().first().map(|t| t.partitions().len()).filter(|n| *n > 0)
        })
        .await
        .ok()
        .flatten()
    }
}
