//! `e2e`: DevCycle in `Mode::All` (ingress + agent-executor in one process, on a runtime of its
//! own: see `server_runtime`). A short closed-loop probe finds the saturated rate (submissions
//! answered and results seen), then an open-loop load at a fraction of it measures submission,
//! end-to-end and /health latency. /health is sampled like a kubelet would (a client of its own,
//! here a thread with its own runtime) on the probe port (`metrics.port`) and, for comparison,
//! on the API port.

use crate::common::*;
use crate::separate::Separate;
use devcycle::app::{self, Deps, Mode};
use hdrhistogram::Histogram;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

pub struct Args {
    pub secs: u64,
    pub conns: usize,
    pub probe_secs: u64,
    pub probe_conns: usize,
    pub rate: Option<f64>,
    pub fraction: f64,
    pub timeout_secs: u64,
    pub shared_runtime: bool,
}

type Ids = Arc<Mutex<Vec<(String, Instant)>>>;

fn collect_ids(ids: &Ids) -> OnOk {
    let ids = ids.clone();
    Arc::new(move |t0, body| {
        if let Some(id) = task_id_of(body) {
            ids.lock().unwrap().push((id, t0));
        }
    })
}

fn row(name: &str, h: &Histogram<u64>, errors: u64, target: &str, met: Option<bool>) {
    let met = match met {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "",
    };
    println!(
        "| {name} | {} | {errors} | {} | {} | {} | {} | {} | {target} | {met} |",
        h.len(),
        pct(h, 0.50),
        pct(h, 0.95),
        pct(h, 0.99),
        pct(h, 0.999),
        pct(h, 1.0),
    );
}

/// DevCycle in `Mode::All` on 127.0.0.1 (ingress on port 0, probes on a port of their own), a
/// bench user's token, a reader of its results topic, warmed up with a few submissions through
/// to their results (the processor's group join included).
pub struct AllInOne {
    pub deps: Arc<Deps>,
    pub addr: SocketAddr,
    /// `metrics.port`: where probes and /metrics are served from their own thread.
    pub probe_addr: SocketAddr,
    pub collector: Collector,
    /// One `POST /v1/tasks` of the echo agent, with the token.
    pub submit: Arc<Vec<u8>>,
    /// Results expected so far (the warm-up's).
    pub expected: usize,
    on_server: tokio::runtime::Handle,
    server: Option<tokio::runtime::Runtime>,
    shutdown: CancellationToken,
    /// In this process: the app's task; as a process of its own: the child.
    running: Running,
}

enum Running {
    Here(tokio::task::JoinHandle<()>),
    Separate(Separate),
}

impl AllInOne {
    /// Starts it on a runtime of its own (or the caller's with `shared_runtime`), or with
    /// `process` as `BIN run`, a process of its own; `mode` names the bench in the header line.
    pub async fn start(mode: &str, shared_runtime: bool, process: Option<&Path>, wait: Duration) -> AllInOne {
        let mut settings = bench_settings();
        let free = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        settings.metrics.port = free.local_addr().expect("bound").port();
        drop(free);
        let probe_addr: SocketAddr = ([127, 0, 0, 1], settings.metrics.port).into();
        // The ingress and processor (and their pools and clients) live on the server runtime.
        let server = (!shared_runtime).then(server_runtime);
        let on_server = server.as_ref().map_or_else(tokio::runtime::Handle::current, |rt| rt.handle().clone());
        let deps = on_server.spawn(connect(settings)).await.expect("connect");
        let shutdown = CancellationToken::new();
        let (running, addr) = match process {
            Some(bin) => {
                let log = root().join(format!("target/loadgen-{mode}-{}.log", std::process::id()));
                let sep = Separate::all(bin, &deps.settings, &log, probe_addr.port()).await;
                println!(
                    "# devcycle: `{} run` as a process of its own (pid {}, log {})",
                    bin.display(),
                    sep.pid(),
                    log.display()
                );
                let addr = sep.addr;
                (Running::Separate(sep), addr)
            }
            None => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let handle = {
                    let (deps, shutdown) = (deps.clone(), shutdown.clone());
                    on_server.spawn(async move {
                        let _ = app::run_with(deps, Mode::All, shutdown, Some(tx)).await;
                    })
                };
                let addr = tokio::time::timeout(Duration::from_secs(30), rx).await.expect("ingress bound").unwrap();
                (Running::Here(handle), addr)
            }
        };
        let token = bench_token(&deps).await;
        let res_topic = deps.catalog.topic_name(RESULTS);
        let collector = Collector::start(&deps.settings, &res_topic, false).await;
        let submit = http_request(addr, "POST", "/v1/tasks", Some(&token), SUBMIT_BODY);
        let runtime = match (process, shared_runtime) {
            (Some(_), _) => "a process of its own",
            (None, true) => "the generator's runtime (--shared-runtime)",
            (None, false) => "a runtime of its own",
        };
        println!(
            "# {mode}: devcycle Mode::All on {addr} (ingress + agent-executor) on {runtime}, results from {res_topic}"
        );

        let ids: Ids = Default::default();
        let t = Instant::now();
        let warm = drive_http(addr, std::slice::from_ref(&submit), 4, 1.0, true, Some(collect_ids(&ids))).await;
        let expected = ids.lock().unwrap().len();
        let got = collector.wait_for(expected, wait).await;
        println!(
            "# warm-up: {} submitted ({} errors{}), {got} results after {:.1} s",
            warm.requests,
            warm.errors,
            warm.errors_text(),
            t.elapsed().as_secs_f64()
        );
        AllInOne { deps, addr, probe_addr, collector, submit, expected, on_server, server, shutdown, running }
    }

    /// The pid of DevCycle's own process (`None`: it runs in this one).
    pub fn pid(&self) -> Option<u32> {
        match &self.running {
            Running::Separate(sep) => Some(sep.pid()),
            Running::Here(_) => None,
        }
    }

    /// Stops DevCycle and the reader; returns what the reader saw. Call [`AllInOne::clean_up`]
    /// once done with it.
    pub async fn stop(self) -> (HashMap<String, Seen>, Stopped) {
        self.shutdown.cancel();
        let seen = self.collector.stop().await;
        match self.running {
            Running::Here(handle) => {
                let _ = tokio::time::timeout(Duration::from_secs(60), handle).await;
            }
            // Dropping it stops the child (SIGTERM, then SIGKILL after 10 s).
            Running::Separate(sep) => tokio::task::block_in_place(|| drop(sep)),
        }
        (seen, Stopped { deps: self.deps, on_server: self.on_server, server: self.server })
    }
}

/// A stopped [`AllInOne`], whose test data is still there.
pub struct Stopped {
    deps: Arc<Deps>,
    on_server: tokio::runtime::Handle,
    server: Option<tokio::runtime::Runtime>,
}

impl Stopped {
    /// Deletes the run's topics, schema and keys, and ends the server runtime.
    pub async fn clean_up(self) {
        let deps = self.deps;
        self.on_server
            .spawn(async move { cleanup(&deps.settings, &deps.catalog, &deps.pool).await })
            .await
            .expect("cleanup");
        if let Some(rt) = self.server {
            drop_runtime(rt).await;
        }
    }
}

pub async fn run(a: Args) {
    let peak_resettable = reset_peak_rss();
    let wait = Duration::from_secs(a.timeout_secs);
    let stack = AllInOne::start("e2e", a.shared_runtime, None, wait).await;
    let (addr, probe_addr, submit) = (stack.addr, stack.probe_addr, stack.submit.clone());
    let collector = &stack.collector;
    let health = http_request(addr, "GET", "/health", None, "");
    let mut expected = stack.expected;

    // Probe (skipped with --rate): closed loop at `probe_conns` for `probe_secs`; saturated =
    // min(submissions/s, results/s), results counted from 1 s into the probe to its end.
    let mut saturated = f64::NAN;
    if a.rate.is_none() {
        let probe_ids: Ids = Default::default();
        let t0 = Instant::now();
        let probe = drive_http(
            addr,
            std::slice::from_ref(&submit),
            a.probe_conns,
            a.probe_secs as f64,
            true,
            Some(collect_ids(&probe_ids)),
        )
        .await;
        let t_end = Instant::now();
        let from = t0 + Duration::from_secs(1).min(t_end - t0);
        let in_window =
            collector.seen.lock().unwrap().values().filter(|s| s.at >= from && s.at <= t_end).count() as f64;
        let results_rate = in_window / (t_end - from).as_secs_f64();
        let submit_rate = probe.rps();
        saturated = submit_rate.min(results_rate);
        expected += probe_ids.lock().unwrap().len();
        let t = Instant::now();
        let got = collector.wait_for(expected, wait).await;
        println!(
            "# probe: {} conns closed loop for {} s: {submit_rate:.0} submissions/s (P99 {} ms, {} errors{}), {results_rate:.0} results/s → saturated ≈ {saturated:.0}/s; backlog drained in {:.1} s ({got}/{expected} results)",
            a.probe_conns,
            a.probe_secs,
            pct(&probe.hist, 0.99),
            probe.errors,
            probe.errors_text(),
            t.elapsed().as_secs_f64()
        );
    }

    // Open loop at `fraction` of saturation, with /health sampled on its own connection.
    let rate = a.rate.unwrap_or(saturated * a.fraction).max(1.0);
    println!(
        "# open loop: {rate:.0} submissions/s ({}), {} conns (one request every {:.1} ms each), {} s; GET /health every 10 ms on the probe port {probe_addr} and on the API port, each from a thread of its own",
        if a.rate.is_some() { "--rate".to_string() } else { format!("{} × saturated", a.fraction) },
        a.conns,
        a.conns as f64 / rate * 1000.0,
        a.secs
    );
    reset_peak_rss();
    let stages = Stages::take();
    let health_probe_task = sampler(probe_addr, http_request(probe_addr, "GET", "/health", None, ""), a.secs);
    let health_api_task = sampler(addr, health, a.secs);
    let load = open_loop(addr, submit, rate, a.conns, a.secs, true).await;
    let health = join_sampler(health_probe_task).await;
    let health_api = join_sampler(health_api_task).await;
    let (hwm, _) = rss_mib();
    let stage_line = Stages::since(&stages);
    let achieved = load.ok as f64 / a.secs as f64;
    expected += load.ids.len();
    let t = Instant::now();
    let got = collector.wait_for(expected, wait).await;
    let drain = t.elapsed();
    let (seen, stopped) = stack.stop().await;

    let (mut e2e, mut e2e_send, mut processing, mut reader) = (hist(), hist(), hist(), hist());
    let mut missing = 0u64;
    let ms = |d: i64| Duration::from_millis(d.max(0) as u64);
    for (id, scheduled, sent, answered_ms) in &load.ids {
        match seen.get(id) {
            Some(s) => {
                record(&mut e2e, s.at.saturating_duration_since(*scheduled));
                record(&mut e2e_send, s.at.saturating_duration_since(*sent));
                record(&mut processing, ms(s.timestamp_ms - answered_ms));
                record(&mut reader, ms(s.at_ms - s.timestamp_ms));
            }
            None => missing += 1,
        }
    }
    let errors: u64 = load.errors.values().sum();
    let health_errors: u64 = health.errors.values().sum();
    let health_api_errors: u64 = health_api.errors.values().sum();
    println!(
        "# accepted {} ({achieved:.0}/s), submission errors {errors}{}, results missing {missing} (waited {:.1} s after the load; {got}/{expected} results in all); /health errors {health_errors}{}",
        load.ok,
        statuses_text(&load.errors),
        drain.as_secs_f64(),
        statuses_text(&health.errors),
    );
    println!("# peak RSS of the whole process (ingress + processor + generator + clients) during the open loop: {hwm:.1} MiB (resettable: {peak_resettable})");
    table(&[&["metric", "samples", "errors"][..], &LAT, &["target", "met"]].concat(), "lrrrrrrrll");
    let sub = load.from_schedule.as_ref().unwrap();
    let hl = health.from_schedule.as_ref().unwrap();
    row(
        "submission POST /v1/tasks → 202 (from scheduled start)",
        sub,
        errors,
        "P99 < 100 ms",
        Some(!sub.is_empty() && pct_ms(sub, 0.99) < 100.0),
    );
    row("submission (from actual send)", load.from_send.as_ref().unwrap(), errors, "", None);
    row(
        "end to end: submit start → TaskResult seen (from scheduled start)",
        &e2e,
        missing,
        "P99 < 100 ms",
        Some(!e2e.is_empty() && missing == 0 && pct_ms(&e2e, 0.99) < 100.0),
    );
    row("end to end (from actual send)", &e2e_send, missing, "", None);
    row("  of which: 202 answered → TaskResult produced (record timestamp, ms)", &processing, missing, "", None);
    row("  of which: TaskResult produced → seen by the reader (ms)", &reader, missing, "", None);
    row(
        "GET /health every 10 ms on the probe port (from scheduled start)",
        hl,
        health_errors,
        "P99 < 10 ms",
        Some(!hl.is_empty() && health_errors == 0 && pct_ms(hl, 0.99) < 10.0),
    );
    row(
        "  the same on the API port (for comparison)",
        health_api.from_schedule.as_ref().unwrap(),
        health_api_errors,
        "",
        None,
    );
    row("generator lateness (send − scheduled), submissions", load.lag.as_ref().unwrap(), 0, "", None);
    println!("{stage_line} (open loop only)");
    stopped.clean_up().await;
}
