//! `e2e`: DevCycle in `Mode::All` (ingress + agent-executor in one process, on a runtime of its
//! own: see `server_runtime`). A short closed-loop probe finds the saturated rate (submissions
//! answered and results seen), then an open-loop load at a fraction of it measures submission,
//! end-to-end and /health latency. /health is sampled like a kubelet would (a client of its own,
//! here a thread with its own runtime) on the probe port (`metrics.port`) and, for comparison,
//! on the API port.

use crate::common::*;
use devcycle::app::{self, Mode};
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::time::Instant as TokioInstant;
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

/// What one open-loop connection measured.
#[derive(Default)]
struct OpenLoop {
    ok: u64,
    errors: BTreeMap<u16, u64>,
    /// Scheduled start → response read (coordinated omission corrected).
    from_schedule: Option<Histogram<u64>>,
    /// Actual send → response read (service time).
    from_send: Option<Histogram<u64>>,
    /// Actual send − scheduled start (how late the generator was).
    lag: Option<Histogram<u64>>,
    /// (task id, scheduled start, actual send, wall clock ms at the 202) of each accepted
    /// submission.
    ids: Vec<(String, Instant, Instant, i64)>,
}

impl OpenLoop {
    fn new() -> Self {
        OpenLoop { from_schedule: Some(hist()), from_send: Some(hist()), lag: Some(hist()), ..Default::default() }
    }
    fn merge(&mut self, o: OpenLoop) {
        self.ok += o.ok;
        for (s, n) in o.errors {
            *self.errors.entry(s).or_default() += n;
        }
        for (mine, theirs) in
            [(&mut self.from_schedule, o.from_schedule), (&mut self.from_send, o.from_send), (&mut self.lag, o.lag)]
        {
            if let (Some(m), Some(t)) = (mine.as_mut(), theirs) {
                m.add(&t).unwrap();
            }
        }
        self.ids.extend(o.ids);
    }
}

/// One connection of the open-loop generator: requests at `start + offset + k·interval` until
/// `end`. A request that cannot be sent on time (the previous one is still out, or the runtime
/// is busy) is sent as soon as possible and its latency counts from its scheduled time.
async fn open_conn(
    addr: SocketAddr,
    request: Arc<Vec<u8>>,
    start: Instant,
    offset: Duration,
    interval: Duration,
    end: Instant,
    want_ids: bool,
) -> OpenLoop {
    let mut out = OpenLoop::new();
    let mut conn = Conn::open(addr).await.expect("connect");
    let mut k: u32 = 0;
    loop {
        let scheduled = start + offset + interval * k;
        if scheduled >= end {
            break;
        }
        k += 1;
        tokio::time::sleep_until(TokioInstant::from_std(scheduled)).await;
        let sent = Instant::now();
        let r = conn.exchange(&request, want_ids, Duration::from_secs(30)).await;
        let done = Instant::now();
        let done_ms = now_ms();
        match r {
            Ok((status, body)) if is_ok(status) => {
                out.ok += 1;
                record(out.from_schedule.as_mut().unwrap(), done - scheduled);
                record(out.from_send.as_mut().unwrap(), done - sent);
                record(out.lag.as_mut().unwrap(), sent.saturating_duration_since(scheduled));
                if let Some(id) = body.as_deref().and_then(task_id_of) {
                    out.ids.push((id, scheduled, sent, done_ms));
                }
            }
            Ok((status, _)) => *out.errors.entry(status).or_default() += 1,
            Err(_) => *out.errors.entry(0).or_default() += 1,
        }
    }
    out
}

/// `rate` requests/s in total over `conns` connections, evenly staggered, for `secs`.
async fn open_loop(
    addr: SocketAddr,
    request: Arc<Vec<u8>>,
    rate: f64,
    conns: usize,
    secs: u64,
    want_ids: bool,
) -> OpenLoop {
    let start = Instant::now() + Duration::from_millis(50);
    let end = start + Duration::from_secs(secs);
    let interval = Duration::from_secs_f64(conns as f64 / rate);
    let mut set = tokio::task::JoinSet::new();
    for c in 0..conns {
        let offset = Duration::from_secs_f64(c as f64 / rate);
        set.spawn(open_conn(addr, request.clone(), start, offset, interval, end, want_ids));
    }
    let mut all = OpenLoop::new();
    while let Some(r) = set.join_next().await {
        all.merge(r.expect("open-loop connection"));
    }
    all
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

pub async fn run(a: Args) {
    let peak_resettable = reset_peak_rss();
    let mut settings = bench_settings();
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    settings.metrics.port = free.local_addr().expect("bound").port();
    drop(free);
    let probe_addr: SocketAddr = ([127, 0, 0, 1], settings.metrics.port).into();
    // The ingress and processor (and their pools and clients) live on the server runtime.
    let server = (!a.shared_runtime).then(server_runtime);
    let on_server = server.as_ref().map_or_else(tokio::runtime::Handle::current, |rt| rt.handle().clone());
    let deps = on_server.spawn(connect(settings)).await.expect("connect");
    let shutdown = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let handle = on_server.spawn(app::run_with(deps.clone(), Mode::All, shutdown.clone(), Some(tx)));
    let addr = tokio::time::timeout(Duration::from_secs(30), rx).await.expect("ingress bound").unwrap();
    let token = bench_token(&deps).await;
    let res_topic = deps.catalog.topic_name(RESULTS);
    let collector = Collector::start(&deps.settings, &res_topic, false).await;
    let submit = http_request(addr, "POST", "/v1/tasks", Some(&token), SUBMIT_BODY);
    let health = http_request(addr, "GET", "/health", None, "");
    let wait = Duration::from_secs(a.timeout_secs);
    let runtime = if a.shared_runtime { "the generator's runtime (--shared-runtime)" } else { "a runtime of its own" };
    println!("# e2e: devcycle Mode::All on {addr} (ingress + agent-executor) on {runtime}, results from {res_topic}");

    // Warm-up: a few submissions through to their results (includes the processor's group join).
    let ids: Ids = Default::default();
    let t = Instant::now();
    let warm = drive_http(addr, std::slice::from_ref(&submit), 4, 1.0, true, Some(collect_ids(&ids))).await;
    let mut expected = ids.lock().unwrap().len();
    let got = collector.wait_for(expected, wait).await;
    println!(
        "# warm-up: {} submitted ({} errors{}), {got} results after {:.1} s",
        warm.requests,
        warm.errors,
        warm.errors_text(),
        t.elapsed().as_secs_f64()
    );

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
    let secs = a.secs;
    let sampler = |at: SocketAddr, req: Arc<Vec<u8>>| {
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(open_loop(at, req, 100.0, 1, secs, false))
        })
    };
    let health_probe_task = sampler(probe_addr, http_request(probe_addr, "GET", "/health", None, ""));
    let health_api_task = sampler(addr, health);
    let load = open_loop(addr, submit, rate, a.conns, a.secs, true).await;
    let health = tokio::task::spawn_blocking(move || health_probe_task.join()).await.unwrap().expect("health sampler");
    let health_api =
        tokio::task::spawn_blocking(move || health_api_task.join()).await.unwrap().expect("health sampler (API port)");
    let (hwm, _) = rss_mib();
    let stage_line = Stages::since(&stages);
    let achieved = load.ok as f64 / a.secs as f64;
    expected += load.ids.len();
    let t = Instant::now();
    let got = collector.wait_for(expected, wait).await;
    let drain = t.elapsed();
    shutdown.cancel();
    let seen = collector.stop().await;
    let _ = tokio::time::timeout(Duration::from_secs(60), handle).await;

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
    // Error statuses (0 = broken or timed-out exchange).
    let statuses = |m: &BTreeMap<u16, u64>| m.iter().map(|(s, n)| format!(" {s}×{n}")).collect::<String>();
    println!(
        "# accepted {} ({achieved:.0}/s), submission errors {errors}{}, results missing {missing} (waited {:.1} s after the load; {got}/{expected} results in all); /health errors {health_errors}{}",
        load.ok,
        statuses(&load.errors),
        drain.as_secs_f64(),
        statuses(&health.errors),
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
    on_server.spawn(async move { cleanup(&deps.settings, &deps.catalog, &deps.pool).await }).await.expect("cleanup");
    if let Some(rt) = server {
        drop_runtime(rt).await;
    }
}
