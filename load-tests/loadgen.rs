//! DevCycle load tests (issue #7): ingress and pipeline throughput against baselines.
//!
//! `cargo run --release --example loadgen -- ingress [--secs 10] [--conns 1,16,64]`
//! `cargo run --release --example loadgen -- pipeline [--tasks 20000]`
//!
//! Everything runs in this one process against the real services (`scripts/services env`),
//! each run in a fresh Kafka namespace, Postgres schema and Redis prefix, like the tests.
//! See load-tests/README.md for what each number means.

use clap::{Parser, Subcommand};
use devcycle::app::{self, Deps, Mode};
use devcycle::catalog::Catalog;
use devcycle::domain::TaskRequest;
use devcycle::settings::Settings;
use futures::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Parser)]
#[command(about = "DevCycle load generator (issue #7)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// POST /v1/tasks on an in-process ingress vs a bare hyper server, and raw producer sends.
    Ingress {
        /// Seconds per measured run.
        #[arg(long, default_value_t = 10)]
        secs: u64,
        /// Comma-separated connection (and producer concurrency) counts.
        #[arg(long, default_value = "1,16,64", value_delimiter = ',')]
        conns: Vec<usize>,
    },
    /// Pre-loaded echo tasks through one agent-executor vs a raw consume-and-produce loop.
    Pipeline {
        #[arg(long, default_value_t = 20000)]
        tasks: usize,
        /// Give up waiting for results after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
    },
}

const SUBMIT_BODY: &str = r#"{"agent":"echo","input":{"prompt":"load test","n":1}}"#;
const BARE_BODY: &str =
    r#"{"data":{"task_id":"00000000-0000-0000-0000-000000000000","agent":"echo","status":"queued"}}"#;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Settings isolated like tests/common: fresh namespace, schema and prefix, port 0. Pool sizes
/// are the product defaults (`LOADGEN_PG_POOL` overrides the Postgres pool), not the test ones.
fn bench_settings() -> Settings {
    let mut env: BTreeMap<String, String> = std::env::vars().collect();
    env.insert("ENVIRONMENT".into(), "test".into());
    let mut s = Settings::load_with_env(&root().join("config"), &env).expect("settings");
    let id = Uuid::new_v4().simple().to_string();
    let short = &id[..12];
    s.http.port = 0;
    s.kafka.namespace = format!("bench{short}.");
    s.database.schema = format!("bench_{short}");
    s.redis.key_prefix = format!("bench{short}:");
    s.database.max_connections = std::env::var("LOADGEN_PG_POOL").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    s.redis.pool_size = 4;
    s.paths.topics = root().join("topics");
    s.paths.schemas = root().join("schemas");
    s.paths.processors = root().join("processors");
    s
}

// ---------------------------------------------------------------------------------------------
// Memory

/// Resets the peak RSS (VmHWM) of this process (Linux: `5` > /proc/self/clear_refs).
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// (VmHWM, VmRSS) in MiB.
fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
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
// Closed-loop HTTP/1.1 keep-alive load generator

struct HttpRun {
    requests: u64,
    errors: u64,
    elapsed: Duration,
    hist: Histogram<u64>,
}

impl HttpRun {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

/// Reads one response (status line, headers with Content-Length, body) from `stream`, using
/// `buf` as carry-over between responses. Returns the status code.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<u16> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut chunk = [0u8; 8192];
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
            buf.drain(..total);
            return Ok(status);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(bad("eof in head"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `conns` keep-alive connections, each sending POST /v1/tasks back to back for `secs`.
async fn drive_http(addr: SocketAddr, conns: usize, secs: u64) -> HttpRun {
    let request = format!(
        "POST /v1/tasks HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        SUBMIT_BODY.len(),
        SUBMIT_BODY
    )
    .into_bytes();
    let request = Arc::new(request);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..conns {
        let request = request.clone();
        workers.spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let (mut ok, mut errors) = (0u64, 0u64);
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            stream.set_nodelay(true).unwrap();
            let mut buf = Vec::with_capacity(16 * 1024);
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let res = async {
                    stream.write_all(&request).await?;
                    read_response(&mut stream, &mut buf).await
                };
                match tokio::time::timeout(Duration::from_secs(30), res).await {
                    Ok(Ok(status)) => {
                        hist.saturating_record(t0.elapsed().as_micros() as u64);
                        if (200..300).contains(&status) {
                            ok += 1;
                        } else {
                            errors += 1;
                        }
                    }
                    _ => {
                        errors += 1;
                        // Reconnect after a broken or stuck exchange.
                        buf.clear();
                        match TcpStream::connect(addr).await {
                            Ok(s) => stream = s,
                            Err(_) => break,
                        }
                    }
                }
            }
            (ok, errors, hist)
        });
    }
    let mut run = HttpRun {
        requests: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        hist: Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap(),
    };
    while let Some(j) = workers.join_next().await {
        let (ok, errors, hist) = j.expect("worker");
        run.requests += ok;
        run.errors += errors;
        run.hist.add(&hist).unwrap();
    }
    run.elapsed = started.elapsed();
    run
}

/// A bare hyper 1 server answering every request with a fixed 202 JSON body (after reading it).
async fn spawn_bare(shutdown: CancellationToken) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = listener.accept() => match r { Ok(s) => s, Err(_) => continue },
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let _ = req.into_body().collect().await;
                    let resp = hyper::Response::builder()
                        .status(202)
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from_static(BARE_BODY.as_bytes())))
                        .unwrap();
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn pct(h: &Histogram<u64>, q: f64) -> String {
    format!("{:.2}", h.value_at_quantile(q) as f64 / 1000.0)
}

// ---------------------------------------------------------------------------------------------
// Raw producer baseline

fn raw_producer(s: &Settings) -> FutureProducer {
    devcycle::kafka::client_config(&s.kafka, "bench-raw")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("compression.type", "lz4")
        .set("message.timeout.ms", "10000")
        .create()
        .expect("raw producer")
}

/// `conc` senders, each producing the same bytes and awaiting the ack, for `secs`.
async fn drive_producer(p: &FutureProducer, topic: &str, payload: &[u8], conc: usize, secs: u64) -> (u64, u64, f64) {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..conc {
        let (p, topic, payload) = (p.clone(), topic.to_string(), payload.to_vec());
        workers.spawn(async move {
            let (mut ok, mut errors) = (0u64, 0u64);
            while Instant::now() < deadline {
                let key = Uuid::new_v4().to_string();
                let rec = FutureRecord::to(&topic).key(key.as_bytes()).payload(payload.as_slice());
                match p.send(rec, Duration::from_secs(10)).await {
                    Ok(_) => ok += 1,
                    Err(_) => errors += 1,
                }
            }
            (ok, errors)
        });
    }
    let (mut ok, mut errors) = (0, 0);
    while let Some(j) = workers.join_next().await {
        let (o, e) = j.expect("sender");
        ok += o;
        errors += e;
    }
    (ok, errors, ok as f64 / started.elapsed().as_secs_f64())
}

fn echo_request() -> TaskRequest {
    TaskRequest {
        task_id: Uuid::new_v4(),
        agent: "echo".into(),
        input: serde_json::json!({"prompt": "load test", "n": 1}),
        priority: 0,
        submitted_by: None,
        submitted_at: chrono::Utc::now(),
        deadline: None,
        request_id: Some(Uuid::new_v4().to_string()),
        traceparent: None,
        tracestate: None,
        attempt: 1,
    }
}

// ---------------------------------------------------------------------------------------------
// Ingress benchmark

async fn ingress(secs: u64, conns: Vec<usize>) {
    let peak_resettable = reset_peak_rss();
    let deps = Deps::connect(bench_settings()).await.expect("connect (is `scripts/services up` running?)");
    let shutdown = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let handle = tokio::spawn(app::run_with(deps.clone(), Mode::Ingress, shutdown.clone(), Some(tx)));
    let dc_addr = tokio::time::timeout(Duration::from_secs(30), rx).await.expect("ingress bound").unwrap();
    let bare_addr = spawn_bare(shutdown.clone()).await;
    let topic = deps.catalog.topic_name("devcycle.task-requests");
    let payload = deps.codec.encode_request(&topic, &echo_request()).await.expect("encode");
    let producer = raw_producer(&deps.settings);
    println!("# ingress: devcycle {dc_addr}, bare hyper {bare_addr}, topic {topic}, {secs} s per run");
    println!("# Avro TaskRequest payload: {} bytes; peak RSS resettable: {peak_resettable}", payload.len());

    // Warm up every path (connections, schema cache, agent cache, producer metadata).
    let _ = drive_http(dc_addr, 4, 1).await;
    let _ = drive_http(bare_addr, 4, 1).await;
    let _ = drive_producer(&producer, &topic, &payload, 4, 1).await;

    println!();
    println!(
        "| target | conns | requests | errors | req/s | P50 ms | P95 ms | P99 ms | P99.9 ms | max ms | peak RSS MiB |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut summary = Vec::new();
    for &c in &conns {
        let mut row = Vec::new();
        for (name, addr) in [("devcycle", dc_addr), ("bare-hyper", bare_addr)] {
            reset_peak_rss();
            let r = drive_http(addr, c, secs).await;
            let (hwm, _) = rss_mib();
            println!(
                "| {name} | {c} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {hwm:.1} |",
                r.requests,
                r.errors,
                r.rps(),
                pct(&r.hist, 0.50),
                pct(&r.hist, 0.95),
                pct(&r.hist, 0.99),
                pct(&r.hist, 0.999),
                pct(&r.hist, 1.0),
            );
            row.push(r.rps());
        }
        reset_peak_rss();
        let (ok, errors, rate) = drive_producer(&producer, &topic, &payload, c, secs).await;
        let (hwm, _) = rss_mib();
        println!("| raw-producer (acks=all) | {c} in flight | {ok} | {errors} | {rate:.0} | | | | | | {hwm:.1} |");
        summary.push((c, row[0], row[1], rate));
    }
    println!();
    println!("| conns | devcycle req/s | bare req/s | devcycle/bare | raw producer rec/s | devcycle/raw producer |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for (c, dc, bare, raw) in summary {
        println!("| {c} | {dc:.0} | {bare:.0} | {:.3} | {raw:.0} | {:.3} |", dc / bare, dc / raw);
    }
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), handle).await;
}

// ---------------------------------------------------------------------------------------------
// Pipeline benchmark

/// Produces `payloads` (key = task id) to `topic` with everything in flight at once.
async fn preload(p: &FutureProducer, topic: &str, payloads: &[(String, Vec<u8>)]) -> f64 {
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

async fn pipeline(tasks: usize, timeout_secs: u64) {
    let peak_resettable = reset_peak_rss();
    let deps = Deps::connect(bench_settings()).await.expect("connect (is `scripts/services up` running?)");
    let req_topic = deps.catalog.topic_name("devcycle.task-requests");
    let res_topic = deps.catalog.topic_name("devcycle.task-results");
    let producer = raw_producer(&deps.settings);

    let t = Instant::now();
    let mut payloads = Vec::with_capacity(tasks);
    for _ in 0..tasks {
        let r = echo_request();
        let bytes = deps.codec.encode_request(&req_topic, &r).await.expect("encode");
        payloads.push((r.task_id.to_string(), bytes));
    }
    let encode_rate = tasks as f64 / t.elapsed().as_secs_f64();
    let preload_rate = preload(&producer, &req_topic, &payloads).await;
    println!("# pipeline: {tasks} echo tasks in {req_topic}; peak RSS resettable: {peak_resettable}");
    println!("# codec encode_request: {encode_rate:.0}/s; preload produce: {preload_rate:.0} rec/s");

    // DevCycle: one agent-executor process part.
    reset_peak_rss();
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let handle =
        tokio::spawn(app::run_with(deps.clone(), Mode::Process("agent-executor".into()), shutdown.clone(), None));
    let deadline = started + Duration::from_secs(timeout_secs);
    let mut first_seen: Option<Duration> = None;
    let mut done = 0i64;
    while Instant::now() < deadline {
        done = sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM tasks WHERE status IN ('succeeded','failed','dead_lettered','cancelled','expired')",
        )
        .fetch_one(&deps.pool)
        .await
        .unwrap_or(0);
        if done > 0 && first_seen.is_none() {
            first_seen = Some(started.elapsed());
        }
        if done as usize >= tasks {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all_done = started.elapsed();
    let (hwm, _) = rss_mib();
    let succeeded: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks WHERE status = 'succeeded'")
        .fetch_one(&deps.pool)
        .await
        .unwrap_or(0);
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(60), handle).await;

    // First-to-last result from the results topic's record timestamps (ms resolution).
    let (n_results, first_ts, last_ts) = read_timestamps(&deps.settings, &res_topic, tasks).await;
    let span_s = (last_ts - first_ts) as f64 / 1000.0;
    let dc_rate = if span_s > 0.0 { (n_results.saturating_sub(1)) as f64 / span_s } else { f64::NAN };
    println!();
    println!("| target | records | terminal in PG | succeeded | first result s | all done s | first→last result s | rate/s | peak RSS MiB |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| devcycle agent-executor | {tasks} | {done} | {succeeded} | {:.2} | {:.2} | {span_s:.2} | {dc_rate:.0} | {hwm:.1} |",
        first_seen.map(|d| d.as_secs_f64()).unwrap_or(f64::NAN),
        all_done.as_secs_f64(),
    );

    // Baseline: raw consume -> produce in a separate namespace, same bytes.
    let base = bench_settings();
    let catalog = Catalog::load(&base).expect("catalog");
    devcycle::topics::apply(&base, &catalog).await.expect("baseline topics");
    let b_in = catalog.topic_name("devcycle.task-requests");
    let b_out = catalog.topic_name("devcycle.task-results");
    let bp = raw_producer(&base);
    preload(&bp, &b_in, &payloads).await;
    reset_peak_rss();
    let (n, span, first_to_last) = raw_loop(&base, &b_in, &b_out, tasks, timeout_secs).await;
    let (hwm, _) = rss_mib();
    let raw_rate = (n.saturating_sub(1)) as f64 / first_to_last.as_secs_f64();
    println!(
        "| raw StreamConsumer→FutureProducer | {tasks} | – | {n} | – | {:.2} | {:.2} | {raw_rate:.0} | {hwm:.1} |",
        span.as_secs_f64(),
        first_to_last.as_secs_f64()
    );
    println!();
    println!("devcycle/raw ratio: {:.3}", dc_rate / raw_rate);
}

/// Reads `topic` from the beginning until `want` records: (count, min timestamp, max timestamp).
async fn read_timestamps(s: &Settings, topic: &str, want: usize) -> (usize, i64, i64) {
    let c: StreamConsumer = devcycle::kafka::client_config(&s.kafka, "bench-reader")
        .set("group.id", format!("{}reader-{}", s.kafka.namespace, Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let (mut n, mut lo, mut hi) = (0usize, i64::MAX, i64::MIN);
    while n < want {
        match tokio::time::timeout(Duration::from_secs(15), c.recv()).await {
            Ok(Ok(m)) => {
                let ts = m.timestamp().to_millis().unwrap_or(0);
                lo = lo.min(ts);
                hi = hi.max(ts);
                n += 1;
            }
            _ => break,
        }
    }
    (n, lo, hi)
}

/// Consumes `want` records from `input` and produces each payload to `output` (acks=all),
/// at most 256 in flight. Returns (records, start→done, first consumed→last acked).
async fn raw_loop(
    s: &Settings,
    input: &str,
    output: &str,
    want: usize,
    timeout_secs: u64,
) -> (usize, Duration, Duration) {
    let c: StreamConsumer = devcycle::kafka::client_config(&s.kafka, "bench-raw-consumer")
        .set("group.id", format!("{}raw-loop", s.kafka.namespace))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true")
        .create()
        .unwrap();
    c.subscribe(&[input]).unwrap();
    let p = raw_producer(s);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(timeout_secs);
    let mut first: Option<Instant> = None;
    let mut pending = FuturesUnordered::new();
    let (mut consumed, mut acked) = (0usize, 0usize);
    while acked < want && Instant::now() < deadline {
        if consumed < want && pending.len() < 256 {
            let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(15), c.recv()).await else { break };
            first.get_or_insert_with(Instant::now);
            consumed += 1;
            let key = m.key().map(|k| k.to_vec()).unwrap_or_default();
            let value = m.payload().map(|v| v.to_vec()).unwrap_or_default();
            let p = p.clone();
            let out = output.to_string();
            pending.push(async move {
                let rec = FutureRecord::to(&out).key(key.as_slice()).payload(value.as_slice());
                p.send(rec, Duration::from_secs(30)).await.map(|_| ()).map_err(|(e, _)| e)
            });
        } else if let Some(r) = pending.next().await {
            r.expect("raw loop send");
            acked += 1;
        }
    }
    let first = first.unwrap_or(started);
    (acked, started.elapsed(), first.elapsed())
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Ingress { secs, conns } => ingress(secs, conns).await,
        Cmd::Pipeline { tasks, timeout_secs } => pipeline(tasks, timeout_secs).await,
    }
    let (hwm, rss) = rss_mib();
    println!("# process at exit: VmHWM {hwm:.1} MiB (since last reset), VmRSS {rss:.1} MiB");
}
