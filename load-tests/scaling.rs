//! `scaling`: N echo tasks through k agent-executor instances (one consumer group) on a
//! requests topic with P partitions, for each k.

use crate::common::*;
use devcycle::app::{self, Deps, Mode};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Copies the topic declarations into `dir`, with the requests topic at `partitions`.
fn topics_with_partitions(dir: &Path, partitions: i32) {
    for entry in std::fs::read_dir(root().join("topics")).expect("topics dir") {
        let p = entry.unwrap().path();
        let text = std::fs::read_to_string(&p).unwrap();
        let name = p.file_name().unwrap();
        let text = if name.to_string_lossy() == format!("{REQUESTS}.toml") {
            text.lines()
                .map(|l| {
                    if l.trim_start().starts_with("partitions") && l.contains('=') {
                        format!("partitions = {partitions}")
                    } else {
                        l.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n")
        } else {
            text
        };
        std::fs::write(dir.join(name), text).unwrap();
    }
}

/// Partitions held by each instance (the runner's health; updated at least every 5 s).
fn assigned(all: &[Arc<Deps>]) -> Vec<usize> {
    all.iter()
        .map(|d| d.runners.lock().unwrap().iter().map(|(_, h)| h.assigned.load(Ordering::Relaxed)).sum())
        .collect()
}

/// The process-wide `devcycle_retries{processor="agent-executor"}` counter (all instances).
fn retries() -> u64 {
    let labels = devcycle::events::ProcessorLabels { processor: "agent-executor".into() };
    devcycle::events::metrics().retries.get_or_create(&labels).get()
}

struct Row {
    k: usize,
    assignment: Vec<usize>,
    results: usize,
    records: u64,
    retried: u64,
    span: f64,
    rate: f64,
    ts_rate: f64,
    hwm: f64,
}

pub async fn run(tasks: usize, processors: Vec<usize>, partitions: i32, timeout_secs: u64) {
    let peak_resettable = reset_peak_rss();
    println!(
        "# scaling: {tasks} echo tasks per run, requests topic with {partitions} partitions, agent-executor instances {processors:?}"
    );
    println!(
        "# each instance: app::run_with(Mode::Process(\"agent-executor\")) in this process with its own Deps (Postgres pool, Redis pool, producer, codec), all in the one consumer group; peak RSS resettable: {peak_resettable}"
    );
    let wait = Duration::from_secs(timeout_secs);
    let mut rows = Vec::new();
    for &k in &processors {
        let dir = tempfile::tempdir().expect("temp dir");
        topics_with_partitions(dir.path(), partitions);
        let mut s = bench_settings();
        s.paths.topics = dir.path().to_path_buf();
        // Connected one after another: the first applies migrations, topics and schemas.
        let mut all = Vec::with_capacity(k);
        for _ in 0..k {
            all.push(connect(s.clone()).await);
        }
        let req_topic = all[0].catalog.topic_name(REQUESTS);
        let res_topic = all[0].catalog.topic_name(RESULTS);
        let reqs: Vec<_> = (0..tasks).map(|_| echo_request()).collect();
        let payloads = encode_all(&all[0], &req_topic, &reqs).await;
        let producer = raw_producer(&s);
        let collector = Collector::start(&s, &res_topic, false).await;

        // Start the group on the empty topic and wait until every instance holds partitions
        // and the assignment has not changed for 6 s, so no rebalance falls in the measurement.
        let shutdown = CancellationToken::new();
        let handles: Vec<_> = all
            .iter()
            .map(|d| {
                tokio::spawn(app::run_with(d.clone(), Mode::Process("agent-executor".into()), shutdown.clone(), None))
            })
            .collect();
        let t = Instant::now();
        let (mut last, mut stable_since) = (Vec::new(), Instant::now());
        loop {
            let now = assigned(&all);
            if now != last {
                (last, stable_since) = (now.clone(), Instant::now());
            }
            let complete = now.iter().all(|n| *n > 0) && now.iter().sum::<usize>() == partitions as usize;
            if complete && stable_since.elapsed() >= Duration::from_secs(6) {
                break;
            }
            if t.elapsed() > wait {
                println!(
                    "# k={k}: assignment not complete/stable after {:.0} s: {now:?}; measuring anyway",
                    wait.as_secs_f64()
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let assignment = assigned(&all);
        println!(
            "# k={k}: group stable after {:.1} s, partitions per instance {assignment:?}",
            t.elapsed().as_secs_f64()
        );

        let retries_before = retries();
        reset_peak_rss();
        let preload_rate = preload(&producer, &req_topic, &payloads).await;
        let results = collector.wait_for(tasks, wait).await;
        let (hwm, _) = rss_mib();
        let retried = retries() - retries_before;
        shutdown.cancel();
        for h in handles {
            let _ = tokio::time::timeout(Duration::from_secs(60), h).await;
        }
        let records = collector.records.load(Ordering::Relaxed);
        let seen = collector.stop().await;
        let first = seen.values().map(|s| s.at).min();
        let last_at = seen.values().map(|s| s.at).max();
        let span = match (first, last_at) {
            (Some(f), Some(l)) => (l - f).as_secs_f64(),
            _ => f64::NAN,
        };
        let rate = (seen.len().saturating_sub(1)) as f64 / span;
        let ts_lo = seen.values().map(|s| s.timestamp_ms).min().unwrap_or(0);
        let ts_hi = seen.values().map(|s| s.timestamp_ms).max().unwrap_or(0);
        let ts_rate = (seen.len().saturating_sub(1)) as f64 / ((ts_hi - ts_lo) as f64 / 1000.0);
        println!(
            "# k={k}: preload {preload_rate:.0} rec/s; {results} distinct results ({records} result records) seen"
        );
        cleanup(&s, &all[0].catalog, &all[0].pool).await;
        rows.push(Row { k, assignment, results, records, retried, span, rate, ts_rate, hwm });
    }
    let base = rows.iter().find(|r| r.k == 1).or(rows.first()).map(|r| r.rate).unwrap_or(f64::NAN);
    let cols = ["processors", "partitions each", "tasks", "results", "result records", "retried attempts"];
    let more = ["first→last result s", "tasks/s (seen)", "tasks/s (record timestamps)", "vs 1 processor"];
    table(&[&cols[..], &more, &["peak RSS MiB (all instances)"]].concat(), "rlrrrrrrrrr");
    for r in rows {
        println!(
            "| {} | {:?} | {tasks} | {} | {} | {} | {:.2} | {:.0} | {:.0} | {:.2} | {:.1} |",
            r.k,
            r.assignment,
            r.results,
            r.records,
            r.retried,
            r.span,
            r.rate,
            r.ts_rate,
            r.rate / base,
            r.hwm
        );
    }
}
