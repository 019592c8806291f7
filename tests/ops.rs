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
    use std::io::{Read, Write};
    let t = Instant::now();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, t.elapsed())
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
