//! The ingress's producer watchdog against a real broker and a wedged producer (one whose only
//! broker accepts connections and never answers, as a producer stuck on dead connections
//! would see it): it is judged wedged only while a new client reaches the real cluster.

mod common;

use devcycle::app::{Deps, Mode, StartError};
use devcycle::ingress::producer_watch::watch;
use devcycle::kafka::{OutRecord, Producer};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A listener on 127.0.0.1 that accepts connections and never answers; returns its address.
async fn black_hole() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    addr
}

/// Sends a record every 200 ms until `stop` (each fails after the 500 ms message timeout).
fn keep_sending(producer: Producer, stop: CancellationToken) {
    tokio::spawn(async move {
        while !stop.is_cancelled() {
            let p = producer.clone();
            tokio::spawn(async move {
                let rec = OutRecord {
                    topic: "watchdog-probe",
                    key: None,
                    value: Some(b"x"),
                    headers: vec![],
                    partition: None,
                };
                let _ = p.send(rec).await;
            });
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_failing_every_record_while_the_cluster_answers_is_judged_wedged() {
    let real = common::test_settings().kafka;
    let mut hole = real.clone();
    hole.bootstrap_servers = black_hole().await;
    let producer = Producer::new(&hole, "wedged", Duration::from_millis(500)).unwrap();
    let stop = CancellationToken::new();
    keep_sending(producer.clone(), stop.clone());
    let window = Duration::from_secs(2);

    // The cluster it would report to is unreachable too (an outage, not a wedged client): no
    // verdict, however long the failures last.
    let outage = tokio::time::timeout(Duration::from_secs(8), watch(&producer, &hole, window, &stop)).await;
    assert!(outage.is_err(), "no verdict while the cluster itself does not answer: {outage:?}");
    let failing = producer.failing().expect("every record failed");
    assert!(failing.for_ >= window, "{failing:?}");

    // The real cluster answers a new client: wedged.
    let verdict = tokio::time::timeout(Duration::from_secs(15), watch(&producer, &real, window, &stop))
        .await
        .expect("a verdict within the window and a check");
    assert!(verdict.is_some_and(|after| after >= window), "{verdict:?}");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_working_producer_is_never_judged() {
    let app = common::TestApp::spawn().await;
    let stop = CancellationToken::new();
    let window = Duration::from_secs(1);
    let watching = {
        let (p, k, s) = (app.deps.producer.clone(), app.deps.settings.kafka.clone(), stop.clone());
        tokio::spawn(async move { watch(&p, &k, window, &s).await })
    };
    for i in 0..20 {
        app.submit("echo", serde_json::json!({ "i": i })).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(app.deps.producer.failing().is_none());
    stop.cancel();
    assert_eq!(watching.await.unwrap(), None, "no verdict for a producer whose records are acknowledged");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingress_whose_producer_is_wedged_answers_503_then_exits_for_a_restart() {
    let mut settings = common::test_settings();
    settings.http.produce_timeout_ms = 500; // window: 3 s
    let deps = Deps::connect(settings).await.expect("connect");
    let mut deps = Arc::try_unwrap(deps).ok().expect("the only reference");
    let mut hole = deps.settings.kafka.clone();
    hole.bootstrap_servers = black_hole().await;
    deps.producer = Producer::new(&hole, "wedged", Duration::from_millis(500)).unwrap();
    let app = common::TestApp::start(Arc::new(deps), Mode::Ingress).await;

    // Clients keep submitting: each answer is 503 until the ingress is gone.
    let (http, url, token) = (app.http.clone(), app.url("/v1/tasks"), app.token.clone());
    let answers = tokio::spawn(async move {
        let mut statuses = Vec::new();
        loop {
            let body = serde_json::json!({"agent": "echo", "input": {}});
            match http.post(&url).bearer_auth(&token).json(&body).send().await {
                Ok(r) => statuses.push(r.status().as_u16()),
                Err(_) => return statuses,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let ended = app.exited(Duration::from_secs(30)).await;
    assert!(matches!(ended, Err(StartError::ProducerStalled(after)) if after >= Duration::from_secs(3)), "{ended:?}");
    let statuses = answers.await.unwrap();
    assert!(!statuses.is_empty() && statuses.iter().all(|s| *s == 503), "{statuses:?}");
}
