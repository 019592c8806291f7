//! DevCycle load tests (issue #7), each printing one summary table (markdown):
//!
//! `cargo run --release --example loadgen -- ingress [--secs 10] [--conns 1,16,64] [--batch 100] [--rounds 3] [--process target/release/devcycle]`
//! `cargo run --release --example loadgen -- pipeline [--tasks 20000]`
//! `cargo run --release --example loadgen -- e2e [--secs 20] [--conns 64]`
//! `cargo run --release --example loadgen -- spike [--rate 167] [--factor 5] [--base-secs 60] [--spike-secs 600] [--process target/release/devcycle]`
//! `cargo run --release --example loadgen -- sleep [--tasks 1200] [--ms 3000] [--process target/release/devcycle]`
//! `cargo run --release --example loadgen -- scaling [--tasks 20000] [--processors 1,2,4] [--partitions 8]`
//!
//! Everything runs in this one process against the real services (`scripts/services env`),
//! each run in a fresh Kafka namespace, Postgres schema and Redis prefix, like the tests.
//! See load-tests/README.md for what each number means.

mod common;
mod e2e;
mod ingress;
mod pipeline;
mod scaling;
mod separate;
mod sleep;
mod spike;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "DevCycle load generator (issue #7)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// POST /v1/tasks on an in-process ingress vs a bare hyper server and raw producer sends;
    /// with --batch N, POST /v1/topics/{requests}/records with N records per request vs a raw
    /// producer sending N records at a time per sender.
    Ingress {
        /// Seconds per measured run.
        #[arg(long, default_value_t = 10)]
        secs: u64,
        /// Comma-separated connection (and producer concurrency) counts.
        #[arg(long, default_value = "1,16,64", value_delimiter = ',')]
        conns: Vec<usize>,
        /// Records per request through the gateway route instead of single submissions.
        #[arg(long)]
        batch: Option<usize>,
        /// Measure each connection count this many times, DevCycle and its baselines
        /// alternating, and print the median ratio of the rounds (the baselines drift too).
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        /// Run the ingress under test as a process of its own from this binary (e.g.
        /// target/release/devcycle), so that its rows' peak RSS is its own.
        #[arg(long)]
        process: Option<std::path::PathBuf>,
    },
    /// Pre-loaded echo tasks through one agent-executor vs a raw consume-and-produce loop.
    Pipeline {
        #[arg(long, default_value_t = 20000)]
        tasks: usize,
        /// Give up waiting for results after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
    },
    /// Mode::All: saturation probe, then an open-loop load at a fraction of it: submission,
    /// end-to-end (submit → TaskResult) and /health latency.
    E2e {
        /// Seconds of open-loop load.
        #[arg(long, default_value_t = 20)]
        secs: u64,
        /// Connections of the open-loop generator.
        #[arg(long, default_value_t = 64)]
        conns: usize,
        /// Seconds of the closed-loop saturation probe.
        #[arg(long, default_value_t = 5)]
        probe_secs: u64,
        /// Connections of the saturation probe.
        #[arg(long, default_value_t = 64)]
        probe_conns: usize,
        /// Offered submissions/s (skips the fraction of the probe's rate).
        #[arg(long)]
        rate: Option<f64>,
        /// Offered load as a fraction of the saturated rate.
        #[arg(long, default_value_t = 0.5)]
        fraction: f64,
        /// Give up waiting for results after this many seconds (per phase).
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
        /// Run DevCycle on the generator's runtime (as before 2026-11-26) instead of its own.
        #[arg(long)]
        shared_runtime: bool,
    },
    /// The spec's spike test on Mode::All: the normal rate, `factor` times it for `spike-secs`,
    /// the normal rate again; per phase submission, end-to-end and /health latency.
    Spike {
        /// The normal offered rate (submissions/s); the spec's 10,000 messages/minute.
        #[arg(long, default_value_t = 167.0)]
        rate: f64,
        /// The spike's rate as a multiple of the normal one.
        #[arg(long, default_value_t = 5.0)]
        factor: f64,
        /// Seconds at the normal rate before and after the spike.
        #[arg(long, default_value_t = 60)]
        base_secs: u64,
        /// Seconds of the spike (the spec's 10 minutes).
        #[arg(long, default_value_t = 600)]
        spike_secs: u64,
        /// Connections of the open-loop generator.
        #[arg(long, default_value_t = 64)]
        conns: usize,
        /// Give up waiting for results after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
        /// Run DevCycle as `BIN run`, a process of its own (e.g. target/release/devcycle), so
        /// that the peak RSS is its own.
        #[arg(long)]
        process: Option<std::path::PathBuf>,
    },
    /// Pre-loaded sleep-agent tasks through one agent-executor: peak concurrent executions.
    Sleep {
        #[arg(long, default_value_t = 1200)]
        tasks: usize,
        /// Sleep per task (the sleep agent's input `ms`).
        #[arg(long, default_value_t = 3000)]
        ms: u64,
        #[arg(long, default_value_t = 300)]
        timeout_secs: u64,
        /// Run the processor as a process of its own from this binary (e.g.
        /// target/release/devcycle), so that the peak RSS is its own.
        #[arg(long)]
        process: Option<std::path::PathBuf>,
    },
    /// Echo tasks through 1, 2, 4 … agent-executor instances (one group) on P partitions.
    Scaling {
        #[arg(long, default_value_t = 20000)]
        tasks: usize,
        /// Comma-separated instance counts, one run each.
        #[arg(long, default_value = "1,2,4", value_delimiter = ',')]
        processors: Vec<usize>,
        /// Partitions of the requests topic.
        #[arg(long, default_value_t = 8)]
        partitions: i32,
        /// Give up waiting (group assignment, results) after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout_secs: u64,
    },
}

#[tokio::main]
async fn main() {
    // The service's memory policy, so in-process runs measure the RSS it would have.
    devcycle::memory::apply();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Ingress { secs, conns, batch, rounds, process } => {
            ingress::run(ingress::Args { secs, conns, batch, rounds: rounds.max(1), process }).await
        }
        Cmd::Pipeline { tasks, timeout_secs } => pipeline::run(tasks, timeout_secs).await,
        Cmd::E2e { secs, conns, probe_secs, probe_conns, rate, fraction, timeout_secs, shared_runtime } => {
            let a = e2e::Args { secs, conns, probe_secs, probe_conns, rate, fraction, timeout_secs, shared_runtime };
            e2e::run(a).await
        }
        Cmd::Spike { rate, factor, base_secs, spike_secs, conns, timeout_secs, process } => {
            spike::run(spike::Args { rate, factor, base_secs, spike_secs, conns, timeout_secs, process }).await
        }
        Cmd::Sleep { tasks, ms, timeout_secs, process } => sleep::run(tasks, ms, timeout_secs, process).await,
        Cmd::Scaling { tasks, processors, partitions, timeout_secs } => {
            scaling::run(tasks, processors, partitions, timeout_secs).await
        }
    }
    let (hwm, rss) = common::rss_mib();
    println!("# process at exit: VmHWM {hwm:.1} MiB (since last reset), VmRSS {rss:.1} MiB");
}
