//! One fault scenario's private world: its namespace, database schema, key prefix and
//! processors directory; pre-loading tasks, spawning and killing `devcycle process` children,
//! and the exact end-of-run checks (every task finished once, once on the results topic).

use super::common;

use devcycle::catalog::Catalog;
use devcycle::domain::TaskRequest;
use devcycle::settings::Settings;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use uuid::Uuid;

pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One scenario's private world: namespace, schema, key prefix, processors dir.
pub struct World {
    pub settings: Settings,
    pub catalog: Catalog,
    pub pool: sqlx::PgPool,
    pub dir: PathBuf,
    pub children: Vec<Child>,
    pub spawned: usize,
    pub codec: devcycle::avro::Codec,
}

impl World {
    pub async fn new(name: &str, concurrency: usize) -> World {
        Self::with_guarantee(name, concurrency, "at_least_once").await
    }

    pub async fn with_guarantee(name: &str, concurrency: usize, guarantee: &str) -> World {
        let mut settings = common::test_settings();
        settings.kafka.session_timeout_ms = 6000;
        let dir = common::root().join("target").join("faults").join(format!("{name}-{}", &settings.database.schema));
        std::fs::create_dir_all(dir.join("topics")).unwrap();
        for entry in std::fs::read_dir(common::root().join("topics")).unwrap() {
            let p = entry.unwrap().path();
            std::fs::copy(&p, dir.join("topics").join(p.file_name().unwrap())).unwrap();
        }
        let edits = [
            ("concurrency", concurrency.to_string()),
            ("max_buffered", (concurrency * 4).to_string()),
            ("shutdown_grace_ms", "5000".to_string()),
            ("guarantee", format!("\"{guarantee}\"")),
        ];
        settings.paths.processors = common::processors_with(&format!("{name}-{}", settings.database.schema), &edits);
        settings.paths.topics = dir.join("topics");
        // Topics, schemas, migrations once, as `devcycle run` would.
        let deps = devcycle::app::Deps::connect(settings.clone()).await.expect("services up");
        let catalog = Catalog::load(&settings).unwrap();
        let codec = devcycle::avro::Codec::new(&settings.schema_registry.url, Duration::from_secs(5), &catalog.schemas)
            .unwrap();
        World { pool: deps.pool.clone(), settings, catalog, dir, children: Vec::new(), spawned: 0, codec }
    }

    pub fn topic(&self, declared: &str) -> String {
        self.catalog.topic_name(declared)
    }

    pub fn command(&self, args: &[&str], log: &Path) -> Command {
        let s = &self.settings;
        let mut c = Command::new(env!("CARGO_BIN_EXE_devcycle"));
        c.args(args)
            .current_dir(common::root())
            .env("ENVIRONMENT", "test")
            .env("LOG_LEVEL", "info")
            .envs(s.isolation_env())
            .env("DEVCYCLE__KAFKA__SESSION_TIMEOUT_MS", s.kafka.session_timeout_ms.to_string())
            .env("DEVCYCLE__METRICS__PORT", "0")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(log).unwrap())
            .stderr(Stdio::inherit());
        c
    }

    /// Starts one more processor process.
    pub fn spawn_processor(&mut self) {
        self.spawned += 1;
        let log = self.dir.join(format!("processor-{}.log", self.spawned));
        let child = self.command(&["process", "agent-executor"], &log).spawn().expect("spawn processor");
        self.children.push(child);
    }

    /// Restarts processors that exited on their own, as a supervisor (Kubernetes) would.
    pub fn restart_exited(&mut self) {
        let mut exited = 0;
        self.children.retain_mut(|c| match c.try_wait() {
            Ok(Some(status)) => {
                eprintln!("processor {} exited ({status}); restarting it", c.id());
                exited += 1;
                false
            }
            _ => true,
        });
        for _ in 0..exited {
            self.spawn_processor();
        }
    }

    pub fn kill_one(&mut self, signal: i32) {
        if let Some(mut c) = self.children.pop() {
            unsafe { libc::kill(c.id() as i32, signal) };
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(Some(status)) = c.try_wait() {
                    if signal == libc::SIGTERM {
                        assert!(status.success(), "SIGTERM must end the processor cleanly, got {status}");
                    }
                    break;
                }
                assert!(Instant::now() < deadline, "processor did not exit after signal {signal}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Produces `n` sleep-agent tasks (`ms` each) straight to the request topic.
    pub async fn preload(&self, n: usize, ms: u64) -> Vec<Uuid> {
        let producer: FutureProducer = devcycle::kafka::client_config(&self.settings.kafka, "faults-loader")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create()
            .unwrap();
        let topic = self.topic("devcycle.task-requests");
        let mut ids = Vec::with_capacity(n);
        for chunk in 0..n.div_ceil(500) {
            let mut pending = Vec::new();
            for i in 0..500.min(n - chunk * 500) {
                let req = TaskRequest {
                    submitted_by: Some("faults".into()),
                    ..TaskRequest::new("sleep", json!({"ms": ms, "i": chunk * 500 + i}))
                };
                let bytes = self.codec.encode_request(&topic, &req).await.unwrap();
                ids.push(req.task_id);
                pending.push((req.task_id.to_string(), bytes));
            }
            let sends = pending.iter().map(|(k, v)| {
                producer.send(FutureRecord::to(&topic).key(k.as_str()).payload(v.as_slice()), Duration::from_secs(30))
            });
            for r in futures::future::join_all(sends).await {
                r.map_err(|(e, _)| e).expect("preload produce");
            }
        }
        ids
    }

    pub async fn finished(&self) -> i64 {
        let r: Result<(i64,), _> =
            sqlx::query_as("SELECT count(*) FROM tasks WHERE status IN ('succeeded','failed','dead_lettered')")
                .fetch_one(&self.pool)
                .await;
        r.map(|r| r.0).unwrap_or(-1)
    }

    pub async fn wait_finished(&mut self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            self.restart_exited();
            let done = self.finished().await;
            if done == n as i64 {
                return;
            }
            if Instant::now() >= deadline {
                panic!("{done} of {n} tasks finished in time; logs in {}\n{}", self.dir.display(), self.log_tails());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The exact-count verdict: every task finished once, its result on the topic, one outcome.
    /// The last lines of each processor log other than per-task lines, for a failure message
    /// (CI keeps the test output, not the files).
    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        for i in 1..=self.spawned {
            let text = std::fs::read_to_string(self.dir.join(format!("processor-{i}.log"))).unwrap_or_default();
            let lines: Vec<&str> = text.lines().filter(|l| !l.contains("\"task executed\"")).collect();
            out += &format!("--- processor-{i}.log, last lines of {} ---\n", lines.len());
            for line in &lines[lines.len().saturating_sub(15)..] {
                out += &line.chars().take(400).collect::<String>();
                out.push('\n');
            }
        }
        out
    }

    pub async fn verify(&self, ids: &[Uuid]) {
        let n = ids.len() as i64;
        let (rows, succeeded): (i64, i64) =
            sqlx::query_as("SELECT count(*), count(*) FILTER (WHERE status = 'succeeded') FROM tasks")
                .fetch_one(&self.pool)
                .await
                .unwrap();
        assert_eq!(rows, n, "rows in tasks");
        assert_eq!(succeeded, n, "succeeded tasks");
        let (finals, distinct): (i64, i64) =
            sqlx::query_as("SELECT count(*), count(DISTINCT task_id) FROM task_events WHERE to_status = 'succeeded'")
                .fetch_one(&self.pool)
                .await
                .unwrap();
        assert_eq!((finals, distinct), (n, n), "exactly one final transition per task (no duplicate effects)");

        // Every task id on the results topic, and never two different outcomes for one task.
        let consumer = common::reader(&self.settings, &self.topic("devcycle.task-results"));
        let want: BTreeSet<Uuid> = ids.iter().copied().collect();
        let mut outcomes: BTreeMap<Uuid, BTreeSet<String>> = BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        while outcomes.len() < want.len() {
            assert!(Instant::now() < deadline, "results for {} of {} tasks", outcomes.len(), want.len());
            let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await else { continue };
            let result = self.codec.decode_result(m.payload()).await.expect("result decodes");
            let outcome = format!("{}|{:?}|{:?}", result.status, result.output, result.error);
            outcomes.entry(result.task_id).or_default().insert(outcome);
        }
        assert_eq!(outcomes.keys().copied().collect::<BTreeSet<_>>(), want, "lost or foreign results");
        let conflicting = outcomes.values().filter(|o| o.len() > 1).count();
        assert_eq!(conflicting, 0, "tasks with two different results");
    }

    /// Exactly-once: every task's result is on the results topic exactly once (read_committed).
    pub async fn verify_exactly_once(&self, ids: &[Uuid]) {
        let consumer = common::reader(&self.settings, &self.topic("devcycle.task-results"));
        let mut counts: BTreeMap<Uuid, usize> = BTreeMap::new();
        let mut read = 0usize;
        let deadline = Instant::now() + Duration::from_secs(120);
        // Read until every result arrived, then a little longer to catch duplicates.
        let mut quiet_until: Option<Instant> = None;
        loop {
            if counts.len() == ids.len() && quiet_until.is_none() {
                quiet_until = Some(Instant::now() + Duration::from_secs(3));
            }
            if quiet_until.is_some_and(|q| Instant::now() > q) {
                break;
            }
            assert!(Instant::now() < deadline, "results for {} of {} tasks", counts.len(), ids.len());
            let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await else { continue };
            let result = self.codec.decode_result(m.payload()).await.expect("result decodes");
            *counts.entry(result.task_id).or_default() += 1;
            read += 1;
        }
        let want: BTreeSet<Uuid> = ids.iter().copied().collect();
        assert_eq!(counts.keys().copied().collect::<BTreeSet<_>>(), want, "lost or foreign results");
        let dups: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            dups.is_empty(),
            "{} results read for {} tasks; duplicated: {:?}",
            read,
            ids.len(),
            &dups[..dups.len().min(5)]
        );
    }

    pub fn stop_all(&mut self) {
        while !self.children.is_empty() {
            self.kill_one(libc::SIGTERM);
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
