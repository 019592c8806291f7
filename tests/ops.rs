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
