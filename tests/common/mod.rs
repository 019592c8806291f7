//! Test harness: each test app gets its own Kafka namespace (topics and groups), Postgres
//! schema and Redis key prefix, and an ingress on port 0, against the real services whose
//! addresses come from the environment (`eval "$(scripts/services env)"`).

#![allow(dead_code)]

use devcycle::app::{self, Deps, Mode};
use devcycle::domain::TaskResult;
use devcycle::settings::Settings;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Test settings: `config/` with ENVIRONMENT=test and the service URLs from the environment,
/// isolated by a fresh namespace.
pub fn test_settings() -> Settings {
    Settings::isolated(&root(), "t").expect("test settings")
}

/// A processors dir under `target/` holding the shipped agent-executor spec with `edits` (key,
/// value) applied line by line, so a test follows whatever the other shipped defaults are.
pub fn processors_with(tag: &str, edits: &[(&str, String)]) -> PathBuf {
    let dir = root().join("target").join("test-processors").join(tag);
    std::fs::create_dir_all(&dir).unwrap();
    let spec = std::fs::read_to_string(root().join("processors/agent-executor.toml")).unwrap();
    let spec: String = spec
        .lines()
        .map(|l| {
            let key = l.split_once(" = ").map(|(k, _)| k);
            match edits.iter().find(|(k, _)| Some(*k) == key) {
                Some((k, v)) => format!("{k} = {v}\n"),
                None => format!("{l}\n"),
            }
        })
        .collect();
    for (k, v) in edits {
        assert!(spec.contains(&format!("\n{k} = {v}\n")), "{k} = {v} in the processor spec");
    }
    std::fs::write(dir.join("agent-executor.toml"), spec).unwrap();
    dir
}

/// The password of every user the helpers create (meets the policy).
pub const PASSWORD: &str = "Corr3ct-Horse-Battery!";

pub struct TestApp {
    pub addr: SocketAddr,
    pub deps: Arc<Deps>,
    pub http: reqwest::Client,
    /// An admin's access token, attached by `post`, `get`, `send` and `submit`.
    pub token: String,
    pub admin_email: String,
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<Result<(), app::StartError>>,
}

impl TestApp {
    /// The ingress and the agent-executor, on fresh topics, schema and prefix.
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(customize: impl FnOnce(&mut Settings)) -> TestApp {
        let mut s = test_settings();
        customize(&mut s);
        let deps = Deps::connect(s).await.expect("connect to the test services (is `scripts/services up` running?)");
        Self::start(deps, Mode::All).await
    }

    /// Starts `mode` on already connected dependencies.
    pub async fn start(deps: Arc<Deps>, mode: Mode) -> TestApp {
        let shutdown = CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        // A processor process serves only probes and metrics (no API, no login).
        let serves_api = !matches!(mode, Mode::Process(_));
        let handle = tokio::spawn(app::run_with(deps.clone(), mode, shutdown.clone(), Some(tx)));
        let addr = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .expect("ingress bound in time")
            .expect("ingress started");
        // A TLS ingress in tests uses a self-signed certificate.
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .tls_danger_accept_invalid_certs(!deps.settings.http.tls_cert_path.is_empty())
            .build()
            .unwrap();
        let mut app = TestApp { addr, deps, http, token: String::new(), admin_email: String::new(), shutdown, handle };
        if serves_api {
            let (email, token) = app.user_token("admin").await;
            app.token = token;
            app.admin_email = email;
        }
        app
    }

    /// Creates a user with `role` (and [`PASSWORD`]) directly in the schema; returns the email.
    pub async fn create_user(&self, role: &str) -> String {
        let email = format!("{role}-{}@example.test", Uuid::new_v4().simple());
        devcycle::auth::create_user(&self.deps.pool, &self.deps.settings.auth, &email, PASSWORD, role)
            .await
            .expect("create test user");
        email
    }

    /// Logs in; returns status and envelope.
    pub async fn login(&self, email: &str, password: &str) -> (u16, Value) {
        let body = serde_json::json!({"email": email, "password": password});
        let r = self.http.post(self.url("/v1/auth/login")).json(&body).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// A new user with `role` and an access token for it.
    pub async fn user_token(&self, role: &str) -> (String, String) {
        let email = self.create_user(role).await;
        let (status, body) = self.login(&email, PASSWORD).await;
        assert_eq!(status, 200, "login failed: {body}");
        (email, body["data"]["access_token"].as_str().unwrap().to_string())
    }

    /// Unlinks every Redis key of this app (its prefix): what a Redis restart without
    /// persistence, or a `FLUSHALL`, does to it.
    pub async fn forget_redis(&self) {
        use fred::prelude::LuaInterface;
        let unlink = "for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('UNLINK', k) end";
        let pattern = format!("{}*", self.deps.cache.prefix());
        let _: () = self.deps.cache.pool().eval(unlink, Vec::<String>::new(), vec![pattern]).await.unwrap();
    }

    pub fn url(&self, path: &str) -> String {
        let scheme = if self.deps.settings.http.tls_cert_path.is_empty() { "http" } else { "https" };
        format!("{scheme}://{}{}", self.addr, path)
    }

    pub fn topic(&self, declared: &str) -> String {
        self.deps.catalog.topic_name(declared)
    }

    /// POSTs a JSON body; returns status, headers and the parsed envelope.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self.http.post(self.url(path)).bearer_auth(&self.token).json(body).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Sends a request with the admin's token.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, Value) {
        self.send_raw(req.bearer_auth(&self.token)).await
    }

    /// Sends a request as it is (no token added).
    pub async fn send_raw(&self, req: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, Value) {
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        (status, headers, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).bearer_auth(&self.token).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Submits a task; returns its id (asserting 202).
    pub async fn submit(&self, agent: &str, input: Value) -> Uuid {
        let (status, body) = self.post("/v1/tasks", &serde_json::json!({"agent": agent, "input": input})).await;
        assert_eq!(status, 202, "submit failed: {body}");
        body["data"]["task_id"].as_str().unwrap().parse().unwrap()
    }

    /// Polls GET /v1/tasks/{id} until its status is `want` (or fails after `within`).
    pub async fn wait_status(&self, id: Uuid, want: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let (status, body) = self.get(&format!("/v1/tasks/{id}")).await;
            if status == 200 && body["data"]["status"] == want {
                return body["data"].clone();
            }
            assert!(Instant::now() < deadline, "task {id} did not reach {want}; last: {status} {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Produces `req` to the requests topic as any Confluent client would (Avro, key = task id).
    pub async fn produce_request(&self, req: &devcycle::domain::TaskRequest, partition: Option<i32>) {
        produce_request(&self.deps, req, partition).await
    }

    /// Reads the results topic from the beginning until results for all `ids` were seen.
    pub async fn read_results(&self, ids: &[Uuid], within: Duration) -> Vec<(TaskResult, Vec<(String, String)>)> {
        let consumer = self.consumer(&self.topic("devcycle.task-results"));
        let mut found = Vec::new();
        let deadline = Instant::now() + within;
        while found.len() < ids.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "results seen for {} of {} tasks", found.len(), ids.len());
            let Ok(Ok(m)) = tokio::time::timeout(left, consumer.recv()).await else { continue };
            let key: Uuid = std::str::from_utf8(m.key().unwrap()).unwrap().parse().unwrap();
            if ids.contains(&key) {
                let result = self.deps.codec.decode_result(m.payload()).await.expect("result decodes");
                let headers = header_pairs(&m);
                found.push((result, headers));
            }
        }
        found
    }

    /// How many records the declared topic holds (high minus low watermark, summed over its
    /// partitions).
    pub fn record_count(&self, declared: &str) -> i64 {
        let topic = self.topic(declared);
        let c = self.consumer(&topic);
        let timeout = Duration::from_secs(10);
        let meta = c.fetch_metadata(Some(&topic), timeout).expect("topic metadata");
        meta.topics()[0]
            .partitions()
            .iter()
            .map(|p| {
                let (lo, hi) = c.fetch_watermarks(&topic, p.id(), timeout).expect("watermarks");
                hi - lo
            })
            .sum()
    }

    /// A read_committed consumer of `topic` from the beginning, in its own group.
    pub fn consumer(&self, topic: &str) -> StreamConsumer {
        reader(&self.deps.settings, topic)
    }

    /// Waits (without asking it to stop) for the app to end by itself; returns how it ended.
    pub async fn exited(self, within: Duration) -> Result<(), app::StartError> {
        let r = tokio::time::timeout(within, self.handle).await.expect("the app ended in time");
        r.expect("no panic")
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let r = tokio::time::timeout(Duration::from_secs(60), self.handle).await.expect("stops in time");
        r.expect("no panic").expect("clean stop");
    }
}

/// Produces `req` to the requests topic of `deps` as any Confluent client would (Avro, key =
/// task id).
pub async fn produce_request(deps: &Deps, req: &devcycle::domain::TaskRequest, partition: Option<i32>) {
    let topic = deps.catalog.topic_name("devcycle.task-requests");
    let bytes = deps.codec.encode_request(&topic, req).await.unwrap();
    let key = req.task_id.to_string();
    let record = devcycle::kafka::OutRecord {
        topic: &topic,
        key: Some(key.as_bytes()),
        value: Some(&bytes),
        headers: vec![],
        partition,
    };
    deps.producer.send(record).await.unwrap();
}

/// A read_committed consumer of `topic` from the beginning, in a group of its own within the
/// settings' namespace.
pub fn reader(settings: &Settings, topic: &str) -> StreamConsumer {
    let c: StreamConsumer = devcycle::kafka::reader_config(&settings.kafka, "reader").create().unwrap();
    c.subscribe(&[topic]).unwrap();
    c
}

pub fn header_pairs(m: &impl Message) -> Vec<(String, String)> {
    m.headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned()))
                .collect()
        })
        .unwrap_or_default()
}
