//! Raw Kafka clients of the load tests (a producer, pre-loading) and the collection of results
//! and per-stage times from the results topic.

use super::*;

/// A producer configured like DevCycle's (idempotent, acks=all, `kafka.linger_ms`, lz4), so that
/// a baseline follows a changed linger setting as DevCycle's own producers do.
pub fn raw_producer(s: &Settings) -> FutureProducer {
    devcycle::kafka::client_config(&s.kafka, "bench-raw")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", s.kafka.linger_ms.to_string())
        .set("compression.type", "lz4")
        .set("message.timeout.ms", "10000")
        .create()
        .expect("raw producer")
}

/// Produces `payloads` (key = task id) to `topic` with up to 5000 in flight; records/s.
pub async fn preload(p: &FutureProducer, topic: &str, payloads: &[(String, Vec<u8>)]) -> f64 {
    let started = Instant::now();
    let mut pending = FuturesUnordered::new();
    for (key, value) in payloads {
        let rec = FutureRecord::to(topic).key(key.as_bytes()).payload(value.as_slice());
        pending.push(p.send(rec, Duration::from_secs(60)));
        if pending.len() >= 5000 {
            pending.next().await.unwrap().expect("preload send");
        }
    }
    while let Some(r) = pending.next().await {
        r.expect("preload send");
    }
    payloads.len() as f64 / started.elapsed().as_secs_f64()
}

/// Wall clock, ms since the epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// One result record as seen by the [`Collector`].
pub struct Seen {
    pub at: Instant,
    /// Wall clock when seen (ms since the epoch), to compare with the record's timestamp.
    pub at_ms: i64,
    /// The record's timestamp (ms since the epoch; CreateTime = when the processor produced it).
    pub timestamp_ms: i64,
    pub payload: Option<Vec<u8>>,
}

/// Reads a topic from the beginning with a manually assigned consumer (no group join, so it
/// reads from the moment it is created) and remembers, per key, when the first record for it
/// was seen in this process.
pub struct Collector {
    pub seen: Arc<Mutex<HashMap<String, Seen>>>,
    pub records: Arc<AtomicU64>,
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

impl Collector {
    /// Starts reading every partition of `topic` (which must exist). `keep_payload` keeps each
    /// first record's value (to decode it later).
    pub async fn start(s: &Settings, topic: &str, keep_payload: bool) -> Collector {
        let c: StreamConsumer =
            devcycle::kafka::reader_config(&s.kafka, "collector").create().expect("collector consumer");
        let md = c.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("topic metadata");
        let parts = md.topics().first().map(|t| t.partitions().len()).unwrap_or(0);
        assert!(parts > 0, "topic {topic} has no partitions");
        let mut tpl = TopicPartitionList::new();
        for p in 0..parts as i32 {
            tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
        }
        c.assign(&tpl).expect("assign");
        let seen: Arc<Mutex<HashMap<String, Seen>>> = Default::default();
        let records = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let handle = {
            let (seen, records, stop) = (seen.clone(), records.clone(), stop.clone());
            tokio::spawn(async move {
                loop {
                    let m = tokio::select! {
                        _ = stop.cancelled() => return,
                        m = c.recv() => m,
                    };
                    let Ok(m) = m else { continue };
                    let at = Instant::now();
                    let at_ms = now_ms();
                    records.fetch_add(1, Ordering::Relaxed);
                    let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                    let timestamp_ms = m.timestamp().to_millis().unwrap_or(0);
                    let payload = if keep_payload { m.payload().map(<[u8]>::to_vec) } else { None };
                    seen.lock().unwrap().entry(key).or_insert(Seen { at, at_ms, timestamp_ms, payload });
                }
            })
        };
        Collector { seen, records, stop, handle }
    }

    /// Distinct keys seen so far.
    pub fn distinct(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Waits until `want` distinct keys were seen or `timeout` passed; returns the count.
    pub async fn wait_for(&self, want: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let n = self.distinct();
            if n >= want || Instant::now() >= deadline {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(self) -> HashMap<String, Seen> {
        self.stop.cancel();
        let _ = self.handle.await;
        Arc::try_unwrap(self.seen).ok().map(|m| m.into_inner().unwrap()).unwrap_or_default()
    }
}

/// Sums and counts of the agent-executor's step timings and of the task writer's batches, from
/// this process's metrics (every processor of a run shares them).
#[derive(Default)]
pub struct Stages(HashMap<String, (f64, f64)>);

const STAGE_SERIES: [(&str, &str); 7] = [
    ("check", "devcycle_task_stage_duration_seconds{stage=\"check\"}"),
    ("start", "devcycle_task_stage_duration_seconds{stage=\"start\"}"),
    ("announce", "devcycle_task_stage_duration_seconds{stage=\"announce\"}"),
    ("finish", "devcycle_task_stage_duration_seconds{stage=\"finish\"}"),
    ("publish", "devcycle_task_stage_duration_seconds{stage=\"publish\"}"),
    ("batch size", "devcycle_task_writer_batch_size"),
    ("batch time", "devcycle_task_writer_batch_duration_seconds"),
];

impl Stages {
    pub fn take() -> Stages {
        let text = devcycle::events::encode();
        let value = |series: &str| -> f64 {
            text.lines()
                .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0)
        };
        let mut m = HashMap::new();
        for (name, series) in STAGE_SERIES {
            let (base, labels) = series.split_at(series.find('{').unwrap_or(series.len()));
            m.insert(
                name.to_string(),
                (value(&format!("{base}_sum{labels}")), value(&format!("{base}_count{labels}"))),
            );
        }
        Stages(m)
    }

    /// How many times `name` (a stage or the batches) was recorded.
    pub fn count(&self, name: &str) -> f64 {
        self.0.get(name).map_or(0.0, |(_, count)| *count)
    }

    /// Means between `before` and now: where a task's time went.
    pub fn since(before: &Stages) -> String {
        let now = Stages::take();
        let mean = |name: &str| {
            let (s1, c1) = now.0.get(name).copied().unwrap_or_default();
            let (s0, c0) = before.0.get(name).copied().unwrap_or_default();
            ((c1 - c0) > 0.0).then(|| ((s1 - s0) / (c1 - c0), c1 - c0))
        };
        let mut parts = Vec::new();
        for stage in ["check", "start", "announce", "finish", "publish"] {
            if let Some((m, n)) = mean(stage) {
                parts.push(format!("{stage} {:.1} ms (n={n})", m * 1000.0));
            }
        }
        if let (Some((size, n)), Some((time, _))) = (mean("batch size"), mean("batch time")) {
            parts.push(format!("{n} group commits of {size:.1} transitions, {:.1} ms each", time * 1000.0));
        }
        format!("# mean time per agent-executor step: {}", parts.join("; "))
    }
}
