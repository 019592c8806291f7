//! Shared pieces of the load tests: isolated settings, a bench user's token, peak RSS, the raw
//! HTTP/1.1 client, histograms, raw Kafka producers and consumers, and result collection.

use devcycle::app::Deps;
use devcycle::catalog::Catalog;
use devcycle::domain::TaskRequest;
use devcycle::settings::Settings;
use futures::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const REQUESTS: &str = "devcycle.task-requests";
pub const RESULTS: &str = "devcycle.task-results";
pub const SUBMIT_BODY: &str = r#"{"agent":"echo","input":{"prompt":"load test","n":1}}"#;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Settings isolated like tests/common: fresh namespace, schema and prefix, ports 0. Pool sizes
/// are the product defaults (`LOADGEN_PG_POOL` overrides the Postgres pool), not the test ones.
/// Rate limits and gateway quotas stay enabled (their Redis round trips are part of the cost)
/// but are raised so high that a benchmark never reaches them.
pub fn bench_settings() -> Settings {
    let mut s = Settings::isolated(&root(), "bench").expect("settings");
    s.database.max_connections = std::env::var("LOADGEN_PG_POOL").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    s.redis.pool_size = 4;
    const NEVER: u64 = 1 << 40;
    s.rate_limits.api_per_window = NEVER;
    s.rate_limits.submit_per_window = NEVER;
    s.rate_limits.auth_per_window = NEVER;
    s.gateway.quota_records_per_sec = NEVER;
    s.gateway.quota_bytes_per_sec = NEVER;
    s.auth.access_token_ttl_secs = 24 * 3600;
    s
}

/// Connects (applying migrations, topics and schemas to the fresh namespace).
pub async fn connect(s: Settings) -> Arc<Deps> {
    Deps::connect(s).await.expect("connect (is `scripts/services up` running? `eval \"$(scripts/services env)\"`?)")
}

/// A runtime of its own for the system under test, built as `devcycle run` builds its own (one
/// worker per core), as a separate process would have: the generator's, readers' and samplers'
/// tasks never wait in its run queues, nor its tasks behind theirs; the OS shares the cores.
pub fn server_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().thread_name("server").enable_all().build().expect("server runtime")
}

/// Shuts a runtime down off the async workers (dropping one inside async code panics).
pub async fn drop_runtime(rt: tokio::runtime::Runtime) {
    tokio::task::spawn_blocking(move || rt.shutdown_timeout(Duration::from_secs(10))).await.expect("runtime dropped");
}

/// An admin user created directly in the bench schema, and an access token for it (signed
/// like a login's; no HTTP login, so no argon2 verify on the measured path).
pub async fn bench_token(deps: &Deps) -> String {
    let email = format!("bench-{}@example.test", Uuid::new_v4().simple());
    let user =
        devcycle::auth::create_user(&deps.pool, &deps.settings.auth, &email, "Bench-Load-Test-Passw0rd!", "admin")
            .await
            .expect("create the bench user");
    let s = &deps.settings;
    devcycle::auth::issue_access(s.secret_key.expose(), &s.auth, &user.id.to_string(), &user.email, &user.role).0
}

/// Deletes a run's topics (its namespace's declared topics) and drops its Postgres schema, so
/// the shared broker does not accumulate bench partitions. `LOADGEN_KEEP=1` keeps them. Redis
/// keys under the run's prefix are left to expire (status and cache keys have TTLs).
pub async fn cleanup(s: &Settings, catalog: &Catalog, pool: &sqlx::PgPool) {
    if std::env::var_os("LOADGEN_KEEP").is_some() {
        println!("# kept namespace {} and schema {} (LOADGEN_KEEP)", s.kafka.namespace, s.database.schema);
        return;
    }
    let names: Vec<String> = catalog.topics.keys().map(|d| catalog.topic_name(d)).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let admin: Result<AdminClient<DefaultClientContext>, _> =
        devcycle::kafka::client_config(&s.kafka, "bench-admin").create();
    let topics = match admin {
        Ok(a) => a.delete_topics(&refs, &AdminOptions::new()).await.map(|r| r.iter().filter(|x| x.is_ok()).count()),
        Err(e) => Err(e),
    };
    // The schema name is validated by Settings as a plain identifier [A-Za-z0-9_].
    let drop = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", s.database.schema);
    let schema = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(pool).await;
    // Redis keys too: left to expire they pile up across runs, and the RDB snapshots the
    // spec's `save` rules take then cost the machine a core during later runs.
    match drop_keys(s).await {
        Ok(n) => println!("# cleaned up: {n} Redis keys under {}", s.redis.key_prefix),
        Err(e) => println!("# Redis keys under {} not removed: {e}", s.redis.key_prefix),
    }
    match (topics, schema) {
        (Ok(n), Ok(_)) => println!("# cleaned up: {n} topics of {}, schema {}", s.kafka.namespace, s.database.schema),
        (t, sc) => println!(
            "# cleanup incomplete ({}): topics {:?}, schema {:?}",
            s.kafka.namespace,
            t.err().map(|e| e.to_string()),
            sc.err().map(|e| e.to_string())
        ),
    }
}

/// Removes every Redis key under the run's prefix (SCAN + UNLINK).
async fn drop_keys(s: &Settings) -> Result<usize, String> {
    use futures::TryStreamExt;
    let cache = devcycle::cache::Cache::connect(&s.redis).await.map_err(|e| e.to_string())?;
    let client = cache.pool().next();
    let keys: Vec<fred::types::Key> = client
        .scan_buffered(format!("{}*", s.redis.key_prefix), Some(1000), None)
        .try_collect()
        .await
        .map_err(|e| e.to_string())?;
    for chunk in keys.chunks(1000) {
        let _: i64 = fred::prelude::KeysInterface::unlink(client, chunk.to_vec()).await.map_err(|e| e.to_string())?;
    }
    Ok(keys.len())
}

/// An echo TaskRequest like the ingress makes (with a request id).
pub fn echo_request() -> TaskRequest {
    let mut r = TaskRequest::new("echo", serde_json::json!({"prompt": "load test", "n": 1}));
    r.request_id = Some(format!("req_{}", Uuid::new_v4().simple()));
    r
}

/// Records as (key, value bytes).
pub type Records = Vec<(String, Vec<u8>)>;

/// Encodes `reqs` with the codec: (key = task id, Avro bytes).
pub async fn encode_all(deps: &Deps, topic: &str, reqs: &[TaskRequest]) -> Records {
    let mut out = Vec::with_capacity(reqs.len());
    for r in reqs {
        out.push((r.task_id.to_string(), deps.codec.encode_request(topic, r).await.expect("encode")));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Memory

/// Resets the peak RSS (VmHWM) of this process (Linux: `5` > /proc/self/clear_refs).
pub fn reset_peak_rss() -> bool {
    reset_peak_rss_of(None)
}

/// Resets the peak RSS of process `pid` (this one when `None`).
pub fn reset_peak_rss_of(pid: Option<u32>) -> bool {
    std::fs::write(format!("{}/clear_refs", proc_dir(pid)), "5").is_ok()
}

fn proc_dir(pid: Option<u32>) -> String {
    pid.map_or_else(|| "/proc/self".to_string(), |p| format!("/proc/{p}"))
}

/// (VmHWM, VmRSS) in MiB.
pub fn rss_mib() -> (f64, f64) {
    rss_mib_of(None)
}

/// (VmHWM, VmRSS) in MiB of process `pid` (this one when `None`).
pub fn rss_mib_of(pid: Option<u32>) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("{}/status", proc_dir(pid))).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(f64::NAN)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

// ---------------------------------------------------------------------------------------------
// Tables

/// Starts a results table: a blank line, the header and its alignment row. `align` has one
/// character per column: `l` left-aligned (names), `r` right-aligned (numbers).
pub fn table(columns: &[&str], align: &str) {
    assert_eq!(columns.len(), align.len(), "one alignment per column");
    let rule: String = align.chars().map(|a| if a == 'r' { "---:|" } else { "---|" }).collect();
    println!();
    println!("| {} |", columns.join(" | "));
    println!("|{rule}");
}

// ---------------------------------------------------------------------------------------------
// Histograms (µs, 1 µs .. 60 s, 3 significant digits)

pub fn hist() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap()
}

pub fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record(d.as_micros().max(1) as u64);
}

/// A quantile in ms with two decimals ("–" for an empty histogram).
pub fn pct(h: &Histogram<u64>, q: f64) -> String {
    if h.is_empty() {
        return "–".into();
    }
    format!("{:.2}", h.value_at_quantile(q) as f64 / 1000.0)
}

/// The columns of [`latency_cells`], and of a peak RSS.
pub const LAT: [&str; 5] = ["P50 ms", "P95 ms", "P99 ms", "P99.9 ms", "max ms"];
pub const RSS: &str = "peak RSS MiB";

/// The P50, P95, P99, P99.9 and max cells of a results table row (ms).
pub fn latency_cells(h: &Histogram<u64>) -> String {
    [0.50, 0.95, 0.99, 0.999, 1.0].map(|q| pct(h, q)).join(" | ")
}

pub fn pct_ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1.1 keep-alive client

/// One request's bytes: `METHOD path` with Host, Authorization (if any) and a JSON body.
pub fn http_request(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: &str) -> Arc<Vec<u8>> {
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let body_headers = if body.is_empty() && method == "GET" {
        String::new()
    } else {
        format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len())
    };
    Arc::new(format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}{body_headers}\r\n{body}").into_bytes())
}

/// A keep-alive connection reading Content-Length framed responses.
pub struct Conn {
    addr: SocketAddr,
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn { addr, stream, buf: Vec::with_capacity(16 * 1024) })
    }

    /// Sends `request` and reads the response: the status and, if `want_body`, the body.
    /// On an error or after `timeout` the connection is replaced (the exchange is lost).
    pub async fn exchange(
        &mut self,
        request: &[u8],
        want_body: bool,
        timeout: Duration,
    ) -> std::io::Result<(u16, Option<Vec<u8>>)> {
        let res = async {
            self.stream.write_all(request).await?;
            read_response(&mut self.stream, &mut self.buf, want_body).await
        };
        match tokio::time::timeout(timeout, res).await {
            Ok(Ok(r)) => Ok(r),
            other => {
                self.buf.clear();
                self.stream = TcpStream::connect(self.addr).await?;
                self.stream.set_nodelay(true)?;
                match other {
                    Ok(Err(e)) => Err(e),
                    _ => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "exchange timed out")),
                }
            }
        }
    }
}

/// Reads one response (status line, headers with Content-Length, body) from `stream`, using
/// `buf` as carry-over between responses.
async fn read_response(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    want_body: bool,
) -> std::io::Result<(u16, Option<Vec<u8>>)> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut chunk = [0u8; 16384];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).map_err(|_| bad("non-utf8 head"))?;
            let status: u16 =
                head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| bad("no status line"))?;
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
                })
                .ok_or_else(|| bad("response without content-length"))?;
            let total = end + 4 + len;
            while buf.len() < total {
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err(bad("eof in body"));
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = want_body.then(|| buf[end + 4..total].to_vec());
            buf.drain(..total);
            return Ok((status, body));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(bad("eof in head"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A success for the load tests: 2xx but not 207 (a partially written batch).
pub fn is_ok(status: u16) -> bool {
    (200..300).contains(&status) && status != 207
}

/// The outcome of a closed-loop run.
pub struct HttpRun {
    pub requests: u64,
    pub errors: u64,
    /// Non-success statuses (0 = a broken or timed-out exchange) and their counts.
    pub error_statuses: BTreeMap<u16, u64>,
    pub elapsed: Duration,
    pub hist: Histogram<u64>,
}

impl HttpRun {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
    pub fn errors_text(&self) -> String {
        self.error_statuses.iter().map(|(s, n)| format!(" {s}×{n}")).collect()
    }
}

/// Called with a successful response's start instant and body.
pub type OnOk = Arc<dyn Fn(Instant, &[u8]) + Send + Sync>;

/// `conns` keep-alive connections, connection i sending `requests[i % len]` back to back for
/// `secs` (closed loop). `on_ok` sees each successful response's start and body (if
/// `want_body`).
pub async fn drive_http(
    addr: SocketAddr,
    requests: &[Arc<Vec<u8>>],
    conns: usize,
    secs: f64,
    want_body: bool,
    on_ok: Option<OnOk>,
) -> HttpRun {
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let mut workers = tokio::task::JoinSet::new();
    for i in 0..conns {
        let request = requests[i % requests.len()].clone();
        let on_ok = on_ok.clone();
        workers.spawn(async move {
            let mut h = hist();
            let (mut ok, mut errors) = (0u64, 0u64);
            let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
            let mut conn = Conn::open(addr).await.expect("connect");
            while Instant::now() < deadline {
                let t0 = Instant::now();
                match conn.exchange(&request, want_body, Duration::from_secs(30)).await {
                    Ok((status, body)) => {
                        record(&mut h, t0.elapsed());
                        if is_ok(status) {
                            ok += 1;
                            if let Some(f) = &on_ok {
                                f(t0, body.as_deref().unwrap_or_default());
                            }
                        } else {
                            errors += 1;
                            *statuses.entry(status).or_default() += 1;
                        }
                    }
                    Err(_) => {
                        errors += 1;
                        *statuses.entry(0).or_default() += 1;
                    }
                }
            }
            (ok, errors, statuses, h)
        });
    }
    let mut run =
        HttpRun { requests: 0, errors: 0, error_statuses: BTreeMap::new(), elapsed: Duration::ZERO, hist: hist() };
    while let Some(j) = workers.join_next().await {
        let (ok, errors, statuses, h) = j.expect("worker");
        run.requests += ok;
        run.errors += errors;
        for (s, n) in statuses {
            *run.error_statuses.entry(s).or_default() += n;
        }
        run.hist.add(&h).unwrap();
    }
    run.elapsed = started.elapsed();
    run
}

/// The `task_id` of a 202 answer of POST /v1/tasks (`{"data":{"task_id":"…",…}…}`).
pub fn task_id_of(body: &[u8]) -> Option<String> {
    const NEEDLE: &[u8] = b"\"task_id\":\"";
    let at = body.windows(NEEDLE.len()).position(|w| w == NEEDLE)? + NEEDLE.len();
    let len = body[at..].iter().position(|b| *b == b'"')?;
    std::str::from_utf8(&body[at..at + len]).ok().map(String::from)
}

// ---------------------------------------------------------------------------------------------
// Raw Kafka clients

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
