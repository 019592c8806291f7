//! Shared pieces of the load tests: isolated settings, a bench user's token, cleanup, peak RSS,
//! tables and histograms; the raw HTTP/1.1 client in [`http`], raw Kafka clients and result
//! collection in [`kafka`].

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

mod http;
mod kafka;
mod open_loop;

pub use http::*;
pub use kafka::*;
pub use open_loop::*;

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
