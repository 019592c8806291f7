//! `ingress`: POST /v1/tasks (or, with `--batch N`, POST /v1/topics/{topic}/records with N
//! records per request) on an in-process ingress, against a bare hyper server and a raw
//! librdkafka producer.

use crate::common::*;
use crate::separate::Separate;
use devcycle::app::{self, Deps, Mode};
use devcycle::domain::TaskRequest;
use futures::future::join_all;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const BARE_BODY: &str =
    r#"{"data":{"task_id":"00000000-0000-0000-0000-000000000000","agent":"echo","status":"queued"}}"#;

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

/// `conc` senders for `secs`, each sending its own `batches[i]` (key, Avro bytes) records
/// together and awaiting all their acks before the next round (closed loop, like one HTTP
/// connection posting a batch). `keyed`: each record under its key; else without a key (as the
/// ingress produces a submission that has none). Returns (acked, failed, records/s).
async fn drive_producer(
    p: &FutureProducer,
    topic: &str,
    batches: &[Arc<Records>],
    conc: usize,
    secs: u64,
    keyed: bool,
) -> (u64, u64, f64) {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let mut workers = tokio::task::JoinSet::new();
    for i in 0..conc {
        let (p, topic, batch) = (p.clone(), topic.to_string(), batches[i % batches.len()].clone());
        workers.spawn(async move {
            let (mut ok, mut errors) = (0u64, 0u64);
            while Instant::now() < deadline {
                let sends = batch.iter().map(|(key, value)| {
                    let rec = FutureRecord::to(&topic).payload(value.as_slice());
                    p.send(if keyed { rec.key(key.as_bytes()) } else { rec }, Duration::from_secs(10))
                });
                for r in join_all(sends).await {
                    match r {
                        Ok(_) => ok += 1,
                        Err(_) => errors += 1,
                    }
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

/// The notes on runs with failed requests, one line each.
fn print_errors(notes: Vec<String>) {
    for n in notes {
        println!("# errors (status×count, 0 = broken exchange): {n}");
    }
}

/// The gateway's JSON for a TaskRequest (the Avro schema's fields; `input` is JSON text).
fn gateway_record(r: &TaskRequest) -> serde_json::Value {
    serde_json::json!({
        "key": r.task_id.to_string(),
        "value": {
            "task_id": r.task_id.to_string(),
            "agent": r.agent,
            "input": r.input.to_string(),
            "priority": r.priority,
            "submitted_at": r.submitted_at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
            "request_id": r.request_id,
        }
    })
}

/// What `ingress` was asked for.
pub struct Args {
    pub secs: u64,
    pub conns: Vec<usize>,
    pub batch: Option<usize>,
    pub rounds: usize,
    /// The ingress as a process of its own, from this binary.
    pub process: Option<std::path::PathBuf>,
}

pub async fn run(a: Args) {
    let Args { secs, conns, batch, rounds, process } = a;
    let peak_resettable = reset_peak_rss();
    let deps = connect(bench_settings()).await;
    let shutdown = CancellationToken::new();
    // In this process (on the generator's runtime), or as a process of its own.
    let (dc_addr, handle, separate) = match &process {
        None => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let handle = tokio::spawn(app::run_with(deps.clone(), Mode::Ingress, shutdown.clone(), Some(tx)));
            let addr = tokio::time::timeout(Duration::from_secs(30), rx).await.expect("ingress bound").unwrap();
            (addr, Some(handle), None)
        }
        Some(bin) => {
            let log = root().join("target").join(format!("loadgen-ingress-{}.log", std::process::id()));
            let sep = Separate::ingress(bin, &deps.settings, &log).await;
            println!(
                "# devcycle: `{} ingress` as a process of its own (pid {}, log {}); its rows' peak RSS is that process's",
                bin.display(),
                sep.pid(),
                log.display()
            );
            (sep.addr, None, Some(sep))
        }
    };
    let token = bench_token(&deps).await;
    let topic = deps.catalog.topic_name(REQUESTS);
    let producer = raw_producer(&deps.settings);
    let dc_pid = separate.as_ref().map(Separate::pid);
    let b = Bench {
        deps: &deps,
        dc_addr,
        dc_pid,
        token: &token,
        producer: &producer,
        topic: &topic,
        secs,
        conns: &conns,
        rounds,
    };
    match batch {
        None => single(&b, peak_resettable, shutdown.clone()).await,
        Some(n) => batched(&b, n, peak_resettable).await,
    }
    drop(separate);
    shutdown.cancel();
    if let Some(handle) = handle {
        let _ = tokio::time::timeout(Duration::from_secs(30), handle).await;
    }
    cleanup(&deps.settings, &deps.catalog, &deps.pool).await;
}

/// What both kinds of run share: the ingress under test, its token, the raw producer, the
/// requests topic, the seconds per run, the connection counts and the rounds of each.
struct Bench<'a> {
    deps: &'a Deps,
    dc_addr: SocketAddr,
    /// The ingress's process when it runs as one of its own (its rows' RSS is read there).
    dc_pid: Option<u32>,
    token: &'a str,
    producer: &'a FutureProducer,
    topic: &'a str,
    secs: u64,
    conns: &'a [usize],
    rounds: usize,
}

/// What a row adds to its connection count with several rounds: which round it is.
fn round_tag(round: usize, rounds: usize) -> String {
    if rounds > 1 {
        format!(" (round {round}/{rounds})")
    } else {
        String::new()
    }
}

/// The median of `v` (the mean of the middle two for an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// With several rounds: per connection count, each round's ratio and their median.
fn print_medians(label: &str, target: &str, ratios: &[(usize, f64)], conns: &[usize], rounds: usize) {
    if rounds < 2 {
        return;
    }
    table(&["conns", "rounds", &format!("{label} per round"), &format!("median {label} ({target})")], "rrlr");
    for &c in conns {
        let of_c: Vec<f64> = ratios.iter().filter(|(k, _)| *k == c).map(|(_, r)| *r).collect();
        let each: Vec<String> = of_c.iter().map(|r| format!("{r:.3}")).collect();
        println!("| {c} | {} | {} | {:.3} |", of_c.len(), each.join(", "), median(of_c));
    }
}

async fn single(b: &Bench<'_>, peak_resettable: bool, shutdown: CancellationToken) {
    let Bench { deps, dc_addr, dc_pid, token, producer, topic, secs, conns, rounds } = *b;
    let bare_addr = spawn_bare(shutdown).await;
    let payload = encode_all(deps, topic, &[echo_request()]).await.remove(0).1;
    let dc_req = [http_request(dc_addr, "POST", "/v1/tasks", Some(token), SUBMIT_BODY)];
    let bare_req = [http_request(bare_addr, "POST", "/v1/tasks", Some(token), SUBMIT_BODY)];
    // The raw producer sends the same bytes without a key, as the ingress does.
    let raw = vec![Arc::new(vec![(String::new(), payload.clone())])];
    println!("# ingress: devcycle {dc_addr}, bare hyper {bare_addr}, topic {topic}, {secs} s per run");
    println!("# Avro TaskRequest payload: {} bytes; peak RSS resettable: {peak_resettable}", payload.len());

    // Warm up every path (connections, schema cache, agent cache, producer metadata).
    let _ = drive_http(dc_addr, &dc_req, 4, 1.0, false, None).await;
    let _ = drive_http(bare_addr, &bare_req, 4, 1.0, false, None).await;
    let _ = drive_producer(producer, topic, &raw, 4, 1, false).await;

    table(&[&["target", "conns", "requests", "errors", "req/s"][..], &LAT, &[RSS]].concat(), "lrrrrrrrrrr");
    let mut summary = Vec::new();
    let mut error_notes = Vec::new();
    for (c, round) in conns.iter().flat_map(|&c| (1..=rounds).map(move |r| (c, r))) {
        let tag = round_tag(round, rounds);
        let cell = format!("{c}{tag}");
        let mut row = Vec::new();
        for (name, addr, req, pid) in
            [("devcycle", dc_addr, &dc_req, dc_pid), ("bare-hyper", bare_addr, &bare_req, None)]
        {
            reset_peak_rss_of(pid);
            let r = drive_http(addr, req, c, secs as f64, false, None).await;
            let (hwm, _) = rss_mib_of(pid);
            println!(
                "| {name} | {cell} | {} | {} | {:.0} | {} | {hwm:.1} |",
                r.requests,
                r.errors,
                r.rps(),
                latency_cells(&r.hist)
            );
            if r.errors > 0 {
                error_notes.push(format!("{name} at {cell} conns:{}", r.errors_text()));
            }
            row.push(r.rps());
        }
        reset_peak_rss();
        let (ok, errors, rate) = drive_producer(producer, topic, &raw, c, secs, false).await;
        let (hwm, _) = rss_mib();
        println!("| raw-producer (acks=all) | {c} in flight{tag} | {ok} | {errors} | {rate:.0} | | | | | | {hwm:.1} |");
        summary.push((c, cell, row[0], row[1], rate));
    }
    print_errors(error_notes);
    let cols = ["conns", "devcycle req/s", "bare req/s", "devcycle/bare (target ≥ 0.5 at 64)", "raw producer rec/s"];
    table(&[&cols[..], &["devcycle/raw producer"]].concat(), "rrrrrr");
    for (_, cell, dc, bare, raw) in &summary {
        println!("| {cell} | {dc:.0} | {bare:.0} | {:.3} | {raw:.0} | {:.3} |", dc / bare, dc / raw);
    }
    let ratios: Vec<(usize, f64)> = summary.iter().map(|(c, _, dc, bare, _)| (*c, dc / bare)).collect();
    print_medians("devcycle/bare", "target ≥ 0.5 at 64", &ratios, conns, rounds);
}

async fn batched(b: &Bench<'_>, n: usize, peak_resettable: bool) {
    let Bench { deps, dc_addr, dc_pid, token, producer, topic, secs, conns, rounds } = *b;
    // One batch of `n` distinct echo TaskRequests per connection, reused for every request of
    // that connection; the raw producer's sender i sends the same records' Avro bytes.
    let max_c = conns.iter().copied().max().unwrap_or(1);
    let mut bodies = Vec::with_capacity(max_c);
    let mut raw = Vec::with_capacity(max_c);
    let path = format!("/v1/topics/{REQUESTS}/records");
    for _ in 0..max_c {
        let reqs: Vec<TaskRequest> = (0..n).map(|_| echo_request()).collect();
        let body = serde_json::json!({"records": reqs.iter().map(gateway_record).collect::<Vec<_>>()}).to_string();
        bodies.push(http_request(dc_addr, "POST", &path, Some(token), &body));
        raw.push(Arc::new(encode_all(deps, topic, &reqs).await));
    }
    let body_len = bodies[0].len();
    let avro_len = raw[0][0].1.len();
    println!("# ingress --batch {n}: devcycle {dc_addr} POST {path}, topic {topic}, {secs} s per run");
    println!(
        "# request ≈ {body_len} bytes ({n} records); Avro TaskRequest ≈ {avro_len} bytes; peak RSS resettable: {peak_resettable}"
    );

    let _ = drive_http(dc_addr, &bodies, 4, 1.0, false, None).await;
    let _ = drive_producer(producer, topic, &raw, 4, 1, true).await;

    let cols = ["target", "conns", "requests", "records", "errors", "records/s"];
    table(&[&cols[..], &LAT, &[RSS]].concat(), "lrrrrrrrrrrr");
    let mut summary = Vec::new();
    let mut error_notes = Vec::new();
    for (c, round) in conns.iter().flat_map(|&c| (1..=rounds).map(move |r| (c, r))) {
        let tag = round_tag(round, rounds);
        let cell = format!("{c}{tag}");
        reset_peak_rss_of(dc_pid);
        let r = drive_http(dc_addr, &bodies, c, secs as f64, false, None).await;
        let (hwm, _) = rss_mib_of(dc_pid);
        let records = r.requests * n as u64;
        let dc_rate = records as f64 / r.elapsed.as_secs_f64();
        println!(
            "| devcycle gateway | {cell} | {} | {records} | {} | {dc_rate:.0} | {} | {hwm:.1} |",
            r.requests,
            r.errors,
            latency_cells(&r.hist)
        );
        if r.errors > 0 {
            error_notes.push(format!("devcycle at {cell} conns:{}", r.errors_text()));
        }
        reset_peak_rss();
        let (ok, errors, rate) = drive_producer(producer, topic, &raw, c, secs, true).await;
        let (hwm, _) = rss_mib();
        println!(
            "| raw-producer (acks=all) | {c}×{n} in flight{tag} | {} | {ok} | {errors} | {rate:.0} | | | | | | {hwm:.1} |",
            ok / n as u64
        );
        summary.push((c, cell, dc_rate, rate));
    }
    print_errors(error_notes);
    table(&["conns", "devcycle records/s", "raw producer records/s", "devcycle/raw (target ≥ 0.7)"], "rrrr");
    for (_, cell, dc, raw) in &summary {
        println!("| {cell} | {dc:.0} | {raw:.0} | {:.3} |", dc / raw);
    }
    let ratios: Vec<(usize, f64)> = summary.iter().map(|(c, _, dc, raw)| (*c, dc / raw)).collect();
    print_medians("devcycle/raw", "target ≥ 0.7", &ratios, conns, rounds);
}
