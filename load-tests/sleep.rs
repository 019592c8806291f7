//! `sleep`: pre-loaded sleep-agent tasks through one agent-executor; how many execute at
//! once, how long all take, and the process's peak RSS (with `--process BIN`, the processor runs
//! as a process of its own and the RSS is its own; the in-flight gauge is then not read, and the
//! executions' overlap by their results' times is the measure).

use crate::common::*;
use crate::separate::Separate;
use devcycle::app::{self, Mode};
use devcycle::domain::{TaskRequest, TaskStatus};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub async fn run(tasks: usize, ms: u64, timeout_secs: u64, process: Option<std::path::PathBuf>) {
    let peak_resettable = reset_peak_rss();
    let deps = connect(bench_settings()).await;
    let req_topic = deps.catalog.topic_name(REQUESTS);
    let res_topic = deps.catalog.topic_name(RESULTS);
    let spec = deps.catalog.processor("agent-executor").expect("agent-executor declared").clone();
    let reqs: Vec<TaskRequest> = (0..tasks)
        .map(|_| {
            let mut r = TaskRequest::new("sleep", serde_json::json!({"ms": ms}));
            r.request_id = Some(format!("req_{}", Uuid::new_v4().simple()));
            r
        })
        .collect();
    let payloads = encode_all(&deps, &req_topic, &reqs).await;
    let producer = raw_producer(&deps.settings);
    let preload_rate = preload(&producer, &req_topic, &payloads).await;
    drop(payloads);
    let collector = Collector::start(&deps.settings, &res_topic, true).await;
    println!(
        "# sleep: {tasks} tasks {{\"agent\":\"sleep\",\"input\":{{\"ms\":{ms}}}}} pre-loaded in {req_topic} ({preload_rate:.0} rec/s); agent-executor concurrency {}, max_buffered {}; peak RSS resettable: {peak_resettable}",
        spec.concurrency, spec.max_buffered
    );

    reset_peak_rss();
    let (in_flight, _, _) = devcycle::events::processor_gauges("agent-executor");
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let (handle, separate) = match &process {
        None => {
            let mode = Mode::Process("agent-executor".into());
            (Some(tokio::spawn(app::run_with(deps.clone(), mode, shutdown.clone(), None))), None)
        }
        Some(bin) => {
            let log = root().join("target").join(format!("loadgen-sleep-{}.log", std::process::id()));
            let sep = Separate::processor(bin, "agent-executor", &deps.settings, &log);
            println!(
                "# agent-executor: `{} process agent-executor` (pid {}, log {})",
                bin.display(),
                sep.pid(),
                log.display()
            );
            (None, Some(sep))
        }
    };
    let pid = separate.as_ref().map(Separate::pid);
    let deadline = started + Duration::from_secs(timeout_secs);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let (mut peak, mut peak_at, mut peak_rss) = (0i64, Duration::ZERO, 0f64);
    let mut per_second: Vec<i64> = Vec::new();
    let mut first_result: Option<Duration> = None;
    let mut samples = 0u64;
    while Instant::now() < deadline {
        tick.tick().await;
        samples += 1;
        let now = in_flight.get();
        if now > peak {
            (peak, peak_at) = (now, started.elapsed());
        }
        let second = started.elapsed().as_secs() as usize;
        if per_second.len() <= second {
            per_second.resize(second + 1, 0);
        }
        per_second[second] = per_second[second].max(now);
        peak_rss = peak_rss.max(rss_mib_of(pid).1);
        let done = collector.distinct();
        if done > 0 && first_result.is_none() {
            first_result = Some(started.elapsed());
        }
        if done >= tasks {
            break;
        }
    }
    let all_done = started.elapsed();
    let (hwm, _) = rss_mib_of(pid);
    shutdown.cancel();
    if let Some(handle) = handle {
        let _ = tokio::time::timeout(Duration::from_secs(60), handle).await;
    }
    drop(separate);
    let seen = collector.stop().await;

    // Overlap of [started_at, finished_at] over the results: the most executions at one instant
    // by the processor's (Postgres's) clock.
    let mut edges: Vec<(i64, i32)> = Vec::new();
    let mut succeeded = 0usize;
    for s in seen.values() {
        let Ok(r) = deps.codec.decode_result(s.payload.as_deref()).await else { continue };
        if r.status == TaskStatus::Succeeded {
            succeeded += 1;
        }
        if let Some(st) = r.started_at {
            edges.push((st.timestamp_micros(), 1));
            edges.push((r.finished_at.timestamp_micros(), -1));
        }
    }
    edges.sort();
    let (mut cur, mut overlap) = (0i32, 0i32);
    for (_, d) in edges {
        cur += d;
        overlap = overlap.max(cur);
    }
    let waves = tasks.div_ceil(spec.concurrency.max(1));
    let ideal = waves as f64 * ms as f64 / 1000.0;
    if pid.is_none() {
        println!("# tasks_in_flight per second (max of 100 ms samples): {per_second:?}");
    }
    // The gauge is read in this process only.
    let (peak_cell, peak_at_cell) = match pid {
        None => (peak.to_string(), format!("{:.1}", peak_at.as_secs_f64())),
        Some(_) => ("–".to_string(), "–".to_string()),
    };
    let ideal_col = format!("ideal s ({waves} waves)");
    let cols = ["tasks", "sleep ms", "concurrency", "peak in flight (gauge, 100 ms samples)", "peak at s"];
    let more = ["peak overlapping executions (results' started_at..finished_at)", "results", "succeeded"];
    let last = ["first result s", "all results s", &ideal_col, "peak RSS MiB (VmHWM)", "max sampled RSS MiB"];
    table(&[&cols[..], &more, &last].concat(), "rrrrrrrrrrrrr");
    println!(
        "| {tasks} | {ms} | {} | {peak_cell} | {peak_at_cell} | {overlap} | {} | {succeeded} | {:.2} | {:.2} | {ideal:.1} | {hwm:.1} | {peak_rss:.1} |",
        spec.concurrency,
        seen.len(),
        first_result.map(|d| d.as_secs_f64()).unwrap_or(f64::NAN),
        all_done.as_secs_f64(),
    );
    println!();
    // In a process of its own the gauge is that process's: the overlap of the results counts.
    let (concurrent, by, whose) = match pid {
        None => (peak, "the in-flight gauge", "the whole bench process: processor + results reader"),
        Some(_) => (overlap as i64, "the results' overlap", "the processor's own process"),
    };
    println!(
        "targets: peak concurrent executions ≥ 1000 (by {by}): {}; processor RSS < 256 MiB: {} (the RSS is {whose}); {samples} samples",
        if concurrent >= 1000 { "met" } else { "**not met**" },
        if hwm < 256.0 { "met" } else { "**not met**" }
    );
    cleanup(&deps.settings, &deps.catalog, &deps.pool).await;
}
