//! `spike`: the spec's spike test ("5x normal load for 10 minutes") on DevCycle in `Mode::All`
//! (see [`crate::e2e::AllInOne`]): an open-loop load at the normal rate, then `factor` times it,
//! then the normal rate again. Per phase: submissions accepted and refused, submission and end
//! to end (submit → TaskResult) latency from each request's scheduled start, results missing,
//! /health on the probe port, and the peak RSS (of DevCycle's own process with `--process BIN`,
//! which runs `BIN run`; of the whole bench process otherwise). The normal rate
//! defaults to the spec's throughput floor for message processing (10,000 messages/minute).

use crate::common::*;
use crate::e2e::AllInOne;
use std::time::Duration;

pub struct Args {
    pub rate: f64,
    pub factor: f64,
    pub base_secs: u64,
    pub spike_secs: u64,
    pub conns: usize,
    pub timeout_secs: u64,
    pub process: Option<std::path::PathBuf>,
}

struct Phase {
    name: &'static str,
    rate: f64,
    secs: u64,
    load: OpenLoop,
    health: OpenLoop,
    peak_rss: f64,
}

pub async fn run(a: Args) {
    let peak_resettable = reset_peak_rss();
    let wait = Duration::from_secs(a.timeout_secs);
    let stack = AllInOne::start("spike", false, a.process.as_deref(), wait).await;
    let pid = stack.pid();
    let plan = [
        ("normal", a.rate, a.base_secs),
        ("spike", a.rate * a.factor, a.spike_secs),
        ("normal again", a.rate, a.base_secs),
    ];
    println!(
        "# phases: {}; {} conns; GET /health every 10 ms on the probe port {} from a thread of its own",
        plan.iter().map(|(n, r, s)| format!("{n} {r:.0}/s for {s} s")).collect::<Vec<_>>().join(", then "),
        a.conns,
        stack.probe_addr
    );
    let health_request = http_request(stack.probe_addr, "GET", "/health", None, "");
    let mut phases = Vec::new();
    for (name, rate, secs) in plan {
        reset_peak_rss_of(pid);
        let probe = sampler(stack.probe_addr, health_request.clone(), secs);
        let load = open_loop(stack.addr, stack.submit.clone(), rate, a.conns, secs, true).await;
        let health = join_sampler(probe).await;
        let (peak_rss, _) = rss_mib_of(pid);
        phases.push(Phase { name, rate, secs, load, health, peak_rss });
    }
    let expected = stack.expected + phases.iter().map(|p| p.load.ids.len()).sum::<usize>();
    let t = std::time::Instant::now();
    let got = stack.collector.wait_for(expected, wait).await;
    println!(
        "# after the load: {got}/{expected} results within {:.1} s; peak RSS (resettable: {peak_resettable}) of {}",
        t.elapsed().as_secs_f64(),
        if pid.is_some() {
            "DevCycle's own process"
        } else {
            "the whole bench process, which also holds the generator's ids and the results seen"
        }
    );
    let (seen, stopped) = stack.stop().await;

    table(
        &[
            "phase",
            "offered/s",
            "s",
            "accepted/s",
            "refused",
            "submission P50 / P99 / max ms",
            "end to end P50 / P99 / max ms",
            "results missing",
            "/health P99 ms",
            "peak RSS MiB",
            "P99s under 100 ms (health 10), nothing refused or missing",
        ],
        "lrrrrrrrrrl",
    );
    let mut all_met = true;
    for p in &phases {
        let mut e2e = hist();
        let mut missing = 0u64;
        for (id, scheduled, _, _) in &p.load.ids {
            match seen.get(id) {
                Some(s) => record(&mut e2e, s.at.saturating_duration_since(*scheduled)),
                None => missing += 1,
            }
        }
        let refused: u64 = p.load.errors.values().sum();
        let health_errors: u64 = p.health.errors.values().sum();
        let sub = p.load.from_schedule.as_ref().unwrap();
        let hl = p.health.from_schedule.as_ref().unwrap();
        let met = refused == 0
            && missing == 0
            && health_errors == 0
            && !sub.is_empty()
            && !e2e.is_empty()
            && pct_ms(sub, 0.99) < 100.0
            && pct_ms(&e2e, 0.99) < 100.0
            && pct_ms(hl, 0.99) < 10.0;
        all_met &= met;
        let three = |h: &hdrhistogram::Histogram<u64>| format!("{} / {} / {}", pct(h, 0.5), pct(h, 0.99), pct(h, 1.0));
        println!(
            "| {} | {:.0} | {} | {:.0} | {refused}{} | {} | {} | {missing} | {}{} | {:.1} | {} |",
            p.name,
            p.rate,
            p.secs,
            p.load.ok as f64 / p.secs as f64,
            statuses_text(&p.load.errors),
            three(sub),
            three(&e2e),
            pct(hl, 0.99),
            if health_errors > 0 { format!(" ({health_errors} errors)") } else { String::new() },
            p.peak_rss,
            if met { "yes" } else { "**no**" }
        );
    }
    println!("\nspike test ({:.0}× for {} s): {}", a.factor, a.spike_secs, if all_met { "met" } else { "**not met**" });
    stopped.clean_up().await;
}
