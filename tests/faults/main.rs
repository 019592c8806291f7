//! Fault injection against the real services: nothing lost, nothing done twice.
//!
//! Each scenario pre-loads tasks into a private request topic, runs `devcycle process
//! agent-executor` as child processes, injures the system (SIGKILL, scaling, more partitions,
//! broker restart, Postgres/Redis outages, poison pills), and ends with exact counts:
//! submitted = finished, 0 lost, 0 duplicate effects in Postgres, every task id on the results
//! topic with one single outcome.
//!
//! Sizes: `FAULT_TASKS` (default 600) and `FAULT_KILLS` (default 3); the long run is
//! `scripts/faults-long` (10,000 tasks). Scenarios run one at a time (some restart services).

#[path = "../common/mod.rs"]
mod common;
mod world;

use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};
use uuid::Uuid;
use world::{env_num, World, SERIAL};

fn services(args: &[&str]) {
    let status = Command::new(common::root().join("scripts/services")).args(args).status().expect("scripts/services");
    assert!(status.success(), "scripts/services {args:?} failed");
}

fn tasks() -> usize {
    env_num("FAULT_TASKS", 600)
}

/// Per-task sleep so that `tasks()` tasks on 8 slots take about `seconds` of work: long
/// enough that the faults land while tasks are still being processed.
fn sleep_ms(seconds: u64) -> u64 {
    (seconds * 1000 * 8 / tasks() as u64).max(2)
}

/// Asserts the run is still in progress when a fault is injected (else it proves nothing).
async fn assert_mid_run(w: &World, n: usize) {
    let done = w.finished().await;
    assert!(done < n as i64, "all {n} tasks finished before the fault was injected; raise the per-task time");
}

/// The shape of most scenarios: one processor starts on `n` pre-loaded tasks that take about
/// `seconds` in all, `fault` is injected while they run, then every task must have finished
/// exactly once. Returns the world and the task ids for further checks.
async fn scenario(mut w: World, seconds: u64, fault: impl AsyncFnOnce(&mut World, usize)) -> (World, Vec<Uuid>) {
    let n = tasks();
    let ids = w.preload(n, sleep_ms(seconds)).await;
    w.spawn_processor();
    fault(&mut w, n).await;
    w.wait_finished(n, Duration::from_secs(300)).await;
    w.stop_all();
    w.verify(&ids).await;
    (w, ids)
}

/// SIGKILLs a processor `kills` times, 2.5 s apart, starting a new one each time.
async fn kill_repeatedly(w: &mut World, n: usize, kills: usize) {
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_mid_run(w, n).await;
        w.kill_one(libc::SIGKILL);
        w.spawn_processor();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_repeatedly_loses_nothing_and_repeats_nothing() {
    let _serial = SERIAL.lock().await;
    let kills = env_num("FAULT_KILLS", 3);
    let w = World::new("sigkill", 8).await;
    scenario(w, 4 * kills as u64 + 6, async |w, n| kill_repeatedly(w, n, kills).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_from_one_to_three_and_back() {
    let _serial = SERIAL.lock().await;
    scenario(World::new("scale", 8).await, 16, async |w, n| {
        tokio::time::sleep(Duration::from_secs(2)).await;
        w.spawn_processor();
        w.spawn_processor();
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_mid_run(w, n).await;
        w.kill_one(libc::SIGTERM);
        w.kill_one(libc::SIGTERM);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_partitions_mid_run_is_picked_up() {
    let _serial = SERIAL.lock().await;
    let mut w = World::new("partitions", 8).await;
    let n = tasks();
    let mut ids = w.preload(n / 2, sleep_ms(12)).await;
    w.spawn_processor();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_mid_run(&w, n / 2).await;
    // Edit the declaration and apply it with the CLI, as an operator would.
    let decl = w.dir.join("topics/devcycle.task-requests.toml");
    let text = std::fs::read_to_string(&decl).unwrap().replace("partitions = 6", "partitions = 9");
    std::fs::write(&decl, text).unwrap();
    let out = w.command(&["topics", "apply"], &w.dir.join("apply.log")).output().unwrap();
    assert!(out.status.success());
    let printed = std::fs::read_to_string(w.dir.join("apply.log")).unwrap();
    assert!(printed.contains("partitions 6 -> 9"), "{printed}");
    ids.extend(w.preload(n - n / 2, sleep_ms(4)).await);
    w.wait_finished(n, Duration::from_secs(300)).await;
    // The new partitions really carried tasks.
    let (high,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM tasks WHERE source_partition >= 6").fetch_one(&w.pool).await.unwrap();
    assert!(high > 0, "no task came from the new partitions");
    w.stop_all();
    w.verify(&ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_run() {
    let _serial = SERIAL.lock().await;
    scenario(World::new("broker", 8).await, 16, async |w, n| {
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_mid_run(w, n).await;
        services(&["restart", "kafka"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_then_redis_outage_mid_run() {
    let _serial = SERIAL.lock().await;
    scenario(World::new("outage", 8).await, 20, async |w, n| {
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_mid_run(w, n).await;
        services(&["down", "postgres"]);
        tokio::time::sleep(Duration::from_secs(10)).await;
        services(&["up", "postgres"]);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_mid_run(w, n).await;
        services(&["down", "redis"]);
        tokio::time::sleep(Duration::from_secs(10)).await;
        services(&["up", "redis"]);
        // The processor survived both outages: still the same process.
        assert!(w.children[0].try_wait().unwrap().is_none(), "processor exited during the outage");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_pills_interleaved_with_good_records() {
    let _serial = SERIAL.lock().await;
    let mut w = World::new("poison", 8).await;
    let n = tasks();
    let topic = w.topic("devcycle.task-requests");
    let producer: FutureProducer = devcycle::kafka::client_config(&w.settings.kafka, "poison").create().unwrap();
    let mut ids = Vec::new();
    let mut poisons = 0;
    for round in 0..10 {
        ids.extend(w.preload(n / 10, 5).await);
        for (i, bytes) in [&b"garbage"[..], &[0, 0, 0, 0x7f, 0x11, 1][..], &[0u8][..]].iter().enumerate() {
            let key = format!("poison-{round}-{i}");
            producer.send(FutureRecord::to(&topic).key(&key).payload(*bytes), Duration::from_secs(10)).await.unwrap();
            poisons += 1;
        }
    }
    w.spawn_processor();
    w.wait_finished(ids.len(), Duration::from_secs(300)).await;
    // Every poison pill is on the dead-letter topic.
    let consumer = common::reader(&w.settings, &w.topic("devcycle.dead-letters"));
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < poisons {
        assert!(Instant::now() < deadline, "{} of {poisons} poison pills dead-lettered", seen.len());
        let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await else { continue };
        seen.insert(String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned());
    }
    assert_eq!(seen.len(), poisons);
    w.stop_all();
    w.verify(&ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_mode_publishes_each_result_once_despite_sigkill() {
    let _serial = SERIAL.lock().await;
    let kills = env_num("FAULT_KILLS", 3);
    let w = World::with_guarantee("eos", 8, "exactly_once").await;
    let (w, ids) = scenario(w, 4 * kills as u64 + 6, async |w, n| kill_repeatedly(w, n, kills).await).await;
    w.verify_exactly_once(&ids).await;
}
