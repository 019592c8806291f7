//! Operations views against the real stack: consumer lag and the status report.

mod common;

use common::TestApp;
use devcycle::app::Mode;
use devcycle::ops::status;
use serde_json::json;
use std::time::{Duration, Instant};

fn total_lag(app: &TestApp) -> i64 {
    let group = app.deps.catalog.group_name("devcycle.agent-executor");
    let topic = app.topic("devcycle.task-requests");
    tokio::task::block_in_place(|| status::group_lag(&app.deps, &group, &topic))
        .unwrap()
        .iter()
        .map(status::PartitionLag::lag)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_rises_with_waiting_tasks_and_drains_to_zero() {
    let first = TestApp::spawn().await;
    let deps = first.deps.clone();
    first.stop().await;
    let ingress = TestApp::start(deps.clone(), Mode::Ingress).await;
    let ids: Vec<_> = futures::future::join_all((0..5).map(|i| ingress.submit("echo", json!({"i": i})))).await;
    assert_eq!(total_lag(&ingress), 5, "five tasks waiting, none consumed");
    let report = tokio::task::block_in_place(|| status::lag_report(&deps, None)).unwrap();
    assert!(report.contains("total lag 5"), "{report}");

    let processor = TestApp::start(deps.clone(), Mode::Process("agent-executor".into())).await;
    for id in &ids {
        ingress.wait_status(*id, "succeeded", Duration::from_secs(60)).await;
    }
    // Offsets are committed from checkpoints within about a second.
    let deadline = Instant::now() + Duration::from_secs(30);
    while total_lag(&ingress) != 0 {
        assert!(Instant::now() < deadline, "lag did not drain");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let report = status::status_report(&deps).await;
    assert!(report.contains("services: postgres ok | redis ok | schema registry ok"), "{report}");
    assert!(report.contains("devcycle.task-requests: 6 partitions, as declared"), "{report}");
    assert!(report.contains("1 member(s)") && report.contains("lag 0"), "{report}");
    assert!(report.contains("dead letters: 0"), "{report}");
    processor.stop().await;
    ingress.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_serves_probes_and_metrics_on_its_metrics_port() {
    let first = TestApp::spawn().await;
    let deps = first.deps.clone();
    let id = first.submit("echo", json!({})).await;
    first.wait_status(id, "succeeded", Duration::from_secs(60)).await;
    first.stop().await;
    let processor = TestApp::start(deps, Mode::Process("agent-executor".into())).await;
    let (s, b) = processor.get("/health").await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = processor.get("/startup").await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = processor.get("/ready").await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["data"]["checks"]["processors"]["agent-executor"], "ok");
    // Only probes and metrics here: the API lives on the ingress.
    let (s, b) = processor.get("/v1/agents").await;
    assert_eq!((s, b["error"].as_str()), (404, Some("NOT_FOUND")));
    // Lag is published within a few seconds of the processor running.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = processor.http.get(processor.url("/metrics")).send().await.unwrap().text().await.unwrap();
        if text.contains("devcycle_consumer_lag{") {
            assert!(text.contains("devcycle_process_resident_memory_bytes"), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "no consumer lag metric: {text}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    processor.stop().await;
}

/// GET `path` on `addr` over a plain blocking socket (off every tokio runtime): (status, time).
fn blocking_get(addr: std::net::SocketAddr, path: &str) -> (u16, Duration) {
    let t = Instant::now();
    let text = blocking_text(addr, path);
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, t.elapsed())
}

/// The whole response (head and body) to `GET path` on `addr`, `Connection: close`.
fn blocking_text(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingress_answers_probes_on_metrics_port_while_its_api_workers_are_busy() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let probe_port = free.local_addr().unwrap().port();
    drop(free);
    let app = TestApp::spawn_with(|s| s.metrics.port = probe_port).await;
    let probe: std::net::SocketAddr = ([127, 0, 0, 1], probe_port).into();
    let (s, b) = app.get("/health").await;
    assert_eq!(s, 200, "the API port serves the probes too: {b}");
    let text = app.http.get(format!("http://{probe}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("devcycle_http_requests"), "metrics on the probe port: {text}");
    let s = app.http.get(format!("http://{probe}/v1/agents")).send().await.unwrap().status();
    assert_eq!(s.as_u16(), 404, "only probes and metrics on the probe port");

    // Occupy both API workers with blocking work for 3 s: the API port cannot answer until they
    // are free; the probe port, on its own thread, answers meanwhile.
    let block = Duration::from_secs(3);
    let blockers: Vec<_> = (0..2).map(|_| tokio::spawn(async move { std::thread::sleep(block) })).collect();
    let api = app.addr;
    let (probe_answer, api_answer) = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_millis(300));
        let probe_answer = blocking_get(probe, "/health");
        let api_answer = blocking_get(api, "/health");
        (probe_answer, api_answer)
    })
    .await
    .unwrap();
    for b in blockers {
        b.await.unwrap();
    }
    assert_eq!(probe_answer.0, 200);
    assert!(
        probe_answer.1 < Duration::from_millis(1500),
        "the probe port waited {:?} for busy API workers",
        probe_answer.1
    );
    // The control: the same probe on the API port had to wait for the workers.
    assert_eq!(api_answer.0, 200);
    assert!(
        api_answer.1 >= Duration::from_secs(1),
        "API workers were not blocked ({:?}): the test proves nothing",
        api_answer.1
    );
    app.stop().await;
}

/// Sends `GET path` keep-alive on `s` and reads its response: see [`read_status`].
fn get_on(s: &mut std::net::TcpStream, path: &str) -> Option<u16> {
    use std::io::Write;
    write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").ok()?;
    read_status(s)
}

/// Reads one response from `s`: its status, or None when the server closed the connection or
/// sent nothing within the socket's read timeout.
fn read_status(s: &mut std::net::TcpStream) -> Option<u16> {
    use std::io::Read;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).ok().filter(|n| *n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        let Some(end) = text.find("\r\n\r\n") else { continue };
        let length = text[..end]
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
            .unwrap_or(0usize);
        if buf.len() >= end + 4 + length {
            return text.split_whitespace().nth(1).and_then(|c| c.parse().ok());
        }
    }
}

/// Whether the server closed `s` (end of stream) within `within`.
fn closed_by_server(s: &mut std::net::TcpStream, within: Duration) -> bool {
    use std::io::Read;
    s.set_read_timeout(Some(within)).unwrap();
    matches!(s.read(&mut [0u8; 64]), Ok(0))
}

/// The value of `name{listener="api"}` on the probe port's /metrics (0 when absent).
fn api_metric(probe: std::net::SocketAddr, name: &str) -> f64 {
    let text = blocking_text(probe, "/metrics");
    let prefix = format!("{name}{{listener=\"api\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_port_bounds_open_connections_and_closes_idle_ones() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let probe_port = free.local_addr().unwrap().port();
    drop(free);
    let idle = Duration::from_millis(1500);
    let app = TestApp::spawn_with(|s| {
        s.metrics.port = probe_port;
        s.http.max_connections = 2;
        s.http.header_read_timeout_ms = idle.as_millis() as u64;
    })
    .await;
    let (api, probe): (std::net::SocketAddr, std::net::SocketAddr) = (app.addr, ([127, 0, 0, 1], probe_port).into());
    let open = move || api_metric(probe, "devcycle_http_connections");
    tokio::task::spawn_blocking(move || {
        // The test client's connection from logging in is closed by the server once idle (the
        // gauge follows soon after; on a busy machine a little later).
        std::thread::sleep(idle);
        let deadline = Instant::now() + idle * 3;
        while open() != 0.0 {
            assert!(Instant::now() < deadline, "the login connection was not closed when idle: {}", open());
            std::thread::sleep(Duration::from_millis(50));
        }
        let connect = || {
            let s = std::net::TcpStream::connect(api).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(700))).unwrap();
            s
        };
        let (mut a, mut b) = (connect(), connect());
        assert_eq!(get_on(&mut a, "/health"), Some(200));
        assert_eq!(get_on(&mut b, "/health"), Some(200));
        // A third connection is not accepted while two are open: its request waits.
        let mut c = connect();
        assert_eq!(get_on(&mut c, "/health"), None, "served beyond max_connections = 2");
        assert_eq!(open(), 2.0, "open connections on the api listener at the limit");
        let hits = api_metric(probe, "devcycle_http_connection_limit_reached_total");
        assert!(hits >= 1.0, "reaching the limit was not counted: {hits}");
        // Closing one lets the waiting one in, and its request is answered.
        drop(a);
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(read_status(&mut c), Some(200), "the waiting connection was not served once a place was free");
        // Idle keep-alive connections are closed after the header read timeout.
        assert!(closed_by_server(&mut b, idle * 3), "an idle connection stayed open past the header read timeout");
        assert!(closed_by_server(&mut c, idle * 3), "an idle connection stayed open past the header read timeout");
        let deadline = Instant::now() + Duration::from_secs(2);
        while open() != 0.0 {
            assert!(Instant::now() < deadline, "the gauge still counts closed connections: {}", open());
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    app.stop().await;
}
