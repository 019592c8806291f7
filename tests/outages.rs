//! Losing Redis under a running ingress, or Postgres under a running task, without touching the
//! shared services: the app talks to them through a TCP relay that the test cuts and restores.
//!
//! Redis holds the revocation list and the rate-limit counters, so the ingress fails closed: an
//! API call answers 503 with the error envelope and `Retry-After` (nothing is produced), `/ready`
//! names Redis, `/health` stays up, and once Redis is back the same calls work again.

mod common;

use common::{test_settings, TestApp};
use devcycle::app::{Deps, Mode};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A TCP relay on 127.0.0.1 (port 0) to `target`. While cut, it drops every relayed connection
/// and closes new ones at once.
struct Relay {
    addr: std::net::SocketAddr,
    up: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Relay {
    async fn start(target: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (flag, held) = (up.clone(), links.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else { continue };
                if !flag.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let target = target.clone();
                let link = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                held.lock().unwrap().push(link);
            }
        });
        Relay { addr, up, links }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_redis_answers_503_then_recovers_without_a_restart() {
    let mut s = test_settings();
    let url = reqwest::Url::parse(s.redis.url.expose()).unwrap();
    let relay = Relay::start(format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(6379))).await;
    s.redis.url = devcycle::settings::Secret::new(format!("redis://{}{}", relay.addr, url.path()));
    s.redis.timeout_ms = 1000;
    let deps = Deps::connect(s).await.expect("connect through the relay");
    let app = TestApp::start(deps, Mode::Ingress).await;
    let submit = || app.send(app.http.post(app.url("/v1/tasks")).json(&json!({"agent": "echo", "input": {}})));

    let (status, _, body) = submit().await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(app.record_count("devcycle.task-requests"), 1);

    relay.cut();
    let started = Instant::now();
    let (status, headers, body) = submit().await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        (body["success"].as_bool(), body["error"].as_str()),
        (Some(false), Some("SERVICE_UNAVAILABLE")),
        "{body}"
    );
    assert!(body["message"].as_str().unwrap_or_default().contains("redis"), "{body}");
    assert!(headers.contains_key("retry-after"), "{headers:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "answered within the Redis timeout: {:?}", started.elapsed());
    assert_eq!(
        app.record_count("devcycle.task-requests"),
        1,
        "nothing produced while the rate limit and revocations cannot be read"
    );
    let (status, body) = app.get("/health").await;
    assert_eq!(status, 200, "liveness does not depend on Redis: {body}");
    let (status, _, body) = app.send_raw(app.http.get(app.url("/ready"))).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["details"]["checks"]["redis"], "unavailable", "{body}");
    assert_eq!(body["details"]["checks"]["kafka"], "ok", "{body}");

    relay.restore();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _, body) = submit().await;
        if status == 202 {
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(Instant::now() < deadline, "still failing 30 s after Redis came back: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(app.record_count("devcycle.task-requests"), 2);
    let (status, body) = app.get("/ready").await;
    assert_eq!(status, 200, "{body}");
    app.stop().await;
}

/// Postgres lost while a task with side effects runs: its outcome is kept and written once
/// Postgres is back; the agent (here: a command appending a line to a file) is not run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_postgres_while_a_task_runs_does_not_run_it_again() {
    let mut s = test_settings();
    let url = reqwest::Url::parse(s.database.url.expose()).unwrap();
    let relay = Relay::start(format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432))).await;
    let mut through = url.clone();
    through.set_host(Some("127.0.0.1")).unwrap();
    through.set_port(Some(relay.addr.port())).unwrap();
    s.database.url = devcycle::settings::Secret::new(through.to_string());
    let deps = Deps::connect(s).await.expect("connect through the relay");
    let app = TestApp::start(deps, Mode::All).await;
    let runs = std::env::temp_dir().join(format!("devcycle-runs-{}", uuid::Uuid::new_v4()));
    let script = format!("echo run >> {}; sleep 1.5; echo done", runs.display());
    let agent = json!({"name": "once", "executor": "command", "config": {"program": "sh", "args": ["-c", script]}});
    let (status, body) = app.post("/v1/agents", &agent).await;
    assert_eq!(status, 201, "{body}");
    let id = app.submit("once", json!({})).await;
    // `running` is written 200 ms in (running_after_ms); Postgres goes while the command runs
    // and comes back after it ended.
    app.wait_status(id, "running", Duration::from_secs(30)).await;
    relay.cut();
    tokio::time::sleep(Duration::from_secs(3)).await;
    relay.restore();
    let done = app.wait_status(id, "succeeded", Duration::from_secs(60)).await;
    let lines = std::fs::read_to_string(&runs).unwrap_or_default();
    let _ = std::fs::remove_file(&runs);
    assert_eq!(lines.lines().count(), 1, "the command ran {} times", lines.lines().count());
    assert_eq!(done["attempts"], 1, "{done}");
    app.stop().await;
}
